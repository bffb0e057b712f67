//! Players and their devices: register (a new player), link codes, join (a
//! device of an existing player), who am I, revoke a device.
//!
//! Registering and joining need no credential (they hand one out); the
//! rest need the device's token ([`crate::device_auth`]). A device reaches
//! only its own player: another player's device id answers 404 like one
//! that does not exist.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use galaxy::players::Device;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{AppError, ErrorBody};
use crate::extract::{Path, Typed};
use crate::state::AppState;

/// Body of registering (`sync::protocol::RegisterRequest` without a code).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Shown to the player's other devices.
    /// Up to 64 characters, no control characters (surrounding spaces
    /// are trimmed; empty or absent means "device").
    #[serde(default)]
    #[schema(pattern = r"^[^\u0000-\u001F\u007F-\u009F]{0,64}$")]
    pub device_name: Option<String>,
    /// Null or absent: devices send `"code": null` when registering (a
    /// code joins an existing player: `POST /api/players/devices`).
    #[serde(default)]
    #[schema(schema_with = null_only)]
    pub code: Option<String>,
}

fn null_only() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Null)
        .build()
}

/// Body of joining (`sync::protocol::RegisterRequest` with its code).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// A link code made on a device of the player (`K7QF-9M2D`).
    pub code: String,
    /// Shown to the player's other devices.
    /// Up to 64 characters, no control characters (surrounding spaces
    /// are trimmed; empty or absent means "device").
    #[serde(default)]
    #[schema(pattern = r"^[^\u0000-\u001F\u007F-\u009F]{0,64}$")]
    pub device_name: Option<String>,
}

/// Registers a new player with this device as its first; answers the
/// device's credentials (the token is shown only here).
#[utoipa::path(
    post,
    path = "/api/players",
    tag = "players",
    request_body(content = Option<RegisterBody>, description = "The body may be empty", content_type = "application/json"),
    responses(
        (status = 201, description = "`{player_id, device_id, token}`", body = Object),
        (status = 400, description = "Bad body or device name", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    Typed(body): Typed<RegisterBody>,
) -> Result<Response, AppError> {
    if body.code.is_some() {
        return Err(AppError::bad_request(
            "InvalidRequest",
            "a link code joins an existing player: POST it to /api/players/devices",
        ));
    }
    let creds = state.players.register(body.device_name.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(creds)).into_response())
}

/// Makes a single-use link code (valid 10 minutes) for another device to
/// join this player.
#[utoipa::path(
    post,
    path = "/api/players/link-codes",
    tag = "players",
    responses(
        (status = 201, description = "`{code, expires_at}`", body = Object),
        (status = 401, description = "Missing, wrong or revoked device token", body = ErrorBody),
    ),
    security(("device_token" = []))
)]
pub async fn link_code(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
) -> Result<Response, AppError> {
    let code = state.players.create_link_code(&device).await?;
    Ok((StatusCode::CREATED, Json(code)).into_response())
}

/// Joins the player of a link code with this device.
#[utoipa::path(
    post,
    path = "/api/players/devices",
    tag = "players",
    request_body(content = JoinBody, content_type = "application/json"),
    responses(
        (status = 201, description = "`{player_id, device_id, token}`", body = Object),
        (status = 400, description = "No code, or the code is unknown, used or expired (`InvalidLinkCode`)", body = ErrorBody),
    )
)]
pub async fn join(
    State(state): State<AppState>,
    Typed(body): Typed<JoinBody>,
) -> Result<Response, AppError> {
    let creds = state
        .players
        .join(&body.code, body.device_name.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(creds)).into_response())
}

/// The player of the token and its devices.
#[utoipa::path(
    get,
    path = "/api/players/me",
    tag = "players",
    responses(
        (status = 200, description = "`{player_id, device_id, devices: [{device_id, name, created_at, revoked}]}`", body = Object),
        (status = 401, description = "Missing, wrong or revoked device token", body = ErrorBody),
    ),
    security(("device_token" = []))
)]
pub async fn me(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
) -> Result<Response, AppError> {
    Ok(Json(state.players.me(&device).await?).into_response())
}

/// Revokes a device of this player: its token stops working at once.
#[utoipa::path(
    delete,
    path = "/api/players/devices/{deviceId}",
    tag = "players",
    params(("deviceId" = String, Path, description = "A device of this player")),
    responses(
        (status = 200, description = "Revoked", body = Object),
        (status = 401, description = "Missing, wrong or revoked device token", body = ErrorBody),
        (status = 404, description = "No such device of this player", body = ErrorBody),
    ),
    security(("device_token" = []))
)]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Path(device_id): Path<String>,
) -> Result<Response, AppError> {
    state.players.revoke(&device, &device_id).await?;
    Ok(Json(serde_json::json!({ "device_id": device_id, "revoked": true })).into_response())
}
