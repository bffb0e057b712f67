//! The JSON Schema of an event subscription write (`PUT
//! .../eventSubscriptions/{name}`), for galaxy-cloud's OpenAPI document:
//! what [`SubscriptionInput::parse`](crate::model::SubscriptionInput::parse)
//! and its checks accept, written next to them so the two move together.
//!
//! Four rules cannot be said in JSON Schema and stay with the checks
//! alone: a `NumberInRange` pair's low <= high, the webhook URL parsing
//! as the HTTP client parses it (WHATWG: IPv6 literals, port range, host
//! code points, IDNA), its host not being a link-local or metadata
//! address, and a CloudEvents topic not delivering in the Event Grid
//! schema (it depends on the topic).

use serde_json::{json, Value};

use crate::filter::{MAX_ADVANCED_FILTERS, MAX_STRING_CHARS, MAX_VALUES};
use crate::model::MAX_DELIVERY_HEADERS;

/// The shape `egress::check_url` asks for, short of a full URL parse and the
/// forbidden hosts: `http://` or `https://`, an authority whose host
/// (after the last `@`, before the first `:`, or inside brackets) is not
/// empty, then anything after a `/`, `?` or `#`.
pub const ENDPOINT_URL_PATTERN: &str =
    r"^https?://([^/?#]*@)?(\[[^\]/?#@][^/?#@]*|[^/?#@:\[][^/?#@]*)([/?#][\s\S]*)?$";

/// A string with a character that is not whitespace as Rust's `trim` sees
/// it (the `White_Space` property; a regex `\S` differs between engines).
pub const NOT_BLANK_PATTERN: &str =
    r"[^\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// The body schema: the subscription at the top level or under
/// `properties`, as Azure's REST API nests it.
pub fn subscription_body() -> Value {
    let input = subscription();
    json!({
        "oneOf": [
            input,
            {
                "type": "object",
                "required": ["properties"],
                "properties": {"properties": input},
                "additionalProperties": false
            }
        ]
    })
}

fn subscription() -> Value {
    let text = json!({"type": "string", "maxLength": MAX_STRING_CHARS});
    let nullable_text = json!({"type": ["string", "null"], "maxLength": MAX_STRING_CHARS});
    json!({
        "type": "object",
        "required": ["destination"],
        "additionalProperties": false,
        "properties": {
            "destination": {"oneOf": [webhook(), orchestration()]},
            "filter": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "includedEventTypes": {"type": ["array", "null"], "items": {"type": "string"}},
                    "subjectBeginsWith": nullable_text,
                    "subjectEndsWith": nullable_text,
                    "isSubjectCaseSensitive": {"type": "boolean"},
                    "advancedFilters": {
                        "type": "array",
                        "maxItems": MAX_ADVANCED_FILTERS,
                        "items": advanced_filter(&text)
                    },
                    "enableAdvancedFilteringOnArrays": {"type": "boolean"}
                }
            },
            "eventDeliverySchema": {"enum": ["EventGridSchema", "CloudEventSchemaV1_0", null]},
            "retryPolicy": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "maxDeliveryAttempts": {"type": "integer", "minimum": 1, "maximum": 30},
                    "eventTimeToLiveInMinutes": {"type": "integer", "minimum": 1, "maximum": 1440}
                }
            },
            "deadLetterDestination": {"description": "Present (any value): events that fail for good are kept as dead letters (listed, re-driven); absent: they are dropped, as Event Grid does"},
            "labels": {"type": ["array", "null"], "items": {"type": "string"}}
        }
    })
}

fn webhook() -> Value {
    json!({
        "type": "object",
        "required": ["endpointType", "properties"],
        "properties": {
            "endpointType": {"enum": ["WebHook"]},
            "properties": {
                "type": "object",
                "required": ["endpointUrl"],
                "properties": {
                    "endpointUrl": {"type": "string", "pattern": ENDPOINT_URL_PATTERN},
                    "maxEventsPerBatch": {"type": "integer", "minimum": 1, "maximum": 5000},
                    "preferredBatchSizeInKilobytes": {"type": "integer", "minimum": 1, "maximum": 1024},
                    "deliveryAttributeMappings": {
                        "type": "array",
                        "maxItems": MAX_DELIVERY_HEADERS,
                        "items": {
                            "type": "object",
                            "required": ["name", "type", "properties"],
                            "properties": {
                                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                                "type": {"enum": ["Static"]},
                                "properties": {
                                    "type": "object",
                                    "required": ["value"],
                                    "properties": {
                                        "value": {"type": "string"},
                                        "isSecret": {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn orchestration() -> Value {
    json!({
        "type": "object",
        "required": ["endpointType", "properties"],
        "properties": {
            "endpointType": {"enum": ["Orchestration"]},
            "properties": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "pattern": NOT_BLANK_PATTERN}}
            }
        }
    })
}

/// One advanced filter: which of `value` and `values` it needs, and of
/// what type, depends on its operator.
fn advanced_filter(text: &Value) -> Value {
    let key =
        json!({"type": "string", "maxLength": MAX_STRING_CHARS, "pattern": NOT_BLANK_PATTERN});
    let list = |items: Value| json!({"type": "array", "minItems": 1, "maxItems": MAX_VALUES, "items": items});
    let unused_values = json!({"type": ["array", "null"], "maxItems": MAX_VALUES});
    let variant = |operators: &[&str], value: Option<Value>, values: Option<Value>| {
        let mut required = vec!["operatorType", "key"];
        if value.is_some() {
            required.push("value");
        }
        if values.is_some() {
            required.push("values");
        }
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": required,
            "properties": {
                "operatorType": {"enum": operators},
                "key": key,
                "value": value.unwrap_or(json!({})),
                "values": values.unwrap_or(unused_values.clone())
            }
        })
    };
    let number = json!({"type": "number"});
    json!({"oneOf": [
        variant(&["NumberIn", "NumberNotIn"], None, Some(list(number.clone()))),
        variant(
            &["NumberLessThan", "NumberGreaterThan", "NumberLessThanOrEquals", "NumberGreaterThanOrEquals"],
            Some(number.clone()),
            None,
        ),
        variant(
            &["NumberInRange", "NumberNotInRange"],
            None,
            Some(list(json!({"type": "array", "minItems": 2, "maxItems": 2, "items": number}))),
        ),
        variant(&["BoolEquals"], Some(json!({"type": "boolean"})), None),
        variant(
            &["StringContains", "StringNotContains", "StringBeginsWith", "StringNotBeginsWith",
              "StringEndsWith", "StringNotEndsWith", "StringIn", "StringNotIn"],
            None,
            Some(list(text.clone())),
        ),
        variant(&["IsNullOrUndefined", "IsNotNull"], None, None),
    ]})
}
