//! Balancing calls over a live set of instances of one kite: round robin, weighted random,
//! power-of-two-choices least-loaded (default) and consistent hashing on a caller-chosen
//! key.
//!
//! The set changes through [`Change`]s (from Kontrol's watch via
//! [`dial_kites`](crate::dial_kites), from any `Stream`, or by [`Balancer::insert`] /
//! [`Balancer::remove`]). Inserted instances are dialed with `dial_forever` (they
//! reconnect after drops). A call goes to an instance that is connected and whose
//! instance breaker lets it through; if sending fails before the request left
//! (`sendError`, e.g. the instance just disconnected) the balancer fails over to another
//! instance at once; retries of a call prefer instances it has not tried. Removed instances get no new calls; they are closed when their
//! in-flight calls finish (or after [`BalancerConfig::drain_timeout`]). When no instance
//! is usable the call waits up to [`BalancerConfig::ready_timeout`] (bounded by its
//! deadline) for one, then fails with `noInstanceError` (`circuitOpenError` when
//! instances are connected but all their breakers are open).
//!
//! Least-loaded: two distinct usable instances are drawn at random and the one with the
//! lower load wins; load = (in-flight calls + 1) × peak-EWMA latency, where the latency
//! estimate jumps up to any slower sample, decays towards faster ones and towards zero
//! with time ([`BalancerConfig::decay`]); timeouts, disconnects and abandoned calls count
//! as at least [`BalancerConfig::failure_penalty`]. Slow instances thus get less traffic;
//! instances that fail fast are taken out by their instance breaker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kite::protocol::Kite as KiteIdentity;
use kite::KiteError;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::Service;

use crate::breaker::{metrics_observer, Breaker, BreakerConfig, BreakerState};
use crate::call::{hash_key, Call, CallFuture, KiteService};
use crate::error;
use crate::metrics::Metrics;
use crate::tuple::{label, Route};

/// How a balancer picks an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// In turn, skipping unusable instances.
    RoundRobin,
    /// At random, proportionally to [`Instance::weight`].
    WeightedRandom,
    /// Power of two choices, lower (in-flight + 1) × peak-EWMA latency wins (default).
    #[default]
    LeastLoaded,
    /// Consistent hashing on [`Call::key`] (calls without a key are balanced least-loaded);
    /// a key's instance changes only when that instance becomes unusable or leaves.
    ConsistentHash,
}

/// Balancer settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BalancerConfig {
    /// The strategy (default least-loaded).
    pub strategy: Strategy,
    /// Breaker per instance (default [`BreakerConfig::default`]; `None`: off).
    pub instance_breaker: Option<BreakerConfig>,
    /// How long a call waits for a usable instance (default 1 s; bounded by the call's
    /// deadline).
    pub ready_timeout: Duration,
    /// How long a removed instance may finish its in-flight calls before it is closed
    /// (default 10 s).
    pub drain_timeout: Duration,
    /// Virtual nodes per instance on the hash ring (default 100).
    pub vnodes: u32,
    /// Time constant of the latency estimate (default 10 s).
    pub decay: Duration,
    /// Latency assumed for an instance without samples (default 10 ms).
    pub default_rtt: Duration,
    /// Latency recorded for a call that timed out, lost its connection or was abandoned,
    /// at least (default 1 s).
    pub failure_penalty: Duration,
    /// Timeout of calls without a deadline (default 60 s).
    pub call_timeout: Option<Duration>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            strategy: Strategy::default(),
            instance_breaker: Some(BreakerConfig::default()),
            ready_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            vnodes: 100,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(10),
            failure_penalty: Duration::from_secs(1),
            call_timeout: Some(crate::call::DEFAULT_CALL_TIMEOUT),
        }
    }
}

/// One instance of the target kite.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Its id (normally the kite id).
    pub id: String,
    /// Its identity.
    pub kite: KiteIdentity,
    /// A client for it (dialed by the balancer).
    pub client: kite::Client,
    /// Weight for [`Strategy::WeightedRandom`] (default 1).
    pub weight: u32,
}

impl Instance {
    /// An instance reached through `client`, identified by `kite` (id = `kite.id`).
    pub fn new(kite: KiteIdentity, client: kite::Client) -> Self {
        client.set_remote_kite(kite.clone());
        Instance {
            id: kite.id.clone(),
            kite,
            client,
            weight: 1,
        }
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// A change of the instance set.
#[derive(Clone, Debug)]
pub enum Change {
    /// An instance appeared (or was replaced, same id).
    Insert(Instance),
    /// The instance with this id left.
    Remove(String),
}

/// A sender of [`Change`]s and the `Stream` that yields them (bounded by `capacity`).
pub fn changes_channel(
    capacity: usize,
) -> (
    tokio::sync::mpsc::Sender<Change>,
    impl Stream<Item = Change> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (tx, stream)
}

struct Slot {
    id: Arc<str>,
    kite: KiteIdentity,
    client: kite::Client,
    weight: u32,
    svc: KiteService,
    breaker: Option<Arc<Breaker>>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// (latency estimate in ns, when updated)
    rtt: Mutex<(f64, Instant)>,
}

impl Slot {
    fn usable(&self) -> bool {
        self.svc.is_connected() && self.breaker.as_ref().is_none_or(|b| b.would_allow())
    }

    fn load(&self, decay: Duration) -> f64 {
        let (rtt, at) = *lock(&self.rtt);
        let elapsed = at.elapsed().as_secs_f64();
        let decayed = rtt * (-elapsed / decay.as_secs_f64().max(1e-3)).exp();
        decayed * (self.in_flight.load(Ordering::Relaxed) as f64 + 1.0)
    }

    fn observe(&self, sample: Duration, decay: Duration) {
        let ns = sample.as_nanos() as f64;
        let mut g = lock(&self.rtt);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(g.1).as_secs_f64();
        if ns > g.0 {
            g.0 = ns;
        } else {
            let w = (-elapsed / decay.as_secs_f64().max(1e-3)).exp();
            g.0 = g.0 * w + ns * (1.0 - w);
        }
        g.1 = now;
    }
}

#[derive(Default)]
struct Set {
    slots: Vec<Arc<Slot>>,
    ring: Vec<(u64, usize)>,
}

struct Shared {
    config: BalancerConfig,
    route: Route,
    set: RwLock<Arc<Set>>,
    version: watch::Sender<u64>,
    rr: AtomicUsize,
    metrics: Option<Metrics>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let set = read(&self.set).clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for s in set.slots.iter() {
                let c = s.client.clone();
                rt.spawn(async move { c.close().await });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What a balancer knows about one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceInfo {
    /// Its id.
    pub id: String,
    /// Whether it is connected.
    pub connected: bool,
    /// Its breaker's state (`None`: no instance breakers).
    pub breaker: Option<BreakerState>,
    /// Calls in flight.
    pub in_flight: usize,
}

/// A balancing `Service<Call>` over a live instance set. Cheap to clone; all clones share
/// the set. Dropping the last clone stops following changes and closes the instances.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("route", &self.shared.route)
            .field("instances", &self.instances())
            .finish()
    }
}

impl Balancer {
    /// An empty balancer for calls on `route`.
    pub fn new(route: Route, config: BalancerConfig, metrics: Option<&Metrics>) -> Balancer {
        Balancer {
            shared: Arc::new(Shared {
                config,
                route,
                set: RwLock::new(Arc::new(Set::default())),
                version: watch::channel(0).0,
                rr: AtomicUsize::new(0),
                metrics: metrics.cloned(),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Applies every change `changes` yields, in a background task (until the stream ends
    /// or the balancer is dropped).
    pub fn follow<S>(&self, changes: S)
    where
        S: Stream<Item = Change> + Send + 'static,
    {
        let weak = Arc::downgrade(&self.shared);
        let task = tokio::spawn(async move {
            let mut changes = std::pin::pin!(changes);
            while let Some(change) = changes.next().await {
                let Some(shared) = weak.upgrade() else { return };
                let b = Balancer { shared };
                match change {
                    Change::Insert(i) => b.insert(i),
                    Change::Remove(id) => b.remove(&id),
                }
            }
            tracing::debug!("instance change stream ended");
        });
        lock(&self.shared.tasks).push(task.abort_handle());
    }

    fn bump(shared: &Shared) {
        shared.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn publish(&self, slots: Vec<Arc<Slot>>) {
        let mut ring = Vec::new();
        if self.shared.config.strategy == Strategy::ConsistentHash {
            let vnodes = self.shared.config.vnodes.max(1);
            ring.reserve(slots.len() * vnodes as usize);
            for (i, s) in slots.iter().enumerate() {
                for v in 0..vnodes {
                    ring.push((hash_key(&(&*s.id, v)), i));
                }
            }
            ring.sort_unstable();
        }
        *write(&self.shared.set) = Arc::new(Set { slots, ring });
        Balancer::bump(&self.shared);
    }

    /// Adds (or replaces, same id) an instance and dials it (`dial_forever`).
    pub fn insert(&self, instance: Instance) {
        let cfg = &self.shared.config;
        let id = label(&instance.id);
        let breaker = cfg.instance_breaker.as_ref().map(|c| {
            let observer = self
                .shared
                .metrics
                .as_ref()
                .map(|m| metrics_observer(m, self.shared.route.tuple("*"), id.clone()));
            Breaker::new(
                format!("{} instance {}", self.shared.route.to, id),
                Arc::new(c.clone()),
                observer,
            )
        });
        let slot = Arc::new(Slot {
            id: id.clone(),
            kite: instance.kite,
            svc: KiteService::client(instance.client.clone())
                .with_default_timeout(cfg.call_timeout),
            client: instance.client,
            weight: instance.weight,
            breaker,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            rtt: Mutex::new((cfg.default_rtt.as_nanos() as f64, Instant::now())),
        });
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        slot.client.on_connect(move |_| {
            if let Some(s) = weak.upgrade() {
                Balancer::bump(&s);
            }
        });
        let old = {
            let current = read(&self.shared.set).clone();
            let mut slots: Vec<_> = current.slots.to_vec();
            let old = slots
                .iter()
                .position(|s| s.id == id)
                .map(|i| slots.remove(i));
            slots.push(slot.clone());
            slots.sort_by(|a, b| a.id.cmp(&b.id));
            self.publish(slots);
            old
        };
        if let Some(old) = old {
            self.drain(old);
        }
        tracing::debug!(instance = %id, "instance added");
        let dialed = slot.client.dial_forever();
        drop(dialed);
        if slot.client.is_connected() {
            Balancer::bump(&self.shared);
        }
    }

    /// Removes an instance: no new calls go to it; it is closed once its in-flight calls
    /// finished (at most [`BalancerConfig::drain_timeout`] later).
    pub fn remove(&self, id: &str) {
        let removed = {
            let current = read(&self.shared.set).clone();
            let mut slots: Vec<_> = current.slots.to_vec();
            let Some(i) = slots.iter().position(|s| &*s.id == id) else {
                return;
            };
            let removed = slots.remove(i);
            self.publish(slots);
            removed
        };
        tracing::debug!(instance = id, "instance removed");
        self.drain(removed);
    }

    fn drain(&self, slot: Arc<Slot>) {
        let timeout = self.shared.config.drain_timeout;
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            loop {
                let idle = slot.idle.notified();
                if slot.in_flight.load(Ordering::Acquire) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    break;
                }
            }
            slot.client.close().await;
        });
    }

    /// The instances and their states.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        read(&self.shared.set)
            .slots
            .iter()
            .map(|s| InstanceInfo {
                id: s.id.to_string(),
                connected: s.svc.is_connected(),
                breaker: s.breaker.as_ref().map(|b| b.state()),
                in_flight: s.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The identities of the instances.
    pub fn kites(&self) -> Vec<KiteIdentity> {
        read(&self.shared.set)
            .slots
            .iter()
            .map(|s| s.kite.clone())
            .collect()
    }

    /// Waits until at least `n` instances are connected, or `timeout` passes; returns
    /// whether they are.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            let connected = read(&self.shared.set)
                .slots
                .iter()
                .filter(|s| s.svc.is_connected())
                .count();
            if connected >= n {
                return true;
            }
            // Connections may also come up without a version bump racing us: poll
            // at least every 50 ms.
            let wait = tokio::time::timeout(Duration::from_millis(50), rx.changed());
            if Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(deadline, wait).await;
        }
    }

    fn pick(&self, set: &Set, call: &Call, tried: &[Arc<str>]) -> Option<Arc<Slot>> {
        let ok = |s: &Arc<Slot>| !tried.contains(&s.id) && s.usable();
        let cfg = &self.shared.config;
        let n = set.slots.len();
        if n == 0 {
            return None;
        }
        match (cfg.strategy, call.key) {
            (Strategy::RoundRobin, _) => {
                let start = self.shared.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| &set.slots[(start + k) % n])
                    .find(|s| ok(s))
                    .cloned()
            }
            (Strategy::WeightedRandom, _) => {
                let total: u64 = set
                    .slots
                    .iter()
                    .filter(|s| ok(s))
                    .map(|s| u64::from(s.weight))
                    .sum();
                if total == 0 {
                    return set.slots.iter().find(|s| ok(s)).cloned();
                }
                let mut r = rand::rng().random_range(0..total);
                for s in set.slots.iter().filter(|s| ok(s)) {
                    let w = u64::from(s.weight);
                    if r < w {
                        return Some(s.clone());
                    }
                    r -= w;
                }
                None
            }
            (Strategy::ConsistentHash, Some(key)) if !set.ring.is_empty() => {
                let start = set.ring.partition_point(|(h, _)| *h < key);
                let len = set.ring.len();
                (0..len)
                    .map(|k| &set.slots[set.ring[(start + k) % len].1])
                    .find(|s| ok(s))
                    .cloned()
            }
            _ => {
                let usable: Vec<&Arc<Slot>> = set.slots.iter().filter(|s| ok(s)).collect();
                match usable.len() {
                    0 => None,
                    1 => Some(usable[0].clone()),
                    len => {
                        let mut rng = rand::rng();
                        let a = rng.random_range(0..len);
                        let mut b = rng.random_range(0..len - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (x, y) = (usable[a], usable[b]);
                        Some(if x.load(cfg.decay) <= y.load(cfg.decay) {
                            x.clone()
                        } else {
                            y.clone()
                        })
                    }
                }
            }
        }
    }

    async fn dispatch(self, call: Call) -> Result<Value, KiteError> {
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last: Option<KiteError> = None;
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            let set = read(&self.shared.set).clone();
            let visited: Vec<Arc<str>> = call
                .visited
                .as_ref()
                .map(|v| lock(v).clone())
                .unwrap_or_default();
            let fresh = if visited.is_empty() {
                None
            } else {
                let mut avoid = tried.clone();
                avoid.extend(visited);
                self.pick(&set, &call, &avoid)
            };
            let Some(slot) = fresh.or_else(|| self.pick(&set, &call, &tried)) else {
                if let Some(e) = last {
                    return Err(e);
                }
                let all_open = set.slots.iter().any(|s| s.svc.is_connected())
                    && set
                        .slots
                        .iter()
                        .filter(|s| s.svc.is_connected())
                        .all(|s| s.breaker.as_ref().is_some_and(|b| !b.would_allow()));
                if all_open {
                    return Err(error::circuit_open(&format!(
                        "every instance of {}",
                        self.shared.route.to
                    )));
                }
                let wait_until = crate::context::earliest(
                    Some(Instant::now() + self.shared.config.ready_timeout),
                    call.deadline,
                );
                let waited = match wait_until {
                    Some(t) => tokio::time::timeout_at(t, rx.changed()).await,
                    None => Ok(rx.changed().await),
                };
                match waited {
                    Ok(Ok(())) => continue,
                    _ => return Err(error::no_instance(&self.shared.route.to)),
                }
            };
            let permit = match slot.breaker.as_ref().map(|b| b.acquire()) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    tried.push(slot.id.clone());
                    last = Some(e);
                    continue;
                }
            };
            if let Some(m) = &self.shared.metrics {
                m.instance_call(&call.tuple, &slot.id);
            }
            if let Some(v) = &call.visited {
                lock(v).push(slot.id.clone());
            }
            let guard = InFlight::new(slot.clone(), &self.shared.config);
            let r = slot.svc.clone().call(call.clone()).await;
            // Slow or dead signals weigh as the failure penalty; fast application
            // failures are the instance breaker's business.
            let slow = r
                .as_ref()
                .err()
                .is_some_and(|e| e.kind == KiteError::TIMEOUT || e.kind == KiteError::DISCONNECT);
            guard.finish(slow);
            if let Some(p) = permit {
                p.record(r.as_ref().map(|_| ()));
            }
            match r {
                Err(e) if e.kind == KiteError::SEND_ERROR => {
                    tracing::debug!(instance = %slot.id, error = %e, "send failed, failing over");
                    tried.push(slot.id.clone());
                    last = Some(e);
                }
                r => return r,
            }
        }
    }
}

/// Counts a call in flight on an instance; records its latency when finished or dropped.
struct InFlight {
    slot: Arc<Slot>,
    start: Instant,
    decay: Duration,
    penalty: Duration,
    done: bool,
}

impl InFlight {
    fn new(slot: Arc<Slot>, cfg: &BalancerConfig) -> Self {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            slot,
            start: Instant::now(),
            decay: cfg.decay,
            penalty: cfg.failure_penalty,
            done: false,
        }
    }

    fn finish(mut self, failed: bool) {
        self.done = true;
        self.end(failed);
    }

    fn end(&self, failed: bool) {
        let mut rtt = self.start.elapsed();
        if failed {
            rtt = rtt.max(self.penalty);
        }
        self.slot.observe(rtt, self.decay);
        if self.slot.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slot.idle.notify_waiters();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.end(true);
        }
    }
}

impl Service<Call> for Balancer {
    type Response = Value;
    type Error = KiteError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let me = self.clone();
        let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(me.dispatch(call));
        fut
    }
}
