//! The storage contract. Everything durable goes through [`Store`]; the engine
//! holds no state a crash could lose.
//!
//! A store keeps, per instance: a status row, an append-only history and an
//! inbox of messages; and one queue of activity work items. Work is handed out
//! under leases: a fetch locks the work item until the lease expires or the
//! holder commits or abandons it, so a dead worker's items return to the queue
//! by themselves.
//!
//! Invariants every store upholds (checked by `crate::conformance`, behind
//! the `testing` feature):
//! - `commit_turn` is one transaction: history delta, consumed messages,
//!   new work items, outgoing messages and status land together or not at all.
//! - A commit or completion whose lease was lost fails with
//!   [`StoreError::LeaseLost`] and changes nothing.
//! - An instance is locked by at most one holder at a time.
//! - Messages to a terminal instance are refused with
//!   [`StoreError::Finished`], except `Rewound` for a Failed instance;
//!   task results for a terminal instance are dropped silently.
//! - A message with `visible_at` in the future is not delivered before then.

pub mod checkpoint;
mod common;
pub mod group_commit;
pub mod lifecycle;
pub mod page;
#[cfg(feature = "postgres")]
pub mod pg_connect;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Notify;

use crate::history::{HistoryEvent, Message, ParentLink};
use crate::types::{
    FailureDetails, InstanceFilter, InstanceId, InstancePage, InstanceQuery, InstanceStatus,
    RuntimeStatus, Timestamp,
};
pub use common::{HistoryCap, StatusRead};
pub use lifecycle::LifecycleEvent;

/// Errors a store reports. `is_retryable` separates transient trouble from
/// answers the caller must act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A live instance already has this id (or, for a creation marked
    /// [`NewInstance::only_if_absent`], any instance).
    #[error("instance '{0}' already exists")]
    Conflict(InstanceId),
    /// No such instance.
    #[error("instance '{0}' not found")]
    NotFound(InstanceId),
    /// The instance is finished and takes no more messages.
    #[error("instance '{0}' is finished")]
    Finished(InstanceId),
    /// The instance is not in a state that allows this (e.g. purge of a live one).
    #[error("instance '{0}' is {1}: {2}")]
    Precondition(InstanceId, RuntimeStatus, &'static str),
    /// The lease behind this commit expired or was never held.
    #[error("the lease on this work item was lost")]
    LeaseLost,
    /// The database file exists but is not one of ours, or is damaged.
    #[error("{0}")]
    Incompatible(String),
    /// The database failed; the operation may succeed if retried.
    #[error("database error: {0}")]
    Database(String),
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// True when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Database(_) | Self::LeaseLost)
    }
}

/// A new instance (or a new execution of a finished one).
#[derive(Clone, Debug)]
pub struct NewInstance {
    /// Its id.
    pub instance_id: InstanceId,
    /// Orchestration name.
    pub name: String,
    /// Input of the first execution.
    pub input: Value,
    /// Execution id of the first execution.
    pub execution_id: String,
    /// Set for sub-orchestrations.
    pub parent: Option<ParentLink>,
    /// Creation time.
    pub created_at: Timestamp,
    /// `true`: any instance of this id, finished or not, makes the
    /// creation a [`StoreError::Conflict`] and stays as it is (an
    /// idempotent start: a second delivery of what started it must not
    /// run it again). `false`: a finished one is replaced, as Durable
    /// Functions does.
    pub only_if_absent: bool,
}

impl NewInstance {
    /// The `ExecutionStarted` message that begins its execution: what a
    /// store queues at creation and what its first turn consumes.
    pub fn start_message(&self) -> Message {
        Message {
            execution_id: Some(self.execution_id.clone()),
            visible_at: None,
            sent_at: self.created_at,
            kind: crate::history::EventKind::ExecutionStarted {
                name: self.name.clone(),
                input: self.input.clone(),
                execution_id: self.execution_id.clone(),
                parent: self.parent.clone(),
            },
        }
    }
}

/// Proof of a lease, returned by a fetch and required by the matching commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkLock(pub String);

/// A message as a store holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    /// Store-assigned id, increasing in arrival order.
    pub id: i64,
    /// The message.
    pub message: Message,
}

/// An orchestration work item: a locked instance and the messages to apply.
#[derive(Clone, Debug)]
pub struct OrchestrationWorkItem {
    /// The lease.
    pub lock: WorkLock,
    /// The instance.
    pub instance_id: InstanceId,
    /// Its status before this turn.
    pub runtime_status: RuntimeStatus,
    /// Its current execution.
    pub execution_id: String,
    /// How many history events it has; lets the engine tell whether its
    /// cached replay state is current.
    pub history_len: u64,
    /// Visible messages in arrival order.
    pub messages: Vec<StoredMessage>,
    /// How many times this instance was fetched without a commit. After a
    /// restart a store may count queued work as delivered once more (it
    /// cannot know whether the crashed process had started it); never more
    /// than once per restart, so poison detection stays sound.
    pub attempts: u32,
}

/// An activity to run.
#[derive(Clone, Debug, PartialEq)]
pub struct NewActivity {
    /// The instance that scheduled it.
    pub instance_id: InstanceId,
    /// That instance's execution.
    pub execution_id: String,
    /// The task id in that execution.
    pub task_id: u64,
    /// Activity name.
    pub name: String,
    /// Activity input.
    pub input: Value,
}

/// A leased activity work item.
#[derive(Clone, Debug)]
pub struct ActivityWorkItem {
    /// The lease.
    pub lock: WorkLock,
    /// What to run (shared with the store's queue, which keeps it until
    /// the activity completes).
    pub activity: Arc<NewActivity>,
    /// How many times it was handed out, this time included (a restart may
    /// count as one, as for [`OrchestrationWorkItem::attempts`]).
    pub attempts: u32,
}

/// A message to another (or the same) instance, sent by a turn.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    /// Recipient.
    pub instance_id: InstanceId,
    /// Content.
    pub message: Message,
}

/// The new status an instance gets from a turn.
#[derive(Clone, Debug)]
pub struct StatusUpdate {
    /// New runtime status.
    pub runtime_status: RuntimeStatus,
    /// New execution id (continue-as-new, rewind keep or change it).
    pub execution_id: String,
    /// Input of the execution (changes on continue-as-new).
    pub input: Option<Value>,
    /// Output, when finished.
    pub output: Option<Value>,
    /// Custom status.
    pub custom_status: Option<Value>,
    /// Failure, when Failed.
    pub failure: Option<FailureDetails>,
    /// History event count after this commit.
    pub history_events: u64,
    /// History bytes after this commit.
    pub history_bytes: u64,
    /// When.
    pub updated_at: Timestamp,
}

/// Everything one turn changes, committed in one transaction.
#[derive(Clone, Debug)]
pub struct TurnCommit {
    /// The lease from the fetch.
    pub lock: WorkLock,
    /// The instance.
    pub instance_id: InstanceId,
    /// Messages of the work item this turn consumed.
    pub consumed: Vec<i64>,
    /// When true, the instance's history is replaced by `history` (continue
    /// as new, rewind); otherwise `history` is appended.
    pub replace_history: bool,
    /// History events to append (or the whole new history).
    pub history: Vec<HistoryEvent>,
    /// The instance's new status.
    pub status: StatusUpdate,
    /// Activities to enqueue.
    pub activities: Vec<NewActivity>,
    /// Messages to send (timers to self, results to a parent, raised events).
    pub messages: Vec<OutgoingMessage>,
    /// Sub-orchestrations to create. A live instance with the same id makes
    /// the store send `SubOrchestrationFailed` to the parent instead.
    pub new_instances: Vec<NewInstance>,
}

/// A change another process committed to an instance: it was created
/// (`history_from == history_to == 0`), or a turn took its history from
/// `history_from` to `history_to` events (`history_from` 0 when the turn
/// replaced the history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteChange {
    /// The instance.
    pub instance_id: InstanceId,
    /// History length before the change.
    pub history_from: u64,
    /// History length after it.
    pub history_to: u64,
}

/// Outcome of purging one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeOutcome {
    /// Deleted with its history and inbox.
    Deleted,
    /// No such instance.
    NotFound,
    /// Not terminal: left alone.
    NotTerminal(RuntimeStatus),
}

/// The two kinds of work a store hands out, each to its own dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkKind {
    /// Orchestration turns ([`Store::fetch_orchestration_work`]).
    Orchestration,
    /// Activities ([`Store::fetch_activity_work`]).
    Activity,
}

/// Wakes the engine's dispatchers when a store makes work visible, so no one
/// polls. Stores share one of these with the engine.
#[derive(Debug, Default)]
pub struct WorkSignal {
    /// Notified when orchestration work may be available.
    pub orchestrations: Notify,
    /// Notified when activity work may be available.
    pub activities: Notify,
}

impl WorkSignal {
    /// The notification for `kind`'s dispatchers.
    pub fn of(&self, kind: WorkKind) -> &Notify {
        match kind {
            WorkKind::Orchestration => &self.orchestrations,
            WorkKind::Activity => &self.activities,
        }
    }

    /// Wakes the dispatchers of the kinds of work that may have appeared:
    /// every waiting one, and the next to wait if none is waiting yet (a
    /// dispatcher between its fetch and its wait would otherwise sleep).
    pub fn wake(&self, orchestrations: bool, activities: bool) {
        for (wake, notify) in [
            (orchestrations, &self.orchestrations),
            (activities, &self.activities),
        ] {
            if wake {
                notify.notify_waiters();
                notify.notify_one();
            }
        }
    }
}

/// The storage contract. See the module docs for the invariants.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The signal the store fires when it makes work visible.
    fn work_signal(&self) -> Arc<WorkSignal>;

    /// Creates an instance and queues its `ExecutionStarted` message. An
    /// existing terminal instance with the same id is replaced (unless
    /// [`NewInstance::only_if_absent`]); a live one is a
    /// [`StoreError::Conflict`].
    async fn create_instance(&self, instance: NewInstance) -> Result<(), StoreError>;

    /// Creates an instance together with its first turn, which the caller
    /// ran before anything was stored, in one transaction: the instance row,
    /// then `commit` as if its `ExecutionStarted` message had been fetched
    /// and consumed (`commit.lock` and `commit.consumed` are ignored: there
    /// is no lease and no message). A live instance with the same id is a
    /// [`StoreError::Conflict`] and nothing is written.
    ///
    /// Why: a new instance would otherwise cost a commit for its creation,
    /// a dispatch, then a commit for its first turn. Returns `false` when
    /// the store only created the instance (what this default does); its
    /// first turn then runs from the queue like any other, and replay makes
    /// it the same turn.
    async fn create_instance_with_turn(
        &self,
        instance: NewInstance,
        commit: TurnCommit,
    ) -> Result<bool, StoreError> {
        let _ = commit;
        self.create_instance(instance).await.map(|()| false)
    }

    /// Changes other processes sharing this store commit (only stores
    /// that several processes share have any: PostgreSQL). The engine
    /// turns them into live updates, so its subscribers (a starter waiting
    /// for completion, live streams) see every process's work. `None`:
    /// this store has no other writers.
    fn remote_changes(&self) -> Option<tokio::sync::broadcast::Receiver<RemoteChange>> {
        None
    }

    /// Queues a message for an instance.
    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError>;

    /// Locks up to `max` instances with visible messages, for `lease`.
    async fn fetch_orchestration_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError>;

    /// The current execution's history, oldest first.
    async fn load_history(&self, instance_id: &InstanceId)
        -> Result<Vec<HistoryEvent>, StoreError>;

    /// Commits a turn and releases the instance's lock.
    async fn commit_turn(&self, commit: TurnCommit) -> Result<(), StoreError>;

    /// Releases an instance's lock without committing; its messages become
    /// visible again after `delay`.
    async fn abandon_orchestration_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError>;

    /// Locks up to `max` activity work items, for `lease`.
    async fn fetch_activity_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ActivityWorkItem>, StoreError>;

    /// Deletes a finished activity work item and delivers its result message
    /// to the instance, in one transaction. A store may instead deliver the
    /// result from memory and delete the work item in the commit of the turn
    /// that consumes the result (the SQLite store does, for live instances):
    /// a crash in between then runs the activity again, which at-least-once
    /// allows, and a clean shutdown must make held results durable.
    async fn complete_activity_work(
        &self,
        lock: &WorkLock,
        result: Message,
    ) -> Result<(), StoreError>;

    /// Completes several activity work items, as [`Store::complete_activity_work`]
    /// does one each; results answer the items in order. Stores that can
    /// make the results visible together override it, so that an instance
    /// waiting for several results takes one turn for them.
    async fn complete_activities(
        &self,
        items: Vec<(WorkLock, Message)>,
    ) -> Vec<Result<(), StoreError>> {
        complete_one_by_one(self, items).await
    }

    /// Returns a leased activity work item to the queue after `delay`.
    async fn abandon_activity_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError>;

    /// When the next work of `kind` comes due (a delayed message, a lease
    /// running out), if any, so that kind's dispatcher can sleep exactly
    /// until then. Work of `kind` that is due already but was not fetched
    /// (it came due after the dispatcher's last fetch) gives a time already
    /// past: the dispatcher must not sleep past it. Work of the other kind
    /// is left out: that dispatcher may be busy, and this one cannot take
    /// it.
    async fn next_wake_at(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError>;

    /// One instance's status, with its whole history if asked.
    async fn get_instance(
        &self,
        instance_id: &InstanceId,
        with_history: bool,
    ) -> Result<Option<InstanceStatus>, StoreError> {
        let read = StatusRead {
            input: true,
            history: with_history.then_some(HistoryCap::ALL),
        };
        self.read_status(instance_id, read).await
    }

    /// One instance's status for a client that asked for `read`: the input
    /// only if wanted (else `null`, and not read), the history only the
    /// first events within the cap (`history_events` says how many there
    /// are; nothing past the cap is read), status and history from one
    /// snapshot.
    async fn read_status(
        &self,
        instance_id: &InstanceId,
        read: StatusRead,
    ) -> Result<Option<InstanceStatus>, StoreError>;

    /// A page of instances matching a filter, newest first.
    async fn list_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError>;

    /// Deletes one terminal instance with its history and inbox.
    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<PurgeOutcome, StoreError>;

    /// Deletes up to `limit` terminal instances matching the filter; returns
    /// how many. Callers loop to purge more, so no call holds the store long.
    async fn purge_instances(
        &self,
        filter: &InstanceFilter,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Counts instances by status (for dashboards and metrics).
    async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, StoreError>;

    /// Number of queued work items: (instances with visible messages, activities).
    async fn queue_depth(&self) -> Result<(u64, u64), StoreError>;

    /// Whether the store can still work: `Err` says why not (its writer
    /// died, a lock was poisoned by a panic). A host reports it (`/healthz`)
    /// and restarts; nothing in memory is trusted after that.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Notified after a commit wrote lifecycle outbox rows; `None` when the
    /// store keeps no outbox (see [`lifecycle`]).
    fn lifecycle_signal(&self) -> Option<Arc<Notify>> {
        None
    }

    /// The oldest `limit` lifecycle outbox rows, in commit order.
    async fn lifecycle_outbox(&self, limit: usize) -> Result<Vec<LifecycleEvent>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// Deletes outbox rows once their events are published.
    async fn ack_lifecycle(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        let _ = seqs;
        Ok(())
    }
}

/// [`Store::complete_activities`] as one [`Store::complete_activity_work`]
/// per item: the default, and a batching store's fallback.
pub(crate) async fn complete_one_by_one<S: Store + ?Sized>(
    store: &S,
    items: Vec<(WorkLock, Message)>,
) -> Vec<Result<(), StoreError>> {
    let mut out = Vec::with_capacity(items.len());
    for (lock, result) in items {
        out.push(store.complete_activity_work(&lock, result).await);
    }
    out
}
