//! Calls `countdown({from: 3, onTick})` on the kite at the URL given as first argument
//! (default `http://localhost:6000/kite`), printing every tick, then the result.
//!
//! ```text
//! cargo run -p kite --example callback_client -- http://localhost:6000/kite
//! ```

use kite::Function;
use serde::Serialize;

/// The argument of `countdown`. Functions go into structs, tuples or vectors (not into
/// `json!`, which serializes eagerly).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Countdown {
    from: u32,
    on_tick: Function,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:6000/kite".to_string());
    let k = kite::Kite::new("callback-client", "1.0.0")?;
    let client = k.new_client(&url);
    client.dial().await?;
    let on_tick = Function::new(|args| match args.one::<i64>() {
        Ok(n) => println!("tick {n}"),
        Err(e) => eprintln!("bad tick: {e}"),
    });
    let response = client
        .tell("countdown", &(Countdown { from: 3, on_tick },))
        .await?;
    println!("{}", response.as_str().unwrap_or("?"));
    Ok(())
}
