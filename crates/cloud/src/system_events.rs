//! The system topic (`galaxy-forge`): what galaxy-cloud itself publishes.
//!
//! - `Orchestration.Started`, `.Completed`, `.Failed`, `.Terminated`: from
//!   the engine store's lifecycle outbox (rows written in the commit that
//!   made the change, see `durable::store::lifecycle`).
//! - `Galaxy.Created`, `.Renamed`, `.Deleted` for changes sync applies: from
//!   the players store's outbox (rows written with the change).
//! - `Galaxy.Created` for every galaxy `Galaxy_Create_Impl` writes: from
//!   the activity itself ([`SystemEvents`]), after the galaxy's row
//!   committed. The activity's queued row is that change's outbox: it runs
//!   again until it completes, and it completes only after publishing.
//!
//! A relay reads outbox rows, publishes them to the router's store (which
//! skips an event id the topic already has), then acknowledges them, which
//! deletes them. A crash in between publishes again under the same ids, so
//! each change gives exactly one event. Relays wait on their store's signal
//! (and re-check every [`SWEEP`], for rows another process committed on a
//! shared PostgreSQL and then died before relaying).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use durable::store::LifecycleEvent;
use durable::Store;
use eventgrid::{Event, RouterStore};
use galaxy::players::{OutboxEvent, Players};
use tokio::sync::broadcast::error::RecvError;

/// The system topic (made at start, so subscribers can subscribe before
/// the first event).
pub const SYSTEM_TOPIC: &str = "galaxy-forge";

/// Rows a relay moves per round.
const BATCH: usize = 500;
/// How often a relay re-reads its outbox without a signal.
pub const SWEEP: Duration = Duration::from_secs(10);
/// Pause after a failed round (the store or the router refused).
const RETRY: Duration = Duration::from_secs(1);

/// Publishes `Galaxy.Created` on the system topic for every galaxy written
/// (the galaxy's row key is the event id, so a retried activity publishes
/// once).
pub struct SystemEvents(pub RouterStore);

impl galaxy::GalaxyObserver for SystemEvents {
    fn created(
        &self,
        g: &galaxy::Galaxy,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let event = Event::system(
            SYSTEM_TOPIC,
            &g.row_key,
            &format!("/galaxies/{}", g.row_key),
            "Galaxy.Created",
            &g.timestamp.to_rfc3339(),
            serde_json::to_value(g).unwrap_or_default(),
        );
        Box::pin(async move {
            self.0
                .publish_system(SYSTEM_TOPIC, vec![event], now_ms())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The lifecycle event as published.
pub fn lifecycle_event(e: &LifecycleEvent) -> Event {
    Event::system(
        SYSTEM_TOPIC,
        &e.event_id(),
        &format!("/orchestrations/{}/{}", e.name, e.instance_id),
        e.event_type(),
        &e.at.to_rfc3339(),
        serde_json::to_value(e).unwrap_or_default(),
    )
}

/// The galaxy event as published.
pub fn galaxy_event(e: &OutboxEvent) -> Event {
    Event::system(
        SYSTEM_TOPIC,
        &e.id,
        &e.subject,
        &e.event_type,
        &durable::types::from_millis(e.at_ms).to_rfc3339(),
        e.data.clone(),
    )
}

/// Publishes one batch of outbox rows and acknowledges them. Returns how
/// many rows it moved.
async fn relay_once<R, A, AF>(
    router: &RouterStore,
    rows: Vec<R>,
    seq: impl Fn(&R) -> i64,
    event: impl Fn(&R) -> Event,
    ack: A,
) -> Result<usize, String>
where
    A: FnOnce(Vec<i64>) -> AF,
    AF: Future<Output = Result<(), String>>,
{
    if rows.is_empty() {
        return Ok(0);
    }
    let events = rows.iter().map(&event).collect();
    router
        .publish_system(SYSTEM_TOPIC, events, now_ms())
        .await
        .map_err(|e| e.to_string())?;
    let n = rows.len();
    ack(rows.iter().map(seq).collect()).await?;
    Ok(n)
}

/// Relays the engine store's lifecycle outbox until `stop` resolves. Does
/// nothing if the store keeps no outbox.
pub async fn relay_lifecycle(
    store: Arc<dyn Store>,
    router: RouterStore,
    stop: impl Future<Output = ()> + Send,
) {
    let Some(signal) = store.lifecycle_signal() else {
        return;
    };
    tokio::pin!(stop);
    loop {
        let round = async {
            let rows = store
                .lifecycle_outbox(BATCH)
                .await
                .map_err(|e| e.to_string())?;
            relay_once(
                &router,
                rows,
                |e| e.seq,
                lifecycle_event,
                |seqs| async { store.ack_lifecycle(seqs).await.map_err(|e| e.to_string()) },
            )
            .await
        };
        let pause = match round.await {
            Ok(BATCH) => continue,
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("relaying lifecycle events: {e}");
                Some(RETRY)
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = signal.notified(), if pause.is_none() => {}
            _ = tokio::time::sleep(pause.unwrap_or(SWEEP)) => {}
        }
    }
}

/// Relays the players store's galaxy outbox until `stop` resolves.
pub async fn relay_galaxies(
    players: Players,
    router: RouterStore,
    stop: impl Future<Output = ()> + Send,
) {
    let mut changes = players.subscribe();
    tokio::pin!(stop);
    loop {
        let round = async {
            let rows = players.outbox(BATCH).await.map_err(|e| e.to_string())?;
            relay_once(
                &router,
                rows,
                |e| e.seq,
                galaxy_event,
                |seqs| async { players.ack_outbox(seqs).await.map_err(|e| e.to_string()) },
            )
            .await
        };
        let pause = match round.await {
            Ok(BATCH) => continue,
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("relaying galaxy events: {e}");
                Some(RETRY)
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            r = changes.recv(), if pause.is_none() => {
                if let Err(RecvError::Closed) = r {
                    return;
                }
            }
            _ = tokio::time::sleep(pause.unwrap_or(SWEEP)) => {}
        }
    }
}
