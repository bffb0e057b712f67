//! The two dispatcher loops of an [`Engine`](crate::Engine): one leases
//! orchestration work items and runs their turns, the other leases
//! activities and runs them, each within the engine's concurrency limits
//! and waking on the store's signal or its next due time rather than
//! polling. Kept apart from `engine.rs`, which commits and publishes what
//! they produce and serves the client API.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{publish_in_order, publish_order, Completion, Inner};
use crate::error::Error;
use crate::history::{EventKind, Message};
use crate::registry::ActivityContext;
use crate::run::panic_failure;
use crate::store::{ActivityWorkItem, OrchestrationWorkItem, StoreError, WorkKind};
use crate::turn::prepare_turn;
use crate::types::{self, FailureDetails};

/// Back-off after a store error in a dispatcher loop.
const STORE_ERROR_BACKOFF: Duration = Duration::from_millis(200);

/// The least a dispatcher waits when the store says work is due already
/// but the fetch right after the last such answer found none (a due row
/// another transaction holds for a moment, which a fetch skips): it waits
/// this long or for the store's signal, instead of fetching in a loop.
const DUE_BUT_TAKEN: Duration = Duration::from_millis(5);

/// How long a dispatcher sleeps for a wake-up `wake_in` away (`None`: no
/// work planned); `again`: the last wait was also for work due already,
/// and the fetch in between found nothing.
fn sleep_for(wake_in: Option<Duration>, again: bool) -> Duration {
    match wake_in {
        None => Duration::from_secs(3600),
        Some(d) if d.is_zero() && again => DUE_BUT_TAKEN,
        Some(d) => d,
    }
}

/// How far away the store's next due time is (`None`: nothing planned).
/// A store that could not say is asked again soon: read as "nothing
/// planned", its timers and expired leases would wait for the hour-long
/// idle sleep.
fn wake_in(
    planned: Result<Option<types::Timestamp>, ()>,
    now: types::Timestamp,
) -> Option<Duration> {
    match planned {
        Ok(at) => at.map(|t| (t - now).to_std().unwrap_or(Duration::ZERO)),
        Err(()) => Some(STORE_ERROR_BACKOFF),
    }
}

/// Waits for the signal, the store's next due time of `kind`, or shutdown;
/// returns whether the store said work was due already (see
/// [`sleep_for`]).
async fn wait_for_work(
    inner: &Inner,
    kind: WorkKind,
    again: bool,
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
) -> bool {
    let mut shutdown = inner.shutdown.subscribe();
    let planned = inner.store.next_wake_at(kind).await;
    if let Err(e) = &planned {
        tracing::warn!("asking the store when work is due: {e}");
    }
    let wake_in = wake_in(planned.map_err(drop), types::now());
    let due = wake_in.is_some_and(|d| d.is_zero());
    let sleep = sleep_for(wake_in, again);
    tokio::select! {
        _ = notified => {}
        _ = tokio::time::sleep(sleep) => {}
        // Not `changed()`: a fresh receiver has already "seen" a shutdown
        // requested before it subscribed, and would sleep through it.
        _ = shutdown.wait_for(|s| *s) => {}
    }
    due
}

pub(crate) async fn orchestration_loop(inner: Arc<Inner>) {
    let slots = inner.orchestration_slots.clone();
    dispatch(
        inner,
        WorkKind::Orchestration,
        slots,
        "orchestration",
        |inner, n| async move {
            let lease = inner.config.orchestration_lease;
            inner.store.fetch_orchestration_work(n, lease).await
        },
        |inner, item| async move { process_turn(&inner, item).await },
    )
    .await
}

pub(crate) async fn activity_loop(inner: Arc<Inner>) {
    let slots = inner.activity_slots.clone();
    dispatch(
        inner,
        WorkKind::Activity,
        slots,
        "activity",
        |inner, n| async move {
            let lease = inner.config.activity_lease;
            inner.store.fetch_activity_work(n, lease).await
        },
        |inner, item| async move { process_activity(&inner, item).await },
    )
    .await
}

/// One dispatcher: takes free `slots`, fetches that many work items of
/// one kind, runs each on its own task holding its slot, and waits for
/// the kind's signal (or the store's next due time) when there is none.
async fn dispatch<T, Fetched, Processed>(
    inner: Arc<Inner>,
    kind: WorkKind,
    slots: Arc<Semaphore>,
    what: &'static str,
    fetch: impl Fn(Arc<Inner>, usize) -> Fetched,
    process: impl Fn(Arc<Inner>, T) -> Processed,
) where
    T: Send + 'static,
    Fetched: std::future::Future<Output = Result<Vec<T>, StoreError>>,
    Processed: std::future::Future<Output = ()> + Send + 'static,
{
    let signal = inner.store.work_signal();
    // The last wait was for work the store said was due already.
    let mut was_due = false;
    while !*inner.shutdown.borrow() {
        let notified = signal.of(kind).notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(permits) = acquire_some(&slots, &inner).await else {
            break;
        };
        let items = match fetch(inner.clone(), permits.len()).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "fetching {what} work failed");
                tokio::time::sleep(STORE_ERROR_BACKOFF).await;
                continue;
            }
        };
        if items.is_empty() {
            drop(permits);
            was_due = wait_for_work(&inner, kind, was_due, notified).await;
            continue;
        }
        was_due = false;
        for (item, permit) in items.into_iter().zip(permits) {
            // The work owns its clone of the engine and drops it when done,
            // before the slot: shutdown waits for the slots, then the store
            // may be reopened.
            let work = process(inner.clone(), item);
            tokio::spawn(async move {
                work.await;
                drop(permit);
            });
        }
    }
}

/// Takes every free slot (at least one, waiting for it), up to 128 at a
/// time; `None` on shutdown.
async fn acquire_some(slots: &Arc<Semaphore>, inner: &Inner) -> Option<Vec<OwnedSemaphorePermit>> {
    let mut shutdown = inner.shutdown.subscribe();
    let first = tokio::select! {
        p = slots.clone().acquire_owned() => p.ok()?,
        _ = shutdown.wait_for(|s| *s) => return None,
    };
    let mut permits = vec![first];
    while permits.len() < 128 {
        match slots.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    Some(permits)
}

async fn process_activity(inner: &Inner, item: ActivityWorkItem) {
    let a = &item.activity;
    let result = if item.attempts > inner.config.max_attempts {
        Err(FailureDetails::new(
            "Poison",
            format!(
                "activity '{}' quarantined after {} deliveries without completing",
                a.name,
                item.attempts - 1
            ),
        ))
    } else {
        match inner.registry.activities.get(&a.name) {
            None => Err(FailureDetails::new(
                "UnknownActivity",
                format!("no activity named '{}' is registered", a.name),
            )),
            Some(func) => {
                let ctx = ActivityContext {
                    instance_id: a.instance_id.clone(),
                    execution_id: a.execution_id.clone(),
                    task_id: a.task_id,
                    name: a.name.clone(),
                    attempt: item.attempts,
                };
                let input = a.input.clone();
                let call = std::panic::catch_unwind(AssertUnwindSafe(|| func(ctx, input)));
                match call {
                    Err(p) => Err(panic_failure("activity", p)),
                    Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(r) => r,
                        Err(p) => Err(panic_failure("activity", p)),
                    },
                }
            }
        }
    };
    let kind = match result {
        Ok(result) => EventKind::TaskCompleted {
            task_id: a.task_id,
            result,
        },
        Err(error) => EventKind::TaskFailed {
            task_id: a.task_id,
            error,
        },
    };
    let message = Message {
        execution_id: Some(a.execution_id.clone()),
        visible_at: None,
        sent_at: types::now(),
        kind,
    };
    complete_together(
        inner,
        Completion {
            lock: item.lock.clone(),
            name: a.name.clone(),
            result: message,
        },
    )
    .await;
}

/// Hands an activity's result to the store together with any that finished
/// at the same moment (the parallel activities of a fan-out usually do):
/// the store then makes them visible at once and the instance takes one
/// turn for all of them instead of one each ([`crate::coalesce`]).
async fn complete_together(inner: &Inner, completion: Completion) {
    inner
        .completions
        .run(completion, |batch| complete_batch(inner, batch))
        .await;
}

async fn complete_batch(inner: &Inner, batch: Vec<Completion>) {
    let (names, items): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|c| ((c.lock.clone(), c.name), (c.lock, c.result)))
        .unzip();
    let results = inner.store.complete_activities(items).await;
    for ((lock, name), result) in names.iter().zip(results) {
        let Err(e) = result else { continue };
        tracing::warn!(error = %e, activity = %name, "completing activity failed; it will run again");
        if !matches!(e, StoreError::LeaseLost) {
            let _ = inner
                .store
                .abandon_activity_work(lock, STORE_ERROR_BACKOFF)
                .await;
        }
    }
}

async fn process_turn(inner: &Inner, item: OrchestrationWorkItem) {
    let id = item.instance_id.clone();
    let lock = item.lock.clone();
    match run_turn(inner, item).await {
        Ok(()) => {}
        Err(e) => {
            inner.cache.lock().expect("cache lock").pop(&id);
            tracing::warn!(instance = %id, error = %e, "turn failed; retrying");
            if !matches!(e, Error::Store(StoreError::LeaseLost)) {
                let _ = inner
                    .store
                    .abandon_orchestration_work(&lock, STORE_ERROR_BACKOFF)
                    .await;
            }
        }
    }
}

async fn run_turn(inner: &Inner, item: OrchestrationWorkItem) -> Result<(), Error> {
    let turn = prepare_turn(inner, item).await?;
    let id = turn.commit.instance_id.clone();
    // Cached before the commit: the commit releases the instance, and a turn
    // that started before the run was back in the cache would replay the
    // whole history. A failed commit drops it again (see `process_turn`).
    let order = publish_order(inner, &id);
    if let Some(run) = turn.run {
        inner.cache.lock().expect("cache lock").put(id.clone(), run);
    }
    let commit = inner.store.commit_turn(turn.commit);
    publish_in_order(inner, &id, order, async {
        commit.await.map(|()| vec![turn.update])
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_due_already_is_fetched_at_once_and_then_waited_for_briefly() {
        let ms = Duration::from_millis;
        let now = types::now();
        assert_eq!(wake_in(Ok(None), now), None);
        assert_eq!(
            wake_in(Ok(Some(now + chrono::Duration::milliseconds(40))), now),
            Some(ms(40))
        );
        assert_eq!(
            wake_in(Ok(Some(now - chrono::Duration::seconds(1))), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wake_in(Err(()), now),
            Some(STORE_ERROR_BACKOFF),
            "a failed read is asked again soon"
        );
        assert_eq!(sleep_for(None, false), Duration::from_secs(3600));
        assert_eq!(sleep_for(Some(ms(40)), false), ms(40));
        assert_eq!(sleep_for(Some(ms(40)), true), ms(40));
        // Due now: fetch at once; due now again after an empty fetch: the
        // row is held elsewhere, so wait a little (or for the signal).
        assert_eq!(sleep_for(Some(Duration::ZERO), false), Duration::ZERO);
        assert_eq!(sleep_for(Some(Duration::ZERO), true), DUE_BUT_TAKEN);
    }
}
