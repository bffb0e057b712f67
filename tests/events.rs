//! The event router end to end: the real `galaxy-cloud` binary (retry
//! delays scaled down with `--event-retry-scale`), real webhook receivers
//! on free loopback ports (axum), publishes over HTTP. Waits follow what
//! receivers get (a channel) or poll the API with a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

mod common;

use common::router::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_push_delivery_retries_dead_letters_and_redrive() {
    let cloud = Cloud::start();
    let (endpoint, key) = cloud.topic("galaxy-events", "EventGridSchema").await;

    // A receiver that proves it wants events, with a filter.
    let mut good = Receiver::start(Handshake::Answer, vec![]).await;
    let mut sub = hook(&good.url);
    sub["filter"] = json!({"includedEventTypes": ["Galaxy.Created"],
        "advancedFilters": [{"operatorType": "NumberGreaterThan", "key": "data.n", "value": 1}]});
    let created = cloud.subscribe("galaxy-events", "good", sub).await;
    assert!(
        created["properties"]["provisioningState"] == "AwaitingManualAction"
            || created["properties"]["provisioningState"] == "Succeeded"
    );
    cloud.wait_state("galaxy-events", "good", "Succeeded").await;
    // One that refuses the handshake receives nothing.
    let refusing = Receiver::start(Handshake::Refuse, vec![]).await;
    cloud
        .subscribe("galaxy-events", "refusing", hook(&refusing.url))
        .await;
    let failed = cloud
        .wait_state("galaxy-events", "refusing", "Failed")
        .await;
    assert!(
        failed["properties"]["provisioningReason"]
            .as_str()
            .unwrap()
            .contains("404"),
        "{failed}"
    );

    let (s, _) = cloud
        .publish(
            &endpoint,
            &key,
            json!([
                event("e1", "Galaxy.Created", 5),
                event("e2", "Galaxy.Deleted", 5),
                event("e3", "Galaxy.Created", 1)
            ]),
        )
        .await;
    assert_eq!(s, 200);
    let (headers, body) = good.next().await;
    assert_eq!(body[0]["id"], "e1", "only the matching event: {body}");
    assert_eq!(body[0]["topic"], "galaxy-events");
    assert_eq!(headers["aeg-event-type"], "Notification");
    assert_eq!(headers["aeg-subscription-name"], "GOOD");
    assert_eq!(headers["aeg-delivery-count"], "0");
    assert_eq!(headers["aeg-data-version"], "1.0");

    // Bad publishes: each its status and JSON error, nothing stored.
    let (s, e) = cloud
        .publish(&endpoint, "wrong", json!([event("x", "Galaxy.Created", 5)]))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("Unauthorized"))
    );
    let (s, e) = cloud.publish(&endpoint, &key, json!([{"id": "x"}])).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("subject"),
        "{e}"
    );
    // A batch with two bad events names both in `details`, and its good
    // event is not stored either (the next delivery below is e4's).
    let (s, e) = cloud
        .publish(
            &endpoint,
            &key,
            json!([{"id": "x"}, event("bad-batch", "Galaxy.Created", 5), "nope"]),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let details: Vec<(&str, &str)> = e["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details: {e}"))
        .iter()
        .map(|d| (d["code"].as_str().unwrap(), d["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        details,
        [
            ("InputJsonInvalid", "event 0: 'subject' is required"),
            ("InputJsonInvalid", "event 2 is not a JSON object"),
        ],
        "{e}"
    );
    let (s, _) = cloud
        .publish(
            &format!("{}/api/events/topics/nope/events", cloud.base),
            &key,
            json!([event("x", "T", 1)]),
        )
        .await;
    assert_eq!(s, 404);

    // A receiver failing twice with 500 then accepting: delivered on the
    // third attempt, each attempt visible through the API.
    let mut flaky = Receiver::start(Handshake::Answer, vec![500, 503]).await;
    cloud
        .subscribe("galaxy-events", "flaky", hook(&flaky.url))
        .await;
    cloud
        .wait_state("galaxy-events", "flaky", "Succeeded")
        .await;
    // One answering 400 is dead-lettered at once.
    let mut rejecting = Receiver::start(Handshake::Answer, vec![400]).await;
    let with_dl = hook_keeping_dead_letters(&rejecting.url);
    cloud.subscribe("galaxy-events", "rejecting", with_dl).await;
    cloud
        .wait_state("galaxy-events", "rejecting", "Succeeded")
        .await;

    let (s, _) = cloud
        .publish(&endpoint, &key, json!([event("e4", "Galaxy.Created", 9)]))
        .await;
    assert_eq!(s, 200);
    let (_, b) = good.next().await;
    assert_eq!(b[0]["id"], "e4", "nothing of a refused batch is stored");
    for expected_count in ["0", "1", "2"] {
        let (h, b) = flaky.next().await;
        assert_eq!(b[0]["id"], "e4");
        assert_eq!(h["aeg-delivery-count"], expected_count);
    }
    rejecting.next().await;
    let dead = cloud
        .get_until(
            "/api/events/topics/galaxy-events/eventSubscriptions/rejecting/deadLetters",
            "a dead letter",
            |_, v| !v["value"].as_array().unwrap().is_empty(),
        )
        .await;
    assert_eq!(dead["value"][0]["deadLetterReason"], "NotRetriable");
    assert_eq!(dead["value"][0]["deliveryAttempts"], 1);
    assert_eq!(dead["value"][0]["lastDeliveryOutcome"], "BadRequest");
    // Event Grid's times, RFC 3339, beside the milliseconds.
    let published = dead["value"][0]["publishTime"].as_str().unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(published).unwrap();
    assert_eq!(
        at.timestamp_millis(),
        dead["value"][0]["publishTimeMs"].as_i64().unwrap()
    );
    assert!(dead["value"][0]["lastDeliveryAttemptTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // The receiver has answered the third attempt; its record follows.
    let flaky_of = |history: &Value| {
        history["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["subscription"] == "flaky")
            .cloned()
            .unwrap()
    };
    let history = cloud
        .get_until(
            "/api/events/topics/galaxy-events/events/e4/deliveries",
            "the third attempt recorded",
            |_, v| flaky_of(v)["attempts"].as_array().unwrap().len() == 3,
        )
        .await;
    let flaky_history = flaky_of(&history);
    assert_eq!(flaky_history["state"], "delivered", "{history}");
    let outcomes: Vec<_> = flaky_history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(outcomes, vec![500, 503, 200]);

    // Re-drive: the receiver accepts now.
    let (s, r) = cloud
        .call(
            reqwest::Method::POST,
            "/api/events/topics/galaxy-events/eventSubscriptions/rejecting/redeliver",
            Some(json!({})),
        )
        .await;
    assert_eq!((s, r["redelivered"].as_i64()), (StatusCode::OK, Some(1)));
    let (_, b) = rejecting.next().await;
    assert_eq!(b[0]["id"], "e4");
    assert!(rejecting.state.script.lock().unwrap().is_empty());

    // The counters per topic (read from the store once the re-drive is
    // recorded).
    let until = Instant::now() + WAIT;
    loop {
        let text = cloud.metrics().await;
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{topic=\"galaxy-events\"}}")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        if value("galaxy_events_delivered_total") == Some(4) {
            assert_eq!(value("galaxy_events_published_total"), Some(4), "{text}");
            assert_eq!(value("galaxy_events_billed_operations_total"), Some(4));
            assert_eq!(value("galaxy_events_retried_total"), Some(2));
            assert_eq!(value("galaxy_events_dead_letters"), Some(0));
            break;
        }
        assert!(Instant::now() < until, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_and_an_event_that_starts_one_galaxy_however_often_it_comes() {
    let cloud = Cloud::start();
    let (endpoint, key) = cloud.topic("forge-ce", "CloudEventSchemaV1_0").await;
    let mut receiver = Receiver::start(Handshake::Answer, vec![]).await;
    cloud
        .subscribe("forge-ce", "hook", hook(&receiver.url))
        .await;
    cloud.wait_state("forge-ce", "hook", "Succeeded").await;
    let created = cloud
        .subscribe("forge-ce", "creator", json!({"destination": {"endpointType": "Orchestration", "properties": {"name": "Galaxy_Create"}},
            "filter": {"includedEventTypes": ["Galaxy.Requested"]}}))
        .await;
    assert_eq!(created["properties"]["provisioningState"], "Succeeded");

    let ce = json!({"specversion": "1.0", "id": "req-1", "source": "/players/p1", "type": "Galaxy.Requested", "data": {"why": "test"}});
    for _ in 0..2 {
        // The same event twice (a republish).
        let r = cloud
            .http
            .post(&endpoint)
            .header("aeg-sas-key", &key)
            .header(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )
            .body(ce.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    for _ in 0..2 {
        let (h, b) = receiver.next().await;
        assert_eq!(b["id"], "req-1", "{b}");
        assert!(h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/cloudevents+json"));
    }
    // One instance, one galaxy.
    let id = "eg:forge-ce:creator:req-1";
    cloud
        .get_until(
            &format!("/runtime/webhooks/durabletask/instances/{id}"),
            "the event's orchestration to complete",
            |s, v| s == StatusCode::OK && v["runtimeStatus"] == "Completed",
        )
        .await;
    let (_, deliveries) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/forge-ce/events/req-1/deliveries",
            None,
        )
        .await;
    let creator: Vec<_> = deliveries["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["subscription"] == "creator")
        .collect();
    assert_eq!(
        creator.len(),
        2,
        "two deliveries of the event: {deliveries}"
    );
    cloud
        .get_until(
            "/api/events/topics/forge-ce/events/req-1/deliveries",
            "all delivered",
            |_, v| {
                v["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["state"] == "delivered")
            },
        )
        .await;
    let (_, galaxies) = cloud
        .call(reqwest::Method::GET, "/api/galaxies", None)
        .await;
    assert_eq!(
        galaxies["value"].as_array().map(Vec::len),
        Some(1),
        "one galaxy: {galaxies}"
    );

    // An Event Grid array to a CloudEvents topic is refused.
    let (s, e) = cloud
        .publish(&endpoint, &key, json!([event("x", "T", 1)]))
        .await;
    assert_eq!(s, 400, "{e}");

    // The topic's schema is fixed: a PUT without a body answers it as it
    // is, one asking for the other schema is refused and changes nothing.
    let (s, t) = cloud
        .call(reqwest::Method::PUT, "/api/events/topics/forge-ce", None)
        .await;
    assert_eq!(
        (s, t["inputSchema"].as_str()),
        (StatusCode::OK, Some("CloudEventSchemaV1_0"))
    );
    let (s, e) = cloud
        .call(
            reqwest::Method::PUT,
            "/api/events/topics/forge-ce",
            Some(json!({"inputSchema": "EventGridSchema"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "InputSchemaFixed");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be changed"),
        "{e}"
    );
    let (_, t) = cloud
        .call(reqwest::Method::GET, "/api/events/topics/forge-ce", None)
        .await;
    assert_eq!(t["inputSchema"], "CloudEventSchemaV1_0");

    // Deleting the webhook subscription tells its endpoint once, in its
    // schema; an endpoint that refused its handshake is told nothing.
    let mut refusing = Receiver::start(Handshake::Refuse, vec![]).await;
    cloud
        .subscribe("forge-ce", "refusing", hook(&refusing.url))
        .await;
    cloud.wait_state("forge-ce", "refusing", "Failed").await;
    for name in ["refusing", "hook"] {
        let path = format!("/api/events/topics/forge-ce/eventSubscriptions/{name}");
        let (s, _) = cloud.call(reqwest::Method::DELETE, &path, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (h, b) = receiver.next().await;
    assert_eq!(h["aeg-event-type"], "SubscriptionDeletion");
    assert_eq!(h["aeg-subscription-name"], "HOOK");
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    assert_eq!(
        b["type"], "Microsoft.EventGrid.SubscriptionDeletedEvent",
        "{b}"
    );
    assert_eq!(b["source"], "/topics/forge-ce", "{b}");
    assert_eq!(
        b["data"]["eventSubscriptionId"], "/topics/forge-ce/eventSubscriptions/hook",
        "{b}"
    );
    // The notice of "refusing" was not sent: "hook"'s, deleted after it,
    // has arrived, and the router sends each at once.
    assert!(refusing.got.try_recv().is_err());
}

/// Where `make test` installs the pinned official client libraries.
fn test_clients() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-clients")
}

/// Two topics (Event Grid, CloudEvents) with a receiver each, for an SDK
/// run: endpoints, keys, receivers.
async fn sdk_topics(cloud: &Cloud) -> ([String; 4], Receiver, Receiver) {
    let (eg_endpoint, eg_key) = cloud.topic("sdk-eg", "EventGridSchema").await;
    let (ce_endpoint, ce_key) = cloud.topic("sdk-ce", "CloudEventSchemaV1_0").await;
    let eg_receiver = Receiver::start(Handshake::Answer, vec![]).await;
    let ce_receiver = Receiver::start(Handshake::Answer, vec![]).await;
    cloud
        .subscribe("sdk-eg", "hook", hook(&eg_receiver.url))
        .await;
    cloud
        .subscribe("sdk-ce", "hook", hook(&ce_receiver.url))
        .await;
    cloud.wait_state("sdk-eg", "hook", "Succeeded").await;
    cloud.wait_state("sdk-ce", "hook", "Succeeded").await;
    (
        [eg_endpoint, eg_key, ce_endpoint, ce_key],
        eg_receiver,
        ce_receiver,
    )
}

/// Runs an SDK client script and checks the steps it reports: a key, a
/// SAS token, CloudEvents, and a wrong key refused with 401.
async fn run_sdk_client(mut command: tokio::process::Command, args: &[String; 4]) {
    let out = command.args(args).output().await.expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<_> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["key", "sas", "cloudevents", "wrong-key"]);
    assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
    assert_eq!(steps[3]["status"], 401);
}

/// Event types the Event Grid receiver got, `n` of them, sorted.
async fn event_types(receiver: &mut Receiver, n: usize) -> Vec<String> {
    let mut types = Vec::new();
    while types.len() < n {
        let (_, body) = receiver.next().await;
        for e in body.as_array().unwrap() {
            assert_eq!(e["dataVersion"], "1.0");
            types.push(e["eventType"].as_str().unwrap().to_string());
        }
    }
    types.sort();
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_azure_python_publisher_works_unchanged() {
    let clients = test_clients().join("python");
    assert!(
        clients.join("azure/eventgrid").is_dir(),
        "the Azure Event Grid SDK for Python is not in {}: run `make test` (it installs the pinned version there)",
        clients.display()
    );
    let cloud = Cloud::start();
    let (args, mut eg_receiver, mut ce_receiver) = sdk_topics(&cloud).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/eventgrid_publish.py");
    let mut command = tokio::process::Command::new("python3");
    command.arg(&script).env("PYTHONPATH", &clients);
    run_sdk_client(command, &args).await;
    assert_eq!(
        event_types(&mut eg_receiver, 3).await,
        vec!["Sdk.KeyPublished", "Sdk.KeyPublished", "Sdk.SasPublished"]
    );
    let mut ces = Vec::new();
    while ces.len() < 2 {
        let (_, body) = ce_receiver.next().await;
        ces.push(body);
    }
    assert!(ces
        .iter()
        .all(|c| c["type"] == "Sdk.CloudEvent" && c["specversion"] == "1.0"));
    assert!(
        ces.iter().any(|c| c["data_base64"] == "AAE="),
        "bytes travel as data_base64: {ces:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_azure_javascript_publisher_works_unchanged() {
    let clients = test_clients().join("node");
    assert!(
        clients.join("node_modules/@azure/eventgrid").is_dir(),
        "the Azure Event Grid SDK for JavaScript is not in {}: run `make test` (it installs the pinned version there)",
        clients.display()
    );
    let cloud = Cloud::start();
    let (args, mut eg_receiver, mut ce_receiver) = sdk_topics(&cloud).await;
    // ES modules resolve packages from the script's own directory.
    let script = clients.join("eventgrid_publish.mjs");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients/eventgrid_publish.mjs"),
        &script,
    )
    .unwrap();
    let mut command = tokio::process::Command::new("node");
    command.arg(&script);
    run_sdk_client(command, &args).await;
    assert_eq!(
        event_types(&mut eg_receiver, 2).await,
        vec!["Js.KeyPublished", "Js.SasPublished"]
    );
    let (_, ce) = ce_receiver.next().await;
    assert_eq!(ce["type"], "Js.CloudEvent", "{ce}");
    assert_eq!(ce["data"]["n"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_delivered_across_a_sigkill_and_retries_end_by_attempts() {
    let mut cloud = Cloud::start();
    let (endpoint, key) = cloud.topic("durable", "EventGridSchema").await;
    let mut receiver =
        Receiver::start_slow(Handshake::Answer, vec![], Duration::from_millis(20)).await;
    let mut sub = hook(&receiver.url);
    sub["destination"]["properties"]["maxEventsPerBatch"] = json!(5);
    cloud.subscribe("durable", "slow", sub).await;
    cloud.wait_state("durable", "slow", "Succeeded").await;
    // Always failing, two attempts at most.
    let mut failing = Receiver::start(Handshake::Answer, vec![500; 10]).await;
    let mut limited = hook_keeping_dead_letters(&failing.url);
    limited["retryPolicy"] = json!({"maxDeliveryAttempts": 2});
    limited["filter"] = json!({"subjectBeginsWith": "/limited"});
    cloud.subscribe("durable", "limited", limited).await;
    cloud.wait_state("durable", "limited", "Succeeded").await;

    const N: usize = 300;
    let events = events("d", N);
    for chunk in events.chunks(100) {
        assert_eq!(cloud.publish(&endpoint, &key, json!(chunk)).await.0, 200);
    }
    let mut seen = std::collections::BTreeSet::new();
    receiver.ids_until(&mut seen, 20).await;
    // SIGKILL with deliveries in flight, then the same data directory.
    cloud.child.kill().unwrap();
    cloud.child.wait().unwrap();
    let dir = std::mem::replace(&mut cloud._dir, tempfile::tempdir().unwrap());
    let cloud = Cloud::start_in(dir);
    receiver.ids_until(&mut seen, N).await;
    assert_eq!(
        seen.len(),
        N,
        "every accepted event arrived (at least once)"
    );

    // The limited subscription: two attempts, then a dead letter.
    let mut e = event("lim", "Galaxy.Created", 1);
    e["subject"] = json!("/limited/1");
    let endpoint = format!("{}/api/events/topics/durable/events", cloud.base);
    assert_eq!(cloud.publish(&endpoint, &key, json!([e])).await.0, 200);
    failing.next().await;
    failing.next().await;
    let v = cloud
        .get_until(
            "/api/events/topics/durable/eventSubscriptions/limited/deadLetters",
            "a dead letter",
            |_, v| v["value"].as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    let d = &v["value"][0];
    assert_eq!(d["deadLetterReason"], "MaxDeliveryAttemptsExceeded");
    assert_eq!(d["deliveryAttempts"], 2);
    assert_eq!(d["lastDeliveryOutcome"], "GenericError");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_starts_galaxy_create_and_galaxy_created_reaches_a_subscriber_once() {
    let cloud = Cloud::start();
    // The system topic exists from the start.
    let (s, t) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/galaxy-forge",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let mut receiver = Receiver::start(Handshake::Answer, vec![]).await;
    let mut sub = hook(&receiver.url);
    sub["filter"] = json!({"includedEventTypes": ["Galaxy.Created"]});
    cloud.subscribe("galaxy-forge", "watcher", sub).await;
    cloud
        .wait_state("galaxy-forge", "watcher", "Succeeded")
        .await;
    let (endpoint, key) = cloud.topic("requests", "EventGridSchema").await;
    cloud
        .subscribe("requests", "creator", json!({"destination": {"endpointType": "Orchestration", "properties": {"name": "Galaxy_Create"}}}))
        .await;
    for _ in 0..2 {
        assert_eq!(
            cloud
                .publish(&endpoint, &key, json!([event("r1", "Galaxy.Requested", 1)]))
                .await
                .0,
            200
        );
    }
    let (_, body) = receiver.next().await;
    let created = &body[0];
    assert_eq!(created["eventType"], "Galaxy.Created");
    assert_eq!(created["topic"], "galaxy-forge");
    assert_eq!(created["data"]["instanceId"], "eg:requests:creator:r1");
    let row_key = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["data"]["rowKey"], row_key.as_str());
    // Both deliveries of the request are done: still one galaxy, one event.
    cloud
        .get_until(
            "/api/events/topics/requests/events/r1/deliveries",
            "both deliveries of the request",
            |_, v| {
                let list = v["value"].as_array().unwrap();
                list.len() == 2 && list.iter().all(|d| d["state"] == "delivered")
            },
        )
        .await;
    let (_, galaxies) = cloud
        .call(reqwest::Method::GET, "/api/galaxies", None)
        .await;
    assert_eq!(galaxies["value"].as_array().map(Vec::len), Some(1));
    let text = cloud.metrics().await;
    assert!(
        text.contains("galaxy_events_published_total{topic=\"galaxy-forge\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_holds_back_only_its_own_deliveries() {
    let cloud = Cloud::start();
    let (endpoint, key) = cloud.topic("mixed", "EventGridSchema").await;
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let mut slow = Receiver::start_held(hold.clone()).await;
    let mut fast = Receiver::start(Handshake::Answer, vec![]).await;
    cloud.subscribe("mixed", "slow", hook(&slow.url)).await;
    cloud.subscribe("mixed", "fast", hook(&fast.url)).await;
    cloud.wait_state("mixed", "slow", "Succeeded").await;
    cloud.wait_state("mixed", "fast", "Succeeded").await;
    assert_eq!(
        cloud
            .publish(&endpoint, &key, json!([event("m1", "T", 1)]))
            .await
            .0,
        200
    );
    slow.next().await; // m1 reached the slow receiver, which does not answer
    fast.next().await;
    // The slow receiver still holds m1: m2 reaches the fast one anyway.
    assert_eq!(
        cloud
            .publish(&endpoint, &key, json!([event("m2", "T", 2)]))
            .await
            .0,
        200
    );
    let (_, b) = fast.next().await;
    assert_eq!(b[0]["id"], "m2");
    hold.add_permits(10);
    let (_, b) = slow.next().await;
    assert_eq!(b[0]["id"], "m2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_the_store_cannot_record_is_not_sent_again_meanwhile() {
    let (cloud, log) = Cloud::start_with_log();
    let (endpoint, key) = cloud.topic("unrecorded", "EventGridSchema").await;
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let mut receiver = Receiver::start_held(hold.clone()).await;
    cloud
        .subscribe("unrecorded", "held", hook(&receiver.url))
        .await;
    cloud.wait_state("unrecorded", "held", "Succeeded").await;
    assert_eq!(
        cloud
            .publish(&endpoint, &key, json!([event("u1", "T", 1)]))
            .await
            .0,
        200
    );
    let (_, b) = receiver.next().await;
    assert_eq!(b[0]["id"], "u1");
    // The store refuses to record attempts (another connection to the
    // router's database adds a trigger that aborts them) when the
    // receiver answers.
    let db = rusqlite::Connection::open(cloud._dir.path().join("events.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts
         BEGIN SELECT RAISE(ABORT, 'injected: attempts cannot be recorded'); END;",
    )
    .unwrap();
    hold.add_permits(100);
    // The fault lasts until the router has failed to record the attempt
    // three times: the event, delivered but not recorded, is not sent
    // again in the meantime (it stays in flight while the record is
    // retried).
    let mut failed = 0;
    while failed < 3 {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .expect("the router logs each record it could not make");
        failed += usize::from(line.contains("recording delivery attempts"));
    }
    db.execute_batch("DROP TRIGGER refuse_attempts").unwrap();
    let history = cloud
        .get_until(
            "/api/events/topics/unrecorded/events/u1/deliveries",
            "the attempt recorded once the store takes it",
            |_, v| v["value"][0]["state"] == "delivered",
        )
        .await;
    assert_eq!(
        history["value"][0]["attempts"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    assert!(
        receiver.got.try_recv().is_err(),
        "the event was sent again while its attempt could not be recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_are_swept_after_the_retention_and_still_counted() {
    let cloud = Cloud::start_with(tempfile::tempdir().unwrap(), &["--event-retention", "0s"]);
    let (endpoint, key) = cloud.topic("kept", "EventGridSchema").await;
    let mut receiver = Receiver::start(Handshake::Answer, vec![]).await;
    let mut ok = hook(&receiver.url);
    ok["filter"] = json!({"subjectBeginsWith": "/galaxies"});
    cloud.subscribe("kept", "good", ok).await;
    cloud.wait_state("kept", "good", "Succeeded").await;
    let failing = Receiver::start(Handshake::Answer, vec![400]).await;
    let mut bad = hook_keeping_dead_letters(&failing.url);
    bad["filter"] = json!({"subjectBeginsWith": "/dead"});
    cloud.subscribe("kept", "bad", bad).await;
    cloud.wait_state("kept", "bad", "Succeeded").await;
    let mut events: Vec<Value> = (0..5)
        .map(|i| event(&format!("k{i}"), "Galaxy.Created", i))
        .collect();
    let mut dead = event("d0", "Galaxy.Created", 9);
    dead["subject"] = json!("/dead/0");
    events.push(dead);
    assert_eq!(cloud.publish(&endpoint, &key, json!(events)).await.0, 200);
    for _ in 0..5 {
        receiver.next().await;
    }
    // Swept: the delivered events' records go...
    cloud
        .get_until(
            "/api/events/topics/kept/events/k4/deliveries",
            "the delivered event swept",
            |s, v| s == StatusCode::OK && v["value"].as_array().is_some_and(Vec::is_empty),
        )
        .await;
    // ...the dead letter (written when the failing receiver's 400 comes
    // back, which may be after the sweep above) stays until it is settled,
    // through a sweep that certainly ran after it (k5's)...
    cloud
        .get_until(
            "/api/events/topics/kept/eventSubscriptions/bad/deadLetters",
            "the dead letter recorded",
            |s, v| s == StatusCode::OK && v["value"][0]["event"]["id"] == "d0",
        )
        .await;
    let k5 = json!([event("k5", "Galaxy.Created", 5)]);
    assert_eq!(cloud.publish(&endpoint, &key, k5).await.0, 200);
    receiver.next().await;
    cloud
        .get_until(
            "/api/events/topics/kept/events/k5/deliveries",
            "the later delivered event swept",
            |s, v| s == StatusCode::OK && v["value"].as_array().is_some_and(Vec::is_empty),
        )
        .await;
    let (_, v) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/kept/eventSubscriptions/bad/deadLetters",
            None,
        )
        .await;
    assert_eq!(v["value"][0]["event"]["id"], "d0", "{v}");
    let (_, v) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/kept/events/d0/deliveries",
            None,
        )
        .await;
    assert_eq!(v["value"].as_array().map(Vec::len), Some(1), "{v}");
    // ...and the counters never go down.
    let text = cloud.metrics().await;
    for line in [
        "galaxy_events_published_total{topic=\"kept\"} 7",
        "galaxy_events_delivered_total{topic=\"kept\"} 6",
        "galaxy_events_dead_letters{topic=\"kept\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

/// Dead letters are listed a page at a time (on SQLite; the same on
/// PostgreSQL in tests/events_postgres.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged() {
    dead_letters_come_in_pages(&Cloud::start()).await;
}

/// A receiver at `/hook` that answers the validation handshake itself
/// (or, with `redirect_handshake`, redirects it too) and answers every
/// delivery with 307 to `to`.
async fn redirector(to: &str, redirect_handshake: bool) -> String {
    use axum::response::IntoResponse;
    let to = to.to_string();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::any(move |headers: axum::http::HeaderMap, body: String| {
            let to = to.clone();
            async move {
                let validation = headers.get("aeg-event-type").and_then(|v| v.to_str().ok())
                    == Some("SubscriptionValidation");
                if validation && !redirect_handshake {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let code = v[0]["data"]["validationCode"].clone();
                    return axum::Json(json!({ "validationResponse": code })).into_response();
                }
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, to)],
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_by_deliveries_or_handshakes() {
    // A receiver may not send the router elsewhere (e.g. to a metadata
    // address the subscription's URL check would have refused): a 3xx is
    // a failed attempt, and the target it names gets nothing.
    let cloud = Cloud::start();
    let (endpoint, key) = cloud.topic("redirects", "EventGridSchema").await;
    let mut target = Receiver::start(Handshake::Answer, vec![]).await;

    // The metadata address written as one number is still refused, and
    // nothing is stored.
    let (s, e) = cloud
        .call(
            reqwest::Method::PUT,
            "/api/events/topics/redirects/eventSubscriptions/metadata",
            Some(hook("http://2852039166/latest/meta-data")),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("link-local"),
        "{e}"
    );
    let (s, _) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/redirects/eventSubscriptions/metadata",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let handshake_redirect = redirector(&target.url, true).await;
    cloud
        .subscribe("redirects", "handshake", hook(&handshake_redirect))
        .await;
    let failed = cloud.wait_state("redirects", "handshake", "Failed").await;
    assert!(
        failed["properties"]["provisioningReason"]
            .as_str()
            .unwrap()
            .contains("307"),
        "{failed}"
    );

    let delivery_redirect = redirector(&target.url, false).await;
    let mut sub = hook_keeping_dead_letters(&delivery_redirect);
    sub["retryPolicy"] = json!({"maxDeliveryAttempts": 2, "eventTimeToLiveInMinutes": 1440});
    cloud.subscribe("redirects", "delivery", sub).await;
    cloud.wait_state("redirects", "delivery", "Succeeded").await;
    let (s, _) = cloud
        .publish(&endpoint, &key, json!([event("r1", "Galaxy.Created", 1)]))
        .await;
    assert_eq!(s, 200);
    let history = cloud
        .get_until(
            "/api/events/topics/redirects/events/r1/deliveries",
            "both attempts recorded",
            |_, v| {
                v["value"][0]["attempts"]
                    .as_array()
                    .is_some_and(|a| a.len() == 2)
            },
        )
        .await;
    let attempts = &history["value"][0]["attempts"];
    assert_eq!(attempts[0]["status"], 307, "{history}");
    assert_eq!(attempts[1]["status"], 307, "{history}");
    assert_eq!(history["value"][0]["state"], "dead", "{history}");
    assert!(
        target.got.try_recv().is_err(),
        "the redirect's target received a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_put_again_receives_nothing_until_its_new_handshake_passes() {
    events_wait_for_a_moved_subscription_s_new_handshake(&Cloud::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_are_dead_lettered_when_their_time_to_live_passes() {
    held_events_expire_with_their_time_to_live(&Cloud::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_deleted_with_their_subscription() {
    dead_letters_go_with_their_subscription(&Cloud::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_destination_a_failed_event_is_dropped() {
    without_a_dead_letter_destination_failures_are_dropped(&Cloud::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_validates_by_hand_with_the_url_only_it_was_sent() {
    let cloud = Cloud::start();
    let (endpoint, key) = cloud.topic("by-hand", "EventGridSchema").await;
    let mut receiver = Receiver::start(Handshake::Manual, vec![]).await;
    let path = "/api/events/topics/by-hand/eventSubscriptions/manual";
    let created = cloud
        .subscribe("by-hand", "manual", hook(&receiver.url))
        .await;
    assert_eq!(
        created["properties"]["provisioningState"],
        "AwaitingManualAction"
    );
    // The validation event carries the code and the URL to GET.
    let (headers, validation) = receiver.next().await;
    assert_eq!(headers["aeg-event-type"], "SubscriptionValidation");
    let code = validation[0]["data"]["validationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let url = validation[0]["data"]["validationUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.contains(&code), "{url}");
    // Whoever manages subscriptions never sees either: they could
    // otherwise validate a subscription aimed at a stranger.
    for v in [
        &created,
        &cloud.call(reqwest::Method::GET, path, None).await.1,
    ] {
        assert!(!v.to_string().contains(&code), "{v}");
    }
    // Published before the endpoint proved it wants events: not for it.
    assert_eq!(
        cloud
            .publish(&endpoint, &key, json!([event("m0", "Galaxy.Created", 1)]))
            .await
            .0,
        200
    );
    // A wrong code changes nothing; the right one (no key: the receiver
    // has none) activates the subscription, and events reach it.
    let http = cloud.http.clone();
    let get = move |u: String| {
        let sent = http.get(u).send();
        async move { sent.await.unwrap().status() }
    };
    assert_eq!(
        get(url.replace(&code, "wrong")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get(url.clone()).await, StatusCode::OK);
    cloud.wait_state("by-hand", "manual", "Succeeded").await;
    assert_eq!(
        cloud
            .publish(&endpoint, &key, json!([event("m1", "Galaxy.Created", 1)]))
            .await
            .0,
        200
    );
    let (headers, body) = receiver.next().await;
    assert_eq!(headers["aeg-event-type"], "Notification");
    assert_eq!(body[0]["id"], "m1");
    assert_eq!(
        get(url.clone()).await,
        StatusCode::OK,
        "validating twice is fine"
    );
    // Put again at the same endpoint (here with a new retry policy): no
    // new handshake, so it never stops taking events (before, one put
    // that way went back to AwaitingManualAction and the events
    // published until someone validated again were never delivered).
    let mut same = hook(&receiver.url);
    same["retryPolicy"] = json!({"maxDeliveryAttempts": 3});
    let kept = cloud.subscribe("by-hand", "manual", same).await;
    assert_eq!(
        kept["properties"]["provisioningState"], "Succeeded",
        "{kept}"
    );
    assert_eq!(kept["properties"]["retryPolicy"]["maxDeliveryAttempts"], 3);
    assert_eq!(
        cloud
            .publish(&endpoint, &key, json!([event("m2", "Galaxy.Created", 2)]))
            .await
            .0,
        200
    );
    let (headers, body) = receiver.next().await;
    assert_eq!(headers["aeg-event-type"], "Notification");
    assert_eq!(body[0]["id"], "m2");
    // Another endpoint takes a new handshake: the old URL does not
    // validate it.
    cloud
        .subscribe(
            "by-hand",
            "manual",
            hook(&format!("{}?moved=1", receiver.url)),
        )
        .await;
    let (_, again) = receiver.next().await;
    assert_ne!(
        again[0]["data"]["validationCode"].as_str(),
        Some(code.as_str())
    );
    assert_eq!(get(url).await, StatusCode::BAD_REQUEST);
    let (_, sub) = cloud.call(reqwest::Method::GET, path, None).await;
    assert_eq!(
        sub["properties"]["provisioningState"],
        "AwaitingManualAction"
    );
}
