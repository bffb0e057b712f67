//! The router in-process (no socket): the OpenAPI document covers every
//! route, and every kind of bad input gets its status and the JSON error
//! shape.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{json, FUNCTION_KEY, MASTER_KEY};

const M: &str = "/runtime/webhooks/durabletask";

/// Every operation of the contract plus our extensions: (method, template).
fn contract_routes() -> BTreeSet<(String, String)> {
    [
        ("post", "/api/orchestrators/{functionName}"),
        ("post", "/api/orchestrators/{functionName}/{instanceId}"),
        ("get", "/runtime/webhooks/durabletask/instances"),
        ("delete", "/runtime/webhooks/durabletask/instances"),
        (
            "get",
            "/runtime/webhooks/durabletask/instances/{instanceId}",
        ),
        (
            "delete",
            "/runtime/webhooks/durabletask/instances/{instanceId}",
        ),
        (
            "post",
            "/runtime/webhooks/durabletask/instances/{instanceId}/raiseEvent/{eventName}",
        ),
        (
            "post",
            "/runtime/webhooks/durabletask/instances/{instanceId}/terminate",
        ),
        (
            "post",
            "/runtime/webhooks/durabletask/instances/{instanceId}/suspend",
        ),
        (
            "post",
            "/runtime/webhooks/durabletask/instances/{instanceId}/resume",
        ),
        (
            "post",
            "/runtime/webhooks/durabletask/instances/{instanceId}/restart",
        ),
        (
            "post",
            "/runtime/webhooks/durabletask/instances/{instanceId}/rewind",
        ),
        (
            "get",
            "/runtime/webhooks/durabletask/instances/{instanceId}/stream",
        ),
        ("get", "/runtime/webhooks/durabletask/stream"),
        ("get", "/api/galaxies"),
        ("get", "/api/galaxies/{partitionKey}/{rowKey}"),
        ("get", "/api/openapi.json"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("post", "/api/players"),
        ("post", "/api/players/devices"),
        ("post", "/api/players/link-codes"),
        ("get", "/api/players/me"),
        ("delete", "/api/players/devices/{deviceId}"),
        ("post", "/api/sync/push"),
        ("get", "/api/sync/pull"),
        ("get", "/api/sync/events"),
        ("get", "/api/events/topics"),
        ("put", "/api/events/topics/{topic}"),
        ("get", "/api/events/topics/{topic}"),
        ("delete", "/api/events/topics/{topic}"),
        ("post", "/api/events/topics/{topic}/listKeys"),
        ("post", "/api/events/topics/{topic}/regenerateKey"),
        ("post", "/api/events/topics/{topic}/events"),
        (
            "get",
            "/api/events/topics/{topic}/events/{eventId}/deliveries",
        ),
        ("get", "/api/events/topics/{topic}/eventSubscriptions"),
        (
            "put",
            "/api/events/topics/{topic}/eventSubscriptions/{name}",
        ),
        (
            "get",
            "/api/events/topics/{topic}/eventSubscriptions/{name}",
        ),
        (
            "delete",
            "/api/events/topics/{topic}/eventSubscriptions/{name}",
        ),
        (
            "get",
            "/api/events/topics/{topic}/eventSubscriptions/{name}/validate",
        ),
        (
            "get",
            "/api/events/topics/{topic}/eventSubscriptions/{name}/deadLetters",
        ),
        (
            "post",
            "/api/events/topics/{topic}/eventSubscriptions/{name}/redeliver",
        ),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect()
}

/// (method, template) of every operation in the served OpenAPI document.
fn spec_routes(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

/// A concrete path for a template: placeholders become `x`.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('x');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn with_key(method: Method, uri: &str) -> axum::http::request::Builder {
    request(method, uri).header("x-functions-key", MASTER_KEY)
}

#[tokio::test]
async fn openapi_covers_every_route_and_every_documented_route_is_served() {
    let app = common::start(false);
    let response = app
        .send(
            request(Method::GET, "/api/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc = json(response).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let spec = spec_routes(&doc);
    assert_eq!(
        spec,
        contract_routes(),
        "the OpenAPI document and the contract route list differ"
    );
    // The document served equals the one the library builds.
    let built = serde_json::to_value(cloud::openapi(&app.state)).unwrap();
    assert_eq!(spec_routes(&built), spec);

    // Player and sync routes check a device token before the method: send
    // one along, so an undocumented method there answers 405 too.
    let device = app
        .state
        .players
        .register(Some("router-test"))
        .await
        .unwrap();
    let bearer = format!("Bearer {}", device.token);
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for path in spec.iter().map(|(_, p)| p.clone()).collect::<BTreeSet<_>>() {
        for method in &methods {
            let documented = spec.contains(&(method.as_str().to_lowercase(), path.clone()));
            let response = app
                .send(
                    with_key(method.clone(), &concrete(&path))
                        .header("authorization", &bearer)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            let status = response.status();
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert!(!documented, "{method} {path} is documented but answers 405");
                continue;
            }
            assert!(
                documented,
                "{method} {path} is served ({status}) but not documented"
            );
            if status.is_client_error() {
                let body = json(response).await;
                assert_ne!(
                    body["error"]["code"], "NotFound",
                    "{method} {path} fell through to the unknown-route fallback"
                );
            }
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_error_is_json_with_the_contract_status() {
    let app = common::start(false);
    let key = format!("code={FUNCTION_KEY}");
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            request(
                Method::POST,
                &format!("/api/orchestrators/Galaxy_Create?{key}"),
            )
            .body(Body::from("{not json"))
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
        ),
        (
            request(Method::POST, &format!("/api/orchestrators/Nope?{key}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "UnknownOrchestration",
        ),
        (
            request(Method::GET, &format!("{M}/instances/a%23b?{key}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidInstanceId",
        ),
        (
            request(
                Method::POST,
                &format!("/api/orchestrators/Galaxy_Create/a%3Fb?{key}"),
            )
            .body(Body::empty())
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidInstanceId",
        ),
        (
            request(Method::GET, &format!("{M}/instances/never-started?{key}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        ),
        (
            request(Method::GET, &format!("/no/such/route?{key}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            request(Method::PUT, "/healthz")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            request(Method::GET, &format!("{M}/instances"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            request(
                Method::GET,
                &format!("{M}/instances?code=wrong-key-000000000"),
            )
            .body(Body::empty())
            .unwrap(),
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            request(
                Method::DELETE,
                &format!("{M}/instances?{key}&createdTimeFrom=2020-01-01"),
            )
            .body(Body::empty())
            .unwrap(),
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
        ),
        (
            request(Method::DELETE, &format!("{M}/instances?code={MASTER_KEY}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "MissingCreatedTimeFrom",
        ),
        (
            request(
                Method::GET,
                &format!("{M}/instances?{key}&runtimeStatus=Sleeping"),
            )
            .body(Body::empty())
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidQuery",
        ),
        (
            request(Method::GET, &format!("{M}/instances?{key}"))
                .header("x-ms-continuation-token", "forged")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "InvalidContinuationToken",
        ),
        (
            request(Method::GET, &format!("/api/galaxies/galaxies/none?{key}"))
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
            "GalaxyNotFound",
        ),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let response = app.send(req).await;
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "{what}"
        );
        let body = json(response).await;
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn bodies_over_one_megabyte_are_413_with_or_without_content_length() {
    let app = common::start(false);
    let uri = format!("/api/orchestrators/Galaxy_Create?code={FUNCTION_KEY}");
    let big = vec![b' '; cloud::MAX_BODY + 1];

    let declared = request(Method::POST, &uri)
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let response = app.send(declared).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(response).await["error"]["code"], "PayloadTooLarge");

    // Streamed (chunked): the limit is hit while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = request(Method::POST, &uri)
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let response = app.send(streamed).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(response).await["error"]["code"], "PayloadTooLarge");

    // Exactly at the limit is fine (`null` and whitespace).
    let mut padded = b"null".to_vec();
    padded.resize(cloud::MAX_BODY, b' ');
    let at_limit = request(Method::POST, &uri)
        .body(Body::from(padded))
        .unwrap();
    assert_eq!(app.send(at_limit).await.status(), StatusCode::ACCEPTED);
    app.shutdown().await;
}

#[tokio::test]
async fn keys_work_as_query_or_header_and_the_master_key_works_everywhere() {
    let app = common::start(false);
    for (uri, header) in [
        (format!("{M}/instances?code={FUNCTION_KEY}"), None),
        (format!("{M}/instances?code={MASTER_KEY}"), None),
        (format!("{M}/instances"), Some(FUNCTION_KEY)),
        (format!("{M}/instances"), Some(MASTER_KEY)),
    ] {
        let mut req = request(Method::GET, &uri);
        if let Some(k) = header {
            req = req.header("x-functions-key", k);
        }
        let response = app.send(req.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri} {header:?}");
    }
    // Public routes need no key.
    for uri in ["/healthz", "/api/openapi.json"] {
        let response = app
            .send(request(Method::GET, uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = common::start(false);
    for id in ["a", "b", "c"] {
        let response = app
            .send(
                with_key(Method::GET, &format!("{M}/instances/{id}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let route = "/runtime/webhooks/durabletask/instances/{instanceId}";
    assert_eq!(app.state.metrics.requests(route, 404), 3);
    let response = app
        .send(
            with_key(Method::GET, "/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(&format!(
            "galaxy_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"404\"}} 3"
        )),
        "{text}"
    );
    for family in [
        "galaxy_instances{status=\"Completed\"}",
        "galaxy_work_items_queued{queue=\"orchestration\"}",
        "galaxy_work_items_queued{queue=\"activity\"}",
        "galaxy_dispatch_latency_seconds_count",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_device_reading_its_running_instance_never_gets_the_function_key_back() {
    let app = common::start(true);
    let device = app.state.players.register(Some("phone")).await.unwrap();
    // An instance of the device's player that stays Running.
    let id = format!("{}.waits", device.player_id);
    let started = app
        .send(
            with_key(
                Method::POST,
                &format!("/api/orchestrators/{}/{id}", cloud::samples::WAIT_FOR_EVENT),
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    // The device sends its token and a made-up `code`: the 202 must not
    // hand the operator's key back in its Location.
    let response = app
        .send(
            request(
                Method::GET,
                &format!("{M}/instances/{id}?code=guess&showInput=false"),
            )
            .header("authorization", format!("Bearer {}", device.token))
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        location.ends_with(&format!("{M}/instances/{id}?showInput=false")),
        "{location}"
    );
    assert!(!location.contains(FUNCTION_KEY) && !location.contains(MASTER_KEY));
    // The operator's request gets the system key in the Location (as on
    // Azure: neither the key it sent nor the function key).
    let system_key = app.state.keys.system_key();
    let response = app
        .send(
            request(
                Method::GET,
                &format!("{M}/instances/{id}?code={MASTER_KEY}"),
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()[header::LOCATION].to_str().unwrap();
    assert!(
        location.ends_with(&format!("code={system_key}")),
        "{location}"
    );
    assert!(!location.contains(FUNCTION_KEY) && !location.contains(MASTER_KEY));
    app.shutdown().await;
}

#[tokio::test]
async fn every_query_parameter_of_the_document_is_a_known_name() {
    let app = common::start(false);
    let doc = serde_json::to_value(cloud::openapi(&app.state)).unwrap();
    let mut names = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "query" {
                    names.insert(p["name"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert!(names.contains("runtimeStatus"), "{names:?}");
    for n in &names {
        assert!(
            cloud::extract::QUERY_NAMES.contains(&n.as_str()),
            "'{n}' is missing from extract::QUERY_NAMES"
        );
    }
    app.shutdown().await;
}
