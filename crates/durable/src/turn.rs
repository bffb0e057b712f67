//! One turn of an instance, from its work item to what the store commits
//! and the update subscribers get: the run taken from the cache or rebuilt
//! by replay (or rewound), the orchestrator run against the new messages,
//! poison quarantine, and the turn's actions turned into a `TurnCommit`.
//! The engine's dispatcher and `start_orchestration` run it; the commit
//! and publishing stay in the engine.

use std::sync::Arc;

use serde_json::Value;

use crate::context::Action;
use crate::error::Error;
use crate::history::{EventKind, HistoryEvent, Message, ParentLink};
use crate::registry::Registry;
use crate::run::HistoryLimits;
use crate::run::{OrchestrationRun, Outcome};
use crate::store::{
    NewActivity, NewInstance, OrchestrationWorkItem, OutgoingMessage, StatusUpdate, StoredMessage,
    TurnCommit,
};
use crate::types::{self, FailureDetails, InstanceId, RuntimeStatus, Timestamp};

use crate::engine::{new_execution_id, Inner, InstanceUpdate};

/// A turn that ran and is ready to commit.
pub(crate) struct PreparedTurn {
    pub(crate) commit: TurnCommit,
    pub(crate) update: InstanceUpdate,
    /// The run to keep in the cache (none once the execution ended).
    pub(crate) run: Option<OrchestrationRun>,
}

pub(crate) async fn prepare_turn_owned(
    inner: Arc<Inner>,
    item: OrchestrationWorkItem,
) -> Result<PreparedTurn, Error> {
    prepare_turn(&inner, item).await
}

/// Runs one turn of the work item's instance in memory: the commit to make
/// and the update to publish once it lands.
pub(crate) async fn prepare_turn(
    inner: &Inner,
    item: OrchestrationWorkItem,
) -> Result<PreparedTurn, Error> {
    let now = types::now();
    let id = item.instance_id.clone();
    // Poison: the instance keeps failing its turns; fail it instead of
    // retrying forever. Checked first so that nothing (a rewind, a history
    // that no longer loads) can keep it from being quarantined.
    let poisoned = item.attempts > inner.config.max_attempts;
    let rewind = !poisoned
        && item.runtime_status == RuntimeStatus::Failed
        && item
            .messages
            .iter()
            .any(|m| matches!(m.message.kind, EventKind::Rewound { .. }));
    let cached = inner.cache.lock().expect("cache lock").pop(&id);
    let mut reissued = Vec::new();
    let mut answers = None;
    let (run, carried, replace_history, base) = if rewind {
        let history = inner.store.load_history(&id).await?;
        let rewound = rewound_history(&history, &item, now);
        let (run, carried) = OrchestrationRun::replay(&inner.registry, id.clone(), &rewound);
        // Already recorded in history: re-issued as work, not recorded again.
        let settled = settle_rewound_children(
            inner,
            &id,
            pending_after_rewind(&rewound),
            &run.execution_id,
            now,
        )
        .await?;
        reissued = settled.0;
        answers = Some(settled.1);
        (run, carried, true, rewound)
    } else {
        match cached {
            Some(run)
                if run.history_len == item.history_len && run.execution_id == item.execution_id =>
            {
                (run, Vec::new(), false, Vec::new())
            }
            _ => {
                let history = if item.history_len == 0 {
                    Ok(Vec::new())
                } else {
                    inner.store.load_history(&id).await
                };
                match history {
                    Ok(history) => {
                        let (run, carried) =
                            OrchestrationRun::replay(&inner.registry, id.clone(), &history);
                        (run, carried, false, Vec::new())
                    }
                    Err(e) if poisoned => {
                        // Fail it without its history: the failure is
                        // appended after the events the store holds.
                        tracing::warn!(instance = %id, error = %e, "history unreadable; quarantining");
                        let mut run = OrchestrationRun::new(id.clone());
                        run.execution_id = item.execution_id.clone();
                        run.history_len = item.history_len;
                        (run, Vec::new(), false, Vec::new())
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    Ok(take_turn(
        &inner.registry,
        inner.config.history_limits,
        inner.config.max_attempts,
        item,
        TurnStart {
            run,
            carried,
            reissued,
            answers,
            replace_history,
            base,
        },
        now,
    ))
}

/// What a turn starts from once its run is in hand: the run (cached,
/// replayed or rewound), the actions replay found still owed, and for a
/// rewind the work re-issued, the answers applied in place of the inbox
/// and the rewound history the turn's events extend.
pub(crate) struct TurnStart {
    pub(crate) run: OrchestrationRun,
    pub(crate) carried: Vec<Action>,
    pub(crate) reissued: Vec<Action>,
    pub(crate) answers: Option<Vec<StoredMessage>>,
    pub(crate) replace_history: bool,
    pub(crate) base: Vec<HistoryEvent>,
}

/// The pure half of a turn: runs the orchestrator against the work item's
/// messages (or fails it, poisoned) and turns what it did into the commit
/// and the update. No store, no clock: tested on canned work items.
pub(crate) fn take_turn(
    registry: &Registry,
    limits: HistoryLimits,
    max_attempts: u32,
    mut item: OrchestrationWorkItem,
    start: TurnStart,
    now: Timestamp,
) -> PreparedTurn {
    let TurnStart {
        mut run,
        mut carried,
        reissued,
        answers,
        replace_history,
        mut base,
    } = start;
    let id = item.instance_id.clone();
    let poisoned = item.attempts > max_attempts;
    // Each inbox message's id, and whether it is for whichever execution
    // is current (kept across a continue-as-new when the turn left it).
    let inbox: Vec<(i64, bool)> = item
        .messages
        .iter()
        .map(|m| (m.id, m.message.execution_id.is_none()))
        .collect();
    let messages: Vec<_> = if let Some(answers) = answers {
        answers
    } else if poisoned {
        carried.clear();
        let failure = FailureDetails::new(
            "Poison",
            format!(
                "instance quarantined after {} turn attempts without a commit",
                item.attempts - 1
            ),
        );
        vec![StoredMessage {
            id: -1,
            message: Message::now(EventKind::ExecutionFailed { error: failure }),
        }]
    } else {
        // Moved, not copied: what the commit needs of them is kept here.
        std::mem::take(&mut item.messages)
    };
    let poison = messages.iter().find_map(|m| match &m.message.kind {
        EventKind::ExecutionFailed { error } if m.id < 0 => Some(error.clone()),
        _ => None,
    });
    let mut turn = if let Some(error) = poison {
        let mut t = run.turn(registry, &[], now, limits, Vec::new());
        force_failure(&mut run, &mut t, error, now, &item.messages);
        t
    } else {
        run.turn(
            registry,
            &messages,
            now,
            limits,
            std::mem::take(&mut carried),
        )
    };
    if run.outcome.is_none() {
        turn.actions.extend(reissued);
    }

    let status = run.status();
    let execution_id = run.execution_id.clone();
    // After a continue-as-new, requests that came in after the execution
    // ended (events, terminate, suspend) stay queued for the next execution
    // instead of being lost with this one; stale results are dropped.
    let kept: std::collections::HashSet<i64> =
        if matches!(run.outcome, Some(Outcome::ContinuedAsNew(_))) {
            let unapplied: std::collections::HashSet<i64> =
                turn.unapplied.iter().copied().collect();
            inbox
                .iter()
                .filter(|(id, any_execution)| unapplied.contains(id) && *any_execution)
                .map(|(id, _)| *id)
                .collect()
        } else {
            Default::default()
        };
    let mut commit = TurnCommit {
        lock: item.lock.clone(),
        instance_id: id.clone(),
        consumed: inbox
            .iter()
            .map(|(id, _)| *id)
            .filter(|m| !kept.contains(m))
            .collect(),
        replace_history,
        history: Vec::new(),
        status: StatusUpdate {
            runtime_status: status,
            execution_id: execution_id.clone(),
            input: None,
            output: None,
            custom_status: run.custom_status(),
            failure: None,
            history_events: run.history_len,
            history_bytes: run.history_bytes,
            updated_at: now,
        },
        activities: Vec::new(),
        messages: Vec::new(),
        new_instances: Vec::new(),
    };
    for action in std::mem::take(&mut turn.actions) {
        match action {
            Action::ScheduleActivity {
                task_id,
                name,
                input,
            } => commit.activities.push(NewActivity {
                instance_id: id.clone(),
                execution_id: execution_id.clone(),
                task_id,
                name,
                input,
            }),
            Action::CreateTimer { task_id, fire_at } => commit.messages.push(OutgoingMessage {
                instance_id: id.clone(),
                message: Message {
                    execution_id: Some(execution_id.clone()),
                    visible_at: Some(fire_at),
                    sent_at: now,
                    kind: EventKind::TimerFired { task_id, fire_at },
                },
            }),
            Action::StartSubOrchestration {
                task_id,
                name,
                instance_id,
                input,
            } => commit.new_instances.push(NewInstance {
                instance_id,
                name,
                input,
                execution_id: new_execution_id(),
                parent: Some(ParentLink {
                    instance_id: id.clone(),
                    execution_id: execution_id.clone(),
                    task_id,
                }),
                created_at: now,
            }),
        }
    }
    match run.outcome.clone() {
        Some(Outcome::Completed(output)) => commit.status.output = Some(output),
        Some(Outcome::Failed(error)) => commit.status.failure = Some(error),
        Some(Outcome::Terminated(reason)) => {
            commit.status.output = Some(reason.map(Value::String).unwrap_or(Value::Null))
        }
        Some(Outcome::ContinuedAsNew(input)) => {
            // The next execution starts from an empty history with a fresh
            // execution id; its start message is queued in the same commit.
            let next = new_execution_id();
            commit.replace_history = true;
            commit.status.execution_id = next.clone();
            commit.status.input = Some(input.clone());
            commit.status.history_events = 0;
            commit.status.history_bytes = 0;
            commit.messages.push(OutgoingMessage {
                instance_id: id.clone(),
                message: Message::now(EventKind::ExecutionStarted {
                    name: run.name.clone(),
                    input,
                    execution_id: next,
                    parent: run.parent.clone(),
                }),
            });
        }
        None => {}
    }
    if let (Some(parent), Some(outcome)) = (&run.parent, &run.outcome) {
        let kind = match outcome {
            Outcome::Completed(result) => Some(EventKind::SubOrchestrationCompleted {
                task_id: parent.task_id,
                result: result.clone(),
            }),
            Outcome::Failed(error) => Some(EventKind::SubOrchestrationFailed {
                task_id: parent.task_id,
                error: error.clone(),
            }),
            Outcome::Terminated(reason) => Some(EventKind::SubOrchestrationFailed {
                task_id: parent.task_id,
                error: FailureDetails::new(
                    "Terminated",
                    reason.clone().unwrap_or_else(|| "terminated".to_string()),
                ),
            }),
            Outcome::ContinuedAsNew(_) => None,
        };
        if let Some(kind) = kind {
            commit.messages.push(OutgoingMessage {
                instance_id: parent.instance_id.clone(),
                message: Message {
                    execution_id: Some(parent.execution_id.clone()),
                    visible_at: None,
                    sent_at: now,
                    kind,
                },
            });
        }
    }
    // Bounded: subscribers that fall behind pin what the broadcast holds.
    let mut budget = crate::elide::Budget::default();
    let published = crate::elide::history(&turn.history, &mut budget);
    if commit.replace_history {
        if matches!(run.outcome, Some(Outcome::ContinuedAsNew(_))) {
            commit.history = Vec::new();
        } else {
            base.extend(turn.history);
            commit.history = base;
        }
    } else {
        commit.history = turn.history;
    }
    let update = InstanceUpdate {
        instance_id: id.clone(),
        name: run.name.clone(),
        runtime_status: commit.status.runtime_status,
        history: published,
        output: commit
            .status
            .output
            .as_ref()
            .map(|v| crate::elide::value(v, &mut budget)),
        custom_status: commit
            .status
            .custom_status
            .as_ref()
            .map(|v| crate::elide::value(v, &mut budget)),
        failure: commit.status.failure.clone(),
        at: now,
    };
    PreparedTurn {
        commit,
        update,
        run: run.outcome.is_none().then_some(run),
    }
}

/// Fails a run that already took its turn (poison), recording the failure.
///
/// An instance quarantined before its first turn committed never started:
/// its start message is recorded (without running the orchestrator, which
/// may be what keeps failing) so that the failure reaches its parent and a
/// rewind can start it properly.
pub(crate) fn force_failure(
    run: &mut OrchestrationRun,
    turn: &mut crate::run::TurnResult,
    error: FailureDetails,
    now: Timestamp,
    messages: &[crate::store::StoredMessage],
) {
    turn.actions.clear();
    let mut record = |run: &mut OrchestrationRun, kind: EventKind| {
        let event = HistoryEvent {
            event_id: run.history_len,
            timestamp: now,
            kind,
        };
        run.history_len += 1;
        run.history_bytes += crate::run::event_size(&event);
        turn.history.push(event);
    };
    if !run.started() {
        let start = messages.iter().find_map(|m| match &m.message.kind {
            kind @ EventKind::ExecutionStarted {
                name,
                execution_id,
                parent,
                ..
            } => Some((kind.clone(), name, execution_id, parent)),
            _ => None,
        });
        if let Some((kind, name, execution_id, parent)) = start {
            run.name = name.clone();
            run.execution_id = execution_id.clone();
            run.parent = parent.clone();
            record(run, kind);
        }
    }
    if run.outcome.is_none() {
        run.outcome = Some(Outcome::Failed(error.clone()));
        record(run, EventKind::ExecutionFailed { error });
    }
}

/// The history of a Failed instance with its failure removed: the final
/// `ExecutionFailed` and the failed task results the orchestrator did not
/// get past go, so replay finds those tasks pending again. Event ids are
/// renumbered.
///
/// A failure followed by an action record was handled: the orchestrator
/// went on (a retry's timer, a compensation), so its later actions depend
/// on it and it stays, or replay would diverge from them. Failures after
/// the last action record are the ones that ended the execution.
pub(crate) fn rewound_history(
    history: &[HistoryEvent],
    item: &OrchestrationWorkItem,
    now: Timestamp,
) -> Vec<HistoryEvent> {
    let reason = item.messages.iter().find_map(|m| match &m.message.kind {
        EventKind::Rewound { reason } => reason.clone(),
        _ => None,
    });
    let last_action = history.iter().rposition(|e| e.kind.is_action_record());
    let mut kept: Vec<HistoryEvent> = history
        .iter()
        .enumerate()
        .filter(|(i, e)| match e.kind {
            EventKind::ExecutionFailed { .. } => false,
            EventKind::TaskFailed { .. } | EventKind::SubOrchestrationFailed { .. } => {
                last_action.is_some_and(|a| *i < a)
            }
            _ => true,
        })
        .map(|(_, e)| e.clone())
        .collect();
    kept.push(HistoryEvent {
        event_id: 0,
        timestamp: now,
        kind: EventKind::Rewound { reason },
    });
    for (i, e) in kept.iter_mut().enumerate() {
        e.event_id = i as u64;
    }
    kept
}

/// Sorts the work a rewind would re-issue by what became of it meanwhile.
/// A child of this instance still running reports by itself and is left
/// alone (starting it again would conflict); one that completed while the
/// parent was Failed had its result dropped, which is delivered now instead
/// of running the child again. Everything else is issued again.
pub(crate) async fn settle_rewound_children(
    inner: &Inner,
    parent: &InstanceId,
    pending: Vec<Action>,
    execution_id: &str,
    now: Timestamp,
) -> Result<(Vec<Action>, Vec<crate::store::StoredMessage>), Error> {
    let mut reissue = Vec::new();
    let mut answers = Vec::new();
    for action in pending {
        if let Action::StartSubOrchestration {
            task_id,
            instance_id,
            ..
        } = &action
        {
            let child = inner.store.get_instance(instance_id, false).await?;
            if let Some(child) = child.filter(|c| c.parent_instance_id.as_ref() == Some(parent)) {
                if !child.runtime_status.is_terminal() {
                    continue;
                }
                if child.runtime_status == RuntimeStatus::Completed {
                    answers.push(crate::store::StoredMessage {
                        id: -1,
                        message: Message {
                            execution_id: Some(execution_id.to_string()),
                            visible_at: None,
                            sent_at: now,
                            kind: EventKind::SubOrchestrationCompleted {
                                task_id: *task_id,
                                result: child.output.unwrap_or(Value::Null),
                            },
                        },
                    });
                    continue;
                }
            }
        }
        reissue.push(action);
    }
    Ok((reissue, answers))
}

/// Work to re-issue after a rewind: tasks scheduled but without a result.
pub(crate) fn pending_after_rewind(history: &[HistoryEvent]) -> Vec<Action> {
    let answered: std::collections::HashSet<u64> = history
        .iter()
        .filter(|e| !e.kind.is_action_record())
        .filter_map(|e| e.kind.task_id())
        .collect();
    history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskScheduled {
                task_id,
                name,
                input,
            } if !answered.contains(task_id) => Some(Action::ScheduleActivity {
                task_id: *task_id,
                name: name.clone(),
                input: input.clone(),
            }),
            EventKind::SubOrchestrationCreated {
                task_id,
                name,
                instance_id,
                input,
            } if !answered.contains(task_id) => Some(Action::StartSubOrchestration {
                task_id: *task_id,
                name: name.clone(),
                instance_id: instance_id.clone(),
                input: input.clone(),
            }),
            EventKind::TimerCreated { task_id, fire_at } if !answered.contains(task_id) => {
                Some(Action::CreateTimer {
                    task_id: *task_id,
                    fire_at: *fire_at,
                })
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
        take_turn(
            &registry(),
            HistoryLimits::default(),
            10,
            item,
            TurnStart {
                run,
                carried: Vec::new(),
                reissued: Vec::new(),
                answers: None,
                replace_history: false,
                base: Vec::new(),
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
            stored(
                2,
                Some(EXEC),
                EventKind::TaskCompleted {
                    task_id: tasks[0],
                    result: json!(2),
                },
            ),
            stored(
                3,
                Some(EXEC),
                EventKind::TaskCompleted {
                    task_id: tasks[1],
                    result: json!(3),
                },
            ),
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

    #[test]
    fn a_rewind_applies_its_answers_and_reissues_its_work_on_the_rewound_history() {
        // A Fan whose B failed, rewound: A's result is kept, B is issued again.
        let registry = registry();
        let mut live = OrchestrationRun::new(id("fan"));
        let now = types::now();
        let mut history = live
            .turn(
                &registry,
                &[start(1, "Fan", json!(null), None)],
                now,
                HistoryLimits::default(),
                Vec::new(),
            )
            .history;
        let tasks: Vec<u64> = history.iter().filter_map(|e| e.kind.task_id()).collect();
        history.extend(
            live.turn(
                &registry,
                &[stored(
                    2,
                    Some(EXEC),
                    EventKind::TaskCompleted {
                        task_id: tasks[0],
                        result: json!(2),
                    },
                )],
                now,
                HistoryLimits::default(),
                Vec::new(),
            )
            .history,
        );
        let mut rewound = history.clone();
        rewound.push(HistoryEvent {
            event_id: history.len() as u64,
            timestamp: now,
            kind: EventKind::Rewound { reason: None },
        });
        let (run, carried) = OrchestrationRun::replay(&registry, id("fan"), &rewound);
        let pending = pending_after_rewind(&rewound);
        assert_eq!(pending.len(), 1, "only B is owed");
        let mut work = item(
            "fan",
            vec![stored(9, None, EventKind::Rewound { reason: None })],
            1,
        );
        work.runtime_status = RuntimeStatus::Failed;
        let t = take_turn(
            &registry,
            HistoryLimits::default(),
            10,
            work,
            TurnStart {
                run,
                carried,
                reissued: pending,
                answers: Some(Vec::new()),
                replace_history: true,
                base: rewound.clone(),
            },
            now,
        );
        let c = &t.commit;
        assert!(c.replace_history);
        assert_eq!(c.consumed, [9], "the rewind request is consumed");
        assert_eq!(c.activities.len(), 1);
        assert_eq!(c.activities[0].task_id, tasks[1]);
        assert_eq!(c.activities[0].name, "B");
        assert_eq!(
            &c.history[..rewound.len()],
            &rewound[..],
            "the turn extends the rewound history"
        );
        assert_eq!(c.status.runtime_status, RuntimeStatus::Running);
    }
}
