//! What an orchestration monitor needs from a node: recent instances and one
//! instance as [`InstanceView`]s, the galaxies, and [`forward`], which turns
//! the engine's update stream into view and galaxy notifications for a
//! [`LiveSink`] (the desktop app's sink emits them as UI events).
//!
//! Invariant: a sink sees every change of every instance as a whole
//! [`InstanceView`] (never a diff), so a consumer that missed some keeps
//! the newest by `(created_at, version)` and is right again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use durable::{Engine, InstanceFilter, InstanceId, InstanceQuery, RuntimeStatus};
use tokio::sync::broadcast;

use crate::table::{Galaxy, GalaxyTable, TableError};
use crate::view::{Applied, InstanceView};

/// Where [`forward`] delivers what happens.
pub trait LiveSink: Send + Sync + 'static {
    /// An instance changed; `view` is its whole current view.
    fn instance(&self, view: &InstanceView);
    /// A galaxy was written by a completed instance.
    fn galaxy(&self, galaxy: &Galaxy);
    /// Updates were lost (the sink fell behind): re-read everything.
    fn resync(&self);
}

/// Follows `updates` (taken from `engine.subscribe()` before any work the
/// sink must see) until `stop` resolves or the engine goes away.
///
/// Keeps a view per live instance; an update for an instance it has not
/// seen created (e.g. one resumed after a restart) is answered by reading
/// the instance from the store once. Views of finished instances are
/// dropped after their last notification, so memory follows the number of
/// live instances.
pub async fn forward(
    engine: Engine,
    table: Arc<GalaxyTable>,
    mut updates: broadcast::Receiver<durable::Update>,
    sink: impl LiveSink,
    stop: impl Future<Output = ()>,
) {
    let mut live: HashMap<InstanceId, InstanceView> = HashMap::new();
    tokio::pin!(stop);
    loop {
        let update = tokio::select! {
            _ = &mut stop => return,
            u = updates.recv() => u,
        };
        let update = match update {
            Ok(u) => u,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "monitor fell behind the update stream");
                live.clear();
                sink.resync();
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let id = update.instance_id.clone();
        let view = if InstanceView::is_creation(&update) {
            Some(InstanceView::created(&update))
        } else {
            let followed = live
                .remove(&id)
                .and_then(|mut v| (v.apply(&update) == Applied::Applied).then_some(v));
            match followed {
                Some(v) => Some(v),
                None => match engine.status(&id, true).await {
                    Ok(Some(status)) => Some(InstanceView::from_status(&status)),
                    Ok(None) => None, // purged meanwhile
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "reading instance failed");
                        None
                    }
                },
            }
        };
        let Some(view) = view else { continue };
        if view.runtime_status == RuntimeStatus::Completed {
            if let Some(g) = &view.galaxy {
                match table.get(&g.partition_key, &g.row_key) {
                    Ok(Some(galaxy)) => sink.galaxy(&galaxy),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(instance = %id, error = %e, "reading galaxy failed"),
                }
            }
        }
        sink.instance(&view);
        if !view.is_terminal() {
            live.insert(id, view);
        }
    }
}

/// The newest `limit` instances (with the given statuses, or all), as full
/// views with tasks and timeline.
pub async fn recent_instances(
    engine: &Engine,
    statuses: Vec<RuntimeStatus>,
    limit: usize,
) -> Result<Vec<InstanceView>, durable::Error> {
    let page = engine
        .list(&InstanceQuery {
            filter: InstanceFilter {
                statuses,
                ..Default::default()
            },
            page_size: limit.clamp(1, 1000),
            with_input: true,
            continuation: None,
        })
        .await?;
    let mut views = Vec::with_capacity(page.instances.len());
    for summary in page.instances {
        // Read again with history; purged in between means skip it.
        if let Some(status) = engine.status(&summary.instance_id, true).await? {
            views.push(InstanceView::from_status(&status));
        }
    }
    Ok(views)
}

/// One instance as a full view, or `None` when there is no such instance.
pub async fn instance(
    engine: &Engine,
    instance_id: &InstanceId,
) -> Result<Option<InstanceView>, durable::Error> {
    Ok(engine
        .status(instance_id, true)
        .await?
        .map(|s| InstanceView::from_status(&s)))
}

/// Every galaxy, up to `limit`, in key order (creation order: row keys are
/// time-ordered UUIDs).
pub fn all_galaxies(table: &GalaxyTable, limit: usize) -> Result<Vec<Galaxy>, TableError> {
    let mut out = Vec::new();
    let mut continuation = None;
    while out.len() < limit {
        let page = table.list(None, 1000, continuation.as_deref())?;
        out.extend(page.galaxies);
        continuation = page.continuation;
        if continuation.is_none() {
            break;
        }
    }
    out.truncate(limit);
    Ok(out)
}
