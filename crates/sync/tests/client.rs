//! The HTTP client against canned servers on loopback: a live stream that
//! drops in the middle of an event, error bodies mapped to what a round
//! needs to tell apart.

use std::sync::{Arc, Mutex};

use sync::protocol::{Chain, Poke};
use sync::{CloudApi, Transport, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `answers` to successive connections (one request each).
async fn server(answers: Vec<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        for answer in answers {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        }
    });
    url
}

#[tokio::test]
async fn a_poke_stream_cut_mid_event_delivers_the_whole_events_only() {
    let url = server(vec![concat!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
        ": subscribed\n\n",
        "event: poke\ndata: {\"version\":1}\n\n",
        "event: poke\ndata: {\"vers"
    )])
    .await;
    let api = CloudApi::new(&url, Some("gf1.d.x".into()));
    let opened = Arc::new(Mutex::new(0));
    let pokes = Arc::new(Mutex::new(Vec::new()));
    let (o, p) = (opened.clone(), pokes.clone());
    let ended = api
        .follow_pokes(
            move || *o.lock().unwrap() += 1,
            move |poke: Poke| p.lock().unwrap().push(poke.version),
        )
        .await;
    // The stream ended (the loop reconnects and pulls on its next open).
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(*opened.lock().unwrap(), 1);
    assert_eq!(*pokes.lock().unwrap(), vec![1]);
}

#[tokio::test]
async fn error_answers_map_to_what_the_round_does_next() {
    let json = |status: &str, code: &str| -> &'static str {
        let body = format!("{{\"error\":{{\"code\":\"{code}\",\"message\":\"m\"}}}}");
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    };
    let url = server(vec![
        json("409 Conflict", "ClientStateNotFound"),
        json("409 Conflict", "MutationGap"),
        json("401 Unauthorized", "Unauthorized"),
        json("503 Service Unavailable", "ShuttingDown"),
        json("400 Bad Request", "InvalidQuery"),
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nnope!",
    ])
    .await;
    let api = CloudApi::new(&url, Some("gf1.d.x".into()));
    let pull = || api.pull("c", 0, Chain::Resumed, None);
    assert!(matches!(
        pull().await,
        Err(TransportError::ClientStateNotFound(_))
    ));
    assert!(matches!(pull().await, Err(TransportError::MutationGap(_))));
    assert!(matches!(pull().await, Err(TransportError::Unauthorized(_))));
    let e = pull().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(matches!(
        pull().await,
        Err(TransportError::Refused { status: 400, .. })
    ));
    assert!(
        matches!(pull().await, Err(TransportError::Refused { code, .. }) if code == "UnexpectedAnswer")
    );
    // Nothing listens any more: transient.
    assert!(pull().await.unwrap_err().is_transient());
}
