//! Leases: lost, expired, abandoned; completing activities under them.

use super::helpers::*;
use super::*;

/// A commit under a lease that is not (or no longer) held fails with
/// `LeaseLost` and changes nothing.
pub async fn case_commit_with_lost_lease(store: &dyn Store) {
    store
        .create_instance(new_instance("ll", json!(null)))
        .await
        .unwrap();
    store
        .create_instance(new_instance("bystander", json!(null)))
        .await
        .unwrap();
    let mut items = fetch(store, LONG).await;
    items.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let (bystander, item) = (items[0].clone(), items[1].clone());
    assert_eq!(item.instance_id.as_str(), "ll");

    let with_effects = |lock: WorkLock, instance: &str| {
        let mut c = turn(&item, RuntimeStatus::Completed);
        c.lock = lock;
        c.instance_id = iid(instance);
        c.activities = vec![activity(instance, 1)];
        c.messages = vec![OutgoingMessage {
            instance_id: iid("bystander"),
            message: raised("leak", json!(null)),
        }];
        c.new_instances = vec![new_instance("ghost", json!(null))];
        c
    };
    let attempts: [(WorkLock, &str); 2] = [
        (WorkLock("not-a-lease".into()), "ll"),
        // Another instance's lease does not cover this one.
        (bystander.lock.clone(), "ll"),
    ];
    for (lock, instance) in attempts {
        let r = store.commit_turn(with_effects(lock, instance)).await;
        assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    }
    let assert_unchanged = || async {
        assert_eq!(history_len(store, "ll").await, 0);
        let st = store
            .get_instance(&iid("ll"), false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st.runtime_status, RuntimeStatus::Pending);
        assert_eq!(st.history_events, 0);
        assert!(store
            .get_instance(&iid("ghost"), false)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .fetch_activity_work(10, LONG)
            .await
            .unwrap()
            .is_empty());
    };
    assert_unchanged().await;

    // The real holder commits once; a second commit under the same lease fails.
    store
        .commit_turn(turn(&item, RuntimeStatus::Running))
        .await
        .unwrap();
    let r = store.commit_turn(turn(&item, RuntimeStatus::Running)).await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    assert_eq!(history_len(store, "ll").await, 2);

    // Expired and re-fetched by someone else: the old holder is refused.
    store
        .send_message(&iid("ll"), raised("again", json!(null)))
        .await
        .unwrap();
    let stale = poll_item(store, "ll", SHORT).await;
    let fresh = poll_item(store, "ll", LONG).await;
    assert_eq!(fresh.attempts, stale.attempts + 1);
    let r = store
        .commit_turn(turn(&stale, RuntimeStatus::Completed))
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    let r = store
        .abandon_orchestration_work(&stale.lock, Duration::ZERO)
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    assert_eq!(history_len(store, "ll").await, 2);
    assert_eq!(status_of(store, "ll").await, RuntimeStatus::Running);
    store
        .commit_turn(turn(&fresh, RuntimeStatus::Running))
        .await
        .unwrap();
    assert_eq!(history_len(store, "ll").await, 4);
    // The bystander never received the message of the refused commits.
    store
        .commit_turn(turn(&bystander, RuntimeStatus::Running))
        .await
        .unwrap();
    assert!(fetch(store, LONG).await.is_empty());
}

/// A commit racing its own lease expiry either lands (and no rival holder
/// got the messages it consumed) or fails with `LeaseLost` (and changed
/// nothing): two holders never both act on the same messages.
pub async fn case_commit_racing_lease_expiry(store: &dyn Store) {
    const ROUNDS: usize = 60;
    let lease = Duration::from_millis(2);
    for round in 0..ROUNDS {
        let id = format!("race{round}");
        store
            .create_instance(new_instance(&id, json!(null)))
            .await
            .unwrap();
        let item = poll_item(store, &id, lease).await;
        let commit = turn(&item, RuntimeStatus::Running);
        let consumed = commit.consumed.clone();
        let done = std::sync::atomic::AtomicBool::new(false);
        let committer = async {
            let r = store.commit_turn(commit).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        };
        let rival = async {
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let got = fetch(store, LONG)
                    .await
                    .into_iter()
                    .find(|i| i.instance_id.as_str() == id);
                if got.is_some() || finished {
                    return got;
                }
                tokio::task::yield_now().await;
            }
        };
        let (committed, rival) = futures::join!(committer, rival);
        match committed {
            Ok(()) => {
                if let Some(r) = &rival {
                    assert!(
                        r.messages.iter().all(|m| !consumed.contains(&m.id)),
                        "round {round}: a rival holder got the messages of a turn that committed"
                    );
                }
                assert_eq!(history_len(store, &id).await, 2);
            }
            Err(StoreError::LeaseLost) => {
                assert_eq!(history_len(store, &id).await, 0);
                assert_eq!(status_of(store, &id).await, RuntimeStatus::Pending);
            }
            Err(e) => panic!("round {round}: {e:?}"),
        }
    }
}

/// An orchestration lease that runs out returns the item to the queue with
/// its attempt count raised; `next_wake_at` reports the expiry.
pub async fn case_orchestration_lease_expiry(store: &dyn Store) {
    store
        .create_instance(new_instance("le", json!("x")))
        .await
        .unwrap();
    let t0 = Instant::now();
    let short = store.fetch_orchestration_work(10, SHORT).await.unwrap();
    let fetched_at = Instant::now();
    assert_eq!(short.len(), 1);
    let short = short.into_iter().next().unwrap();
    assert_eq!(short.instance_id.as_str(), "le");
    assert_eq!(short.attempts, 1);

    let wake = store.next_wake_at(WorkKind::Orchestration).await.unwrap();
    let wake = wake.expect("a lease expiry is due");
    assert!(
        wake <= types::now() + chrono::Duration::from_std(SHORT).unwrap(),
        "next_wake_at {wake} is after the lease expiry"
    );

    let again = fetch(store, LONG).await;
    if fetched_at.elapsed() < SHORT {
        assert!(again.is_empty(), "handed out before its lease expired");
    }
    let back = match again.into_iter().find(|i| i.instance_id.as_str() == "le") {
        Some(i) => i,
        None => poll_item(store, "le", LONG).await,
    };
    assert!(t0.elapsed() >= SHORT, "came back before its lease expired");
    assert_eq!(back.attempts, 2);
    assert_eq!(back.messages, short.messages);
    assert_eq!(back.history_len, 0);
    assert_eq!(back.runtime_status, RuntimeStatus::Pending);
    store
        .commit_turn(turn(&back, RuntimeStatus::Running))
        .await
        .unwrap();
    assert_eq!(history_len(store, "le").await, 2);
}

/// An activity lease that runs out returns the activity to the queue with
/// its attempt count raised; the old lease can no longer complete it.
pub async fn case_activity_lease_expiry(store: &dyn Store) {
    with_activities(store, "ale", &[1]).await;
    let t0 = Instant::now();
    let first = store.fetch_activity_work(10, SHORT).await.unwrap();
    let fetched_at = Instant::now();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 1);
    let again = store.fetch_activity_work(10, LONG).await.unwrap();
    if fetched_at.elapsed() < SHORT {
        assert!(again.is_empty(), "handed out before its lease expired");
    }
    let back = match again.into_iter().next() {
        Some(a) => a,
        None => {
            poll("activity lease expiry", || async {
                store
                    .fetch_activity_work(10, LONG)
                    .await
                    .unwrap()
                    .into_iter()
                    .next()
            })
            .await
        }
    };
    assert!(t0.elapsed() >= SHORT, "came back before its lease expired");
    assert_eq!(back.attempts, 2);
    assert_eq!(back.activity, first[0].activity);

    let r = store
        .complete_activity_work(&first[0].lock, task_completed("ale", 1))
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    let r = store
        .abandon_activity_work(&first[0].lock, Duration::ZERO)
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    assert!(
        fetch(store, LONG).await.is_empty(),
        "a lost lease delivered"
    );

    let result = task_completed("ale", 1);
    store
        .complete_activity_work(&back.lock, result.clone())
        .await
        .unwrap();
    let item = fetch_only(store, "ale").await;
    assert_eq!(item.messages.len(), 1);
    assert_eq!(item.messages[0].message, result);
}

/// An abandoned orchestration work item comes back after the delay, not
/// before, and the abandoned lease is void.
pub async fn case_abandon_orchestration_work(store: &dyn Store) {
    store
        .create_instance(new_instance("ab", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "ab").await;
    let delay = Duration::from_millis(200);
    let t0 = Instant::now();
    store
        .abandon_orchestration_work(&item.lock, delay)
        .await
        .unwrap();
    let r = store
        .abandon_orchestration_work(&item.lock, Duration::ZERO)
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    let early = fetch(store, LONG).await;
    if t0.elapsed() < delay {
        assert!(early.is_empty(), "came back before the abandon delay");
    }
    let back = match early.into_iter().next() {
        Some(i) => i,
        None => poll_item(store, "ab", LONG).await,
    };
    assert!(t0.elapsed() >= delay, "came back before the abandon delay");
    assert_eq!(back.attempts, 2);
    assert_eq!(back.messages, item.messages);
    let r = store.commit_turn(turn(&item, RuntimeStatus::Running)).await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");

    // With no delay it is available at once.
    store
        .abandon_orchestration_work(&back.lock, Duration::ZERO)
        .await
        .unwrap();
    let third = poll_item(store, "ab", LONG).await;
    assert_eq!(third.attempts, 3);
    store
        .commit_turn(turn(&third, RuntimeStatus::Running))
        .await
        .unwrap();
    assert_eq!(history_len(store, "ab").await, 2);
}

/// An abandoned activity comes back after the delay, not before.
pub async fn case_abandon_activity_work(store: &dyn Store) {
    with_activities(store, "aa", &[1]).await;
    let first = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(first.len(), 1);
    let delay = Duration::from_millis(200);
    let t0 = Instant::now();
    store
        .abandon_activity_work(&first[0].lock, delay)
        .await
        .unwrap();
    let r = store
        .abandon_activity_work(&first[0].lock, Duration::ZERO)
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    let r = store
        .complete_activity_work(&first[0].lock, task_completed("aa", 1))
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");
    let early = store.fetch_activity_work(10, LONG).await.unwrap();
    if t0.elapsed() < delay {
        assert!(early.is_empty(), "came back before the abandon delay");
    }
    let back = match early.into_iter().next() {
        Some(a) => a,
        None => {
            poll("abandoned activity", || async {
                store
                    .fetch_activity_work(10, LONG)
                    .await
                    .unwrap()
                    .into_iter()
                    .next()
            })
            .await
        }
    };
    assert!(t0.elapsed() >= delay, "came back before the abandon delay");
    assert_eq!(back.attempts, 2);
    assert_eq!(*back.activity, activity("aa", 1));
}

/// Completing an activity deletes it and delivers its result in one step;
/// a second completion is refused; a result for a finished instance is
/// dropped without error.
pub async fn case_complete_activity_work(store: &dyn Store) {
    with_activities(store, "ca", &[1, 2]).await;
    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 2);
    assert_eq!(store.queue_depth().await.unwrap().1, 2);
    let (a1, a2) = if acts[0].activity.task_id == 1 {
        (&acts[0], &acts[1])
    } else {
        (&acts[1], &acts[0])
    };

    let result = task_completed("ca", 1);
    store
        .complete_activity_work(&a1.lock, result.clone())
        .await
        .unwrap();
    assert_eq!(store.queue_depth().await.unwrap().1, 1, "not deleted");
    let item = fetch_only(store, "ca").await;
    assert_eq!(item.messages.len(), 1);
    assert_eq!(item.messages[0].message, result);

    let r = store
        .complete_activity_work(&a1.lock, task_completed("ca", 1))
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");

    // Finish the instance; the other activity's result is then dropped.
    store
        .commit_turn(turn(&item, RuntimeStatus::Completed))
        .await
        .unwrap();
    let len = history_len(store, "ca").await;
    store
        .complete_activity_work(&a2.lock, task_completed("ca", 2))
        .await
        .unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
    assert!(fetch(store, LONG).await.is_empty());
    assert_eq!(history_len(store, "ca").await, len);
    assert_eq!(status_of(store, "ca").await, RuntimeStatus::Completed);
}

/// An instance that finishes while an activity result waits for it (and
/// another is consumed by the finishing turn) leaves nothing behind: after
/// a reopen no activity runs again and no work is queued.
pub async fn case_results_outstanding_when_an_instance_finishes(harness: &mut impl Harness) {
    let store = harness.open().await;
    let s = &*store;
    with_activities(s, "fin", &[1, 2]).await;
    let acts = s.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 2);
    let (a1, a2) = if acts[0].activity.task_id == 1 {
        (&acts[0], &acts[1])
    } else {
        (&acts[1], &acts[0])
    };
    s.complete_activity_work(&a1.lock, task_completed("fin", 1))
        .await
        .unwrap();
    let item = fetch_only(s, "fin").await;
    assert_eq!(kinds(&item), ["TaskCompleted"]);
    // Arrives while the turn runs: not in its work item.
    s.complete_activity_work(&a2.lock, task_completed("fin", 2))
        .await
        .unwrap();
    s.commit_turn(turn(&item, RuntimeStatus::Completed))
        .await
        .unwrap();
    assert!(fetch(s, LONG).await.is_empty());
    assert_eq!(status_of(s, "fin").await, RuntimeStatus::Completed);
    harness.close(store).await;

    let store = harness.open().await;
    let s = &*store;
    assert!(
        s.fetch_activity_work(10, LONG).await.unwrap().is_empty(),
        "a completed activity of a finished instance ran again"
    );
    assert!(fetch(s, LONG).await.is_empty());
    assert_eq!(s.queue_depth().await.unwrap(), (0, 0));
    assert_eq!(status_of(s, "fin").await, RuntimeStatus::Completed);
    harness.close(store).await;
}

/// Two concurrent completions under the same lease deliver one result.
pub async fn case_concurrent_double_completion(store: &dyn Store) {
    const N: u64 = 20;
    let tasks: Vec<u64> = (1..=N).collect();
    with_activities(store, "dc", &tasks).await;
    let acts = store.fetch_activity_work(100, LONG).await.unwrap();
    assert_eq!(acts.len(), N as usize);
    let calls = acts.iter().flat_map(|a| {
        let m = task_completed("dc", a.activity.task_id);
        [
            store.complete_activity_work(&a.lock, m.clone()),
            store.complete_activity_work(&a.lock, m),
        ]
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        assert!(matches!(r, Ok(()) | Err(StoreError::LeaseLost)), "{r:?}");
    }
    assert_eq!(ok, N as usize, "each activity completes exactly once");
    let item = fetch_only(store, "dc").await;
    let mut delivered: Vec<u64> = item
        .messages
        .iter()
        .filter_map(|m| m.message.kind.task_id())
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, tasks, "every result delivered exactly once");
}

/// Several completions at once (`complete_activities`), across instances:
/// each answers for its own item, a lost lease fails only its item, every
/// delivered result reaches its instance, and a result for an instance
/// that finished meanwhile is dropped without error.
pub async fn case_complete_activities_together(store: &dyn Store) {
    with_activities(store, "ca1", &[1, 2]).await;
    with_activities(store, "ca2", &[1]).await;
    with_activities(store, "ca3", &[1]).await;
    let mut acts = Vec::new();
    while acts.len() < 4 {
        acts.extend(store.fetch_activity_work(10, LONG).await.unwrap());
    }
    // ca3 finishes (woken by a message) while its activity runs.
    store
        .send_message(&iid("ca3"), task_completed("ca3", 9))
        .await
        .unwrap();
    let item = fetch_only(store, "ca3").await;
    store
        .commit_turn(turn(&item, RuntimeStatus::Completed))
        .await
        .unwrap();
    let finished_len = history_len(store, "ca3").await;
    let find = |inst: &str, task: u64| {
        acts.iter()
            .find(|a| a.activity.instance_id.as_str() == inst && a.activity.task_id == task)
            .expect("fetched")
    };
    let lost = find("ca1", 2);
    // ca1's task 2 is completed by someone else first: its lease is gone.
    store
        .complete_activity_work(&lost.lock, task_completed("ca1", 2))
        .await
        .unwrap();
    let results = store
        .complete_activities(vec![
            (find("ca2", 1).lock.clone(), task_completed("ca2", 1)),
            (lost.lock.clone(), task_completed("ca1", 2)),
            (find("ca1", 1).lock.clone(), task_completed("ca1", 1)),
            (find("ca3", 1).lock.clone(), task_completed("ca3", 1)),
        ])
        .await;
    assert!(matches!(results[0], Ok(())), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::LeaseLost)),
        "{results:?}"
    );
    assert!(matches!(results[2], Ok(())), "{results:?}");
    assert!(matches!(results[3], Ok(())), "{results:?}");
    let items = fetch(store, LONG).await;
    assert!(
        items.iter().all(|i| i.instance_id.as_str() != "ca3"),
        "a finished instance takes no result"
    );
    assert_eq!(history_len(store, "ca3").await, finished_len);
    assert_eq!(status_of(store, "ca3").await, RuntimeStatus::Completed);
    for (id, tasks) in [("ca1", vec![1, 2]), ("ca2", vec![1])] {
        let item = items
            .iter()
            .find(|i| i.instance_id.as_str() == id)
            .expect("work for each instance");
        let mut got: Vec<u64> = item
            .messages
            .iter()
            .filter_map(|m| m.message.kind.task_id())
            .collect();
        got.sort_unstable();
        assert_eq!(got, tasks, "{id}: each result once");
    }
    assert_eq!(store.queue_depth().await.unwrap().1, 0, "no activity left");
}
