//! Listing instances: filters, continuation paging both ways, tokens of
//! another deployment, empty and control-character query values.

use super::*;

#[tokio::test]
async fn listing_filters_and_continuation_paging_both_ways() {
    let server = start();
    let mut events = server.stream(&format!("{M}/stream")).await;
    for i in 0..5 {
        server
            .start("Galaxy_Create", Some(&format!("page-{i}")), json!(i))
            .await;
    }
    server
        .start("Sample_WaitForEvent", Some("page-live"), json!(null))
        .await;
    server
        .start("Galaxy_Create", Some("other-0"), json!(null))
        .await;
    let ids: Vec<String> = (0..5).map(|i| format!("page-{i}")).collect();
    events.all_reach(&ids, "Completed").await;

    // Pages of two, following the token, give every page-* once, newest first.
    let mut token: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let req = server.req(
            Method::GET,
            &format!("{M}/instances?instanceIdPrefix=page-&top=2"),
        );
        let body;
        (token, body) = next_page(req, &token).await;
        let page = body.as_array().expect("an array of statuses");
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|s| s["instanceId"].as_str().unwrap().to_string()),
        );
        pages += 1;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 6, "{seen:?}");
    assert!(seen.iter().all(|id| id.starts_with("page-")));

    // Status filter and showInput.
    let r = server
        .send(Method::GET, &format!("{M}/instances?runtimeStatus=Running,Pending&instanceIdPrefix=page-&showInput=false"))
        .await;
    let live: Vec<Value> = r.json().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["instanceId"], "page-live");
    assert_eq!(live[0]["input"], Value::Null);
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances?runtimeStatus=Completed&instanceIdPrefix=page-"),
        )
        .await;
    let done: Vec<Value> = r.json().await.unwrap();
    assert_eq!(done.len(), 5);
    // A repeated runtimeStatus lists statuses, as a comma does.
    let r = server
        .send(
            Method::GET,
            &format!(
                "{M}/instances?runtimeStatus=Running&runtimeStatus=Pending&instanceIdPrefix=page-"
            ),
        )
        .await;
    let repeated: Vec<Value> = r.json().await.unwrap();
    assert_eq!(repeated.len(), 1, "{repeated:?}");
    assert_eq!(repeated[0]["instanceId"], "page-live");
    assert!(done.iter().any(|s| s["input"] == json!(3)));

    // Created-time window: nothing in the future.
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances?createdTimeFrom=2999-01-01T00:00:00Z"),
        )
        .await;
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 0);
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances?createdTimeFrom=2000-01-01&createdTimeTo=2999-01-01"),
        )
        .await;
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 7);

    // Bad input: 400.
    for query in [
        "runtimeStatus=Sleeping",
        "top=0",
        "createdTimeFrom=yesterday",
    ] {
        let r = server
            .send(Method::GET, &format!("{M}/instances?{query}"))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    let r = server
        .req(Method::GET, &format!("{M}/instances"))
        .header("x-ms-continuation-token", "made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// A continuation token is signed with a key derived from the master key:
/// one handed out by another deployment (a different master key) is a
/// 400, though it is well formed and names real instances there; an
/// unkeyed checksum would have let it through.
#[tokio::test]
async fn another_deployment_s_continuation_token_is_refused() {
    let ours = start();
    let theirs = start_with_master("another-deployment-master-01");
    for server in [&ours, &theirs] {
        for i in 0..3 {
            server
                .start("Galaxy_Create", Some(&format!("tok-{i}")), json!(null))
                .await;
        }
    }
    let r = theirs
        .send(Method::GET, &format!("{M}/instances?top=1"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.headers()["x-ms-continuation-token"]
        .to_str()
        .unwrap()
        .to_string();
    let next = |server: &Server| {
        server
            .req(Method::GET, &format!("{M}/instances?top=1"))
            .header("x-ms-continuation-token", token.clone())
            .send()
    };
    assert_eq!(next(&theirs).await.unwrap().status(), StatusCode::OK);
    let r = next(&ours).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidContinuationToken", "{body}");
}

/// What the fuzzer found, asked directly: empty query values count as
/// absent, and instance ids with control characters are refused with 400
/// JSON wherever an id is taken.
#[tokio::test]
async fn empty_query_values_are_absent_and_control_characters_refused() {
    let server = start();
    server
        .start("Galaxy_Create", Some("plain-id"), json!({"k": 1}))
        .await;
    let r = server
        .send(
            Method::GET,
            &format!(
                "{M}/instances?top=&showInput=&runtimeStatus=&createdTimeFrom=&instanceIdPrefix="
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let all: Vec<Value> = r.json().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0]["input"],
        json!({"k": 1}),
        "showInput= is the default"
    );
    let r = server
        .send(
            Method::GET,
            &format!("{M}/instances/plain-id?showHistory=&showInput=&showHistoryOutput="),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["input"], json!({"k": 1}));
    assert!(
        status.get("historyEvents").is_none_or(Value::is_null),
        "{status}"
    );
    for (method, path) in [
        (
            Method::POST,
            "/api/orchestrators/Galaxy_Create/bad%01id".to_string(),
        ),
        (Method::GET, format!("{M}/instances/bad%0Aid")),
        (Method::POST, format!("{M}/instances/bad%7Fid/terminate")),
        (Method::DELETE, format!("{M}/instances/bad%1Bid")),
    ] {
        let r = server.send(method.clone(), &path).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
    }
}
