//! View models for an orchestration monitor: what a UI row, its task
//! children and its timeline show, built from an instance's status and
//! history and kept current by folding [`InstanceUpdate`]s into it.
//!
//! Pure: no I/O, no clock. The desktop app sends these as they are (JSON,
//! camelCase) so the front end renders and never interprets history itself.
//!
//! Invariants:
//! - A view's `timeline` holds the history events of the current execution
//!   in `event_id` order, each once: [`InstanceView::apply`] skips events it
//!   already has, so an update that overlaps a fresh read is harmless.
//! - `version` (the number of history events) only grows within an
//!   execution, so a consumer keeps the view with the larger
//!   `(created_at, version)` and can apply snapshots and updates in any order.

use durable::{
    EventKind, FailureDetails, HistoryEvent, InstanceStatus, InstanceUpdate, RuntimeStatus,
    Timestamp,
};
use serde::Serialize;
use serde_json::Value;

use crate::coords::Coords;
use crate::workload::{CreateGalaxyContext, GALAXY_CREATE_IMPL};

/// Where a task (activity, timer or sub-orchestration) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TaskState {
    /// Scheduled, no result yet.
    Scheduled,
    /// Returned a value.
    Completed,
    /// Returned an error.
    Failed,
}

/// One task of an instance: an activity call, a timer or a sub-orchestration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// The task id (order of scheduling).
    pub task_id: u64,
    /// Activity or orchestration name, or `timer`.
    pub name: String,
    /// Where it stands.
    pub state: TaskState,
    /// When it was scheduled.
    pub scheduled_at: Timestamp,
    /// When its result was recorded.
    pub finished_at: Option<Timestamp>,
    /// `finished_at - scheduled_at`, in milliseconds.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One history event placed on a time axis.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// Position in the history.
    pub event_id: u64,
    /// The event type (`TaskScheduled`, `ExecutionCompleted`, ...).
    pub kind: String,
    /// What happened, for people ("Utility_Name completed").
    pub label: String,
    /// When it was recorded.
    pub at: Timestamp,
    /// Milliseconds since the instance was created.
    pub offset_ms: i64,
    /// For a result: milliseconds since the task was scheduled; for the end
    /// of the execution: milliseconds since the instance was created.
    pub duration_ms: Option<i64>,
    /// The task it schedules or answers.
    pub task_id: Option<u64>,
    /// True for failures.
    pub error: bool,
}

/// The galaxy an instance of `Galaxy_Create` writes, known once it has
/// scheduled `Galaxy_Create_Impl`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GalaxyRef {
    /// Partition key of the row.
    pub partition_key: String,
    /// Row key of the row.
    pub row_key: String,
    /// The galaxy's name.
    pub name: String,
    /// Where it is.
    pub coords: Coords,
}

/// Everything a monitor shows about one instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The instance id.
    pub instance_id: String,
    /// The orchestration name.
    pub name: String,
    /// Where it is in its life.
    pub runtime_status: RuntimeStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub last_updated_at: Timestamp,
    /// Created to finished, in milliseconds, once terminal.
    pub duration_ms: Option<i64>,
    /// Number of history events seen (see the module invariants).
    pub version: u64,
    /// Its tasks in scheduling order; parallel ones overlap in time.
    pub tasks: Vec<TaskView>,
    /// Its history on a time axis.
    pub timeline: Vec<TimelineEntry>,
    /// The input of the execution.
    pub input: Value,
    /// The output once finished.
    pub output: Option<Value>,
    /// The last custom status.
    pub custom_status: Option<Value>,
    /// Why it failed.
    pub failure: Option<FailureDetails>,
    /// The galaxy it creates, for `Galaxy_Create`.
    pub galaxy: Option<GalaxyRef>,
}

/// What [`InstanceView::apply`] made of an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The view now reflects the update.
    Applied,
    /// The update does not follow the view (history missing in between, or
    /// a new execution): read the instance again and rebuild the view.
    NeedsReload,
}

impl InstanceView {
    /// The view of a freshly created instance (its first update).
    pub fn created(update: &InstanceUpdate) -> Self {
        let mut view = Self {
            instance_id: update.instance_id.to_string(),
            name: update.name.clone(),
            runtime_status: update.runtime_status,
            created_at: update.at,
            last_updated_at: update.at,
            duration_ms: None,
            version: 0,
            tasks: Vec::new(),
            timeline: Vec::new(),
            input: Value::Null,
            output: None,
            custom_status: None,
            failure: None,
            galaxy: None,
        };
        view.absorb(update);
        view
    }

    /// The view of an instance read from a store. Without its history the
    /// view has no tasks or timeline.
    pub fn from_status(status: &InstanceStatus) -> Self {
        let mut view = Self {
            instance_id: status.instance_id.to_string(),
            name: status.name.clone(),
            runtime_status: status.runtime_status,
            created_at: status.created_at,
            last_updated_at: status.last_updated_at,
            duration_ms: None,
            version: 0,
            tasks: Vec::new(),
            timeline: Vec::new(),
            input: status.input.clone(),
            output: status.output.clone(),
            custom_status: status.custom_status.clone(),
            failure: status.failure.clone(),
            galaxy: None,
        };
        for event in status.history.iter().flatten() {
            view.push_event(event);
        }
        if status.history.is_none() {
            view.version = status.history_events;
        }
        view.finish();
        view
    }

    /// True when the update starts a new life of the instance (a creation or
    /// a restart under the same id), which this view cannot follow.
    pub fn is_creation(update: &InstanceUpdate) -> bool {
        update.runtime_status == RuntimeStatus::Pending && update.history.is_empty()
    }

    /// Folds an update into the view. Events the view already has are
    /// skipped; a gap asks for a reload.
    pub fn apply(&mut self, update: &InstanceUpdate) -> Applied {
        if Self::is_creation(update) && update.at != self.created_at {
            return Applied::NeedsReload;
        }
        if let Some(first) = update.history.first() {
            if first.event_id > self.version
                || matches!(first.kind, EventKind::Rewound { .. })
                || (first.event_id == 0 && self.version > 0)
            {
                return Applied::NeedsReload;
            }
        }
        for event in &update.history {
            if event.event_id >= self.version {
                self.push_event(event);
            }
        }
        self.absorb(update);
        Applied::Applied
    }

    /// True once the instance will take no more turns.
    pub fn is_terminal(&self) -> bool {
        self.runtime_status.is_terminal()
    }

    fn absorb(&mut self, update: &InstanceUpdate) {
        self.runtime_status = update.runtime_status;
        self.last_updated_at = self.last_updated_at.max(update.at);
        if update.output.is_some() {
            self.output = update.output.clone();
        }
        if update.custom_status.is_some() {
            self.custom_status = update.custom_status.clone();
        }
        if update.failure.is_some() {
            self.failure = update.failure.clone();
        }
        self.finish();
    }

    fn finish(&mut self) {
        self.duration_ms = self
            .runtime_status
            .is_terminal()
            .then(|| millis(self.created_at, self.last_updated_at));
    }

    fn push_event(&mut self, event: &HistoryEvent) {
        let at = event.timestamp;
        let mut duration_ms = None;
        let mut error = false;
        let label = match &event.kind {
            EventKind::ExecutionStarted { name, input, .. } => {
                self.input = input.clone();
                format!("{name} started")
            }
            EventKind::OrchestratorStarted => "turn".to_string(),
            EventKind::TaskScheduled {
                task_id,
                name,
                input,
            } => {
                if name == GALAXY_CREATE_IMPL {
                    if let Ok(c) = serde_json::from_value::<CreateGalaxyContext>(input.clone()) {
                        self.galaxy = Some(GalaxyRef {
                            partition_key: c.partition_key,
                            row_key: c.row_key,
                            name: c.name,
                            coords: c.coords,
                        });
                    }
                }
                self.schedule(*task_id, name, at);
                format!("{name} scheduled")
            }
            EventKind::TimerCreated { task_id, .. } => {
                self.schedule(*task_id, "timer", at);
                "timer created".to_string()
            }
            EventKind::SubOrchestrationCreated { task_id, name, .. } => {
                self.schedule(*task_id, name, at);
                format!("{name} started as sub-orchestration")
            }
            EventKind::TaskCompleted { task_id, .. }
            | EventKind::TimerFired { task_id, .. }
            | EventKind::SubOrchestrationCompleted { task_id, .. } => {
                let (name, took) = self.finish_task(*task_id, at, None);
                duration_ms = took;
                if matches!(event.kind, EventKind::TimerFired { .. }) {
                    "timer fired".to_string()
                } else {
                    format!("{name} completed")
                }
            }
            EventKind::TaskFailed { task_id, error: e }
            | EventKind::SubOrchestrationFailed { task_id, error: e } => {
                let (name, took) = self.finish_task(*task_id, at, Some(e.to_string()));
                duration_ms = took;
                error = true;
                format!("{name} failed: {}", e.message)
            }
            EventKind::EventRaised { name, .. } => format!("event '{name}' raised"),
            EventKind::Suspended { reason } => with_reason("suspended", reason),
            EventKind::Resumed { reason } => with_reason("resumed", reason),
            EventKind::Terminated { reason } => {
                duration_ms = Some(millis(self.created_at, at));
                with_reason("terminated", reason)
            }
            EventKind::Rewound { reason } => with_reason("rewound", reason),
            EventKind::ContinuedAsNew { .. } => "continued as new".to_string(),
            EventKind::ExecutionCompleted { .. } => {
                duration_ms = Some(millis(self.created_at, at));
                "completed".to_string()
            }
            EventKind::ExecutionFailed { error: e } => {
                duration_ms = Some(millis(self.created_at, at));
                error = true;
                format!("failed: {e}")
            }
        };
        self.timeline.push(TimelineEntry {
            event_id: event.event_id,
            kind: event.kind.type_name().to_string(),
            label,
            at,
            offset_ms: millis(self.created_at, at),
            duration_ms,
            task_id: event.kind.task_id(),
            error,
        });
        self.version = self.version.max(event.event_id + 1);
    }

    fn schedule(&mut self, task_id: u64, name: &str, at: Timestamp) {
        if self.tasks.iter().any(|t| t.task_id == task_id) {
            return;
        }
        self.tasks.push(TaskView {
            task_id,
            name: name.to_string(),
            state: TaskState::Scheduled,
            scheduled_at: at,
            finished_at: None,
            duration_ms: None,
            error: None,
        });
    }

    fn finish_task(
        &mut self,
        task_id: u64,
        at: Timestamp,
        error: Option<String>,
    ) -> (String, Option<i64>) {
        match self.tasks.iter_mut().find(|t| t.task_id == task_id) {
            Some(task) => {
                task.state = if error.is_some() {
                    TaskState::Failed
                } else {
                    TaskState::Completed
                };
                task.finished_at = Some(at);
                task.duration_ms = Some(millis(task.scheduled_at, at));
                task.error = error;
                (task.name.clone(), task.duration_ms)
            }
            None => (format!("task {task_id}"), None),
        }
    }
}

fn with_reason(what: &str, reason: &Option<String>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!("{what}: {r}"),
        _ => what.to_string(),
    }
}

fn millis(from: Timestamp, to: Timestamp) -> i64 {
    (to - from).num_milliseconds().max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable::{HistoryEvent, InstanceId};
    use serde_json::json;

    fn at(ms: i64) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn ev(event_id: u64, ms: i64, kind: EventKind) -> HistoryEvent {
        HistoryEvent {
            event_id,
            timestamp: at(ms),
            kind,
        }
    }

    fn update(status: RuntimeStatus, ms: i64, history: Vec<HistoryEvent>) -> InstanceUpdate {
        InstanceUpdate {
            instance_id: InstanceId::new("i1").unwrap(),
            name: "Galaxy_Create".into(),
            runtime_status: status,
            history,
            output: None,
            custom_status: None,
            failure: None,
            at: at(ms),
        }
    }

    fn impl_input() -> Value {
        json!({"partitionKey": "galaxies", "rowKey": "r1", "name": "Kestrel Reach",
               "coords": {"x": 412, "y": -88, "z": 19}})
    }

    /// The turns of a Galaxy_Create run: start + fan-out, fan-in, write, end.
    fn turns() -> Vec<Vec<HistoryEvent>> {
        vec![
            vec![
                ev(
                    0,
                    1,
                    EventKind::ExecutionStarted {
                        name: "Galaxy_Create".into(),
                        input: json!(null),
                        execution_id: "e".into(),
                        parent: None,
                    },
                ),
                ev(1, 1, EventKind::OrchestratorStarted),
                ev(
                    2,
                    1,
                    EventKind::TaskScheduled {
                        task_id: 0,
                        name: "Utility_Coords".into(),
                        input: json!(null),
                    },
                ),
                ev(
                    3,
                    1,
                    EventKind::TaskScheduled {
                        task_id: 1,
                        name: "Utility_Name".into(),
                        input: json!(null),
                    },
                ),
            ],
            vec![
                ev(4, 3, EventKind::OrchestratorStarted),
                ev(
                    5,
                    3,
                    EventKind::TaskCompleted {
                        task_id: 0,
                        result: json!({"x": 1, "y": 2, "z": 3}),
                    },
                ),
                ev(
                    6,
                    3,
                    EventKind::TaskCompleted {
                        task_id: 1,
                        result: json!("Kestrel Reach"),
                    },
                ),
                ev(
                    7,
                    3,
                    EventKind::TaskScheduled {
                        task_id: 2,
                        name: "Galaxy_Create_Impl".into(),
                        input: impl_input(),
                    },
                ),
            ],
            vec![
                ev(8, 6, EventKind::OrchestratorStarted),
                ev(
                    9,
                    6,
                    EventKind::TaskCompleted {
                        task_id: 2,
                        result: json!(true),
                    },
                ),
                ev(
                    10,
                    6,
                    EventKind::ExecutionCompleted {
                        output: json!("Galaxy created!"),
                    },
                ),
            ],
        ]
    }

    fn run_updates() -> Vec<InstanceUpdate> {
        let mut out = vec![update(RuntimeStatus::Pending, 0, vec![])];
        let t = turns();
        out.push(update(RuntimeStatus::Running, 1, t[0].clone()));
        out.push(update(RuntimeStatus::Running, 3, t[1].clone()));
        let mut last = update(RuntimeStatus::Completed, 6, t[2].clone());
        last.output = Some(json!("Galaxy created!"));
        out.push(last);
        out
    }

    #[test]
    fn a_galaxy_create_run_folds_into_tasks_timeline_and_galaxy() {
        let updates = run_updates();
        let mut view = InstanceView::created(&updates[0]);
        assert_eq!(view.runtime_status, RuntimeStatus::Pending);
        assert_eq!(view.version, 0);
        for u in &updates[1..] {
            assert_eq!(view.apply(u), Applied::Applied);
        }
        assert_eq!(view.runtime_status, RuntimeStatus::Completed);
        assert_eq!(view.duration_ms, Some(6));
        assert_eq!(view.version, 11);
        let tasks: Vec<_> = view
            .tasks
            .iter()
            .map(|t| (t.name.as_str(), t.state, t.duration_ms))
            .collect();
        assert_eq!(
            tasks,
            vec![
                ("Utility_Coords", TaskState::Completed, Some(2)),
                ("Utility_Name", TaskState::Completed, Some(2)),
                ("Galaxy_Create_Impl", TaskState::Completed, Some(3)),
            ]
        );
        let labels: Vec<_> = view
            .timeline
            .iter()
            .filter(|e| e.kind != "OrchestratorStarted")
            .map(|e| (e.label.as_str(), e.offset_ms, e.duration_ms))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("Galaxy_Create started", 1, None),
                ("Utility_Coords scheduled", 1, None),
                ("Utility_Name scheduled", 1, None),
                ("Utility_Coords completed", 3, Some(2)),
                ("Utility_Name completed", 3, Some(2)),
                ("Galaxy_Create_Impl scheduled", 3, None),
                ("Galaxy_Create_Impl completed", 6, Some(3)),
                ("completed", 6, Some(6)),
            ]
        );
        let g = view.galaxy.as_ref().unwrap();
        assert_eq!(
            (g.name.as_str(), g.row_key.as_str()),
            ("Kestrel Reach", "r1")
        );
        assert_eq!(view.output, Some(json!("Galaxy created!")));
    }

    #[test]
    fn overlapping_updates_add_each_event_once() {
        let updates = run_updates();
        let mut view = InstanceView::created(&updates[0]);
        view.apply(&updates[1]);
        view.apply(&updates[1]);
        view.apply(&updates[2]);
        assert_eq!(view.timeline.len(), 8);
        assert_eq!(view.tasks.len(), 3);
    }

    #[test]
    fn a_gap_in_the_history_asks_for_a_reload() {
        let updates = run_updates();
        let mut view = InstanceView::created(&updates[0]);
        assert_eq!(view.apply(&updates[2]), Applied::NeedsReload);
        assert_eq!(view.version, 0, "nothing applied");
    }

    #[test]
    fn a_stored_status_with_history_gives_the_same_view_as_the_updates() {
        let updates = run_updates();
        let mut live = InstanceView::created(&updates[0]);
        for u in &updates[1..] {
            live.apply(u);
        }
        let status = InstanceStatus {
            instance_id: InstanceId::new("i1").unwrap(),
            name: "Galaxy_Create".into(),
            execution_id: "e".into(),
            runtime_status: RuntimeStatus::Completed,
            input: json!(null),
            output: Some(json!("Galaxy created!")),
            custom_status: None,
            failure: None,
            created_at: at(0),
            last_updated_at: at(6),
            parent_instance_id: None,
            history_events: 11,
            history_bytes: 0,
            history: Some(turns().concat()),
        };
        assert_eq!(InstanceView::from_status(&status), live);
    }

    #[test]
    fn a_failed_task_and_execution_carry_their_message() {
        let mut view = InstanceView::created(&update(RuntimeStatus::Pending, 0, vec![]));
        view.apply(&update(RuntimeStatus::Running, 1, turns()[0].clone()));
        let mut failed = update(
            RuntimeStatus::Failed,
            2,
            vec![
                ev(4, 2, EventKind::OrchestratorStarted),
                ev(
                    5,
                    2,
                    EventKind::TaskFailed {
                        task_id: 1,
                        error: FailureDetails::new("ActivityFailed", "no names left"),
                    },
                ),
                ev(
                    6,
                    2,
                    EventKind::ExecutionFailed {
                        error: FailureDetails::new("ActivityFailed", "Utility_Name: no names left"),
                    },
                ),
            ],
        );
        failed.failure = Some(FailureDetails::new(
            "ActivityFailed",
            "Utility_Name: no names left",
        ));
        view.apply(&failed);
        assert_eq!(view.runtime_status, RuntimeStatus::Failed);
        assert_eq!(view.tasks[1].state, TaskState::Failed);
        assert_eq!(
            view.tasks[1].error.as_deref(),
            Some("ActivityFailed: no names left")
        );
        assert!(view.timeline.iter().filter(|e| e.error).count() == 2);
        assert_eq!(
            view.failure.as_ref().map(|f| f.message.as_str()),
            Some("Utility_Name: no names left")
        );
    }

    #[test]
    fn views_serialize_in_camel_case_for_the_front_end() {
        let view = InstanceView::created(&update(RuntimeStatus::Pending, 0, vec![]));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["instanceId"], "i1");
        assert_eq!(json["runtimeStatus"], "Pending");
        assert!(json["createdAt"].is_string());
    }
}
