//! The tables, their creation and the migrations between versions.

use super::*;

/// The instances table, clustered by id (`WITHOUT ROWID`, since schema
/// version 4): a commit finds and updates its row in one B-tree instead of
/// an id index plus the rowid table (about a tenth of the writer's CPU in
/// galaxy-bench). `{name}` lets the migration build it beside the old one.
pub(super) const INSTANCES_TABLE: &str = "
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

pub(super) const INSTANCES_INDEXES: &str = "
CREATE INDEX instances_by_created ON instances(created_at, instance_id);
CREATE INDEX instances_by_status ON instances(runtime_status, created_at);
";

/// The other tables.
pub(super) const SCHEMA: &str = "
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
pub(super) const LIFECYCLE_TABLE: &str = "
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
pub(super) fn prepare_schema(
    conn: &Connection,
    path: &Path,
    config: &SqliteConfig,
) -> Result<(), StoreError> {
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
pub(super) fn migrate_3_to_4(conn: &Connection) -> Result<(), StoreError> {
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
