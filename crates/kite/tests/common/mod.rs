//! Shared test helpers: a `math`-like kite served on 127.0.0.1:0.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kite::{Kite, KiteError, RemoteFunction, Request, ShutdownHandle};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Countdown {
    pub from: u32,
    pub on_tick: RemoteFunction,
}

/// Installs the test methods: square, echo, countdown, fail, custom, panic, slow.
pub fn math_methods(k: &Kite) {
    k.handle_func("square", |r: Request| async move {
        let a: f64 = r.args().one()?;
        Ok(a * a)
    });
    k.handle_func("echo", |r: Request| async move {
        Ok(Value::Array(r.args().raw().to_vec()))
    });
    k.handle_func("countdown", |r: Request| async move {
        let c: Countdown = r.args().one()?;
        for n in (1..=c.from).rev() {
            c.on_tick.call(&(n,)).await?;
        }
        Ok("done")
    });
    k.handle_func("fail", |r: Request| async move {
        let m: String = r.args().one()?;
        Err::<(), _>(KiteError::generic(m))
    });
    k.handle_func("custom", |_r: Request| async move {
        Err::<(), _>(KiteError::new("myError", "custom failure").with_code("E42"))
    });
    k.handle_func("panic", |_r: Request| async move {
        if true {
            panic!("boom");
        }
        Ok(())
    });
    k.handle_func("slow", |r: Request| async move {
        let ms: u64 = r.args().one()?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    });
}

pub struct Served {
    pub url: String,
    pub handle: ShutdownHandle,
    pub task: tokio::task::JoinHandle<()>,
}

/// Serves `k` on 127.0.0.1 (port from config, 0 = ephemeral) in a task.
pub async fn serve(mut k: Kite) -> Served {
    k.config.ip = "127.0.0.1".into();
    k.listen().await.expect("listen");
    let url = k.url().expect("url");
    let handle = k.shutdown_handle();
    let task = tokio::spawn(async move {
        k.serve().await.expect("serve");
    });
    Served { url, handle, task }
}

pub fn math_kite() -> Kite {
    let mut k = Kite::new("math", "1.0.0").expect("kite");
    k.config.disable_authentication = true;
    math_methods(&k);
    k
}

pub fn client_kite(transport: kite::Transport) -> Kite {
    let mut k = Kite::new("client", "1.0.0").expect("kite");
    k.config.transport = transport;
    k
}

#[allow(unused_imports)]
pub use kite_testkit::wait::eventually;

pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub fn get(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}
