//! Property test: random and malformed requests (methods, paths, queries,
//! headers, bodies) never panic the router and never get a 5xx, except the
//! documented 500 of `returnInternalServerErrorOnFailure=true`; every error
//! answer is the JSON error shape.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[derive(Clone, Debug)]
struct Case {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    key: KeyUse,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Clone, Debug)]
enum KeyUse {
    None,
    FunctionQuery,
    MasterHeader,
    Wrong,
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_.~-]{1,12}",
        1 => Just("Galaxy_Create".to_string()),
        1 => Just("galaxies".to_string()),
        1 => Just("%2F".to_string()),
        1 => Just("%23".to_string()),
        1 => Just("%ZZ".to_string()),
        1 => Just("%00".to_string()),
        1 => Just("%C3%A9".to_string()),
        1 => Just("%FF%FE".to_string()),
        1 => Just("..".to_string()),
        1 => "[A-Za-z0-9]{250,300}",
    ]
}

/// An orchestration name: mostly the real one, so starts happen.
fn function() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("Galaxy_Create".to_string()),
        2 => segment(),
    ]
}

/// Ids of instances seeded before the run (live, failed, completed), so
/// management routes act on real instances; or random ones.
const SEEDED: [&str; 3] = ["seed-live", "seed-failed", "seed-done"];

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(SEEDED.to_vec()).prop_map(str::to_string),
        2 => segment(),
    ]
}

/// A route of the API with its own method and random holes (most cases,
/// so the handlers are reached), or a random method on a random path.
fn route() -> impl Strategy<Value = (Method, String)> {
    let m = "/runtime/webhooks/durabletask";
    let known = prop_oneof![
        3 => function().prop_map(|f| (Method::POST, format!("/api/orchestrators/{f}"))),
        3 => (function(), id()).prop_map(|(f, i)| (Method::POST, format!("/api/orchestrators/{f}/{i}"))),
        2 => Just((Method::GET, format!("{m}/instances"))),
        1 => Just((Method::DELETE, format!("{m}/instances"))),
        2 => id().prop_map(move |i| (Method::GET, format!("{m}/instances/{i}"))),
        1 => id().prop_map(move |i| (Method::DELETE, format!("{m}/instances/{i}"))),
        2 => (id(), segment()).prop_map(move |(i, e)| (Method::POST, format!("{m}/instances/{i}/raiseEvent/{e}"))),
        3 => (id(), prop_oneof![
            Just("terminate"), Just("suspend"), Just("resume"), Just("restart"), Just("rewind")
        ])
        .prop_map(move |(i, op)| (Method::POST, format!("{m}/instances/{i}/{op}"))),
        1 => id().prop_map(move |i| (Method::GET, format!("{m}/instances/{i}/stream"))),
        1 => Just((Method::GET, format!("{m}/stream"))),
        2 => Just((Method::GET, "/api/galaxies".to_string())),
        1 => (segment(), segment()).prop_map(|(p, r)| (Method::GET, format!("/api/galaxies/{p}/{r}"))),
        1 => Just((Method::GET, "/api/openapi.json".to_string())),
        1 => Just((Method::GET, "/healthz".to_string())),
        1 => Just((Method::GET, "/metrics".to_string())),
    ];
    let method = prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::from_bytes(b"BREW").unwrap()),
    ];
    let random = (method.clone(), prop::collection::vec(segment(), 0..5))
        .prop_map(|(m, s)| (m, format!("/{}", s.join("/"))));
    let known_wrong_method = (method, known.clone()).prop_map(|(m, (_, p))| (m, p));
    prop_oneof![
        6 => known,
        2 => known_wrong_method,
        1 => random,
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("timeout"),
        Just("pollingInterval"),
        Just("showHistory"),
        Just("showHistoryOutput"),
        Just("showInput"),
        Just("returnInternalServerErrorOnFailure"),
        Just("createdTimeFrom"),
        Just("createdTimeTo"),
        Just("runtimeStatus"),
        Just("instanceIdPrefix"),
        Just("top"),
        Just("reason"),
        Just("restartWithNewInstanceId"),
        Just("namePrefix"),
        Just("zz"),
    ]
    .prop_map(str::to_string);
    let value = prop_oneof![
        Just("true".to_string()),
        Just("false".to_string()),
        Just("0".to_string()),
        Just("0.05".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("1e999".to_string()),
        Just("99999999999999999999".to_string()),
        Just("2020-01-01T00:00:00Z".to_string()),
        Just("Running,Failed".to_string()),
        Just("%ZZ".to_string()),
        Just("".to_string()),
        "[A-Za-z0-9:.,+%-]{0,16}",
    ];
    prop::collection::vec((name, value), 0..5)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => Just(b"{\"galaxy\":1}".to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"{\"a\":".to_vec()),
        1 => Just(vec![b'['; 10_000]),
        1 => Just(vec![b'7'; cloud::MAX_BODY + 10]),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let key = prop_oneof![
        1 => Just(KeyUse::None),
        4 => Just(KeyUse::FunctionQuery),
        4 => Just(KeyUse::MasterHeader),
        1 => Just(KeyUse::Wrong),
    ];
    let headers = prop::collection::vec(
        (
            prop_oneof![
                Just("x-ms-continuation-token".to_string()),
                Just("host".to_string()),
                Just("content-type".to_string()),
                Just("if-none-match".to_string()),
                Just("x-forwarded-proto".to_string()),
            ],
            "[ -~]{0,40}",
        ),
        0..3,
    );
    // A random `code` or key header (replacing the real key) is covered by
    // KeyUse::Wrong; here they would only hide the handlers.
    (route(), query(), key, headers, body()).prop_map(
        |((method, path), query, key, headers, body)| Case {
            method,
            path,
            query,
            key,
            headers,
            body,
        },
    )
}

fn build(case: &Case) -> Option<Request<Body>> {
    let mut query: Vec<String> = case.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match case.key {
        KeyUse::FunctionQuery => query.push(format!("code={}", common::FUNCTION_KEY)),
        KeyUse::Wrong => query.push("code=not-the-key-0000000".to_string()),
        KeyUse::None | KeyUse::MasterHeader => {}
    }
    let uri = if query.is_empty() {
        case.path.clone()
    } else {
        format!("{}?{}", case.path, query.join("&"))
    };
    let mut builder = Request::builder().method(case.method.clone()).uri(uri);
    for (k, v) in &case.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let KeyUse::MasterHeader = case.key {
        builder = builder.header("x-functions-key", common::MASTER_KEY);
    }
    // Invalid URIs or header values cannot be sent by any client: skip.
    builder.body(Body::from(case.body.clone())).ok()
}

#[test]
fn random_requests_never_panic_and_never_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The samples are registered so seeded instances can stay live or
    // fail; random names never start them (a sample waiting on an event
    // with a long `timeout` would hold a case for that long).
    let app = runtime.block_on(async {
        let app = common::start(true);
        let engine = &app.state.engine;
        let mut updates = engine.subscribe();
        for (name, id) in [
            (cloud::samples::WAIT_FOR_EVENT, SEEDED[0]),
            (cloud::samples::FAIL, SEEDED[1]),
            ("Galaxy_Create", SEEDED[2]),
        ] {
            let id = durable::InstanceId::new(id).unwrap();
            engine
                .start_orchestration(name, Some(id), ())
                .await
                .unwrap();
        }
        // Wait until the live one waits and the other two are finished.
        let mut pending: std::collections::HashSet<&str> = SEEDED.into_iter().collect();
        while !pending.is_empty() {
            let u = updates.recv().await.unwrap();
            let settled = match u.instance_id.as_str() {
                "seed-live" => u.runtime_status == durable::RuntimeStatus::Running,
                _ => u.runtime_status.is_terminal(),
            };
            if settled {
                pending.remove(u.instance_id.as_str());
            }
        }
        app
    });
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        let Some(request) = build(&case) else {
            return Ok(());
        };
        let response = runtime.block_on(app.send(request));
        let status = response.status();
        let documented_500 = status.as_u16() == 500
            && case
                .path
                .starts_with("/runtime/webhooks/durabletask/instances/")
            && case.method == Method::GET
            && case.query.iter().any(|(k, v)| {
                k == "returnInternalServerErrorOnFailure" && v.eq_ignore_ascii_case("true")
            });
        if status.is_server_error() && !documented_500 {
            return Err(TestCaseError::fail(format!("{status} for {case:?}")));
        }
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if is_stream {
            // Never-ending by design; the status is what matters here.
            return Ok(());
        }
        if status.is_client_error() && case.method != Method::HEAD {
            let bytes = runtime
                .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .map_err(|e| TestCaseError::fail(format!("body: {e}")))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                TestCaseError::fail(format!("{status} body not JSON ({e}) for {case:?}"))
            })?;
            prop_assert!(v["error"]["code"].is_string(), "{status} {v} for {case:?}");
            prop_assert!(
                v["error"]["message"].is_string(),
                "{status} {v} for {case:?}"
            );
        }
        Ok(())
    });
    runtime.block_on(app.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
}
