//! Connections and time, against the real `galaxy-cloud`: hundreds of
//! half-sent requests (slowloris) neither keep new clients out nor stay
//! open past the header-read timeout, connections that send nothing at
//! all and idle keep-alive connections are closed after it too, and at the
//! connection limit a new client is served once a connection ends; a
//! trickled body gets 408, and HTTP/2 prefaces are not held.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

/// Opens a connection and sends half a request.
async fn half_sent(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await
        .unwrap();
    s
}

/// Waits until the server closes `s` (EOF or reset).
async fn closed_by_server(mut s: TcpStream) {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {} // an error answer (408) before the close
            Err(_) => panic!("the server kept a stalled connection open for 30 s"),
        }
    }
}

/// The header-read timeout the servers here run with.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);

fn start(extra: &[&str]) -> (std::process::Child, String, tempfile::TempDir) {
    start_with_timeout(&format!("{}s", HEADER_READ_TIMEOUT.as_secs()), extra)
}

fn start_with_timeout(
    header_read_timeout: &str,
    extra: &[&str],
) -> (std::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--header-read-timeout", header_read_timeout];
    args.extend_from_slice(extra);
    let (child, lines) = common::spawn(dir.path(), &args);
    let (_, base) = common::wait_listening(&lines);
    (child, base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_keep_new_clients_out_and_are_closed() {
    // A longer timeout than the others: opening 300 connections on a busy
    // machine must not outlast it.
    let (mut child, base, _dir) = start_with_timeout("5s", &[]);
    let addr = base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(half_sent(&addr).await);
    }
    // A new client, with all of them open, is answered: after its answer
    // each half-sent request is still open (nothing to read, no end of
    // stream), so the server waited for none of them.
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    // (A peek that waits a moment, not `try_read`, which answers "nothing
    // yet" without asking the kernel while the reactor has not seen the
    // socket readable: a close already there would pass for open.)
    let peeks = slow.iter().map(|s| async move {
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_millis(100), s.peek(&mut buf))
            .await
            .is_err()
    });
    let open = futures::future::join_all(peeks).await;
    assert!(
        open.iter().all(|o| *o),
        "a half-sent request was closed before a new client was answered"
    );
    // And each half-sent request is then closed by the server.
    futures::future::join_all(slow.into_iter().map(closed_by_server)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// At the limit of 8 connections, all held by clients that stall
/// (`silent`: connected and sent nothing; else half a request), a new
/// client is served once the server closed one of them.
async fn at_the_limit_a_new_client_waits_for_a_stalled_connection_to_end(silent: bool) {
    let (mut child, base, _dir) = start(&["--max-connections", "8"]);
    let addr = base.trim_start_matches("http://").to_string();
    // No stalled connection can be timed out before this instant plus the
    // header-read timeout (tokio's timers never fire early).
    let before = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(if silent {
            TcpStream::connect(&addr).await.unwrap()
        } else {
            half_sent(&addr).await
        });
    }
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    let answered = Instant::now();
    assert_eq!(r.status(), 200);
    // Served, but only once a slot was free: not before a stalled
    // connection could have been closed. (Comparing against when this test
    // saw the closes instead would race the scheduler of its own tasks.)
    assert!(
        answered >= before + HEADER_READ_TIMEOUT,
        "a new client was answered after {:?}, before any stalled connection timed out",
        answered - before
    );
    // And the stalled connections were closed, every one.
    futures::future::join_all(slow.into_iter().map(closed_by_server)).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_new_client_waits_for_a_half_sent_request_to_end() {
    at_the_limit_a_new_client_waits_for_a_stalled_connection_to_end(false).await;
}

/// A client that connects and never sends a byte is closed after the
/// header-read timeout too (hyper's own timer starts only at the first
/// byte); before, eight of them shut the server out for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_new_client_waits_for_a_silent_connection_to_end() {
    at_the_limit_a_new_client_waits_for_a_stalled_connection_to_end(true).await;
}

/// A keep-alive connection left idle after its request is closed after
/// the header-read timeout (the next request's headers never came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let (mut child, base, _dir) = start(&[]);
    let addr = base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).await.unwrap();
    let answer = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Then nothing: the server closes it (closed_by_server panics after
    // 30 s, against a 1 s timeout).
    closed_by_server(s).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Opens the all-instances stream with `key`; the status line and the
/// connection (kept open).
async fn open_stream(addr: &str, key: &str) -> (String, TcpStream) {
    open_path(
        addr,
        &format!("/runtime/webhooks/durabletask/stream?code={key}"),
        "",
    )
    .await
}

/// GETs `path` with `headers` (each ending in CRLF) on a new connection;
/// the status line and the connection (kept open).
async fn open_path(addr: &str, path: &str, headers: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = s.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    (text.lines().next().unwrap_or_default().to_string(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_has_a_limit_of_live_streams() {
    let (function, master) = ("streams-function-key-01", "streams-master-key-0001");
    let (mut child, base, _dir) = start(&[
        "--max-streams-per-key",
        "3",
        "--function-key",
        function,
        "--master-key",
        master,
    ]);
    let addr = base.trim_start_matches("http://").to_string();
    let mut open = Vec::new();
    for _ in 0..3 {
        let (status, s) = open_stream(&addr, function).await;
        assert!(status.contains("200"), "{status}");
        open.push(s);
    }
    let r = reqwest::get(format!(
        "{base}/runtime/webhooks/durabletask/stream?code={function}"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyStreams", "{body}");
    // Another credential has its own allowance.
    let (status, _other) = open_stream(&addr, master).await;
    assert!(status.contains("200"), "{status}");
    // A stream that ends gives its place back (the server notices the
    // closed connection at its next write: an update).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        reqwest::Client::new()
            .post(format!(
                "{base}/api/orchestrators/Galaxy_Create?code={function}"
            ))
            .send()
            .await
            .unwrap();
        let (status, s) = open_stream(&addr, function).await;
        if status.contains("200") {
            open.push(s);
            break;
        }
        assert!(status.contains("429"), "{status}");
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A device's sync pokes stream counts against the device's allowance of
/// live streams; another device has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_s_sync_streams_count_against_its_limit() {
    let (mut child, base, _dir) = start(&["--max-streams-per-key", "2"]);
    let addr = base.trim_start_matches("http://").to_string();
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for name in ["first", "second"] {
        let r = http
            .post(format!("{base}/api/players"))
            .json(&serde_json::json!({ "device_name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        tokens.push(body["token"].as_str().unwrap().to_string());
    }
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let mut open = Vec::new();
    for _ in 0..2 {
        let (status, s) = open_path(&addr, "/api/sync/events", &bearer(&tokens[0])).await;
        assert!(status.contains("200"), "{status}");
        open.push(s);
    }
    let r = http
        .get(format!("{base}/api/sync/events"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyStreams", "{body}");
    let (status, _other) = open_path(&addr, "/api/sync/events", &bearer(&tokens[1])).await;
    assert!(status.contains("200"), "{status}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A client that sends its headers and then trickles the body, a byte at
/// a time, gets 408 once the body-read timeout has passed and its
/// connection is closed; before, it held a connection (and a request) as
/// long as it kept trickling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_its_connection_closed() {
    let key = "trickle-function-key-01";
    let (mut child, base, _dir) = start(&["--body-read-timeout", "1s", "--function-key", key]);
    let addr = base.trim_start_matches("http://").to_string();
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut read, mut write) = s.into_split();
    write
        .write_all(
            format!(
                "POST /api/orchestrators/Galaxy_Create?code={key} HTTP/1.1\r\nHost: {addr}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The fault: one byte every 100 ms, for as long as the server takes it.
    let trickle = tokio::spawn(async move {
        while write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("a trickled body held its connection for 30 s"),
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"RequestTimeout\""), "{answer}");
    trickle.abort();
    // A request whose body arrives in time is served as before.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/orchestrators/Galaxy_Create?code={key}"))
        .json(&serde_json::json!("in time"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Counted as what the client got.
    let metrics = reqwest::get(format!("{base}/metrics?code={key}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "galaxy_http_requests_total{method=\"POST\",route=\"/api/orchestrators/{functionName}\",status=\"408\"} 1"
        ),
        "{metrics}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// HTTP/2 without TLS is not served: hyper's HTTP/2 server has no header
/// or idle timer, so a client that sent the preface and went quiet held
/// its connection for good. Now the preface is answered as a bad HTTP/1
/// request and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_is_refused_not_held() {
    let (mut child, base, _dir) = start(&[]);
    let addr = base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(s).await;
    child.kill().unwrap();
    child.wait().unwrap();
}
