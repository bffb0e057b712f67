//! Engines in a process: live updates, several engines at once, shutdown and
//! recovery, replay determinism and non-determinism detection.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durable::{
    EngineConfig, Error, HistoryEvent, OrchestrationContext, Registry, RuntimeStatus, TaskError,
};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use common::count;
use durable::{Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_each_status_and_every_history_event_in_order() {
    let registry = Registry::new()
        .orchestration("Two", |ctx: OrchestrationContext, _: ()| async move {
            ctx.set_custom_status("working");
            let a: u32 = ctx.call_activity("One", ()).await?;
            let b: u32 = ctx.call_activity("One", ()).await?;
            Ok::<_, TaskError>(a + b)
        })
        .activity("One", |_ctx, _: ()| async move { Ok::<_, String>(1u32) });
    let t = common::start(registry);
    let mut rx = t.engine.subscribe();
    let id = t.engine.start_orchestration("Two", None, ()).await.unwrap();

    let mut statuses = Vec::new();
    let mut events: Vec<HistoryEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let u = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("no terminal update; saw {statuses:?}"),
            Ok(Err(RecvError::Lagged(n))) => panic!("lagged by {n}"),
            Ok(Err(RecvError::Closed)) => panic!("closed"),
            Ok(Ok(u)) => u,
        };
        if u.instance_id != id {
            continue;
        }
        assert_eq!(u.name, "Two");
        if statuses.last() != Some(&u.runtime_status) {
            statuses.push(u.runtime_status);
        }
        events.extend(u.history.iter().cloned());
        if u.runtime_status.is_terminal() {
            assert_eq!(u.output, Some(json!(2)));
            assert_eq!(u.custom_status, Some(json!("working")));
            break;
        }
    }
    assert_eq!(
        statuses,
        vec![
            RuntimeStatus::Pending,
            RuntimeStatus::Running,
            RuntimeStatus::Completed
        ]
    );
    // The updates carry the whole history, once, in order.
    let stored = t.engine.status(&id, true).await.unwrap().unwrap();
    assert_eq!(Some(events), stored.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_engines_with_their_own_stores_run_side_by_side() {
    let make = |tag: &'static str| {
        Registry::new()
            .orchestration(
                "Work",
                move |ctx: OrchestrationContext, n: u32| async move {
                    let mut out = Vec::new();
                    for i in 0..n {
                        out.push(ctx.call_activity::<String>("Tag", i).await?);
                    }
                    ctx.create_timer(Duration::from_millis(20)).await;
                    Ok::<_, TaskError>(out)
                },
            )
            .activity("Tag", move |_ctx, i: u32| async move {
                Ok::<_, String>(format!("{tag}{i}"))
            })
    };
    let engines: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|tag| common::start(make(tag)))
        .collect();
    let runs = engines.iter().map(|t| async move {
        let ids: Vec<_> = futures::future::join_all(
            (0..5).map(|_| t.engine.start_orchestration("Work", None, 3)),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        let mut outs = Vec::new();
        for id in ids {
            outs.push(t.wait(&id).await.output.unwrap());
        }
        outs
    });
    let results = futures::future::join_all(runs).await;
    for (outs, tag) in results.iter().zip(["a", "b", "c"]) {
        assert_eq!(outs.len(), 5);
        for out in outs {
            assert_eq!(
                *out,
                json!([format!("{tag}0"), format!("{tag}1"), format!("{tag}2")])
            );
        }
    }
    for t in &engines {
        let page = t
            .engine
            .list(&durable::InstanceQuery {
                filter: Default::default(),
                page_size: 100,
                with_input: true,
                continuation: None,
            })
            .await
            .unwrap();
        assert_eq!(
            page.instances.len(),
            5,
            "each store holds its own instances"
        );
    }
}

fn recovery_registry(activity_runs: Arc<AtomicU32>) -> Registry {
    Registry::new()
        .orchestration("Long", |ctx: OrchestrationContext, ms: u64| async move {
            let a: u32 = ctx.call_activity("Count", ()).await?;
            ctx.create_timer(Duration::from_millis(ms)).await;
            let e: u32 = ctx.wait_for_event("go").await?;
            let b: u32 = ctx.call_activity("Count", ()).await?;
            Ok::<_, TaskError>(json!([a, e, b]))
        })
        .activity("Count", move |_ctx, _: ()| {
            let n = activity_runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, String>(n) }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_engine_on_the_same_store_finishes_unfinished_instances() {
    let runs = Arc::new(AtomicU32::new(0));
    let t = common::start(recovery_registry(runs.clone()));
    // One instance waits on a timer that fires after the restart, one on an
    // event raised after it.
    let on_timer = t
        .engine
        .start_orchestration("Long", None, 400)
        .await
        .unwrap();
    let on_event = t.engine.start_orchestration("Long", None, 1).await.unwrap();
    t.wait_until(&on_timer, "timer created", |s| {
        count(s, "TimerCreated") == 1
    })
    .await;
    t.wait_until(&on_event, "timer fired", |s| count(s, "TimerFired") == 1)
        .await;
    let engine = t.engine.clone();
    let started = Instant::now();
    t.engine.shutdown(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown returned"
    );
    assert!(matches!(
        engine.start_orchestration("Long", None, 1).await,
        Err(Error::ShuttingDown)
    ));
    drop(engine);

    let t = t
        .restart(recovery_registry(runs.clone()), EngineConfig::default())
        .await;
    t.engine.raise_event(&on_event, "go", 10).await.unwrap();
    t.wait_until(&on_timer, "timer fired after restart", |s| {
        count(s, "TimerFired") == 1
    })
    .await;
    t.engine.raise_event(&on_timer, "go", 20).await.unwrap();
    let a = t.wait(&on_timer).await;
    let b = t.wait(&on_event).await;
    assert_eq!(a.runtime_status, RuntimeStatus::Completed, "{a:?}");
    assert_eq!(b.runtime_status, RuntimeStatus::Completed, "{b:?}");
    assert_eq!(a.output.as_ref().unwrap()[1], json!(20));
    assert_eq!(b.output.as_ref().unwrap()[1], json!(10));
    // Completed activities were not run again after the restart.
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_despite_a_stuck_activity() {
    let registry = Registry::new()
        .orchestration("Stuck", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<()>("Hang", ()).await?;
            Ok::<_, TaskError>(())
        })
        .activity("Hang", |_ctx, _: ()| async move {
            std::future::pending::<()>().await;
            Ok::<_, String>(())
        });
    let t = common::start(registry);
    let id = t
        .engine
        .start_orchestration("Stuck", None, ())
        .await
        .unwrap();
    t.wait_until(&id, "activity scheduled", |s| {
        count(s, "TaskScheduled") == 1
    })
    .await;
    let started = Instant::now();
    t.engine.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

type Drawn = (String, u64, String);

fn drawing_registry(
    recorded: Arc<Mutex<HashMap<String, Drawn>>>,
    replays: Arc<AtomicU32>,
) -> Registry {
    Registry::new()
        .orchestration("Draw", move |ctx: OrchestrationContext, _: ()| {
            let replays = replays.clone();
            async move {
                if ctx.is_replaying() {
                    replays.fetch_add(1, Ordering::SeqCst);
                }
                let drawn: Drawn = (
                    ctx.new_uuid().to_string(),
                    ctx.random_u64(),
                    ctx.current_time().to_rfc3339(),
                );
                let id = ctx.instance_id().to_string();
                ctx.call_activity::<()>("Record", (id, drawn.clone()))
                    .await?;
                let _: () = ctx.wait_for_event("go").await?;
                // Drawn after a wait: a later turn's time.
                let later = ctx.current_time().to_rfc3339();
                Ok::<_, TaskError>(
                    json!({ "drawn": drawn, "later": later, "uuid2": ctx.new_uuid().to_string() }),
                )
            }
        })
        .activity("Record", move |_ctx, (id, drawn): (String, Drawn)| {
            recorded.lock().unwrap().insert(id, drawn);
            async move { Ok::<_, String>(()) }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_safe_values_are_the_same_after_replay() {
    let recorded = Arc::new(Mutex::new(HashMap::new()));
    let replays = Arc::new(AtomicU32::new(0));
    let config = EngineConfig {
        cache_capacity: 1,
        ..Default::default()
    };
    let t = common::start_with(drawing_registry(recorded.clone(), replays.clone()), config);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            t.engine
                .start_orchestration("Draw", None, ())
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        t.wait_until(id, "recorded", |s| count(s, "TaskCompleted") == 1)
            .await;
    }
    // One run fits in the cache: at least three of these turns replay.
    let mut outputs = Vec::new();
    for id in &ids {
        t.engine.raise_event(id, "go", ()).await.unwrap();
        let s = t.wait(id).await;
        assert_eq!(s.runtime_status, RuntimeStatus::Completed, "{s:?}");
        outputs.push(s.output.unwrap());
    }
    assert!(replays.load(Ordering::SeqCst) >= 3, "replays: {replays:?}");
    let recorded = recorded.lock().unwrap().clone();
    let mut uuids = std::collections::HashSet::new();
    for (id, out) in ids.iter().zip(&outputs) {
        let first: Drawn = recorded[id.as_str()].clone();
        let replayed: Drawn = serde_json::from_value(out["drawn"].clone()).unwrap();
        assert_eq!(
            first, replayed,
            "values drawn before the wait changed on replay"
        );
        assert!(out["later"].as_str().unwrap() >= first.2.as_str());
        let u = uuid::Uuid::parse_str(&first.0).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert!(
            uuids.insert(first.0.clone()),
            "uuids differ between instances"
        );
        assert_ne!(out["uuid2"], json!(first.0));
    }
}

static FLIPPED: AtomicBool = AtomicBool::new(false);

fn changing_registry() -> Registry {
    Registry::new()
        .orchestration("Changes", |ctx: OrchestrationContext, _: ()| async move {
            let name = if FLIPPED.load(Ordering::SeqCst) {
                "NewStep"
            } else {
                "OldStep"
            };
            ctx.call_activity::<()>(name, ()).await?;
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        })
        .activity("OldStep", |_ctx, _: ()| async move { Ok::<_, String>(()) })
        .activity("NewStep", |_ctx, _: ()| async move { Ok::<_, String>(()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_changes_under_a_running_instance_is_caught() {
    let t = common::start(changing_registry());
    let id = t
        .engine
        .start_orchestration("Changes", None, ())
        .await
        .unwrap();
    t.wait_until(&id, "OldStep done", |s| count(s, "TaskCompleted") == 1)
        .await;
    // Deploy the changed code: a restarted engine replays from history.
    FLIPPED.store(true, Ordering::SeqCst);
    let t = t
        .restart(changing_registry(), EngineConfig::default())
        .await;
    t.engine.raise_event(&id, "go", ()).await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "NonDeterminism");
    assert!(failure.message.contains("'OldStep'"), "{failure:?}");
    assert!(failure.message.contains("'NewStep'"), "{failure:?}");
}

static SKIP: AtomicBool = AtomicBool::new(false);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_action_is_caught_after_cache_eviction() {
    let registry = Registry::new()
        .orchestration("Skips", |ctx: OrchestrationContext, _: ()| async move {
            if !SKIP.load(Ordering::SeqCst) {
                ctx.create_timer(Duration::from_millis(1)).await;
            }
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        })
        .orchestration("Other", |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_event("go").await?;
            Ok::<_, TaskError>(())
        });
    let config = EngineConfig {
        cache_capacity: 1,
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let id = t
        .engine
        .start_orchestration("Skips", None, ())
        .await
        .unwrap();
    t.wait_until(&id, "timer fired", |s| count(s, "TimerFired") == 1)
        .await;
    // Another live instance takes the only cache slot.
    let other = t
        .engine
        .start_orchestration("Other", None, ())
        .await
        .unwrap();
    t.wait_status(&other, RuntimeStatus::Running).await;
    SKIP.store(true, Ordering::SeqCst);
    t.engine.raise_event(&id, "go", ()).await.unwrap();
    let status = t.wait(&id).await;
    assert_eq!(status.runtime_status, RuntimeStatus::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.kind, "NonDeterminism");
    assert!(failure.message.contains("timer"), "{failure:?}");
    // The other instance is fine.
    t.engine.raise_event(&other, "go", ()).await.unwrap();
    assert_eq!(
        t.wait(&other).await.runtime_status,
        RuntimeStatus::Completed
    );
}

/// Many instances at once with a tiny cache (so most turns replay), few
/// turn slots and a small update channel (so waiters lag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_instances_with_a_tiny_cache_all_finish_correctly() {
    let registry = Registry::new()
        .orchestration("Mixed", |ctx: OrchestrationContext, n: u64| async move {
            let parts = (0..5).map(|i| ctx.call_activity::<u64>("Mul", (n, i)));
            let mut sum: u64 = futures::future::try_join_all(parts)
                .await?
                .into_iter()
                .sum();
            for _ in 0..3 {
                sum = ctx.call_activity("Mul", (sum, 2)).await?;
            }
            ctx.create_timer(Duration::from_millis(5)).await;
            let child: u64 = ctx.call_sub_orchestration("Child", None, sum).await?;
            Ok::<_, TaskError>(json!([sum, child, ctx.new_uuid().to_string()]))
        })
        .orchestration("Child", |ctx: OrchestrationContext, n: u64| async move {
            let v: u64 = ctx.call_activity("Mul", (n, 3)).await?;
            Ok::<_, TaskError>(v)
        })
        .activity("Mul", |_ctx, (a, b): (u64, u64)| async move {
            Ok::<_, String>(a * b)
        });
    let config = EngineConfig {
        cache_capacity: 4,
        orchestration_concurrency: 8,
        activity_concurrency: 16,
        update_capacity: 16,
        ..Default::default()
    };
    let t = common::start_with(registry, config);
    let n = 150u64;
    let ids: Vec<_> =
        futures::future::join_all((0..n).map(|i| t.engine.start_orchestration("Mixed", None, i)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let statuses = futures::future::join_all(ids.iter().map(|id| t.wait(id))).await;
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(s.runtime_status, RuntimeStatus::Completed, "{s:?}");
        let sum = (0..5).map(|k| i as u64 * k).sum::<u64>() * 8;
        let out = s.output.as_ref().unwrap();
        assert_eq!(out[0], json!(sum));
        assert_eq!(out[1], json!(sum * 3));
    }
}

/// A store that can hold the dispatchers inside their fetch calls, and can
/// hold back the reply to an execution's first commit until a later commit
/// has landed (widening the window between a commit and its publication).
struct GatedStore {
    inner: Arc<durable::SqliteStore>,
    hold: AtomicBool,
    held: AtomicU32,
    arrived: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
    slow_first_ack: AtomicBool,
    commits: AtomicU32,
    committed: tokio::sync::Notify,
}

impl GatedStore {
    fn new(inner: durable::SqliteStore) -> Self {
        Self {
            inner: Arc::new(inner),
            hold: AtomicBool::new(false),
            held: AtomicU32::new(0),
            arrived: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
            slow_first_ack: AtomicBool::new(false),
            commits: AtomicU32::new(0),
            committed: tokio::sync::Notify::new(),
        }
    }
}

impl GatedStore {
    async fn gate(&self) {
        if self.hold.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            self.arrived.notify_waiters();
            self.release.acquire().await.expect("gate").forget();
        }
    }
}

#[async_trait::async_trait]
impl durable::Store for GatedStore {
    fn work_signal(&self) -> Arc<durable::store::WorkSignal> {
        self.inner.work_signal()
    }
    async fn create_instance(&self, i: durable::store::NewInstance) -> Result<(), StoreError> {
        self.inner.create_instance(i).await
    }
    async fn send_message(
        &self,
        id: &durable::InstanceId,
        m: durable::history::Message,
    ) -> Result<(), StoreError> {
        self.inner.send_message(id, m).await
    }
    async fn fetch_orchestration_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<durable::store::OrchestrationWorkItem>, StoreError> {
        self.gate().await;
        self.inner.fetch_orchestration_work(max, lease).await
    }
    async fn load_history(
        &self,
        id: &durable::InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        self.inner.load_history(id).await
    }
    async fn commit_turn(&self, c: durable::store::TurnCommit) -> Result<(), StoreError> {
        let first = c.history.first().is_some_and(|e| e.event_id == 0);
        let result = self.inner.commit_turn(c).await;
        let mine = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        self.committed.notify_waiters();
        if first && self.slow_first_ack.load(Ordering::SeqCst) {
            // Bounded: an engine that orders publications correctly makes
            // the next commit wait for this reply, so it never comes.
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    let next = self.committed.notified();
                    tokio::pin!(next);
                    next.as_mut().enable();
                    if self.commits.load(Ordering::SeqCst) > mine {
                        return;
                    }
                    next.await;
                }
            })
            .await;
        }
        result
    }
    async fn abandon_orchestration_work(
        &self,
        l: &durable::store::WorkLock,
        d: Duration,
    ) -> Result<(), StoreError> {
        self.inner.abandon_orchestration_work(l, d).await
    }
    async fn fetch_activity_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<durable::store::ActivityWorkItem>, StoreError> {
        self.gate().await;
        self.inner.fetch_activity_work(max, lease).await
    }
    async fn complete_activity_work(
        &self,
        l: &durable::store::WorkLock,
        m: durable::history::Message,
    ) -> Result<(), StoreError> {
        self.inner.complete_activity_work(l, m).await
    }
    async fn abandon_activity_work(
        &self,
        l: &durable::store::WorkLock,
        d: Duration,
    ) -> Result<(), StoreError> {
        self.inner.abandon_activity_work(l, d).await
    }
    async fn next_wake_at(
        &self,
        kind: durable::store::WorkKind,
    ) -> Result<Option<durable::Timestamp>, StoreError> {
        self.inner.next_wake_at(kind).await
    }
    async fn read_status(
        &self,
        id: &durable::InstanceId,
        read: durable::store::StatusRead,
    ) -> Result<Option<durable::InstanceStatus>, StoreError> {
        self.inner.read_status(id, read).await
    }
    async fn list_instances(
        &self,
        q: &durable::InstanceQuery,
    ) -> Result<durable::InstancePage, StoreError> {
        self.inner.list_instances(q).await
    }
    async fn purge_instance(
        &self,
        id: &durable::InstanceId,
    ) -> Result<durable::store::PurgeOutcome, StoreError> {
        self.inner.purge_instance(id).await
    }
    async fn purge_instances(
        &self,
        f: &durable::InstanceFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.inner.purge_instances(f, limit).await
    }
    async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        self.inner.count_by_status().await
    }
    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        self.inner.queue_depth().await
    }
}

/// Shutdown requested while both dispatchers are busy (inside a store call,
/// not parked on the shutdown signal) must still stop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_dispatchers_are_busy_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedStore::new(
        durable::SqliteStore::open(common::db_path(&dir)).unwrap(),
    ));
    let registry = Registry::new()
        .orchestration("Noop", |_ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, TaskError>(())
        });
    let engine = durable::Engine::start(store.clone(), registry, EngineConfig::default());
    // Park both dispatchers inside a fetch.
    store.hold.store(true, Ordering::SeqCst);
    loop {
        let arrived = store.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if store.held.load(Ordering::SeqCst) >= 2 {
            break;
        }
        let signal = store.work_signal();
        signal.orchestrations.notify_waiters();
        signal.activities.notify_waiters();
        let _ = tokio::time::timeout(Duration::from_millis(50), arrived).await;
    }
    store.hold.store(false, Ordering::SeqCst);
    // Request the shutdown (its first poll sends the signal), while both
    // dispatchers are still inside their fetch.
    let stopping = engine.shutdown(Duration::from_secs(5));
    tokio::pin!(stopping);
    assert!(futures::poll!(stopping.as_mut()).is_pending());
    assert!(matches!(
        engine.start_orchestration("Noop", None, ()).await,
        Err(Error::ShuttingDown)
    ));
    store.release.add_permits(2);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown returns");
}

/// Under load, each instance's updates arrive in commit order: every
/// update's history continues exactly where the previous one of the same
/// instance ended, and nothing follows the terminal update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_instance_arrive_in_commit_order_under_load() {
    const INSTANCES: usize = 60;
    const STEPS: u32 = 15;
    let registry = Registry::new()
        .orchestration("Steps", |ctx: OrchestrationContext, n: u32| async move {
            let mut v = 0u32;
            for _ in 0..n {
                v = ctx.call_activity("Inc", v).await?;
            }
            Ok::<_, TaskError>(v)
        })
        .activity("Inc", |_ctx, v: u32| async move { Ok::<_, String>(v + 1) });
    let t = common::start_with(
        registry,
        EngineConfig {
            update_capacity: 1 << 16,
            ..EngineConfig::default()
        },
    );
    let mut rx = t.engine.subscribe();
    for _ in 0..INSTANCES {
        t.engine
            .start_orchestration("Steps", None, STEPS)
            .await
            .unwrap();
    }
    // Next expected event id per instance, and which ones finished.
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut finished = 0;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while finished < INSTANCES {
        let u = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("only {finished} of {INSTANCES} finished"),
            Ok(Err(RecvError::Lagged(n))) => panic!("lagged by {n}"),
            Ok(Err(RecvError::Closed)) => panic!("closed"),
            Ok(Ok(u)) => u,
        };
        let key = u.instance_id.to_string();
        let seen_before = next.contains_key(&key);
        assert_eq!(
            u.runtime_status == RuntimeStatus::Pending,
            !seen_before,
            "{key}: Pending must be the first update, and only it"
        );
        let expected = next.entry(key.clone()).or_insert(0);
        assert_ne!(*expected, u64::MAX, "{key}: update after its terminal one");
        if let Some(first) = u.history.first() {
            assert_eq!(
                first.event_id, *expected,
                "{key}: update out of order ({:?})",
                u.runtime_status
            );
            *expected = u.history.last().unwrap().event_id + 1;
        }
        if u.runtime_status.is_terminal() {
            assert_eq!(u.runtime_status, RuntimeStatus::Completed);
            assert_eq!(u.output, Some(json!(STEPS)));
            *expected = u64::MAX;
            finished += 1;
        }
    }
}

/// The commit of a turn releases the instance, so the next turn can commit
/// before the first one's update is published. With the reply to the first
/// commit held back until a later commit lands, an engine that publishes
/// after committing without ordering would send the second turn's update
/// first; ours keeps commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_reply_does_not_reorder_updates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedStore::new(
        durable::SqliteStore::open(common::db_path(&dir)).unwrap(),
    ));
    store.slow_first_ack.store(true, Ordering::SeqCst);
    let registry = Registry::new()
        .orchestration("Two", |ctx: OrchestrationContext, _: ()| async move {
            let a: u32 = ctx.call_activity("One", ()).await?;
            let b: u32 = ctx.call_activity("One", ()).await?;
            Ok::<_, TaskError>(a + b)
        })
        .activity("One", |_ctx, _: ()| async move { Ok::<_, String>(1u32) });
    let engine = durable::Engine::start(store.clone(), registry, EngineConfig::default());
    let mut rx = engine.subscribe();
    let id = engine.start_orchestration("Two", None, ()).await.unwrap();
    let mut next_event = 0;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let u = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("no terminal update"),
            Ok(Err(e)) => panic!("{e}"),
            Ok(Ok(u)) => u,
        };
        assert_eq!(u.instance_id, id);
        if let Some(first) = u.history.first() {
            assert_eq!(first.event_id, next_event, "update out of commit order");
            next_event = u.history.last().unwrap().event_id + 1;
        }
        if u.runtime_status.is_terminal() {
            assert_eq!(u.output, Some(json!(2)));
            break;
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
}
