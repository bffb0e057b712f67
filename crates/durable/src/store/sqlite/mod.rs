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
//! - **Checkpoints run beside the writer** ([`crate::store::checkpoint`],
//!   through the writer's [`GroupCommit`]): a checkpoint thread with its
//!   own connection copies the log into the database file every 32
//!   commits (PASSIVE), so commits carry no checkpoint; under sustained
//!   load the writer checkpoints itself once the log passes 64 MiB
//!   (ARCHITECTURE.md, "The SQLite store").
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

use super::common::{
    decode_token, encode_token, json, parse, parse_status, terminal_list, CappedHistory,
    HistoryCap, StatusRead,
};
use super::group_commit::GroupCommit;
use super::page::{PageBuilder, PAGE_PAYLOAD_BYTES};
use super::{
    ActivityWorkItem, LifecycleEvent, NewActivity, NewInstance, OrchestrationWorkItem,
    PurgeOutcome, StatusUpdate, Store, StoreError, StoredMessage, TurnCommit, WorkKind, WorkLock,
    WorkSignal,
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
            status: parse_status(status)?,
            execution_id,
            history_len: history_events as u64,
        })
    }
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
        // the writer, not inside the commit that crossed SQLite's
        // threshold (a tenth of the writer's CPU, plus fsyncs of the
        // database file on the commit path): see `store::checkpoint`.
        let ckpt_conn = open_connection(&path, &config)?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(queues),
            signal: Arc::new(WorkSignal::default()),
            next_id: std::sync::atomic::AtomicI64::new(max_id + 1),
            lifecycle: config.lifecycle_outbox.then(|| Arc::new(Notify::new())),
            lifecycle_written: std::sync::atomic::AtomicBool::new(false),
        });
        let writer_shared = shared.clone();
        let writer = GroupCommit::start_with_checkpoints(
            "durable-sqlite-writer",
            conn,
            ckpt_conn,
            MAX_BATCH,
            move |c, b| run_batch(c, b, &writer_shared),
        )
        .map_err(|e| StoreError::Database(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            shared,
            writer,
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

mod batch;
mod ops;
mod queues;
mod reads;
mod schema;
mod writes;

use batch::*;
use queues::*;
use reads::*;
use schema::*;
use writes::*;
