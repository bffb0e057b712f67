//! Sync for devices (`../shared/reference/sync-protocol.md`): push a batch
//! of mutations, pull changes after a cursor, and a live stream of pokes.
//!
//! All three need the device token and touch only the token's player. The
//! rules (exactly once, gaps, rejections, versions, tombstones) live in
//! [`galaxy::players`]; these handlers parse, delegate and map errors.

use std::convert::Infallible;

use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use galaxy::players::Device;
use serde::Deserialize;
use sync::protocol::{Chain, Poke, PushRequest, MAX_PUSH_MUTATIONS};
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use crate::error::{AppError, ErrorBody};
use crate::extract::{self, Query, Typed};
use crate::state::AppState;

/// Comment lines sent this often keep proxies from closing an idle stream.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Pushes local changes; each is applied once however often it is sent.
#[utoipa::path(
    post,
    path = "/api/sync/push",
    tag = "sync",
    request_body(content = Object, description = "`{client_id, mutations: [{mutation_id, op: put|delete, entity_id, base_version, body}]}`, at most 1000 mutations", content_type = "application/json"),
    responses(
        (status = 200, description = "`{last_mutation_id, results: [{mutation_id, status: applied|skipped|rejected, version, conflict, reason}]}`", body = Object),
        (status = 400, description = "Not JSON, or not a push", body = ErrorBody),
        (status = 401, description = "Missing, wrong or revoked device token", body = ErrorBody),
        (status = 409, description = "`ClientStateNotFound` (take a new client id, renumber from 1), `MutationGap` or `MutationIdReused` (a settled id resent for a galaxy the player never had: the device is an older copy of itself; take a new client id, renumber, pull from 0); nothing applied", body = ErrorBody),
        (status = 413, description = "More than 1000 mutations, or a body over 1 MB", body = ErrorBody),
    ),
    security(("device_token" = []))
)]
pub async fn push(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Typed(request): Typed<PushRequest>,
) -> Result<Response, AppError> {
    if request.mutations.len() > MAX_PUSH_MUTATIONS {
        return Err(galaxy::players::PlayersError::TooMany(request.mutations.len()).into());
    }
    Ok(Json(state.players.push(&device, request).await?).into_response())
}

/// Query parameters of a pull.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PullParams {
    /// The pulling client (its last settled mutation id comes back).
    pub client_id: Option<String>,
    /// Changes after this version (0: everything).
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 500).
    pub limit: Option<String>,
    /// This chain of pages began at cursor 0 (no reset below the
    /// tombstone floor, unless tombstones newer than `chain_latest` were
    /// purged since).
    pub fresh: Option<String>,
    /// With `fresh`: the player's latest version when the chain's first
    /// page was read, or the oldest version of the client's own writes
    /// settled before it if older (a pull at cursor 0 with it resets when
    /// a newer tombstone was purged).
    pub chain_latest: Option<String>,
}

fn number(name: &str, value: Option<&str>) -> Result<Option<u64>, AppError> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                AppError::bad_request(
                    "InvalidQuery",
                    format!(
                        "{name} must be a whole number >= 0 (got '{}')",
                        v.chars().take(32).collect::<String>()
                    ),
                )
            })
        })
        .transpose()
}

/// The changes after a cursor, in version order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/sync/pull",
    tag = "sync",
    params(PullParams),
    responses(
        (status = 200, description = "`{changes: [{entity_id, version, deleted, body}], cursor, has_more, last_mutation_id, latest}`, or `{reset: true}` (wipe synced rows, pull from 0)", body = Object),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing, wrong or revoked device token", body = ErrorBody),
    ),
    security(("device_token" = []))
)]
pub async fn pull(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Query(params): Query<PullParams>,
) -> Result<Response, AppError> {
    let client_id = params.client_id.unwrap_or_default();
    let cursor = number("cursor", params.cursor.as_deref())?.unwrap_or(0);
    let limit =
        number("limit", params.limit.as_deref())?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    if limit == Some(0) {
        return Err(AppError::bad_request(
            "InvalidQuery",
            "limit must be 1 to 1000",
        ));
    }
    let fresh = extract::flag("fresh", params.fresh.as_deref(), false)?;
    let chain_latest = number("chain_latest", params.chain_latest.as_deref())?;
    let chain = if fresh {
        Chain::Fresh {
            latest: chain_latest,
        }
    } else {
        Chain::Resumed
    };
    let page = state
        .players
        .pull(&device, &client_id, cursor, chain, limit)
        .await?;
    Ok(Json(page).into_response())
}

/// A live stream of pokes: after every change to the player's data, an
/// event `poke` with `{"version": N}`; pull when one arrives. Counted
/// with the device's other live streams (`--max-streams-per-key`).
#[utoipa::path(
    get,
    path = "/api/sync/events",
    tag = "sync",
    responses(
        (status = 200, description = "text/event-stream of `poke` events", content_type = "text/event-stream"),
        (status = 401, description = "Missing, wrong or revoked device token", body = ErrorBody),
        (status = 429, description = "The device has --max-streams-per-key live streams open already", body = ErrorBody),
    ),
    security(("device_token" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
) -> Result<Response, AppError> {
    // Counted with the device's other live streams.
    let open = super::stream::open(&state, super::stream::credential(None, Some(&device)))?;
    // Subscribed before the answer goes out: a change made after the client
    // sees the stream open is never missed.
    let changes = state.players.subscribe();
    let shutdown = Box::pin(state.shutdown_signal());
    let revoked = galaxy::players::revoked_key(&device.device_id);
    let pokes = stream::unfold(
        (changes, shutdown, device.player_id, 0u64, open),
        move |(mut changes, mut shutdown, player, mut last, open)| {
            let revoked = revoked.clone();
            async move {
                loop {
                    let received = tokio::select! {
                        r = changes.recv() => r,
                        _ = &mut shutdown => return None,
                    };
                    let version = match received {
                        Ok(c) if c.player_id == player => c.version,
                        // The device was revoked: its token opens nothing, and
                        // its stream ends.
                        Ok(c) if c.player_id == revoked => return None,
                        // Changes may have been missed: pull anyway.
                        Ok(c) if c.player_id == "*" => last,
                        Ok(_) => continue,
                        // Fell behind: a change of ours may be among the missed.
                        Err(RecvError::Lagged(_)) => last,
                        Err(RecvError::Closed) => return None,
                    };
                    last = last.max(version);
                    let event = Event::default()
                        .event("poke")
                        .json_data(Poke { version })
                        .unwrap_or_else(|_| Event::default().event("poke").data("{}"));
                    return Some((
                        Ok::<_, Infallible>(event),
                        (changes, shutdown, player, last, open),
                    ));
                }
            }
        },
    );
    let hello = stream::once(async { Ok::<_, Infallible>(Event::default().comment("subscribed")) });
    let body: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(hello.chain(pokes));
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}
