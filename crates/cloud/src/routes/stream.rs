//! Live updates as Server-Sent Events (an extension to the contract):
//! every status change and history event, as the engine commits them.
//!
//! Events: `status` (a full status body: the current state of a single
//! instance, sent first and after a re-sync), `update` (one committed
//! change), `resync` (this subscriber fell behind and missed updates:
//! re-read what you care about; the single-instance stream re-sends the
//! status itself). Streams end when the server shuts down.
//!
//! Bounds: an update carries at most 4 KiB of payloads (larger inputs and
//! results come as an `$elided` marker: read them from the status or
//! history routes), a subscriber that stops reading falls behind and gets
//! `resync` instead of pinning memory, and each credential (the function
//! key, the master key, a device) has at most `--max-streams-per-key`
//! streams open (429 beyond).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use durable::{Engine, InstanceId, Update};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::IntoParams;

use crate::error::{AppError, ErrorBody};
use crate::extract::{self, Path, Query};
use crate::metrics::Metrics;
use crate::payload::{self, StatusOptions};
use crate::state::AppState;

/// Comment lines sent this often keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Query parameters of the streams.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct StreamParams {
    /// Include results and payloads in history events (default false).
    pub show_history_output: Option<String>,
}

/// Decrements the open-streams gauge and the credential's count when a
/// stream is dropped, however it ends.
pub(crate) struct OpenStream {
    metrics: Arc<Metrics>,
    per_key: Arc<crate::state::StreamCounts>,
    key: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.stream_delta(-1);
        self.per_key.release(&self.key);
    }
}

/// Who a stream is counted against: the key it was opened with, or the
/// device.
pub(crate) fn credential(
    access: Option<&crate::keys::Access>,
    device: Option<&galaxy::players::Device>,
) -> String {
    match (access, device) {
        (Some(a), _) => format!("{a:?}"),
        (None, Some(d)) => format!("device:{}", d.device_id),
        (None, None) => "anonymous".into(),
    }
}

struct Feed {
    updates: broadcast::Receiver<Update>,
    only: Option<InstanceId>,
    engine: Engine,
    show_output: bool,
    queued: VecDeque<Event>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    _open: OpenStream,
}

fn json_event(name: &str, body: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(body)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

async fn status_event(engine: &Engine, id: &InstanceId) -> Option<Event> {
    let status = engine.status(id, false).await.ok().flatten()?;
    Some(json_event(
        "status",
        &payload::status_body(
            &status,
            StatusOptions {
                show_input: true,
                show_history_output: false,
            },
        ),
    ))
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.queued.pop_front() {
            return Some(e);
        }
        loop {
            let received = tokio::select! {
                r = self.updates.recv() => r,
                _ = &mut self.shutdown => return None,
            };
            match received {
                Ok(u) if matches!(&self.only, Some(id) if *id != u.instance_id) => continue,
                Ok(u) => {
                    return Some(json_event(
                        "update",
                        &payload::update_body(&u, self.show_output),
                    ));
                }
                Err(RecvError::Lagged(missed)) => {
                    let resync = json_event("resync", &serde_json::json!({ "missed": missed }));
                    if let Some(id) = self.only.clone() {
                        if let Some(status) = status_event(&self.engine, &id).await {
                            self.queued.push_back(status);
                        }
                    }
                    return Some(resync);
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn sse(feed: Feed) -> Response {
    let events = stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        Some((Ok::<_, Infallible>(e), feed))
    });
    // A first comment makes the response (and its headers) go out at once,
    // so a client knows it is subscribed before it triggers anything.
    let hello = stream::once(async { Ok::<_, Infallible>(Event::default().comment("subscribed")) });
    let body: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(hello.chain(events));
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Takes one of `key`'s live-stream places (429 `TooManyStreams` when it
/// has none left); the place comes back when the guard drops, however the
/// stream ends. The sync pokes stream counts against it too.
pub(crate) fn open(state: &AppState, key: String) -> Result<OpenStream, AppError> {
    if !state
        .streams
        .acquire(&key, state.limits.max_streams_per_key)
    {
        return Err(AppError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "TooManyStreams",
            format!(
                "this credential already has {} live streams open; close one first",
                state.limits.max_streams_per_key
            ),
        ));
    }
    state.metrics.stream_delta(1);
    Ok(OpenStream {
        metrics: state.metrics.clone(),
        per_key: state.streams.clone(),
        key,
    })
}

fn feed(
    state: &AppState,
    only: Option<InstanceId>,
    show_output: bool,
    key: String,
) -> Result<Feed, AppError> {
    let open = open(state, key)?;
    Ok(Feed {
        // Subscribed before anything is read, so no change falls between
        // the first status and the first update.
        updates: state.engine.subscribe(),
        only,
        engine: state.engine.clone(),
        show_output,
        queued: VecDeque::new(),
        shutdown: Box::pin(state.shutdown_signal()),
        _open: open,
    })
}

/// Streams one instance: its current status, then every change.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/stream",
    tag = "live",
    params(("instanceId" = String, Path, description = "Instance id"), StreamParams),
    responses(
        (status = 200, description = "text/event-stream: `status` first, then `update` per change, `resync` after falling behind",
         content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 429, description = "Too many live streams open with this credential", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn instance_stream(
    State(state): State<AppState>,
    access: Option<axum::extract::Extension<crate::keys::Access>>,
    device: Option<axum::extract::Extension<galaxy::players::Device>>,
    Path(raw_id): Path<String>,
    Query(params): Query<StreamParams>,
) -> Result<Response, AppError> {
    let id = extract::instance_id(raw_id)?;
    crate::device_auth::check_owner(device.as_ref().map(|d| &d.0), &id)?;
    let show_output = extract::flag(
        "showHistoryOutput",
        params.show_history_output.as_deref(),
        false,
    )?;
    let key = credential(access.as_deref(), device.as_deref());
    let mut feed = feed(&state, Some(id.clone()), show_output, key)?;
    let status = state
        .engine
        .status(&id, false)
        .await?
        .ok_or_else(|| AppError::from(durable::Error::NotFound(id)))?;
    feed.queued.push_back(json_event(
        "status",
        &payload::status_body(
            &status,
            StatusOptions {
                show_input: true,
                show_history_output: false,
            },
        ),
    ));
    Ok(sse(feed))
}

/// Streams every instance's changes.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/stream",
    tag = "live",
    params(StreamParams),
    responses(
        (status = 200, description = "text/event-stream: an `update` per change, `resync` after falling behind",
         content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 429, description = "Too many live streams open with this credential", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn all_stream(
    State(state): State<AppState>,
    access: Option<axum::extract::Extension<crate::keys::Access>>,
    Query(params): Query<StreamParams>,
) -> Result<Response, AppError> {
    let show_output = extract::flag(
        "showHistoryOutput",
        params.show_history_output.as_deref(),
        false,
    )?;
    let key = credential(access.as_deref(), None);
    Ok(sse(feed(&state, None, show_output, key)?))
}
