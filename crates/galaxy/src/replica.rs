//! The device's side of sync over its galaxies table: the outbox, the sync
//! state, and [`GalaxyReplica`], which implements [`sync::Replica`] for the
//! sync loop and renames and deletes galaxies for the player.
//!
//! Tables (in `galaxies.db`, beside `galaxies`):
//! - `outbox(mutation_id, entity_id, op, body, base_version)`: local
//!   changes not yet settled by the cloud. A row is written in the same
//!   transaction as the change it describes.
//! - `sync_state(client_id, pull_cursor, next_mutation_id, chain_fresh,
//!   player_id)`: one row, of the player whose account it syncs with
//!   ([`GalaxyReplica::rebase`]). `chain_fresh`: the pull chain under way began at cursor 0
//!   (set when the cursor goes to 0, cleared when a chain completes), so a
//!   first sync cut off half-way goes on below the tombstone floor instead
//!   of being told to reset and start over.
//!
//! A galaxy's `version` is its version in the player's cloud data (0: never
//! synced); a change made on top of version v carries `base_version` v, so
//! the server can tell the player when someone else changed it meanwhile.
//! A change the cloud settled without saying its version (a resend after a
//! lost answer, the galaxy changed by another device since) leaves version
//! 1: synced, at a version older than any the cloud has now.

use rusqlite::{params, Connection, OptionalExtension};
use sync::protocol::{Chain, Mutation, MutationStatus, PullResponse, PushResponse};
use sync::{Replica, ReplicaState};
use tokio::sync::{broadcast, watch};

use crate::body::{self, GalaxyBody};
use crate::table::{get_local, insert_row, Galaxy, GalaxyTable, TableError};
use crate::workload::DEFAULT_PARTITION;

/// Adds `column` (with its SQL definition) to `table` unless a database
/// from before already has it.
fn add_column(conn: &Connection, table: &str, column: &str, def: &str) -> Result<(), TableError> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))?;
    }
    Ok(())
}

/// Adds the sync columns and tables to a galaxies database (idempotent).
pub(crate) fn migrate(conn: &Connection) -> Result<(), TableError> {
    add_column(conn, "galaxies", "version", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(conn, "galaxies", "origin", "TEXT NOT NULL DEFAULT ''")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS outbox (
            mutation_id INTEGER PRIMARY KEY,
            entity_id TEXT NOT NULL,
            op TEXT NOT NULL,
            body TEXT,
            base_version INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS outbox_by_entity ON outbox (entity_id);
        CREATE TABLE IF NOT EXISTS sync_state (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            client_id TEXT NOT NULL,
            pull_cursor INTEGER NOT NULL,
            next_mutation_id INTEGER NOT NULL,
            chain_fresh INTEGER NOT NULL DEFAULT 1
        );",
    )?;
    // In a database from before, a chain under way is not known to be
    // fresh (a cursor of 0 still is, see `state`).
    add_column(
        conn,
        "sync_state",
        "chain_fresh",
        "INTEGER NOT NULL DEFAULT 0",
    )?;
    // The player the sync state belongs to (unknown in a database from
    // before: see `GalaxyReplica::adopt_player`).
    add_column(conn, "sync_state", "player_id", "TEXT")?;
    // The player's latest version when the fresh chain under way read its
    // first page (NULL: none yet, or a database from before).
    add_column(conn, "sync_state", "chain_latest", "INTEGER")?;
    conn.execute(
        "INSERT OR IGNORE INTO sync_state (one, client_id, pull_cursor, next_mutation_id)
         VALUES (1, ?1, 0, 1)",
        [new_client_id()],
    )?;
    Ok(())
}

fn new_client_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Appends an outbox row with the next mutation id.
fn enqueue(
    conn: &Connection,
    entity_id: &str,
    op: sync::protocol::Op,
    body: Option<String>,
    base_version: u64,
) -> Result<(), TableError> {
    conn.prepare_cached(
        "INSERT INTO outbox (mutation_id, entity_id, op, body, base_version)
         SELECT next_mutation_id, ?1, ?2, ?3, ?4 FROM sync_state WHERE one = 1",
    )?
    .execute(params![entity_id, op.as_str(), body, base_version as i64])?;
    conn.prepare_cached("UPDATE sync_state SET next_mutation_id = next_mutation_id + 1")?
        .execute([])?;
    Ok(())
}

/// The outbox row of a galaxy written locally (create or edit).
pub(crate) fn enqueue_put(conn: &Connection, g: &Galaxy) -> Result<(), TableError> {
    let body = GalaxyBody::of(g).to_value().to_string();
    enqueue(
        conn,
        &g.row_key,
        sync::protocol::Op::Put,
        Some(body),
        g.version,
    )
}

fn has_pending(conn: &Connection, entity_id: &str) -> Result<bool, TableError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM outbox WHERE entity_id = ?1 LIMIT 1")?
        .query_row([entity_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// A change to the galaxies a UI shows, other than a creation by the local
/// engine (which the engine's update stream already announces).
#[derive(Clone, Debug, PartialEq)]
pub enum GalaxyEvent {
    /// Added or changed (pulled from the cloud, or renamed here).
    Upserted(Galaxy),
    /// Deleted (here, or on another device).
    Removed {
        /// The galaxy's row key.
        row_key: String,
    },
    /// Synced rows were dropped for a full re-pull: reload the list.
    Reloaded,
}

/// The sync side of a tracked [`GalaxyTable`]. Cloning shares it.
#[derive(Clone)]
pub struct GalaxyReplica {
    table: std::sync::Arc<GalaxyTable>,
    events: broadcast::Sender<GalaxyEvent>,
}

impl std::fmt::Debug for GalaxyReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GalaxyReplica").finish_non_exhaustive()
    }
}

/// Why a player's rename or delete did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No galaxy with that id here.
    #[error("no galaxy with id {0}")]
    NotFound(String),
    /// The new value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The table failed.
    #[error(transparent)]
    Table(#[from] TableError),
}

impl GalaxyReplica {
    /// The replica of `table`, which must be tracked
    /// ([`GalaxyTable::open_tracked`]).
    pub fn new(table: std::sync::Arc<GalaxyTable>) -> Self {
        assert!(
            table.is_tracked(),
            "a replica needs a tracked table (GalaxyTable::open_tracked)"
        );
        Self {
            table,
            events: broadcast::channel(1024).0,
        }
    }

    /// The table.
    pub fn table(&self) -> &std::sync::Arc<GalaxyTable> {
        &self.table
    }

    /// Changes made by sync, renames and deletes, as they commit.
    pub fn subscribe(&self) -> broadcast::Receiver<GalaxyEvent> {
        self.events.subscribe()
    }

    /// Renames a galaxy (and queues the change for the cloud).
    pub async fn rename(&self, row_key: &str, name: &str) -> Result<Galaxy, EditError> {
        let name = body::check_name(name).map_err(EditError::Invalid)?;
        let key = row_key.to_string();
        let renamed = self
            .table
            .write(move |conn, effects| {
                let Some(mut g) = get_local(conn, &key)? else {
                    return Ok(None);
                };
                if g.name == name {
                    return Ok(Some(g));
                }
                conn.prepare_cached(
                    "UPDATE galaxies SET name = ?3 WHERE partition_key = ?1 AND row_key = ?2",
                )?
                .execute(params![DEFAULT_PARTITION, key, name])?;
                g.name = name;
                enqueue_put(conn, &g)?;
                effects.outbox_delta += 1;
                Ok(Some(g))
            })
            .await?
            .ok_or_else(|| EditError::NotFound(row_key.to_string()))?;
        let _ = self.events.send(GalaxyEvent::Upserted(renamed.clone()));
        Ok(renamed)
    }

    /// Deletes a galaxy (and queues the delete for the cloud).
    pub async fn delete(&self, row_key: &str) -> Result<(), EditError> {
        let key = row_key.to_string();
        let deleted = self
            .table
            .write(move |conn, effects| {
                let Some(g) = get_local(conn, &key)? else {
                    return Ok(false);
                };
                conn.prepare_cached(
                    "DELETE FROM galaxies WHERE partition_key = ?1 AND row_key = ?2",
                )?
                .execute(params![DEFAULT_PARTITION, key])?;
                enqueue(conn, &key, sync::protocol::Op::Delete, None, g.version)?;
                effects.outbox_delta += 1;
                Ok(true)
            })
            .await?;
        if !deleted {
            return Err(EditError::NotFound(row_key.to_string()));
        }
        let _ = self.events.send(GalaxyEvent::Removed {
            row_key: row_key.to_string(),
        });
        Ok(())
    }

    /// Makes the sync state that of `player_id`'s account. For another
    /// player (or the first one) it starts over: a new client id, the pull
    /// cursor at 0, every galaxy here unsynced, and the outbox rebuilt as
    /// one put per galaxy, so everything on this device goes to the new
    /// player and everything there comes here; pending deletes are dropped
    /// (the new player never had those galaxies). For the player it already
    /// belongs to (a device that signed out and links again) nothing
    /// changes: its versions and pending changes, deletes included, still
    /// hold, where a rebase would push stale copies over the other devices'
    /// changes and bring back what they deleted. Returns whether it rebased.
    pub async fn rebase(&self, player_id: &str) -> Result<bool, TableError> {
        let player_id = player_id.to_string();
        self.table
            .write(move |conn, effects| {
                let mine: Option<String> =
                    conn.query_row("SELECT player_id FROM sync_state WHERE one = 1", [], |r| {
                        r.get(0)
                    })?;
                if mine.as_deref() == Some(player_id.as_str()) {
                    return Ok(false);
                }
                let before: i64 =
                    conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
                conn.execute_batch(
                    "DELETE FROM outbox;
                     UPDATE galaxies SET version = 0;
                     UPDATE sync_state SET pull_cursor = 0, next_mutation_id = 1, chain_fresh = 1, chain_latest = NULL;",
                )?;
                conn.execute("UPDATE sync_state SET player_id = ?1", [&player_id])?;
                let keys: Vec<String> = conn
                    .prepare("SELECT row_key FROM galaxies ORDER BY row_key")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for key in &keys {
                    if let Some(g) = get_local(conn, key)? {
                        enqueue_put(conn, &g)?;
                    }
                }
                renumber_in(conn)?;
                effects.outbox_delta += keys.len() as i64 - before;
                Ok(true)
            })
            .await
    }

    /// Records `player_id` as the player the sync state belongs to, if
    /// none is recorded (a database from before the column, whose state
    /// is that of the account in the settings).
    pub async fn adopt_player(&self, player_id: &str) -> Result<(), TableError> {
        let player_id = player_id.to_string();
        self.table
            .write(move |conn, _| {
                conn.execute(
                    "UPDATE sync_state SET player_id = ?1 WHERE player_id IS NULL",
                    [&player_id],
                )?;
                Ok(())
            })
            .await
    }

    /// Reads on the blocking pool (the table's reads are synchronous).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, TableError> + Send + 'static,
    ) -> Result<T, TableError> {
        let table = self.table.clone();
        tokio::task::spawn_blocking(move || table.read(f))
            .await
            .map_err(|e| TableError::Interrupted(e.to_string()))?
    }
}

/// Takes a new client id and renumbers the outbox from 1 (through negative
/// ids, so no row meets another's id).
fn renumber_in(conn: &Connection) -> Result<(), TableError> {
    let (min, count): (Option<i64>, i64) =
        conn.query_row("SELECT min(mutation_id), count(*) FROM outbox", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if let Some(min) = min {
        conn.execute_batch("UPDATE outbox SET mutation_id = -mutation_id")?;
        conn.execute(
            "UPDATE outbox SET mutation_id = -mutation_id - ?1",
            [min - 1],
        )?;
    }
    conn.execute(
        "UPDATE sync_state SET client_id = ?1, next_mutation_id = ?2",
        params![new_client_id(), count + 1],
    )?;
    Ok(())
}

fn describe(name: Option<&str>, entity_id: &str) -> String {
    match name {
        Some(n) => format!("galaxy '{n}'"),
        None => format!("galaxy {entity_id}"),
    }
}

impl Replica for GalaxyReplica {
    type Error = TableError;

    async fn state(&self) -> Result<ReplicaState, TableError> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT client_id, pull_cursor, chain_fresh, chain_latest FROM sync_state WHERE one = 1",
                [],
                |r| {
                    let cursor = r.get::<_, i64>(1)? as u64;
                    let fresh = cursor == 0 || r.get::<_, bool>(2)?;
                    let latest = r.get::<_, Option<i64>>(3)?.map(|l| l as u64);
                    Ok(ReplicaState {
                        client_id: r.get(0)?,
                        cursor,
                        chain: if fresh {
                            Chain::Fresh { latest }
                        } else {
                            Chain::Resumed
                        },
                    })
                },
            )?)
        })
        .await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<Mutation>, TableError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT mutation_id, op, entity_id, base_version, body FROM outbox
                 ORDER BY mutation_id LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    let body: Option<String> = r.get(4)?;
                    Ok(Mutation {
                        mutation_id: r.get::<_, i64>(0)? as u64,
                        op: r.get(1)?,
                        entity_id: r.get(2)?,
                        base_version: r.get::<_, i64>(3)? as u64,
                        body: body
                            .and_then(|b| serde_json::from_str(&b).ok())
                            .unwrap_or(serde_json::Value::Null),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn acknowledge(&self, response: PushResponse) -> Result<Vec<String>, TableError> {
        self.table
            .write(move |conn, effects| {
                let mut notices = Vec::new();
                let mut oldest_settled: Option<u64> = None;
                for r in &response.results {
                    if r.mutation_id > response.last_mutation_id {
                        continue;
                    }
                    let row: Option<(String, String)> = conn
                        .prepare_cached("SELECT entity_id, op FROM outbox WHERE mutation_id = ?1")?
                        .query_row([r.mutation_id as i64], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()?;
                    let Some((entity_id, op)) = row else { continue };
                    let name = get_local(conn, &entity_id)?.map(|g| g.name);
                    // A resend whose galaxy another device changed since is
                    // settled without its version: it reached the cloud,
                    // so it counts as synced at an old version (1), never
                    // as 0 (never synced), which a reset would keep and a
                    // later edit would push as a create.
                    let settled = match r.status {
                        MutationStatus::Applied | MutationStatus::Skipped => {
                            Some(r.version.unwrap_or(1))
                        }
                        MutationStatus::Rejected => None,
                    };
                    if let Some(v) = settled {
                        oldest_settled = Some(oldest_settled.map_or(v, |o| o.min(v)));
                        // Our own change is the base of any later local edit.
                        conn.prepare_cached(
                            "UPDATE galaxies SET version = max(version, ?3)
                             WHERE partition_key = ?1 AND row_key = ?2",
                        )?
                        .execute(params![DEFAULT_PARTITION, entity_id, v as i64])?;
                        conn.prepare_cached(
                            "UPDATE outbox SET base_version = ?3
                             WHERE entity_id = ?1 AND mutation_id > ?2",
                        )?
                        .execute(params![entity_id, r.mutation_id as i64, v as i64])?;
                    }
                    let what = describe(name.as_deref(), &entity_id);
                    match r.status {
                        MutationStatus::Rejected => notices.push(format!(
                            "The cloud refused a change ({op}) to {what}: {}",
                            r.reason.as_deref().unwrap_or("no reason given")
                        )),
                        _ if r.conflict => notices.push(format!(
                            "{what} was also changed on another device; the change that reached the cloud last was kept"
                        )),
                        _ => {}
                    }
                }
                if let Some(v) = oldest_settled {
                    // A pull chain from 0 skips this client's own writes:
                    // one deleted on another device since, its tombstone
                    // purged before the chain reads it, would stay here for
                    // ever. The chain's start is no later than our oldest
                    // settled write, so the cloud resets it if a deletion
                    // newer than that was purged.
                    conn.prepare_cached(
                        "UPDATE sync_state SET chain_latest = min(COALESCE(chain_latest, ?1), ?1)
                         WHERE chain_fresh = 1",
                    )?
                    .execute([v as i64])?;
                }
                let removed = conn
                    .prepare_cached("DELETE FROM outbox WHERE mutation_id <= ?1")?
                    .execute([response.last_mutation_id as i64])?;
                effects.outbox_delta -= removed as i64;
                Ok(notices)
            })
            .await
    }

    async fn renumber(&self) -> Result<(), TableError> {
        self.table.write(|conn, _| renumber_in(conn)).await
    }

    async fn apply_pull(&self, page: PullResponse) -> Result<usize, TableError> {
        let (applied, events) = self
            .table
            .write(move |conn, _| {
                let mut events = Vec::new();
                for change in &page.changes {
                    if has_pending(conn, &change.entity_id)? {
                        continue;
                    }
                    if change.deleted {
                        let n = conn
                            .prepare_cached(
                                "DELETE FROM galaxies WHERE partition_key = ?1 AND row_key = ?2",
                            )?
                            .execute(params![DEFAULT_PARTITION, change.entity_id])?;
                        if n > 0 {
                            events.push(GalaxyEvent::Removed {
                                row_key: change.entity_id.clone(),
                            });
                        }
                        continue;
                    }
                    let body = match body::parse(&change.body) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(entity = %change.entity_id, "pulled body skipped: {e}");
                            continue;
                        }
                    };
                    let g = body.into_galaxy(&change.entity_id, change.version);
                    let n = conn
                        .prepare_cached(
                            "UPDATE galaxies SET name = ?3, x = ?4, y = ?5, z = ?6, timestamp = ?7,
                                 instance_id = ?8, version = ?9, origin = ?10
                             WHERE partition_key = ?1 AND row_key = ?2 AND version < ?9",
                        )?
                        .execute(params![
                            g.partition_key,
                            g.row_key,
                            g.name,
                            g.coords.x,
                            g.coords.y,
                            g.coords.z,
                            g.timestamp.timestamp_millis(),
                            g.instance_id,
                            g.version as i64,
                            g.origin
                        ])?;
                    if n == 1 || insert_row(conn, &g)? {
                        events.push(GalaxyEvent::Upserted(g));
                    }
                }
                // The last page completes the chain: later pulls start
                // from a cursor this device reached and kept current. A
                // fresh chain's first page says when the chain began.
                conn.prepare_cached(
                    "UPDATE sync_state SET pull_cursor = ?1,
                         chain_fresh = CASE WHEN ?2 THEN chain_fresh ELSE 0 END,
                         chain_latest = CASE WHEN ?2 AND (chain_fresh = 1 OR pull_cursor = 0)
                             THEN COALESCE(chain_latest, ?3) ELSE NULL END",
                )?
                .execute(params![
                    page.cursor as i64,
                    page.has_more,
                    page.latest as i64
                ])?;
                Ok((events.len(), events))
            })
            .await?;
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(applied)
    }

    async fn reset(&self) -> Result<(), TableError> {
        // A new client id too: the cloud leaves a client's own latest
        // writes out of its pulls, and this re-pull must bring them back.
        self.table
            .write(|conn, _| {
                conn.execute_batch(
                    "DELETE FROM galaxies WHERE version > 0
                       AND row_key NOT IN (SELECT entity_id FROM outbox);
                     UPDATE sync_state SET pull_cursor = 0, chain_fresh = 1, chain_latest = NULL;",
                )?;
                renumber_in(conn)
            })
            .await?;
        let _ = self.events.send(GalaxyEvent::Reloaded);
        Ok(())
    }

    async fn renumber_and_pull_all(&self) -> Result<(), TableError> {
        self.table
            .write(|conn, _| {
                conn.execute_batch(
                    "UPDATE sync_state SET pull_cursor = 0, chain_fresh = 1, chain_latest = NULL;",
                )?;
                renumber_in(conn)
            })
            .await
    }

    async fn resend_all(&self) -> Result<(), TableError> {
        self.table
            .write(|conn, effects| {
                let keys: Vec<String> = conn
                    .prepare(
                        "SELECT row_key FROM galaxies WHERE version > 0
                           AND row_key NOT IN (SELECT entity_id FROM outbox) ORDER BY row_key",
                    )?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for key in &keys {
                    if let Some(g) = get_local(conn, key)? {
                        enqueue_put(conn, &g)?;
                    }
                }
                conn.execute_batch(
                    "UPDATE sync_state SET pull_cursor = 0, chain_fresh = 1, chain_latest = NULL;",
                )?;
                renumber_in(conn)?;
                effects.outbox_delta += keys.len() as i64;
                Ok(())
            })
            .await
    }

    fn pending_count(&self) -> u64 {
        self.table.pending_changes()
    }

    fn watch_pending(&self) -> watch::Receiver<u64> {
        self.table.watch_pending()
    }
}
