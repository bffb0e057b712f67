//! The system topic (`galaxy-forge`) end to end, against the real
//! `galaxy-cloud` binary and a real webhook receiver: the engine's
//! lifecycle events and sync's galaxy events arrive, one event per change,
//! across a SIGKILL (their outbox rows are written with the change and
//! relayed after the restart).

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{json, Value};

mod common;

use common::router::*;

/// Events received per (instance or subject, event type), by id.
type Seen = BTreeMap<(String, String), BTreeMap<String, Value>>;

/// Takes deliveries from `receiver` into `seen` (keyed by `key` of each
/// event) until `done` holds.
async fn collect(
    receiver: &mut Receiver,
    seen: &mut Seen,
    key: impl Fn(&Value) -> String,
    done: impl Fn(&Seen) -> bool,
) {
    while !done(seen) {
        let (_, body) = receiver.next().await;
        for e in body.as_array().expect("a batch") {
            seen.entry((key(e), e["eventType"].as_str().unwrap().to_string()))
                .or_default()
                .insert(e["id"].as_str().unwrap().to_string(), e.clone());
        }
    }
}

async fn watch(cloud: &Cloud, name: &str, types: &[&str]) -> Receiver {
    let receiver = Receiver::start(Handshake::Answer, vec![]).await;
    let mut sub = hook(&receiver.url);
    sub["filter"] = json!({ "includedEventTypes": types });
    sub["destination"]["properties"]["maxEventsPerBatch"] = json!(50);
    cloud.subscribe("galaxy-forge", name, sub).await;
    cloud.wait_state("galaxy-forge", name, "Succeeded").await;
    receiver
}

async fn start(cloud: &Cloud, orchestration: &str) -> String {
    let (s, v) = cloud
        .call(
            Method::POST,
            &format!("/api/orchestrators/{orchestration}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_orchestration_start_and_end_is_one_event_across_a_sigkill() {
    let cloud = Cloud::start_with(tempfile::tempdir().unwrap(), &["--samples"]);
    let mut receiver = watch(
        &cloud,
        "lifecycle",
        &[
            "Orchestration.Started",
            "Orchestration.Completed",
            "Orchestration.Failed",
            "Orchestration.Terminated",
        ],
    )
    .await;
    const N: usize = 150;
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(start(&cloud, "Galaxy_Create").await);
    }
    // Killed with instances running and outbox rows not yet relayed.
    let cloud = cloud.kill_and_restart(&["--samples"]);
    let failing = start(&cloud, "Sample_Fail").await;
    let waiting = start(&cloud, "Sample_WaitForEvent").await;
    let mut seen = Seen::new();
    let instance = |e: &Value| e["data"]["instanceId"].as_str().unwrap().to_string();
    let has = |seen: &Seen, id: &str, t: &str| seen.contains_key(&(id.to_string(), t.to_string()));
    collect(&mut receiver, &mut seen, instance, |seen| {
        has(seen, &waiting, "Orchestration.Started")
    })
    .await;
    let (s, v) = cloud
        .call(
            Method::POST,
            &format!("/runtime/webhooks/durabletask/instances/{waiting}/terminate?reason=enough"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    collect(&mut receiver, &mut seen, instance, |seen| {
        ids.iter().all(|id| {
            has(seen, id, "Orchestration.Completed") && has(seen, id, "Orchestration.Started")
        }) && has(seen, &failing, "Orchestration.Failed")
            && has(seen, &waiting, "Orchestration.Terminated")
    })
    .await;
    // One event (one id) per change; a change delivered twice (at least
    // once) comes under the same id.
    for ((id, t), events) in &seen {
        assert_eq!(events.len(), 1, "{id} {t}: {events:?}");
    }
    let expected = 2 * N + 4;
    assert_eq!(
        seen.len(),
        expected,
        "no event for a change that did not happen"
    );

    // The payload: name, execution, status, and why it failed.
    let one = |id: &str, t: &str| {
        seen[&(id.to_string(), t.to_string())]
            .values()
            .next()
            .unwrap()
            .clone()
    };
    let failed = one(&failing, "Orchestration.Failed");
    assert_eq!(failed["topic"], "galaxy-forge");
    assert_eq!(
        failed["subject"],
        format!("/orchestrations/Sample_Fail/{failing}")
    );
    assert_eq!(failed["data"]["name"], "Sample_Fail");
    assert_eq!(failed["data"]["runtimeStatus"], "Failed");
    assert!(
        failed["data"]["failure"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fails on purpose")),
        "{failed}"
    );
    let completed = one(&ids[0], "Orchestration.Completed");
    assert_eq!(completed["data"]["name"], "Galaxy_Create");
    assert!(completed["data"].get("failure").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_changes_are_galaxy_events() {
    let cloud = Cloud::start();
    let mut receiver = watch(
        &cloud,
        "galaxies",
        &["Galaxy.Created", "Galaxy.Renamed", "Galaxy.Deleted"],
    )
    .await;
    let (s, creds) = cloud
        .call(
            Method::POST,
            "/api/players",
            Some(json!({"device_name": "laptop"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{creds}");
    let token = creds["token"].as_str().unwrap();
    let push = |mutations: Value| {
        let r = cloud
            .http
            .post(format!("{}/api/sync/push", cloud.base))
            .bearer_auth(token)
            .json(&json!({"client_id": "c1", "mutations": mutations}));
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let g = "6f1c1d2e-7a8b-4c9d-8e0f-112233445566";
    let body = |name: &str| {
        json!({"name": name, "coords": {"x": 1, "y": 2, "z": 3},
               "createdAt": "2026-12-01T10:00:00Z", "instanceId": "local-1"})
    };
    push(json!([
        {"mutation_id": 1, "op": "put", "entity_id": g, "base_version": 0, "body": body("Vega")},
        {"mutation_id": 2, "op": "put", "entity_id": g, "base_version": 1, "body": body("Vega II")},
    ]))
    .await;
    // A resend of the same mutations changes nothing and makes no event.
    push(json!([
        {"mutation_id": 2, "op": "put", "entity_id": g, "base_version": 1, "body": body("Vega II")},
        {"mutation_id": 3, "op": "delete", "entity_id": g, "base_version": 2},
    ]))
    .await;
    let mut seen = Seen::new();
    let key = |e: &Value| e["subject"].as_str().unwrap().to_string();
    collect(&mut receiver, &mut seen, key, |seen| seen.len() == 3).await;
    let subject = format!("/galaxies/{g}");
    let ids = |t: &str| -> BTreeSet<String> {
        seen[&(subject.clone(), t.to_string())]
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(ids("Galaxy.Created"), BTreeSet::from([g.to_string()]));
    assert_eq!(ids("Galaxy.Renamed"), BTreeSet::from([format!("{g}:2")]));
    assert_eq!(ids("Galaxy.Deleted"), BTreeSet::from([format!("{g}:3")]));
    // The rename's data says what the galaxy became, and whose it is.
    let renamed = &seen[&(subject.clone(), "Galaxy.Renamed".to_string())][&format!("{g}:2")];
    assert_eq!(renamed["data"]["name"], "Vega II");
    assert_eq!(renamed["data"]["playerId"], creds["player_id"]);
    assert_eq!(renamed["data"]["origin"], "laptop");
    assert_eq!(renamed["data"]["version"], 2);
}
