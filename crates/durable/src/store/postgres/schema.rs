//! The tables: creation at the first connect, the version check, and the
//! columns added since without a version bump.

use super::*;

/// The store's notification channel: `durable_work_<schema>`, or for a
/// schema name too long for that to fit PostgreSQL's 63-byte identifiers
/// (`LISTEN` would cut it and `pg_notify` refuse it, so no wake-up would
/// cross processes), the name's start and a digest of the whole: the same
/// in every process, different for schemas that share a start.
pub(super) fn channel_name(schema: &str) -> String {
    const PREFIX: &str = "durable_work_";
    const MAX: usize = 63;
    let full = format!("{PREFIX}{schema}");
    if full.len() <= MAX {
        return full;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(schema.as_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Schema names are ASCII (`quoted_schema`): any cut is a boundary.
    let keep = MAX - PREFIX.len() - 1 - tag.len();
    format!("{PREFIX}{}_{tag}", &schema[..keep.min(schema.len())])
}

/// A quoted schema name, after checking it is a plain identifier (it is
/// spliced into every statement).
pub(super) fn quoted_schema(schema: &str) -> Result<String, StoreError> {
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
pub(super) fn schema_ddl(s: &str) -> String {
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
pub(super) async fn prepare_schema(
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
            "CREATE SCHEMA IF NOT EXISTS {s}; {}",
            schema_ddl(&s)
        ))
        .await
        .map_err(db_err)?;
        apply_ddl_once(&tx, schema, "durable", &additions_ddl(&s))
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
    apply_ddl_once(&tx, schema, "durable", &additions_ddl(&s))
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(())
}

/// What was added after schema version 1 without a bump (older builds
/// ignore it).
fn additions_ddl(s: &str) -> String {
    format!("{} {}", lifecycle_ddl(s), workers_ddl(s))
}

/// The lifecycle outbox (see [`crate::store::lifecycle`]).
pub(super) fn lifecycle_ddl(s: &str) -> String {
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
pub(super) fn workers_ddl(s: &str) -> String {
    format!("ALTER TABLE {s}.workers ADD COLUMN IF NOT EXISTS gone_since int8;")
}

/// Runs `ddl` (statements that create what is missing, `IF NOT EXISTS`) in
/// `tx` unless this exact text already ran in `schema` under `key`; the
/// caller holds its advisory lock for what it sets up (this takes one more,
/// for the schema's record, after it: never before the caller's).
///
/// Why: `CREATE INDEX IF NOT EXISTS` and `ALTER TABLE .. ADD COLUMN IF NOT
/// EXISTS` lock their table (SHARE, ACCESS EXCLUSIVE) before they find
/// there is nothing to do. A process starting while others wrote those
/// tables queued behind their transactions while holding locks they then
/// needed: a deadlock (`40P01`) that failed the start, seen when three
/// galaxy-cloud processes started on one database. Reading the digest of
/// what ran last locks nothing the others use.
pub async fn apply_ddl_once(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    key: &str,
    ddl: &str,
) -> Result<(), tokio_postgres::Error> {
    let q = format!("\"{schema}\"");
    // Callers of other keys may share the schema (under advisory locks of
    // their own): creating the table at the same moment would collide.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('galaxy-forge ddl_applied ' || $1::text))",
        &[&schema],
    )
    .await?;
    // Read from the catalog first: `CREATE ... IF NOT EXISTS` checks the
    // privilege to create before it finds there is nothing to do, so a
    // role that may only use the tables (set up by their owner) could
    // not connect.
    let recorded: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'ddl_applied')",
            &[&schema],
        )
        .await?
        .get(0);
    if !recorded {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {q}; \
             CREATE TABLE IF NOT EXISTS {q}.ddl_applied (key text PRIMARY KEY, digest text NOT NULL);"
        ))
        .await?;
    }
    let done = tx
        .query_opt(
            &format!("SELECT digest = md5($2) FROM {q}.ddl_applied WHERE key = $1"),
            &[&key, &ddl],
        )
        .await?
        .is_some_and(|row| row.get::<_, bool>(0));
    if done {
        return Ok(());
    }
    tx.batch_execute(ddl).await?;
    tx.execute(
        &format!(
            "INSERT INTO {q}.ddl_applied (key, digest) VALUES ($1, md5($2)) \
             ON CONFLICT (key) DO UPDATE SET digest = excluded.digest"
        ),
        &[&key, &ddl],
    )
    .await?;
    Ok(())
}
