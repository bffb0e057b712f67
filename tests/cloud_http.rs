//! End-to-end tests of the real `galaxy-cloud` binary: each test starts it
//! on `127.0.0.1:0` with a temp data dir, given keys and the sample
//! orchestrations, reads the bound address from its first stdout line, and
//! drives it over HTTP with reqwest. Waits are driven by the server's own
//! event stream (or the process exit), never by sleeps.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::sse::Sse;
use common::{spawn, wait_listening};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FUNCTION_KEY: &str = "e2e-function-key-000001";
const MASTER_KEY: &str = "e2e-master-key-0000001";
const M: &str = "/runtime/webhooks/durabletask";
/// Longest wait for anything (a start, an event, an exit) before failing.
const WAIT: Duration = Duration::from_secs(30);

struct Server {
    /// `None` once a test took the process to end it itself.
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start() -> Server {
    start_with_master(MASTER_KEY)
}

/// A server of a deployment whose master key is `master`.
fn start_with_master(master: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn(
        dir.path(),
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            master,
            "--samples",
        ],
    );
    let (_, base) = wait_listening(&lines);
    Server {
        child: Some(child),
        lines,
        base,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the function key in the header.
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("x-functions-key", FUNCTION_KEY)
    }

    async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        self.req(method, path).send().await.expect("request")
    }

    /// Starts `name` (optionally under `id`); returns the check-status payload.
    async fn start(&self, name: &str, id: Option<&str>, input: Value) -> Value {
        let path = match id {
            Some(id) => format!("/api/orchestrators/{name}/{id}"),
            None => format!("/api/orchestrators/{name}"),
        };
        let r = self
            .req(Method::POST, &path)
            .json(&input)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "start {name}");
        r.json().await.unwrap()
    }

    async fn status(&self, id: &str, query: &str) -> (StatusCode, Value) {
        let r = self
            .send(Method::GET, &format!("{M}/instances/{id}?{query}"))
            .await;
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    async fn stream(&self, path: &str) -> Sse {
        let r = self.send(Method::GET, path).await;
        assert_eq!(r.status(), StatusCode::OK, "stream {path}");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Sse::new(r)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn is_iso_utc(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && t.ends_with('Z')
}

fn history_types(status: &Value) -> Vec<String> {
    status["historyEvents"]
        .as_array()
        .expect("historyEvents")
        .iter()
        .map(|e| e["EventType"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn seed_flow_start_follow_status_uri_then_the_galaxy_is_listed_and_fetchable() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;

    let r = server
        .req(Method::POST, "/api/orchestrators/Galaxy_Create")
        .json(&json!({"player": "ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "10");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let payload: Value = r.json().await.unwrap();
    let id = payload["id"].as_str().unwrap().to_string();
    let instance = format!("{}{M}/instances/{id}", server.base);
    let code = format!("code={FUNCTION_KEY}");
    assert_eq!(payload["statusQueryGetUri"], format!("{instance}?{code}"));
    assert_eq!(location, format!("{instance}?{code}"));
    assert_eq!(
        payload["sendEventPostUri"],
        format!("{instance}/raiseEvent/{{eventName}}?{code}")
    );
    assert_eq!(
        payload["terminatePostUri"],
        format!("{instance}/terminate?reason={{text}}&{code}")
    );
    assert_eq!(
        payload["purgeHistoryDeleteUri"],
        format!("{instance}?{code}")
    );
    assert_eq!(
        payload["restartPostUri"],
        format!("{instance}/restart?{code}")
    );
    assert_eq!(
        payload["suspendPostUri"],
        format!("{instance}/suspend?reason={{text}}&{code}")
    );
    assert_eq!(
        payload["resumePostUri"],
        format!("{instance}/resume?reason={{text}}&{code}")
    );

    // Follow statusQueryGetUri exactly as given (the key rides in it) until
    // 200; after each 202, wait for the instance's next change.
    let status_uri = payload["statusQueryGetUri"].as_str().unwrap().to_string();
    let status = loop {
        let r = server.client.get(&status_uri).send().await.unwrap();
        match r.status() {
            StatusCode::OK => break r.json::<Value>().await.unwrap(),
            StatusCode::ACCEPTED => {
                assert_eq!(r.headers()["retry-after"], "5");
                assert_eq!(r.headers()["location"].to_str().unwrap(), status_uri);
                events.next_for(&id).await;
            }
            other => panic!("status answered {other}"),
        }
    };
    assert_eq!(status["runtimeStatus"], "Completed");
    assert_eq!(status["output"], "Galaxy created!");
    assert_eq!(status["input"], json!({"player": "ada"}));
    assert_eq!(status["name"], "Galaxy_Create");
    assert_eq!(status["instanceId"], id.as_str());

    // The galaxy is listed (walk the pages one row at a time) and
    // fetchable by its keys with an ETag.
    let mut token: Option<String> = None;
    let mut mine = Vec::new();
    loop {
        let mut req = server.req(Method::GET, "/api/galaxies?top=1");
        if let Some(t) = &token {
            req = req.header("x-ms-continuation-token", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        token = r
            .headers()
            .get("x-ms-continuation-token")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Value = r.json().await.unwrap();
        for g in page["value"].as_array().unwrap() {
            if g["InstanceId"] == id.as_str() {
                mine.push(g.clone());
            }
        }
        if token.is_none() {
            break;
        }
    }
    assert_eq!(mine.len(), 1, "exactly one galaxy row for the instance");
    let listed = &mine[0];
    let name = listed["Name"].as_str().unwrap();
    assert!(!name.is_empty());
    let r = server
        .send(
            Method::GET,
            &format!(
                "/api/galaxies/{}/{}",
                listed["PartitionKey"].as_str().unwrap(),
                listed["RowKey"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let fetched: Value = r.json().await.unwrap();
    assert_eq!(&fetched, listed);
    assert_eq!(fetched["odata.etag"], etag.as_str());
    for key in [
        "PartitionKey",
        "RowKey",
        "Timestamp",
        "Name",
        "X",
        "Y",
        "Z",
        "InstanceId",
    ] {
        assert!(fetched.get(key).is_some(), "entity lacks {key}");
    }
    let r = server
        .req(
            Method::GET,
            &format!(
                "/api/galaxies/galaxies/{}",
                fetched["RowKey"].as_str().unwrap()
            ),
        )
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // The name prefix filter finds it.
    let prefix: String = name.chars().take(3).collect();
    let r = server
        .send(
            Method::GET,
            &format!("/api/galaxies?namePrefix={prefix}&top=1000"),
        )
        .await;
    let page: Value = r.json().await.unwrap();
    let rows = page["value"].as_array().unwrap();
    assert!(rows.iter().any(|g| g["InstanceId"] == id.as_str()));
    assert!(rows
        .iter()
        .all(|g| g["Name"].as_str().unwrap().starts_with(&prefix)));
}

#[tokio::test]
async fn starter_errors_singletons_and_the_wait_mode() {
    let server = start();
    let post = |path: &str, body: &'static str| {
        server
            .req(Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    };
    let error_code = |v: &Value| v["error"]["code"].as_str().unwrap().to_string();

    let r = post("/api/orchestrators/Galaxy_Create", "{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r.json().await.unwrap()), "InvalidJson");

    let r = post("/api/orchestrators/No_Such_Thing", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r.json().await.unwrap()), "UnknownOrchestration");

    let r = post("/api/orchestrators/Galaxy_Create/bad%23id", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r.json().await.unwrap()), "InvalidInstanceId");

    let big = vec![b'1'; (1 << 20) + 1];
    // Its own client: the server answers 413 without reading the whole
    // body and closes that connection, which a shared pool could reuse.
    let r = reqwest::Client::new()
        .post(server.url("/api/orchestrators/Galaxy_Create"))
        .header("x-functions-key", FUNCTION_KEY)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&r.json().await.unwrap()), "PayloadTooLarge");

    // Singleton: a live instance with the id is a 409.
    server
        .start("Sample_WaitForEvent", Some("singleton"), json!(null))
        .await;
    let r = post("/api/orchestrators/Sample_WaitForEvent/singleton", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(&r.json().await.unwrap()), "InstanceExists");

    // The wait mode: finished in time -> 200 with the output.
    let r = post(
        "/api/orchestrators/Galaxy_Create/waited?timeout=20&pollingInterval=1",
        "{}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Galaxy created!"));
    // A finished id can be started again.
    let r = post("/api/orchestrators/Galaxy_Create/waited?timeout=20", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Not finished in time -> the 202 check-status answer.
    let r = post(
        "/api/orchestrators/Sample_WaitForEvent/slow?timeout=0.2",
        "",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "10");
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "slow");

    let r = post("/api/orchestrators/Galaxy_Create?timeout=soon", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn status_codes_fields_history_and_failure_modes() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;

    // Live: 202 with Location and Retry-After 5.
    server
        .start("Sample_WaitForEvent", Some("live-1"), json!({"n": 1}))
        .await;
    events.until("live-1", "Running").await;
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances/live-1?showHistory=true"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(
        r.headers()["location"],
        format!("{}{M}/instances/live-1?showHistory=true", server.base).as_str()
    );
    let live: Value = r.json().await.unwrap();
    assert_eq!(live["runtimeStatus"], "Running");
    assert_eq!(live["customStatus"], "waiting for Approval");
    assert_eq!(live["input"], json!({"n": 1}));
    assert_eq!(live["output"], Value::Null);
    assert_eq!(history_types(&live)[0], "ExecutionStarted");
    assert!(live["historyEventCount"].as_u64().unwrap() >= 1);
    assert!(live["historyBytes"].as_u64().unwrap() > 0);
    for field in ["createdTime", "lastUpdatedTime"] {
        let t = live[field].as_str().unwrap();
        assert!(is_iso_utc(t), "{field}={t} is not ISO 8601 UTC");
    }

    // showInput=false hides the input; history only when asked.
    let (_, hidden) = server.status("live-1", "showInput=false").await;
    assert_eq!(hidden["input"], Value::Null);
    assert!(hidden.get("historyEvents").is_none());

    // Completed: 200; results in history only with showHistoryOutput.
    let done = server
        .start("Galaxy_Create", Some("done-1"), json!(null))
        .await;
    assert_eq!(done["id"], "done-1");
    events.until("done-1", "Completed").await;
    let (code, body) = server.status("done-1", "showHistory=true").await;
    assert_eq!(code, StatusCode::OK);
    let types = history_types(&body);
    assert_eq!(types.first().map(String::as_str), Some("ExecutionStarted"));
    assert_eq!(types.last().map(String::as_str), Some("ExecutionCompleted"));
    assert!(
        types.iter().filter(|t| *t == "TaskCompleted").count() == 3,
        "{types:?}"
    );
    let items = body["historyEvents"].as_array().unwrap();
    assert!(items.iter().all(|e| e.get("Result").is_none()));
    let completed_tasks: Vec<&Value> = items
        .iter()
        .filter(|e| e["EventType"] == "TaskCompleted")
        .collect();
    assert!(completed_tasks.iter().all(|e| e["FunctionName"].is_string()
        && e["ScheduledTime"].is_string()
        && e["Timestamp"].is_string()));
    let last = items.last().unwrap();
    assert_eq!(last["OrchestrationStatus"], "Completed");
    let (_, body) = server
        .status("done-1", "showHistory=true&showHistoryOutput=true")
        .await;
    let last = body["historyEvents"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["Result"], "Galaxy created!");

    // Failed: 200, or 500 with returnInternalServerErrorOnFailure=true.
    server
        .start("Sample_Fail", Some("fail-1"), json!("x"))
        .await;
    events.until("fail-1", "Failed").await;
    let (code, body) = server.status("fail-1", "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["runtimeStatus"], "Failed");
    assert!(body["output"]
        .as_str()
        .unwrap()
        .contains("fails on purpose"));
    assert!(body["failureDetails"]["kind"].is_string());
    assert!(body["failureDetails"]["message"]
        .as_str()
        .unwrap()
        .contains("fails on purpose"));
    let (code, body) = server
        .status("fail-1", "returnInternalServerErrorOnFailure=true")
        .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["runtimeStatus"], "Failed");

    // Unknown: 404.
    let (code, body) = server.status("nobody", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "InstanceNotFound");
}

#[tokio::test]
async fn raise_event_suspend_resume_terminate_and_their_errors() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    let post = |path: String| server.req(Method::POST, &path);

    // raiseEvent completes the waiting instance with the payload.
    server
        .start("Sample_WaitForEvent", Some("ev"), json!(null))
        .await;
    let r = post(format!("{M}/instances/ev/raiseEvent/Approval"))
        .json(&json!({"approved": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let end = events.until("ev", "Completed").await;
    assert_eq!(end.last().unwrap()["output"], json!({"approved": true}));
    // ...finished: 410; unknown: 404; bad body: 400.
    let r = post(format!("{M}/instances/ev/raiseEvent/Approval"))
        .json(&1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let r = post(format!("{M}/instances/ghost/raiseEvent/Approval"))
        .json(&1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(format!("{M}/instances/ev/raiseEvent/Approval"))
        .body("{x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Suspend, then resume, then terminate.
    server
        .start("Sample_WaitForEvent", Some("ctl"), json!(null))
        .await;
    events.until("ctl", "Running").await;
    let r = post(format!("{M}/instances/ctl/suspend?reason=pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    events.until("ctl", "Suspended").await;
    let (code, body) = server.status("ctl", "").await;
    assert_eq!(code, StatusCode::ACCEPTED, "Suspended is not final");
    assert_eq!(body["runtimeStatus"], "Suspended");
    let r = post(format!("{M}/instances/ctl/resume?reason=go"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    events.until("ctl", "Running").await;
    let r = post(format!("{M}/instances/ctl/terminate?reason=enough"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    events.until("ctl", "Terminated").await;
    let (code, body) = server.status("ctl", "showHistory=true").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["output"], "enough");
    let types = history_types(&body);
    for t in [
        "ExecutionSuspended",
        "ExecutionResumed",
        "ExecutionTerminated",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    // Finished: 410 for all three; unknown: 404.
    for op in ["terminate", "suspend", "resume"] {
        let r = post(format!("{M}/instances/ctl/{op}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::GONE, "{op} on a finished instance");
        let r = post(format!("{M}/instances/ghost/{op}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{op} on an unknown instance"
        );
    }
}

#[tokio::test]
async fn restart_rewind_and_purge() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    let post = |path: String| server.req(Method::POST, &path);

    // Restart a finished instance under a new id (the default) and the same id.
    server
        .start("Galaxy_Create", Some("rs"), json!({"seed": 7}))
        .await;
    events.until("rs", "Completed").await;
    let r = post(format!("{M}/instances/rs/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let payload: Value = r.json().await.unwrap();
    let new_id = payload["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, "rs");
    assert!(payload["statusQueryGetUri"]
        .as_str()
        .unwrap()
        .contains(&new_id));
    let restarted = events.until(&new_id, "Completed").await;
    assert_eq!(restarted.first().unwrap()["runtimeStatus"], "Pending");
    let (_, body) = server.status(&new_id, "").await;
    assert_eq!(body["input"], json!({"seed": 7}));
    let r = post(format!(
        "{M}/instances/rs/restart?restartWithNewInstanceId=false"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "rs");
    events.until("rs", "Completed").await;
    // Same id while live: 409; unknown: 404.
    server
        .start("Sample_WaitForEvent", Some("busy"), json!(null))
        .await;
    let r = post(format!(
        "{M}/instances/busy/restart?restartWithNewInstanceId=false"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = post(format!("{M}/instances/ghost/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Rewind: only a Failed instance (412 otherwise, 404 unknown).
    server.start("Sample_Fail", Some("rw"), json!(1)).await;
    events.until("rw", "Failed").await;
    let r = post(format!("{M}/instances/rw/rewind?reason=retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The rewound run retries the failed activity (which fails again):
    // Running, then Failed, with the rewind in the history.
    let after = events.until("rw", "Failed").await;
    assert_eq!(after[0]["runtimeStatus"], "Running", "{after:?}");
    let (_, body) = server.status("rw", "showHistory=true").await;
    let types = history_types(&body);
    let rewound = types.iter().position(|t| t == "ExecutionRewound");
    assert!(rewound.is_some(), "no ExecutionRewound in {types:?}");
    assert_eq!(
        types[rewound.unwrap()..]
            .iter()
            .filter(|t| *t == "TaskFailed")
            .count(),
        1,
        "the failed activity ran again after the rewind: {types:?}"
    );
    let r = post(format!("{M}/instances/rs/rewind"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = post(format!("{M}/instances/ghost/rewind"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Purge one: live 412, finished 200 {"instancesDeleted":1}, then 404.
    let r = server
        .send(Method::DELETE, &format!("{M}/instances/busy"))
        .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = server
        .send(Method::DELETE, &format!("{M}/instances/rs"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"instancesDeleted": 1})
    );
    let r = server
        .send(Method::DELETE, &format!("{M}/instances/rs"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Purge by filter: the master key only; createdTimeFrom required;
    // 404 once nothing matches.
    let purge = |key: &str, query: &str| {
        server
            .client
            .delete(server.url(&format!("{M}/instances?{query}")))
            .header("x-functions-key", key)
    };
    let r = purge(FUNCTION_KEY, "createdTimeFrom=2000-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = purge(MASTER_KEY, "runtimeStatus=Completed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = purge(
        MASTER_KEY,
        "createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed,Failed",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // new_id (Completed) and rw (Failed); busy is live and stays.
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"instancesDeleted": 2})
    );
    let r = purge(MASTER_KEY, "createdTimeFrom=2000-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (code, _) = server.status("busy", "").await;
    assert_eq!(code, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn listing_filters_and_continuation_paging_both_ways() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    for i in 0..5 {
        server
            .start("Galaxy_Create", Some(&format!("page-{i}")), json!(i))
            .await;
    }
    server
        .start("Sample_WaitForEvent", Some("page-live"), json!(null))
        .await;
    server
        .start("Galaxy_Create", Some("other-0"), json!(null))
        .await;
    let ids: Vec<String> = (0..5).map(|i| format!("page-{i}")).collect();
    events.all_reach(&ids, "Completed").await;

    // Pages of two, following the token, give every page-* once, newest first.
    let mut token: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let mut req = server.req(
            Method::GET,
            &format!("{M}/instances?instanceIdPrefix=page-&top=2"),
        );
        if let Some(t) = &token {
            req = req.header("x-ms-continuation-token", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        token = r
            .headers()
            .get("x-ms-continuation-token")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<Value> = r.json().await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|s| s["instanceId"].as_str().unwrap().to_string()),
        );
        pages += 1;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 6, "{seen:?}");
    assert!(seen.iter().all(|id| id.starts_with("page-")));

    // Status filter and showInput.
    let r = server
        .send(Method::GET, &format!("{M}/instances?runtimeStatus=Running,Pending&instanceIdPrefix=page-&showInput=false"))
        .await;
    let live: Vec<Value> = r.json().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["instanceId"], "page-live");
    assert_eq!(live[0]["input"], Value::Null);
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances?runtimeStatus=Completed&instanceIdPrefix=page-"),
        )
        .await;
    let done: Vec<Value> = r.json().await.unwrap();
    assert_eq!(done.len(), 5);
    assert!(done.iter().any(|s| s["input"] == json!(3)));

    // Created-time window: nothing in the future.
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances?createdTimeFrom=2999-01-01T00:00:00Z"),
        )
        .await;
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 0);
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances?createdTimeFrom=2000-01-01&createdTimeTo=2999-01-01"),
        )
        .await;
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 7);

    // Bad input: 400.
    for query in [
        "runtimeStatus=Sleeping",
        "top=0",
        "createdTimeFrom=yesterday",
    ] {
        let r = server
            .send(Method::GET, &format!("{M}/instances?{query}"))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let r = server
        .req(Method::GET, &format!("{M}/instances"))
        .header("x-ms-continuation-token", "made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// A continuation token is signed with a key derived from the master key:
/// one handed out by another deployment (a different master key) is a
/// 400, though it is well formed and names real instances there; an
/// unkeyed checksum would have let it through.
#[tokio::test]
async fn another_deployment_s_continuation_token_is_refused() {
    let ours = start();
    let theirs = start_with_master("another-deployment-master-01");
    for server in [&ours, &theirs] {
        for i in 0..3 {
            server
                .start("Galaxy_Create", Some(&format!("tok-{i}")), json!(null))
                .await;
        }
    }
    let r = theirs
        .send(Method::GET, &format!("{M}/instances?top=1"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.headers()["x-ms-continuation-token"]
        .to_str()
        .unwrap()
        .to_string();
    let next = |server: &Server| {
        server
            .req(Method::GET, &format!("{M}/instances?top=1"))
            .header("x-ms-continuation-token", token.clone())
            .send()
    };
    assert_eq!(next(&theirs).await.unwrap().status(), StatusCode::OK);
    let r = next(&ours).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidContinuationToken", "{body}");
}

/// What the fuzzer found, asked directly: empty query values count as
/// absent, and instance ids with control characters are refused with 400
/// JSON wherever an id is taken.
#[tokio::test]
async fn empty_query_values_are_absent_and_control_characters_refused() {
    let server = start();
    server
        .start("Galaxy_Create", Some("plain-id"), json!({"k": 1}))
        .await;
    let r = server
        .send(
            Method::GET,
            &format!(
                "{M}/instances?top=&showInput=&runtimeStatus=&createdTimeFrom=&instanceIdPrefix="
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let all: Vec<Value> = r.json().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0]["input"],
        json!({"k": 1}),
        "showInput= is the default"
    );
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances/plain-id?showHistory=&showInput=&showHistoryOutput="),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["input"], json!({"k": 1}));
    assert!(
        status.get("historyEvents").is_none_or(Value::is_null),
        "{status}"
    );
    for (method, path) in [
        (
            Method::POST,
            "/api/orchestrators/Galaxy_Create/bad%01id".to_string(),
        ),
        (Method::GET, format!("{M}/instances/bad%0Aid")),
        (Method::POST, format!("{M}/instances/bad%7Fid/terminate")),
        (Method::DELETE, format!("{M}/instances/bad%1Bid")),
    ] {
        let r = server.send(method.clone(), &path).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn event_streams_send_status_changes_and_history_in_order() {
    let server = start();
    let mut all = server.stream(&format!("{M}/stream")).await;
    let started = server.start("Galaxy_Create", None, json!(null)).await;
    let id = started["id"].as_str().unwrap().to_string();
    let updates = all.until(&id, "Completed").await;
    let statuses: Vec<&str> = updates
        .iter()
        .map(|u| u["runtimeStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"Pending"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"Completed"), "{statuses:?}");
    assert!(
        statuses[1..statuses.len() - 1]
            .iter()
            .all(|s| *s == "Running"),
        "{statuses:?}"
    );
    assert!(statuses.len() >= 3, "{statuses:?}");
    let history: Vec<&str> = updates
        .iter()
        .flat_map(|u| u["historyEvents"].as_array().unwrap().iter())
        .map(|e| e["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(history.first(), Some(&"ExecutionStarted"));
    assert_eq!(history.last(), Some(&"ExecutionCompleted"));
    assert_eq!(history.iter().filter(|t| **t == "TaskScheduled").count(), 3);
    assert_eq!(history.iter().filter(|t| **t == "TaskCompleted").count(), 3);
    assert_eq!(updates.last().unwrap()["output"], "Galaxy created!");

    // One instance: its current status first, then its changes only.
    server
        .start("Sample_WaitForEvent", Some("watched"), json!(null))
        .await;
    let mut one = server
        .stream(&format!("{M}/instances/watched/stream"))
        .await;
    let (event, first) = one.next().await.unwrap();
    assert_eq!(event, "status");
    assert_eq!(first["instanceId"], "watched");
    assert!(["Pending", "Running"].contains(&first["runtimeStatus"].as_str().unwrap()));
    server
        .start("Galaxy_Create", Some("noise"), json!(null))
        .await;
    let r = server
        .req(
            Method::POST,
            &format!("{M}/instances/watched/raiseEvent/Approval"),
        )
        .json(&"yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    loop {
        let (event, data) = one.next().await.unwrap();
        assert_eq!(event, "update");
        assert_eq!(
            data["instanceId"], "watched",
            "another instance leaked into the stream"
        );
        if data["runtimeStatus"] == "Completed" {
            assert_eq!(data["output"], "yes");
            break;
        }
    }

    let r = server
        .send(Method::GET, &format!("{M}/instances/ghost/stream"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_protected_route_needs_a_key() {
    let server = start();
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/api/orchestrators/Galaxy_Create".into()),
        (Method::POST, "/api/orchestrators/Galaxy_Create/k1".into()),
        (Method::GET, format!("{M}/instances")),
        (
            Method::DELETE,
            format!("{M}/instances?createdTimeFrom=2000-01-01"),
        ),
        (Method::GET, format!("{M}/instances/x")),
        (Method::DELETE, format!("{M}/instances/x")),
        (Method::POST, format!("{M}/instances/x/raiseEvent/E")),
        (Method::POST, format!("{M}/instances/x/terminate")),
        (Method::POST, format!("{M}/instances/x/suspend")),
        (Method::POST, format!("{M}/instances/x/resume")),
        (Method::POST, format!("{M}/instances/x/restart")),
        (Method::POST, format!("{M}/instances/x/rewind")),
        (Method::GET, format!("{M}/instances/x/stream")),
        (Method::GET, format!("{M}/stream")),
        (Method::GET, "/api/galaxies".into()),
        (Method::GET, "/api/galaxies/galaxies/x".into()),
        (Method::GET, "/metrics".into()),
    ];
    for (method, path) in &routes {
        for key in [None, Some("wrong-key-00000000000"), Some("")] {
            let mut req = server.client.request(method.clone(), server.url(path));
            if let Some(k) = key {
                req = req.header("x-functions-key", k);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with key {key:?}"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized");
        }
        // With the master key (accepted wherever the function key is), not 401.
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = server
            .client
            .request(
                method.clone(),
                server.url(&format!("{path}{sep}code={MASTER_KEY}")),
            )
            .send()
            .await
            .unwrap();
        assert_ne!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with the master key"
        );
    }
    for path in ["/healthz", "/api/openapi.json"] {
        let r = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} needs no key");
    }
    let r = server
        .client
        .get(server.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "NotFound"
    );
    let r = server
        .client
        .put(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "MethodNotAllowed"
    );
}

#[tokio::test]
async fn metrics_report_requests_instances_queues_and_dispatch_latency() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    server.start("Galaxy_Create", Some("m1"), json!(null)).await;
    events.until("m1", "Completed").await;
    server.status("m1", "").await;
    // The latency is recorded by the server's own subscriber, which may
    // see the first turn a moment after this test's stream did: poll the
    // condition, with a deadline.
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let r = server.send(Method::GET, "/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        if text.contains("galaxy_dispatch_latency_seconds_count 1\n") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dispatch latency recorded:\n{text}"
        );
        tokio::task::yield_now().await;
    };
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("galaxy_http_requests_total{method=\"POST\",route=\"/api/orchestrators/{functionName}/{instanceId}\",status=\"202\"}"),
        1.0
    );
    assert_eq!(
        value("galaxy_http_requests_total{method=\"GET\",route=\"/runtime/webhooks/durabletask/instances/{instanceId}\",status=\"200\"}"),
        1.0
    );
    assert_eq!(value("galaxy_instances{status=\"Completed\"}"), 1.0);
    assert_eq!(value("galaxy_work_items_queued{queue=\"activity\"}"), 0.0);
    assert_eq!(value("galaxy_dispatch_latency_seconds_count"), 1.0);
    assert_eq!(value("galaxy_event_streams"), 1.0);
    let r = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn sigterm_ends_streams_and_exits_zero() {
    let mut server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    server
        .start("Galaxy_Create", Some("before-term"), json!(null))
        .await;
    events.until("before-term", "Completed").await;
    server
        .start("Sample_WaitForEvent", Some("left-running"), json!(null))
        .await;

    let mut child = server.child.take().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // The open stream ends (it does not hold the shutdown open)...
    while events.next().await.is_some() {}
    // ...and the process exits 0 after saying so.
    let exit = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("exited in time")
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    let rest: Vec<String> = server.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l == "galaxy-cloud stopped"), "{rest:?}");

    // Restarted on the same data: the unfinished instance is still there.
    let dir = server._dir.path().to_path_buf();
    let (child, lines) = spawn(
        &dir,
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            MASTER_KEY,
            "--samples",
        ],
    );
    let (_, base) = wait_listening(&lines);
    let again = Server {
        child: Some(child),
        lines,
        base,
        client: reqwest::Client::new(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let (code, body) = again.status("left-running", "").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(body["runtimeStatus"], "Running");
    let (code, _) = again.status("before-term", "").await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn ctrl_c_exits_zero_too() {
    let mut server = start();
    let mut child = server.child.take().unwrap();
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("exited in time")
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    let rest: Vec<String> = server.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l == "galaxy-cloud stopped"), "{rest:?}");
}

#[tokio::test]
async fn keys_are_created_once_printed_once_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn(dir.path(), &[]);
    let (printed, base) = wait_listening(&lines);
    let key_of = |label: &str| {
        printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|k| k.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label} line in {printed:?}"))
    };
    let function_key = key_of("function key:");
    let master_key = key_of("master key:");
    assert_ne!(function_key, master_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}{M}/instances?code={function_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();

    // Second start: same keys, not printed again.
    let (mut child, lines) = spawn(dir.path(), &[]);
    let (printed, base) = wait_listening(&lines);
    assert_eq!(printed.len(), 1, "keys printed again: {printed:?}");
    let r = client
        .get(format!("{base}{M}/instances"))
        .header("x-functions-key", &master_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_unreachable_database_fails_the_start_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_galaxy-cloud"))
        .args(["--listen", "127.0.0.1:0", "--database-url"])
        // Port 1 on loopback: nothing listens, the connection is refused.
        .arg("postgres://postgres@127.0.0.1:1/galaxy?connect_timeout=5")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("galaxy-cloud: engine store:"), "{stderr}");
    assert!(!data.exists(), "the data directory was touched");
}

#[tokio::test]
async fn database_url_runs_the_engine_on_postgresql() {
    let cluster = durable::testing::PgCluster::shared();
    let url = cluster.create_database().await.expect("create database");
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn(
        dir.path(),
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            MASTER_KEY,
            "--database-url",
            &url,
        ],
    );
    let (_, base) = wait_listening(&lines);
    let mut server = Server {
        child: Some(child),
        lines,
        base,
        client: reqwest::Client::new(),
        _dir: dir,
    };
    assert!(
        !server._dir.path().join("engine.db").exists(),
        "the engine store is not SQLite"
    );
    let r = server
        .req(
            Method::POST,
            "/api/orchestrators/Galaxy_Create/pg-1?timeout=20",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Galaxy created!"));
    let (code, body) = server.status("pg-1", "showHistory=true").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        history_types(&body).last().map(String::as_str),
        Some("ExecutionCompleted")
    );
    let r = server.send(Method::GET, "/api/galaxies").await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 1);

    // SIGTERM: the PostgreSQL store is closed on the way out, exit 0.
    let mut child = server.child.take().unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("exited in time")
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
