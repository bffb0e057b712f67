//! A local node: the engine and the galaxies table in one data directory
//! (`engine.db` and `galaxies.db` side by side), with `Galaxy_Create`
//! registered. What the desktop app, the demo and the tools embed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use durable::{Engine, EngineConfig, Registry, SqliteConfig, SqliteStore, Store};

use crate::replica::GalaxyReplica;
use crate::table::{GalaxyTable, TableError};

/// Why a local node could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The engine store refused or failed.
    #[error("engine store: {0}")]
    Store(#[from] durable::StoreError),
    /// The galaxies table refused or failed.
    #[error("galaxies table: {0}")]
    Table(#[from] TableError),
}

/// Settings of a local node.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Engine settings.
    pub engine: EngineConfig,
    /// Every commit survives power loss (`synchronous=FULL`) when true.
    pub durable: bool,
    /// A player's device: every galaxy change also writes its sync outbox
    /// row, and the node has a [`GalaxyReplica`]. Benchmarks and tools
    /// that never sync leave it off.
    pub tracked: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            durable: true,
            tracked: false,
        }
    }
}

/// The engine and the galaxies table of one data directory.
pub struct LocalNode {
    /// The running engine.
    pub engine: Engine,
    /// The galaxies table.
    pub table: Arc<GalaxyTable>,
    /// The sync side of the table, when the node is tracked.
    pub replica: Option<GalaxyReplica>,
    store: Arc<SqliteStore>,
    dir: PathBuf,
}

impl LocalNode {
    /// Opens (creating if needed) the node in `dir` and starts its engine,
    /// which resumes whatever was unfinished.
    pub fn open(dir: impl AsRef<Path>, config: LocalConfig) -> Result<Self, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let store = Arc::new(SqliteStore::open_with(
            dir.join("engine.db"),
            SqliteConfig {
                durable: config.durable,
                ..SqliteConfig::default()
            },
        )?);
        let path = dir.join("galaxies.db");
        let table = Arc::new(if config.tracked {
            GalaxyTable::open_tracked(path, config.durable)?
        } else {
            GalaxyTable::open(path, config.durable)?
        });
        let replica = config.tracked.then(|| GalaxyReplica::new(table.clone()));
        let registry = crate::workload::register(Registry::new(), table.clone());
        let engine = Engine::start(store.clone() as Arc<dyn Store>, registry, config.engine);
        Ok(Self {
            engine,
            table,
            replica,
            store,
            dir,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the engine (waiting up to `grace` for running work) and closes
    /// both databases.
    pub async fn shutdown(self, grace: Duration) {
        self.close(grace).await;
    }

    /// [`shutdown`](Self::shutdown) for a node shared by reference: after
    /// it, the engine refuses work and the databases are closed.
    pub async fn close(&self, grace: Duration) {
        self.engine.shutdown(grace).await;
        self.store.close();
        self.table.close();
    }
}
