//! Discovery, server side: the kite `first` 1.0.0 serves `square` and registers itself with
//! Kontrol, so that others find it by query (see `discovery_client`).
//!
//! Needs a kite key (`$KITE_HOME/kite.key`, default `~/.kite/kite.key`), which names the
//! Kontrol to use: get one with `kitectl register` or `kontrol --initial`.
//!
//! ```text
//! cargo run -p kite --example discovery_server          # port 6000, or KITE_PORT
//! ```

use kite::{Config, Kite, Request};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::load()?;
    if std::env::var("KITE_PORT").map_or(true, |p| p.is_empty()) {
        config.port = 6000;
    }
    let k = Kite::with_config("first", "1.0.0", config)?;
    k.handle_func("square", |r: Request| async move {
        let a: f64 = r.args().one()?;
        Ok(a * a)
    });
    k.listen().await?;
    let url = k.url().ok_or("no URL after listen")?;
    // Registers now, retries until Kontrol answers, and again after every reconnect.
    let registered = k.register_forever(&url).await;
    println!("first kite registered at {}", registered.url);
    k.run().await?;
    Ok(())
}
