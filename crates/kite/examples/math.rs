//! The `math` kite: `square(x)` → x², and `countdown({from, onTick})`, which calls
//! `onTick(n)` for n = from..1 and then returns "done". Authentication is disabled.
//! Port from `KITE_PORT` (default 6000). Prints `math kite ready on <url>` when ready.
//!
//! ```text
//! KITE_PORT=6000 cargo run -p kite --example math
//! ```

use kite::{KiteError, RemoteFunction, Request};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Countdown {
    from: u32,
    on_tick: RemoteFunction,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut k = kite::Kite::new("math", "1.0.0")?;
    k.config.port = std::env::var("KITE_PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .map_or(Ok(6000), |p| p.parse())?;
    k.config.disable_authentication = true;

    k.handle_func("square", |r: Request| async move {
        let a: f64 = r.args().one()?;
        Ok(a * a)
    });

    k.handle_func("countdown", |r: Request| async move {
        let c: Countdown = r.args().one()?;
        for n in (1..=c.from).rev() {
            c.on_tick.call(&(n,)).await?;
        }
        Ok::<_, KiteError>("done")
    });

    let addr = k.listen().await?;
    let url = k.url().unwrap_or_else(|| format!("http://{addr}/kite"));
    println!("math kite ready on {url}");
    k.run().await?;
    Ok(())
}
