//! What leaves the router's SQLite file besides deliveries: events whose
//! deliveries all succeeded (swept once the retention has passed, into
//! the `swept` counts) and held deliveries whose event outlived the
//! subscription's time to live (dead-lettered, `TimeToLiveExceeded`).
//! Both are rare management writes on the reads' connection.

use std::collections::HashSet;

use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::{delivery_key, DeliveryKey, StoreError};

/// Deletes up to `limit` events published before `before_ms` whose
/// deliveries all succeeded, adding them to the swept counts.
pub(super) fn sweep(
    conn: &mut Connection,
    before_ms: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let gone: Vec<(i64, String, i64)> = tx
        .prepare_cached(
            "SELECT e.seq, e.topic, (e.size + 65535) / 65536 FROM events e
                     WHERE e.published_ms < ?1 AND NOT EXISTS
                       (SELECT 1 FROM deliveries d WHERE d.seq = e.seq AND d.state <> 'delivered')
                     ORDER BY e.seq LIMIT ?2",
        )?
        .query_map(params![before_ms, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut totals: std::collections::HashMap<String, [i64; 4]> = Default::default();
    for (seq, topic, billed) in &gone {
        let delivered: i64 = tx
            .prepare_cached("SELECT count(*) FROM deliveries WHERE seq = ?1")?
            .query_row([seq], |r| r.get(0))?;
        let retried: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM attempts WHERE topic = ?1 AND seq = ?2 AND n > 1",
            )?
            .query_row(params![topic, seq], |r| r.get(0))?;
        let t = totals.entry(topic.clone()).or_default();
        t[0] += 1;
        t[1] += billed;
        t[2] += delivered;
        t[3] += retried;
        tx.prepare_cached("DELETE FROM attempts WHERE topic = ?1 AND seq = ?2")?
            .execute(params![topic, seq])?;
        tx.prepare_cached("DELETE FROM deliveries WHERE seq = ?1")?
            .execute([seq])?;
        tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?
            .execute([seq])?;
    }
    for (topic, [published, billed, delivered, retried]) in totals {
        tx.prepare_cached(
                    "INSERT INTO swept (topic, published, billed, delivered, retried) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (topic) DO UPDATE SET published = published + excluded.published,
                         billed = billed + excluded.billed, delivered = delivered + excluded.delivered,
                         retried = retried + excluded.retried",
                )?
                .execute(params![topic, published, billed, delivered, retried])?;
    }
    tx.commit()?;
    Ok(gone.len())
}

/// The subscriptions that have held deliveries (the due index starts with
/// the state: nothing to read when none are held).
pub(super) fn held_subscriptions(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT DISTINCT topic, subscription FROM deliveries WHERE state = 'held'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Which held deliveries expire, and what becomes of them.
pub(super) struct Expiry {
    /// Those of events published (or re-driven) before this.
    pub cutoff_ms: i64,
    pub now_ms: i64,
    /// Dead-lettered (the subscription has a dead-letter destination),
    /// else dropped.
    pub keep: bool,
}

/// Dead-letters or drops the subscription's expired held deliveries,
/// except those `in_flight` (an attempt's record decides those). Returns
/// how many.
pub(super) fn expire_held(
    conn: &mut Connection,
    topic: &str,
    subscription: &str,
    Expiry {
        cutoff_ms,
        now_ms,
        keep,
    }: Expiry,
    in_flight: &HashSet<DeliveryKey>,
) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let seqs: Vec<i64> = tx
        .prepare_cached(
            "SELECT d.seq FROM deliveries d JOIN events e ON e.seq = d.seq
             WHERE d.state = 'held' AND d.topic = ?1 AND d.subscription = ?2
               AND COALESCE(d.live_since_ms, e.published_ms) < ?3",
        )?
        .query_map(params![topic, subscription, cutoff_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut expired = 0;
    for seq in seqs {
        if in_flight.contains(&delivery_key(seq, topic, subscription)) {
            continue;
        }
        expired += if keep {
            tx.prepare_cached(
                "UPDATE deliveries SET state = 'dead', reason = 'TimeToLiveExceeded', due_ms = ?4
                 WHERE seq = ?1 AND topic = ?2 AND subscription = ?3 AND state = 'held'",
            )?
            .execute(params![seq, topic, subscription, now_ms])?
        } else {
            tx.prepare_cached(
                "DELETE FROM deliveries WHERE seq = ?1 AND topic = ?2 AND subscription = ?3 AND state = 'held'",
            )?
            .execute(params![seq, topic, subscription])?
        };
    }
    tx.commit()?;
    Ok(expired)
}
