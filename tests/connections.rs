//! Connections and time, against the real `galaxy-cloud`: hundreds of
//! half-sent requests (slowloris) neither keep new clients out nor stay
//! open past the header-read timeout, and at the connection limit a new
//! client is served once a connection ends.

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

/// Waits until the server closes `s` (EOF or reset); when it did.
async fn closed_by_server(mut s: TcpStream) -> Instant {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {} // an error answer (408) before the close
            Err(_) => panic!("the server kept a half-sent request open for 30 s"),
        }
    }
}

fn start(extra: &[&str]) -> (std::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--header-read-timeout", "1s"];
    args.extend_from_slice(extra);
    let (child, lines) = common::spawn(dir.path(), &args);
    let (_, base) = common::wait_listening(&lines);
    (child, base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_keep_new_clients_out_and_are_closed() {
    let (mut child, base, _dir) = start(&[]);
    let addr = base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(half_sent(&addr).await);
    }
    // A new client, with all of them open, is answered.
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let answered = Instant::now();
    // And each half-sent request is closed by the server, after the answer
    // above (it waited for none of them).
    let closes = futures::future::join_all(slow.into_iter().map(closed_by_server)).await;
    assert!(closes.iter().all(|c| *c >= answered));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_new_client_waits_for_a_connection_to_end() {
    let (mut child, base, _dir) = start(&["--max-connections", "8"]);
    let addr = base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(half_sent(&addr).await);
    }
    let first_close = tokio::spawn(async move {
        let closes = futures::future::join_all(slow.into_iter().map(closed_by_server)).await;
        closes.into_iter().min().unwrap()
    });
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    let answered = Instant::now();
    assert_eq!(r.status(), 200);
    // Served, but only once a slot was free: after the first half-sent
    // connection was closed.
    assert!(first_close.await.unwrap() <= answered);
    child.kill().unwrap();
    child.wait().unwrap();
}
