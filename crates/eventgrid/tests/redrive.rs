//! A re-driven dead letter starts over: attempts from zero and a whole
//! time to live from the re-drive, not what was left of it when it died
//! (an event older than its time to live would otherwise die again at the
//! first failed attempt, or expire while held). On both stores.

use durable::testing::PgCluster;
use eventgrid::model::SubscriptionInput;
use eventgrid::store::{InFlight, Next, Provisioning, RecordedAttempt};
use eventgrid::{Event, RouterStore, Schema};
use serde_json::json;

const DAY_MS: i64 = 86_400_000;

async fn redrive_restarts_the_time_to_live(store: RouterStore) {
    store
        .put_topic("old-news", Some(Schema::EventGridSchema))
        .await
        .unwrap();
    let input = SubscriptionInput::parse(
        json!({"destination": {"endpointType": "Orchestration", "properties": {"name": "Galaxy_Create"}}}),
        Schema::EventGridSchema,
    )
    .unwrap();
    store
        .put_subscription(
            "old-news",
            "sub",
            input,
            Provisioning::Succeeded,
            String::new(),
        )
        .await
        .unwrap();
    let published = 1_700_000_000_000;
    let event = Event::system(
        "old-news",
        "e1",
        "s",
        "T",
        "2023-11-14T22:13:20Z",
        json!({}),
    );
    assert_eq!(
        store
            .publish("old-news", vec![event], published)
            .await
            .unwrap(),
        1
    );
    let in_flight = InFlight::default();

    let due = store.due(published, 10, &in_flight).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].live_since_ms, published);
    store
        .record_attempts(vec![RecordedAttempt {
            seq: due[0].seq,
            topic: due[0].topic.clone(),
            subscription: due[0].subscription.clone(),
            n: 1,
            at_ms: published + 1,
            outcome: "BadRequest".into(),
            status: Some(400),
            next: Next::Dead("BadRequest".into()),
        }])
        .await
        .unwrap();
    assert!(store
        .due(published + DAY_MS, 10, &in_flight)
        .await
        .unwrap()
        .is_empty());

    // Re-driven two days later: due at once, from zero, alive from now.
    let later = published + 2 * DAY_MS;
    assert_eq!(
        store
            .redeliver("old-news", "sub", None, later)
            .await
            .unwrap(),
        1
    );
    let due = store.due(later, 10, &in_flight).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].attempts, due[0].live_since_ms), (0, later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_redrive_restarts_the_time_to_live() {
    let dir = tempfile::tempdir().unwrap();
    redrive_restarts_the_time_to_live(RouterStore::open(dir.path().join("events.db")).unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redrive_restarts_the_time_to_live() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let store = RouterStore::connect(&url, "eventgrid", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    redrive_restarts_the_time_to_live(store).await;
}
