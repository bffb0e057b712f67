//! A start whose batched commit reached PostgreSQL but whose answer was
//! lost (a connection cut at that moment) is not answered as a conflict
//! with itself: the PostgreSQL store retries a failed batch one start at a
//! time, and a retried start that finds its own execution already there
//! succeeds. Fault injection (`durable-pg-create-batch-answer`) fails
//! every batch right after its commit. Its own test binary: failpoints
//! are process-wide, and other tests' batches must not trip it.

use std::sync::Arc;
use std::time::Duration;

use durable::store::{NewActivity, StatusUpdate, TurnCommit, WorkLock};
use durable::testing::PgCluster;
use durable::{InstanceId, PostgresConfig, PostgresStore, RuntimeStatus, Store};
use serde_json::json;

/// A new instance and a first turn that schedules one activity, with an
/// execution id of its own (as every start has).
fn start(id: &str) -> (durable::store::NewInstance, TurnCommit) {
    let instance_id = InstanceId::new(id).unwrap();
    let execution_id = uuid::Uuid::now_v7().simple().to_string();
    let instance = durable::store::NewInstance {
        instance_id: instance_id.clone(),
        name: "Orch".into(),
        input: json!(id),
        execution_id: execution_id.clone(),
        parent: None,
        created_at: durable::types::now(),
        only_if_absent: false,
    };
    let commit = TurnCommit {
        lock: WorkLock(String::new()),
        instance_id: instance_id.clone(),
        consumed: Vec::new(),
        replace_history: false,
        history: Vec::new(),
        status: StatusUpdate {
            runtime_status: RuntimeStatus::Running,
            execution_id: execution_id.clone(),
            input: None,
            output: None,
            custom_status: None,
            failure: None,
            history_events: 0,
            history_bytes: 0,
            updated_at: durable::types::now(),
        },
        activities: vec![NewActivity {
            instance_id,
            execution_id,
            task_id: 1,
            name: "Act".into(),
            input: json!(null),
        }],
        messages: Vec::new(),
        new_instances: Vec::new(),
    };
    (instance, commit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_batched_commit_lost_its_answer_is_not_a_conflict() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let store = Arc::new(
        PostgresStore::connect(PostgresConfig::new(&url))
            .await
            .unwrap(),
    );
    let scenario = fail::FailScenario::setup();
    fail::cfg("durable-pg-create-batch-answer", "return").unwrap();
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let retried = retried.clone();
        fail::cfg_callback("durable-pg-batch-one-by-one", move || {
            retried.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
    }
    // Many at once: all but the first queue behind it and go as batches.
    const STARTS: usize = 64;
    let starts = (0..STARTS).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let (instance, commit) = start(&format!("s{i:02}"));
            store.create_instance_with_turn(instance, commit).await
        })
    });
    let results = futures::future::join_all(starts).await;
    fail::cfg("durable-pg-create-batch-answer", "off").unwrap();
    assert!(
        retried.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no batch of starts formed: the lost answer was never injected"
    );
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        assert!(
            matches!(r, Ok(true)),
            "start s{i:02} answered {r:?} though it committed"
        );
    }
    // Each started once, with its first turn: one activity each.
    let mut activities = Vec::new();
    loop {
        let got = store
            .fetch_activity_work(100, Duration::from_secs(60))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        activities.extend(got.into_iter().map(|a| a.activity.instance_id.to_string()));
    }
    activities.sort();
    let expected: Vec<String> = (0..STARTS).map(|i| format!("s{i:02}")).collect();
    assert_eq!(activities, expected);
    // Beside a new start whose batch loses its answer, starts of live ids
    // with other executions are still conflicts, retried or not.
    fail::cfg("durable-pg-create-batch-answer", "return").unwrap();
    let again = futures::future::join_all(["s00", "s01", "s99"].map(|id| {
        let store = store.clone();
        tokio::spawn(async move {
            let (instance, commit) = start(id);
            store.create_instance_with_turn(instance, commit).await
        })
    }))
    .await;
    let again: Vec<_> = again.into_iter().map(Result::unwrap).collect();
    assert!(
        matches!(
            &again[..],
            [
                Err(durable::StoreError::Conflict(_)),
                Err(durable::StoreError::Conflict(_)),
                Ok(true)
            ]
        ),
        "{again:?}"
    );
    scenario.teardown();
    store.close().await;
}
