//! Status and listing: history on request, filters, paging.

mod common;

use std::collections::HashSet;

use durable::{
    InstanceFilter, InstanceId, InstanceQuery, InstanceStatus, OrchestrationContext, Registry,
    RuntimeStatus, Store, TaskError,
};
use serde_json::json;

fn registry() -> Registry {
    Registry::new()
        .orchestration(
            "Echo",
            |ctx: OrchestrationContext, v: serde_json::Value| async move {
                let v: serde_json::Value = ctx.call_activity("Id", v).await?;
                Ok::<_, TaskError>(v)
            },
        )
        .orchestration("Wait", |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        })
        .activity("Id", |_ctx, v: serde_json::Value| async move {
            Ok::<_, String>(v)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_and_without_history() {
    let t = common::start(registry());
    let status = t.run("Echo", json!({"a": 1})).await;
    let id = status.instance_id.clone();
    assert_eq!(status.name, "Echo");
    assert_eq!(status.input, json!({"a": 1}));
    assert_eq!(status.output, Some(json!({"a": 1})));
    assert!(status.created_at <= status.last_updated_at);
    assert_eq!(status.parent_instance_id, None);

    let bare = t.engine.status(&id, false).await.unwrap().unwrap();
    assert!(bare.history.is_none());
    let full = t.engine.status(&id, true).await.unwrap().unwrap();
    let h = full.history.as_ref().unwrap();
    assert_eq!(
        common::kinds(h),
        vec![
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "OrchestratorStarted",
            "TaskCompleted",
            "ExecutionCompleted",
        ]
    );
    assert!(h.iter().enumerate().all(|(i, e)| e.event_id == i as u64));
    assert_eq!(full.history_events, h.len() as u64);
    let bytes: u64 = h
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len() as u64)
        .sum();
    assert_eq!(full.history_bytes, bytes);
    assert!(h.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));

    assert!(t
        .engine
        .status(&InstanceId::new("unknown").unwrap(), true)
        .await
        .unwrap()
        .is_none());
}

async fn start_named(t: &common::TestEngine, id: &str, name: &str) -> InstanceStatus {
    let id = InstanceId::new(id).unwrap();
    t.engine
        .start_orchestration(name, Some(id.clone()), json!(null))
        .await
        .unwrap();
    if name == "Echo" {
        t.wait(&id).await
    } else {
        t.wait_status(&id, RuntimeStatus::Running).await
    }
}

async fn list_all(
    t: &common::TestEngine,
    filter: InstanceFilter,
    page_size: usize,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut continuation = None;
    loop {
        let page = t
            .engine
            .list(&InstanceQuery {
                filter: filter.clone(),
                page_size,
                with_input: true,
                continuation: continuation.take(),
            })
            .await
            .unwrap();
        pages.push(
            page.instances
                .iter()
                .map(|s| {
                    assert!(s.history.is_none(), "listings carry no history");
                    s.instance_id.to_string()
                })
                .collect(),
        );
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_sees_every_instance_exactly_once() {
    let t = common::start(registry());
    // Started concurrently: many share a creation millisecond.
    let ids: Vec<_> = (0..25).map(|i| format!("page-{i:02}")).collect();
    futures::future::join_all(ids.iter().map(|id| {
        t.engine
            .start_orchestration("Echo", Some(InstanceId::new(id.clone()).unwrap()), json!(1))
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    // Not part of the listing below.
    start_named(&t, "other-1", "Echo").await;

    let filter = InstanceFilter {
        instance_id_prefix: Some("page-".into()),
        ..Default::default()
    };
    let pages = list_all(&t, filter, 10).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let seen: Vec<String> = pages.into_iter().flatten().collect();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), 25, "every instance exactly once");
    assert_eq!(unique, ids.iter().cloned().collect::<HashSet<_>>());

    // Newest first.
    let mut all = Vec::new();
    for id in &seen {
        let s = t
            .engine
            .status(&InstanceId::new(id.clone()).unwrap(), false)
            .await
            .unwrap()
            .unwrap();
        all.push((s.created_at, s.instance_id));
    }
    assert!(all.windows(2).all(|w| w[0] >= w[1]), "{all:?}");

    // Page size 1 and a page size larger than the set.
    let f = InstanceFilter {
        instance_id_prefix: Some("page-".into()),
        ..Default::default()
    };
    let ones = list_all(&t, f.clone(), 1).await;
    assert_eq!(ones.len(), 25);
    assert_eq!(ones.into_iter().flatten().collect::<Vec<_>>(), seen);
    let big = list_all(&t, f, 1000).await;
    assert_eq!(big, vec![seen]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_status_time_and_prefix() {
    let t = common::start(registry());
    let mut early = Vec::new();
    for i in 0..3 {
        early.push(start_named(&t, &format!("early-{i}"), "Echo").await);
    }
    let early_max = early.iter().map(|s| s.created_at).max().unwrap();
    // The next instances must get a later creation millisecond.
    common::eventually(
        "the clock to pass",
        std::time::Duration::from_secs(5),
        || async { durable::types::now() > early_max },
    )
    .await;
    let mut late = Vec::new();
    for i in 0..2 {
        late.push(start_named(&t, &format!("late-done-{i}"), "Echo").await);
    }
    late.push(start_named(&t, "late-live", "Wait").await);
    let late_min = late.iter().map(|s| s.created_at).min().unwrap();
    assert!(late_min > early_max);

    let ids =
        |pages: Vec<Vec<String>>| -> HashSet<String> { pages.into_iter().flatten().collect() };
    let set = |v: &[&str]| -> HashSet<String> { v.iter().map(|s| s.to_string()).collect() };

    let running = list_all(
        &t,
        InstanceFilter {
            statuses: vec![RuntimeStatus::Running],
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(ids(running), set(&["late-live"]));

    let several = list_all(
        &t,
        InstanceFilter {
            statuses: vec![RuntimeStatus::Running, RuntimeStatus::Completed],
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(ids(several).len(), 6);

    let before = list_all(
        &t,
        InstanceFilter {
            created_to: Some(early_max),
            ..Default::default()
        },
        2,
    )
    .await;
    assert_eq!(ids(before), set(&["early-0", "early-1", "early-2"]));

    let after = list_all(
        &t,
        InstanceFilter {
            created_from: Some(late_min),
            statuses: vec![RuntimeStatus::Completed],
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(ids(after), set(&["late-done-0", "late-done-1"]));

    let between = list_all(
        &t,
        InstanceFilter {
            created_from: Some(late_min),
            created_to: Some(late_min),
            ..Default::default()
        },
        10,
    )
    .await;
    let between = ids(between);
    assert!(between.contains("late-done-0"), "{between:?}");
    assert!(!between.iter().any(|i| i.starts_with("early")));

    let prefixed = list_all(
        &t,
        InstanceFilter {
            instance_id_prefix: Some("late-d".into()),
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(ids(prefixed), set(&["late-done-0", "late-done-1"]));

    // Prefixes are literal: no wildcards.
    start_named(&t, "a_b-1", "Echo").await;
    start_named(&t, "axb-1", "Echo").await;
    start_named(&t, "a%b-1", "Echo").await;
    for (prefix, want) in [("a_b", "a_b-1"), ("a%b", "a%b-1")] {
        let got = list_all(
            &t,
            InstanceFilter {
                instance_id_prefix: Some(prefix.into()),
                ..Default::default()
            },
            10,
        )
        .await;
        assert_eq!(ids(got), set(&[want]), "prefix {prefix}");
    }

    let none = list_all(
        &t,
        InstanceFilter {
            statuses: vec![RuntimeStatus::Terminated],
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(none, vec![Vec::<String>::new()]);

    let counts = t.store.count_by_status().await.unwrap();
    let completed = counts
        .iter()
        .find(|(s, _)| *s == RuntimeStatus::Completed)
        .map(|(_, n)| *n);
    assert_eq!(completed, Some(8));
}
