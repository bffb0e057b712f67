//! The store conformance suite: the behaviour every [`Store`] must show,
//! written once and run against each implementation.
//!
//! # Why it exists
//! The engine relies on the invariants listed in [`crate::store`] (atomic
//! turns, exclusive leases, lease loss detected, delayed delivery, terminal
//! instances refusing messages...) and on nothing else a particular database
//! happens to do. Testing those invariants per store would let the stores
//! drift apart; this module states them once, as executable cases, so that
//! the SQLite store and any later one (PostgreSQL) are held to the same
//! contract.
//!
//! # How a store uses it
//! 1. Implement [`Harness`] for a small type that owns whatever the store
//!    needs (a temp dir, a scratch schema). [`Harness::open`] must give an
//!    **empty** store the first time and the **same data** when called again
//!    after [`Harness::close`], as a restarted process would see it.
//! 2. In an integration test of the store's crate (which needs `tokio` with
//!    the `macros` and `rt-multi-thread` features as a dev-dependency), invoke
//!    [`conformance_tests!`](crate::conformance_tests) with an async fn or
//!    closure that returns a fresh harness:
//!
//! ```text
//! async fn harness() -> MyHarness { MyHarness::new().await }
//! durable::conformance_tests!(harness);
//! ```
//!
//! That expands to one `#[tokio::test]` per case, each on its own fresh
//! store, named after the `case_*` function it runs. The cases are also
//! public functions, so a store can run one by hand while debugging.
//!
//! Every case asserts observable behaviour through the [`Store`] trait only.
//! Waiting for time to pass (lease expiry, delayed messages) is done by
//! polling the condition with a deadline, never by sleeping a fixed time and
//! hoping; "not before" checks are only asserted when the clock proves the
//! due time had not yet come.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::{EventKind, HistoryEvent, Message, ParentLink};
use crate::store::{
    NewActivity, NewInstance, OrchestrationWorkItem, OutgoingMessage, PurgeOutcome, StatusUpdate,
    Store, StoreError, TurnCommit, WorkLock,
};
use crate::types::{
    self, FailureDetails, InstanceFilter, InstanceId, InstanceQuery, RuntimeStatus, Timestamp,
};

/// Opens and closes the store under test. One harness serves one test.
pub trait Harness: Send {
    /// Opens the store, with its lifecycle outbox on. The first call gives
    /// an empty store; a call after [`Harness::close`] reopens the same
    /// data, as a restarted process would.
    fn open(&mut self) -> impl Future<Output = Arc<dyn Store>> + Send;

    /// Shuts down a store returned by [`Harness::open`] so that everything it
    /// acknowledged, and the delivery counts of the work it handed out, are
    /// durable before the next [`Harness::open`].
    fn close(&mut self, store: Arc<dyn Store>) -> impl Future<Output = ()> + Send;
}

/// Expands to one `#[tokio::test]` per conformance case. The argument is an
/// async fn or closure taking no arguments and returning a fresh value that
/// implements [`conformance::Harness`](crate::conformance::Harness).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            case_create_and_fetch,
            case_create_conflict_and_replace,
            case_create_with_first_turn,
            case_replace_failed_instance_with_pending_rewind,
            case_single_holder,
            case_concurrent_fetchers_never_share,
            case_commit_turn_effects,
            case_sub_orchestration_conflict,
            case_commit_with_lost_lease,
            case_commit_racing_lease_expiry,
            case_orchestration_lease_expiry,
            case_activity_lease_expiry,
            case_abandon_orchestration_work,
            case_abandon_activity_work,
            case_complete_activity_work,
            case_concurrent_double_completion,
            case_send_message_rules,
            case_delayed_messages,
            case_terminal_commit_drops_inbox,
            case_replace_history,
            case_history_order,
            case_list_instances_filters,
            case_list_instances_paging,
            case_list_instances_byte_budget,
            case_purge_instance,
            case_purge_instances,
            case_purge_with_queued_activity,
            case_completion_racing_purge,
            case_complete_activities_together,
            case_counts,
            case_work_signal,
            case_lifecycle_outbox,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn case_results_outstanding_when_an_instance_finishes() {
            let mut harness = ($harness)().await;
            $crate::conformance::case_results_outstanding_when_an_instance_finishes(&mut harness)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn case_survives_reopen() {
            let mut harness = ($harness)().await;
            $crate::conformance::case_survives_reopen(&mut harness).await;
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let mut harness = ($harness)().await;
                let store = $crate::conformance::Harness::open(&mut harness).await;
                $crate::conformance::$case(&*store).await;
                $crate::conformance::Harness::close(&mut harness, store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A lease no case outlives.
const LONG: Duration = Duration::from_secs(60);
/// A lease cases wait out.
const SHORT: Duration = Duration::from_millis(100);
/// How long a case waits for something that should happen.
const DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(5);

fn iid(s: &str) -> InstanceId {
    InstanceId::new(s).expect("valid instance id")
}

fn exec(id: &str) -> String {
    format!("{id}@1")
}

fn new_instance(id: &str, input: Value) -> NewInstance {
    NewInstance {
        instance_id: iid(id),
        name: "Orch".into(),
        input,
        execution_id: exec(id),
        parent: None,
        created_at: types::now(),
    }
}

fn raised(name: &str, input: Value) -> Message {
    Message::now(EventKind::EventRaised {
        name: name.into(),
        input,
    })
}

fn later(ms: i64) -> Timestamp {
    types::now() + chrono::Duration::milliseconds(ms)
}

/// Polls `f` until it yields a value; panics after [`DEADLINE`].
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

async fn fetch(store: &dyn Store, lease: Duration) -> Vec<OrchestrationWorkItem> {
    store
        .fetch_orchestration_work(100, lease)
        .await
        .expect("fetch orchestration work")
}

/// Fetches exactly one work item, which must be for `id`.
async fn fetch_only(store: &dyn Store, id: &str) -> OrchestrationWorkItem {
    let mut items = fetch(store, LONG).await;
    let ids: Vec<_> = items.iter().map(|i| i.instance_id.to_string()).collect();
    assert_eq!(ids, vec![id.to_string()], "expected work for exactly {id}");
    items.remove(0)
}

/// Polls until a work item for `id` is handed out; other items fetched on
/// the way are left leased.
async fn poll_item(store: &dyn Store, id: &str, lease: Duration) -> OrchestrationWorkItem {
    poll(&format!("work for {id}"), || async {
        fetch(store, lease)
            .await
            .into_iter()
            .find(|i| i.instance_id.as_str() == id)
    })
    .await
}

/// History events recording what a turn consumed: an `OrchestratorStarted`
/// then one event per message, numbered after the existing history.
fn events_for(item: &OrchestrationWorkItem) -> Vec<HistoryEvent> {
    let mut out = vec![HistoryEvent {
        event_id: item.history_len,
        timestamp: types::now(),
        kind: EventKind::OrchestratorStarted,
    }];
    for m in &item.messages {
        out.push(HistoryEvent {
            event_id: item.history_len + out.len() as u64,
            timestamp: types::now(),
            kind: m.message.kind.clone(),
        });
    }
    out
}

/// A turn that consumes every message of `item`, records them and moves the
/// instance to `status`.
fn turn(item: &OrchestrationWorkItem, status: RuntimeStatus) -> TurnCommit {
    let history = events_for(item);
    let n = item.history_len + history.len() as u64;
    TurnCommit {
        lock: item.lock.clone(),
        instance_id: item.instance_id.clone(),
        consumed: item.messages.iter().map(|m| m.id).collect(),
        replace_history: false,
        history,
        status: StatusUpdate {
            runtime_status: status,
            execution_id: item.execution_id.clone(),
            input: None,
            output: (status == RuntimeStatus::Completed).then(|| json!("done")),
            custom_status: None,
            failure: (status == RuntimeStatus::Failed)
                .then(|| FailureDetails::new("ActivityFailed", "boom")),
            history_events: n,
            history_bytes: 10 * n,
            updated_at: types::now(),
        },
        activities: Vec::new(),
        messages: Vec::new(),
        new_instances: Vec::new(),
    }
}

/// Creates `id` and runs one turn that moves it to `status`.
async fn create_with_status(store: &dyn Store, id: &str, status: RuntimeStatus) {
    store
        .create_instance(new_instance(id, json!({ "id": id })))
        .await
        .expect("create");
    if status == RuntimeStatus::Pending {
        return;
    }
    let item = poll_item(store, id, LONG).await;
    store
        .commit_turn(turn(&item, status))
        .await
        .expect("commit");
}

/// Runs one turn of a `Running` instance that has a message waiting.
async fn run_turn(store: &dyn Store, id: &str, status: RuntimeStatus) -> OrchestrationWorkItem {
    let item = poll_item(store, id, LONG).await;
    store
        .commit_turn(turn(&item, status))
        .await
        .expect("commit");
    item
}

fn activity(id: &str, task_id: u64) -> NewActivity {
    NewActivity {
        instance_id: iid(id),
        execution_id: exec(id),
        task_id,
        name: "Act".into(),
        input: json!({ "task": task_id }),
    }
}

/// Creates `id`, runs its first turn scheduling activities with the given
/// task ids, and leaves it Running.
async fn with_activities(store: &dyn Store, id: &str, tasks: &[u64]) {
    store
        .create_instance(new_instance(id, json!(null)))
        .await
        .expect("create");
    let item = poll_item(store, id, LONG).await;
    let mut c = turn(&item, RuntimeStatus::Running);
    c.activities = tasks.iter().map(|t| activity(id, *t)).collect();
    store.commit_turn(c).await.expect("commit");
}

fn task_completed(id: &str, task_id: u64) -> Message {
    Message {
        execution_id: Some(exec(id)),
        visible_at: None,
        sent_at: types::now(),
        kind: EventKind::TaskCompleted {
            task_id,
            result: json!(task_id * 10),
        },
    }
}

async fn history_len(store: &dyn Store, id: &str) -> usize {
    store.load_history(&iid(id)).await.expect("history").len()
}

async fn status_of(store: &dyn Store, id: &str) -> RuntimeStatus {
    store
        .get_instance(&iid(id), false)
        .await
        .expect("get_instance")
        .expect("instance exists")
        .runtime_status
}

fn kinds(item: &OrchestrationWorkItem) -> Vec<&'static str> {
    item.messages
        .iter()
        .map(|m| m.message.kind.type_name())
        .collect()
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// `create_instance` queues an `ExecutionStarted` message; the instance is
/// Pending with its input and an empty history.
pub async fn case_create_and_fetch(store: &dyn Store) {
    let created = new_instance("c1", json!({"x": 1}));
    store.create_instance(created.clone()).await.unwrap();

    let st = store
        .get_instance(&iid("c1"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Pending);
    assert_eq!(st.name, "Orch");
    assert_eq!(st.input, json!({"x": 1}));
    assert_eq!(st.execution_id, exec("c1"));
    assert_eq!(st.created_at, created.created_at);
    assert_eq!(st.history_events, 0);
    assert_eq!(st.output, None);
    assert_eq!(st.parent_instance_id, None);
    assert_eq!(st.history, None);
    assert!(store
        .get_instance(&iid("nope"), false)
        .await
        .unwrap()
        .is_none());

    let item = fetch_only(store, "c1").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Pending);
    assert_eq!(item.history_len, 0);
    assert_eq!(item.execution_id, exec("c1"));
    assert_eq!(item.attempts, 1);
    assert_eq!(item.messages.len(), 1, "{:?}", item.messages);
    let m = &item.messages[0].message;
    assert_eq!(m.execution_id.as_deref(), Some(exec("c1").as_str()));
    assert_eq!(
        m.kind,
        EventKind::ExecutionStarted {
            name: "Orch".into(),
            input: json!({"x": 1}),
            execution_id: exec("c1"),
            parent: None,
        }
    );
    assert!(store.load_history(&iid("c1")).await.unwrap().is_empty());
    assert!(
        fetch(store, LONG).await.is_empty(),
        "a leased instance is handed out again"
    );
}

/// Creating a live instance again is a conflict; a terminal one is replaced
/// by a fresh execution with an empty history.
pub async fn case_create_conflict_and_replace(store: &dyn Store) {
    store
        .create_instance(new_instance("r1", json!(1)))
        .await
        .unwrap();
    let r = store.create_instance(new_instance("r1", json!(2))).await;
    assert!(
        matches!(&r, Err(StoreError::Conflict(id)) if id.as_str() == "r1"),
        "{r:?}"
    );

    run_turn(store, "r1", RuntimeStatus::Running).await;
    let r = store.create_instance(new_instance("r1", json!(2))).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");

    store
        .send_message(&iid("r1"), raised("go", json!(null)))
        .await
        .unwrap();
    run_turn(store, "r1", RuntimeStatus::Completed).await;
    assert_eq!(history_len(store, "r1").await, 4);

    let mut again = new_instance("r1", json!(2));
    again.execution_id = "r1@2".into();
    store.create_instance(again).await.unwrap();
    let st = store.get_instance(&iid("r1"), true).await.unwrap().unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Pending);
    assert_eq!(st.execution_id, "r1@2");
    assert_eq!(st.input, json!(2));
    assert_eq!(st.output, None);
    assert_eq!(st.history_events, 0);
    assert_eq!(st.history, Some(Vec::new()));

    let item = fetch_only(store, "r1").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Pending);
    assert_eq!(item.execution_id, "r1@2");
    assert_eq!(item.history_len, 0);
    assert_eq!(item.attempts, 1);
    assert_eq!(kinds(&item), ["ExecutionStarted"]);
}

/// Replacing a Failed instance that still has an unprocessed `Rewound`
/// message leaves nothing of the old instance in the new one's work.
pub async fn case_replace_failed_instance_with_pending_rewind(store: &dyn Store) {
    create_with_status(store, "rw", RuntimeStatus::Failed).await;
    store
        .send_message(
            &iid("rw"),
            Message::now(EventKind::Rewound {
                reason: Some("retry".into()),
            }),
        )
        .await
        .unwrap();
    let mut again = new_instance("rw", json!("second"));
    again.execution_id = "rw@2".into();
    store.create_instance(again).await.unwrap();

    let item = fetch_only(store, "rw").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Pending);
    assert_eq!(item.execution_id, "rw@2");
    assert_eq!(item.history_len, 0);
    assert_eq!(kinds(&item), ["ExecutionStarted"]);
}

/// A leased instance is handed to nobody else, not even when new messages
/// arrive for it; after the commit it comes back with only the new ones.
pub async fn case_single_holder(store: &dyn Store) {
    store
        .create_instance(new_instance("h1", json!(null)))
        .await
        .unwrap();
    store
        .create_instance(new_instance("h2", json!(null)))
        .await
        .unwrap();
    let first = store.fetch_orchestration_work(1, LONG).await.unwrap();
    assert_eq!(first.len(), 1, "max is respected");
    let second = fetch(store, LONG).await;
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].instance_id, second[0].instance_id);
    assert!(fetch(store, LONG).await.is_empty());

    let h1 = if first[0].instance_id.as_str() == "h1" {
        &first[0]
    } else {
        &second[0]
    };
    let late = raised("late", json!(7));
    store.send_message(&iid("h1"), late.clone()).await.unwrap();
    assert!(
        fetch(store, LONG).await.is_empty(),
        "a message made a leased instance fetchable"
    );

    store
        .commit_turn(turn(h1, RuntimeStatus::Running))
        .await
        .unwrap();
    let item = fetch_only(store, "h1").await;
    assert_eq!(item.runtime_status, RuntimeStatus::Running);
    assert_eq!(item.history_len, 2);
    assert_eq!(item.attempts, 1, "a commit resets the attempt count");
    assert_eq!(item.messages.len(), 1);
    assert_eq!(item.messages[0].message, late);
}

/// Concurrent fetchers never get the same instance twice while leased.
pub async fn case_concurrent_fetchers_never_share(store: &dyn Store) {
    const N: usize = 40;
    for i in 0..N {
        store
            .create_instance(new_instance(&format!("cf{i}"), json!(i)))
            .await
            .unwrap();
    }
    let fetched = std::sync::Mutex::new(Vec::new());
    let worker = || async {
        let deadline = Instant::now() + DEADLINE;
        while fetched.lock().unwrap().len() < N && Instant::now() < deadline {
            let items = store.fetch_orchestration_work(3, LONG).await.unwrap();
            fetched
                .lock()
                .unwrap()
                .extend(items.into_iter().map(|i| i.instance_id));
            tokio::task::yield_now().await;
        }
    };
    futures::join!(worker(), worker(), worker(), worker());
    let fetched = fetched.into_inner().unwrap();
    let unique: HashSet<_> = fetched.iter().cloned().collect();
    assert_eq!(
        fetched.len(),
        unique.len(),
        "an instance was handed out twice"
    );
    assert_eq!(unique.len(), N);
}

/// `commit_turn` appends history, deletes consumed messages, updates the
/// status, enqueues activities, sends messages and creates sub-orchestrations.
pub async fn case_commit_turn_effects(store: &dyn Store) {
    store
        .create_instance(new_instance("p", json!("in")))
        .await
        .unwrap();
    let item = fetch_only(store, "p").await;
    store
        .create_instance(new_instance("other", json!(null)))
        .await
        .unwrap();

    let mut c = turn(&item, RuntimeStatus::Running);
    let at = types::now();
    for kind in [
        EventKind::TaskScheduled {
            task_id: 1,
            name: "Act".into(),
            input: json!({"task": 1}),
        },
        EventKind::SubOrchestrationCreated {
            task_id: 2,
            name: "Child".into(),
            instance_id: iid("p-child"),
            input: json!("kid"),
        },
    ] {
        c.history.push(HistoryEvent {
            event_id: c.history.len() as u64,
            timestamp: at,
            kind,
        });
    }
    let expected_history = c.history.clone();
    c.status.history_events = expected_history.len() as u64;
    c.status.history_bytes = 321;
    c.status.custom_status = Some(json!({"stage": 1}));
    c.activities = vec![activity("p", 1)];
    let to_self = raised("to-self", json!(1));
    let to_other = raised("to-other", json!(2));
    c.messages = vec![
        OutgoingMessage {
            instance_id: iid("p"),
            message: to_self.clone(),
        },
        OutgoingMessage {
            instance_id: iid("other"),
            message: to_other.clone(),
        },
    ];
    let link = ParentLink {
        instance_id: iid("p"),
        execution_id: exec("p"),
        task_id: 2,
    };
    c.new_instances = vec![NewInstance {
        instance_id: iid("p-child"),
        name: "Child".into(),
        input: json!("kid"),
        execution_id: "p-child@1".into(),
        parent: Some(link.clone()),
        created_at: types::now(),
    }];
    store.commit_turn(c).await.unwrap();

    assert_eq!(
        store.load_history(&iid("p")).await.unwrap(),
        expected_history
    );
    let st = store.get_instance(&iid("p"), false).await.unwrap().unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Running);
    assert_eq!(st.history_events, expected_history.len() as u64);
    assert_eq!(st.history_bytes, 321);
    assert_eq!(st.custom_status, Some(json!({"stage": 1})));
    assert_eq!(st.input, json!("in"), "input kept when the update has none");

    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(*acts[0].activity, activity("p", 1));
    assert_eq!(acts[0].attempts, 1);

    let mut items = fetch(store, LONG).await;
    items.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let ids: Vec<_> = items.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids, ["other", "p", "p-child"]);
    let (other, p, child) = (&items[0], &items[1], &items[2]);

    assert_eq!(p.runtime_status, RuntimeStatus::Running);
    assert_eq!(p.history_len, expected_history.len() as u64);
    assert_eq!(kinds(p), ["EventRaised"], "consumed messages are gone");
    assert_eq!(p.messages[0].message, to_self);

    assert_eq!(kinds(other), ["ExecutionStarted", "EventRaised"]);
    assert_eq!(other.messages[1].message, to_other);
    assert!(other.messages[0].id < other.messages[1].id);

    assert_eq!(child.runtime_status, RuntimeStatus::Pending);
    assert_eq!(child.execution_id, "p-child@1");
    assert_eq!(
        child.messages[0].message.kind,
        EventKind::ExecutionStarted {
            name: "Child".into(),
            input: json!("kid"),
            execution_id: "p-child@1".into(),
            parent: Some(link),
        }
    );
    let cs = store
        .get_instance(&iid("p-child"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cs.parent_instance_id, Some(iid("p")));
    assert_eq!(cs.runtime_status, RuntimeStatus::Pending);
}

/// The first turn of a new instance, committed with its creation: the
/// ExecutionStarted a plain creation would queue is consumed, the turn's
/// effects land, and nothing lands on a conflict. A store that does not
/// fuse them answers `false` and must have created the instance plainly.
pub async fn case_create_with_first_turn(store: &dyn Store) {
    fn first_turn(id: &str, input: Value) -> (NewInstance, TurnCommit) {
        let inst = new_instance(id, input.clone());
        let at = types::now();
        let history: Vec<HistoryEvent> = [
            EventKind::OrchestratorStarted,
            EventKind::ExecutionStarted {
                name: inst.name.clone(),
                input,
                execution_id: inst.execution_id.clone(),
                parent: None,
            },
            EventKind::TaskScheduled {
                task_id: 0,
                name: "Act".into(),
                input: json!({"task": 0}),
            },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, kind)| HistoryEvent {
            event_id: i as u64,
            timestamp: at,
            kind,
        })
        .collect();
        let commit = TurnCommit {
            lock: WorkLock("ignored".into()),
            instance_id: inst.instance_id.clone(),
            consumed: vec![12345],
            replace_history: false,
            status: StatusUpdate {
                runtime_status: RuntimeStatus::Running,
                execution_id: inst.execution_id.clone(),
                input: None,
                output: None,
                custom_status: Some(json!("first")),
                failure: None,
                history_events: history.len() as u64,
                history_bytes: 99,
                updated_at: at,
            },
            history,
            activities: vec![activity(id, 0)],
            messages: vec![OutgoingMessage {
                instance_id: iid(id),
                message: raised("to-self", json!(1)),
            }],
            new_instances: Vec::new(),
        };
        (inst, commit)
    }

    let (inst, commit) = first_turn("f", json!("in"));
    let expected_history = commit.history.clone();
    let fused = store
        .create_instance_with_turn(inst, commit)
        .await
        .expect("create with turn");
    let st = store.get_instance(&iid("f"), false).await.unwrap().unwrap();
    assert_eq!(st.input, json!("in"));
    if !fused {
        assert_eq!(st.runtime_status, RuntimeStatus::Pending);
        let item = fetch_only(store, "f").await;
        assert_eq!(kinds(&item), ["ExecutionStarted"]);
        assert!(store
            .fetch_activity_work(10, LONG)
            .await
            .unwrap()
            .is_empty());
        return;
    }
    assert_eq!(st.runtime_status, RuntimeStatus::Running);
    assert_eq!(st.custom_status, Some(json!("first")));
    assert_eq!(st.history_events, 3);
    assert_eq!(st.history_bytes, 99);
    assert_eq!(
        store.load_history(&iid("f")).await.unwrap(),
        expected_history
    );
    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(*acts[0].activity, activity("f", 0));
    let item = fetch_only(store, "f").await;
    assert_eq!(
        kinds(&item),
        ["EventRaised"],
        "no ExecutionStarted left to run"
    );
    assert_eq!(item.history_len, 3);
    assert_eq!(item.runtime_status, RuntimeStatus::Running);

    // A live instance of that id: a conflict, and nothing of the turn lands.
    let (again, turn_again) = first_turn("f", json!("second"));
    match store.create_instance_with_turn(again, turn_again).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, iid("f")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(history_len(store, "f").await, 3);
    assert!(store
        .fetch_activity_work(10, LONG)
        .await
        .unwrap()
        .is_empty());
    let st = store.get_instance(&iid("f"), false).await.unwrap().unwrap();
    assert_eq!(st.input, json!("in"));

    // A finished one is replaced, history and all.
    create_with_status(store, "done", RuntimeStatus::Completed).await;
    let (inst, commit) = first_turn("done", json!("new"));
    assert!(store.create_instance_with_turn(inst, commit).await.unwrap());
    assert_eq!(history_len(store, "done").await, 3);
    assert_eq!(status_of(store, "done").await, RuntimeStatus::Running);
    let acts = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].activity.instance_id, iid("done"));
}

/// A sub-orchestration whose id a live instance holds is not created; the
/// parent gets `SubOrchestrationFailed` for the task instead.
pub async fn case_sub_orchestration_conflict(store: &dyn Store) {
    store
        .create_instance(new_instance("taken", json!("original")))
        .await
        .unwrap();
    let first = fetch_only(store, "taken").await;
    store
        .create_instance(new_instance("par", json!(null)))
        .await
        .unwrap();
    let item = fetch_only(store, "par").await;
    let mut c = turn(&item, RuntimeStatus::Running);
    c.new_instances = vec![NewInstance {
        instance_id: iid("taken"),
        name: "Child".into(),
        input: json!("new"),
        execution_id: "taken@2".into(),
        parent: Some(ParentLink {
            instance_id: iid("par"),
            execution_id: exec("par"),
            task_id: 7,
        }),
        created_at: types::now(),
    }];
    store.commit_turn(c).await.unwrap();

    let item = fetch_only(store, "par").await;
    assert_eq!(item.messages.len(), 1, "{:?}", item.messages);
    let m = &item.messages[0].message;
    assert_eq!(m.execution_id.as_deref(), Some(exec("par").as_str()));
    assert!(
        matches!(
            &m.kind,
            EventKind::SubOrchestrationFailed { task_id: 7, .. }
        ),
        "{m:?}"
    );

    let st = store
        .get_instance(&iid("taken"), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.input, json!("original"));
    assert_eq!(st.execution_id, exec("taken"));
    assert_eq!(st.parent_instance_id, None);
    // The live instance's lease and work are untouched.
    store
        .commit_turn(turn(&first, RuntimeStatus::Running))
        .await
        .unwrap();
    assert_eq!(history_len(store, "taken").await, 2);
}

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

    let wake = store.next_wake_at().await.unwrap();
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
    let wake = store.next_wake_at().await.unwrap();
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
    let wake = store.next_wake_at().await.unwrap();
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
    assert_eq!(store.next_wake_at().await.unwrap(), None);
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

async fn list_all(store: &dyn Store, filter: InstanceFilter) -> Vec<String> {
    let page = store
        .list_instances(&InstanceQuery {
            filter,
            page_size: 1000,
            with_input: true,
            continuation: None,
        })
        .await
        .unwrap();
    assert_eq!(page.continuation, None);
    let mut ids: Vec<String> = page
        .instances
        .into_iter()
        .map(|s| s.instance_id.to_string())
        .collect();
    ids.sort();
    ids
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

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

/// Several completions at once (`complete_activities`), across instances:
/// each answers for its own item, a lost lease fails only its item, and
/// every delivered result reaches its instance.
pub async fn case_complete_activities_together(store: &dyn Store) {
    with_activities(store, "ca1", &[1, 2]).await;
    with_activities(store, "ca2", &[1]).await;
    let mut acts = Vec::new();
    while acts.len() < 3 {
        acts.extend(store.fetch_activity_work(10, LONG).await.unwrap());
    }
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
        ])
        .await;
    assert!(matches!(results[0], Ok(())), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::LeaseLost)),
        "{results:?}"
    );
    assert!(matches!(results[2], Ok(())), "{results:?}");
    let items = fetch(store, LONG).await;
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

/// Waits for `notify` to fire because of `action`, after discarding any
/// wake-up stored by earlier operations.
async fn signalled<F: Future>(notify: &tokio::sync::Notify, what: &str, action: F) -> F::Output {
    // A stored permit from an earlier operation would satisfy the wait below
    // without `action` doing anything: consume it first.
    let _ = tokio::time::timeout(Duration::ZERO, notify.notified()).await;
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let out = action.await;
    assert!(
        tokio::time::timeout(DEADLINE, notified).await.is_ok(),
        "no work signal after {what}"
    );
    out
}

/// The store wakes the engine's dispatchers through its [`WorkSignal`]
/// whenever it makes work visible, so nobody has to poll.
///
/// [`WorkSignal`]: crate::store::WorkSignal
pub async fn case_work_signal(store: &dyn Store) {
    let signal = store.work_signal();
    signalled(&signal.orchestrations, "create_instance", async {
        store
            .create_instance(new_instance("ws", json!(null)))
            .await
            .unwrap()
    })
    .await;
    let item = fetch_only(store, "ws").await;
    let mut c = turn(&item, RuntimeStatus::Running);
    c.activities = vec![activity("ws", 1)];
    signalled(
        &signal.activities,
        "a commit scheduling an activity",
        async { store.commit_turn(c).await.unwrap() },
    )
    .await;
    let act = store.fetch_activity_work(10, LONG).await.unwrap();
    assert_eq!(act.len(), 1);
    signalled(&signal.orchestrations, "complete_activity_work", async {
        store
            .complete_activity_work(&act[0].lock, task_completed("ws", 1))
            .await
            .unwrap()
    })
    .await;
    let item = fetch_only(store, "ws").await;
    store
        .commit_turn(turn(&item, RuntimeStatus::Running))
        .await
        .unwrap();
    signalled(&signal.orchestrations, "send_message", async {
        store
            .send_message(&iid("ws"), raised("e", json!(null)))
            .await
            .unwrap()
    })
    .await;
}

/// `count_by_status` and `queue_depth` report the expected numbers.
pub async fn case_counts(store: &dyn Store) {
    assert!(store
        .count_by_status()
        .await
        .unwrap()
        .iter()
        .all(|(_, n)| *n == 0));
    assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
    for i in 0..3 {
        create_with_status(store, &format!("cp{i}"), RuntimeStatus::Pending).await;
    }
    create_with_status(store, "cc0", RuntimeStatus::Completed).await;
    create_with_status(store, "cf0", RuntimeStatus::Failed).await;
    with_activities(store, "cr0", &[1, 2]).await;
    create_with_status(store, "cr1", RuntimeStatus::Running).await;
    store
        .send_message(&iid("cr1"), raised("wake", json!(null)))
        .await
        .unwrap();
    let mut delayed = raised("later", json!(null));
    delayed.visible_at = Some(later(60_000));
    store.send_message(&iid("cr0"), delayed).await.unwrap();

    let counts: BTreeMap<&str, u64> = store
        .count_by_status()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    let expected: BTreeMap<&str, u64> = [
        ("Pending", 3),
        ("Running", 2),
        ("Completed", 1),
        ("Failed", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
    // Three Pending instances and cr1 have visible messages; cr0's is delayed.
    assert_eq!(store.queue_depth().await.unwrap(), (4, 2));
}

/// Data and queued work survive closing and reopening the store; delivery
/// counts of work handed out before the restart are kept.
pub async fn case_survives_reopen(harness: &mut impl Harness) {
    let store = harness.open().await;
    let s = &*store;
    with_activities(s, "busy", &[1]).await;
    s.create_instance(new_instance("waiting", json!("w")))
        .await
        .unwrap();
    let history = s.load_history(&iid("busy")).await.unwrap();
    let due = later(800);
    let mut timer = raised("timer", json!(null));
    timer.visible_at = Some(due);
    s.send_message(&iid("busy"), timer.clone()).await.unwrap();

    let items = fetch(s, SHORT).await;
    assert_eq!(items.len(), 1);
    let item = items.into_iter().next().unwrap();
    assert_eq!(item.instance_id.as_str(), "waiting");
    assert_eq!(item.attempts, 1);
    let acts = s.fetch_activity_work(10, SHORT).await.unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].attempts, 1);
    harness.close(store).await;

    let store = harness.open().await;
    let s = &*store;
    let st = s.get_instance(&iid("busy"), true).await.unwrap().unwrap();
    assert_eq!(st.runtime_status, RuntimeStatus::Running);
    assert_eq!(st.history, Some(history.clone()));
    assert_eq!(status_of(s, "waiting").await, RuntimeStatus::Pending);

    // Leases may or may not survive a restart; either way the work returns.
    let again = poll_item(s, "waiting", LONG).await;
    assert_eq!(again.attempts, 2, "delivery count lost across reopen");
    assert_eq!(again.messages, item.messages);
    let act = poll("activity after reopen", || async {
        s.fetch_activity_work(10, LONG)
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        act.attempts, 2,
        "activity delivery count lost across reopen"
    );
    assert_eq!(*act.activity, activity("busy", 1));

    s.complete_activity_work(&act.lock, task_completed("busy", 1))
        .await
        .unwrap();
    s.commit_turn(turn(&again, RuntimeStatus::Running))
        .await
        .unwrap();
    harness.close(store).await;

    let store = harness.open().await;
    let s = &*store;
    assert!(s.fetch_activity_work(10, LONG).await.unwrap().is_empty());
    assert_eq!(history_len(s, "waiting").await, 2);
    let item = poll_item(s, "busy", LONG).await;
    // Never delivered before the reopen: 1, or 2 for a store that counts
    // queued work as possibly delivered once when it opens (see
    // `OrchestrationWorkItem::attempts`).
    assert!(
        (1..=2).contains(&item.attempts),
        "attempts {} after one delivery",
        item.attempts
    );
    if types::now() < due {
        assert_eq!(kinds(&item), ["TaskCompleted"]);
        s.commit_turn(turn(&item, RuntimeStatus::Running))
            .await
            .unwrap();
        let item = poll_item(s, "busy", LONG).await;
        assert!(types::now() >= due);
        assert_eq!(item.messages.len(), 1);
        assert_eq!(item.messages[0].message, timer);
    } else {
        assert!(item.messages.iter().any(|m| m.message == timer));
    }
    harness.close(store).await;
}

/// The lifecycle outbox: one row per start and end, written with the
/// commit that made it (a commit whose lease was lost writes none), in
/// commit order, signalled, and gone once acknowledged.
pub async fn case_lifecycle_outbox(store: &dyn Store) {
    use RuntimeStatus::*;
    let signal = store
        .lifecycle_signal()
        .expect("the harness opens the store with its lifecycle outbox on");
    signalled(
        &signal,
        "a first turn",
        create_with_status(store, "lc-a", Running),
    )
    .await;
    create_with_status(store, "lc-b", Failed).await;
    store
        .send_message(&iid("lc-a"), raised("go", json!(1)))
        .await
        .unwrap();
    let item = poll_item(store, "lc-a", SHORT).await;
    // The lease runs out and another holder finishes the instance: the
    // first holder's commit changes nothing and writes no event.
    let again = poll_item(store, "lc-a", LONG).await;
    assert!(matches!(
        store.commit_turn(turn(&item, Terminated)).await,
        Err(StoreError::LeaseLost)
    ));
    store.commit_turn(turn(&again, Completed)).await.unwrap();
    let rows = store.lifecycle_outbox(100).await.unwrap();
    let seen: Vec<(&str, RuntimeStatus)> = rows
        .iter()
        .map(|e| (e.instance_id.as_str(), e.runtime_status))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("lc-a", Running),
            ("lc-b", Running),
            ("lc-b", Failed),
            ("lc-a", Completed)
        ]
    );
    assert!(rows.iter().all(|e| e.name == "Orch"));
    assert_eq!(rows[0].execution_id, exec("lc-a"));
    assert_eq!(
        rows[2].failure.as_ref().map(|f| f.message.as_str()),
        Some("boom")
    );
    assert!(rows[1].failure.is_none());
    let ids: HashSet<String> = rows.iter().map(|e| e.event_id()).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    store
        .ack_lifecycle(rows[..2].iter().map(|e| e.seq).collect())
        .await
        .unwrap();
    let left = store.lifecycle_outbox(100).await.unwrap();
    assert_eq!(left, rows[2..].to_vec());
    assert_eq!(store.lifecycle_outbox(1).await.unwrap().len(), 1);
}
