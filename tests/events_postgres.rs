//! The event router on PostgreSQL: two real `galaxy-cloud` processes share
//! one database (a throwaway cluster). A topic and subscription made
//! through one process serve the other; events published through both are
//! all delivered, each by one process only (the delivery leases: every
//! event has exactly one recorded attempt); and the system topic carries
//! each orchestration's lifecycle events once though both processes relay
//! the shared outbox.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use durable::testing::PgCluster;
use reqwest::Method;
use serde_json::{json, Value};

mod common;

use common::router::*;

fn on(url: &str) -> Cloud {
    Cloud::start_with(tempfile::tempdir().unwrap(), &["--database-url", url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leaves_its_deliveries_to_the_other_once_its_leases_run_out() {
    let url = PgCluster::shared().create_database().await.unwrap();
    // A 1 s delivery timeout: leases of 2 s.
    let args = [
        "--database-url",
        url.as_str(),
        "--event-delivery-timeout",
        "1s",
    ];
    let one = Cloud::start_with(tempfile::tempdir().unwrap(), &args);
    let two = Cloud::start_with(tempfile::tempdir().unwrap(), &args);
    let (endpoint, key) = one.topic("handover", "EventGridSchema").await;
    let mut receiver = Receiver::start_slow(
        Handshake::Answer,
        vec![],
        std::time::Duration::from_millis(10),
    )
    .await;
    let mut sub = hook(&receiver.url);
    sub["destination"]["properties"]["maxEventsPerBatch"] = json!(1);
    one.subscribe("handover", "sub", sub).await;
    one.wait_state("handover", "sub", "Succeeded").await;
    const N: usize = 200;
    let events = events("h", N);
    for chunk in events.chunks(100) {
        assert_eq!(one.publish(&endpoint, &key, json!(chunk)).await.0, 200);
    }
    let mut got = std::collections::BTreeSet::new();
    receiver.ids_until(&mut got, 10).await;
    // Process one dies holding leases; process two delivers the rest.
    drop(one);
    receiver.ids_until(&mut got, N).await;
    let v = two
        .get_until(
            "/api/events/topics/handover/events/h199/deliveries",
            "the last delivery recorded",
            |_, v| v["value"][0]["state"] == "delivered",
        )
        .await;
    assert_eq!(v["value"][0]["subscription"], "sub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_topics_and_deliver_each_event_once() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let (one, two) = (on(&url), on(&url));
    let (_, key) = one.topic("shared", "EventGridSchema").await;
    // A slow receiver keeps deliveries in flight while both processes look
    // for more.
    let mut receiver = Receiver::start_slow(
        Handshake::Answer,
        vec![],
        std::time::Duration::from_millis(5),
    )
    .await;
    let mut sub = hook(&receiver.url);
    sub["destination"]["properties"]["maxEventsPerBatch"] = json!(3);
    two.subscribe("shared", "both", sub).await;
    one.wait_state("shared", "both", "Succeeded").await;

    const N: usize = 300;
    for (i, chunk) in (0..N).collect::<Vec<_>>().chunks(10).enumerate() {
        let cloud = if i % 2 == 0 { &one } else { &two };
        let batch: Vec<Value> = chunk
            .iter()
            .map(|n| event(&format!("e{n}"), "Galaxy.Created", *n as i64))
            .collect();
        let endpoint = format!("{}/api/events/topics/shared/events", cloud.base);
        let (s, v) = cloud.publish(&endpoint, &key, json!(batch)).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    while got.len() < N {
        let (_, body) = receiver.next().await;
        for e in body.as_array().unwrap() {
            *got.entry(e["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    // Every event: delivered, after exactly one attempt in all (a second
    // process sending it too would have recorded its own).
    for n in 0..N {
        let id = format!("e{n}");
        let v = one
            .get_until(
                &format!("/api/events/topics/shared/events/{id}/deliveries"),
                "the delivery recorded",
                |_, v| v["value"][0]["state"] == "delivered",
            )
            .await;
        let attempts = v["value"][0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{id}: {v}");
        assert_eq!(attempts[0]["outcome"], "Succeeded");
        assert_eq!(got[&id], 1, "{id} arrived {} times", got[&id]);
    }
    // The counts are the database's, the same through either process.
    for cloud in [&one, &two] {
        let text = cloud.metrics().await;
        assert!(
            text.contains(&format!(
                "galaxy_events_delivered_total{{topic=\"shared\"}} {N}"
            )),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_relayed_by_two_processes_arrive_once() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let (one, two) = (on(&url), on(&url));
    let mut receiver = Receiver::start(Handshake::Answer, vec![]).await;
    let mut sub = hook(&receiver.url);
    sub["filter"] = json!({"includedEventTypes": ["Orchestration.Completed"]});
    one.subscribe("galaxy-forge", "done", sub).await;
    two.wait_state("galaxy-forge", "done", "Succeeded").await;
    const N: usize = 40;
    let mut ids = Vec::new();
    for i in 0..N {
        let cloud = if i % 2 == 0 { &one } else { &two };
        let (s, v) = cloud
            .call(
                Method::POST,
                "/api/orchestrators/Galaxy_Create",
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let mut got: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    while got.len() < N {
        let (_, body) = receiver.next().await;
        for e in body.as_array().unwrap() {
            let instance = e["data"]["instanceId"].as_str().unwrap().to_string();
            *got.entry(instance)
                .or_default()
                .entry(e["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for id in &ids {
        let events = &got[id];
        assert_eq!(events.len(), 1, "{id}: one Completed event, {events:?}");
        let event_id = events.keys().next().unwrap();
        let v = two
            .get_until(
                &format!("/api/events/topics/galaxy-forge/events/{event_id}/deliveries"),
                "the delivery recorded",
                |_, v| v["value"][0]["state"] == "delivered",
            )
            .await;
        assert_eq!(v["value"].as_array().unwrap().len(), 1, "stored once: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sweeping_delivered_events_count_each_once() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let args = ["--database-url", url.as_str(), "--event-retention", "0s"];
    let one = Cloud::start_with(tempfile::tempdir().unwrap(), &args);
    let two = Cloud::start_with(tempfile::tempdir().unwrap(), &args);
    let (endpoint, key) = one.topic("swept", "EventGridSchema").await;
    let mut receiver = Receiver::start(Handshake::Answer, vec![]).await;
    two.subscribe("swept", "sub", hook(&receiver.url)).await;
    one.wait_state("swept", "sub", "Succeeded").await;
    const N: usize = 60;
    let events = events("s", N);
    assert_eq!(one.publish(&endpoint, &key, json!(events)).await.0, 200);
    let mut got = std::collections::BTreeSet::new();
    receiver.ids_until(&mut got, N).await;
    for n in 0..N {
        two.get_until(
            &format!("/api/events/topics/swept/events/s{n}/deliveries"),
            "the delivered event swept",
            |s, v| s == StatusCode::OK && v["value"].as_array().is_some_and(Vec::is_empty),
        )
        .await;
    }
    for cloud in [&one, &two] {
        let text = cloud.metrics().await;
        for line in [
            format!("galaxy_events_published_total{{topic=\"swept\"}} {N}"),
            format!("galaxy_events_delivered_total{{topic=\"swept\"}} {N}"),
        ] {
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}

/// Dead letters come in pages on PostgreSQL too (rows streamed, a full
/// page stops reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged() {
    let url = PgCluster::shared().create_database().await.unwrap();
    dead_letters_come_in_pages(&on(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_put_again_receives_nothing_until_its_new_handshake_passes() {
    let url = PgCluster::shared().create_database().await.unwrap();
    events_wait_for_a_moved_subscription_s_new_handshake(&on(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_are_dead_lettered_when_their_time_to_live_passes() {
    let url = PgCluster::shared().create_database().await.unwrap();
    held_events_expire_with_their_time_to_live(&on(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_deleted_with_their_subscription() {
    let url = PgCluster::shared().create_database().await.unwrap();
    dead_letters_go_with_their_subscription(&on(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_destination_a_failed_event_is_dropped() {
    let url = PgCluster::shared().create_database().await.unwrap();
    without_a_dead_letter_destination_failures_are_dropped(&on(&url)).await;
}

/// A process starts while the others write: with a transaction holding
/// what a running process's writes hold (ROW EXCLUSIVE) on every table of
/// the database, a second galaxy-cloud still starts and serves. Its
/// schema set-up used to lock those tables before finding nothing to do
/// (`CREATE INDEX IF NOT EXISTS`, `ADD COLUMN IF NOT EXISTS`), so it waited
/// behind the writers, or deadlocked with them and did not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_starts_while_the_others_write_every_table() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let one = on(&url);
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() > 10, "{tables:?}");
    let writer = client.transaction().await.unwrap();
    writer
        .batch_execute(&format!(
            "LOCK TABLE {} IN ROW EXCLUSIVE MODE",
            tables.join(", ")
        ))
        .await
        .unwrap();

    let two = on(&url);
    let (endpoint, key) = two.topic("while-locked", "EventGridSchema").await;
    assert!(endpoint.contains("while-locked"), "{endpoint}");
    assert!(!key.is_empty());
    writer.commit().await.unwrap();
    drop((one, two));
}
