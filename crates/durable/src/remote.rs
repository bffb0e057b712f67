//! Live updates for the changes other processes commit, on a store that
//! several processes share (PostgreSQL: [`Store::remote_changes`]).
//!
//! Why: a client talks to one process, but its instance may run in
//! another (it moves when its home is busy or gone). A starter waiting for
//! completion, or a live stream, must see the instance's changes wherever
//! they commit. The store announces each commit (instance, history length
//! before and after) to the other processes; this task reads the instance's
//! status and the events the change added and publishes them to
//! [`Engine::subscribe`](crate::Engine::subscribe) subscribers, in each
//! instance's commit order, once.
//!
//! Reads cost the store, so nothing is read while nobody subscribes; an
//! instance's next change then publishes from where that subscriber
//! starts. A creation is published as Pending; a turn's update carries the
//! status read, which may already be later than the change's events when
//! turns commit faster than this task reads them; events are never skipped
//! or repeated.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::engine::{publish_order, publish_ordered, Inner, InstanceUpdate};
use crate::store::{RemoteChange, Store};
use crate::types::InstanceId;

/// Instances whose published history length is remembered; past this the
/// memory is dropped (a later change then publishes from its own start).
const REMEMBERED: usize = 100_000;

/// Publishes remote changes until the engine shuts down.
pub(crate) async fn run(inner: Arc<Inner>, mut changes: broadcast::Receiver<RemoteChange>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut published: HashMap<InstanceId, u64> = HashMap::new();
    loop {
        let received = tokio::select! {
            r = changes.recv() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let change = match received {
            Ok(c) => c,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind other processes' changes; their next changes publish from there"
                );
                published.clear();
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if inner.updates.receiver_count() == 0 {
            published.remove(&change.instance_id);
            continue;
        }
        let seen = published.get(&change.instance_id).copied();
        let Some(start) = start_of(&change, seen) else {
            continue;
        };
        match update_for(inner.store.as_ref(), &change, start).await {
            Ok(Some(update)) => {
                let id = change.instance_id.clone();
                let order = publish_order(&inner, &id);
                let _ =
                    publish_ordered(&inner, &id, order, async { Ok(vec![update]) }, false).await;
                if published.len() >= REMEMBERED {
                    published.clear();
                }
                published.insert(id, change.history_to);
            }
            // Purged meanwhile: nothing to tell.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(instance = %change.instance_id, error = %e, "cannot read another process's change")
            }
        }
    }
}

/// Where the events to publish for `change` start, given the history
/// length already published for its instance (`seen`); `None` when the
/// change adds nothing new (a duplicate, or older than what was published).
fn start_of(change: &RemoteChange, seen: Option<u64>) -> Option<u64> {
    let (from, to) = (change.history_from, change.history_to);
    match seen {
        // A creation: its status, no events; stale once events were seen.
        _ if to == 0 => (seen.unwrap_or(0) == 0).then_some(0),
        // The history was replaced (continue-as-new, rewind): from 0.
        Some(_) if from == 0 => Some(0),
        Some(p) if p >= to => None,
        // Events between what was published and this change's own start
        // were missed (nobody subscribed): published now too.
        Some(p) => Some(p),
        None => Some(from),
    }
}

/// The update for `change`: the instance's status as read now and its
/// history events `start..history_to`, with payloads bounded as the
/// engine's own updates are.
async fn update_for(
    store: &dyn Store,
    change: &RemoteChange,
    start: u64,
) -> Result<Option<InstanceUpdate>, crate::store::StoreError> {
    let added = change.history_to > start;
    let Some(mut status) = store.get_instance(&change.instance_id, added).await? else {
        return Ok(None);
    };
    if change.history_to == 0 {
        // A creation is Pending, whatever its first turn did since.
        return Ok(Some(InstanceUpdate {
            instance_id: change.instance_id.clone(),
            name: status.name,
            runtime_status: crate::types::RuntimeStatus::Pending,
            history: Vec::new(),
            output: None,
            custom_status: None,
            failure: None,
            at: status.created_at,
        }));
    }
    let mut budget = crate::elide::Budget::default();
    let history = if let Some(all) = status.history.take() {
        let end = (change.history_to as usize).min(all.len());
        let begin = (start as usize).min(end);
        crate::elide::history(&all[begin..end], &mut budget)
    } else {
        Vec::new()
    };
    Ok(Some(InstanceUpdate {
        instance_id: change.instance_id.clone(),
        name: status.name,
        runtime_status: status.runtime_status,
        history,
        output: status
            .output
            .as_ref()
            .map(|v| crate::elide::value(v, &mut budget)),
        custom_status: status
            .custom_status
            .as_ref()
            .map(|v| crate::elide::value(v, &mut budget)),
        failure: status.failure,
        at: status.last_updated_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(from: u64, to: u64) -> RemoteChange {
        RemoteChange {
            instance_id: InstanceId::new("i").unwrap(),
            history_from: from,
            history_to: to,
        }
    }

    #[test]
    fn each_event_is_published_once_and_in_order() {
        // First sight: from the change's own start.
        assert_eq!(start_of(&change(3, 5), None), Some(3));
        // Next change continues where the last one ended.
        assert_eq!(start_of(&change(5, 8), Some(5)), Some(5));
        // A gap (changes missed while nobody listened) is filled.
        assert_eq!(start_of(&change(8, 9), Some(5)), Some(5));
        // A late or repeated announcement adds nothing.
        assert_eq!(start_of(&change(3, 5), Some(8)), None);
        assert_eq!(start_of(&change(5, 8), Some(8)), None);
        // A replaced history starts over.
        assert_eq!(start_of(&change(0, 2), Some(8)), Some(0));
        // A creation: its status once, never after events were published.
        assert_eq!(start_of(&change(0, 0), None), Some(0));
        assert_eq!(start_of(&change(0, 0), Some(0)), Some(0));
        assert_eq!(start_of(&change(0, 0), Some(4)), None);
    }
}
