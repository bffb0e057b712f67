//! Runs the store conformance suite (`durable::conformance`) against
//! [`SqliteStore`], plus checks specific to the SQLite store.

use std::sync::Arc;
use std::time::Duration;

use durable::conformance::Harness;
use durable::store::sqlite::SqliteConfig;
use durable::store::NewInstance;
use durable::{InstanceId, SqliteStore, Store};
use serde_json::json;

/// A SQLite store in a temp dir that lives as long as the harness.
struct SqliteHarness {
    dir: tempfile::TempDir,
    open: Option<Arc<SqliteStore>>,
}

impl SqliteHarness {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("store.db")
    }
}

impl Harness for SqliteHarness {
    async fn open(&mut self) -> Arc<dyn Store> {
        let store = Arc::new(
            SqliteStore::open_with(
                self.path(),
                SqliteConfig {
                    lifecycle_outbox: true,
                    ..SqliteConfig::default()
                },
            )
            .expect("open store"),
        );
        self.open = Some(store.clone());
        store
    }

    async fn close(&mut self, store: Arc<dyn Store>) {
        drop(store);
        if let Some(store) = self.open.take() {
            // Drains the writer, including the delivery counts it persists
            // in the background.
            store.close();
        }
    }
}

async fn harness() -> SqliteHarness {
    SqliteHarness {
        dir: tempfile::tempdir().expect("tempdir"),
        open: None,
    }
}

durable::conformance_tests!(harness);

/// Dropping the last handle (no explicit close) also drains the writer: work
/// and delivery counts handed out just before the drop are there on reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_then_reopen_keeps_work_and_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let id = InstanceId::new("dropped").unwrap();
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_instance(NewInstance {
                instance_id: id.clone(),
                name: "Orch".into(),
                input: json!(1),
                execution_id: "e1".into(),
                parent: None,
                created_at: durable::types::now(),
                only_if_absent: false,
            })
            .await
            .unwrap();
        for expected in 1..=3 {
            let items = store
                .fetch_orchestration_work(10, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].attempts, expected);
            store
                .abandon_orchestration_work(&items[0].lock, Duration::ZERO)
                .await
                .unwrap();
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    let items = store
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(items.len(), 1, "queued work lost across reopen");
    assert_eq!(items[0].instance_id, id);
    assert_eq!(items[0].attempts, 4, "delivery count lost across reopen");
    let st = store.get_instance(&id, false).await.unwrap().unwrap();
    assert_eq!(st.input, json!(1));
}

/// Commits reach the database file by a checkpoint on the store's own
/// thread after a few dozen commits, not only when the writer's log is
/// full (tens of thousands of pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_checkpointed_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    let initial = std::fs::metadata(&path).unwrap().len();
    // Rows big enough that the database needs new pages.
    let input = json!("x".repeat(2000));
    for i in 0..64 {
        store
            .create_instance(NewInstance {
                instance_id: InstanceId::new(format!("ckpt-{i}")).unwrap(),
                name: "Orch".into(),
                input: input.clone(),
                execution_id: "e1".into(),
                parent: None,
                created_at: durable::types::now(),
                only_if_absent: false,
            })
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let len = std::fs::metadata(&path).unwrap().len();
        if len > initial + 64 * 2000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "database file still {len} bytes (was {initial}): nothing checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.close();
}
