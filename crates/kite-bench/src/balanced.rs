//! A balanced client over three `square` instances registered with an in-process Kontrol,
//! against a single direct connection to one of them.
//!
//! Kontrol runs in this process on its embedded store (a temporary directory); three
//! `math` kites register with it under kite keys it issued. The callers' kite finds them
//! through Kontrol: `dial_kites` (watch + balancer + the default governance layers) for the
//! balanced rows, `getKites` and one dialed `Client` for the direct row. Every client
//! sends the token Kontrol issued with the instance, so authentication costs the same in
//! every row.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use kite::kitekey::KiteKey;
use kite::protocol::KontrolQuery;
use kite::{Client, Kite, ShutdownHandle};
use kite_governance::{dial_kites, BalancerConfig, ClientConfig, GovernedClient, Strategy};
use kontrol::kite_service::KontrolKite;
use kontrol::storage::{EmbeddedConfig, Storage, StorageConfig};
use kontrol::KontrolConfig;

use crate::bench::{check, progress};
use crate::plan::Plan;
use crate::stats::{self, Caller, Sample};
use crate::table::{int, ms, pct, times, Table};
use crate::{machine, payload, Findings};

/// Instances behind the balancer.
const INSTANCES: usize = 3;
/// The instances' username and environment, and the query that finds them.
const USER: &str = "bench";
const ENVIRONMENT: &str = "bench";

/// Kontrol in this process; shut down when dropped.
struct InProcessKontrol {
    server: Arc<KontrolKite>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for InProcessKontrol {
    fn drop(&mut self) {
        let s = self.server.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { s.shutdown().await });
        }
    }
}

impl InProcessKontrol {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("Kontrol's temporary directory")?;
        let storage = Arc::new(
            Storage::connect(&StorageConfig::Embedded(EmbeddedConfig::new(
                dir.path().join("data"),
            )))
            .await
            .context("Kontrol's embedded store")?,
        );
        let server = KontrolKite::spawn_local(KontrolConfig::new("kontrol", ""), storage)
            .await
            .context("start Kontrol")?;
        let url = server.url().context("a listening Kontrol has a URL")?;
        Ok(InProcessKontrol {
            server,
            url,
            _dir: dir,
        })
    }

    /// A kite of `username` holding a kite key from this Kontrol.
    fn kite(&self, name: &str, username: &str) -> anyhow::Result<Kite> {
        let raw = self.server.kontrol().issue_kite_key(username)?;
        let key = KiteKey::parse(&raw, SystemTime::now())?;
        let mut config = kite::Config::default();
        config.apply_kite_key(&key);
        if config.kontrol_url != self.url {
            bail!(
                "the kite key names Kontrol {:?}, not {:?}",
                config.kontrol_url,
                self.url
            );
        }
        config.ip = "127.0.0.1".into();
        config.port = 0;
        config.environment = ENVIRONMENT.into();
        Ok(Kite::with_config(name, "1.0.0", config)?)
    }
}

/// A registered `math` instance serving `square`; shuts down when dropped.
struct Instance(ShutdownHandle);

impl Drop for Instance {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

async fn instance(kontrol: &InProcessKontrol) -> anyhow::Result<Instance> {
    let k = kontrol.kite("math", USER)?;
    k.handle_func("square", |r: kite::Request| async move {
        let a: f64 = r.args().one()?;
        Ok(a * a)
    });
    k.listen().await?;
    let url = k.url().context("a listening kite has a URL")?;
    k.register(&url).await.context("register with Kontrol")?;
    let handle = k.shutdown_handle();
    tokio::spawn(async move {
        if let Err(e) = k.serve().await {
            tracing::error!("bench instance: {e}");
        }
    });
    Ok(Instance(handle))
}

/// A caller on a governed client (clones share its connections).
#[derive(Clone)]
struct GovernedCaller(GovernedClient);

impl Caller for GovernedCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let r = self.0.call("square", &(payload::ARG,)).await?;
        if r.as_f64() != Some(payload::RESULT) {
            bail!("square({}) answered {r}", payload::ARG);
        }
        Ok(())
    }
}

/// A client of the `balanced` table (`--clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClientKind {
    /// One `kite::Client` connection to one instance (the baseline).
    Direct,
    /// The default governance layers over that same connection.
    Governed,
    /// `dial_kites` with the default configuration (power of two choices).
    P2c,
    /// `dial_kites` with round robin.
    RoundRobin,
}

/// The clients compared, in the order of the table.
enum Variant {
    /// One `kite::Client` connection to one instance.
    Direct(Client),
    /// The default governance layers over that same connection.
    GovernedSingle(GovernedClient),
    /// `dial_kites` with the default configuration (power of two choices).
    Balanced(GovernedClient),
    /// `dial_kites` with round robin.
    RoundRobin(GovernedClient),
}

impl Variant {
    fn name(&self) -> &'static str {
        match self {
            Variant::Direct(_) => "direct `Client`, 1 instance",
            Variant::GovernedSingle(_) => "governed, 1 instance",
            Variant::Balanced(_) => "balanced p2c, 3 instances",
            Variant::RoundRobin(_) => "balanced round robin, 3 instances",
        }
    }

    fn connections(&self) -> usize {
        match self {
            Variant::Direct(_) | Variant::GovernedSingle(_) => 1,
            Variant::Balanced(_) | Variant::RoundRobin(_) => INSTANCES,
        }
    }

    async fn run(&self, callers: usize, plan: &Plan) -> Sample {
        match self {
            Variant::Direct(c) => {
                let callers = (0..callers)
                    .map(|_| crate::rpc::KiteCaller(c.clone()))
                    .collect();
                stats::run(callers, plan.load).await
            }
            Variant::GovernedSingle(g) | Variant::Balanced(g) | Variant::RoundRobin(g) => {
                stats::run(vec![GovernedCaller(g.clone()); callers], plan.load).await
            }
        }
    }
}

async fn balanced_client(
    caller: &Kite,
    query: &KontrolQuery,
    strategy: Strategy,
) -> anyhow::Result<GovernedClient> {
    let config = ClientConfig {
        balancer: BalancerConfig {
            strategy,
            ..Default::default()
        },
        ..Default::default()
    };
    let client = dial_kites(caller, query.clone(), &config)
        .await
        .context("dial_kites")?;
    let balancer = client
        .balancer()
        .context("a dial_kites client has a balancer")?;
    if !balancer
        .wait_connected(INSTANCES, Duration::from_secs(30))
        .await
    {
        bail!("the balancer did not connect to {INSTANCES} instances within 30 s");
    }
    Ok(client)
}

/// The `balanced` table: each caller count on every variant, measured in turn per round.
pub(crate) async fn balanced(plan: &Plan, findings: &mut Findings) -> anyhow::Result<()> {
    let load_before = machine::loadavg();
    eprintln!("starting Kontrol and {INSTANCES} instances...");
    let kontrol = InProcessKontrol::start().await?;
    let mut instances = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        instances.push(instance(&kontrol).await?);
    }
    let caller = kontrol.kite("bench-caller", "bench-caller")?;
    let query = KontrolQuery {
        username: USER.into(),
        environment: ENVIRONMENT.into(),
        name: "math".into(),
        ..Default::default()
    };
    let found = caller.get_kites(&query).await.context("getKites")?;
    if found.len() != INSTANCES {
        bail!("Kontrol found {} instances, not {INSTANCES}", found.len());
    }
    let direct = found
        .into_iter()
        .next()
        .context("getKites found an instance")?;
    direct.dial().await.context("dial one instance")?;
    let mut variants = Vec::with_capacity(plan.clients.len());
    for kind in [
        ClientKind::Direct,
        ClientKind::Governed,
        ClientKind::P2c,
        ClientKind::RoundRobin,
    ] {
        if !plan.clients.contains(&kind) {
            continue;
        }
        variants.push(match kind {
            ClientKind::Direct => Variant::Direct(direct.clone()),
            ClientKind::Governed => Variant::GovernedSingle(GovernedClient::single(
                &caller,
                direct.clone(),
                &ClientConfig::default(),
            )),
            ClientKind::P2c => {
                Variant::Balanced(balanced_client(&caller, &query, Strategy::default()).await?)
            }
            ClientKind::RoundRobin => {
                Variant::RoundRobin(balanced_client(&caller, &query, Strategy::RoundRobin).await?)
            }
        });
    }
    let mut counts: Vec<usize> = plan.shapes.iter().map(|s| s.callers).collect();
    counts.dedup();
    let mut table = Table::new(&[
        "client",
        "callers",
        "connections",
        "calls/s (% of direct)",
        "p50 ms (× direct)",
        "p99 ms (× direct)",
        "p99.9 ms (× direct)",
    ]);
    for &n in &counts {
        let mut acc: Vec<Option<Sample>> = vec![None; variants.len()];
        for _round in 0..plan.rounds {
            for (v, slot) in variants.iter().zip(acc.iter_mut()) {
                let s = v.run(n, plan).await;
                match slot {
                    Some(a) => a.merge(s),
                    None => *slot = Some(s),
                }
            }
        }
        let mut base: Option<Sample> = None;
        for (v, s) in variants.iter().zip(acc) {
            let Some(s) = s else { continue };
            let what = format!("{}, {n} callers", v.name());
            progress(&what, &s);
            check(&s, &what, findings);
            let b = base.as_ref();
            let rel = |q: f64| match b {
                Some(b) if !matches!(v, Variant::Direct(_)) => {
                    format!("{} ({})", ms(s.ms(q)), times(s.ms(q), b.ms(q)))
                }
                _ => ms(s.ms(q)),
            };
            table.row(vec![
                v.name().into(),
                n.to_string(),
                v.connections().to_string(),
                match b {
                    Some(b) if !matches!(v, Variant::Direct(_)) => {
                        format!("{} ({})", int(s.rate()), pct(s.rate(), b.rate()))
                    }
                    _ => int(s.rate()),
                },
                rel(0.5),
                rel(0.99),
                rel(0.999),
            ]);
            if matches!(v, Variant::Direct(_)) {
                base = Some(s);
            }
        }
    }
    let load_after = machine::loadavg();
    direct.close().await;
    drop(variants);
    drop(instances);
    println!("### Balanced client: three instances behind Kontrol\n");
    println!(
        "Three `math` kites and Kontrol (embedded store) in this process, registered with kite keys; every client sends the token Kontrol issued. `direct`: one `Client` connection to one instance; `governed`: the default governance layers over that connection; `balanced`: `dial_kites` with the default layers and balancer. All callers share their client. {}. Load average before/after: {load_before} / {load_after}.\n",
        plan.describe_load()
    );
    table.print();
    Ok(())
}
