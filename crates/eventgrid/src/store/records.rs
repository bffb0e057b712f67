//! What the router's store holds and answers with: topics, subscriptions
//! and their provisioning state, due deliveries, attempts to record, dead
//! letters and counts, and the store's errors. Plain data, shared by both
//! backends and the delivery loop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::event::Schema;
use crate::model::SubscriptionInput;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such topic.
    #[error("no topic '{0}'")]
    NoTopic(String),
    /// No such subscription.
    #[error("no event subscription '{1}' on topic '{0}'")]
    NoSubscription(String, String),
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what exists (another input schema for an
    /// existing topic).
    #[error("{0}")]
    Conflict(String),
    /// A limit on how many topics or subscriptions there may be.
    #[error("{0}")]
    Quota(String),
    /// SQLite failed.
    #[error("events database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("events database error: {0}")]
    Postgres(String),
    /// A group of writes failed to commit: nothing of it was stored.
    #[error("events database error: the write was not stored: {0}")]
    NotStored(String),
    /// The blocking call did not finish (shutdown).
    #[error("events store call interrupted: {0}")]
    Interrupted(String),
}

/// A topic as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// Its name.
    pub name: String,
    /// The schema publishers use.
    pub input_schema: Schema,
    /// `key1`.
    pub key1: String,
    /// `key2`.
    pub key2: String,
}

/// Where a subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Provisioning {
    /// Waiting for the endpoint to pass the validation handshake.
    AwaitingManualAction,
    /// Active: matching events are delivered.
    Succeeded,
    /// The handshake failed (see the reason).
    Failed,
}

impl Provisioning {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingManualAction => "AwaitingManualAction",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            _ => Self::AwaitingManualAction,
        }
    }
}

/// A subscription as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionRecord {
    /// Its topic.
    pub topic: String,
    /// Its name.
    pub name: String,
    /// The definition.
    pub input: SubscriptionInput,
    /// Its state.
    pub provisioning: Provisioning,
    /// Why it failed, if it did.
    pub reason: Option<String>,
    /// The validation code the handshake sent (manual validation URL).
    pub validation_code: String,
}

/// Most topics one router keeps (a listing returns them all).
pub const MAX_TOPICS: usize = 1000;
/// Most event subscriptions per topic (Azure's limit).
pub const MAX_SUBSCRIPTIONS_PER_TOPIC: usize = 500;

/// A delivery: (event sequence, topic, subscription), names lower-cased.
pub type DeliveryKey = (i64, String, String);

/// The key of a delivery of event `seq` to `topic`'s `subscription`.
pub fn delivery_key(seq: i64, topic: &str, subscription: &str) -> DeliveryKey {
    (seq, topic.to_lowercase(), subscription.to_lowercase())
}

/// The deliveries a delivery loop has sent and not yet recorded.
pub type InFlight = Arc<Mutex<HashSet<DeliveryKey>>>;

/// A delivery due now: the event and where it goes.
#[derive(Clone, Debug, PartialEq)]
pub struct DueDelivery {
    /// The event's sequence number.
    pub seq: i64,
    /// The topic.
    pub topic: String,
    /// The subscription.
    pub subscription: String,
    /// The event, in its topic's schema.
    pub event: Value,
    /// Attempts made so far.
    pub attempts: u32,
    /// When its time to live began (ms since the epoch): when the event
    /// was accepted, or when this delivery was last re-driven (a dead
    /// letter sent again gets the whole time to live again, not what was
    /// left of it when it died).
    pub live_since_ms: i64,
}

/// Most event bytes one page of dead letters carries (it stops after the
/// letter that crosses it; an event is at most 1 MB).
pub const DEAD_LETTER_PAGE_BYTES: usize = durable::store::page::PAGE_PAYLOAD_BYTES;

/// A page of dead letters.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetterPage {
    /// The letters, oldest first.
    pub value: Vec<DeadLetter>,
    /// The sequence to list after for the next page, when more may follow.
    pub next_after: Option<i64>,
}

/// One dead letter, as the API lists it (serialized with Event Grid's
/// `publishTime` and `lastDeliveryAttemptTime` as RFC 3339 times, beside
/// the milliseconds).
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The event's sequence number (what re-drive names).
    pub sequence: i64,
    /// The event.
    pub event: Value,
    /// `deadLetterReason`.
    pub dead_letter_reason: String,
    /// `deliveryAttempts`.
    pub delivery_attempts: u32,
    /// `lastDeliveryOutcome`.
    pub last_delivery_outcome: String,
    /// `publishTime` (ms since the epoch).
    pub publish_time_ms: i64,
    /// `lastDeliveryAttemptTime` (ms since the epoch).
    pub last_delivery_attempt_time_ms: i64,
}

impl Serialize for DeadLetter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let time = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        let mut s = serializer.serialize_struct("DeadLetter", 9)?;
        s.serialize_field("sequence", &self.sequence)?;
        s.serialize_field("event", &self.event)?;
        s.serialize_field("deadLetterReason", &self.dead_letter_reason)?;
        s.serialize_field("deliveryAttempts", &self.delivery_attempts)?;
        s.serialize_field("lastDeliveryOutcome", &self.last_delivery_outcome)?;
        s.serialize_field("publishTime", &time(self.publish_time_ms))?;
        s.serialize_field(
            "lastDeliveryAttemptTime",
            &time(self.last_delivery_attempt_time_ms),
        )?;
        s.serialize_field("publishTimeMs", &self.publish_time_ms)?;
        s.serialize_field(
            "lastDeliveryAttemptTimeMs",
            &self.last_delivery_attempt_time_ms,
        )?;
        s.end()
    }
}

/// One topic's event counts, for metrics (read from the store, so they
/// survive restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicCounts {
    /// The topic.
    pub topic: String,
    /// Events accepted.
    pub published: u64,
    /// Billed operations: each accepted event in 64 KB units.
    pub billed_units: u64,
    /// Deliveries that succeeded.
    pub delivered: u64,
    /// Attempts after the first (retries).
    pub retried: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
}

/// What follows an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Delivered,
    /// Retry at this time (ms since the epoch).
    RetryAt(i64),
    /// Dead-lettered for this reason.
    Dead(String),
    /// Given up for this reason, with no dead-letter destination: the
    /// delivery is deleted (its attempts still count), as Event Grid drops
    /// such events.
    Dropped(String),
}

/// One attempt, to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedAttempt {
    /// The event.
    pub seq: i64,
    /// Its topic.
    pub topic: String,
    /// The subscription.
    pub subscription: String,
    /// This attempt's number (1-based).
    pub n: u32,
    /// When it ended (ms since the epoch).
    pub at_ms: i64,
    /// `lastDeliveryOutcome`.
    pub outcome: String,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// What follows.
    pub next: Next,
}
