//! The subcommands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use kite::config::ConfigError;
use kite::kitekey::{self, KiteKey, KiteKeyError};
use kite::protocol::KontrolQuery;
use kite::{Client, Config, Kite, KiteError, KontrolSettings};
use serde_json::{json, Value};

use crate::cli::{self, Cli, Command, QueryFlags, Target};
use crate::output;
use crate::prompt;
use crate::Failure;

/// kitectl's kite name and version (PROTOCOL.md 10.1).
pub const NAME: &str = "kitectl";
/// kitectl's kite version.
pub const VERSION: &str = "0.0.8";

type Result<T> = std::result::Result<T, Failure>;

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Register(a) => register(&cli, a).await,
        Command::Showkey(a) => showkey(&cli, a),
        Command::Query(a) => query(&cli, a).await,
        Command::Tell(a) => tell(&cli, a).await,
        Command::Ping(a) => ping(&cli, a).await,
        Command::Watch(a) => watch(&cli, a).await,
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cmd, NAME, &mut std::io::stdout());
            Ok(())
        }
    }
}

fn env() -> HashMap<String, String> {
    std::env::vars().collect()
}

fn kite_home(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.kite_home {
        Some(h) if !h.as_os_str().is_empty() => Ok(h.clone()),
        _ => kitekey::kite_home_from(&env()).map_err(|e| anyhow!("{e}")),
    }
}

/// What to tell a user without a kite key.
fn no_key_help(home: &Path) -> String {
    format!(
        "no kite key at {path}\n  get one from your Kontrol:  kitectl register --kontrol-url http://<kontrol host>:4000/kite --username <you>\n  (or ask the Kontrol's operator for one: kontrol --initial --username <you> --kontrolurl <url>)",
        path = kitekey::kite_key_path(home).display()
    )
}

/// The full configuration (kite key + KITE_* + flags).
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let home = kite_home(cli)?;
    let mut config = match Config::load_from(Some(&home), &env()) {
        Ok(c) => c,
        Err(ConfigError::KiteKey(KiteKeyError::Read { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            bail!("{}", no_key_help(&home))
        }
        Err(e) => return Err(anyhow!("{e}")),
    };
    apply_flags(cli, &mut config);
    Ok(config)
}

fn apply_flags(cli: &Cli, config: &mut Config) {
    if let Some(url) = cli.kontrol_url.as_deref().filter(|u| !u.is_empty()) {
        config.kontrol_url = url.to_owned();
    }
    config.timeout = cli.timeout;
    config.handshake_timeout = cli.timeout;
}

fn new_kite(cli: &Cli, config: Config) -> anyhow::Result<Kite> {
    let mut k = Kite::with_config(NAME, VERSION, config).context("creating the kitectl kite")?;
    k.limits.dial_timeout = cli.timeout;
    k.limits.call_timeout = Some(cli.timeout);
    k.kontrol().set_settings(KontrolSettings {
        timeout: Some(cli.timeout),
        ..KontrolSettings::default()
    });
    Ok(k)
}

fn to_query(flags: &QueryFlags, default_username: &str) -> KontrolQuery {
    let f = |v: &Option<String>| v.clone().unwrap_or_default();
    KontrolQuery {
        username: flags
            .username
            .clone()
            .unwrap_or_else(|| default_username.to_owned()),
        environment: f(&flags.environment),
        name: f(&flags.name),
        version: f(&flags.version),
        region: f(&flags.region),
        hostname: f(&flags.hostname),
        id: f(&flags.id),
    }
}

/// Errors of Kontrol calls: Kontrol's own errors are "remote" answers, the rest local.
fn kontrol_failure(e: KiteError, what: &str) -> Failure {
    use kite::error::types;
    match e.kind.as_str() {
        types::SEND | types::TIMEOUT | types::DISCONNECT | types::INVALID_RESPONSE => {
            Failure::Local(anyhow!("{what}: {}", e.message))
        }
        _ => Failure::Remote(KiteError::new(e.kind, format!("{what}: {}", e.message))),
    }
}

// ---------------------------------------------------------------------------------------

async fn register(cli: &Cli, args: &cli::RegisterArgs) -> Result<()> {
    let home = kite_home(cli)?;
    let path = kitekey::kite_key_path(&home);
    if path.exists() && !args.force {
        let who = KiteKey::load(&home, SystemTime::now())
            .map(|k| format!(" (user {})", k.username()))
            .unwrap_or_default();
        return Err(anyhow!(
            "a kite key already exists at {}{who}; use --force to replace it",
            path.display()
        )
        .into());
    }
    let interactive = prompt::interactive();
    let kontrol_url = match cli.kontrol_url.clone().filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if interactive => prompt::ask("Kontrol URL", Some("http://127.0.0.1:4000/kite"))?,
        None => {
            return Err(anyhow!(
            "which Kontrol? pass --kontrol-url http://<host>:4000/kite (or set KITE_KONTROL_URL)"
        )
            .into())
        }
    };
    let default_user = std::env::var("USER").unwrap_or_default();
    let username = match args.username.clone().filter(|u| !u.is_empty()) {
        Some(u) => u,
        None if interactive => prompt::ask("User name", Some(&default_user))?,
        None if !default_user.is_empty() => default_user,
        None => return Err(anyhow!("which user? pass --username <name>").into()),
    };
    if username.is_empty() || username.contains('/') {
        return Err(anyhow!("invalid user name {username:?}").into());
    }
    let secret = match args.secret.clone() {
        Some(s) => Some(s),
        None if interactive => Some(prompt::ask_secret("Registration secret (empty if none)")?)
            .filter(|s| !s.is_empty()),
        None => None,
    };

    let mut config = Config::default();
    config.username.clone_from(&username);
    config.kontrol_url.clone_from(&kontrol_url);
    apply_flags(cli, &mut config);
    config.kontrol_url.clone_from(&kontrol_url);
    let k = new_kite(cli, config)?;
    let client = k.new_client(&kontrol_url);
    client
        .dial()
        .await
        .map_err(|e| anyhow!("cannot connect to Kontrol at {kontrol_url}: {}", e.message))?;
    let mut arg = json!({ "username": username });
    if let Some(s) = &secret {
        arg["secret"] = json!(s);
    }
    // Go's kitectl allowed 5 minutes: the Kontrol side may ask an operator.
    let answer = client
        .tell_with_timeout("registerMachine", &(arg,), Some(Duration::from_secs(300)))
        .await;
    client.close().await;
    let key: String = match answer {
        Ok(r) => r
            .decode()
            .map_err(|e| anyhow!("Kontrol answered with something else than a kite key: {e}"))?,
        Err(e) if e.message.contains("no valid authentication key found") => {
            return Err(anyhow!(
                "this Kontrol does not hand out kite keys (registerMachine is disabled); ask its operator to start it with --machine-secret, or to issue you a key with `kontrol --initial --username {username}`"
            )
            .into())
        }
        Err(e) if e.message.contains("invalid secret") => {
            return Err(anyhow!(
                "Kontrol refused the registration secret{}; pass the right one with --secret",
                if secret.is_none() { " (none given)" } else { "" }
            )
            .into())
        }
        Err(e) => return Err(kontrol_failure(e, "registerMachine")),
    };
    let parsed = KiteKey::parse(&key, SystemTime::now())
        .map_err(|e| anyhow!("Kontrol sent an invalid kite key: {e}"))?;
    kitekey::write(&home, &key).map_err(|e| anyhow!("{e}"))?;
    println!(
        "registered as {} with {}; kite key written to {}",
        parsed.username(),
        parsed.kontrol_url(),
        path.display()
    );
    Ok(())
}

fn showkey(cli: &Cli, args: &cli::ShowkeyArgs) -> Result<()> {
    let home = kite_home(cli)?;
    let key = match KiteKey::load(&home, SystemTime::now()) {
        Ok(k) => k,
        Err(KiteKeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(anyhow!("{}", no_key_help(&home)).into())
        }
        Err(e) => return Err(anyhow!("{e}").into()),
    };
    let claims = &key.claims;
    if args.json {
        let v = serde_json::to_value(claims).map_err(|e| anyhow!("{e}"))?;
        println!("{}", output::json(v, true));
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            rows.push(vec![format!("{k}:"), v]);
        }
    };
    add("sub", claims.sub.clone());
    add("iss", claims.iss.clone());
    add("kontrolURL", claims.kontrol_url.clone());
    add("aud", claims.aud.clone());
    add(
        "iat",
        claims
            .iat
            .map(|t| format!("{t} ({})", output::unix_time(t))),
    );
    add(
        "exp",
        claims
            .exp
            .map(|t| format!("{t} ({})", output::unix_time(t))),
    );
    add("jti", claims.jti.clone());
    let table = output::table(&["claim", "value"], &rows);
    // Skip the header line: the claim names speak for themselves.
    for line in table.lines().skip(1) {
        println!("{line}");
    }
    if let Some(pem) = &claims.kontrol_key {
        println!("kontrolKey:");
        println!("{}", pem.trim());
    }
    println!("file: {}", kitekey::kite_key_path(&home).display());
    Ok(())
}

async fn query(cli: &Cli, args: &cli::QueryArgs) -> Result<()> {
    let config = load_config(cli)?;
    let q = to_query(&args.query, &config.username);
    let k = new_kite(cli, config)?;
    let kites = k
        .kontrol()
        .get_kites_raw(&q)
        .await
        .map_err(|e| kontrol_failure(e, "getKites"))?;
    k.kontrol().close().await;
    if args.json {
        let list: Vec<Value> = kites
            .iter()
            .map(|kt| {
                let mut v = json!({ "kite": kt.kite, "url": kt.url });
                if !kt.key_id.is_empty() {
                    v["keyId"] = json!(kt.key_id);
                }
                v
            })
            .collect();
        println!("{}", output::json(Value::Array(list), true));
        return Ok(());
    }
    if kites.is_empty() {
        eprintln!("no kites match {q}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = kites
        .iter()
        .map(|kt| {
            let i = &kt.kite;
            vec![
                i.username.clone(),
                i.environment.clone(),
                i.name.clone(),
                i.version.clone(),
                i.region.clone(),
                i.hostname.clone(),
                i.id.clone(),
                kt.url.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "USERNAME",
                "ENVIRONMENT",
                "NAME",
                "VERSION",
                "REGION",
                "HOSTNAME",
                "ID",
                "URL"
            ],
            &rows
        )
    );
    Ok(())
}

/// A connected client for the target: `--url` with the kite key, else found through
/// Kontrol (token credential).
async fn connect(cli: &Cli, target: &Target) -> Result<(Kite, Client)> {
    let (k, client) = match &target.url {
        Some(url) => {
            // A kite key is optional here: kites without authentication need none.
            let config = match load_config(cli) {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!("calling without credentials: {e:#}");
                    let mut c = Config::default();
                    c.apply_env(&env()).map_err(|e| anyhow!("{e}"))?;
                    apply_flags(cli, &mut c);
                    c
                }
            };
            let k = new_kite(cli, config)?;
            let client = k.new_client(url);
            (k, client)
        }
        None => {
            let config = load_config(cli)?;
            let q = to_query(&target.query, &config.username);
            if q.name.is_empty() && q.id.is_empty() {
                return Err(anyhow!(
                    "which kite? give --url URL, or query flags such as --name NAME (and --environment, --id, ...)"
                )
                .into());
            }
            let k = new_kite(cli, config)?;
            let client = match k.kontrol().get_kite(&q).await {
                Ok(c) => c,
                Err(e) if e.message.contains("no kites available") => {
                    return Err(anyhow!("no kite matches {q}").into())
                }
                Err(e) => return Err(kontrol_failure(e, "getKites")),
            };
            (k, client)
        }
    };
    client
        .dial()
        .await
        .map_err(|e| anyhow!("cannot connect to {}: {}", client.url(), e.message))?;
    Ok((k, client))
}

/// A command-line argument as a JSON value (plain text becomes a string).
fn parse_arg(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

async fn tell(cli: &Cli, args: &cli::TellArgs) -> Result<()> {
    let (k, client) = connect(cli, &args.target).await?;
    let list: Vec<Value> = args.args.iter().map(|a| parse_arg(a)).collect();
    let result = client
        .tell_with_timeout(&args.method, &list, Some(cli.timeout))
        .await;
    client.close().await;
    k.kontrol().close().await;
    match result {
        Ok(r) => {
            println!("{}", output::json(r.into_value(), args.pretty));
            Ok(())
        }
        Err(e) => Err(call_failure(e, client.url())),
    }
}

fn call_failure(e: KiteError, url: &str) -> Failure {
    use kite::error::types;
    match e.kind.as_str() {
        types::SEND | types::DISCONNECT => {
            Failure::Local(anyhow!("lost the connection to {url}: {}", e.message))
        }
        types::TIMEOUT => Failure::Local(anyhow!("{url}: {}", e.message)),
        _ => Failure::Remote(e),
    }
}

async fn ping(cli: &Cli, args: &cli::PingArgs) -> Result<()> {
    let (k, client) = connect(cli, &args.target).await?;
    let start = Instant::now();
    let result = client
        .tell_with_timeout("kite.ping", &(), Some(cli.timeout))
        .await;
    let elapsed = start.elapsed();
    client.close().await;
    k.kontrol().close().await;
    match result {
        Ok(r) => {
            let who = client
                .remote_kite()
                .map(|k| k.to_string())
                .unwrap_or_else(|| client.url().to_owned());
            println!(
                "{} from {who} in {:.1} ms",
                r.as_str().unwrap_or("?"),
                elapsed.as_secs_f64() * 1000.0
            );
            Ok(())
        }
        Err(e) => Err(call_failure(e, client.url())),
    }
}

async fn watch(cli: &Cli, args: &cli::WatchArgs) -> Result<()> {
    let config = load_config(cli)?;
    let q = to_query(&args.query, &config.username);
    let k = new_kite(cli, config)?;
    let mut watcher = k
        .kontrol()
        .watch_kites(&q)
        .await
        .map_err(|e| kontrol_failure(e, "getKites (watch)"))?;
    let print = |action: &str, kite: &kite::protocol::Kite, url: &str| {
        if args.json {
            println!("{}", json!({ "action": action, "kite": kite, "url": url }));
        } else {
            println!("{action:<10}  {kite}  {url}");
        }
    };
    for kt in watcher.kites() {
        print("PRESENT", &kt.kite, &kt.url);
    }
    if !args.json {
        eprintln!("watching {q} (Ctrl-C to stop)");
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = watcher.next() => match event {
                Some(Ok(e)) => print(e.action.as_str(), &e.kite, &e.url),
                Some(Err(e)) => eprintln!("kitectl: watch: {}: {}", e.kind, e.message),
                None => {
                    return Err(anyhow!("lost the connection to Kontrol at {}", k.kontrol().url()).into())
                }
            },
        }
    }
    let _ = watcher.cancel().await;
    k.kontrol().close().await;
    Ok(())
}
