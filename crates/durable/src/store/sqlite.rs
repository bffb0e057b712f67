//! The embedded default store: one SQLite file (WAL, `synchronous=FULL`).
//!
//! # Design
//! - **One writer thread** owns the write connection. Callers send it
//!   operations over a channel; it drains whatever has queued up and applies
//!   the whole batch in ONE transaction (group commit), so the fsync cost is
//!   shared by every turn in the batch. Every expected failure (a conflict,
//!   a lost lease, a missing instance) is detected before an operation
//!   writes anything, so a failing operation leaves its neighbours intact
//!   without the cost of a savepoint; an unexpected database error aborts
//!   the whole batch and every caller gets the error.
//! - **Callers serialize**: JSON is produced on the caller's thread before an
//!   operation is queued, so the writer thread only binds and steps
//!   statements. The writer is the store's throughput limit; everything
//!   that can run elsewhere does.
//! - **History is stored one row per turn** (a JSON array of that turn's
//!   events), so a turn appends one row however many events it records.
//! - **Checkpoints run beside the writer**: a checkpoint thread with its own
//!   connection copies the log into the database file every
//!   `COMMITS_PER_CHECKPOINT` commits (PASSIVE), so commits carry no
//!   checkpoint; under sustained load the writer checkpoints itself once
//!   the log passes `WRITER_CHECKPOINT_FRAMES` (ARCHITECTURE.md, "The SQLite
//!   store").
//! - **Queues live in memory**, rebuilt from the tables at open. A fetch takes
//!   work from memory without touching the disk. The writer updates the
//!   queues only *after* its transaction committed, so no worker ever acts on
//!   state that a crash could still lose.
//! - **Reads** (status, listing, history) use a separate connection; WAL lets
//!   them run beside the writer.
//!
//! One process owns a store file at a time: opening takes an exclusive lock
//! on `<file>.lock`, so a second process gets a clear error instead of
//! double-running work.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use super::group_commit::GroupCommit;
use super::page::{PageBuilder, PAGE_PAYLOAD_BYTES};
use super::{
    ActivityWorkItem, LifecycleEvent, NewActivity, NewInstance, OrchestrationWorkItem,
    PurgeOutcome, StatusUpdate, Store, StoreError, StoredMessage, TurnCommit, WorkLock, WorkSignal,
};
use crate::history::{EventKind, HistoryEvent, Message};
use crate::types::{
    self, FailureDetails, InstanceFilter, InstanceId, InstancePage, InstanceQuery, InstanceStatus,
    RuntimeStatus, Timestamp,
};

/// Marks a database as ours; checked at open.
const APPLICATION_ID: i32 = 0x4746_4431; // "GFD1"
const SCHEMA_VERSION: i64 = 4;
/// Most operations in one group commit.
const MAX_BATCH: usize = 2048;
/// Commits between two background checkpoints.
const COMMITS_PER_CHECKPOINT: u32 = 32;
/// The writer checkpoints itself only past this many log frames (64 MiB).
const WRITER_CHECKPOINT_FRAMES: u32 = 16_384;

/// Settings of a SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// `synchronous=FULL` when true (every commit survives power loss);
    /// `NORMAL` otherwise (survives a process crash, not a power cut).
    pub durable: bool,
    /// Run `PRAGMA quick_check` at open to refuse a damaged file early.
    pub verify_on_open: bool,
    /// Keep the lifecycle outbox (see [`crate::store::lifecycle`]): a host
    /// that publishes lifecycle events turns it on, and must then drain it.
    pub lifecycle_outbox: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            durable: true,
            verify_on_open: true,
            lifecycle_outbox: false,
        }
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("values built from JSON serialize")
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Incompatible(format!("unreadable stored value: {e}")))
}

/// What memory needs to know about an instance to hand out its work.
#[derive(Clone, Debug)]
struct Meta {
    status: RuntimeStatus,
    execution_id: String,
    history_len: u64,
}

impl Meta {
    /// From the instance row's `runtime_status`, `execution_id` and
    /// `history_events`.
    fn from_row(
        status: &str,
        execution_id: String,
        history_events: i64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            status: RuntimeStatus::parse(status)
                .ok_or_else(|| StoreError::Incompatible(format!("unknown status {status}")))?,
            execution_id,
            history_len: history_events as u64,
        })
    }
}

#[derive(Debug)]
struct Lease {
    token: String,
    expires: Instant,
    /// Set while the writer applies a commit made under this lease (see
    /// [`Claim`]); such a lease neither expires nor can be used again.
    committing: bool,
}

/// A lease the writer validated for a commit or completion that is not
/// applied to memory yet.
///
/// The writer checks a lease, then writes and commits the transaction, and
/// only then updates memory. Without a claim the lease could expire in
/// between and the work be handed to a second holder, who would then act on
/// messages the first holder's commit consumes (and a second completion in
/// the same batch would deliver a result twice). A claimed lease is taken
/// out of the expiry maps, so it cannot expire, and refuses a second claim.
/// After each batch the writer returns the claims whose operation did not
/// land to the expiry maps, so the holder can retry or abandon.
enum Claim {
    Instance(InstanceId, String),
    Activity(String),
}

#[derive(Debug)]
struct Entry {
    meta: Meta,
    visible: Vec<StoredMessage>,
    delayed: usize,
    lease: Option<Lease>,
    queued: bool,
    attempts: u32,
}

#[derive(Clone, Debug)]
struct ActRow {
    id: i64,
    activity: Arc<NewActivity>,
    attempts: u32,
}

#[derive(Default)]
struct Queues {
    entries: HashMap<InstanceId, Entry>,
    /// Instances with history and new messages: they go first, so work
    /// already started finishes before more is started. That keeps the set
    /// of running instances (and the engine's cache of them) small and
    /// latency low under a burst of starts.
    ready: VecDeque<InstanceId>,
    /// Instances that have not run a turn yet (history empty).
    ready_new: VecDeque<InstanceId>,
    delayed: BTreeMap<(i64, i64), (InstanceId, StoredMessage)>,
    leases: BTreeMap<(Instant, String), InstanceId>,
    act_ready: VecDeque<ActRow>,
    act_locked: HashMap<String, (ActRow, Instant)>,
    act_leases: BTreeMap<(Instant, String), ()>,
    next_token: u64,
    /// Every instance that is not finished, with its status as last
    /// committed: lets an activity result be delivered without the writer.
    live: HashMap<InstanceId, Meta>,
    /// Activity results delivered from memory (see
    /// [`SqliteStore::complete_activity_work`]), by activity row id: the row
    /// stays until the turn that consumes the result deletes it.
    held: HashMap<i64, (InstanceId, Message)>,
    /// Activity rows whose held result will never be consumed (their
    /// instance finished first): deleted by the writer's next batch.
    orphans: Vec<(InstanceId, i64)>,
}

impl Queues {
    fn token(&mut self, prefix: char) -> String {
        self.next_token += 1;
        format!("{prefix}{}", self.next_token)
    }

    fn enqueue(&mut self, id: &InstanceId) {
        if let Some(e) = self.entries.get_mut(id) {
            if !e.queued && e.lease.is_none() && !e.visible.is_empty() {
                e.queued = true;
                if e.meta.history_len == 0 {
                    self.ready_new.push_back(id.clone());
                } else {
                    self.ready.push_back(id.clone());
                }
            }
        }
    }

    fn entry(&mut self, id: &InstanceId, meta: &Meta) -> &mut Entry {
        self.entries.entry(id.clone()).or_insert_with(|| Entry {
            meta: meta.clone(),
            visible: Vec::new(),
            delayed: 0,
            lease: None,
            queued: false,
            attempts: 0,
        })
    }

    fn deliver(&mut self, d: Delivery) {
        if d.fresh {
            self.reset(&d.instance_id);
            self.live.insert(d.instance_id.clone(), d.meta.clone());
        }
        let now = types::now().timestamp_millis();
        match d.message.message.visible_at.map(|t| t.timestamp_millis()) {
            Some(at) if at > now => {
                self.entry(&d.instance_id, &d.meta).delayed += 1;
                self.delayed
                    .insert((at, d.message.id), (d.instance_id, d.message));
            }
            _ => {
                self.entry(&d.instance_id, &d.meta).visible.push(d.message);
                self.enqueue(&d.instance_id);
            }
        }
    }

    /// Delivers an activity result from memory when the lease is held (and
    /// not being completed by the writer) and the instance is live; gives
    /// the result back otherwise. See [`SqliteStore::complete_activity_work`].
    fn hold_result(&mut self, lock: &WorkLock, result: Message) -> Option<Message> {
        let eligible = self.act_locked.get(&lock.0).and_then(|(row, expires)| {
            let meta = self.live.get(&row.activity.instance_id)?.clone();
            self.act_leases
                .contains_key(&(*expires, lock.0.clone()))
                .then(|| (row.id, row.activity.instance_id.clone(), *expires, meta))
        });
        let Some((row, instance_id, expires, meta)) = eligible else {
            return Some(result);
        };
        self.act_locked.remove(&lock.0);
        self.act_leases.remove(&(expires, lock.0.clone()));
        self.held.insert(row, (instance_id.clone(), result.clone()));
        self.deliver(Delivery {
            instance_id,
            meta,
            message: StoredMessage {
                id: -row,
                message: result,
            },
            fresh: false,
        });
        None
    }

    fn forget_if_idle(&mut self, id: &InstanceId) {
        if let Some(e) = self.entries.get(id) {
            if e.visible.is_empty() && e.delayed == 0 && e.lease.is_none() && !e.queued {
                self.entries.remove(id);
            }
        }
    }

    /// Moves due delayed messages to their instances and returns expired
    /// leases to the queues.
    fn promote(&mut self) {
        let now_ms = types::now().timestamp_millis();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let (id, msg) = entry.remove();
            if let Some(e) = self.entries.get_mut(&id) {
                e.delayed -= 1;
                e.visible.push(msg);
            }
            self.enqueue(&id);
        }
        let now = Instant::now();
        while let Some(entry) = self.leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, token), id) = entry.remove_entry();
            if let Some(e) = self.entries.get_mut(&id) {
                if e.lease.as_ref().is_some_and(|l| l.token == token) {
                    e.lease = None;
                }
            }
            self.enqueue(&id);
        }
        while let Some(entry) = self.act_leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, token), ()) = entry.remove_entry();
            if let Some((row, _)) = self.act_locked.remove(&token) {
                self.act_ready.push_back(row);
            }
        }
    }

    fn release(&mut self, id: &InstanceId, token: &str) -> bool {
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        match &e.lease {
            Some(l) if l.token == token => {
                self.leases.remove(&(l.expires, l.token.clone()));
                e.lease = None;
                true
            }
            _ => false,
        }
    }

    /// Forgets everything memory holds about an instance whose rows were
    /// deleted or replaced (purge, create over a finished instance): its
    /// messages, delayed ones included, and its lease, whose holder then gets
    /// [`StoreError::LeaseLost`] instead of committing into the new instance.
    fn reset(&mut self, id: &InstanceId) {
        self.held.retain(|_, (i, _)| i != id);
        if let Some(e) = self.entries.remove(id) {
            if e.delayed > 0 {
                self.delayed.retain(|_, (i, _)| i != id);
            }
            if let Some(l) = e.lease {
                self.leases.remove(&(l.expires, l.token));
            }
        }
    }

    /// Claims the lease `token` on `id` for a commit (see [`Claim`]) and
    /// returns what memory knows of the instance, or `None` if the lease is
    /// not held or already claimed.
    fn claim_instance(&mut self, id: &InstanceId, token: &str) -> Option<Meta> {
        let e = self.entries.get_mut(id)?;
        let l = e
            .lease
            .as_mut()
            .filter(|l| l.token == token && !l.committing)?;
        l.committing = true;
        self.leases.remove(&(l.expires, l.token.clone()));
        Some(e.meta.clone())
    }

    /// Claims the activity lease `token` for a completion (see [`Claim`]);
    /// returns the row, or `None` if the lease is not held or already claimed.
    fn claim_activity(&mut self, token: &str) -> Option<ActRow> {
        let (row, expires) = self.act_locked.get(token)?;
        self.act_leases.remove(&(*expires, token.to_string()))?;
        Some(row.clone())
    }

    /// Returns a claim whose operation did not land to the expiry maps; a
    /// no-op for one that landed (its lease is gone by then). Returns which
    /// kind of lease came back, as (orchestration, activity), so waiters can
    /// recompute their next wake-up.
    fn unclaim(&mut self, claim: Claim) -> (bool, bool) {
        match claim {
            Claim::Instance(id, token) => {
                let Some(l) = self
                    .entries
                    .get_mut(&id)
                    .and_then(|e| e.lease.as_mut())
                    .filter(|l| l.token == token && l.committing)
                else {
                    return (false, false);
                };
                l.committing = false;
                self.leases.insert((l.expires, token), id);
                (true, false)
            }
            Claim::Activity(token) => match self.act_locked.get(&token) {
                Some((_, expires)) => {
                    self.act_leases.insert((*expires, token), ());
                    (false, true)
                }
                None => (false, false),
            },
        }
    }

    /// True when `token` is an activity lease not claimed by a completion.
    fn act_lease_free(&self, token: &str) -> bool {
        self.act_locked.get(token).is_some_and(|(_, expires)| {
            self.act_leases.contains_key(&(*expires, token.to_string()))
        })
    }
}

/// A message written in a transaction, to hand to memory after commit.
struct Delivery {
    instance_id: InstanceId,
    meta: Meta,
    message: StoredMessage,
    /// The `ExecutionStarted` of a created instance. Whatever memory still
    /// holds under that id belongs to a finished instance it replaced and is
    /// dropped first, or the new instance would inherit stale messages and
    /// status.
    fresh: bool,
}

enum Effect {
    None,
    Deliver(Vec<Delivery>),
    Commit {
        instance_id: InstanceId,
        token: String,
        consumed: Vec<i64>,
        meta: Meta,
        cleared: bool,
        deliveries: Vec<Delivery>,
        activities: Vec<ActRow>,
    },
    ActivityDone {
        token: String,
        deliveries: Vec<Delivery>,
    },
    Purged(Vec<InstanceId>),
    /// An instance created with its first turn: memory of a finished
    /// instance it replaced is dropped first (as for a fresh delivery),
    /// then the turn's effect applies.
    Created(InstanceId, Box<Effect>),
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A value and its JSON, made on the caller's thread (see the module docs).
struct Json<T> {
    value: T,
    text: String,
}

impl<T: serde::Serialize> Json<T> {
    fn new(value: T) -> Self {
        let text = json(&value);
        Self { value, text }
    }
}

/// A new instance with its JSON made ahead.
struct PreparedInstance {
    inst: NewInstance,
    input: String,
    /// Its start message; none when its first turn comes with it.
    started: Option<Json<Message>>,
}

impl PreparedInstance {
    fn new(inst: NewInstance) -> Self {
        let started = Some(Json::new(inst.start_message()));
        Self {
            input: json(&inst.input),
            inst,
            started,
        }
    }

    /// One whose first turn is committed with it (no start message).
    fn with_turn(inst: NewInstance) -> Self {
        Self {
            input: json(&inst.input),
            inst,
            started: None,
        }
    }
}

/// A turn commit with its JSON made ahead; `commit` keeps the status and
/// bookkeeping, the rest is moved into the prepared fields.
struct PreparedCommit {
    commit: TurnCommit,
    /// The turn's history events as one JSON array (one row).
    history: Option<(u64, String)>,
    activities: Vec<(NewActivity, String)>,
    messages: Vec<(InstanceId, Json<Message>)>,
    children: Vec<PreparedInstance>,
}

impl PreparedCommit {
    fn new(mut commit: TurnCommit) -> Self {
        let history = commit
            .history
            .first()
            .map(|first| (first.event_id, json(&commit.history)));
        commit.history = Vec::new();
        let activities = std::mem::take(&mut commit.activities)
            .into_iter()
            .map(|a| {
                let input = json(&a.input);
                (a, input)
            })
            .collect();
        let messages = std::mem::take(&mut commit.messages)
            .into_iter()
            .map(|m| (m.instance_id, Json::new(m.message)))
            .collect();
        let children = std::mem::take(&mut commit.new_instances)
            .into_iter()
            .map(PreparedInstance::new)
            .collect();
        Self {
            commit,
            history,
            activities,
            messages,
            children,
        }
    }
}

enum Op {
    Create(Box<PreparedInstance>, Reply<()>),
    CreateWithTurn(Box<PreparedInstance>, Box<PreparedCommit>, Reply<()>),
    Send(InstanceId, Json<Message>, Reply<()>),
    Commit(Box<PreparedCommit>, Reply<()>),
    CompleteActivity(WorkLock, Json<Message>, Reply<()>),
    Purge(InstanceId, Reply<PurgeOutcome>),
    PurgeMany(InstanceFilter, usize, Reply<u64>),
    /// Deletes published lifecycle outbox rows.
    AckLifecycle(Vec<i64>, Reply<()>),
    /// Persists delivery counts of redeliveries so poison detection
    /// survives crashes. First deliveries are not written (most work is
    /// delivered once); at open, queued work counts as delivered once, which
    /// over-counts work that was never delivered by at most one.
    MarkFetched {
        instances: Vec<(InstanceId, u32)>,
        activities: Vec<(InstanceId, i64, u32)>,
    },
    /// At close: the activity results held in memory become what they
    /// stand for, a deleted activity row and a message (see
    /// [`SqliteStore::complete_activity_work`]).
    PersistHeld(Vec<(InstanceId, i64, Json<Message>)>),
}

enum Outcome {
    Unit(Reply<()>, Result<(), StoreError>),
    Purge(Reply<PurgeOutcome>, Result<PurgeOutcome, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Silent,
}

struct Shared {
    queues: Mutex<Queues>,
    signal: Arc<WorkSignal>,
    /// The next message or activity id. Messages and activities are stored
    /// clustered by instance (`WITHOUT ROWID`, key `(instance_id, id)`), one
    /// B-tree each instead of a rowid table plus an instance index, so the
    /// writer assigns ids itself. Only the holder of the write connection takes ids; ids of a
    /// rolled-back batch are skipped, which is harmless.
    next_id: std::sync::atomic::AtomicI64,
    /// Commits since the checkpointer was last woken.
    commits_since_checkpoint: std::sync::atomic::AtomicU32,
    /// Wakes the checkpointer thread; `None` once closed.
    checkpoint: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// Notified after a batch that wrote lifecycle outbox rows; `None`
    /// when the outbox is off.
    lifecycle: Option<Arc<Notify>>,
    /// Set by a commit that wrote outbox rows, taken after the batch.
    lifecycle_written: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn take_id(&self) -> i64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The SQLite store. See the module docs.
pub struct SqliteStore {
    shared: Arc<Shared>,
    writer: GroupCommit<Op>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn open_connection(path: &Path, config: &SqliteConfig) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::Incompatible(format!("cannot open {} as a database: {e}", path.display()))
    })?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
    let sync = if config.durable { "FULL" } else { "NORMAL" };
    // A 4 MiB page cache, not more: the B-tree hot spots of a commit are
    // the right edges of time-ordered keys, and SQLite walks the whole
    // page-cache hash table at every commit that split a page (the split
    // borrows a page number past the end of the file, so the commit
    // "truncates" the cache). With 64 MiB that walk was about a tenth of
    // the writer's CPU in galaxy-bench; with 4 MiB the writer spends 8-17%
    // less CPU per Galaxy_Create and reads stay in the OS page cache.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA temp_store=MEMORY; \
         PRAGMA cache_size=-4096;"
    ))
    .map_err(|e| not_ours(path, e))?;
    Ok(conn)
}

fn not_ours(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Incompatible(format!(
        "{} is not a Galaxy Forge engine database or is damaged ({e}); nothing was changed",
        path.display()
    ))
}

/// The instances table, clustered by id (`WITHOUT ROWID`, since schema
/// version 4): a commit finds and updates its row in one B-tree instead of
/// an id index plus the rowid table (about a tenth of the writer's CPU in
/// galaxy-bench). `{name}` lets the migration build it beside the old one.
const INSTANCES_TABLE: &str = "
CREATE TABLE {name} (
    instance_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    runtime_status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    custom_status TEXT,
    failure TEXT,
    created_at INTEGER NOT NULL,
    last_updated_at INTEGER NOT NULL,
    parent_instance_id TEXT,
    history_events INTEGER NOT NULL DEFAULT 0,
    history_bytes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
";

const INSTANCES_INDEXES: &str = "
CREATE INDEX instances_by_created ON instances(created_at, instance_id);
CREATE INDEX instances_by_status ON instances(runtime_status, created_at);
";

/// The other tables.
const SCHEMA: &str = "
CREATE TABLE history (
    instance_id TEXT NOT NULL,
    first_event_id INTEGER NOT NULL,
    events TEXT NOT NULL,
    PRIMARY KEY (instance_id, first_event_id)
) WITHOUT ROWID;
CREATE TABLE messages (
    instance_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    visible_at INTEGER,
    message TEXT NOT NULL,
    PRIMARY KEY (instance_id, id)
) WITHOUT ROWID;
CREATE TABLE activities (
    instance_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    execution_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, id)
) WITHOUT ROWID;
";

/// The lifecycle outbox (see [`crate::store::lifecycle`]); empty unless
/// the store was opened with it on. A plain rowid key, not AUTOINCREMENT
/// (which writes `sqlite_sequence` at every insert): a `seq` may come back
/// once its row is gone, and nothing outside the outbox remembers one.
const LIFECYCLE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS lifecycle_outbox (
    seq INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL,
    name TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    runtime_status TEXT NOT NULL,
    history_events INTEGER NOT NULL,
    at INTEGER NOT NULL,
    failure TEXT
);
";

/// Checks that the file is ours (or empty) and creates the schema if empty.
fn prepare_schema(conn: &Connection, path: &Path, config: &SqliteConfig) -> Result<(), StoreError> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| not_ours(path, e))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| not_ours(path, e))?;
    if app_id == 0 && tables == 0 {
        let instances = INSTANCES_TABLE.replace("{name}", "instances");
        conn.execute_batch(&format!(
            "BEGIN; {instances} {INSTANCES_INDEXES} {SCHEMA} {LIFECYCLE_TABLE} PRAGMA application_id={APPLICATION_ID}; \
             PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(db_err)?;
        return Ok(());
    }
    if app_id != APPLICATION_ID {
        return Err(StoreError::Incompatible(format!(
            "{} is a SQLite database of another application (application_id {app_id:#x}); refusing to use it",
            path.display()
        )));
    }
    let mut version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| not_ours(path, e))?;
    if version == 3 {
        migrate_3_to_4(conn)?;
        version = 4;
    }
    if version != SCHEMA_VERSION {
        return Err(StoreError::Incompatible(format!(
            "{} has schema version {version}; this build reads version {SCHEMA_VERSION}",
            path.display()
        )));
    }
    // Added after schema version 4 without a bump: older builds ignore it.
    conn.execute_batch(LIFECYCLE_TABLE).map_err(db_err)?;
    if config.verify_on_open {
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| not_ours(path, e))?;
        if check != "ok" {
            return Err(StoreError::Incompatible(format!(
                "{} is damaged ({check}); nothing was changed",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Version 3 kept instances in a rowid table with an id index; version 4
/// clusters them by id. One transaction: a crash leaves version 3 intact.
fn migrate_3_to_4(conn: &Connection) -> Result<(), StoreError> {
    const COLUMNS: &str = "instance_id, name, execution_id, runtime_status, input, output, custom_status, \
         failure, created_at, last_updated_at, parent_instance_id, history_events, history_bytes, attempts";
    let instances = INSTANCES_TABLE.replace("{name}", "instances_v4");
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {instances} \
         INSERT INTO instances_v4 ({COLUMNS}) SELECT {COLUMNS} FROM instances; \
         DROP TABLE instances; ALTER TABLE instances_v4 RENAME TO instances; {INSTANCES_INDEXES} \
         PRAGMA user_version=4; COMMIT;"
    ))
    .map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        StoreError::Incompatible(format!(
            "upgrading the store from schema version 3 failed: {e}"
        ))
    })
}

fn read_meta(tx: &Connection, id: &InstanceId) -> Result<Option<(Meta, u32)>, StoreError> {
    tx.prepare_cached(
        "SELECT runtime_status, execution_id, history_events, attempts FROM instances WHERE instance_id = ?1",
    )
    .map_err(db_err)?
    .query_row([id.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })
    .optional()
    .map_err(db_err)?
    .map(|(status, execution_id, len, attempts)| {
        Ok((Meta::from_row(&status, execution_id, len)?, attempts as u32))
    })
    .transpose()
}

/// Rebuilds the in-memory queues from the tables.
fn load_queues(conn: &Connection) -> Result<Queues, StoreError> {
    let mut q = Queues::default();
    let terminal: Vec<String> = RuntimeStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT instance_id, runtime_status, execution_id, history_events FROM instances \
             WHERE runtime_status NOT IN ({})",
            terminal.join(", ")
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (id, status, execution_id, len) = row.map_err(db_err)?;
        q.live.insert(
            InstanceId::from_stored(id),
            Meta::from_row(&status, execution_id, len)?,
        );
    }
    let mut stmt = conn
        .prepare(
            "SELECT m.id, m.instance_id, m.message, i.runtime_status, i.execution_id, i.history_events, i.attempts \
             FROM messages m JOIN instances i ON i.instance_id = m.instance_id ORDER BY m.id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (id, instance, message, status, execution_id, len, attempts) = row.map_err(db_err)?;
        let instance_id = InstanceId::from_stored(instance);
        let meta = Meta::from_row(&status, execution_id, len)?;
        q.entry(&instance_id, &meta).attempts = (attempts as u32).max(1);
        q.deliver(Delivery {
            instance_id,
            meta,
            message: StoredMessage {
                id,
                message: parse(&message)?,
            },
            fresh: false,
        });
    }
    let mut stmt = conn
        .prepare("SELECT id, instance_id, execution_id, task_id, name, input, attempts FROM activities ORDER BY id")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (id, instance, execution_id, task_id, name, input, attempts) = row.map_err(db_err)?;
        q.act_ready.push_back(ActRow {
            id,
            activity: Arc::new(NewActivity {
                instance_id: InstanceId::from_stored(instance),
                execution_id,
                task_id: task_id as u64,
                name,
                input: parse(&input)?,
            }),
            attempts: (attempts as u32).max(1),
        });
    }
    Ok(q)
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens (or creates) the store at `path`. Refuses a file that is not
    /// ours or is damaged, without writing to it, and a file another process
    /// has open.
    pub fn open_with(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let lock_path = lock_path(&path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Database(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        lock.try_lock().map_err(|_| {
            StoreError::Database(format!(
                "{} is in use by another process (lock file {})",
                path.display(),
                lock_path.display()
            ))
        })?;
        // Check the file before any pragma that writes (WAL mode does).
        if path.exists() {
            let probe =
                Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| not_ours(&path, e))?;
            let app_id: i32 = probe
                .query_row("PRAGMA application_id", [], |r| r.get(0))
                .map_err(|e| not_ours(&path, e))?;
            let tables: i64 = probe
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| not_ours(&path, e))?;
            if app_id != APPLICATION_ID && !(app_id == 0 && tables == 0) {
                return Err(StoreError::Incompatible(format!(
                    "{} is not a Galaxy Forge engine database; refusing to use it",
                    path.display()
                )));
            }
        }
        let conn = open_connection(&path, &config)?;
        prepare_schema(&conn, &path, &config)?;
        let queues = load_queues(&conn)?;
        let reader = open_connection(&path, &config)?;
        let max_id: i64 = conn
            .query_row(
                "SELECT max(coalesce((SELECT max(id) FROM messages), 0), \
                            coalesce((SELECT max(id) FROM activities), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        // WAL checkpoints run on their own thread and connection, beside
        // the writer, instead of inside the commit that crossed SQLite's
        // threshold (a tenth of the writer's CPU, plus fsyncs of the
        // database file on the commit path). The writer keeps a far
        // threshold as a backstop: a checkpoint that runs beside the writer
        // cannot finish while the writer keeps appending, so under
        // sustained load the log is only reset by the writer's own.
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_FRAMES};"
        ))
        .map_err(db_err)?;
        let ckpt_conn = open_connection(&path, &config)?;
        let (ckpt_tx, ckpt_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let checkpointer = std::thread::Builder::new()
            .name("durable-sqlite-checkpoint".into())
            .spawn(move || {
                while ckpt_rx.recv().is_ok() {
                    // Busy (the writer's own checkpoint) or failed: the next
                    // signal tries again.
                    let _ = ckpt_conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start checkpoint thread: {e}")))?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(queues),
            signal: Arc::new(WorkSignal::default()),
            next_id: std::sync::atomic::AtomicI64::new(max_id + 1),
            commits_since_checkpoint: std::sync::atomic::AtomicU32::new(0),
            checkpoint: Mutex::new(Some(ckpt_tx)),
            lifecycle: config.lifecycle_outbox.then(|| Arc::new(Notify::new())),
            lifecycle_written: std::sync::atomic::AtomicBool::new(false),
        });
        let writer_shared = shared.clone();
        let writer = GroupCommit::start("durable-sqlite-writer", conn, MAX_BATCH, move |c, b| {
            run_batch(c, b, &writer_shared)
        })
        .map_err(|e| StoreError::Database(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            shared,
            writer,
            checkpointer: Mutex::new(Some(checkpointer)),
            reader: Arc::new(Mutex::new(reader)),
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes queued writes and stops the writer thread. Later calls fail
    /// with [`StoreError::Closed`].
    pub fn close(&self) {
        let (mut held, orphans): (Vec<_>, bool) = {
            let mut q = self.shared.queues.lock().expect("queues lock");
            let held = q
                .held
                .drain()
                .map(|(row, (id, message))| (id, row, Json::new(message)))
                .collect();
            (held, !q.orphans.is_empty())
        };
        if !held.is_empty() || orphans {
            // In arrival order; the batch also deletes the orphans.
            held.sort_by_key(|(_, row, _)| *row);
            let _ = self.submit(Op::PersistHeld(held));
        }
        self.writer.close();
        self.shared
            .checkpoint
            .lock()
            .expect("checkpoint lock")
            .take();
        if let Some(t) = self.checkpointer.lock().expect("checkpoint lock").take() {
            let _ = t.join();
        }
    }

    fn wake_orchestrations(&self) {
        self.shared.signal.wake(true, false);
    }

    fn submit(&self, op: Op) -> Result<(), StoreError> {
        self.writer.submit(op).map_err(|_| StoreError::Closed)
    }

    /// Runs one write operation and waits for its commit: on this thread
    /// when the writer is idle, else in the writer's next group commit (see
    /// [`GroupCommit`]).
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .submit(make(tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The statements of one batch. Each is taken from rusqlite's statement
/// cache once per batch and kept until the batch ends: a cache lookup
/// hashes the whole SQL text and putting a statement back clears its
/// bindings, together about a fourteenth of the writer's CPU when every
/// statement went through the cache (14 per Galaxy_Create). Keyed by the
/// address and length of the `'static` SQL text.
struct Stmts<'c> {
    conn: &'c Connection,
    kept: RefCell<Vec<(usize, usize, CachedStatement<'c>)>>,
}

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            kept: RefCell::new(Vec::with_capacity(16)),
        }
    }

    /// The statement for `sql`, returned to this batch's set when dropped.
    fn prepare_cached(&self, sql: &'static str) -> rusqlite::Result<Kept<'_, 'c>> {
        let key = (sql.as_ptr() as usize, sql.len());
        let found = {
            let mut kept = self.kept.borrow_mut();
            kept.iter()
                .position(|(p, n, _)| (*p, *n) == key)
                .map(|i| kept.swap_remove(i).2)
        };
        let stmt = match found {
            Some(stmt) => stmt,
            None => self.conn.prepare_cached(sql)?,
        };
        Ok(Kept {
            owner: self,
            key,
            stmt: Some(stmt),
        })
    }
}

impl std::ops::Deref for Stmts<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// A statement on loan from [`Stmts`].
struct Kept<'s, 'c> {
    owner: &'s Stmts<'c>,
    key: (usize, usize),
    stmt: Option<CachedStatement<'c>>,
}

impl<'c> std::ops::Deref for Kept<'_, 'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &Self::Target {
        self.stmt.as_ref().expect("statement on loan")
    }
}

impl std::ops::DerefMut for Kept<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.stmt.as_mut().expect("statement on loan")
    }
}

impl Drop for Kept<'_, '_> {
    fn drop(&mut self) {
        if let Some(stmt) = self.stmt.take() {
            self.owner
                .kept
                .borrow_mut()
                .push((self.key.0, self.key.1, stmt));
        }
    }
}

/// Applies `batch` in one transaction, then updates the in-memory queues,
/// answers every operation and wakes the dispatchers.
fn run_batch(conn: &mut Connection, batch: Vec<Op>, shared: &Shared) {
    fail::fail_point!("sqlite-writer-batch");
    let mut claims = Vec::new();
    let orphans = std::mem::take(&mut shared.queues.lock().expect("queues lock").orphans);
    let (effects, outcomes, committed) = match conn.transaction() {
        Ok(txn) => {
            let tx = Stmts::new(&txn);
            let mut effects = Vec::with_capacity(batch.len());
            let mut outcomes = Vec::with_capacity(batch.len());
            // Rows of held results nobody will consume; if this batch
            // fails they stay, and run again after a restart.
            let mut fatal: Option<String> = orphans
                .iter()
                .try_for_each(|(id, row)| delete_activity_row(&tx, id, *row).map(|_| ()))
                .err()
                .map(|e| e.to_string());
            for op in batch {
                if let Some(msg) = &fatal {
                    outcomes.push(fail_op(op, msg.clone()));
                    continue;
                }
                let (effect, outcome, error) = apply_op(&tx, op, shared, &mut claims);
                fatal = error;
                effects.push(effect);
                outcomes.push(outcome);
            }
            // The statements go back to rusqlite's cache before the
            // transaction ends.
            drop(tx);
            let committed = match fatal {
                // Dropping the transaction rolls the whole batch back.
                Some(msg) => Err(StoreError::Database(msg)),
                None => txn.commit().map_err(db_err),
            };
            (effects, outcomes, committed)
        }
        Err(e) => {
            let err = db_err(e);
            let outcomes = batch
                .into_iter()
                .map(|op| fail_op(op, err.to_string()))
                .collect();
            (
                Vec::new(),
                outcomes,
                Err(StoreError::Database(err.to_string())),
            )
        }
    };
    let mut notify_orch = false;
    let mut notify_act = false;
    {
        let mut q = shared.queues.lock().expect("queues lock");
        if committed.is_ok() {
            let n = shared
                .commits_since_checkpoint
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n >= COMMITS_PER_CHECKPOINT {
                shared.commits_since_checkpoint.store(0, Ordering::Relaxed);
                if let Some(tx) = shared.checkpoint.lock().expect("checkpoint lock").as_ref() {
                    // Full: a checkpoint is already due.
                    let _ = tx.try_send(());
                }
            }
            for effect in effects {
                let (o, a) = apply_effect(&mut q, effect);
                notify_orch |= o;
                notify_act |= a;
            }
        }
        // After the effects: a claim whose operation landed has no lease
        // left to return.
        for claim in claims {
            let (o, a) = q.unclaim(claim);
            notify_orch |= o;
            notify_act |= a;
        }
    }
    for outcome in outcomes {
        let failed = committed.as_ref().err().map(|e| e.to_string());
        match outcome {
            Outcome::Unit(tx, r) => {
                let _ = tx.send(match failed {
                    Some(e) => Err(StoreError::Database(e)),
                    None => r,
                });
            }
            Outcome::Purge(tx, r) => {
                let _ = tx.send(match failed {
                    Some(e) => Err(StoreError::Database(e)),
                    None => r,
                });
            }
            Outcome::Count(tx, r) => {
                let _ = tx.send(match failed {
                    Some(e) => Err(StoreError::Database(e)),
                    None => r,
                });
            }
            Outcome::Silent => {}
        }
    }
    shared.signal.wake(notify_orch, notify_act);
    if shared.lifecycle_written.swap(false, Ordering::Relaxed) {
        if let (Ok(()), Some(n)) = (&committed, &shared.lifecycle) {
            n.notify_one();
        }
    }
}

fn fail_op(op: Op, msg: String) -> Outcome {
    let e = StoreError::Database(msg);
    match op {
        Op::Create(_, r)
        | Op::CreateWithTurn(_, _, r)
        | Op::Send(_, _, r)
        | Op::Commit(_, r)
        | Op::CompleteActivity(_, _, r)
        | Op::AckLifecycle(_, r) => Outcome::Unit(r, Err(e)),
        Op::Purge(_, r) => Outcome::Purge(r, Err(e)),
        Op::PurgeMany(_, _, r) => Outcome::Count(r, Err(e)),
        Op::MarkFetched { .. } | Op::PersistHeld(_) => Outcome::Silent,
    }
}

/// Applies one operation. Returns the database error that must abort the
/// batch, if any; every other error was found before the operation wrote.
fn apply_op(
    tx: &Stmts<'_>,
    op: Op,
    shared: &Shared,
    claims: &mut Vec<Claim>,
) -> (Effect, Outcome, Option<String>) {
    macro_rules! finish {
        ($result:expr, $wrap:expr, $reply:expr) => {{
            match $result {
                Ok((effect, value)) => (effect, $wrap($reply, Ok(value)), None),
                Err(e) => {
                    let fatal = matches!(e, StoreError::Database(_)).then(|| e.to_string());
                    (Effect::None, $wrap($reply, Err(e)), fatal)
                }
            }
        }};
    }
    match op {
        Op::Create(inst, r) => finish!(create(tx, shared, *inst), Outcome::Unit, r),
        Op::CreateWithTurn(inst, c, r) => {
            finish!(create_with_turn(tx, shared, *inst, *c), Outcome::Unit, r)
        }
        Op::Send(id, msg, r) => finish!(send(tx, shared, &id, msg, true), Outcome::Unit, r),
        Op::Commit(c, r) => finish!(commit(tx, *c, shared, claims), Outcome::Unit, r),
        Op::CompleteActivity(lock, msg, r) => {
            finish!(
                complete_activity(tx, &lock, msg, shared, claims),
                Outcome::Unit,
                r
            )
        }
        Op::Purge(id, r) => finish!(purge_one(tx, &id), Outcome::Purge, r),
        Op::PurgeMany(f, limit, r) => finish!(purge_many(tx, &f, limit), Outcome::Count, r),
        Op::AckLifecycle(seqs, r) => finish!(ack_lifecycle(tx, &seqs), Outcome::Unit, r),
        Op::MarkFetched {
            instances,
            activities,
        } => {
            let fatal = mark_fetched(tx, &instances, &activities)
                .err()
                .map(|e| e.to_string());
            (Effect::None, Outcome::Silent, fatal)
        }
        Op::PersistHeld(held) => {
            // Memory is not updated: the store is closing.
            let fatal = persist_held(tx, shared, held).err().map(|e| e.to_string());
            (Effect::None, Outcome::Silent, fatal)
        }
    }
}

type OpResult<T> = Result<(Effect, T), StoreError>;

fn insert_message(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &InstanceId,
    meta: Meta,
    message: Json<Message>,
) -> Result<Delivery, StoreError> {
    let Json {
        value: message,
        text,
    } = message;
    let message_id = shared.take_id();
    tx.prepare_cached(
        "INSERT INTO messages (instance_id, id, visible_at, message) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(db_err)?
    .execute(params![
        id.as_str(),
        message_id,
        message.visible_at.map(|t| t.timestamp_millis()),
        text
    ])
    .map_err(db_err)?;
    Ok(Delivery {
        instance_id: id.clone(),
        meta,
        message: StoredMessage {
            id: message_id,
            message,
        },
        fresh: false,
    })
}

/// Makes room for a new instance: a live one of that id is a conflict, a
/// finished one is deleted with its history and inbox.
fn clear_finished(tx: &Stmts<'_>, id: &InstanceId) -> Result<(), StoreError> {
    if let Some((meta, _)) = read_meta(tx, id)? {
        if !meta.status.is_terminal() {
            return Err(StoreError::Conflict(id.clone()));
        }
        for sql in [
            "DELETE FROM instances WHERE instance_id = ?1",
            "DELETE FROM history WHERE instance_id = ?1",
            "DELETE FROM messages WHERE instance_id = ?1",
        ] {
            tx.prepare_cached(sql)
                .map_err(db_err)?
                .execute([id.as_str()])
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Runs `insert` (an `INSERT .. ON CONFLICT DO NOTHING` of an instance
/// row); when the id is taken, clears a finished instance of that id (a
/// live one is a conflict) and inserts again. Ids are almost always new, so
/// the common case is one statement instead of a lookup and an insert.
fn insert_or_replace_finished(
    tx: &Stmts<'_>,
    id: &InstanceId,
    insert: impl Fn() -> Result<usize, StoreError>,
) -> Result<(), StoreError> {
    if insert()? == 1 {
        return Ok(());
    }
    clear_finished(tx, id)?;
    if insert()? == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(id.clone()))
    }
}

/// Inserts an instance's row (replacing a finished one of the same id)
/// and, unless its first turn comes with it, its start message.
fn insert_instance(
    tx: &Stmts<'_>,
    shared: &Shared,
    prepared: PreparedInstance,
) -> Result<Option<Delivery>, StoreError> {
    let PreparedInstance {
        inst,
        input,
        started,
    } = prepared;
    let created = inst.created_at.timestamp_millis();
    insert_or_replace_finished(tx, &inst.instance_id, || {
        tx.prepare_cached(
            "INSERT INTO instances (instance_id, name, execution_id, runtime_status, input, created_at, last_updated_at, parent_instance_id) \
             VALUES (?1, ?2, ?3, 'Pending', ?4, ?5, ?5, ?6) ON CONFLICT (instance_id) DO NOTHING",
        )
        .map_err(db_err)?
        .execute(params![
            inst.instance_id.as_str(),
            inst.name,
            inst.execution_id,
            input,
            created,
            inst.parent.as_ref().map(|p| p.instance_id.as_str().to_string()),
        ])
        .map_err(db_err)
    })?;
    let meta = Meta {
        status: RuntimeStatus::Pending,
        execution_id: inst.execution_id.clone(),
        history_len: 0,
    };
    let Some(started) = started else {
        return Ok(None);
    };
    let mut d = insert_message(tx, shared, &inst.instance_id, meta, started)?;
    d.fresh = true;
    Ok(Some(d))
}

fn create(tx: &Stmts<'_>, shared: &Shared, inst: PreparedInstance) -> OpResult<()> {
    let d = insert_instance(tx, shared, inst)?;
    Ok((Effect::Deliver(d.into_iter().collect()), ()))
}

/// Creates an instance and commits its first turn (see
/// [`Store::create_instance_with_turn`]): the turn's status update then
/// matches the row just inserted instead of a leased one.
fn create_with_turn(
    tx: &Stmts<'_>,
    shared: &Shared,
    inst: PreparedInstance,
    mut prepared: PreparedCommit,
) -> OpResult<()> {
    let id = inst.inst.instance_id.clone();
    prepared.commit.consumed.clear();
    prepared.commit.lock = WorkLock(String::new());
    let (effect, ()) = commit_body(tx, prepared, shared, Row::Insert(&inst))?;
    Ok((Effect::Created(id, Box::new(effect)), ()))
}

/// How a commit writes its instance's row.
enum Row<'a> {
    /// Updates the row, which must still be as the lease holder saw it
    /// (execution and history length); a row that changed is a lost lease.
    Update(Meta),
    /// Inserts the row of an instance created with this, its first turn,
    /// with the turn's status (no Pending row updated a moment later).
    Insert(&'a PreparedInstance),
}

/// Writes the lifecycle outbox rows of a commit whose instance row was
/// just written (its name comes from there).
fn write_lifecycle(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &str,
    before: Option<(RuntimeStatus, bool)>,
    s: &StatusUpdate,
) -> Result<(), StoreError> {
    let (before, same) = before.map_or((None, true), |(b, same)| (Some(b), same));
    for status in super::lifecycle::transitions(before, same, s.runtime_status) {
        let failure = (status == RuntimeStatus::Failed)
            .then(|| s.failure.as_ref().map(json))
            .flatten();
        tx.prepare_cached(
            "INSERT INTO lifecycle_outbox (instance_id, name, execution_id, runtime_status, history_events, at, failure) \
             SELECT instance_id, name, ?2, ?3, ?4, ?5, ?6 FROM instances WHERE instance_id = ?1",
        )
        .map_err(db_err)?
        .execute(params![
            id,
            s.execution_id,
            status.as_str(),
            s.history_events as i64,
            s.updated_at.timestamp_millis(),
            failure,
        ])
        .map_err(db_err)?;
        shared.lifecycle_written.store(true, Ordering::Relaxed);
    }
    Ok(())
}

fn ack_lifecycle(tx: &Stmts<'_>, seqs: &[i64]) -> OpResult<()> {
    let (min, max) = match (seqs.iter().min(), seqs.iter().max()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => return Ok((Effect::None, ())),
    };
    // What a relay acknowledges is a run of rows read in order: one range.
    let increasing = seqs.windows(2).all(|w| w[0] < w[1]);
    if increasing && (max - min + 1) as usize == seqs.len() {
        tx.prepare_cached("DELETE FROM lifecycle_outbox WHERE seq BETWEEN ?1 AND ?2")
            .map_err(db_err)?
            .execute([min, max])
            .map_err(db_err)?;
        return Ok((Effect::None, ()));
    }
    let mut del = tx
        .prepare_cached("DELETE FROM lifecycle_outbox WHERE seq = ?1")
        .map_err(db_err)?;
    for seq in seqs {
        del.execute([seq]).map_err(db_err)?;
    }
    Ok((Effect::None, ()))
}

/// Is this message one a terminal instance still takes?
fn accepted_when_terminal(status: RuntimeStatus, kind: &EventKind) -> bool {
    status == RuntimeStatus::Failed && matches!(kind, EventKind::Rewound { .. })
}

/// Sends a message. `external` sends (client requests) get errors for a
/// missing or finished instance; internal ones (results) are dropped.
fn send_inner(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &InstanceId,
    message: Json<Message>,
    external: bool,
) -> Result<Option<Delivery>, StoreError> {
    let Some((meta, _)) = read_meta(tx, id)? else {
        return if external {
            Err(StoreError::NotFound(id.clone()))
        } else {
            Ok(None)
        };
    };
    if meta.status.is_terminal() && !accepted_when_terminal(meta.status, &message.value.kind) {
        return if external {
            Err(StoreError::Finished(id.clone()))
        } else {
            Ok(None)
        };
    }
    insert_message(tx, shared, id, meta, message).map(Some)
}

fn send(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &InstanceId,
    message: Json<Message>,
    external: bool,
) -> OpResult<()> {
    let d = send_inner(tx, shared, id, message, external)?;
    Ok((Effect::Deliver(d.into_iter().collect()), ()))
}

fn commit(
    tx: &Stmts<'_>,
    prepared: PreparedCommit,
    shared: &Shared,
    claims: &mut Vec<Claim>,
) -> OpResult<()> {
    let (id, token) = (&prepared.commit.instance_id, &prepared.commit.lock.0);
    let held = shared
        .queues
        .lock()
        .expect("queues lock")
        .claim_instance(id, token);
    let Some(held) = held else {
        return Err(StoreError::LeaseLost);
    };
    claims.push(Claim::Instance(id.clone(), token.clone()));
    commit_body(tx, prepared, shared, Row::Update(held))
}

/// Writes a turn: its instance's row (see [`Row`]), history, consumed
/// messages, activities, children and outgoing messages.
fn commit_body(
    tx: &Stmts<'_>,
    prepared: PreparedCommit,
    shared: &Shared,
    row: Row<'_>,
) -> OpResult<()> {
    let PreparedCommit {
        commit: c,
        history,
        activities: new_activities,
        messages,
        children,
    } = prepared;
    let id = c.instance_id.as_str();
    let s = &c.status;
    let terminal = s.runtime_status.is_terminal();
    let before = match &row {
        Row::Update(held) => Some((held.status, held.execution_id == s.execution_id)),
        Row::Insert(_) => None,
    };
    match row {
        // The status update goes first and doubles as the lease check:
        // memory is only updated after a batch commits, so a purge or a
        // re-create earlier in this batch may have deleted or replaced the
        // row the holder worked on, and then it matches nothing. Nothing was
        // written yet, so failing here leaves the batch intact.
        Row::Update(held) => {
            let updated = tx
                .prepare_cached(
                "UPDATE instances SET runtime_status = ?2, execution_id = ?3, input = COALESCE(?4, input), output = ?5, \
                 custom_status = ?6, failure = ?7, history_events = ?8, history_bytes = ?9, last_updated_at = ?10, attempts = 0 \
                 WHERE instance_id = ?1 AND execution_id = ?11 AND history_events = ?12",
            )
            .map_err(db_err)?
            .execute(params![
                id,
                s.runtime_status.as_str(),
                s.execution_id,
                s.input.as_ref().map(json),
                s.output.as_ref().map(json),
                s.custom_status.as_ref().map(json),
                s.failure.as_ref().map(json),
                s.history_events as i64,
                s.history_bytes as i64,
                s.updated_at.timestamp_millis(),
                held.execution_id,
                held.history_len as i64,
            ])
            .map_err(db_err)?;
            if updated == 0 {
                return Err(StoreError::LeaseLost);
            }
        }
        Row::Insert(new) => {
            let inst = &new.inst;
            insert_or_replace_finished(tx, &inst.instance_id, || {
                tx.prepare_cached(
                "INSERT INTO instances (instance_id, name, execution_id, runtime_status, input, output, custom_status, \
                 failure, created_at, last_updated_at, parent_instance_id, history_events, history_bytes) \
                 VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ?6), ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (instance_id) DO NOTHING",
            )
            .map_err(db_err)?
            .execute(params![
                id,
                inst.name,
                s.execution_id,
                s.runtime_status.as_str(),
                s.input.as_ref().map(json),
                new.input,
                s.output.as_ref().map(json),
                s.custom_status.as_ref().map(json),
                s.failure.as_ref().map(json),
                inst.created_at.timestamp_millis(),
                s.updated_at.timestamp_millis(),
                inst.parent.as_ref().map(|p| p.instance_id.as_str().to_string()),
                s.history_events as i64,
                s.history_bytes as i64,
            ])
            .map_err(db_err)
            })?;
        }
    }
    if shared.lifecycle.is_some() {
        write_lifecycle(tx, shared, id, before, s)?;
    }
    if c.replace_history {
        tx.prepare_cached("DELETE FROM history WHERE instance_id = ?1")
            .map_err(db_err)?
            .execute([id])
            .map_err(db_err)?;
    }
    if let Some((first, events)) = history {
        tx.prepare_cached(
            "INSERT INTO history (instance_id, first_event_id, events) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err)?
        .execute(params![id, first as i64, events])
        .map_err(db_err)?;
    }
    {
        // A negative id is an activity result held in memory (see
        // `complete_activity_work`): consuming it deletes the activity row.
        let mut del = tx
            .prepare_cached("DELETE FROM messages WHERE instance_id = ?1 AND id = ?2")
            .map_err(db_err)?;
        let mut del_act = tx
            .prepare_cached("DELETE FROM activities WHERE instance_id = ?1 AND id = ?2")
            .map_err(db_err)?;
        for m in &c.consumed {
            if *m < 0 {
                del_act.execute(params![id, -m]).map_err(db_err)?;
            } else if !terminal {
                del.execute(params![id, m]).map_err(db_err)?;
            }
        }
    }
    if terminal {
        // A finished instance takes no more work: drop what waits for it.
        tx.prepare_cached("DELETE FROM messages WHERE instance_id = ?1")
            .map_err(db_err)?
            .execute([id])
            .map_err(db_err)?;
    }
    let mut activities = Vec::with_capacity(new_activities.len());
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO activities (instance_id, id, execution_id, task_id, name, input) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?;
        for (a, input) in new_activities {
            let activity_id = shared.take_id();
            ins.execute(params![
                a.instance_id.as_str(),
                activity_id,
                a.execution_id,
                a.task_id as i64,
                a.name,
                input
            ])
            .map_err(db_err)?;
            activities.push(ActRow {
                id: activity_id,
                activity: Arc::new(a),
                attempts: 0,
            });
        }
    }
    let mut deliveries = Vec::new();
    for child in children {
        let parent_link = child.inst.parent.clone();
        let created_at = child.inst.created_at;
        match insert_instance(tx, shared, child) {
            Ok(d) => deliveries.extend(d),
            Err(StoreError::Conflict(child_id)) => {
                let parent = parent_link
                    .as_ref()
                    .expect("sub-orchestrations have a parent");
                let message = Json::new(Message {
                    execution_id: Some(parent.execution_id.clone()),
                    visible_at: None,
                    sent_at: created_at,
                    kind: EventKind::SubOrchestrationFailed {
                        task_id: parent.task_id,
                        error: FailureDetails::new(
                            "Conflict",
                            format!("sub-orchestration instance '{child_id}' already exists and is not finished"),
                        ),
                    },
                });
                deliveries.extend(send_inner(tx, shared, &parent.instance_id, message, false)?);
            }
            Err(e) => return Err(e),
        }
    }
    for (to, message) in messages {
        deliveries.extend(send_inner(tx, shared, &to, message, false)?);
    }
    let meta = Meta {
        status: s.runtime_status,
        execution_id: s.execution_id.clone(),
        history_len: s.history_events,
    };
    Ok((
        Effect::Commit {
            instance_id: c.instance_id,
            token: c.lock.0,
            consumed: c.consumed,
            meta,
            cleared: terminal,
            deliveries,
            activities,
        },
        (),
    ))
}

fn complete_activity(
    tx: &Stmts<'_>,
    lock: &WorkLock,
    message: Json<Message>,
    shared: &Shared,
    claims: &mut Vec<Claim>,
) -> OpResult<()> {
    let row = shared
        .queues
        .lock()
        .expect("queues lock")
        .claim_activity(&lock.0);
    let Some(row) = row else {
        return Err(StoreError::LeaseLost);
    };
    claims.push(Claim::Activity(lock.0.clone()));
    let (row_id, instance_id) = (row.id, row.activity.instance_id.clone());
    if !delete_activity_row(tx, &instance_id, row_id)? {
        // Purged earlier in this batch: nothing left to complete.
        return Err(StoreError::LeaseLost);
    }
    let d = send_inner(tx, shared, &instance_id, message, false)?;
    Ok((
        Effect::ActivityDone {
            token: lock.0.clone(),
            deliveries: d.into_iter().collect(),
        },
        (),
    ))
}

fn purge_one(tx: &Stmts<'_>, id: &InstanceId) -> OpResult<PurgeOutcome> {
    match read_meta(tx, id)? {
        None => Ok((Effect::None, PurgeOutcome::NotFound)),
        Some((meta, _)) if !meta.status.is_terminal() => {
            Ok((Effect::None, PurgeOutcome::NotTerminal(meta.status)))
        }
        Some(_) => {
            delete_instance(tx, id.as_str())?;
            Ok((Effect::Purged(vec![id.clone()]), PurgeOutcome::Deleted))
        }
    }
}

fn delete_instance(tx: &Stmts<'_>, id: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM instances WHERE instance_id = ?1",
        "DELETE FROM history WHERE instance_id = ?1",
        "DELETE FROM messages WHERE instance_id = ?1",
        "DELETE FROM activities WHERE instance_id = ?1",
    ] {
        tx.prepare_cached(sql)
            .map_err(db_err)?
            .execute([id])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Builds the WHERE clause of a filter. Only terminal instances are purged,
/// so purge callers add that themselves.
fn filter_sql(f: &InstanceFilter, args: &mut Vec<rusqlite::types::Value>) -> String {
    use rusqlite::types::Value as V;
    let mut clauses = vec!["1=1".to_string()];
    if !f.statuses.is_empty() {
        let marks: Vec<_> = f
            .statuses
            .iter()
            .map(|s| {
                args.push(V::Text(s.as_str().to_string()));
                format!("?{}", args.len())
            })
            .collect();
        clauses.push(format!("runtime_status IN ({})", marks.join(",")));
    }
    if let Some(t) = f.created_from {
        args.push(V::Integer(t.timestamp_millis()));
        clauses.push(format!("created_at >= ?{}", args.len()));
    }
    if let Some(t) = f.created_to {
        args.push(V::Integer(t.timestamp_millis()));
        clauses.push(format!("created_at <= ?{}", args.len()));
    }
    if let Some(p) = &f.instance_id_prefix {
        args.push(V::Text(p.clone()));
        clauses.push(format!(
            "substr(instance_id, 1, length(?{n})) = ?{n}",
            n = args.len()
        ));
    }
    clauses.join(" AND ")
}

fn purge_many(tx: &Stmts<'_>, f: &InstanceFilter, limit: usize) -> OpResult<u64> {
    let mut args = Vec::new();
    let mut where_ = filter_sql(f, &mut args);
    where_.push_str(" AND runtime_status IN ('Completed','Failed','Canceled','Terminated')");
    let sql = format!("SELECT instance_id FROM instances WHERE {where_} LIMIT {limit}");
    let ids: Vec<String> = {
        let mut stmt = tx.prepare(&sql).map_err(db_err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(0))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    for id in &ids {
        delete_instance(tx, id)?;
    }
    let n = ids.len() as u64;
    Ok((
        Effect::Purged(ids.into_iter().map(InstanceId::from_stored).collect()),
        n,
    ))
}

fn mark_fetched(
    tx: &Stmts<'_>,
    instances: &[(InstanceId, u32)],
    activities: &[(InstanceId, i64, u32)],
) -> Result<(), StoreError> {
    let mut upd = tx
        .prepare_cached("UPDATE instances SET attempts = ?2 WHERE instance_id = ?1")
        .map_err(db_err)?;
    for (id, n) in instances {
        upd.execute(params![id.as_str(), n]).map_err(db_err)?;
    }
    let mut upd = tx
        .prepare_cached("UPDATE activities SET attempts = ?3 WHERE instance_id = ?1 AND id = ?2")
        .map_err(db_err)?;
    for (instance, id, n) in activities {
        upd.execute(params![instance.as_str(), id, n])
            .map_err(db_err)?;
    }
    Ok(())
}

fn persist_held(
    tx: &Stmts<'_>,
    shared: &Shared,
    held: Vec<(InstanceId, i64, Json<Message>)>,
) -> Result<(), StoreError> {
    for (id, row, message) in held {
        if delete_activity_row(tx, &id, row)? {
            send_inner(tx, shared, &id, message, false)?;
        }
    }
    Ok(())
}

/// Deletes one activity row; false when it was already gone (purged).
fn delete_activity_row(tx: &Stmts<'_>, id: &InstanceId, row: i64) -> Result<bool, StoreError> {
    let deleted = tx
        .prepare_cached("DELETE FROM activities WHERE instance_id = ?1 AND id = ?2")
        .map_err(db_err)?
        .execute(params![id.as_str(), row])
        .map_err(db_err)?;
    Ok(deleted > 0)
}

/// Applies a committed effect to memory; returns (new orchestration work,
/// new activity work).
fn apply_effect(q: &mut Queues, effect: Effect) -> (bool, bool) {
    match effect {
        Effect::None => (false, false),
        Effect::Deliver(ds) => {
            let any = !ds.is_empty();
            for d in ds {
                q.deliver(d);
            }
            (any, false)
        }
        Effect::Commit {
            instance_id,
            token,
            consumed,
            meta,
            cleared,
            deliveries,
            activities,
        } => {
            q.release(&instance_id, &token);
            for m in consumed.iter().filter(|m| **m < 0) {
                q.held.remove(&-m);
            }
            if cleared {
                q.live.remove(&instance_id);
            } else {
                q.live.insert(instance_id.clone(), meta.clone());
            }
            let mut orphans = Vec::new();
            if let Some(e) = q.entries.get_mut(&instance_id) {
                e.meta = meta;
                e.attempts = 0;
                e.visible.retain(|m| !consumed.contains(&m.id));
                if cleared {
                    // Held results it will never consume: their activity
                    // rows go with the writer's next batch.
                    orphans.extend(e.visible.iter().filter(|m| m.id < 0).map(|m| -m.id));
                    e.visible.clear();
                    if e.delayed > 0 {
                        q.delayed.retain(|_, (id, _)| *id != instance_id);
                        if let Some(e) = q.entries.get_mut(&instance_id) {
                            e.delayed = 0;
                        }
                    }
                }
            }
            for row in orphans {
                q.held.remove(&row);
                q.orphans.push((instance_id.clone(), row));
            }
            q.enqueue(&instance_id);
            let any_act = !activities.is_empty();
            q.act_ready.extend(activities);
            for d in deliveries {
                q.deliver(d);
            }
            q.forget_if_idle(&instance_id);
            (true, any_act)
        }
        Effect::ActivityDone { token, deliveries } => {
            if let Some((_, expires)) = q.act_locked.remove(&token) {
                q.act_leases.remove(&(expires, token));
            }
            let any = !deliveries.is_empty();
            for d in deliveries {
                q.deliver(d);
            }
            (any, false)
        }
        Effect::Purged(ids) => {
            // Forget the purged instances entirely, leased ones included
            // (their holders get LeaseLost rather than committing into
            // deleted rows), with the activities queued for them, whose rows
            // the purge deleted too.
            for id in &ids {
                q.reset(id);
                q.live.remove(id);
            }
            if !ids.is_empty() {
                let ids: std::collections::HashSet<_> = ids.into_iter().collect();
                q.act_ready
                    .retain(|r| !ids.contains(&r.activity.instance_id));
                let gone: Vec<(String, Instant)> = q
                    .act_locked
                    .iter()
                    .filter(|(_, (r, _))| ids.contains(&r.activity.instance_id))
                    .map(|(t, (_, expires))| (t.clone(), *expires))
                    .collect();
                for (token, expires) in gone {
                    q.act_locked.remove(&token);
                    q.act_leases.remove(&(expires, token));
                }
            }
            (false, false)
        }
        Effect::Created(id, then) => {
            q.reset(&id);
            apply_effect(q, *then)
        }
    }
}

fn status_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(InstanceStatus, ())> {
    let opt_json = |i: usize| -> rusqlite::Result<Option<Value>> {
        Ok(r.get::<_, Option<String>>(i)?
            .and_then(|s| serde_json::from_str(&s).ok()))
    };
    let status: String = r.get(3)?;
    Ok((
        InstanceStatus {
            instance_id: InstanceId::from_stored(r.get(0)?),
            name: r.get(1)?,
            execution_id: r.get(2)?,
            runtime_status: RuntimeStatus::parse(&status).unwrap_or(RuntimeStatus::Failed),
            input: opt_json(4)?.unwrap_or(Value::Null),
            output: opt_json(5)?,
            custom_status: opt_json(6)?,
            failure: r
                .get::<_, Option<String>>(7)?
                .and_then(|s| serde_json::from_str(&s).ok()),
            created_at: types::from_millis(r.get(8)?),
            last_updated_at: types::from_millis(r.get(9)?),
            parent_instance_id: r.get::<_, Option<String>>(10)?.map(InstanceId::from_stored),
            history_events: r.get::<_, i64>(11)? as u64,
            history_bytes: r.get::<_, i64>(12)? as u64,
            history: None,
        },
        (),
    ))
}

const STATUS_COLUMNS: &str =
    "instance_id, name, execution_id, runtime_status, input, output, custom_status, failure, \
     created_at, last_updated_at, parent_instance_id, history_events, history_bytes";

fn read_history(conn: &Connection, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT events FROM history WHERE instance_id = ?1 ORDER BY first_event_id")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([id], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(parse::<Vec<HistoryEvent>>(&row.map_err(db_err)?)?);
    }
    Ok(out)
}

fn encode_token(created_ms: i64, id: &InstanceId) -> String {
    format!("{created_ms}:{id}")
}

fn decode_token(token: &str) -> Option<(i64, String)> {
    let (ms, id) = token.split_once(':')?;
    Some((ms.parse().ok()?, id.to_string()))
}

#[async_trait]
impl Store for SqliteStore {
    fn work_signal(&self) -> Arc<WorkSignal> {
        self.shared.signal.clone()
    }

    async fn create_instance(&self, instance: NewInstance) -> Result<(), StoreError> {
        let prepared = Box::new(PreparedInstance::new(instance));
        self.call(|r| Op::Create(prepared, r)).await
    }

    async fn create_instance_with_turn(
        &self,
        instance: NewInstance,
        commit: TurnCommit,
    ) -> Result<bool, StoreError> {
        let inst = Box::new(PreparedInstance::with_turn(instance));
        let prepared = Box::new(PreparedCommit::new(commit));
        self.call(|r| Op::CreateWithTurn(inst, prepared, r))
            .await
            .map(|()| true)
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        let id = instance_id.clone();
        let message = Json::new(message);
        self.call(|r| Op::Send(id, message, r)).await
    }

    async fn fetch_orchestration_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let mut items = Vec::new();
        let mut marks = Vec::new();
        {
            let mut q = self.shared.queues.lock().expect("queues lock");
            q.promote();
            // Running instances first, but a quarter of each fetch (at least
            // one) is kept for new ones, so a stream of continuing work
            // (eternal orchestrations, timers) cannot starve starts.
            let new_share = max.div_ceil(4);
            let mut taken_new = 0;
            while items.len() < max {
                let take_new = taken_new < new_share
                    && (q.ready.is_empty() || items.len() + new_share - taken_new >= max);
                let next = if take_new {
                    q.ready_new.pop_front().or_else(|| q.ready.pop_front())
                } else {
                    q.ready.pop_front().or_else(|| q.ready_new.pop_front())
                };
                let Some(id) = next else { break };
                if take_new {
                    taken_new += 1;
                }
                let token = q.token('o');
                let expires = Instant::now() + lease;
                let Some(e) = q.entries.get_mut(&id) else {
                    continue;
                };
                e.queued = false;
                if e.lease.is_some() || e.visible.is_empty() {
                    continue;
                }
                e.lease = Some(Lease {
                    token: token.clone(),
                    expires,
                    committing: false,
                });
                e.attempts += 1;
                if e.attempts >= 2 {
                    marks.push((id.clone(), e.attempts));
                }
                items.push(OrchestrationWorkItem {
                    lock: WorkLock(token.clone()),
                    instance_id: id.clone(),
                    runtime_status: e.meta.status,
                    execution_id: e.meta.execution_id.clone(),
                    history_len: e.meta.history_len,
                    messages: e.visible.clone(),
                    attempts: e.attempts,
                });
                q.leases.insert((expires, token), id);
            }
        }
        if !marks.is_empty() {
            let _ = self.submit(Op::MarkFetched {
                instances: marks,
                activities: Vec::new(),
            });
        }
        Ok(items)
    }

    async fn load_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = instance_id.as_str().to_string();
        self.read(move |c| read_history(c, &id)).await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<(), StoreError> {
        let prepared = Box::new(PreparedCommit::new(commit));
        self.call(|r| Op::Commit(prepared, r)).await
    }

    async fn abandon_orchestration_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let mut q = self.shared.queues.lock().expect("queues lock");
        let found = q
            .entries
            .iter()
            .find(|(_, e)| {
                // A lease claimed by an in-flight commit is not abandoned
                // under it.
                e.lease
                    .as_ref()
                    .is_some_and(|l| l.token == lock.0 && !l.committing)
            })
            .map(|(id, _)| id.clone());
        let Some(id) = found else {
            return Err(StoreError::LeaseLost);
        };
        q.release(&id, &lock.0);
        // Re-lease it to nobody until the delay has passed: a lease that
        // expires then puts it back in the queue.
        let expires = Instant::now() + delay;
        let token = q.token('a');
        if let Some(e) = q.entries.get_mut(&id) {
            e.lease = Some(Lease {
                token: token.clone(),
                expires,
                committing: false,
            });
        }
        q.leases.insert((expires, token), id);
        drop(q);
        self.shared.signal.orchestrations.notify_one();
        Ok(())
    }

    async fn fetch_activity_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        let mut items = Vec::new();
        let mut marks = Vec::new();
        {
            let mut q = self.shared.queues.lock().expect("queues lock");
            q.promote();
            while items.len() < max {
                let Some(mut row) = q.act_ready.pop_front() else {
                    break;
                };
                row.attempts += 1;
                let token = q.token('t');
                let expires = Instant::now() + lease;
                if row.attempts >= 2 {
                    marks.push((row.activity.instance_id.clone(), row.id, row.attempts));
                }
                items.push(ActivityWorkItem {
                    lock: WorkLock(token.clone()),
                    activity: Arc::clone(&row.activity),
                    attempts: row.attempts,
                });
                q.act_leases.insert((expires, token.clone()), ());
                q.act_locked.insert(token, (row, expires));
            }
        }
        if !marks.is_empty() {
            let _ = self.submit(Op::MarkFetched {
                instances: Vec::new(),
                activities: marks,
            });
        }
        Ok(items)
    }

    /// When memory knows the instance is live, the result is delivered
    /// from memory: no write and no commit. The activity row stays until
    /// the turn that consumes the result deletes it in its own commit (as a
    /// message id that is the row id negated); a crash before that turn
    /// runs the activity again, which at-least-once allows, and a clean
    /// [`SqliteStore::close`] writes held results out. This took 9 of the
    /// 22 statements of a Galaxy_Create and two commits off its path.
    /// Otherwise (finished or unknown instance, lost lease) the writer
    /// completes it as before.
    async fn complete_activity_work(
        &self,
        lock: &WorkLock,
        result: Message,
    ) -> Result<(), StoreError> {
        self.complete_activities(vec![(lock.clone(), result)])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Holds every result it can under one lock, so they become visible
    /// together (one turn for all); the others go to the writer.
    async fn complete_activities(
        &self,
        items: Vec<(WorkLock, Message)>,
    ) -> Vec<Result<(), StoreError>> {
        let mut out: Vec<Result<(), StoreError>> = Vec::with_capacity(items.len());
        let mut rest = Vec::new();
        {
            let mut q = self.shared.queues.lock().expect("queues lock");
            for (i, (lock, result)) in items.into_iter().enumerate() {
                out.push(Ok(()));
                if let Some(result) = q.hold_result(&lock, result) {
                    rest.push((i, lock, result));
                }
            }
        }
        if rest.len() < out.len() {
            self.wake_orchestrations();
        }
        for (i, lock, result) in rest {
            let result = Json::new(result);
            out[i] = self.call(|r| Op::CompleteActivity(lock, result, r)).await;
        }
        out
    }

    async fn abandon_activity_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let mut q = self.shared.queues.lock().expect("queues lock");
        // A lease claimed by an in-flight completion is not abandoned under it.
        if !q.act_lease_free(&lock.0) {
            return Err(StoreError::LeaseLost);
        }
        let Some((row, expires)) = q.act_locked.remove(&lock.0) else {
            return Err(StoreError::LeaseLost);
        };
        q.act_leases.remove(&(expires, lock.0.clone()));
        let token = q.token('a');
        let until = Instant::now() + delay;
        q.act_leases.insert((until, token.clone()), ());
        q.act_locked.insert(token, (row, until));
        Ok(())
    }

    async fn next_wake_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let q = self.shared.queues.lock().expect("queues lock");
        let delayed = q
            .delayed
            .keys()
            .next()
            .map(|(ms, _)| types::from_millis(*ms));
        let now = Instant::now();
        let lease = q
            .leases
            .keys()
            .next()
            .into_iter()
            .chain(q.act_leases.keys().next())
            .map(|(t, _)| *t)
            .min()
            .map(|t| {
                types::now()
                    + chrono::Duration::from_std(t.saturating_duration_since(now))
                        .unwrap_or_default()
            });
        Ok(match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn get_instance(
        &self,
        instance_id: &InstanceId,
        with_history: bool,
    ) -> Result<Option<InstanceStatus>, StoreError> {
        let id = instance_id.as_str().to_string();
        self.read(move |c| {
            let sql = format!("SELECT {STATUS_COLUMNS} FROM instances WHERE instance_id = ?1");
            let status = c
                .prepare_cached(&sql)
                .map_err(db_err)?
                .query_row([&id], status_from_row)
                .optional()
                .map_err(db_err)?;
            let Some((mut status, ())) = status else {
                return Ok(None);
            };
            if with_history {
                status.history = Some(read_history(c, &id)?);
            }
            Ok(Some(status))
        })
        .await
    }

    async fn list_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let query = query.clone();
        self.read(move |c| {
            let mut args = Vec::new();
            let mut where_ = filter_sql(&query.filter, &mut args);
            if let Some(token) = &query.continuation {
                let (ms, id) = decode_token(token)
                    .ok_or_else(|| StoreError::Database("invalid continuation token".into()))?;
                args.push(rusqlite::types::Value::Integer(ms));
                let a = args.len();
                args.push(rusqlite::types::Value::Text(id));
                let b = args.len();
                where_.push_str(&format!(
                    " AND (created_at < ?{a} OR (created_at = ?{a} AND instance_id < ?{b}))"
                ));
            }
            let size = query.page_size.clamp(1, 1000);
            // Without inputs, the column is read as JSON null: nothing of
            // a large input is loaded.
            let columns = if query.with_input {
                STATUS_COLUMNS.to_string()
            } else {
                STATUS_COLUMNS.replacen("input,", "'null' AS input,", 1)
            };
            let sql = format!(
                "SELECT {columns} FROM instances WHERE {where_} ORDER BY created_at DESC, instance_id DESC LIMIT {}",
                size + 1
            );
            let mut stmt = c.prepare(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), status_from_row)
                .map_err(db_err)?;
            let mut page = PageBuilder::new(size, PAGE_PAYLOAD_BYTES);
            for row in rows {
                if !page.push_instance(row.map_err(db_err)?.0) {
                    break;
                }
            }
            Ok(page.instance_page(|s| encode_token(s.created_at.timestamp_millis(), &s.instance_id)))
        })
        .await
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<PurgeOutcome, StoreError> {
        let id = instance_id.clone();
        self.call(|r| Op::Purge(id, r)).await
    }

    async fn purge_instances(
        &self,
        filter: &InstanceFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let f = filter.clone();
        self.call(|r| Op::PurgeMany(f, limit.max(1), r)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT runtime_status, count(*) FROM instances GROUP BY runtime_status",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (s, n) = row.map_err(db_err)?;
                if let Some(s) = RuntimeStatus::parse(&s) {
                    out.push((s, n as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let q = self.shared.queues.lock().expect("queues lock");
        let orch = q.entries.values().filter(|e| !e.visible.is_empty()).count() as u64;
        Ok((orch, (q.act_ready.len() + q.act_locked.len()) as u64))
    }

    fn lifecycle_signal(&self) -> Option<Arc<Notify>> {
        self.shared.lifecycle.clone()
    }

    fn health(&self) -> Result<(), String> {
        if self.shared.queues.is_poisoned() {
            return Err("the engine store's queues lock is poisoned (a panic)".into());
        }
        self.writer
            .alive()
            .map_err(|e| format!("the engine store's writer: {e}"))
    }

    async fn lifecycle_outbox(&self, limit: usize) -> Result<Vec<LifecycleEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, instance_id, name, execution_id, runtime_status, history_events, at, failure \
                     FROM lifecycle_outbox ORDER BY seq LIMIT ?1",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, instance_id, name, execution_id, status, history_events, at, failure) =
                    row.map_err(db_err)?;
                out.push(LifecycleEvent {
                    seq,
                    instance_id,
                    name,
                    execution_id,
                    runtime_status: RuntimeStatus::parse(&status)
                        .unwrap_or(RuntimeStatus::Failed),
                    history_events: history_events as u64,
                    at: types::from_millis(at),
                    failure: failure.as_deref().map(parse).transpose()?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ack_lifecycle(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.call(|r| Op::AckLifecycle(seqs, r)).await
    }
}
