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
    let (run, carried, rewound) = if rewind {
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
        let (reissued, answers) = settled;
        (
            run,
            carried,
            Some(Rewound {
                history: rewound,
                reissued,
                answers,
            }),
        )
    } else {
        match cached {
            Some(run)
                if run.history_len == item.history_len && run.execution_id == item.execution_id =>
            {
                (run, Vec::new(), None)
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
                        (run, carried, None)
                    }
                    Err(e) if poisoned => {
                        // Fail it without its history: the failure is
                        // appended after the events the store holds.
                        tracing::warn!(instance = %id, error = %e, "history unreadable; quarantining");
                        let mut run = OrchestrationRun::new(id.clone());
                        run.execution_id = item.execution_id.clone();
                        run.history_len = item.history_len;
                        (run, Vec::new(), None)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    Ok(take_turn(
        &inner.registry,
        inner.config.history_limits,
        item,
        TurnStart {
            run,
            poisoned,
            carried,
            rewound,
        },
        now,
    ))
}

/// What a turn starts from once its run is in hand: the run (cached,
/// replayed or rewound) and the actions replay found still owed.
pub(crate) struct TurnStart {
    pub(crate) run: OrchestrationRun,
    /// The instance failed too many turns: fail it instead of running it.
    pub(crate) poisoned: bool,
    pub(crate) carried: Vec<Action>,
    /// Set for a rewind: the turn replaces the history.
    pub(crate) rewound: Option<Rewound>,
}

/// A rewind's start: the rewound history the turn's events extend, the
/// work issued again, and the answers applied in place of the inbox.
pub(crate) struct Rewound {
    pub(crate) history: Vec<HistoryEvent>,
    pub(crate) reissued: Vec<Action>,
    pub(crate) answers: Vec<StoredMessage>,
}

/// The store-free half of a turn: runs the orchestrator against the work
/// item's messages (or fails it, poisoned) and turns what it did into the
/// commit and the update. It reads no store and takes the turn's time as
/// `now` (only new execution ids and queued start messages are made
/// fresh): tested on canned work items.
pub(crate) fn take_turn(
    registry: &Registry,
    limits: HistoryLimits,
    mut item: OrchestrationWorkItem,
    start: TurnStart,
    now: Timestamp,
) -> PreparedTurn {
    let TurnStart {
        mut run,
        poisoned,
        mut carried,
        rewound,
    } = start;
    let replace_history = rewound.is_some();
    let (reissued, answers, mut base) = match rewound {
        Some(r) => (r.reissued, Some(r.answers), r.history),
        None => (Vec::new(), None, Vec::new()),
    };
    let id = item.instance_id.clone();
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
                only_if_absent: false,
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
mod tests;
