//! Command-line definitions (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Register with a Kontrol, then find, call and watch kites.
///
/// kitectl reads your kite key from $KITE_HOME/kite.key (default ~/.kite/kite.key); the key
/// names the Kontrol to use (override with --kontrol-url or KITE_KONTROL_URL). Get a key
/// with `kitectl register`.
#[derive(Debug, Parser)]
#[command(name = "kitectl", version)]
pub struct Cli {
    /// Directory holding kite.key.
    #[arg(long, global = true, env = "KITE_HOME", value_name = "DIR")]
    pub kite_home: Option<PathBuf>,

    /// Kontrol URL (e.g. http://kontrol.example.com:4000/kite); default: the one in the
    /// kite key.
    #[arg(long, global = true, env = "KITE_KONTROL_URL", value_name = "URL")]
    pub kontrol_url: Option<String>,

    /// Time allowed for connecting and for each call (e.g. 15s, 2m).
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// More log output on stderr (-v info, -vv debug; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Get a kite key from a Kontrol (registerMachine) and store it in $KITE_HOME/kite.key.
    ///
    /// Missing values are asked for when stdin is a terminal.
    Register(RegisterArgs),
    /// Show the claims of the kite key.
    Showkey(ShowkeyArgs),
    /// List the kites matching a query.
    Query(QueryArgs),
    /// Call a method of a kite and print its JSON result.
    Tell(TellArgs),
    /// Ping a kite (kite.ping) and print the round-trip time.
    Ping(PingArgs),
    /// Print REGISTER / DEREGISTER events of the kites matching a query until interrupted.
    Watch(WatchArgs),
    /// Print a shell completion script (e.g. `kitectl completions bash > /etc/bash_completion.d/kitectl`).
    Completions(CompletionsArgs),
}

/// `register` options.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Your user name (default: asked for, or $USER).
    #[arg(long, short)]
    pub username: Option<String>,
    /// The registration secret, if the Kontrol's operator set one (`kontrol --machine-secret`).
    #[arg(long, env = "KITECTL_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Replace an existing kite key.
    #[arg(long)]
    pub force: bool,
}

/// `showkey` options.
#[derive(Debug, Args)]
pub struct ShowkeyArgs {
    /// Print the claims as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The seven query fields.
#[derive(Debug, Args, Clone, Default)]
pub struct QueryFlags {
    /// Owner of the kites (default: your user name).
    #[arg(long)]
    pub username: Option<String>,
    /// Environment (production, staging, ...).
    #[arg(long)]
    pub environment: Option<String>,
    /// Kite name (e.g. math).
    #[arg(long)]
    pub name: Option<String>,
    /// Version or constraint (e.g. 1.0.0, ">= 1.0, < 2").
    #[arg(long)]
    pub version: Option<String>,
    /// Region.
    #[arg(long)]
    pub region: Option<String>,
    /// Host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Kite id.
    #[arg(long)]
    pub id: Option<String>,
}

/// `query` options.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Query fields.
    #[command(flatten)]
    pub query: QueryFlags,
    /// Print JSON (kite, url, keyId per match) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How to reach the target kite.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Dial this kite URL directly (e.g. http://127.0.0.1:6000/kite), authenticating with
    /// your kite key; otherwise the kite is found through Kontrol with the query flags.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Query fields (used without --url).
    #[command(flatten)]
    pub query: QueryFlags,
}

/// `tell` options.
#[derive(Debug, Args)]
pub struct TellArgs {
    /// Where the kite is.
    #[command(flatten)]
    pub target: Target,
    /// Pretty-print the result.
    #[arg(long)]
    pub pretty: bool,
    /// The method to call (e.g. square, kite.systemInfo).
    pub method: String,
    /// Arguments, each a JSON value (4, "text", '{"a":1}'); anything that is not JSON is
    /// passed as a string.
    #[arg(allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `ping` options.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Where the kite is.
    #[command(flatten)]
    pub target: Target,
}

/// `watch` options.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Query fields.
    #[command(flatten)]
    pub query: QueryFlags,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `completions` options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Durations like `15s`, `500ms`, `2m`, `1h30m` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    kite::config::duration::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4s").unwrap(), Duration::from_secs(4));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }
}
