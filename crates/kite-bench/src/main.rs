//! Benchmarks of the Kite RPC path, the transport ceiling and Kontrol.
//!
//! `cargo run --release -p kite-bench -- all` (add `--quick` for a short run); subcommands
//! `rpc`, `ceiling`, `auth`, `memory`, `kontrol`, `balanced` run one part. Results are markdown tables
//! on stdout, progress on stderr. See the crate README for what each table means.

mod balanced;
mod bench;
mod echo;
mod kontrol;
mod machine;
mod memory;
mod payload;
mod plan;
mod raw;
mod rpc;
mod services;
mod stats;
mod table;

/// jemalloc: the kite path allocates on one thread and frees on another (a request's
/// buffers cross from the caller's task to the socket's), and glibc's malloc serialises
/// those frees on the allocating thread's arena lock. The README's profile section has the
/// figures; `--features system-allocator` measures with the system's malloc.
#[cfg(not(any(feature = "system-allocator", target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::plan::{Backend, Overrides, Plan, Sharing};
use crate::table::{int, ms, Table};

#[derive(Parser, Debug)]
#[command(
    name = "kite-bench",
    about = "Benchmarks of the Kite RPC path against the transport's ceiling, and of Kontrol's storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Short run (about a minute for `all`): shorter rows, 1,000 idle connections, 10,000 kites.
    #[arg(long, global = true)]
    quick: bool,
    /// Tiny run that only proves every part works (a few hundred calls, a few connections).
    #[arg(long, global = true)]
    smoke: bool,
    /// Measured seconds per throughput row, over all rounds (default 4; 0.6 with --quick).
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Unmeasured warm-up seconds before each round of a row (default 0.25; 0.1 with --quick).
    #[arg(long, global = true)]
    warmup: Option<f64>,
    /// Rounds per throughput row: the rows compared with each other are measured in turn,
    /// round after round, so that load changes on a shared machine hit them alike
    /// (default 4; 2 with --quick).
    #[arg(long, global = true)]
    rounds: Option<usize>,
    /// Make exactly this many calls per throughput row (no warm-up) instead of timing.
    #[arg(long, global = true)]
    calls: Option<u64>,
    /// Caller counts (default 1,8,64).
    #[arg(long, global = true, value_delimiter = ',')]
    callers: Option<Vec<usize>>,
    /// Connection layouts: one shared connection, one per caller, or both (default).
    #[arg(long, global = true, value_enum)]
    sharing: Option<Sharing>,
    /// Transports of the `rpc` table (default sockjs,raw,dnode,xhr).
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    wires: Option<Vec<rpc::Wire>>,
    /// `rpc` without the echo ceiling (e.g. to profile one case).
    #[arg(long, global = true)]
    no_ceiling: bool,
    /// Credentials of the `auth` table (default none,token,kite-key); the table and the
    /// token target need all three, fewer only print progress lines (e.g. to profile one).
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    credentials: Option<Vec<rpc::AuthMode>>,
    /// Clients of the `balanced` table (default direct,governed,p2c,round-robin); ratios
    /// need `direct`, without it the rows print absolute figures only (e.g. to profile one).
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    clients: Option<Vec<balanced::ClientKind>>,
    /// Idle connection counts of the `memory` table (default 1000,5000).
    #[arg(long, global = true, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Registered kite counts of the `kontrol` table (default 10000,100000).
    #[arg(long, global = true, value_delimiter = ',')]
    kites: Option<Vec<usize>>,
    /// getKites queries per `kontrol` row (default 2000).
    #[arg(long, global = true)]
    queries: Option<usize>,
    /// Kontrol backends (default embedded,postgres,etcd).
    #[arg(long, global = true, value_enum, value_delimiter = ',')]
    backends: Option<Vec<Backend>>,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Everything: ceiling + RPC, authentication, memory, Kontrol, balanced, then the targets.
    All,
    /// The RPC rows (SockJS WebSocket, raw WebSocket, XHR polling) with their echo ceiling.
    Rpc,
    /// The WebSocket echo ceiling alone.
    Ceiling,
    /// Token and kiteKey authentication against none.
    Auth,
    /// Server RSS per idle connection (server in a child process).
    Memory,
    /// Kontrol storage: register rate and getKites latency per backend.
    Kontrol,
    /// A balanced client (`dial_kites`) over three instances behind Kontrol against one
    /// direct connection.
    Balanced,
    /// (internal) The server process of the `memory` benchmark.
    #[command(hide = true)]
    MemoryServer,
}

/// Figures the targets are judged on.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// SockJS WebSocket, 64 callers, one shared connection: (kite calls/s, echo calls/s).
    pub shared64_ratio: Option<(f64, f64)>,
    /// 64 callers, one connection: (token calls/s, unauthenticated calls/s).
    pub token_ratio: Option<(f64, f64)>,
    /// (connections, KiB per idle connection) at the largest count measured.
    pub kib_per_connection: Option<(usize, f64)>,
    /// getKites p99 with 100,000 kites on the embedded store, ms.
    pub getkites_p99_100k: Option<f64>,
    /// Failed calls or steps.
    pub errors: u64,
}

fn verdict(ok: bool) -> String {
    if ok { "PASS" } else { "MISS" }.into()
}

fn print_targets(command: Command, f: &Findings) {
    let mut t = Table::new(&["target", "measured", "result"]);
    let all = command == Command::All;
    if all || command == Command::Rpc {
        t.row(match f.shared64_ratio {
            Some((k, e)) => vec![
                "64 callers on one shared connection ≥ 50% of the echo ceiling".into(),
                format!("{:.0}% ({} / {} calls/s)", 100.0 * k / e, int(k), int(e)),
                verdict(k >= 0.5 * e),
            ],
            None => vec![
                "64 callers on one shared connection ≥ 50% of the echo ceiling".into(),
                "not measured".into(),
                "-".into(),
            ],
        });
    }
    if all || command == Command::Auth {
        t.row(match f.token_ratio {
            Some((tk, none)) => vec![
                "token authentication ≥ 90% of unauthenticated throughput (64 callers, 1 connection)".into(),
                format!("{:.0}% ({} / {} calls/s)", 100.0 * tk / none, int(tk), int(none)),
                verdict(tk >= 0.9 * none),
            ],
            None => vec!["token authentication ≥ 90% of unauthenticated throughput".into(), "not measured".into(), "-".into()],
        });
    }
    if all || command == Command::Memory {
        t.row(match f.kib_per_connection {
            Some((n, kib)) => vec![
                "≤ 8 KiB per idle connection".into(),
                format!("{kib:.1} KiB ({} connections)", int(n as f64)),
                verdict(kib <= 8.0),
            ],
            None => vec![
                "≤ 8 KiB per idle connection".into(),
                "not measured".into(),
                "-".into(),
            ],
        });
    }
    if all || command == Command::Kontrol {
        t.row(match f.getkites_p99_100k {
            Some(p99) => vec![
                "getKites p99 with 100,000 kites, embedded store ≤ 5 ms".into(),
                format!("{} ms", ms(p99)),
                verdict(p99 <= 5.0),
            ],
            None => vec![
                "getKites p99 with 100,000 kites, embedded store ≤ 5 ms".into(),
                "not measured (needs 100000 in --kites)".into(),
                "-".into(),
            ],
        });
    }
    if !t.is_empty() {
        println!("### Targets\n");
        t.print();
    }
}

async fn run(cli: Cli) -> anyhow::Result<Findings> {
    let overrides = Overrides {
        quick: cli.quick,
        smoke: cli.smoke,
        duration: cli.duration,
        warmup: cli.warmup,
        calls: cli.calls,
        rounds: cli.rounds,
        callers: cli.callers,
        sharing: cli.sharing,
        wires: cli.wires,
        no_ceiling: cli.no_ceiling,
        credentials: cli.credentials,
        clients: cli.clients,
        connections: cli.connections,
        kites: cli.kites,
        queries: cli.queries,
        backends: cli.backends,
    };
    let plan = Plan::new(&overrides);
    let mut findings = Findings::default();
    println!("## kite-bench `{:?}` ({} run)\n", cli.command, plan.mode);
    println!(
        "{} CPUs, load average {} at start, {} build{}.\n",
        machine::cores(),
        machine::loadavg(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if cfg!(debug_assertions) {
            " (figures of a debug build mean nothing: use --release)"
        } else {
            ""
        }
    );
    let t = std::time::Instant::now();
    match cli.command {
        Command::All => {
            bench::rpc(&plan, true, &mut findings).await?;
            bench::auth(&plan, &mut findings).await?;
            memory::memory(&plan, &mut findings).await?;
            kontrol::kontrol(&plan, &mut findings).await?;
            balanced::balanced(&plan, &mut findings).await?;
        }
        Command::Rpc => bench::rpc(&plan, true, &mut findings).await?,
        Command::Ceiling => bench::rpc(&plan, false, &mut findings).await?,
        Command::Auth => bench::auth(&plan, &mut findings).await?,
        Command::Memory => memory::memory(&plan, &mut findings).await?,
        Command::Kontrol => kontrol::kontrol(&plan, &mut findings).await?,
        Command::Balanced => balanced::balanced(&plan, &mut findings).await?,
        Command::MemoryServer => unreachable!("handled before"),
    }
    print_targets(cli.command, &findings);
    println!(
        "Run took {:.0} s; load average at the end {}.",
        t.elapsed().as_secs_f64(),
        machine::loadavg()
    );
    Ok(findings)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KITE_BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(machine::workers())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kite-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.command == Command::MemoryServer {
        return match runtime.block_on(memory::serve_child()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kite-bench memory-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(cli)) {
        Ok(f) if f.errors == 0 => ExitCode::SUCCESS,
        Ok(f) => {
            eprintln!("kite-bench: {} failed calls or steps (see above)", f.errors);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kite-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
