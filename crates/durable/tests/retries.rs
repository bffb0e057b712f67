//! Activity retries: back-off and its cap, giving up after the attempts
//! or the total timeout, and which failures a policy retries.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durable::{EventKind, OrchestrationContext, Registry, RetryPolicy, RuntimeStatus};

use common::count;
use serde_json::json;

/// Counts attempts per activity name.
fn flaky_registry(
    attempts: Arc<AtomicU32>,
    fail_first: u32,
    message: &'static str,
    policy: RetryPolicy,
) -> Registry {
    Registry::new()
        .orchestration("Retry", move |ctx: OrchestrationContext, _: ()| {
            let policy = policy.clone();
            async move {
                ctx.call_activity_with_retry::<u32>("Flaky", (), &policy)
                    .await
            }
        })
        .activity("Flaky", move |_ctx, _: ()| {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n <= fail_first {
                    Err(format!("{message} #{n}"))
                } else {
                    Ok(n)
                }
            }
        })
}

/// The retry delays a run took: each timer's due time minus the turn time
/// it was created in (the orchestrator's "now").
fn timer_delays(history: &[durable::HistoryEvent]) -> Vec<i64> {
    let mut now = None;
    let mut out = Vec::new();
    for e in history {
        match e.kind {
            EventKind::OrchestratorStarted => now = Some(e.timestamp),
            EventKind::TimerCreated { fire_at, .. } => {
                out.push((fire_at - now.unwrap()).num_milliseconds())
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_until_success_with_backoff_and_max_interval() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut policy = RetryPolicy::new(10, Duration::from_millis(20));
    policy.backoff_coefficient = 2.0;
    policy.max_interval = Duration::from_millis(50);
    let t = common::start(flaky_registry(attempts.clone(), 4, "transient", policy));
    let status = t.run("Retry", json!(null)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!(5)));
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    // first interval 20, doubling, capped at 50.
    assert_eq!(
        timer_delays(full.history.as_ref().unwrap()),
        vec![20, 40, 50, 50]
    );
    assert_eq!(count(&full, "TaskFailed"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_gives_up_after_max_attempts() {
    let attempts = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::new(3, Duration::from_millis(10));
    let t = common::start(flaky_registry(attempts.clone(), u32::MAX, "broken", policy));
    let status = t.run("Retry", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let failure = status.failure.unwrap();
    assert!(failure.message.contains("broken #3"), "{failure:?}");
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(timer_delays(full.history.as_ref().unwrap()), vec![10, 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_stops_at_total_timeout() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut policy = RetryPolicy::new(1_000, Duration::from_millis(60));
    policy.backoff_coefficient = 1.0;
    policy.total_timeout = Some(Duration::from_millis(150));
    let t = common::start(flaky_registry(attempts.clone(), u32::MAX, "down", policy));
    let status = t.run("Retry", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let n = attempts.load(Ordering::SeqCst);
    // 150 ms allow at most two 60 ms waits: three attempts at most.
    assert!((1..=3).contains(&n), "{n} attempts");
    // Each failure was retried exactly when the time since the first
    // attempt (orchestrator time) plus the wait stayed within 150 ms.
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    let h = full.history.as_ref().unwrap();
    let first = h[0].timestamp;
    let mut now = first;
    let mut decisions = 0;
    for (i, e) in h.iter().enumerate() {
        match e.kind {
            EventKind::OrchestratorStarted => now = e.timestamp,
            EventKind::TaskFailed { .. } => {
                let elapsed = (now - first).num_milliseconds();
                let retried = matches!(h[i + 1].kind, EventKind::TimerCreated { .. });
                assert_eq!(retried, elapsed + 60 <= 150, "failure at +{elapsed} ms");
                decisions += 1;
            }
            _ => {}
        }
    }
    assert_eq!(decisions, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_if_filters_which_failures_are_retried() {
    let mut policy = RetryPolicy::new(5, Duration::from_millis(10));
    policy.retry_if = Some(Arc::new(|e: &durable::FailureDetails| {
        !e.message.contains("fatal")
    }));
    // Not retried.
    let attempts = Arc::new(AtomicU32::new(0));
    let t = common::start(flaky_registry(
        attempts.clone(),
        u32::MAX,
        "fatal",
        policy.clone(),
    ));
    let status = t.run("Retry", json!(null)).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    // Retried.
    let attempts = Arc::new(AtomicU32::new(0));
    let t = common::start(flaky_registry(attempts.clone(), 2, "transient", policy));
    let status = t.run("Retry", json!(null)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[test]
fn retry_delays_stay_capped_for_many_attempts() {
    let mut p = RetryPolicy::new(u32::MAX, Duration::from_millis(20));
    p.max_interval = Duration::from_secs(60);
    let e = durable::FailureDetails::new("X", "y");
    for attempt in [1, 10, 60, 71, 100, 1_000, 100_000] {
        let d = p.next_delay(attempt, Duration::ZERO, &e).unwrap();
        assert!(d <= Duration::from_secs(60), "attempt {attempt}: {d:?}");
    }
    assert_eq!(
        p.next_delay(1_000, Duration::ZERO, &e),
        Some(Duration::from_secs(60))
    );
    p.backoff_coefficient = f64::INFINITY;
    assert_eq!(
        p.next_delay(3, Duration::ZERO, &e),
        Some(Duration::from_secs(60))
    );
    p.backoff_coefficient = f64::NAN;
    assert!(p.next_delay(3, Duration::ZERO, &e).is_some());
}
