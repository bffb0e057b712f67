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
//!   Turns of several instances that finish at the same moment commit
//!   together, one statement per kind over arrays ([`batch`]).
//! - **Wake-ups across processes** go through `LISTEN`/`NOTIFY` on one
//!   dedicated connection per store ([`listener`]): work made visible
//!   locally fires the local [`WorkSignal`] at once and is announced to the
//!   other processes, coalesced into one `NOTIFY` per round trip. Delayed
//!   work (a lease, a timer) is announced as a wake-up hint of its kind
//!   (orchestration or activity), so an idle dispatcher of that kind
//!   elsewhere that planned to sleep past it wakes up and recomputes
//!   [`Store::next_wake_at`] for its kind. The same notifications name the
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
//!   after the lease. That look runs at most once a fifth of `dead_after`
//!   (every call while a worker is marked): reading `pg_stat_activity` at
//!   each of a busy process's idle moments cost more server CPU than it
//!   bought. A call that skips the look plans a wake-up for the next one
//!   (when there are other workers), so a process does not miss it by
//!   going idle right after a skip; one that looked and has nothing due
//!   sleeps until work, a notification or its next due time, as before.
//!   A worker whose listener connection only dropped re-registers within that time (its listener reconnects every 500 ms),
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
//! `visible_at` times come from the engine and are compared with it. The
//! wake-up [`Store::next_wake_at`] answers is moved onto the host's clock
//! by the offset read with it (the dispatcher sleeps by the host's), and
//! wake-up hints are compared with the database's time as estimated from
//! that offset.

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

use super::common::{
    decode_token, encode_token, json, parse, parse_status, terminal_list, CappedHistory,
    HistoryCap, StatusRead,
};
use super::page::{PageBuilder, PAGE_PAYLOAD_BYTES};
pub use super::pg_connect::{PgTarget, PgUrlError};
use super::{
    ActivityWorkItem, LifecycleEvent, NewActivity, NewInstance, OrchestrationWorkItem,
    PurgeOutcome, RemoteChange, StatusUpdate, Store, StoreError, StoredMessage, TurnCommit,
    WorkKind, WorkLock, WorkSignal,
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

/// A read-only transaction that sees one snapshot (repeatable read), for
/// answers read with several statements while others commit: the engine's
/// status with its history, the players store's pull page, the event
/// router's delivery histories and counts.
pub async fn read_snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
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

/// Notifications still to be announced to the other processes.
#[derive(Debug, Default)]
struct Outbox {
    orchestrations: bool,
    activities: bool,
    /// Earliest wake-up hint (ms) of each kind of work not yet sent
    /// (orchestrations, activities).
    wake: [Option<i64>; KINDS.len()],
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
    /// The last value `next_wake_at` returned for each kind of work
    /// (orchestrations, activities; ms; `None`: no wake-up planned). A
    /// remote hint earlier than a kind's plan wakes that kind's dispatcher.
    planned_wake: Mutex<[Option<i64>; KINDS.len()]>,
    /// The earliest wake-up hint of each kind sent that is still in the
    /// future: the other processes' dispatchers of that kind wake by then
    /// and read later ones from the tables, so later hints need not be sent.
    hint_sent: Mutex<[Option<i64>; KINDS.len()]>,
    /// Notified after a commit wrote lifecycle outbox rows; `None` when the
    /// outbox is off.
    lifecycle: Option<Arc<tokio::sync::Notify>>,
    /// Changes the other processes announced ([`Store::remote_changes`]).
    remote: tokio::sync::broadcast::Sender<RemoteChange>,
    /// The database clock minus this host's (ms), as last read: due times
    /// are the database's, the dispatchers sleep by the host's.
    clock_offset: std::sync::atomic::AtomicI64,
}

impl Shared {
    /// The database clock now (ms), as estimated from the last reading.
    fn database_now(&self) -> i64 {
        types::now().timestamp_millis() + self.clock_offset.load(Ordering::Relaxed)
    }

    /// Records the database clock `db_now_ms` read by a query sent at
    /// `asked` and answered at `answered` (host times): compared with the
    /// middle of the round trip, and only when the round trip is shorter
    /// than [`CLOCK_TOLERANCE_MS`] (a slow answer says little).
    fn clock_read(&self, db_now_ms: i64, asked: Timestamp, answered: Timestamp) {
        let (asked, answered) = (asked.timestamp_millis(), answered.timestamp_millis());
        if answered - asked < CLOCK_TOLERANCE_MS {
            self.clock_offset
                .store(db_now_ms - (asked + answered) / 2, Ordering::Relaxed);
        }
    }

    /// A database time (ms) as a time on this host's clock.
    fn on_host(&self, db_ms: i64) -> Timestamp {
        types::from_millis(host_ms(db_ms, self.clock_offset.load(Ordering::Relaxed)))
    }

    fn wake_local(&self, orchestrations: bool, activities: bool) {
        self.signal.wake(orchestrations, activities);
    }

    /// `kind`'s dispatcher plans to wake up at `at` (ms) at the latest.
    fn plan(&self, kind: WorkKind, at: Option<i64>) {
        self.planned_wake.lock().expect("planned lock")[index(kind)] = at;
    }

    /// A remote hint: work of `kind` becomes due at `at` (ms). Wakes that
    /// kind's dispatcher if it planned to sleep past it (it recomputes its
    /// plan, which then includes `at`); until then the hint counts as its
    /// plan, so later hints wake nobody.
    fn hinted(&self, kind: WorkKind, at: i64) {
        let mut planned = self.planned_wake.lock().expect("planned lock");
        let plan = &mut planned[index(kind)];
        if plan.is_some_and(|p| p <= at) {
            return;
        }
        *plan = Some(at);
        drop(planned);
        self.wake_local(kind == WorkKind::Orchestration, kind == WorkKind::Activity);
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

    /// Work of `kind` becomes due at `at_ms` (a lease expiry, a timer):
    /// tell the other processes unless an earlier hint of that kind is
    /// still pending there.
    fn hint(&self, kind: WorkKind, at_ms: i64) {
        let now = self.database_now();
        let i = index(kind);
        {
            let mut sent = self.hint_sent.lock().expect("hint lock");
            if sent[i].is_some_and(|h| h > now && h <= at_ms) {
                return;
            }
            sent[i] = Some(at_ms);
        }
        let mut o = self.outbox.lock().expect("outbox lock");
        o.wake[i] = Some(o.wake[i].map_or(at_ms, |w| w.min(at_ms)));
        drop(o);
        self.kick.notify_one();
    }
}

/// A database time (ms) on the host's clock, given the database clock
/// minus the host's: a dispatcher on a host whose clock is ahead would
/// otherwise wake before its work is due and poll until it is, and one
/// behind would sleep past it. Offsets under [`CLOCK_TOLERANCE_MS`] are
/// left alone: the reading itself is that uncertain (the query's latency),
/// and on one machine the clocks are the same.
fn host_ms(db_ms: i64, offset: i64) -> i64 {
    if offset.abs() < CLOCK_TOLERANCE_MS {
        return db_ms;
    }
    db_ms.saturating_sub(offset)
}

/// See [`host_ms`].
const CLOCK_TOLERANCE_MS: i64 = 100;

/// The kinds of work in the order of the per-kind arrays above.
const KINDS: [WorkKind; 2] = [WorkKind::Orchestration, WorkKind::Activity];

/// A kind of work's place in the per-kind arrays above ([`KINDS`]).
fn index(kind: WorkKind) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in KINDS")
}

/// When `next_wake_at` looks for other workers whose listener backend is
/// gone. The look reads `pg_stat_activity`, which builds an entry for
/// every backend slot: done at each of a busy process's idle moments (tens
/// a second), it cost more PostgreSQL CPU than the dispatch queries of
/// three processes. So it runs at most once an interval (a fifth of
/// [`PostgresConfig::dead_after`], at most a second), and a call that
/// skips it plans a wake-up for when the next one is due (when there are
/// other workers), so a process that goes idle right after a skipped look
/// still makes it.
#[derive(Debug, Default)]
struct Liveness {
    /// When the last look ran.
    last: Option<std::time::Instant>,
    /// The last look found a worker gone: look again at every call until
    /// it is dead or back.
    suspect: bool,
    /// The last look found other workers: a skipped look then plans a
    /// wake-up for the next (alone, there is no one to notice).
    others: bool,
}

impl Liveness {
    /// Whether this call looks, given the interval between looks.
    fn due(&mut self, every: Duration) -> bool {
        let now = std::time::Instant::now();
        let due = self.suspect || self.last.is_none_or(|t| now.duration_since(t) >= every);
        if due {
            self.last = Some(now);
        }
        due
    }

    /// How long until the next look is due (zero when it is); `None`
    /// when the last look found no other worker.
    fn until_due(&self, every: Duration) -> Option<Duration> {
        match self.last {
            _ if !self.others => None,
            Some(t) if !self.suspect => Some(every.saturating_sub(t.elapsed())),
            _ => Some(Duration::ZERO),
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
    /// When `next_wake_at` last looked for workers that are gone.
    liveness: Mutex<Liveness>,
    /// Turn commits waiting to be committed together ([`batch`]).
    turns: crate::coalesce::Coalescer<batch::QueuedTurn>,
    /// New instances with first turns waiting to be committed together.
    creations: crate::coalesce::Coalescer<batch::QueuedCreation>,
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

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.listener.lock().expect("listener lock").take() {
            h.abort();
        }
    }
}

mod batch;
mod listener;
mod ops;
mod rows;
mod schema;
mod sql;
mod writes;

use rows::*;
pub use schema::apply_ddl_once;
use schema::*;
use sql::Sql;

#[cfg(test)]
mod tests {
    use super::schema::channel_name;
    use super::{host_ms, Liveness};
    use std::time::{Duration, Instant};

    const EVERY: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_call_looks_and_the_next_within_the_interval_does_not() {
        let mut l = Liveness::default();
        assert!(l.due(EVERY));
        assert!(!l.due(EVERY));
        l.last = Some(Instant::now() - EVERY);
        assert!(l.due(EVERY));
    }

    #[test]
    fn a_suspected_worker_is_looked_at_every_call() {
        let mut l = Liveness::default();
        assert!(l.due(EVERY));
        l.suspect = true;
        l.others = true;
        assert!(l.due(EVERY));
        assert_eq!(l.until_due(EVERY), Some(Duration::ZERO));
    }

    #[test]
    fn a_skipped_look_plans_the_next_only_when_others_exist() {
        let mut l = Liveness::default();
        assert!(l.due(EVERY));
        assert_eq!(l.until_due(EVERY), None, "alone: nothing to notice");
        l.others = true;
        let until = l.until_due(EVERY).expect("others: plan the next look");
        assert!(
            until <= EVERY && until > Duration::from_millis(500),
            "{until:?}"
        );
        l.last = Some(Instant::now() - 2 * EVERY);
        assert_eq!(l.until_due(EVERY), Some(Duration::ZERO));
    }

    #[test]
    fn database_times_are_moved_onto_the_host_clock() {
        // The database 2 s behind the host: due at database 10,000 is the
        // host's 12,000 (waking at 10,000 would poll 2 s for nothing).
        assert_eq!(host_ms(10_000, -2_000), 12_000);
        // Ahead by 2 s: the host's 8,000 (waking at 10,000 sleeps past it).
        assert_eq!(host_ms(10_000, 2_000), 8_000);
        assert_eq!(host_ms(10_000, 0), 10_000);
        // Within the reading's own uncertainty: left as it is.
        assert_eq!(host_ms(10_000, 99), 10_000);
        assert_eq!(host_ms(10_000, -99), 10_000);
        assert_eq!(host_ms(i64::MIN + 1, 500), i64::MIN);
    }

    #[test]
    fn channel_names_fit_postgres_identifiers_and_stay_apart() {
        assert_eq!(channel_name("durable"), "durable_work_durable");
        let fits = "s".repeat(50);
        assert_eq!(channel_name(&fits), format!("durable_work_{fits}"));
        let (one, two) = (
            format!("{}a", "s".repeat(62)),
            format!("{}b", "s".repeat(62)),
        );
        let (c1, c2) = (channel_name(&one), channel_name(&two));
        assert!(c1.len() <= 63 && c2.len() <= 63, "{c1} {c2}");
        assert_ne!(c1, c2);
        assert_eq!(c1, channel_name(&one), "the same in every process");
    }
}
