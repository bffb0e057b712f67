//! [`CloudLink`]: is the cloud reachable, and what is waiting to sync.
//!
//! Reachability is a plain `GET {cloudUrl}/healthz`: any 2xx answer within the timeout
//! means online. The link checks at start, then every interval, and at once
//! when the settings change. Each result is published as a [`SyncStatus`]
//! on a watch channel, so a UI shows the latest and never polls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::settings::Settings;

/// How long a health check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the cloud answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reachability {
    /// Not checked yet.
    Unknown,
    /// `/healthz` answered 2xx.
    Online,
    /// No answer, or not 2xx.
    Offline,
}

/// The result of the latest reachability check.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// The URL that was checked.
    pub cloud_url: String,
    /// What the check found.
    pub state: Reachability,
    /// When it was checked.
    pub checked_at: Option<DateTime<Utc>>,
    /// What happened, for people ("cannot connect: connection refused").
    pub message: String,
}

/// What a UI shows about sync at a glance.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Cloud reachability.
    pub connection: Connection,
    /// Local changes the cloud does not have yet (see [`Outbox`]).
    pub pending_changes: u64,
}

/// The local changes waiting for the cloud. The seam the sync work fills.
pub trait Outbox: Send + Sync + 'static {
    /// How many changes wait to be pushed.
    fn pending_changes(&self) -> u64;
}

/// The outbox until sync exists: nothing is ever pending.
#[derive(Clone, Copy, Debug, Default)]
pub struct NothingToSync;

impl Outbox for NothingToSync {
    fn pending_changes(&self) -> u64 {
        0
    }
}

/// Knows the settings, checks the cloud, publishes [`SyncStatus`].
pub struct CloudLink {
    http: reqwest::Client,
    settings: Mutex<Settings>,
    outbox: Arc<dyn Outbox>,
    status: watch::Sender<SyncStatus>,
    recheck: Notify,
}

impl CloudLink {
    /// A link with these settings and outbox; nothing is checked until
    /// [`check_now`](Self::check_now) or [`run`](Self::run).
    pub fn new(settings: Settings, outbox: Arc<dyn Outbox>) -> Arc<Self> {
        let status = SyncStatus {
            connection: Connection {
                cloud_url: settings.cloud_url.clone(),
                state: Reachability::Unknown,
                checked_at: None,
                message: "not checked yet".to_string(),
            },
            pending_changes: outbox.pending_changes(),
        };
        let http = reqwest::Client::builder()
            .timeout(CHECK_TIMEOUT)
            .connect_timeout(CHECK_TIMEOUT)
            .build()
            .expect("an HTTP client without custom TLS settings always builds");
        Arc::new(Self {
            http,
            settings: Mutex::new(settings),
            outbox,
            status: watch::channel(status).0,
            recheck: Notify::new(),
        })
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.settings.lock().expect("settings lock").clone()
    }

    /// Replaces the settings (already validated and saved by the caller)
    /// and asks [`run`](Self::run) to check again at once.
    pub fn set_settings(&self, settings: Settings) {
        *self.settings.lock().expect("settings lock") = settings;
        self.recheck.notify_one();
    }

    /// The latest status.
    pub fn status(&self) -> SyncStatus {
        self.status.borrow().clone()
    }

    /// Every new status, as it is published.
    pub fn subscribe(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    /// Checks the cloud now, publishes and returns the result.
    pub async fn check_now(&self) -> SyncStatus {
        let settings = self.settings();
        let connection = check_health(&self.http, &settings).await;
        let status = SyncStatus {
            connection,
            pending_changes: self.outbox.pending_changes(),
        };
        // Settings changed during the check: that result is stale.
        if self.settings().cloud_url == settings.cloud_url {
            self.status.send_replace(status.clone());
        }
        status
    }

    /// Checks at once, then every `every` and whenever the settings change,
    /// until `stop` resolves.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            self.check_now().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = self.recheck.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// One `GET {cloudUrl}/healthz`.
pub async fn check_health(http: &reqwest::Client, settings: &Settings) -> Connection {
    let url = format!("{}/healthz", settings.cloud_url.trim_end_matches('/'));
    let request = http.get(&url);
    let started = Instant::now();
    let (state, message) = match request.send().await {
        Ok(r) if r.status().is_success() => (
            Reachability::Online,
            format!(
                "cloud reachable (HTTP {} in {} ms)",
                r.status().as_u16(),
                started.elapsed().as_millis()
            ),
        ),
        Ok(r) => (
            Reachability::Offline,
            format!("the cloud answered HTTP {} to {url}", r.status()),
        ),
        Err(e) => (Reachability::Offline, describe(&url, &e)),
    };
    Connection {
        cloud_url: settings.cloud_url.clone(),
        state,
        checked_at: Some(Utc::now()),
        message,
    }
}

/// A readable cause: reqwest's own message names only the outermost layer.
fn describe(url: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer from {url} within {} s", CHECK_TIMEOUT.as_secs());
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if e.is_connect() {
        format!("cannot connect to {url}: {root}")
    } else {
        format!("checking {url} failed: {root}")
    }
}
