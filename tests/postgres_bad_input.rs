//! Bad input on PostgreSQL: PostgreSQL's `text` cannot hold a NUL and its
//! `jsonb` refuses the escape `\u0000`, where SQLite takes both. Every
//! route of a real `galaxy-cloud` on a throwaway cluster gets NULs in its
//! path segments, query parameters and JSON strings: each answers a client
//! error with the JSON error body (or takes the request when the NUL is
//! data it can keep), never a server error, and nothing stored is harmed:
//! the player's good galaxy is still pushed, renamed and pulled after.

use durable::testing::PgCluster;
use reqwest::Method;
use serde_json::{json, Value};

mod common;

use common::router::*;

const ENTITY: &str = "0190d7a0-0000-7000-8000-000000000001";

fn galaxy_body(instance_id: &str, name: &str) -> Value {
    json!({"name": name, "coords": {"x": 1, "y": 2, "z": 3},
           "createdAt": "2026-12-01T10:00:00Z", "instanceId": instance_id})
}

fn push(client_id: &str, first: u64, bodies: &[(&str, u64, Value)]) -> Value {
    let mutations: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, (entity, base, body))| {
            json!({"mutation_id": first + i as u64, "op": "put", "entity_id": entity,
                   "base_version": base, "body": body})
        })
        .collect();
    json!({"client_id": client_id, "mutations": mutations})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nuls_anywhere_get_client_errors_and_harm_nothing() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let cloud = Cloud::start_with(tempfile::tempdir().unwrap(), &["--database-url", &url]);
    let http = reqwest::Client::new();
    let (endpoint, topic_key) = cloud.topic("nul", "EventGridSchema").await;
    let registered: Value = http
        .post(format!("{}/api/players", cloud.base))
        .json(&json!({"device_name": "probe"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {registered}"))
        .to_string();

    // The good galaxy first: later bad pushes name it too.
    let send = |method: Method, path: String, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{}{path}", cloud.base))
            .header("x-functions-key", KEY)
            .bearer_auth(&token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }
    };
    let (s, t) = send(
        Method::POST,
        "/api/sync/push".into(),
        Some(push("probe", 1, &[(ENTITY, 0, galaxy_body("i1", "Vega"))])),
    )
    .await;
    assert_eq!(s, 200, "{t}");

    let durable = "/runtime/webhooks/durabletask/instances";
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("{durable}/a%00b"), None),
        (
            Method::GET,
            format!("{durable}?instanceIdPrefix=a%00b"),
            None,
        ),
        (
            Method::GET,
            format!("{durable}?runtimeStatus=Running%00"),
            None,
        ),
        (Method::GET, format!("{durable}?createdTimeFrom=%00"), None),
        (
            Method::GET,
            format!("{durable}?continuationToken=%00"),
            None,
        ),
        (Method::DELETE, format!("{durable}/a%00b"), None),
        (Method::DELETE, format!("{durable}?runtimeStatus=%00"), None),
        (
            Method::DELETE,
            format!("{durable}?instanceIdPrefix=a%00&runtimeStatus=Completed"),
            None,
        ),
        (Method::GET, format!("{durable}/a%00b/stream"), None),
        (
            Method::GET,
            "/api/orchestrators/Galaxy_Create/a%00b".into(),
            None,
        ),
        (
            Method::POST,
            format!("{durable}/a%00b/raiseEvent/e%00v"),
            Some(json!({"x": "\u{0}"})),
        ),
        (
            Method::POST,
            format!("{durable}/a%00b/terminate?reason=r%00"),
            None,
        ),
        (
            Method::POST,
            format!("{durable}/a%00b/suspend?reason=r%00"),
            None,
        ),
        (
            Method::POST,
            format!("{durable}/a%00b/rewind?reason=r%00"),
            None,
        ),
        (Method::POST, format!("{durable}/a%00b/restart"), None),
        (
            Method::POST,
            "/api/orchestrators/Galaxy_Create%00".into(),
            None,
        ),
        (
            Method::POST,
            "/api/orchestrators/Galaxy_Create/a%00b".into(),
            None,
        ),
        (
            Method::POST,
            "/api/orchestrators/Galaxy_Create".into(),
            Some(json!({"name": "\u{0}"})),
        ),
        (Method::GET, "/api/galaxies?namePrefix=a%00".into(), None),
        (Method::GET, "/api/galaxies/p%00/r%00".into(), None),
        (
            Method::PUT,
            "/api/events/topics/a%00b".into(),
            Some(json!({"inputSchema": "EventGridSchema"})),
        ),
        (Method::GET, "/api/events/topics/nul%00".into(), None),
        (
            Method::PUT,
            "/api/events/topics/nul/eventSubscriptions/s%00".into(),
            Some(hook("http://127.0.0.1:9/\u{0}")),
        ),
        (Method::DELETE, "/api/events/topics/nul%00".into(), None),
        (
            Method::POST,
            "/api/events/topics/nul%00/listKeys".into(),
            None,
        ),
        (
            Method::POST,
            "/api/events/topics/nul%00/regenerateKey".into(),
            Some(json!({"keyName": "key1"})),
        ),
        (
            Method::GET,
            "/api/events/topics/nul%00/eventSubscriptions".into(),
            None,
        ),
        (
            Method::GET,
            "/api/events/topics/nul/eventSubscriptions/s%00".into(),
            None,
        ),
        (
            Method::DELETE,
            "/api/events/topics/nul/eventSubscriptions/s%00".into(),
            None,
        ),
        (
            Method::POST,
            "/api/events/topics/nul/eventSubscriptions/s%00/redeliver".into(),
            None,
        ),
        (
            Method::GET,
            "/api/events/topics/nul/eventSubscriptions/s%00/deadLetters".into(),
            None,
        ),
        (
            Method::GET,
            "/api/events/topics/nul/eventSubscriptions/s%00/validate?validationCode=x".into(),
            None,
        ),
        (
            Method::GET,
            "/api/events/topics/nul/events/e%00/deliveries".into(),
            None,
        ),
        (
            Method::POST,
            "/api/events/topics/nul%00/events".into(),
            Some(json!([])),
        ),
        (
            Method::GET,
            "/api/events/topics/nul/eventSubscriptions/s/deadLetters?after=%00".into(),
            None,
        ),
        (
            Method::GET,
            "/api/events/topics/nul/eventSubscriptions/s/validate?validationCode=%00".into(),
            None,
        ),
        (
            Method::POST,
            "/api/players".into(),
            Some(json!({"device_name": "a\u{0}"})),
        ),
        (
            Method::POST,
            "/api/players/devices".into(),
            Some(json!({"code": "K7QF\u{0}9M2D"})),
        ),
        (Method::DELETE, "/api/players/devices/a%00".into(), None),
        (Method::GET, "/api/sync/pull?client_id=a%00".into(), None),
        (
            Method::GET,
            "/api/sync/pull?client_id=probe&cursor=%00".into(),
            None,
        ),
        (
            Method::POST,
            "/api/sync/push".into(),
            Some(push("p\u{0}", 1, &[(ENTITY, 1, galaxy_body("i1", "Vega"))])),
        ),
        (
            Method::POST,
            "/api/sync/push".into(),
            Some(push(
                "probe",
                2,
                &[(ENTITY, 1, galaxy_body("i\u{0}", "Vega"))],
            )),
        ),
        (
            Method::POST,
            "/api/sync/push".into(),
            Some(push(
                "probe",
                2,
                &[(
                    "0190d7a0-0000-7000-8000-00000000000\u{0}",
                    0,
                    galaxy_body("i2", "Deneb"),
                )],
            )),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body) in cases {
        let (status, text) = send(method.clone(), path.clone(), body).await;
        let clear = match status {
            200..=299 => true,
            400..=499 => serde_json::from_str::<Value>(&text)
                .is_ok_and(|v| v["error"]["code"].is_string() && v["error"]["message"].is_string()),
            _ => false,
        };
        if !clear {
            wrong.push(format!("{method} {path}: {status} {text}"));
        }
    }
    // Publishing: a NUL in each field of an event on its own.
    for (field, value) in [
        ("id", json!("e\u{0}")),
        ("subject", json!("/s\u{0}")),
        ("eventType", json!("T\u{0}")),
        ("data", json!({"n\u{0}": "\u{0}"})),
        ("dataVersion", json!("1\u{0}")),
    ] {
        let mut e = event("fine", "Galaxy.Created", 1);
        e[field] = value;
        let (s, t) = cloud.publish(&endpoint, &topic_key, json!([e])).await;
        if !(200..300).contains(&s) && !(400..500).contains(&s) {
            wrong.push(format!("publish with a NUL in {field}: {s} {t}"));
        }
    }
    assert!(wrong.is_empty(), "server errors:\n{}", wrong.join("\n"));

    // Nothing stored was harmed: the galaxy is renamed and pulled.
    let (s, t) = send(Method::GET, "/api/sync/pull?client_id=probe".into(), None).await;
    assert_eq!(s, 200, "{t}");
    let pulled: Value = serde_json::from_str(&t).unwrap();
    let last = pulled["last_mutation_id"].as_u64().unwrap();
    let (s, t) = send(
        Method::POST,
        "/api/sync/push".into(),
        Some(push(
            "probe",
            last + 1,
            &[(ENTITY, 1, galaxy_body("i1", "Vega II"))],
        )),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    // Another client of the player (this one's own writes are not sent
    // back to it) pulls the renamed galaxy.
    let (s, t) = send(Method::GET, "/api/sync/pull?client_id=other".into(), None).await;
    assert_eq!(s, 200, "{t}");
    assert!(t.contains("Vega II"), "{t}");
}
