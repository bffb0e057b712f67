//! The orchestrator's side of replay: [`OrchestrationContext`] and the
//! durable futures it hands out.
//!
//! Every call that takes an action (`call_activity`, `create_timer`,
//! `call_sub_orchestration`) gets the next task id of the execution. While
//! replaying, the action is checked against the one history recorded under
//! that id; a different action is a non-determinism error naming both. At the
//! live edge the action is new and is collected for the turn's commit.
//!
//! The state sits behind a `std::sync::Mutex`, never held across an await:
//! futures lock it only inside `poll`, so a tokio mutex would add cost for
//! nothing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::history::EventKind;
use crate::retry::RetryPolicy;
use crate::types::{FailureDetails, InstanceId, Timestamp};

/// The error an awaited task yields: the activity's or child's failure.
pub type TaskError = FailureDetails;

/// An action a turn takes; recorded in history and turned into work.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Run an activity.
    ScheduleActivity {
        /// Task id.
        task_id: u64,
        /// Activity name.
        name: String,
        /// Input.
        input: Value,
    },
    /// Wake the instance at `fire_at`.
    CreateTimer {
        /// Task id.
        task_id: u64,
        /// Due time.
        fire_at: Timestamp,
    },
    /// Start a child orchestration.
    StartSubOrchestration {
        /// Task id.
        task_id: u64,
        /// Orchestration name.
        name: String,
        /// Child instance id.
        instance_id: InstanceId,
        /// Input.
        input: Value,
    },
}

impl Action {
    /// The history event that records this action.
    pub fn to_event(&self) -> EventKind {
        match self.clone() {
            Action::ScheduleActivity {
                task_id,
                name,
                input,
            } => EventKind::TaskScheduled {
                task_id,
                name,
                input,
            },
            Action::CreateTimer { task_id, fire_at } => {
                EventKind::TimerCreated { task_id, fire_at }
            }
            Action::StartSubOrchestration {
                task_id,
                name,
                instance_id,
                input,
            } => EventKind::SubOrchestrationCreated {
                task_id,
                name,
                instance_id,
                input,
            },
        }
    }
}

/// Describes an action record for non-determinism messages.
pub(crate) fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::TaskScheduled { name, .. } => format!("activity '{name}'"),
        EventKind::TimerCreated { .. } => "timer".to_string(),
        EventKind::SubOrchestrationCreated { name, .. } => {
            format!("sub-orchestration '{name}'")
        }
        other => other.type_name().to_string(),
    }
}

/// True when the code's action is the one history recorded. Inputs and
/// timer due times may legitimately differ (they are data); kinds and names
/// may not.
fn same_action(recorded: &EventKind, issued: &EventKind) -> bool {
    match (recorded, issued) {
        (EventKind::TaskScheduled { name: a, .. }, EventKind::TaskScheduled { name: b, .. }) => {
            a == b
        }
        (EventKind::TimerCreated { .. }, EventKind::TimerCreated { .. }) => true,
        (
            EventKind::SubOrchestrationCreated {
                name: a,
                instance_id: ia,
                ..
            },
            EventKind::SubOrchestrationCreated {
                name: b,
                instance_id: ib,
                ..
            },
        ) => a == b && ia == ib,
        _ => false,
    }
}

pub(crate) struct CtxState {
    pub(crate) instance_id: InstanceId,
    pub(crate) execution_id: String,
    pub(crate) now: Timestamp,
    pub(crate) replaying: bool,
    next_task_id: u64,
    /// Action records from history, by task id; only filled during replay.
    pub(crate) recorded: HashMap<u64, EventKind>,
    results: HashMap<u64, Result<Value, FailureDetails>>,
    wakers: HashMap<u64, Waker>,
    events: HashMap<String, VecDeque<Value>>,
    event_wakers: HashMap<String, Vec<Waker>>,
    pub(crate) actions: Vec<Action>,
    pub(crate) custom_status: Option<Value>,
    pub(crate) continue_as_new: Option<Value>,
    pub(crate) nondeterminism: Option<String>,
    rng_seed: u64,
    rng_counter: u64,
}

/// What orchestrator code uses to take actions and read replay-safe values.
/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct OrchestrationContext {
    state: Arc<Mutex<CtxState>>,
}

/// SplitMix64: a tiny, stable mixing function. Stable matters: the random
/// values an orchestrator drew must be the same after an upgrade of any
/// dependency, because replay re-draws them.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, for the same stability reason as [`splitmix`].
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl OrchestrationContext {
    pub(crate) fn new(instance_id: InstanceId, execution_id: String, now: Timestamp) -> Self {
        let rng_seed = fnv(format!("{instance_id}\u{0}{execution_id}").as_bytes());
        Self {
            state: Arc::new(Mutex::new(CtxState {
                instance_id,
                execution_id,
                now,
                replaying: false,
                next_task_id: 0,
                recorded: HashMap::new(),
                results: HashMap::new(),
                wakers: HashMap::new(),
                events: HashMap::new(),
                event_wakers: HashMap::new(),
                actions: Vec::new(),
                custom_status: None,
                continue_as_new: None,
                nondeterminism: None,
                rng_seed,
                rng_counter: 0,
            })),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, CtxState> {
        // A panic inside orchestrator code can poison the lock; the run is
        // failed right after, so the state is still safe to read.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The instance this code runs for.
    pub fn instance_id(&self) -> InstanceId {
        self.lock().instance_id.clone()
    }

    /// The current execution (changes on continue-as-new and restart).
    pub fn execution_id(&self) -> String {
        self.lock().execution_id.clone()
    }

    /// Replay-safe "now": the time the current turn started.
    pub fn current_time(&self) -> Timestamp {
        self.lock().now
    }

    /// True while re-executing turns that already happened. Use it to skip
    /// side effects such as logging.
    pub fn is_replaying(&self) -> bool {
        self.lock().replaying
    }

    /// A replay-safe random number.
    pub fn random_u64(&self) -> u64 {
        let mut s = self.lock();
        s.rng_counter += 1;
        splitmix(s.rng_seed ^ splitmix(s.rng_counter))
    }

    /// A replay-safe UUID (version 4 layout, deterministic per instance and
    /// call order).
    pub fn new_uuid(&self) -> uuid::Uuid {
        let hi = self.random_u64();
        let lo = self.random_u64();
        uuid::Builder::from_random_bytes(((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes())
            .into_uuid()
    }

    /// Sets the custom status shown in the instance's status.
    pub fn set_custom_status(&self, status: impl Serialize) {
        self.lock().custom_status = serde_json::to_value(status).ok();
    }

    /// Ends this execution and starts a new one with `input` and a fresh
    /// history. Return from the orchestrator right after calling it.
    pub fn continue_as_new(&self, input: impl Serialize) {
        self.lock().continue_as_new = Some(serde_json::to_value(input).unwrap_or(Value::Null));
    }

    fn schedule(&self, make: impl FnOnce(u64) -> Action) -> u64 {
        let mut s = self.lock();
        let task_id = s.next_task_id;
        s.next_task_id += 1;
        let action = make(task_id);
        let issued = action.to_event();
        match s.recorded.remove(&task_id) {
            Some(recorded) => {
                if !same_action(&recorded, &issued) && s.nondeterminism.is_none() {
                    s.nondeterminism = Some(format!(
                        "task {task_id}: history expected {}, the orchestrator issued {}",
                        describe(&recorded),
                        describe(&issued)
                    ));
                }
            }
            None => s.actions.push(action),
        }
        task_id
    }

    /// Schedules an activity and returns a future of its result.
    pub fn call_activity<O: DeserializeOwned>(
        &self,
        name: &str,
        input: impl Serialize,
    ) -> DurableFuture<O> {
        let input = serde_json::to_value(input).unwrap_or(Value::Null);
        let task_id = self.schedule(|task_id| Action::ScheduleActivity {
            task_id,
            name: name.to_string(),
            input,
        });
        self.future(task_id)
    }

    /// Calls an activity, retrying failures as `policy` says. Waits between
    /// attempts are durable timers, so retries survive restarts.
    pub async fn call_activity_with_retry<O: DeserializeOwned>(
        &self,
        name: &str,
        input: impl Serialize,
        policy: &RetryPolicy,
    ) -> Result<O, TaskError> {
        let input = serde_json::to_value(input).unwrap_or(Value::Null);
        let first_attempt_at = self.current_time();
        let mut attempt = 1u32;
        loop {
            match self.call_activity::<O>(name, input.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let elapsed = (self.current_time() - first_attempt_at)
                        .to_std()
                        .unwrap_or_default();
                    match policy.next_delay(attempt, elapsed, &e) {
                        Some(delay) => {
                            self.create_timer(delay).await;
                            attempt += 1;
                        }
                        None => return Err(e),
                    }
                }
            }
        }
    }

    /// A durable timer that fires after `delay` (from the turn's "now").
    /// A delay beyond the calendar (e.g. `Duration::MAX`, "never") is
    /// capped at the latest representable time.
    pub fn create_timer(&self, delay: Duration) -> TimerFuture {
        let latest = crate::types::from_millis(Timestamp::MAX_UTC.timestamp_millis());
        let fire_at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| self.current_time().checked_add_signed(d))
            .map_or(latest, |t| t.min(latest));
        self.create_timer_at(fire_at)
    }

    /// A durable timer that fires at `fire_at`.
    pub fn create_timer_at(&self, fire_at: Timestamp) -> TimerFuture {
        let task_id = self.schedule(|task_id| Action::CreateTimer { task_id, fire_at });
        TimerFuture(self.future(task_id))
    }

    /// Starts a child orchestration and returns a future of its output. The
    /// child's id defaults to `<parent id>:<task id>`, stable across replays.
    pub fn call_sub_orchestration<O: DeserializeOwned>(
        &self,
        name: &str,
        instance_id: Option<InstanceId>,
        input: impl Serialize,
    ) -> DurableFuture<O> {
        let input = serde_json::to_value(input).unwrap_or(Value::Null);
        let parent = self.instance_id();
        let task_id = self.schedule(|task_id| Action::StartSubOrchestration {
            task_id,
            name: name.to_string(),
            instance_id: instance_id
                .unwrap_or_else(|| InstanceId::from_stored(format!("{parent}:{task_id}"))),
            input,
        });
        self.future(task_id)
    }

    /// Waits for an external event raised to this instance. An event raised
    /// before anyone waits is kept until a wait takes it. To time out, race
    /// it against [`Self::create_timer`].
    pub fn wait_for_event<T: DeserializeOwned>(&self, name: &str) -> EventFuture<T> {
        EventFuture {
            state: self.state.clone(),
            name: name.to_string(),
            _t: PhantomData,
        }
    }

    fn future<O>(&self, task_id: u64) -> DurableFuture<O> {
        DurableFuture {
            state: self.state.clone(),
            task_id,
            _t: PhantomData,
        }
    }

    /// Delivers a task result; wakes its future. Returns the non-determinism
    /// message if history answers a task the code never scheduled.
    pub(crate) fn deliver(&self, task_id: u64, result: Result<Value, FailureDetails>) {
        let waker = {
            let mut s = self.lock();
            if task_id >= s.next_task_id {
                if s.nondeterminism.is_none() {
                    let expected = s
                        .recorded
                        .get(&task_id)
                        .map(describe)
                        .unwrap_or_else(|| "an action".to_string());
                    s.nondeterminism = Some(format!(
                        "task {task_id}: history expected {expected}, the orchestrator issued nothing"
                    ));
                }
                return;
            }
            s.results.insert(task_id, result);
            s.wakers.remove(&task_id)
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn deliver_event(&self, name: String, input: Value) {
        let key = event_key(&name);
        let wakers = {
            let mut s = self.lock();
            s.events.entry(key.clone()).or_default().push_back(input);
            s.event_wakers.remove(&key).unwrap_or_default()
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// The result of an activity or sub-orchestration.
#[must_use = "a durable future does nothing unless awaited"]
pub struct DurableFuture<O> {
    state: Arc<Mutex<CtxState>>,
    task_id: u64,
    // fn() -> O keeps the future Send whatever O is: no O is stored.
    _t: PhantomData<fn() -> O>,
}

impl<O> DurableFuture<O> {
    /// The task id of the action behind this future.
    pub fn task_id(&self) -> u64 {
        self.task_id
    }
}

impl<O: DeserializeOwned> Future for DurableFuture<O> {
    type Output = Result<O, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.results.remove(&self.task_id) {
            Some(Ok(v)) => Poll::Ready(serde_json::from_value(v).map_err(|e| {
                FailureDetails::new("InvalidOutput", format!("task result does not fit: {e}"))
            })),
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => {
                s.wakers.insert(self.task_id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A durable timer; resolves when it fires.
#[must_use = "a timer does nothing unless awaited"]
pub struct TimerFuture(DurableFuture<Value>);

impl Future for TimerFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// External events match their waits whatever the case of their names,
/// as in Durable Functions (`RaiseEventAsync`: "event names are
/// case-insensitive"): raising `approval` ends a wait for `Approval`.
fn event_key(name: &str) -> String {
    name.to_lowercase()
}

/// An external event; resolves with its payload.
#[must_use = "an event wait does nothing unless awaited"]
pub struct EventFuture<T> {
    state: Arc<Mutex<CtxState>>,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Future for EventFuture<T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.name.clone();
        let key = event_key(&name);
        match s.events.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(v) => Poll::Ready(serde_json::from_value(v).map_err(|e| {
                FailureDetails::new(
                    "InvalidInput",
                    format!("event '{name}' payload does not fit: {e}"),
                )
            })),
            None => {
                s.event_wakers
                    .entry(key)
                    .or_default()
                    .push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
