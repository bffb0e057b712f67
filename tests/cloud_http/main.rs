//! End-to-end tests of the real `galaxy-cloud` binary: each test starts it
//! on `127.0.0.1:0` with a temp data dir, given keys and the sample
//! orchestrations, reads the bound address from its first stdout line, and
//! drives it over HTTP with reqwest. Waits are driven by the server's own
//! event stream (or the process exit), never by sleeps.
//!
//! One test binary in three files: `instances.rs` (starting, status,
//! events, suspend, terminate, restart, rewind, purge), `queries.rs`
//! (listing, paging, query values) and `server.rs` (streams, keys,
//! metrics, signals, the database flag).

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

#[path = "../common/mod.rs"]
mod common;
mod instances;
mod queries;
mod server;

use common::sse::Sse;
use common::{spawn, wait_listening};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const FUNCTION_KEY: &str = "e2e-function-key-000001";
const MASTER_KEY: &str = "e2e-master-key-0000001";
const M: &str = "/runtime/webhooks/durabletask";

/// The key the check-status URIs carry, as the server derives it from
/// the master key.
fn system_key() -> String {
    cloud::Keys::new(FUNCTION_KEY, MASTER_KEY)
        .expect("keys")
        .system_key()
}
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

/// One page of a listing: `req` sent with the continuation token of the
/// page before (if any), answered 200; returns the next page's token and
/// this page's body.
async fn next_page(
    mut req: reqwest::RequestBuilder,
    token: &Option<String>,
) -> (Option<String>, Value) {
    if let Some(t) = token {
        req = req.header("x-ms-continuation-token", t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let next = r
        .headers()
        .get("x-ms-continuation-token")
        .map(|v| v.to_str().unwrap().to_string());
    (next, r.json().await.unwrap())
}

/// Sends `signal` (`-TERM`, `-INT`) to a server process.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal}");
}

/// How a server process exited (waiting at most [`WAIT`]).
async fn exit_status(mut child: Child) -> std::process::ExitStatus {
    tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("exited in time")
        .unwrap()
        .unwrap()
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
