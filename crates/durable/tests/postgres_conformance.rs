//! Runs the store conformance suite (`durable::conformance`) against
//! [`PostgresStore`], plus checks specific to the PostgreSQL store: the
//! schema check at connect, wake-ups and lease handling across two stores
//! on one database (two "processes").
//!
//! One throwaway cluster serves the whole test binary
//! ([`PgCluster::shared`]); every test gets a fresh database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use durable::conformance::Harness;
use durable::store::{NewInstance, PurgeOutcome, WorkKind};
use durable::testing::PgCluster;
use durable::{InstanceId, PostgresConfig, PostgresStore, Store, StoreError};
use serde_json::json;

/// A fresh database on the shared cluster; reopening connects again.
struct PgHarness {
    url: String,
    open: Option<Arc<PostgresStore>>,
}

impl Harness for PgHarness {
    async fn open(&mut self) -> Arc<dyn Store> {
        let store = Arc::new(
            PostgresStore::connect(PostgresConfig {
                lifecycle_outbox: true,
                ..PostgresConfig::new(&self.url)
            })
            .await
            .expect("connect store"),
        );
        self.open = Some(store.clone());
        store
    }

    async fn close(&mut self, store: Arc<dyn Store>) {
        drop(store);
        if let Some(store) = self.open.take() {
            store.close().await;
        }
    }
}

async fn fresh_url() -> String {
    PgCluster::shared()
        .create_database()
        .await
        .expect("create database")
}

async fn harness() -> PgHarness {
    PgHarness {
        url: fresh_url().await,
        open: None,
    }
}

durable::conformance_tests!(harness);

fn new_instance(id: &str) -> NewInstance {
    NewInstance {
        instance_id: InstanceId::new(id).unwrap(),
        name: "Orch".into(),
        input: json!(id),
        execution_id: format!("{id}@1"),
        parent: None,
        created_at: durable::types::now(),
        only_if_absent: false,
    }
}

/// A store that takes any due work at once, wherever its last turn ran:
/// for tests of two stores handing work to each other.
fn no_affinity(url: &str) -> PostgresConfig {
    let mut c = PostgresConfig::new(url);
    c.affinity = Duration::ZERO;
    c
}

async fn raw(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    driver.await.unwrap().unwrap();
}

/// A schema holding someone else's tables is refused without being
/// touched; another store version is refused; a second connect to our own
/// schema works (idempotent), also from several stores at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_checks_at_connect() {
    let url = fresh_url().await;
    raw(
        &url,
        "CREATE SCHEMA durable; CREATE TABLE durable.orders (id int)",
    )
    .await;
    let r = PostgresStore::connect(PostgresConfig::new(&url)).await;
    assert!(
        matches!(&r, Err(StoreError::Incompatible(m)) if m.contains("not a Galaxy Forge engine store")),
        "{r:?}"
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'durable'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "the foreign schema was changed");

    // Another schema in the same database is fine; several stores connect
    // at once and agree on one schema.
    let mut config = PostgresConfig::new(&url);
    config.schema = "engine".into();
    let stores = futures::future::join_all((0..3).map(|_| PostgresStore::connect(config.clone())))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("concurrent first connects");
    stores[0]
        .create_instance(new_instance("kept"))
        .await
        .unwrap();
    for s in &stores {
        s.close().await;
    }
    let again = PostgresStore::connect(config.clone()).await.unwrap();
    assert!(again
        .get_instance(&InstanceId::new("kept").unwrap(), false)
        .await
        .unwrap()
        .is_some());
    again.close().await;

    client
        .batch_execute("UPDATE engine.meta SET version = version + 1")
        .await
        .unwrap();
    let r = PostgresStore::connect(config).await;
    assert!(
        matches!(&r, Err(StoreError::Incompatible(m)) if m.contains("schema version")),
        "{r:?}"
    );

    let mut bad = PostgresConfig::new(&url);
    bad.schema = "x; DROP TABLE y".into();
    let r = PostgresStore::connect(bad).await;
    assert!(matches!(r, Err(StoreError::Incompatible(_))), "{r:?}");

    // The longest name PostgreSQL takes (its notification channel is
    // then shortened) works across stores; one longer is refused before
    // anything is created.
    let mut long = no_affinity(&url);
    long.schema = "s".repeat(64);
    let r = PostgresStore::connect(long.clone()).await;
    assert!(matches!(&r, Err(StoreError::Incompatible(_))), "{r:?}");
    long.schema.pop();
    let a = PostgresStore::connect(long.clone()).await.unwrap();
    let b = PostgresStore::connect(long).await.unwrap();
    let signal = b.work_signal();
    let woken = signal.orchestrations.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    a.create_instance(new_instance("far")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("a store on a 63-character schema wakes the others");
    a.close().await;
    b.close().await;
}

/// An instance's work goes to the process that created it or ran its last
/// turn (it has the run cached); another process takes it only when that
/// one leaves it due for longer than the affinity, and wakes up for that
/// moment. A store that closes leaves its instances to the others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_keeps_an_instance_where_it_ran() {
    let url = fresh_url().await;
    let affinity = Duration::from_millis(1500);
    let mut config = PostgresConfig::new(&url);
    config.affinity = affinity;
    let a = PostgresStore::connect(config.clone()).await.unwrap();
    let b = PostgresStore::connect(config).await.unwrap();
    let lease = Duration::from_secs(60);

    let t0 = Instant::now();
    a.create_instance(new_instance("af")).await.unwrap();
    let early = b.fetch_orchestration_work(10, lease).await.unwrap();
    if t0.elapsed() < affinity {
        assert!(early.is_empty(), "b took a's new instance at once");
    }
    let item = a.fetch_orchestration_work(10, lease).await.unwrap();
    assert_eq!(item.len(), 1, "a did not get its own instance");
    // Taken before the abandon: it is due from that statement's start, no
    // earlier, however long its answer takes.
    let due = Instant::now();
    a.abandon_orchestration_work(&item[0].lock, Duration::ZERO)
        .await
        .unwrap();

    // a leaves it due: b wakes up when the affinity runs out and takes it.
    let wake = b
        .next_wake_at(WorkKind::Orchestration)
        .await
        .unwrap()
        .expect("a wake-up for a's work");
    let until = (wake - durable::types::now()).to_std().unwrap_or_default();
    assert!(until <= affinity, "b plans to wake in {until:?}");
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken.is_empty() {
        assert!(
            Instant::now() < deadline,
            "b never took the instance a left"
        );
        let wake = b.next_wake_at(WorkKind::Orchestration).await.unwrap();
        let until = wake
            .map(|w| (w - durable::types::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(until).await;
        taken = b.fetch_orchestration_work(10, lease).await.unwrap();
    }
    assert!(due.elapsed() >= affinity - Duration::from_millis(50));
    assert_eq!(taken[0].instance_id.as_str(), "af");
    assert_eq!(taken[0].attempts, 2);
    b.abandon_orchestration_work(&taken[0].lock, Duration::ZERO)
        .await
        .unwrap();

    // a closes: b takes a's instances without waiting.
    a.create_instance(new_instance("af2")).await.unwrap();
    a.close().await;
    let t1 = Instant::now();
    let mut got: Vec<String> = b
        .fetch_orchestration_work(10, lease)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.instance_id.to_string())
        .collect();
    got.sort();
    if t1.elapsed() < affinity {
        assert_eq!(got, ["af", "af2"]);
    }
    b.close().await;
}

/// Work made visible by one store wakes the dispatchers of another store
/// on the same database (another process) through LISTEN/NOTIFY, with no
/// polling on the receiving side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_wake_other_processes() {
    let url = fresh_url().await;
    let a = PostgresStore::connect(no_affinity(&url)).await.unwrap();
    let b = PostgresStore::connect(no_affinity(&url)).await.unwrap();
    let signal = b.work_signal();

    let orchestrations = signal.orchestrations.notified();
    tokio::pin!(orchestrations);
    orchestrations.as_mut().enable();
    a.create_instance(new_instance("x1")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), orchestrations)
        .await
        .expect("b woken for orchestration work created by a");
    let item = b
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(item.len(), 1);

    // A commit in b schedules an activity: a's activity dispatcher wakes.
    let activities = a.work_signal();
    let woken = activities.activities.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    let commit = scheduling_commit(&item[0], 1);
    b.commit_turn(commit).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("a woken for activity work committed by b");
    assert_eq!(
        a.fetch_activity_work(10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        1
    );

    // An idle orchestration dispatcher in b that planned to sleep past
    // work a makes due sooner is woken to recompute, and a's earlier time
    // becomes its next wake-up: a holds x2 under a long lease (b plans for
    // its expiry), then gives it back to be due after a short delay.
    let created = signal.orchestrations.notified();
    tokio::pin!(created);
    created.as_mut().enable();
    a.create_instance(new_instance("x2")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), created)
        .await
        .expect("b woken for x2");
    let held = a
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let planned = b
        .next_wake_at(WorkKind::Orchestration)
        .await
        .unwrap()
        .expect("a's lease on x2");
    // Discard a wake-up stored by the notifications above (a hint no
    // earlier than the plan wakes nobody from here on).
    let _ = tokio::time::timeout(Duration::ZERO, signal.orchestrations.notified()).await;
    let hint = signal.orchestrations.notified();
    tokio::pin!(hint);
    hint.as_mut().enable();
    a.abandon_orchestration_work(&held[0].lock, Duration::from_millis(1500))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), hint)
        .await
        .expect("b woken by the earlier time a gave x2");
    let wake = b
        .next_wake_at(WorkKind::Orchestration)
        .await
        .unwrap()
        .expect("a wake-up");
    assert!(
        wake < planned,
        "{wake} is not before the earlier plan {planned}"
    );

    // A store that closes tells the others that its leases are free: b,
    // holding x2, is woken when a closes and takes the instance a held.
    let long = Duration::from_secs(600);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "x2 never became due again");
        if !b
            .fetch_orchestration_work(10, long)
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        let wake = b.next_wake_at(WorkKind::Orchestration).await.unwrap();
        let until = wake
            .map(|w| (w - durable::types::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_millis(100));
        tokio::time::sleep(until).await;
    }
    a.create_instance(new_instance("x3")).await.unwrap();
    assert_eq!(a.fetch_orchestration_work(10, long).await.unwrap().len(), 1);
    // b's plan (its own timer, not the signal) keeps a's later hints
    // from waking it: only an announcement can.
    b.next_wake_at(WorkKind::Orchestration).await.unwrap();
    let _ = tokio::time::timeout(Duration::ZERO, signal.orchestrations.notified()).await;
    let freed = signal.orchestrations.notified();
    tokio::pin!(freed);
    freed.as_mut().enable();
    a.close().await;
    tokio::time::timeout(Duration::from_secs(5), freed)
        .await
        .expect("b woken when a closed and handed back x3");
    let taken = b.fetch_orchestration_work(10, long).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].instance_id.as_str(), "x3");
    b.close().await;
}

/// The commit of a turn on `item` that leaves it Running and schedules
/// activities 1..=`tasks`.
fn scheduling_commit(
    item: &durable::store::OrchestrationWorkItem,
    tasks: u64,
) -> durable::store::TurnCommit {
    durable::store::TurnCommit {
        lock: item.lock.clone(),
        instance_id: item.instance_id.clone(),
        consumed: item.messages.iter().map(|m| m.id).collect(),
        replace_history: false,
        history: Vec::new(),
        status: durable::store::StatusUpdate {
            runtime_status: durable::RuntimeStatus::Running,
            execution_id: item.execution_id.clone(),
            input: None,
            output: None,
            custom_status: None,
            failure: None,
            history_events: 0,
            history_bytes: 0,
            updated_at: durable::types::now(),
        },
        activities: (1..=tasks)
            .map(|task_id| durable::store::NewActivity {
                instance_id: item.instance_id.clone(),
                execution_id: item.execution_id.clone(),
                task_id,
                name: "Act".into(),
                input: json!(null),
            })
            .collect(),
        messages: Vec::new(),
        new_instances: Vec::new(),
    }
}

/// A turn of `store` on one fetched instance that schedules `tasks`
/// activities.
async fn schedule_activities(store: &PostgresStore, tasks: u64) {
    let items = store
        .fetch_orchestration_work(1, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .commit_turn(scheduling_commit(&items[0], tasks))
        .await
        .unwrap();
}

/// A worker whose listener connection is cut and comes back is not taken
/// for dead: while it reconnects, another worker going idle again and
/// again (as a busy cluster's dispatchers do) leaves its leases alone, so
/// the activities it runs are not handed out a second time, and it
/// completes them under its own leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_listener_reconnects_keeps_its_leases() {
    let url = fresh_url().await;
    // Far longer than a reconnect (500 ms, plus a new backend on a busy
    // machine): what is tested is that the blip is told from death.
    let dead_after = Duration::from_secs(5);
    let config = |url: &str| PostgresConfig {
        dead_after,
        ..no_affinity(url)
    };
    let a = PostgresStore::connect(config(&url)).await.unwrap();
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // a is the only worker yet: its row names its listener's backend.
    let (a_worker, a_pid): (i64, i32) = {
        let row = admin
            .query_one("SELECT id, pid FROM durable.workers", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let b = PostgresStore::connect(config(&url)).await.unwrap();
    const TASKS: u64 = 8;
    a.create_instance(new_instance("busy")).await.unwrap();
    schedule_activities(&a, TASKS).await;
    let running = a
        .fetch_activity_work(100, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(running.len(), TASKS as usize);

    // Cut a's listener connection, as a network blip or a server-side
    // idle-session kill would.
    let cut: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&a_pid])
        .await
        .unwrap()
        .get(0);
    assert!(cut);
    // b keeps going idle for twice dead_after; a reconnects meanwhile
    // (its listener retries every 500 ms).
    let until = std::time::Instant::now() + 2 * dead_after;
    let mut reconnected = false;
    while std::time::Instant::now() < until {
        for kind in [WorkKind::Orchestration, WorkKind::Activity] {
            let _ = b.next_wake_at(kind).await.unwrap();
        }
        let stolen = b
            .fetch_activity_work(100, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            stolen.is_empty(),
            "b took over {} activities a is still running",
            stolen.len()
        );
        let row = admin
            .query_opt(
                "SELECT pid, gone_since FROM durable.workers WHERE id = $1",
                &[&a_worker],
            )
            .await
            .unwrap()
            .expect("a's registration was dropped: a was taken for dead");
        let (pid, gone): (i32, Option<i64>) = (row.get(0), row.get(1));
        reconnected |= pid != a_pid && gone.is_none();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reconnected, "a's listener never re-registered");
    // a finishes what it was running, under the leases it holds.
    for act in &running {
        let result = durable::history::Message::now(durable::history::EventKind::TaskCompleted {
            task_id: act.activity.task_id,
            result: json!(1),
        });
        a.complete_activity_work(&act.lock, result).await.unwrap();
    }
    a.close().await;
    b.close().await;
}

/// Two processes on one database (two stores, two engines): the observer's
/// subscribers see every change the worker commits, in order and once,
/// and its starter-style wait answers when the worker completes the
/// instance. The observer's long affinity leaves the worker's instances to
/// the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_sees_every_change_live_and_its_wait_ends_at_completion() {
    use durable::{Engine, EngineConfig, HistoryEvent, OrchestrationContext, Registry, TaskError};
    use tokio::sync::broadcast::error::RecvError;
    let registry = || {
        Registry::new()
            .orchestration("Two", |ctx: OrchestrationContext, _: ()| async move {
                ctx.set_custom_status("working");
                let a: u32 = ctx.call_activity("One", ()).await?;
                let b: u32 = ctx.call_activity("One", ()).await?;
                Ok::<_, TaskError>(a + b)
            })
            .activity("One", |_ctx, _: ()| async move { Ok::<_, String>(1u32) })
    };
    let url = fresh_url().await;
    let worker_store = Arc::new(
        PostgresStore::connect(PostgresConfig::new(&url))
            .await
            .unwrap(),
    );
    let observer_store = Arc::new(
        PostgresStore::connect(PostgresConfig {
            affinity: Duration::from_secs(3600),
            ..PostgresConfig::new(&url)
        })
        .await
        .unwrap(),
    );
    let worker = Engine::start(worker_store.clone(), registry(), EngineConfig::default());
    let observer = Engine::start(observer_store.clone(), registry(), EngineConfig::default());

    let mut rx = observer.subscribe();
    let mut observers_own = observer.subscribe_local();
    let id = worker.start_orchestration("Two", None, ()).await.unwrap();
    let waited = observer.wait_for_completion(&id, Duration::from_secs(30));
    let mut statuses = Vec::new();
    let mut events: Vec<HistoryEvent> = Vec::new();
    let collect = async {
        loop {
            let u = match rx.recv().await {
                Ok(u) => u,
                Err(RecvError::Lagged(n)) => panic!("lagged by {n}"),
                Err(RecvError::Closed) => panic!("closed"),
            };
            if u.instance_id != id {
                continue;
            }
            assert_eq!(u.name, "Two");
            if statuses.last() != Some(&u.runtime_status) {
                statuses.push(u.runtime_status);
            }
            events.extend(u.history.iter().cloned());
            if u.runtime_status.is_terminal()
                && events
                    .iter()
                    .any(|e| e.kind.type_name() == "ExecutionCompleted")
            {
                assert_eq!(u.output, Some(json!(2)));
                break;
            }
        }
    };
    let (done, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        futures::join!(waited, collect)
    })
    .await
    .expect("the observer saw the worker finish");
    assert_eq!(
        done.unwrap().runtime_status,
        durable::RuntimeStatus::Completed
    );
    assert_eq!(
        statuses.first(),
        Some(&durable::RuntimeStatus::Pending),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&durable::RuntimeStatus::Completed));
    // Every event of the worker's history, in order, none twice.
    let stored = worker_store.load_history(&id).await.unwrap();
    let ids = |h: &[HistoryEvent]| h.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&events), ids(&stored));
    // None of it ran in the observer: all it saw came from the worker.
    assert!(matches!(
        observers_own.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    worker.shutdown(Duration::from_secs(5)).await;
    observer.shutdown(Duration::from_secs(5)).await;
    worker_store.close().await;
    observer_store.close().await;
}

/// The leases of a worker whose connection is gone (a killed process) are
/// taken over as soon as another worker goes idle, without waiting for the
/// lease to expire; a closed store hands its leases back at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_dead_worker_are_taken_over() {
    let url = fresh_url().await;
    let survivor = PostgresStore::connect(PostgresConfig {
        dead_after: Duration::from_millis(500),
        ..PostgresConfig::new(&url)
    })
    .await
    .unwrap();
    survivor.create_instance(new_instance("d1")).await.unwrap();
    survivor.create_instance(new_instance("d2")).await.unwrap();

    // The doomed worker runs in a runtime of its own; dropping the runtime
    // kills its connections the way a SIGKILL would (no close, no cleanup).
    let doomed_url = url.clone();
    let held = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ids = rt.block_on(async {
            let doomed = PostgresStore::connect(no_affinity(&doomed_url))
                .await
                .unwrap();
            let items = doomed
                .fetch_orchestration_work(1, Duration::from_secs(600))
                .await
                .unwrap();
            let acts = doomed
                .fetch_activity_work(10, Duration::from_secs(600))
                .await
                .unwrap();
            assert!(acts.is_empty());
            std::mem::forget(doomed);
            items
                .into_iter()
                .map(|i| (i.instance_id, i.lock))
                .collect::<Vec<_>>()
        });
        drop(rt);
        ids
    })
    .join()
    .unwrap();
    assert_eq!(held.len(), 1);
    let (dead_id, dead_lock) = held.into_iter().next().unwrap();

    let started = Instant::now();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "dead worker's lease never taken over"
        );
        got.extend(
            survivor
                .fetch_orchestration_work(10, Duration::from_secs(60))
                .await
                .unwrap(),
        );
        if got.len() < 2 {
            // What an idle dispatcher does: ask when to wake up.
            let wake = survivor
                .next_wake_at(WorkKind::Orchestration)
                .await
                .unwrap();
            let signal = survivor.work_signal();
            let notified = signal.orchestrations.notified();
            // The dead backend may take a moment to leave
            // pg_stat_activity: look again after a short while.
            let until = wake
                .map(|w| (w - durable::types::now()).to_std().unwrap_or_default())
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(50));
            let _ = tokio::time::timeout(until, notified).await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took over only after the 600 s lease"
    );
    let retaken = got.iter().find(|i| i.instance_id == dead_id).unwrap();
    assert_eq!(retaken.attempts, 2);
    // The dead holder's lease is void.
    let r = survivor
        .abandon_orchestration_work(&dead_lock, Duration::ZERO)
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost)), "{r:?}");

    // A store that closes hands back what it holds.
    let other = PostgresStore::connect(PostgresConfig::new(&url))
        .await
        .unwrap();
    for i in &got {
        survivor
            .abandon_orchestration_work(&i.lock, Duration::ZERO)
            .await
            .unwrap();
    }
    let mine = survivor
        .fetch_orchestration_work(10, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(mine.len(), 2);
    survivor.close().await;
    let back = other
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(back.len(), 2, "leases of a closed store not handed back");
    let r = survivor
        .purge_instance(&InstanceId::new("d1").unwrap())
        .await;
    assert!(matches!(r, Err(StoreError::Closed)), "{r:?}");
    assert_eq!(
        other
            .purge_instance(&InstanceId::new("d1").unwrap())
            .await
            .unwrap(),
        PurgeOutcome::NotTerminal(durable::RuntimeStatus::Pending)
    );
    other.close().await;
}

/// A worker that re-registers (its listener reconnected) while another
/// worker's reap of it is under way is not reaped: the reap read it as
/// gone long ago, but by the time its delete holds the row, the row names
/// a live backend, and the delete sees that. Its leases stay its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_comes_back_during_a_reap_is_not_reaped() {
    let url = fresh_url().await;
    let store = Arc::new(
        PostgresStore::connect(PostgresConfig {
            dead_after: Duration::from_millis(500),
            ..no_affinity(&url)
        })
        .await
        .unwrap(),
    );
    store.create_instance(new_instance("held")).await.unwrap();
    // A worker gone for long, holding "held".
    raw(
        &url,
        "INSERT INTO durable.workers (id, pid, backend_start, gone_since) \
           VALUES (424242, 2147483000, now(), 0); \
         UPDATE durable.instances SET lock_owner = 424242, lock_token = 'x:held', \
           due_at = due_at + 600000 WHERE instance_id = 'held'",
    )
    .await;
    // It comes back: its new connection re-registers, not committed yet.
    let (mut back, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let reregister = back.transaction().await.unwrap();
    reregister
        .batch_execute(
            "UPDATE durable.workers SET pid = pg_backend_pid(), gone_since = NULL, \
               backend_start = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) \
             WHERE id = 424242",
        )
        .await
        .unwrap();
    // Meanwhile the store goes idle and reaps: its delete waits for the row.
    let idle = {
        let store = store.clone();
        tokio::spawn(async move { store.next_wake_at(WorkKind::Orchestration).await })
    };
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE '%DELETE FROM%workers%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reap never waited for the worker's row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reregister.commit().await.unwrap();
    idle.await.unwrap().unwrap();
    let row = admin
        .query_opt(
            "SELECT w.gone_since, i.lock_owner FROM durable.workers w, durable.instances i \
             WHERE w.id = 424242 AND i.instance_id = 'held'",
            &[],
        )
        .await
        .unwrap()
        .expect("the worker that came back was reaped");
    assert_eq!(row.get::<_, Option<i64>>(0), None);
    assert_eq!(
        row.get::<_, Option<i64>>(1),
        Some(424242),
        "its lease was taken"
    );
    drop(back);
    store.close().await;
}

/// Changes another process commits while this one's listener connection
/// is being re-established (their notifications went nowhere) still reach
/// this one once it is back: it reads what changed meanwhile and
/// publishes it as remote changes, so a live stream or a waiting starter
/// here does not miss a completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_missed_while_reconnecting_are_caught_up() {
    let url = fresh_url().await;
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let b = PostgresStore::connect(no_affinity(&url)).await.unwrap();
    // b is the only worker yet: its row names its listener's backend.
    let b_pid: i32 = admin
        .query_one("SELECT pid FROM durable.workers", &[])
        .await
        .unwrap()
        .get(0);
    let a = PostgresStore::connect(no_affinity(&url)).await.unwrap();
    let mut heard = b.remote_changes().expect("b hears other processes");

    // Cut b's listener and wait until its backend is gone: from here on
    // nothing announced reaches b until it reconnects (500 ms later).
    let cut: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&b_pid])
        .await
        .unwrap()
        .get(0);
    assert!(cut);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&b_pid],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "b's listener backend stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.create_instance(new_instance("unheard")).await.unwrap();
    let item = a
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    let mut turn = scheduling_commit(&item[0], 1);
    turn.status.history_events = 3;
    a.commit_turn(turn).await.unwrap();

    let change = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match heard.recv().await {
                Ok(c) if c.instance_id.as_str() == "unheard" => return c,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("b never heard of the change made while it was reconnecting");
    // Read back, not announced (the announcement says 0 to 3): the
    // instance as it is now.
    assert_eq!((change.history_from, change.history_to), (3, 3));
    a.close().await;
    b.close().await;
}

/// Two instances whose turns send to each other, committed at the same
/// moment round after round, never deadlock: a turn that sends locks its
/// own row and its targets' in id order, as the batched writes do (a
/// deadlock would fail one commit with
/// 40P01 after PostgreSQL's one-second deadlock timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_sending_to_each_other_do_not_deadlock() {
    let url = fresh_url().await;
    let store = Arc::new(PostgresStore::connect(no_affinity(&url)).await.unwrap());
    for id in ["ping", "pong"] {
        store.create_instance(new_instance(id)).await.unwrap();
    }
    const ROUNDS: usize = 60;
    for round in 0..ROUNDS {
        let mut items = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while items.len() < 2 {
            assert!(Instant::now() < deadline, "round {round}: work missing");
            items.extend(
                store
                    .fetch_orchestration_work(2, Duration::from_secs(60))
                    .await
                    .unwrap(),
            );
        }
        let commits = items.iter().map(|item| {
            let other = if item.instance_id.as_str() == "ping" {
                "pong"
            } else {
                "ping"
            };
            let mut commit = scheduling_commit(item, 0);
            commit.messages = vec![durable::store::OutgoingMessage {
                instance_id: InstanceId::new(other).unwrap(),
                message: durable::history::Message::now(durable::EventKind::EventRaised {
                    name: "ball".into(),
                    input: json!(round),
                }),
            }];
            let store = store.clone();
            tokio::spawn(async move { store.commit_turn(commit).await })
        });
        for r in futures::future::join_all(commits).await {
            r.unwrap()
                .unwrap_or_else(|e| panic!("round {round}: a commit failed: {e}"));
        }
    }
    store.close().await;
}

/// An instance the store cannot read (a message a newer version wrote, a
/// damaged row) is kept back on its own: the rest of the fetch goes to
/// the engine, and the unreadable one stays leased, so it is not fetched
/// again at once. A fetch whose message read fails hands all its leases
/// back at once, not after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_instance_holds_back_only_itself() {
    let url = fresh_url().await;
    let store = PostgresStore::connect(no_affinity(&url)).await.unwrap();
    for id in ["ok1", "badmsg", "badstatus", "ok2"] {
        store.create_instance(new_instance(id)).await.unwrap();
    }
    raw(
        &url,
        "UPDATE durable.messages SET message = '{\"kind\": \"FromTheFuture\"' \
           WHERE instance_id = 'badmsg'; \
         UPDATE durable.instances SET runtime_status = 'Hibernating' WHERE instance_id = 'badstatus'",
    )
    .await;
    let lease = Duration::from_secs(600);
    let ids = |items: Vec<durable::store::OrchestrationWorkItem>| {
        let mut ids: Vec<String> = items.iter().map(|i| i.instance_id.to_string()).collect();
        ids.sort();
        ids
    };
    let first = store.fetch_orchestration_work(10, lease).await;
    assert_eq!(
        ids(first.expect("the readable ones are fetched")),
        ["ok1", "ok2"]
    );
    let again = store.fetch_orchestration_work(10, lease).await.unwrap();
    assert!(
        again.is_empty(),
        "unreadable ones fetched again at once: {:?}",
        ids(again)
    );

    // The message read fails (a column this version does not know): the
    // fetch fails, and its leases are back at once.
    store.create_instance(new_instance("ok3")).await.unwrap();
    raw(
        &url,
        "ALTER TABLE durable.messages RENAME COLUMN message TO gone",
    )
    .await;
    let failed = store.fetch_orchestration_work(10, lease).await;
    assert!(failed.is_err(), "{failed:?}");
    raw(
        &url,
        "ALTER TABLE durable.messages RENAME COLUMN gone TO message",
    )
    .await;
    let retried = store.fetch_orchestration_work(10, lease).await.unwrap();
    assert_eq!(ids(retried), ["ok3"], "a failed fetch kept its leases");

    // Activities: one unreadable input holds back only itself.
    store.create_instance(new_instance("acts")).await.unwrap();
    schedule_activities(&store, 3).await;
    raw(
        &url,
        "UPDATE durable.activities SET input = 'not json' WHERE task_id = 2",
    )
    .await;
    let acts = store.fetch_activity_work(10, lease).await.unwrap();
    let mut tasks: Vec<u64> = acts.iter().map(|a| a.activity.task_id).collect();
    tasks.sort();
    assert_eq!(tasks, [1, 3]);
    assert!(store
        .fetch_activity_work(10, lease)
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

/// Once the schema's owner has set it up, a role that may only use its
/// tables (no CREATE on the database or the schema, as operators run
/// applications) connects and works: nothing up to date is created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_create_privileges_uses_a_set_up_schema() {
    let url = fresh_url().await;
    let owner = PostgresStore::connect(PostgresConfig::new(&url))
        .await
        .unwrap();
    owner.close().await;
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let role = format!("app_{database}");
    raw(
        &url,
        &format!(
            "CREATE ROLE {role} LOGIN; \
             REVOKE CREATE ON DATABASE {database} FROM PUBLIC; \
             GRANT USAGE ON SCHEMA durable TO {role}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA durable TO {role}; \
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA durable TO {role};"
        ),
    )
    .await;
    let app_url = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let app = PostgresStore::connect(PostgresConfig::new(&app_url))
        .await
        .expect("a role without CREATE connects to a set-up schema");
    app.create_instance(new_instance("used")).await.unwrap();
    let items = app
        .fetch_orchestration_work(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    app.close().await;
}

/// `apply_ddl_once` runs a text once per schema and key (a second run of
/// a `CREATE TABLE` without `IF NOT EXISTS` would fail), runs it again
/// once the text changes, and callers of several keys may start on one
/// new schema at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_setup_runs_each_text_once() {
    let url = fresh_url().await;
    let apply = |key: String, ddl: String| {
        let url = url.clone();
        async move {
            let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let tx = client.transaction().await.unwrap();
            durable::store::postgres::apply_ddl_once(&tx, "shared", &key, &ddl).await?;
            tx.commit().await
        }
    };
    let first = futures::future::join_all(
        (0..4).map(|i| apply(format!("k{i}"), format!("CREATE TABLE shared.t{i} (x int)"))),
    )
    .await;
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    for i in 0..4 {
        apply(format!("k{i}"), format!("CREATE TABLE shared.t{i} (x int)"))
            .await
            .expect("the same text is not run again");
    }
    apply("k0".into(), "CREATE TABLE shared.t0 (x int, y int)".into())
        .await
        .expect_err("a changed text runs (and here fails: t0 exists)");
    apply("k0".into(), "CREATE TABLE shared.u0 (x int)".into())
        .await
        .unwrap();
    raw(&url, "SELECT 'shared.u0'::regclass").await;
}
