//! What the cases share: ids, canned messages and turns, polling.

use super::*;

/// A lease no case outlives.
pub(super) const LONG: Duration = Duration::from_secs(60);
/// A lease cases wait out.
pub(super) const SHORT: Duration = Duration::from_millis(100);
/// How long a case waits for something that should happen.
pub(super) const DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two polls of a condition.
pub(super) const POLL: Duration = Duration::from_millis(5);

pub(super) fn iid(s: &str) -> InstanceId {
    InstanceId::new(s).expect("valid instance id")
}

pub(super) fn exec(id: &str) -> String {
    format!("{id}@1")
}

pub(super) fn new_instance(id: &str, input: Value) -> NewInstance {
    NewInstance {
        instance_id: iid(id),
        name: "Orch".into(),
        input,
        execution_id: exec(id),
        parent: None,
        created_at: types::now(),
        only_if_absent: false,
    }
}

pub(super) fn raised(name: &str, input: Value) -> Message {
    Message::now(EventKind::EventRaised {
        name: name.into(),
        input,
    })
}

pub(super) fn later(ms: i64) -> Timestamp {
    types::now() + chrono::Duration::milliseconds(ms)
}

/// Polls `f` until it yields a value; panics after [`DEADLINE`].
pub(super) async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
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

pub(super) async fn fetch(store: &dyn Store, lease: Duration) -> Vec<OrchestrationWorkItem> {
    store
        .fetch_orchestration_work(100, lease)
        .await
        .expect("fetch orchestration work")
}

/// Fetches exactly one work item, which must be for `id`.
pub(super) async fn fetch_only(store: &dyn Store, id: &str) -> OrchestrationWorkItem {
    let mut items = fetch(store, LONG).await;
    let ids: Vec<_> = items.iter().map(|i| i.instance_id.to_string()).collect();
    assert_eq!(ids, vec![id.to_string()], "expected work for exactly {id}");
    items.remove(0)
}

/// Polls until a work item for `id` is handed out; other items fetched on
/// the way are left leased.
pub(super) async fn poll_item(
    store: &dyn Store,
    id: &str,
    lease: Duration,
) -> OrchestrationWorkItem {
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
pub(super) fn events_for(item: &OrchestrationWorkItem) -> Vec<HistoryEvent> {
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
pub(super) fn turn(item: &OrchestrationWorkItem, status: RuntimeStatus) -> TurnCommit {
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
pub(super) async fn create_with_status(store: &dyn Store, id: &str, status: RuntimeStatus) {
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
pub(super) async fn run_turn(
    store: &dyn Store,
    id: &str,
    status: RuntimeStatus,
) -> OrchestrationWorkItem {
    let item = poll_item(store, id, LONG).await;
    store
        .commit_turn(turn(&item, status))
        .await
        .expect("commit");
    item
}

pub(super) fn activity(id: &str, task_id: u64) -> NewActivity {
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
pub(super) async fn with_activities(store: &dyn Store, id: &str, tasks: &[u64]) {
    store
        .create_instance(new_instance(id, json!(null)))
        .await
        .expect("create");
    let item = poll_item(store, id, LONG).await;
    let mut c = turn(&item, RuntimeStatus::Running);
    c.activities = tasks.iter().map(|t| activity(id, *t)).collect();
    store.commit_turn(c).await.expect("commit");
}

pub(super) fn task_completed(id: &str, task_id: u64) -> Message {
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

pub(super) async fn history_len(store: &dyn Store, id: &str) -> usize {
    store.load_history(&iid(id)).await.expect("history").len()
}

pub(super) async fn status_of(store: &dyn Store, id: &str) -> RuntimeStatus {
    store
        .get_instance(&iid(id), false)
        .await
        .expect("get_instance")
        .expect("instance exists")
        .runtime_status
}

pub(super) fn kinds(item: &OrchestrationWorkItem) -> Vec<&'static str> {
    item.messages
        .iter()
        .map(|m| m.message.kind.type_name())
        .collect()
}

pub(super) async fn list_all(store: &dyn Store, filter: InstanceFilter) -> Vec<String> {
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

pub(super) fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A new instance `id` and its first turn: started, a task scheduled (an
/// activity queued), a message to itself.
pub(super) fn first_turn(id: &str, input: Value) -> (NewInstance, TurnCommit) {
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

/// Asserts that the finished instance `id` is still the one `before`
/// read (status, execution, input, history): nothing replaced it.
pub(super) async fn assert_kept(
    store: &dyn Store,
    id: &str,
    before: &crate::types::InstanceStatus,
) {
    let after = store.get_instance(&iid(id), true).await.unwrap().unwrap();
    assert_eq!(after.runtime_status, before.runtime_status, "{id}");
    assert_eq!(after.execution_id, before.execution_id, "{id}");
    assert_eq!(after.input, before.input, "{id}");
    assert_eq!(after.history, before.history, "{id}");
}
