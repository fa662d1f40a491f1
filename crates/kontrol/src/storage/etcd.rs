//! etcd v3 backend.
//!
//! Layout under the configured prefix `<p>`:
//!
//! ```text
//! <p>/kites/<username>/<environment>/<name>/<version>/<region>/<hostname>/<id>  record JSON
//! <p>/ids/<id>                                                                  record JSON
//! <p>/keypairs/<id>                                                             key pair JSON
//! ```
//!
//! * Both keys of a registration are attached to one lease of `ceil(ttl)` seconds (etcd
//!   may raise it to its minimum, 2 s by default). A refresh re-writes the record under a
//!   fresh lease and revokes the old one, so any TTL can be asked for each time.
//! * The record carries `expires_at`; reads skip records past it, so an expired kite is
//!   never served even during the moment etcd takes to revoke its lease.
//! * Queries whose non-empty fields form a prefix of the identity are prefix reads; an
//!   id query reads the id index; any other query reads the widest prefix and filters.
//!   Reads are paginated at one revision.
//! * Writes are transactions guarded by the id key's revision (retried a few times on a
//!   concurrent change), so the two keys never disagree.
//! * The change feed is an etcd watch on `<p>/kites/` with previous values: a put is a
//!   `REGISTER` when the kite is new, was expired, or changed URL or key id; a delete —
//!   explicit, or by lease expiry — is a `DEREGISTER`. The watch resumes after a
//!   disconnection from the last revision seen, so no event is lost unless etcd compacted
//!   that history.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use tokio::sync::{broadcast, oneshot, OnceCell};

use super::codec::{self, now};
use super::error::{Result, StorageError};
use super::query::{CheckedKeyPair, Matcher};
use super::tasks::{backoff, Tasks};
use super::watch::{publish, Hub, HubMsg};
use super::{
    resolve_add_key_pair, AddKeyPair, EtcdConfig, KeyLookup, KeyPair, KiteRecord, Registration,
    WatchAction, WatchEvent,
};

/// Keys per page of a range read.
const PAGE: i64 = 1000;
/// Attempts of a guarded write before giving up with [`StorageError::Conflict`].
const ATTEMPTS: usize = 8;

/// The etcd backend.
pub(crate) struct Etcd {
    client: Client,
    kites_prefix: String,
    ids_prefix: String,
    keys_prefix: String,
    timeout: Duration,
    watch_buffer: usize,
    hub: OnceCell<Hub>,
    tasks: Tasks,
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // whole keyspace
}

fn lease_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// A stored record with the facts a guarded write needs.
struct Current {
    record: KiteRecord,
    mod_revision: i64,
    lease: i64,
}

impl Etcd {
    pub(crate) async fn connect(c: &EtcdConfig) -> Result<Etcd> {
        let prefix = c.prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.contains('\0') {
            return Err(StorageError::Config(format!(
                "invalid etcd prefix {:?}: it must be non-empty, e.g. /kontrol",
                c.prefix
            )));
        }
        if c.endpoints.is_empty() {
            return Err(StorageError::Config("no etcd endpoints".into()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(c.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = match tokio::time::timeout(
            c.connect_timeout,
            Client::connect(&c.endpoints, Some(options)),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(StorageError::Unavailable(format!(
                    "connecting to etcd at {:?} timed out",
                    c.endpoints
                )))
            }
        };
        let etcd = Etcd {
            client,
            kites_prefix: format!("{prefix}/kites/"),
            ids_prefix: format!("{prefix}/ids/"),
            keys_prefix: format!("{prefix}/keypairs/"),
            timeout: c.request_timeout,
            watch_buffer: c.limits.watch_buffer,
            hub: OnceCell::new(),
            tasks: Tasks::default(),
        };
        // The client connects lazily: make sure the cluster answers.
        let mut kv = etcd.client.kv_client();
        etcd.timed(
            "probe",
            kv.get(
                etcd.keys_prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await?;
        tracing::info!(prefix, endpoints = ?c.endpoints, "etcd storage connected");
        Ok(etcd)
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StorageError::Unavailable(format!(
                "etcd {what} timed out after {:?}",
                self.timeout
            ))),
        }
    }

    fn kite_key(&self, k: &kite_protocol::Kite) -> String {
        format!(
            "{}{}/{}/{}/{}/{}/{}/{}",
            self.kites_prefix,
            k.username,
            k.environment,
            k.name,
            k.version,
            k.region,
            k.hostname,
            k.id
        )
    }

    fn id_key(&self, id: &str) -> String {
        format!("{}{id}", self.ids_prefix)
    }

    fn keypair_key(&self, id: &str) -> String {
        format!("{}{id}", self.keys_prefix)
    }

    /// The record stored under the id index, if any.
    async fn current(&self, id: &str) -> Result<Option<Current>> {
        let mut kv = self.client.kv_client();
        let resp = self.timed("get", kv.get(self.id_key(id), None)).await?;
        let Some(item) = resp.kvs().first() else {
            return Ok(None);
        };
        match codec::decode_record(item.value()) {
            Ok(record) => Ok(Some(Current {
                record,
                mod_revision: item.mod_revision(),
                lease: item.lease(),
            })),
            Err(e) => Err(e),
        }
    }

    /// Revokes a lease nobody uses any more, in the background (it would expire anyway).
    fn revoke_later(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let mut leases = self.client.lease_client();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, leases.revoke(lease)).await;
        });
    }

    /// Writes `record` under a new lease if the id key is still at `expected` (`None`: absent),
    /// removing `old_path` if the identity moved. Returns whether it was written.
    async fn guarded_put(
        &self,
        record: &KiteRecord,
        ttl: Duration,
        expected: Option<&Current>,
    ) -> Result<bool> {
        let id_key = self.id_key(&record.kite.id);
        let mut leases = self.client.lease_client();
        let lease = self
            .timed("lease grant", leases.grant(lease_secs(ttl), None))
            .await?
            .id();
        let cmp = match expected {
            Some(c) => Compare::mod_revision(id_key.clone(), CompareOp::Equal, c.mod_revision),
            None => Compare::create_revision(id_key.clone(), CompareOp::Equal, 0),
        };
        let path = self.kite_key(&record.kite);
        let value = codec::encode_record(record);
        let mut ops = Vec::with_capacity(3);
        if let Some(c) = expected {
            let old_path = self.kite_key(&c.record.kite);
            if old_path != path {
                ops.push(TxnOp::delete(old_path, None));
            }
        }
        ops.push(TxnOp::put(
            path,
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        ops.push(TxnOp::put(
            id_key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        ));
        let mut kv = self.client.kv_client();
        let txn = Txn::new().when([cmp]).and_then(ops);
        let written = match self.timed("txn", kv.txn(txn)).await {
            Ok(r) => r.succeeded(),
            Err(e) => {
                self.revoke_later(lease);
                return Err(e);
            }
        };
        if written {
            if let Some(c) = expected {
                self.revoke_later(c.lease);
            }
        } else {
            self.revoke_later(lease);
        }
        Ok(written)
    }

    pub(crate) async fn upsert(&self, reg: &Registration, ttl: Duration) -> Result<KiteRecord> {
        for _ in 0..ATTEMPTS {
            let cur = match self.current(&reg.kite.id).await {
                Ok(c) => c,
                Err(StorageError::Corrupt(e)) => {
                    // Overwrite an undecodable entry rather than refusing the kite forever.
                    tracing::warn!(id = %reg.kite.id, error = %e, "replacing corrupt etcd record");
                    None
                }
                Err(e) => return Err(e),
            };
            let now = now();
            let live = cur.as_ref().filter(|c| c.record.expires_at > now);
            let record = KiteRecord {
                kite: reg.kite.clone(),
                url: reg.url.clone(),
                key_id: reg.key_id.clone(),
                created_at: live.map_or(now, |c| c.record.created_at),
                updated_at: now,
                expires_at: codec::deadline(now, ttl),
            };
            if self.guarded_put(&record, ttl, cur.as_ref()).await? {
                return Ok(record);
            }
        }
        Err(StorageError::Conflict(format!(
            "kite {} kept changing concurrently",
            reg.kite.id
        )))
    }

    pub(crate) async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool> {
        for _ in 0..ATTEMPTS {
            let Some(cur) = self.current(id).await? else {
                return Ok(false);
            };
            let now = now();
            if cur.record.expires_at <= now {
                return Ok(false);
            }
            let mut record = cur.record.clone();
            record.updated_at = now;
            record.expires_at = codec::deadline(now, ttl);
            if self.guarded_put(&record, ttl, Some(&cur)).await? {
                return Ok(true);
            }
        }
        Err(StorageError::Conflict(format!(
            "kite {id} kept changing concurrently"
        )))
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<bool> {
        let id_key = self.id_key(id);
        for _ in 0..ATTEMPTS {
            let Some(cur) = self.current(id).await? else {
                return Ok(false);
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    id_key.clone(),
                    CompareOp::Equal,
                    cur.mod_revision,
                )])
                .and_then([
                    TxnOp::delete(self.kite_key(&cur.record.kite), None),
                    TxnOp::delete(id_key.clone(), None),
                ]);
            let mut kv = self.client.kv_client();
            if self.timed("txn", kv.txn(txn)).await?.succeeded() {
                self.revoke_later(cur.lease);
                return Ok(cur.record.expires_at > now());
            }
        }
        Err(StorageError::Conflict(format!(
            "kite {id} kept changing concurrently"
        )))
    }

    /// Reads every key under `prefix`, a page at a time, at one revision.
    async fn scan(&self, prefix: &str, mut each: impl FnMut(&KeyValue)) -> Result<()> {
        let end = prefix_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut kv = self.client.kv_client();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self
                .timed("range", kv.get(start.clone(), Some(opts)))
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for item in resp.kvs() {
                each(item);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    pub(crate) async fn get(&self, m: &Matcher) -> Result<Vec<KiteRecord>> {
        let now = now();
        let mut out = Vec::new();
        if let Some(id) = m.exact(6) {
            if let Some(cur) = self.current(id).await? {
                if cur.record.expires_at > now && m.matches(&cur.record.kite) {
                    out.push(cur.record);
                }
            }
            return Ok(out);
        }
        let fields = m.exact_prefix();
        let mut prefix = self.kites_prefix.clone();
        for f in &fields {
            prefix.push_str(f);
            prefix.push('/');
        }
        let mut corrupt = 0usize;
        self.scan(&prefix, |item| match codec::decode_record(item.value()) {
            Ok(r) => {
                if r.expires_at > now && m.matches(&r.kite) {
                    out.push(r);
                }
            }
            Err(_) => corrupt += 1,
        })
        .await?;
        if corrupt > 0 {
            tracing::warn!(corrupt, prefix, "skipped undecodable etcd records");
        }
        Ok(out)
    }

    pub(crate) async fn count(&self) -> Result<u64> {
        let now = codec::micros(now());
        let mut n = 0u64;
        #[derive(serde::Deserialize)]
        struct Expiry {
            expires_at: u64,
        }
        self.scan(&self.ids_prefix, |item| {
            if let Ok(e) = serde_json::from_slice::<Expiry>(item.value()) {
                if e.expires_at > now {
                    n += 1;
                }
            }
        })
        .await?;
        Ok(n)
    }

    pub(crate) async fn subscribe(&self) -> Result<broadcast::Receiver<HubMsg>> {
        let hub = self
            .hub
            .get_or_try_init(|| async {
                let (hub, _) = broadcast::channel(self.watch_buffer);
                let (ready_tx, ready_rx) = oneshot::channel();
                let task = tokio::spawn(watch_loop(
                    self.client.clone(),
                    self.kites_prefix.clone(),
                    self.timeout,
                    hub.clone(),
                    ready_tx,
                ));
                self.tasks.add(task.abort_handle());
                match ready_rx.await {
                    Ok(Ok(())) => Ok(hub),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(StorageError::Unavailable("etcd watcher stopped".into())),
                }
            })
            .await?;
        Ok(hub.subscribe())
    }

    /// etcd removes expired registrations itself (lease expiry).
    pub(crate) async fn sweep(&self) -> Result<u64> {
        Ok(0)
    }

    /// Every key pair with its creation revision, oldest first, and the read revision.
    async fn all_key_pairs(&self) -> Result<(Vec<KeyPair>, i64)> {
        let mut found = Vec::new();
        let mut bad = None;
        let mut kv = self.client.kv_client();
        // Key pairs are few: one read (paginated by scan for safety would change revisions).
        let resp = self
            .timed(
                "range",
                kv.get(
                    self.keys_prefix.clone(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        for item in resp.kvs() {
            match codec::decode_key_pair(item.value()) {
                Ok(p) => found.push((item.create_revision(), p.into_pair())),
                Err(e) => bad = Some(e),
            }
        }
        if let Some(e) = bad {
            return Err(e);
        }
        found.sort_by_key(|(rev, _)| *rev);
        Ok((found.into_iter().map(|(_, p)| p).collect(), revision))
    }

    pub(crate) async fn add_key_pair(&self, p: CheckedKeyPair) -> Result<KeyPair> {
        for _ in 0..ATTEMPTS {
            let (pairs, revision) = self.all_key_pairs().await?;
            if let AddKeyPair::Existing(kp) = resolve_add_key_pair(&p, &pairs)? {
                return Ok(kp);
            }
            let kp = KeyPair {
                id: p.id.clone(),
                public: p.public.clone(),
                private: p.private.clone(),
                created_at: now(),
                deleted_at: None,
            };
            let key = self.keypair_key(&kp.id);
            // Nothing under the key-pair prefix changed since the read (so the conflict check
            // still holds), and the id is free.
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(self.keys_prefix.clone(), CompareOp::Less, revision + 1)
                        .with_prefix(),
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([TxnOp::put(key, codec::encode_key_pair(&kp, 0), None)]);
            let mut kv = self.client.kv_client();
            if self.timed("txn", kv.txn(txn)).await?.succeeded() {
                return Ok(kp);
            }
        }
        Err(StorageError::Conflict(
            "key pairs kept changing concurrently".into(),
        ))
    }

    pub(crate) async fn delete_key_pair(&self, id: &str) -> Result<()> {
        let key = self.keypair_key(id);
        for _ in 0..ATTEMPTS {
            let mut kv = self.client.kv_client();
            let resp = self.timed("get", kv.get(key.clone(), None)).await?;
            let Some(item) = resp.kvs().first() else {
                return Err(StorageError::KeyPairNotFound);
            };
            let stored = codec::decode_key_pair(item.value())?;
            let seq = stored.seq;
            let mut kp = stored.into_pair();
            if kp.is_deleted() {
                return Ok(());
            }
            kp.deleted_at = Some(now().max(kp.created_at));
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    item.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    key.clone(),
                    codec::encode_key_pair(&kp, seq),
                    None,
                )]);
            if self.timed("txn", kv.txn(txn)).await?.succeeded() {
                return Ok(());
            }
        }
        Err(StorageError::Conflict(format!(
            "key pair {id} kept changing concurrently"
        )))
    }

    pub(crate) async fn find_key_pair(&self, by: KeyLookup<'_>) -> Result<Option<KeyPair>> {
        match by {
            KeyLookup::Id(id) => {
                if id.is_empty() {
                    return Ok(None);
                }
                let mut kv = self.client.kv_client();
                let resp = self
                    .timed("get", kv.get(self.keypair_key(id), None))
                    .await?;
                resp.kvs()
                    .first()
                    .map(|item| codec::decode_key_pair(item.value()).map(|p| p.into_pair()))
                    .transpose()
            }
            KeyLookup::Public(_) => Ok(self
                .all_key_pairs()
                .await?
                .0
                .into_iter()
                .find(|p| by.matches(p))),
        }
    }

    pub(crate) async fn key_pairs(&self) -> Result<Vec<KeyPair>> {
        Ok(self.all_key_pairs().await?.0)
    }
}

/// Turns one watch event into what watchers see.
fn on_event(ev: &etcd_client::Event, hub: &Hub) {
    let decode = |kv: &KeyValue| match codec::decode_record(kv.value()) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "undecodable etcd record");
            None
        }
    };
    match ev.event_type() {
        EventType::Put => {
            let Some(new) = ev.kv().and_then(decode) else {
                return;
            };
            let changed = match ev.prev_kv().and_then(decode) {
                None => true,
                Some(prev) => {
                    prev.url != new.url
                        || prev.key_id != new.key_id
                        || prev.kite != new.kite
                        || prev.expires_at <= new.updated_at
                }
            };
            if changed {
                publish(
                    hub,
                    HubMsg::Event(std::sync::Arc::new(WatchEvent {
                        action: WatchAction::Register,
                        record: new,
                    })),
                );
            }
        }
        EventType::Delete => match ev.prev_kv().and_then(decode) {
            Some(old) => publish(
                hub,
                HubMsg::Event(std::sync::Arc::new(WatchEvent {
                    action: WatchAction::Deregister,
                    record: old,
                })),
            ),
            // The previous value was compacted away: we cannot say which record left.
            None => publish(hub, HubMsg::Interrupted),
        },
    }
}

/// Opens a watch on `prefix` from `start` (0: from now) and waits for its creation.
/// Returns the stream and the revision it was created at.
async fn open_watch(
    client: &Client,
    prefix: &str,
    start: i64,
    timeout: Duration,
) -> Result<(etcd_client::WatchStream, i64)> {
    let mut opts = WatchOptions::new().with_prefix().with_prev_key();
    if start > 0 {
        opts = opts.with_start_revision(start);
    }
    let mut watch = client.watch_client();
    let opened = async {
        let mut stream = watch.watch(prefix, Some(opts)).await?;
        let first = stream.message().await?;
        Ok::<_, etcd_client::Error>((stream, first))
    };
    let (stream, first) = match tokio::time::timeout(timeout, opened).await {
        Ok(r) => r?,
        Err(_) => return Err(StorageError::Unavailable("etcd watch timed out".into())),
    };
    match first {
        Some(resp) if resp.created() => {
            let rev = resp.header().map_or(0, |h| h.revision());
            Ok((stream, rev))
        }
        Some(resp) => Err(StorageError::Unavailable(format!(
            "etcd watch not created: {}",
            resp.cancel_reason()
        ))),
        None => Err(StorageError::Unavailable(
            "etcd closed the watch stream".into(),
        )),
    }
}

async fn watch_loop(
    client: Client,
    prefix: String,
    timeout: Duration,
    hub: Hub,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    // Next revision to watch from; 0 means "from now" (nothing to catch up on, or history lost).
    let mut next: i64 = 0;
    let mut lost = false;
    let mut attempt = 0u32;
    loop {
        match open_watch(&client, &prefix, next, timeout).await {
            Ok((mut stream, created_at)) => {
                if next == 0 {
                    next = created_at + 1;
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                } else {
                    tracing::info!(from = next, "etcd watch re-established");
                }
                if lost {
                    // Watchers must resynchronise: changes in between were not seen.
                    publish(&hub, HubMsg::Interrupted);
                    lost = false;
                }
                attempt = 0;
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if resp.canceled() {
                                if resp.compact_revision() > 0 {
                                    tracing::warn!(
                                        compacted = resp.compact_revision(),
                                        "etcd history compacted past the watch position"
                                    );
                                    next = 0;
                                    lost = true;
                                }
                                break;
                            }
                            for ev in resp.events() {
                                on_event(ev, &hub);
                                if let Some(kv) = ev.kv() {
                                    next = next.max(kv.mod_revision() + 1);
                                }
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("etcd watch stream ended");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "etcd watch stream failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                tracing::warn!(error = %e, attempt, "etcd watch reconnect failed");
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/k/kites/"), b"/k/kites0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_secs(Duration::from_secs(2)), 2);
        assert_eq!(lease_secs(Duration::from_millis(2001)), 3);
    }
}
