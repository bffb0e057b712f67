//! The `galaxies` table: one row per galaxy, in its own SQLite file.
//!
//! Rows are keyed like Azure Table Storage entities (partition key, row
//! key). The row key is chosen by the orchestration (replay-safe), so the
//! writing activity can run twice and still leave one row: the insert is
//! `INSERT OR IGNORE` on the key.
//!
//! Writes go through the engine's [`GroupCommit`]: a writer thread commits
//! whatever has queued up in one transaction, so thousands of concurrent
//! activities share each fsync, and a write that finds the writer idle
//! commits on its caller's thread without the hand-off.
//!
//! A *tracked* table (a device's, [`GalaxyTable::open_tracked`]) also keeps
//! the sync outbox in the same file: every local change writes its outbox
//! row in the same transaction as the galaxy row (an activity that runs
//! twice inserts nothing the second time, so it makes one mutation). The
//! sync side of the table is [`crate::replica`]; other writes than inserts
//! run as [`GalaxyTable::write`] jobs, each in its own savepoint of the
//! group's transaction.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use durable::store::group_commit::GroupCommit;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::coords::Coords;

/// Marks a galaxies database as ours ("GFG1").
const APPLICATION_ID: i32 = 0x4746_4731;
const MAX_BATCH: usize = 4096;

/// Errors of the galaxies table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file is not a galaxies database, or is damaged.
    #[error("{0}")]
    Incompatible(String),
    /// SQLite failed.
    #[error("galaxies database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The table was closed.
    #[error("the galaxies table is closed")]
    Closed,
    /// A continuation token that this table did not hand out.
    #[error("invalid continuation token")]
    BadContinuation,
    /// PostgreSQL failed (the table of [`crate::pg_table`]).
    #[error("galaxies database error: {0}")]
    Postgres(String),
    /// A batch's transaction failed; nothing of it was written.
    #[error("galaxies commit failed: {0}")]
    Commit(String),
    /// A value that cannot be stored (e.g. a synced body without a name).
    #[error("{0}")]
    Invalid(String),
    /// A table read on the blocking pool did not finish (runtime shutting
    /// down, or the read panicked).
    #[error("galaxies table read failed: {0}")]
    Interrupted(String),
}

/// One galaxy, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Galaxy {
    /// Partition key (the player's realm; `galaxies` by default).
    pub partition_key: String,
    /// Row key: a UUID made by the creating orchestration.
    pub row_key: String,
    /// When the row was written.
    pub timestamp: DateTime<Utc>,
    /// The galaxy's name.
    pub name: String,
    /// Where it is.
    pub coords: Coords,
    /// The orchestration instance that created it.
    pub instance_id: String,
    /// Its version in the player's cloud data (0: never synced).
    #[serde(default)]
    pub version: u64,
    /// The device that made it, when another device did (empty: this one).
    #[serde(default)]
    pub origin: String,
}

/// A page of galaxies and the token of the next page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GalaxyPage {
    /// Galaxies in key order.
    pub galaxies: Vec<Galaxy>,
    /// Present when more rows match.
    pub continuation: Option<String>,
}

/// What a write job changed beyond its rows, applied once its transaction
/// has committed.
#[derive(Debug, Default)]
pub struct Effects {
    /// Outbox rows added (positive) or removed (negative).
    pub outbox_delta: i64,
}

type JobResult = Result<Box<dyn Any + Send>, TableError>;
type Job =
    Box<dyn FnOnce(&Connection, &mut Effects) -> Result<Box<dyn Any + Send>, TableError> + Send>;

enum Write {
    Insert(Galaxy, oneshot::Sender<Result<bool, TableError>>),
    Job(Job, oneshot::Sender<JobResult>),
}

/// The galaxies table. See the module docs.
pub struct GalaxyTable {
    writer: GroupCommit<Write>,
    reader: Mutex<Connection>,
    tracked: bool,
    pending: std::sync::Arc<Pending>,
}

/// The outbox's size, kept in memory and announced after each commit that
/// changes it.
pub(crate) struct Pending {
    count: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Pending {
    fn apply(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let now = if delta > 0 {
            self.count.fetch_add(delta as u64, Ordering::SeqCst) + delta as u64
        } else {
            let d = delta.unsigned_abs();
            self.count.fetch_sub(d, Ordering::SeqCst).saturating_sub(d)
        };
        self.changed.send_replace(now);
    }
}

impl std::fmt::Debug for GalaxyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GalaxyTable").finish_non_exhaustive()
    }
}

fn connect(path: &Path, durable: bool) -> Result<Connection, TableError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let sync = if durable { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};"
    ))
    .map_err(|e| not_ours(path, e))?;
    Ok(conn)
}

fn not_ours(path: &Path, e: impl std::fmt::Display) -> TableError {
    TableError::Incompatible(format!(
        "{} is not a galaxies database or is damaged ({e}); nothing was changed",
        path.display()
    ))
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Galaxy> {
    Ok(Galaxy {
        partition_key: r.get(0)?,
        row_key: r.get(1)?,
        timestamp: DateTime::from_timestamp_millis(r.get(2)?).unwrap_or_default(),
        name: r.get(3)?,
        coords: Coords {
            x: r.get(4)?,
            y: r.get(5)?,
            z: r.get(6)?,
        },
        instance_id: r.get(7)?,
        version: r.get::<_, i64>(8)? as u64,
        origin: r.get(9)?,
    })
}

const COLUMNS: &str =
    "partition_key, row_key, timestamp, name, x, y, z, instance_id, version, origin";

impl GalaxyTable {
    /// Opens or creates the table at `path`. `durable` chooses
    /// `synchronous=FULL` (survives power loss) over `NORMAL`.
    pub fn open(path: impl AsRef<Path>, durable: bool) -> Result<Self, TableError> {
        Self::open_with(path.as_ref(), durable, false)
    }

    /// Opens a device's table: like [`open`](Self::open), and every local
    /// change also writes its sync outbox row in the same transaction.
    pub fn open_tracked(path: impl AsRef<Path>, durable: bool) -> Result<Self, TableError> {
        Self::open_with(path.as_ref(), durable, true)
    }

    fn open_with(path: &Path, durable: bool, tracked: bool) -> Result<Self, TableError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| not_ours(path, e))?;
        }
        if path.exists() {
            let probe =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| not_ours(path, e))?;
            let (app, tables): (i32, i64) = probe
                .query_row(
                    "SELECT (SELECT application_id FROM pragma_application_id), (SELECT count(*) FROM sqlite_master)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| not_ours(path, e))?;
            if app != APPLICATION_ID && !(app == 0 && tables == 0) {
                return Err(not_ours(path, format!("application_id {app:#x}")));
            }
        }
        let conn = connect(path, durable)?;
        // Earlier versions kept an index on `name`. No query can use it
        // (the name filter is a prefix test applied while paging in key
        // order) and random names made every insert dirty its own index
        // page, so it is dropped from existing files.
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS galaxies (
                partition_key TEXT NOT NULL,
                row_key TEXT NOT NULL,
                timestamp INTEGER NOT NULL,
                name TEXT NOT NULL,
                x INTEGER NOT NULL, y INTEGER NOT NULL, z INTEGER NOT NULL,
                instance_id TEXT NOT NULL,
                PRIMARY KEY (partition_key, row_key)
            ) WITHOUT ROWID;
            DROP INDEX IF EXISTS galaxies_by_name;
            PRAGMA application_id = {APPLICATION_ID};"
        ))?;
        crate::replica::migrate(&conn)?;
        let outbox: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        let pending = std::sync::Arc::new(Pending {
            count: AtomicU64::new(outbox as u64),
            changed: watch::channel(outbox as u64).0,
        });
        let reader = connect(path, durable)?;
        let batch_pending = pending.clone();
        let writer = GroupCommit::start("galaxies-writer", conn, MAX_BATCH, move |conn, batch| {
            write_batch(conn, batch, tracked, &batch_pending)
        })
        .map_err(|e| not_ours(path, e))?;
        Ok(Self {
            writer,
            reader: Mutex::new(reader),
            tracked,
            pending,
        })
    }

    /// Whether local changes write outbox rows.
    pub fn is_tracked(&self) -> bool {
        self.tracked
    }

    /// Outbox rows waiting to be pushed.
    pub fn pending_changes(&self) -> u64 {
        self.pending.count.load(Ordering::SeqCst)
    }

    /// The outbox size, announced after every commit that changes it (a
    /// local write or an acknowledged push).
    pub fn watch_pending(&self) -> watch::Receiver<u64> {
        self.pending.changed.subscribe()
    }

    /// Runs `job` on the write connection, in its own savepoint of the
    /// group's transaction, and returns its result once that transaction
    /// has committed (an error rolls back the job's writes only).
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection, &mut Effects) -> Result<T, TableError> + Send + 'static,
    ) -> Result<T, TableError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn, effects| {
            job(conn, effects).map(|v| Box::new(v) as Box<dyn Any + Send>)
        });
        self.writer
            .submit(Write::Job(job, tx))
            .map_err(|_| TableError::Closed)?;
        let value = rx.await.map_err(|_| TableError::Closed)??;
        Ok(*value
            .downcast::<T>()
            .expect("a write job answers with its own type"))
    }

    /// Runs `read` on the read connection (committed data only).
    pub fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, TableError>,
    ) -> Result<T, TableError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        read(&conn)
    }

    /// Inserts a galaxy unless a row with its keys exists. Returns whether
    /// this call wrote it. Durable when it returns.
    pub async fn insert(&self, galaxy: Galaxy) -> Result<bool, TableError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .submit(Write::Insert(galaxy, tx))
            .map_err(|_| TableError::Closed)?;
        rx.await.map_err(|_| TableError::Closed)?
    }

    /// One galaxy by its keys.
    pub fn get(&self, partition_key: &str, row_key: &str) -> Result<Option<Galaxy>, TableError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let row = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM galaxies WHERE partition_key = ?1 AND row_key = ?2"
            ))?
            .query_row([partition_key, row_key], from_row)
            .optional()?;
        Ok(row)
    }

    /// A page of galaxies in key order, optionally only names starting with
    /// `name_prefix` (case-sensitive).
    pub fn list(
        &self,
        name_prefix: Option<&str>,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<GalaxyPage, TableError> {
        let size = page_size.clamp(1, 1000);
        let (after_pk, after_rk) = match continuation {
            Some(t) => {
                let (pk, rk) = t.split_once('|').ok_or(TableError::BadContinuation)?;
                (pk.to_string(), rk.to_string())
            }
            None => (String::new(), String::new()),
        };
        let prefix = name_prefix.unwrap_or("");
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM galaxies \
             WHERE (partition_key > ?1 OR (partition_key = ?1 AND row_key > ?2)) \
               AND substr(name, 1, length(?3)) = ?3 \
             ORDER BY partition_key, row_key LIMIT ?4"
        ))?;
        let mut galaxies = stmt
            .query_map(
                params![after_pk, after_rk, prefix, (size + 1) as i64],
                from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let continuation = if galaxies.len() > size {
            galaxies.truncate(size);
            galaxies
                .last()
                .map(|g| format!("{}|{}", g.partition_key, g.row_key))
        } else {
            None
        };
        Ok(GalaxyPage {
            galaxies,
            continuation,
        })
    }

    /// Number of galaxies.
    pub fn count(&self) -> Result<u64, TableError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.query_row("SELECT count(*) FROM galaxies", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Instances that wrote more than one row (should be none).
    pub fn duplicate_instances(&self) -> Result<Vec<String>, TableError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare("SELECT instance_id FROM galaxies GROUP BY instance_id HAVING count(*) > 1")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Whether the writer still works (see `GroupCommit::alive`).
    pub fn health(&self) -> Result<(), String> {
        self.writer.alive()
    }

    /// Finishes queued writes and stops the writer thread.
    pub fn close(&self) {
        self.writer.close();
    }
}

impl Drop for GalaxyTable {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a batch owes each writer once it commits.
enum Reply {
    Insert(oneshot::Sender<Result<bool, TableError>>, bool),
    Job(oneshot::Sender<JobResult>, JobResult),
}

/// Applies a batch in one transaction and answers each writer after the
/// commit (or with the commit's error).
fn write_batch(conn: &mut Connection, batch: Vec<Write>, tracked: bool, pending: &Pending) {
    let mut effects = Effects::default();
    let mut replies = Vec::with_capacity(batch.len());
    let apply = || -> Result<(), TableError> {
        let tx = conn.transaction()?;
        for write in batch {
            match write {
                Write::Insert(g, reply) => {
                    let inserted = match insert_row(&tx, &g) {
                        Ok(inserted) => inserted,
                        Err(e) => {
                            replies.push(Reply::Insert(reply, false));
                            return Err(e);
                        }
                    };
                    if inserted && tracked {
                        if let Err(e) = crate::replica::enqueue_put(&tx, &g) {
                            replies.push(Reply::Insert(reply, false));
                            return Err(e);
                        }
                        effects.outbox_delta += 1;
                    }
                    replies.push(Reply::Insert(reply, inserted));
                }
                Write::Job(job, reply) => {
                    tx.execute_batch("SAVEPOINT job")?;
                    let mut mine = Effects::default();
                    let outcome = job(&tx, &mut mine);
                    if outcome.is_ok() {
                        tx.execute_batch("RELEASE job")?;
                        effects.outbox_delta += mine.outbox_delta;
                    } else {
                        tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                    }
                    replies.push(Reply::Job(reply, outcome));
                }
            }
        }
        tx.commit()?;
        Ok(())
    };
    match apply() {
        Ok(()) => {
            pending.apply(effects.outbox_delta);
            for reply in replies {
                match reply {
                    Reply::Insert(r, inserted) => {
                        let _ = r.send(Ok(inserted));
                    }
                    Reply::Job(r, outcome) => {
                        let _ = r.send(outcome);
                    }
                }
            }
        }
        Err(e) => {
            // The transaction rolled back: nothing of the batch happened.
            // Writers not reached see their reply dropped (`Closed`).
            let msg = e.to_string();
            for reply in replies {
                let err = TableError::Commit(msg.clone());
                match reply {
                    Reply::Insert(r, _) => {
                        let _ = r.send(Err(err));
                    }
                    Reply::Job(r, _) => {
                        let _ = r.send(Err(err));
                    }
                }
            }
        }
    }
}

/// `INSERT OR IGNORE` of one galaxy; whether it was written.
pub(crate) fn insert_row(conn: &Connection, g: &Galaxy) -> Result<bool, TableError> {
    let n = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO galaxies ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))?
        .execute(params![
            g.partition_key,
            g.row_key,
            g.timestamp.timestamp_millis(),
            g.name,
            g.coords.x,
            g.coords.y,
            g.coords.z,
            g.instance_id,
            g.version as i64,
            g.origin
        ])?;
    Ok(n == 1)
}

/// One galaxy of the default partition by its row key, on any connection.
pub(crate) fn get_local(conn: &Connection, row_key: &str) -> Result<Option<Galaxy>, TableError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM galaxies WHERE partition_key = ?1 AND row_key = ?2"
        ))?
        .query_row([crate::workload::DEFAULT_PARTITION, row_key], from_row)
        .optional()?)
}
