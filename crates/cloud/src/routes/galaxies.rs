//! The galaxies table over HTTP: `GET /api/galaxies` (pages, name prefix)
//! and `GET /api/galaxies/{partitionKey}/{rowKey}` with an ETag.
//!
//! The table is SQLite or PostgreSQL ([`galaxy::Galaxies`]); SQLite reads
//! run on the blocking pool there, so they never stall the async workers
//! that serve other requests.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{AppError, ErrorBody};
use crate::extract::{self, Path, Query};
use crate::payload::{self, GalaxyEntity, GalaxyList};
use crate::state::AppState;

/// Page size without `top`.
const DEFAULT_PAGE: usize = 100;

/// Query parameters of the galaxy listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct GalaxyListParams {
    /// Only galaxies whose name starts with this (case-sensitive).
    pub name_prefix: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub top: Option<String>,
}

/// Lists galaxies in key order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/galaxies",
    tag = "galaxies",
    params(
        GalaxyListParams,
        ("x-ms-continuation-token" = Option<String>, Header, description = "Token of the previous page's answer")
    ),
    responses(
        (status = 200, description = "A page of galaxies", body = GalaxyList,
         headers(("x-ms-continuation-token" = String, description = "Present when more galaxies match"))),
        (status = 400, description = "Bad query or token", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<GalaxyListParams>,
) -> Result<Response, AppError> {
    let top = extract::top(params.top.as_deref(), DEFAULT_PAGE)?;
    let token = extract::decode_token(&headers, &state.keys.token_signer())?;
    let prefix = params.name_prefix.filter(|p| !p.is_empty());
    let page = state
        .table
        .list(prefix.as_deref(), top, token.as_deref())
        .await?;
    let body = GalaxyList {
        value: page.galaxies.iter().map(payload::entity).collect(),
    };
    Ok(extract::paged(
        body,
        page.continuation,
        &state.keys.token_signer(),
    ))
}

/// One galaxy by its keys, with its ETag (`If-None-Match` answers 304).
#[utoipa::path(
    get,
    path = "/api/galaxies/{partitionKey}/{rowKey}",
    tag = "galaxies",
    params(
        ("partitionKey" = String, Path, description = "Partition key (`galaxies`)"),
        ("rowKey" = String, Path, description = "Row key"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")
    ),
    responses(
        (status = 200, description = "The entity", body = GalaxyEntity,
         headers(("ETag" = String, description = "The row's version"))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 404, description = "No such galaxy", body = ErrorBody),
    ),
    security(("function_key" = []), ("function_key_header" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((partition_key, row_key)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let galaxy = state
        .table
        .get(&partition_key, &row_key)
        .await?
        .ok_or_else(|| {
            AppError::not_found(
                "GalaxyNotFound",
                format!("no galaxy with partition key '{partition_key}' and row key '{row_key}'"),
            )
        })?;
    let entity = payload::entity(&galaxy);
    let etag = HeaderValue::from_str(&entity.etag)
        .map_err(|e| AppError::internal("building an ETag", e))?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == entity.etag || t.trim() == "*")
        });
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, Json(entity)).into_response()
    };
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}
