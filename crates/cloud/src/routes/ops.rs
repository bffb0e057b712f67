//! Operations routes: `/healthz`, `/metrics`, `/api/openapi.json`.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, ErrorBody};
use crate::metrics::StoreGauges;
use crate::state::AppState;

/// Answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `shutting down`.
    pub status: &'static str,
}

/// The OpenAPI document, rendered once at router build time.
#[derive(Clone)]
pub struct OpenApiJson(pub Arc<String>);

/// Liveness: 200 while serving, 503 once shutdown began (so a load
/// balancer stops sending work). Needs no key.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "Shutting down, or unhealthy: a store stopped working (the server drains and exits non-zero)", body = Health),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Response {
    if let Err(reason) = state.health() {
        tracing::error!("unhealthy: {reason}");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unhealthy: a store stopped working (see the log); the server is stopping",
            }),
        )
            .into_response()
    } else if state.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "shutting down",
            }),
        )
            .into_response()
    } else {
        (StatusCode::OK, Json(Health { status: "ok" })).into_response()
    }
}

/// Prometheus metrics (text format 0.0.4). Needs the function key, like
/// every route that reveals anything about the instances; configure the
/// scraper with `params: {code: [...]}` or the `x-functions-key` header.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, AppError> {
    let store = state.engine.store();
    let by_status = store
        .count_by_status()
        .await
        .map_err(|e| AppError::internal("counting instances", e))?;
    let (orchestration_queue, activity_queue) = store
        .queue_depth()
        .await
        .map_err(|e| AppError::internal("reading queue depth", e))?;
    let mut text = state.metrics.render(&StoreGauges {
        by_status,
        orchestration_queue,
        activity_queue,
    });
    let counts = state.events.counts().await?;
    crate::metrics::render_events(&mut text, &counts);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// This API's OpenAPI 3 document, generated from the handlers. Needs no key.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json", body = Object))
)]
pub async fn openapi(Extension(doc): Extension<OpenApiJson>) -> Response {
    let mut response = doc.0.as_str().to_string().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
