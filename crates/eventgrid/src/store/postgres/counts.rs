//! The metrics' counts per topic: what the tables hold now (events,
//! delivered and dead-lettered deliveries, retried attempts) plus what
//! retention swept away, read in one snapshot.

use durable::store::postgres::read_snapshot;

use super::pg;
use crate::store::{StoreError, TopicCounts};

/// A query of (topic, n) rows and what each n adds to.
type Count = (&'static str, fn(&mut TopicCounts, u64));

pub(super) async fn counts(
    client: &mut deadpool_postgres::Object,
) -> Result<Vec<TopicCounts>, StoreError> {
    let c = read_snapshot(client).await.map_err(pg)?;
    let row = |t: String| TopicCounts {
        topic: t,
        ..TopicCounts::default()
    };
    let mut by_topic: std::collections::BTreeMap<String, TopicCounts> =
        std::collections::BTreeMap::new();
    let queries: [Count; 9] = [
        (
            "SELECT min(topic), count(*) FROM events GROUP BY lower(topic)",
            |c, n| c.published += n,
        ),
        (
            "SELECT min(topic), sum((size + 65535) / 65536)::int8 FROM events GROUP BY lower(topic)",
            |c, n| c.billed_units += n,
        ),
        (
            "SELECT min(topic), count(*) FROM deliveries WHERE state = 'delivered' GROUP BY lower(topic)",
            |c, n| c.delivered += n,
        ),
        (
            "SELECT min(topic), count(*) FROM deliveries WHERE state = 'dead' GROUP BY lower(topic)",
            |c, n| c.dead_lettered += n,
        ),
        (
            "SELECT min(topic), count(*) FROM attempts WHERE n > 1 GROUP BY lower(topic)",
            |c, n| c.retried += n,
        ),
        // What retention swept away still counts.
        ("SELECT topic, published FROM swept", |c, n| c.published += n),
        ("SELECT topic, billed FROM swept", |c, n| c.billed_units += n),
        ("SELECT topic, delivered FROM swept", |c, n| c.delivered += n),
        ("SELECT topic, retried FROM swept", |c, n| c.retried += n),
    ];
    for (sql, set) in queries {
        for r in c.query(sql, &[]).await.map_err(pg)? {
            let topic: String = r.get(0);
            let n: i64 = r.get(1);
            let e = by_topic
                .entry(topic.to_lowercase())
                .or_insert_with(|| row(topic.clone()));
            set(e, n as u64);
        }
    }
    Ok(by_topic.into_values().collect())
}
