//! Sync under faults: two devices (`galaxy::PlayerDevice`, the library of
//! the app and the CLI) talk to the real `galaxy-cloud` through an HTTP
//! proxy that drops requests, drops answers after the server committed,
//! sends requests twice, delays and resets connections; the server itself
//! is SIGKILLed and restarted mid-run. 10,000 mutations (creates, renames,
//! deletes) later, with the faults off, both devices hold exactly the
//! server's state, and the proxy (which sees every answer the server gave)
//! never saw a mutation applied twice.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use galaxy::{Coords, Galaxy, PlayerDevice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sync::SyncerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

const MUTATIONS: usize = 10_000;

/// What the proxy saw the server answer.
#[derive(Default)]
struct Ledger {
    /// (client id, mutation id) applied, and how often.
    applied: HashMap<(String, u64), u32>,
}

struct Proxy {
    url: String,
    faults: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
}

/// Reads one HTTP/1.1 message head and its `Content-Length` body.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..head_end + length].to_vec()))
}

/// The request with `Connection: close` (one request per connection, so
/// the proxy can read each answer to its end).
fn closing(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn forward(upstream: &str, request: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// Records which mutations a push answer applied.
fn record(ledger: &Mutex<Ledger>, request_body: &[u8], answer: &[u8]) {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let (Ok(req), Ok(res)) = (
        serde_json::from_slice::<Value>(request_body),
        serde_json::from_slice::<Value>(&answer[split + 4..]),
    ) else {
        return;
    };
    let client = req["client_id"].as_str().unwrap_or_default().to_string();
    let mut ledger = ledger.lock().unwrap();
    for r in res["results"].as_array().into_iter().flatten() {
        if r["status"] == "applied" {
            let id = r["mutation_id"].as_u64().unwrap_or(0);
            *ledger.applied.entry((client.clone(), id)).or_default() += 1;
        }
    }
}

async fn start_proxy(upstream: String) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let faults = Arc::new(AtomicBool::new(true));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (f, l) = (faults.clone(), ledger.clone());
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(7);
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let fault = if f.load(Ordering::SeqCst) {
                rng.gen_range(0..100u32)
            } else {
                100
            };
            let delay = rng.gen_range(0..20u64);
            let (upstream, ledger) = (upstream.clone(), l.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_request(&mut client).await else {
                    return;
                };
                let is_push = head.starts_with("POST /api/sync/push");
                let request = closing(&head, &body);
                match fault {
                    // Dropped request: the server never hears of it.
                    0..=7 => return,
                    // Reset before anything is forwarded.
                    8..=11 => {
                        let _ = client.set_zero_linger();
                        return;
                    }
                    12..=19 => tokio::time::sleep(Duration::from_millis(delay)).await,
                    _ => {}
                }
                let mut answer = forward(&upstream, &request).await;
                if let (true, Some(a)) = (is_push, &answer) {
                    record(&ledger, &body, a);
                }
                if (20..=27).contains(&fault) {
                    // Sent twice: the second answer is the one returned.
                    answer = forward(&upstream, &request).await;
                    if let (true, Some(a)) = (is_push, &answer) {
                        record(&ledger, &body, a);
                    }
                }
                match (fault, answer) {
                    // The server committed; the answer is lost.
                    (28..=35, _) => {
                        let _ = client.set_zero_linger();
                    }
                    (_, Some(a)) => {
                        let _ = client.write_all(&a).await;
                        let _ = client.shutdown().await;
                    }
                    (_, None) => {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    Proxy {
        url,
        faults,
        ledger,
    }
}

fn start_cloud(dir: &Path, port: u16) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let (child, lines) = common::spawn_on(dir, &listen, &[]);
    common::wait_listening(&lines);
    child
}

fn galaxy_row(name: String) -> Galaxy {
    Galaxy {
        partition_key: "galaxies".into(),
        row_key: uuid::Uuid::now_v7().to_string(),
        timestamp: Utc::now(),
        name,
        coords: Coords { x: 1, y: 2, z: 3 },
        instance_id: "faults".into(),
        version: 0,
        origin: String::new(),
    }
}

/// A random local change among the galaxies `known` (kept current by
/// it); returns whether it made a mutation. A galaxy a pull removed since
/// the list was read makes no mutation.
async fn random_change(
    d: &PlayerDevice,
    known: &mut Vec<String>,
    rng: &mut StdRng,
    n: usize,
) -> bool {
    let roll = rng.gen_range(0..10);
    if known.is_empty() || roll < 5 {
        let g = galaxy_row(format!("G{n}"));
        known.push(g.row_key.clone());
        return d.replica().table().insert(g).await.unwrap();
    }
    let i = rng.gen_range(0..known.len());
    if roll < 8 {
        d.rename(&known[i], &format!("R{n}")).await.is_ok()
    } else {
        let key = known.swap_remove(i);
        d.delete(&key).await.is_ok()
    }
}

/// Retries `f` until it succeeds (each try crosses the faulty network).
async fn retried<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let mut last = String::new();
    for _ in 0..50 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e.to_string(),
        }
    }
    panic!("{what} never got through: {last}");
}

fn state(d: &PlayerDevice) -> Vec<(String, String)> {
    let mut v: Vec<_> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|g| (g.row_key, g.name))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mutations_through_a_hostile_network_and_a_server_crash_apply_once_and_converge(
) {
    let cloud_dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = start_cloud(cloud_dir.path(), port);
    let direct = format!("http://127.0.0.1:{port}");
    let proxy = start_proxy(format!("127.0.0.1:{port}")).await;

    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        PlayerDevice::open(&dir.path().join(name), None, SyncerConfig::default())
            .unwrap()
            .0
    };
    let (a, b) = (open("a"), open("b"));
    // Registering and joining cross the faults too: retried (a join whose
    // answer was lost used its code up, so each try takes a new code).
    retried("registering", || a.register(&proxy.url, "a")).await;
    retried("joining", || async {
        let code = a.link_code().await?;
        b.join(&proxy.url, &code.code, "b").await
    })
    .await;

    let mut rng = StdRng::seed_from_u64(42);
    let mut made = 0;
    let mut failures = 0;
    let mut crashed = false;
    while made < MUTATIONS {
        for d in [&a, &b] {
            let mut known: Vec<String> = d.list().unwrap().into_iter().map(|g| g.row_key).collect();
            for _ in 0..rng.gen_range(1..200) {
                if random_change(d, &mut known, &mut rng, made).await {
                    made += 1;
                }
            }
            if d.sync_once().await.is_err() {
                failures += 1;
            }
        }
        if !crashed && made > MUTATIONS / 2 {
            // SIGKILL the server between rounds (a push may be in flight
            // from the other loop iteration's retries), then restart it.
            server.kill().unwrap();
            server.wait().unwrap();
            assert!(a.sync_once().await.is_err(), "the server is down");
            server = start_cloud(cloud_dir.path(), port);
            crashed = true;
        }
    }
    assert!(failures > 0, "the faults were felt");

    // Faults off: sync until both are empty and a last round moves nothing.
    proxy.faults.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        a.sync_once().await.unwrap();
        b.sync_once().await.unwrap();
    }
    a.sync_once().await.unwrap();
    for d in [&a, &b] {
        assert_eq!(d.replica().table().pending_changes(), 0);
    }

    // The server's own state, read with a fresh client straight from it.
    let token = b.settings().account.unwrap().token;
    let http = reqwest::Client::new();
    let mut cursor = 0;
    let mut live = HashMap::new();
    loop {
        let page: Value = http
            .get(format!(
                "{direct}/api/sync/pull?client_id=audit&cursor={cursor}&limit=1000"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in page["changes"].as_array().unwrap() {
            let id = c["entity_id"].as_str().unwrap().to_string();
            if c["deleted"].as_bool().unwrap() {
                live.remove(&id);
            } else {
                live.insert(id, c["body"]["name"].as_str().unwrap().to_string());
            }
        }
        cursor = page["cursor"].as_u64().unwrap();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let mut server_state: Vec<_> = live.into_iter().collect();
    server_state.sort();
    assert!(!server_state.is_empty());
    assert_eq!(state(&a), server_state, "device A converged to the server");
    assert_eq!(state(&b), server_state, "device B converged to the server");
    let ids: HashSet<_> = server_state.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), server_state.len());

    {
        let ledger = proxy.ledger.lock().unwrap();
        let twice: Vec<_> = ledger.applied.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "applied more than once: {twice:?}");
        assert!(
            ledger.applied.len() >= MUTATIONS / 2,
            "pushes went through the proxy"
        );
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    let _ = server.kill();
    let _ = server.wait();
}
