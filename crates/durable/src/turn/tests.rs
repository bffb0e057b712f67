//! The turn-to-commit step on canned work items: what a turn's actions
//! and outcome become in the commit (activities, timers, children,
//! results to a parent, continue-as-new, poison) and what the update
//! carries, with no store and no engine.

use super::*;
use crate::context::OrchestrationContext;
use crate::store::WorkLock;
use crate::TaskError;
use serde_json::json;
use std::time::Duration;

const EXEC: &str = "exec-1";

fn registry() -> Registry {
    Registry::new()
        .orchestration("Fan", |ctx: OrchestrationContext, _: ()| async move {
            let a = ctx.call_activity::<u32>("A", ());
            let b = ctx.call_activity::<u32>("B", ());
            let (a, b) = futures::join!(a, b);
            Ok::<_, TaskError>(a? + b?)
        })
        .orchestration("Nap", |ctx: OrchestrationContext, _: ()| async move {
            ctx.create_timer(Duration::from_secs(60)).await;
            Ok::<_, TaskError>(())
        })
        .orchestration("Parent", |ctx: OrchestrationContext, _: ()| async move {
            let id = InstanceId::new("the-child").unwrap();
            ctx.call_sub_orchestration::<Value>("Echo", Some(id), json!("hi"))
                .await
        })
        .orchestration("Echo", |_: OrchestrationContext, input: Value| async move {
            Ok::<_, TaskError>(input)
        })
        .orchestration("Loop", |ctx: OrchestrationContext, n: u32| async move {
            ctx.continue_as_new(n + 1);
            Ok::<_, TaskError>(n)
        })
        .orchestration("Big", |_: OrchestrationContext, _: ()| async move {
            Ok::<_, TaskError>("x".repeat(10_000))
        })
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn stored(id: i64, execution_id: Option<&str>, kind: EventKind) -> StoredMessage {
    StoredMessage {
        id,
        message: Message {
            execution_id: execution_id.map(str::to_string),
            visible_at: None,
            sent_at: types::now(),
            kind,
        },
    }
}

fn start(id: i64, name: &str, input: Value, parent: Option<ParentLink>) -> StoredMessage {
    stored(
        id,
        None,
        EventKind::ExecutionStarted {
            name: name.into(),
            input,
            execution_id: EXEC.into(),
            parent,
        },
    )
}

/// A task's result, for the current execution.
fn completed(id: i64, task_id: u64, result: Value) -> StoredMessage {
    stored(id, Some(EXEC), EventKind::TaskCompleted { task_id, result })
}

fn item(instance: &str, messages: Vec<StoredMessage>, attempts: u32) -> OrchestrationWorkItem {
    OrchestrationWorkItem {
        lock: WorkLock("lease-7".into()),
        instance_id: id(instance),
        runtime_status: RuntimeStatus::Pending,
        execution_id: EXEC.into(),
        history_len: 0,
        messages,
        attempts,
    }
}

/// A turn from a fresh run (or the one given), as the engine takes it
/// when nothing is cached or rewound.
fn take(
    item: OrchestrationWorkItem,
    run: Option<OrchestrationRun>,
    now: Timestamp,
) -> PreparedTurn {
    let run = run.unwrap_or_else(|| OrchestrationRun::new(item.instance_id.clone()));
    let poisoned = item.attempts > 10;
    take_turn(
        &registry(),
        HistoryLimits::default(),
        item,
        TurnStart {
            run,
            poisoned,
            carried: Vec::new(),
            rewound: None,
        },
        now,
    )
}

fn kinds(history: &[HistoryEvent]) -> Vec<&'static str> {
    history.iter().map(|e| e.kind.type_name()).collect()
}

#[test]
fn a_first_turn_commits_its_fan_out_under_the_lease() {
    let now = types::now();
    let t = take(
        item("fan", vec![start(11, "Fan", json!(null), None)], 1),
        None,
        now,
    );
    let c = &t.commit;
    assert_eq!(c.lock, WorkLock("lease-7".into()));
    assert_eq!(c.consumed, [11]);
    assert!(!c.replace_history);
    assert_eq!(
        kinds(&c.history),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "TaskScheduled"
        ]
    );
    let names: Vec<_> = c.activities.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["A", "B"]);
    assert!(c.activities.iter().all(|a| a.execution_id == EXEC));
    assert_ne!(c.activities[0].task_id, c.activities[1].task_id);
    assert!(c.messages.is_empty() && c.new_instances.is_empty());
    assert_eq!(c.status.runtime_status, RuntimeStatus::Running);
    assert_eq!(c.status.history_events, 4);
    assert_eq!(c.status.updated_at, now);
    assert!(c.status.output.is_none() && c.status.failure.is_none());
    assert_eq!(kinds(&t.update.history), kinds(&c.history));
    assert_eq!(t.update.runtime_status, RuntimeStatus::Running);
    assert!(t.run.is_some(), "a running instance stays cached");
}

#[test]
fn results_complete_the_run_and_nothing_is_cached() {
    let first = take(
        item("fan", vec![start(1, "Fan", json!(null), None)], 1),
        None,
        types::now(),
    );
    let tasks: Vec<u64> = first.commit.activities.iter().map(|a| a.task_id).collect();
    let results = vec![
        completed(2, tasks[0], json!(2)),
        completed(3, tasks[1], json!(3)),
    ];
    let mut next = item("fan", results, 1);
    next.history_len = first.commit.status.history_events;
    let t = take(next, first.run, types::now());
    assert_eq!(t.commit.consumed, [2, 3]);
    assert_eq!(t.commit.status.runtime_status, RuntimeStatus::Completed);
    assert_eq!(t.commit.status.output, Some(json!(5)));
    assert!(t.commit.activities.is_empty());
    assert_eq!(t.update.output, Some(json!(5)));
    assert!(t.run.is_none(), "a finished run leaves the cache");
}

#[test]
fn a_timer_is_a_delayed_message_to_the_instance_itself() {
    let now = types::now();
    let t = take(
        item("nap", vec![start(1, "Nap", json!(null), None)], 1),
        None,
        now,
    );
    assert_eq!(t.commit.messages.len(), 1);
    let m = &t.commit.messages[0];
    assert_eq!(m.instance_id, id("nap"));
    assert_eq!(m.message.execution_id.as_deref(), Some(EXEC));
    let fire_at = now + chrono::Duration::seconds(60);
    assert_eq!(m.message.visible_at, Some(fire_at));
    assert!(matches!(m.message.kind, EventKind::TimerFired { fire_at: f, .. } if f == fire_at));
    assert!(t.commit.activities.is_empty());
}

#[test]
fn a_child_is_created_in_the_commit_and_answers_its_parent() {
    let t = take(
        item("parent", vec![start(1, "Parent", json!(null), None)], 1),
        None,
        types::now(),
    );
    assert_eq!(t.commit.new_instances.len(), 1);
    let child = &t.commit.new_instances[0];
    assert_eq!(child.instance_id, id("the-child"));
    assert_eq!(child.name, "Echo");
    assert_eq!(child.input, json!("hi"));
    let link = child.parent.clone().expect("linked to its parent");
    assert_eq!(
        (link.instance_id.clone(), link.execution_id.as_str()),
        (id("parent"), EXEC)
    );
    assert_ne!(child.execution_id, EXEC, "a fresh execution of its own");

    // The child's only turn completes it and sends its output back.
    let c = take(
        item(
            "the-child",
            vec![start(5, "Echo", json!("hi"), Some(link.clone()))],
            1,
        ),
        None,
        types::now(),
    );
    assert_eq!(c.commit.status.runtime_status, RuntimeStatus::Completed);
    assert_eq!(c.commit.messages.len(), 1);
    let answer = &c.commit.messages[0];
    assert_eq!(answer.instance_id, id("parent"));
    assert_eq!(answer.message.execution_id.as_deref(), Some(EXEC));
    assert!(matches!(
        &answer.message.kind,
        EventKind::SubOrchestrationCompleted { task_id, result }
            if *task_id == link.task_id && *result == json!("hi")
    ));
}

#[test]
fn continue_as_new_replaces_the_history_and_keeps_later_requests() {
    let messages = vec![
        start(1, "Loop", json!(0), None),
        // Arrives with the start, for whichever execution is current:
        // not applied by this one, so kept for the next.
        stored(
            2,
            None,
            EventKind::EventRaised {
                name: "go".into(),
                input: json!(1),
            },
        ),
        // A result for an execution long gone: dropped.
        stored(
            3,
            Some("exec-0"),
            EventKind::TaskCompleted {
                task_id: 0,
                result: json!(0),
            },
        ),
    ];
    let t = take(item("loop", messages, 1), None, types::now());
    let c = &t.commit;
    assert!(c.replace_history);
    assert!(c.history.is_empty(), "the next execution starts empty");
    assert_eq!(c.consumed, [1, 3]);
    assert_ne!(c.status.execution_id, EXEC);
    assert_eq!(c.status.input, Some(json!(1)));
    assert_eq!((c.status.history_events, c.status.history_bytes), (0, 0));
    assert_eq!(c.messages.len(), 1);
    match &c.messages[0].message.kind {
        EventKind::ExecutionStarted {
            name,
            input,
            execution_id,
            ..
        } => {
            assert_eq!((name.as_str(), input), ("Loop", &json!(1)));
            assert_eq!(*execution_id, c.status.execution_id);
        }
        other => panic!("expected the next start, got {other:?}"),
    }
    // Subscribers still see the ended execution's events.
    assert!(kinds(&t.update.history).contains(&"ContinuedAsNew"));
}

#[test]
fn a_poisoned_instance_is_failed_with_its_start_recorded() {
    let t = take(
        item("fan", vec![start(1, "Fan", json!(null), None)], 11),
        None,
        types::now(),
    );
    let c = &t.commit;
    assert_eq!(c.status.runtime_status, RuntimeStatus::Failed);
    let failure = c.status.failure.as_ref().expect("a failure");
    assert_eq!(failure.kind, "Poison");
    assert!(
        failure.message.contains("10 turn attempts"),
        "{}",
        failure.message
    );
    assert_eq!(
        kinds(&c.history),
        ["OrchestratorStarted", "ExecutionStarted", "ExecutionFailed"]
    );
    assert!(c.activities.is_empty(), "the orchestrator did not run");
    assert_eq!(c.consumed, [1]);
    assert!(t.run.is_none());
}

#[test]
fn the_update_carries_a_marker_where_the_commit_carries_a_large_output() {
    let t = take(
        item("big", vec![start(1, "Big", json!(null), None)], 1),
        None,
        types::now(),
    );
    assert_eq!(t.commit.status.output, Some(json!("x".repeat(10_000))));
    assert_eq!(t.update.output, Some(crate::elide::marker()));
}

/// A history as the engine records it: each turn's events, numbered on.
fn live_history(registry: &Registry, id: &str, turns: &[Vec<StoredMessage>]) -> Vec<HistoryEvent> {
    let mut run = OrchestrationRun::new(InstanceId::new(id).unwrap());
    let mut history = Vec::new();
    for messages in turns {
        history.extend(
            run.turn(
                registry,
                messages,
                types::now(),
                HistoryLimits::default(),
                Vec::new(),
            )
            .history,
        );
    }
    history
}

/// The rewind request as it arrives in the work item of a Failed instance.
fn rewind_item(instance: &str) -> OrchestrationWorkItem {
    let mut work = item(
        instance,
        vec![stored(
            9,
            None,
            EventKind::Rewound {
                reason: Some("retry".into()),
            },
        )],
        1,
    );
    work.runtime_status = RuntimeStatus::Failed;
    work
}

/// The rewound run, as `prepare_turn` starts it, with the answers and the
/// work `settle_rewound_children` would have sorted out.
fn rewound_start(
    registry: &Registry,
    instance: &str,
    history: &[HistoryEvent],
    reissued: Vec<Action>,
    answers: Vec<StoredMessage>,
) -> TurnStart {
    let rewound = rewound_history(history, &rewind_item(instance), types::now());
    let (run, carried) = OrchestrationRun::replay(registry, id(instance), &rewound);
    TurnStart {
        run,
        poisoned: false,
        carried,
        rewound: Some(Rewound {
            history: rewound,
            reissued,
            answers,
        }),
    }
}

#[test]
fn a_rewind_reissues_the_failed_task_on_the_rewound_history() {
    // A Fan whose B failed: A's result stays, the failures go, B is
    // issued again.
    let registry = registry();
    let first = live_history(
        &registry,
        "fan",
        &[vec![start(1, "Fan", json!(null), None)]],
    );
    let tasks: Vec<u64> = first.iter().filter_map(|e| e.kind.task_id()).collect();
    let history = live_history(
        &registry,
        "fan",
        &[
            vec![start(1, "Fan", json!(null), None)],
            vec![
                completed(2, tasks[0], json!(2)),
                stored(
                    3,
                    Some(EXEC),
                    EventKind::TaskFailed {
                        task_id: tasks[1],
                        error: FailureDetails::new("Boom", "B failed"),
                    },
                ),
            ],
        ],
    );
    assert!(kinds(&history).contains(&"ExecutionFailed"));
    let mut start = rewound_start(&registry, "fan", &history, Vec::new(), Vec::new());
    let rewind = start.rewound.as_mut().expect("a rewind");
    let pending = pending_after_rewind(&rewind.history);
    assert_eq!(pending.len(), 1, "only B is owed");
    let base = rewind.history.clone();
    rewind.reissued = pending;
    let t = take_turn(
        &registry,
        HistoryLimits::default(),
        rewind_item("fan"),
        start,
        types::now(),
    );
    let c = &t.commit;
    assert!(c.replace_history);
    assert_eq!(c.consumed, [9], "the rewind request is consumed");
    assert_eq!(c.activities.len(), 1);
    assert_eq!(
        (c.activities[0].task_id, c.activities[0].name.as_str()),
        (tasks[1], "B")
    );
    assert_eq!(
        &c.history[..base.len()],
        &base[..],
        "the turn extends the rewound history"
    );
    assert!(
        !kinds(&c.history).contains(&"TaskFailed"),
        "the failure is gone"
    );
    assert!(!kinds(&c.history).contains(&"ExecutionFailed"));
    assert_eq!(c.status.runtime_status, RuntimeStatus::Running);
}

#[test]
fn a_rewind_applies_a_finished_child_s_answer_instead_of_starting_it_again() {
    // A Parent whose child failed, then was rewound and completed by
    // itself: the parent's rewind gets the child's output as its answer.
    let registry = registry();
    let first = live_history(
        &registry,
        "parent",
        &[vec![start(1, "Parent", json!(null), None)]],
    );
    let task = first
        .iter()
        .find_map(|e| match e.kind {
            EventKind::SubOrchestrationCreated { task_id, .. } => Some(task_id),
            _ => None,
        })
        .expect("the child was started");
    let failed = stored(
        2,
        Some(EXEC),
        EventKind::SubOrchestrationFailed {
            task_id: task,
            error: FailureDetails::new("Boom", "the child failed"),
        },
    );
    let history = live_history(
        &registry,
        "parent",
        &[vec![start(1, "Parent", json!(null), None)], vec![failed]],
    );
    let answer = stored(
        -1,
        Some(EXEC),
        EventKind::SubOrchestrationCompleted {
            task_id: task,
            result: json!("hi"),
        },
    );
    let start = rewound_start(&registry, "parent", &history, Vec::new(), vec![answer]);
    let t = take_turn(
        &registry,
        HistoryLimits::default(),
        rewind_item("parent"),
        start,
        types::now(),
    );
    let c = &t.commit;
    assert!(c.new_instances.is_empty(), "the child is not started again");
    assert_eq!(c.consumed, [9]);
    assert!(kinds(&c.history).contains(&"SubOrchestrationInstanceCompleted"));
    assert_eq!(kinds(&c.history).last(), Some(&"ExecutionCompleted"));
    assert_eq!(c.status.runtime_status, RuntimeStatus::Completed);
    assert_eq!(c.status.output, Some(json!("hi")));
}
