//! The SQLite router's one writer: what publishes and delivery records do
//! inside the group-commit transaction the writer thread runs (see the
//! parent module).

use std::collections::hash_map::{Entry, HashMap};

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::{next_state, subscription_row, to_record, DROPPED};
use crate::event::Event;
use crate::store::{RecordedAttempt, StoreError, SubscriptionRecord};

/// One write for the writer thread, answered once its transaction commits.
pub(super) enum Write {
    /// Events to store with their deliveries; answers how many deliveries
    /// it queued.
    Publish {
        topic: String,
        events: Vec<Event>,
        now_ms: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Finished delivery attempts and what follows each.
    Record {
        attempts: Vec<RecordedAttempt>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Applies a group of writes in one transaction and answers each. Should
/// the group fail, each write is tried again in a transaction of its own,
/// so one bad write is answered with its error alone and the others are
/// stored (the common path pays nothing for it: no savepoint per write).
/// A failed commit is `NotStored` (nothing of that transaction was kept).
/// A topic's active subscriptions are read once per transaction.
pub(super) fn write_group(conn: &mut Connection, ops: Vec<Write>) {
    let outcomes = match apply_all(conn, &ops) {
        Ok(counts) => counts.into_iter().map(Ok).collect(),
        Err(e) if ops.len() == 1 => vec![Err(e)],
        Err(_) => ops
            .iter()
            .map(|op| apply_all(conn, std::slice::from_ref(op)).map(|counts| counts[0]))
            .collect(),
    };
    for (op, outcome) in ops.into_iter().zip(outcomes) {
        match op {
            Write::Publish { reply, .. } => drop(reply.send(outcome)),
            Write::Record { reply, .. } => drop(reply.send(outcome.map(|_| ()))),
        }
    }
}

/// Applies `ops` in one transaction: each one's count, or the first error
/// (and nothing stored).
fn apply_all(conn: &mut Connection, ops: &[Write]) -> Result<Vec<usize>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut listening: HashMap<String, Vec<SubscriptionRecord>> = HashMap::new();
    let counts = ops
        .iter()
        .map(|op| apply(&tx, &mut listening, op))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit()
        .map_err(|e| StoreError::NotStored(e.to_string()))?;
    Ok(counts)
}

/// Applies one write; for a publish, how many deliveries it queued.
fn apply(
    tx: &Connection,
    listening: &mut HashMap<String, Vec<SubscriptionRecord>>,
    op: &Write,
) -> Result<usize, StoreError> {
    match op {
        Write::Publish {
            topic,
            events,
            now_ms,
            ..
        } => {
            let subs = match listening.entry(topic.to_lowercase()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(active_subscriptions(tx, topic)?),
            };
            publish_to(tx, topic, subs, events, *now_ms)
        }
        Write::Record { attempts, .. } => {
            record_in(tx, attempts)?;
            Ok(attempts.len())
        }
    }
}

/// Records attempts and what follows each.
fn record_in(tx: &Connection, attempts: &[RecordedAttempt]) -> Result<(), StoreError> {
    for a in attempts {
        tx.prepare_cached(
            "INSERT INTO attempts (seq, topic, subscription, n, at_ms, outcome, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            a.seq,
            a.topic,
            a.subscription,
            a.n,
            a.at_ms,
            a.outcome,
            a.status
        ])?;
        let (state, due, reason) = next_state(a);
        tx.prepare_cached(
            "UPDATE deliveries SET state = CASE WHEN state = 'held' AND ?4 = 'pending' THEN 'held' ELSE ?4 END,
                 attempts = ?5, due_ms = ?6, last_outcome = ?7,
                 last_attempt_ms = ?8, reason = ?9
             WHERE seq = ?1 AND topic = ?2 AND subscription = ?3",
        )?
        .execute(params![
            a.seq,
            a.topic,
            a.subscription,
            state,
            a.n,
            due,
            a.outcome,
            a.at_ms,
            reason
        ])?;
        if state == DROPPED {
            tx.prepare_cached(
                "DELETE FROM deliveries WHERE seq = ?1 AND topic = ?2 AND subscription = ?3",
            )?
            .execute(params![a.seq, a.topic, a.subscription])?;
        }
    }
    Ok(())
}

/// The topic's active subscriptions.
pub(super) fn active_subscriptions(
    tx: &Connection,
    topic: &str,
) -> Result<Vec<SubscriptionRecord>, StoreError> {
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

/// Stores `events` with one pending delivery per matching subscription of
/// `subs`. Returns how many deliveries it queued.
pub(super) fn publish_to(
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
