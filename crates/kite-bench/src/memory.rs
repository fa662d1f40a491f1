//! Server memory per idle connection: the kite runs in a child process (this binary,
//! hidden subcommand `memory-server`); this process opens SockJS WebSocket connections that
//! each make one call and then stay idle, and reads the child's `VmRSS`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use crate::rpc::{self, AuthMode, KiteServer, Wire};
use crate::table::{int, Table};
use crate::{machine, payload, Findings};

/// How many connections are dialed at once.
const DIAL_CONCURRENCY: usize = 64;

/// The child: serve `square` until stdin closes.
pub(crate) async fn serve_child() -> anyhow::Result<()> {
    machine::raise_nofile()?;
    let server = KiteServer::start(AuthMode::None, None).await?;
    println!("READY {}", server.url);
    // Serve until the parent closes our stdin (or dies).
    tokio::task::spawn_blocking(|| {
        use std::io::Read as _;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    })
    .await?;
    drop(server);
    Ok(())
}

/// RSS once it stopped moving (two reads 200 ms apart within 0.5 %, at most 3 s).
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut last = machine::rss_kib(pid)?;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = machine::rss_kib(pid)?;
        if now.abs_diff(last) * 200 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

pub(crate) async fn memory(
    plan: &crate::plan::Plan,
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let limit = machine::raise_nofile()?;
    let most = plan.connections.iter().copied().max().unwrap_or(0);
    if (most as u64) + 200 > limit {
        bail!("{most} connections need more than the open-file limit {limit}");
    }
    let load_before = machine::loadavg();
    let exe = std::env::current_exe().context("current_exe")?;
    // KITE_BENCH_CHILD_WRAPPER runs the server under a tool, e.g. `valgrind --tool=dhat`.
    let wrapper = std::env::var("KITE_BENCH_CHILD_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = command
        .arg("memory-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn the memory server")?;
    let pid = child.id().context("child pid")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("READY ") {
                return Ok(url.to_owned());
            }
        }
        bail!("the memory server exited before it was ready")
    })
    .await
    .context("the memory server did not start within 30 s")??;
    let idle = settled_rss(pid).await?;
    let caller = rpc::caller_kite(Wire::SockJsWs)?;
    let mut clients: Vec<kite::Client> = Vec::new();
    let mut table = Table::new(&[
        "idle connections",
        "server RSS MiB",
        "KiB per connection",
        "KiB per connection since previous row",
    ]);
    let mut steps = plan.connections.clone();
    steps.sort_unstable();
    let mut prev = (0usize, idle);
    for target in steps {
        eprintln!("  memory: opening connections up to {target}...");
        let need = target.saturating_sub(clients.len());
        let opened: Vec<anyhow::Result<kite::Client>> = futures_util::stream::iter(0..need)
            .map(|_| {
                let c = caller.new_client(&url);
                async move {
                    c.dial().await.context("dial")?;
                    let r = c.tell("square", &(payload::ARG,)).await?;
                    if r.as_f64() != Some(payload::RESULT) {
                        bail!("wrong answer {:?}", r.value());
                    }
                    Ok(c)
                }
            })
            .buffer_unordered(DIAL_CONCURRENCY)
            .collect()
            .await;
        for c in opened {
            match c {
                Ok(c) => clients.push(c),
                Err(e) => {
                    findings.errors += 1;
                    bail!("opening idle connection {}: {e:#}", clients.len() + 1);
                }
            }
        }
        let rss = settled_rss(pid).await?;
        let n = clients.len();
        let per = (rss.saturating_sub(idle)) as f64 / n as f64;
        let marginal = rss.saturating_sub(prev.1) as f64 / (n - prev.0).max(1) as f64;
        table.row(vec![
            int(n as f64),
            format!("{:.1}", rss as f64 / 1024.0),
            format!("{per:.1}"),
            if prev.0 == 0 {
                "-".into()
            } else {
                format!("{marginal:.1}")
            },
        ]);
        findings.kib_per_connection = Some((n, per));
        prev = (n, rss);
    }
    let load_after = machine::loadavg();
    for c in clients {
        c.close().await;
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = child.kill().await;
    println!("### Memory per idle connection (server process)\n");
    println!(
        "A kite serving `square` (default settings) in a child process; each SockJS WebSocket connection made one call and stays open. KiB per connection = (RSS − RSS before any connection ({:.1} MiB)) / connections. Load average before/after: {load_before} / {load_after}.\n",
        idle as f64 / 1024.0
    );
    table.print();
    Ok(())
}
