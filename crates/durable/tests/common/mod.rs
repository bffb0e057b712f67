//! Shared test helpers: an engine on a real SQLite file in a temp dir.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::{
    Engine, EngineConfig, HistoryEvent, InstanceId, InstanceStatus, Registry, RuntimeStatus,
    SqliteStore, Store,
};
use tokio::sync::broadcast::error::RecvError;

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
    start_in(dir, registry, config)
}

/// Starts an engine on `<dir>/engine.db`.
pub fn start_in(dir: tempfile::TempDir, registry: Registry, config: EngineConfig) -> TestEngine {
    let store = Arc::new(SqliteStore::open(db_path(&dir)).expect("open store"));
    let engine = Engine::start(store.clone() as Arc<dyn Store>, registry, config);
    TestEngine { engine, store, dir }
}

pub fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("engine.db")
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

    /// Waits (driven by the update stream) until the instance's status,
    /// read with its history, satisfies `pred`.
    pub async fn wait_until(
        &self,
        id: &InstanceId,
        what: &str,
        pred: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        wait_until(&self.engine, id, what, pred).await
    }

    /// Waits until the instance has this runtime status.
    pub async fn wait_status(&self, id: &InstanceId, status: RuntimeStatus) -> InstanceStatus {
        self.wait_until(id, &format!("status {status}"), |s| {
            s.runtime_status == status
        })
        .await
    }

    /// Shuts the engine down, closes the store (releasing its file lock) and
    /// starts a new engine with `registry` on the same file.
    pub async fn restart(self, registry: Registry, config: EngineConfig) -> TestEngine {
        let TestEngine { engine, store, dir } = self;
        engine.shutdown(Duration::from_secs(10)).await;
        drop(engine);
        // Every engine task is done after shutdown: the store is ours alone.
        let store = Arc::try_unwrap(store).expect("the engine released the store on shutdown");
        drop(store);
        start_in(dir, registry, config)
    }
}

/// Waits until the instance's status (with history) satisfies `pred`. Woken
/// by the engine's update stream; re-reads the store after every update.
pub async fn wait_until(
    engine: &Engine,
    id: &InstanceId,
    what: &str,
    pred: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    let mut rx = engine.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = engine
            .status(id, true)
            .await
            .expect("status")
            .unwrap_or_else(|| panic!("instance {id} not found while waiting for {what}"));
        if pred(&status) {
            return status;
        }
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => panic!("timed out waiting for {what}; last status: {status:?}"),
                Ok(Ok(u)) if u.instance_id != *id => continue,
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => panic!("update stream closed"),
            }
        }
    }
}

/// Polls an async condition every few milliseconds until it holds, failing
/// the test after `timeout`. For conditions no update announces (purges).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The type names of a history, in order.
pub fn kinds(history: &[HistoryEvent]) -> Vec<&'static str> {
    history.iter().map(|e| e.kind.type_name()).collect()
}

/// The type names of a status's history.
pub fn history_kinds(status: &InstanceStatus) -> Vec<&'static str> {
    kinds(status.history.as_deref().expect("status read with history"))
}

/// Counts events of one type in a status's history.
pub fn count(status: &InstanceStatus, kind: &str) -> usize {
    history_kinds(status).iter().filter(|k| **k == kind).count()
}
