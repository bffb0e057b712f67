//! Purging instances, also while their activities complete.

use super::helpers::*;
use super::*;

/// `purge_instance` deletes a terminal instance with its history; it leaves
/// live ones alone and reports unknown ones.
pub async fn case_purge_instance(store: &dyn Store) {
    create_with_status(store, "gone", RuntimeStatus::Completed).await;
    create_with_status(store, "pending", RuntimeStatus::Pending).await;
    create_with_status(store, "running", RuntimeStatus::Running).await;
    assert!(history_len(store, "gone").await > 0);

    assert_eq!(
        store.purge_instance(&iid("gone")).await.unwrap(),
        PurgeOutcome::Deleted
    );
    assert!(store
        .get_instance(&iid("gone"), true)
        .await
        .unwrap()
        .is_none());
    assert_eq!(history_len(store, "gone").await, 0);
    assert_eq!(
        store.purge_instance(&iid("gone")).await.unwrap(),
        PurgeOutcome::NotFound
    );
    assert_eq!(
        store.purge_instance(&iid("never")).await.unwrap(),
        PurgeOutcome::NotFound
    );
    assert_eq!(
        store.purge_instance(&iid("pending")).await.unwrap(),
        PurgeOutcome::NotTerminal(RuntimeStatus::Pending)
    );
    assert_eq!(
        store.purge_instance(&iid("running")).await.unwrap(),
        PurgeOutcome::NotTerminal(RuntimeStatus::Running)
    );
    assert_eq!(status_of(store, "running").await, RuntimeStatus::Running);
    let r = store
        .send_message(&iid("gone"), raised("x", json!(null)))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");

    // The id is free again.
    store
        .create_instance(new_instance("gone", json!("reborn")))
        .await
        .unwrap();
    let item = poll_item(store, "gone", LONG).await;
    assert_eq!(item.history_len, 0);
    assert_eq!(kinds(&item), ["ExecutionStarted"]);
}

/// `purge_instances` deletes at most `limit` terminal instances matching
/// the filter per call, and never a live one.
pub async fn case_purge_instances(store: &dyn Store) {
    for i in 0..6 {
        create_with_status(store, &format!("old-c{i}"), RuntimeStatus::Completed).await;
    }
    create_with_status(store, "old-f0", RuntimeStatus::Failed).await;
    create_with_status(store, "old-t0", RuntimeStatus::Terminated).await;
    create_with_status(store, "old-r0", RuntimeStatus::Running).await;
    create_with_status(store, "old-p0", RuntimeStatus::Pending).await;
    create_with_status(store, "keep-c0", RuntimeStatus::Completed).await;

    let failed = InstanceFilter {
        statuses: vec![RuntimeStatus::Failed],
        instance_id_prefix: Some("old-".into()),
        ..Default::default()
    };
    assert_eq!(store.purge_instances(&failed, 100).await.unwrap(), 1);
    assert!(store
        .get_instance(&iid("old-f0"), false)
        .await
        .unwrap()
        .is_none());

    let old = InstanceFilter {
        instance_id_prefix: Some("old-".into()),
        ..Default::default()
    };
    assert_eq!(store.purge_instances(&old, 4).await.unwrap(), 4);
    assert_eq!(store.purge_instances(&old, 4).await.unwrap(), 3);
    assert_eq!(store.purge_instances(&old, 4).await.unwrap(), 0);
    assert_eq!(
        list_all(store, InstanceFilter::default()).await,
        strs(&["keep-c0", "old-p0", "old-r0"])
    );
    let live = InstanceFilter {
        statuses: vec![RuntimeStatus::Running, RuntimeStatus::Pending],
        ..Default::default()
    };
    assert_eq!(store.purge_instances(&live, 100).await.unwrap(), 0);
    assert_eq!(
        store
            .purge_instances(&InstanceFilter::default(), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        list_all(store, InstanceFilter::default()).await,
        strs(&["old-p0", "old-r0"])
    );
}

/// Purging an instance takes its queued activities with it.
pub async fn case_purge_with_queued_activity(store: &dyn Store) {
    with_activities(store, "pa", &[1]).await;
    store
        .send_message(&iid("pa"), raised("stop", json!(null)))
        .await
        .unwrap();
    run_turn(store, "pa", RuntimeStatus::Terminated).await;
    assert_eq!(store.queue_depth().await.unwrap(), (0, 1));
    assert_eq!(
        store.purge_instance(&iid("pa")).await.unwrap(),
        PurgeOutcome::Deleted
    );
    assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
    assert!(store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .is_empty());
}

/// An activity's completion racing a purge of its (terminated) instance:
/// both lock the instance and the activity, in the same order, so neither
/// can deadlock into an error. The purge deletes; the completion either
/// lands before it (and is purged with the rest) or finds its lease gone.
pub async fn case_completion_racing_purge(store: &dyn Store) {
    const ROUNDS: usize = 30;
    const TASKS: u64 = 4;
    let tasks: Vec<u64> = (1..=TASKS).collect();
    for round in 0..ROUNDS {
        let id = format!("race{round}");
        with_activities(store, &id, &tasks).await;
        let mut acts = Vec::new();
        while acts.len() < TASKS as usize {
            acts.extend(store.fetch_activity_work(100, LONG).await.unwrap());
        }
        store
            .send_message(&iid(&id), raised("stop", json!(null)))
            .await
            .unwrap();
        run_turn(store, &id, RuntimeStatus::Terminated).await;
        let completions = acts.iter().map(|a| {
            store.complete_activity_work(&a.lock, task_completed(&id, a.activity.task_id))
        });
        let instance = iid(&id);
        let (purged, completed) = futures::join!(
            store.purge_instance(&instance),
            futures::future::join_all(completions)
        );
        assert_eq!(purged.unwrap(), PurgeOutcome::Deleted, "round {round}");
        for r in completed {
            assert!(
                matches!(r, Ok(()) | Err(StoreError::LeaseLost)),
                "round {round}: a completion racing the purge failed: {r:?}"
            );
        }
        assert_eq!(store.queue_depth().await.unwrap(), (0, 0), "round {round}");
        assert!(store
            .get_instance(&iid(&id), false)
            .await
            .unwrap()
            .is_none());
    }
}
