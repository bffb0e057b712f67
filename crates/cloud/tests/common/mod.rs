//! A router over a real engine on SQLite files in a temp dir, for
//! in-process tests with `tower::ServiceExt::oneshot`.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use cloud::{AppState, Keys};
use durable::{Engine, EngineConfig, SqliteStore, Store};
use galaxy::GalaxyTable;
use tower::ServiceExt;

pub const FUNCTION_KEY: &str = "test-function-key-0001";
pub const MASTER_KEY: &str = "test-master-key-00001";

pub struct TestApp {
    pub state: AppState,
    pub router: axum::Router,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
}

/// Starts an engine with `Galaxy_Create` (and the samples if asked) and
/// builds the router. Must run inside a Tokio runtime.
pub fn start(samples: bool) -> TestApp {
    start_with(samples, EngineConfig::default())
}

/// [`start`] with engine settings (e.g. a tiny update channel).
pub fn start_with(samples: bool, config: EngineConfig) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("engine.db")).expect("store"));
    let table = Arc::new(GalaxyTable::open(dir.path().join("galaxies.db"), false).expect("table"));
    let players = galaxy::players::Players::open(dir.path().join("players.db")).expect("players");
    let events = eventgrid::RouterStore::open(dir.path().join("events.db")).expect("events");
    let registry = cloud::server::registry(
        table.clone(),
        cloud::server::hooks(&players, &events),
        samples,
    );
    let engine = Engine::start(store.clone() as Arc<dyn Store>, registry, config);
    let keys = Keys::new(FUNCTION_KEY, MASTER_KEY).expect("keys");
    let state = AppState::new(engine, table, keys, players, events);
    let router = cloud::app(state.clone());
    TestApp {
        state,
        router,
        store,
        dir,
    }
}

impl TestApp {
    pub async fn send(&self, request: Request<Body>) -> Response<Body> {
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible")
    }

    pub async fn shutdown(self) {
        self.state.begin_shutdown();
        self.state
            .engine
            .shutdown(std::time::Duration::from_secs(5))
            .await;
        self.store.close();
    }
}

/// The body as JSON (panics if it is not).
pub async fn json(response: Response<Body>) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}
