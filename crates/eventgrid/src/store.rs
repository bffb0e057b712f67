//! The router's durable state in one SQLite file (`events.db` in
//! galaxy-cloud's data directory): topics and their keys, subscriptions,
//! accepted events, and one delivery row per (event, subscription) made in
//! the same transaction as the event, so nothing accepted is lost across
//! restarts and every matching subscription gets it.
//!
//! Delivery rows move `pending` -> `delivered` or `dead` (a dead letter,
//! with its reason); every attempt is recorded with its outcome, so the API
//! shows each event's delivery history. Calls are serialized on one
//! connection on the blocking pool (short transactions).

use std::path::Path;
use std::sync::{Arc, Mutex};

use durable::store::group_commit::GroupCommit;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use crate::event::{Event, Schema};
use crate::model::SubscriptionInput;
use crate::sas::new_key;

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
    /// SQLite failed.
    #[error("events database error: {0}")]
    Database(#[from] rusqlite::Error),
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
    fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingManualAction => "AwaitingManualAction",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }

    fn parse(s: &str) -> Self {
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
    /// When the event was accepted (ms since the epoch).
    pub published_ms: i64,
}

/// One dead letter, as the API lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
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

/// One queued publish: topic, events, time, and where its answer goes.
type PublishOp = (
    String,
    Vec<Event>,
    i64,
    tokio::sync::oneshot::Sender<Result<usize, StoreError>>,
);

/// The router's store. Cloning shares it.
#[derive(Clone)]
pub struct RouterStore {
    conn: Arc<Mutex<Connection>>,
    publisher: Arc<GroupCommit<PublishOp>>,
    wake: Arc<Notify>,
}

/// Applies a group of publishes in one transaction and answers each.
fn publish_group(conn: &mut Connection, ops: Vec<PublishOp>) {
    let mut answers = Vec::with_capacity(ops.len());
    let outcome = (|| -> Result<(), StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (topic, events, now_ms, reply) in ops {
            let queued = publish_in(&tx, &topic, &events, now_ms)?;
            answers.push((reply, queued));
        }
        tx.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            for (reply, queued) in answers {
                let _ = reply.send(Ok(queued));
            }
        }
        Err(e) => {
            // Nothing of the group was stored; publishers not reached see
            // their answer dropped (Interrupted).
            let message = e.to_string();
            for (reply, _) in answers {
                let _ = reply.send(Err(StoreError::Invalid(format!(
                    "the publish was not stored: {message}"
                ))));
            }
        }
    }
}

/// One publish inside a transaction: its events and their deliveries.
/// The topic's active subscriptions.
fn active_subscriptions(tx: &Connection, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
    tx.prepare_cached(
        "SELECT topic, name, definition, state, reason, validation_code FROM subscriptions
         WHERE topic = ?1 AND state = 'Succeeded'",
    )?
    .query_map([topic], subscription_row)?
    .collect::<Result<Vec<_>, _>>()?
    .into_iter()
    .map(to_record)
    .collect()
}

fn publish_in(
    tx: &Connection,
    topic: &str,
    events: &[Event],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let subs = active_subscriptions(tx, topic)?;
    publish_to(tx, topic, &subs, events, now_ms)
}

/// Stores `events` with one pending delivery per matching subscription of
/// `subs`. Returns how many deliveries it queued.
fn publish_to(
    tx: &Connection,
    topic: &str,
    subs: &[SubscriptionRecord],
    events: &[Event],
    now_ms: i64,
) -> Result<usize, StoreError> {
    let mut queued = 0;
    for e in events {
        tx.prepare_cached(
            "INSERT INTO events (topic, event_id, body, size, published_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![topic, e.id, e.json.to_string(), e.size as i64, now_ms])?;
        let seq = tx.last_insert_rowid();
        for s in subs.iter().filter(|s| s.input.filter.matches(&e.json)) {
            tx.prepare_cached(
                "INSERT INTO deliveries (seq, topic, subscription, state, attempts, due_ms)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4)",
            )?
            .execute(params![seq, topic, s.name, now_ms])?;
            queued += 1;
        }
    }
    Ok(queued)
}

fn schema_name(s: Schema) -> &'static str {
    match s {
        Schema::EventGridSchema => "EventGridSchema",
        Schema::CloudEvents => "CloudEventSchemaV1_0",
    }
}

fn parse_schema(s: &str) -> Schema {
    if s == "CloudEventSchemaV1_0" {
        Schema::CloudEvents
    } else {
        Schema::EventGridSchema
    }
}

fn topic_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TopicRecord> {
    Ok(TopicRecord {
        name: r.get(0)?,
        input_schema: parse_schema(&r.get::<_, String>(1)?),
        key1: r.get(2)?,
        key2: r.get(3)?,
    })
}

fn subscription_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, String, String, Option<String>, String)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_record(
    row: (String, String, String, String, Option<String>, String),
) -> Result<SubscriptionRecord, StoreError> {
    let (topic, name, json, state, reason, code) = row;
    let input = serde_json::from_str(&json).map_err(|e| {
        StoreError::Invalid(format!(
            "stored subscription {topic}/{name} is damaged: {e}"
        ))
    })?;
    Ok(SubscriptionRecord {
        topic,
        name,
        input,
        provisioning: Provisioning::parse(&state),
        reason,
        validation_code: code,
    })
}

impl RouterStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS topics (
                 name TEXT PRIMARY KEY COLLATE NOCASE,
                 input_schema TEXT NOT NULL,
                 key1 TEXT NOT NULL,
                 key2 TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS subscriptions (
                 topic TEXT NOT NULL COLLATE NOCASE,
                 name TEXT NOT NULL COLLATE NOCASE,
                 definition TEXT NOT NULL,
                 state TEXT NOT NULL,
                 reason TEXT,
                 validation_code TEXT NOT NULL,
                 PRIMARY KEY (topic, name)
             );
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 topic TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 body TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 published_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS events_by_id ON events (topic, event_id);
             CREATE TABLE IF NOT EXISTS deliveries (
                 seq INTEGER NOT NULL,
                 topic TEXT NOT NULL COLLATE NOCASE,
                 subscription TEXT NOT NULL COLLATE NOCASE,
                 state TEXT NOT NULL,
                 attempts INTEGER NOT NULL,
                 due_ms INTEGER NOT NULL,
                 last_outcome TEXT,
                 last_attempt_ms INTEGER,
                 reason TEXT,
                 PRIMARY KEY (seq, topic, subscription)
             );
             CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, due_ms);
             CREATE TABLE IF NOT EXISTS attempts (
                 seq INTEGER NOT NULL,
                 topic TEXT NOT NULL COLLATE NOCASE,
                 subscription TEXT NOT NULL COLLATE NOCASE,
                 n INTEGER NOT NULL,
                 at_ms INTEGER NOT NULL,
                 outcome TEXT NOT NULL,
                 status INTEGER
             );
             CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (topic, seq);",
        )?;
        let writer = Connection::open(path)?;
        writer.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")?;
        let publisher = GroupCommit::start("events-publisher", writer, 256, publish_group)
            .map_err(|e| StoreError::Interrupted(format!("starting the events writer: {e}")))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            publisher: Arc::new(publisher),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Notified when deliveries may have become due (a publish, an
    /// activation, a re-drive): the delivery loop waits on it.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Interrupted(e.to_string()))?
    }

    /// Creates a topic (with two new keys) or changes its schema.
    pub async fn put_topic(&self, name: &str, schema: Schema) -> Result<TopicRecord, StoreError> {
        let name = name.to_string();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO topics (name, input_schema, key1, key2) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET input_schema = excluded.input_schema",
                params![name, schema_name(schema), new_key(), new_key()],
            )?;
            Ok(conn.query_row(
                "SELECT name, input_schema, key1, key2 FROM topics WHERE name = ?1",
                [&name],
                topic_row,
            )?)
        })
        .await
    }

    /// One topic.
    pub async fn topic(&self, name: &str) -> Result<TopicRecord, StoreError> {
        let name = name.to_string();
        self.call(move |conn| {
            conn.query_row(
                "SELECT name, input_schema, key1, key2 FROM topics WHERE name = ?1",
                [&name],
                topic_row,
            )
            .optional()?
            .ok_or(StoreError::NoTopic(name))
        })
        .await
    }

    /// Every topic, by name.
    pub async fn topics(&self) -> Result<Vec<TopicRecord>, StoreError> {
        self.call(|conn| {
            Ok(conn
                .prepare("SELECT name, input_schema, key1, key2 FROM topics ORDER BY name")?
                .query_map([], topic_row)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Deletes a topic with its subscriptions and pending deliveries.
    pub async fn delete_topic(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM topics WHERE name = ?1", [&name])? == 0 {
                return Err(StoreError::NoTopic(name));
            }
            tx.execute("DELETE FROM subscriptions WHERE topic = ?1", [&name])?;
            tx.execute(
                "DELETE FROM deliveries WHERE topic = ?1 AND state = 'pending'",
                [&name],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Replaces `key1` or `key2` with a new key.
    pub async fn regenerate_key(
        &self,
        topic: &str,
        which: &str,
    ) -> Result<TopicRecord, StoreError> {
        let column = match which {
            "key1" => "key1",
            "key2" => "key2",
            other => {
                return Err(StoreError::Invalid(format!(
                    "keyName must be key1 or key2 (got '{other}')"
                )))
            }
        };
        let topic = topic.to_string();
        self.call(move |conn| {
            let n = conn.execute(
                &format!("UPDATE topics SET {column} = ?2 WHERE name = ?1"),
                params![topic, new_key()],
            )?;
            if n == 0 {
                return Err(StoreError::NoTopic(topic));
            }
            Ok(conn.query_row(
                "SELECT name, input_schema, key1, key2 FROM topics WHERE name = ?1",
                [&topic],
                topic_row,
            )?)
        })
        .await
    }

    /// Creates or replaces a subscription in `state` (an orchestration
    /// subscription starts active; a webhook waits for its handshake).
    pub async fn put_subscription(
        &self,
        topic: &str,
        name: &str,
        input: SubscriptionInput,
        state: Provisioning,
        validation_code: String,
    ) -> Result<SubscriptionRecord, StoreError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        let json = serde_json::to_string(&input).expect("a subscription serializes");
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM topics WHERE name = ?1", [&topic], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::NoTopic(topic));
            }
            tx.execute(
                "INSERT INTO subscriptions (topic, name, definition, state, reason, validation_code)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)
                 ON CONFLICT (topic, name) DO UPDATE SET definition = excluded.definition,
                     state = excluded.state, reason = NULL, validation_code = excluded.validation_code",
                params![topic, name, json, state.as_str(), validation_code],
            )?;
            tx.commit()?;
            Ok(SubscriptionRecord {
                topic,
                name,
                input,
                provisioning: state,
                reason: None,
                validation_code,
            })
        })
        .await
    }

    /// Records the handshake's outcome.
    pub async fn set_provisioning(
        &self,
        topic: &str,
        name: &str,
        state: Provisioning,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.call(move |conn| {
            let n = conn.execute(
                "UPDATE subscriptions SET state = ?3, reason = ?4 WHERE topic = ?1 AND name = ?2",
                params![topic, name, state.as_str(), reason],
            )?;
            if n == 0 {
                return Err(StoreError::NoSubscription(topic, name));
            }
            Ok(())
        })
        .await
    }

    /// One subscription.
    pub async fn subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.call(move |conn| {
            let row = conn
                .query_row(
                    "SELECT topic, name, definition, state, reason, validation_code FROM subscriptions
                     WHERE topic = ?1 AND name = ?2",
                    [&topic, &name],
                    subscription_row,
                )
                .optional()?
                .ok_or(StoreError::NoSubscription(topic, name))?;
            to_record(row)
        })
        .await
    }

    /// A topic's subscriptions, by name.
    pub async fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let topic = topic.to_string();
        self.call(move |conn| {
            let rows = conn
                .prepare(
                    "SELECT topic, name, definition, state, reason, validation_code FROM subscriptions
                     WHERE topic = ?1 ORDER BY name",
                )?
                .query_map([&topic], subscription_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_record).collect()
        })
        .await
    }

    /// Deletes a subscription and its pending deliveries.
    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), StoreError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM subscriptions WHERE topic = ?1 AND name = ?2", [&topic, &name])? == 0 {
                return Err(StoreError::NoSubscription(topic, name));
            }
            tx.execute(
                "DELETE FROM deliveries WHERE topic = ?1 AND subscription = ?2 AND state = 'pending'",
                [&topic, &name],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Stores accepted events and, in the same transaction, a delivery for
    /// every active subscription whose filter matches. Durable when it
    /// returns. Concurrent publishes share one transaction (group commit:
    /// one fsync for many publishers). Returns how many deliveries it
    /// queued.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.publisher
            .run((topic.to_string(), events, now_ms, tx))
            .map_err(|_| StoreError::Interrupted("the events store is closed".into()))?;
        let queued = rx
            .await
            .map_err(|_| StoreError::Interrupted("the events writer stopped".into()))??;
        if queued > 0 {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// Publishes events the router makes itself to `topic` (created with
    /// the Event Grid schema if missing), each at most once: an event whose
    /// id the topic already has is skipped, so a producer that runs twice
    /// (an activity retried after a crash, an outbox relay) publishes once.
    /// An event no active subscription matches is not stored: no one could
    /// ever receive it (as in Event Grid, a subscription gets only events
    /// published after it), and the engine's lifecycle events would
    /// otherwise fill the table for nobody. Returns how many events were
    /// new.
    pub async fn publish_system(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let topic = topic.to_string();
        let (fresh, queued) = self
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "INSERT OR IGNORE INTO topics (name, input_schema, key1, key2) VALUES (?1, 'EventGridSchema', ?2, ?3)",
                    params![topic, new_key(), new_key()],
                )?;
                let subs = active_subscriptions(&tx, &topic)?;
                let mut new = Vec::new();
                for e in events {
                    if !subs.iter().any(|s| s.input.filter.matches(&e.json)) {
                        continue;
                    }
                    let seen = tx
                        .prepare_cached("SELECT 1 FROM events WHERE topic = ?1 AND event_id = ?2")?
                        .query_row(params![topic, e.id], |_| Ok(()))
                        .optional()?
                        .is_some();
                    if !seen {
                        new.push(e);
                    }
                }
                let queued = publish_to(&tx, &topic, &subs, &new, now_ms)?;
                tx.commit()?;
                Ok((new.len(), queued))
            })
            .await?;
        if queued > 0 {
            self.wake.notify_one();
        }
        Ok(fresh)
    }

    /// Pending deliveries due at `now_ms`, oldest first, at most `limit`
    /// (a read: the delivery loop keeps its requests in flight in memory
    /// and skips them).
    pub async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<DueDelivery>, StoreError> {
        self.call(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT d.seq, d.topic, d.subscription, e.body, d.attempts, e.published_ms
                     FROM deliveries d JOIN events e ON e.seq = d.seq
                     WHERE d.state = 'pending' AND d.due_ms <= ?1
                     ORDER BY d.due_ms, d.seq LIMIT ?2",
                )?
                .query_map(params![now_ms, limit as i64], |r| {
                    let body: String = r.get(3)?;
                    Ok(DueDelivery {
                        seq: r.get(0)?,
                        topic: r.get(1)?,
                        subscription: r.get(2)?,
                        event: serde_json::from_str(&body).unwrap_or(Value::Null),
                        attempts: r.get::<_, i64>(4)? as u32,
                        published_ms: r.get(5)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// When the next pending delivery is due, if any.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.call(|conn| {
            Ok(conn.query_row(
                "SELECT min(due_ms) FROM deliveries WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records attempts and what follows each, in one transaction (a
    /// delivery round's worth: one fsync for many deliveries).
    pub async fn record_attempts(&self, attempts: Vec<RecordedAttempt>) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for a in &attempts {
                tx.prepare_cached(
                    "INSERT INTO attempts (seq, topic, subscription, n, at_ms, outcome, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![a.seq, a.topic, a.subscription, a.n, a.at_ms, a.outcome, a.status])?;
                let (state, due, reason) = match &a.next {
                    Next::Delivered => ("delivered", a.at_ms, None),
                    Next::RetryAt(due) => ("pending", *due, None),
                    Next::Dead(reason) => ("dead", a.at_ms, Some(reason.clone())),
                };
                tx.prepare_cached(
                    "UPDATE deliveries SET state = ?4, attempts = ?5, due_ms = ?6, last_outcome = ?7,
                         last_attempt_ms = ?8, reason = ?9
                     WHERE seq = ?1 AND topic = ?2 AND subscription = ?3",
                )?
                .execute(params![a.seq, a.topic, a.subscription, state, a.n, due, a.outcome, a.at_ms, reason])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// A subscription's dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let (topic, subscription) = (topic.to_string(), subscription.to_string());
        self.call(move |conn| {
            Ok(conn
                .prepare(
                    "SELECT d.seq, e.body, d.reason, d.attempts, d.last_outcome, e.published_ms, d.last_attempt_ms
                     FROM deliveries d JOIN events e ON e.seq = d.seq
                     WHERE d.topic = ?1 AND d.subscription = ?2 AND d.state = 'dead' ORDER BY d.seq",
                )?
                .query_map([&topic, &subscription], |r| {
                    let body: String = r.get(1)?;
                    Ok(DeadLetter {
                        sequence: r.get(0)?,
                        event: serde_json::from_str(&body).unwrap_or(Value::Null),
                        dead_letter_reason: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        delivery_attempts: r.get::<_, i64>(3)? as u32,
                        last_delivery_outcome: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        publish_time_ms: r.get(5)?,
                        last_delivery_attempt_time_ms: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Re-drives dead letters (all of the subscription's, or the given
    /// sequence numbers): pending again, due now, attempts from zero.
    /// Returns how many.
    pub async fn redeliver(
        &self,
        topic: &str,
        subscription: &str,
        only: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let (topic, subscription) = (topic.to_string(), subscription.to_string());
        let n = self
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut n = 0;
                let one = |seq: Option<i64>| -> Result<usize, StoreError> {
                    Ok(tx.execute(
                        "UPDATE deliveries SET state = 'pending', attempts = 0, due_ms = ?3, reason = NULL
                         WHERE topic = ?1 AND subscription = ?2 AND state = 'dead' AND (?4 IS NULL OR seq = ?4)",
                        params![topic, subscription, now_ms, seq],
                    )?)
                };
                match only {
                    None => n += one(None)?,
                    Some(seqs) => {
                        for s in seqs {
                            n += one(Some(s))?;
                        }
                    }
                }
                tx.commit()?;
                Ok(n)
            })
            .await?;
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// An event's deliveries on a topic: per subscription, its state and
    /// every attempt.
    pub async fn event_deliveries(
        &self,
        topic: &str,
        event_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let (topic, event_id) = (topic.to_string(), event_id.to_string());
        self.call(move |conn| {
            let mut out = Vec::new();
            let rows: Vec<(i64, String, String, i64, Option<String>)> = conn
                .prepare(
                    "SELECT d.seq, d.subscription, d.state, d.attempts, d.reason FROM deliveries d
                     JOIN events e ON e.seq = d.seq WHERE e.topic = ?1 AND e.event_id = ?2 ORDER BY d.seq, d.subscription",
                )?
                .query_map([&topic, &event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<Result<_, _>>()?;
            for (seq, sub, state, attempts, reason) in rows {
                let tries: Vec<Value> = conn
                    .prepare_cached(
                        "SELECT n, at_ms, outcome, status FROM attempts
                         WHERE topic = ?1 AND seq = ?2 AND subscription = ?3 ORDER BY n",
                    )?
                    .query_map(params![topic, seq, sub], |r| {
                        Ok(serde_json::json!({
                            "attempt": r.get::<_, i64>(0)?, "timeMs": r.get::<_, i64>(1)?,
                            "outcome": r.get::<_, String>(2)?, "status": r.get::<_, Option<i64>>(3)?,
                        }))
                    })?
                    .collect::<Result<_, _>>()?;
                out.push(serde_json::json!({
                    "sequence": seq, "subscription": sub, "state": state, "deliveryAttempts": attempts,
                    "deadLetterReason": reason, "attempts": tries,
                }));
            }
            Ok(out)
        })
        .await
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

impl RouterStore {
    /// Per-topic counts of published, billed, delivered, retried and
    /// dead-lettered events.
    pub async fn counts(&self) -> Result<Vec<TopicCounts>, StoreError> {
        self.call(|conn| {
            let mut by_topic: std::collections::BTreeMap<String, TopicCounts> =
                std::collections::BTreeMap::new();
            let mut add = |sql: &str, set: fn(&mut TopicCounts, u64)| -> Result<(), StoreError> {
                let rows: Vec<(String, i64)> = conn
                    .prepare(sql)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (topic, n) in rows {
                    let key = topic.to_lowercase();
                    let e = by_topic.entry(key).or_insert_with(|| TopicCounts {
                        topic: topic.clone(),
                        ..TopicCounts::default()
                    });
                    set(e, n as u64);
                }
                Ok(())
            };
            add(
                "SELECT topic, count(*) FROM events GROUP BY topic",
                |c, n| c.published = n,
            )?;
            add(
                "SELECT topic, sum((size + 65535) / 65536) FROM events GROUP BY topic",
                |c, n| c.billed_units = n,
            )?;
            add(
                "SELECT topic, count(*) FROM deliveries WHERE state = 'delivered' GROUP BY topic",
                |c, n| c.delivered = n,
            )?;
            add(
                "SELECT topic, count(*) FROM deliveries WHERE state = 'dead' GROUP BY topic",
                |c, n| c.dead_lettered = n,
            )?;
            add(
                "SELECT topic, count(*) FROM attempts WHERE n > 1 GROUP BY topic",
                |c, n| c.retried = n,
            )?;
            Ok(by_topic.into_values().collect())
        })
        .await
    }
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
