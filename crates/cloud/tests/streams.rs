//! The event streams in-process: a subscriber that falls behind the
//! engine's update channel is told to re-sync (and the single-instance
//! stream re-sends the status), instead of silently missing changes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::FUNCTION_KEY;
use durable::{EngineConfig, InstanceId, RuntimeStatus};
use http_body_util::BodyExt;

const M: &str = "/runtime/webhooks/durabletask";

/// Reads SSE frames until `want` events (by name) were seen; returns the
/// event names in order.
async fn events(body: &mut Body, want: usize) -> Vec<(String, serde_json::Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_string);
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data) {
                out.push((name, serde_json::from_str(data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_to_resync() {
    // The smallest update channel the engine allows (16 updates).
    let app = common::start_with(
        true,
        EngineConfig {
            update_capacity: 16,
            ..EngineConfig::default()
        },
    );
    let engine = app.state.engine.clone();
    let watched = InstanceId::new("watched").unwrap();
    engine
        .start_orchestration(cloud::samples::WAIT_FOR_EVENT, Some(watched.clone()), ())
        .await
        .unwrap();
    let mut updates = engine.subscribe();
    let open = |uri: String| {
        Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("x-functions-key", FUNCTION_KEY)
            .body(Body::empty())
            .unwrap()
    };
    let all = app.send(open(format!("{M}/stream"))).await;
    let one = app
        .send(open(format!("{M}/instances/watched/stream")))
        .await;
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(one.status(), StatusCode::OK);
    let mut all = all.into_body();
    let mut one = one.into_body();
    let first = events(&mut one, 1).await;
    assert_eq!(first[0].0, "status");

    // Far more updates than the channel holds, while nobody reads the
    // streams: 20 instances of ~5 updates each.
    let mut ids = HashSet::new();
    for _ in 0..20 {
        ids.insert(
            engine
                .start_orchestration("Galaxy_Create", None, ())
                .await
                .unwrap(),
        );
    }
    while !ids.is_empty() {
        match updates.recv().await {
            Ok(u) if u.runtime_status == RuntimeStatus::Completed => {
                ids.remove(&u.instance_id);
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // This test's own receiver may lag too: re-read the store.
                let mut left = HashSet::new();
                for id in ids {
                    let s = engine.status(&id, false).await.unwrap().unwrap();
                    if s.runtime_status != RuntimeStatus::Completed {
                        left.insert(id);
                    }
                }
                ids = left;
            }
            Err(e) => panic!("{e}"),
        }
    }

    // The global stream says it missed updates.
    let seen = events(&mut all, 1).await;
    assert_eq!(seen[0].0, "resync", "{seen:?}");
    assert!(seen[0].1["missed"].as_u64().unwrap() > 0);
    // The instance stream says so too, then re-sends the current status.
    let seen = events(&mut one, 2).await;
    assert_eq!(seen[0].0, "resync", "{seen:?}");
    assert_eq!(seen[1].0, "status", "{seen:?}");
    assert_eq!(seen[1].1["instanceId"], "watched");
    assert_eq!(seen[1].1["runtimeStatus"], "Running");

    drop((all, one));
    app.shutdown().await;
}
