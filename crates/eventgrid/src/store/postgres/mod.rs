//! The router's store in PostgreSQL (tables in their own schema), shared
//! by several galaxy-cloud processes.
//!
//! What differs from SQLite:
//! - `due` claims: it stamps the rows it returns with this process's id and
//!   a lease (see [`super::lease_for`]) under `FOR UPDATE SKIP LOCKED`, so two
//!   processes never take the same delivery; recording the attempt
//!   releases it. A process that dies leaves its leases to run out, and
//!   then another process delivers (at least once, as promised).
//! - `next_due_ms` counts leases that will run out, and is at most
//!   [`SHARED_RECHECK`] away: a publish wakes only the process that took
//!   it, so the others look at the shared table now and then for work a
//!   dead process left.
//! - Names are compared case-insensitively with `lower()` (SQLite's
//!   `COLLATE NOCASE`), under unique indexes on `lower(name)`.
//! - `publish_system` takes a transaction-scoped advisory lock on the
//!   topic, so two processes relaying the same outbox row store it once.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use durable::store::page::PageBuilder;
use serde_json::Value;

use super::{
    attempt_json, delivery_json, held_transition, next_state, parse_schema, record_of, schema_name,
    Backend, DeadLetter, DueDelivery, InFlight, Provisioning, RecordedAttempt, StoreError,
    SubscriptionRecord, TopicCounts, TopicRecord, DROPPED,
};
use crate::event::{Event, Schema};
use crate::model::SubscriptionInput;
use crate::sas::new_key;
use durable::store::postgres::read_snapshot;

mod counts;
mod retention;
mod schema;

/// Longest a delivery loop sleeps without looking at the shared table.
pub const SHARED_RECHECK_MS: i64 = 5_000;

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    })
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        e => StoreError::Postgres(format!("connection pool: {e}")),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const TOPIC_COLUMNS: &str = "name, input_schema, key1, key2";
const SUBSCRIPTION_COLUMNS: &str = "topic, name, definition, state, reason, validation_code";

fn topic_row(r: &tokio_postgres::Row) -> TopicRecord {
    TopicRecord {
        name: r.get(0),
        input_schema: parse_schema(r.get(1)),
        key1: r.get(2),
        key2: r.get(3),
    }
}

fn subscription_row(r: &tokio_postgres::Row) -> Result<SubscriptionRecord, StoreError> {
    record_of(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

/// The PostgreSQL backend: a connection pool and this process's id (what
/// its leases carry).
pub(super) struct PgRouter {
    pool: Pool,
    owner: i64,
    lease_ms: i64,
}

impl PgRouter {
    /// Connects and creates the tables in `schema` if missing (under an
    /// advisory lock, so processes starting together do not race).
    pub(super) async fn connect(
        url: &str,
        schema: &str,
        lease: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let (pool, _) =
            durable::store::postgres::schema_pool(url, schema, 8).map_err(|e| match e {
                durable::store::postgres::SchemaPoolError::Schema(_) => {
                    StoreError::Invalid(e.to_string())
                }
                e => StoreError::Postgres(e.to_string()),
            })?;
        let mut client = pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('galaxy-forge eventgrid ' || $1::text))",
            &[&schema],
        )
        .await
        .map_err(pg)?;
        durable::store::postgres::apply_ddl_once(&tx, schema, "eventgrid", &schema::ddl(schema))
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Self {
            pool,
            owner: rand::random::<i64>() & i64::MAX,
            lease_ms: lease.as_millis() as i64,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Stores `events` in `tx` with a delivery per matching active
    /// subscription of `subs`. Returns how many deliveries it queued.
    async fn store_events(
        tx: &deadpool_postgres::Transaction<'_>,
        topic: &str,
        subs: &[SubscriptionRecord],
        events: &[Event],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let insert_event = tx
            .prepare_cached(
                "INSERT INTO events (topic, event_id, body, size, published_ms) VALUES ($1, $2, $3, $4, $5)
                 RETURNING seq",
            )
            .await
            .map_err(pg)?;
        let insert_delivery = tx
            .prepare_cached(
                "INSERT INTO deliveries (seq, topic, subscription, state, attempts, due_ms)
                 VALUES ($1, $2, $3, 'pending', 0, $4)",
            )
            .await
            .map_err(pg)?;
        let mut queued = 0;
        for e in events {
            let seq: i64 = tx
                .query_one(
                    &insert_event,
                    &[
                        &topic,
                        &e.id,
                        &e.json.to_string(),
                        &(e.size as i64),
                        &now_ms,
                    ],
                )
                .await
                .map_err(pg)?
                .get(0);
            for s in subs.iter().filter(|s| s.input.filter.matches(&e.json)) {
                tx.execute(&insert_delivery, &[&seq, &topic, &s.name, &now_ms])
                    .await
                    .map_err(pg)?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    async fn active_subscriptions(
        tx: &deadpool_postgres::Transaction<'_>,
        topic: &str,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let rows = tx
            .query(
                &format!(
                    "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions
                     WHERE lower(topic) = lower($1) AND state = 'Succeeded'"
                ),
                &[&topic],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(subscription_row).collect()
    }

    async fn topic_in(
        c: &impl deadpool_postgres::GenericClient,
        name: &str,
    ) -> Result<Option<TopicRecord>, StoreError> {
        Ok(c.query_opt(
            &format!("SELECT {TOPIC_COLUMNS} FROM topics WHERE lower(name) = lower($1)"),
            &[&name],
        )
        .await
        .map_err(pg)?
        .map(|r| topic_row(&r)))
    }
}

#[async_trait]
impl Backend for PgRouter {
    async fn put_topic(&self, name: &str, schema: Schema) -> Result<TopicRecord, StoreError> {
        let c = self.client().await?;
        let (schema, key1, key2) = (schema_name(schema), new_key(), new_key());
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&name, &schema, &key1, &key2];
        let upsert = || {
            c.execute(
                "INSERT INTO topics (name, input_schema, key1, key2) VALUES ($1, $2, $3, $4)
                 ON CONFLICT ((lower(name))) DO NOTHING",
                &args,
            )
        };
        // ON CONFLICT arbitrates on lower(name) only: two processes creating
        // the same topic at once (every galaxy-cloud creates the system
        // topic at start) can still collide on the primary key. The loser
        // tries again and then finds the winner's row.
        if let Err(e) = upsert().await {
            if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                return Err(pg(e));
            }
            upsert().await.map_err(pg)?;
        }
        Self::topic_in(&c, name)
            .await?
            .ok_or_else(|| StoreError::NoTopic(name.to_string()))
    }

    async fn topic(&self, name: &str) -> Result<TopicRecord, StoreError> {
        let c = self.client().await?;
        Self::topic_in(&c, name)
            .await?
            .ok_or_else(|| StoreError::NoTopic(name.to_string()))
    }

    async fn topics(&self) -> Result<Vec<TopicRecord>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {TOPIC_COLUMNS} FROM topics ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(topic_row).collect())
    }

    async fn delete_topic(&self, name: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        if tx
            .execute("DELETE FROM topics WHERE lower(name) = lower($1)", &[&name])
            .await
            .map_err(pg)?
            == 0
        {
            return Err(StoreError::NoTopic(name.to_string()));
        }
        let gone = tx
            .query(
                &format!(
                    "DELETE FROM subscriptions WHERE lower(topic) = lower($1)
                     RETURNING {SUBSCRIPTION_COLUMNS}"
                ),
                &[&name],
            )
            .await
            .map_err(pg)?;
        tx.execute(
            "DELETE FROM deliveries WHERE lower(topic) = lower($1) AND state IN ('pending', 'held', 'dead')",
            &[&name],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        gone.iter().map(subscription_row).collect()
    }

    async fn regenerate_key(
        &self,
        topic: &str,
        column: &'static str,
    ) -> Result<TopicRecord, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                &format!("UPDATE topics SET {column} = $2 WHERE lower(name) = lower($1)"),
                &[&topic, &new_key()],
            )
            .await
            .map_err(pg)?;
        if n == 0 {
            return Err(StoreError::NoTopic(topic.to_string()));
        }
        Self::topic_in(&c, topic)
            .await?
            .ok_or_else(|| StoreError::NoTopic(topic.to_string()))
    }

    async fn put_subscription(
        &self,
        topic: &str,
        name: &str,
        input: SubscriptionInput,
        state: Provisioning,
        validation_code: String,
    ) -> Result<SubscriptionRecord, StoreError> {
        let json = serde_json::to_string(&input).expect("a subscription serializes");
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        if Self::topic_in(&tx, topic).await?.is_none() {
            return Err(StoreError::NoTopic(topic.to_string()));
        }
        tx.execute(
            "INSERT INTO subscriptions (topic, name, definition, state, reason, validation_code)
             VALUES ($1, $2, $3, $4, NULL, $5)
             ON CONFLICT ((lower(topic)), (lower(name))) DO UPDATE SET definition = excluded.definition,
                 state = excluded.state, reason = NULL, validation_code = excluded.validation_code",
            &[&topic, &name, &json, &state.as_str(), &validation_code],
        )
        .await
        .map_err(pg)?;
        hold_or_release(&tx, topic, name, state).await?;
        tx.commit().await.map_err(pg)?;
        Ok(SubscriptionRecord {
            topic: topic.to_string(),
            name: name.to_string(),
            input,
            provisioning: state,
            reason: None,
            validation_code,
        })
    }

    async fn set_provisioning(
        &self,
        topic: &str,
        name: &str,
        validation_code: &str,
        state: Provisioning,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let n = tx
            .execute(
                "UPDATE subscriptions SET state = $3, reason = $4
                 WHERE lower(topic) = lower($1) AND lower(name) = lower($2)
                   AND validation_code = $5 AND state = $6",
                &[
                    &topic,
                    &name,
                    &state.as_str(),
                    &reason,
                    &validation_code,
                    &Provisioning::AwaitingManualAction.as_str(),
                ],
            )
            .await
            .map_err(pg)?;
        if n == 0 {
            return Ok(false);
        }
        hold_or_release(&tx, topic, name, state).await?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions
                     WHERE lower(topic) = lower($1) AND lower(name) = lower($2)"
                ),
                &[&topic, &name],
            )
            .await
            .map_err(pg)?
            .ok_or_else(|| StoreError::NoSubscription(topic.into(), name.into()))?;
        subscription_row(&row)
    }

    async fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions
                     WHERE lower(topic) = lower($1) ORDER BY name"
                ),
                &[&topic],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(subscription_row).collect()
    }

    async fn delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let gone = tx
            .query_opt(
                &format!(
                    "DELETE FROM subscriptions WHERE lower(topic) = lower($1) AND lower(name) = lower($2)
                     RETURNING {SUBSCRIPTION_COLUMNS}"
                ),
                &[&topic, &name],
            )
            .await
            .map_err(pg)?
            .ok_or_else(|| StoreError::NoSubscription(topic.into(), name.into()))?;
        tx.execute(
            "DELETE FROM deliveries WHERE lower(topic) = lower($1) AND lower(subscription) = lower($2)
             AND state IN ('pending', 'held', 'dead')",
            &[&topic, &name],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        subscription_row(&gone)
    }

    async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let subs = Self::active_subscriptions(&tx, topic).await?;
        let queued = Self::store_events(&tx, topic, &subs, &events, now_ms).await?;
        tx.commit().await.map_err(pg)?;
        Ok(queued)
    }

    async fn publish_system(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<(usize, usize), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Mostly nobody listens: then no lock and no write.
        let listening = Self::active_subscriptions(&tx, topic).await?;
        if !events
            .iter()
            .any(|e| listening.iter().any(|s| s.input.filter.matches(&e.json)))
        {
            return Ok((0, 0));
        }
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('galaxy-forge system events ' || lower($1::text)))",
            &[&topic],
        )
        .await
        .map_err(pg)?;
        let subs = Self::active_subscriptions(&tx, topic).await?;
        let seen = tx
            .prepare_cached("SELECT 1 FROM events WHERE lower(topic) = lower($1) AND event_id = $2")
            .await
            .map_err(pg)?;
        let mut new = Vec::new();
        for e in events {
            if !subs.iter().any(|s| s.input.filter.matches(&e.json)) {
                continue;
            }
            if tx
                .query_opt(&seen, &[&topic, &e.id])
                .await
                .map_err(pg)?
                .is_none()
            {
                new.push(e);
            }
        }
        let queued = Self::store_events(&tx, topic, &subs, &new, now_ms).await?;
        tx.commit().await.map_err(pg)?;
        Ok((new.len(), queued))
    }

    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
        _leased: InFlight,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "WITH picked AS (
                     SELECT seq, topic, subscription FROM deliveries
                     WHERE state = 'pending' AND due_ms <= $1 AND (lease_until IS NULL OR lease_until <= $1)
                     ORDER BY due_ms, seq LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE deliveries d SET lease_owner = $3, lease_until = $1 + $4
                 FROM picked JOIN events e ON e.seq = picked.seq
                 WHERE d.seq = picked.seq AND d.topic = picked.topic AND d.subscription = picked.subscription
                 RETURNING d.seq, d.topic, d.subscription, e.body, d.attempts,
                     COALESCE(d.live_since_ms, e.published_ms), d.due_ms",
            )
            .await
            .map_err(pg)?;
        let rows = c
            .query(
                &st,
                &[&now_ms, &(limit as i64), &self.owner, &self.lease_ms],
            )
            .await
            .map_err(pg)?;
        let mut due: Vec<(i64, DueDelivery)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(6),
                    DueDelivery {
                        seq: r.get(0),
                        topic: r.get(1),
                        subscription: r.get(2),
                        event: serde_json::from_str(r.get(3)).unwrap_or(Value::Null),
                        attempts: r.get::<_, i64>(4) as u32,
                        live_since_ms: r.get(5),
                    },
                )
            })
            .collect();
        due.sort_by_key(|(due_ms, d)| (*due_ms, d.seq));
        Ok(due.into_iter().map(|(_, d)| d).collect())
    }

    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        let next: Option<i64> = c
            .query_one(
                "SELECT min(greatest(due_ms, coalesce(lease_until, 0))) FROM deliveries
                 WHERE state = 'pending'",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let recheck = now_ms() + SHARED_RECHECK_MS;
        Ok(Some(next.map_or(recheck, |n| n.min(recheck))))
    }

    async fn record_attempts(&self, attempts: Vec<RecordedAttempt>) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO attempts (seq, topic, subscription, n, at_ms, outcome, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(pg)?;
        let update = tx
            .prepare_cached(
                "UPDATE deliveries SET state = CASE WHEN state = 'held' AND $4 = 'pending' THEN 'held' ELSE $4 END,
                     attempts = $5, due_ms = $6, last_outcome = $7,
                     last_attempt_ms = $8, reason = $9, lease_owner = NULL, lease_until = NULL
                 WHERE seq = $1 AND topic = $2 AND subscription = $3",
            )
            .await
            .map_err(pg)?;
        for a in &attempts {
            let status = a.status.map(i64::from);
            tx.execute(
                &insert,
                &[
                    &a.seq,
                    &a.topic,
                    &a.subscription,
                    &i64::from(a.n),
                    &a.at_ms,
                    &a.outcome,
                    &status,
                ],
            )
            .await
            .map_err(pg)?;
            let (state, due, reason) = next_state(a);
            tx.execute(
                &update,
                &[
                    &a.seq,
                    &a.topic,
                    &a.subscription,
                    &state,
                    &i64::from(a.n),
                    &due,
                    &a.outcome,
                    &a.at_ms,
                    &reason,
                ],
            )
            .await
            .map_err(pg)?;
            if state == DROPPED {
                tx.execute(
                    "DELETE FROM deliveries WHERE seq = $1 AND topic = $2 AND subscription = $3",
                    &[&a.seq, &a.topic, &a.subscription],
                )
                .await
                .map_err(pg)?;
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        topic: &str,
        subscription: &str,
        after: i64,
        mut page: PageBuilder<DeadLetter>,
    ) -> Result<PageBuilder<DeadLetter>, StoreError> {
        let c = self.client().await?;
        // Rows stream in: a full page stops reading (the rest is never held).
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&topic, &subscription, &after];
        let rows = c
            .query_raw(
                "SELECT d.seq, e.body, d.reason, d.attempts, d.last_outcome, e.published_ms, d.last_attempt_ms
                 FROM deliveries d JOIN events e ON e.seq = d.seq
                 WHERE lower(d.topic) = lower($1) AND lower(d.subscription) = lower($2) AND d.state = 'dead'
                   AND d.seq > $3
                 ORDER BY d.seq",
                params,
            )
            .await
            .map_err(pg)?;
        futures::pin_mut!(rows);
        while let Some(r) = futures::StreamExt::next(&mut rows).await {
            let r = r.map_err(pg)?;
            let body: &str = r.get(1);
            let letter = DeadLetter {
                sequence: r.get(0),
                event: serde_json::from_str(body).unwrap_or(Value::Null),
                dead_letter_reason: r.get::<_, Option<String>>(2).unwrap_or_default(),
                delivery_attempts: r.get::<_, i64>(3) as u32,
                last_delivery_outcome: r.get::<_, Option<String>>(4).unwrap_or_default(),
                publish_time_ms: r.get(5),
                last_delivery_attempt_time_ms: r.get::<_, Option<i64>>(6).unwrap_or(0),
            };
            if !page.push(letter, body.len()) {
                break;
            }
        }
        Ok(page)
    }

    async fn redeliver(
        &self,
        topic: &str,
        subscription: &str,
        only: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE deliveries SET state = CASE WHEN (SELECT state FROM subscriptions
                         WHERE lower(topic) = lower($1) AND lower(name) = lower($2)) = 'Succeeded'
                         THEN 'pending' ELSE 'held' END,
                     attempts = 0, due_ms = $3, reason = NULL, lease_owner = NULL, lease_until = NULL,
                     live_since_ms = $3
                 WHERE lower(topic) = lower($1) AND lower(subscription) = lower($2) AND state = 'dead'
                   AND ($4::int8[] IS NULL OR seq = ANY($4))",
                &[&topic, &subscription, &now_ms, &only],
            )
            .await
            .map_err(pg)?;
        Ok(n as usize)
    }

    async fn event_deliveries(
        &self,
        topic: &str,
        event_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let mut client = self.client().await?;
        let c = read_snapshot(&mut client).await.map_err(pg)?;
        let rows = c
            .query(
                "SELECT d.seq, d.subscription, d.state, d.attempts, d.reason FROM deliveries d
                 JOIN events e ON e.seq = d.seq
                 WHERE lower(e.topic) = lower($1) AND e.event_id = $2 ORDER BY d.seq, d.subscription",
                &[&topic, &event_id],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::new();
        for r in rows {
            let (seq, sub): (i64, String) = (r.get(0), r.get(1));
            let tries = c
                .query(
                    "SELECT n, at_ms, outcome, status FROM attempts
                     WHERE lower(topic) = lower($1) AND seq = $2 AND subscription = $3 ORDER BY n",
                    &[&topic, &seq, &sub],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|a| attempt_json(a.get(0), a.get(1), a.get(2), a.get(3)))
                .collect();
            out.push(delivery_json(
                seq,
                &sub,
                r.get(2),
                r.get(3),
                r.get(4),
                tries,
            ));
        }
        Ok(out)
    }

    async fn counts(&self) -> Result<Vec<TopicCounts>, StoreError> {
        let mut client = self.client().await?;
        counts::counts(&mut client).await
    }

    async fn sweep(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let mut c = self.client().await?;
        retention::sweep(&mut c, before_ms, limit).await
    }

    async fn held_subscriptions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.client().await?;
        retention::held_subscriptions(&c).await
    }

    async fn expire_held(
        &self,
        topic: &str,
        subscription: &str,
        cutoff_ms: i64,
        now_ms: i64,
        keep: bool,
        _leased: InFlight,
    ) -> Result<usize, StoreError> {
        let c = self.client().await?;
        retention::expire_held(&c, topic, subscription, cutoff_ms, now_ms, keep).await
    }
}

/// Holds or releases a subscription's undelivered events as it enters
/// `state` (see [`held_transition`]).
async fn hold_or_release(
    tx: &deadpool_postgres::Transaction<'_>,
    topic: &str,
    name: &str,
    state: Provisioning,
) -> Result<(), StoreError> {
    let (from, to) = held_transition(state);
    tx.execute(
        "UPDATE deliveries SET state = $4
         WHERE lower(topic) = lower($1) AND lower(subscription) = lower($2) AND state = $3",
        &[&topic, &name, &from, &to],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
