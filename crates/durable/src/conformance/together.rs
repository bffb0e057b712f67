//! Turns of several instances committed at the same moment: a store may
//! commit them together, and each must still land exactly as it would
//! alone (or, with its lease lost, not at all).

use super::helpers::*;
use super::*;

/// Five turns committed at once, one of them under a lease that was lost:
/// the four others land with all their effects (history, status, consumed
/// messages gone and later ones kept, activities queued, a finished
/// instance's inbox dropped, lifecycle rows in order), the fifth changes
/// nothing, and an instance that got a message while its turn ran is due
/// again afterwards.
pub async fn case_turns_committed_together(store: &dyn Store) {
    use RuntimeStatus::*;
    store
        .create_instance(new_instance("tg-stale", json!(null)))
        .await
        .unwrap();
    let stale = poll_item(store, "tg-stale", SHORT).await;
    let fresh = poll_item(store, "tg-stale", LONG).await;
    for id in ["tg-a", "tg-b", "tg-c", "tg-d"] {
        store
            .create_instance(new_instance(id, json!(null)))
            .await
            .unwrap();
    }
    let mut items: BTreeMap<String, OrchestrationWorkItem> = fetch(store, LONG)
        .await
        .into_iter()
        .map(|i| (i.instance_id.to_string(), i))
        .collect();
    assert_eq!(
        items.keys().collect::<Vec<_>>(),
        ["tg-a", "tg-b", "tg-c", "tg-d"]
    );
    // Sent while the turns run: kept for the one that goes on, dropped
    // with the inbox of the one that finishes.
    for id in ["tg-b", "tg-c"] {
        store
            .send_message(&iid(id), raised("late", json!(id)))
            .await
            .unwrap();
    }
    let mut a = turn(&items.remove("tg-a").unwrap(), Running);
    a.activities = vec![activity("tg-a", 1), activity("tg-a", 2)];
    let commits = vec![
        a,
        turn(&items.remove("tg-b").unwrap(), Running),
        turn(&items.remove("tg-c").unwrap(), Completed),
        turn(&items.remove("tg-d").unwrap(), Failed),
        turn(&stale, Completed),
    ];
    let results =
        futures::future::join_all(commits.into_iter().map(|c| store.commit_turn(c))).await;
    for r in &results[..4] {
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(
        matches!(results[4], Err(StoreError::LeaseLost)),
        "{:?}",
        results[4]
    );

    for (id, status) in [
        ("tg-a", Running),
        ("tg-b", Running),
        ("tg-c", Completed),
        ("tg-d", Failed),
    ] {
        assert_eq!(status_of(store, id).await, status, "{id}");
        assert_eq!(history_len(store, id).await, 2, "{id}");
    }
    assert_eq!(status_of(store, "tg-stale").await, Pending);
    assert_eq!(history_len(store, "tg-stale").await, 0);

    let again = fetch(store, LONG).await;
    let ids: Vec<&str> = again.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids, ["tg-b"], "only the message sent meanwhile is due");
    assert_eq!(again[0].messages.len(), 1);
    assert!(matches!(
        &again[0].messages[0].message.kind,
        EventKind::EventRaised { name, .. } if name == "late"
    ));

    let mut tasks: Vec<(String, u64)> = store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .iter()
        .map(|w| (w.activity.instance_id.to_string(), w.activity.task_id))
        .collect();
    tasks.sort();
    assert_eq!(tasks, [("tg-a".to_string(), 1), ("tg-a".to_string(), 2)]);

    let rows = store.lifecycle_outbox(100).await.unwrap();
    let mut seen: Vec<(&str, RuntimeStatus)> = rows
        .iter()
        .map(|e| (e.instance_id.as_str(), e.runtime_status))
        .collect();
    let failed = rows
        .iter()
        .find(|e| e.runtime_status == Failed)
        .expect("a Failed event");
    assert_eq!(
        failed.failure.as_ref().map(|f| f.message.as_str()),
        Some("boom")
    );
    assert!(rows.iter().all(|e| e.name == "Orch"));
    // By instance, each instance's events in outbox order (a stable sort).
    seen.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(
        seen,
        [
            ("tg-a", Running),
            ("tg-b", Running),
            ("tg-c", Running),
            ("tg-c", Completed),
            ("tg-d", Running),
            ("tg-d", Failed),
        ]
    );

    // The lease's real holder still commits.
    store.commit_turn(turn(&fresh, Completed)).await.unwrap();
    assert_eq!(status_of(store, "tg-stale").await, Completed);
}

/// New instances with their first turns created at once: each lands as it
/// would alone, one whose id a live instance holds is a conflict and
/// changes nothing, and a finished one of the same id is replaced.
pub async fn case_creations_committed_together(store: &dyn Store) {
    use RuntimeStatus::*;
    // In this order: the turn of cg-done leases whatever is due.
    create_with_status(store, "cg-done", Completed).await;
    store
        .create_instance(new_instance("cg-live", json!("original")))
        .await
        .unwrap();
    let ids = ["cg-a", "cg-b", "cg-live", "cg-done"];
    let creations = ids.map(|id| {
        let (inst, mut commit) = first_turn(id, json!(id));
        // Writes to its own instance only.
        commit.messages.clear();
        (inst, commit)
    });
    let results = futures::future::join_all(
        creations
            .into_iter()
            .map(|(inst, commit)| store.create_instance_with_turn(inst, commit)),
    )
    .await;
    if matches!(results[0], Ok(false)) {
        return; // a store that does not fuse them (see case_create_with_first_turn)
    }
    for i in [0, 1, 3] {
        assert!(
            matches!(results[i], Ok(true)),
            "{}: {:?}",
            ids[i],
            results[i]
        );
    }
    match &results[2] {
        Err(StoreError::Conflict(id)) => assert_eq!(*id, iid("cg-live")),
        other => panic!("expected a conflict, got {other:?}"),
    }

    for id in ["cg-a", "cg-b", "cg-done"] {
        let st = store.get_instance(&iid(id), false).await.unwrap().unwrap();
        assert_eq!(st.runtime_status, Running, "{id}");
        assert_eq!(st.input, json!(id));
        assert_eq!(
            history_len(store, id).await,
            3,
            "{id}: the old history went"
        );
    }
    let live = store
        .get_instance(&iid("cg-live"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.runtime_status, Pending);
    assert_eq!(live.input, json!("original"));
    assert_eq!(history_len(store, "cg-live").await, 0);

    let mut queued: Vec<String> = store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .iter()
        .map(|w| w.activity.instance_id.to_string())
        .collect();
    queued.sort();
    assert_eq!(queued, ["cg-a", "cg-b", "cg-done"]);
    // Only the plainly created instance has work: the others' start
    // messages were consumed by their first turns.
    let item = fetch_only(store, "cg-live").await;
    assert_eq!(kinds(&item), ["ExecutionStarted"]);

    let rows = store.lifecycle_outbox(100).await.unwrap();
    let of = |id: &str| -> Vec<RuntimeStatus> {
        rows.iter()
            .filter(|e| e.instance_id == id)
            .map(|e| e.runtime_status)
            .collect()
    };
    assert_eq!(of("cg-a"), [Running]);
    assert_eq!(of("cg-b"), [Running]);
    assert_eq!(of("cg-done"), [Running, Completed, Running]);
    assert!(of("cg-live").is_empty());
}

/// Creations marked `only_if_absent` arriving together (two deliveries of
/// events at once, each starting its instance), after a plain one that
/// keeps the store busy so they are likely committed as one batch: the
/// finished instance of one id stays as it was, the new id is created.
pub async fn case_idempotent_creations_committed_together(store: &dyn Store) {
    create_with_status(store, "ci-done", RuntimeStatus::Completed).await;
    let before = store
        .get_instance(&iid("ci-done"), true)
        .await
        .unwrap()
        .unwrap();
    let ids = ["ci-first", "ci-done", "ci-new"];
    let creations = ids.map(|id| {
        let (mut inst, mut commit) = first_turn(id, json!(id));
        commit.messages.clear();
        inst.only_if_absent = id != "ci-first";
        (inst, commit)
    });
    let results = futures::future::join_all(
        creations
            .into_iter()
            .map(|(inst, commit)| store.create_instance_with_turn(inst, commit)),
    )
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    match &results[1] {
        Err(StoreError::Conflict(id)) => assert_eq!(*id, iid("ci-done")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(before.runtime_status, RuntimeStatus::Completed);
    assert_kept(store, "ci-done", &before).await;
    let new = store
        .get_instance(&iid("ci-new"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.input, json!("ci-new"));
    let mut queued: Vec<String> = store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .iter()
        .map(|w| w.activity.instance_id.to_string())
        .collect();
    queued.sort();
    if matches!(results[0], Ok(true)) {
        assert_eq!(queued, ["ci-first", "ci-new"]);
    }
}

/// One new id created twice at the same moment (two clients starting the
/// same instance): one start lands whole, the other is a conflict that
/// changes nothing. A store that batches creations cannot put both in one
/// statement, so this also takes its fallback: the batch fails as a
/// whole and each creation is committed on its own.
pub async fn case_same_instance_created_twice_at_once(store: &dyn Store) {
    let [first, second] = ["first", "second"].map(|input| {
        let (mut inst, mut commit) = first_turn("twice", json!(input));
        // Writes to its own instance only (what a store may batch).
        commit.messages.clear();
        // Each start has an execution id of its own, as the engine's do
        // (a store may recognise its own start by it after a lost answer).
        let exec = format!("{}-{input}", inst.execution_id);
        inst.execution_id = exec.clone();
        commit.status.execution_id = exec.clone();
        for a in &mut commit.activities {
            a.execution_id = exec.clone();
        }
        for e in &mut commit.history {
            if let EventKind::ExecutionStarted { execution_id, .. } = &mut e.kind {
                *execution_id = exec.clone();
            }
        }
        (inst, commit)
    });
    let (a, b) = tokio::join!(
        store.create_instance_with_turn(first.0, first.1),
        store.create_instance_with_turn(second.0, second.1),
    );
    let (won, input) = match (&a, &b) {
        (Ok(fused), Err(StoreError::Conflict(id))) => {
            assert_eq!(*id, iid("twice"));
            (*fused, "first")
        }
        (Err(StoreError::Conflict(id)), Ok(fused)) => {
            assert_eq!(*id, iid("twice"));
            (*fused, "second")
        }
        other => panic!("expected one start and one conflict, got {other:?}"),
    };
    let st = store
        .get_instance(&iid("twice"), false)
        .await
        .unwrap()
        .expect("the instance that won");
    assert_eq!(st.input, json!(input));
    if won {
        assert_eq!(st.runtime_status, RuntimeStatus::Running);
        assert_eq!(history_len(store, "twice").await, 3);
        let queued = store.fetch_activity_work(10, LONG).await.unwrap();
        assert_eq!(queued.len(), 1, "one start's activity, not two");
    }
}
