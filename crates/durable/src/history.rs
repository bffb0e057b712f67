//! History events: the append-only record of an instance from which every
//! turn is replayed.
//!
//! A message delivered to an instance (an activity result, a raised event, a
//! terminate request...) becomes a history event of the same kind when the
//! turn that consumes it commits; the actions a turn takes are recorded as
//! `*Scheduled` / `*Created` events. Replaying the orchestrator against the
//! history must reproduce the same actions, which is how divergence is caught.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::{FailureDetails, InstanceId, Timestamp};

/// Links a sub-orchestration to the task of its parent waiting for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent instance.
    pub instance_id: InstanceId,
    /// The parent's execution that started the child.
    pub execution_id: String,
    /// The parent's task id for the child.
    pub task_id: u64,
}

/// What happened. Serialized with a `type` tag so stored histories stay
/// readable and tolerant of new fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    /// The first event of each execution.
    ExecutionStarted {
        /// Orchestration name.
        name: String,
        /// Its input.
        input: Value,
        /// Identifies this execution of the instance.
        execution_id: String,
        /// Set for sub-orchestrations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentLink>,
    },
    /// Marks the start of a turn. Its timestamp is the orchestrator's
    /// replay-safe "now" for that turn.
    OrchestratorStarted,
    /// An activity was scheduled (action recorded).
    TaskScheduled {
        /// Sequence number of the action within the execution.
        task_id: u64,
        /// Activity name.
        name: String,
        /// Activity input.
        input: Value,
    },
    /// An activity returned a value.
    TaskCompleted {
        /// The task it answers.
        task_id: u64,
        /// The value.
        result: Value,
    },
    /// An activity returned an error, panicked or was quarantined.
    TaskFailed {
        /// The task it answers.
        task_id: u64,
        /// Why.
        error: FailureDetails,
    },
    /// A durable timer was created (action recorded).
    TimerCreated {
        /// Sequence number of the action.
        task_id: u64,
        /// When it fires.
        #[serde(with = "crate::types::ts")]
        fire_at: Timestamp,
    },
    /// A durable timer fired.
    TimerFired {
        /// The timer.
        task_id: u64,
        /// When it was due.
        #[serde(with = "crate::types::ts")]
        fire_at: Timestamp,
    },
    /// A sub-orchestration was started (action recorded).
    SubOrchestrationCreated {
        /// Sequence number of the action.
        task_id: u64,
        /// Orchestration name.
        name: String,
        /// The child's instance id.
        instance_id: InstanceId,
        /// The child's input.
        input: Value,
    },
    /// A sub-orchestration completed.
    SubOrchestrationCompleted {
        /// The task it answers.
        task_id: u64,
        /// Its output.
        result: Value,
    },
    /// A sub-orchestration failed (or could not be started).
    SubOrchestrationFailed {
        /// The task it answers.
        task_id: u64,
        /// Why.
        error: FailureDetails,
    },
    /// An external event was delivered.
    EventRaised {
        /// The event name the orchestrator waits for.
        name: String,
        /// Its payload.
        input: Value,
    },
    /// The instance was suspended.
    Suspended {
        /// Caller's reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// The instance was resumed.
    Resumed {
        /// Caller's reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// The instance was terminated.
    Terminated {
        /// Caller's reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// A Failed instance was rewound: its failed tasks run again.
    Rewound {
        /// Caller's reason.
        #[serde(default)]
        reason: Option<String>,
    },
    /// The orchestrator called continue-as-new with this input.
    ContinuedAsNew {
        /// Input of the next execution.
        input: Value,
    },
    /// The orchestrator returned this output.
    ExecutionCompleted {
        /// Its output.
        output: Value,
    },
    /// The execution failed.
    ExecutionFailed {
        /// Why.
        error: FailureDetails,
    },
}

impl EventKind {
    /// The event's type name, as shown in status `historyEvents`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ExecutionStarted { .. } => "ExecutionStarted",
            Self::OrchestratorStarted => "OrchestratorStarted",
            Self::TaskScheduled { .. } => "TaskScheduled",
            Self::TaskCompleted { .. } => "TaskCompleted",
            Self::TaskFailed { .. } => "TaskFailed",
            Self::TimerCreated { .. } => "TimerCreated",
            Self::TimerFired { .. } => "TimerFired",
            Self::SubOrchestrationCreated { .. } => "SubOrchestrationInstanceCreated",
            Self::SubOrchestrationCompleted { .. } => "SubOrchestrationInstanceCompleted",
            Self::SubOrchestrationFailed { .. } => "SubOrchestrationInstanceFailed",
            Self::EventRaised { .. } => "EventRaised",
            Self::Suspended { .. } => "ExecutionSuspended",
            Self::Resumed { .. } => "ExecutionResumed",
            Self::Terminated { .. } => "ExecutionTerminated",
            Self::Rewound { .. } => "ExecutionRewound",
            Self::ContinuedAsNew { .. } => "ContinuedAsNew",
            Self::ExecutionCompleted { .. } => "ExecutionCompleted",
            Self::ExecutionFailed { .. } => "ExecutionFailed",
        }
    }

    /// The task id this event schedules or answers, if any.
    pub fn task_id(&self) -> Option<u64> {
        match self {
            Self::TaskScheduled { task_id, .. }
            | Self::TaskCompleted { task_id, .. }
            | Self::TaskFailed { task_id, .. }
            | Self::TimerCreated { task_id, .. }
            | Self::TimerFired { task_id, .. }
            | Self::SubOrchestrationCreated { task_id, .. }
            | Self::SubOrchestrationCompleted { task_id, .. }
            | Self::SubOrchestrationFailed { task_id, .. } => Some(*task_id),
            _ => None,
        }
    }

    /// True for events that record an action the orchestrator took.
    pub fn is_action_record(&self) -> bool {
        matches!(
            self,
            Self::TaskScheduled { .. }
                | Self::TimerCreated { .. }
                | Self::SubOrchestrationCreated { .. }
        )
    }
}

/// One entry of an instance's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Position in the execution's history, from 0.
    pub event_id: u64,
    /// When it was recorded.
    #[serde(with = "crate::types::ts")]
    pub timestamp: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A message waiting in an instance's inbox. It becomes a history event
/// when a turn consumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The execution it is meant for; `None` means whichever is current.
    /// Results for an execution that has since been replaced are dropped.
    pub execution_id: Option<String>,
    /// Not delivered before this time (durable timers).
    #[serde(default, with = "crate::types::ts::option")]
    pub visible_at: Option<Timestamp>,
    /// When it was sent.
    #[serde(with = "crate::types::ts")]
    pub sent_at: Timestamp,
    /// The content.
    pub kind: EventKind,
}

impl Message {
    /// A message for the current execution, visible at once.
    pub fn now(kind: EventKind) -> Self {
        Self {
            execution_id: None,
            visible_at: None,
            sent_at: crate::types::now(),
            kind,
        }
    }
}
