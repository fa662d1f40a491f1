//! A runnable Kontrol: the `kontrol` kite on port 4000 with the HTTP endpoints, configured
//! through `KONTROL_*` environment variables (PROTOCOL.md 8.6 names where they exist).
//!
//! ```text
//! cargo run -p kontrol --example kontrol                       # serve
//! cargo run -p kontrol --example kontrol -- issue alice > alice.key   # mint a kite key
//! cargo run -p kontrol --example kontrol -- rotate             # rotate the key pairs
//! ```
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `KONTROL_IP` | `` (all interfaces) | listen address |
//! | `KONTROL_PORT` | `4000` | listen port |
//! | `KONTROL_USERNAME` | `kontrol` | Kontrol's username (issuer of keys and tokens) |
//! | `KONTROL_KONTROLURL` | `http://127.0.0.1:<port>/kite` | URL written into kite keys |
//! | `KONTROL_REGISTERURL` | the Kontrol URL | URL Kontrol registers for itself |
//! | `KONTROL_VERSION` | `0.0.1` | the kite's version |
//! | `KONTROL_ENVIRONMENT`, `KONTROL_REGION` | `unknown` | identity fields |
//! | `KONTROL_STORAGE` | `embedded` | `embedded`, `postgres` or `etcd` |
//! | `KONTROL_DATADIR` | `kontrol-data` | embedded data directory |
//! | `KONTROL_POSTGRES` | — | PostgreSQL connection string |
//! | `KONTROL_MACHINES` | `http://127.0.0.1:2379` | etcd endpoints, comma-separated |
//! | `KONTROL_PUBLICKEYFILE`, `KONTROL_PRIVATEKEYFILE` | — | a key pair to add at start |
//! | `KONTROL_MACHINE_SECRET` | — | enables `registerMachine` once with this secret |

use std::env;
use std::sync::Arc;

use kontrol::kite_service::KontrolKite;
use kontrol::storage::{
    EmbeddedConfig, EtcdConfig, NewKeyPair, PostgresConfig, Storage, StorageConfig,
};
use kontrol::{Kontrol, KontrolConfig, RegisterMachinePolicy};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn storage_config() -> Result<StorageConfig, Error> {
    Ok(
        match var("KONTROL_STORAGE").as_deref().unwrap_or("embedded") {
            "embedded" => StorageConfig::Embedded(EmbeddedConfig::new(
                var("KONTROL_DATADIR").unwrap_or_else(|| "kontrol-data".into()),
            )),
            "postgres" => StorageConfig::Postgres(PostgresConfig::new(
                var("KONTROL_POSTGRES").ok_or("KONTROL_POSTGRES is required for postgres")?,
            )),
            "etcd" => StorageConfig::Etcd(EtcdConfig::new(
                var("KONTROL_MACHINES")
                    .unwrap_or_else(|| "http://127.0.0.1:2379".into())
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            )),
            other => return Err(format!("unknown KONTROL_STORAGE {other:?}").into()),
        },
    )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command: Vec<String> = env::args().skip(1).collect();

    let storage = Arc::new(Storage::connect(&storage_config()?).await?);
    if let (Some(public), Some(private)) =
        (var("KONTROL_PUBLICKEYFILE"), var("KONTROL_PRIVATEKEYFILE"))
    {
        storage
            .add_key_pair(&NewKeyPair {
                id: None,
                public: std::fs::read_to_string(public)?,
                private: std::fs::read_to_string(private)?,
            })
            .await?;
    }

    let port: u16 = var("KONTROL_PORT").map_or(Ok(4000), |p| p.parse())?;
    let ip = var("KONTROL_IP").unwrap_or_default();
    let host = if ip.is_empty() {
        "127.0.0.1"
    } else {
        ip.as_str()
    };
    let username = var("KONTROL_USERNAME").unwrap_or_else(|| "kontrol".into());
    let kontrol_url =
        var("KONTROL_KONTROLURL").unwrap_or_else(|| format!("http://{host}:{port}/kite"));
    let mut config = KontrolConfig::new(username, kontrol_url);
    config.register_url = var("KONTROL_REGISTERURL");
    if let Some(e) = var("KONTROL_ENVIRONMENT") {
        config.identity.environment = e;
    }
    if let Some(r) = var("KONTROL_REGION") {
        config.identity.region = r;
    }
    if let Some(secret) = var("KONTROL_MACHINE_SECRET") {
        config.register_machine = RegisterMachinePolicy::OneTimeSecret(secret);
    }

    match command.first().map(String::as_str) {
        Some("issue") => {
            let user = command.get(1).ok_or("usage: kontrol issue <username>")?;
            let kontrol = Kontrol::start(config, storage).await?;
            println!("{}", kontrol.issue_kite_key(user)?);
            kontrol.shutdown().await;
            return Ok(());
        }
        Some("rotate") => {
            let kontrol = Kontrol::start(config, storage).await?;
            println!("new key pair {}", kontrol.rotate_keys().await?);
            kontrol.shutdown().await;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown command {other:?} (issue, rotate)").into()),
        None => {}
    }

    let version = var("KONTROL_VERSION").unwrap_or_else(|| "0.0.1".into());
    let mut kite = KontrolKite::new_kite(&version)?;
    kite.config.ip = ip;
    kite.config.port = port;
    let server = Arc::new(KontrolKite::start(kite, config, storage).await?);
    tracing::info!(url = ?server.url(), "kontrol serving");
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.shutdown().await;
    });
    server.serve().await?;
    Ok(())
}
