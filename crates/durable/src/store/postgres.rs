//! The PostgreSQL store: several processes share one database as competing
//! workers.
//!
//! # Design
//! - **The database is the queue.** Unlike the SQLite store nothing is kept
//!   in memory: each instance row carries its lease (`lock_token`,
//!   `lock_owner`) and `due_at`, the time (milliseconds, database clock) at
//!   which it next becomes fetchable. Not leased: the earliest `due_ms` of
//!   its messages (NULL with an empty inbox). Leased: the lease expiry.
//!   Activities carry the same three columns. A fetch takes due rows with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent fetchers, in this process or
//!   another, never wait for each other and never get the same row.
//! - **Every write locks the instance row first.** A commit's first statement
//!   is the status `UPDATE` guarded by the lease token; it doubles as the
//!   lease check (no row: [`StoreError::LeaseLost`], the transaction is
//!   rolled back and nothing changed). A send locks its target row before it
//!   checks the status and inserts, so a message can never slip in beside a
//!   commit that finishes the instance, a purge or a re-create. A fetch
//!   re-tokens the row, so a holder whose lease expired and was taken over
//!   finds a different token.
//! - **One transaction per operation.** PostgreSQL flushes the WAL of
//!   concurrent commits together, so the pool's connections share fsyncs.
//!   Two operations span more: a new instance's first turn commits with its
//!   creation ([`Store::create_instance_with_turn`]), and results handed
//!   over together ([`Store::complete_activities`]) complete in one
//!   transaction that locks their instance rows in id order first, so two
//!   such batches cannot deadlock.
//! - **Wake-ups across processes** go through `LISTEN`/`NOTIFY` on one
//!   dedicated connection per store ([`listener`]): work made visible
//!   locally fires the local [`WorkSignal`] at once and is announced to the
//!   other processes, coalesced into one `NOTIFY` per round trip. Delayed
//!   work (a lease, a timer) is announced as a wake-up hint, so an idle
//!   dispatcher elsewhere that planned to sleep past it wakes up and
//!   recomputes [`Store::next_wake_at`]. The same notifications name the
//!   instances each commit changed, so every process's engine can publish
//!   the others' changes live ([`Store::remote_changes`], `crate::remote`).
//! - **Dead workers are noticed.** Each store registers its listener
//!   connection (backend pid and start time) in the `workers` table and
//!   stamps its leases with its worker id. When a dispatcher goes idle,
//!   [`Store::next_wake_at`] marks workers whose backend is gone from
//!   `pg_stat_activity` (the process died, the server closed its
//!   connection; a backend start time hidden from a role without the
//!   privilege to see it counts as alive), and once one has stayed gone for
//!   [`PostgresConfig::dead_after`] (5 s) drops it and makes its leases due
//!   at once: a killed process's work moves on after seconds instead of
//!   after the lease. A worker whose listener connection only dropped
//!   re-registers within that time (its listener reconnects every 500 ms),
//!   which clears the mark: its running activities are not handed out a
//!   second time. One disconnected for longer loses its leases: its
//!   commits then get [`StoreError::LeaseLost`] if someone else took the
//!   work.
//! - **Affinity**: an instance row names its `home`, the worker that
//!   created it or committed its last turn and so holds its run in the
//!   engine's cache. Other workers take its work only once it has been due
//!   for [`PostgresConfig::affinity`] (and their `next_wake_at` says when
//!   that is), so a busy or dead home delays it by that much at most, while
//!   turns normally run where no history has to be replayed.
//! - **Its own schema** (default `durable`), created at the first connect
//!   under an advisory lock (so processes starting together do not race)
//!   and marked with a `meta` row (application and schema version). A schema
//!   of that name holding anything else, or another version, is refused
//!   without writing.
//!
//! Times are the database's clock (`statement_timestamp()`), so processes on
//! machines whose clocks disagree still agree on lease expiry; message
//! `visible_at` times come from the engine and are compared with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::join_all;
use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::page::{PageBuilder, PAGE_PAYLOAD_BYTES};
pub use super::pg_connect::{PgTarget, PgUrlError};
use super::{
    ActivityWorkItem, LifecycleEvent, NewActivity, NewInstance, OrchestrationWorkItem,
    PurgeOutcome, RemoteChange, StatusUpdate, Store, StoreError, StoredMessage, TurnCommit,
    WorkLock, WorkSignal,
};
use crate::history::{EventKind, HistoryEvent, Message};
use crate::types::{
    self, FailureDetails, InstanceFilter, InstanceId, InstancePage, InstanceQuery, InstanceStatus,
    RuntimeStatus, Timestamp,
};

/// Written into the `meta` table; a schema with another value is not ours.
const APPLICATION: &str = "galaxy-forge durable store";
/// Version of the tables below; another version is refused at connect.
const SCHEMA_VERSION: i32 = 2;
/// The database clock in whole milliseconds. `statement_timestamp()` is
/// stable within a statement, so index scans can use it; `floor` so that a
/// time is never reported as reached before it is.
const NOW: &str = "floor(extract(epoch from statement_timestamp()) * 1000)::int8";
/// Marks a lease held by nobody: an abandoned work item waiting out its delay.
const NOBODY: &str = "-";

/// Settings of a PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// Connection URL or key/value string (`postgres://user@host:port/db`).
    pub url: String,
    /// The schema holding the store's tables; one database can hold several
    /// independent stores under different schemas.
    pub schema: String,
    /// Connections in the pool (the listener has its own).
    pub pool_size: usize,
    /// How long work of an instance whose last turn ran in another live
    /// process is left to that process before this one takes it. That
    /// process holds the instance's run in its cache; a turn elsewhere
    /// replays the whole history. Zero: no affinity.
    pub affinity: Duration,
    /// Keep the lifecycle outbox (see [`crate::store::lifecycle`]).
    pub lifecycle_outbox: bool,
    /// How long another worker's listener connection must stay gone before
    /// that worker counts as dead and its leases are taken over. A live
    /// worker whose connection dropped reconnects well within it (its
    /// listener retries every 500 ms), so its running work is not run a
    /// second time; a killed process's work waits this long at most.
    pub dead_after: Duration,
}

impl PostgresConfig {
    /// Defaults for `url`: schema `durable`, 16 connections, 50 ms of
    /// affinity, a worker dead after 5 s without its connection.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "durable".into(),
            pool_size: 16,
            affinity: Duration::from_millis(50),
            lifecycle_outbox: false,
            dead_after: Duration::from_secs(5),
        }
    }
}

/// Why [`schema_pool`] refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaPoolError {
    /// The schema name is not lowercase letters, digits and '_'.
    #[error("schema name '{0}' must be lowercase letters, digits and '_'")]
    Schema(String),
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    Url(String),
    /// The pool could not be built.
    #[error("connection pool: {0}")]
    Pool(String),
}

/// A pool of `size` connections whose sessions work in `schema`
/// (`search_path`), and the connection target (for a listener of one's
/// own): how the crates that keep their tables beside the engine's (the
/// players store, the event router) connect, with the same TLS settings.
pub fn schema_pool(
    url: &str,
    schema: &str,
    size: usize,
) -> Result<(Pool, PgTarget), SchemaPoolError> {
    if schema.is_empty()
        || !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(SchemaPoolError::Schema(schema.to_string()));
    }
    let mut target = PgTarget::parse(url).map_err(|e| SchemaPoolError::Url(e.to_string()))?;
    target.config.options(format!("-c search_path={schema}"));
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| SchemaPoolError::Pool(e.to_string()))?;
    Ok((pool, target))
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Database(format!("{}: {}", d.code().code(), d.message())),
        None => StoreError::Database(error_chain(&e)),
    }
}

/// An error and its causes, e.g. "error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer" (tokio-postgres's own message stops at
/// the first part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        e => StoreError::Database(format!("connection pool: {e}")),
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("values built from JSON serialize")
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Incompatible(format!("unreadable stored value: {e}")))
}

fn parse_status(s: &str) -> Result<RuntimeStatus, StoreError> {
    RuntimeStatus::parse(s).ok_or_else(|| StoreError::Incompatible(format!("unknown status {s}")))
}

/// `'Completed','Failed',...`: the terminal statuses as an SQL list.
fn terminal_list() -> String {
    RuntimeStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A quoted schema name, after checking it is a plain identifier (it is
/// spliced into every statement).
fn quoted_schema(schema: &str) -> Result<String, StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && !schema.starts_with("pg_");
    if !ok {
        return Err(StoreError::Incompatible(format!(
            "schema name '{schema}' must be lowercase letters, digits and '_', not starting with a digit or 'pg_'"
        )));
    }
    Ok(format!("\"{schema}\""))
}

/// The tables. Only the indexes the hot paths use: instance and activity
/// rows are updated on every fetch, commit and send, and each index costs
/// every one of those updates. Counting by status, reaping dead workers'
/// leases and the queue depth scan instead; they are rare.
fn schema_ddl(s: &str) -> String {
    format!(
        "
CREATE TABLE {s}.meta (
    application text NOT NULL,
    version int4 NOT NULL
);
CREATE TABLE {s}.instances (
    instance_id text COLLATE \"C\" PRIMARY KEY,
    name text NOT NULL,
    execution_id text NOT NULL,
    runtime_status text NOT NULL,
    input text NOT NULL,
    output text,
    custom_status text,
    failure text,
    created_at int8 NOT NULL,
    last_updated_at int8 NOT NULL,
    parent_instance_id text,
    history_events int8 NOT NULL DEFAULT 0,
    history_bytes int8 NOT NULL DEFAULT 0,
    attempts int4 NOT NULL DEFAULT 0,
    lock_token text,
    lock_owner int8,
    due_at int8,
    home int8
);
CREATE INDEX instances_due ON {s}.instances (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX instances_by_created ON {s}.instances (created_at, instance_id);
CREATE TABLE {s}.history (
    instance_id text COLLATE \"C\" NOT NULL,
    first_event_id int8 NOT NULL,
    events text NOT NULL,
    PRIMARY KEY (instance_id, first_event_id)
);
CREATE TABLE {s}.messages (
    id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text COLLATE \"C\" NOT NULL,
    due_ms int8 NOT NULL,
    message text NOT NULL
);
CREATE INDEX messages_by_instance ON {s}.messages (instance_id, due_ms);
CREATE TABLE {s}.activities (
    id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text COLLATE \"C\" NOT NULL,
    execution_id text NOT NULL,
    task_id int8 NOT NULL,
    name text NOT NULL,
    input text NOT NULL,
    attempts int4 NOT NULL DEFAULT 0,
    lock_token text,
    lock_owner int8,
    due_at int8 NOT NULL
);
CREATE INDEX activities_due ON {s}.activities (due_at);
CREATE INDEX activities_by_instance ON {s}.activities (instance_id);
CREATE TABLE {s}.workers (
    id int8 PRIMARY KEY,
    pid int4 NOT NULL,
    backend_start timestamptz NOT NULL
);
INSERT INTO {s}.meta (application, version) VALUES ('{APPLICATION}', {SCHEMA_VERSION});
"
    )
}

/// Creates the schema if it is missing; refuses one that is not ours or has
/// another version, without writing to it.
async fn prepare_schema(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<(), StoreError> {
    let s = quoted_schema(schema)?;
    let tx = client.transaction().await.map_err(db_err)?;
    // Processes starting together would otherwise both try to create it.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('galaxy-forge durable schema ' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(db_err)?;
    let relations: i64 = tx
        .query_one(
            "SELECT count(c.oid) FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid \
             WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .map_err(db_err)?
        .get(0);
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(db_err)?
        .get(0);
    let has_meta: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'meta')",
            &[&schema],
        )
        .await
        .map_err(db_err)?
        .get(0);
    if !has_meta {
        if exists && relations > 0 {
            return Err(StoreError::Incompatible(format!(
                "schema {s} of this database holds tables that are not a Galaxy Forge engine store; \
                 refusing to use it (nothing was changed): choose another schema or database"
            )));
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; {} {} {}",
            schema_ddl(&s),
            lifecycle_ddl(&s),
            workers_ddl(&s)
        ))
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        return Ok(());
    }
    let row = tx
        .query_opt(&format!("SELECT application, version FROM {s}.meta"), &[])
        .await
        .map_err(|e| {
            StoreError::Incompatible(format!(
                "schema {s} has an unreadable meta table ({}); refusing to use it",
                db_err(e)
            ))
        })?;
    let Some(row) = row else {
        return Err(StoreError::Incompatible(format!(
            "schema {s} has an empty meta table; refusing to use it"
        )));
    };
    let application: String = row.get(0);
    let version: i32 = row.get(1);
    if application != APPLICATION {
        return Err(StoreError::Incompatible(format!(
            "schema {s} belongs to '{application}', not to the Galaxy Forge engine; refusing to use it"
        )));
    }
    if version != SCHEMA_VERSION {
        return Err(StoreError::Incompatible(format!(
            "schema {s} has store schema version {version}; this build reads version {SCHEMA_VERSION}"
        )));
    }
    // Added after schema version 1 without a bump: older builds ignore them.
    tx.batch_execute(&format!("{} {}", lifecycle_ddl(&s), workers_ddl(&s)))
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

/// The lifecycle outbox (see [`crate::store::lifecycle`]).
fn lifecycle_ddl(s: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.lifecycle_outbox ( \
           seq int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
           instance_id text NOT NULL, \
           name text NOT NULL, \
           execution_id text NOT NULL, \
           runtime_status text NOT NULL, \
           history_events int8 NOT NULL, \
           at int8 NOT NULL, \
           failure text);"
    )
}

/// When another worker first saw this worker's listener connection gone
/// (ms, database clock; NULL while it is there). A worker counts as dead
/// only [`PostgresConfig::dead_after`] later, and clears it when its
/// listener reconnects.
fn workers_ddl(s: &str) -> String {
    format!("ALTER TABLE {s}.workers ADD COLUMN IF NOT EXISTS gone_since int8;")
}

/// Notifications still to be announced to the other processes.
#[derive(Debug, Default)]
struct Outbox {
    orchestrations: bool,
    activities: bool,
    /// Earliest wake-up hint (ms) not yet sent.
    wake: Option<i64>,
    /// Instances this process changed: (id, history before, after).
    changes: Vec<(String, u64, u64)>,
}

/// State shared by the store and its listener task.
#[derive(Debug)]
struct Shared {
    signal: Arc<WorkSignal>,
    /// This store's worker id (stamped on its leases).
    worker: i64,
    /// Channel name of the store's schema.
    channel: String,
    outbox: Mutex<Outbox>,
    /// Wakes the listener task to flush the outbox.
    kick: tokio::sync::Notify,
    /// The last value `next_wake_at` returned (ms; `None`: no wake-up
    /// planned). A remote hint earlier than this wakes the dispatchers.
    planned_wake: Mutex<Option<i64>>,
    /// The earliest wake-up hint sent that is still in the future: the other
    /// processes wake by then and read later ones from the tables, so later
    /// hints need not be sent.
    hint_sent: Mutex<Option<i64>>,
    /// Notified after a commit wrote lifecycle outbox rows; `None` when the
    /// outbox is off.
    lifecycle: Option<Arc<tokio::sync::Notify>>,
    /// Changes the other processes announced ([`Store::remote_changes`]).
    remote: tokio::sync::broadcast::Sender<RemoteChange>,
}

impl Shared {
    fn wake_local(&self, orchestrations: bool, activities: bool) {
        self.signal.wake(orchestrations, activities);
    }

    /// Work became visible now: wake local dispatchers and tell the others.
    fn announce(&self, orchestrations: bool, activities: bool) {
        if !orchestrations && !activities {
            return;
        }
        self.wake_local(orchestrations, activities);
        let mut o = self.outbox.lock().expect("outbox lock");
        o.orchestrations |= orchestrations;
        o.activities |= activities;
        drop(o);
        self.kick.notify_one();
    }

    /// This process committed a change to an instance: tell the others
    /// (their engines publish it as a live update).
    fn changed(&self, id: &str, from: u64, to: u64) {
        let mut o = self.outbox.lock().expect("outbox lock");
        o.changes.push((id.to_string(), from, to));
        drop(o);
        self.kick.notify_one();
    }

    /// Work becomes due at `at_ms` (a lease expiry, a timer): tell the other
    /// processes unless an earlier hint is still pending there.
    fn hint(&self, at_ms: i64) {
        let now = types::now().timestamp_millis();
        {
            let mut sent = self.hint_sent.lock().expect("hint lock");
            if sent.is_some_and(|h| h > now && h <= at_ms) {
                return;
            }
            *sent = Some(at_ms);
        }
        let mut o = self.outbox.lock().expect("outbox lock");
        o.wake = Some(o.wake.map_or(at_ms, |w| w.min(at_ms)));
        drop(o);
        self.kick.notify_one();
    }
}

pub mod listener {
    //! The store's dedicated connection: `LISTEN` for the other processes'
    //! announcements, `NOTIFY` for this one's, and the worker registration
    //! whose backend's life marks this process alive.
    //!
    //! Notifications carry a first line of flags, `o` (orchestration
    //! work), `a` (activity work) and `w<ms>` (something becomes due then),
    //! and then one line `<from>,<to>,<instance id>` per instance this
    //! process changed (its history went from `from` to `to` events; `0,0`
    //! a creation), which the other processes' engines publish as live
    //! updates ([`Store::remote_changes`]). Our own notifications come back
    //! to us too; they are recognised by the sending backend's pid and
    //! ignored. After a reconnect both signals fire, since announcements
    //! may have been missed while disconnected.

    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::sync::{mpsc, oneshot, watch};
    use tokio_postgres::AsyncMessage;

    use super::{db_err, PgTarget, Shared};
    use crate::store::{RemoteChange, StoreError};
    use crate::types::InstanceId;

    /// Pause before reconnecting after the listener connection failed.
    const RECONNECT: Duration = Duration::from_millis(500);

    pub(super) async fn run(
        target: PgTarget,
        schema: String,
        shared: Arc<Shared>,
        mut ready: Option<oneshot::Sender<Result<(), StoreError>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let s = format!("\"{schema}\"");
        loop {
            let session = async {
                let (client, mut conn) = target.connect().await.map_err(db_err)?;
                let (tx, rx) = mpsc::unbounded_channel();
                let pump = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "store listener connection failed");
                                break;
                            }
                        }
                    }
                });
                client
                    .batch_execute(&format!("LISTEN \"{}\"", shared.channel))
                    .await
                    .map_err(db_err)?;
                let pid: i32 = client
                    .query_one(
                        &format!(
                            "INSERT INTO {s}.workers (id, pid, backend_start) \
                             SELECT $1, pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid() \
                             ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, backend_start = excluded.backend_start, \
                               gone_since = NULL \
                             RETURNING pid"
                        ),
                        &[&shared.worker],
                    )
                    .await
                    .map_err(db_err)?
                    .get(0);
                Ok::<_, StoreError>((client, rx, pump, pid))
            };
            let (client, mut rx, pump, pid) = match session.await {
                Ok(s) => s,
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::warn!(error = %e, "store listener cannot connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT) => continue,
                        _ = stop_requested(&mut stop) => return,
                    }
                }
            };
            match ready.take() {
                Some(r) => {
                    let _ = r.send(Ok(()));
                }
                // Announcements may have been missed while disconnected.
                None => shared.wake_local(true, true),
            }
            // Send what was queued while disconnected.
            shared.kick.notify_one();
            *shared.hint_sent.lock().expect("hint lock") = None;
            let stopped = loop {
                tokio::select! {
                    n = rx.recv() => {
                        let Some(n) = n else { break false };
                        if n.process_id() != pid {
                            receive(&shared, n.payload());
                        }
                    }
                    _ = shared.kick.notified() => {
                        let mut failed = false;
                        for payload in take_payloads(&shared) {
                            if let Err(e) = client
                                .execute("SELECT pg_notify($1, $2)", &[&shared.channel, &payload])
                                .await
                            {
                                tracing::warn!(error = %e, "store listener cannot notify");
                                *shared.hint_sent.lock().expect("hint lock") = None;
                                failed = true;
                                break;
                            }
                        }
                        if failed {
                            break false;
                        }
                    }
                    _ = stop_requested(&mut stop) => break true,
                }
            };
            if stopped {
                let _ = client
                    .execute(
                        &format!("DELETE FROM {s}.workers WHERE id = $1"),
                        &[&shared.worker],
                    )
                    .await;
                drop(client);
                let _ = pump.await;
                return;
            }
            drop(client);
            pump.abort();
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT) => {}
                _ = stop_requested(&mut stop) => return,
            }
        }
    }

    /// Resolves when the store asks the listener to stop.
    async fn stop_requested(stop: &mut watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Largest payload sent in one `NOTIFY` (the server's limit is 8000
    /// bytes).
    const PAYLOAD_MAX: usize = 7900;

    /// Empties the outbox into notification payloads: a first line of
    /// flags (`o`, `a`, `w<ms>`), then one line per changed instance,
    /// `<from>,<to>,<instance id>` (ids hold no control characters), split
    /// over several payloads when long.
    fn take_payloads(shared: &Shared) -> Vec<String> {
        let mut o = shared.outbox.lock().expect("outbox lock");
        let mut flags = String::new();
        if std::mem::take(&mut o.orchestrations) {
            flags.push('o');
        }
        if std::mem::take(&mut o.activities) {
            flags.push('a');
        }
        if let Some(w) = o.wake.take() {
            flags.push_str(&format!("w{w}"));
        }
        let changes = std::mem::take(&mut o.changes);
        drop(o);
        let mut payloads = Vec::new();
        let mut p = flags;
        for (id, from, to) in changes {
            let line = format!("\n{from},{to},{id}");
            if p.len() + line.len() > PAYLOAD_MAX {
                payloads.push(std::mem::take(&mut p));
            }
            p.push_str(&line);
        }
        if !p.is_empty() {
            payloads.push(p);
        }
        payloads
    }

    fn receive(shared: &Shared, payload: &str) {
        let (flags, changes) = payload.split_once('\n').unwrap_or((payload, ""));
        let orchestrations = flags.contains('o');
        let activities = flags.contains('a');
        shared.wake_local(orchestrations, activities);
        if let Some(w) = flags
            .split_once('w')
            .and_then(|(_, w)| w.parse::<i64>().ok())
        {
            let mut planned = shared.planned_wake.lock().expect("planned lock");
            if planned.is_none_or(|p| w < p) {
                *planned = Some(w);
                drop(planned);
                shared.wake_local(true, true);
            }
        }
        for line in changes.split('\n') {
            if let Some(change) = parse_change(line) {
                // Nobody listening (no engine on this store) is fine.
                let _ = shared.remote.send(change);
            }
        }
    }

    /// One `<from>,<to>,<instance id>` line.
    fn parse_change(line: &str) -> Option<RemoteChange> {
        let mut parts = line.splitn(3, ',');
        let from = parts.next()?.parse().ok()?;
        let to = parts.next()?.parse().ok()?;
        let instance_id = InstanceId::new(parts.next()?).ok()?;
        Some(RemoteChange {
            instance_id,
            history_from: from,
            history_to: to,
        })
    }
}

/// SQL text of the statements, with the schema spliced in once.
#[derive(Debug)]
struct Sql {
    s: String,
    terminal: String,
    fetch_orchestrations: String,
    fetch_messages: String,
    release_empty: String,
    commit_status: String,
    insert_lifecycle: String,
    read_lifecycle: String,
    ack_lifecycle: String,
    delete_history: String,
    insert_history: String,
    delete_consumed: String,
    delete_inbox: String,
    insert_activities: String,
    recompute_due: String,
    upsert_instance: String,
    send: String,
    fetch_activities: String,
    complete_activity: String,
    /// Locks instance rows in id order (the batch completion's first step).
    lock_instances: String,
    /// Leases a row just created in this transaction to its first turn,
    /// whose start message it consumes.
    claim_created: String,
    /// Deletes the activity rows still held under their tokens.
    complete_activities: String,
    abandon_instance: String,
    abandon_activity: String,
    next_wake: String,
    reap: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        let terminal = terminal_list();
        Self {
            fetch_orchestrations: format!(
                "WITH picked AS (SELECT instance_id FROM {s}.instances WHERE due_at <= {NOW} \
                   AND (home IS NULL OR home = $3 OR due_at <= {NOW} - $5) \
                   ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE {s}.instances i SET lock_token = $2 || i.instance_id, lock_owner = $3, \
                   due_at = {NOW} + $4, attempts = i.attempts + 1 \
                 FROM picked WHERE i.instance_id = picked.instance_id \
                 RETURNING i.instance_id, i.runtime_status, i.execution_id, i.history_events, i.attempts, \
                   i.lock_token, i.due_at"
            ),
            fetch_messages: format!(
                "SELECT m.id, m.instance_id, m.message FROM {s}.messages m \
                 JOIN {s}.instances i ON i.instance_id = m.instance_id \
                 WHERE m.instance_id = ANY($1) AND i.lock_token = $2 || i.instance_id AND m.due_ms <= {NOW} \
                 ORDER BY m.id"
            ),
            release_empty: format!(
                "UPDATE {s}.instances SET lock_token = NULL, lock_owner = NULL, attempts = attempts - 1, \
                   due_at = (SELECT min(due_ms) FROM {s}.messages m WHERE m.instance_id = $1) \
                 WHERE instance_id = $1 AND lock_token = $2"
            ),
            commit_status: format!(
                "UPDATE {s}.instances SET runtime_status = $3, execution_id = $4, input = COALESCE($5, input), \
                   output = $6, custom_status = $7, failure = $8, history_events = $9, history_bytes = $10, \
                   last_updated_at = $11, attempts = 0, lock_token = NULL, lock_owner = NULL, due_at = NULL, \
                   home = $12 \
                 WHERE instance_id = $1 AND lock_token = $2 \
                 RETURNING (SELECT o.runtime_status FROM {s}.instances o WHERE o.instance_id = $1), \
                   (SELECT o.execution_id FROM {s}.instances o WHERE o.instance_id = $1)"
            ),
            insert_lifecycle: format!(
                "INSERT INTO {s}.lifecycle_outbox (instance_id, name, execution_id, runtime_status, \
                   history_events, at, failure) \
                 SELECT instance_id, name, $2, $3, $4, $5, $6 FROM {s}.instances WHERE instance_id = $1"
            ),
            read_lifecycle: format!(
                "SELECT seq, instance_id, name, execution_id, runtime_status, history_events, at, failure \
                 FROM {s}.lifecycle_outbox ORDER BY seq LIMIT $1"
            ),
            ack_lifecycle: format!("DELETE FROM {s}.lifecycle_outbox WHERE seq = ANY($1)"),
            delete_history: format!("DELETE FROM {s}.history WHERE instance_id = $1"),
            insert_history: format!(
                "INSERT INTO {s}.history (instance_id, first_event_id, events) VALUES ($1, $2, $3)"
            ),
            delete_consumed: format!(
                "DELETE FROM {s}.messages WHERE instance_id = $1 AND id = ANY($2)"
            ),
            delete_inbox: format!("DELETE FROM {s}.messages WHERE instance_id = $1"),
            insert_activities: format!(
                "INSERT INTO {s}.activities (instance_id, execution_id, task_id, name, input, due_at) \
                 SELECT $1, $2, t, n, i, {NOW} FROM unnest($3::int8[], $4::text[], $5::text[]) AS a(t, n, i)"
            ),
            recompute_due: format!(
                "UPDATE {s}.instances SET due_at = (SELECT min(due_ms) FROM {s}.messages m WHERE m.instance_id = $1) \
                 WHERE instance_id = $1 RETURNING due_at, {NOW}"
            ),
            // Inserts a new instance, or replaces a terminal one (its history
            // and inbox go; its row is reused, so queued activities of the
            // old execution stay and are dropped by execution id later).
            // A live one is left alone and nothing is returned.
            upsert_instance: format!(
                "WITH up AS ( \
                   INSERT INTO {s}.instances AS i (instance_id, name, execution_id, runtime_status, input, \
                     created_at, last_updated_at, parent_instance_id, due_at, home) \
                   VALUES ($1, $2, $3, 'Pending', $4, $5, $5, $6, {NOW}, $8) \
                   ON CONFLICT (instance_id) DO UPDATE SET name = excluded.name, \
                     execution_id = excluded.execution_id, runtime_status = 'Pending', input = excluded.input, \
                     output = NULL, custom_status = NULL, failure = NULL, created_at = excluded.created_at, \
                     last_updated_at = excluded.last_updated_at, parent_instance_id = excluded.parent_instance_id, \
                     history_events = 0, history_bytes = 0, attempts = 0, lock_token = NULL, lock_owner = NULL, \
                     due_at = excluded.due_at, home = excluded.home \
                   WHERE i.runtime_status IN ({terminal}) \
                   RETURNING i.instance_id, (xmax = 0) AS inserted), \
                 dh AS (DELETE FROM {s}.history h USING up WHERE h.instance_id = up.instance_id AND NOT up.inserted), \
                 dm AS (DELETE FROM {s}.messages m USING up WHERE m.instance_id = up.instance_id AND NOT up.inserted), \
                 ins AS (INSERT INTO {s}.messages (instance_id, due_ms, message) \
                   SELECT instance_id, {NOW}, $7 FROM up RETURNING id) \
                 SELECT count(*) FROM ins"
            ),
            // Locks the target, checks its status, inserts and makes the
            // target due no later than the message unless it is leased.
            // Returns the target's status (NULL: no such instance) and the
            // new message's due time (NULL: refused).
            send: format!(
                "WITH target AS (SELECT instance_id, runtime_status, lock_token FROM {s}.instances \
                   WHERE instance_id = $1 FOR UPDATE), \
                 ok AS (SELECT * FROM target WHERE runtime_status NOT IN ({terminal}) \
                   OR (runtime_status = 'Failed' AND $4)), \
                 ins AS (INSERT INTO {s}.messages (instance_id, due_ms, message) \
                   SELECT instance_id, COALESCE($2, {NOW}), $3 FROM ok RETURNING due_ms), \
                 upd AS (UPDATE {s}.instances i SET due_at = LEAST(COALESCE(i.due_at, ins.due_ms), ins.due_ms) \
                   FROM ins, ok WHERE i.instance_id = ok.instance_id AND ok.lock_token IS NULL RETURNING 1) \
                 SELECT (SELECT runtime_status FROM target), (SELECT due_ms FROM ins), {NOW}, \
                   (SELECT count(*) FROM upd)"
            ),
            fetch_activities: format!(
                "WITH picked AS (SELECT id FROM {s}.activities WHERE due_at <= {NOW} \
                   ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE {s}.activities a SET lock_token = $2 || a.id::text || '/' || a.instance_id, lock_owner = $3, \
                   due_at = {NOW} + $4, attempts = a.attempts + 1 \
                 FROM picked WHERE a.id = picked.id \
                 RETURNING a.id, a.instance_id, a.execution_id, a.task_id, a.name, a.input, a.attempts, \
                   a.lock_token, a.due_at"
            ),
            complete_activity: format!(
                "DELETE FROM {s}.activities WHERE id = $1 AND lock_token = $2 RETURNING instance_id"
            ),
            claim_created: format!(
                "WITH claimed AS (UPDATE {s}.instances SET lock_token = $2, lock_owner = NULL \
                   WHERE instance_id = $1 RETURNING instance_id) \
                 DELETE FROM {s}.messages m USING claimed c WHERE m.instance_id = c.instance_id"
            ),
            lock_instances: format!(
                "SELECT 1 FROM {s}.instances WHERE instance_id = ANY($1) ORDER BY instance_id FOR UPDATE"
            ),
            complete_activities: format!(
                "DELETE FROM {s}.activities a USING unnest($1::int8[], $2::text[]) AS x(id, token) \
                 WHERE a.id = x.id AND a.lock_token = x.token RETURNING a.id"
            ),
            abandon_instance: format!(
                "UPDATE {s}.instances SET lock_token = '{NOBODY}', lock_owner = NULL, due_at = {NOW} + $3 \
                 WHERE instance_id = $1 AND lock_token = $2 RETURNING due_at"
            ),
            abandon_activity: format!(
                "UPDATE {s}.activities SET lock_token = '{NOBODY}', lock_owner = NULL, due_at = {NOW} + $3 \
                 WHERE id = $1 AND lock_token = $2 RETURNING due_at"
            ),
            next_wake: format!(
                "SELECT LEAST((SELECT min(due_at) FROM {s}.instances WHERE due_at > {NOW}), \
                   (SELECT min(due_at) FROM {s}.activities WHERE due_at > {NOW}), \
                   (SELECT min(due_at) + $2 FROM {s}.instances WHERE due_at > {NOW} - $2 \
                     AND due_at <= {NOW} AND home <> $1)), \
                   EXISTS (SELECT 1 FROM {s}.workers w WHERE w.id <> $1 AND NOT EXISTS \
                     (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.pid \
                       AND (a.backend_start IS NULL OR a.backend_start = w.backend_start)))"
            ),
            // Workers whose listener backend is gone: marked the first
            // time, dead (deleted, their leases due now) once gone for
            // $2 ms. Also says when the next marked one would be dead.
            reap: format!(
                "WITH gone AS (SELECT w.id, w.gone_since FROM {s}.workers w WHERE w.id <> $1 AND NOT EXISTS \
                   (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.pid \
                       AND (a.backend_start IS NULL OR a.backend_start = w.backend_start))), \
                 marked AS (UPDATE {s}.workers SET gone_since = {NOW} \
                   WHERE id IN (SELECT id FROM gone WHERE gone_since IS NULL) RETURNING 1), \
                 dead AS (DELETE FROM {s}.workers w \
                   WHERE w.id IN (SELECT id FROM gone WHERE gone_since <= {NOW} - $2) \
                   RETURNING w.id), \
                 ri AS (UPDATE {s}.instances SET \
                     due_at = CASE WHEN lock_owner IN (SELECT id FROM dead) THEN {NOW} ELSE due_at END, \
                     lock_owner = CASE WHEN lock_owner IN (SELECT id FROM dead) THEN NULL ELSE lock_owner END, \
                     home = CASE WHEN home IN (SELECT id FROM dead) THEN NULL ELSE home END \
                   WHERE lock_owner IN (SELECT id FROM dead) OR home IN (SELECT id FROM dead) \
                   RETURNING 1), \
                 ra AS (UPDATE {s}.activities SET due_at = {NOW}, lock_owner = NULL \
                   WHERE lock_owner IN (SELECT id FROM dead) RETURNING 1) \
                 SELECT (SELECT count(*) FROM ri), (SELECT count(*) FROM ra), \
                   LEAST((SELECT min(gone_since) + $2 FROM gone WHERE gone_since > {NOW} - $2), \
                     CASE WHEN EXISTS (SELECT 1 FROM marked) THEN {NOW} + $2 END)"
            ),
            terminal,
            s: s.to_string(),
        }
    }
}

/// Capacity of the remote change channel; an engine that falls further
/// behind misses changes (its subscribers re-read on `Lagged` anyway).
const REMOTE_CHANGES: usize = 16_384;

/// The PostgreSQL store. See the module docs.
pub struct PostgresStore {
    pool: Pool,
    /// Connections with `synchronous_commit=off`, for lease bookkeeping
    /// (fetch, abandon, takeover) and activity results. Losing such a commit in a server
    /// crash just hands the work out again, and any durable commit that
    /// depends on it flushes it first (the WAL is sequential); meanwhile
    /// fetches do not wait for a disk flush of their own.
    leases: Pool,
    sql: Arc<Sql>,
    shared: Arc<Shared>,
    /// [`PostgresConfig::affinity`] in milliseconds.
    affinity_ms: i64,
    /// [`PostgresConfig::dead_after`] in ms.
    dead_after_ms: i64,
    closed: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
    listener: Mutex<Option<JoinHandle<()>>>,
    schema: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("worker", &self.shared.worker)
            .finish_non_exhaustive()
    }
}

/// A lock token: a random prefix per fetch, then the row's key, so one
/// token names exactly one row.
fn token_prefix() -> String {
    format!("{}:", uuid::Uuid::new_v4().simple())
}

/// The row key part of a token: an instance id, or for an activity its row
/// id, `/` and its instance id.
fn token_key(lock: &WorkLock) -> Option<&str> {
    lock.0.split_once(':').map(|(_, k)| k)
}

/// An activity token's row id and instance id.
fn activity_key(lock: &WorkLock) -> Option<(i64, InstanceId)> {
    let (id, instance) = token_key(lock)?.split_once('/')?;
    Some((
        id.parse().ok()?,
        InstanceId::from_stored(instance.to_string()),
    ))
}

fn lease_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// What a committed turn's transaction leaves to do after the commit.
struct Committed {
    woken: Woken,
    /// Lifecycle outbox rows were written.
    lifecycle: bool,
    /// Sub-orchestrations it created.
    children: Vec<String>,
}

/// What a statement made visible, for the wake-ups after the commit.
#[derive(Debug, Default)]
struct Woken {
    orchestrations: bool,
    activities: bool,
    /// Earliest future due time created.
    later: Option<i64>,
}

impl Woken {
    fn due(&mut self, due_ms: i64, now_ms: i64) {
        if due_ms <= now_ms {
            self.orchestrations = true;
        } else {
            self.later = Some(self.later.map_or(due_ms, |l| l.min(due_ms)));
        }
    }
}

impl PostgresStore {
    /// Connects, creates the schema if the database has none, and starts the
    /// listener. Refuses a schema that is not ours or has another version.
    pub async fn connect(config: PostgresConfig) -> Result<Self, StoreError> {
        let s = quoted_schema(&config.schema)?;
        let target =
            PgTarget::parse(&config.url).map_err(|e| StoreError::Database(e.to_string()))?;
        let pg = target.config.clone();
        {
            let (mut client, conn) = target.connect().await.map_err(db_err)?;
            let driver = tokio::spawn(conn);
            let prepared = prepare_schema(&mut client, &config.schema).await;
            drop(client);
            let _ = driver.await;
            prepared?;
        }
        let manager = Manager::from_config(
            pg.clone(),
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let mut relaxed = pg.clone();
        // Added to whatever options the URL carries, not instead of them.
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=off"),
            _ => "-c synchronous_commit=off".to_string(),
        };
        relaxed.options(&options);
        let leases = Pool::builder(Manager::from_config(
            relaxed,
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        ))
        .max_size(config.pool_size.div_ceil(2).max(2))
        .build()
        .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let shared = Arc::new(Shared {
            signal: Arc::new(WorkSignal::default()),
            worker: rand::random::<i64>() & i64::MAX,
            channel: format!("durable_work_{}", config.schema),
            outbox: Mutex::new(Outbox::default()),
            kick: tokio::sync::Notify::new(),
            lifecycle: config
                .lifecycle_outbox
                .then(|| Arc::new(tokio::sync::Notify::new())),
            planned_wake: Mutex::new(None),
            hint_sent: Mutex::new(None),
            remote: tokio::sync::broadcast::channel(REMOTE_CHANGES).0,
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listener::run(
            target,
            config.schema.clone(),
            shared.clone(),
            Some(ready_tx),
            stop_rx,
        ));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StoreError::Database(
                    "store listener failed to start".into(),
                ))
            }
        }
        Ok(Self {
            pool,
            leases,
            sql: Arc::new(Sql::new(&s)),
            shared,
            affinity_ms: lease_ms(config.affinity),
            dead_after_ms: lease_ms(config.dead_after),
            closed: AtomicBool::new(false),
            stop,
            listener: Mutex::new(Some(listener)),
            schema: config.schema,
        })
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Stops the store: its leases become due at once (another process, or
    /// this one after a restart, takes them over without waiting for them to
    /// expire), its worker registration goes, the listener stops and the
    /// connections close. Later calls fail with [`StoreError::Closed`].
    /// Call it after the engine has stopped.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(client) = self.pool.get().await {
            let s = &self.sql.s;
            for table in ["instances", "activities"] {
                let _ = client
                    .execute(
                        &format!(
                            "UPDATE {s}.{table} SET due_at = {NOW}, lock_owner = NULL WHERE lock_owner = $1"
                        ),
                        &[&self.shared.worker],
                    )
                    .await;
            }
            // Nobody need wait for this process to take its instances.
            let _ = client
                .execute(
                    &format!("UPDATE {s}.instances SET home = NULL WHERE home = $1"),
                    &[&self.shared.worker],
                )
                .await;
        }
        let _ = self.stop.send(true);
        let handle = self.listener.lock().expect("listener lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.pool.close();
        self.leases.close();
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_err)
    }

    /// Returns a leased work item (instance or activity, by `sql` and its
    /// key) to its queue after `delay`, then wakes that queue's dispatchers
    /// at once, or hints the time it becomes due.
    async fn abandon(
        &self,
        sql: &str,
        key: &(dyn tokio_postgres::types::ToSql + Sync),
        lock: &WorkLock,
        delay: Duration,
        orchestration: bool,
    ) -> Result<(), StoreError> {
        let c = self.lease_client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[key, &lock.0, &lease_ms(delay)])
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Err(StoreError::LeaseLost);
        };
        if delay.is_zero() {
            self.shared.announce(orchestration, !orchestration);
        } else {
            self.shared.hint(row.get(0));
        }
        Ok(())
    }

    /// A connection for lease bookkeeping (see [`PostgresStore::leases`]).
    async fn lease_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.leases.get().await.map_err(pool_err)
    }

    /// Completes several activities in one transaction (on the relaxed
    /// pool, as [`Store::complete_activity_work`]): all their instance rows
    /// locked first, in id order (so batches cannot deadlock each other,
    /// and a purge, which also locks the instance first, cannot either),
    /// then the activity rows still held are deleted and their results
    /// delivered. An instance waiting for several results then takes one
    /// turn for them. `Err` when the transaction failed as a whole.
    async fn complete_batch(
        &self,
        items: &[(WorkLock, Message)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let keys: Vec<Option<(i64, InstanceId)>> =
            items.iter().map(|(lock, _)| activity_key(lock)).collect();
        let mut instances: Vec<String> = keys
            .iter()
            .flatten()
            .map(|(_, i)| i.as_str().to_string())
            .collect();
        instances.sort_unstable();
        instances.dedup();
        let (rows, tokens): (Vec<i64>, Vec<String>) = items
            .iter()
            .zip(&keys)
            .filter_map(|((lock, _), key)| Some((key.as_ref()?.0, lock.0.clone())))
            .unzip();
        let mut c = self.lease_client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let lock = tx
            .prepare_cached(&self.sql.lock_instances)
            .await
            .map_err(db_err)?;
        let delete = tx
            .prepare_cached(&self.sql.complete_activities)
            .await
            .map_err(db_err)?;
        let send = tx.prepare_cached(&self.sql.send).await.map_err(db_err)?;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&instances];
        let delete_params: [&(dyn ToSql + Sync); 2] = [&rows, &tokens];
        let (locked, deleted) = futures::join!(
            tx.query(&lock, &lock_params),
            tx.query(&delete, &delete_params),
        );
        locked.map_err(db_err)?;
        let held: std::collections::HashSet<i64> =
            deleted.map_err(db_err)?.iter().map(|r| r.get(0)).collect();
        let sends: Vec<(usize, SendArgs)> = items
            .iter()
            .zip(&keys)
            .enumerate()
            .filter_map(|(i, ((_, result), key))| {
                let (row, instance) = key.as_ref()?;
                held.contains(row)
                    .then(|| (i, SendArgs::new(instance, result)))
            })
            .collect();
        let params: Vec<_> = sends.iter().map(|(_, a)| a.params()).collect();
        let delivered = join_all(params.iter().map(|p| tx.query_one(&send, p))).await;
        let mut woken = Woken::default();
        let mut out: Vec<Result<(), StoreError>> =
            items.iter().map(|_| Err(StoreError::LeaseLost)).collect();
        for ((i, _), row) in sends.iter().zip(delivered) {
            let instance = &keys[*i].as_ref().expect("sent items have keys").1;
            out[*i] = sent(&row.map_err(db_err)?, instance, false, &mut woken);
        }
        tx.commit().await.map_err(db_err)?;
        self.after_commit(woken);
        Ok(out)
    }

    /// Writes a commit's lifecycle outbox rows (see
    /// [`crate::store::lifecycle`]) from the status before it (`before`:
    /// the status UPDATE's returned row). Returns whether it wrote any.
    async fn write_lifecycle(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: &str,
        before: &Row,
        s: &StatusUpdate,
    ) -> Result<bool, StoreError> {
        let old: Option<String> = before.get(0);
        let old_execution: Option<String> = before.get(1);
        let events = super::lifecycle::transitions(
            old.as_deref().and_then(RuntimeStatus::parse),
            old_execution.as_deref() == Some(s.execution_id.as_str()),
            s.runtime_status,
        );
        if events.is_empty() {
            return Ok(false);
        }
        let st = tx
            .prepare_cached(&self.sql.insert_lifecycle)
            .await
            .map_err(db_err)?;
        for status in events {
            let failure = (status == RuntimeStatus::Failed)
                .then(|| s.failure.as_ref().map(json))
                .flatten();
            tx.execute(
                &st,
                &[
                    &id,
                    &s.execution_id,
                    &status.as_str(),
                    &(s.history_events as i64),
                    &s.updated_at.timestamp_millis(),
                    &failure,
                ],
            )
            .await
            .map_err(db_err)?;
        }
        Ok(true)
    }

    /// A turn's statements inside `tx` (see [`Store::commit_turn`]);
    /// `LeaseLost` when the lease check failed (the caller rolls back).
    async fn commit_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        commit: &TurnCommit,
    ) -> Result<Committed, StoreError> {
        let sql = self.sql.clone();
        let id = commit.instance_id.as_str();
        let s = &commit.status;
        let terminal = s.runtime_status.is_terminal();
        // Everything goes out pipelined in one round trip; the server runs
        // the statements in order. The status UPDATE comes first and is the
        // lease check: once it holds the row lock, each later statement
        // takes its snapshot after every send that committed before us, so
        // the due time recomputed last sees every message. If the lease was
        // lost, the UPDATE matched nothing and the whole transaction is
        // rolled back below, whatever the later statements did.
        let status_args: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(id.to_string()),
            Box::new(commit.lock.0.clone()),
            Box::new(s.runtime_status.as_str()),
            Box::new(s.execution_id.clone()),
            Box::new(s.input.as_ref().map(json)),
            Box::new(s.output.as_ref().map(json)),
            Box::new(s.custom_status.as_ref().map(json)),
            Box::new(s.failure.as_ref().map(json)),
            Box::new(s.history_events as i64),
            Box::new(s.history_bytes as i64),
            Box::new(s.updated_at.timestamp_millis()),
            // This process now holds the instance's run in its cache.
            Box::new(self.shared.worker),
        ];
        let mut plain: Vec<(tokio_postgres::Statement, Vec<Box<dyn ToSql + Sync + Send>>)> =
            Vec::new();
        let st_status = tx
            .prepare_cached(&sql.commit_status)
            .await
            .map_err(db_err)?;
        if commit.replace_history {
            let st = tx
                .prepare_cached(&sql.delete_history)
                .await
                .map_err(db_err)?;
            plain.push((st, vec![Box::new(id.to_string())]));
        }
        if let Some(first) = commit.history.first() {
            let st = tx
                .prepare_cached(&sql.insert_history)
                .await
                .map_err(db_err)?;
            plain.push((
                st,
                vec![
                    Box::new(id.to_string()),
                    Box::new(first.event_id as i64),
                    Box::new(json(&commit.history)),
                ],
            ));
        }
        if terminal {
            // A finished instance takes no more work: drop what waits.
            let st = tx.prepare_cached(&sql.delete_inbox).await.map_err(db_err)?;
            plain.push((st, vec![Box::new(id.to_string())]));
        } else if !commit.consumed.is_empty() {
            let st = tx
                .prepare_cached(&sql.delete_consumed)
                .await
                .map_err(db_err)?;
            plain.push((
                st,
                vec![Box::new(id.to_string()), Box::new(commit.consumed.clone())],
            ));
        }
        // Activities grouped by (instance, execution): one statement each.
        let mut groups: Vec<((String, String), Vec<&NewActivity>)> = Vec::new();
        for a in &commit.activities {
            let key = (a.instance_id.as_str().to_string(), a.execution_id.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(a),
                None => groups.push((key, vec![a])),
            }
        }
        let mut woken = Woken::default();
        if !groups.is_empty() {
            woken.activities = true;
            let st = tx
                .prepare_cached(&sql.insert_activities)
                .await
                .map_err(db_err)?;
            for ((inst, exec), acts) in groups {
                let tasks: Vec<i64> = acts.iter().map(|a| a.task_id as i64).collect();
                let names: Vec<String> = acts.iter().map(|a| a.name.clone()).collect();
                let inputs: Vec<String> = acts.iter().map(|a| json(&a.input)).collect();
                plain.push((
                    st.clone(),
                    vec![
                        Box::new(inst),
                        Box::new(exec),
                        Box::new(tasks),
                        Box::new(names),
                        Box::new(inputs),
                    ],
                ));
            }
        }
        let children: Vec<CreateArgs> = commit
            .new_instances
            .iter()
            .map(|c| CreateArgs::new(c, self.shared.worker))
            .collect();
        let sends: Vec<SendArgs> = commit
            .messages
            .iter()
            .map(|m| SendArgs::new(&m.instance_id, &m.message))
            .collect();
        let st_create = tx
            .prepare_cached(&sql.upsert_instance)
            .await
            .map_err(db_err)?;
        let st_send = tx.prepare_cached(&sql.send).await.map_err(db_err)?;
        let st_recompute = tx
            .prepare_cached(&sql.recompute_due)
            .await
            .map_err(db_err)?;

        let status_params = params(&status_args);
        let plain_params: Vec<_> = plain.iter().map(|(st, a)| (st, params(a))).collect();
        let child_params: Vec<_> = children.iter().map(CreateArgs::params).collect();
        let send_params: Vec<_> = sends.iter().map(SendArgs::params).collect();
        let id_param: [&(dyn ToSql + Sync); 1] = [&id];
        let (updated, plain_done, created, delivered, recomputed) = futures::join!(
            tx.query_opt(&st_status, &status_params),
            join_all(plain_params.iter().map(|(st, a)| tx.execute(*st, a))),
            join_all(child_params.iter().map(|a| tx.query_one(&st_create, a))),
            join_all(send_params.iter().map(|a| tx.query_one(&st_send, a))),
            async {
                if terminal {
                    None
                } else {
                    Some(tx.query_one(&st_recompute, &id_param).await)
                }
            },
        );
        let Some(before) = updated.map_err(db_err)? else {
            return Err(StoreError::LeaseLost);
        };
        for r in plain_done {
            r.map_err(db_err)?;
        }
        let mut conflicts = Vec::new();
        let mut children = Vec::new();
        for (child, row) in commit.new_instances.iter().zip(created) {
            if row.map_err(db_err)?.get::<_, i64>(0) == 1 {
                woken.orchestrations = true;
                children.push(child.instance_id.as_str());
            } else {
                conflicts.push(child_conflict(child));
            }
        }
        for (m, row) in commit.messages.iter().zip(delivered) {
            sent(&row.map_err(db_err)?, &m.instance_id, false, &mut woken)?;
        }
        let mut recomputed = recomputed.transpose().map_err(db_err)?;
        if !conflicts.is_empty() {
            // Rare: tell the parent, then recompute its due time again.
            for (parent, message) in &conflicts {
                send_in(tx, &sql, parent, message, false, &mut woken).await?;
            }
            if !terminal {
                recomputed = Some(tx.query_one(&st_recompute, &[&id]).await.map_err(db_err)?);
            }
        }
        if let Some(row) = recomputed {
            if let Some(due) = row.get::<_, Option<i64>>(0) {
                woken.due(due, row.get(1));
            }
        }
        let lifecycle = match &self.shared.lifecycle {
            Some(_) => self.write_lifecycle(tx, id, &before, s).await?,
            None => false,
        };
        Ok(Committed {
            woken,
            lifecycle,
            children: children.into_iter().map(str::to_string).collect(),
        })
    }

    /// After a turn's transaction committed: wake-ups, the lifecycle relay,
    /// and the change announced to the other processes.
    fn committed(&self, commit: &TurnCommit, done: Committed) {
        self.after_commit(done.woken);
        if let (true, Some(n)) = (done.lifecycle, &self.shared.lifecycle) {
            n.notify_one();
        }
        let to = commit.status.history_events;
        let from = if commit.replace_history {
            0
        } else {
            to.saturating_sub(commit.history.len() as u64)
        };
        self.shared.changed(commit.instance_id.as_str(), from, to);
        for child in done.children {
            self.shared.changed(&child, 0, 0);
        }
    }

    fn after_commit(&self, woken: Woken) {
        self.shared.announce(woken.orchestrations, woken.activities);
        if let Some(at) = woken.later {
            self.shared.hint(at);
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.listener.lock().expect("listener lock").take() {
            h.abort();
        }
    }
}

/// The parameters of the `send` statement for one message.
struct SendArgs {
    id: String,
    visible: Option<i64>,
    text: String,
    rewind: bool,
}

impl SendArgs {
    fn new(id: &InstanceId, message: &Message) -> Self {
        Self {
            id: id.as_str().to_string(),
            visible: message.visible_at.map(|t| t.timestamp_millis()),
            text: json(message),
            rewind: matches!(message.kind, EventKind::Rewound { .. }),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.id, &self.visible, &self.text, &self.rewind]
    }
}

/// What the `send` statement answered. `external` sends (client requests)
/// get errors for a missing or finished instance; internal ones (results)
/// are dropped.
fn sent(row: &Row, id: &InstanceId, external: bool, woken: &mut Woken) -> Result<(), StoreError> {
    let status: Option<String> = row.get(0);
    let due: Option<i64> = row.get(1);
    let now: i64 = row.get(2);
    match (status, due) {
        (None, _) if external => Err(StoreError::NotFound(id.clone())),
        (Some(_), None) if external => Err(StoreError::Finished(id.clone())),
        (_, Some(due)) => {
            woken.due(due, now);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Sends a message inside a transaction (see [`sent`]).
async fn send_in(
    c: &impl GenericClient,
    sql: &Sql,
    id: &InstanceId,
    message: &Message,
    external: bool,
    woken: &mut Woken,
) -> Result<(), StoreError> {
    let stmt = c.prepare_cached(&sql.send).await.map_err(db_err)?;
    let args = SendArgs::new(id, message);
    let row = c.query_one(&stmt, &args.params()).await.map_err(db_err)?;
    sent(&row, id, external, woken)
}

/// The parameters of the `upsert_instance` statement for one instance.
struct CreateArgs {
    id: String,
    name: String,
    execution_id: String,
    input: String,
    created: i64,
    parent: Option<String>,
    started: String,
    /// The creating worker: its process runs the first turn unless busy.
    home: i64,
}

impl CreateArgs {
    fn new(inst: &NewInstance, home: i64) -> Self {
        let started = inst.start_message();
        Self {
            id: inst.instance_id.as_str().to_string(),
            name: inst.name.clone(),
            execution_id: inst.execution_id.clone(),
            input: json(&inst.input),
            created: inst.created_at.timestamp_millis(),
            parent: inst
                .parent
                .as_ref()
                .map(|p| p.instance_id.as_str().to_string()),
            started: json(&started),
            home,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.id,
            &self.name,
            &self.execution_id,
            &self.input,
            &self.created,
            &self.parent,
            &self.started,
            &self.home,
        ]
    }
}

/// Inserts or replaces an instance inside a transaction; `false` when a live
/// instance holds the id.
async fn create_in(
    c: &impl GenericClient,
    sql: &Sql,
    inst: &NewInstance,
    home: i64,
) -> Result<bool, StoreError> {
    let stmt = c
        .prepare_cached(&sql.upsert_instance)
        .await
        .map_err(db_err)?;
    let args = CreateArgs::new(inst, home);
    let row = c.query_one(&stmt, &args.params()).await.map_err(db_err)?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// The `SubOrchestrationFailed` a parent gets when its child's id is held by
/// a live instance.
fn child_conflict(child: &NewInstance) -> (InstanceId, Message) {
    let parent = child
        .parent
        .as_ref()
        .expect("sub-orchestrations have a parent");
    let message = Message {
        execution_id: Some(parent.execution_id.clone()),
        visible_at: None,
        sent_at: child.created_at,
        kind: EventKind::SubOrchestrationFailed {
            task_id: parent.task_id,
            error: FailureDetails::new(
                "Conflict",
                format!(
                    "sub-orchestration instance '{}' already exists and is not finished",
                    child.instance_id
                ),
            ),
        },
    };
    (parent.instance_id.clone(), message)
}

fn status_from_row(r: &Row) -> Result<InstanceStatus, StoreError> {
    let opt_json = |i: usize| -> Option<Value> {
        r.get::<_, Option<String>>(i)
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    let status: String = r.get(3);
    Ok(InstanceStatus {
        instance_id: InstanceId::from_stored(r.get(0)),
        name: r.get(1),
        execution_id: r.get(2),
        runtime_status: parse_status(&status)?,
        input: opt_json(4).unwrap_or(Value::Null),
        output: opt_json(5),
        custom_status: opt_json(6),
        failure: r
            .get::<_, Option<String>>(7)
            .and_then(|s| serde_json::from_str::<FailureDetails>(&s).ok()),
        created_at: types::from_millis(r.get(8)),
        last_updated_at: types::from_millis(r.get(9)),
        parent_instance_id: r.get::<_, Option<String>>(10).map(InstanceId::from_stored),
        history_events: r.get::<_, i64>(11) as u64,
        history_bytes: r.get::<_, i64>(12) as u64,
        history: None,
    })
}

const STATUS_COLUMNS: &str =
    "instance_id, name, execution_id, runtime_status, input, output, custom_status, failure, \
     created_at, last_updated_at, parent_instance_id, history_events, history_bytes";

async fn read_history(
    c: &impl GenericClient,
    sql: &Sql,
    id: &str,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let rows = c
        .query(
            &format!(
                "SELECT events FROM {}.history WHERE instance_id = $1 ORDER BY first_event_id",
                sql.s
            ),
            &[&id],
        )
        .await
        .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        out.extend(parse::<Vec<HistoryEvent>>(r.get(0))?);
    }
    Ok(out)
}

/// Builds the WHERE clause of a filter with numbered parameters.
fn filter_sql(f: &InstanceFilter, args: &mut Vec<Box<dyn ToSql + Sync + Send>>) -> String {
    let mut clauses = vec!["TRUE".to_string()];
    if !f.statuses.is_empty() {
        let statuses: Vec<String> = f.statuses.iter().map(|s| s.as_str().to_string()).collect();
        args.push(Box::new(statuses));
        clauses.push(format!("runtime_status = ANY(${})", args.len()));
    }
    if let Some(t) = f.created_from {
        args.push(Box::new(t.timestamp_millis()));
        clauses.push(format!("created_at >= ${}", args.len()));
    }
    if let Some(t) = f.created_to {
        args.push(Box::new(t.timestamp_millis()));
        clauses.push(format!("created_at <= ${}", args.len()));
    }
    if let Some(p) = &f.instance_id_prefix {
        args.push(Box::new(p.clone()));
        clauses.push(format!("starts_with(instance_id, ${})", args.len()));
    }
    clauses.join(" AND ")
}

fn params(args: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn encode_token(created_ms: i64, id: &InstanceId) -> String {
    format!("{created_ms}:{id}")
}

fn decode_token(token: &str) -> Option<(i64, String)> {
    let (ms, id) = token.split_once(':')?;
    Some((ms.parse().ok()?, id.to_string()))
}

#[async_trait]
impl Store for PostgresStore {
    fn work_signal(&self) -> Arc<WorkSignal> {
        self.shared.signal.clone()
    }

    fn remote_changes(&self) -> Option<tokio::sync::broadcast::Receiver<RemoteChange>> {
        Some(self.shared.remote.subscribe())
    }

    async fn create_instance(&self, instance: NewInstance) -> Result<(), StoreError> {
        let c = self.client().await?;
        if !create_in(&c, &self.sql, &instance, self.shared.worker).await? {
            return Err(StoreError::Conflict(instance.instance_id));
        }
        self.shared.announce(true, false);
        self.shared.changed(instance.instance_id.as_str(), 0, 0);
        Ok(())
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let mut woken = Woken::default();
        send_in(&c, &self.sql, instance_id, &message, true, &mut woken).await?;
        self.after_commit(woken);
        Ok(())
    }

    async fn fetch_orchestration_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let c = self.lease_client().await?;
        let prefix = token_prefix();
        let stmt = c
            .prepare_cached(&self.sql.fetch_orchestrations)
            .await
            .map_err(db_err)?;
        let rows = c
            .query(
                &stmt,
                &[
                    &(max as i64),
                    &prefix,
                    &self.shared.worker,
                    &lease_ms(lease),
                    &self.affinity_ms,
                ],
            )
            .await
            .map_err(db_err)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut items = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut expiry = i64::MAX;
        for r in &rows {
            let id: String = r.get(0);
            let status: String = r.get(1);
            expiry = expiry.min(r.get::<_, i64>(6));
            items.push(OrchestrationWorkItem {
                lock: WorkLock(r.get(5)),
                instance_id: InstanceId::from_stored(id.clone()),
                runtime_status: parse_status(&status)?,
                execution_id: r.get(2),
                history_len: r.get::<_, i64>(3) as u64,
                messages: Vec::new(),
                attempts: r.get::<_, i32>(4) as u32,
            });
            ids.push(id);
        }
        self.shared.hint(expiry);
        let stmt = c
            .prepare_cached(&self.sql.fetch_messages)
            .await
            .map_err(db_err)?;
        let rows = c.query(&stmt, &[&ids, &prefix]).await.map_err(db_err)?;
        let mut by_id: HashMap<String, Vec<StoredMessage>> = HashMap::new();
        for r in rows {
            by_id.entry(r.get(1)).or_default().push(StoredMessage {
                id: r.get(0),
                message: parse(r.get(2))?,
            });
        }
        let mut out = Vec::with_capacity(items.len());
        for mut item in items {
            match by_id.remove(item.instance_id.as_str()) {
                Some(messages) => {
                    item.messages = messages;
                    out.push(item);
                }
                None => {
                    // Nothing visible after all (a replaced instance, a race
                    // with a purge): give it back untouched.
                    let stmt = c
                        .prepare_cached(&self.sql.release_empty)
                        .await
                        .map_err(db_err)?;
                    c.execute(&stmt, &[&item.instance_id.as_str(), &item.lock.0])
                        .await
                        .map_err(db_err)?;
                }
            }
        }
        // Oldest work first, as fetched.
        Ok(out)
    }

    async fn load_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        let c = self.client().await?;
        read_history(&c, &self.sql, instance_id.as_str()).await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let done = match self.commit_in(&tx, &commit).await {
            Ok(done) => done,
            Err(e) => {
                // Nothing changed once rolled back. Awaited, not left to the
                // drop: the statements may hold row locks (a send's target)
                // that a fetch right after this call must not skip.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await.map_err(db_err)?;
        self.committed(&commit, done);
        Ok(())
    }

    async fn create_instance_with_turn(
        &self,
        instance: NewInstance,
        mut commit: TurnCommit,
    ) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        if !create_in(&tx, &self.sql, &instance, self.shared.worker).await? {
            let _ = tx.rollback().await;
            return Err(StoreError::Conflict(instance.instance_id));
        }
        // The turn consumed the start message create_in queued (the only
        // message of a row created in this transaction), and commits under
        // a token of its own: nobody else can see the row before this
        // transaction commits.
        let token = format!("create/{}", uuid::Uuid::new_v4().simple());
        let id = instance.instance_id.as_str();
        let claim = tx
            .prepare_cached(&self.sql.claim_created)
            .await
            .map_err(db_err)?;
        tx.execute(&claim, &[&id, &token]).await.map_err(db_err)?;
        commit.lock = WorkLock(token);
        commit.consumed.clear();
        let done = match self.commit_in(&tx, &commit).await {
            Ok(done) => done,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await.map_err(db_err)?;
        self.shared.changed(id, 0, 0);
        self.committed(&commit, done);
        Ok(true)
    }

    async fn abandon_orchestration_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let Some(id) = token_key(lock) else {
            return Err(StoreError::LeaseLost);
        };
        self.abandon(&self.sql.abandon_instance, &id, lock, delay, true)
            .await
    }

    async fn fetch_activity_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let c = self.lease_client().await?;
        let stmt = c
            .prepare_cached(&self.sql.fetch_activities)
            .await
            .map_err(db_err)?;
        let rows = c
            .query(
                &stmt,
                &[
                    &(max as i64),
                    &token_prefix(),
                    &self.shared.worker,
                    &lease_ms(lease),
                ],
            )
            .await
            .map_err(db_err)?;
        let mut items = Vec::with_capacity(rows.len());
        let mut expiry = None::<i64>;
        for r in rows {
            let due: i64 = r.get(8);
            expiry = Some(expiry.map_or(due, |e| e.min(due)));
            items.push((
                r.get::<_, i64>(0),
                ActivityWorkItem {
                    lock: WorkLock(r.get(7)),
                    activity: Arc::new(NewActivity {
                        instance_id: InstanceId::from_stored(r.get(1)),
                        execution_id: r.get(2),
                        task_id: r.get::<_, i64>(3) as u64,
                        name: r.get(4),
                        input: parse(r.get(5))?,
                    }),
                    attempts: r.get::<_, i32>(6) as u32,
                },
            ));
        }
        if let Some(e) = expiry {
            self.shared.hint(e);
        }
        items.sort_by_key(|(id, _)| *id);
        Ok(items.into_iter().map(|(_, i)| i).collect())
    }

    async fn complete_activity_work(
        &self,
        lock: &WorkLock,
        result: Message,
    ) -> Result<(), StoreError> {
        let Some((row_id, instance_id)) = activity_key(lock) else {
            return Err(StoreError::LeaseLost);
        };
        // Without waiting for its own flush (see `leases`): a result lost
        // in a server crash runs the activity again, which at-least-once
        // allows, and the turn that consumes it commits durably, flushing
        // it first.
        let mut c = self.lease_client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let done = tx
            .prepare_cached(&self.sql.complete_activity)
            .await
            .map_err(db_err)?;
        let send = tx.prepare_cached(&self.sql.send).await.map_err(db_err)?;
        // Both in one round trip (the token names the instance); if the
        // DELETE found no row under this token the lease was lost and the
        // rollback undoes the delivery too. The delivery goes first: it
        // locks the instance row before the DELETE locks the activity row,
        // the order every writer keeps (a purge locks the instance, then
        // deletes its activities), so the two cannot deadlock.
        let args = SendArgs::new(&instance_id, &result);
        let done_params: [&(dyn ToSql + Sync); 2] = [&row_id, &lock.0];
        let send_params = args.params();
        let (delivered, deleted) = futures::join!(
            tx.query_one(&send, &send_params),
            tx.query_opt(&done, &done_params),
        );
        if deleted.map_err(db_err)?.is_none() {
            // Awaited: the delivery holds the instance's row lock until
            // then, and a fetch right after this call must not skip it.
            let _ = tx.rollback().await;
            return Err(StoreError::LeaseLost);
        }
        let mut woken = Woken::default();
        sent(&delivered.map_err(db_err)?, &instance_id, false, &mut woken)?;
        tx.commit().await.map_err(db_err)?;
        self.after_commit(woken);
        Ok(())
    }

    async fn complete_activities(
        &self,
        items: Vec<(WorkLock, Message)>,
    ) -> Vec<Result<(), StoreError>> {
        if items.len() > 1 {
            match self.complete_batch(&items).await {
                Ok(out) => return out,
                // E.g. a deadlock with a turn sending to one of these
                // instances (rare: sub-orchestrations): one at a time.
                Err(e) => tracing::debug!(error = %e, "batch completion failed; one by one"),
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (lock, result) in items {
            out.push(self.complete_activity_work(&lock, result).await);
        }
        out
    }

    async fn abandon_activity_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let Some((row_id, _)) = activity_key(lock) else {
            return Err(StoreError::LeaseLost);
        };
        self.abandon(&self.sql.abandon_activity, &row_id, lock, delay, false)
            .await
    }

    async fn next_wake_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let c = self.lease_client().await?;
        let stmt = c
            .prepare_cached(&self.sql.next_wake)
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(&stmt, &[&self.shared.worker, &self.affinity_ms])
            .await
            .map_err(db_err)?;
        let wake: Option<i64> = row.get(0);
        let dead_workers: bool = row.get(1);
        *self.shared.planned_wake.lock().expect("planned lock") = wake;
        let mut wake = wake;
        if dead_workers {
            let stmt = c.prepare_cached(&self.sql.reap).await.map_err(db_err)?;
            let row = c
                .query_one(&stmt, &[&self.shared.worker, &self.dead_after_ms])
                .await
                .map_err(db_err)?;
            let (orchestrations, activities): (i64, i64) = (row.get(0), row.get(1));
            if orchestrations > 0 || activities > 0 {
                tracing::info!(
                    orchestrations,
                    activities,
                    "took over the leases of a worker that is gone"
                );
                self.shared.announce(orchestrations > 0, activities > 0);
                return Ok(Some(types::now()));
            }
            // A worker without its connection, not yet dead: look again
            // when it would be (unless it reconnects first).
            let recheck: Option<i64> = row.get(2);
            wake = match (wake, recheck) {
                (Some(w), Some(r)) => Some(w.min(r)),
                (w, r) => w.or(r),
            };
            *self.shared.planned_wake.lock().expect("planned lock") = wake;
        }
        Ok(wake.map(types::from_millis))
    }

    async fn get_instance(
        &self,
        instance_id: &InstanceId,
        with_history: bool,
    ) -> Result<Option<InstanceStatus>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {STATUS_COLUMNS} FROM {}.instances WHERE instance_id = $1",
                    self.sql.s
                ),
                &[&instance_id.as_str()],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut status = status_from_row(&row)?;
        if with_history {
            status.history = Some(read_history(&c, &self.sql, instance_id.as_str()).await?);
        }
        Ok(Some(status))
    }

    async fn list_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut where_ = filter_sql(&query.filter, &mut args);
        if let Some(token) = &query.continuation {
            let (ms, id) = decode_token(token)
                .ok_or_else(|| StoreError::Database("invalid continuation token".into()))?;
            args.push(Box::new(ms));
            let a = args.len();
            args.push(Box::new(id));
            let b = args.len();
            where_.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${a} AND instance_id < ${b}))"
            ));
        }
        let size = query.page_size.clamp(1, 1000);
        // Without inputs, the column is read as JSON null: nothing of a
        // large input is loaded.
        let columns = if query.with_input {
            STATUS_COLUMNS.to_string()
        } else {
            STATUS_COLUMNS.replacen("input,", "'null'::text AS input,", 1)
        };
        let sql = format!(
            "SELECT {columns} FROM {}.instances WHERE {where_} \
             ORDER BY created_at DESC, instance_id DESC LIMIT {}",
            self.sql.s,
            size + 1
        );
        let c = self.client().await?;
        // Rows stream in, so a page that fills its byte budget early
        // stops reading (the rest is never held).
        let rows = c
            .query_raw(&sql, params(&args).iter().copied())
            .await
            .map_err(db_err)?;
        futures::pin_mut!(rows);
        let mut page = PageBuilder::new(size, PAGE_PAYLOAD_BYTES);
        while let Some(row) = rows.next().await {
            if !page.push_instance(status_from_row(&row.map_err(db_err)?)?) {
                break;
            }
        }
        Ok(page.instance_page(|s| encode_token(s.created_at.timestamp_millis(), &s.instance_id)))
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<PurgeOutcome, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let s = &self.sql.s;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT runtime_status FROM {s}.instances WHERE instance_id = $1 FOR UPDATE"
                ),
                &[&instance_id.as_str()],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(PurgeOutcome::NotFound);
        };
        let status = parse_status(row.get(0))?;
        if !status.is_terminal() {
            // Release the row lock now, not whenever the drop's rollback
            // reaches the server: a fetch would skip the row meanwhile.
            let _ = tx.rollback().await;
            return Ok(PurgeOutcome::NotTerminal(status));
        }
        delete_instances(&tx, s, &[instance_id.as_str().to_string()]).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(PurgeOutcome::Deleted)
    }

    async fn purge_instances(
        &self,
        filter: &InstanceFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let where_ = filter_sql(filter, &mut args);
        let sql = format!(
            "SELECT instance_id FROM {}.instances WHERE {where_} AND runtime_status IN ({}) \
             LIMIT {} FOR UPDATE SKIP LOCKED",
            self.sql.s,
            self.sql.terminal,
            limit.max(1)
        );
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let ids: Vec<String> = tx
            .query(&sql, &params(&args))
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        delete_instances(&tx, &self.sql.s, &ids).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(ids.len() as u64)
    }

    async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT runtime_status, count(*) FROM {}.instances GROUP BY runtime_status",
                    self.sql.s
                ),
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .filter_map(|r| RuntimeStatus::parse(r.get(0)).map(|s| (s, r.get::<_, i64>(1) as u64)))
            .collect())
    }

    fn lifecycle_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.shared.lifecycle.clone()
    }

    async fn lifecycle_outbox(&self, limit: usize) -> Result<Vec<LifecycleEvent>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.sql.read_lifecycle)
            .await
            .map_err(db_err)?;
        let rows = c.query(&st, &[&(limit as i64)]).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(LifecycleEvent {
                    seq: r.get(0),
                    instance_id: r.get(1),
                    name: r.get(2),
                    execution_id: r.get(3),
                    runtime_status: RuntimeStatus::parse(r.get(4)).unwrap_or(RuntimeStatus::Failed),
                    history_events: r.get::<_, i64>(5) as u64,
                    at: types::from_millis(r.get(6)),
                    failure: r.get::<_, Option<&str>>(7).map(parse).transpose()?,
                })
            })
            .collect()
    }

    async fn ack_lifecycle(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.sql.ack_lifecycle)
            .await
            .map_err(db_err)?;
        c.execute(&st, &[&seqs]).await.map_err(db_err)?;
        Ok(())
    }

    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let c = self.client().await?;
        let s = &self.sql.s;
        let row = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(DISTINCT instance_id) FROM {s}.messages WHERE due_ms <= {NOW}), \
                            (SELECT count(*) FROM {s}.activities)"
                ),
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }
}

/// Deletes instances with their history, inbox and queued activities.
async fn delete_instances(
    tx: &impl GenericClient,
    s: &str,
    ids: &[String],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    for table in ["history", "messages", "activities", "instances"] {
        tx.execute(
            &format!("DELETE FROM {s}.{table} WHERE instance_id = ANY($1)"),
            &[&ids],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(())
}
