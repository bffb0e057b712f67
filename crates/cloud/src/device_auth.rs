//! Device tokens: the credential of the player routes (`/api/players/...`
//! except registering and joining) and the sync routes (`/api/sync/...`).
//!
//! A token arrives as `Authorization: Bearer <token>`; the players store
//! finds its device and compares hashes in constant time. The device goes
//! into the request extensions for the handler. Function and master keys
//! are not device tokens: they open the Durable Functions routes, not a
//! player's data.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::state::AppState;

/// The bearer token of a request, if it has one.
pub fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
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
