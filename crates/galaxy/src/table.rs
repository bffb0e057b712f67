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

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use durable::store::group_commit::GroupCommit;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

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
}

/// A page of galaxies and the token of the next page.
#[derive(Clone, Debug, PartialEq)]
pub struct GalaxyPage {
    /// Galaxies in key order.
    pub galaxies: Vec<Galaxy>,
    /// Present when more rows match.
    pub continuation: Option<String>,
}

type Write = (Galaxy, oneshot::Sender<Result<bool, TableError>>);

/// The galaxies table. See the module docs.
pub struct GalaxyTable {
    writer: GroupCommit<Write>,
    reader: Mutex<Connection>,
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
    })
}

const COLUMNS: &str = "partition_key, row_key, timestamp, name, x, y, z, instance_id";

impl GalaxyTable {
    /// Opens or creates the table at `path`. `durable` chooses
    /// `synchronous=FULL` (survives power loss) over `NORMAL`.
    pub fn open(path: impl AsRef<Path>, durable: bool) -> Result<Self, TableError> {
        let path = path.as_ref();
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
        let reader = connect(path, durable)?;
        let writer = GroupCommit::start("galaxies-writer", conn, MAX_BATCH, write_batch)
            .map_err(|e| not_ours(path, e))?;
        Ok(Self {
            writer,
            reader: Mutex::new(reader),
        })
    }

    /// Inserts a galaxy unless a row with its keys exists. Returns whether
    /// this call wrote it. Durable when it returns.
    pub async fn insert(&self, galaxy: Galaxy) -> Result<bool, TableError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .run((galaxy, tx))
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

/// Inserts a batch in one transaction and answers each writer.
fn write_batch(conn: &mut Connection, batch: Vec<Write>) {
    let result = (|| -> Result<Vec<bool>, rusqlite::Error> {
        let tx = conn.transaction()?;
        let mut inserted = Vec::with_capacity(batch.len());
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO galaxies ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?;
            for (g, _) in &batch {
                let n = stmt.execute(params![
                    g.partition_key,
                    g.row_key,
                    g.timestamp.timestamp_millis(),
                    g.name,
                    g.coords.x,
                    g.coords.y,
                    g.coords.z,
                    g.instance_id
                ])?;
                inserted.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(inserted)
    })();
    match result {
        Ok(inserted) => {
            for ((_, reply), ok) in batch.into_iter().zip(inserted) {
                let _ = reply.send(Ok(ok));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(TableError::Database(
                    rusqlite::Error::ToSqlConversionFailure(msg.clone().into()),
                )));
            }
        }
    }
}
