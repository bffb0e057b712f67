//! What every handler shares: the engine, the galaxies table, the keys,
//! the players store, the metrics and the shutdown signal.

use std::sync::Arc;

use durable::Engine;
use galaxy::players::Players;
use galaxy::Galaxies;
use tokio::sync::watch;

use crate::keys::Keys;
use crate::metrics::Metrics;

/// Shared state of the router. Cloning is cheap (handles only).
#[derive(Clone)]
pub struct AppState {
    /// The engine: its store may be SQLite or any other [`durable::Store`].
    pub engine: Engine,
    /// The galaxies table (SQLite or PostgreSQL), read by the galaxy routes.
    pub table: Galaxies,
    /// The access keys.
    pub keys: Arc<Keys>,
    /// Players, devices and their synced galaxies.
    pub players: Players,
    /// The event router's topics, subscriptions and deliveries.
    pub events: eventgrid::RouterStore,
    /// The client the router calls receivers with.
    pub event_http: reqwest::Client,
    /// How the router delivers (timeout, retry scale).
    pub event_config: eventgrid::deliver::DeliveryConfig,
    /// Request counters and dispatch latency.
    pub metrics: Arc<Metrics>,
    /// Host (and port) used for absolute URIs when a request has no `Host`
    /// header (HTTP/1.0 clients, in-process tests).
    pub default_host: Arc<str>,
    /// Header-read timeout and connection limit of the server loop.
    pub limits: crate::listen::Limits,
    /// Live streams open per credential.
    pub streams: Arc<StreamCounts>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// State over a running engine and its table.
    ///
    /// Must be called inside a Tokio runtime: it spawns the task that
    /// measures dispatch latency from the engine's update stream (it ends
    /// on [`AppState::begin_shutdown`]).
    pub fn new(
        engine: Engine,
        table: impl Into<Galaxies>,
        keys: Keys,
        players: Players,
        events: eventgrid::RouterStore,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let shutdown = Arc::new(watch::channel(false).0);
        tokio::spawn(crate::metrics::watch_dispatch(
            engine.subscribe_local(),
            metrics.clone(),
            shutdown.subscribe(),
        ));
        Self {
            engine,
            table: table.into(),
            keys: Arc::new(keys),
            players,
            events,
            event_http: eventgrid::egress::client(std::time::Duration::from_secs(10)),
            event_config: eventgrid::deliver::DeliveryConfig::default(),
            metrics,
            default_host: Arc::from("localhost"),
            limits: crate::listen::Limits::default(),
            streams: Arc::default(),
            shutdown,
        }
    }

    /// The same state with other connection limits.
    pub fn with_limits(mut self, limits: crate::listen::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same state with other delivery settings.
    pub fn with_event_config(mut self, config: eventgrid::deliver::DeliveryConfig) -> Self {
        self.event_config = config;
        self
    }

    /// Starts the router's delivery loop and the system topic's relays
    /// (until shutdown begins).
    pub fn start_delivery(&self) {
        tokio::spawn(crate::system_events::relay_lifecycle(
            self.engine.store().clone(),
            self.events.clone(),
            self.shutdown_signal(),
        ));
        tokio::spawn(crate::system_events::relay_galaxies(
            self.players.clone(),
            self.events.clone(),
            self.shutdown_signal(),
        ));
        let starter = Arc::new(EngineStarter(self.engine.clone()));
        tokio::spawn(eventgrid::deliver::run(
            self.events.clone(),
            self.event_http.clone(),
            starter,
            self.event_config.clone(),
            self.shutdown_signal(),
        ));
    }

    /// The same state with another fallback host (the bound address).
    pub fn with_default_host(mut self, host: impl Into<String>) -> Self {
        self.default_host = Arc::from(host.into());
        self
    }

    /// Tells long-lived requests (event streams, starter waits) to finish,
    /// so a graceful shutdown is not held open by them.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Whether every store can still write: the engine store, the
    /// galaxies table and the event router (their SQLite writer threads
    /// alive, no write batch panicked); the first reason when one cannot.
    /// The players store needs no check: each call is a transaction of its
    /// own on a connection that a panic leaves rolled back.
    pub fn health(&self) -> Result<(), String> {
        self.engine.store().health()?;
        self.table
            .health()
            .map_err(|e| format!("the galaxies table's writer: {e}"))?;
        self.events
            .health()
            .map_err(|e| format!("the event router's writer: {e}"))
    }

    /// True once [`AppState::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when shutdown begins.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Live streams open per credential (see `routes::stream`).
#[derive(Debug, Default)]
pub struct StreamCounts(std::sync::Mutex<std::collections::HashMap<String, usize>>);

impl StreamCounts {
    /// Counts one more stream for `key` unless it has `limit` already.
    pub fn acquire(&self, key: &str, limit: usize) -> bool {
        let mut counts = self.0.lock().expect("stream counts lock");
        let n = counts.entry(key.to_string()).or_default();
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// One of `key`'s streams ended.
    pub fn release(&self, key: &str) {
        let mut counts = self.0.lock().expect("stream counts lock");
        if let Some(n) = counts.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(key);
            }
        }
    }
}

/// Orchestration subscriptions start instances on this server's engine;
/// an instance that exists already is the event's earlier delivery.
struct EngineStarter(Engine);

impl eventgrid::deliver::Starter for EngineStarter {
    fn start(
        &self,
        name: &str,
        instance_id: String,
        input: serde_json::Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let name = name.to_string();
        Box::pin(async move {
            let id = durable::InstanceId::new(instance_id).map_err(|e| e.to_string())?;
            // An instance under this id, live or finished, is this event's
            // earlier delivery: left alone in the same step that would
            // create it (starting again would replace a finished one: a
            // second galaxy).
            self.0
                .start_orchestration_once(&name, id, input)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
