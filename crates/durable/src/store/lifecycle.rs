//! The lifecycle outbox: which status changes of an instance are events
//! (`Started`, `Completed`, `Failed`, `Terminated`), and the record a store
//! keeps of each.
//!
//! # Why an outbox
//! A host that publishes lifecycle events (galaxy-cloud's system topic)
//! must publish exactly the changes that were committed: an event sent
//! after the commit is lost if the process dies in between, one sent
//! before may describe a turn that never committed. So a store opened with
//! its outbox on writes one row per event in the same transaction as the
//! status change; the host reads the rows, publishes them (deduplicated by
//! [`LifecycleEvent::event_id`]) and acknowledges them, which deletes them.
//! A crash between publishing and acknowledging publishes again, under the
//! same id.
//!
//! [`transitions`] is the one rule both stores apply, tested here on
//! canned cases.

use serde::Serialize;

use crate::types::{FailureDetails, RuntimeStatus, Timestamp};

/// One lifecycle event as a store's outbox holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleEvent {
    /// The outbox row (what [`crate::store::Store::ack_lifecycle`] takes).
    #[serde(skip)]
    pub seq: i64,
    /// The instance.
    pub instance_id: String,
    /// Its orchestration's name.
    pub name: String,
    /// The execution the event is about.
    pub execution_id: String,
    /// `Running` for `Started`, or the terminal status reached.
    pub runtime_status: RuntimeStatus,
    /// History events after the commit (distinguishes a rewound
    /// instance's second start from its first).
    pub history_events: u64,
    /// When the change committed.
    pub at: Timestamp,
    /// Why it failed, for `Failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureDetails>,
}

impl LifecycleEvent {
    /// The event's type: `Orchestration.Started`, `.Completed`, `.Failed`
    /// or `.Terminated`.
    pub fn event_type(&self) -> &'static str {
        match self.runtime_status {
            RuntimeStatus::Completed => "Orchestration.Completed",
            RuntimeStatus::Failed => "Orchestration.Failed",
            RuntimeStatus::Terminated => "Orchestration.Terminated",
            _ => "Orchestration.Started",
        }
    }

    /// A stable id: the same change gives the same id however often it is
    /// read, and two changes never share one (history only grows within an
    /// execution).
    pub fn event_id(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.instance_id,
            self.execution_id,
            self.runtime_status.as_str(),
            self.history_events
        )
    }
}

/// The lifecycle events a commit makes, in order, from the status before
/// it (`None`: the instance is created by this commit), whether the
/// execution stayed the same, and the status after it.
///
/// A start is a move into `Running` from anything but `Running` or
/// `Suspended` (a resume is not a start), or a new execution; an instance
/// that finishes in the turn that started it gets both events.
pub fn transitions(
    before: Option<RuntimeStatus>,
    same_execution: bool,
    after: RuntimeStatus,
) -> Vec<RuntimeStatus> {
    use RuntimeStatus::*;
    let was_running = same_execution && matches!(before, Some(Running | Suspended));
    let unchanged = same_execution && before == Some(after);
    let started = !(was_running || unchanged);
    match after {
        Running if started => vec![Running],
        Completed | Failed if before == Some(after) && same_execution => vec![],
        Completed | Failed if started && before != Some(Failed) => vec![Running, after],
        Completed | Failed => vec![after],
        Terminated if before != Some(Terminated) => vec![Terminated],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RuntimeStatus::*;

    #[test]
    fn first_turns() {
        assert_eq!(transitions(None, true, Running), vec![Running]);
        assert_eq!(transitions(Some(Pending), true, Running), vec![Running]);
        assert_eq!(transitions(None, true, Completed), vec![Running, Completed]);
        assert_eq!(
            transitions(Some(Pending), true, Failed),
            vec![Running, Failed]
        );
        assert_eq!(
            transitions(Some(Pending), true, Terminated),
            vec![Terminated]
        );
    }

    #[test]
    fn later_turns() {
        assert_eq!(transitions(Some(Running), true, Running), vec![]);
        assert_eq!(transitions(Some(Running), true, Completed), vec![Completed]);
        assert_eq!(transitions(Some(Running), true, Failed), vec![Failed]);
        assert_eq!(
            transitions(Some(Running), true, Terminated),
            vec![Terminated]
        );
        assert_eq!(
            transitions(Some(Suspended), true, Terminated),
            vec![Terminated]
        );
        assert_eq!(transitions(Some(Running), true, Suspended), vec![]);
    }

    #[test]
    fn resume_is_not_a_start_but_rewind_and_new_executions_are() {
        assert_eq!(transitions(Some(Suspended), true, Running), vec![]);
        assert_eq!(transitions(Some(Failed), true, Running), vec![Running]);
        assert_eq!(transitions(Some(Running), false, Running), vec![Running]);
        assert_eq!(
            transitions(Some(Running), false, Completed),
            vec![Running, Completed]
        );
    }

    #[test]
    fn terminal_instances_taking_late_messages_make_no_events() {
        assert_eq!(transitions(Some(Completed), true, Completed), vec![]);
        assert_eq!(transitions(Some(Failed), true, Failed), vec![]);
        assert_eq!(transitions(Some(Terminated), true, Terminated), vec![]);
    }

    #[test]
    fn ids_tell_changes_apart() {
        let e = |status, history_events| LifecycleEvent {
            seq: 1,
            instance_id: "i".into(),
            name: "O".into(),
            execution_id: "e".into(),
            runtime_status: status,
            history_events,
            at: chrono::Utc::now(),
            failure: None,
        };
        assert_eq!(e(Running, 3).event_type(), "Orchestration.Started");
        assert_eq!(e(Terminated, 3).event_type(), "Orchestration.Terminated");
        assert_ne!(e(Running, 3).event_id(), e(Running, 9).event_id());
        assert_ne!(e(Running, 3).event_id(), e(Completed, 3).event_id());
        assert_eq!(e(Failed, 4).event_id(), e(Failed, 4).event_id());
    }
}
