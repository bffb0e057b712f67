//! The router's store in one SQLite file (`events.db` in galaxy-cloud's
//! data directory). Publishes and delivery records go through one
//! [`GroupCommit`] writer, so concurrent publishers and the delivery loop's
//! records share transactions and fsyncs and never wait on each other's
//! write lock; reads and the rare management writes are serialized on a
//! second connection on the blocking pool.
//! One process owns the file, so `due` is a plain read: the delivery loop
//! keeps what it has in flight in memory.

use durable::store::page::PageBuilder;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use durable::store::group_commit::GroupCommit;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    attempt_json, delivery_json, delivery_key, held_transition, next_state, parse_schema,
    record_of, schema_name, Backend, DeadLetter, DueDelivery, InFlight, Provisioning,
    RecordedAttempt, StoreError, SubscriptionRecord, TopicCounts, TopicRecord, DROPPED,
};
use crate::event::{Event, Schema};

mod retention;
#[cfg(test)]
mod tests;
mod writer;

/// What [`subscription_row`] reads, in its order.
const SUBSCRIPTION_COLUMNS: &str = "topic, name, definition, state, reason, validation_code";

use crate::model::SubscriptionInput;
use crate::sas::new_key;
use writer::{active_subscriptions, publish_to, write_group, Write};

/// The SQLite backend.
pub(super) struct SqliteRouter {
    /// Reads and the rare management writes.
    conn: Arc<Mutex<Connection>>,
    /// Publishes and delivery records: one writer, so the delivery loop's
    /// records and the publishers never wait on each other's write lock
    /// (SQLite's busy handler sleeps), and share fsyncs under load.
    writer: Arc<GroupCommit<Write>>,
}

/// Holds or releases a subscription's undelivered events as it enters
/// `state` (see [`held_transition`]).
fn hold_or_release(
    tx: &Connection,
    topic: &str,
    name: &str,
    state: Provisioning,
) -> Result<(), StoreError> {
    let (from, to) = held_transition(state);
    tx.execute(
        "UPDATE deliveries SET state = ?4 WHERE topic = ?1 AND subscription = ?2 AND state = ?3",
        params![topic, name, from, to],
    )?;
    Ok(())
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
    record_of(topic, name, &json, &state, reason, code)
}

impl SqliteRouter {
    /// Opens (creating) the store at `path`.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
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
                 live_since_ms INTEGER,
                 PRIMARY KEY (seq, topic, subscription)
             );
             DROP INDEX IF EXISTS deliveries_due;
             CREATE INDEX IF NOT EXISTS deliveries_by_due ON deliveries (state, due_ms, seq);
             CREATE TABLE IF NOT EXISTS attempts (
                 seq INTEGER NOT NULL,
                 topic TEXT NOT NULL COLLATE NOCASE,
                 subscription TEXT NOT NULL COLLATE NOCASE,
                 n INTEGER NOT NULL,
                 at_ms INTEGER NOT NULL,
                 outcome TEXT NOT NULL,
                 status INTEGER
             );
             CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (topic, seq);
             CREATE TABLE IF NOT EXISTS swept (
                 topic TEXT PRIMARY KEY COLLATE NOCASE,
                 published INTEGER NOT NULL,
                 billed INTEGER NOT NULL,
                 delivered INTEGER NOT NULL,
                 retried INTEGER NOT NULL
             );",
        )?;
        // A database from before re-drive restarted the time to live.
        let has_live_since: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('deliveries') WHERE name = 'live_since_ms'",
            [],
            |r| r.get(0),
        )?;
        if !has_live_since {
            conn.execute_batch("ALTER TABLE deliveries ADD COLUMN live_since_ms INTEGER")?;
        }
        let writer = Connection::open(path)?;
        writer.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")?;
        let writer = GroupCommit::start("events-writer", writer, 256, write_group)
            .map_err(|e| StoreError::Interrupted(format!("starting the events writer: {e}")))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            writer: Arc::new(writer),
        })
    }

    /// Queues a write for the writer thread.
    fn write(&self, op: Write) -> Result<(), StoreError> {
        self.writer
            .submit(op)
            .map_err(|_| StoreError::Interrupted("the events store is closed".into()))
    }

    /// Runs several reads in one snapshot (a deferred transaction): the
    /// writer commits on another connection meanwhile.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
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
}

#[async_trait]
impl Backend for SqliteRouter {
    fn health(&self) -> Result<(), String> {
        self.writer.alive()
    }

    async fn put_topic(&self, name: &str, schema: Schema) -> Result<TopicRecord, StoreError> {
        let name = name.to_string();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO topics (name, input_schema, key1, key2) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
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
    async fn topic(&self, name: &str) -> Result<TopicRecord, StoreError> {
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
    async fn topics(&self) -> Result<Vec<TopicRecord>, StoreError> {
        self.call(|conn| {
            Ok(conn
                .prepare("SELECT name, input_schema, key1, key2 FROM topics ORDER BY name")?
                .query_map([], topic_row)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Deletes a topic with its subscriptions and pending deliveries.
    async fn delete_topic(&self, name: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let name = name.to_string();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM topics WHERE name = ?1", [&name])? == 0 {
                return Err(StoreError::NoTopic(name));
            }
            let gone = tx
                .prepare(&format!(
                    "DELETE FROM subscriptions WHERE topic = ?1 RETURNING {SUBSCRIPTION_COLUMNS}"
                ))?
                .query_map([&name], subscription_row)?
                .collect::<Result<Vec<_>, _>>()?;
            tx.execute(
                "DELETE FROM deliveries WHERE topic = ?1 AND state IN ('pending', 'held', 'dead')",
                [&name],
            )?;
            tx.commit()?;
            gone.into_iter().map(to_record).collect()
        })
        .await
    }

    /// Replaces `key1` or `key2` with a new key.
    async fn regenerate_key(
        &self,
        topic: &str,
        column: &'static str,
    ) -> Result<TopicRecord, StoreError> {
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
    async fn put_subscription(
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
            hold_or_release(&tx, &topic, &name, state)?;
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
    async fn set_provisioning(
        &self,
        topic: &str,
        name: &str,
        validation_code: &str,
        state: Provisioning,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let (topic, name, code) = (
            topic.to_string(),
            name.to_string(),
            validation_code.to_string(),
        );
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE subscriptions SET state = ?3, reason = ?4
                 WHERE topic = ?1 AND name = ?2 AND validation_code = ?5 AND state = ?6",
                params![
                    topic,
                    name,
                    state.as_str(),
                    reason,
                    code,
                    Provisioning::AwaitingManualAction.as_str()
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            hold_or_release(&tx, &topic, &name, state)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// One subscription.
    async fn subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.call(move |conn| {
            let row = conn
                .query_row(
                    &format!(
                        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE topic = ?1 AND name = ?2"
                    ),
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
    async fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let topic = topic.to_string();
        self.call(move |conn| {
            let rows = conn
                .prepare(
                    &format!(
                        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE topic = ?1 ORDER BY name"
                    ),
                )?
                .query_map([&topic], subscription_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_record).collect()
        })
        .await
    }

    /// Deletes a subscription and its pending deliveries.
    async fn delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(gone) = tx
                .query_row(
                    &format!(
                        "DELETE FROM subscriptions WHERE topic = ?1 AND name = ?2
                         RETURNING {SUBSCRIPTION_COLUMNS}"
                    ),
                    [&topic, &name],
                    subscription_row,
                )
                .optional()?
            else {
                return Err(StoreError::NoSubscription(topic, name));
            };
            tx.execute(
                "DELETE FROM deliveries WHERE topic = ?1 AND subscription = ?2 AND state IN ('pending', 'held', 'dead')",
                [&topic, &name],
            )?;
            tx.commit()?;
            to_record(gone)
        })
        .await
    }

    /// Stores accepted events and, in the same transaction, a delivery for
    /// every active subscription whose filter matches. Durable when it
    /// returns. Concurrent publishes share one transaction (group commit:
    /// one fsync for many publishers). Returns how many deliveries it
    /// queued.
    async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.write(Write::Publish {
            topic: topic.to_string(),
            events,
            now_ms,
            reply,
        })?;
        answer
            .await
            .map_err(|_| StoreError::Interrupted("the events writer stopped".into()))?
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
    async fn publish_system(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<(usize, usize), StoreError> {
        let topic = topic.to_string();
        self.call(move |conn| {
            // Mostly nobody listens: a read, no write transaction.
            let listening = active_subscriptions(conn, &topic)?;
            if !events
                .iter()
                .any(|e| listening.iter().any(|s| s.input.filter.matches(&e.json)))
            {
                return Ok((0, 0));
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        .await
    }

    /// Pending deliveries due at `now_ms`, oldest first, at most `limit`
    /// of those not `in_flight` (a read: one process owns the file). The
    /// keys are read from the due index; an event's body only for a
    /// delivery not in flight, so the requests in flight, which come first,
    /// cost an index entry each, not a parse.
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
        in_flight: InFlight,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.call(move |conn| {
            // Copied before the read's snapshot begins: a key leaves the
            // set only after its record commits, so one missing from the
            // copy shows its recorded state in the snapshot, never a
            // stale "pending" (which would send it again).
            let in_flight = in_flight.lock().expect("in-flight lock").clone();
            let mut keys = conn.prepare_cached(
                "SELECT seq, topic, subscription, attempts, live_since_ms FROM deliveries
                 WHERE state = 'pending' AND due_ms <= ?1 ORDER BY due_ms, seq",
            )?;
            let mut event =
                conn.prepare_cached("SELECT body, published_ms FROM events WHERE seq = ?1")?;
            let mut rows = keys.query([now_ms])?;
            let mut due = Vec::new();
            while due.len() < limit {
                let Some(r) = rows.next()? else { break };
                let (seq, topic, subscription): (i64, String, String) =
                    (r.get(0)?, r.get(1)?, r.get(2)?);
                let key = delivery_key(seq, &topic, &subscription);
                if in_flight.contains(&key) {
                    continue;
                }
                let Some((body, published_ms)) = event
                    .query_row([seq], |e| Ok((e.get::<_, String>(0)?, e.get(1)?)))
                    .optional()?
                else {
                    continue;
                };
                due.push(DueDelivery {
                    seq,
                    topic,
                    subscription,
                    event: serde_json::from_str(&body).unwrap_or(Value::Null),
                    attempts: r.get::<_, i64>(3)? as u32,
                    live_since_ms: r.get::<_, Option<i64>>(4)?.unwrap_or(published_ms),
                });
            }
            Ok(due)
        })
        .await
    }

    /// When the next pending delivery is due, if any.
    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.call(|conn| {
            Ok(conn.query_row(
                "SELECT min(due_ms) FROM deliveries WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records attempts and what follows each, in the writer's next
    /// transaction (a delivery round's worth or more: one fsync for many
    /// deliveries).
    async fn record_attempts(&self, attempts: Vec<RecordedAttempt>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.write(Write::Record { attempts, reply })?;
        answer
            .await
            .map_err(|_| StoreError::Interrupted("the events writer stopped".into()))?
    }

    /// A subscription's dead letters, oldest first.
    async fn dead_letters(
        &self,
        topic: &str,
        subscription: &str,
        after: i64,
        mut page: PageBuilder<DeadLetter>,
    ) -> Result<PageBuilder<DeadLetter>, StoreError> {
        let (topic, subscription) = (topic.to_string(), subscription.to_string());
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT d.seq, e.body, d.reason, d.attempts, d.last_outcome, e.published_ms, d.last_attempt_ms
                 FROM deliveries d JOIN events e ON e.seq = d.seq
                 WHERE d.topic = ?1 AND d.subscription = ?2 AND d.state = 'dead' AND d.seq > ?3
                 ORDER BY d.seq",
            )?;
            let mut rows = stmt.query(rusqlite::params![topic, subscription, after])?;
            // Rows are read one at a time: a full page reads no more.
            while let Some(r) = rows.next()? {
                let body: String = r.get(1)?;
                let letter = DeadLetter {
                    sequence: r.get(0)?,
                    event: serde_json::from_str(&body).unwrap_or(Value::Null),
                    dead_letter_reason: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    delivery_attempts: r.get::<_, i64>(3)? as u32,
                    last_delivery_outcome: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    publish_time_ms: r.get(5)?,
                    last_delivery_attempt_time_ms: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                };
                if !page.push(letter, body.len()) {
                    break;
                }
            }
            Ok(page)
        })
        .await
    }

    /// Re-drives dead letters (all of the subscription's, or the given
    /// sequence numbers): pending again, due now, attempts from zero, the
    /// time to live from now.
    /// Returns how many.
    async fn redeliver(
        &self,
        topic: &str,
        subscription: &str,
        only: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let (topic, subscription) = (topic.to_string(), subscription.to_string());
        self.call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut n = 0;
                let one = |seq: Option<i64>| -> Result<usize, StoreError> {
                    Ok(tx.execute(
                        "UPDATE deliveries SET state = CASE WHEN (SELECT state FROM subscriptions
                                 WHERE topic = ?1 AND name = ?2) = 'Succeeded' THEN 'pending' ELSE 'held' END,
                             attempts = 0, due_ms = ?3, reason = NULL, live_since_ms = ?3
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
            .await
    }

    /// An event's deliveries on a topic: per subscription, its state and
    /// every attempt.
    async fn event_deliveries(
        &self,
        topic: &str,
        event_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let (topic, event_id) = (topic.to_string(), event_id.to_string());
        self.read(move |conn| {
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
                        Ok(attempt_json(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<Result<_, _>>()?;
                out.push(delivery_json(seq, &sub, &state, attempts, reason, tries));
            }
            Ok(out)
        })
        .await
    }

    /// Per-topic counts of published, billed, delivered, retried and
    /// dead-lettered events.
    async fn counts(&self) -> Result<Vec<TopicCounts>, StoreError> {
        self.read(|conn| {
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
                |c, n| c.published += n,
            )?;
            add(
                "SELECT topic, sum((size + 65535) / 65536) FROM events GROUP BY topic",
                |c, n| c.billed_units += n,
            )?;
            add(
                "SELECT topic, count(*) FROM deliveries WHERE state = 'delivered' GROUP BY topic",
                |c, n| c.delivered += n,
            )?;
            add(
                "SELECT topic, count(*) FROM deliveries WHERE state = 'dead' GROUP BY topic",
                |c, n| c.dead_lettered += n,
            )?;
            add(
                "SELECT topic, count(*) FROM attempts WHERE n > 1 GROUP BY topic",
                |c, n| c.retried += n,
            )?;
            // What retention swept away still counts.
            add("SELECT topic, published FROM swept", |c, n| {
                c.published += n
            })?;
            add("SELECT topic, billed FROM swept", |c, n| {
                c.billed_units += n
            })?;
            add("SELECT topic, delivered FROM swept", |c, n| {
                c.delivered += n
            })?;
            add("SELECT topic, retried FROM swept", |c, n| c.retried += n)?;
            Ok(by_topic.into_values().collect())
        })
        .await
    }

    async fn sweep(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        self.call(move |conn| retention::sweep(conn, before_ms, limit))
            .await
    }

    async fn held_subscriptions(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.call(|conn| retention::held_subscriptions(conn)).await
    }

    /// The in-flight set is copied before the transaction begins, as in
    /// `due`: a delivery missing from the copy has its record committed.
    async fn expire_held(
        &self,
        topic: &str,
        subscription: &str,
        cutoff_ms: i64,
        now_ms: i64,
        keep: bool,
        in_flight: InFlight,
    ) -> Result<usize, StoreError> {
        let (topic, subscription) = (topic.to_string(), subscription.to_string());
        self.call(move |conn| {
            let in_flight = in_flight.lock().expect("in-flight lock").clone();
            let expiry = retention::Expiry {
                cutoff_ms,
                now_ms,
                keep,
            };
            retention::expire_held(conn, &topic, &subscription, expiry, &in_flight)
        })
        .await
    }
}
