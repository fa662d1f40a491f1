//! `kitectl`: register with a Kontrol, show the kite key, find, call, ping and watch kites
//! from the command line. It is itself a kite named `kitectl`, version `0.0.8`
//! (PROTOCOL.md 10.1). See crates/kitectl/README.md.
//!
//! Exit codes: 0 success; 1 the called kite (or Kontrol) answered with an error (printed
//! as `<type>: <message>`); 2 bad usage; 3 anything else (no kite key, Kontrol or kite
//! unreachable, no matching kite, I/O).

mod cli;
mod commands;
mod output;
mod prompt;

use std::process::ExitCode;

use clap::Parser;

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A kite answered with an error (exit 1).
    Remote(kite::KiteError),
    /// Anything else (exit 3).
    Local(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Local(e)
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kitectl: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // Background tasks (connections) are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Remote(e)) => {
            eprintln!("{}: {}", e.kind, e.message);
            ExitCode::from(1)
        }
        Err(Failure::Local(e)) => {
            eprintln!("kitectl: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("KITE_LOG_LEVEL")
                .ok()
                .and_then(|l| level_from_kite(&l))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| default.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// `KITE_LOG_LEVEL` values (PROTOCOL.md 7.2) as tracing levels.
fn level_from_kite(level: &str) -> Option<&'static str> {
    match level.to_ascii_uppercase().as_str() {
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARNING" => Some("warn"),
        "ERROR" | "FATAL" => Some("error"),
        _ => None,
    }
}
