//! The router's durable state: topics and their keys, subscriptions,
//! accepted events, and one delivery row per (event, subscription) made in
//! the same transaction as the event, so nothing accepted is lost across
//! restarts and every matching subscription gets it.
//!
//! Delivery rows move `pending` -> `delivered` or `dead` (a dead letter,
//! with its reason); every attempt is recorded with its outcome, so the API
//! shows each event's delivery history.
//!
//! Two backends behind one [`RouterStore`]: [`sqlite`] (`events.db` in
//! galaxy-cloud's data directory, the default) and [`postgres`] (tables in
//! the `eventgrid` schema, shared by several galaxy-cloud processes, which
//! split the delivery work through leases: a process claims due deliveries
//! for [`lease_for`] the delivery timeout, so no event goes to a subscriber
//! from two processes unless a lease ran out first).

mod cache;
mod postgres;
mod records;
mod rows;
mod sqlite;

pub use records::*;
pub use rows::schema_name;
use rows::{
    attempt_json, delivery_json, held_transition, next_state, parse_schema, record_of, DROPPED,
};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use durable::store::page::PageBuilder;
use serde_json::Value;
use tokio::sync::Notify;

use crate::event::{Event, Schema};
use crate::model::{check_name, SubscriptionInput};
use cache::Cache;

/// How long a claimed delivery is left to the process that claimed it
/// (PostgreSQL): twice the delivery timeout, so a live process always
/// finishes (and records) its attempt before anyone else may try.
pub fn lease_for(delivery_timeout: Duration) -> Duration {
    delivery_timeout * 2
}

/// What a backend does; [`RouterStore`] adds the delivery loop's wake-ups.
#[async_trait]
trait Backend: Send + Sync + 'static {
    /// Whether the backend can still write (a SQLite writer thread that
    /// died or panicked says no); PostgreSQL retries per statement.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Creates the topic with `schema` unless it exists; answers the row.
    async fn put_topic(&self, name: &str, schema: Schema) -> Result<TopicRecord, StoreError>;
    async fn topic(&self, name: &str) -> Result<TopicRecord, StoreError>;
    async fn topics(&self) -> Result<Vec<TopicRecord>, StoreError>;
    /// Returns the subscriptions it deleted with the topic.
    async fn delete_topic(&self, name: &str) -> Result<Vec<SubscriptionRecord>, StoreError>;
    async fn regenerate_key(
        &self,
        topic: &str,
        column: &'static str,
    ) -> Result<TopicRecord, StoreError>;
    async fn put_subscription(
        &self,
        topic: &str,
        name: &str,
        input: SubscriptionInput,
        state: Provisioning,
        validation_code: String,
    ) -> Result<SubscriptionRecord, StoreError>;
    /// Returns whether it changed anything (see
    /// [`RouterStore::set_provisioning`]).
    async fn set_provisioning(
        &self,
        topic: &str,
        name: &str,
        validation_code: &str,
        state: Provisioning,
        reason: Option<String>,
    ) -> Result<bool, StoreError>;
    async fn subscription(&self, topic: &str, name: &str)
        -> Result<SubscriptionRecord, StoreError>;
    async fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError>;
    /// Returns the subscription as it was.
    async fn delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError>;
    /// Returns how many deliveries it queued.
    async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<usize, StoreError>;
    /// Returns (new events, deliveries queued).
    async fn publish_system(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<(usize, usize), StoreError>;
    async fn due(
        &self,
        now_ms: i64,
        limit: usize,
        in_flight: InFlight,
    ) -> Result<Vec<DueDelivery>, StoreError>;
    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError>;
    async fn record_attempts(&self, attempts: Vec<RecordedAttempt>) -> Result<(), StoreError>;
    /// Dead letters after sequence `after`, oldest first, read into `page`
    /// until it is full; returns the page.
    async fn dead_letters(
        &self,
        topic: &str,
        subscription: &str,
        after: i64,
        page: PageBuilder<DeadLetter>,
    ) -> Result<PageBuilder<DeadLetter>, StoreError>;
    async fn redeliver(
        &self,
        topic: &str,
        subscription: &str,
        only: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError>;
    async fn event_deliveries(&self, topic: &str, event_id: &str)
        -> Result<Vec<Value>, StoreError>;
    async fn counts(&self) -> Result<Vec<TopicCounts>, StoreError>;
    /// Deletes up to `limit` events published before `before_ms` whose
    /// deliveries all succeeded (or that had none), with their deliveries
    /// and attempts, adding them to the swept counts. Returns how many.
    async fn sweep(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError>;
    /// The subscriptions (topic, name) that have held deliveries.
    async fn held_subscriptions(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Dead-letters (`TimeToLiveExceeded`) the subscription's held
    /// deliveries of events published before `cutoff_ms`, except those with
    /// an attempt in flight (`in_flight` on SQLite; PostgreSQL's leases).
    /// Returns how many.
    /// `keep`: dead-letter them (the subscription has a dead-letter
    /// destination), else drop them.
    async fn expire_held(
        &self,
        topic: &str,
        subscription: &str,
        cutoff_ms: i64,
        now_ms: i64,
        keep: bool,
        in_flight: InFlight,
    ) -> Result<usize, StoreError>;
}

/// The router's store. Cloning shares it.
#[derive(Clone)]
pub struct RouterStore {
    backend: Arc<dyn Backend>,
    wake: Arc<Notify>,
    /// Each topic's active subscriptions, so that
    /// [`RouterStore::publish_system`] skips the database when nobody
    /// listens (the common case for lifecycle events).
    listeners: Arc<Cache<Arc<Vec<SubscriptionRecord>>>>,
    /// Each topic's record: every publish checks its key against it.
    topics: Arc<Cache<TopicRecord>>,
}

/// How soon a change made through another process sharing the database
/// (a new subscription, a regenerated key) takes effect in this one.
pub const SHARED_CACHE_TTL: Duration = Duration::from_secs(1);

impl RouterStore {
    /// Opens (creating if needed) the SQLite store at `path`.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        Ok(Self::with(sqlite::SqliteRouter::open(path.as_ref())?, None))
    }

    /// Connects to PostgreSQL at `url` (tables in `schema`, created if
    /// missing): several processes may share it. A claimed delivery is
    /// this process's for `lease` (see [`lease_for`]).
    pub async fn connect(url: &str, schema: &str, lease: Duration) -> Result<Self, StoreError> {
        Ok(Self::with(
            postgres::PgRouter::connect(url, schema, lease).await?,
            Some(SHARED_CACHE_TTL),
        ))
    }

    fn with(backend: impl Backend, ttl: Option<Duration>) -> Self {
        Self {
            backend: Arc::new(backend),
            wake: Arc::new(Notify::new()),
            listeners: Arc::new(Cache::new(ttl)),
            topics: Arc::new(Cache::new(ttl)),
        }
    }

    /// A topic's active subscriptions (cached).
    async fn listening(&self, topic: &str) -> Result<Arc<Vec<SubscriptionRecord>>, StoreError> {
        self.listeners
            .get(topic, || async {
                Ok(Arc::new(
                    self.backend
                        .subscriptions(topic)
                        .await?
                        .into_iter()
                        .filter(|s| s.provisioning == Provisioning::Succeeded)
                        .collect(),
                ))
            })
            .await
    }

    /// Whether the store can still write; the reason when it cannot.
    pub fn health(&self) -> Result<(), String> {
        self.backend.health()
    }

    /// Notified when deliveries may have become due (a publish, an
    /// activation, a re-drive): the delivery loop waits on it.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn woken(&self, n: usize) {
        if n > 0 {
            self.wake.notify_one();
        }
    }

    /// Forgets cached topics and subscriptions after a change.
    fn changed(&self) {
        self.listeners.forget();
        self.topics.forget();
    }

    /// Creates a topic (with two new keys and `schema`, by default
    /// `EventGridSchema`), or answers the existing one. A topic's schema
    /// is fixed: its stored events and its subscriptions' delivery
    /// schemas were checked against it, so asking for another one is
    /// refused and changes nothing (delete the topic and create it again).
    pub async fn put_topic(
        &self,
        name: &str,
        schema: Option<Schema>,
    ) -> Result<TopicRecord, StoreError> {
        // A listing holds every topic: their number is bounded. (Checked
        // before the write: processes racing may pass it by a few.)
        if matches!(self.topic(name).await, Err(StoreError::NoTopic(_)))
            && self.backend.topics().await?.len() >= MAX_TOPICS
        {
            return Err(StoreError::Quota(format!(
                "at most {MAX_TOPICS} topics; delete one first"
            )));
        }
        let t = self
            .backend
            .put_topic(name, schema.unwrap_or(Schema::EventGridSchema))
            .await;
        self.changed();
        let t = t?;
        match schema {
            Some(s) if s != t.input_schema => Err(StoreError::Conflict(format!(
                "the topic's inputSchema is {}; it cannot be changed (delete the topic and create it again)",
                schema_name(t.input_schema)
            ))),
            _ => Ok(t),
        }
    }

    /// One topic (cached: every publish reads it).
    pub async fn topic(&self, name: &str) -> Result<TopicRecord, StoreError> {
        named_topic(name)?;
        self.topics.get(name, || self.backend.topic(name)).await
    }

    /// Every topic, by name.
    pub async fn topics(&self) -> Result<Vec<TopicRecord>, StoreError> {
        self.backend.topics().await
    }

    /// Deletes a topic with its subscriptions and pending deliveries;
    /// returns the subscriptions as they were (their endpoints are told:
    /// [`crate::notices::announce_deletion`]).
    pub async fn delete_topic(&self, name: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        named_topic(name)?;
        let r = self.backend.delete_topic(name).await;
        self.changed();
        r
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
        named_topic(topic)?;
        let r = self.backend.regenerate_key(topic, column).await;
        self.changed();
        r
    }

    /// Creates or replaces a subscription of `topic` from a PUT, deciding
    /// its state: an orchestration subscription is active at once; a
    /// webhook waits for its handshake (a fresh validation code), unless it
    /// replaces an active webhook with the same endpoint and delivery
    /// schema. As on Azure, changing a filter or a retry policy does not
    /// validate the endpoint again, so the subscription never stops taking
    /// events in between (they would not be queued for it). The answer's
    /// `provisioning` says whether the caller must run the handshake.
    pub async fn define_subscription(
        &self,
        topic: &TopicRecord,
        name: &str,
        input: SubscriptionInput,
    ) -> Result<SubscriptionRecord, StoreError> {
        use crate::model::Destination;
        let (state, code) = match &input.destination {
            Destination::Orchestration(_) => (Provisioning::Succeeded, String::new()),
            Destination::WebHook(hook) => {
                let schema = input.delivery_schema(topic.input_schema);
                let same_endpoint = |old: &SubscriptionRecord| {
                    old.provisioning == Provisioning::Succeeded
                        && old.input.delivery_schema(topic.input_schema) == schema
                        && matches!(&old.input.destination,
                            Destination::WebHook(h) if h.endpoint_url == hook.endpoint_url)
                };
                match self.backend.subscription(&topic.name, name).await {
                    Ok(old) if same_endpoint(&old) => {
                        (Provisioning::Succeeded, old.validation_code)
                    }
                    Ok(_) | Err(StoreError::NoSubscription(..)) => (
                        Provisioning::AwaitingManualAction,
                        uuid::Uuid::new_v4().to_string(),
                    ),
                    Err(e) => return Err(e),
                }
            }
        };
        self.put_subscription(&topic.name, name, input, state, code)
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
        // As Azure's 500 per topic: a topic's listing, and each of its
        // events' deliveries, stay bounded.
        let existing = self.backend.subscriptions(topic).await?;
        if existing.len() >= MAX_SUBSCRIPTIONS_PER_TOPIC
            && !existing.iter().any(|s| s.name.eq_ignore_ascii_case(name))
        {
            return Err(StoreError::Quota(format!(
                "at most {MAX_SUBSCRIPTIONS_PER_TOPIC} event subscriptions per topic; delete one first"
            )));
        }
        let r = self
            .backend
            .put_subscription(topic, name, input, state, validation_code)
            .await;
        self.changed();
        r
    }

    /// Records the outcome of the handshake that carried
    /// `validation_code`, if the subscription still awaits it: a handshake
    /// of an earlier definition (replaced by a PUT since, with a new code)
    /// or one already decided changes nothing. Returns whether it changed
    /// the subscription.
    pub async fn set_provisioning(
        &self,
        topic: &str,
        name: &str,
        validation_code: &str,
        state: Provisioning,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let r = self
            .backend
            .set_provisioning(topic, name, validation_code, state, reason)
            .await;
        self.changed();
        // Its held deliveries are pending again.
        self.woken(usize::from(state == Provisioning::Succeeded));
        r
    }

    /// One subscription.
    pub async fn subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        named_subscription(topic, name)?;
        self.backend.subscription(topic, name).await
    }

    /// The subscription a delivery goes to: from the cached active ones,
    /// else read (one being validated again; `None`: it or its topic was
    /// deleted).
    pub async fn delivery_target(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        if let Ok(active) = self.listening(topic).await {
            if let Some(s) = active.iter().find(|s| s.name.eq_ignore_ascii_case(name)) {
                return Ok(Some(s.clone()));
            }
        }
        match self.backend.subscription(topic, name).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NoSubscription(..) | StoreError::NoTopic(_)) => Ok(None),
            // Not "deleted": a store that failed must not dead-letter.
            Err(e) => Err(e),
        }
    }

    /// A topic's subscriptions, by name.
    pub async fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionRecord>, StoreError> {
        named_topic(topic)?;
        self.backend.subscriptions(topic).await
    }

    /// Deletes a subscription and its pending deliveries; returns it as it
    /// was.
    pub async fn delete_subscription(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionRecord, StoreError> {
        named_subscription(topic, name)?;
        let r = self.backend.delete_subscription(topic, name).await;
        self.changed();
        r
    }

    /// Stores accepted events and, in the same transaction, a delivery for
    /// every active subscription whose filter matches. Durable when it
    /// returns (SQLite: concurrent publishes share one transaction and one
    /// fsync). Returns how many deliveries it queued.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        named_topic(topic)?;
        let queued = self.backend.publish(topic, events, now_ms).await?;
        self.woken(queued);
        Ok(queued)
    }

    /// Publishes events the router makes itself to `topic` (which the
    /// caller created), each at most once: an event whose
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
        let listening = self.listening(topic).await?;
        if !events
            .iter()
            .any(|e| listening.iter().any(|s| s.input.filter.matches(&e.json)))
        {
            return Ok(0);
        }
        let (fresh, queued) = self.backend.publish_system(topic, events, now_ms).await?;
        self.woken(queued);
        Ok(fresh)
    }

    /// Pending deliveries due at `now_ms`, oldest first, at most `limit`.
    /// SQLite: a read that passes over `in_flight` (the delivery loop
    /// keeps its requests in flight in memory) without reading their
    /// events. PostgreSQL: a claim, for the store's lease (what is in
    /// flight is leased).
    pub async fn due(
        &self,
        now_ms: i64,
        limit: usize,
        in_flight: &InFlight,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.backend.due(now_ms, limit, in_flight.clone()).await
    }

    /// When the next pending delivery is due (or its lease runs out), if any.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.backend.next_due_ms().await
    }

    /// Records attempts and what follows each, in one transaction (a
    /// delivery round's worth: one commit for many deliveries); releases
    /// their leases.
    pub async fn record_attempts(&self, attempts: Vec<RecordedAttempt>) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        self.backend.record_attempts(attempts).await
    }

    /// A page of a subscription's dead letters after sequence `after`,
    /// oldest first: at most `top` (1 to 1000), and no more after the one
    /// that takes the events past [`DEAD_LETTER_PAGE_BYTES`].
    pub async fn dead_letters(
        &self,
        topic: &str,
        subscription: &str,
        after: i64,
        top: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        named_subscription(topic, subscription)?;
        let page = PageBuilder::new(top.clamp(1, 1000), DEAD_LETTER_PAGE_BYTES);
        let (value, more) = self
            .backend
            .dead_letters(topic, subscription, after, page)
            .await?
            .finish();
        let next_after = if more {
            value.last().map(|d| d.sequence)
        } else {
            None
        };
        Ok(DeadLetterPage { value, next_after })
    }

    /// Re-drives dead letters (all of the subscription's, or the given
    /// sequence numbers): pending again, due now, attempts from zero, the
    /// time to live from now.
    /// Returns how many.
    pub async fn redeliver(
        &self,
        topic: &str,
        subscription: &str,
        only: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        named_subscription(topic, subscription)?;
        let n = self
            .backend
            .redeliver(topic, subscription, only, now_ms)
            .await?;
        self.woken(n);
        Ok(n)
    }

    /// An event's deliveries on a topic: per subscription, its state and
    /// every attempt.
    pub async fn event_deliveries(
        &self,
        topic: &str,
        event_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        named_topic(topic)?;
        if event_id.contains('\0') {
            // No event has one (see `named_topic`).
            return Ok(Vec::new());
        }
        self.backend.event_deliveries(topic, event_id).await
    }

    /// Per-topic counts of published, billed, delivered, retried and
    /// dead-lettered events.
    pub async fn counts(&self) -> Result<Vec<TopicCounts>, StoreError> {
        self.backend.counts().await
    }

    /// Forgets events published before `before_ms` once every delivery of
    /// theirs succeeded (events waiting for a retry and dead letters stay),
    /// in short transactions; the counts keep them. What an event's
    /// deliveries API shows, and how long a system event's id is
    /// remembered, is bounded by this. Returns how many went.
    pub async fn sweep(&self, before_ms: i64) -> Result<usize, StoreError> {
        const STEP: usize = 1_000;
        let mut total = 0;
        loop {
            let n = self.backend.sweep(before_ms, STEP).await?;
            total += n;
            if n < STEP {
                return Ok(total);
            }
        }
    }
    /// Dead-letters held deliveries (their subscription awaits a
    /// handshake) whose event has outlived the subscription's time to
    /// live, counted from publishing as for any delivery
    /// (`TimeToLiveExceeded`): a subscription that never passes its
    /// handshake does not keep its events forever. `ttl_scale` is the
    /// delivery's retry scale; `in_flight` the delivery loop's requests in
    /// flight (their records decide those). Returns how many.
    pub async fn expire_held(
        &self,
        now_ms: i64,
        ttl_scale: f64,
        in_flight: &InFlight,
    ) -> Result<usize, StoreError> {
        let mut expired = 0;
        for (topic, name) in self.backend.held_subscriptions().await? {
            let Some(sub) = self.delivery_target(&topic, &name).await? else {
                continue;
            };
            let ttl = sub.input.retry_policy.time_to_live(ttl_scale);
            let cutoff = now_ms.saturating_sub(ttl.as_millis() as i64);
            let keep = sub.input.dead_letter_destination.is_some();
            expired += self
                .backend
                .expire_held(&topic, &name, cutoff, now_ms, keep, in_flight.clone())
                .await?;
        }
        Ok(expired)
    }
}

/// A name that could never have been created ([`check_name`]) names no
/// topic: answered without asking the backend, where it could fail as a
/// store error (PostgreSQL's text cannot even hold a NUL).
fn named_topic(name: &str) -> Result<(), StoreError> {
    check_name("topic", name).map_err(|_| StoreError::NoTopic(name.to_string()))
}

/// [`named_topic`] for a subscription and its topic.
fn named_subscription(topic: &str, name: &str) -> Result<(), StoreError> {
    named_topic(topic)?;
    check_name("subscription", name)
        .map_err(|_| StoreError::NoSubscription(topic.to_string(), name.to_string()))
}
