//! Messages and histories: send rules, delays, what a terminal commit drops, history order and replacement.

use super::helpers::*;
use super::*;

/// `send_message`: unknown instance is `NotFound`; a terminal one is
/// `Finished`, except `Rewound` for a Failed instance.
pub async fn case_send_message_rules(store: &dyn Store) {
    let r = store
        .send_message(&iid("ghost"), raised("e", json!(1)))
        .await;
    assert!(
        matches!(&r, Err(StoreError::NotFound(id)) if id.as_str() == "ghost"),
        "{r:?}"
    );

    create_with_status(store, "done", RuntimeStatus::Completed).await;
    create_with_status(store, "failed", RuntimeStatus::Failed).await;
    create_with_status(store, "ended", RuntimeStatus::Terminated).await;
    let rewind = || {
        Message::now(EventKind::Rewound {
            reason: Some("again".into()),
        })
    };
    for id in ["done", "failed", "ended"] {
        let r = store.send_message(&iid(id), raised("e", json!(1))).await;
        assert!(
            matches!(&r, Err(StoreError::Finished(i)) if i.as_str() == id),
            "{id}: {r:?}"
        );
    }
    for id in ["done", "ended"] {
        let r = store.send_message(&iid(id), rewind()).await;
        assert!(matches!(r, Err(StoreError::Finished(_))), "{id}: {r:?}");
    }
    assert!(fetch(store, LONG).await.is_empty());

    store.send_message(&iid("failed"), rewind()).await.unwrap();
    let item = fetch_only(store, "failed").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Failed);
    assert_eq!(kinds(&item), ["ExecutionRewound"]);

    create_with_status(store, "live", RuntimeStatus::Running).await;
    let m = raised("e", json!(1));
    store.send_message(&iid("live"), m.clone()).await.unwrap();
    let item = fetch_only(store, "live").await;
    assert_eq!(item.messages.len(), 1);
    assert_eq!(item.messages[0].message, m);
}

/// A message with `visible_at` in the future is not delivered before then;
/// `next_wake_at` reports when it is due; afterwards it is delivered.
pub async fn case_delayed_messages(store: &dyn Store) {
    create_with_status(store, "dm", RuntimeStatus::Running).await;
    let due = later(600);
    let mut timer = Message::now(EventKind::TimerFired {
        task_id: 3,
        fire_at: due,
    });
    timer.visible_at = Some(due);
    store.send_message(&iid("dm"), timer.clone()).await.unwrap();

    let early = fetch(store, LONG).await;
    if types::now() < due {
        assert!(early.is_empty(), "delivered before visible_at");
    }
    let depth = store.queue_depth().await.unwrap();
    if types::now() < due {
        assert_eq!(depth.0, 0, "a delayed message counts as queued work");
    }
    let wake = store.next_wake_at(WorkKind::Orchestration).await.unwrap();
    if early.is_empty() {
        assert_eq!(wake, Some(due));
    }
    let item = match early.into_iter().next() {
        Some(i) => i,
        None => poll_item(store, "dm", LONG).await,
    };
    assert!(types::now() >= due, "delivered before visible_at");
    assert_eq!(item.messages.len(), 1);
    assert_eq!(item.messages[0].message, timer);

    // A timer a turn sends to itself, and an immediate message sent after
    // it, which must not wait behind the timer.
    let mut c = turn(&item, RuntimeStatus::Running);
    let due = later(400);
    let mut timer = Message::now(EventKind::TimerFired {
        task_id: 4,
        fire_at: due,
    });
    timer.visible_at = Some(due);
    c.messages = vec![OutgoingMessage {
        instance_id: iid("dm"),
        message: timer.clone(),
    }];
    store.commit_turn(c).await.unwrap();
    store
        .send_message(&iid("dm"), raised("now", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "dm").await;
    if types::now() < due {
        assert_eq!(kinds(&item), ["EventRaised"], "timer delivered early");
    }
    store
        .commit_turn(turn(&item, RuntimeStatus::Running))
        .await
        .unwrap();
    let wake = store.next_wake_at(WorkKind::Orchestration).await.unwrap();
    if types::now() < due {
        assert_eq!(wake, Some(due));
    }
    let item = if item.messages.iter().any(|m| m.message == timer) {
        item
    } else {
        let early = fetch(store, LONG).await;
        if types::now() < due {
            assert!(early.is_empty(), "delivered before visible_at");
        }
        match early.into_iter().next() {
            Some(i) => i,
            None => poll_item(store, "dm", LONG).await,
        }
    };
    assert!(types::now() >= due, "delivered before visible_at");
    assert!(item.messages.iter().any(|m| m.message == timer));
}

/// A turn that finishes the instance drops the messages still waiting for
/// it, delayed ones included; later messages are refused.
pub async fn case_terminal_commit_drops_inbox(store: &dyn Store) {
    create_with_status(store, "td", RuntimeStatus::Running).await;
    store
        .send_message(&iid("td"), raised("first", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "td").await;
    store
        .send_message(&iid("td"), raised("while-leased", json!(null)))
        .await
        .unwrap();
    let mut delayed = raised("delayed", json!(null));
    delayed.visible_at = Some(later(60_000));
    store.send_message(&iid("td"), delayed).await.unwrap();

    store
        .commit_turn(turn(&item, RuntimeStatus::Completed))
        .await
        .unwrap();
    assert!(fetch(store, LONG).await.is_empty());
    assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
    for kind in [WorkKind::Orchestration, WorkKind::Activity] {
        assert_eq!(store.next_wake_at(kind).await.unwrap(), None, "{kind:?}");
    }
    let r = store
        .send_message(&iid("td"), raised("x", json!(null)))
        .await;
    assert!(matches!(r, Err(StoreError::Finished(_))), "{r:?}");
    let st = store
        .get_instance(&iid("td"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Completed);
    assert_eq!(st.output, Some(json!("done")));
}

/// `replace_history` swaps the whole history (continue-as-new, rewind).
pub async fn case_replace_history(store: &dyn Store) {
    create_with_status(store, "rh", RuntimeStatus::Running).await;
    store
        .send_message(&iid("rh"), raised("go", json!(null)))
        .await
        .unwrap();
    let item = run_turn(store, "rh", RuntimeStatus::Running).await;
    assert_eq!(history_len(store, "rh").await, 4);
    let _ = item;
    store
        .send_message(&iid("rh"), raised("next", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "rh").await;
    let new_history = vec![
        HistoryEvent {
            event_id: 0,
            timestamp: types::now(),
            kind: EventKind::OrchestratorStarted,
        },
        HistoryEvent {
            event_id: 1,
            timestamp: types::now(),
            kind: EventKind::ExecutionStarted {
                name: "Orch".into(),
                input: json!("fresh"),
                execution_id: "rh@2".into(),
                parent: None,
            },
        },
    ];
    let mut c = turn(&item, RuntimeStatus::Running);
    c.replace_history = true;
    c.history = new_history.clone();
    c.status.execution_id = "rh@2".into();
    c.status.input = Some(json!("fresh"));
    c.status.history_events = 2;
    store.commit_turn(c).await.unwrap();

    assert_eq!(store.load_history(&iid("rh")).await.unwrap(), new_history);
    let st = store.get_instance(&iid("rh"), true).await.unwrap().unwrap();
    assert_eq!(st.execution_id, "rh@2");
    assert_eq!(st.input, json!("fresh"));
    assert_eq!(st.history_events, 2);
    assert_eq!(st.history, Some(new_history));
    store
        .send_message(&iid("rh"), raised("after", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "rh").await;
    assert_eq!(item.execution_id, "rh@2");
    assert_eq!(item.history_len, 2);
}

/// `load_history` returns events in `event_id` order (numerically, past 10)
/// across several turns; `get_instance(.., true)` includes them.
pub async fn case_history_order(store: &dyn Store) {
    store
        .create_instance(new_instance("ho", json!(null)))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            store
                .send_message(&iid("ho"), raised("tick", json!(round)))
                .await
                .unwrap();
        }
        let item = fetch_only(store, "ho").await;
        let mut c = turn(&item, RuntimeStatus::Running);
        for k in 0..9u64 {
            c.history.push(HistoryEvent {
                event_id: item.history_len + c.history.len() as u64,
                timestamp: types::now(),
                kind: EventKind::TimerCreated {
                    task_id: round * 100 + k,
                    fire_at: types::now(),
                },
            });
        }
        c.status.history_events = item.history_len + c.history.len() as u64;
        expected.extend(c.history.clone());
        store.commit_turn(c).await.unwrap();
    }
    let history = store.load_history(&iid("ho")).await.unwrap();
    assert!(history.len() > 30);
    let ids: Vec<u64> = history.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, (0..history.len() as u64).collect::<Vec<_>>());
    assert_eq!(history, expected);
    let st = store.get_instance(&iid("ho"), true).await.unwrap().unwrap();
    assert_eq!(st.history, Some(expected));
    let st = store
        .get_instance(&iid("ho"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.history, None);
    assert!(store
        .load_history(&iid("unknown"))
        .await
        .unwrap()
        .is_empty());
}

/// `read_status` reads what a client asked for and no more: no input when
/// not wanted, and of the history the first events within the cap (by
/// count, or stopping after the stored turn that passes the bytes).
pub async fn case_read_status_reads_only_what_is_asked(store: &dyn Store) {
    use crate::store::{HistoryCap, StatusRead};
    let input = json!({ "big": "x".repeat(10_000) });
    store
        .create_instance(new_instance("rs", input.clone()))
        .await
        .unwrap();
    for round in 0..4u64 {
        if round > 0 {
            store
                .send_message(&iid("rs"), raised("tick", json!(round)))
                .await
                .unwrap();
        }
        run_turn(store, "rs", RuntimeStatus::Running).await;
    }
    let all = store.load_history(&iid("rs")).await.unwrap();
    assert_eq!(all.len(), 8, "2 events in each of 4 stored turns");
    let read = |input: bool, history: Option<HistoryCap>| {
        let id = iid("rs");
        async move {
            store
                .read_status(&id, StatusRead { input, history })
                .await
                .unwrap()
                .unwrap()
        }
    };
    let bare = read(false, None).await;
    assert_eq!(bare.input, Value::Null, "no input unless asked");
    assert_eq!(bare.history, None);
    assert_eq!(bare.history_events, 8);
    assert_eq!(bare.runtime_status, RuntimeStatus::Running);
    let full = read(
        true,
        Some(HistoryCap {
            max_events: 100,
            max_bytes: usize::MAX,
        }),
    )
    .await;
    assert_eq!(full.input, input);
    assert_eq!(full.history.as_deref(), Some(&all[..]));
    let by_count = read(
        true,
        Some(HistoryCap {
            max_events: 3,
            max_bytes: usize::MAX,
        }),
    )
    .await;
    assert_eq!(by_count.history.as_deref(), Some(&all[..3]));
    let by_bytes = read(
        false,
        Some(HistoryCap {
            max_events: 100,
            max_bytes: 1,
        }),
    )
    .await;
    assert_eq!(
        by_bytes.history.as_deref(),
        Some(&all[..2]),
        "the first stored turn, which passed the bytes, and no more"
    );
    assert!(store
        .read_status(
            &iid("unknown"),
            StatusRead {
                input: true,
                history: None
            }
        )
        .await
        .unwrap()
        .is_none());
}
