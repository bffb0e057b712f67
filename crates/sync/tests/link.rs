//! Reachability against real sockets on 127.0.0.1: a tiny server that
//! answers with a chosen status, and a port nobody listens on.

use std::sync::Arc;
use std::time::Duration;

use sync::{CloudLink, NothingToSync, Reachability, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves every connection with `status`, and returns its base URL and
/// the request heads it received.
async fn server(status: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
                let body = "ok";
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, rx)
}

/// A URL whose port refuses connections for as long as the socket lives:
/// bound but not listening, so no other test (or an outgoing connection)
/// can take the port meanwhile.
fn closed_port_url() -> (String, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    (url, socket)
}

fn settings(url: &str) -> Settings {
    Settings {
        cloud_url: url.to_string(),
        ..Settings::default()
    }
}

#[tokio::test]
async fn a_healthy_cloud_is_online_and_never_gets_a_function_key() {
    let (url, mut requests) = server("200 OK").await;
    let link = CloudLink::new(settings(&url), Arc::new(NothingToSync));
    assert_eq!(link.status().connection.state, Reachability::Unknown);
    let status = link.check_now().await;
    assert_eq!(status.connection.state, Reachability::Online, "{status:?}");
    assert_eq!(status.pending_changes, 0);
    assert_eq!(link.status(), status, "published");
    let head = requests.recv().await.unwrap().to_lowercase();
    assert!(head.starts_with("get /healthz "), "{head}");
    assert!(!head.contains("x-functions-key"), "{head}");
}

#[tokio::test]
async fn an_unhealthy_or_absent_cloud_is_offline_with_a_reason() {
    let (url, _requests) = server("503 Service Unavailable").await;
    let link = CloudLink::new(settings(&url), Arc::new(NothingToSync));
    let status = link.check_now().await;
    assert_eq!(status.connection.state, Reachability::Offline);
    assert!(status.connection.message.contains("503"), "{status:?}");

    let (url, _closed) = closed_port_url();
    let link = CloudLink::new(settings(&url), Arc::new(NothingToSync));
    let status = link.check_now().await;
    assert_eq!(status.connection.state, Reachability::Offline);
    assert!(
        status.connection.message.contains("cannot connect"),
        "{status:?}"
    );
}

#[tokio::test]
async fn changing_the_settings_rechecks_at_once() {
    let (down, _closed) = closed_port_url();
    let (up, _requests) = server("200 OK").await;
    let link = CloudLink::new(settings(&down), Arc::new(NothingToSync));
    let mut statuses = link.subscribe();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // An hour between periodic checks: only the settings change can
    // explain a second check within the deadline.
    let run = tokio::spawn(link.clone().run(Duration::from_secs(3600), async {
        let _ = stop_rx.await;
    }));
    let offline = tokio::time::timeout(
        Duration::from_secs(10),
        statuses.wait_for(|s| s.connection.state == Reachability::Offline),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(offline.connection.cloud_url, down);
    link.set_settings(settings(&up));
    let online = tokio::time::timeout(
        Duration::from_secs(10),
        statuses.wait_for(|s| s.connection.state == Reachability::Online),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(online.connection.cloud_url, up);
    let _ = stop_tx.send(());
    run.await.unwrap();
}
