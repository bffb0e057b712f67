//! Topics and event subscriptions as the management API reads and writes
//! them, with Azure's property names, and the checks a write passes.
//! Pure: JSON in, a checked definition or a reason out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Schema;
use crate::filter::Filter;
use crate::retry::RetryPolicy;

/// Longest topic or subscription name.
pub const MAX_NAME: usize = 64;
/// Most custom delivery headers per subscription.
pub const MAX_DELIVERY_HEADERS: usize = 10;

/// A name Azure would accept: 3 to 64 letters, digits and dashes.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = (3..=MAX_NAME).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the {what} name must have 3 to {MAX_NAME} letters, digits and dashes (got '{}')",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// Whether `v` can be sent as an HTTP header value: printable ASCII,
/// spaces and tabs (anything else would fail every request it is put in,
/// and a line break could add headers of its own).
pub fn header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Headers a delivery sets itself (the `aeg-*` ones and those that frame
/// the request): a subscription's static headers may not be one of them.
fn reserved_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("aeg-")
        || [
            "content-type",
            "content-length",
            "content-encoding",
            "transfer-encoding",
            "host",
            "connection",
            "keep-alive",
            "upgrade",
            "te",
            "trailer",
            "expect",
        ]
        .contains(&name.as_str())
}

/// `PUT .../topics/{topic}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicInput {
    /// The schema publishers use: `EventGridSchema` for a new topic
    /// without one; fixed once the topic exists (absent: whatever it is).
    #[serde(default)]
    pub input_schema: Option<Schema>,
}

/// One custom delivery header (`deliveryAttributeMappings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttribute {
    /// The header's name.
    pub name: String,
    /// `Static` (only kind supported).
    #[serde(rename = "type")]
    pub kind: String,
    /// `{ "value": "...", "isSecret": false }`.
    pub properties: Value,
}

/// Where a subscription's events go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "endpointType", content = "properties")]
pub enum Destination {
    /// POST to a URL.
    WebHook(WebHook),
    /// Start an orchestration per event (its input is the event).
    Orchestration(OrchestrationTarget),
}

/// A webhook destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebHook {
    /// http(s) URL.
    pub endpoint_url: String,
    /// 1 to 5000 (default 1).
    #[serde(default = "one")]
    pub max_events_per_batch: u32,
    /// 1 to 1024 (default 64).
    #[serde(default = "default_batch_kb")]
    pub preferred_batch_size_in_kilobytes: u32,
    /// Custom headers on every delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivery_attribute_mappings: Vec<DeliveryAttribute>,
}

fn one() -> u32 {
    1
}

fn default_batch_kb() -> u32 {
    64
}

/// An orchestration destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrchestrationTarget {
    /// A registered orchestration, e.g. `Galaxy_Create`.
    pub name: String,
}

/// `PUT .../eventSubscriptions/{name}` (at the top level or under
/// `properties`, as Azure's REST API nests it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Where events go.
    pub destination: Destination,
    /// Which events.
    #[serde(default)]
    pub filter: Filter,
    /// The schema events are delivered in (default: the topic's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_delivery_schema: Option<Schema>,
    /// Retries.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// When present (any value), events that fail for good are kept as
    /// dead letters (listed, re-driven); when absent they are dropped, as
    /// Event Grid drops them without a dead-letter destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_destination: Option<Value>,
    /// Labels (kept, unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

impl SubscriptionInput {
    /// Reads a PUT body (top-level or `properties`) and checks it against
    /// the topic's schema.
    pub fn parse(body: Value, topic_schema: Schema) -> Result<Self, String> {
        let body = match body {
            Value::Object(mut o) if o.contains_key("properties") => {
                if o.len() > 1 {
                    return Err(
                        "an event subscription goes either at the top level or alone under 'properties'"
                            .into(),
                    );
                }
                o.remove("properties").unwrap_or(Value::Null)
            }
            other => other,
        };
        // serde would read a struct from an array too; JSON Schema (the
        // document's) says object, and calls 5.0 an integer.
        objects_where_structs_go(&body)?;
        let body = integral_floats_as_integers(body);
        let input: SubscriptionInput =
            serde_json::from_value(body).map_err(|e| format!("not an event subscription: {e}"))?;
        input.check(topic_schema)?;
        Ok(input)
    }

    /// The checks of a write.
    pub fn check(&self, topic_schema: Schema) -> Result<(), String> {
        self.filter.check().map_err(|e| e.0)?;
        self.retry_policy.check()?;
        if topic_schema == Schema::CloudEvents
            && self.event_delivery_schema == Some(Schema::EventGridSchema)
        {
            return Err(
                "events published as CloudEvents cannot be delivered in the Event Grid schema"
                    .into(),
            );
        }
        match &self.destination {
            Destination::WebHook(w) => {
                crate::egress::check_url(&w.endpoint_url)?;
                if !(1..=5000).contains(&w.max_events_per_batch) {
                    return Err("maxEventsPerBatch must be 1 to 5000".into());
                }
                if !(1..=1024).contains(&w.preferred_batch_size_in_kilobytes) {
                    return Err("preferredBatchSizeInKilobytes must be 1 to 1024".into());
                }
                if w.delivery_attribute_mappings.len() > MAX_DELIVERY_HEADERS {
                    return Err(format!(
                        "at most {MAX_DELIVERY_HEADERS} delivery attribute mappings"
                    ));
                }
                for a in &w.delivery_attribute_mappings {
                    let valid = !a.name.is_empty()
                        && a.name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    let value = a.properties["value"].as_str();
                    if !valid || a.kind != "Static" || !value.is_some_and(header_value) {
                        return Err(format!(
                            "delivery attribute '{}' must be a Static header with a string value of printable ASCII and a name of letters, digits, '-' or '_'",
                            a.name.chars().take(80).collect::<String>()
                        ));
                    }
                    if reserved_header(&a.name) {
                        return Err(format!(
                            "delivery attribute '{}' is a header the router sets itself",
                            a.name
                        ));
                    }
                }
            }
            Destination::Orchestration(o) => {
                if o.name.trim().is_empty() {
                    return Err("an Orchestration destination needs properties.name".into());
                }
            }
        }
        Ok(())
    }

    /// The schema deliveries use.
    pub fn delivery_schema(&self, topic_schema: Schema) -> Schema {
        self.event_delivery_schema.unwrap_or(topic_schema)
    }
}

/// The places of a subscription body serde reads into structs must hold
/// objects (serde would also take an array there, field by field).
fn objects_where_structs_go(body: &Value) -> Result<(), String> {
    let object = |v: Option<&Value>, what: &str| match v {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(format!("{what} must be a JSON object")),
    };
    object(Some(body), "an event subscription")?;
    object(body.get("filter"), "filter")?;
    object(body.get("retryPolicy"), "retryPolicy")?;
    object(body.get("destination"), "destination")?;
    let properties = body.get("destination").and_then(|d| d.get("properties"));
    object(properties, "destination.properties")?;
    let items = |v: Option<&Value>, what: &str| -> Result<(), String> {
        if let Some(Value::Array(items)) = v {
            for item in items {
                object(Some(item), what)?;
            }
        }
        Ok(())
    };
    items(
        body.get("filter").and_then(|f| f.get("advancedFilters")),
        "each advanced filter",
    )?;
    items(
        properties.and_then(|p| p.get("deliveryAttributeMappings")),
        "each delivery attribute mapping",
    )
}

/// `5.0` as `5` (JSON Schema calls it an integer; serde would refuse it
/// for a whole-number field).
fn integral_floats_as_integers(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Value::from(f as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(integral_floats_as_integers).collect())
        }
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, integral_floats_as_integers(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscription_bodies_read_as_their_json_schema_says() {
        let hook = json!({"endpointType": "WebHook", "properties": {"endpointUrl": "http://127.0.0.1:9/hook"}});
        let parse = |body: Value| SubscriptionInput::parse(body, Schema::EventGridSchema);
        // 5.0 is a whole number in JSON Schema.
        let mut float = json!({"destination": hook.clone()});
        float["destination"]["properties"]["maxEventsPerBatch"] = json!(5.0);
        let Destination::WebHook(w) = parse(float).unwrap().destination else {
            panic!("a webhook")
        };
        assert_eq!(w.max_events_per_batch, 5);
        // Objects where serde would also read arrays.
        for bad in [
            json!({"destination": hook.clone(), "filter": [null, null]}),
            json!({"destination": hook.clone(), "retryPolicy": [3]}),
            json!({"destination": hook.clone(), "filter": {"advancedFilters": [["IsNotNull", "data.x"]]}}),
            json!([hook.clone()]),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        // Nested under 'properties' alone, or at the top level.
        assert!(parse(json!({"properties": {"destination": hook.clone()}})).is_ok());
        assert!(
            parse(json!({"properties": {"destination": hook.clone()}, "destination": hook}))
                .is_err()
        );
    }

    #[test]
    fn subscriptions_read_azures_shape_nested_or_not() {
        let body = json!({"properties": {
            "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://127.0.0.1:9/hook", "maxEventsPerBatch": 10,
                "deliveryAttributeMappings": [{"name": "x-game", "type": "Static", "properties": {"value": "forge", "isSecret": false}}]}},
            "filter": {"includedEventTypes": ["Galaxy.Created"]},
            "retryPolicy": {"maxDeliveryAttempts": 5},
            "deadLetterDestination": {"endpointType": "StorageBlob"}
        }});
        let s = SubscriptionInput::parse(body, Schema::EventGridSchema).unwrap();
        assert!(
            matches!(&s.destination, Destination::WebHook(w) if w.max_events_per_batch == 10 && w.preferred_batch_size_in_kilobytes == 64)
        );
        assert_eq!(s.retry_policy.max_delivery_attempts, 5);
        assert_eq!(s.retry_policy.event_time_to_live_in_minutes, 1440);
        let o = SubscriptionInput::parse(
            json!({"destination": {"endpointType": "Orchestration", "properties": {"name": "Galaxy_Create"}}}),
            Schema::CloudEvents,
        )
        .unwrap();
        assert_eq!(o.delivery_schema(Schema::CloudEvents), Schema::CloudEvents);
    }

    #[test]
    fn bad_subscriptions_say_why() {
        let hook = |url: &str| json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": url}}});
        for (body, needle) in [
            (hook("ftp://x/y"), "http(s)"),
            (
                hook("http://169.254.169.254/latest/meta-data"),
                "link-local",
            ),
            (hook("http://[fe80::1]/x"), "link-local"),
            (hook("http:///x"), "no host"),
            (
                json!({"destination": {"endpointType": "Queue", "properties": {}}}),
                "not an event subscription",
            ),
            (
                json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://a/b", "maxEventsPerBatch": 0}}}),
                "maxEventsPerBatch",
            ),
            (
                json!({"destination": {"endpointType": "Orchestration", "properties": {"name": " "}}}),
                "properties.name",
            ),
            (
                json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://a/b",
                    "deliveryAttributeMappings": [{"name": "x-a", "type": "Static", "properties": {"value": "a\nb"}}]}}}),
                "printable ASCII",
            ),
            (
                json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://a/b",
                    "deliveryAttributeMappings": [{"name": "Aeg-Delivery-Count", "type": "Static", "properties": {"value": "9"}}]}}}),
                "sets itself",
            ),
            (
                json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://a/b",
                    "deliveryAttributeMappings": [{"name": "Content-Length", "type": "Static", "properties": {"value": "9"}}]}}}),
                "sets itself",
            ),
        ] {
            let err = SubscriptionInput::parse(body.clone(), Schema::EventGridSchema).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let mut many = hook("http://a/b");
        many["filter"] = json!({"advancedFilters": (0..26).map(|_| json!({"operatorType": "IsNotNull", "key": "data.x"})).collect::<Vec<_>>()});
        assert!(SubscriptionInput::parse(many, Schema::EventGridSchema)
            .unwrap_err()
            .contains("25"));
        let mut ce_to_eg = hook("http://a/b");
        ce_to_eg["eventDeliverySchema"] = json!("EventGridSchema");
        assert!(SubscriptionInput::parse(ce_to_eg, Schema::CloudEvents).is_err());
        assert!(check_name("topic", "ab").is_err());
        assert!(check_name("topic", "galaxy-events").is_ok());
        assert!(check_name("topic", "no/slash").is_err());
    }
}
