//! What real Durable Functions client libraries send, request by request,
//! against the real `galaxy-cloud` binary (the reference's "What real
//! client libraries send"): trailing-slash listing and purge, the starter
//! under the management path, boolean spellings, `+` as a space, the
//! ignored `taskHub`/`connection`/`connectionName`, empty bodies with a
//! JSON content type, and the status keys clients require.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

mod common;

use common::router::{Cloud, KEY, MASTER};

const M: &str = "/runtime/webhooks/durabletask";
/// What the client libraries' templates carry along.
const HUB: &str = "taskHub=GalaxyHub&connection=Storage&connectionName=Storage";

async fn send(
    cloud: &Cloud,
    method: Method,
    path_and_query: &str,
    key: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    let mut r = cloud.http.request(
        method,
        format!("{}{path_and_query}{sep}code={key}", cloud.base),
    );
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the status until `done` holds (deadline 30 s).
async fn status_until(cloud: &Cloud, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = send(
            cloud,
            Method::GET,
            &format!("{M}/instances/{id}?{HUB}"),
            KEY,
            None,
        )
        .await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < until, "{id}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_as_the_client_libraries_send_them() {
    let cloud = Cloud::start_with(tempfile::tempdir().unwrap(), &["--samples"]);

    // The starter under the management path (the extension's creation
    // template), with an empty JSON-string body as startNew sends it.
    let (s, v) = send(
        &cloud,
        Method::POST,
        &format!("{M}/orchestrators/Sample_WaitForEvent/compat-1?{HUB}"),
        KEY,
        Some("\"\""),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["id"], "compat-1");
    assert!(
        v["rewindPostUri"]
            .as_str()
            .is_some_and(|u| u.contains("/instances/compat-1/rewind?reason={text}")),
        "{v}"
    );
    let (s, v) = send(
        &cloud,
        Method::POST,
        &format!("{M}/orchestrators/Galaxy_Create?{HUB}"),
        KEY,
        Some(""),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let done = v["id"].as_str().unwrap().to_string();

    // Every status key is there, null where empty, whatever the spelling
    // of the booleans.
    let running = status_until(&cloud, "compat-1", |v| v["runtimeStatus"] == "Running").await;
    for key in [
        "name",
        "instanceId",
        "createdTime",
        "lastUpdatedTime",
        "runtimeStatus",
        "input",
        "output",
        "customStatus",
    ] {
        assert!(running.get(key).is_some(), "{key} missing: {running}");
    }
    assert_eq!(running["output"], Value::Null);
    for spelling in ["True", "TRUE", "true", "1"] {
        let (s, v) = send(
            &cloud,
            Method::GET,
            &format!(
                "{M}/instances/compat-1?{HUB}&showHistory={spelling}&showInput={}",
                spelling
                    .to_lowercase()
                    .replace("true", "false")
                    .replace('1', "0")
            ),
            KEY,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{spelling}: {v}");
        assert!(
            v["historyEvents"].as_array().is_some_and(|h| !h.is_empty()),
            "{spelling}: {v}"
        );
        assert_eq!(
            v["input"],
            Value::Null,
            "showInput false spelled from {spelling}: {v}"
        );
    }

    // Listing with the trailing slash, as the clients send it.
    let (s, v) = send(
        &cloud,
        Method::GET,
        &format!("{M}/instances/?{HUB}&showInput=True"),
        KEY,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instanceId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"compat-1") && ids.contains(&done.as_str()),
        "{v}"
    );

    // Suspend, resume and terminate with an empty JSON body and `+` for
    // spaces in the reason.
    for (op, status) in [("suspend", "Suspended"), ("resume", "Running")] {
        let (s, v) = send(
            &cloud,
            Method::POST,
            &format!("{M}/instances/compat-1/{op}?reason=by+the+client&{HUB}"),
            KEY,
            Some(""),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{op}: {v}");
        status_until(&cloud, "compat-1", |v| v["runtimeStatus"] == status).await;
    }
    let (s, v) = send(
        &cloud,
        Method::POST,
        &format!("{M}/instances/compat-1/terminate?reason=enough+now%21&{HUB}"),
        KEY,
        Some(""),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let ended = status_until(&cloud, "compat-1", |v| v["runtimeStatus"] == "Terminated").await;
    assert_eq!(ended["output"], "enough now!", "{ended}");
    status_until(&cloud, &done, |v| v["runtimeStatus"] == "Completed").await;

    // Purge by filter with the trailing slash: the master key's.
    let from = "createdTimeFrom=2020-01-01T00:00:00.000Z";
    let (s, v) = send(
        &cloud,
        Method::DELETE,
        &format!("{M}/instances/?{HUB}&{from}"),
        KEY,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = send(
        &cloud,
        Method::DELETE,
        &format!("{M}/instances/?{HUB}&{from}&runtimeStatus=Completed,Terminated"),
        MASTER,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"instancesDeleted": 2}));
}
