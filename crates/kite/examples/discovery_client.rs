//! Discovery, client side: finds the kite `first` of the same user and environment through
//! Kontrol and calls `square(4)` with the token Kontrol issued (see `discovery_server`).
//!
//! ```text
//! cargo run -p kite --example discovery_client          # prints 16
//! ```

use kite::protocol::KontrolQuery;
use kite::{Config, Kite};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let k = Kite::with_config("second", "1.0.0", Config::load()?)?;
    let query = KontrolQuery {
        username: k.config.username.clone(),
        environment: k.config.environment.clone(),
        name: "first".into(),
        ..Default::default()
    };
    let kites = k.get_kites(&query).await?;
    let first = kites
        .first()
        .ok_or("no kite named \"first\" is registered")?;
    first.dial().await?;
    let response = first.tell("square", &(4,)).await?;
    match response.as_f64() {
        Some(n) => println!("{n}"),
        None => println!("{}", response.value()),
    }
    Ok(())
}
