//! The RPC, ceiling and authentication sections.

use std::sync::Arc;

use anyhow::Context as _;
use kite::auth::KeyPair;

use crate::echo::{self, EchoServer};
use crate::plan::{Plan, Shape};
use crate::raw::DnodeCaller;
use crate::rpc::{self, AuthMode, KiteCaller, KiteServer, Wire};
use crate::stats::{self, Sample};
use crate::table::{int, ms, pct, times, Table};
use crate::{machine, Findings};

/// Measures one wire and shape against a running kite.
async fn run_kite(
    server: &KiteServer,
    wire: Wire,
    shape: Shape,
    plan: &Plan,
) -> anyhow::Result<Sample> {
    let caller = rpc::caller_kite(wire)?;
    let n = shape.callers;
    if wire == Wire::RawDnode {
        let (identity, auth) = rpc::wire_identity(&caller, server.auth.as_ref());
        let mut callers = Vec::with_capacity(n);
        if shape.shared {
            let c = DnodeCaller::dial(&server.url, identity, auth).await?;
            callers.resize(n, c);
        } else {
            for _ in 0..n {
                callers.push(DnodeCaller::dial(&server.url, identity.clone(), auth.clone()).await?);
            }
        }
        return Ok(stats::run(callers, plan.load).await);
    }
    let mut clients = Vec::with_capacity(shape.connections());
    for _ in 0..shape.connections() {
        clients.push(rpc::dial(&caller, server, wire).await?);
    }
    let callers = (0..n)
        .map(|i| KiteCaller(clients[i % clients.len()].clone()))
        .collect();
    let sample = stats::run(callers, plan.load).await;
    for c in clients {
        c.close().await;
    }
    Ok(sample)
}

async fn run_echo(
    server: &EchoServer,
    request: &str,
    shape: Shape,
    plan: &Plan,
) -> anyhow::Result<Sample> {
    if shape.shared && shape.callers > 1 {
        let c = echo::SharedConnection::dial(server.addr, request, shape.callers).await?;
        let callers = vec![c; shape.callers];
        Ok(stats::run(callers, plan.load).await)
    } else {
        let mut callers = Vec::with_capacity(shape.callers);
        for _ in 0..shape.callers {
            callers.push(echo::OwnConnection::dial(server.addr, request).await?);
        }
        Ok(stats::run(callers, plan.load).await)
    }
}

/// Counts a failed row (errors, or no call completed) and says why on stderr.
pub(crate) fn check(sample: &Sample, what: &str, findings: &mut Findings) {
    if sample.errors > 0 || sample.calls == 0 {
        findings.errors += sample.errors.max(1);
        eprintln!(
            "  !! {what}: {} calls, {} errors; first error: {}",
            sample.calls,
            sample.errors,
            sample
                .first_error
                .as_deref()
                .unwrap_or("(none: no call completed)")
        );
    }
}

/// One progress line on stderr for a measured row.
pub(crate) fn progress(what: &str, s: &Sample) {
    eprintln!(
        "  {what}: {} calls/s, p50 {} ms, p99 {} ms",
        int(s.rate()),
        ms(s.ms(0.5)),
        ms(s.ms(0.99))
    );
}

/// The echo ceiling and the RPC rows, interleaved per shape so both see the same load.
pub(crate) async fn rpc(
    plan: &Plan,
    with_rpc: bool,
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let load_before = machine::loadavg();
    let server = KiteServer::start(AuthMode::None, None).await?;
    let sizing = rpc::caller_kite(Wire::SockJsWs)?;
    let (identity, _) = rpc::wire_identity(&sizing, None);
    let (request, response) = crate::payload::sockjs_sizes(&identity, None);
    let echo = EchoServer::start(response.clone()).await?;
    let mut ceiling_table = Table::new(&[
        "callers",
        "connections",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
    ]);
    let mut rpc_table = Table::new(&[
        "transport",
        "callers",
        "connections",
        "calls/s (% of ceiling)",
        "p50 ms (× ceiling)",
        "p99 ms (× ceiling)",
        "p99.9 ms (× ceiling)",
    ]);
    for &shape in &plan.shapes {
        // `None` is the echo ceiling.
        let mut variants: Vec<Option<Wire>> = Vec::new();
        if plan.ceiling || !with_rpc {
            variants.push(None);
        }
        if with_rpc {
            for &wire in &plan.wires {
                if wire == Wire::Xhr && shape.callers != plan.xhr_callers {
                    continue;
                }
                variants.push(Some(wire));
            }
        }
        let name = |v: &Option<Wire>| {
            format!(
                "{}, {} callers, {} connections",
                v.map_or("echo ceiling", Wire::name),
                shape.callers,
                shape.connections()
            )
        };
        let mut acc: Vec<Option<Sample>> = vec![None; variants.len()];
        for _round in 0..plan.rounds {
            for (v, slot) in variants.iter().zip(acc.iter_mut()) {
                let what = name(v);
                let s = match v {
                    None => run_echo(&echo, &request, shape, plan).await,
                    Some(wire) => run_kite(&server, *wire, shape, plan).await,
                }
                .with_context(|| what.clone())?;
                match slot {
                    Some(a) => a.merge(s),
                    None => *slot = Some(s),
                }
            }
        }
        let mut ceiling = None;
        for (v, s) in variants.iter().zip(acc) {
            let Some(s) = s else { continue };
            let what = name(v);
            progress(&what, &s);
            check(&s, &what, findings);
            let Some(wire) = *v else {
                ceiling_table.row(vec![
                    shape.callers.to_string(),
                    shape.connections().to_string(),
                    int(s.rate()),
                    ms(s.ms(0.5)),
                    ms(s.ms(0.99)),
                    ms(s.ms(0.999)),
                ]);
                ceiling = Some(s);
                continue;
            };
            let c = ceiling.as_ref();
            let rel = |v: f64, q: f64| match c {
                Some(c) => format!("{} ({})", ms(v), times(v, c.ms(q))),
                None => ms(v),
            };
            rpc_table.row(vec![
                wire.name().into(),
                shape.callers.to_string(),
                shape.connections().to_string(),
                match c {
                    Some(c) => format!("{} ({})", int(s.rate()), pct(s.rate(), c.rate())),
                    None => int(s.rate()),
                },
                rel(s.ms(0.5), 0.5),
                rel(s.ms(0.99), 0.99),
                rel(s.ms(0.999), 0.999),
            ]);
            if wire == Wire::SockJsWs && shape.shared && shape.callers == 64 {
                if let Some(c) = c {
                    findings.shared64_ratio = Some((s.rate(), c.rate()));
                }
            }
        }
    }
    let load_after = machine::loadavg();
    if !ceiling_table.is_empty() {
        println!("### Ceiling: WebSocket echo (tokio-tungstenite, tokio)\n");
        println!(
            "Request {} B, response {} B (the SockJS WebSocket frames of one `square` call). {}. Load average before/after: {load_before} / {load_after}.\n",
            request.len(),
            response.len(),
            plan.describe_load()
        );
        ceiling_table.print();
    }
    if with_rpc && !rpc_table.is_empty() {
        println!("### RPC: `square` on a kite, no authentication\n");
        println!(
            "Server and callers in this process (tokio, {} worker threads). Ratios against the echo ceiling of the same callers and connections, measured in the same rounds. {}. Load average before/after: {load_before} / {load_after}.\n",
            machine::workers(),
            plan.describe_load()
        );
        rpc_table.print();
    }
    Ok(())
}

/// The Kontrol key pair of the `auth` table: read from the PKCS#1 PEM file named by
/// `KITE_BENCH_KONTROL_KEY` (so that repeated runs do the same work, e.g. for instruction
/// counts), else generated.
async fn kontrol_key() -> anyhow::Result<KeyPair> {
    if let Ok(path) = std::env::var("KITE_BENCH_KONTROL_KEY") {
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("KITE_BENCH_KONTROL_KEY: reading {path}"))?;
        let private = kite::auth::parse_private_key_pem(&pem)
            .with_context(|| format!("KITE_BENCH_KONTROL_KEY: {path}"))?;
        return KeyPair::from_private_key("bench-kontrol-key", private)
            .context("KITE_BENCH_KONTROL_KEY");
    }
    eprintln!("generating a 2048-bit RSA Kontrol key pair...");
    tokio::task::spawn_blocking(|| KeyPair::generate(2048))
        .await
        .context("key generation task")?
        .context("key generation")
}

/// SockJS WebSocket with token and kiteKey credentials against no authentication, the
/// three measured back to back per shape.
pub(crate) async fn auth(plan: &Plan, findings: &mut Findings) -> anyhow::Result<()> {
    let load_before = machine::loadavg();
    let kontrol = Arc::new(kontrol_key().await?);
    let modes = &plan.credentials[..];
    // The table compares token and kiteKey with none, so it needs all three, in order.
    let full = modes == [AuthMode::None, AuthMode::Token, AuthMode::KiteKey];
    let mut servers = Vec::new();
    for &mode in modes {
        servers.push(KiteServer::start(mode, Some(&kontrol)).await?);
    }
    let mut table = Table::new(&[
        "callers",
        "connections",
        "none calls/s",
        "token calls/s (% of none)",
        "kiteKey calls/s (% of none)",
        "p99 ms none / token / kiteKey",
    ]);
    for &shape in &plan.shapes {
        let what = |mode: &AuthMode| {
            format!(
                "auth {}, {} callers, {} connections",
                mode.name(),
                shape.callers,
                shape.connections()
            )
        };
        let mut acc: Vec<Option<Sample>> = vec![None; modes.len()];
        for _round in 0..plan.rounds {
            for ((mode, server), slot) in modes.iter().zip(&servers).zip(acc.iter_mut()) {
                let s = run_kite(server, Wire::SockJsWs, shape, plan)
                    .await
                    .with_context(|| what(mode))?;
                match slot {
                    Some(a) => a.merge(s),
                    None => *slot = Some(s),
                }
            }
        }
        let mut samples = Vec::new();
        for (mode, s) in modes.iter().zip(acc) {
            let Some(s) = s else { continue };
            progress(&what(mode), &s);
            check(&s, &what(mode), findings);
            samples.push(s);
        }
        if !full || samples.len() < modes.len() {
            continue;
        }
        let base = samples[0].rate();
        table.row(vec![
            shape.callers.to_string(),
            shape.connections().to_string(),
            int(base),
            format!(
                "{} ({})",
                int(samples[1].rate()),
                pct(samples[1].rate(), base)
            ),
            format!(
                "{} ({})",
                int(samples[2].rate()),
                pct(samples[2].rate(), base)
            ),
            format!(
                "{} / {} / {}",
                ms(samples[0].ms(0.99)),
                ms(samples[1].ms(0.99)),
                ms(samples[2].ms(0.99))
            ),
        ]);
        if shape.shared && shape.callers == 64 {
            findings.token_ratio = Some((samples[1].rate(), base));
        }
    }
    if !full {
        return Ok(());
    }
    let load_after = machine::loadavg();
    let caller = rpc::caller_kite(Wire::SockJsWs)?;
    let sizes: Vec<String> = modes
        .iter()
        .zip(&servers)
        .map(|(mode, server)| {
            let (identity, auth) = rpc::wire_identity(&caller, server.auth.as_ref());
            let (request, _) = crate::payload::sockjs_sizes(&identity, auth.as_ref());
            format!("{} {} B", mode.name(), request.len())
        })
        .collect();
    println!("### Authentication cost (SockJS WebSocket)\n");
    println!(
        "The kite trusts a 2048-bit Kontrol key; callers send a token (audience `/bench/<env>/math`) or a kite key issued with it (request frames: {}). {}. Load average before/after: {load_before} / {load_after}.\n",
        sizes.join(", "),
        plan.describe_load()
    );
    table.print();
    Ok(())
}
