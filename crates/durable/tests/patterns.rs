//! Orchestration patterns: chaining, fan-out/fan-in, races, timers, external
//! events, sub-orchestrations, continue-as-new, custom status. (Retries
//! are in `retries.rs`.)

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::{EngineConfig, EventKind, OrchestrationContext, Registry, RuntimeStatus, TaskError};
use futures::future::{join_all, select, select_all, Either};
use serde_json::json;

use common::{count, history_kinds};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_passes_each_result_to_the_next_activity() {
    let registry = Registry::new()
        .orchestration("Chain", |ctx: OrchestrationContext, s: String| async move {
            let a: String = ctx.call_activity("Append", (s, "a")).await?;
            let b: String = ctx.call_activity("Append", (a, "b")).await?;
            let c: String = ctx.call_activity("Append", (b, "c")).await?;
            Ok::<_, TaskError>(c)
        })
        .activity("Append", |_ctx, (s, t): (String, String)| async move {
            Ok::<_, String>(format!("{s}-{t}"))
        });
    let t = common::start(registry);
    let status = t.run("Chain", json!("x")).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!("x-a-b-c")));

    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    // Each activity is scheduled only after the previous one completed.
    let inputs: Vec<_> = full
        .history
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskScheduled { input, .. } => Some(input.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        inputs,
        vec![
            json!(["x", "a"]),
            json!(["x-a", "b"]),
            json!(["x-a-b", "c"])
        ]
    );
    let k = history_kinds(&full);
    let pos = |n: usize, kind: &str| {
        k.iter()
            .enumerate()
            .filter(|(_, x)| **x == kind)
            .nth(n)
            .unwrap()
            .0
    };
    assert!(pos(0, "TaskCompleted") < pos(1, "TaskScheduled"));
    assert!(pos(1, "TaskCompleted") < pos(2, "TaskScheduled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_ten_thousand_activities() {
    const N: u64 = 10_000;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let registry = Registry::new()
        .orchestration("FanOut", |ctx: OrchestrationContext, n: u64| async move {
            let tasks = (0..n).map(|i| ctx.call_activity::<u64>("Square", i));
            let results = join_all(tasks).await;
            let mut sum = 0u64;
            for (i, r) in results.into_iter().enumerate() {
                let v = r?;
                assert_eq!(v, (i as u64) * (i as u64), "results come back in order");
                sum += v;
            }
            Ok::<_, TaskError>(sum)
        })
        .activity("Square", move |_ctx, i: u64| {
            c.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, String>(i * i) }
        });
    let t = common::start(registry);
    let started = Instant::now();
    let status = t.run("FanOut", json!(N)).await;
    let took = started.elapsed();
    eprintln!("fan-out of {N} activities took {took:?}");
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let expected: u64 = (0..N).map(|i| i * i).sum();
    assert_eq!(status.output, Some(json!(expected)));
    assert_eq!(calls.load(Ordering::Relaxed), N as u32);
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(&full, "TaskScheduled"), N as usize);
    assert_eq!(count(&full, "TaskCompleted"), N as usize);
    assert_eq!(
        full.history_events,
        full.history.as_ref().unwrap().len() as u64
    );
    assert!(
        took < Duration::from_secs(20),
        "10,000 activities should not take {took:?}"
    );
}

/// A race is decided by which result history recorded first, also when the
/// instance is replayed from history after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_winner_is_first_in_history_and_survives_replay() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let registry = |gate: Arc<tokio::sync::Semaphore>| {
        Registry::new()
            .orchestration("Race", |ctx: OrchestrationContext, _: ()| async move {
                // "Slow" is polled first but completes second.
                let slow = ctx.call_activity::<String>("Slow", ());
                let fast = ctx.call_activity::<String>("Fast", ());
                let (winner, index, _rest) = select_all([slow, fast]).await;
                let winner = winner?;
                // And a two-way select against a long timer.
                let timer = ctx.create_timer(Duration::from_secs(3600));
                let quick = ctx.call_activity::<String>("Fast", ());
                let second = match select(timer, quick).await {
                    Either::Left(_) => "timer".to_string(),
                    Either::Right((r, _)) => r?,
                };
                let after: String = ctx.wait_for_event("after").await?;
                Ok::<_, TaskError>(json!([index, winner, second, after]))
            })
            .activity("Fast", |_ctx, _: ()| async move {
                Ok::<_, String>("fast".to_string())
            })
            .activity("Slow", move |_ctx, _: ()| {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.expect("gate").forget();
                    Ok::<_, String>("slow".to_string())
                }
            })
    };
    let t = common::start(registry(gate.clone()));
    let id = t
        .engine
        .start_orchestration("Race", None, ())
        .await
        .unwrap();
    // Let "Slow" finish only once "Fast" is in history.
    t.wait_until(&id, "Fast completed", |s| count(s, "TaskCompleted") >= 1)
        .await;
    gate.add_permits(1);
    let status = t
        .wait_until(&id, "all three activities completed", |s| {
            count(s, "TaskCompleted") == 3
        })
        .await;
    assert_eq!(status.runtime_status, RuntimeStatus::Running);
    // Restart: the next turn replays history where Slow's result comes
    // after Fast's; the winner must stay Fast.
    let t = t
        .restart(registry(gate.clone()), EngineConfig::default())
        .await;
    t.engine.raise_event(&id, "after", "done").await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!([1, "fast", "fast", "done"])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer_fires_after_its_delay() {
    let registry =
        Registry::new().orchestration("Sleep", |ctx: OrchestrationContext, ms: u64| async move {
            let before = ctx.current_time();
            ctx.create_timer(Duration::from_millis(ms)).await;
            let after = ctx.current_time();
            Ok::<_, TaskError>((after - before).num_milliseconds())
        });
    let t = common::start(registry);
    let started = Instant::now();
    let status = t.run("Sleep", json!(150)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let waited = status.output.unwrap().as_i64().unwrap();
    assert!(waited >= 150, "orchestrator time advanced by {waited} ms");
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    let h = full.history.unwrap();
    let created = h
        .iter()
        .find_map(|e| match e.kind {
            EventKind::TimerCreated { fire_at, .. } => Some(fire_at),
            _ => None,
        })
        .expect("TimerCreated");
    let fired = h
        .iter()
        .find(|e| matches!(e.kind, EventKind::TimerFired { .. }))
        .expect("TimerFired");
    assert!(
        fired.timestamp >= created,
        "timer delivered before it was due"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_an_external_event() {
    let registry =
        Registry::new().orchestration("Approval", |ctx: OrchestrationContext, _: ()| async move {
            ctx.set_custom_status("waiting");
            let v: serde_json::Value = ctx.wait_for_event("approve").await?;
            Ok::<_, TaskError>(json!({ "approved": v }))
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Approval", None, ())
        .await
        .unwrap();
    t.wait_until(&id, "waiting", |s| {
        s.custom_status == Some(json!("waiting"))
    })
    .await;
    assert_eq!(
        t.engine
            .status(&id, false)
            .await
            .unwrap()
            .unwrap()
            .runtime_status,
        RuntimeStatus::Running
    );
    t.engine
        .raise_event(&id, "other", 1)
        .await
        .expect("other events are kept, not matched");
    t.engine
        .raise_event(&id, "approve", json!({"by": "ana"}))
        .await
        .unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.output, Some(json!({"approved": {"by": "ana"}})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_wait_times_out_by_racing_a_timer() {
    let registry = Registry::new().orchestration(
        "WithTimeout",
        |ctx: OrchestrationContext, ms: u64| async move {
            let event = ctx.wait_for_event::<String>("reply");
            let timer = ctx.create_timer(Duration::from_millis(ms));
            Ok::<_, TaskError>(match select(event, timer).await {
                Either::Left((v, _)) => format!("event:{}", v?),
                Either::Right(_) => "timeout".to_string(),
            })
        },
    );
    let t = common::start(registry);
    // Nobody replies: the timer wins.
    let started = Instant::now();
    let status = t.run("WithTimeout", json!(100)).await;
    assert_eq!(status.output, Some(json!("timeout")));
    assert!(started.elapsed() >= Duration::from_millis(100));

    // A reply before the (long) timer: the event wins.
    let id = t
        .engine
        .start_orchestration("WithTimeout", None, 60_000)
        .await
        .unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    t.engine.raise_event(&id, "reply", "hi").await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.output, Some(json!("event:hi")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_raised_before_the_wait_is_kept() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let registry = Registry::new()
        .orchestration("Late", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<()>("Block", ()).await?;
            let a: u32 = ctx.wait_for_event("n").await?;
            let b: u32 = ctx.wait_for_event("n").await?;
            Ok::<_, TaskError>(vec![a, b])
        })
        .activity("Block", move |_ctx, _: ()| {
            let g = g.clone();
            async move {
                g.acquire().await.expect("gate").forget();
                Ok::<_, String>(())
            }
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Late", None, ())
        .await
        .unwrap();
    t.engine.raise_event(&id, "n", 1).await.unwrap();
    t.engine.raise_event(&id, "n", 2).await.unwrap();
    // Both events are in history while the orchestrator still waits on Block.
    t.wait_until(&id, "events recorded", |s| count(s, "EventRaised") == 2)
        .await;
    gate.add_permits(1);
    let status = t.wait(&id).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!([1, 2])), "kept in arrival order");
    let full = t.engine.status(&id, true).await.unwrap().unwrap();
    let k = history_kinds(&full);
    let raised = k.iter().position(|x| *x == "EventRaised").unwrap();
    let done = k.iter().position(|x| *x == "TaskCompleted").unwrap();
    assert!(raised < done, "the event arrived before the wait: {k:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_success_and_failure_reach_the_parent() {
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, n: i64| async move {
            let ok: i64 = ctx.call_sub_orchestration("Child", None, n).await?;
            let failed = ctx
                .call_sub_orchestration::<i64>("Child", None, -1)
                .await
                .expect_err("negative input fails the child");
            Ok::<_, TaskError>(json!({
                "ok": ok,
                "kind": failed.kind,
                "message": failed.message,
            }))
        })
        .orchestration("Child", |ctx: OrchestrationContext, n: i64| async move {
            if n < 0 {
                return Err(format!("child refused {n}"));
            }
            let v: i64 = ctx
                .call_activity("Triple", n)
                .await
                .map_err(|e| e.to_string())?;
            Ok(v)
        })
        .activity(
            "Triple",
            |_ctx, n: i64| async move { Ok::<_, String>(n * 3) },
        );
    let t = common::start(registry);
    let status = t.run("Parent", json!(7)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let out = status.output.unwrap();
    assert_eq!(out["ok"], json!(21));
    assert_eq!(out["kind"], json!("OrchestrationFailed"));
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("child refused -1"),
        "{out}"
    );
    // Children have stable ids derived from the parent and carry its id.
    let child = durable::InstanceId::new(format!("{}:0", status.instance_id)).unwrap();
    let child = t.engine.status(&child, false).await.unwrap().unwrap();
    assert_eq!(child.runtime_status, RuntimeStatus::Completed);
    assert_eq!(child.parent_instance_id, Some(status.instance_id.clone()));
    let failed = durable::InstanceId::new(format!("{}:1", status.instance_id)).unwrap();
    let failed = t.engine.status(&failed, false).await.unwrap().unwrap();
    assert_eq!(failed.runtime_status, RuntimeStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_failure_fails_a_parent_that_propagates_it() {
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_sub_orchestration::<()>("Child", None, ()).await?;
            Ok::<_, TaskError>(())
        })
        .orchestration("Child", |_ctx: OrchestrationContext, _: ()| async move {
            Err::<(), _>("child broke")
        });
    let t = common::start(registry);
    let status = t.run("Parent", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert!(failure.message.contains("child broke"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_resets_history_each_execution() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let registry = Registry::new()
        .orchestration("Counter", |ctx: OrchestrationContext, n: u32| async move {
            if n >= 5 {
                return Ok::<_, TaskError>(json!({ "final": n }));
            }
            let next: u32 = ctx.call_activity("Inc", n).await?;
            ctx.continue_as_new(next);
            Ok(json!(null))
        })
        .activity("Inc", move |_ctx, n: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, String>(n + 1) }
        });
    let t = common::start(registry);
    let mut rx = t.engine.subscribe();
    let status = t.run("Counter", json!(0)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!({ "final": 5 })));
    assert_eq!(status.input, json!(5), "input of the last execution");
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    let h = full.history.as_ref().unwrap();
    assert_eq!(
        history_kinds(&full),
        vec![
            "OrchestratorStarted",
            "ExecutionStarted",
            "ExecutionCompleted"
        ]
    );
    assert_eq!(h[0].event_id, 0);
    match &h[1].kind {
        EventKind::ExecutionStarted { input, .. } => assert_eq!(*input, json!(5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(full.history_events, 3);

    let mut continued = 0;
    while let Ok(u) = rx.try_recv() {
        if u.instance_id == status.instance_id && u.runtime_status == RuntimeStatus::ContinuedAsNew
        {
            continued += 1;
        }
    }
    assert_eq!(continued, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_status_is_visible_in_status() {
    let registry =
        Registry::new().orchestration("Steps", |ctx: OrchestrationContext, _: ()| async move {
            ctx.set_custom_status(json!({ "step": 1 }));
            let _: () = ctx.wait_for_event("next").await?;
            ctx.set_custom_status(json!({ "step": 2 }));
            Ok::<_, TaskError>("done")
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Steps", None, ())
        .await
        .unwrap();
    let s = t
        .wait_until(&id, "step 1", |s| s.custom_status.is_some())
        .await;
    assert_eq!(s.custom_status, Some(json!({ "step": 1 })));
    assert_eq!(s.runtime_status, RuntimeStatus::Running);
    t.engine.raise_event(&id, "next", ()).await.unwrap();
    let s = t.wait(&id).await;
    assert_eq!(s.custom_status, Some(json!({ "step": 2 })));
    assert_eq!(s.output, Some(json!("done")));
}

fn accumulator() -> Registry {
    Registry::new().orchestration("Acc", |ctx: OrchestrationContext, total: u32| async move {
        let v: u32 = ctx.wait_for_event("add").await?;
        if v == 0 {
            return Ok::<_, TaskError>(total);
        }
        ctx.continue_as_new(total + v);
        Ok(0)
    })
}

/// Stops `t`'s dispatchers, runs `queue` (requests pile up in the store),
/// then starts a fresh engine on the same store: its first turn sees all
/// the queued messages in one batch.
async fn in_one_batch<F, Fut>(
    t: &common::TestEngine,
    registry: Registry,
    queue: F,
) -> durable::Engine
where
    F: FnOnce(durable::Engine) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    t.engine.shutdown(Duration::from_secs(5)).await;
    queue(t.engine.clone()).await;
    durable::Engine::start(
        t.store.clone() as Arc<dyn durable::Store>,
        registry,
        EngineConfig::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_keeps_messages_that_arrive_with_the_last_one() {
    let t = common::start(accumulator());
    let id = t.engine.start_orchestration("Acc", None, 0).await.unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    let engine = in_one_batch(&t, accumulator(), |e| {
        let id = id.clone();
        async move {
            for v in [1, 2, 3, 4, 0] {
                e.raise_event(&id, "add", v).await.unwrap();
            }
        }
    })
    .await;
    let status = engine
        .wait_for_completion(&id, Duration::from_secs(10))
        .await
        .expect("every event reaches an execution");
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_is_not_lost_across_continue_as_new() {
    let t = common::start(accumulator());
    let id = t.engine.start_orchestration("Acc", None, 0).await.unwrap();
    t.wait_status(&id, RuntimeStatus::Running).await;
    let engine = in_one_batch(&t, accumulator(), |e| {
        let id = id.clone();
        async move {
            e.raise_event(&id, "add", 5).await.unwrap();
            e.terminate(&id, Some("enough".into())).await.unwrap();
        }
    })
    .await;
    let status = engine
        .wait_for_completion(&id, Duration::from_secs(10))
        .await
        .expect("the terminate request is applied");
    assert_eq!(status.runtime_status, RuntimeStatus::Terminated);
    assert_eq!(status.output, Some(json!("enough")));
    assert_eq!(status.input, json!(5), "terminated in the second execution");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_that_continues_as_new_reports_to_its_parent() {
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let n: u32 = ctx.call_sub_orchestration("Loop", None, 0).await?;
            Ok::<_, TaskError>(n)
        })
        .orchestration("Loop", |ctx: OrchestrationContext, n: u32| async move {
            if n < 3 {
                ctx.create_timer(Duration::from_millis(1)).await;
                ctx.continue_as_new(n + 1);
            }
            Ok::<_, TaskError>(n)
        });
    let t = common::start(registry);
    let status = t.run("Parent", json!(null)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_or_conflicting_children_fail_the_parent_task() {
    let registry = Registry::new()
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let err = ctx
                .call_sub_orchestration::<()>("Child", None, ())
                .await
                .expect_err("terminated");
            let id = durable::InstanceId::new("shared-child").unwrap();
            let conflict = ctx
                .call_sub_orchestration::<()>("Child", Some(id), ())
                .await
                .expect_err("id taken by a live instance");
            Ok::<_, TaskError>(json!([err.kind, err.message, conflict.kind]))
        })
        .orchestration("Child", |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_event("never").await?;
            Ok::<_, TaskError>(())
        });
    let t = common::start(registry);
    let shared = durable::InstanceId::new("shared-child").unwrap();
    t.engine
        .start_orchestration("Child", Some(shared.clone()), ())
        .await
        .unwrap();
    let id = t
        .engine
        .start_orchestration("Parent", None, ())
        .await
        .unwrap();
    let child = durable::InstanceId::new(format!("{id}:0")).unwrap();
    t.wait_until(&id, "child created", |s| {
        count(s, "SubOrchestrationInstanceCreated") == 1
    })
    .await;
    t.wait_status(&child, RuntimeStatus::Running).await;
    t.engine
        .terminate(&child, Some("cut".into()))
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
        Some(json!(["Terminated", "cut", "Conflict"]))
    );
    // The live instance that held the id is untouched.
    let s = t.engine.status(&shared, false).await.unwrap().unwrap();
    assert_eq!(s.runtime_status, RuntimeStatus::Running);
    assert_eq!(s.parent_instance_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_never_fires_can_lose_a_race() {
    let registry =
        Registry::new().orchestration("Forever", |ctx: OrchestrationContext, _: ()| async move {
            let event = ctx.wait_for_event::<u32>("e");
            let never = ctx.create_timer(Duration::MAX);
            Ok::<_, TaskError>(match select(event, never).await {
                Either::Left((v, _)) => v?,
                Either::Right(_) => 0,
            })
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Forever", None, ())
        .await
        .unwrap();
    t.wait_until(&id, "timer created", |s| count(s, "TimerCreated") == 1)
        .await;
    t.engine.raise_event(&id, "e", 9).await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!(9)));
}
