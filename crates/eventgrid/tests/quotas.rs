//! The router's counts are bounded, so that listings (topics, a topic's
//! subscriptions, an event's deliveries) stay bounded: at most
//! `MAX_SUBSCRIPTIONS_PER_TOPIC` subscriptions per topic and `MAX_TOPICS`
//! topics; replacing an existing one is always allowed.

use eventgrid::model::SubscriptionInput;
use eventgrid::store::{Provisioning, StoreError, MAX_SUBSCRIPTIONS_PER_TOPIC, MAX_TOPICS};
use eventgrid::{RouterStore, Schema};
use serde_json::json;

fn orchestration() -> SubscriptionInput {
    SubscriptionInput::parse(
        json!({"destination": {"endpointType": "Orchestration", "properties": {"name": "Galaxy_Create"}}}),
        Schema::EventGridSchema,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_topic_and_topics_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = RouterStore::open(dir.path().join("events.db")).unwrap();
    store
        .put_topic("quota-topic", Some(Schema::EventGridSchema))
        .await
        .unwrap();
    for n in 0..MAX_SUBSCRIPTIONS_PER_TOPIC {
        store
            .put_subscription(
                "quota-topic",
                &format!("sub-{n}"),
                orchestration(),
                Provisioning::Succeeded,
                String::new(),
            )
            .await
            .unwrap();
    }
    let over = store
        .put_subscription(
            "quota-topic",
            "one-more",
            orchestration(),
            Provisioning::Succeeded,
            String::new(),
        )
        .await;
    assert!(matches!(over, Err(StoreError::Quota(_))), "{over:?}");
    // Replacing one at the limit is fine.
    store
        .put_subscription(
            "quota-topic",
            "SUB-7",
            orchestration(),
            Provisioning::Succeeded,
            String::new(),
        )
        .await
        .unwrap();

    for n in store.topics().await.unwrap().len()..MAX_TOPICS {
        store
            .put_topic(&format!("topic-{n}"), Some(Schema::EventGridSchema))
            .await
            .unwrap();
    }
    let over = store
        .put_topic("one-more-topic", Some(Schema::EventGridSchema))
        .await;
    assert!(matches!(over, Err(StoreError::Quota(_))), "{over:?}");
    // An existing topic is still answered at the limit; its schema is
    // fixed.
    store.put_topic("quota-topic", None).await.unwrap();
    let changed = store
        .put_topic("quota-topic", Some(Schema::CloudEvents))
        .await;
    assert!(
        matches!(changed, Err(StoreError::Conflict(_))),
        "{changed:?}"
    );
    assert_eq!(
        store.topic("quota-topic").await.unwrap().input_schema,
        Schema::EventGridSchema
    );
}
