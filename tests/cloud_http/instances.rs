//! The instance routes: the seed flow, the starter and its wait mode,
//! status fields and failure modes, events, suspend/resume, terminate,
//! restart, rewind and purge.

use super::*;

#[tokio::test]
async fn seed_flow_start_follow_status_uri_then_the_galaxy_is_listed_and_fetchable() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;

    let r = server
        .req(Method::POST, "/api/orchestrators/Galaxy_Create")
        .json(&json!({"player": "ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "10");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let payload: Value = r.json().await.unwrap();
    let id = payload["id"].as_str().unwrap().to_string();
    let instance = format!("{}{M}/instances/{id}", server.base);
    let code = format!("code={}", system_key());
    assert_eq!(payload["statusQueryGetUri"], format!("{instance}?{code}"));
    assert_eq!(location, format!("{instance}?{code}"));
    assert_eq!(
        payload["sendEventPostUri"],
        format!("{instance}/raiseEvent/{{eventName}}?{code}")
    );
    assert_eq!(
        payload["terminatePostUri"],
        format!("{instance}/terminate?reason={{text}}&{code}")
    );
    assert_eq!(
        payload["purgeHistoryDeleteUri"],
        format!("{instance}?{code}")
    );
    assert_eq!(
        payload["restartPostUri"],
        format!("{instance}/restart?{code}")
    );
    assert_eq!(
        payload["suspendPostUri"],
        format!("{instance}/suspend?reason={{text}}&{code}")
    );
    assert_eq!(
        payload["resumePostUri"],
        format!("{instance}/resume?reason={{text}}&{code}")
    );

    // Follow statusQueryGetUri exactly as given (the key rides in it) until
    // 200; after each 202, wait for the instance's next change.
    let status_uri = payload["statusQueryGetUri"].as_str().unwrap().to_string();
    let status = loop {
        let r = server.client.get(&status_uri).send().await.unwrap();
        match r.status() {
            StatusCode::OK => break r.json::<Value>().await.unwrap(),
            StatusCode::ACCEPTED => {
                assert_eq!(r.headers()["retry-after"], "5");
                assert_eq!(r.headers()["location"].to_str().unwrap(), status_uri);
                events.next_for(&id).await;
            }
            other => panic!("status answered {other}"),
        }
    };
    assert_eq!(status["runtimeStatus"], "Completed");
    assert_eq!(status["output"], "Galaxy created!");
    assert_eq!(status["input"], json!({"player": "ada"}));
    assert_eq!(status["name"], "Galaxy_Create");
    assert_eq!(status["instanceId"], id.as_str());

    // The galaxy is listed (walk the pages one row at a time) and
    // fetchable by its keys with an ETag.
    let mut token: Option<String> = None;
    let mut mine = Vec::new();
    loop {
        let page;
        (token, page) = next_page(server.req(Method::GET, "/api/galaxies?top=1"), &token).await;
        for g in page["value"].as_array().unwrap() {
            if g["InstanceId"] == id.as_str() {
                mine.push(g.clone());
            }
        }
        if token.is_none() {
            break;
        }
    }
    assert_eq!(mine.len(), 1, "exactly one galaxy row for the instance");
    let listed = &mine[0];
    let name = listed["Name"].as_str().unwrap();
    assert!(!name.is_empty());
    let r = server
        .send(
            Method::GET,
            &format!(
                "/api/galaxies/{}/{}",
                listed["PartitionKey"].as_str().unwrap(),
                listed["RowKey"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let fetched: Value = r.json().await.unwrap();
    assert_eq!(&fetched, listed);
    assert_eq!(fetched["odata.etag"], etag.as_str());
    for key in [
        "PartitionKey",
        "RowKey",
        "Timestamp",
        "Name",
        "X",
        "Y",
        "Z",
        "InstanceId",
    ] {
        assert!(fetched.get(key).is_some(), "entity lacks {key}");
    }
    let r = server
        .req(
            Method::GET,
            &format!(
                "/api/galaxies/galaxies/{}",
                fetched["RowKey"].as_str().unwrap()
            ),
        )
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // The name prefix filter finds it.
    let prefix: String = name.chars().take(3).collect();
    let r = server
        .send(
            Method::GET,
            &format!("/api/galaxies?namePrefix={prefix}&top=1000"),
        )
        .await;
    let page: Value = r.json().await.unwrap();
    let rows = page["value"].as_array().unwrap();
    assert!(rows.iter().any(|g| g["InstanceId"] == id.as_str()));
    assert!(rows
        .iter()
        .all(|g| g["Name"].as_str().unwrap().starts_with(&prefix)));
}

#[tokio::test]
async fn starter_errors_singletons_and_the_wait_mode() {
    let server = start();
    let post = |path: &str, body: &'static str| {
        server
            .req(Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    };
    let error_code = |v: &Value| v["error"]["code"].as_str().unwrap().to_string();

    let r = post("/api/orchestrators/Galaxy_Create", "{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r.json().await.unwrap()), "InvalidJson");
    // A byte-order mark before the JSON (some Windows tools write one) is
    // not part of it.
    let r = post(
        "/api/orchestrators/Galaxy_Create/with-bom",
        "\u{FEFF}{\"from\": \"notepad\"}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (_, status) = server.status("with-bom", "").await;
    assert_eq!(status["input"], json!({"from": "notepad"}), "{status}");

    let r = post("/api/orchestrators/No_Such_Thing", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&r.json().await.unwrap()), "UnknownOrchestration");
    // Function names in any case, as Azure Functions reads them.
    let r = post("/api/orchestrators/galaxy_create/lower-case", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let (_, status) = server.status("lower-case", "").await;
    assert_eq!(status["name"], "Galaxy_Create", "{status}");

    let r = post("/api/orchestrators/Galaxy_Create/bad%23id", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&r.json().await.unwrap()), "InvalidInstanceId");

    let big = vec![b'1'; (1 << 20) + 1];
    // Its own client: the server answers 413 without reading the whole
    // body and closes that connection, which a shared pool could reuse.
    let r = reqwest::Client::new()
        .post(server.url("/api/orchestrators/Galaxy_Create"))
        .header("x-functions-key", FUNCTION_KEY)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&r.json().await.unwrap()), "PayloadTooLarge");

    // Singleton: a live instance with the id is a 409.
    server
        .start("Sample_WaitForEvent", Some("singleton"), json!(null))
        .await;
    let r = post("/api/orchestrators/Sample_WaitForEvent/singleton", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(&r.json().await.unwrap()), "InstanceExists");

    // The wait mode: finished in time -> 200 with the output.
    let r = post(
        "/api/orchestrators/Galaxy_Create/waited?timeout=20&pollingInterval=1",
        "{}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Galaxy created!"));
    // A finished id can be started again.
    let r = post("/api/orchestrators/Galaxy_Create/waited?timeout=20", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Not finished in time -> the 202 check-status answer.
    let r = post(
        "/api/orchestrators/Sample_WaitForEvent/slow?timeout=0.2",
        "",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "10");
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "slow");

    let r = post("/api/orchestrators/Galaxy_Create?timeout=soon", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn status_codes_fields_history_and_failure_modes() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;

    // Live: 202 with Location and Retry-After 5.
    server
        .start("Sample_WaitForEvent", Some("live-1"), json!({"n": 1}))
        .await;
    events.until("live-1", "Running").await;
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances/live-1?showHistory=true"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(
        r.headers()["location"],
        format!("{}{M}/instances/live-1?showHistory=true", server.base).as_str()
    );
    let live: Value = r.json().await.unwrap();
    assert_eq!(live["runtimeStatus"], "Running");
    assert_eq!(live["customStatus"], "waiting for Approval");
    assert_eq!(live["input"], json!({"n": 1}));
    assert_eq!(live["output"], Value::Null);
    assert_eq!(history_types(&live)[0], "ExecutionStarted");
    assert!(live["historyEventCount"].as_u64().unwrap() >= 1);
    assert!(live["historyBytes"].as_u64().unwrap() > 0);
    for field in ["createdTime", "lastUpdatedTime"] {
        let t = live[field].as_str().unwrap();
        assert!(is_iso_utc(t), "{field}={t} is not ISO 8601 UTC");
    }

    // showInput=false hides the input; history only when asked.
    let (_, hidden) = server.status("live-1", "showInput=false").await;
    assert_eq!(hidden["input"], Value::Null);
    assert!(hidden.get("historyEvents").is_none());

    // Completed: 200; results in history only with showHistoryOutput.
    let done = server
        .start("Galaxy_Create", Some("done-1"), json!(null))
        .await;
    assert_eq!(done["id"], "done-1");
    events.until("done-1", "Completed").await;
    let (code, body) = server.status("done-1", "showHistory=true").await;
    assert_eq!(code, StatusCode::OK);
    let types = history_types(&body);
    assert_eq!(types.first().map(String::as_str), Some("ExecutionStarted"));
    assert_eq!(types.last().map(String::as_str), Some("ExecutionCompleted"));
    assert!(
        types.iter().filter(|t| *t == "TaskCompleted").count() == 3,
        "{types:?}"
    );
    let items = body["historyEvents"].as_array().unwrap();
    assert!(items.iter().all(|e| e.get("Result").is_none()));
    let completed_tasks: Vec<&Value> = items
        .iter()
        .filter(|e| e["EventType"] == "TaskCompleted")
        .collect();
    assert!(completed_tasks.iter().all(|e| e["FunctionName"].is_string()
        && e["ScheduledTime"].is_string()
        && e["Timestamp"].is_string()));
    let last = items.last().unwrap();
    assert_eq!(last["OrchestrationStatus"], "Completed");
    let (_, body) = server
        .status("done-1", "showHistory=true&showHistoryOutput=true")
        .await;
    let last = body["historyEvents"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["Result"], "Galaxy created!");

    // Failed: 200, or 500 with returnInternalServerErrorOnFailure=true.
    server
        .start("Sample_Fail", Some("fail-1"), json!("x"))
        .await;
    events.until("fail-1", "Failed").await;
    let (code, body) = server.status("fail-1", "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["runtimeStatus"], "Failed");
    assert!(body["output"]
        .as_str()
        .unwrap()
        .contains("fails on purpose"));
    assert!(body["failureDetails"]["kind"].is_string());
    assert!(body["failureDetails"]["message"]
        .as_str()
        .unwrap()
        .contains("fails on purpose"));
    let (code, body) = server
        .status("fail-1", "returnInternalServerErrorOnFailure=true")
        .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["runtimeStatus"], "Failed");

    // Unknown: 404.
    let (code, body) = server.status("nobody", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "InstanceNotFound");
}

#[tokio::test]
async fn raise_event_suspend_resume_terminate_and_their_errors() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    let post = |path: String| server.req(Method::POST, &path);

    // raiseEvent completes the waiting instance with the payload.
    server
        .start("Sample_WaitForEvent", Some("ev"), json!(null))
        .await;
    let r = post(format!("{M}/instances/ev/raiseEvent/Approval"))
        .json(&json!({"approved": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let end = events.until("ev", "Completed").await;
    assert_eq!(end.last().unwrap()["output"], json!({"approved": true}));
    // ...finished: 410; unknown: 404; bad body: 400.
    let r = post(format!("{M}/instances/ev/raiseEvent/Approval"))
        .json(&1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let r = post(format!("{M}/instances/ghost/raiseEvent/Approval"))
        .json(&1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(format!("{M}/instances/ev/raiseEvent/Approval"))
        .body("{x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Suspend, then resume, then terminate.
    server
        .start("Sample_WaitForEvent", Some("ctl"), json!(null))
        .await;
    events.until("ctl", "Running").await;
    let r = post(format!("{M}/instances/ctl/suspend?reason=pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    events.until("ctl", "Suspended").await;
    let (code, body) = server.status("ctl", "").await;
    assert_eq!(code, StatusCode::ACCEPTED, "Suspended is not final");
    assert_eq!(body["runtimeStatus"], "Suspended");
    let r = post(format!("{M}/instances/ctl/resume?reason=go"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    events.until("ctl", "Running").await;
    let r = post(format!("{M}/instances/ctl/terminate?reason=enough"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    events.until("ctl", "Terminated").await;
    let (code, body) = server.status("ctl", "showHistory=true").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["output"], "enough");
    let types = history_types(&body);
    for t in [
        "ExecutionSuspended",
        "ExecutionResumed",
        "ExecutionTerminated",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    // Finished: 410 for all three; unknown: 404.
    for op in ["terminate", "suspend", "resume"] {
        let r = post(format!("{M}/instances/ctl/{op}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::GONE, "{op} on a finished instance");
        let r = post(format!("{M}/instances/ghost/{op}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{op} on an unknown instance"
        );
    }
}

#[tokio::test]
async fn restart_rewind_and_purge() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    let post = |path: String| server.req(Method::POST, &path);

    // Restart a finished instance under a new id (the default) and the same id.
    server
        .start("Galaxy_Create", Some("rs"), json!({"seed": 7}))
        .await;
    events.until("rs", "Completed").await;
    let r = post(format!("{M}/instances/rs/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let payload: Value = r.json().await.unwrap();
    let new_id = payload["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, "rs");
    assert!(payload["statusQueryGetUri"]
        .as_str()
        .unwrap()
        .contains(&new_id));
    let restarted = events.until(&new_id, "Completed").await;
    assert_eq!(restarted.first().unwrap()["runtimeStatus"], "Pending");
    let (_, body) = server.status(&new_id, "").await;
    assert_eq!(body["input"], json!({"seed": 7}));
    let r = post(format!(
        "{M}/instances/rs/restart?restartWithNewInstanceId=false"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "rs");
    events.until("rs", "Completed").await;
    // Same id while live: 409; unknown: 404.
    server
        .start("Sample_WaitForEvent", Some("busy"), json!(null))
        .await;
    let r = post(format!(
        "{M}/instances/busy/restart?restartWithNewInstanceId=false"
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = post(format!("{M}/instances/ghost/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Rewind: only a Failed instance (412 otherwise, 404 unknown).
    server.start("Sample_Fail", Some("rw"), json!(1)).await;
    events.until("rw", "Failed").await;
    let r = post(format!("{M}/instances/rw/rewind?reason=retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The rewound run retries the failed activity (which fails again):
    // Running, then Failed, with the rewind in the history.
    let after = events.until("rw", "Failed").await;
    assert_eq!(after[0]["runtimeStatus"], "Running", "{after:?}");
    let (_, body) = server.status("rw", "showHistory=true").await;
    let types = history_types(&body);
    let rewound = types.iter().position(|t| t == "ExecutionRewound");
    assert!(rewound.is_some(), "no ExecutionRewound in {types:?}");
    assert_eq!(
        types[rewound.unwrap()..]
            .iter()
            .filter(|t| *t == "TaskFailed")
            .count(),
        1,
        "the failed activity ran again after the rewind: {types:?}"
    );
    let r = post(format!("{M}/instances/rs/rewind"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = post(format!("{M}/instances/ghost/rewind"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Purge one: live 412, finished 200 {"instancesDeleted":1}, then 404.
    let r = server
        .send(Method::DELETE, &format!("{M}/instances/busy"))
        .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = server
        .send(Method::DELETE, &format!("{M}/instances/rs"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"instancesDeleted": 1})
    );
    let r = server
        .send(Method::DELETE, &format!("{M}/instances/rs"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Purge by filter: the master key only; createdTimeFrom required;
    // 404 once nothing matches.
    let purge = |key: &str, query: &str| {
        server
            .client
            .delete(server.url(&format!("{M}/instances?{query}")))
            .header("x-functions-key", key)
    };
    let r = purge(FUNCTION_KEY, "createdTimeFrom=2000-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = purge(MASTER_KEY, "runtimeStatus=Completed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A misspelled filter is refused, not ignored (it would have purged
    // every finished instance), and nothing is deleted.
    let r = purge(
        MASTER_KEY,
        "createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatuses=Failed",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("runtimeStatuses"));
    let r = purge(
        MASTER_KEY,
        // Names in any case, as Azure reads them, the ignored ones too.
        "createdtimefrom=2000-01-01T00:00:00Z&RuntimeStatus=Completed,Failed&taskhub=hub&Connection=Storage",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // new_id (Completed) and rw (Failed); busy is live and stays.
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"instancesDeleted": 2})
    );
    let r = purge(MASTER_KEY, "createdTimeFrom=2000-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (code, _) = server.status("busy", "").await;
    assert_eq!(code, StatusCode::ACCEPTED);
}
