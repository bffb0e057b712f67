//! Management routes under `/runtime/webhooks/durabletask/instances`:
//! status, listing, raise event, terminate, suspend, resume, restart,
//! rewind, purge one, purge by filter.

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use durable::{InstanceFilter, InstanceQuery, RuntimeStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{AppError, ErrorBody};
use crate::extract::{self, JsonBody, Path, Query};
use crate::keys::Access;
use crate::payload::{self, BaseUrl, CheckStatus, StatusBody, StatusOptions};
use crate::state::AppState;

/// `Retry-After` of a status answer for a live instance, in seconds.
const STATUS_RETRY_AFTER: &str = "5";
/// Page size of a listing without `top`.
const DEFAULT_PAGE: usize = 100;

/// Query parameters of the status route.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct StatusParams {
    /// Include the history (default false).
    pub show_history: Option<String>,
    /// Include results in the history (default false).
    pub show_history_output: Option<String>,
    /// Include the input (default true).
    pub show_input: Option<String>,
    /// Answer 500 instead of 200 for a Failed instance (default false).
    pub return_internal_server_error_on_failure: Option<String>,
}

/// Query parameters of the listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ListParams {
    /// Created at or after (ISO 8601).
    pub created_time_from: Option<String>,
    /// Created at or before (ISO 8601).
    pub created_time_to: Option<String>,
    /// Comma-separated runtime statuses.
    pub runtime_status: Option<String>,
    /// Instance id prefix.
    pub instance_id_prefix: Option<String>,
    /// Include inputs (default true).
    pub show_input: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub top: Option<String>,
}

/// Query parameters of purge by filter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct PurgeParams {
    /// Required: created at or after (ISO 8601).
    #[param(required = true)]
    pub created_time_from: Option<String>,
    /// Created at or before (ISO 8601).
    pub created_time_to: Option<String>,
    /// Comma-separated runtime statuses (only finished instances are purged).
    pub runtime_status: Option<String>,
}

/// Query parameter of terminate, suspend, resume and rewind.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReasonParams {
    /// Why; recorded in the history.
    pub reason: Option<String>,
}

/// Query parameter of restart.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct RestartParams {
    /// Restart under a new id (default true); false reuses the id, which
    /// needs the instance to be finished.
    pub restart_with_new_instance_id: Option<String>,
}

/// Answer of the purge routes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurgeResult {
    /// How many instances were deleted.
    pub instances_deleted: u64,
}

fn reason(params: ReasonParams) -> Option<String> {
    params.reason.filter(|r| !r.is_empty())
}

/// One instance's status.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id"), StatusParams),
    responses(
        (status = 200, description = "Completed, Terminated, Canceled or Failed", body = StatusBody),
        (status = 202, description = "Pending, Running, ContinuedAsNew or Suspended",
         body = StatusBody, headers(("Location" = String, description = "this URL"), ("Retry-After" = String, description = "5"))),
        (status = 400, description = "Invalid id or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 500, description = "Failed, with returnInternalServerErrorOnFailure=true", body = StatusBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    device: Option<Extension<galaxy::players::Device>>,
    base: BaseUrl,
    uri: Uri,
    Path(raw_id): Path<String>,
    Query(params): Query<StatusParams>,
) -> Result<Response, AppError> {
    let id = extract::instance_id(raw_id)?;
    crate::device_auth::check_owner(device.as_ref().map(|d| &d.0), &id)?;
    let show_history = extract::flag("showHistory", params.show_history.as_deref(), false)?;
    let options = StatusOptions {
        show_input: extract::flag("showInput", params.show_input.as_deref(), true)?,
        show_history_output: extract::flag(
            "showHistoryOutput",
            params.show_history_output.as_deref(),
            false,
        )?,
    };
    let fail_500 = extract::flag(
        "returnInternalServerErrorOnFailure",
        params.return_internal_server_error_on_failure.as_deref(),
        false,
    )?;
    let read = durable::store::StatusRead {
        input: options.show_input,
        history: show_history.then_some(payload::HISTORY_CAP),
    };
    let status = state
        .engine
        .read_status(&id, read)
        .await?
        .ok_or_else(|| AppError::from(durable::Error::NotFound(id.clone())))?;
    let body = Json(payload::status_body(&status, options));
    Ok(match status.runtime_status {
        RuntimeStatus::Pending
        | RuntimeStatus::Running
        | RuntimeStatus::ContinuedAsNew
        | RuntimeStatus::Suspended => {
            let mut response = (StatusCode::ACCEPTED, body).into_response();
            // A device authenticated with its token: no key of the
            // operator's goes into a player's app.
            let key = device.is_none().then(|| state.keys.system_key());
            let path = payload::location_of(&uri, key.as_deref());
            if let Ok(location) = HeaderValue::from_str(&format!("{}{path}", base.0)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(STATUS_RETRY_AFTER),
            );
            response
        }
        RuntimeStatus::Failed if fail_500 => {
            (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
        }
        _ => (StatusCode::OK, body).into_response(),
    })
}

fn filter(
    from: Option<&str>,
    to: Option<&str>,
    statuses: Option<&str>,
    prefix: Option<String>,
) -> Result<InstanceFilter, AppError> {
    Ok(InstanceFilter {
        statuses: extract::statuses(statuses)?,
        created_from: from
            .map(|t| extract::time("createdTimeFrom", t))
            .transpose()?,
        created_to: to.map(|t| extract::time("createdTimeTo", t)).transpose()?,
        instance_id_prefix: prefix.filter(|p| !p.is_empty()),
    })
}

/// Lists instances, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/runtime/webhooks/durabletask/instances",
    tag = "management",
    params(
        ListParams,
        ("x-ms-continuation-token" = Option<String>, Header, description = "Token of the previous page's answer")
    ),
    responses(
        (status = 200, description = "A page of instances", body = Vec<StatusBody>,
         headers(("x-ms-continuation-token" = String, description = "Present when more instances match"))),
        (status = 400, description = "Bad filter or token", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Response, AppError> {
    let show_input = extract::flag("showInput", params.show_input.as_deref(), true)?;
    let query = InstanceQuery {
        filter: filter(
            params.created_time_from.as_deref(),
            params.created_time_to.as_deref(),
            params.runtime_status.as_deref(),
            params.instance_id_prefix,
        )?,
        page_size: extract::top(params.top.as_deref(), DEFAULT_PAGE)?,
        with_input: show_input,
        continuation: extract::decode_token(&headers, &state.keys.token_signer())?,
    };
    let page = state.engine.list(&query).await?;
    let options = StatusOptions {
        show_input,
        show_history_output: false,
    };
    let body: Vec<StatusBody> = page
        .instances
        .iter()
        .map(|s| payload::status_body(s, options))
        .collect();
    Ok(extract::paged(
        body,
        page.continuation,
        &state.keys.token_signer(),
    ))
}

/// Delivers an external event to an instance.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/raiseEvent/{eventName}",
    tag = "management",
    params(
        ("instanceId" = String, Path, description = "Instance id"),
        ("eventName" = String, Path, description = "The name the orchestrator waits for")
    ),
    request_body(content = Object, description = "Event payload as JSON; may be empty", content_type = "application/json"),
    responses(
        (status = 202, description = "Delivered"),
        (status = 400, description = "Body not JSON or invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 410, description = "Instance finished", body = ErrorBody),
        (status = 413, description = "Body over 1 MB", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn raise_event(
    State(state): State<AppState>,
    Path((raw_id, event_name)): Path<(String, String)>,
    JsonBody(data): JsonBody,
) -> Result<StatusCode, AppError> {
    let id = extract::instance_id(raw_id)?;
    state.engine.raise_event(&id, &event_name, data).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Terminates a live instance.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/terminate",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id"), ReasonParams),
    responses(
        (status = 202, description = "Terminate request queued"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 410, description = "Instance finished", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn terminate(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(params): Query<ReasonParams>,
) -> Result<StatusCode, AppError> {
    let id = extract::instance_id(raw_id)?;
    state.engine.terminate(&id, reason(params)).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Suspends a live instance.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/suspend",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id"), ReasonParams),
    responses(
        (status = 202, description = "Suspend request queued"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 410, description = "Instance finished", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn suspend(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(params): Query<ReasonParams>,
) -> Result<StatusCode, AppError> {
    let id = extract::instance_id(raw_id)?;
    state.engine.suspend(&id, reason(params)).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Resumes a suspended instance.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/resume",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id"), ReasonParams),
    responses(
        (status = 202, description = "Resume request queued"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 410, description = "Instance finished", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(params): Query<ReasonParams>,
) -> Result<StatusCode, AppError> {
    let id = extract::instance_id(raw_id)?;
    state.engine.resume(&id, reason(params)).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Starts an instance again from the beginning with its original input.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/restart",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id"), RestartParams),
    responses(
        (status = 202, description = "Restarted", body = CheckStatus,
         headers(("Location" = String, description = "statusQueryGetUri of the new run"), ("Retry-After" = String, description = "10"))),
        (status = 400, description = "Invalid id or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 409, description = "Same id requested and the instance is still live", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn restart(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(raw_id): Path<String>,
    Query(params): Query<RestartParams>,
) -> Result<Response, AppError> {
    let id = extract::instance_id(raw_id)?;
    let new_id = extract::flag(
        "restartWithNewInstanceId",
        params.restart_with_new_instance_id.as_deref(),
        true,
    )?;
    let restarted = state.engine.restart(&id, new_id).await?;
    Ok(super::starter::accepted(&state, &base, &restarted, "10"))
}

/// Retries a Failed instance from its failure.
#[utoipa::path(
    post,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}/rewind",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id"), ReasonParams),
    responses(
        (status = 202, description = "Rewind queued"),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 412, description = "The instance is not Failed", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn rewind(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(params): Query<ReasonParams>,
) -> Result<StatusCode, AppError> {
    let id = extract::instance_id(raw_id)?;
    state.engine.rewind(&id, reason(params)).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Deletes a finished instance and its history.
#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/instances/{instanceId}",
    tag = "management",
    params(("instanceId" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Deleted", body = PurgeResult),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "Unknown instance", body = ErrorBody),
        (status = 412, description = "The instance is not finished", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []), ("system_key" = []))
)]
pub async fn purge(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<PurgeResult>, AppError> {
    let id = extract::instance_id(raw_id)?;
    state.engine.purge(&id).await?;
    Ok(Json(PurgeResult {
        instances_deleted: 1,
    }))
}

/// Deletes every finished instance matching the filter. Needs the master key.
#[utoipa::path(
    delete,
    path = "/runtime/webhooks/durabletask/instances",
    tag = "management",
    params(PurgeParams),
    responses(
        (status = 200, description = "Deleted", body = PurgeResult),
        (status = 400, description = "No createdTimeFrom, a bad filter, or a query parameter purge does not take", body = ErrorBody),
        (status = 401, description = "Missing key, or not the master key", body = ErrorBody),
        (status = 404, description = "Nothing matched", body = ErrorBody),
    ),
    security(("master_key" = []), ("master_key_header" = []))
)]
pub async fn purge_by_filter(
    State(state): State<AppState>,
    access: Option<Extension<Access>>,
    uri: Uri,
    Query(params): Query<PurgeParams>,
) -> Result<Json<PurgeResult>, AppError> {
    if access.map(|a| a.0) != Some(Access::Master) {
        return Err(AppError::unauthorized(
            "purging by filter needs the master key (?code= or x-functions-key)",
        ));
    }
    // A filter misspelled (`runtimeStatuses=`) would be ignored and the
    // purge would delete more than asked: a destructive request takes only
    // the names it knows (in any case, as Azure reads them).
    const KNOWN: [&str; 7] = [
        "createdTimeFrom",
        "createdTimeTo",
        "runtimeStatus",
        "code",
        "taskHub",
        "connection",
        "connectionName",
    ];
    let query = uri.query().unwrap_or_default();
    if let Some((name, _)) = form_urlencoded::parse(query.as_bytes())
        .find(|(n, _)| !KNOWN.iter().any(|k| k.eq_ignore_ascii_case(n)))
    {
        return Err(AppError::bad_request(
            "InvalidQuery",
            format!(
                "purge by filter takes createdTimeFrom, createdTimeTo and runtimeStatus, not '{}'",
                name.chars().take(64).collect::<String>()
            ),
        ));
    }
    let Some(from) = params
        .created_time_from
        .as_deref()
        .filter(|f| !f.trim().is_empty())
    else {
        return Err(AppError::bad_request(
            "MissingCreatedTimeFrom",
            "createdTimeFrom is required to purge by filter",
        ));
    };
    let filter = filter(
        Some(from),
        params.created_time_to.as_deref(),
        params.runtime_status.as_deref(),
        None,
    )?;
    let deleted = state.engine.purge_by_filter(&filter).await?;
    if deleted == 0 {
        return Err(AppError::not_found(
            "NothingPurged",
            "no finished instance matches the filter",
        ));
    }
    Ok(Json(PurgeResult {
        instances_deleted: deleted,
    }))
}
