//! Embedded backend: a redb database file plus an in-memory index.
//!
//! * Reads (`get`, `count`, key-pair lookups) use the in-memory index only, under a short
//!   read lock, never touching the disk.
//! * All writes go through one writer thread that owns the database: it takes the queued
//!   operations in batches, applies them in one write transaction, commits durably (group
//!   commit), then updates the index, publishes events and answers the callers. Being the
//!   only writer, it orders every change.
//! * Expiry: `get` skips records whose `expires_at` has passed; a periodic sweep removes
//!   them and emits `DEREGISTER`. At open, expired records are dropped while loading.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use kite_protocol::Kite;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::codec::{self, now};
use super::error::{Result, StorageError};
use super::query::{CheckedKeyPair, Matcher};
use super::watch::{publish, Hub, HubMsg};
use super::{
    resolve_add_key_pair, AddKeyPair, EmbeddedConfig, KeyLookup, KeyPair, KiteRecord, Registration,
    WatchAction, WatchEvent,
};

const KITES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kites");
const KEY_PAIRS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("key_pairs");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const FORMAT_KEY: &str = "format";
const FORMAT: u64 = 1;
const FILE_NAME: &str = "kontrol.redb";
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;

/// A record in a set keyed by kite id.
#[derive(Debug, Clone)]
struct ById(Arc<KiteRecord>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.kite.id == other.0.kite.id
    }
}
impl Eq for ById {}
impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.kite.id.hash(state);
    }
}
impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.kite.id.cmp(&other.0.kite.id)
    }
}
impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.kite.id
    }
}

/// A record in a set ordered by identity (username, environment, ..., id).
#[derive(Debug, Clone)]
struct ByIdentity(Arc<KiteRecord>);

impl PartialEq for ByIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.0.kite == other.0.kite
    }
}
impl Eq for ByIdentity {}
impl PartialOrd for ByIdentity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByIdentity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.kite.cmp(&other.0.kite)
    }
}
impl Borrow<Kite> for ByIdentity {
    fn borrow(&self) -> &Kite {
        &self.0.kite
    }
}

/// The in-memory index of every stored record (live or expired but not yet swept).
#[derive(Default)]
struct Index {
    by_id: HashSet<ById>,
    by_identity: BTreeSet<ByIdentity>,
    /// Per name, ordered by identity: serves queries that fix the name but not the fields
    /// before it (kite.js's name-only queries, username+name).
    by_name: HashMap<String, BTreeSet<ByIdentity>>,
    expiry: BTreeSet<(SystemTime, ById)>,
}

impl Index {
    fn get(&self, id: &str) -> Option<&Arc<KiteRecord>> {
        self.by_id.get(id).map(|r| &r.0)
    }

    fn insert(&mut self, record: Arc<KiteRecord>) {
        self.remove(&record.kite.id);
        self.by_identity.insert(ByIdentity(record.clone()));
        self.by_name
            .entry(record.kite.name.clone())
            .or_default()
            .insert(ByIdentity(record.clone()));
        self.expiry
            .insert((record.expires_at, ById(record.clone())));
        self.by_id.insert(ById(record));
    }

    fn remove(&mut self, id: &str) -> Option<Arc<KiteRecord>> {
        let old = self.by_id.take(id)?.0;
        self.by_identity.remove(&old.kite);
        if let Some(set) = self.by_name.get_mut(&old.kite.name) {
            set.remove(&old.kite);
            if set.is_empty() {
                self.by_name.remove(&old.kite.name);
            }
        }
        self.expiry.remove(&(old.expires_at, ById(old.clone())));
        Some(old)
    }

    /// Records whose expiry is at or before `now`.
    fn expired(&self, now: SystemTime) -> impl Iterator<Item = &Arc<KiteRecord>> {
        self.expiry
            .iter()
            .take_while(move |(at, _)| *at <= now)
            .map(|(_, r)| &r.0)
    }

    fn live_count(&self, now: SystemTime) -> u64 {
        (self.by_id.len() - self.expired(now).count()) as u64
    }

    fn query(&self, m: &Matcher, now: SystemTime) -> Vec<KiteRecord> {
        let mut out = Vec::new();
        let mut consider = |r: &KiteRecord| {
            if r.expires_at > now && m.matches(&r.kite) {
                out.push(r.clone());
            }
        };
        if let Some(id) = m.exact(6) {
            if let Some(r) = self.get(id) {
                consider(r);
            }
            return out;
        }
        // Range over the records sharing the longest exact prefix of the identity, within the
        // records of the queried name when the name is fixed (at least as selective).
        let prefix = m.exact_prefix();
        let set = match m.exact(2) {
            Some(name) => match self.by_name.get(name) {
                Some(set) => set,
                None => return out,
            },
            None => &self.by_identity,
        };
        if prefix.is_empty() {
            for r in set {
                consider(&r.0);
            }
            return out;
        }
        let mut probe = Kite::default();
        {
            let slots = [
                &mut probe.username,
                &mut probe.environment,
                &mut probe.name,
                &mut probe.version,
                &mut probe.region,
                &mut probe.hostname,
            ];
            for (slot, value) in slots.into_iter().zip(&prefix) {
                (*value).clone_into(slot);
            }
        }
        for r in set.range::<Kite, _>((Bound::Included(&probe), Bound::Unbounded)) {
            let fields = super::query::kite_fields(&r.0.kite);
            if fields.iter().zip(&prefix).any(|(have, want)| have != want) {
                break;
            }
            consider(&r.0);
        }
        out
    }
}

struct Shared {
    index: RwLock<Index>,
    /// Key pairs in order of addition, with their sequence numbers.
    key_pairs: RwLock<Vec<(u64, KeyPair)>>,
    hub: Hub,
}

impl Shared {
    // A poisoned lock only means another thread panicked while holding it; the index is
    // updated in single steps, so keep using it.
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }
    fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
    fn key_pairs(&self) -> RwLockReadGuard<'_, Vec<(u64, KeyPair)>> {
        self.key_pairs.read().unwrap_or_else(|e| e.into_inner())
    }
}

enum Op {
    Upsert {
        reg: Registration,
        ttl: Duration,
        reply: oneshot::Sender<Result<KiteRecord>>,
    },
    Refresh {
        id: String,
        ttl: Duration,
        reply: oneshot::Sender<Result<bool>>,
    },
    Delete {
        id: String,
        reply: oneshot::Sender<Result<bool>>,
    },
    Sweep {
        reply: Option<oneshot::Sender<Result<u64>>>,
    },
    AddKeyPair {
        pair: CheckedKeyPair,
        reply: oneshot::Sender<Result<KeyPair>>,
    },
    DeleteKeyPair {
        id: String,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// An answer held back until the batch is committed.
enum Pending {
    Record(oneshot::Sender<Result<KiteRecord>>, Result<KiteRecord>),
    Bool(oneshot::Sender<Result<bool>>, Result<bool>),
    Count(Option<oneshot::Sender<Result<u64>>>, Result<u64>),
    KeyPair(oneshot::Sender<Result<KeyPair>>, Result<KeyPair>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
}

impl Pending {
    fn send(self) {
        // A caller that went away no longer wants the answer.
        match self {
            Pending::Record(tx, r) => drop(tx.send(r)),
            Pending::Bool(tx, r) => drop(tx.send(r)),
            Pending::Count(tx, r) => {
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
            Pending::KeyPair(tx, r) => drop(tx.send(r)),
            Pending::Unit(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(self, msg: &str) {
        fn e<T>(msg: &str) -> Result<T> {
            Err(StorageError::Unavailable(msg.to_owned()))
        }
        match self {
            Pending::Record(tx, _) => drop(tx.send(e(msg))),
            Pending::Bool(tx, _) => drop(tx.send(e(msg))),
            Pending::Count(tx, _) => {
                if let Some(tx) = tx {
                    let _ = tx.send(e(msg));
                }
            }
            Pending::KeyPair(tx, _) => drop(tx.send(e(msg))),
            Pending::Unit(tx, _) => drop(tx.send(e(msg))),
        }
    }
}

/// The embedded backend.
pub(crate) struct Embedded {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Embedded {
    pub(crate) async fn open(config: &EmbeddedConfig) -> Result<Embedded> {
        if config.sweep_interval.is_zero() {
            return Err(StorageError::Config(
                "sweep_interval must be positive".into(),
            ));
        }
        if config.write_queue == 0 {
            return Err(StorageError::Config("write_queue must be positive".into()));
        }
        let dir = config.data_dir.clone();
        let (db, index, key_pairs) = tokio::task::spawn_blocking(move || load(&dir))
            .await
            .map_err(|e| StorageError::Unavailable(format!("opening the database: {e}")))??;
        let next_seq = key_pairs.last().map_or(1, |(s, _)| s + 1);
        let (hub, _) = broadcast::channel(config.limits.watch_buffer);
        let shared = Arc::new(Shared {
            index: RwLock::new(index),
            key_pairs: RwLock::new(key_pairs),
            hub,
        });
        let (tx, rx) = mpsc::channel(config.write_queue);
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kontrol-storage-writer".into())
                .spawn(move || writer_loop(db, shared, rx, next_seq))
                .map_err(|e| StorageError::Io {
                    context: "starting the storage writer thread".into(),
                    source: e,
                })?
        };
        let sweeper = {
            let weak = tx.downgrade();
            let period = config.sweep_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(tx) = weak.upgrade() else { return };
                    // Never wait while holding a sender: a full queue means the writer is
                    // busy anyway; sweep on the next tick.
                    let _ = tx.try_send(Op::Sweep { reply: None });
                }
            })
        };
        Ok(Embedded {
            shared,
            tx: Some(tx),
            writer: Some(writer),
            sweeper,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    pub(crate) async fn upsert(&self, reg: &Registration, ttl: Duration) -> Result<KiteRecord> {
        let reg = reg.clone();
        self.call(|reply| Op::Upsert { reg, ttl, reply }).await
    }

    pub(crate) async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool> {
        // Fast path: nothing to extend.
        let live = self
            .shared
            .index()
            .get(id)
            .is_some_and(|r| r.expires_at > SystemTime::now());
        if !live {
            return Ok(false);
        }
        let id = id.to_owned();
        self.call(|reply| Op::Refresh { id, ttl, reply }).await
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.call(|reply| Op::Delete { id, reply }).await
    }

    pub(crate) async fn get(&self, m: &Matcher) -> Result<Vec<KiteRecord>> {
        Ok(self.shared.index().query(m, SystemTime::now()))
    }

    pub(crate) async fn count(&self) -> Result<u64> {
        Ok(self.shared.index().live_count(SystemTime::now()))
    }

    pub(crate) async fn subscribe(&self) -> Result<broadcast::Receiver<HubMsg>> {
        Ok(self.shared.hub.subscribe())
    }

    pub(crate) async fn sweep(&self) -> Result<u64> {
        self.call(|reply| Op::Sweep { reply: Some(reply) }).await
    }

    pub(crate) async fn add_key_pair(&self, pair: CheckedKeyPair) -> Result<KeyPair> {
        self.call(|reply| Op::AddKeyPair { pair, reply }).await
    }

    pub(crate) async fn delete_key_pair(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.call(|reply| Op::DeleteKeyPair { id, reply }).await
    }

    pub(crate) async fn find_key_pair(&self, by: KeyLookup<'_>) -> Result<Option<KeyPair>> {
        Ok(self
            .shared
            .key_pairs()
            .iter()
            .find(|(_, p)| by.matches(p))
            .map(|(_, p)| p.clone()))
    }

    pub(crate) async fn key_pairs(&self) -> Result<Vec<KeyPair>> {
        Ok(self
            .shared
            .key_pairs()
            .iter()
            .map(|(_, p)| p.clone())
            .collect())
    }

    pub(crate) async fn close(mut self) -> Result<()> {
        self.sweeper.abort();
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| StorageError::Unavailable(format!("closing: {e}")))?
                .map_err(|_| StorageError::Unavailable("the storage writer panicked".into()))?;
        }
        Ok(())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.sweeper.abort();
        // Closing the queue ends the writer after its current batch; wait for it so that the
        // database file is closed (and can be reopened) once the storage is gone.
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

type Loaded = (Database, Index, Vec<(u64, KeyPair)>);

fn load(dir: &std::path::Path) -> Result<Loaded> {
    std::fs::create_dir_all(dir).map_err(|e| StorageError::Io {
        context: format!("creating data directory {}", dir.display()),
        source: e,
    })?;
    let path = dir.join(FILE_NAME);
    let db = match Database::create(&path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StorageError::Config(format!(
                "{} is in use by another process",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let now = now();
    let mut index = Index::default();
    let mut pairs = Vec::new();
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let format = meta.get(FORMAT_KEY)?.map(|v| v.value());
        match format {
            None => {
                meta.insert(FORMAT_KEY, FORMAT)?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(StorageError::Config(format!(
                    "{} has data format {other}, this Kontrol understands {FORMAT}",
                    path.display()
                )))
            }
        }
        let mut kites = txn.open_table(KITES)?;
        let mut expired = Vec::new();
        for entry in kites.iter()? {
            let (k, v) = entry?;
            let record = codec::decode_record(v.value())?;
            if record.expires_at > now {
                index.insert(Arc::new(record));
            } else {
                expired.push(k.value().to_owned());
            }
        }
        for id in &expired {
            kites.remove(id.as_str())?;
        }
        let kps = txn.open_table(KEY_PAIRS)?;
        for entry in kps.iter()? {
            let (_, v) = entry?;
            let stored = codec::decode_key_pair(v.value())?;
            pairs.push((stored.seq, stored.into_pair()));
        }
    }
    txn.commit()?;
    pairs.sort_by_key(|(seq, _)| *seq);
    tracing::info!(
        path = %path.display(),
        kites = index.by_id.len(),
        key_pairs = pairs.len(),
        "embedded storage opened"
    );
    Ok((db, index, pairs))
}

fn writer_loop(db: Database, shared: Arc<Shared>, mut rx: mpsc::Receiver<Op>, mut next_seq: u64) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = Vec::with_capacity(16);
        ops.push(first);
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        write_batch(&db, &shared, ops, &mut next_seq);
    }
    tracing::debug!("embedded storage writer stopped");
}

/// Changes of one batch, applied to the index only after the commit.
#[derive(Default)]
struct Staged {
    /// id → new record (`None`: removed).
    kites: HashMap<String, Option<Arc<KiteRecord>>>,
    /// Replacement key-pair list, if any key pair changed.
    key_pairs: Option<Vec<(u64, KeyPair)>>,
    events: Vec<WatchEvent>,
    replies: Vec<Pending>,
}

impl Staged {
    fn current(&self, shared: &Shared, id: &str) -> Option<Arc<KiteRecord>> {
        match self.kites.get(id) {
            Some(staged) => staged.clone(),
            None => shared.index().get(id).cloned(),
        }
    }
}

fn write_batch(db: &Database, shared: &Shared, ops: Vec<Op>, next_seq: &mut u64) {
    let mut staged = Staged::default();
    let mut seq = *next_seq;
    let mut ops = ops.into_iter();
    let result = (|| -> Result<()> {
        let txn = db.begin_write()?;
        {
            let mut kites = txn.open_table(KITES)?;
            let mut kps = txn.open_table(KEY_PAIRS)?;
            for op in ops.by_ref() {
                apply(op, shared, &mut staged, &mut kites, &mut kps, &mut seq)?;
            }
        }
        txn.commit()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            *next_seq = seq;
            if !staged.kites.is_empty() {
                let mut index = shared.index_mut();
                for (id, change) in staged.kites {
                    match change {
                        Some(r) => index.insert(r),
                        None => {
                            index.remove(&id);
                        }
                    }
                }
            }
            if let Some(pairs) = staged.key_pairs {
                *shared.key_pairs.write().unwrap_or_else(|e| e.into_inner()) = pairs;
            }
            for ev in staged.events {
                publish(&shared.hub, HubMsg::Event(Arc::new(ev)));
            }
            for r in staged.replies {
                r.send();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "embedded storage write failed");
            let msg = format!("embedded database write failed: {e}");
            for r in staged.replies {
                r.fail(&msg);
            }
            for op in ops {
                op.into_pending().fail(&msg);
            }
        }
    }
}

impl Op {
    /// The answer slot of an operation that will not be applied.
    fn into_pending(self) -> Pending {
        fn unused<T>() -> Result<T> {
            Err(StorageError::Closed)
        }
        match self {
            Op::Upsert { reply, .. } => Pending::Record(reply, unused()),
            Op::Refresh { reply, .. } | Op::Delete { reply, .. } => Pending::Bool(reply, unused()),
            Op::Sweep { reply } => Pending::Count(reply, unused()),
            Op::AddKeyPair { reply, .. } => Pending::KeyPair(reply, unused()),
            Op::DeleteKeyPair { reply, .. } => Pending::Unit(reply, unused()),
        }
    }
}

/// Applies one operation to the write transaction and stages its effects. The answer is
/// staged before the fallible database write, so that a failed batch can answer it.
fn apply(
    op: Op,
    shared: &Shared,
    staged: &mut Staged,
    kites: &mut redb::Table<'_, &str, &[u8]>,
    kps: &mut redb::Table<'_, &str, &[u8]>,
    seq: &mut u64,
) -> Result<()> {
    let now = now();
    match op {
        Op::Upsert { reg, ttl, reply } => {
            let old = staged.current(shared, &reg.kite.id);
            let live = old.as_ref().filter(|r| r.expires_at > now);
            let record = Arc::new(KiteRecord {
                created_at: live.map_or(now, |r| r.created_at),
                updated_at: now,
                expires_at: codec::deadline(now, ttl),
                kite: reg.kite,
                url: reg.url,
                key_id: reg.key_id,
            });
            match live {
                Some(old) if old.kite != record.kite => {
                    staged.events.push(WatchEvent {
                        action: WatchAction::Deregister,
                        record: KiteRecord::clone(old),
                    });
                    staged.events.push(register(&record));
                }
                Some(old) if old.url == record.url && old.key_id == record.key_id => {}
                _ => staged.events.push(register(&record)),
            }
            staged
                .kites
                .insert(record.kite.id.clone(), Some(record.clone()));
            staged
                .replies
                .push(Pending::Record(reply, Ok(KiteRecord::clone(&record))));
            kites.insert(
                record.kite.id.as_str(),
                codec::encode_record(&record).as_slice(),
            )?;
        }
        Op::Refresh { id, ttl, reply } => {
            let live = staged.current(shared, &id).filter(|r| r.expires_at > now);
            staged
                .replies
                .push(Pending::Bool(reply, Ok(live.is_some())));
            if let Some(old) = live {
                let mut record = KiteRecord::clone(&old);
                record.updated_at = now;
                record.expires_at = codec::deadline(now, ttl);
                let bytes = codec::encode_record(&record);
                staged.kites.insert(id.clone(), Some(Arc::new(record)));
                kites.insert(id.as_str(), bytes.as_slice())?;
            }
        }
        Op::Delete { id, reply } => {
            let old = staged.current(shared, &id);
            let live = old.as_ref().is_some_and(|r| r.expires_at > now);
            staged.replies.push(Pending::Bool(reply, Ok(live)));
            if let Some(old) = old {
                staged.events.push(WatchEvent {
                    action: WatchAction::Deregister,
                    record: KiteRecord::clone(&old),
                });
                staged.kites.insert(id.clone(), None);
                kites.remove(id.as_str())?;
            }
        }
        Op::Sweep { reply } => {
            let candidates: Vec<Arc<KiteRecord>> = shared.index().expired(now).cloned().collect();
            let mut removed = Vec::new();
            for c in candidates {
                let Some(cur) = staged.current(shared, &c.kite.id) else {
                    continue;
                };
                if cur.expires_at > now {
                    continue;
                }
                staged.kites.insert(cur.kite.id.clone(), None);
                staged.events.push(WatchEvent {
                    action: WatchAction::Deregister,
                    record: KiteRecord::clone(&cur),
                });
                removed.push(cur);
            }
            if !removed.is_empty() {
                tracing::debug!(removed = removed.len(), "expired kites swept");
            }
            staged
                .replies
                .push(Pending::Count(reply, Ok(removed.len() as u64)));
            for r in removed {
                kites.remove(r.kite.id.as_str())?;
            }
        }
        Op::AddKeyPair { pair, reply } => {
            let pairs = staged
                .key_pairs
                .get_or_insert_with(|| shared.key_pairs().clone());
            match resolve_add_key_pair(&pair, pairs.iter().map(|(_, p)| p)) {
                Ok(AddKeyPair::Existing(p)) => staged.replies.push(Pending::KeyPair(reply, Ok(p))),
                Ok(AddKeyPair::Insert) => {
                    let p = KeyPair {
                        id: pair.id,
                        public: pair.public,
                        private: pair.private,
                        created_at: now,
                        deleted_at: None,
                    };
                    let bytes = codec::encode_key_pair(&p, *seq);
                    pairs.push((*seq, p.clone()));
                    *seq += 1;
                    staged.replies.push(Pending::KeyPair(reply, Ok(p.clone())));
                    kps.insert(p.id.as_str(), bytes.as_slice())?;
                }
                Err(e) => staged.replies.push(Pending::KeyPair(reply, Err(e))),
            }
        }
        Op::DeleteKeyPair { id, reply } => {
            let pairs = staged
                .key_pairs
                .get_or_insert_with(|| shared.key_pairs().clone());
            match pairs.iter_mut().find(|(_, p)| p.id == id) {
                None => staged
                    .replies
                    .push(Pending::Unit(reply, Err(StorageError::KeyPairNotFound))),
                Some((_, p)) if p.is_deleted() => staged.replies.push(Pending::Unit(reply, Ok(()))),
                Some((s, p)) => {
                    p.deleted_at = Some(now.max(p.created_at));
                    let bytes = codec::encode_key_pair(p, *s);
                    staged.replies.push(Pending::Unit(reply, Ok(())));
                    kps.insert(id.as_str(), bytes.as_slice())?;
                }
            }
        }
    }
    Ok(())
}

fn register(record: &KiteRecord) -> WatchEvent {
    WatchEvent {
        action: WatchAction::Register,
        record: record.clone(),
    }
}
