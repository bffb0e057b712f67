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

/// A JSON request body. An empty body (no bytes at all) is `null` (the
/// contract allows a starter without input); anything else, whitespace
/// alone too, must parse as JSON (else 400).
/// A body over the limit is 413.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|r| {
            let status = r.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::from_status(status)
            } else if crate::listen::BodyTooSlow::caused(&r) {
                // The connection's deadline: answered (and counted) as 408.
                crate::listen::BodyTooSlow::error()
            } else {
                AppError::bad_request("InvalidBody", r.body_text())
            }
        })?;
        // A byte-order mark, which some Windows tools put before JSON, is
        // not part of the document.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        if bytes.is_empty() {
            return Ok(Self(Value::Null));
        }
        serde_json::from_slice(bytes)
            .map(Self)
            .map_err(|e| AppError::bad_request("InvalidJson", format!("the body is not JSON: {e}")))
    }
}

/// A JSON object request body of a known shape (an empty body is `{}`):
/// not JSON is 400 `InvalidJson`, the wrong shape (not an object, missing
/// or unknown fields, wrong types) is 400
/// `InvalidRequest` naming the field, over the limit is 413.
pub struct Typed<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Typed<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        let JsonBody(value) = JsonBody::from_request(request, state).await?;
        let value = match value {
            Value::Null => Value::Object(Default::default()),
            // serde would read a struct from an array too; the document
            // says object.
            Value::Object(_) => value,
            _ => {
                return Err(AppError::bad_request(
                    "InvalidRequest",
                    "the body must be a JSON object",
                ))
            }
        };
        serde_json::from_value(value).map(Self).map_err(|e| {
            AppError::bad_request("InvalidRequest", format!("the body does not fit: {e}"))
        })
    }
}

/// The query parameter names the routes take, as they spell them. A name
/// given in another case is read as this one: Azure ignores case in query
/// names, so `runtimestatus=Failed` must filter, not be dropped (a router
/// test checks the list against the OpenAPI document).
pub const QUERY_NAMES: &[&str] = &[
    "after",
    "api-version",
    "chain_latest",
    "client_id",
    "createdTimeFrom",
    "createdTimeTo",
    "cursor",
    "fresh",
    "instanceIdPrefix",
    "limit",
    "namePrefix",
    "pollingInterval",
    "reason",
    "restartWithNewInstanceId",
    "returnInternalServerErrorOnFailure",
    "runtimeStatus",
    "showHistory",
    "showHistoryOutput",
    "showInput",
    "timeout",
    "top",
    "validationCode",
];

/// `name` as the routes spell it, if it is one of [`QUERY_NAMES`] in any
/// case; else as given.
pub fn canonical_name(name: &str) -> &str {
    QUERY_NAMES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or(name)
}

/// A query string as the parameter structs read it: names in the routes'
/// spelling ([`canonical_name`]), empty values left out (see [`Query`]),
/// and a parameter given more than once merged the way
/// Azure's name/value collection does for the one that lists values
/// (`runtimeStatus=Running&runtimeStatus=Failed` is `Running,Failed`); of
/// any other, the last one counts (serde would refuse the duplicate).
fn normalize_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        if value.is_empty() {
            continue;
        }
        let name = canonical_name(&name).to_string();
        match pairs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) if name == "runtimeStatus" => {
                v.push(',');
                v.push_str(&value);
            }
            Some((_, v)) => *v = value.into_owned(),
            None => pairs.push((name, value.into_owned())),
        }
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Query parameters; a malformed query string is 400. A parameter with an
/// empty value (`top=&showInput=`) counts as absent: clients and form
/// encoders send those for "not set", and the OpenAPI document cannot
/// declare an empty string valid for a number or a time.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        let kept = normalize_query(parts.uri.query().unwrap_or_default());
        serde_urlencoded::from_str(&kept).map(Self).map_err(|e| {
            AppError::bad_request(
                "InvalidQuery",
                format!("the query string does not fit: {e}"),
            )
        })
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

/// A boolean query value: `true`/`false` in any case, or `1`/`0`; absent
/// or empty means `default` (declared as [`crate::routes::rules::FLAG_PATTERN`]).
pub fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, AppError> {
    match value {
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
    let v = value;
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

/// A `runtimeStatus` filter: comma-separated names as the clients send
/// them (declared as [`crate::routes::rules::STATUSES_PATTERN`]).
pub fn statuses(value: Option<&str>) -> Result<Vec<RuntimeStatus>, AppError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(|s| {
            let exact = RuntimeStatus::ALL.into_iter().find(|st| st.as_str() == s);
            exact.ok_or_else(|| {
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
    match value {
        None | Some("") => Ok(default),
        Some(v) => match digits(v) {
            Some(n) if (1..=1000).contains(&n) => Ok(n as usize),
            _ => Err(AppError::bad_request(
                "InvalidQuery",
                format!("top={v}: expected a whole number from 1 to 1000"),
            )),
        },
    }
}

/// A whole number >= 0 (a cursor such as `after`).
pub fn whole_number(name: &str, value: &str) -> Result<i64, AppError> {
    digits(value)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| {
            AppError::bad_request(
                "InvalidQuery",
                format!("{name}={value}: expected a whole number >= 0"),
            )
        })
}

/// Digits only (no sign, no spaces: what the document's integers are).
fn digits(value: &str) -> Option<u64> {
    if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse().ok()
    } else {
        None
    }
}

/// A duration in seconds (`timeout`, `pollingInterval`): finite, not negative.
pub fn seconds(name: &str, value: &str) -> Result<f64, AppError> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(AppError::bad_request(
            "InvalidQuery",
            format!("{name}={value}: expected a number of seconds"),
        )),
    }
}

/// A 200 JSON answer carrying the next page's token in
/// `x-ms-continuation-token`, when there is a next page.
pub fn paged<T: serde::Serialize>(
    body: T,
    continuation: Option<String>,
    signer: &TokenSigner,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (axum::http::StatusCode::OK, axum::Json(body)).into_response();
    if let Some(token) = continuation {
        response
            .headers_mut()
            .insert(CONTINUATION_HEADER, encode_token(&token, signer));
    }
    response
}

/// Signs continuation tokens: HMAC-SHA256 under a key derived from the
/// master key, so a token is only ever one this deployment handed out.
#[derive(Clone)]
pub struct TokenSigner([u8; 32]);

/// Bytes of the MAC a token carries (128 bits).
const TAG_LEN: usize = 16;

impl TokenSigner {
    /// The signer of a deployment whose master key is `master_key` (every
    /// process given the same keys accepts the others' tokens).
    pub fn new(master_key: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"galaxy-forge continuation tokens v1\0");
        h.update(master_key.as_bytes());
        Self(h.finalize().into())
    }

    fn tag(&self, token: &[u8]) -> [u8; TAG_LEN] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("any key size");
        mac.update(token);
        let full = mac.finalize().into_bytes();
        full[..TAG_LEN].try_into().expect("32 bytes")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Wraps a store's continuation token for the header: its hex and a MAC
/// (see [`TokenSigner`]), so a mangled, made-up or tampered token is a 400
/// here instead of reaching the store.
pub fn encode_token(token: &str, signer: &TokenSigner) -> HeaderValue {
    let s = format!(
        "{}.{}",
        hex(token.as_bytes()),
        hex(&signer.tag(token.as_bytes()))
    );
    HeaderValue::from_str(&s).expect("hex is a valid header value")
}

/// The store token inside a header token, if the request carries one.
pub fn decode_token(headers: &HeaderMap, signer: &TokenSigner) -> Result<Option<String>, AppError> {
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
    let (body, tag) = v.split_once('.').ok_or_else(bad)?;
    let (bytes, tag) = unhex(body).zip(unhex(tag)).ok_or_else(bad)?;
    let expected = signer.tag(&bytes);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &tag[..])) {
        return Err(bad());
    }
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_merge_or_the_last_counts() {
        assert_eq!(
            normalize_query("runtimeStatus=Running&top=5&runtimeStatus=Failed&showInput="),
            "runtimeStatus=Running%2CFailed&top=5"
        );
        assert_eq!(
            normalize_query("showHistory=false&showHistory=true"),
            "showHistory=true"
        );
        assert_eq!(normalize_query("reason=a+b"), "reason=a+b");
        assert_eq!(
            normalize_query("RUNTIMESTATUS=Failed&runtimestatus=Running&ShowInput=false"),
            "runtimeStatus=Failed%2CRunning&showInput=false"
        );
    }

    #[test]
    fn tokens_round_trip_and_forgeries_are_refused() {
        let signer = TokenSigner::new("master-key-one-0001");
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTINUATION_HEADER,
            encode_token("1700000000000:abc é|x", &signer),
        );
        assert_eq!(
            decode_token(&headers, &signer).unwrap().as_deref(),
            Some("1700000000000:abc é|x")
        );
        // Another deployment's token, or this one's with the body changed.
        let other = TokenSigner::new("master-key-two-0002");
        let good = encode_token("1700000000000:abc", &signer);
        let (_, tag) = good.to_str().unwrap().split_once('.').unwrap();
        let tampered = format!("{}.{tag}", hex(b"1700000000001:abc"));
        for bad in [
            "zz".to_string(),
            "00.0000000000000000".to_string(),
            "6162.00000000000000000000000000000000".to_string(),
            "616.1".to_string(),
            tampered,
            encode_token("1700000000000:abc", &other)
                .to_str()
                .unwrap()
                .to_string(),
        ] {
            headers.insert(CONTINUATION_HEADER, HeaderValue::from_str(&bad).unwrap());
            assert_eq!(
                decode_token(&headers, &signer).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(decode_token(&HeaderMap::new(), &signer).unwrap(), None);
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
            statuses(Some("Running,Failed")).unwrap(),
            vec![RuntimeStatus::Running, RuntimeStatus::Failed]
        );
        // Exactly what the document declares: no other case, spaces or
        // empty entries.
        for bad in ["Sleeping", "running", "Running, Failed", "Running,"] {
            assert!(statuses(Some(bad)).is_err(), "{bad}");
        }
        assert!(flag("x", Some(" true"), false).is_err());
        assert_eq!(top(Some("5"), 100).unwrap(), 5);
        assert!(top(Some("0"), 100).is_err());
        assert!(top(Some("+5"), 100).is_err());
        assert!(seconds("timeout", "NaN").is_err());
        assert!(seconds("timeout", "-1").is_err());
        assert_eq!(seconds("timeout", "2.5").unwrap(), 2.5);
    }
}
