//! Sync end to end, across processes: the real `galaxy-cloud` binary and
//! devices driven through the real `galaxy` CLI, each with its own data
//! directory. Waits follow the processes' own output (a status line, an
//! exit), never sleeps.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

mod common;
use common::devices::{cloud, token, two_devices};
use common::{galaxy, list, ok, Watcher};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn galaxies_made_offline_reach_the_other_device_live_and_edits_converge() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    // B keeps syncing live; its status lines say what each round did.
    let watcher = Watcher::start(&d.b);
    watcher.wait_for("UpToDate");

    // A is offline as far as sync goes: creating needs no cloud.
    assert_eq!(
        ok(&d.a, &["create", "-n", "5"]).trim(),
        "created 5 galaxies"
    );
    let status: Value = serde_json::from_str(&ok(&d.a, &["status"])).unwrap();
    assert_eq!(status["sync"]["pending"], 5);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 5 pulled 0");
    // The poke makes B pull at once.
    watcher.wait_for("pulled 5");
    assert!(watcher.stop(), "sync --watch ends cleanly on SIGTERM");
    let a_list = list(&d.a);
    assert_eq!(a_list.len(), 5);
    assert_eq!(list(&d.b), a_list);
    let b_all: Vec<Value> = serde_json::from_str(&ok(&d.b, &["list", "--json"])).unwrap();
    assert!(b_all.iter().all(|g| g["origin"] == "laptop"), "{b_all:?}");

    // A renames what B deletes: the delete wins and A is told.
    let (x, y) = (&a_list[0].0, &a_list[1].0);
    ok(&d.a, &["rename", x, "Home Cluster"]);
    ok(&d.b, &["delete", x]);
    // Both rename y: the one that reaches the cloud last wins.
    ok(&d.a, &["rename", y, "From A"]);
    ok(&d.b, &["rename", y, "From B"]);
    ok(&d.b, &["sync"]);
    let a_sync = ok(&d.a, &["sync"]);
    assert!(a_sync.contains("deleted on another device"), "{a_sync}");
    assert!(
        a_sync.contains("also changed on another device"),
        "{a_sync}"
    );
    ok(&d.b, &["sync"]);
    let a_list = list(&d.a);
    assert_eq!(list(&d.b), a_list);
    assert_eq!(a_list.len(), 4);
    assert!(!a_list.iter().any(|(id, _)| id == x));
    assert!(
        a_list.contains(&(y.clone(), "From A".to_string())),
        "{a_list:?}"
    );

    // Bad input gets readable errors and changes nothing.
    let out = galaxy(&d.a, &["rename", y, "   "]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be empty"));
    let out = galaxy(&d.a, &["delete", "no-such-galaxy"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no galaxy with id no-such-galaxy"));
    assert_eq!(list(&d.a), a_list);
}

/// A TCP proxy to `upstream`.
struct Proxy {
    url: String,
    /// Answers dropped so far.
    dropped: Arc<AtomicUsize>,
    /// The first request line of every connection, as it is forwarded.
    requests: mpsc::Receiver<String>,
}

/// A proxy that, for the first `drop_answers` connections, forwards the
/// request and then closes without passing the answer on (the server
/// applied the push; the client never hears so). It reports each
/// connection's first request line, so a test can act at a known point
/// (kill a device while its push is in flight).
fn proxy(upstream: &str, drop_answers: usize) -> Proxy {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let (seen, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { continue };
            let mut server = TcpStream::connect(&upstream).unwrap();
            let lose = n < drop_answers;
            let (counter, seen) = (counter.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut c2 = client.try_clone().unwrap();
                let mut s2 = server.try_clone().unwrap();
                let up = std::thread::spawn(move || {
                    let mut first = [0u8; 4096];
                    let n = c2.read(&mut first).unwrap_or(0);
                    let _ = s2.write_all(&first[..n]);
                    let line = String::from_utf8_lossy(&first[..n]);
                    let _ = seen.send(line.lines().next().unwrap_or("").to_string());
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                if lose {
                    // Wait for the server's answer, then drop it.
                    let mut first = [0u8; 1];
                    let _ = server.read(&mut first);
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                } else {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.flush();
                    let _ = client.shutdown(std::net::Shutdown::Write);
                }
                let _ = up.join();
            });
        }
    });
    Proxy {
        url,
        dropped,
        requests,
    }
}

/// Points a device at another cloud URL (its account unchanged); returns
/// the URL it had.
fn point_at(dir: &Path, url: &str) -> String {
    let path = dir.join("settings.json");
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let before = settings["cloudUrl"].as_str().unwrap().to_string();
    settings["cloudUrl"] = json!(url);
    std::fs::write(&path, settings.to_string()).unwrap();
    before
}

/// Runs `galaxy sync` on `dir` through `proxy` and SIGKILLs it as soon as
/// the proxy forwards a request starting with `at` (e.g. the push), so the
/// kill lands while that request is in flight or just answered.
fn kill_during(dir: &Path, proxy: &Proxy, at: &str) {
    // Lines of earlier runs are not this run's.
    while proxy.requests.try_recv().is_ok() {}
    let mut child = Command::new(env!("CARGO_BIN_EXE_galaxy"))
        .arg("--data-dir")
        .arg(dir)
        .arg("sync")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let line = proxy
            .requests
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no request starting with '{at}' came through"));
        if line.starts_with(at) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn lost_answers_and_killed_pushes_still_give_each_galaxy_exactly_once() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    ok(&d.a, &["create", "-n", "1500"]);

    // SIGKILL the pushing device while its push is in flight, a few times.
    let watch = proxy(&cloud.base, 0);
    let real = point_at(&d.a, &watch.url);
    for _ in 0..3 {
        kill_during(&d.a, &watch, "POST /api/sync/push");
    }

    // Then the answers of the next two connections are lost after the
    // server applied the push (new galaxies, so there is a push to lose).
    ok(&d.a, &["create", "-n", "200"]);
    let status: Value = serde_json::from_str(&ok(&d.a, &["status"])).unwrap();
    assert!(
        status["sync"]["pending"].as_u64().unwrap() >= 200,
        "{status}"
    );
    let lossy = proxy(&cloud.base, 2);
    point_at(&d.a, &lossy.url);
    for _ in 0..2 {
        let out = galaxy(&d.a, &["sync"]);
        assert!(
            !out.status.success(),
            "the answer was lost, so the push cannot look settled"
        );
    }
    assert_eq!(lossy.dropped.load(Ordering::SeqCst), 2);
    ok(&d.a, &["sync"]);
    point_at(&d.a, &real);

    let status: Value = serde_json::from_str(&ok(&d.a, &["status"])).unwrap();
    assert_eq!(status["sync"]["pending"], 0, "{status}");
    // B is SIGKILLed mid-pull (each page commits on its own), then pulls
    // the rest.
    let real_b = point_at(&d.b, &watch.url);
    kill_during(&d.b, &watch, "GET /api/sync/pull");
    point_at(&d.b, &real_b);
    ok(&d.b, &["sync"]);
    let a_list = list(&d.a);
    assert_eq!(a_list.len(), 1700);
    assert_eq!(list(&d.b), a_list);
    // The cloud applied each galaxy once: one version each.
    let page: Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new()
            .get(format!(
                "{}/api/sync/pull?client_id=x&limit=1000",
                cloud.base
            ))
            .bearer_auth(token(&d.b))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(
        page["latest"], 1700,
        "one version per galaxy, no duplicates: {}",
        page["latest"]
    );
}

#[tokio::test]
async fn tokens_scope_every_route_to_one_player_and_bad_input_is_refused() {
    let cloud = cloud(&[]);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", cloud.base);
    let register = |name: &str| {
        let http = http.clone();
        let u = url("/api/players");
        let name = name.to_string();
        async move {
            let r = http
                .post(u)
                .json(&json!({ "device_name": name }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()
        }
    };
    let alice = register("alice-laptop").await;
    let bob = register("bob-laptop").await;
    let (ta, tb) = (
        alice["token"].as_str().unwrap(),
        bob["token"].as_str().unwrap(),
    );
    assert!(ta.len() > 64 && ta != tb);

    // No token, a wrong one, a function key instead of a token: 401 JSON.
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Bearer gf1.x.0000"),
        Some("Basic abc"),
    ] {
        for (method, path) in [
            ("GET", "/api/players/me"),
            ("GET", "/api/sync/pull"),
            ("POST", "/api/sync/push"),
            ("GET", "/api/sync/events"),
            ("POST", "/api/players/link-codes"),
        ] {
            let mut r = http.request(method.parse().unwrap(), url(path));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let r = r.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized");
        }
    }
    // Bob's pushes land in Bob's data only.
    let entity = "01a00000-0000-7000-8000-000000000001";
    let push = json!({"client_id": "bob-1", "mutations": [{"mutation_id": 1, "op": "put", "entity_id": entity, "base_version": 0,
        "body": {"name": "Bob's", "coords": {"x": 1, "y": 2, "z": 3}, "createdAt": "2026-12-01T00:00:00Z"}}]});
    let r = http
        .post(url("/api/sync/push"))
        .bearer_auth(tb)
        .json(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let a_pull: Value = http
        .get(url("/api/sync/pull?client_id=a"))
        .bearer_auth(ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a_pull["changes"], json!([]));
    // Alice using Bob's client id is a stranger to it.
    let mut stolen = push.clone();
    stolen["mutations"][0]["mutation_id"] = json!(2);
    let r = http
        .post(url("/api/sync/push"))
        .bearer_auth(ta)
        .json(&stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "ClientStateNotFound"
    );
    // Alice cannot revoke Bob's device: it does not exist for her.
    let r = http
        .delete(url(&format!(
            "/api/players/devices/{}",
            bob["device_id"].as_str().unwrap()
        )))
        .bearer_auth(ta)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Malformed bodies and queries: 400 with a code; too many mutations: 413.
    for (body, code) in [
        ("{", "InvalidJson"),
        ("{\"client_id\": 5}", "InvalidRequest"),
        (
            "{\"client_id\":\"c\",\"mutations\":[],\"x\":1}",
            "InvalidRequest",
        ),
        // A NUL cannot be stored in PostgreSQL's text: refused before any
        // lookup, on every store.
        (
            "{\"client_id\":\"a\\u0000\",\"mutations\":[]}",
            "InvalidRequest",
        ),
        ("{\"client_id\":\"\",\"mutations\":[]}", "InvalidRequest"),
    ] {
        let r = http
            .post(url("/api/sync/push"))
            .bearer_auth(ta)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            code,
            "{body}"
        );
    }
    let many: Vec<Value> = (1..=1001)
        .map(|i| json!({"mutation_id": i, "op": "delete", "entity_id": entity}))
        .collect();
    let r = http
        .post(url("/api/sync/push"))
        .bearer_auth(ta)
        .json(&json!({"client_id": "a-1", "mutations": many}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for q in [
        "client_id=a&cursor=-1",
        "client_id=a&cursor=abc",
        "client_id=a&limit=0",
        "client_id=a&fresh=maybe",
        "client_id=a%00",
        "client_id=",
    ] {
        let r = http
            .get(url(&format!("/api/sync/pull?{q}")))
            .bearer_auth(ta)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
    }
    // A gap applies nothing.
    let gap = json!({"client_id": "bob-1", "mutations": [{"mutation_id": 5, "op": "delete", "entity_id": entity}]});
    let r = http
        .post(url("/api/sync/push"))
        .bearer_auth(tb)
        .json(&gap)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "MutationGap"
    );

    // Link codes: used once; wrong ones refused; revocation is immediate.
    let code: Value = http
        .post(url("/api/players/link-codes"))
        .bearer_auth(ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let join = |code: &str| {
        http.post(url("/api/players/devices"))
            .json(&json!({"code": code, "device_name": "phone"}))
            .send()
    };
    let phone = join(code["code"].as_str().unwrap()).await.unwrap();
    assert_eq!(phone.status(), StatusCode::CREATED);
    let phone: Value = phone.json().await.unwrap();
    assert_eq!(phone["player_id"], alice["player_id"]);
    for c in [code["code"].as_str().unwrap(), "ZZZZ-ZZZZ", ""] {
        let r = join(c).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{c}");
    }
    // The phone listens live; its revocation ends the stream.
    let mut live = http
        .get(url("/api/sync/events"))
        .bearer_auth(phone["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let hello = live
        .chunk()
        .await
        .unwrap()
        .expect("the stream's first bytes");
    assert!(String::from_utf8_lossy(&hello).contains("subscribed"));
    let r = http
        .delete(url(&format!(
            "/api/players/devices/{}",
            phone["device_id"].as_str().unwrap()
        )))
        .bearer_auth(ta)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        // Keep-alive comments may come first; then the end.
        while live.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the revoked device's live stream went on");
    let r = http
        .get(url("/api/players/me"))
        .bearer_auth(phone["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let me: Value = http
        .get(url("/api/players/me"))
        .bearer_auth(ta)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["devices"].as_array().unwrap().len(), 2);

    // Device tokens open no Durable Functions route (403: the token is
    // good, the route is not for it), and function keys no player route.
    let r = http
        .get(url("/runtime/webhooks/durabletask/instances"))
        .bearer_auth(ta)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[test]
fn tokens_never_reach_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cloud.log");
    let (mut child, lines) = common::spawn_with(
        &dir.path().join("cloud"),
        "127.0.0.1:0",
        &[],
        Stdio::from(std::fs::File::create(&log).unwrap()),
        &[("GALAXY_LOG", "trace")],
    );
    let (_, base) = common::wait_listening(&lines);
    let d = two_devices(&base);
    let verbose = |dir: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_galaxy"))
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("GALAXY_LOG", "trace")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let mut device_logs = verbose(&d.a, &["create", "-n", "3"]);
    device_logs += &verbose(&d.a, &["sync"]);
    device_logs += &verbose(&d.b, &["sync"]);
    device_logs += &verbose(&d.b, &["status"]);
    let _ = child.kill();
    let _ = child.wait();
    let cloud_log = std::fs::read_to_string(&log).unwrap();
    for dev in [&d.a, &d.b] {
        let t = token(dev);
        let secret = t.rsplit('.').next().unwrap();
        assert!(!cloud_log.contains(secret), "the cloud logged a token");
        assert!(!device_logs.contains(secret), "a device logged a token");
    }
    assert!(
        !device_logs.is_empty() && !cloud_log.is_empty(),
        "trace logging was on"
    );
}

#[test]
fn a_function_key_in_old_settings_is_dropped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        r#"{"cloudUrl":"http://127.0.0.1:9","cloudKey":"the-master-function-key"}"#,
    )
    .unwrap();
    let out = galaxy(dir.path(), &["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("function key"));
    let text = std::fs::read_to_string(dir.path().join("settings.json")).unwrap();
    assert!(!text.contains("the-master-function-key"), "{text}");
    // Unregistered: sync says what to do.
    let out = galaxy(dir.path(), &["sync"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("register"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_the_cloud_runs_for_the_player_and_arrives_through_pull() {
    let cloud = cloud(&[
        "--function-key",
        "sync-e2e-function-key-1",
        "--master-key",
        "sync-e2e-master-key-01",
    ]);
    let d = two_devices(&cloud.base);
    let out = ok(&d.a, &["create", "--in-cloud"]);
    assert!(out.contains("Completed"), "{out}");
    assert!(out.trim_end().ends_with("pulled 1"), "{out}");
    let all: Vec<Value> = serde_json::from_str(&ok(&d.a, &["list", "--json"])).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["origin"], "cloud (laptop)");
    let instance = all[0]["instanceId"].as_str().unwrap().to_string();
    // B gets it too, once.
    assert_eq!(ok(&d.b, &["sync"]).trim(), "pushed 0 pulled 1");

    let http = reqwest::Client::new();
    let status = |token: String| {
        let url = format!(
            "{}/runtime/webhooks/durabletask/instances/{instance}",
            cloud.base
        );
        let http = http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // The player's devices read its instance; another player's do not
    // even learn it exists; the function key still sees everything.
    assert_eq!(status(token(&d.b)).await, StatusCode::OK);
    let stranger: Value = http
        .post(format!("{}/api/players", cloud.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let st = stranger["token"].as_str().unwrap().to_string();
    assert_eq!(status(st.clone()).await, StatusCode::NOT_FOUND);
    let r = http
        .get(format!(
            "{}/runtime/webhooks/durabletask/instances/{instance}/stream",
            cloud.base
        ))
        .bearer_auth(&st)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .get(format!(
            "{}/runtime/webhooks/durabletask/instances/{instance}",
            cloud.base
        ))
        .header("x-functions-key", "sync-e2e-function-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A start under an id of the player's, sent twice (as after a lost
    // answer), makes one galaxy: the second finds the instance.
    let player = instance.split_once('.').unwrap().0.to_string();
    let again = format!("{player}.sent-twice");
    for _ in 0..2 {
        let r = http
            .post(format!(
                "{}/api/orchestrators/Galaxy_Create/{again}?timeout=30",
                cloud.base
            ))
            .bearer_auth(token(&d.a))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "completed, waited for");
    }
    assert_eq!(ok(&d.b, &["sync"]).trim(), "pushed 0 pulled 1");
    // A device token starts nothing else, and manages nothing.
    let r = http
        .post(format!("{}/api/orchestrators/Sample_Fail", cloud.base))
        .bearer_auth(token(&d.a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for (method, path) in [
        (
            reqwest::Method::DELETE,
            format!("/runtime/webhooks/durabletask/instances/{instance}"),
        ),
        (
            reqwest::Method::POST,
            format!("/runtime/webhooks/durabletask/instances/{instance}/terminate"),
        ),
        (
            reqwest::Method::POST,
            "/api/orchestrators/Galaxy_Create/another-player.x".to_string(),
        ),
        (
            reqwest::Method::POST,
            format!("/api/orchestrators/Sample_Fail/{player}.y"),
        ),
    ] {
        // A valid token on a route it does not open: 403, not the 401
        // that tells a device its token was revoked; a wrong one: 401.
        let r = http
            .request(method.clone(), format!("{}{path}", cloud.base))
            .bearer_auth(token(&d.a))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "Forbidden", "{body}");
        let r = http
            .request(method.clone(), format!("{}{path}", cloud.base))
            .bearer_auth("not-a-device-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

#[test]
fn joining_another_player_brings_everything_both_ways_even_galaxies_from_before_sync() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    ok(&d.a, &["create", "-n", "3"]);
    ok(&d.a, &["sync"]);
    // C made galaxies before this version tracked them (an old desktop's
    // table), then registered its own player and made more.
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c");
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let node = galaxy::LocalNode::open(&c, galaxy::LocalConfig::default()).unwrap();
            for _ in 0..2 {
                let id = node
                    .engine
                    .start_orchestration(galaxy::GALAXY_CREATE, None, ())
                    .await
                    .unwrap();
                node.engine
                    .wait_for_completion(&id, Duration::from_secs(30))
                    .await
                    .unwrap();
            }
            node.shutdown(Duration::from_secs(5)).await;
        });
    }
    ok(
        &c,
        &["register", "--cloud", &cloud.base, "--name", "old-desktop"],
    );
    ok(&c, &["create", "-n", "1"]);
    assert_eq!(ok(&c, &["sync"]).trim(), "pushed 3 pulled 0");
    // Then C joins A's player: its three go there, A's three come here.
    let code = ok(&d.a, &["link"]).trim().to_string();
    ok(&c, &["link", &code, "--name", "old-desktop"]);
    let synced = ok(&c, &["sync"]);
    assert_eq!(synced.trim(), "pushed 3 pulled 3", "{synced}");
    ok(&d.a, &["sync"]);
    ok(&d.b, &["sync"]);
    let all = list(&d.a);
    assert_eq!(all.len(), 6);
    assert_eq!(list(&c), all);
    assert_eq!(list(&d.b), all);
}

/// The device's own resend of a cloud start: the proxy drops the first
/// start's answer after the cloud took it; the device sends the same
/// start again (same instance id) and the player gets one galaxy.
#[test]
fn a_cloud_create_whose_answer_was_lost_is_sent_again_and_makes_one_galaxy() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    let lossy = proxy(&cloud.base, 1);
    let real = point_at(&d.a, &lossy.url);
    let out = ok(&d.a, &["create", "--in-cloud"]);
    assert!(out.contains("Completed"), "{out}");
    assert_eq!(lossy.dropped.load(Ordering::SeqCst), 1);
    let starts: Vec<String> = lossy
        .requests
        .try_iter()
        .filter(|l| l.starts_with("POST /api/orchestrators/Galaxy_Create/"))
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(starts[0], starts[1], "the same instance id both times");
    point_at(&d.a, &real);

    assert_eq!(ok(&d.b, &["sync"]).trim(), "pushed 0 pulled 1");
    assert_eq!(list(&d.b), list(&d.a));
    assert_eq!(list(&d.a).len(), 1);
}
