//! The `galaxies` table in PostgreSQL, for several galaxy-cloud processes
//! sharing one database (the SQLite [`GalaxyTable`](crate::GalaxyTable)
//! belongs to one process).
//!
//! Same rows, keys and semantics as the SQLite table: the insert is
//! `INSERT ... ON CONFLICT DO NOTHING` on (partition key, row key), so the
//! writing activity can run twice, in two processes even, and leave one
//! row. The table lives in its own schema (default `galaxy`), created at the
//! first connect under an advisory lock so processes starting together do
//! not race.

use chrono::DateTime;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::Row;

use crate::coords::Coords;
use crate::table::{Galaxy, GalaxyPage, TableError};

const COLUMNS: &str = "partition_key, row_key, timestamp, name, x, y, z, instance_id";

fn pg_err(e: tokio_postgres::Error) -> TableError {
    match e.as_db_error() {
        Some(d) => TableError::Postgres(format!("{}: {}", d.code().code(), d.message())),
        None => TableError::Postgres(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> TableError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        e => TableError::Postgres(format!("connection pool: {e}")),
    }
}

fn from_row(r: &Row) -> Galaxy {
    Galaxy {
        partition_key: r.get(0),
        row_key: r.get(1),
        timestamp: DateTime::from_timestamp_millis(r.get(2)).unwrap_or_default(),
        name: r.get(3),
        coords: Coords {
            x: r.get(4),
            y: r.get(5),
            z: r.get(6),
        },
        instance_id: r.get(7),
        version: 0,
        origin: String::new(),
    }
}

/// The galaxies table in PostgreSQL. See the module docs.
pub struct PgGalaxyTable {
    pool: Pool,
    table: String,
    /// Inserts waiting to go in one statement.
    inserts: durable::coalesce::Coalescer<QueuedInsert>,
}

/// A galaxy waiting for a batched insert, and where its answer goes.
struct QueuedInsert {
    galaxy: Galaxy,
    answer: tokio::sync::oneshot::Sender<Result<bool, TableError>>,
}

impl std::fmt::Debug for PgGalaxyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgGalaxyTable")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PgGalaxyTable {
    /// Connects to `url` and creates the table in `schema` if missing.
    /// Refuses a `galaxies` table of another shape.
    pub async fn connect(url: &str, schema: &str, pool_size: usize) -> Result<Self, TableError> {
        let plain = !schema.is_empty()
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !plain {
            return Err(TableError::Incompatible(format!(
                "schema name '{schema}' must be lowercase letters, digits and '_'"
            )));
        }
        let target = durable::store::postgres::PgTarget::parse(url)
            .map_err(|e| TableError::Postgres(e.to_string()))?;
        let manager = Manager::from_config(
            target.config,
            target.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| TableError::Postgres(format!("connection pool: {e}")))?;
        let table = format!("\"{schema}\".galaxies");
        let mut client = pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('galaxy-forge galaxies ' || $1::text))",
            &[&schema],
        )
        .await
        .map_err(pg_err)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS {table} (
                partition_key text COLLATE \"C\" NOT NULL,
                row_key text COLLATE \"C\" NOT NULL,
                timestamp int8 NOT NULL,
                name text NOT NULL,
                x int4 NOT NULL, y int4 NOT NULL, z int4 NOT NULL,
                instance_id text NOT NULL,
                PRIMARY KEY (partition_key, row_key)
             );"
        ))
        .await
        .map_err(pg_err)?;
        // A table that was already there must have our columns; checked
        // before anything else touches it (the transaction then rolls back).
        tx.query(&format!("SELECT {COLUMNS} FROM {table} LIMIT 0"), &[])
            .await
            .map_err(|e| {
                TableError::Incompatible(format!(
                    "{table} exists but is not a galaxies table ({}); nothing was changed",
                    pg_err(e)
                ))
            })?;
        durable::store::postgres::apply_ddl_once(
            &tx,
            schema,
            "galaxies",
            &format!("CREATE INDEX IF NOT EXISTS galaxies_by_instance ON {table} (instance_id)"),
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        drop(client);
        Ok(Self {
            pool,
            table,
            inserts: Default::default(),
        })
    }

    /// Inserts a galaxy unless a row with its keys exists. Returns whether
    /// this call wrote it. Durable when it returns.
    ///
    /// Inserts that arrive at the same moment (the writing activities of
    /// many Galaxy_Create finish together) go in one statement
    /// ([`durable::coalesce`]): one commit instead of one each.
    pub async fn insert(&self, galaxy: &Galaxy) -> Result<bool, TableError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queued = QueuedInsert {
            galaxy: galaxy.clone(),
            answer,
        };
        self.inserts
            .run(queued, |batch| self.insert_queued(batch))
            .await;
        answered
            .await
            .unwrap_or_else(|_| Err(TableError::Postgres("insert cancelled".into())))
    }

    /// Inserts a batch of queued galaxies and answers each caller.
    async fn insert_queued(&self, batch: Vec<QueuedInsert>) {
        let galaxies: Vec<&Galaxy> = batch.iter().map(|q| &q.galaxy).collect();
        match self.insert_all(&galaxies).await {
            Ok(written) => {
                for (q, w) in batch.into_iter().zip(written) {
                    let _ = q.answer.send(Ok(w));
                }
            }
            Err(e) => {
                // Nothing of the statement was written: each caller gets
                // the error (its activity runs again).
                let message = e.to_string();
                for q in batch {
                    let _ = q.answer.send(Err(TableError::Postgres(message.clone())));
                }
            }
        }
    }

    /// Inserts `galaxies` in one statement; for each, whether it wrote it
    /// (of two with the same keys, the first).
    async fn insert_all(&self, galaxies: &[&Galaxy]) -> Result<Vec<bool>, TableError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO {} ({COLUMNS}) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], \
                   $5::int4[], $6::int4[], $7::int4[], $8::text[]) \
                 ON CONFLICT (partition_key, row_key) DO NOTHING \
                 RETURNING partition_key, row_key",
                self.table
            ))
            .await
            .map_err(pg_err)?;
        let text = |f: fn(&Galaxy) -> &String| galaxies.iter().map(|g| f(g)).collect::<Vec<_>>();
        let coord = |f: fn(&Galaxy) -> i32| galaxies.iter().map(|g| f(g)).collect::<Vec<_>>();
        let at: Vec<i64> = galaxies
            .iter()
            .map(|g| g.timestamp.timestamp_millis())
            .collect();
        let rows = client
            .query(
                &stmt,
                &[
                    &text(|g| &g.partition_key),
                    &text(|g| &g.row_key),
                    &at,
                    &text(|g| &g.name),
                    &coord(|g| g.coords.x),
                    &coord(|g| g.coords.y),
                    &coord(|g| g.coords.z),
                    &text(|g| &g.instance_id),
                ],
            )
            .await
            .map_err(pg_err)?;
        let mut written: std::collections::HashSet<(String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(galaxies
            .iter()
            .map(|g| written.remove(&(g.partition_key.clone(), g.row_key.clone())))
            .collect())
    }

    /// One galaxy by its keys.
    pub async fn get(
        &self,
        partition_key: &str,
        row_key: &str,
    ) -> Result<Option<Galaxy>, TableError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM {} WHERE partition_key = $1 AND row_key = $2",
                    self.table
                ),
                &[&partition_key, &row_key],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.as_ref().map(from_row))
    }

    /// A page of galaxies in key order, optionally only names starting with
    /// `name_prefix` (case-sensitive). Tokens are those of the SQLite table.
    pub async fn list(
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
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM {} \
                     WHERE (partition_key > $1 OR (partition_key = $1 AND row_key > $2)) \
                       AND starts_with(name, $3) \
                     ORDER BY partition_key, row_key LIMIT $4",
                    self.table
                ),
                &[&after_pk, &after_rk, &prefix, &((size + 1) as i64)],
            )
            .await
            .map_err(pg_err)?;
        let mut galaxies: Vec<Galaxy> = rows.iter().map(from_row).collect();
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
    pub async fn count(&self) -> Result<u64, TableError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .map_err(pg_err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Instances that wrote more than one row (should be none).
    pub async fn duplicate_instances(&self) -> Result<Vec<String>, TableError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                &format!(
                    "SELECT instance_id FROM {} GROUP BY instance_id HAVING count(*) > 1",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Closes the connections; later calls fail.
    pub fn close(&self) {
        self.pool.close();
    }
}
