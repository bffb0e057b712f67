//! Request parsing: extractors whose rejections are [`AppError`]s, and the
//! parsers of query values (booleans, times, statuses) and continuation
//! tokens.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use durable::{InstanceId, RuntimeStatus, Timestamp};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::AppError;

/// The header that carries continuation tokens both ways.
pub const CONTINUATION_HEADER: &str = "x-ms-continuation-token";

/// A JSON request body. An empty body is `null` (the contract allows a
/// starter without input); anything else must parse as JSON (else 400).
/// A body over the limit is 413.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|r| {
            let status = r.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::from_status(status)
            } else {
                AppError::bad_request("InvalidBody", r.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| AppError::bad_request("InvalidJson", format!("the body is not JSON: {e}")))
    }
}

/// A JSON request body of a known shape: not JSON is 400 `InvalidJson`,
/// the wrong shape (missing or unknown fields, wrong types) is 400
/// `InvalidRequest` naming the field, over the limit is 413.
pub struct Typed<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Typed<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let JsonBody(value) = JsonBody::from_request(request, state).await?;
        let value = if value.is_null() {
            Value::Object(Default::default())
        } else {
            value
        };
        serde_json::from_value(value).map(Self).map_err(|e| {
            AppError::bad_request("InvalidRequest", format!("the body does not fit: {e}"))
        })
    }
}

/// Query parameters; a malformed query string is 400.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r| AppError::bad_request("InvalidQuery", r.body_text()))
    }
}

/// Path parameters; undecodable ones are 400.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r| AppError::bad_request("InvalidPath", r.body_text()))
    }
}

/// Validates an instance id from a path (400 if it breaks the id rules).
pub fn instance_id(raw: String) -> Result<InstanceId, AppError> {
    Ok(InstanceId::new(raw)?)
}

/// A boolean query value: `true`/`false`/`1`/`0`, any case; absent or
/// empty means `default`.
pub fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, AppError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(AppError::bad_request(
            "InvalidQuery",
            format!("{name}={v}: expected true or false"),
        )),
    }
}

/// A time query value: RFC 3339 (`2024-05-01T12:00:00Z`), a date and time
/// without zone (taken as UTC), or a date.
pub fn time(name: &str, value: &str) -> Result<Timestamp, AppError> {
    let v = value.trim();
    let parsed = DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
            .map(|t| t.and_utc())
        })
        .or_else(|| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        });
    parsed.ok_or_else(|| {
        AppError::bad_request(
            "InvalidQuery",
            format!("{name}={v}: expected an ISO 8601 time such as 2024-05-01T12:00:00Z"),
        )
    })
}

/// A `runtimeStatus` filter: comma-separated names, any case.
pub fn statuses(value: Option<&str>) -> Result<Vec<RuntimeStatus>, AppError> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            RuntimeStatus::parse(s).ok_or_else(|| {
                AppError::bad_request(
                    "InvalidQuery",
                    format!(
                        "runtimeStatus={s}: expected one of Pending, Running, Completed, ContinuedAsNew, Failed, Canceled, Terminated, Suspended"
                    ),
                )
            })
        })
        .collect()
}

/// A page size (`top`): 1 to 1000; absent means `default`.
pub fn top(value: Option<&str>, default: usize) -> Result<usize, AppError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(AppError::bad_request(
                "InvalidQuery",
                format!("top={v}: expected a whole number from 1 to 1000"),
            )),
        },
    }
}

/// A duration in seconds (`timeout`, `pollingInterval`): finite, not negative.
pub fn seconds(name: &str, value: &str) -> Result<f64, AppError> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(AppError::bad_request(
            "InvalidQuery",
            format!("{name}={value}: expected a number of seconds"),
        )),
    }
}

/// FNV-1a, 64 bits: a checksum, not a secret.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A 200 JSON answer carrying the next page's token in
/// `x-ms-continuation-token`, when there is a next page.
pub fn paged<T: serde::Serialize>(
    body: T,
    continuation: Option<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (axum::http::StatusCode::OK, axum::Json(body)).into_response();
    if let Some(token) = continuation {
        response
            .headers_mut()
            .insert(CONTINUATION_HEADER, encode_token(&token));
    }
    response
}

/// Wraps a store's continuation token for the header: hex (always a valid
/// header value, whatever the store put in it) plus a checksum, so a
/// mangled or made-up token is a 400 here instead of reaching the store.
pub fn encode_token(token: &str) -> HeaderValue {
    let mut s = String::with_capacity(token.len() * 2 + 17);
    for b in token.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('.');
    s.push_str(&format!("{:016x}", fnv(token.as_bytes())));
    HeaderValue::from_str(&s).expect("hex is a valid header value")
}

/// The store token inside a header token, if the request carries one.
pub fn decode_token(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(v) = headers.get(CONTINUATION_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        AppError::bad_request(
            "InvalidContinuationToken",
            "the x-ms-continuation-token header was not handed out by this server",
        )
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    if v.is_empty() {
        return Ok(None);
    }
    let (hex, sum) = v.split_once('.').ok_or_else(bad)?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    if format!("{:016x}", fnv(&bytes)) != sum {
        return Err(bad());
    }
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_forgeries_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTINUATION_HEADER, encode_token("1700000000000:abc é|x"));
        assert_eq!(
            decode_token(&headers).unwrap().as_deref(),
            Some("1700000000000:abc é|x")
        );
        for bad in [
            "zz",
            "00.0000000000000000",
            "6162.0000000000000000",
            "616.1",
        ] {
            headers.insert(CONTINUATION_HEADER, HeaderValue::from_static(bad));
            assert_eq!(
                decode_token(&headers).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(decode_token(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn query_values_parse_or_fail_with_400() {
        assert!(flag("x", Some("TRUE"), false).unwrap());
        assert!(!flag("x", None, false).unwrap());
        assert!(flag("x", Some("yes"), false).is_err());
        assert_eq!(
            time("t", "2024-05-01T12:00:00+02:00").unwrap().to_rfc3339(),
            "2024-05-01T10:00:00+00:00"
        );
        assert_eq!(
            time("t", "2024-05-01").unwrap().to_rfc3339(),
            "2024-05-01T00:00:00+00:00"
        );
        assert!(time("t", "yesterday").is_err());
        assert_eq!(
            statuses(Some("running, Failed")).unwrap(),
            vec![RuntimeStatus::Running, RuntimeStatus::Failed]
        );
        assert!(statuses(Some("Sleeping")).is_err());
        assert_eq!(top(Some("5"), 100).unwrap(), 5);
        assert!(top(Some("0"), 100).is_err());
        assert!(seconds("timeout", "NaN").is_err());
        assert!(seconds("timeout", "-1").is_err());
        assert_eq!(seconds("timeout", "2.5").unwrap(), 2.5);
    }
}
