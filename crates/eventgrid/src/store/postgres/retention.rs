//! What leaves the router's PostgreSQL tables besides deliveries: events
//! whose deliveries all succeeded (swept once the retention has passed,
//! into the `swept` counts) and held deliveries whose event outlived the
//! subscription's time to live (dead-lettered, `TimeToLiveExceeded`).

use super::pg;
use crate::store::StoreError;

/// Deletes up to `limit` events published before `before_ms` whose
/// deliveries all succeeded, adding them to the swept counts.
pub(super) async fn sweep(
    c: &mut deadpool_postgres::Object,
    before_ms: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let tx = c.transaction().await.map_err(pg)?;
    // Events whose deliveries all succeeded, locked so that two
    // processes sweeping at once count each event once.
    let gone = tx
        .query(
            "SELECT e.seq, e.topic, (e.size + 65535) / 65536 FROM events e
             WHERE e.published_ms < $1 AND NOT EXISTS
               (SELECT 1 FROM deliveries d WHERE d.seq = e.seq AND d.state <> 'delivered')
             ORDER BY e.seq LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&before_ms, &(limit as i64)],
        )
        .await
        .map_err(pg)?;
    let seqs: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
    if seqs.is_empty() {
        return Ok(0);
    }
    let mut totals: std::collections::HashMap<String, [i64; 4]> = Default::default();
    for r in &gone {
        let t = totals.entry(r.get(1)).or_default();
        t[0] += 1;
        t[1] += r.get::<_, i64>(2);
    }
    for (sql, i) in [
        (
            "SELECT e.topic, count(*) FROM deliveries d JOIN events e ON e.seq = d.seq
          WHERE d.seq = ANY($1) GROUP BY e.topic",
            2,
        ),
        (
            "SELECT e.topic, count(*) FROM attempts a JOIN events e ON e.seq = a.seq
          WHERE a.seq = ANY($1) AND a.n > 1 GROUP BY e.topic",
            3,
        ),
    ] {
        for r in tx.query(sql, &[&seqs]).await.map_err(pg)? {
            totals.entry(r.get(0)).or_default()[i] += r.get::<_, i64>(1);
        }
    }
    for sql in [
        "DELETE FROM attempts WHERE seq = ANY($1)",
        "DELETE FROM deliveries WHERE seq = ANY($1)",
        "DELETE FROM events WHERE seq = ANY($1)",
    ] {
        tx.execute(sql, &[&seqs]).await.map_err(pg)?;
    }
    for (topic, [published, billed, delivered, retried]) in totals {
        tx.execute(
            "INSERT INTO swept (topic, published, billed, delivered, retried) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (topic) DO UPDATE SET published = swept.published + excluded.published,
                 billed = swept.billed + excluded.billed, delivered = swept.delivered + excluded.delivered,
                 retried = swept.retried + excluded.retried",
            &[&topic, &published, &billed, &delivered, &retried],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(seqs.len())
}

/// The subscriptions that have held deliveries (read from a partial
/// index: nothing to read when none are held).
pub(super) async fn held_subscriptions(
    c: &deadpool_postgres::Object,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = c
        .query(
            "SELECT DISTINCT topic, subscription FROM deliveries WHERE state = 'held'",
            &[],
        )
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Dead-letters (`keep`) or drops the subscription's held deliveries of
/// events published before `cutoff_ms`, except those a process has leased
/// (an attempt in flight: its record decides). Returns how many.
pub(super) async fn expire_held(
    c: &deadpool_postgres::Object,
    topic: &str,
    subscription: &str,
    cutoff_ms: i64,
    now_ms: i64,
    keep: bool,
) -> Result<usize, StoreError> {
    const EXPIRED: &str = "e.seq = d.seq AND d.state = 'held' AND d.topic = $1 AND d.subscription = $2
         AND COALESCE(d.live_since_ms, e.published_ms) < $3 AND (d.lease_until IS NULL OR d.lease_until <= $4)";
    let sql = if keep {
        format!(
            "UPDATE deliveries d SET state = 'dead', reason = 'TimeToLiveExceeded', due_ms = $4
             FROM events e WHERE {EXPIRED}"
        )
    } else {
        format!("DELETE FROM deliveries d USING events e WHERE {EXPIRED}")
    };
    let n = c
        .execute(&sql, &[&topic, &subscription, &cutoff_ms, &now_ms])
        .await
        .map_err(pg)?;
    Ok(n as usize)
}
