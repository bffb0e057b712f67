//! Bad input and failures: unknown names, undecodable input, panics, poison
//! work items, history limits, retention, foreign database files.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durable::{
    EngineConfig, Error, EventKind, HistoryLimits, InstanceId, OrchestrationContext, Registry,
    RetentionPolicy, RuntimeStatus, SqliteStore, Store, StoreError, TaskError,
};
use serde_json::json;

use common::count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_orchestration_is_refused_at_start() {
    let t = common::start(Registry::new());
    match t.engine.start_orchestration("Nope", None, ()).await {
        Err(Error::UnknownOrchestration(name)) => assert_eq!(name, "Nope"),
        other => panic!("{other:?}"),
    }
    let page = t
        .engine
        .list(&durable::InstanceQuery {
            filter: Default::default(),
            page_size: 10,
            with_input: true,
            continuation: None,
        })
        .await
        .unwrap();
    assert!(page.instances.is_empty(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_sub_orchestration_fails_clearly() {
    let registry =
        Registry::new().orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let err = ctx
                .call_sub_orchestration::<()>("Missing", None, ())
                .await
                .expect_err("no such orchestration");
            Ok::<_, TaskError>(json!([err.kind, err.message]))
        });
    let t = common::start(registry);
    let status = t.run("Parent", json!(null)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let out = status.output.unwrap();
    assert_eq!(out[0], json!("UnknownOrchestration"));
    assert!(out[1].as_str().unwrap().contains("Missing"), "{out}");
    let child = InstanceId::new(format!("{}:0", status.instance_id)).unwrap();
    let child = t.engine.status(&child, false).await.unwrap().unwrap();
    assert_eq!(child.runtime_status, RuntimeStatus::Failed);
    assert_eq!(child.failure.unwrap().kind, "UnknownOrchestration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_of_an_orchestration_no_longer_registered_fails() {
    let with = || {
        Registry::new().orchestration("Old", |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        })
    };
    let t = common::start(with());
    let id = t.engine.start_orchestration("Old", None, ()).await.unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    // The new build dropped "Old".
    let t = t.restart(Registry::new(), EngineConfig::default()).await;
    t.engine.raise_event(&id, "go", ()).await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "UnknownOrchestration");
    assert!(failure.message.contains("'Old'"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_input_fails_with_invalid_input() {
    let registry = Registry::new().orchestration(
        "Add",
        |_ctx: OrchestrationContext, (a, b): (u32, u32)| async move { Ok::<_, TaskError>(a + b) },
    );
    let t = common::start(registry);
    let status = t.run("Add", json!("not a pair")).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "InvalidInput");
    assert!(failure.message.contains("Add"), "{failure:?}");
    assert_eq!(t.run("Add", json!([2, 3])).await.output, Some(json!(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_input_and_event_payload_mismatch_are_task_errors() {
    let registry = Registry::new()
        .orchestration("Bad", |ctx: OrchestrationContext, _: ()| async move {
            let a = ctx
                .call_activity::<u32>("Double", "text")
                .await
                .expect_err("bad activity input");
            let b = ctx
                .wait_for_event::<u32>("e")
                .await
                .expect_err("bad payload");
            let c = ctx
                .call_activity::<u32>("Name", ())
                .await
                .expect_err("output does not fit");
            Ok::<_, TaskError>(json!([a.kind, b.kind, c.kind]))
        })
        .activity(
            "Double",
            |_ctx, n: u32| async move { Ok::<_, String>(n * 2) },
        )
        .activity("Name", |_ctx, _: ()| async move { Ok::<_, String>("name") });
    let t = common::start(registry);
    let id = t.engine.start_orchestration("Bad", None, ()).await.unwrap();
    t.engine
        .raise_event(&id, "e", "not a number")
        .await
        .unwrap();
    let status = t.wait(&id).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(
        status.output,
        Some(json!(["InvalidInput", "InvalidInput", "InvalidOutput"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_fail_the_task_or_the_instance_and_nothing_else() {
    let registry = Registry::new()
        .orchestration(
            "CallsPanicky",
            |ctx: OrchestrationContext, _: ()| async move {
                let err = ctx
                    .call_activity::<()>("Panicky", ())
                    .await
                    .expect_err("the activity panicked");
                Ok::<_, TaskError>(json!([err.kind, err.message]))
            },
        )
        .orchestration("Panics", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<()>("Fine", ()).await?;
            if !ctx.is_replaying() {
                panic!("orchestrator bug");
            }
            Ok::<_, TaskError>(())
        })
        .orchestration("Survivor", |ctx: OrchestrationContext, _: ()| async move {
            let v: u32 = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(v)
        })
        .activity("Panicky", |_ctx, _: ()| async move {
            if true {
                panic!("activity bug");
            }
            Ok::<_, String>(())
        })
        .activity("Fine", |_ctx, _: ()| async move { Ok::<_, String>(()) });
    let t = common::start(registry);
    let survivor = t
        .engine
        .start_orchestration("Survivor", None, ())
        .await
        .unwrap();
    t.wait_status(&survivor, RuntimeStatus::Running).await;

    let status = t.run("CallsPanicky", json!(null)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let out = status.output.unwrap();
    assert_eq!(out[0], json!("Panic"));
    assert!(out[1].as_str().unwrap().contains("activity bug"), "{out}");
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    let failed = full
        .history
        .unwrap()
        .into_iter()
        .find_map(|e| match e.kind {
            EventKind::TaskFailed { error, .. } => Some(error),
            _ => None,
        })
        .expect("TaskFailed recorded");
    assert_eq!(failed.kind, "Panic");

    let status = t.run("Panics", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "Panic");
    assert!(failure.message.contains("orchestrator bug"), "{failure:?}");

    // The engine and the other instance are unaffected.
    t.engine.raise_event(&survivor, "go", 7).await.unwrap();
    assert_eq!(t.wait(&survivor).await.output, Some(json!(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_activity_fails_the_task() {
    let registry =
        Registry::new().orchestration("Calls", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<()>("Ghost", ()).await?;
            Ok::<_, TaskError>(())
        });
    let t = common::start(registry);
    let status = t.run("Calls", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    let error = full
        .history
        .unwrap()
        .into_iter()
        .find_map(|e| match e.kind {
            EventKind::TaskFailed { error, .. } => Some(error),
            _ => None,
        })
        .unwrap();
    assert_eq!(error.kind, "UnknownActivity");
    assert!(error.message.contains("Ghost"));
    assert!(status.failure.unwrap().message.contains("Ghost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_that_never_finishes_is_quarantined() {
    let deliveries = Arc::new(AtomicU32::new(0));
    let d = deliveries.clone();
    let registry = Registry::new()
        .orchestration("Stuck", |ctx: OrchestrationContext, _: ()| async move {
            match ctx.call_activity::<()>("Hang", ()).await {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("{}: {}", e.kind, e.message)),
            }
        })
        .activity("Hang", move |ctx, _: ()| {
            d.fetch_add(1, Ordering::SeqCst);
            assert!(ctx.attempt <= 2, "delivered a third time");
            async move {
                std::future::pending::<()>().await;
                Ok::<_, String>(())
            }
        });
    let config = EngineConfig {
        max_attempts: 2,
        activity_lease: Duration::from_millis(200),
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let status = t.run("Stuck", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert!(failure.message.contains("Poison"), "{failure:?}");
    assert!(failure.message.contains("quarantined"), "{failure:?}");
    assert_eq!(deliveries.load(Ordering::SeqCst), 2);
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(&full, "TaskFailed"), 1);
    // The work item is gone: it is not handed out again.
    assert_eq!(t.store.queue_depth().await.unwrap(), (0, 0));
    let items = t
        .store
        .fetch_activity_work(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limit_fails_the_instance() {
    let registry = Registry::new()
        .orchestration("Loop", |ctx: OrchestrationContext, n: u32| async move {
            for i in 0..n {
                ctx.call_activity::<u32>("Id", i).await?;
            }
            Ok::<_, TaskError>(n)
        })
        .activity("Id", |_ctx, n: u32| async move { Ok::<_, String>(n) });
    let config = EngineConfig {
        history_limits: HistoryLimits {
            max_events: 12,
            max_bytes: u64::MAX,
        },
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    assert_eq!(
        t.run("Loop", json!(1)).await.runtime_status,
        RuntimeStatus::Completed
    );
    let status = t.run("Loop", json!(100)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "HistoryLimit");
    assert!(failure.message.contains("12 events"), "{failure:?}");
    assert!(status.history_events > 12 && status.history_events < 20);
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(full.history.unwrap().len() as u64, status.history_events);

    // Bytes too.
    let registry = Registry::new()
        .orchestration("Big", |ctx: OrchestrationContext, n: usize| async move {
            // Keeps going after the big result: the limit stops it.
            for _ in 0..3 {
                ctx.call_activity::<String>("Blob", n).await?;
            }
            Ok::<_, TaskError>(())
        })
        .activity("Blob", |_ctx, n: usize| async move {
            Ok::<_, String>("x".repeat(n))
        });
    let config = EngineConfig {
        history_limits: HistoryLimits {
            max_events: 1_000,
            max_bytes: 4_096,
        },
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let status = t.run("Big", json!(10_000)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    assert_eq!(status.failure.unwrap().kind, "HistoryLimit");
    assert!(status.history_bytes > 4_096);
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        count(&full, "TaskCompleted"),
        1,
        "stopped at the first excess"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_finished_instances() {
    let registry = Registry::new()
        .orchestration("Quick", |_ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, TaskError>(1)
        })
        .orchestration("Wait", |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        });
    let config = EngineConfig {
        retention: Some(RetentionPolicy {
            max_age: Duration::ZERO,
            interval: Duration::from_millis(50),
            batch: 2,
        }),
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let live = t
        .engine
        .start_orchestration("Wait", None, ())
        .await
        .unwrap();
    let mut done = Vec::new();
    for _ in 0..5 {
        let id = t
            .engine
            .start_orchestration("Quick", None, ())
            .await
            .unwrap();
        done.push(id);
    }
    common::eventually("finished instances purged", Duration::from_secs(10), || {
        let engine = t.engine.clone();
        let done = done.clone();
        async move {
            for id in &done {
                if engine.status(id, false).await.unwrap().is_some() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let live = t.engine.status(&live, false).await.unwrap().unwrap();
    assert!(!live.runtime_status.is_terminal());
}

fn assert_refused(path: &std::path::Path) {
    let before = std::fs::read(path).unwrap();
    match SqliteStore::open(path) {
        Err(StoreError::Incompatible(msg)) => {
            assert!(msg.contains(&path.display().to_string()), "{msg}")
        }
        Err(other) => panic!("expected Incompatible, got {other:?}"),
        Ok(_) => panic!("opened a foreign file"),
    }
    assert_eq!(std::fs::read(path).unwrap(), before, "the file was changed");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() == 0)
            .unwrap_or(true),
        "a WAL was written next to a foreign file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_database_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();

    let junk = dir.path().join("junk.db");
    let bytes: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&junk, &bytes).unwrap();
    assert_refused(&junk);

    let other = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers (name) VALUES ('ana');")
            .unwrap();
    }
    assert_refused(&other);

    // Ours, but from a future schema.
    let future = dir.path().join("future.db");
    {
        let store = SqliteStore::open(&future).unwrap();
        drop(store);
        let conn = rusqlite::Connection::open(&future).unwrap();
        conn.execute_batch("PRAGMA user_version = 99;").unwrap();
    }
    assert!(matches!(
        SqliteStore::open(&future),
        Err(StoreError::Incompatible(_))
    ));

    // An empty file is a new store.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    SqliteStore::open(&empty).expect("an empty file becomes a store");
}

/// A store written by the previous schema (version 3: instances in a rowid
/// table) is upgraded in place at open, its instances and work intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_store_is_upgraded_with_its_work() {
    use durable::store::NewInstance;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    let id = durable::InstanceId::new("kept").unwrap();
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_instance(NewInstance {
                instance_id: id.clone(),
                name: "Orch".into(),
                input: json!({"n": 7}),
                execution_id: "kept@1".into(),
                parent: None,
                created_at: durable::types::now(),
                only_if_absent: false,
            })
            .await
            .unwrap();
        store.close();
    }
    {
        // Back to version 3 by hand: the same rows in a rowid table.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE v3 (instance_id TEXT PRIMARY KEY, name TEXT NOT NULL, execution_id TEXT NOT NULL,
               runtime_status TEXT NOT NULL, input TEXT NOT NULL, output TEXT, custom_status TEXT, failure TEXT,
               created_at INTEGER NOT NULL, last_updated_at INTEGER NOT NULL, parent_instance_id TEXT,
               history_events INTEGER NOT NULL DEFAULT 0, history_bytes INTEGER NOT NULL DEFAULT 0,
               attempts INTEGER NOT NULL DEFAULT 0);
             INSERT INTO v3 SELECT * FROM instances;
             DROP TABLE instances;
             ALTER TABLE v3 RENAME TO instances;
             CREATE INDEX instances_by_created ON instances(created_at, instance_id);
             CREATE INDEX instances_by_status ON instances(runtime_status, created_at);
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).expect("a version 3 store opens");
    let status = store.get_instance(&id, false).await.unwrap().unwrap();
    assert_eq!(status.runtime_status, RuntimeStatus::Pending);
    assert_eq!(status.input, json!({"n": 7}));
    let work = store
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(work.len(), 1, "its start message is still queued");
    assert_eq!(work[0].instance_id, id);
    store.close();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'instances'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("WITHOUT ROWID"), "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_is_owned_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.db");
    let first = SqliteStore::open(&path).unwrap();
    assert!(SqliteStore::open(&path).is_err(), "second open must fail");
    drop(first);
    SqliteStore::open(&path).expect("free again once closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_turns_that_never_commit_are_quarantined() {
    let polls = Arc::new(AtomicU32::new(0));
    let p = polls.clone();
    let registry =
        Registry::new().orchestration("Slow", move |ctx: OrchestrationContext, _: ()| {
            let p = p.clone();
            async move {
                p.fetch_add(1, Ordering::SeqCst);
                if !ctx.is_replaying() {
                    // A turn that outlives its lease: its commit is refused.
                    let until = std::time::Instant::now() + Duration::from_millis(300);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                let _: () = ctx.wait_for_event("never").await?;
                Ok::<_, TaskError>(())
            }
        });
    let config = EngineConfig {
        max_attempts: 2,
        orchestration_lease: Duration::from_millis(100),
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let id = t
        .engine
        .start_orchestration("Slow", None, ())
        .await
        .unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "Poison", "{failure:?}");
    assert!(failure.message.contains("quarantined"), "{failure:?}");
    // The first turn is tried once at start (dropped: it outlived the
    // lease), then by the dispatcher until quarantined: never forever.
    assert!(polls.load(Ordering::SeqCst) <= 4, "{polls:?}");
}

/// Panic messages seen by any thread of this test binary (the previous
/// hook still runs, so output is unchanged).
fn record_panics() -> Arc<std::sync::Mutex<Vec<String>>> {
    static SEEN: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<String>>>> =
        std::sync::OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(info.to_string());
            previous(info);
        }));
        seen
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_with_an_unbounded_age_keeps_everything() {
    let panics = record_panics();
    let registry = Registry::new()
        .orchestration("Quick", |_ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, TaskError>(1)
        });
    let config = EngineConfig {
        retention: Some(RetentionPolicy {
            max_age: Duration::MAX,
            interval: Duration::from_millis(10),
            batch: 10,
        }),
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let status = t.run("Quick", json!(null)).await;
    // The retention task looks once at start; shutdown joins it.
    t.engine.shutdown(Duration::from_secs(5)).await;
    let seen = panics.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|p| p.contains("engine.rs")),
        "the retention task panicked: {seen:?}"
    );
    assert!(t
        .engine
        .status(&status.instance_id, false)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_history_no_longer_loads_is_quarantined() {
    let registry = || {
        Registry::new().orchestration("Wait", |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        })
    };
    let t = common::start(registry());
    let id = t
        .engine
        .start_orchestration("Wait", None, ())
        .await
        .unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    let common::TestEngine { engine, store, dir } = t;
    engine.shutdown(Duration::from_secs(5)).await;
    drop(engine);
    drop(Arc::try_unwrap(store).expect("released"));
    // Damage the stored history behind the store's back: every text column
    // of the history table but the instance id.
    {
        let conn = rusqlite::Connection::open(common::db_path(&dir)).unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('history') WHERE type = 'TEXT' AND name != 'instance_id'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!columns.is_empty());
        for c in columns {
            let n = conn
                .execute(
                    &format!("UPDATE history SET {c} = 'not json' WHERE instance_id = ?1"),
                    [id.as_str()],
                )
                .unwrap();
            assert!(n > 0);
        }
    }
    let config = EngineConfig {
        max_attempts: 2,
        ..Default::default()
    };
    let t = common::start_in(dir, registry(), config);
    t.engine.raise_event(&id, "go", ()).await.unwrap();
    let status = t
        .engine
        .wait_for_completion(&id, Duration::from_secs(10))
        .await
        .expect("quarantined, not retried forever");
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    assert_eq!(status.failure.unwrap().kind, "Poison");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_quarantined_before_its_first_commit_still_answers_its_parent() {
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let err = ctx
                .call_sub_orchestration::<()>("SlowChild", None, ())
                .await
                .expect_err("the child is quarantined");
            Ok::<_, TaskError>(json!([err.kind, err.message]))
        })
        .orchestration("SlowChild", |ctx: OrchestrationContext, _: ()| async move {
            if !ctx.is_replaying() {
                // Every live turn outlives its lease (three times over;
                // the lease is long enough that the parent's own turns,
                // under the same lease, fit on a busy machine).
                let until = std::time::Instant::now() + Duration::from_millis(1200);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Ok::<_, TaskError>(())
        });
    let config = EngineConfig {
        max_attempts: 2,
        orchestration_lease: Duration::from_millis(400),
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let mut rx = t.engine.subscribe();
    let status = t
        .engine
        .wait_for_completion(
            &t.engine
                .start_orchestration("Parent", None, ())
                .await
                .unwrap(),
            Duration::from_secs(10),
        )
        .await
        .expect("the parent hears back");
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let out = status.output.unwrap();
    assert_eq!(out[0], json!("Poison"));
    assert!(out[1].as_str().unwrap().contains("quarantined"), "{out}");
    let child = InstanceId::new(format!("{}:0", status.instance_id)).unwrap();
    let mut child_updates = Vec::new();
    while let Ok(u) = rx.try_recv() {
        if u.instance_id == child {
            child_updates.push(u);
        }
    }
    assert!(child_updates
        .iter()
        .all(|u| u.name == "SlowChild" || u.runtime_status == RuntimeStatus::Pending));
    let child = t.engine.status(&child, false).await.unwrap().unwrap();
    assert_eq!(child.runtime_status, RuntimeStatus::Failed);
}
