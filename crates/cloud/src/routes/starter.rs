//! `POST /api/orchestrators/{functionName}[/{instanceId}]`: start an
//! orchestration and answer the check-status payload, or, with `timeout`,
//! wait for it and answer its output.

use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use durable::{InstanceId, RuntimeStatus};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use galaxy::players::Device;

use crate::device_auth;
use crate::error::{AppError, ErrorBody};
use crate::extract::{self, JsonBody, Path, Query};
use crate::payload::{self, BaseUrl, CheckStatus, StatusBody, StatusOptions};
use crate::state::AppState;

/// Longest wait of the `timeout` mode; a longer request waits this long.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// `Retry-After` of the starter's 202, in seconds (the contract's value).
const STARTER_RETRY_AFTER: &str = "10";

/// Query parameters of the starter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct StartParams {
    /// Seconds to wait for the instance to finish; if it does, the answer is
    /// 200 with its output.
    pub timeout: Option<String>,
    /// Accepted for compatibility and checked, but unused: the wait is
    /// woken by the engine's update stream, it does not poll.
    pub polling_interval: Option<String>,
}

/// The 202 answer: `Location` (the status URI), `Retry-After` and the
/// check-status payload.
pub(crate) fn accepted(
    state: &AppState,
    base: &BaseUrl,
    id: &InstanceId,
    retry_after: &'static str,
) -> Response {
    accepted_with(
        payload::check_status(base, id.as_str(), &state.keys.system_key()),
        retry_after,
    )
}

fn accepted_with(payload: CheckStatus, retry_after: &'static str) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(&payload)).into_response();
    if let Ok(location) = HeaderValue::from_str(&payload.status_query_get_uri) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    response
}

async fn start_inner(
    state: AppState,
    base: BaseUrl,
    name: String,
    instance_id: Option<InstanceId>,
    params: StartParams,
    input: Value,
    device: Option<Device>,
) -> Result<Response, AppError> {
    // A player's device starts Galaxy_Create for itself only: the id marks
    // the instance as the player's and the input names the player. An id
    // the device chose (of its player's) starts it once: a start sent again
    // after its answer was lost finds the instance and answers for it,
    // rather than making a second galaxy.
    let (instance_id, input) = match &device {
        None => (instance_id, input),
        Some(d) if name.eq_ignore_ascii_case(galaxy::GALAXY_CREATE) => {
            let prefix = device_auth::instance_prefix(d);
            let id = match instance_id {
                Some(id) if id.as_str().starts_with(&prefix) => id,
                Some(_) => {
                    return Err(AppError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("a device starts only its player's instances: ids that begin with '{prefix}'"),
                    ))
                }
                None => InstanceId::new(format!("{prefix}{}", uuid::Uuid::now_v7().simple()))?,
            };
            let input = serde_json::to_value(galaxy::CreateInput {
                player: Some(galaxy::PlayerRef {
                    player_id: d.player_id.clone(),
                    device_name: d.name.clone(),
                }),
            })
            .expect("input serializes");
            (Some(id), input)
        }
        Some(_) => {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "a device token starts only {}; other orchestrations need the function key",
                    galaxy::GALAXY_CREATE
                ),
            ))
        }
    };
    let timeout = params
        .timeout
        .as_deref()
        .map(|t| extract::seconds("timeout", t))
        .transpose()?;
    if let Some(p) = params.polling_interval.as_deref() {
        extract::seconds("pollingInterval", p)?;
    }
    let id = match (&device, instance_id) {
        (Some(_), Some(id)) => {
            state
                .engine
                .start_orchestration_once(&name, id.clone(), input)
                .await?;
            id
        }
        (_, instance_id) => {
            state
                .engine
                .start_orchestration(&name, instance_id, input)
                .await?
        }
    };
    if let Some(t) = timeout.filter(|t| *t > 0.0) {
        // Capped before converting: a huge finite value overflows Duration.
        let wait = Duration::from_secs_f64(t.min(MAX_WAIT.as_secs_f64()));
        let done = tokio::select! {
            r = state.engine.wait_for_completion(&id, wait) => Some(r),
            // A shutdown answers the waiting caller with the 202 at once.
            _ = state.shutdown_signal() => None,
        };
        match done {
            Some(Ok(status)) if status.runtime_status == RuntimeStatus::Completed => {
                let output = status.output.unwrap_or(Value::Null);
                return Ok((StatusCode::OK, Json(output)).into_response());
            }
            Some(Ok(status)) => {
                let body = payload::status_body(
                    &status,
                    StatusOptions {
                        show_input: true,
                        show_history_output: false,
                    },
                );
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
            Some(Err(durable::Error::Timeout(_))) | None => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
    Ok(match device {
        Some(_) => accepted_with(
            payload::check_status_for_device(&base, id.as_str()),
            STARTER_RETRY_AFTER,
        ),
        None => accepted(&state, &base, &id, STARTER_RETRY_AFTER),
    })
}

/// Starts `functionName` with a generated instance id.
#[utoipa::path(
    post,
    path = "/api/orchestrators/{functionName}",
    tag = "starter",
    params(("functionName" = String, Path, description = "Registered orchestration name, e.g. Galaxy_Create"), StartParams),
    request_body(content = Object, description = "The orchestration input as JSON; may be empty", content_type = "application/json"),
    responses(
        (status = 202, description = "Started", body = CheckStatus,
         headers(("Location" = String, description = "statusQueryGetUri"), ("Retry-After" = String, description = "10"))),
        (status = 200, description = "With timeout: finished in time; the output (Completed) or the status (otherwise)", body = StatusBody),
        (status = 400, description = "Body not JSON or bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "A device token asked for another orchestration than Galaxy_Create", body = ErrorBody),
        (status = 404, description = "Unknown orchestration", body = ErrorBody),
        (status = 413, description = "Body over 1 MB", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("device_token" = []))
)]
pub async fn start(
    State(state): State<AppState>,
    device: Option<Extension<Device>>,
    base: BaseUrl,
    Path(function_name): Path<String>,
    Query(params): Query<StartParams>,
    JsonBody(input): JsonBody,
) -> Result<Response, AppError> {
    let device = device.map(|d| d.0);
    start_inner(state, base, function_name, None, params, input, device).await
}

/// Starts `functionName` under a caller-chosen instance id (a singleton:
/// 409 while an instance with this id is live). A player's device starts
/// only `Galaxy_Create`, under an id of its player's, and once: a start
/// sent again finds the instance and answers for it.
#[utoipa::path(
    post,
    path = "/api/orchestrators/{functionName}/{instanceId}",
    tag = "starter",
    params(
        ("functionName" = String, Path, description = "Registered orchestration name"),
        ("instanceId" = String, Path, description = "1 to 256 characters, none of / \\ # ? or control characters"),
        StartParams
    ),
    request_body(content = Object, description = "The orchestration input as JSON; may be empty", content_type = "application/json"),
    responses(
        (status = 202, description = "Started", body = CheckStatus,
         headers(("Location" = String, description = "statusQueryGetUri"), ("Retry-After" = String, description = "10"))),
        (status = 200, description = "With timeout: finished in time", body = StatusBody),
        (status = 400, description = "Body not JSON, invalid instance id or bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 403, description = "A device token asked for another orchestration than Galaxy_Create, or an id not of its player's", body = ErrorBody),
        (status = 404, description = "Unknown orchestration", body = ErrorBody),
        (status = 409, description = "A live instance has this id", body = ErrorBody),
        (status = 413, description = "Body over 1 MB", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("device_token" = []))
)]
pub async fn start_with_id(
    State(state): State<AppState>,
    device: Option<Extension<Device>>,
    base: BaseUrl,
    Path((function_name, instance_id)): Path<(String, String)>,
    Query(params): Query<StartParams>,
    JsonBody(input): JsonBody,
) -> Result<Response, AppError> {
    let id = extract::instance_id(instance_id)?;
    let device = device.map(|d| d.0);
    start_inner(state, base, function_name, Some(id), params, input, device).await
}
