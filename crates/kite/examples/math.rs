//! The `math` kite: `square(x)` → x², and `countdown({from, onTick})`, which calls
//! `onTick(n)` for n = from..1 and then returns "done". Authentication is disabled.
//! Port from `KITE_PORT` (default 6000). Prints `math kite ready on <url>` when ready.
//!
//! When a kite key exists (`$KITE_HOME/kite.key`, default `~/.kite/kite.key`) the kite also
//! registers with the Kontrol named in it (re-registering after every reconnect) and prints
//! `math kite registered with Kontrol as <url>`; without one it runs stand-alone.
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
    let has_kite_key = kite::kitekey::kite_home()
        .map(|home| kite::kitekey::kite_key_path(&home).exists())
        .unwrap_or(false);
    let mut k = if has_kite_key {
        kite::Kite::load("math", "1.0.0")?
    } else {
        kite::Kite::new("math", "1.0.0")?
    };
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
    if has_kite_key {
        // Serve while registering: Kontrol may come up later.
        let registration = k.register_forever(&url);
        tokio::spawn(async move {
            let registered = registration.await;
            println!("math kite registered with Kontrol as {}", registered.url);
        });
    }
    k.run().await?;
    Ok(())
}
