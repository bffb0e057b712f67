//! Creating instances, fetching their work and committing turns.

use super::helpers::*;
use super::*;

/// `create_instance` queues an `ExecutionStarted` message; the instance is
/// Pending with its input and an empty history.
pub async fn case_create_and_fetch(store: &dyn Store) {
    let created = new_instance("c1", json!({"x": 1}));
    store.create_instance(created.clone()).await.unwrap();

    let st = store
        .get_instance(&iid("c1"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Pending);
    assert_eq!(st.name, "Orch");
    assert_eq!(st.input, json!({"x": 1}));
    assert_eq!(st.execution_id, exec("c1"));
    assert_eq!(st.created_at, created.created_at);
    assert_eq!(st.history_events, 0);
    assert_eq!(st.output, None);
    assert_eq!(st.parent_instance_id, None);
    assert_eq!(st.history, None);
    assert!(store
        .get_instance(&iid("nope"), false)
        .await
        .unwrap()
        .is_none());

    let item = fetch_only(store, "c1").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Pending);
    assert_eq!(item.history_len, 0);
    assert_eq!(item.execution_id, exec("c1"));
    assert_eq!(item.attempts, 1);
    assert_eq!(item.messages.len(), 1, "{:?}", item.messages);
    let m = &item.messages[0].message;
    assert_eq!(m.execution_id.as_deref(), Some(exec("c1").as_str()));
    assert_eq!(
        m.kind,
        EventKind::ExecutionStarted {
            name: "Orch".into(),
            input: json!({"x": 1}),
            execution_id: exec("c1"),
            parent: None,
        }
    );
    assert!(store.load_history(&iid("c1")).await.unwrap().is_empty());
    assert!(
        fetch(store, LONG).await.is_empty(),
        "a leased instance is handed out again"
    );
}

/// Creating a live instance again is a conflict; a terminal one is replaced
/// by a fresh execution with an empty history.
pub async fn case_create_conflict_and_replace(store: &dyn Store) {
    store
        .create_instance(new_instance("r1", json!(1)))
        .await
        .unwrap();
    let r = store.create_instance(new_instance("r1", json!(2))).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(id)) if id.as_str() == "r1"),
        "{r:?}"
    );

    run_turn(store, "r1", RuntimeStatus::Running).await;
    let r = store.create_instance(new_instance("r1", json!(2))).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");

    store
        .send_message(&iid("r1"), raised("go", json!(null)))
        .await
        .unwrap();
    run_turn(store, "r1", RuntimeStatus::Completed).await;
    assert_eq!(history_len(store, "r1").await, 4);

    let mut again = new_instance("r1", json!(2));
    again.execution_id = "r1@2".into();
    store.create_instance(again).await.unwrap();
    let st = store.get_instance(&iid("r1"), true).await.unwrap().unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Pending);
    assert_eq!(st.execution_id, "r1@2");
    assert_eq!(st.input, json!(2));
    assert_eq!(st.output, None);
    assert_eq!(st.history_events, 0);
    assert_eq!(st.history, Some(Vec::new()));

    let item = fetch_only(store, "r1").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Pending);
    assert_eq!(item.execution_id, "r1@2");
    assert_eq!(item.history_len, 0);
    assert_eq!(item.attempts, 1);
    assert_eq!(kinds(&item), ["ExecutionStarted"]);
}

/// A creation marked `only_if_absent` (an idempotent start) is a conflict
/// for any instance of its id, finished ones included, which stay as they
/// were; plain and with its first turn (the batched path:
/// `case_idempotent_creations_committed_together`). A new id is created as
/// usual.
pub async fn case_create_only_if_absent(store: &dyn Store) {
    create_with_status(store, "once", RuntimeStatus::Completed).await;
    let before = store
        .get_instance(&iid("once"), true)
        .await
        .unwrap()
        .unwrap();
    let mut again = new_instance("once", json!("again"));
    again.only_if_absent = true;
    let r = store.create_instance(again).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(id)) if id.as_str() == "once"),
        "{r:?}"
    );
    let (mut again, turn) = first_turn("once", json!("again"));
    again.only_if_absent = true;
    let r = store.create_instance_with_turn(again, turn).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(id)) if id.as_str() == "once"),
        "{r:?}"
    );
    assert_eq!(before.runtime_status, RuntimeStatus::Completed);
    assert_kept(store, "once", &before).await;
    assert!(store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .is_empty());

    // A live one too.
    create_with_status(store, "live", RuntimeStatus::Pending).await;
    let mut again = new_instance("live", json!("again"));
    again.only_if_absent = true;
    let r = store.create_instance(again).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");

    // A new id is created, with its first turn.
    let (mut fresh, turn) = first_turn("fresh", json!("in"));
    fresh.only_if_absent = true;
    store.create_instance_with_turn(fresh, turn).await.unwrap();
    assert_eq!(
        store
            .get_instance(&iid("fresh"), false)
            .await
            .unwrap()
            .unwrap()
            .input,
        json!("in")
    );
}

/// Replacing a Failed instance that still has an unprocessed `Rewound`
/// message leaves nothing of the old instance in the new one's work.
pub async fn case_replace_failed_instance_with_pending_rewind(store: &dyn Store) {
    create_with_status(store, "rw", RuntimeStatus::Failed).await;
    store
        .send_message(
            &iid("rw"),
            Message::now(EventKind::Rewound {
                reason: Some("retry".into()),
            }),
        )
        .await
        .unwrap();
    let mut again = new_instance("rw", json!("second"));
    again.execution_id = "rw@2".into();
    store.create_instance(again).await.unwrap();

    let item = fetch_only(store, "rw").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Pending);
    assert_eq!(item.execution_id, "rw@2");
    assert_eq!(item.history_len, 0);
    assert_eq!(kinds(&item), ["ExecutionStarted"]);
}

/// A leased instance is handed to nobody else, not even when new messages
/// arrive for it; after the commit it comes back with only the new ones.
pub async fn case_single_holder(store: &dyn Store) {
    store
        .create_instance(new_instance("h1", json!(null)))
        .await
        .unwrap();
    store
        .create_instance(new_instance("h2", json!(null)))
        .await
        .unwrap();
    let first = store.fetch_orchestration_work(1, LONG).await.unwrap();
    assert_eq!(first.len(), 1, "max is respected");
    let second = fetch(store, LONG).await;
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].instance_id, second[0].instance_id);
    assert!(fetch(store, LONG).await.is_empty());

    let h1 = if first[0].instance_id.as_str() == "h1" {
        &first[0]
    } else {
        &second[0]
    };
    let late = raised("late", json!(7));
    store.send_message(&iid("h1"), late.clone()).await.unwrap();
    assert!(
        fetch(store, LONG).await.is_empty(),
        "a message made a leased instance fetchable"
    );

    store
        .commit_turn(turn(h1, RuntimeStatus::Running))
        .await
        .unwrap();
    let item = fetch_only(store, "h1").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Running);
    assert_eq!(item.history_len, 2);
    assert_eq!(item.attempts, 1, "a commit resets the attempt count");
    assert_eq!(item.messages.len(), 1);
    assert_eq!(item.messages[0].message, late);
}

/// Concurrent fetchers never get the same instance twice while leased.
pub async fn case_concurrent_fetchers_never_share(store: &dyn Store) {
    const N: usize = 40;
    for i in 0..N {
        store
            .create_instance(new_instance(&format!("cf{i}"), json!(i)))
            .await
            .unwrap();
    }
    let fetched = std::sync::Mutex::new(Vec::new());
    let worker = || async {
        let deadline = Instant::now() + DEADLINE;
        while fetched.lock().unwrap().len() < N && Instant::now() < deadline {
            let items = store.fetch_orchestration_work(3, LONG).await.unwrap();
            fetched
                .lock()
                .unwrap()
                .extend(items.into_iter().map(|i| i.instance_id));
            tokio::task::yield_now().await;
        }
    };
    futures::join!(worker(), worker(), worker(), worker());
    let fetched = fetched.into_inner().unwrap();
    let unique: HashSet<_> = fetched.iter().cloned().collect();
    assert_eq!(
        fetched.len(),
        unique.len(),
        "an instance was handed out twice"
    );
    assert_eq!(unique.len(), N);
}

/// `commit_turn` appends history, deletes consumed messages, updates the
/// status, enqueues activities, sends messages and creates sub-orchestrations.
pub async fn case_commit_turn_effects(store: &dyn Store) {
    store
        .create_instance(new_instance("p", json!("in")))
        .await
        .unwrap();
    let item = fetch_only(store, "p").await;
    store
        .create_instance(new_instance("other", json!(null)))
        .await
        .unwrap();

    let mut c = turn(&item, RuntimeStatus::Running);
    let at = types::now();
    for kind in [
        EventKind::TaskScheduled {
            task_id: 1,
            name: "Act".into(),
            input: json!({"task": 1}),
        },
        EventKind::SubOrchestrationCreated {
            task_id: 2,
            name: "Child".into(),
            instance_id: iid("p-child"),
            input: json!("kid"),
        },
    ] {
        c.history.push(HistoryEvent {
            event_id: c.history.len() as u64,
            timestamp: at,
            kind,
        });
    }
    let expected_history = c.history.clone();
    c.status.history_events = expected_history.len() as u64;
    c.status.history_bytes = 321;
    c.status.custom_status = Some(json!({"stage": 1}));
    c.activities = vec![activity("p", 1)];
    let to_self = raised("to-self", json!(1));
    let to_other = raised("to-other", json!(2));
    c.messages = vec![
        OutgoingMessage {
            instance_id: iid("p"),
            message: to_self.clone(),
        },
        OutgoingMessage {
            instance_id: iid("other"),
            message: to_other.clone(),
        },
    ];
    let link = ParentLink {
        instance_id: iid("p"),
        execution_id: exec("p"),
        task_id: 2,
    };
    c.new_instances = vec![NewInstance {
        instance_id: iid("p-child"),
        name: "Child".into(),
        input: json!("kid"),
        execution_id: "p-child@1".into(),
        parent: Some(link.clone()),
        created_at: types::now(),
        only_if_absent: false,
    }];
    store.commit_turn(c).await.unwrap();

    assert_eq!(
        store.load_history(&iid("p")).await.unwrap(),
        expected_history
    );
    let st = store.get_instance(&iid("p"), false).await.unwrap().unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Running);
    assert_eq!(st.history_events, expected_history.len() as u64);
    assert_eq!(st.history_bytes, 321);
    assert_eq!(st.custom_status, Some(json!({"stage": 1})));
    assert_eq!(st.input, json!("in"), "input kept when the update has none");

    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(*acts[0].activity, activity("p", 1));
    assert_eq!(acts[0].attempts, 1);

    let mut items = fetch(store, LONG).await;
    items.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let ids: Vec<_> = items.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids, ["other", "p", "p-child"]);
    let (other, p, child) = (&items[0], &items[1], &items[2]);

    assert_eq!(p.runtime_status, RuntimeStatus::Running);
    assert_eq!(p.history_len, expected_history.len() as u64);
    assert_eq!(kinds(p), ["EventRaised"], "consumed messages are gone");
    assert_eq!(p.messages[0].message, to_self);

    assert_eq!(kinds(other), ["ExecutionStarted", "EventRaised"]);
    assert_eq!(other.messages[1].message, to_other);
    assert!(other.messages[0].id < other.messages[1].id);

    assert_eq!(child.runtime_status, RuntimeStatus::Pending);
    assert_eq!(child.execution_id, "p-child@1");
    assert_eq!(
        child.messages[0].message.kind,
        EventKind::ExecutionStarted {
            name: "Child".into(),
            input: json!("kid"),
            execution_id: "p-child@1".into(),
            parent: Some(link),
        }
    );
    let cs = store
        .get_instance(&iid("p-child"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cs.parent_instance_id, Some(iid("p")));
    assert_eq!(cs.runtime_status, RuntimeStatus::Pending);
}

/// The first turn of a new instance, committed with its creation: the
/// ExecutionStarted a plain creation would queue is consumed, the turn's
/// effects land, and nothing lands on a conflict. A store that does not
/// fuse them answers `false` and must have created the instance plainly.
pub async fn case_create_with_first_turn(store: &dyn Store) {
    let (inst, commit) = first_turn("f", json!("in"));
    let expected_history = commit.history.clone();
    let fused = store
        .create_instance_with_turn(inst, commit)
        .await
        .expect("create with turn");
    let st = store.get_instance(&iid("f"), false).await.unwrap().unwrap();
    assert_eq!(st.input, json!("in"));
    if !fused {
        assert_eq!(st.runtime_status, RuntimeStatus::Pending);
        let item = fetch_only(store, "f").await;
        assert_eq!(kinds(&item), ["ExecutionStarted"]);
        assert!(store
            .fetch_activity_work(10, LONG)
            .await
            .unwrap()
            .is_empty());
        return;
    }
    assert_eq!(st.runtime_status, RuntimeStatus::Running);
    assert_eq!(st.custom_status, Some(json!("first")));
    assert_eq!(st.history_events, 3);
    assert_eq!(st.history_bytes, 99);
    assert_eq!(
        store.load_history(&iid("f")).await.unwrap(),
        expected_history
    );
    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(*acts[0].activity, activity("f", 0));
    let item = fetch_only(store, "f").await;
    assert_eq!(
        kinds(&item),
        ["EventRaised"],
        "no ExecutionStarted left to run"
    );
    assert_eq!(item.history_len, 3);
    assert_eq!(item.runtime_status, RuntimeStatus::Running);

    // A live instance of that id: a conflict, and nothing of the turn lands.
    let (again, turn_again) = first_turn("f", json!("second"));
    match store.create_instance_with_turn(again, turn_again).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, iid("f")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(history_len(store, "f").await, 3);
    assert!(store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .is_empty());
    let st = store.get_instance(&iid("f"), false).await.unwrap().unwrap();
    assert_eq!(st.input, json!("in"));

    // A finished one is replaced, history and all.
    create_with_status(store, "done", RuntimeStatus::Completed).await;
    let (inst, commit) = first_turn("done", json!("new"));
    assert!(store.create_instance_with_turn(inst, commit).await.unwrap());
    assert_eq!(history_len(store, "done").await, 3);
    assert_eq!(status_of(store, "done").await, RuntimeStatus::Running);
    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].activity.instance_id, iid("done"));
}

/// A sub-orchestration whose id a live instance holds is not created; the
/// parent gets `SubOrchestrationFailed` for the task instead.
pub async fn case_sub_orchestration_conflict(store: &dyn Store) {
    store
        .create_instance(new_instance("taken", json!("original")))
        .await
        .unwrap();
    let first = fetch_only(store, "taken").await;
    store
        .create_instance(new_instance("par", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "par").await;
    let mut c = turn(&item, RuntimeStatus::Running);
    c.new_instances = vec![NewInstance {
        instance_id: iid("taken"),
        name: "Child".into(),
        input: json!("new"),
        execution_id: "taken@2".into(),
        parent: Some(ParentLink {
            instance_id: iid("par"),
            execution_id: exec("par"),
            task_id: 7,
        }),
        created_at: types::now(),
        only_if_absent: false,
    }];
    store.commit_turn(c).await.unwrap();

    let item = fetch_only(store, "par").await;
    assert_eq!(item.messages.len(), 1, "{:?}", item.messages);
    let m = &item.messages[0].message;
    assert_eq!(m.execution_id.as_deref(), Some(exec("par").as_str()));
    assert!(
        matches!(
            &m.kind,
            EventKind::SubOrchestrationFailed { task_id: 7, .. }
        ),
        "{m:?}"
    );

    let st = store
        .get_instance(&iid("taken"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.input, json!("original"));
    assert_eq!(st.execution_id, exec("taken"));
    assert_eq!(st.parent_instance_id, None);
    // The live instance's lease and work are untouched.
    store
        .commit_turn(turn(&first, RuntimeStatus::Running))
        .await
        .unwrap();
    assert_eq!(history_len(store, "taken").await, 2);
}
