//! The smallest kite: `first` 1.0.0 on port 6000 (or `KITE_PORT`), answering the default
//! methods (`kite.ping` → "pong").
//!
//! ```text
//! cargo run -p kite --example first
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut k = kite::Kite::new("first", "1.0.0")?;
    k.config.port = port_from_env()?;
    let addr = k.listen().await?;
    let url = k.url().unwrap_or_else(|| format!("http://{addr}/kite"));
    println!("first kite ready on {url}");
    k.run().await?;
    Ok(())
}

fn port_from_env() -> Result<u16, std::num::ParseIntError> {
    std::env::var("KITE_PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .map_or(Ok(6000), |p| p.parse())
}
