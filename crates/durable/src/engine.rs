//! The engine: its configuration and state, committing and publishing
//! turns in order, retention, the client API (start, raise, terminate...)
//! and the live update stream. The dispatchers that lease work items and
//! run turns and activities are in [`crate::dispatch`].
//!
//! No global state: each [`Engine`] owns its store, registry, cache and
//! tasks, so several can run in one process.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::dispatch;
use crate::error::Error;
use crate::history::{EventKind, HistoryEvent, Message};
use crate::registry::Registry;
use crate::run::{HistoryLimits, OrchestrationRun};
use crate::store::{
    NewInstance, OrchestrationWorkItem, PurgeOutcome, Store, StoreError, StoredMessage, WorkLock,
};
use crate::turn::prepare_turn_owned;
use crate::types::{
    self, FailureDetails, InstanceFilter, InstanceId, InstancePage, InstanceQuery, InstanceStatus,
    RuntimeStatus, Timestamp,
};

/// How finished instances are purged automatically.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    /// Finished instances created longer ago than this are purged.
    pub max_age: Duration,
    /// How often to look.
    pub interval: Duration,
    /// Instances purged per store call; small batches keep dispatch flowing.
    pub batch: usize,
}

/// Engine settings. `Default` suits an embedded engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Turns running at once.
    pub orchestration_concurrency: usize,
    /// Activities running at once.
    pub activity_concurrency: usize,
    /// Lease on an orchestration work item.
    pub orchestration_lease: Duration,
    /// Lease on an activity work item; an activity still running after it
    /// may be run again elsewhere.
    pub activity_lease: Duration,
    /// Instances whose replay state is kept in memory.
    pub cache_capacity: usize,
    /// Deliveries of one work item before it is quarantined (poison).
    pub max_attempts: u32,
    /// History size limits per execution.
    pub history_limits: HistoryLimits,
    /// Automatic purge of old finished instances.
    pub retention: Option<RetentionPolicy>,
    /// Capacity of the live update channel; slower subscribers see
    /// `Lagged`. Each update carries at most 4 KiB of payloads (see
    /// [`crate::elide`]), so this bounds what a stalled subscriber pins.
    pub update_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            orchestration_concurrency: 512,
            activity_concurrency: 512,
            orchestration_lease: Duration::from_secs(60),
            activity_lease: Duration::from_secs(300),
            cache_capacity: 10_000,
            max_attempts: 10,
            history_limits: HistoryLimits::default(),
            retention: None,
            update_capacity: 16_384,
        }
    }
}

/// An [`InstanceUpdate`] as subscribers receive it: shared, so that the
/// channel's slots stay one pointer wide and a subscriber's receive copies
/// no payload. The channels allocate and touch all
/// [`EngineConfig::update_capacity`] slots when the engine starts; with
/// the update inline (224 bytes) the two of them held 7 MiB of every
/// process, the desktop app's included (BENCHMARKS.md).
pub type Update = Arc<InstanceUpdate>;

/// A change to one instance, pushed to subscribers as it commits.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceUpdate {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its orchestration name.
    pub name: String,
    /// Its status after the change.
    pub runtime_status: RuntimeStatus,
    /// The history events the change added (empty for a creation).
    pub history: Vec<HistoryEvent>,
    /// Output when finished.
    pub output: Option<Value>,
    /// Custom status.
    pub custom_status: Option<Value>,
    /// Failure when Failed.
    pub failure: Option<FailureDetails>,
    /// When.
    pub at: Timestamp,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) config: EngineConfig,
    pub(crate) cache: Mutex<LruCache<InstanceId, OrchestrationRun>>,
    /// Every update: this engine's commits and (on a store that other
    /// processes share) theirs.
    pub(crate) updates: broadcast::Sender<Update>,
    /// This engine's own commits only.
    local_updates: broadcast::Sender<Update>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) orchestration_slots: Arc<Semaphore>,
    pub(crate) activity_slots: Arc<Semaphore>,
    /// Per-instance locks that keep an instance's live updates in commit
    /// order; see [`publish_in_order`].
    publishing: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// Activity results waiting to be handed to the store together (see
    /// [`dispatch::complete_together`]).
    pub(crate) completions: crate::coalesce::Coalescer<Completion>,
}

/// A finished activity: its lease, its name (for logs) and its result.
pub(crate) struct Completion {
    pub(crate) lock: WorkLock,
    pub(crate) name: String,
    pub(crate) result: Message,
}

/// An embedded orchestration engine. Cloning shares the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Engine {
    /// Starts an engine on a store: its dispatchers begin at once, picking up
    /// whatever work the store holds (e.g. instances left by a crash).
    pub fn start(store: Arc<dyn Store>, registry: Registry, config: EngineConfig) -> Self {
        let cache = LruCache::new(NonZeroUsize::new(config.cache_capacity.max(1)).expect("max(1)"));
        let (updates, _) = broadcast::channel(config.update_capacity.max(16));
        let (local_updates, _) = broadcast::channel(config.update_capacity.max(16));
        let remote = store.remote_changes();
        let inner = Arc::new(Inner {
            orchestration_slots: Arc::new(Semaphore::new(config.orchestration_concurrency.max(1))),
            activity_slots: Arc::new(Semaphore::new(config.activity_concurrency.max(1))),
            store,
            registry,
            config,
            cache: Mutex::new(cache),
            updates,
            local_updates,
            shutdown: watch::channel(false).0,
            publishing: Mutex::new(HashMap::new()),
            completions: Default::default(),
        });
        let mut tasks = vec![
            tokio::spawn(dispatch::orchestration_loop(inner.clone())),
            tokio::spawn(dispatch::activity_loop(inner.clone())),
        ];
        if let Some(policy) = inner.config.retention.clone() {
            tasks.push(tokio::spawn(retention_loop(inner.clone(), policy)));
        }
        if let Some(changes) = remote {
            tasks.push(tokio::spawn(crate::remote::run(inner.clone(), changes)));
        }
        Self {
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
        }
    }

    /// The store this engine runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The registered functions.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Stops dispatching, waits for running turns and activities (up to
    /// `grace`), and returns. Work still leased is picked up again after a
    /// restart; nothing is lost.
    pub async fn shutdown(&self, grace: Duration) {
        // `send` would not store the value while no task happens to be
        // subscribed (both dispatchers busy in a store call): they would
        // never see it and shutdown would wait for them forever.
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
        let drain = async {
            let o = self.inner.config.orchestration_concurrency.max(1) as u32;
            let a = self.inner.config.activity_concurrency.max(1) as u32;
            let _o = self.inner.orchestration_slots.acquire_many(o).await;
            let _a = self.inner.activity_slots.acquire_many(a).await;
        };
        let _ = tokio::time::timeout(grace, drain).await;
    }

    /// Starts an orchestration. With `instance_id`, a live instance of that id
    /// is a [`Error::Conflict`]; a finished one is replaced.
    pub async fn start_orchestration(
        &self,
        name: &str,
        instance_id: Option<InstanceId>,
        input: impl Serialize,
    ) -> Result<InstanceId, Error> {
        let (name, input) = self.start_input(name, input)?;
        let instance_id = instance_id.unwrap_or_else(InstanceId::generate);
        self.create(&name, instance_id.clone(), input, false)
            .await?;
        Ok(instance_id)
    }

    /// Starts an orchestration under `instance_id` unless an instance of
    /// that id exists, live or finished: `false` then, and it is left as
    /// it is. One atomic step in the store, so two callers racing with the
    /// same id (two deliveries of one event) start it once, even when the
    /// first run finishes before the second caller gets there.
    pub async fn start_orchestration_once(
        &self,
        name: &str,
        instance_id: InstanceId,
        input: impl Serialize,
    ) -> Result<bool, Error> {
        let (name, input) = self.start_input(name, input)?;
        match self.create(&name, instance_id, input, true).await {
            Ok(()) => Ok(true),
            Err(Error::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A start's orchestration, as registered, and its input as stored.
    /// The name matches whatever its case, as Azure Functions' names do
    /// (`galaxy_create` starts `Galaxy_Create`).
    fn start_input(&self, name: &str, input: impl Serialize) -> Result<(String, Value), Error> {
        let name = self
            .inner
            .registry
            .orchestration_named(name)
            .ok_or_else(|| Error::UnknownOrchestration(name.to_string()))?;
        let input = serde_json::to_value(input).map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok((name.to_string(), input))
    }

    /// Creates an instance and runs its first turn before anything is
    /// stored, so that creation and first turn land in one commit (one
    /// fsync and one dispatch fewer per instance; stores that cannot fuse
    /// them just create, and the turn runs again from the queue).
    async fn create(
        &self,
        name: &str,
        instance_id: InstanceId,
        input: Value,
        only_if_absent: bool,
    ) -> Result<(), Error> {
        if *self.inner.shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        let created_at = types::now();
        let instance = NewInstance {
            instance_id: instance_id.clone(),
            name: name.to_string(),
            input,
            execution_id: new_execution_id(),
            parent: None,
            created_at,
            only_if_absent,
        };
        let created = InstanceUpdate {
            instance_id: instance_id.clone(),
            name: name.to_string(),
            runtime_status: RuntimeStatus::Pending,
            history: Vec::new(),
            output: None,
            custom_status: None,
            failure: None,
            at: created_at,
        };
        // The first turn, as the dispatcher would run it: no lease (nobody
        // can hold an instance that does not exist yet), no history, the
        // start message the store would have queued.
        let item = OrchestrationWorkItem {
            lock: WorkLock(String::new()),
            instance_id: instance_id.clone(),
            runtime_status: RuntimeStatus::Pending,
            execution_id: instance.execution_id.clone(),
            history_len: 0,
            messages: vec![StoredMessage {
                id: 0,
                message: instance.start_message(),
            }],
            attempts: 0,
        };
        let inner = &self.inner;
        // On its own task, within the lease a dispatched turn would have: a
        // first turn that takes longer is dropped and the instance is
        // created plainly, so the dispatcher runs it under a lease and the
        // poison rules apply to it like to any other turn.
        let first = tokio::spawn(prepare_turn_owned(inner.clone(), item));
        let mut turn = match tokio::time::timeout(inner.config.orchestration_lease, first).await {
            Ok(Ok(Ok(turn))) => turn,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) | Err(_) => {
                let order = publish_order(inner, &instance_id);
                return publish_in_order(inner, &instance_id, order, async move {
                    inner.store.create_instance(instance).await?;
                    Ok(vec![created])
                })
                .await;
            }
        };
        turn.commit.consumed.clear();
        // Through the same ordering as turns, so Pending is never published
        // after the first turn's Running.
        let order = publish_order(inner, &instance_id);
        let id = instance_id.clone();
        publish_in_order(inner, &instance_id, order, async move {
            match inner
                .store
                .create_instance_with_turn(instance, turn.commit)
                .await?
            {
                true => {
                    // Cached only now: on a conflict the id belongs to a
                    // live instance whose cached run must stay. Its next
                    // turn waits for activities, so this is in time.
                    if let Some(run) = turn.run {
                        inner.cache.lock().expect("cache lock").put(id, run);
                    }
                    Ok(vec![created, turn.update])
                }
                false => Ok(vec![created]),
            }
        })
        .await
    }

    /// Delivers an external event. Kept by the instance until a wait takes it.
    pub async fn raise_event(
        &self,
        instance_id: &InstanceId,
        event_name: &str,
        data: impl Serialize,
    ) -> Result<(), Error> {
        let input = serde_json::to_value(data).map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.send(
            instance_id,
            EventKind::EventRaised {
                name: event_name.to_string(),
                input,
            },
        )
        .await
    }

    /// Terminates a live instance.
    pub async fn terminate(
        &self,
        instance_id: &InstanceId,
        reason: Option<String>,
    ) -> Result<(), Error> {
        self.send(instance_id, EventKind::Terminated { reason })
            .await
    }

    /// Suspends a live instance: it takes no turns until resumed.
    pub async fn suspend(
        &self,
        instance_id: &InstanceId,
        reason: Option<String>,
    ) -> Result<(), Error> {
        self.send(instance_id, EventKind::Suspended { reason })
            .await
    }

    /// Resumes a suspended instance.
    pub async fn resume(
        &self,
        instance_id: &InstanceId,
        reason: Option<String>,
    ) -> Result<(), Error> {
        self.send(instance_id, EventKind::Resumed { reason }).await
    }

    async fn send(&self, instance_id: &InstanceId, kind: EventKind) -> Result<(), Error> {
        Ok(self
            .inner
            .store
            .send_message(instance_id, Message::now(kind))
            .await?)
    }

    /// Re-runs a Failed instance from its failure: failed activities and
    /// sub-orchestrations run again; completed ones are kept.
    pub async fn rewind(
        &self,
        instance_id: &InstanceId,
        reason: Option<String>,
    ) -> Result<(), Error> {
        let status = self.require(instance_id).await?;
        if status.runtime_status != RuntimeStatus::Failed {
            return Err(Error::Precondition {
                instance_id: instance_id.clone(),
                status: status.runtime_status,
                what: "only a Failed instance can be rewound",
            });
        }
        self.send(instance_id, EventKind::Rewound { reason }).await
    }

    /// Starts the instance again from the beginning with the input of its
    /// latest execution (after continue-as-new, that is the newest input).
    /// With `new_instance_id` the new run gets a fresh id; otherwise the same
    /// id is reused, which needs the instance to be finished.
    pub async fn restart(
        &self,
        instance_id: &InstanceId,
        new_instance_id: bool,
    ) -> Result<InstanceId, Error> {
        let status = self.require(instance_id).await?;
        let id = if new_instance_id {
            InstanceId::generate()
        } else {
            instance_id.clone()
        };
        self.create(&status.name, id.clone(), status.input, false)
            .await?;
        Ok(id)
    }

    /// Deletes a finished instance and its history.
    pub async fn purge(&self, instance_id: &InstanceId) -> Result<(), Error> {
        match self.inner.store.purge_instance(instance_id).await? {
            PurgeOutcome::Deleted => {
                self.inner
                    .cache
                    .lock()
                    .expect("cache lock")
                    .pop(instance_id);
                Ok(())
            }
            PurgeOutcome::NotFound => Err(Error::NotFound(instance_id.clone())),
            PurgeOutcome::NotTerminal(status) => Err(Error::Precondition {
                instance_id: instance_id.clone(),
                status,
                what: "only a finished instance can be purged",
            }),
        }
    }

    /// Deletes every finished instance matching the filter, in batches.
    pub async fn purge_by_filter(&self, filter: &InstanceFilter) -> Result<u64, Error> {
        if filter.matches_nothing() {
            return Ok(0);
        }
        purge_all(&*self.inner.store, filter, 1_000).await
    }

    /// One instance's status (and history if asked).
    pub async fn status(
        &self,
        instance_id: &InstanceId,
        with_history: bool,
    ) -> Result<Option<InstanceStatus>, Error> {
        Ok(self
            .inner
            .store
            .get_instance(instance_id, with_history)
            .await?)
    }

    /// One instance's status as a client asked for it: the input only if
    /// wanted, the history only up to the cap (see
    /// [`Store::read_status`](crate::store::Store::read_status)).
    pub async fn read_status(
        &self,
        instance_id: &InstanceId,
        read: crate::store::StatusRead,
    ) -> Result<Option<InstanceStatus>, Error> {
        Ok(self.inner.store.read_status(instance_id, read).await?)
    }

    async fn require(&self, instance_id: &InstanceId) -> Result<InstanceStatus, Error> {
        self.status(instance_id, false)
            .await?
            .ok_or_else(|| Error::NotFound(instance_id.clone()))
    }

    /// A page of instances, newest first.
    pub async fn list(&self, query: &InstanceQuery) -> Result<InstancePage, Error> {
        if query.filter.matches_nothing() {
            return Ok(InstancePage {
                instances: Vec::new(),
                continuation: None,
            });
        }
        Ok(self.inner.store.list_instances(query).await?)
    }

    /// Every status change and history event committed by this engine, as
    /// it happens, and on a store that several processes share (PostgreSQL)
    /// those the others commit too (see [`crate::remote`]). A subscriber
    /// that falls behind gets `Lagged` and should re-read the statuses it
    /// cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.inner.updates.subscribe()
    }

    /// Only the changes this engine commits (e.g. to measure its own
    /// dispatch latency).
    pub fn subscribe_local(&self) -> broadcast::Receiver<Update> {
        self.inner.local_updates.subscribe()
    }

    /// Waits until the instance is terminal (or continued-as-new and then
    /// terminal) and returns its status. Driven by the update stream, not polling.
    pub async fn wait_for_completion(
        &self,
        instance_id: &InstanceId,
        timeout: Duration,
    ) -> Result<InstanceStatus, Error> {
        let mut rx = self.subscribe();
        let wait = async {
            loop {
                let status = self.require(instance_id).await?;
                if status.runtime_status.is_terminal() {
                    return Ok(status);
                }
                loop {
                    match rx.recv().await {
                        Ok(u)
                            if u.instance_id == *instance_id && u.runtime_status.is_terminal() =>
                        {
                            break
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Err(Error::ShuttingDown)
                        }
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout(instance_id.clone()))?
    }
}

/// Purges in batches until a batch comes back short.
pub(crate) async fn purge_all(
    store: &dyn Store,
    filter: &InstanceFilter,
    batch: usize,
) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let n = store.purge_instances(filter, batch).await?;
        total += n;
        if (n as usize) < batch {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

pub(crate) fn new_execution_id() -> String {
    types::new_uuid_v7().simple().to_string()
}

/// The lock that orders one instance's updates (see [`publish_in_order`]).
pub(crate) fn publish_order(inner: &Inner, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
    inner
        .publishing
        .lock()
        .expect("publishing lock")
        .entry(id.clone())
        .or_default()
        .clone()
}

/// Commits a turn (or a creation) and publishes its update, keeping one
/// instance's updates in commit order.
///
/// The commit releases the instance, so its next turn can commit and publish
/// before this task wakes up to publish: a subscriber would then see, say,
/// Running after Completed. Each turn takes its instance's lock *before*
/// committing and frees it after publishing; the next turn of the same
/// instance can only commit after this one, so it queues behind it. Other
/// instances are not held up.
pub(crate) async fn publish_in_order(
    inner: &Inner,
    id: &InstanceId,
    order: Arc<tokio::sync::Mutex<()>>,
    commit: impl std::future::Future<Output = Result<Vec<InstanceUpdate>, StoreError>>,
) -> Result<(), Error> {
    publish_ordered(inner, id, order, commit, true).await
}

/// [`publish_in_order`] of this engine's commits (`local`) or of another
/// process's (see [`crate::remote`]), which only [`Engine::subscribe`]
/// carries.
pub(crate) async fn publish_ordered(
    inner: &Inner,
    id: &InstanceId,
    order: Arc<tokio::sync::Mutex<()>>,
    commit: impl std::future::Future<Output = Result<Vec<InstanceUpdate>, StoreError>>,
    local: bool,
) -> Result<(), Error> {
    let guard = order.clone().lock_owned().await;
    let committed = commit.await.map(|updates| {
        let to_local = local && inner.local_updates.receiver_count() > 0;
        if !to_local && inner.updates.receiver_count() == 0 {
            return; // nobody listens: no allocation per update
        }
        for update in updates {
            let update = Update::new(update);
            if to_local {
                let _ = inner.local_updates.send(update.clone());
            }
            let _ = inner.updates.send(update);
        }
    });
    drop(guard);
    {
        let mut map = inner.publishing.lock().expect("publishing lock");
        // Only the map and this task hold it: nobody is queued behind.
        if Arc::strong_count(&order) == 2 {
            map.remove(id);
        }
    }
    committed?;
    Ok(())
}

async fn retention_loop(inner: Arc<Inner>, policy: RetentionPolicy) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        // An age beyond the calendar keeps everything.
        let cutoff = chrono::Duration::from_std(policy.max_age)
            .ok()
            .and_then(|age| types::now().checked_sub_signed(age))
            .unwrap_or(Timestamp::MIN_UTC);
        let filter = InstanceFilter {
            statuses: RuntimeStatus::ALL
                .into_iter()
                .filter(|s| s.is_terminal())
                .collect(),
            created_to: Some(cutoff),
            ..Default::default()
        };
        match purge_all(&*inner.store, &filter, policy.batch.max(1)).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "retention purge"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
