//! Instance management: terminate, suspend/resume, restart, rewind, purge,
//! caller-chosen ids.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use durable::{
    Error, InstanceFilter, InstanceId, OrchestrationContext, Registry, RuntimeStatus, TaskError,
};
use serde_json::json;

use common::count;

/// "Wait" waits for event "go" and returns its payload plus the input.
fn waiting_registry() -> Registry {
    Registry::new()
        .orchestration(
            "Wait",
            |ctx: OrchestrationContext, input: String| async move {
                let go: String = ctx.wait_for_event("go").await?;
                Ok::<_, TaskError>(format!("{input}:{go}"))
            },
        )
        .orchestration("Quick", |_ctx: OrchestrationContext, n: u32| async move {
            Ok::<_, TaskError>(n + 1)
        })
}

/// Starts "Wait" with `input` and waits until it runs.
async fn waiting(t: &common::TestEngine, input: &str) -> InstanceId {
    let id = t
        .engine
        .start_orchestration("Wait", None, input)
        .await
        .unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stops_a_running_instance_with_its_reason() {
    let t = common::start(waiting_registry());
    let id = waiting(&t, "x").await;
    t.engine
        .terminate(&id, Some("operator said stop".into()))
        .await
        .unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Terminated);
    assert_eq!(status.output, Some(json!("operator said stop")));
    let full = t.engine.status(&id, true).await.unwrap().unwrap();
    assert_eq!(count(&full, "ExecutionTerminated"), 1);
    // A finished instance takes no more requests.
    assert!(matches!(
        t.engine.raise_event(&id, "go", "late").await,
        Err(Error::Finished(_))
    ));
    assert!(matches!(
        t.engine.terminate(&id, None).await,
        Err(Error::Finished(_))
    ));
    assert!(matches!(
        t.engine
            .terminate(&InstanceId::new("nobody").unwrap(), None)
            .await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_a_pending_or_suspended_instance() {
    let t = common::start(waiting_registry());
    let id = waiting(&t, "x").await;
    t.engine.suspend(&id, None).await.unwrap();
    t.wait_status(&id, RuntimeStatus::Suspended).await;
    t.engine.terminate(&id, Some("bye".into())).await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Terminated);
    assert_eq!(status.output, Some(json!("bye")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_instance_makes_no_progress_until_resumed() {
    let t = common::start(waiting_registry());
    let id = waiting(&t, "in").await;
    t.engine
        .suspend(&id, Some("maintenance".into()))
        .await
        .unwrap();
    t.wait_status(&id, RuntimeStatus::Suspended).await;
    t.engine.raise_event(&id, "go", "now").await.unwrap();
    // The event is taken into history, yet the orchestrator does not see it.
    let status = t
        .wait_until(&id, "event recorded", |s| count(s, "EventRaised") == 1)
        .await;
    assert_eq!(status.runtime_status, RuntimeStatus::Suspended);
    assert_eq!(status.output, None);
    // Resume: the buffered event is delivered.
    t.engine.resume(&id, None).await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!("in:now")));
    let full = t.engine.status(&id, true).await.unwrap().unwrap();
    let k = common::history_kinds(&full);
    let pos = |x: &str| k.iter().position(|k| *k == x).unwrap();
    assert!(pos("ExecutionSuspended") < pos("EventRaised"));
    assert!(pos("EventRaised") < pos("ExecutionResumed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_same_id_and_with_a_new_id() {
    let t = common::start(waiting_registry());
    let id = InstanceId::new("restart-me").unwrap();
    t.engine
        .start_orchestration("Quick", Some(id.clone()), 41)
        .await
        .unwrap();
    let first = t.wait(&id).await;
    assert_eq!(first.output, Some(json!(42)));

    let same = t.engine.restart(&id, false).await.unwrap();
    assert_eq!(same, id);
    let second = t.wait(&id).await;
    assert_eq!(second.runtime_status, RuntimeStatus::Completed);
    assert_eq!(second.output, Some(json!(42)));
    assert_eq!(second.input, json!(41));
    assert_ne!(second.execution_id, first.execution_id);

    let other = t.engine.restart(&id, true).await.unwrap();
    assert_ne!(other, id);
    let third = t.wait(&other).await;
    assert_eq!(third.output, Some(json!(42)));
    assert_eq!(third.name, "Quick");

    // Restarting a live instance under its own id is a conflict.
    let live = t
        .engine
        .start_orchestration("Wait", None, "a")
        .await
        .unwrap();
    assert!(matches!(
        t.engine.restart(&live, false).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        t.engine
            .restart(&InstanceId::new("missing").unwrap(), true)
            .await,
        Err(Error::NotFound(_))
    ));
}

/// `start_orchestration_once` starts an id once: a finished instance of
/// it is left as it is (where `start_orchestration` would replace it), and
/// so is a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_once_leaves_an_existing_instance_alone() {
    let t = common::start(waiting_registry());
    let id = InstanceId::new("once").unwrap();
    assert!(t
        .engine
        .start_orchestration_once("Quick", id.clone(), 41)
        .await
        .unwrap());
    let first = t.wait(&id).await;
    assert_eq!(first.output, Some(json!(42)));
    assert!(!t
        .engine
        .start_orchestration_once("Quick", id.clone(), 1)
        .await
        .unwrap());
    let still = t.engine.status(&id, false).await.unwrap().unwrap();
    assert_eq!(still.execution_id, first.execution_id);
    assert_eq!(still.input, json!(41));
    assert_eq!(still.runtime_status, RuntimeStatus::Completed);

    let live = InstanceId::new("once-live").unwrap();
    assert!(t
        .engine
        .start_orchestration_once("Wait", live.clone(), "a")
        .await
        .unwrap());
    assert!(!t
        .engine
        .start_orchestration_once("Wait", live.clone(), "b")
        .await
        .unwrap());
    assert!(matches!(
        t.engine
            .start_orchestration_once("Nope", InstanceId::new("x").unwrap(), 1)
            .await,
        Err(Error::UnknownOrchestration(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_reruns_failed_work_only() {
    let fail = Arc::new(AtomicBool::new(true));
    let good_calls = Arc::new(AtomicU32::new(0));
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let (f, g, fc) = (fail.clone(), good_calls.clone(), flaky_calls.clone());
    let registry = Registry::new()
        .orchestration("Job", |ctx: OrchestrationContext, _: ()| async move {
            let a: u32 = ctx.call_activity("Good", 1).await?;
            let b: u32 = ctx.call_activity("Good", 2).await?;
            let c: u32 = ctx.call_activity("Flaky", 3).await?;
            Ok::<_, TaskError>(a + b + c)
        })
        .activity("Good", move |_ctx, n: u32| {
            g.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, String>(n * 10) }
        })
        .activity("Flaky", move |_ctx, n: u32| {
            fc.fetch_add(1, Ordering::SeqCst);
            let fail = f.swap(false, Ordering::SeqCst);
            async move {
                if fail {
                    Err("flaky failure".to_string())
                } else {
                    Ok(n * 10)
                }
            }
        });
    let t = common::start(registry);
    let id = t.engine.start_orchestration("Job", None, ()).await.unwrap();
    let failed = t.wait(&id).await;
    assert_eq!(failed.runtime_status, RuntimeStatus::Failed);
    assert!(failed
        .failure
        .as_ref()
        .unwrap()
        .message
        .contains("flaky failure"));

    t.engine.rewind(&id, Some("fixed".into())).await.unwrap();
    let done = t.wait_status(&id, RuntimeStatus::Completed).await;
    assert_eq!(done.output, Some(json!(60)));
    assert_eq!(done.failure, None);
    assert_eq!(
        good_calls.load(Ordering::SeqCst),
        2,
        "completed work is kept"
    );
    assert_eq!(
        flaky_calls.load(Ordering::SeqCst),
        2,
        "failed work runs again"
    );
    assert_eq!(count(&done, "ExecutionRewound"), 1);
    assert_eq!(count(&done, "TaskFailed"), 0);
    assert_eq!(count(&done, "ExecutionFailed"), 0);
    // Event ids stay dense and the status counts the new history.
    let h = done.history.as_ref().unwrap();
    assert!(h.iter().enumerate().all(|(i, e)| e.event_id == i as u64));
    assert_eq!(done.history_events, h.len() as u64);

    // Only a Failed instance can be rewound.
    assert!(matches!(
        t.engine.rewind(&id, None).await,
        Err(Error::Precondition { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_one_instance() {
    let t = common::start(waiting_registry());
    let done = t.run("Quick", json!(1)).await;
    t.engine.purge(&done.instance_id).await.unwrap();
    assert!(t
        .engine
        .status(&done.instance_id, true)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        t.engine.purge(&done.instance_id).await,
        Err(Error::NotFound(_))
    ));

    let live = waiting(&t, "x").await;
    match t.engine.purge(&live).await {
        Err(Error::Precondition { status, .. }) => assert_eq!(status, RuntimeStatus::Running),
        other => panic!("purging a live instance: {other:?}"),
    }
    assert!(t.engine.status(&live, false).await.unwrap().is_some());
    // Still works after the failed purge.
    t.engine.raise_event(&live, "go", "y").await.unwrap();
    assert_eq!(t.wait(&live).await.output, Some(json!("x:y")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_filter_deletes_only_matching_finished_instances() {
    let t = common::start(waiting_registry());
    for i in 0..5 {
        let id = InstanceId::new(format!("batch-a-{i}")).unwrap();
        t.engine
            .start_orchestration("Quick", Some(id.clone()), i)
            .await
            .unwrap();
        t.wait(&id).await;
    }
    for i in 0..3 {
        let id = InstanceId::new(format!("batch-b-{i}")).unwrap();
        t.engine
            .start_orchestration("Quick", Some(id.clone()), i)
            .await
            .unwrap();
        t.wait(&id).await;
    }
    let live = InstanceId::new("batch-a-live").unwrap();
    t.engine
        .start_orchestration("Wait", Some(live.clone()), "x")
        .await
        .unwrap();
    t.wait_status(&live, RuntimeStatus::Running).await;

    let purged = t
        .engine
        .purge_by_filter(&InstanceFilter {
            instance_id_prefix: Some("batch-a-".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 5, "finished batch-a instances only");
    for i in 0..5 {
        let id = InstanceId::new(format!("batch-a-{i}")).unwrap();
        assert!(t.engine.status(&id, false).await.unwrap().is_none());
    }
    assert!(t.engine.status(&live, false).await.unwrap().is_some());
    for i in 0..3 {
        let id = InstanceId::new(format!("batch-b-{i}")).unwrap();
        assert!(t.engine.status(&id, false).await.unwrap().is_some());
    }
    // By status: only Completed ones go.
    let purged = t
        .engine
        .purge_by_filter(&InstanceFilter {
            statuses: vec![RuntimeStatus::Completed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 3);
    assert!(t.engine.status(&live, false).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_chosen_id_conflicts_while_live_and_is_replaced_once_finished() {
    let t = common::start(waiting_registry());
    let id = InstanceId::new("order-42").unwrap();
    let got = t
        .engine
        .start_orchestration("Wait", Some(id.clone()), "first")
        .await
        .unwrap();
    assert_eq!(got, id);
    match t
        .engine
        .start_orchestration("Wait", Some(id.clone()), "second")
        .await
    {
        Err(Error::Conflict(c)) => assert_eq!(c, id),
        other => panic!("expected a conflict, got {other:?}"),
    }
    t.engine.raise_event(&id, "go", "1").await.unwrap();
    assert_eq!(t.wait(&id).await.output, Some(json!("first:1")));

    // Finished: the id may be reused; the old history is gone.
    t.engine
        .start_orchestration("Wait", Some(id.clone()), "second")
        .await
        .unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    t.engine.raise_event(&id, "go", "2").await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.output, Some(json!("second:2")));
    assert_eq!(count(&status_with_history(&t, &id).await, "EventRaised"), 1);

    // Ids are validated.
    for bad in ["", "a/b", "a#b", "a?b", "a\\b", "tab\there"] {
        assert!(
            matches!(InstanceId::new(bad), Err(Error::InvalidInstanceId(_))),
            "{bad:?}"
        );
    }
    assert!(InstanceId::new("x".repeat(257)).is_err());
    assert!(InstanceId::new("x".repeat(256)).is_ok());
    // Characters, not bytes.
    assert!(InstanceId::new("é".repeat(256)).is_ok());
    assert!(InstanceId::new("é".repeat(257)).is_err());
}

async fn status_with_history(t: &common::TestEngine, id: &InstanceId) -> durable::InstanceStatus {
    t.engine.status(id, true).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_reruns_a_failed_sub_orchestration() {
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let a: u32 = ctx.call_activity("One", ()).await?;
            let b: u32 = ctx.call_sub_orchestration("Child", None, ()).await?;
            Ok::<_, TaskError>(a + b)
        })
        .orchestration("Child", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<u32>("Fragile", ()).await
        })
        .activity("One", |_ctx, _: ()| async move { Ok::<_, String>(1u32) })
        .activity("Fragile", move |_ctx, _: ()| {
            let fail = f.swap(false, Ordering::SeqCst);
            async move {
                if fail {
                    Err("first run fails".to_string())
                } else {
                    Ok(10u32)
                }
            }
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Parent", None, ())
        .await
        .unwrap();
    assert_eq!(t.wait(&id).await.runtime_status, RuntimeStatus::Failed);
    t.engine.rewind(&id, None).await.unwrap();
    let done = t.wait_status(&id, RuntimeStatus::Completed).await;
    assert_eq!(done.output, Some(json!(11)));
    let child = InstanceId::new(format!("{id}:1")).unwrap();
    let child = t.engine.status(&child, false).await.unwrap().unwrap();
    assert_eq!(child.runtime_status, RuntimeStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_after_retries_ran_out_gives_the_activity_another_try() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let registry = Registry::new()
        .orchestration("Retries", |ctx: OrchestrationContext, _: ()| async move {
            let before: u32 = ctx.call_activity("Before", ()).await?;
            let policy = durable::RetryPolicy::new(3, std::time::Duration::from_millis(5));
            let v: u32 = ctx
                .call_activity_with_retry("FailsThrice", (), &policy)
                .await?;
            Ok::<_, TaskError>(before + v)
        })
        .activity(
            "Before",
            |_ctx, _: ()| async move { Ok::<_, String>(100u32) },
        )
        .activity("FailsThrice", move |_ctx, _: ()| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n <= 3 {
                    Err(format!("attempt {n} failed"))
                } else {
                    Ok(n)
                }
            }
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Retries", None, ())
        .await
        .unwrap();
    let failed = t.wait(&id).await;
    assert_eq!(failed.runtime_status, RuntimeStatus::Failed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    t.engine.rewind(&id, None).await.unwrap();
    let done = t
        .wait_until(&id, "rewound run finished", |s| {
            s.runtime_status.is_terminal() && s.runtime_status != RuntimeStatus::Failed
                || s.failure
                    .as_ref()
                    .is_some_and(|f| f.kind != failed.failure.as_ref().unwrap().kind)
        })
        .await;
    assert_eq!(done.runtime_status, RuntimeStatus::Completed, "{done:?}");
    assert_eq!(done.output, Some(json!(104)));
    assert_eq!(calls.load(Ordering::SeqCst), 4, "one more attempt only");
    // The handled failures stay in history; the final one is gone.
    assert_eq!(count(&done, "TaskFailed"), 2);
}

/// A parent that gave up on its first failed child while others were still
/// running: after a rewind the failed child runs again, a child that is
/// still running is waited for, and one that finished meanwhile counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_waits_for_children_that_outlived_the_failure() {
    let fail = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(AtomicU32::new(0));
    let (f, r) = (fail.clone(), runs.clone());
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let a = ctx.call_sub_orchestration::<String>("Fragile", None, ());
            let b = ctx.call_sub_orchestration::<String>("WaitsFor", None, "b");
            let c = ctx.call_sub_orchestration::<String>("WaitsFor", None, "c");
            let (a, b, c) = futures::future::try_join3(a, b, c).await?;
            Ok::<_, TaskError>(format!("{a}{b}{c}"))
        })
        .orchestration("Fragile", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<String>("MaybeFail", ()).await
        })
        .orchestration(
            "WaitsFor",
            move |ctx: OrchestrationContext, name: String| {
                let r = r.clone();
                async move {
                    if !ctx.is_replaying() {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    let _: () = ctx.wait_for_event(&name).await?;
                    Ok::<_, TaskError>(name)
                }
            },
        )
        .activity("MaybeFail", move |_ctx, _: ()| {
            let fail = f.swap(false, Ordering::SeqCst);
            async move {
                if fail {
                    Err("first run fails".to_string())
                } else {
                    Ok("a".to_string())
                }
            }
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Parent", None, ())
        .await
        .unwrap();
    let failed = t.wait(&id).await;
    assert_eq!(failed.runtime_status, RuntimeStatus::Failed);
    let b = InstanceId::new(format!("{id}:1")).unwrap();
    let c = InstanceId::new(format!("{id}:2")).unwrap();
    t.wait_status(&b, RuntimeStatus::Running).await;
    t.wait_status(&c, RuntimeStatus::Running).await;
    // c finishes while its parent is Failed: its result is dropped then.
    t.engine.raise_event(&c, "c", ()).await.unwrap();
    t.wait(&c).await;

    t.engine.rewind(&id, None).await.unwrap();
    // b is still running and must not be started again.
    t.wait_until(&id, "rewound", |s| count(s, "ExecutionRewound") == 1)
        .await;
    t.engine.raise_event(&b, "b", ()).await.unwrap();
    let done = t
        .wait_until(&id, "parent finished", |s| {
            s.runtime_status.is_terminal() && count(s, "ExecutionRewound") == 1
        })
        .await;
    assert_eq!(done.runtime_status, RuntimeStatus::Completed, "{done:?}");
    assert_eq!(done.output, Some(json!("abc")));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "b and c ran once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_survives_a_restart_and_holds_back_results() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let registry = |gate: Arc<tokio::sync::Semaphore>| {
        Registry::new()
            .orchestration("Steps", |ctx: OrchestrationContext, _: ()| async move {
                let v: u32 = ctx.call_activity("Gate", ()).await?;
                ctx.create_timer(std::time::Duration::from_millis(20)).await;
                Ok::<_, TaskError>(v)
            })
            .activity("Gate", move |_ctx, _: ()| {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.expect("gate").forget();
                    Ok::<_, String>(5u32)
                }
            })
    };
    let t = common::start(registry(gate.clone()));
    let id = t
        .engine
        .start_orchestration("Steps", None, ())
        .await
        .unwrap();
    t.wait_until(&id, "scheduled", |s| count(s, "TaskScheduled") == 1)
        .await;
    t.engine.suspend(&id, None).await.unwrap();
    t.wait_status(&id, RuntimeStatus::Suspended).await;
    gate.add_permits(1);
    let s = t
        .wait_until(&id, "result recorded", |s| count(s, "TaskCompleted") == 1)
        .await;
    assert_eq!(s.runtime_status, RuntimeStatus::Suspended);
    assert_eq!(count(&s, "TimerCreated"), 0, "no progress while suspended");

    let t = t
        .restart(registry(gate.clone()), durable::EngineConfig::default())
        .await;
    let s = t.engine.status(&id, true).await.unwrap().unwrap();
    assert_eq!(s.runtime_status, RuntimeStatus::Suspended);
    t.engine.resume(&id, None).await.unwrap();
    let s = t.wait(&id).await;
    assert_eq!(s.runtime_status, RuntimeStatus::Completed, "{s:?}");
    assert_eq!(s.output, Some(json!(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_right_after_start() {
    let t = common::start(waiting_registry());
    let id = t
        .engine
        .start_orchestration("Wait", None, "x")
        .await
        .unwrap();
    t.engine.terminate(&id, Some("early".into())).await.unwrap();
    let mut rx = t.engine.subscribe();
    let s = t.wait(&id).await;
    assert_eq!(s.runtime_status, RuntimeStatus::Terminated);
    assert_eq!(s.output, Some(json!("early")));
    while let Ok(u) = rx.try_recv() {
        if u.instance_id == id {
            assert_eq!(u.name, "Wait");
        }
    }
}

/// Event names match whatever their case, as in Durable Functions: `GO`
/// ends a wait for `go`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raised_in_another_case_ends_the_wait() {
    let t = common::start(waiting_registry());
    let id = waiting(&t, "x").await;
    t.engine.raise_event(&id, "GO", "loud").await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Completed);
    assert_eq!(status.output, Some(json!("x:loud")));
}

/// Orchestration names match whatever their case when starting, as Azure
/// Functions' names do; the instance bears the registered name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_started_in_another_case_runs_under_its_registered_name() {
    let t = common::start(waiting_registry());
    let id = t
        .engine
        .start_orchestration("QUICK", None, 1)
        .await
        .unwrap();
    let status = t.wait(&id).await;
    assert_eq!(
        (status.name.as_str(), status.output),
        ("Quick", Some(json!(2)))
    );
    assert!(matches!(
        t.engine.start_orchestration("Quick_", None, 1).await,
        Err(Error::UnknownOrchestration(_))
    ));
}
