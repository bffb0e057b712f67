//! What both backends share between their rows and their answers: the
//! JSON shapes of delivery histories, schema names, a subscription record
//! from its stored columns, and the state rules (which state held
//! deliveries move between, what an attempt's outcome makes of its
//! delivery).

use serde_json::Value;

use super::{Next, Provisioning, RecordedAttempt, StoreError, SubscriptionRecord};
use crate::event::Schema;

/// The JSON shape of one delivery in [`RouterStore::event_deliveries`].
pub(crate) fn delivery_json(
    seq: i64,
    subscription: &str,
    state: &str,
    attempts: i64,
    reason: Option<String>,
    tries: Vec<Value>,
) -> Value {
    serde_json::json!({
        "sequence": seq, "subscription": subscription, "state": state, "deliveryAttempts": attempts,
        "deadLetterReason": reason, "attempts": tries,
    })
}

/// The JSON shape of one attempt in [`delivery_json`].
pub(crate) fn attempt_json(n: i64, at_ms: i64, outcome: String, status: Option<i64>) -> Value {
    serde_json::json!({ "attempt": n, "timeMs": at_ms, "outcome": outcome, "status": status })
}

/// The stored name of a topic's input schema.
pub fn schema_name(s: Schema) -> &'static str {
    match s {
        Schema::EventGridSchema => "EventGridSchema",
        Schema::CloudEvents => "CloudEventSchemaV1_0",
    }
}

/// A topic's input schema from its stored name.
pub(crate) fn parse_schema(s: &str) -> Schema {
    if s == "CloudEventSchemaV1_0" {
        Schema::CloudEvents
    } else {
        Schema::EventGridSchema
    }
}

/// A stored subscription definition back into its record.
pub(crate) fn record_of(
    topic: String,
    name: String,
    json: &str,
    state: &str,
    reason: Option<String>,
    validation_code: String,
) -> Result<SubscriptionRecord, StoreError> {
    let input = serde_json::from_str(json).map_err(|e| {
        StoreError::Invalid(format!(
            "stored subscription {topic}/{name} is unreadable: {e}"
        ))
    })?;
    Ok(SubscriptionRecord {
        topic,
        name,
        input,
        provisioning: Provisioning::parse(state),
        reason,
        validation_code,
    })
}

/// Which delivery state a subscription's undelivered events move from and
/// to when it enters `state`: a subscription that is not `Succeeded` (put
/// again and not yet through its new handshake, or failed it) has them
/// `held`, one that is has them `pending` again, so nothing reaches an
/// endpoint before it proved it wants the events.
pub(crate) fn held_transition(state: Provisioning) -> (&'static str, &'static str) {
    if state == Provisioning::Succeeded {
        ("held", "pending")
    } else {
        ("pending", "held")
    }
}

/// What a record-attempt update sets: state, due time, dead-letter reason.
pub(crate) fn next_state(a: &RecordedAttempt) -> (&'static str, i64, Option<String>) {
    match &a.next {
        Next::Delivered => ("delivered", a.at_ms, None),
        Next::RetryAt(due) => ("pending", *due, None),
        Next::Dead(reason) => ("dead", a.at_ms, Some(reason.clone())),
        Next::Dropped(reason) => (DROPPED, a.at_ms, Some(reason.clone())),
    }
}

/// The state [`next_state`] gives a dropped delivery, which the record
/// then deletes.
pub(crate) const DROPPED: &str = "dropped";
