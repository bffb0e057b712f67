//! The galaxies table behind one type, whichever database holds it: what
//! `Galaxy_Create_Impl` writes to and what servers read from.
//!
//! SQLite reads are synchronous calls; [`Galaxies`] runs them on the
//! blocking pool, so async callers never stall a runtime worker on them.

use std::sync::Arc;

#[cfg(feature = "postgres")]
use crate::pg_table::PgGalaxyTable;
use crate::table::{Galaxy, GalaxyPage, GalaxyTable, TableError};

/// The galaxies table: one process's SQLite file, or PostgreSQL shared by
/// several processes. Cloning shares the same table.
#[derive(Clone, Debug)]
pub enum Galaxies {
    /// The SQLite table of one process (desktop app, single server).
    Sqlite(Arc<GalaxyTable>),
    /// The PostgreSQL table several servers share (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(Arc<PgGalaxyTable>),
}

impl From<Arc<GalaxyTable>> for Galaxies {
    fn from(t: Arc<GalaxyTable>) -> Self {
        Self::Sqlite(t)
    }
}

#[cfg(feature = "postgres")]
impl From<Arc<PgGalaxyTable>> for Galaxies {
    fn from(t: Arc<PgGalaxyTable>) -> Self {
        Self::Postgres(t)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TableError> + Send + 'static,
) -> Result<T, TableError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TableError::Interrupted(e.to_string()))?
}

impl Galaxies {
    /// Inserts a galaxy unless a row with its keys exists; whether this
    /// call wrote it. Durable when it returns.
    pub async fn insert(&self, galaxy: Galaxy) -> Result<bool, TableError> {
        match self {
            Self::Sqlite(t) => t.insert(galaxy).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.insert(&galaxy).await,
        }
    }

    /// One galaxy by its keys.
    pub async fn get(
        &self,
        partition_key: &str,
        row_key: &str,
    ) -> Result<Option<Galaxy>, TableError> {
        if partition_key.contains('\0') || row_key.contains('\0') {
            // No stored key holds one (PostgreSQL's text cannot).
            return Ok(None);
        }
        match self {
            Self::Sqlite(t) => {
                let (t, pk, rk) = (t.clone(), partition_key.to_string(), row_key.to_string());
                blocking(move || t.get(&pk, &rk)).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.get(partition_key, row_key).await,
        }
    }

    /// A page of galaxies in key order (see [`GalaxyTable::list`]).
    pub async fn list(
        &self,
        name_prefix: Option<&str>,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<GalaxyPage, TableError> {
        if name_prefix.is_some_and(|p| p.contains('\0')) {
            // No name holds one (they have no control characters).
            return Ok(GalaxyPage::default());
        }
        match self {
            Self::Sqlite(t) => {
                let t = t.clone();
                let prefix = name_prefix.map(str::to_string);
                let token = continuation.map(str::to_string);
                blocking(move || t.list(prefix.as_deref(), page_size, token.as_deref())).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.list(name_prefix, page_size, continuation).await,
        }
    }

    /// Number of galaxies.
    pub async fn count(&self) -> Result<u64, TableError> {
        match self {
            Self::Sqlite(t) => {
                let t = t.clone();
                blocking(move || t.count()).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.count().await,
        }
    }

    /// Instances that wrote more than one row (should be none).
    pub async fn duplicate_instances(&self) -> Result<Vec<String>, TableError> {
        match self {
            Self::Sqlite(t) => {
                let t = t.clone();
                blocking(move || t.duplicate_instances()).await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.duplicate_instances().await,
        }
    }

    /// Whether the table can still write: on SQLite, its writer thread has
    /// not died and no write batch panicked (PostgreSQL has no writer of
    /// its own: a lost connection is retried per statement).
    pub fn health(&self) -> Result<(), String> {
        match self {
            Self::Sqlite(t) => t.health(),
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => Ok(()),
        }
    }

    /// Finishes queued writes and closes the table.
    pub fn close(&self) {
        match self {
            Self::Sqlite(t) => t.close(),
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.close(),
        }
    }
}
