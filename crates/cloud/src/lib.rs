//! galaxy-cloud: the Galaxy Forge cloud backend. It hosts the durable
//! engine with the galaxy workload and speaks the Durable Functions HTTP
//! API (`../shared/reference/durable-http-api.md`), route for route, field
//! for field and status code for status code, so a script written against a
//! Durable Functions app works by changing only the base URL and key.
//!
//! # Layout
//! - [`app`]: the router; [`routes`] holds the handlers, one module per
//!   area (starter, management, live streams, galaxies, players, sync,
//!   operations). Each
//!   handler parses, calls the engine or the table, and maps errors.
//! - [`payload`]: the contract's JSON shapes, built by pure functions.
//! - [`extract`]: request parsing (bodies, queries, continuation tokens).
//! - [`error`]: [`AppError`], the one error type, and the middleware that
//!   keeps every error response in the `{"error":{"code","message"}}` shape.
//! - [`keys`]: function and master keys, stored in the data directory and
//!   compared in constant time.
//! - [`device_auth`]: device tokens (`Authorization: Bearer`), the
//!   credential of the player and sync routes.
//! - [`metrics`]: Prometheus counters and the dispatch latency histogram.
//! - [`state`]: [`AppState`], what the handlers share.
//! - [`server`]: opening the store, serving, signals, graceful shutdown;
//!   [`main_entry`] is the whole `galaxy-cloud` binary.
//! - [`samples`]: orchestrations for trying the management API (`--samples`).
//! - [`system_events`]: the system topic and the relays that move the
//!   engine's and the players store's outboxes to it.
//!
//! Invariant: this crate is the only one that knows HTTP routes; the engine
//! and the galaxy crate know nothing of HTTP.

pub mod config;
pub mod device_auth;
pub mod error;
pub mod extract;
pub mod keys;
pub mod listen;
pub mod metrics;
pub mod payload;
pub mod routes;
pub mod samples;
pub mod server;
pub mod state;
pub mod system_events;

use std::sync::Arc;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::{Extension, Router};
use clap::Parser;
use tower_http::limit::RequestBodyLimitLayer;

pub use config::Args;
pub use error::AppError;
pub use keys::{Access, Keys};
pub use server::{serve, ServeError};
pub use state::AppState;

/// Largest request body accepted (1 MB); larger ones are answered 413.
pub const MAX_BODY: usize = 1 << 20;

/// The whole HTTP API as a router over `state`. Tests drive it with
/// `tower::ServiceExt::oneshot`; [`serve`] puts it on a socket.
pub fn app(state: AppState) -> Router {
    let (router, doc) = routes::build(&state);
    let doc = serde_json::to_value(&doc)
        .map(|mut doc| {
            routes::rules::bodies(&mut doc);
            doc
        })
        .and_then(|doc| serde_json::to_string_pretty(&doc))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    router
        .fallback(not_found)
        .layer(Extension(routes::ops::OpenApiJson(Arc::new(doc))))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(from_fn(error::json_errors))
        .layer(from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
}

/// The OpenAPI document of [`app`], as served at `/api/openapi.json`.
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    routes::build(state).1
}

async fn not_found() -> AppError {
    AppError::not_found(
        "NotFound",
        "no such route; the routes are listed at /api/openapi.json",
    )
}

/// The `galaxy-cloud` program: parses the command line, runs the server on
/// a multi-threaded runtime, and exits 0 after a graceful shutdown or 1
/// with a message on stderr.
pub fn main_entry() -> std::process::ExitCode {
    let args = Args::parse();
    // Fault injection for tests (no-op unless built with failpoints).
    durable::failpoints_from_env();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GALAXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cloud=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("galaxy-cloud: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("galaxy-cloud: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
