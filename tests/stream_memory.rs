//! Bounded memory against the real `galaxy-cloud`: a live-stream
//! subscriber that stops reading while 320 instances start with 1 MB
//! inputs does not make the server hold those inputs. Updates carry at
//! most 4 KiB of payloads (`durable::elide`); without that bound the
//! broadcast would keep every input for the stalled subscriber (320 MB on
//! top of the server's own memory, past the bound below).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

const KEY: &str = "memory-function-key-001";
/// The bound this test states for the server's resident memory (a debug
/// build, SQLite page caches and the HTTP buffers included; about 140 MiB
/// measured). The pinned inputs alone would pass it.
const RSS_BOUND_MIB: u64 = 300;
/// Instances started, eight at a time, each with a 1 MB input.
const STARTS: usize = 320;

/// The server's peak resident memory so far (the kernel's high-water
/// mark, so a spike between two looks is not missed).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_subscriber_pins_no_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = common::spawn(
        dir.path(),
        &[
            "--function-key",
            KEY,
            "--master-key",
            "memory-master-key-0001",
        ],
    );
    let (_, base) = common::wait_listening(&lines);
    let pid = child.id();

    // A subscriber that reads the response head and then nothing more.
    let addr = base.trim_start_matches("http://");
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /runtime/webhooks/durabletask/stream?showHistoryOutput=true&code={KEY} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 256];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    // STARTS starts with 1 MB inputs, eight at a time.
    let input = serde_json::json!({ "blob": "x".repeat(1_000_000) }).to_string();
    let http = reqwest::Client::new();
    let started = Instant::now();
    for _ in 0..STARTS / 8 {
        let batch: Vec<_> = (0..8)
            .map(|_| {
                http.post(format!("{base}/api/orchestrators/Galaxy_Create?code={KEY}"))
                    .header("content-type", "application/json")
                    .body(input.clone())
                    .send()
            })
            .collect();
        for r in futures::future::join_all(batch).await {
            assert_eq!(r.unwrap().status(), 202);
        }
    }
    // Everything finished (the stream is still open and unread).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: serde_json::Value = http
            .get(format!(
                "{base}/runtime/webhooks/durabletask/instances?runtimeStatus=Pending,Running&top=1&showInput=false&code={KEY}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "instances still running: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = peak_rss_mib(pid);
    eprintln!(
        "{STARTS} starts with 1 MB inputs in {:?}; galaxy-cloud peak RSS {peak} MiB",
        started.elapsed()
    );
    assert!(
        peak < RSS_BOUND_MIB,
        "galaxy-cloud's RSS reached {peak} MiB (bound {RSS_BOUND_MIB} MiB)"
    );
    drop(stalled);
    child.kill().unwrap();
    child.wait().unwrap();
}
