//! Published events: parsing and checking what a publisher sends, in
//! either schema, with the reference's limits, into [`Event`]s the router
//! stores. Pure: bytes and headers in, events or a [`PublishError`] out.
//!
//! - Event Grid schema: a JSON array of `{id, subject, eventType,
//!   eventTime, data, dataVersion, topic?, metadataVersion?}`; the router
//!   sets `topic` and `metadataVersion` ("1"); a publisher's `topic` must
//!   name this topic and its `metadataVersion` must be "1".
//! - CloudEvents 1.0: structured (`application/cloudevents+json`, one
//!   object), batch (`application/cloudevents-batch+json`, an array), and
//!   binary (attributes in `ce-*` headers, the body is `data`). Official
//!   SDKs send batches with `charset=utf-8`; a batch may also come as
//!   `application/json`.
//! - Limits: 1 MB per event and per request, 5,000 events per request.
//! - A refused batch names every bad event (up to [`MAX_DETAILS`]) in the
//!   error's `details`, as Event Grid's error bodies do, so a publisher of
//!   thousands of events learns all its mistakes from one answer.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

/// Largest request body, and largest single event, in bytes.
pub const MAX_BYTES: usize = 1024 * 1024;
/// Most events per publish.
pub const MAX_EVENTS: usize = 5000;
/// Most problems a refused publish lists in its `details`.
pub const MAX_DETAILS: usize = 100;

/// A topic's input schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Schema {
    /// `EventGridSchema`.
    EventGridSchema,
    /// `CloudEventSchemaV1_0`.
    #[serde(rename = "CloudEventSchemaV1_0")]
    CloudEvents,
}

/// One accepted event, in its topic's schema, as stored and delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The publisher's id (receivers dedupe on it).
    pub id: String,
    /// The whole event as JSON (router attributes set).
    pub json: Value,
    /// Its size in bytes as JSON (billing counts 64 KB units).
    pub size: usize,
}

impl Event {
    /// An event the router itself publishes (the system topic), in the
    /// Event Grid schema.
    pub fn system(
        topic: &str,
        id: &str,
        subject: &str,
        event_type: &str,
        time: &str,
        data: Value,
    ) -> Self {
        let json = serde_json::json!({
            "id": id, "topic": topic, "subject": subject, "eventType": event_type,
            "eventTime": time, "data": data, "dataVersion": "1", "metadataVersion": "1",
        });
        let size = json.to_string().len();
        Self {
            id: id.to_string(),
            json,
            size,
        }
    }
}

/// Why a publish was refused: the status and the Event Grid error body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct PublishError {
    /// HTTP status: 400 or 413.
    pub status: u16,
    /// `BadRequest` or `PayloadTooLarge` (as galaxy-cloud's body limit
    /// answers a body too large to read).
    pub code: &'static str,
    /// For people, naming the event and attribute at fault (the first, when
    /// several events are bad).
    pub message: String,
    /// Every problem found, in event order, at most [`MAX_DETAILS`].
    pub details: Vec<Problem>,
}

/// One problem of a refused publish: an entry of the error body's
/// `details`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `InputJsonInvalid` (the body or an event is malformed) or
    /// `PayloadTooLarge` (a limit).
    pub code: &'static str,
    /// What is wrong, naming the event.
    pub message: String,
}

fn refused(status: u16, code: &'static str, detail: &'static str, message: String) -> PublishError {
    PublishError {
        status,
        code,
        details: vec![Problem {
            code: detail,
            message: message.clone(),
        }],
        message,
    }
}

fn bad(message: impl Into<String>) -> PublishError {
    refused(400, "BadRequest", "InputJsonInvalid", message.into())
}

fn too_large(message: impl Into<String>) -> PublishError {
    refused(413, "PayloadTooLarge", "PayloadTooLarge", message.into())
}

/// Checks every item of a batch with `check`: all of them valid, or the
/// first one's error listing every bad item's problems (the status is the
/// first bad item's).
fn each(
    items: Vec<Value>,
    mut check: impl FnMut(usize, Value) -> Result<Event, PublishError>,
) -> Result<Vec<Event>, PublishError> {
    let mut events = Vec::with_capacity(items.len());
    let mut failed: Option<PublishError> = None;
    let mut bad_items = 0;
    for (i, item) in items.into_iter().enumerate() {
        match (check(i, item), &mut failed) {
            (Ok(event), None) => events.push(event),
            (Ok(_), Some(_)) => {}
            (Err(e), None) => {
                bad_items = 1;
                failed = Some(e);
            }
            (Err(e), Some(first)) => {
                bad_items += 1;
                let room = MAX_DETAILS.saturating_sub(first.details.len());
                first.details.extend(e.details.into_iter().take(room));
            }
        }
    }
    match failed {
        None => Ok(events),
        Some(mut e) => {
            if bad_items > 1 {
                let more = bad_items - 1;
                let plural = if more == 1 { "" } else { "s" };
                e.message = format!(
                    "{} (and {more} more bad event{plural}: see details)",
                    e.message
                );
            }
            Err(e)
        }
    }
}

/// The media type of a `Content-Type` header, lower-case, without
/// parameters.
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parses a publish to a topic named `topic` with schema `schema`.
/// `headers` are the request's (name, value) pairs (binary CloudEvents
/// read `ce-*` from them).
pub fn parse(
    topic: &str,
    schema: Schema,
    content_type: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<Event>, PublishError> {
    if body.len() > MAX_BYTES {
        return Err(too_large(format!(
            "the request has {} bytes; at most {MAX_BYTES} are accepted",
            body.len()
        )));
    }
    let media = media_type(content_type);
    let binary = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("ce-specversion"));
    let events = match schema {
        Schema::EventGridSchema => {
            if media.starts_with("application/cloudevents") || binary {
                return Err(bad(
                    "this topic's input schema is EventGridSchema; CloudEvents are not accepted here",
                ));
            }
            each(json_array(body)?, |i, e| event_grid(topic, i, e))?
        }
        Schema::CloudEvents => {
            if binary
                && media != "application/cloudevents+json"
                && media != "application/cloudevents-batch+json"
            {
                vec![cloud_event(0, binary_event(headers, content_type, body)?)?]
            } else if media == "application/cloudevents+json" {
                let value: Value = serde_json::from_slice(body)
                    .map_err(|e| bad(format!("the body is not JSON: {e}")))?;
                vec![cloud_event(0, value)?]
            } else if media == "application/cloudevents-batch+json"
                || media == "application/json"
                || media.is_empty()
            {
                each(json_array(body)?, cloud_event)?
            } else {
                return Err(bad(format!(
                    "Content-Type '{media}' is not a CloudEvents type: use application/cloudevents+json, application/cloudevents-batch+json or binary mode (ce-* headers)"
                )));
            }
        }
    };
    Ok(events)
}

/// The events of a batch body, at most [`MAX_EVENTS`] of them (counted
/// before any is checked).
fn json_array(body: &[u8]) -> Result<Vec<Value>, PublishError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) if items.is_empty() => Err(bad("the array holds no events")),
        Ok(Value::Array(items)) if items.len() > MAX_EVENTS => Err(too_large(format!(
            "a publish carries at most {MAX_EVENTS} events; this one has {}",
            items.len()
        ))),
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(bad("the body must be a JSON array of events")),
        Err(e) => Err(bad(format!("the body is not JSON: {e}"))),
    }
}

fn sized(i: usize, id: String, json: Value) -> Result<Event, PublishError> {
    let size = serde_json::to_vec(&json).map_or(0, |v| v.len());
    if size > MAX_BYTES {
        return Err(too_large(format!(
            "event {i} has {size} bytes; an event has at most {MAX_BYTES}"
        )));
    }
    Ok(Event { id, json, size })
}

fn required_string<'a>(
    i: usize,
    e: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, PublishError> {
    match e.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(bad(format!("event {i}: '{name}' is required")))
        }
        Some(_) => Err(bad(format!("event {i}: '{name}' must be a string"))),
    }
}

/// An event's id: required, and without a NUL (deliveries are looked up
/// by it, and PostgreSQL's text cannot hold one; other characters are
/// taken as Event Grid takes them).
fn event_id(i: usize, e: &Map<String, Value>) -> Result<String, PublishError> {
    let id = required_string(i, e, "id")?;
    if id.contains('\0') {
        return Err(bad(format!(
            "event {i}: 'id' cannot contain a NUL character"
        )));
    }
    Ok(id.to_string())
}

fn rfc3339(i: usize, name: &str, s: &str) -> Result<(), PublishError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(drop)
        .map_err(|_| {
            bad(format!(
                "event {i}: '{name}' is not an RFC 3339 time: '{s}'"
            ))
        })
}

fn event_grid(topic: &str, i: usize, value: Value) -> Result<Event, PublishError> {
    let Value::Object(mut e) = value else {
        return Err(bad(format!("event {i} is not a JSON object")));
    };
    let id = event_id(i, &e)?;
    required_string(i, &e, "subject")?;
    required_string(i, &e, "eventType")?;
    let time = required_string(i, &e, "eventTime")?.to_string();
    rfc3339(i, "eventTime", &time)?;
    if let Some(t) = e.get("topic").filter(|t| !t.is_null()) {
        if t.as_str().is_none_or(|t| !t.eq_ignore_ascii_case(topic)) {
            return Err(bad(format!(
                "event {i}: 'topic' names another topic than '{topic}'"
            )));
        }
    }
    match e.get("metadataVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if v == "1" => {}
        Some(_) => {
            return Err(bad(format!(
                "event {i}: 'metadataVersion' must be \"1\" when given"
            )))
        }
    }
    match e.get("dataVersion") {
        None | Some(Value::Null) => {
            e.insert("dataVersion".into(), Value::String(String::new()));
        }
        // It goes out as the aeg-data-version header.
        Some(Value::String(v)) if crate::model::header_value(v) => {}
        Some(_) => {
            return Err(bad(format!(
                "event {i}: 'dataVersion' must be a string of printable ASCII"
            )))
        }
    }
    e.insert("topic".into(), Value::String(topic.to_string()));
    e.insert("metadataVersion".into(), Value::String("1".into()));
    e.entry("data").or_insert(Value::Null);
    sized(i, id, Value::Object(e))
}

fn cloud_event(i: usize, value: Value) -> Result<Event, PublishError> {
    let Value::Object(e) = value else {
        return Err(bad(format!("event {i} is not a JSON object")));
    };
    match e.get("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        None | Some(Value::Null) => {
            return Err(bad(format!("event {i}: 'specversion' is required")))
        }
        Some(_) => return Err(bad(format!("event {i}: 'specversion' must be \"1.0\""))),
    }
    let id = event_id(i, &e)?;
    required_string(i, &e, "source")?;
    required_string(i, &e, "type")?;
    if let Some(t) = e.get("time").and_then(Value::as_str) {
        rfc3339(i, "time", t)?;
    }
    if e.contains_key("data") && e.contains_key("data_base64") {
        return Err(bad(format!(
            "event {i}: 'data' and 'data_base64' exclude each other"
        )));
    }
    sized(i, id, Value::Object(e))
}

/// A binary-mode CloudEvent: `ce-*` headers are the attributes
/// (percent-decoded), the body is `data` (JSON when the content type says
/// so, or when there is none and it parses; text for `text/*` that is
/// UTF-8) or else `data_base64`, so bytes arrive as they were sent.
fn binary_event(
    headers: &[(String, String)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, PublishError> {
    let mut e = Map::new();
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        if let Some(name) = k.strip_prefix("ce-") {
            // The HTTP binding percent-encodes what a header cannot carry
            // (non-ASCII, space, '"', '%'); the attribute is the decoded text.
            let value = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| bad(format!("header ce-{name} is not percent-encoded UTF-8")))?;
            e.insert(name.to_string(), Value::String(value.into_owned()));
        }
    }
    let media = media_type(content_type);
    if let Some(ct) = content_type {
        e.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    if !body.is_empty() {
        let text = || {
            std::str::from_utf8(body)
                .ok()
                .filter(|_| media.starts_with("text/"))
        };
        // Without a content type (which binary senders may omit) a body
        // that is not JSON is kept as bytes.
        let untyped_json = || {
            serde_json::from_slice::<Value>(body)
                .ok()
                .filter(|_| media.is_empty())
        };
        let (key, data) = if media == "application/json" || media.ends_with("+json") {
            let json = serde_json::from_slice(body)
                .map_err(|err| bad(format!("the binary event's body is not JSON: {err}")))?;
            ("data", json)
        } else if let Some(json) = untyped_json() {
            ("data", json)
        } else if let Some(text) = text() {
            ("data", Value::String(text.to_string()))
        } else {
            ("data_base64", Value::String(STANDARD.encode(body)))
        };
        e.insert(key.into(), data);
    }
    Ok(Value::Object(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eg(events: Value) -> Result<Vec<Event>, PublishError> {
        parse(
            "galaxies",
            Schema::EventGridSchema,
            Some("application/json; charset=utf-8"),
            &[],
            events.to_string().as_bytes(),
        )
    }

    fn one() -> Value {
        json!({"id": "e1", "subject": "/g/1", "eventType": "Galaxy.Created", "eventTime": "2026-12-01T10:00:00Z", "data": {"n": 1}})
    }

    #[test]
    fn event_grid_events_get_the_router_attributes() {
        let events = eg(json!([one()])).unwrap();
        assert_eq!(events[0].id, "e1");
        assert_eq!(events[0].json["topic"], "galaxies");
        assert_eq!(events[0].json["metadataVersion"], "1");
        assert_eq!(events[0].json["dataVersion"], "");
        assert!(events[0].size > 50);
        let mut same_topic = one();
        same_topic["topic"] = json!("GALAXIES");
        same_topic["metadataVersion"] = json!("1");
        assert!(eg(json!([same_topic])).is_ok());
    }

    #[test]
    fn bad_event_grid_publishes_say_what_is_wrong() {
        let cases: Vec<(Value, &str)> = vec![
            (one(), "array"),
            (json!([]), "no events"),
            (
                json!([{"subject": "s", "eventType": "t", "eventTime": "2026-12-01T10:00:00Z"}]),
                "'id' is required",
            ),
            (
                json!([{"id": "1", "subject": "s", "eventType": "t", "eventTime": "yesterday"}]),
                "RFC 3339",
            ),
            (
                json!([{"id": "1", "subject": "s", "eventType": 5, "eventTime": "2026-12-01T10:00:00Z"}]),
                "must be a string",
            ),
            (
                json!([{"topic": "other", "id": "1", "subject": "s", "eventType": "t", "eventTime": "2026-12-01T10:00:00Z"}]),
                "another topic",
            ),
            (
                json!([{"metadataVersion": "2", "id": "1", "subject": "s", "eventType": "t", "eventTime": "2026-12-01T10:00:00Z"}]),
                "metadataVersion",
            ),
            // It would go out as a header: a line break could add others.
            (
                json!([{"dataVersion": "1\r\nx-evil: 1", "id": "1", "subject": "s", "eventType": "t", "eventTime": "2026-12-01T10:00:00Z"}]),
                "printable ASCII",
            ),
            (
                json!([{"id": "a\u{0}", "subject": "s", "eventType": "t", "eventTime": "2026-12-01T10:00:00Z"}]),
                "NUL",
            ),
        ];
        for (body, needle) in cases {
            let err = eg(body.clone()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert!(err.message.contains(needle), "{body}: {err}");
        }
        let err = parse(
            "t",
            Schema::EventGridSchema,
            Some("application/json"),
            &[],
            b"{nope",
        )
        .unwrap_err();
        assert!(err.message.contains("not JSON"));
        let err = parse(
            "t",
            Schema::EventGridSchema,
            Some("application/cloudevents-batch+json"),
            &[],
            b"[]",
        )
        .unwrap_err();
        assert!(err.message.contains("EventGridSchema"));
    }

    #[test]
    fn a_refused_batch_lists_every_bad_event_in_its_details() {
        let mut no_subject = one();
        no_subject.as_object_mut().unwrap().remove("subject");
        let mut bad_time = one();
        bad_time["eventTime"] = json!("soon");
        let err = eg(json!([one(), no_subject, one(), bad_time])).unwrap_err();
        assert_eq!((err.status, err.code), (400, "BadRequest"));
        let said: Vec<(&str, &str)> = err
            .details
            .iter()
            .map(|p| (p.code, p.message.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("InputJsonInvalid", "event 1: 'subject' is required"),
                (
                    "InputJsonInvalid",
                    "event 3: 'eventTime' is not an RFC 3339 time: 'soon'"
                ),
            ]
        );
        assert_eq!(
            err.message,
            "event 1: 'subject' is required (and 1 more bad event: see details)"
        );
        // One bad event: its problem alone, the message as it was.
        let err = eg(json!([{"id": "1"}])).unwrap_err();
        assert_eq!(err.message, "event 0: 'subject' is required");
        assert_eq!(err.details.len(), 1);
        // Many: the details stop at MAX_DETAILS.
        let many: Vec<Value> = (0..MAX_DETAILS + 50).map(|_| json!(5)).collect();
        let err = eg(json!(many)).unwrap_err();
        assert_eq!(err.details.len(), MAX_DETAILS);
        assert!(err
            .message
            .ends_with("(and 149 more bad events: see details)"));
        // CloudEvents batches the same way.
        let ce = json!({"specversion": "1.0", "id": "c1", "source": "/forge", "type": "T"});
        let err = parse(
            "t",
            Schema::CloudEvents,
            Some("application/cloudevents-batch+json"),
            &[],
            json!([{"id": "c0"}, ce, {"specversion": "0.3"}])
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(err.details.len(), 2, "{err:?}");
        assert!(err.details[1].message.starts_with("event 2:"), "{err:?}");
    }

    #[test]
    fn limits_are_413() {
        let many: Vec<Value> = (0..5001)
            .map(|i| {
                let mut e = one();
                e["id"] = json!(i.to_string());
                e
            })
            .collect();
        let e = eg(json!(many)).unwrap_err();
        assert_eq!((e.status, e.code), (413, "PayloadTooLarge"));
        assert_eq!(e.details[0].code, "PayloadTooLarge");
        let big = vec![b' '; MAX_BYTES + 1];
        assert_eq!(
            parse("t", Schema::EventGridSchema, None, &[], &big)
                .unwrap_err()
                .status,
            413
        );
    }

    #[test]
    fn cloud_events_structured_batch_and_binary() {
        let ce = json!({"specversion": "1.0", "id": "c1", "source": "/forge", "type": "Galaxy.Created", "data": {"n": 1}});
        let one = parse(
            "t",
            Schema::CloudEvents,
            Some("application/cloudevents+json"),
            &[],
            ce.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(one[0].id, "c1");
        let batch = parse(
            "t",
            Schema::CloudEvents,
            Some("application/cloudevents-batch+json; charset=utf-8"),
            &[],
            json!([ce, {"specversion": "1.0", "id": "c2", "source": "/forge", "type": "X", "data_base64": "AAE="}]).to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(batch.len(), 2);
        let headers = vec![
            ("ce-specversion".to_string(), "1.0".to_string()),
            ("CE-id".to_string(), "b1".to_string()),
            ("ce-source".to_string(), "/forge".to_string()),
            ("ce-type".to_string(), "Galaxy.Created".to_string()),
        ];
        let bin = parse(
            "t",
            Schema::CloudEvents,
            Some("application/json"),
            &headers,
            br#"{"n":2}"#,
        )
        .unwrap();
        assert_eq!(bin[0].json["data"]["n"], 2);
        assert_eq!(bin[0].json["type"], "Galaxy.Created");
        let no_type = parse("t", Schema::CloudEvents, None, &headers, br#"{"n":2}"#).unwrap();
        assert_eq!(no_type[0].id, "b1");
        assert_eq!(no_type[0].json["data"]["n"], 2);
        // No content type and not JSON: kept as bytes, not refused.
        let untyped = parse("t", Schema::CloudEvents, None, &headers, b"hello world").unwrap();
        assert_eq!(
            untyped[0].json["data_base64"],
            STANDARD.encode("hello world")
        );
        assert!(untyped[0].json.get("data").is_none());
        // Header values are percent-decoded (the HTTP binding's encoding).
        let mut encoded = headers.clone();
        encoded.push(("ce-subject".into(), "caf%C3%A9%20au%20lait".into()));
        let decoded = parse("t", Schema::CloudEvents, None, &encoded, b"{}").unwrap();
        assert_eq!(decoded[0].json["subject"], "café au lait");
        encoded.push(("ce-partitionkey".into(), "%FF".into()));
        let e = parse("t", Schema::CloudEvents, None, &encoded, b"{}").unwrap_err();
        assert_eq!((e.status, e.code), (400, "BadRequest"));
        // Bytes stay bytes (base64), UTF-8 text stays text.
        let bytes = parse(
            "t",
            Schema::CloudEvents,
            Some("application/octet-stream"),
            &headers,
            &[0, 0xff, 0xfe, b'a'],
        )
        .unwrap();
        assert_eq!(bytes[0].json["data_base64"], "AP/+YQ==");
        assert!(bytes[0].json.get("data").is_none());
        let text = parse(
            "t",
            Schema::CloudEvents,
            Some("text/plain; charset=utf-8"),
            &headers,
            "héllo".as_bytes(),
        )
        .unwrap();
        assert_eq!(text[0].json["data"], "héllo");
        let not_utf8 = parse(
            "t",
            Schema::CloudEvents,
            Some("text/plain"),
            &headers,
            &[0xff],
        )
        .unwrap();
        assert_eq!(not_utf8[0].json["data_base64"], "/w==");
        for (body, needle) in [
            (
                json!({"id": "1", "source": "s", "type": "t"}),
                "specversion",
            ),
            (
                json!({"specversion": "0.3", "id": "1", "source": "s", "type": "t"}),
                "1.0",
            ),
            (
                json!({"specversion": "1.0", "id": "1", "type": "t"}),
                "'source'",
            ),
            (
                json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": 1, "data_base64": "AA=="}),
                "exclude",
            ),
            (
                json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "time": "noon"}),
                "RFC 3339",
            ),
        ] {
            let err = parse(
                "t",
                Schema::CloudEvents,
                Some("application/cloudevents+json"),
                &[],
                body.to_string().as_bytes(),
            )
            .unwrap_err();
            assert!(err.message.contains(needle), "{body}: {err}");
        }
        let err = parse("t", Schema::CloudEvents, Some("text/plain"), &[], b"x").unwrap_err();
        assert!(err.message.contains("not a CloudEvents type"));
    }
}
