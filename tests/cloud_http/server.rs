//! The server as a whole: event streams, keys on every route and on disk,
//! metrics, SIGTERM and Ctrl-C, and `--database-url`.

use super::*;

#[tokio::test]
async fn event_streams_send_status_changes_and_history_in_order() {
    let server = start();
    let mut all = server.stream(&format!("{M}/stream")).await;
    let started = server.start("Galaxy_Create", None, json!(null)).await;
    let id = started["id"].as_str().unwrap().to_string();
    let updates = all.until(&id, "Completed").await;
    let statuses: Vec<&str> = updates
        .iter()
        .map(|u| u["runtimeStatus"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"Pending"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"Completed"), "{statuses:?}");
    assert!(
        statuses[1..statuses.len() - 1]
            .iter()
            .all(|s| *s == "Running"),
        "{statuses:?}"
    );
    assert!(statuses.len() >= 3, "{statuses:?}");
    let history: Vec<&str> = updates
        .iter()
        .flat_map(|u| u["historyEvents"].as_array().unwrap().iter())
        .map(|e| e["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(history.first(), Some(&"ExecutionStarted"));
    assert_eq!(history.last(), Some(&"ExecutionCompleted"));
    assert_eq!(history.iter().filter(|t| **t == "TaskScheduled").count(), 3);
    assert_eq!(history.iter().filter(|t| **t == "TaskCompleted").count(), 3);
    assert_eq!(updates.last().unwrap()["output"], "Galaxy created!");

    // One instance: its current status first, then its changes only.
    server
        .start("Sample_WaitForEvent", Some("watched"), json!(null))
        .await;
    let mut one = server
        .stream(&format!("{M}/instances/watched/stream"))
        .await;
    let (event, first) = one.next().await.unwrap();
    assert_eq!(event, "status");
    assert_eq!(first["instanceId"], "watched");
    assert!(["Pending", "Running"].contains(&first["runtimeStatus"].as_str().unwrap()));
    server
        .start("Galaxy_Create", Some("noise"), json!(null))
        .await;
    let r = server
        .req(
            Method::POST,
            &format!("{M}/instances/watched/raiseEvent/Approval"),
        )
        .json(&"yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    loop {
        let (event, data) = one.next().await.unwrap();
        assert_eq!(event, "update");
        assert_eq!(
            data["instanceId"], "watched",
            "another instance leaked into the stream"
        );
        if data["runtimeStatus"] == "Completed" {
            assert_eq!(data["output"], "yes");
            break;
        }
    }

    let r = server
        .send(Method::GET, &format!("{M}/instances/ghost/stream"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_protected_route_needs_a_key() {
    let server = start();
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/api/orchestrators/Galaxy_Create".into()),
        (Method::POST, "/api/orchestrators/Galaxy_Create/k1".into()),
        (Method::GET, format!("{M}/instances")),
        (
            Method::DELETE,
            format!("{M}/instances?createdTimeFrom=2000-01-01"),
        ),
        (Method::GET, format!("{M}/instances/x")),
        (Method::DELETE, format!("{M}/instances/x")),
        (Method::POST, format!("{M}/instances/x/raiseEvent/E")),
        (Method::POST, format!("{M}/instances/x/terminate")),
        (Method::POST, format!("{M}/instances/x/suspend")),
        (Method::POST, format!("{M}/instances/x/resume")),
        (Method::POST, format!("{M}/instances/x/restart")),
        (Method::POST, format!("{M}/instances/x/rewind")),
        (Method::GET, format!("{M}/instances/x/stream")),
        (Method::GET, format!("{M}/stream")),
        (Method::GET, "/api/galaxies".into()),
        (Method::GET, "/api/galaxies/galaxies/x".into()),
        (Method::GET, "/metrics".into()),
        (Method::GET, "/api/events/topics".into()),
        (Method::POST, "/api/events/topics/t/listKeys".into()),
    ];
    let system = system_key();
    for (method, path) in &routes {
        for key in [None, Some("wrong-key-00000000000"), Some("")] {
            let mut req = server.client.request(method.clone(), server.url(path));
            if let Some(k) = key {
                req = req.header("x-functions-key", k);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with key {key:?}"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized");
        }
        // With the master key (accepted wherever the function key is), not 401.
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = server
            .client
            .request(
                method.clone(),
                server.url(&format!("{path}{sep}code={MASTER_KEY}")),
            )
            .send()
            .await
            .unwrap();
        assert_ne!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with the master key"
        );
        // The key the check-status URIs carry opens the instance routes
        // they lead to, not purge by filter, the starters, the galaxies,
        // the metrics or the event topics.
        let opens = path.starts_with(&format!("{M}/")) && !path.contains("createdTimeFrom");
        let r = server
            .client
            .request(
                method.clone(),
                server.url(&format!("{path}{sep}code={system}")),
            )
            .send()
            .await
            .unwrap();
        if opens {
            assert_ne!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with the system key"
            );
        } else {
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with the system key"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized", "{method} {path}");
        }
    }
    for path in ["/healthz", "/api/openapi.json"] {
        let r = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path} needs no key");
    }
    let r = server
        .client
        .get(server.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "NotFound"
    );
    let r = server
        .client
        .put(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "MethodNotAllowed"
    );
}

#[tokio::test]
async fn metrics_report_requests_instances_queues_and_dispatch_latency() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    server.start("Galaxy_Create", Some("m1"), json!(null)).await;
    events.until("m1", "Completed").await;
    server.status("m1", "").await;
    // The latency is recorded by the server's own subscriber, which may
    // see the first turn a moment after this test's stream did: poll the
    // condition, with a deadline.
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let r = server.send(Method::GET, "/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.unwrap();
        if text.contains("galaxy_dispatch_latency_seconds_count 1\n") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dispatch latency recorded:\n{text}"
        );
        tokio::task::yield_now().await;
    };
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("galaxy_http_requests_total{method=\"POST\",route=\"/api/orchestrators/{functionName}/{instanceId}\",status=\"202\"}"),
        1.0
    );
    assert_eq!(
        value("galaxy_http_requests_total{method=\"GET\",route=\"/runtime/webhooks/durabletask/instances/{instanceId}\",status=\"200\"}"),
        1.0
    );
    assert_eq!(value("galaxy_instances{status=\"Completed\"}"), 1.0);
    assert_eq!(value("galaxy_work_items_queued{queue=\"activity\"}"), 0.0);
    assert_eq!(value("galaxy_dispatch_latency_seconds_count"), 1.0);
    assert_eq!(value("galaxy_event_streams"), 1.0);
    let r = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn sigterm_ends_streams_and_exits_zero() {
    let mut server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    server
        .start("Galaxy_Create", Some("before-term"), json!(null))
        .await;
    events.until("before-term", "Completed").await;
    server
        .start("Sample_WaitForEvent", Some("left-running"), json!(null))
        .await;

    let child = server.child.take().unwrap();
    signal(&child, "-TERM");
    // The open stream ends (it does not hold the shutdown open)...
    while events.next().await.is_some() {}
    // ...and the process exits 0 after saying so.
    let exit = exit_status(child).await;
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    // Up to the end of its output (it has exited, so this ends): the
    // reader thread may not have passed the last line on yet.
    let rest: Vec<String> = server.lines.iter().collect();
    assert!(rest.iter().any(|l| l == "galaxy-cloud stopped"), "{rest:?}");

    // Restarted on the same data: the unfinished instance is still there.
    let dir = server._dir.path().to_path_buf();
    let (child, lines) = spawn(
        &dir,
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            MASTER_KEY,
            "--samples",
        ],
    );
    let (_, base) = wait_listening(&lines);
    let again = Server {
        child: Some(child),
        lines,
        base,
        client: reqwest::Client::new(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let (code, body) = again.status("left-running", "").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(body["runtimeStatus"], "Running");
    let (code, _) = again.status("before-term", "").await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn ctrl_c_exits_zero_too() {
    let mut server = start();
    let child = server.child.take().unwrap();
    signal(&child, "-INT");
    let exit = exit_status(child).await;
    assert_eq!(exit.code(), Some(0), "exit status {exit:?}");
    // Up to the end of its output (it has exited, so this ends): the
    // reader thread may not have passed the last line on yet.
    let rest: Vec<String> = server.lines.iter().collect();
    assert!(rest.iter().any(|l| l == "galaxy-cloud stopped"), "{rest:?}");
}

#[tokio::test]
async fn keys_are_created_once_printed_once_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn(dir.path(), &[]);
    let (printed, base) = wait_listening(&lines);
    let key_of = |label: &str| {
        printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|k| k.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label} line in {printed:?}"))
    };
    let function_key = key_of("function key:");
    let master_key = key_of("master key:");
    assert_ne!(function_key, master_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}{M}/instances?code={function_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();

    // Second start: same keys, not printed again.
    let (mut child, lines) = spawn(dir.path(), &[]);
    let (printed, base) = wait_listening(&lines);
    assert_eq!(printed.len(), 1, "keys printed again: {printed:?}");
    let r = client
        .get(format!("{base}{M}/instances"))
        .header("x-functions-key", &master_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_unreachable_database_fails_the_start_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_galaxy-cloud"))
        .args(["--listen", "127.0.0.1:0", "--database-url"])
        // Port 1 on loopback: nothing listens, the connection is refused.
        .arg("postgres://postgres@127.0.0.1:1/galaxy?connect_timeout=5")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("galaxy-cloud: engine store:"), "{stderr}");
    assert!(!data.exists(), "the data directory was touched");
}

#[tokio::test]
async fn database_url_runs_the_engine_on_postgresql() {
    let cluster = durable::testing::PgCluster::shared();
    let url = cluster.create_database().await.expect("create database");
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn(
        dir.path(),
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            MASTER_KEY,
            "--database-url",
            &url,
        ],
    );
    let (_, base) = wait_listening(&lines);
    let mut server = Server {
        child: Some(child),
        lines,
        base,
        client: reqwest::Client::new(),
        _dir: dir,
    };
    assert!(
        !server._dir.path().join("engine.db").exists(),
        "the engine store is not SQLite"
    );
    let r = server
        .req(
            Method::POST,
            "/api/orchestrators/Galaxy_Create/pg-1?timeout=20",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Galaxy created!"));
    let (code, body) = server.status("pg-1", "showHistory=true").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        history_types(&body).last().map(String::as_str),
        Some("ExecutionCompleted")
    );
    let r = server.send(Method::GET, "/api/galaxies").await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 1);

    // SIGTERM: the PostgreSQL store is closed on the way out, exit 0.
    let child = server.child.take().unwrap();
    signal(&child, "-TERM");
    let exit = exit_status(child).await;
    assert_eq!(exit.code(), Some(0));
}
