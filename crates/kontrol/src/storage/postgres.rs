//! PostgreSQL backend.
//!
//! * Tables `<schema>.kites` (one row per kite id, with `expires_at`) and
//!   `<schema>.key_pairs`, created by versioned migrations applied at connect under an
//!   advisory lock (several replicas may start at once).
//! * Writes that change what watchers see run as server-side functions (`upsert_kite`,
//!   `delete_kite`, `sweep_kites`) that modify the row and `NOTIFY` the change in the same
//!   transaction, so an event is published exactly when, and only if, the change commits.
//! * Every replica `LISTEN`s on the schema's channel (once something watches), so watchers
//!   on any replica see every change, expiries swept by any replica included.
//! * Reads filter on `expires_at > now()`, so an expired row is never served, before or
//!   after a sweep. Every replica sweeps periodically; `FOR UPDATE SKIP LOCKED` keeps
//!   concurrent sweeps from blocking each other, and each row is deleted (and reported)
//!   once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{broadcast, oneshot, OnceCell};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Row, Socket, Statement};

use super::codec::StoredRecord;
use super::error::{Result, StorageError, ValidationError};
use super::query::{CheckedKeyPair, Matcher, FIELDS};
use super::tasks::{backoff, Tasks};
use super::watch::{publish, Hub, HubMsg};
use super::{
    resolve_add_key_pair, AddKeyPair, KeyLookup, KeyPair, KiteRecord, PostgresConfig, Registration,
    WatchAction, WatchEvent,
};

/// PostgreSQL refuses `NOTIFY` payloads of 8000 bytes or more.
const MAX_NOTIFY_PAYLOAD: usize = 7999;

/// An upper bound of the `NOTIFY` payload of `reg`'s events: the compact JSON with the
/// widest timestamps, plus what `json_build_object`'s spacing adds (3 bytes per key) and the
/// action. JSON escaping is the same in serde_json and PostgreSQL.
fn payload_bound(reg: &Registration) -> usize {
    let probe = StoredRecord {
        kite: reg.kite.clone(),
        url: reg.url.clone(),
        key_id: reg.key_id.clone(),
        created_at: u64::MAX,
        updated_at: u64::MAX,
        expires_at: u64::MAX,
    };
    serde_json::to_vec(&probe).map_or(usize::MAX, |v| v.len()) + 13 * 3 + 64
}

/// Rows removed per sweep statement.
const SWEEP_BATCH: i64 = 10_000;
/// Longest schema name (the notification channel name must fit in 63 bytes).
const MAX_SCHEMA_LEN: usize = 48;

const KITE_COLUMNS: &str = "id, username, environment, name, version, region, hostname, url, \
                            key_id, created_at, updated_at, expires_at";
const KEY_COLUMNS: &str = "id, public, private, created_at, deleted_at";

/// Migrations, in order; `{s}` is the schema, `{ch}` the notification channel. Never edit a
/// released migration: add a new one.
const MIGRATIONS: &[(i32, &str)] = &[(1, MIGRATION_1)];

const MIGRATION_1: &str = r#"
CREATE TABLE {s}.key_pairs (
    seq        bigserial   NOT NULL UNIQUE,
    id         text        PRIMARY KEY,
    public     text        NOT NULL UNIQUE,
    private    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL,
    CHECK (deleted_at IS NULL OR created_at <= deleted_at)
);

CREATE TABLE {s}.kites (
    id          text        PRIMARY KEY,
    username    text        NOT NULL,
    environment text        NOT NULL,
    name        text        NOT NULL,
    version     text        NOT NULL,
    region      text        NOT NULL,
    hostname    text        NOT NULL,
    url         text        NOT NULL,
    key_id      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX kites_identity_idx ON {s}.kites (username, environment, name, version, region, hostname);
CREATE INDEX kites_name_idx ON {s}.kites (name, username);
CREATE INDEX kites_expires_at_idx ON {s}.kites (expires_at);

-- Microseconds since the Unix epoch, exact on every PostgreSQL version.
CREATE FUNCTION {s}.micros(ts timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT floor(extract(epoch FROM ts))::bigint * 1000000
         + (extract(microseconds FROM ts)::bigint % 1000000)
$$;

CREATE FUNCTION {s}.notify_kite(action text, k {s}.kites) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('{ch}', json_build_object(
        'action', action,
        'kite', json_build_object(
            'username', k.username, 'environment', k.environment, 'name', k.name,
            'version', k.version, 'region', k.region, 'hostname', k.hostname, 'id', k.id),
        'url', k.url,
        'key_id', k.key_id,
        'created_at', {s}.micros(k.created_at),
        'updated_at', {s}.micros(k.updated_at),
        'expires_at', {s}.micros(k.expires_at))::text)
$$;

CREATE FUNCTION {s}.upsert_kite(
    p_id text, p_username text, p_environment text, p_name text, p_version text,
    p_region text, p_hostname text, p_url text, p_key_id text, p_ttl_us bigint)
RETURNS SETOF {s}.kites LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
    v_expires timestamptz := now() + p_ttl_us * interval '1 microsecond';
    v_old {s}.kites;
    v_new {s}.kites;
BEGIN
    FOR attempt IN 1..5 LOOP
        INSERT INTO {s}.kites (id, username, environment, name, version, region, hostname,
                               url, key_id, created_at, updated_at, expires_at)
        VALUES (p_id, p_username, p_environment, p_name, p_version, p_region, p_hostname,
                p_url, p_key_id, v_now, v_now, v_expires)
        ON CONFLICT (id) DO NOTHING
        RETURNING * INTO v_new;
        IF FOUND THEN
            PERFORM {s}.notify_kite('REGISTER', v_new);
            RETURN NEXT v_new;
            RETURN;
        END IF;
        SELECT * INTO v_old FROM {s}.kites WHERE id = p_id FOR UPDATE;
        IF FOUND THEN
            UPDATE {s}.kites SET
                username = p_username, environment = p_environment, name = p_name,
                version = p_version, region = p_region, hostname = p_hostname,
                url = p_url, key_id = p_key_id,
                created_at = CASE WHEN v_old.expires_at > v_now THEN v_old.created_at ELSE v_now END,
                updated_at = v_now,
                expires_at = v_expires
            WHERE id = p_id
            RETURNING * INTO v_new;
            IF v_old.expires_at <= v_now THEN
                PERFORM {s}.notify_kite('REGISTER', v_new);
            ELSIF (v_old.username, v_old.environment, v_old.name, v_old.version, v_old.region,
                   v_old.hostname)
                  IS DISTINCT FROM
                  (v_new.username, v_new.environment, v_new.name, v_new.version, v_new.region,
                   v_new.hostname) THEN
                PERFORM {s}.notify_kite('DEREGISTER', v_old);
                PERFORM {s}.notify_kite('REGISTER', v_new);
            ELSIF v_old.url IS DISTINCT FROM v_new.url
                  OR v_old.key_id IS DISTINCT FROM v_new.key_id THEN
                PERFORM {s}.notify_kite('REGISTER', v_new);
            END IF;
            RETURN NEXT v_new;
            RETURN;
        END IF;
        -- Deleted between the two statements: try again.
    END LOOP;
    RAISE EXCEPTION 'kite % keeps changing concurrently', p_id;
END
$$;

CREATE FUNCTION {s}.delete_kite(p_id text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_old {s}.kites;
BEGIN
    DELETE FROM {s}.kites WHERE id = p_id RETURNING * INTO v_old;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}.notify_kite('DEREGISTER', v_old);
    RETURN v_old.expires_at > now();
END
$$;

CREATE FUNCTION {s}.sweep_kites(p_limit bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    r {s}.kites;
    n bigint := 0;
BEGIN
    FOR r IN
        DELETE FROM {s}.kites WHERE id IN (
            SELECT id FROM {s}.kites WHERE expires_at <= now()
            ORDER BY expires_at LIMIT p_limit
            FOR UPDATE SKIP LOCKED)
        RETURNING *
    LOOP
        PERFORM {s}.notify_kite('DEREGISTER', r);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
"#;

type PgConnection = Connection<Socket, NoTlsStream>;

/// A connection with its prepared statements.
struct Conn {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
}

impl Conn {
    async fn prepare(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = self
            .statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
        {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(sql).await?;
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let stmt = self.prepare(sql).await?;
        Ok(self.client.query(&stmt, params).await?)
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let stmt = self.prepare(sql).await?;
        Ok(self.client.query_one(&stmt, params).await?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let stmt = self.prepare(sql).await?;
        Ok(self.client.execute(&stmt, params).await?)
    }
}

/// Query connections, each kept up by its own task (reconnecting with back-off).
struct Pool {
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
}

impl Pool {
    fn get(&self) -> Result<Arc<Conn>> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let slot = self.slots[(start + i) % n]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(c) = slot.as_ref() {
                if !c.client.is_closed() {
                    return Ok(c.clone());
                }
            }
        }
        Err(StorageError::Unavailable(
            "no PostgreSQL connection (reconnecting)".into(),
        ))
    }

    fn set(&self, i: usize, conn: Option<Arc<Conn>>) {
        *self.slots[i].lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }
}

/// SQL texts for this schema.
struct Sql {
    upsert: String,
    refresh: String,
    delete: String,
    sweep: String,
    count: String,
    get_prefix: String,
    key_insert: String,
    key_conflicts: String,
    key_delete: String,
    key_exists: String,
    key_by_id: String,
    key_by_public: String,
    key_all: String,
    listen: String,
    channel: String,
}

impl Sql {
    fn new(s: &str) -> Sql {
        let params: Vec<String> = (1..=10).map(|i| format!("${i}")).collect();
        Sql {
            upsert: format!(
                "SELECT {KITE_COLUMNS} FROM {s}.upsert_kite({})",
                params.join(", ")
            ),
            refresh: format!(
                "UPDATE {s}.kites SET updated_at = now(), \
                 expires_at = now() + $2::bigint * interval '1 microsecond' \
                 WHERE id = $1 AND expires_at > now()"
            ),
            delete: format!("SELECT {s}.delete_kite($1)"),
            sweep: format!("SELECT {s}.sweep_kites($1)"),
            count: format!("SELECT count(*) FROM {s}.kites WHERE expires_at > now()"),
            get_prefix: format!("SELECT {KITE_COLUMNS} FROM {s}.kites WHERE expires_at > now()"),
            key_insert: format!(
                "INSERT INTO {s}.key_pairs (id, public, private) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING RETURNING {KEY_COLUMNS}"
            ),
            key_conflicts: format!(
                "SELECT {KEY_COLUMNS} FROM {s}.key_pairs WHERE id = $1 OR public = $2 \
                 ORDER BY seq"
            ),
            key_delete: format!(
                "UPDATE {s}.key_pairs SET deleted_at = greatest(now(), created_at) \
                 WHERE id = $1 AND deleted_at IS NULL"
            ),
            key_exists: format!("SELECT count(*) FROM {s}.key_pairs WHERE id = $1"),
            key_by_id: format!("SELECT {KEY_COLUMNS} FROM {s}.key_pairs WHERE id = $1"),
            key_by_public: format!("SELECT {KEY_COLUMNS} FROM {s}.key_pairs WHERE public = $1"),
            key_all: format!("SELECT {KEY_COLUMNS} FROM {s}.key_pairs ORDER BY seq"),
            listen: format!("LISTEN \"{}\"", channel_name(s)),
            channel: channel_name(s),
        }
    }
}

fn channel_name(schema: &str) -> String {
    format!("kontrol_kites_{schema}")
}

fn check_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_LEN
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StorageError::Config(format!(
            "invalid PostgreSQL schema name {schema:?}: use lower-case letters, digits and _, \
             at most {MAX_SCHEMA_LEN} bytes, not starting with a digit or pg_"
        )))
    }
}

/// The PostgreSQL backend.
pub(crate) struct Postgres {
    pool: Arc<Pool>,
    sql: Arc<Sql>,
    pg: tokio_postgres::Config,
    connect_timeout: Duration,
    watch_buffer: usize,
    hub: OnceCell<Hub>,
    tasks: Tasks,
}

async fn connect_once(
    pg: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<(Client, PgConnection)> {
    match tokio::time::timeout(timeout, pg.connect(NoTls)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StorageError::Unavailable(format!(
            "connecting to PostgreSQL timed out after {timeout:?}"
        ))),
    }
}

impl Postgres {
    pub(crate) async fn connect(c: &PostgresConfig) -> Result<Postgres> {
        check_schema(&c.schema)?;
        if c.pool_size == 0 {
            return Err(StorageError::Config("pool_size must be positive".into()));
        }
        if c.sweep_interval.is_zero() {
            return Err(StorageError::Config(
                "sweep_interval must be positive".into(),
            ));
        }
        let mut pg: tokio_postgres::Config = c.conninfo.parse().map_err(|e| {
            StorageError::Config(format!("invalid PostgreSQL connection string: {e}"))
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(c.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("kontrol");
        }
        let sql = Arc::new(Sql::new(&c.schema));
        let tasks = Tasks::default();
        let pool = Arc::new(Pool {
            slots: (0..c.pool_size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        });

        for i in 0..c.pool_size {
            let (mut client, connection) = connect_once(&pg, c.connect_timeout).await?;
            let driver = tokio::spawn(connection);
            if i == 0 {
                let migrated = migrate(&mut client, &c.schema).await;
                if let Err(e) = migrated {
                    driver.abort();
                    return Err(e);
                }
            }
            pool.set(
                i,
                Some(Arc::new(Conn {
                    client,
                    statements: Mutex::new(HashMap::new()),
                })),
            );
            let task = tokio::spawn(keep_connected(
                pool.clone(),
                i,
                pg.clone(),
                c.connect_timeout,
                driver,
            ));
            tasks.add(task.abort_handle());
        }

        let sweeper = tokio::spawn(sweep_loop(pool.clone(), sql.clone(), c.sweep_interval));
        tasks.add(sweeper.abort_handle());
        tracing::info!(schema = %c.schema, pool = c.pool_size, "PostgreSQL storage connected");
        Ok(Postgres {
            pool,
            sql,
            pg,
            connect_timeout: c.connect_timeout,
            watch_buffer: c.limits.watch_buffer,
            hub: OnceCell::new(),
            tasks,
        })
    }

    pub(crate) async fn upsert(&self, reg: &Registration, ttl: Duration) -> Result<KiteRecord> {
        let len = payload_bound(reg);
        if len > MAX_NOTIFY_PAYLOAD {
            return Err(ValidationError::RecordTooLarge {
                len,
                limit: MAX_NOTIFY_PAYLOAD,
            }
            .into());
        }
        let k = &reg.kite;
        let ttl_us = ttl_micros(ttl);
        let conn = self.pool.get()?;
        let row = conn
            .query_one(
                &self.sql.upsert,
                &[
                    &k.id,
                    &k.username,
                    &k.environment,
                    &k.name,
                    &k.version,
                    &k.region,
                    &k.hostname,
                    &reg.url,
                    &reg.key_id,
                    &ttl_us,
                ],
            )
            .await?;
        kite_from_row(&row)
    }

    pub(crate) async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool> {
        let conn = self.pool.get()?;
        let n = conn
            .execute(&self.sql.refresh, &[&id, &ttl_micros(ttl)])
            .await?;
        Ok(n > 0)
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<bool> {
        let conn = self.pool.get()?;
        let row = conn.query_one(&self.sql.delete, &[&id]).await?;
        Ok(row.try_get(0)?)
    }

    pub(crate) async fn get(&self, m: &Matcher) -> Result<Vec<KiteRecord>> {
        let mut sql = self.sql.get_prefix.clone();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(7);
        let mut values: Vec<&str> = Vec::with_capacity(7);
        for (i, field) in FIELDS.iter().enumerate() {
            if let Some(v) = m.exact(i) {
                values.push(v);
                sql.push_str(&format!(" AND {field} = ${}", values.len()));
            }
        }
        for v in &values {
            params.push(v);
        }
        let conn = self.pool.get()?;
        let rows = conn.query(&sql, &params).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let r = kite_from_row(row)?;
            // Version constraints are evaluated here; the rest is a cheap re-check.
            if m.matches(&r.kite) {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub(crate) async fn count(&self) -> Result<u64> {
        let conn = self.pool.get()?;
        let n: i64 = conn.query_one(&self.sql.count, &[]).await?.try_get(0)?;
        Ok(n.max(0) as u64)
    }

    pub(crate) async fn subscribe(&self) -> Result<broadcast::Receiver<HubMsg>> {
        let hub = self
            .hub
            .get_or_try_init(|| async {
                let (hub, _) = broadcast::channel(self.watch_buffer);
                let (ready_tx, ready_rx) = oneshot::channel();
                let task = tokio::spawn(listen_loop(
                    self.pg.clone(),
                    self.connect_timeout,
                    self.sql.clone(),
                    hub.clone(),
                    ready_tx,
                ));
                self.tasks.add(task.abort_handle());
                match ready_rx.await {
                    Ok(Ok(())) => Ok(hub),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(StorageError::Unavailable(
                        "PostgreSQL listener stopped".into(),
                    )),
                }
            })
            .await?;
        Ok(hub.subscribe())
    }

    pub(crate) async fn sweep(&self) -> Result<u64> {
        sweep_once(&self.pool, &self.sql).await
    }

    pub(crate) async fn add_key_pair(&self, p: CheckedKeyPair) -> Result<KeyPair> {
        let conn = self.pool.get()?;
        let rows = conn
            .query(&self.sql.key_insert, &[&p.id, &p.public, &p.private])
            .await?;
        if let Some(row) = rows.first() {
            return key_from_row(row);
        }
        let rows = conn
            .query(&self.sql.key_conflicts, &[&p.id, &p.public])
            .await?;
        let stored = rows.iter().map(key_from_row).collect::<Result<Vec<_>>>()?;
        match resolve_add_key_pair(&p, &stored)? {
            AddKeyPair::Existing(kp) => Ok(kp),
            AddKeyPair::Insert => Err(StorageError::Conflict(
                "key pair changed concurrently".into(),
            )),
        }
    }

    pub(crate) async fn delete_key_pair(&self, id: &str) -> Result<()> {
        let conn = self.pool.get()?;
        if conn.execute(&self.sql.key_delete, &[&id]).await? > 0 {
            return Ok(());
        }
        let n: i64 = conn
            .query_one(&self.sql.key_exists, &[&id])
            .await?
            .try_get(0)?;
        if n > 0 {
            Ok(())
        } else {
            Err(StorageError::KeyPairNotFound)
        }
    }

    pub(crate) async fn find_key_pair(&self, by: KeyLookup<'_>) -> Result<Option<KeyPair>> {
        let conn = self.pool.get()?;
        let rows = match by {
            KeyLookup::Id(id) => conn.query(&self.sql.key_by_id, &[&id]).await?,
            KeyLookup::Public(p) => conn.query(&self.sql.key_by_public, &[&p]).await?,
        };
        rows.first().map(key_from_row).transpose()
    }

    pub(crate) async fn key_pairs(&self) -> Result<Vec<KeyPair>> {
        let conn = self.pool.get()?;
        let rows = conn.query(&self.sql.key_all, &[]).await?;
        rows.iter().map(key_from_row).collect()
    }
}

fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

fn kite_from_row(row: &Row) -> Result<KiteRecord> {
    Ok(KiteRecord {
        kite: kite_protocol::Kite {
            id: row.try_get(0)?,
            username: row.try_get(1)?,
            environment: row.try_get(2)?,
            name: row.try_get(3)?,
            version: row.try_get(4)?,
            region: row.try_get(5)?,
            hostname: row.try_get(6)?,
        },
        url: row.try_get(7)?,
        key_id: row.try_get(8)?,
        created_at: row.try_get::<_, SystemTime>(9)?,
        updated_at: row.try_get::<_, SystemTime>(10)?,
        expires_at: row.try_get::<_, SystemTime>(11)?,
    })
}

fn key_from_row(row: &Row) -> Result<KeyPair> {
    Ok(KeyPair {
        id: row.try_get(0)?,
        public: row.try_get(1)?,
        private: row.try_get(2)?,
        created_at: row.try_get::<_, SystemTime>(3)?,
        deleted_at: row.try_get::<_, Option<SystemTime>>(4)?,
    })
}

/// Applies pending migrations in one transaction, serialised between replicas by an
/// advisory lock.
async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("kontrol-migrate:{schema}")],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await?;
    let current: Option<i32> = tx
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .try_get(0)?;
    let current = current.unwrap_or(0);
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > latest {
        return Err(StorageError::Config(format!(
            "PostgreSQL schema {schema} is at version {current}, newer than this Kontrol \
             understands ({latest})"
        )));
    }
    let channel = channel_name(schema);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(schema, version, "applying PostgreSQL migration");
        tx.batch_execute(&sql.replace("{s}", schema).replace("{ch}", &channel))
            .await?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Drives connection `i` of the pool and replaces it when it breaks.
async fn keep_connected(
    pool: Arc<Pool>,
    i: usize,
    pg: tokio_postgres::Config,
    timeout: Duration,
    mut driver: tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
) {
    loop {
        // Aborting this task must stop the connection too.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let guard = AbortOnDrop(driver.abort_handle());
        match (&mut driver).await {
            Ok(Ok(())) => tracing::warn!(slot = i, "PostgreSQL connection closed"),
            Ok(Err(e)) => tracing::warn!(slot = i, error = %e, "PostgreSQL connection lost"),
            Err(e) => tracing::warn!(slot = i, error = %e, "PostgreSQL connection task ended"),
        }
        drop(guard);
        pool.set(i, None);
        let mut attempt = 0;
        driver = loop {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            match connect_once(&pg, timeout).await {
                Ok((client, connection)) => {
                    let driver = tokio::spawn(connection);
                    pool.set(
                        i,
                        Some(Arc::new(Conn {
                            client,
                            statements: Mutex::new(HashMap::new()),
                        })),
                    );
                    tracing::info!(slot = i, "PostgreSQL connection re-established");
                    break driver;
                }
                Err(e) => {
                    tracing::warn!(slot = i, error = %e, attempt, "PostgreSQL reconnect failed")
                }
            }
        };
    }
}

async fn sweep_once(pool: &Pool, sql: &Sql) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let conn = pool.get()?;
        let n: i64 = conn
            .query_one(&sql.sweep, &[&SWEEP_BATCH])
            .await?
            .try_get(0)?;
        total += n.max(0) as u64;
        if n < SWEEP_BATCH {
            break;
        }
    }
    if total > 0 {
        tracing::debug!(removed = total, "expired kites swept");
    }
    Ok(total)
}

async fn sweep_loop(pool: Arc<Pool>, sql: Arc<Sql>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep_once(&pool, &sql).await {
            tracing::warn!(error = %e, "PostgreSQL expiry sweep failed");
        }
    }
}

#[derive(Deserialize)]
struct EventPayload {
    action: String,
    #[serde(flatten)]
    record: StoredRecord,
}

fn parse_event(payload: &str) -> Option<WatchEvent> {
    let p: EventPayload = match serde_json::from_str(payload) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable PostgreSQL kite event");
            return None;
        }
    };
    let action = match p.action.as_str() {
        "REGISTER" => WatchAction::Register,
        "DEREGISTER" => WatchAction::Deregister,
        other => {
            tracing::warn!(action = other, "unknown PostgreSQL kite event");
            return None;
        }
    };
    Some(WatchEvent {
        action,
        record: p.record.into_record(),
    })
}

/// Connects and `LISTEN`s; returns the client (kept to hold the session) and the message
/// stream of the connection.
async fn listen(
    pg: &tokio_postgres::Config,
    timeout: Duration,
    sql: &Sql,
) -> Result<(Client, PgConnection)> {
    let (client, mut connection) = connect_once(pg, timeout).await?;
    {
        let listen = client.batch_execute(&sql.listen);
        tokio::pin!(listen);
        // The connection must be polled for the LISTEN to complete; nothing else can arrive
        // before it does.
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
        loop {
            tokio::select! {
                r = &mut listen => {
                    r?;
                    break;
                }
                m = messages.next() => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(StorageError::Unavailable("PostgreSQL closed the listener connection".into())),
                }
            }
        }
    }
    Ok((client, connection))
}

async fn listen_loop(
    pg: tokio_postgres::Config,
    timeout: Duration,
    sql: Arc<Sql>,
    hub: Hub,
    ready: oneshot::Sender<Result<()>>,
) {
    let (mut client, mut connection) = match listen(&pg, timeout, &sql).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if n.channel() == sql.channel {
                            if let Some(ev) = parse_event(n.payload()) {
                                publish(&hub, HubMsg::Event(Arc::new(ev)));
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "PostgreSQL listener connection lost");
                        break;
                    }
                    None => {
                        tracing::warn!("PostgreSQL listener connection closed");
                        break;
                    }
                }
            }
        }
        drop(client);
        let mut attempt = 0;
        (client, connection) = loop {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            match listen(&pg, timeout, &sql).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "PostgreSQL listener reconnect failed")
                }
            }
        };
        // Changes made while disconnected were not seen: watchers must resynchronise.
        tracing::info!("PostgreSQL listener re-established");
        publish(&hub, HubMsg::Interrupted);
    }
}
