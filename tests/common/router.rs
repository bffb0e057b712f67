//! The event router's test kit: a webhook receiver on a free loopback
//! port (axum) that answers the validation handshake as told and reports
//! what it gets, and the real `galaxy-cloud` binary with its management
//! and publishing calls. Shared by tests/events.rs and
//! tests/system_events.rs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use reqwest::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub const KEY: &str = "events-e2e-function-key1";
pub const MASTER: &str = "events-e2e-master-key-01";
pub const WAIT: Duration = Duration::from_secs(30);

/// What a receiver does with the requests it gets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Answers the validation (both schemas).
    Answer,
    /// Answers 404 to it.
    Refuse,
    /// Answers the Event Grid schema's validation event 200 without the
    /// code (it will validate by hand) and hands the event on as if it
    /// were a delivery, so the test can GET its `validationUrl`.
    Manual,
}

pub struct ReceiverState {
    pub handshake: Handshake,
    /// Each delivery's answer waits this long (deliveries in flight).
    pub delay: Duration,
    /// When set, each delivery's answer waits for a permit.
    pub hold: Option<Arc<tokio::sync::Semaphore>>,
    /// Statuses for the next deliveries, then 200.
    pub script: Mutex<Vec<u16>>,
    pub got: mpsc::UnboundedSender<(HeaderMap, Value)>,
}

pub async fn receive(
    State(s): State<Arc<ReceiverState>>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    if method == Method::OPTIONS {
        if s.handshake == Handshake::Refuse {
            return StatusCode::NOT_FOUND.into_response();
        }
        let origin = headers.get("webhook-request-origin").cloned();
        let mut r = StatusCode::OK.into_response();
        if let Some(o) = origin {
            r.headers_mut().insert("WebHook-Allowed-Origin", o);
        }
        return r;
    }
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if headers.get("aeg-event-type").and_then(|v| v.to_str().ok()) == Some("SubscriptionValidation")
    {
        if s.handshake == Handshake::Refuse {
            return StatusCode::NOT_FOUND.into_response();
        }
        if s.handshake == Handshake::Manual {
            let _ = s.got.send((headers, value));
            return StatusCode::OK.into_response();
        }
        let code = value[0]["data"]["validationCode"].clone();
        return axum::Json(json!({ "validationResponse": code })).into_response();
    }
    let status = {
        let mut script = s.script.lock().unwrap();
        if script.is_empty() {
            200
        } else {
            script.remove(0)
        }
    };
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    let _ = s.got.send((headers, value));
    if let Some(hold) = &s.hold {
        hold.acquire().await.unwrap().forget();
    }
    StatusCode::from_u16(status).unwrap().into_response()
}

pub struct Receiver {
    pub url: String,
    pub got: mpsc::UnboundedReceiver<(HeaderMap, Value)>,
    pub state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start(handshake: Handshake, script: Vec<u16>) -> Self {
        Self::start_slow(handshake, script, Duration::ZERO).await
    }

    pub async fn start_slow(handshake: Handshake, script: Vec<u16>, delay: Duration) -> Self {
        Self::start_with(handshake, script, delay, None).await
    }

    /// A receiver whose answers wait for permits on `hold`.
    pub async fn start_held(hold: Arc<tokio::sync::Semaphore>) -> Self {
        Self::start_with(Handshake::Answer, vec![], Duration::ZERO, Some(hold)).await
    }

    pub async fn start_with(
        handshake: Handshake,
        script: Vec<u16>,
        delay: Duration,
        hold: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ReceiverState {
            handshake,
            delay,
            hold,
            script: Mutex::new(script),
            got: tx,
        });
        let app = Router::new()
            .route("/hook", any(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            got: rx,
            state,
        }
    }

    /// Takes deliveries until `seen` holds `n` event ids (ids delivered
    /// twice count once).
    pub async fn ids_until(&mut self, seen: &mut std::collections::BTreeSet<String>, n: usize) {
        while seen.len() < n {
            let (_, body) = self.next().await;
            for e in body.as_array().expect("a batch") {
                seen.insert(e["id"].as_str().unwrap().to_string());
            }
        }
    }

    /// The next delivery (headers, body).
    pub async fn next(&mut self) -> (HeaderMap, Value) {
        tokio::time::timeout(WAIT, self.got.recv())
            .await
            .expect("a delivery in time")
            .expect("open")
    }
}

pub struct Cloud {
    pub child: std::process::Child,
    pub base: String,
    pub http: Client,
    pub _dir: tempfile::TempDir,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cloud {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// galaxy-cloud on the data directory `dir` (a restart reuses it).
    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, &[])
    }

    /// [`Cloud::start`], and the lines of its log (stderr) as they come.
    pub fn start_with_log() -> (Self, std::sync::mpsc::Receiver<String>) {
        let mut cloud = Self::start();
        let log = cloud.child.stderr.take().expect("stderr");
        (cloud, super::lines_of(log))
    }

    /// [`Cloud::start_in`] with more arguments (e.g. `--samples`).
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut args = vec![
            "--function-key",
            KEY,
            "--master-key",
            MASTER,
            "--event-retry-scale",
            "0.001",
        ];
        args.extend_from_slice(extra);
        let (child, lines) = super::spawn(dir.path(), &args);
        let (_, base) = super::wait_listening(&lines);
        Self {
            child,
            base,
            http: Client::new(),
            _dir: dir,
        }
    }

    /// SIGKILLs the server and starts it again on the same data
    /// directory with `extra` arguments.
    pub fn kill_and_restart(mut self, extra: &[&str]) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Self::start_with(dir, extra)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-functions-key", KEY);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn topic(&self, name: &str, schema: &str) -> (String, String) {
        let (s, t) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/events/topics/{name}"),
                Some(json!({"inputSchema": schema})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{t}");
        assert_eq!(t["provisioningState"], "Succeeded");
        let (_, keys) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/events/topics/{name}/listKeys"),
                None,
            )
            .await;
        (
            t["endpoint"].as_str().unwrap().to_string(),
            keys["key1"].as_str().unwrap().to_string(),
        )
    }

    pub async fn subscribe(&self, topic: &str, name: &str, body: Value) -> Value {
        let (s, v) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/events/topics/{topic}/eventSubscriptions/{name}"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Waits (polling the API, with a deadline) until the subscription
    /// reaches `state`.
    pub async fn wait_state(&self, topic: &str, name: &str, state: &str) -> Value {
        self.get_until(
            &format!("/api/events/topics/{topic}/eventSubscriptions/{name}"),
            &format!("{name} to reach {state}"),
            |_, v| v["properties"]["provisioningState"] == state,
        )
        .await
    }

    /// GETs `path` (function key) until `done` holds for the answer,
    /// polling with a deadline; returns that answer.
    pub async fn get_until(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(StatusCode, &Value) -> bool,
    ) -> Value {
        let until = Instant::now() + WAIT;
        loop {
            let (s, v) = self.call(reqwest::Method::GET, path, None).await;
            if done(s, &v) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {s} {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .header("x-functions-key", KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn publish(&self, endpoint: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{endpoint}?api-version=2018-01-01"))
            .header("aeg-sas-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

pub fn hook(url: &str) -> Value {
    json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": url}}})
}

/// A webhook subscription with a dead-letter destination: events that
/// fail for good are kept (without one they are dropped).
pub fn hook_keeping_dead_letters(url: &str) -> Value {
    let mut sub = hook(url);
    sub["deadLetterDestination"] = json!({"endpointType": "StorageBlob"});
    sub
}

pub fn event(id: &str, kind: &str, n: i64) -> Value {
    json!({"id": id, "subject": format!("/galaxies/{id}"), "eventType": kind, "eventTime": "2026-12-01T10:00:00Z", "data": {"n": n}, "dataVersion": "1.0"})
}

/// `n` Event Grid events `{prefix}0..`, of type `Galaxy.Created`.
pub fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| event(&format!("{prefix}{i}"), "Galaxy.Created", i as i64))
        .collect()
}

/// Dead letters are listed a page at a time (`top`, then `nextLink`),
/// oldest first, each once: a subscription with many cannot make one
/// answer hold them all.
pub async fn dead_letters_come_in_pages(cloud: &Cloud) {
    let (endpoint, key) = cloud.topic("paged-letters", "EventGridSchema").await;
    let mut rejecting = Receiver::start(Handshake::Answer, vec![400; 5]).await;
    let sub = hook_keeping_dead_letters(&rejecting.url);
    cloud.subscribe("paged-letters", "rejecting", sub).await;
    cloud
        .wait_state("paged-letters", "rejecting", "Succeeded")
        .await;
    let events: Vec<Value> = (0..5)
        .map(|n| event(&format!("d{n}"), "Galaxy.Created", n))
        .collect();
    let (s, _) = cloud.publish(&endpoint, &key, json!(events)).await;
    assert_eq!(s, 200);
    let mut seen = std::collections::BTreeSet::new();
    rejecting.ids_until(&mut seen, 5).await;
    let path = "/api/events/topics/paged-letters/eventSubscriptions/rejecting/deadLetters";
    cloud
        .get_until(path, "five dead letters", |_, v| {
            v["value"].as_array().unwrap().len() == 5
        })
        .await;
    let mut next = Some(format!("{path}?top=2"));
    let (mut pages, mut sequences, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(url) = next.take() {
        let (s, page) = cloud.call(reqwest::Method::GET, &url, None).await;
        assert_eq!(s, axum::http::StatusCode::OK, "{page}");
        let letters = page["value"].as_array().unwrap();
        pages.push(letters.len());
        for l in letters {
            sequences.push(l["sequence"].as_i64().unwrap());
            ids.push(l["event"]["id"].as_str().unwrap().to_string());
        }
        next = page["nextLink"]
            .as_str()
            .map(|link| link.strip_prefix(&cloud.base).unwrap().to_string());
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages, [2, 2, 1]);
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert_eq!(ids, ["d0", "d1", "d2", "d3", "d4"]);
    let (s, e) = cloud
        .call(reqwest::Method::GET, &format!("{path}?after=-1"), None)
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (axum::http::StatusCode::BAD_REQUEST, Some("InvalidQuery"))
    );
}

/// A subscription put again at another endpoint receives nothing there
/// until the new handshake passes: its owed events wait (`held`), then go
/// to the endpoint that proved it wants them; a dead letter re-driven
/// while it awaits a handshake waits as well.
pub async fn events_wait_for_a_moved_subscription_s_new_handshake(cloud: &Cloud) {
    let (endpoint, key) = cloud.topic("moves", "EventGridSchema").await;
    // The first receiver holds its answer, so the event is still owed
    // when the subscription moves.
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let mut first = Receiver::start_held(hold.clone()).await;
    first.state.script.lock().unwrap().push(500);
    cloud
        .subscribe("moves", "mover", hook_keeping_dead_letters(&first.url))
        .await;
    cloud.wait_state("moves", "mover", "Succeeded").await;
    let (s, _) = cloud
        .publish(&endpoint, &key, json!([event("m1", "Galaxy.Created", 1)]))
        .await;
    assert_eq!(s, 200);
    first.next().await;

    // Put again at a receiver that refuses the handshake: the owed event
    // waits, and once the first attempt (a 500) is recorded it still
    // waits rather than being retried at the refusing receiver.
    let mut refusing = Receiver::start(Handshake::Refuse, vec![]).await;
    cloud
        .subscribe("moves", "mover", hook_keeping_dead_letters(&refusing.url))
        .await;
    cloud.wait_state("moves", "mover", "Failed").await;
    hold.add_permits(1);
    let path = "/api/events/topics/moves/events/m1/deliveries";
    let held = cloud
        .get_until(
            path,
            "the first attempt recorded and the event held",
            |_, v| {
                v["value"][0]["attempts"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
            },
        )
        .await;
    assert_eq!(held["value"][0]["state"], "held", "{held}");

    // Put again at a receiver that answers: the event goes there, as its
    // second attempt, and never to the refusing one.
    let mut answering = Receiver::start(Handshake::Answer, vec![]).await;
    cloud
        .subscribe("moves", "mover", hook_keeping_dead_letters(&answering.url))
        .await;
    let (headers, body) = answering.next().await;
    assert_eq!(body[0]["id"], "m1");
    assert_eq!(headers["aeg-delivery-count"], "1");
    assert!(
        refusing.got.try_recv().is_err(),
        "a receiver that refused its handshake got an event"
    );
    let done = cloud
        .get_until(path, "the second attempt recorded", |_, v| {
            v["value"][0]["state"] == "delivered"
        })
        .await;
    assert_eq!(done["value"][0]["attempts"].as_array().unwrap().len(), 2);

    // A dead letter re-driven while the subscription awaits a handshake
    // waits too.
    answering.state.script.lock().unwrap().push(400);
    let (s, _) = cloud
        .publish(&endpoint, &key, json!([event("m2", "Galaxy.Created", 2)]))
        .await;
    assert_eq!(s, 200);
    answering.next().await;
    cloud
        .get_until(
            "/api/events/topics/moves/eventSubscriptions/mover/deadLetters",
            "m2 dead-lettered",
            |_, v| v["value"].as_array().is_some_and(|l| l.len() == 1),
        )
        .await;
    cloud
        .subscribe("moves", "mover", hook_keeping_dead_letters(&refusing.url))
        .await;
    cloud.wait_state("moves", "mover", "Failed").await;
    let (s, r) = cloud
        .call(
            reqwest::Method::POST,
            "/api/events/topics/moves/eventSubscriptions/mover/redeliver",
            Some(json!({})),
        )
        .await;
    assert_eq!((s, r["redelivered"].as_i64()), (StatusCode::OK, Some(1)));
    let (_, m2) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/moves/events/m2/deliveries",
            None,
        )
        .await;
    assert_eq!(m2["value"][0]["state"], "held", "{m2}");
    assert!(refusing.got.try_recv().is_err());
}

/// A held delivery (its subscription awaits a handshake) is dead-lettered
/// once its event outlives the subscription's time to live, counted from
/// publishing as for any delivery, rather than waiting for ever; the
/// receiver that refused the handshake gets nothing.
pub async fn held_events_expire_with_their_time_to_live(cloud: &Cloud) {
    let (endpoint, key) = cloud.topic("lapses", "EventGridSchema").await;
    let with_ttl = |url: &str| {
        let mut sub = hook_keeping_dead_letters(url);
        // 60 minutes: 3.6 s at the tests' retry scale (0.001), long after
        // the first attempt is recorded (so it is retried, not expired).
        sub["retryPolicy"] = json!({"eventTimeToLiveInMinutes": 60});
        sub
    };
    // The first receiver holds its answer (a 500), so the event is still
    // owed when the subscription moves.
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let mut first = Receiver::start_held(hold.clone()).await;
    first.state.script.lock().unwrap().push(500);
    cloud
        .subscribe("lapses", "lapsed", with_ttl(&first.url))
        .await;
    cloud.wait_state("lapses", "lapsed", "Succeeded").await;
    let (s, _) = cloud
        .publish(&endpoint, &key, json!([event("l1", "Galaxy.Created", 1)]))
        .await;
    assert_eq!(s, 200);
    first.next().await;
    let mut refusing = Receiver::start(Handshake::Refuse, vec![]).await;
    cloud
        .subscribe("lapses", "lapsed", with_ttl(&refusing.url))
        .await;
    cloud.wait_state("lapses", "lapsed", "Failed").await;
    hold.add_permits(1);

    let letters = cloud
        .get_until(
            "/api/events/topics/lapses/eventSubscriptions/lapsed/deadLetters",
            "the held event dead-lettered",
            |_, v| v["value"].as_array().is_some_and(|l| l.len() == 1),
        )
        .await;
    let letter = &letters["value"][0];
    assert_eq!(letter["event"]["id"], "l1", "{letter}");
    assert_eq!(letter["deadLetterReason"], "TimeToLiveExceeded", "{letter}");
    assert_eq!(letter["deliveryAttempts"], 1, "{letter}");
    assert_eq!(letter["lastDeliveryOutcome"], "GenericError", "{letter}");
    let (_, l1) = cloud
        .call(
            reqwest::Method::GET,
            "/api/events/topics/lapses/events/l1/deliveries",
            None,
        )
        .await;
    assert_eq!(l1["value"][0]["state"], "dead", "{l1}");
    assert!(
        refusing.got.try_recv().is_err(),
        "a receiver that refused its handshake got an event"
    );
}

/// Deleting a subscription deletes its dead letters: a new subscription
/// of the same name (another endpoint, another owner perhaps) neither
/// lists them nor can re-drive them to itself. The same for a topic.
pub async fn dead_letters_go_with_their_subscription(cloud: &Cloud) {
    let (endpoint, key) = cloud.topic("letters-go", "EventGridSchema").await;
    let mut rejecting = Receiver::start(Handshake::Answer, vec![400]).await;
    let sub = hook_keeping_dead_letters(&rejecting.url);
    cloud.subscribe("letters-go", "gone", sub).await;
    cloud.wait_state("letters-go", "gone", "Succeeded").await;
    let (s, _) = cloud
        .publish(
            &endpoint,
            &key,
            json!([event("private", "Galaxy.Created", 1)]),
        )
        .await;
    assert_eq!(s, 200);
    rejecting.next().await;
    let letters = "/api/events/topics/letters-go/eventSubscriptions/gone/deadLetters";
    cloud
        .get_until(letters, "the dead letter", |_, v| {
            v["value"].as_array().is_some_and(|l| l.len() == 1)
        })
        .await;
    let path = "/api/events/topics/letters-go/eventSubscriptions/gone";
    let (s, _) = cloud.call(reqwest::Method::DELETE, path, None).await;
    assert_eq!(s, StatusCode::OK);
    // Its endpoint is told, in the Event Grid schema.
    let (h, b) = rejecting.next().await;
    assert_eq!(h["aeg-event-type"], "SubscriptionDeletion");
    assert_eq!(
        b[0]["eventType"],
        "Microsoft.EventGrid.SubscriptionDeletedEvent"
    );
    assert_eq!(
        b[0]["data"]["eventSubscriptionId"],
        "/topics/letters-go/eventSubscriptions/gone"
    );

    let mut newcomer = Receiver::start(Handshake::Answer, vec![]).await;
    cloud
        .subscribe("letters-go", "gone", hook(&newcomer.url))
        .await;
    cloud.wait_state("letters-go", "gone", "Succeeded").await;
    let (s, v) = cloud.call(reqwest::Method::GET, letters, None).await;
    assert_eq!((s, v["value"].clone()), (StatusCode::OK, json!([])));
    let (s, r) = cloud
        .call(
            reqwest::Method::POST,
            &format!("{path}/redeliver"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, r["redelivered"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{r}"
    );
    // What it does get: events published after it subscribed.
    let (s, _) = cloud
        .publish(
            &endpoint,
            &key,
            json!([event("public", "Galaxy.Created", 2)]),
        )
        .await;
    assert_eq!(s, 200);
    let (_, body) = newcomer.next().await;
    assert_eq!(body[0]["id"], "public");

    // A deleted topic's dead letters go with it too.
    newcomer.state.script.lock().unwrap().push(400);
    let dead = hook_keeping_dead_letters(&newcomer.url);
    cloud.subscribe("letters-go", "gone", dead).await;
    let (s, _) = cloud
        .publish(
            &endpoint,
            &key,
            json!([event("second", "Galaxy.Created", 3)]),
        )
        .await;
    assert_eq!(s, 200);
    newcomer.next().await;
    cloud
        .get_until(letters, "the second dead letter", |_, v| {
            v["value"].as_array().is_some_and(|l| l.len() == 1)
        })
        .await;
    let topic = "/api/events/topics/letters-go";
    assert_eq!(
        cloud.call(reqwest::Method::DELETE, topic, None).await.0,
        StatusCode::OK
    );
    // A deleted topic's webhook subscriptions are told too.
    let (h, b) = newcomer.next().await;
    assert_eq!(h["aeg-event-type"], "SubscriptionDeletion");
    assert_eq!(b[0]["topic"], "letters-go");
    cloud.topic("letters-go", "EventGridSchema").await;
    cloud
        .subscribe("letters-go", "gone", hook(&newcomer.url))
        .await;
    cloud.wait_state("letters-go", "gone", "Succeeded").await;
    let (_, v) = cloud.call(reqwest::Method::GET, letters, None).await;
    assert_eq!(v["value"], json!([]), "{v}");
    assert!(newcomer.got.try_recv().is_err());
}

/// Without a dead-letter destination an event that fails for good is
/// dropped, as Event Grid drops it: no dead letter to list or re-drive,
/// no delivery left, and the receiver is not tried again.
pub async fn without_a_dead_letter_destination_failures_are_dropped(cloud: &Cloud) {
    let (endpoint, key) = cloud.topic("dropping", "EventGridSchema").await;
    let mut rejecting = Receiver::start(Handshake::Answer, vec![400]).await;
    cloud
        .subscribe("dropping", "plain", hook(&rejecting.url))
        .await;
    cloud.wait_state("dropping", "plain", "Succeeded").await;
    let (s, _) = cloud
        .publish(&endpoint, &key, json!([event("lost", "Galaxy.Created", 1)]))
        .await;
    assert_eq!(s, 200);
    rejecting.next().await;
    cloud
        .get_until(
            "/api/events/topics/dropping/events/lost/deliveries",
            "the delivery dropped",
            |s, v| s == StatusCode::OK && v["value"] == json!([]),
        )
        .await;
    let letters = "/api/events/topics/dropping/eventSubscriptions/plain/deadLetters";
    let (_, v) = cloud.call(reqwest::Method::GET, letters, None).await;
    assert_eq!(v["value"], json!([]), "{v}");
    let (_, r) = cloud
        .call(
            reqwest::Method::POST,
            "/api/events/topics/dropping/eventSubscriptions/plain/redeliver",
            Some(json!({})),
        )
        .await;
    assert_eq!(r["redelivered"], 0, "{r}");
    assert!(rejecting.got.try_recv().is_err(), "tried again");
}
