//! The one error type of the HTTP layer and its JSON shape.
//!
//! Every error a client sees is `{"error":{"code":"...","message":"..."}}`
//! with the status code of the contract; one that found several problems
//! (an Event Grid publish with several bad events) lists them all in
//! `details`, Azure's shape. Handlers return [`AppError`];
//! responses made outside the handlers (body limit, unknown route, wrong
//! method, extractor rejections) are rewritten into the same shape by
//! [`json_errors`], so no plain-text error escapes.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to the client: a status, a stable machine-readable
/// code and a message for people. Internal details (store failures) go to
/// the log; the client gets a short message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct AppError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `InvalidJson`, `InstanceNotFound`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Each problem found, when there were several to tell (else empty,
    /// and left out of the body).
    pub details: Vec<ErrorItem>,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Every problem found, when the request had several (Event Grid
    /// publishes); absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorItem>,
}

/// One problem of an error's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorItem {
    /// Stable, machine-readable code of this problem.
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

impl AppError {
    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The same error, listing `details`.
    pub fn with_details(mut self, details: Vec<ErrorItem>) -> Self {
        self.details = details;
        self
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: the key is missing or wrong.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 404 with a code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 500: something failed inside; details are logged, not sent.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{context} failed; see the server log"),
        )
    }

    /// The default error for a bare status produced outside the handlers.
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST => ("BadRequest", "the request is malformed"),
            StatusCode::UNAUTHORIZED => ("Unauthorized", "a valid key is required"),
            StatusCode::NOT_FOUND => ("NotFound", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "MethodNotAllowed",
                "this route does not take this method; see /api/openapi.json",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("PayloadTooLarge", "the request body is larger than 1 MB")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("UnsupportedMediaType", "unsupported content type")
            }
            StatusCode::UNPROCESSABLE_ENTITY => ("BadRequest", "the request cannot be processed"),
            s if s.is_server_error() => ("InternalError", "the server failed; see its log"),
            _ => ("Error", "the request failed"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        // Clients (the Event Grid publishers among them) wait as long as
        // Retry-After says before they try again.
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(ERROR_RETRY_AFTER),
            );
        }
        response
    }
}

/// `Retry-After` (seconds) of a 503 or 429 error.
pub const ERROR_RETRY_AFTER: &str = "5";

impl From<durable::Error> for AppError {
    fn from(e: durable::Error) -> Self {
        use durable::Error as E;
        let message = e.to_string();
        match e {
            E::InvalidInstanceId(_) => Self::bad_request("InvalidInstanceId", message),
            E::UnknownOrchestration(_) => Self::not_found("UnknownOrchestration", message),
            E::NotFound(_) => Self::not_found("InstanceNotFound", message),
            E::Conflict(_) => Self::new(StatusCode::CONFLICT, "InstanceExists", message),
            E::Finished(_) => Self::new(StatusCode::GONE, "InstanceFinished", message),
            E::Precondition { .. } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                message,
            ),
            E::InvalidInput(_) => Self::bad_request("InvalidInput", message),
            // The starter's wait mode turns a timeout into its 202 answer;
            // this arm is for any other wait.
            E::Timeout(_) => Self::new(StatusCode::REQUEST_TIMEOUT, "Timeout", message),
            E::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ShuttingDown",
                "the server is shutting down; retry against another instance or later",
            ),
            E::Store(e) => Self::internal("the engine store", e),
        }
    }
}

impl From<eventgrid::PublishError> for AppError {
    fn from(e: eventgrid::PublishError) -> Self {
        let details = e
            .details
            .into_iter()
            .map(|p| ErrorItem {
                code: p.code.to_string(),
                message: p.message,
            })
            .collect();
        Self::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.code,
            e.message,
        )
        .with_details(details)
    }
}

impl From<galaxy::TableError> for AppError {
    fn from(e: galaxy::TableError) -> Self {
        match e {
            galaxy::TableError::BadContinuation => {
                Self::bad_request("InvalidContinuationToken", e.to_string())
            }
            other => Self::internal("the galaxies table", other),
        }
    }
}

impl From<galaxy::players::PlayersError> for AppError {
    fn from(e: galaxy::players::PlayersError) -> Self {
        use galaxy::players::PlayersError as E;
        let message = e.to_string();
        match e {
            E::Unauthorized => Self::unauthorized(message),
            E::BadLinkCode => Self::bad_request("InvalidLinkCode", message),
            E::NotFound(_) => Self::not_found("DeviceNotFound", message),
            E::ClientStateNotFound(_) => Self::new(
                StatusCode::CONFLICT,
                sync::protocol::CLIENT_STATE_NOT_FOUND,
                message,
            ),
            E::MutationGap { .. } => {
                Self::new(StatusCode::CONFLICT, sync::protocol::MUTATION_GAP, message)
            }
            E::MutationIdReused(_) => Self::new(
                StatusCode::CONFLICT,
                sync::protocol::MUTATION_ID_REUSED,
                message,
            ),
            E::TooMany(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "TooManyMutations", message),
            E::Invalid(_) => Self::bad_request("InvalidRequest", message),
            E::Interrupted(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ShuttingDown",
                "the server is shutting down; retry later",
            ),
            E::Database(e) => Self::internal("the players store", e),
            E::Postgres(e) => Self::internal("the players store", e),
        }
    }
}

/// Middleware: rewrites any error response that is not JSON (made by a
/// layer, the router or an extractor rejection) into the JSON error shape,
/// keeping its status and headers such as `Allow`.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Keep a rejection's own explanation (e.g. which query parameter failed
    // to parse) when it is short plain text.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty());
    let mut error = AppError::from_status(status);
    if let Some(text) = text {
        if status != StatusCode::PAYLOAD_TOO_LARGE {
            error.message = text;
        }
    }
    let fresh = error.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (_, body): (_, Body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_bodies_have_the_contract_shape() {
        let r = AppError::bad_request("InvalidJson", "nope").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "InvalidJson", "message": "nope"}})
        );
        let several = AppError::bad_request("BadRequest", "two").with_details(vec![
            ErrorItem {
                code: "InputJsonInvalid".into(),
                message: "event 0".into(),
            },
            ErrorItem {
                code: "InputJsonInvalid".into(),
                message: "event 2".into(),
            },
        ]);
        let body = axum::body::to_bytes(several.into_response().into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["error"]["details"],
            serde_json::json!([{"code": "InputJsonInvalid", "message": "event 0"},
                {"code": "InputJsonInvalid", "message": "event 2"}])
        );
        let busy = AppError::new(StatusCode::SERVICE_UNAVAILABLE, "ShuttingDown", "later");
        for (e, after) in [
            (busy, Some(ERROR_RETRY_AFTER)),
            (AppError::bad_request("X", "y"), None),
        ] {
            let r = e.into_response();
            let got = r
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap());
            assert_eq!(got, after);
        }
    }

    #[test]
    fn engine_errors_map_to_the_contract_statuses() {
        let id = durable::InstanceId::new("x").unwrap();
        let cases = [
            (durable::Error::NotFound(id.clone()), 404),
            (durable::Error::Conflict(id.clone()), 409),
            (durable::Error::Finished(id.clone()), 410),
            (
                durable::Error::Precondition {
                    instance_id: id,
                    status: durable::RuntimeStatus::Running,
                    what: "x",
                },
                412,
            ),
            (durable::Error::UnknownOrchestration("X".into()), 404),
            (durable::Error::InvalidInstanceId("a/b".into()), 400),
        ];
        for (e, status) in cases {
            assert_eq!(AppError::from(e).status.as_u16(), status);
        }
    }
}
