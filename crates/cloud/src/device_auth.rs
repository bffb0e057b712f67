//! Device tokens: the credential of the player routes (`/api/players/...`
//! except registering and joining) and the sync routes (`/api/sync/...`),
//! and, on three Durable Functions routes, a player's own way in: starting
//! `Galaxy_Create` for itself ([`DEVICE_KEY_ROUTES`]) and reading the
//! status and stream of its own instances. A player's instances have ids
//! `<player id>.<uuid>`; any other instance answers 404 to its devices.
//!
//! A token arrives as `Authorization: Bearer <token>`; the players store
//! finds its device and compares hashes in constant time. The device goes
//! into the request extensions for the handler. Function and master keys
//! are not device tokens: they open the Durable Functions routes, not a
//! player's data.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use galaxy::players::Device;

use crate::error::AppError;
use crate::state::AppState;

/// The bearer token of a request, if it has one.
pub fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: 401 without a valid, unrevoked device token; otherwise the
/// [`galaxy::players::Device`] goes into the request extensions.
pub async fn require_device(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(&request) else {
        return AppError::unauthorized(
            "a device token is required: send Authorization: Bearer <token> (register or join to get one)",
        )
        .into_response();
    };
    match state.players.authenticate(token).await {
        Ok(device) => {
            request.extensions_mut().insert(device);
            next.run(request).await
        }
        Err(e) => AppError::from(e).into_response(),
    }
}

/// The key-protected routes a device token also opens (method, template).
pub const DEVICE_KEY_ROUTES: [(Method, &str); 4] = [
    (Method::POST, "/api/orchestrators/{functionName}"),
    (
        Method::POST,
        "/api/orchestrators/{functionName}/{instanceId}",
    ),
    (
        Method::GET,
        "/runtime/webhooks/durabletask/instances/{instanceId}",
    ),
    (
        Method::GET,
        "/runtime/webhooks/durabletask/instances/{instanceId}/stream",
    ),
];

/// A request's bearer token (for a request without a valid key), and
/// whether its route is one of [`DEVICE_KEY_ROUTES`]; `None` when it has
/// no token.
pub fn token_for_key_route(request: &Request) -> Option<(String, bool)> {
    let token = bearer(request)?.to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let open = DEVICE_KEY_ROUTES
        .iter()
        .any(|(m, p)| m == request.method() && Some(*p) == route);
    Some((token, open))
}

/// 403 for a valid device token on a route it does not open (a 401 would
/// tell the device its token was revoked).
pub fn not_a_device_route() -> AppError {
    AppError::new(
        axum::http::StatusCode::FORBIDDEN,
        "Forbidden",
        "a device token opens only POST /api/orchestrators/Galaxy_Create (with or without an id of the player's) and the status and stream of the player's own instances; this route needs the function key",
    )
}

/// The instance id prefix of a player's instances.
pub fn instance_prefix(device: &Device) -> String {
    format!("{}.", device.player_id)
}

/// 404 (as for an instance that does not exist) unless the instance is
/// the device's player's.
pub fn check_owner(device: Option<&Device>, id: &durable::InstanceId) -> Result<(), AppError> {
    match device {
        Some(d) if !id.as_str().starts_with(&instance_prefix(d)) => {
            Err(durable::Error::NotFound(id.clone()).into())
        }
        _ => Ok(()),
    }
}
