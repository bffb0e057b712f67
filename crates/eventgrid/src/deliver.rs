//! Push delivery: the loop that delivers due events (batched as the subscription
//! asks), records each attempt and decides what follows
//! ([`crate::retry`]). The loop sleeps until the next delivery is due or a
//! publish wakes it: no polling.
//!
//! Deliveries carry the reference's headers (`aeg-subscription-name`,
//! `aeg-delivery-count`, `aeg-event-type: Notification`,
//! `aeg-metadata-version`, `aeg-data-version`) and the subscription's
//! static headers. An orchestration subscription starts one instance per
//! event through [`Starter`], with an instance id made from the topic, the
//! subscription and the event id ([`instance_id_for`]), so a redelivered
//! or republished event starts nothing new.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::event::Schema;
use crate::model::{Destination, WebHook};
use crate::retry::{decide, Attempt, Decision, RetryPolicy};
use crate::store::{
    delivery_key, DeliveryKey, DueDelivery, InFlight, Next, Provisioning, RecordedAttempt,
    RouterStore, StoreError, SubscriptionRecord,
};

/// Starts an orchestration for an event (galaxy-cloud gives the engine).
pub trait Starter: Send + Sync + 'static {
    /// Starts `name` as `instance_id` with `input`; an instance that
    /// already exists under that id is success (the event was delivered
    /// before).
    fn start(
        &self,
        name: &str,
        instance_id: String,
        input: Value,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// How delivery behaves.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// A receiver's answer must come within this.
    pub timeout: Duration,
    /// Retry delays are multiplied by this (1.0 in production; tests use
    /// 0.001 to run the real schedule in milliseconds).
    pub retry_scale: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry_scale: 1.0,
            concurrency: 32,
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An Event Grid event as a CloudEvent (the one conversion allowed).
pub fn to_cloud_event(e: &Value) -> Value {
    let topic = e["topic"].as_str().unwrap_or("");
    let mut ce = json!({
        "specversion": "1.0",
        "id": e["id"],
        "source": format!("/topics/{topic}"),
        "type": e["eventType"],
        "subject": e["subject"],
        "time": e["eventTime"],
        "datacontenttype": "application/json",
        "data": e["data"],
    });
    if let Some(v) = e["dataVersion"].as_str().filter(|v| !v.is_empty()) {
        ce["dataschema"] = json!(v);
    }
    ce
}

/// The instance id an orchestration subscription uses for an event:
/// `eg:<topic>:<subscription>:<event id>`, so the same event always maps
/// to the same instance (a redelivery or a republish starts nothing new)
/// while two subscriptions of one topic each start their own. Instance ids
/// allow neither `/ \ # ?` nor control characters and at most 256
/// characters: where the event id had to be changed to fit, a hash of the
/// whole id keeps two such ids apart.
pub fn instance_id_for(topic: &str, subscription: &str, event_id: &str) -> String {
    const MAX: usize = 256;
    let prefix = format!(
        "eg:{}:{}:",
        topic.to_lowercase(),
        subscription.to_lowercase()
    );
    let fits = |c: char| !(c.is_control() || matches!(c, '/' | '\\' | '#' | '?'));
    let id = format!("{prefix}{event_id}");
    if event_id.chars().all(fits) && id.chars().count() <= MAX {
        return id;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(event_id.as_bytes());
    let hash: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    // Topic and subscription names are at most 64 ASCII characters each.
    let room = MAX - prefix.len() - hash.len() - 1;
    let readable: String = event_id
        .chars()
        .map(|c| if fits(c) { c } else { '_' })
        .take(room)
        .collect();
    format!("{prefix}{readable}~{hash}")
}

/// Groups due deliveries into requests: per subscription, up to its batch
/// size and preferred kilobytes (a single event larger than that still
/// goes alone).
fn batches(
    due: Vec<DueDelivery>,
    subs: &HashMap<(String, String), SubscriptionRecord>,
) -> Vec<Vec<DueDelivery>> {
    let mut by_sub: HashMap<(String, String), Vec<DueDelivery>> = HashMap::new();
    for d in due {
        by_sub
            .entry((d.topic.to_lowercase(), d.subscription.to_lowercase()))
            .or_default()
            .push(d);
    }
    let mut out = Vec::new();
    for (key, list) in by_sub {
        let (max_n, max_bytes) = match subs.get(&key).map(|s| &s.input.destination) {
            Some(Destination::WebHook(w)) => (
                w.max_events_per_batch as usize,
                w.preferred_batch_size_in_kilobytes as usize * 1024,
            ),
            _ => (1, usize::MAX),
        };
        if max_n == 1 {
            // One event per request: no sizes to add up.
            out.extend(list.into_iter().map(|d| vec![d]));
            continue;
        }
        let mut current: Vec<DueDelivery> = Vec::new();
        let mut bytes = 0;
        for d in list {
            let size = d.event.to_string().len();
            if !current.is_empty() && (current.len() >= max_n || bytes + size > max_bytes) {
                out.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            current.push(d);
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

async fn post(
    http: &reqwest::Client,
    hook: &WebHook,
    sub: &str,
    schema: Schema,
    topic_schema: Schema,
    batch: &[DueDelivery],
    timeout: Duration,
) -> Attempt {
    // Checked again at each request: the URL may have been stored before
    // today's rules, or by an older process on a shared database.
    let Ok(url) = crate::egress::check_url(&hook.endpoint_url) else {
        return Attempt::Refused;
    };
    // Events are serialized from where they are; only a conversion makes
    // new ones.
    let converted: Vec<Value>;
    let events: Vec<&Value> = match (topic_schema, schema) {
        (Schema::EventGridSchema, Schema::CloudEvents) => {
            converted = batch.iter().map(|d| to_cloud_event(&d.event)).collect();
            converted.iter().collect()
        }
        _ => batch.iter().map(|d| &d.event).collect(),
    };
    let first = &batch[0];
    let mut request = http
        .post(url)
        .timeout(timeout)
        .header("aeg-subscription-name", sub.to_uppercase())
        .header("aeg-delivery-count", first.attempts.to_string())
        .header("aeg-event-type", "Notification")
        .header("aeg-metadata-version", "1")
        .header(
            "aeg-data-version",
            first.event["dataVersion"].as_str().unwrap_or(""),
        );
    for a in &hook.delivery_attribute_mappings {
        if let Some(v) = a.properties["value"].as_str() {
            request = request.header(a.name.as_str(), v);
        }
    }
    let array = || serde_json::to_string(&events).expect("JSON values serialize");
    let (content_type, body) = match schema {
        Schema::CloudEvents if events.len() == 1 => (
            "application/cloudevents+json; charset=utf-8",
            events[0].to_string(),
        ),
        Schema::CloudEvents => ("application/cloudevents-batch+json; charset=utf-8", array()),
        Schema::EventGridSchema => ("application/json; charset=utf-8", array()),
    };
    match request
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::retry::retry_after(v, chrono::Utc::now()));
            Attempt::Status(r.status().as_u16(), retry_after)
        }
        Err(e) if e.is_timeout() => Attempt::TimedOut,
        Err(_) => Attempt::SocketError,
    }
}

/// Where a batch of deliveries goes.
enum Target {
    /// The subscription, as stored.
    Subscription(Box<SubscriptionRecord>),
    /// It, or its topic, was deleted: dropped (`SubscriptionDeleted`).
    Deleted,
    /// The store could not say (it failed): tried again on the schedule.
    Unreadable,
}

/// Delivers one request's worth of events; returns each one's attempt to
/// record.
async fn deliver_batch(
    http: reqwest::Client,
    starter: Arc<dyn Starter>,
    config: DeliveryConfig,
    target: Target,
    topic_schema: Schema,
    batch: Vec<DueDelivery>,
) -> Vec<RecordedAttempt> {
    let attempt = match &target {
        // Nothing to deliver to.
        Target::Deleted => Attempt::Status(404, None),
        Target::Unreadable => Attempt::RouterError,
        Target::Subscription(s) => match &s.input.destination {
            Destination::WebHook(hook) => {
                let schema = s.input.delivery_schema(topic_schema);
                post(
                    &http,
                    hook,
                    &s.name,
                    schema,
                    topic_schema,
                    &batch,
                    config.timeout,
                )
                .await
            }
            Destination::Orchestration(o) => {
                let d = &batch[0];
                let id = instance_id_for(
                    &d.topic,
                    &d.subscription,
                    d.event["id"].as_str().unwrap_or_default(),
                );
                match starter.start(&o.name, id, d.event.clone()).await {
                    Ok(()) => Attempt::Status(200, None),
                    Err(e) => {
                        tracing::warn!("starting {} for an event: {e}", o.name);
                        Attempt::Status(500, None)
                    }
                }
            }
        },
    };
    let policy = match &target {
        Target::Subscription(s) => s.input.retry_policy,
        _ => RetryPolicy::default(),
    };
    // Without a dead-letter destination what fails for good is dropped (a
    // deleted subscription's deliveries too: its dead letters went with
    // it); when the subscription could not be read, it is kept.
    let keeps_dead_letters = match &target {
        Target::Subscription(s) => s.input.dead_letter_destination.is_some(),
        Target::Deleted => false,
        Target::Unreadable => true,
    };
    let at = now_ms();
    let mut recorded = Vec::with_capacity(batch.len());
    for d in batch {
        let n = d.attempts + 1;
        let age = Duration::from_millis((at - d.live_since_ms).max(0) as u64);
        let decision = if matches!(target, Target::Deleted) {
            Decision::DeadLetter("SubscriptionDeleted")
        } else {
            decide(
                &attempt,
                n,
                age,
                policy,
                config.retry_scale,
                rand::thread_rng().gen(),
            )
        };
        let next = match decision {
            Decision::Delivered => Next::Delivered,
            Decision::RetryAfter(delay) => Next::RetryAt(at + delay.as_millis() as i64),
            Decision::DeadLetter(reason) if keeps_dead_letters => Next::Dead(reason.to_string()),
            Decision::DeadLetter(reason) => Next::Dropped(reason.to_string()),
        };
        let status = match &attempt {
            Attempt::Status(s, _) => Some(*s),
            _ => None,
        };
        recorded.push(RecordedAttempt {
            seq: d.seq,
            topic: d.topic.clone(),
            subscription: d.subscription.clone(),
            n,
            at_ms: at,
            outcome: attempt.outcome().to_string(),
            status,
            next,
        });
    }
    recorded
}

/// Delivers due events until `stop` resolves: takes due deliveries while
/// there is room for requests in flight (skipping the ones already in
/// flight, kept in memory: a crash sends them again, at least once), and
/// otherwise sleeps until the next delivery is due, a publish wakes it, or
/// a request finishes. A slow receiver only holds its own requests. Once a
/// minute it also dead-letters held deliveries that outlived their time to
/// live ([`RouterStore::expire_held`]).
///
/// Finished requests' attempts are recorded by a task of their own, many
/// per transaction, so the loop never waits for a commit; a delivery stays
/// "in flight" until its attempt is recorded, so it is not read as due
/// and sent again in between.
pub async fn run(
    store: RouterStore,
    http: reqwest::Client,
    starter: Arc<dyn Starter>,
    config: DeliveryConfig,
    stop: impl Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    let wake = store.wake();
    let limit = config.concurrency.max(1);
    let mut in_flight: JoinSet<Vec<RecordedAttempt>> = JoinSet::new();
    let sent: InFlight = Arc::default();
    let (finished, recorder) = tokio::sync::mpsc::unbounded_channel();
    let recording = tokio::spawn(record(store.clone(), recorder, sent.clone()));
    let mut expiry = tokio::time::interval(expiry_every(config.retry_scale));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Some(done) = in_flight.try_join_next() {
            let _ = finished.send(done.unwrap_or_default());
        }
        let room = limit.saturating_sub(in_flight.len());
        if room > 0 {
            let due = match store.due(now_ms(), room * 8, &sent).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("reading due deliveries: {e}");
                    Vec::new()
                }
            };
            let due: Vec<DueDelivery> = {
                let mut sent = sent.lock().expect("sent lock");
                due.into_iter()
                    .filter(|d| sent.insert(delivery_key(d.seq, &d.topic, &d.subscription)))
                    .collect()
            };
            if !due.is_empty() {
                let skipped = dispatch(&store, &http, &starter, &config, due, &mut in_flight).await;
                let mut sent = sent.lock().expect("sent lock");
                for k in &skipped {
                    sent.remove(k);
                }
                continue;
            }
        }
        let next = store.next_due_ms().await.ok().flatten();
        let sleep = match next {
            Some(ms) => Duration::from_millis((ms - now_ms()).clamp(0, 3_600_000) as u64),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = expiry.tick() => {
                match store.expire_held(now_ms(), config.retry_scale, &sent).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("{n} held deliveries outlived their time to live"),
                    Err(e) => tracing::warn!("expiring held deliveries: {e}"),
                }
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let _ = finished.send(done.unwrap_or_default());
            }
        }
    }
    // Requests still in flight are dropped (sent again after a restart);
    // what finished is recorded before the loop is done.
    drop(finished);
    let _ = recording.await;
}

/// How often the loop dead-letters held deliveries past their time to
/// live: times to live are whole minutes, so once a minute (scaled like the
/// retry schedule, so tests see it in milliseconds).
fn expiry_every(retry_scale: f64) -> Duration {
    Duration::from_secs(60)
        .mul_f64(retry_scale.max(0.0))
        .max(Duration::from_millis(20))
}

/// Records finished attempts as they come (everything waiting goes into
/// one transaction), then forgets them as in flight and wakes the loop (a
/// retry may be due at once).
async fn record(
    store: RouterStore,
    mut finished: tokio::sync::mpsc::UnboundedReceiver<Vec<RecordedAttempt>>,
    sent: InFlight,
) {
    while let Some(mut outcomes) = finished.recv().await {
        while let Ok(more) = finished.try_recv() {
            outcomes.extend(more);
        }
        if outcomes.is_empty() {
            continue;
        }
        let keys: Vec<DeliveryKey> = outcomes
            .iter()
            .map(|a| delivery_key(a.seq, &a.topic, &a.subscription))
            .collect();
        record_until_stored(&store, outcomes, &finished).await;
        {
            let mut sent = sent.lock().expect("sent lock");
            for k in &keys {
                sent.remove(k);
            }
        }
        store.wake().notify_one();
    }
}

/// First and longest wait between tries to record attempts.
const RECORD_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// Records `outcomes`, trying again (waits doubling up to 5 s) while the
/// store fails: the deliveries stay in flight meanwhile, so a store that
/// cannot record is not answered by sending the same events again and
/// again as fast as the receiver answers. Gives up when the store is
/// closed or the loop stopped (a shutdown: what was not recorded is sent
/// again after the restart, as at-least-once allows).
async fn record_until_stored(
    store: &RouterStore,
    outcomes: Vec<RecordedAttempt>,
    finished: &tokio::sync::mpsc::UnboundedReceiver<Vec<RecordedAttempt>>,
) {
    let mut wait = RECORD_RETRY.0;
    loop {
        match store.record_attempts(outcomes.clone()).await {
            Ok(()) => return,
            Err(e @ StoreError::Interrupted(_)) => {
                tracing::warn!("recording delivery attempts: {e}; they will be sent again");
                return;
            }
            Err(e) if finished.is_closed() => {
                tracing::warn!(
                    "recording delivery attempts at shutdown: {e}; they will be sent again"
                );
                return;
            }
            Err(e) => {
                tracing::warn!("recording delivery attempts: {e}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_RETRY.1);
            }
        }
    }
}

/// Starts the requests of claimed deliveries (batched per subscription).
/// Returns the deliveries it did not send, with no attempt to record:
/// those of a subscription put again since they were read and not yet
/// through its new handshake (its undelivered events are `held` in the
/// same transaction, and released when the new endpoint is validated).
async fn dispatch(
    store: &RouterStore,
    http: &reqwest::Client,
    starter: &Arc<dyn Starter>,
    config: &DeliveryConfig,
    due: Vec<DueDelivery>,
    in_flight: &mut JoinSet<Vec<RecordedAttempt>>,
) -> Vec<DeliveryKey> {
    let mut subs = HashMap::new();
    let mut schemas = HashMap::new();
    // Subscriptions and topics the store failed to read this time.
    let (mut unreadable, mut unreadable_topics) = (HashSet::new(), HashSet::new());
    for d in &due {
        let key = (d.topic.to_lowercase(), d.subscription.to_lowercase());
        if !subs.contains_key(&key) && !unreadable.contains(&key) {
            match store.delivery_target(&d.topic, &d.subscription).await {
                Ok(Some(s)) => {
                    subs.insert(key.clone(), s);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("reading subscription {}: {e}", d.subscription);
                    unreadable.insert(key.clone());
                }
            }
        }
        if !schemas.contains_key(&key.0) && !unreadable_topics.contains(&key.0) {
            match store.topic(&d.topic).await {
                Ok(t) => {
                    schemas.insert(key.0.clone(), t.input_schema);
                }
                // Deleted with its subscriptions: nothing goes out.
                Err(StoreError::NoTopic(_)) => {}
                Err(e) => {
                    tracing::warn!("reading topic {}: {e}", d.topic);
                    unreadable_topics.insert(key.0.clone());
                }
            }
        }
    }
    let (due, inactive): (Vec<_>, Vec<_>) = due.into_iter().partition(|d| {
        let key = (d.topic.to_lowercase(), d.subscription.to_lowercase());
        subs.get(&key)
            .is_none_or(|s| s.provisioning == Provisioning::Succeeded)
    });
    for batch in batches(due, &subs) {
        let key = (
            batch[0].topic.to_lowercase(),
            batch[0].subscription.to_lowercase(),
        );
        let schema = schemas.get(&key.0).copied();
        let target = match (subs.get(&key), schema) {
            _ if unreadable.contains(&key) || unreadable_topics.contains(&key.0) => {
                Target::Unreadable
            }
            (Some(s), Some(_)) => Target::Subscription(Box::new(s.clone())),
            _ => Target::Deleted,
        };
        in_flight.spawn(deliver_batch(
            http.clone(),
            starter.clone(),
            config.clone(),
            target,
            schema.unwrap_or(Schema::EventGridSchema),
            batch,
        ));
    }
    inactive
        .iter()
        .map(|d| delivery_key(d.seq, &d.topic, &d.subscription))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::instance_id_for;

    #[test]
    fn instance_ids_are_one_per_topic_subscription_and_event_and_always_valid() {
        assert_eq!(
            instance_id_for("Requests", "Creator", "r1"),
            "eg:requests:creator:r1"
        );
        assert_ne!(
            instance_id_for("t", "a", "r1"),
            instance_id_for("t", "b", "r1"),
            "two subscriptions each start their own"
        );
        // Ids that must be changed to fit stay apart, and stay valid.
        let long = "x".repeat(300);
        let mut ids = vec![
            instance_id_for("t", "s", "a/b"),
            instance_id_for("t", "s", "a_b"),
            instance_id_for("t", "s", "a?b"),
            instance_id_for("t", "s", &format!("{long}1")),
            instance_id_for("t", "s", &format!("{long}2")),
        ];
        let top = "t".repeat(64);
        ids.push(instance_id_for(&top, &top, &format!("{long}\n")));
        for id in &ids {
            assert!(id.chars().count() <= 256, "{id}");
            assert!(
                !id.chars().any(|c| c.is_control() || "/\\#?".contains(c)),
                "{id}"
            );
            assert!(durable::InstanceId::new(id.clone()).is_ok(), "{id}");
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6);
        assert_eq!(
            instance_id_for("t", "s", "a/b"),
            instance_id_for("t", "s", "a/b"),
            "the same event, the same instance"
        );
    }
}
