//! Shared test helpers: an engine on a real SQLite file in a temp dir.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use durable::{Engine, EngineConfig, InstanceId, InstanceStatus, Registry, SqliteStore, Store};

pub struct TestEngine {
    pub engine: Engine,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
}

pub fn start(registry: Registry) -> TestEngine {
    start_with(registry, EngineConfig::default())
}

pub fn start_with(registry: Registry, config: EngineConfig) -> TestEngine {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("engine.db")).expect("open store"));
    let engine = Engine::start(store.clone() as Arc<dyn Store>, registry, config);
    TestEngine { engine, store, dir }
}

pub const WAIT: Duration = Duration::from_secs(30);

impl TestEngine {
    pub async fn run(&self, name: &str, input: serde_json::Value) -> InstanceStatus {
        let id = self
            .engine
            .start_orchestration(name, None, input)
            .await
            .expect("start");
        self.wait(&id).await
    }

    pub async fn wait(&self, id: &InstanceId) -> InstanceStatus {
        self.engine
            .wait_for_completion(id, WAIT)
            .await
            .expect("completes")
    }
}
