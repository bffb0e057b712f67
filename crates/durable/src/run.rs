//! One instance's orchestrator in memory: replay of its history and the
//! execution of a turn. Pure: no I/O, no clock (the caller passes "now").
//!
//! Events are applied one at a time and the orchestrator is polled after each
//! one that can unblock it, both live and in replay. That keeps races
//! deterministic: whichever result came first in history wins, every time.
//!
//! A run is kept in the engine's cache between turns, so a long orchestration
//! costs O(1) per step instead of a replay of its whole history.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use serde_json::Value;

use crate::context::{Action, OrchestrationContext};
use crate::history::{EventKind, HistoryEvent, ParentLink};
use crate::registry::Registry;
use crate::store::StoredMessage;
use crate::types::{FailureDetails, InstanceId, RuntimeStatus, Timestamp};

type OrchestratorFuture = Pin<Box<dyn Future<Output = Result<Value, FailureDetails>> + Send>>;

/// How an execution ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    Completed(Value),
    Failed(FailureDetails),
    ContinuedAsNew(Value),
    Terminated(Option<String>),
}

impl Outcome {
    pub(crate) fn status(&self) -> RuntimeStatus {
        match self {
            Outcome::Completed(_) => RuntimeStatus::Completed,
            Outcome::Failed(_) => RuntimeStatus::Failed,
            Outcome::ContinuedAsNew(_) => RuntimeStatus::ContinuedAsNew,
            Outcome::Terminated(_) => RuntimeStatus::Terminated,
        }
    }

    fn record(&self) -> EventKind {
        match self.clone() {
            Outcome::Completed(output) => EventKind::ExecutionCompleted { output },
            Outcome::Failed(error) => EventKind::ExecutionFailed { error },
            Outcome::ContinuedAsNew(input) => EventKind::ContinuedAsNew { input },
            // The Terminated message itself is the record.
            Outcome::Terminated(_) => EventKind::OrchestratorStarted,
        }
    }
}

/// Sets a flag when woken: the run polls the orchestrator only then.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Limits that fail an instance before its history grows without bound.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    /// Most history events per execution.
    pub max_events: u64,
    /// Most serialized history bytes per execution.
    pub max_bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// An instance's orchestrator with its replay state.
pub(crate) struct OrchestrationRun {
    pub(crate) instance_id: InstanceId,
    pub(crate) execution_id: String,
    pub(crate) name: String,
    pub(crate) parent: Option<ParentLink>,
    ctx: Option<OrchestrationContext>,
    fut: Option<OrchestratorFuture>,
    flag: Arc<Flag>,
    waker: Waker,
    now: Timestamp,
    replaying: bool,
    recorded: HashMap<u64, EventKind>,
    pub(crate) suspended: bool,
    buffered: Vec<EventKind>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) history_len: u64,
    pub(crate) history_bytes: u64,
}

/// What a turn produced.
pub(crate) struct TurnResult {
    /// Events to append, numbered from the run's previous length.
    pub(crate) history: Vec<HistoryEvent>,
    /// New actions to turn into work.
    pub(crate) actions: Vec<Action>,
    /// Messages not applied because the execution had already ended in
    /// this turn. After a continue-as-new the engine leaves those addressed
    /// to no particular execution (events, terminate...) for the next one.
    pub(crate) unapplied: Vec<i64>,
}

impl OrchestrationRun {
    /// An empty run, waiting for its `ExecutionStarted`.
    pub(crate) fn new(instance_id: InstanceId) -> Self {
        let flag = Arc::new(Flag::default());
        Self {
            instance_id,
            execution_id: String::new(),
            name: String::new(),
            parent: None,
            ctx: None,
            fut: None,
            waker: Waker::from(flag.clone()),
            flag,
            now: Timestamp::default(),
            replaying: false,
            recorded: HashMap::new(),
            suspended: false,
            buffered: Vec::new(),
            outcome: None,
            history_len: 0,
            history_bytes: 0,
        }
    }

    /// Rebuilds a run by replaying a whole history.
    pub(crate) fn replay(
        registry: &Registry,
        instance_id: InstanceId,
        history: &[HistoryEvent],
    ) -> (Self, Vec<Action>) {
        let mut run = Self::new(instance_id);
        run.recorded = history
            .iter()
            .filter(|e| e.kind.is_action_record())
            .filter_map(|e| e.kind.task_id().map(|id| (id, e.kind.clone())))
            .collect();
        run.replaying = true;
        let mut actions = Vec::new();
        for event in history {
            run.history_bytes += event_size(event);
            run.history_len += 1;
            run.apply(registry, event);
            actions.extend(run.take_actions());
        }
        run.replaying = false;
        // What history recorded and the code did not issue again: a
        // deterministic orchestrator re-issues every action of its
        // history, so the code changed (it dropped or moved a call, or
        // returns earlier). Going on would give a later action a task id
        // whose recorded result belongs to another.
        let mut leftover = std::mem::take(&mut run.recorded);
        if let Some(ctx) = &run.ctx {
            let mut s = ctx.lock();
            s.replaying = false;
            leftover.extend(s.recorded.drain());
        }
        let settled = matches!(
            run.outcome,
            Some(Outcome::Failed(_) | Outcome::Terminated(_))
        );
        if let Some(task_id) = leftover.keys().min().filter(|_| !settled) {
            let msg = format!(
                "task {task_id}: history recorded {}, the orchestrator no longer issues it",
                crate::context::describe(&leftover[task_id])
            );
            run.fail(FailureDetails::new("NonDeterminism", msg));
        }
        (run, actions)
    }

    /// The current custom status.
    pub(crate) fn custom_status(&self) -> Option<Value> {
        self.ctx
            .as_ref()
            .and_then(|c| c.lock().custom_status.clone())
    }

    /// Whether the run has started an execution.
    pub(crate) fn started(&self) -> bool {
        !self.execution_id.is_empty()
    }

    /// The status the instance has after the events applied so far.
    pub(crate) fn status(&self) -> RuntimeStatus {
        match &self.outcome {
            Some(o) => o.status(),
            None if self.suspended => RuntimeStatus::Suspended,
            None if self.started() => RuntimeStatus::Running,
            None => RuntimeStatus::Pending,
        }
    }

    /// Runs one turn: applies the messages in order (dropping stale ones) and
    /// returns the history delta and the new actions.
    pub(crate) fn turn(
        &mut self,
        registry: &Registry,
        messages: &[StoredMessage],
        now: Timestamp,
        limits: HistoryLimits,
        carried: Vec<Action>,
    ) -> TurnResult {
        let mut history = Vec::new();
        let mut actions = Vec::new();
        let push = |run: &mut Self, kind: EventKind, history: &mut Vec<HistoryEvent>| {
            let event = HistoryEvent {
                event_id: run.history_len,
                timestamp: now,
                kind,
            };
            run.history_len += 1;
            run.history_bytes += event_size(&event);
            history.push(event);
        };
        push(self, EventKind::OrchestratorStarted, &mut history);
        self.apply(registry, history.last().expect("just pushed"));
        // Actions issued during a replay that history had not recorded
        // (e.g. after a rewind) belong to this turn.
        for action in carried {
            push(self, action.to_event(), &mut history);
            actions.push(action);
        }
        // Nothing applies before the execution starts, so its start message
        // goes first. Messages left over from a continue-as-new are older
        // than the start message of the execution they are kept for.
        let is_start =
            |m: &&StoredMessage| matches!(m.message.kind, EventKind::ExecutionStarted { .. });
        let ordered: Vec<&StoredMessage> = if self.started() {
            messages.iter().collect()
        } else {
            messages
                .iter()
                .filter(is_start)
                .chain(messages.iter().filter(|m| !is_start(m)))
                .collect()
        };
        let mut unapplied = Vec::new();
        for m in ordered {
            if self.outcome.is_some() {
                unapplied.push(m.id);
                continue;
            }
            if !self.accepts(&m.message) {
                continue;
            }
            push(self, m.message.kind.clone(), &mut history);
            self.apply(registry, history.last().expect("just pushed"));
            for action in self.take_actions() {
                push(self, action.to_event(), &mut history);
                actions.push(action);
            }
        }
        if self.outcome.is_none()
            && (self.history_len > limits.max_events || self.history_bytes > limits.max_bytes)
        {
            self.fail(FailureDetails::new(
                "HistoryLimit",
                format!(
                    "history of {} events / {} bytes exceeds the limit of {} events / {} bytes",
                    self.history_len, self.history_bytes, limits.max_events, limits.max_bytes
                ),
            ));
        }
        if let Some(outcome) = &self.outcome {
            if !matches!(outcome, Outcome::Terminated(_)) {
                let record = outcome.record();
                push(self, record, &mut history);
            }
            // A finished execution starts no more work.
            actions.clear();
        }
        TurnResult {
            history,
            actions,
            unapplied,
        }
    }

    /// Stale results (for an execution since replaced) and duplicates of
    /// the start message are dropped.
    fn accepts(&self, m: &crate::history::Message) -> bool {
        if matches!(m.kind, EventKind::ExecutionStarted { .. }) {
            return !self.started();
        }
        if !self.started() && !matches!(m.kind, EventKind::Terminated { .. }) {
            return false;
        }
        match &m.execution_id {
            Some(e) => *e == self.execution_id,
            None => true,
        }
    }

    fn take_actions(&mut self) -> Vec<Action> {
        match &self.ctx {
            Some(ctx) => std::mem::take(&mut ctx.lock().actions),
            None => Vec::new(),
        }
    }

    fn fail(&mut self, error: FailureDetails) {
        self.fut = None;
        self.outcome = Some(Outcome::Failed(error));
    }

    /// Applies one history event and polls the orchestrator if it was woken.
    fn apply(&mut self, registry: &Registry, event: &HistoryEvent) {
        match &event.kind {
            EventKind::OrchestratorStarted => {
                self.now = event.timestamp;
                if let Some(ctx) = &self.ctx {
                    ctx.lock().now = event.timestamp;
                }
            }
            EventKind::ExecutionStarted {
                name,
                input,
                execution_id,
                parent,
            } => self.start(registry, name, input.clone(), execution_id, parent.clone()),
            EventKind::Suspended { .. } => self.suspended = true,
            EventKind::Resumed { .. } => {
                self.suspended = false;
                for kind in std::mem::take(&mut self.buffered) {
                    self.deliver(kind);
                }
            }
            EventKind::Terminated { reason } if self.outcome.is_none() => {
                self.fut = None;
                self.outcome = Some(Outcome::Terminated(reason.clone()));
            }
            EventKind::ExecutionCompleted { output } if self.outcome.is_none() => {
                self.outcome = Some(Outcome::Completed(output.clone()));
            }
            EventKind::ExecutionFailed { error } if self.outcome.is_none() => {
                self.fail(error.clone());
            }
            EventKind::ContinuedAsNew { input } if self.outcome.is_none() => {
                self.outcome = Some(Outcome::ContinuedAsNew(input.clone()));
            }
            EventKind::TaskCompleted { .. }
            | EventKind::TaskFailed { .. }
            | EventKind::TimerFired { .. }
            | EventKind::SubOrchestrationCompleted { .. }
            | EventKind::SubOrchestrationFailed { .. }
            | EventKind::EventRaised { .. } => {
                if self.outcome.is_some() {
                } else if self.suspended {
                    self.buffered.push(event.kind.clone());
                } else {
                    self.deliver(event.kind.clone());
                }
            }
            _ => {}
        }
    }

    fn start(
        &mut self,
        registry: &Registry,
        name: &str,
        input: Value,
        execution_id: &str,
        parent: Option<ParentLink>,
    ) {
        self.execution_id = execution_id.to_string();
        self.name = name.to_string();
        self.parent = parent;
        let ctx =
            OrchestrationContext::new(self.instance_id.clone(), execution_id.to_string(), self.now);
        {
            let mut s = ctx.lock();
            s.replaying = self.replaying;
            s.recorded = std::mem::take(&mut self.recorded);
        }
        self.ctx = Some(ctx.clone());
        let Some(func) = registry.orchestrations.get(name) else {
            self.fail(FailureDetails::new(
                "UnknownOrchestration",
                format!("no orchestration named '{name}' is registered"),
            ));
            return;
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| func(ctx, input))) {
            Ok(fut) => {
                self.fut = Some(fut);
                self.flag.0.store(true, Ordering::Release);
                self.poll();
            }
            Err(panic) => self.fail(panic_failure("orchestrator", panic)),
        }
    }

    fn deliver(&mut self, kind: EventKind) {
        let Some(ctx) = self.ctx.clone() else { return };
        match kind {
            EventKind::TaskCompleted { task_id, result }
            | EventKind::SubOrchestrationCompleted { task_id, result } => {
                ctx.deliver(task_id, Ok(result))
            }
            EventKind::TaskFailed { task_id, error }
            | EventKind::SubOrchestrationFailed { task_id, error } => {
                ctx.deliver(task_id, Err(error))
            }
            EventKind::TimerFired { task_id, .. } => ctx.deliver(task_id, Ok(Value::Null)),
            EventKind::EventRaised { name, input } => ctx.deliver_event(name, input),
            _ => {}
        }
        self.poll();
    }

    fn poll(&mut self) {
        if let Some(msg) = self
            .ctx
            .as_ref()
            .and_then(|c| c.lock().nondeterminism.take())
        {
            self.fail(FailureDetails::new("NonDeterminism", msg));
            return;
        }
        let Some(fut) = self.fut.as_mut() else { return };
        if !self.flag.0.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut cx = Context::from_waker(&self.waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        let nondeterminism = self
            .ctx
            .as_ref()
            .and_then(|c| c.lock().nondeterminism.take());
        match (polled, nondeterminism) {
            (_, Some(msg)) => self.fail(FailureDetails::new("NonDeterminism", msg)),
            (Err(panic), None) => self.fail(panic_failure("orchestrator", panic)),
            (Ok(Poll::Pending), None) => {}
            (Ok(Poll::Ready(result)), None) => {
                self.fut = None;
                let can = self
                    .ctx
                    .as_ref()
                    .and_then(|c| c.lock().continue_as_new.take());
                self.outcome = Some(match (result, can) {
                    (Ok(_), Some(input)) => Outcome::ContinuedAsNew(input),
                    (Ok(v), None) => Outcome::Completed(v),
                    (Err(e), _) => Outcome::Failed(e),
                });
            }
        }
    }
}

/// Bytes an event takes serialized; what history size limits count.
/// Counted as the JSON is produced, without building it (every event of
/// every turn is measured; the copy showed in profiles).
pub(crate) fn event_size(event: &HistoryEvent) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, event) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

/// Turns a caught panic into failure details with the panic's message.
pub(crate) fn panic_failure(who: &str, panic: Box<dyn std::any::Any + Send>) -> FailureDetails {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    FailureDetails::new("Panic", format!("{who} panicked: {msg}"))
}

/// The pure core on canned histories and messages, without a store or an
/// engine: what a turn records, what replay rebuilds, and how a changed
/// orchestrator is caught.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Message;
    use crate::registry::Registry;
    use crate::store::StoredMessage;
    use crate::TaskError;
    use serde_json::json;

    const EXEC: &str = "exec-1";

    /// Two activities side by side, then a third with both results: the
    /// shape of Galaxy_Create.
    fn fan_out(first: &'static str) -> Registry {
        Registry::new().orchestration("Fan", move |ctx: OrchestrationContext, _: ()| async move {
            let a = ctx.call_activity::<u32>(first, ());
            let b = ctx.call_activity::<u32>("B", ());
            let (a, b) = futures::join!(a, b);
            let sum: u32 = ctx.call_activity("Sum", json!([a?, b?])).await?;
            Ok::<_, TaskError>(sum)
        })
    }

    fn message(id: i64, kind: EventKind) -> StoredMessage {
        StoredMessage {
            id,
            message: Message {
                execution_id: Some(EXEC.into()),
                visible_at: None,
                sent_at: crate::types::now(),
                kind,
            },
        }
    }

    fn started(id: i64) -> StoredMessage {
        message(
            id,
            EventKind::ExecutionStarted {
                name: "Fan".into(),
                input: json!(null),
                execution_id: EXEC.into(),
                parent: None,
            },
        )
    }

    fn done(id: i64, task_id: u64, result: Value) -> StoredMessage {
        message(id, EventKind::TaskCompleted { task_id, result })
    }

    fn kinds(history: &[HistoryEvent]) -> Vec<&'static str> {
        history.iter().map(|e| e.kind.type_name()).collect()
    }

    fn turn(
        run: &mut OrchestrationRun,
        registry: &Registry,
        messages: &[StoredMessage],
    ) -> TurnResult {
        run.turn(
            registry,
            messages,
            crate::types::now(),
            HistoryLimits::default(),
            Vec::new(),
        )
    }

    fn id() -> InstanceId {
        InstanceId::new("canned").unwrap()
    }

    #[test]
    fn a_first_turn_records_the_start_and_schedules_the_fan_out() {
        let registry = fan_out("A");
        let mut run = OrchestrationRun::new(id());
        let t = turn(&mut run, &registry, &[started(1)]);
        assert_eq!(
            kinds(&t.history),
            [
                "OrchestratorStarted",
                "ExecutionStarted",
                "TaskScheduled",
                "TaskScheduled"
            ]
        );
        let ids: Vec<u64> = t.history.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [0, 1, 2, 3], "numbered from the start");
        assert_eq!(t.actions.len(), 2);
        assert_eq!(run.status(), RuntimeStatus::Running);
        assert_eq!(run.history_len, 4);
    }

    #[test]
    fn results_in_one_turn_schedule_the_next_step_then_the_run_completes() {
        let registry = fan_out("A");
        let mut run = OrchestrationRun::new(id());
        let first = turn(&mut run, &registry, &[started(1)]);
        let tasks: Vec<u64> = first
            .history
            .iter()
            .filter_map(|e| e.kind.task_id())
            .collect();
        let second = turn(
            &mut run,
            &registry,
            &[done(2, tasks[0], json!(2)), done(3, tasks[1], json!(3))],
        );
        assert_eq!(
            kinds(&second.history),
            [
                "OrchestratorStarted",
                "TaskCompleted",
                "TaskCompleted",
                "TaskScheduled"
            ]
        );
        assert_eq!(second.actions.len(), 1, "Sum, once both results are in");
        let sum = second.history.last().unwrap().kind.task_id().unwrap();
        let last = turn(&mut run, &registry, &[done(4, sum, json!(5))]);
        assert_eq!(
            kinds(&last.history),
            ["OrchestratorStarted", "TaskCompleted", "ExecutionCompleted"]
        );
        assert!(last.actions.is_empty());
        assert_eq!(run.status(), RuntimeStatus::Completed);
    }

    #[test]
    fn stale_and_repeated_messages_change_nothing() {
        let registry = fan_out("A");
        let mut run = OrchestrationRun::new(id());
        turn(&mut run, &registry, &[started(1)]);
        let mut other = done(2, 0, json!(9));
        other.message.execution_id = Some("an older execution".into());
        let t = turn(&mut run, &registry, &[other, started(3)]);
        assert_eq!(
            kinds(&t.history),
            ["OrchestratorStarted"],
            "dropped, not applied"
        );
        assert!(t.actions.is_empty());
        assert_eq!(run.status(), RuntimeStatus::Running);
    }

    #[test]
    fn replaying_a_history_rebuilds_the_run_without_repeating_its_work() {
        let registry = fan_out("A");
        let mut live = OrchestrationRun::new(id());
        let mut history = turn(&mut live, &registry, &[started(1)]).history;
        let tasks: Vec<u64> = history.iter().filter_map(|e| e.kind.task_id()).collect();
        history.extend(turn(&mut live, &registry, &[done(2, tasks[0], json!(2))]).history);

        let (mut replayed, actions) = OrchestrationRun::replay(&registry, id(), &history);
        assert!(actions.is_empty(), "recorded actions are not issued again");
        assert_eq!(replayed.history_len, live.history_len);
        assert_eq!(replayed.status(), RuntimeStatus::Running);
        // The replayed run goes on exactly as the live one does.
        let next = [done(3, tasks[1], json!(3))];
        let a = turn(&mut live, &registry, &next);
        let b = turn(&mut replayed, &registry, &next);
        assert_eq!(kinds(&a.history), kinds(&b.history));
        assert_eq!(a.actions.len(), b.actions.len());
    }

    #[test]
    fn an_orchestrator_that_no_longer_issues_a_recorded_action_is_caught_on_replay() {
        let mut live = OrchestrationRun::new(id());
        let history = turn(&mut live, &fan_out("A"), &[started(1)]).history;
        // The code now calls only "A", where history recorded "A" and "B".
        let one =
            Registry::new().orchestration("Fan", |ctx: OrchestrationContext, _: ()| async move {
                let a: u32 = ctx.call_activity("A", ()).await?;
                Ok::<_, TaskError>(a)
            });
        let (run, actions) = OrchestrationRun::replay(&one, id(), &history);
        assert!(actions.is_empty());
        match &run.outcome {
            Some(Outcome::Failed(f)) => {
                assert_eq!(f.kind, "NonDeterminism");
                assert!(
                    f.message.contains("task 1") && f.message.contains('B'),
                    "{}",
                    f.message
                );
            }
            other => panic!("expected a NonDeterminism failure, got {other:?}"),
        }
        // The same code replaying its own history is fine.
        let mut own = OrchestrationRun::new(id());
        let history = turn(&mut own, &one, &[started(1)]).history;
        let (run, _) = OrchestrationRun::replay(&one, id(), &history);
        assert_eq!(run.status(), RuntimeStatus::Running);
    }

    #[test]
    fn an_orchestrator_that_changed_is_caught_on_replay() {
        let mut live = OrchestrationRun::new(id());
        let history = turn(&mut live, &fan_out("A"), &[started(1)]).history;
        // The code now calls "C" where the history recorded "A".
        let (run, actions) = OrchestrationRun::replay(&fan_out("C"), id(), &history);
        assert!(actions.is_empty());
        assert_eq!(run.status(), RuntimeStatus::Failed);
        match &run.outcome {
            Some(Outcome::Failed(f)) => {
                assert_eq!(f.kind, "NonDeterminism");
                assert!(
                    f.message.contains('A') && f.message.contains('C'),
                    "{}",
                    f.message
                );
            }
            _ => panic!("expected a NonDeterminism failure"),
        }
    }
}
