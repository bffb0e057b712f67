//! Listing instances: filters, paging, the byte budget.

use super::helpers::*;
use super::*;

/// `list_instances` filters by status, creation time (both bounds
/// inclusive) and id prefix (taken literally).
pub async fn case_list_instances_filters(store: &dyn Store) {
    let base = types::now() - chrono::Duration::hours(1);
    let minute = |i: i64| base + chrono::Duration::minutes(i);
    let specs = [
        ("alpha-0", 0, RuntimeStatus::Pending),
        ("alpha-1", 1, RuntimeStatus::Completed),
        ("alpha-2", 2, RuntimeStatus::Failed),
        ("beta-0", 3, RuntimeStatus::Completed),
        ("beta-1", 4, RuntimeStatus::Running),
        ("x_1", 5, RuntimeStatus::Pending),
        ("xy1", 6, RuntimeStatus::Pending),
        ("x%1", 7, RuntimeStatus::Pending),
    ];
    for (id, m, status) in specs {
        let mut inst = new_instance(id, json!(null));
        inst.created_at = minute(m);
        store.create_instance(inst).await.unwrap();
        if status != RuntimeStatus::Pending {
            let item = poll_item(store, id, LONG).await;
            store.commit_turn(turn(&item, status)).await.unwrap();
        }
    }
    let all: Vec<&str> = specs.iter().map(|s| s.0).collect();
    assert_eq!(list_all(store, InstanceFilter::default()).await, strs(&all));
    let by = |statuses: Vec<RuntimeStatus>| InstanceFilter {
        statuses,
        ..Default::default()
    };
    assert_eq!(
        list_all(store, by(vec![RuntimeStatus::Completed])).await,
        strs(&["alpha-1", "beta-0"])
    );
    assert_eq!(
        list_all(
            store,
            by(vec![RuntimeStatus::Completed, RuntimeStatus::Failed])
        )
        .await,
        strs(&["alpha-1", "alpha-2", "beta-0"])
    );
    assert_eq!(
        list_all(store, by(vec![RuntimeStatus::Terminated])).await,
        strs(&[])
    );
    let window = InstanceFilter {
        created_from: Some(minute(2)),
        created_to: Some(minute(4)),
        ..Default::default()
    };
    assert_eq!(
        list_all(store, window.clone()).await,
        strs(&["alpha-2", "beta-0", "beta-1"])
    );
    let prefix = |p: &str| InstanceFilter {
        instance_id_prefix: Some(p.into()),
        ..Default::default()
    };
    assert_eq!(
        list_all(store, prefix("beta-")).await,
        strs(&["beta-0", "beta-1"])
    );
    assert_eq!(list_all(store, prefix("x_")).await, strs(&["x_1"]));
    assert_eq!(list_all(store, prefix("x%")).await, strs(&["x%1"]));
    assert_eq!(list_all(store, prefix("ALPHA")).await, strs(&[]));
    let combined = InstanceFilter {
        statuses: vec![RuntimeStatus::Completed, RuntimeStatus::Running],
        instance_id_prefix: Some("beta".into()),
        ..window
    };
    assert_eq!(list_all(store, combined).await, strs(&["beta-0", "beta-1"]));

    let page = store
        .list_instances(&InstanceQuery {
            filter: prefix("alpha-1"),
            page_size: 10,
            with_input: true,
            continuation: None,
        })
        .await
        .unwrap();
    let s = &page.instances[0];
    assert_eq!(s.runtime_status, RuntimeStatus::Completed);
    assert_eq!(s.created_at, minute(1));
    assert_eq!(s.output, Some(json!("done")));
    assert_eq!(s.history, None, "listings carry no history");
}

/// A replaced instance lists at its new creation time, whichever path
/// replaced it (plain, or with its first turn), and a purged one no longer
/// lists, with or without a creation time window.
pub async fn case_list_instances_after_replace_and_purge(store: &dyn Store) {
    let base = types::now() - chrono::Duration::hours(1);
    let minute = |i: i64| base + chrono::Duration::minutes(i);
    for (id, m) in [("r-plain", 0), ("r-turn", 1), ("r-gone", 2), ("r-kept", 3)] {
        let mut inst = new_instance(id, json!(null));
        inst.created_at = minute(m);
        store.create_instance(inst).await.unwrap();
        if id != "r-kept" {
            let item = poll_item(store, id, LONG).await;
            store
                .commit_turn(turn(&item, RuntimeStatus::Completed))
                .await
                .unwrap();
        }
    }
    let mut again = new_instance("r-plain", json!(null));
    again.created_at = minute(10);
    store.create_instance(again).await.unwrap();
    let (mut again, first) = first_turn("r-turn", json!(null));
    again.created_at = minute(11);
    store.create_instance_with_turn(again, first).await.unwrap();
    assert_eq!(
        store.purge_instance(&iid("r-gone")).await.unwrap(),
        PurgeOutcome::Deleted
    );

    let page = store
        .list_instances(&by_prefix("r-", 1000, false, None))
        .await
        .unwrap();
    let newest_first: Vec<(String, Timestamp)> = page
        .instances
        .into_iter()
        .map(|s| (s.instance_id.to_string(), s.created_at))
        .collect();
    assert_eq!(
        newest_first,
        [
            ("r-turn".to_string(), minute(11)),
            ("r-plain".to_string(), minute(10)),
            ("r-kept".to_string(), minute(3)),
        ]
    );
    let window = |from: i64, to: i64| InstanceFilter {
        created_from: Some(minute(from)),
        created_to: Some(minute(to)),
        instance_id_prefix: Some("r-".into()),
        ..Default::default()
    };
    assert_eq!(list_all(store, window(0, 5)).await, strs(&["r-kept"]));
    assert_eq!(
        list_all(store, window(10, 11)).await,
        strs(&["r-plain", "r-turn"])
    );
}

/// A listing of the instances whose ids start with `prefix`.
fn by_prefix(
    prefix: &str,
    page_size: usize,
    with_input: bool,
    continuation: Option<String>,
) -> InstanceQuery {
    InstanceQuery {
        filter: InstanceFilter {
            instance_id_prefix: Some(prefix.into()),
            ..Default::default()
        },
        page_size,
        with_input,
        continuation,
    }
}

/// A listing page carries at most about
/// [`PAGE_PAYLOAD_BYTES`](crate::store::page::PAGE_PAYLOAD_BYTES) of
/// inputs: large inputs make pages shorter than asked for, with a token,
/// and every instance is still listed exactly once.
pub async fn case_list_instances_byte_budget(store: &dyn Store) {
    let budget = crate::store::page::PAGE_PAYLOAD_BYTES;
    // Five inputs of 40% of the budget: pages of three (the third crosses
    // the budget) and then two.
    let big = "x".repeat(budget * 2 / 5);
    let base = types::now() - chrono::Duration::hours(1);
    for i in 0..5i64 {
        let mut inst = new_instance(&format!("big{i}"), json!(big));
        inst.created_at = base + chrono::Duration::milliseconds(i);
        store.create_instance(inst).await.unwrap();
    }
    let mut continuation = None;
    let mut pages = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let page = store
            .list_instances(&by_prefix("big", 1000, true, continuation.take()))
            .await
            .unwrap();
        pages.push(page.instances.len());
        for s in page.instances {
            assert_eq!(s.input, json!(big));
            assert!(seen.insert(s.instance_id.to_string()), "listed twice");
        }
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(pages[..2], [3, 2], "{pages:?}");
    // Without inputs the same instances fit one page.
    let page = store
        .list_instances(&by_prefix("big", 1000, false, None))
        .await
        .unwrap();
    assert_eq!(page.instances.len(), 5);
    assert_eq!(page.continuation, None);
}

/// `list_instances` pages newest first with a continuation, each instance
/// exactly once, including instances created in the same millisecond.
pub async fn case_list_instances_paging(store: &dyn Store) {
    let base = types::now() - chrono::Duration::hours(1);
    let mut created = BTreeMap::new();
    for i in 0..25i64 {
        let id = format!("pg{i:02}");
        let mut inst = new_instance(&id, json!(i));
        // Groups of three share a millisecond, to exercise tie-breaking.
        inst.created_at = base + chrono::Duration::milliseconds(i / 3);
        created.insert(id, inst.created_at);
        store.create_instance(inst).await.unwrap();
    }
    // Inputs only when asked for.
    for with_input in [true, false] {
        let page = store
            .list_instances(&InstanceQuery {
                filter: InstanceFilter::default(),
                page_size: 25,
                with_input,
                continuation: None,
            })
            .await
            .unwrap();
        assert_eq!(page.instances.len(), 25);
        for s in &page.instances {
            let n: i64 = s.instance_id.as_str()[2..].parse().unwrap();
            let expected = if with_input { json!(n) } else { Value::Null };
            assert_eq!(s.input, expected, "with_input {with_input}");
        }
    }
    let mut seen = Vec::new();
    let mut continuation = None;
    let mut pages = Vec::new();
    loop {
        let page = store
            .list_instances(&InstanceQuery {
                filter: InstanceFilter::default(),
                page_size: 10,
                with_input: true,
                continuation: continuation.take(),
            })
            .await
            .unwrap();
        pages.push(page.instances.len());
        seen.extend(
            page.instances
                .into_iter()
                .map(|s| (s.instance_id, s.created_at)),
        );
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages, [10, 10, 5]);
    let ids: HashSet<_> = seen.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(ids.len(), 25, "an instance was listed twice");
    assert_eq!(ids, created.keys().cloned().collect());
    for w in seen.windows(2) {
        assert!(w[0].1 >= w[1].1, "not newest first: {w:?}");
    }
    for (id, at) in &seen {
        assert_eq!(created[id.as_str()], *at);
    }

    // Exactly one full page: no continuation.
    let page = store
        .list_instances(&by_prefix("pg0", 10, true, None))
        .await
        .unwrap();
    assert_eq!(page.instances.len(), 10);
    assert_eq!(page.continuation, None);

    // A filtered listing pages too.
    let filter = InstanceFilter {
        instance_id_prefix: Some("pg1".into()),
        ..Default::default()
    };
    let first = store
        .list_instances(&InstanceQuery {
            filter: filter.clone(),
            page_size: 4,
            with_input: true,
            continuation: None,
        })
        .await
        .unwrap();
    let second = store
        .list_instances(&InstanceQuery {
            filter,
            page_size: 4,
            with_input: true,
            continuation: first.continuation.clone(),
        })
        .await
        .unwrap();
    assert!(first.continuation.is_some());
    let mut ids: Vec<String> = first
        .instances
        .iter()
        .chain(second.instances.iter())
        .map(|s| s.instance_id.to_string())
        .collect();
    ids.sort();
    let expected: Vec<String> = (12..20).map(|i| format!("pg{i}")).collect();
    assert_eq!(ids, expected);
}
