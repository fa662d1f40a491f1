//! Calls `square(4)` on the kite at the URL given as first argument (default
//! `http://localhost:6000/kite`) and prints the result.
//!
//! ```text
//! cargo run -p kite --example square_client -- http://localhost:6000/kite
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:6000/kite".to_string());
    let k = kite::Kite::new("second", "1.0.0")?;
    let client = k.new_client(&url);
    client.dial().await?;
    let response = client.tell("square", &(4,)).await?;
    let n: f64 = response.decode()?;
    println!("{n}");
    Ok(())
}
