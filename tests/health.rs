//! Liveness against the real `galaxy-cloud`: when a store's writer (the
//! engine store's, the galaxies table's, the event router's) dies (a panic
//! injected with a failpoint, as a bug would), `/healthz`
//! answers 503 and the process drains and exits non-zero, so a supervisor
//! restarts it. (Test builds turn `durable`'s `failpoints` feature on;
//! release builds have no failpoints.)

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

const FUNCTION_KEY: &str = "health-function-key-01";

/// Starts galaxy-cloud with `failpoint`, works (Galaxy_Create, which
/// writes the engine store and the galaxies table, and an event published
/// to a topic) until the failpoint's panic kills a writer, and checks that
/// `/healthz` says so with 503 and that the process drains and exits
/// non-zero, naming `culprit` in its log.
async fn a_dead_writer_stops_the_server(failpoint: &str, culprit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cloud.log");
    let (child, lines) = common::spawn_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            "health-master-key-0001",
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
        &[("FAILPOINTS", failpoint)],
    );
    let (_, base) = common::wait_listening(&lines);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let answer = |r: reqwest::RequestBuilder| async move {
        r.send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let topic = format!("{base}/api/events/topics/health");
    let made = answer(
        http.put(format!("{topic}?code={FUNCTION_KEY}"))
            .json(&serde_json::json!({ "inputSchema": "CloudEventSchemaV1_0" })),
    )
    .await;
    let endpoint = made["endpoint"].as_str().unwrap().to_string();
    let keys = answer(http.post(format!("{topic}/listKeys?code={FUNCTION_KEY}"))).await;
    let key = keys["key1"].as_str().unwrap().to_string();
    // Work until the writer dies and health says so: it does for at least
    // a second (HEALTH_EVERY) before the port closes, far longer than an
    // iteration. (Gone before that: the break, and saw_503 fails.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_503 = false;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let _ = http
            .post(format!(
                "{base}/api/orchestrators/Galaxy_Create?code={FUNCTION_KEY}"
            ))
            .send()
            .await;
        let _ = http
            .post(&endpoint)
            .header("aeg-sas-key", &key)
            .header("content-type", "application/cloudevents+json")
            .json(&serde_json::json!({
                "specversion": "1.0", "id": format!("e{n}"), "source": "health",
                "type": "Health.Probe", "data": {}
            }))
            .send()
            .await;
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == 503 => {
                let body: serde_json::Value = r.json().await.unwrap();
                if body["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("unhealthy"))
                {
                    saw_503 = true;
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break, // already drained and gone
        }
    }
    // It exits by itself, non-zero.
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut child = child;
            child.wait()
        }),
    )
    .await
    .expect("galaxy-cloud still running a minute after it went unhealthy")
    .unwrap()
    .unwrap();
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("draining and stopping"), "{log}");
    assert!(saw_503, "/healthz never said unhealthy: {log}");
    assert!(log.contains("stopped because"), "{log}");
    assert!(log.contains(culprit), "{culprit} not named: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_store_writer_makes_healthz_503_and_the_process_exit_non_zero() {
    // The writer's 40th batch panics: well after start, while serving.
    a_dead_writer_stops_the_server("durable-sqlite-writer-batch=40*off->panic", "engine store")
        .await;
}

/// The galaxies table's writer panicking halfway through a batch (which
/// poisons its connection's lock) stops the server the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_galaxies_writer_makes_healthz_503_and_the_process_exit_non_zero() {
    a_dead_writer_stops_the_server("galaxies-writer-batch=panic", "galaxies table").await;
}

/// So does the event router's publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_publisher_makes_healthz_503_and_the_process_exit_non_zero() {
    a_dead_writer_stops_the_server("events-writer-batch=panic", "event router").await;
}

/// A slow disk (every engine commit takes 5 s: a failpoint sleeps in the
/// writer before its batch, as a stalled fsync would) holds the requests
/// that wait for a commit, but nothing else: `/healthz` and table reads
/// answer while eight starts are still waiting, because commits and reads
/// never run on the async workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_reads_answer_while_the_disk_is_slow() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = common::spawn_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            "health-master-key-0001",
        ],
        Stdio::null(),
        &[("FAILPOINTS", "durable-sqlite-writer-batch=sleep(5000)")],
    );
    let (_, base) = common::wait_listening(&lines);
    let http = reqwest::Client::new();
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                http.post(format!(
                    "{base}/api/orchestrators/Galaxy_Create?code={FUNCTION_KEY}"
                ))
                .send()
                .await
                .unwrap()
                .status()
            })
        })
        .collect();
    for _ in 0..20 {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = http
            .get(format!("{base}/api/galaxies?code={FUNCTION_KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every answer above came while the starts still waited for the disk.
    assert!(
        starts.iter().all(|s| !s.is_finished()),
        "a start finished before the reads: the commit was not slow, so this proved nothing"
    );
    for s in starts {
        assert_eq!(s.await.unwrap(), 202);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
