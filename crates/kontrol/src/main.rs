//! The `kontrol` binary: runs Kontrol, the Kite registry and authority, as a kite on port
//! 4000 (SockJS at `/kite`, plus `POST /register`, `GET /heartbeat`, `GET /healthz`), or with
//! `--initial` writes a kite key for a user and exits. See crates/kontrol/README.md.
//!
//! Flags and `KONTROL_*` variables follow the Go binary (PROTOCOL.md 8.6); Go's single-dash
//! spelling (`-port 4000`) is accepted too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};

use kontrol::kite_service::KontrolKite;
use kontrol::storage::{
    EmbeddedConfig, EtcdConfig, NewKeyPair, PostgresConfig, Storage, StorageConfig,
};
use kontrol::{Kontrol, KontrolConfig, RegisterMachinePolicy};

/// Where registrations and key pairs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StorageKind {
    /// A database file in --data-dir (no other service needed).
    Embedded,
    /// PostgreSQL (--postgres-url or --postgres-host/...).
    Postgres,
    /// etcd v3 (--machines).
    Etcd,
}

/// Kontrol: the registry and authority of kites.
///
/// Kites register with Kontrol, find each other through it and get the tokens they need to
/// call each other. A first start needs no configuration: Kontrol creates its data
/// directory and an RSA key pair, listens on port 4000, and prints the URL kites should use
/// and how users get a kite key.
///
/// Every flag can also be set with the environment variable shown (KONTROL_*).
#[derive(Debug, Parser)]
#[command(name = "kontrol", disable_version_flag = true, max_term_width = 100)]
struct Args {
    /// IP address to listen on (default: all interfaces).
    #[arg(
        long,
        env = "KONTROL_IP",
        value_name = "IP",
        help_heading = "Listening"
    )]
    ip: Option<String>,
    /// Port to listen on; 0 picks a free port.
    #[arg(
        long,
        env = "KONTROL_PORT",
        default_value_t = 4000,
        help_heading = "Listening"
    )]
    port: u16,
    /// Address to listen on as IP:PORT (overrides --ip and --port), e.g. 127.0.0.1:0.
    #[arg(
        long,
        env = "KONTROL_LISTEN",
        value_name = "ADDR",
        help_heading = "Listening"
    )]
    listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM); serve HTTPS with --tlskeyfile.
    #[arg(
        long,
        env = "KONTROL_TLSCERTFILE",
        value_name = "FILE",
        requires = "tlskeyfile",
        help_heading = "Listening"
    )]
    tlscertfile: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        env = "KONTROL_TLSKEYFILE",
        value_name = "FILE",
        requires = "tlscertfile",
        help_heading = "Listening"
    )]
    tlskeyfile: Option<PathBuf>,

    /// The URL kites use to reach Kontrol, written into every kite key (default: the
    /// address Kontrol listens on, e.g. http://127.0.0.1:4000/kite).
    #[arg(
        long,
        env = "KONTROL_KONTROLURL",
        value_name = "URL",
        help_heading = "Identity"
    )]
    kontrolurl: Option<String>,
    /// The URL Kontrol registers for itself (default: --kontrolurl).
    #[arg(
        long,
        env = "KONTROL_REGISTERURL",
        value_name = "URL",
        help_heading = "Identity"
    )]
    registerurl: Option<String>,
    /// Kontrol's own user name: the issuer of the kite keys and tokens it signs.
    #[arg(
        long,
        env = "KONTROL_KONTROLUSER",
        default_value = "kontrol",
        value_name = "NAME",
        help_heading = "Identity"
    )]
    kontrol_user: String,
    /// Version of the kontrol kite.
    #[arg(
        long,
        env = "KONTROL_VERSION",
        default_value = "0.0.1",
        help_heading = "Identity"
    )]
    version: String,
    /// Environment of the kontrol kite.
    #[arg(
        long,
        env = "KONTROL_ENVIRONMENT",
        default_value = "unknown",
        help_heading = "Identity"
    )]
    environment: String,
    /// Region of the kontrol kite.
    #[arg(
        long,
        env = "KONTROL_REGION",
        default_value = "unknown",
        help_heading = "Identity"
    )]
    region: String,

    /// Storage backend.
    #[arg(
        long,
        env = "KONTROL_STORAGE",
        value_enum,
        default_value_t = StorageKind::Embedded,
        help_heading = "Storage"
    )]
    storage: StorageKind,
    /// Data directory of the embedded storage (created if missing) [default: ~/.kontrol].
    #[arg(
        long,
        env = "KONTROL_DATADIR",
        value_name = "DIR",
        help_heading = "Storage"
    )]
    data_dir: Option<PathBuf>,
    /// PostgreSQL connection string (key=value or postgresql:// URL); overrides the
    /// --postgres-* fields.
    #[arg(
        long,
        env = "KONTROL_POSTGRES",
        value_name = "CONNINFO",
        help_heading = "Storage"
    )]
    postgres_url: Option<String>,
    /// PostgreSQL host.
    #[arg(
        long,
        env = "KONTROL_POSTGRES_HOST",
        default_value = "localhost",
        help_heading = "Storage"
    )]
    postgres_host: String,
    /// PostgreSQL port.
    #[arg(
        long,
        env = "KONTROL_POSTGRES_PORT",
        default_value_t = 5432,
        help_heading = "Storage"
    )]
    postgres_port: u16,
    /// PostgreSQL user.
    #[arg(long, env = "KONTROL_POSTGRES_USERNAME", help_heading = "Storage")]
    postgres_username: Option<String>,
    /// PostgreSQL password.
    #[arg(
        long,
        env = "KONTROL_POSTGRES_PASSWORD",
        hide_env_values = true,
        help_heading = "Storage"
    )]
    postgres_password: Option<String>,
    /// PostgreSQL database.
    #[arg(long, env = "KONTROL_POSTGRES_DBNAME", help_heading = "Storage")]
    postgres_dbname: Option<String>,
    /// PostgreSQL connect timeout in seconds.
    #[arg(
        long,
        env = "KONTROL_POSTGRES_CONNECTTIMEOUT",
        default_value_t = 20,
        help_heading = "Storage"
    )]
    postgres_connecttimeout: u64,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "KONTROL_MACHINES",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        help_heading = "Storage"
    )]
    machines: Vec<String>,

    /// RSA public key (PEM) of a key pair to add at start (with --privatekeyfile). Without
    /// it Kontrol generates a pair on first start and keeps it in storage.
    #[arg(
        long,
        env = "KONTROL_PUBLICKEYFILE",
        value_name = "FILE",
        requires = "privatekeyfile",
        help_heading = "Keys"
    )]
    publickeyfile: Option<PathBuf>,
    /// RSA private key (PEM) of that key pair.
    #[arg(
        long,
        env = "KONTROL_PRIVATEKEYFILE",
        value_name = "FILE",
        requires = "publickeyfile",
        help_heading = "Keys"
    )]
    privatekeyfile: Option<PathBuf>,
    /// Let one machine get a kite key with `kitectl register --secret SECRET` (one use).
    #[arg(
        long,
        env = "KONTROL_MACHINESECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "Keys"
    )]
    machine_secret: Option<String>,

    /// Bootstrap: write a kite key for --username to $KITE_HOME/kite.key (default
    /// ~/.kite/kite.key), signed with the key pair in storage, then exit. Run it while
    /// Kontrol is stopped when using the embedded storage.
    #[arg(long, env = "KONTROL_INITIAL", help_heading = "Bootstrap")]
    initial: bool,
    /// The user the --initial kite key is for.
    #[arg(long, env = "KONTROL_USERNAME", help_heading = "Bootstrap")]
    username: Option<String>,

    /// Seconds between the heartbeats Kontrol asks kites for (e.g. 10s).
    #[arg(
        long,
        env = "KONTROL_HEARTBEATINTERVAL",
        default_value = "10s",
        value_parser = parse_duration,
        help_heading = "Timing"
    )]
    heartbeat_interval: Duration,
    /// How long a kite may miss heartbeats before it is dropped (e.g. 20s).
    #[arg(
        long,
        env = "KONTROL_HEARTBEATGRACE",
        default_value = "20s",
        value_parser = parse_duration,
        help_heading = "Timing"
    )]
    heartbeat_grace: Duration,
    /// Lifetime of the tokens Kontrol issues (e.g. 48h).
    #[arg(
        long,
        env = "KONTROL_TOKENTTL",
        default_value = "48h",
        value_parser = parse_duration,
        help_heading = "Timing"
    )]
    token_ttl: Duration,
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    kite::config::duration::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Go's flag package accepts `-port 4000`; clap wants `--port`. Rewrites single-dash long
/// options (`-name` or `-name=value`) to the double-dash form.
fn go_style_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = false;
    for a in args {
        if rest || a == "--" {
            rest = true;
            out.push(a);
            continue;
        }
        let bytes = a.as_bytes();
        if bytes.len() > 2 && bytes[0] == b'-' && bytes[1] != b'-' {
            let name = a[1..].split('=').next().unwrap_or_default();
            if name.len() > 1 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                out.push(format!("-{a}"));
                continue;
            }
        }
        out.push(a);
    }
    out
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn data_dir(args: &Args) -> PathBuf {
    args.data_dir
        .clone()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| match home_dir() {
            Some(h) => h.join(".kontrol"),
            None => PathBuf::from("kontrol-data"),
        })
}

fn storage_config(args: &Args) -> StorageConfig {
    match args.storage {
        StorageKind::Embedded => StorageConfig::Embedded(EmbeddedConfig::new(data_dir(args))),
        StorageKind::Postgres => {
            let conninfo = args.postgres_url.clone().unwrap_or_else(|| {
                let mut parts = vec![
                    format!("host={}", args.postgres_host),
                    format!("port={}", args.postgres_port),
                ];
                if let Some(u) = &args.postgres_username {
                    parts.push(format!("user={u}"));
                }
                if let Some(p) = &args.postgres_password {
                    parts.push(format!("password={p}"));
                }
                if let Some(d) = &args.postgres_dbname {
                    parts.push(format!("dbname={d}"));
                }
                parts.join(" ")
            });
            let mut c = PostgresConfig::new(conninfo);
            c.connect_timeout = Duration::from_secs(args.postgres_connecttimeout.max(1));
            StorageConfig::Postgres(c)
        }
        StorageKind::Etcd => StorageConfig::Etcd(EtcdConfig::new(
            args.machines
                .iter()
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty()),
        )),
    }
}

fn storage_description(args: &Args) -> String {
    match args.storage {
        StorageKind::Embedded => format!("embedded, data in {}", data_dir(args).display()),
        StorageKind::Postgres => "PostgreSQL".into(),
        StorageKind::Etcd => format!("etcd at {}", args.machines.join(",")),
    }
}

async fn open_storage(args: &Args) -> Result<Arc<Storage>> {
    let storage = Storage::connect(&storage_config(args))
        .await
        .with_context(|| format!("cannot open the storage ({})", storage_description(args)))?;
    if let (Some(public), Some(private)) = (&args.publickeyfile, &args.privatekeyfile) {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let pair = storage
            .add_key_pair(&NewKeyPair {
                id: None,
                public: read(public)?,
                private: read(private)?,
            })
            .await
            .context("cannot add the key pair of --publickeyfile/--privatekeyfile")?;
        tracing::info!(key_id = %pair.id, "key pair from files added");
    }
    Ok(Arc::new(storage))
}

fn kontrol_config(args: &Args, kontrol_url: String) -> KontrolConfig {
    let mut config = KontrolConfig::new(args.kontrol_user.clone(), kontrol_url);
    config.register_url = args.registerurl.clone().filter(|u| !u.is_empty());
    config.identity.environment.clone_from(&args.environment);
    config.identity.region.clone_from(&args.region);
    config.identity.version.clone_from(&args.version);
    config.heartbeat_interval = args.heartbeat_interval;
    config.heartbeat_grace = args.heartbeat_grace;
    config.token_ttl = args.token_ttl;
    if config.token_ttl <= config.token_leeway {
        config.token_leeway = config.token_ttl / 2;
    }
    if let Some(secret) = args.machine_secret.clone().filter(|s| !s.is_empty()) {
        config.register_machine = RegisterMachinePolicy::OneTimeSecret(secret);
    }
    config
}

fn tls_config(args: &Args) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&args.tlscertfile, &args.tlskeyfile) else {
        return Ok(None);
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("cannot open {}", cert.display()))?,
    ))
    .collect::<std::result::Result<Vec<_>, _>>()
    .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("cannot open {}", key.display()))?,
    ))
    .with_context(|| format!("cannot read the private key from {}", key.display()))?
    .ok_or_else(|| anyhow!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    Ok(Some(Arc::new(config)))
}

/// `--initial`: a kite key for `--username`, written to $KITE_HOME/kite.key.
async fn initial(args: &Args) -> Result<()> {
    let username = args
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| anyhow!("--initial needs --username (the user the kite key is for)"))?;
    let kontrol_url = args.kontrolurl.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
        anyhow!(
            "--initial needs --kontrolurl (the URL kites will use to reach Kontrol, e.g. http://kontrol.example.com:4000/kite)"
        )
    })?;
    let storage = open_storage(args).await?;
    let kontrol = Kontrol::start(kontrol_config(args, kontrol_url.clone()), storage)
        .await
        .context("cannot start Kontrol")?;
    let issued = kontrol.issue_kite_key(&username);
    kontrol.shutdown().await;
    let key = issued.context("cannot issue the kite key")?;
    let home = kite::kitekey::kite_home().map_err(|e| anyhow!("{e}"))?;
    kite::kitekey::write(&home, &key).map_err(|e| anyhow!("{e}"))?;
    println!(
        "kite key for {username} (Kontrol {kontrol_url}) written to {}",
        kite::kitekey::kite_key_path(&home).display()
    );
    Ok(())
}

async fn serve(args: &Args) -> Result<()> {
    let storage = open_storage(args).await?;
    let mut kite = KontrolKite::new_kite(&args.version).context("invalid --version")?;
    match args.listen {
        Some(addr) => {
            kite.config.ip = addr.ip().to_string();
            kite.config.port = addr.port();
        }
        None => {
            kite.config.ip = args.ip.clone().unwrap_or_default();
            kite.config.port = args.port;
        }
    }
    kite.tls = tls_config(args)?;
    let config = kontrol_config(args, args.kontrolurl.clone().unwrap_or_default());
    let server = Arc::new(
        KontrolKite::start(kite, config, storage)
            .await
            .context("cannot start Kontrol")?,
    );
    let url = server.kontrol().config().kontrol_url.clone();
    let kontrol = server.kontrol();
    println!(
        "kontrol {} serving on {} (storage: {}; key pair {})",
        args.version,
        server.url().unwrap_or_default(),
        storage_description(args),
        kontrol.current_key_id()
    );
    println!("Kites reach this Kontrol with:");
    println!("KITE_KONTROL_URL={url}");
    if args.kontrolurl.is_none() && server.kite().config.ip.is_empty() {
        println!("  (other machines need a reachable address: restart with --kontrolurl http://<host>:<port>/kite)");
    }
    println!("To give a user a kite key (~/.kite/kite.key):");
    if args.machine_secret.is_some() {
        println!("  kitectl register --kontrol-url {url} --username <name> --secret <the --machine-secret>");
    } else {
        println!("  kitectl register --kontrol-url {url} --username <name> --secret <secret>   (start kontrol with --machine-secret <secret>)");
    }
    println!(
        "  or, with kontrol stopped: kontrol --initial --username <name> --kontrolurl {url}{}",
        match args.storage {
            StorageKind::Embedded => format!(" --data-dir {}", data_dir(args).display()),
            _ => String::new(),
        }
    );
    tracing::info!(url = %url, "kontrol ready; GET /healthz reports readiness");

    let stopper = Arc::clone(&server);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stopper.shutdown().await;
    });
    server.serve().await.context("serving failed")?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::env::var("KITE_LOG_LEVEL").ok().and_then(|l| {
                match l.to_ascii_uppercase().as_str() {
                    "DEBUG" => Some("debug"),
                    "INFO" => Some("info"),
                    "WARNING" => Some("warn"),
                    "ERROR" | "FATAL" => Some("error"),
                    _ => None,
                }
                .map(str::to_owned)
            })
        })
        .unwrap_or_else(|| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("KITE_LOG_NOCOLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse_from(go_style_args(std::env::args()));
    init_logging();
    let result = if args.initial {
        initial(&args).await
    } else {
        serve(&args).await
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kontrol: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn go_single_dash_flags() {
        let v = |a: &[&str]| go_style_args(a.iter().map(|s| s.to_string()));
        assert_eq!(
            v(&["kontrol", "-port", "4000", "-initial", "-p"]),
            ["kontrol", "--port", "4000", "--initial", "-p"]
        );
        assert_eq!(
            v(&["kontrol", "-postgres-host=db", "--", "-x"]),
            ["kontrol", "--postgres-host=db", "--", "-x"]
        );
    }
}
