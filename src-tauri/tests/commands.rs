//! The commands through Tauri's mock runtime: real IPC requests (origin
//! `tauri://localhost`), real engine and SQLite files in a temp dir, events
//! caught with Rust listeners. No window system needed at run time.

use std::sync::mpsc;
use std::time::Duration;

use galaxy_desktop::{configure_with, DesktopOptions, GALAXY_ADDED, INSTANCE_UPDATED};
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::{App, Listener, WebviewWindow, WebviewWindowBuilder};

struct TestApp {
    app: App<MockRuntime>,
    window: WebviewWindow<MockRuntime>,
    _dir: Option<tempfile::TempDir>,
}

fn start_in(dir: &std::path::Path) -> TestApp {
    start_listening(dir, &[]).0
}

/// Starts the app on `dir` with the events `names` listened to before its
/// setup runs (setup may already sync in the background: a listener added
/// after it could miss the first events).
fn start_listening(dir: &std::path::Path, names: &[&str]) -> (TestApp, Vec<mpsc::Receiver<Value>>) {
    let app = configure_with(
        mock_builder(),
        DesktopOptions {
            data_dir: Some(dir.to_path_buf()),
        },
    )
    .build(mock_context(noop_assets()))
    .expect("app builds");
    let window = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .expect("window");
    let receivers = names.iter().map(|name| listen(&app, name)).collect();
    // Setup runs when the event loop starts: one iteration runs it (the
    // deprecation is about calling this in a loop, which we do not).
    let mut app = app;
    #[allow(deprecated)]
    app.run_iteration(|_, _| {});
    let t = TestApp {
        app,
        window,
        _dir: None,
    };
    (t, receivers)
}

/// Collects the payloads of the event `name`.
fn listen(app: &App<MockRuntime>, name: &str) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    app.listen_any(name, move |e| {
        let _ = tx.send(serde_json::from_str(e.payload()).unwrap());
    });
    rx
}

fn start() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_in(dir.path());
    t._dir = Some(dir);
    t
}

impl TestApp {
    /// Invokes a command as the page would; Ok(value) or Err(error payload).
    fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        get_ipc_response(
            &self.window,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(args),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|b| b.deserialize::<Value>().unwrap())
    }

    /// Collects the payloads of an event.
    fn events(&self, name: &str) -> mpsc::Receiver<Value> {
        listen(&self.app, name)
    }
}

/// Waits for a payload matching `pred` (with a deadline).
fn wait_event(rx: &mpsc::Receiver<Value>, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let v = rx.recv_timeout(left).expect("event within 30 s");
        if pred(&v) {
            return v;
        }
    }
}

#[test]
fn create_galaxy_pushes_every_change_and_the_galaxy() {
    let t = start();
    let updates = t.events(INSTANCE_UPDATED);
    let galaxies = t.events(GALAXY_ADDED);
    let snap = t.invoke("load_state", json!({})).unwrap();
    assert_eq!(snap["galaxies"], json!([]));
    assert_eq!(snap["sync"]["pendingChanges"], 0);
    assert!(snap["pid"].as_u64().unwrap() > 0);

    let id = t.invoke("create_galaxy", json!({})).unwrap();
    let id = id.as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let done = wait_event(&updates, |v| {
        if v["instanceId"] == id.as_str() {
            seen.push(v["runtimeStatus"].as_str().unwrap().to_string());
        }
        v["instanceId"] == id.as_str() && v["runtimeStatus"] == "Completed"
    });
    assert_eq!(seen.first().map(String::as_str), Some("Pending"));
    assert!(seen.iter().any(|s| s == "Running"), "{seen:?}");
    let tasks: Vec<_> = done["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tasks,
        [
            ("Utility_Coords", "Completed"),
            ("Utility_Name", "Completed"),
            ("Galaxy_Create_Impl", "Completed")
        ]
    );
    let galaxy = wait_event(&galaxies, |g| g["instanceId"] == id.as_str());
    assert_eq!(galaxy["name"], done["galaxy"]["name"]);

    // The queries agree with what was pushed.
    let listed = t.invoke("list_galaxies", json!({})).unwrap();
    assert_eq!(listed, json!([galaxy]));
    let one = t
        .invoke("get_instance", json!({ "instanceId": id }))
        .unwrap();
    assert_eq!(one["timeline"], done["timeline"]);
    let completed = t
        .invoke("list_instances", json!({ "statuses": ["Completed"] }))
        .unwrap();
    assert_eq!(completed.as_array().unwrap().len(), 1);
    let running = t
        .invoke(
            "list_instances",
            json!({ "statuses": ["Running", "Pending"] }),
        )
        .unwrap();
    assert_eq!(running, json!([]));
}

#[test]
fn failures_come_back_as_readable_messages() {
    let t = start();
    let err = t
        .invoke("get_instance", json!({ "instanceId": "nope" }))
        .unwrap_err();
    assert_eq!(err["kind"], "notFound");
    assert!(err["message"].as_str().unwrap().contains("'nope'"), "{err}");

    let err = t
        .invoke("list_instances", json!({ "statuses": ["Sleeping"] }))
        .unwrap_err();
    assert_eq!(err["kind"], "invalid");
    assert!(
        err["message"].as_str().unwrap().contains("Completed"),
        "{err}"
    );

    let err = t
        .invoke("purge_instance", json!({ "instanceId": "a/b" }))
        .unwrap_err();
    assert_eq!(err["kind"], "invalid");

    // A finished instance cannot be terminated, only purged.
    let updates = t.events(INSTANCE_UPDATED);
    let id = t.invoke("create_galaxy", json!({})).unwrap();
    wait_event(&updates, |v| {
        v["instanceId"] == id && v["runtimeStatus"] == "Completed"
    });
    let err = t
        .invoke("terminate_instance", json!({ "instanceId": id }))
        .unwrap_err();
    assert_eq!(err["kind"], "rejected", "{err}");
    assert!(!err["message"].as_str().unwrap().is_empty());
    t.invoke("purge_instance", json!({ "instanceId": id }))
        .unwrap();
    let err = t
        .invoke("get_instance", json!({ "instanceId": id }))
        .unwrap_err();
    assert_eq!(err["kind"], "notFound");
}

#[test]
fn suspend_resume_and_terminate_reach_the_engine() {
    let t = start();
    let updates = t.events(INSTANCE_UPDATED);
    // Suspend right after the start: either the suspension lands before
    // the instance finishes (Suspended, then resumed to Completed) or it is
    // already finished and the request is refused with a message.
    let id = t.invoke("create_galaxy", json!({})).unwrap();
    match t.invoke("suspend_instance", json!({ "instanceId": id })) {
        Ok(_) => {
            let v = wait_event(&updates, |v| {
                v["instanceId"] == id
                    && (v["runtimeStatus"] == "Suspended" || v["runtimeStatus"] == "Completed")
            });
            // Completed first: the suspension came too late to matter.
            if v["runtimeStatus"] == "Suspended" {
                t.invoke("resume_instance", json!({ "instanceId": id }))
                    .unwrap();
                wait_event(&updates, |v| {
                    v["instanceId"] == id && v["runtimeStatus"] == "Completed"
                });
            }
        }
        Err(e) => assert_eq!(e["kind"], "rejected", "{e}"),
    }
    let err = t
        .invoke("resume_instance", json!({ "instanceId": "missing" }))
        .unwrap_err();
    assert!(!err["message"].as_str().unwrap().is_empty(), "{err}");
}

#[test]
fn settings_are_validated_saved_and_kept_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let t = start_in(dir.path());
        let s = t.invoke("get_settings", json!({})).unwrap();
        assert_eq!(s["cloudUrl"], "http://127.0.0.1:7071");
        let err = t
            .invoke(
                "save_settings",
                json!({ "settings": { "cloudUrl": "not a url" } }),
            )
            .unwrap_err();
        assert_eq!(err["kind"], "invalid");
        assert!(
            err["message"].as_str().unwrap().contains("http://"),
            "{err}"
        );
        let saved = t
            .invoke(
                "save_settings",
                json!({ "settings": { "cloudUrl": " http://127.0.0.1:9/ " } }),
            )
            .unwrap();
        assert_eq!(saved["cloudUrl"], "http://127.0.0.1:9");
        // Nothing listens on port 9 (discard): the check says offline, why.
        let status = t.invoke("check_connection", json!({})).unwrap();
        assert_eq!(status["connection"]["state"], "Offline");
        assert_eq!(status["connection"]["cloudUrl"], "http://127.0.0.1:9");
        assert!(!status["connection"]["message"].as_str().unwrap().is_empty());
        assert_eq!(status["pendingChanges"], 0);
    }
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("settings.json")).unwrap())
            .unwrap();
    assert_eq!(raw, json!({ "cloudUrl": "http://127.0.0.1:9" }));
}

#[test]
fn a_store_held_by_another_process_is_explained_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    // Another holder of the same data dir (as a second window would be).
    let _holder = durable::SqliteStore::open(dir.path().join("engine.db")).unwrap();
    let t = start_in(dir.path());
    let err = t.invoke("load_state", json!({})).unwrap_err();
    assert_eq!(err["kind"], "unavailable");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("Cannot open your galaxies"), "{message}");
    assert!(message.contains("in use"), "{message}");
}

#[test]
fn webkit_draws_without_compositing_only_when_there_is_no_gpu_and_no_choice() {
    use galaxy_desktop::prefer_software_drawing;
    let dri = tempfile::tempdir().expect("tempdir");
    let missing = dri.path().join("missing");
    assert!(
        prefer_software_drawing(&missing, None),
        "no /dev/dri at all"
    );
    std::fs::write(dri.path().join("card0"), b"").expect("card0");
    assert!(
        prefer_software_drawing(dri.path(), None),
        "a card without a render node cannot render"
    );
    std::fs::write(dri.path().join("renderD128"), b"").expect("renderD128");
    assert!(!prefer_software_drawing(dri.path(), None), "a GPU");
    assert!(
        !prefer_software_drawing(&missing, Some("0")),
        "the player's own choice wins"
    );
}

/// A real galaxy-cloud in this process (SQLite in its own temp dir).
fn local_cloud() -> (cloud::server::LocalServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = cloud::Keys::new("desktop-test-function-key", "desktop-test-master-key0").unwrap();
    let server =
        tauri::async_runtime::block_on(cloud::server::spawn_local(dir.path(), "127.0.0.1:0", keys))
            .unwrap();
    (server, dir)
}

fn http<T>(f: impl std::future::Future<Output = T>) -> T {
    tauri::async_runtime::block_on(f)
}

#[test]
fn an_old_function_key_becomes_a_device_account_and_galaxies_sync_both_ways() {
    let (cloud, _cloud_dir) = local_cloud();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("settings.json"),
        json!({ "cloudUrl": cloud.base_url, "cloudKey": "desktop-test-function-key" }).to_string(),
    )
    .unwrap();
    let (t, mut listened) = start_listening(dir.path(), &[galaxy_desktop::SYNC_LOOP]);
    let loop_events = listened.remove(0);
    let upserts = t.events(galaxy_desktop::GALAXY_UPSERTED);
    let removals = t.events(galaxy_desktop::GALAXY_REMOVED);
    let galaxies = t.events(GALAXY_ADDED);
    t.invoke("load_state", json!({})).unwrap();
    // The key is gone from the file at once; once the cloud answers, the
    // app registers and syncs.
    let text = std::fs::read_to_string(dir.path().join("settings.json")).unwrap();
    assert!(!text.contains("desktop-test-function-key"), "{text}");
    wait_event(&loop_events, |s| s["phase"] == "upToDate");
    let settings = t.invoke("get_settings", json!({})).unwrap();
    assert!(settings["playerId"].is_string(), "{settings}");
    assert!(
        settings.get("token").is_none(),
        "the UI never sees the token"
    );
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("settings.json")).unwrap())
            .unwrap();
    let token = raw["account"]["token"].as_str().unwrap().to_string();

    // A galaxy made here reaches the cloud: the loop ends up to date with
    // nothing pending, and the cloud's pull has it.
    let id = t.invoke("create_galaxy", json!({})).unwrap();
    let galaxy = wait_event(&galaxies, |g| g["instanceId"] == id);
    let row_key = galaxy["rowKey"].as_str().unwrap().to_string();
    // The cloud's pull has it (polled with a deadline: an "up to date"
    // already queued from before the create would prove nothing).
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page: Value = http(async {
            client
                .get(format!("{}/api/sync/pull?client_id=probe", cloud.base_url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        if page["changes"][0]["entity_id"] == row_key.as_str() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never pushed: {page}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    wait_event(&loop_events, |s| {
        s["phase"] == "upToDate" && s["pending"] == 0 && s["lastSyncAt"].is_string()
    });

    // Renames and deletes: bad input is refused readably.
    let err = t
        .invoke("rename_galaxy", json!({ "rowKey": row_key, "name": "  " }))
        .unwrap_err();
    assert_eq!(err["kind"], "invalid", "{err}");
    let err = t
        .invoke("delete_galaxy", json!({ "rowKey": "nope" }))
        .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("no galaxy"),
        "{err}"
    );
    let renamed = t
        .invoke(
            "rename_galaxy",
            json!({ "rowKey": row_key, "name": "Home" }),
        )
        .unwrap();
    assert_eq!(renamed["name"], "Home");

    // Another device of the player joins with a link code and pushes a
    // galaxy: it appears here without any command.
    let code = t.invoke("create_link_code", json!({})).unwrap();
    let other: Value = http(async {
        client
            .post(format!("{}/api/players/devices", cloud.base_url))
            .json(&json!({ "code": code["code"], "device_name": "phone" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(other["player_id"], settings["playerId"]);
    let remote = uuid::Uuid::now_v7().to_string();
    let push = json!({ "client_id": "phone-1", "mutations": [
        { "mutation_id": 1, "op": "put", "entity_id": remote, "base_version": 0,
          "body": { "name": "Far Away", "coords": { "x": 5, "y": 6, "z": 7 }, "createdAt": "2026-12-01T10:00:00Z" } },
        { "mutation_id": 2, "op": "delete", "entity_id": row_key } ] });
    let r = http(
        client
            .post(format!("{}/api/sync/push", cloud.base_url))
            .bearer_auth(other["token"].as_str().unwrap())
            .json(&push)
            .send(),
    )
    .unwrap();
    assert!(r.status().is_success());
    let arrived = wait_event(&upserts, |g| g["rowKey"] == remote.as_str());
    assert_eq!(
        (arrived["name"].as_str(), arrived["origin"].as_str()),
        (Some("Far Away"), Some("phone"))
    );
    let gone = wait_event(&removals, |r| r["rowKey"] == row_key.as_str());
    assert_eq!(gone["rowKey"], row_key.as_str());
    let listed = t.invoke("list_galaxies", json!({})).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // Another cloud URL, saved or registered at, would forget the account
    // (and its token, still valid at the cloud): refused, nothing changes.
    // The same URL written another way keeps it.
    for (cmd, args) in [
        (
            "save_settings",
            json!({ "settings": { "cloudUrl": "http://127.0.0.1:9" } }),
        ),
        (
            "register_device",
            json!({ "cloudUrl": "http://127.0.0.1:9" }),
        ),
    ] {
        let err = t.invoke(cmd, args).unwrap_err();
        assert_eq!(err["kind"], "rejected", "{cmd}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains("sign out first"),
            "{cmd}: {err}"
        );
    }
    let kept = t
        .invoke(
            "save_settings",
            json!({ "settings": { "cloudUrl": format!(" {}/ ", cloud.base_url) } }),
        )
        .unwrap();
    assert_eq!(kept["playerId"], settings["playerId"], "{kept}");
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("settings.json")).unwrap())
            .unwrap();
    assert_eq!(raw["account"]["token"], token.as_str());

    // Signing out revokes the token at the cloud and forgets the account.
    let out = t.invoke("sign_out", json!({})).unwrap();
    assert!(out["playerId"].is_null());
    let me = http(
        client
            .get(format!("{}/api/players/me", cloud.base_url))
            .bearer_auth(&token)
            .send(),
    )
    .unwrap();
    assert_eq!(me.status(), reqwest::StatusCode::UNAUTHORIZED);
    let err = t.invoke("sync_now", json!({})).unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("not linked"),
        "{err}"
    );
    drop(t);
    http(cloud.stop());
}

#[test]
fn the_data_folder_known_before_start_is_the_one_tauri_resolves() {
    use tauri::Manager;
    // The single-instance guard claims the folder before the app exists;
    // the app then opens its store where Tauri's resolver says.
    let app = mock_builder()
        .build(mock_context(noop_assets()))
        .expect("app builds");
    let identifier = app.config().identifier.clone();
    assert_eq!(
        galaxy_desktop::default_data_dir(&identifier),
        Some(app.path().app_data_dir().expect("a data dir"))
    );
}
