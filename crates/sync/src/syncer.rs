//! [`Syncer`]: the background loop that keeps a device in sync.
//!
//! A round ([`crate::round::run_round`]) runs at once when:
//! - the outbox grows (a local write),
//! - the live stream (`GET /api/sync/events`) opens (start, reconnect) or
//!   brings a poke (another device changed something),
//! - the cloud settings change, or someone calls [`Syncer::kick`].
//!
//! There is no polling timer: between triggers the loop sleeps (a safety
//! round runs after [`SyncerConfig::safety_interval`], five minutes, with no
//! trigger: the reference's "slow safety pull"). A failed
//! round re-arms itself after an exponential back-off with jitter (so a
//! fleet of devices does not return in step), and so does a dropped live
//! stream. Every state change is published as a [`SyncerStatus`] on a
//! watch channel for UIs, and each round's outcome, none skipped, on a
//! broadcast ([`Syncer::settled`]) for logs such as `galaxy sync --watch`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};

use crate::client::CloudApi;
use crate::replica::Replica;
use crate::round::{run_round, PullProgress, RoundError, RoundReport};
use crate::transport::TransportError;

/// How the loop is tuned.
#[derive(Clone, Debug)]
pub struct SyncerConfig {
    /// Mutations per push.
    pub batch: usize,
    /// First retry delay after a failure (doubles each time).
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// A round this long after the last one even without a trigger: a
    /// slow safety net under the live stream (not a polling loop).
    pub safety_interval: Duration,
}

impl Default for SyncerConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            safety_interval: Duration::from_secs(300),
        }
    }
}

/// Where sync stands, at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// No cloud account on this device yet.
    NotRegistered,
    /// The cloud cannot be reached; changes wait.
    Offline,
    /// A round is running.
    Syncing,
    /// Everything local is in the cloud and the other way round.
    UpToDate,
    /// The cloud refused (revoked token, incompatible server).
    Error,
}

/// What the loop publishes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncerStatus {
    /// The phase.
    pub phase: Phase,
    /// Outbox rows waiting.
    pub pending: u64,
    /// When a round last finished well.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// What happened last, for people.
    pub message: String,
    /// A running pull's progress (`cursor` of `latest`).
    pub progress: Option<Progress>,
    /// The latest things the player should know (conflicts, rejections).
    pub notices: Vec<String>,
    /// When the failed round will be retried, if it failed.
    pub retry_in_ms: Option<u64>,
}

/// A pull's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Changes applied in this round.
    pub applied: u64,
    /// Where the pull is.
    pub cursor: u64,
    /// Where it is going.
    pub latest: u64,
}

impl From<PullProgress> for Progress {
    fn from(p: PullProgress) -> Self {
        Self {
            applied: p.applied,
            cursor: p.cursor,
            latest: p.latest,
        }
    }
}

/// How many notices the status keeps.
const NOTICES_KEPT: usize = 20;

/// How many settled statuses a slow [`Syncer::settled`] receiver may fall
/// behind before it is told it missed some.
const SETTLED_KEPT: usize = 64;

/// The sync loop of one device. See the module docs.
pub struct Syncer<R: Replica> {
    replica: Arc<R>,
    config: SyncerConfig,
    api: watch::Sender<Option<CloudApi>>,
    kick: Notify,
    status: watch::Sender<SyncerStatus>,
    /// The status at the end of each round, every one (`status` keeps
    /// only the latest: a watcher that looked late would miss a round).
    settled: broadcast::Sender<SyncerStatus>,
    round_lock: tokio::sync::Mutex<()>,
}

/// The delay before retry number `failures` (1-based): exponential, capped,
/// with "equal jitter" (half fixed, half random) so retries spread out but
/// never come back at once.
pub fn backoff(config: &SyncerConfig, failures: u32, unit_random: f64) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(config.backoff_max);
    capped.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0))
}

impl<R: Replica> Syncer<R> {
    /// A loop over `replica`, talking to `api` once there is one.
    pub fn new(replica: Arc<R>, api: Option<CloudApi>, config: SyncerConfig) -> Arc<Self> {
        let phase = if api.is_some() {
            Phase::Offline
        } else {
            Phase::NotRegistered
        };
        let status = SyncerStatus {
            phase,
            pending: replica.pending_count(),
            last_sync_at: None,
            message: match phase {
                Phase::NotRegistered => "not linked to a cloud account".into(),
                _ => "not synced yet".into(),
            },
            progress: None,
            notices: Vec::new(),
            retry_in_ms: None,
        };
        Arc::new(Self {
            replica,
            config,
            api: watch::channel(api).0,
            kick: Notify::new(),
            status: watch::channel(status).0,
            settled: broadcast::channel(SETTLED_KEPT).0,
            round_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The replica.
    pub fn replica(&self) -> &Arc<R> {
        &self.replica
    }

    /// Switches to another cloud or account (or none), and syncs at once.
    pub fn set_api(&self, api: Option<CloudApi>) {
        let registered = api.is_some();
        self.api.send_replace(api);
        self.update(|s| {
            if !registered {
                s.phase = Phase::NotRegistered;
                s.message = "not linked to a cloud account".into();
            }
        });
        self.kick();
    }

    /// The current API, if the device is registered.
    pub fn api(&self) -> Option<CloudApi> {
        self.api.borrow().clone()
    }

    /// Runs `f` while no round runs (waiting for a running one to end), so
    /// `f` can rewrite the replica's sync state without a push answer
    /// landing on top of it.
    pub async fn with_rounds_paused<T>(&self, f: impl Future<Output = T>) -> T {
        let _no_round = self.round_lock.lock().await;
        f.await
    }

    /// Asks for a round now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The latest status.
    pub fn status(&self) -> SyncerStatus {
        self.status.borrow().clone()
    }

    /// Every status change (a receiver sees the latest when it looks).
    pub fn subscribe(&self) -> watch::Receiver<SyncerStatus> {
        self.status.subscribe()
    }

    /// The status at the end of every round from now on, none skipped
    /// (unless the receiver falls 64 rounds behind, which it is told). A
    /// failed round's carries no retry delay: the loop picks it after.
    pub fn settled(&self) -> broadcast::Receiver<SyncerStatus> {
        self.settled.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut SyncerStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.pending = self.replica.pending_count();
        });
    }

    /// Runs one round now (waiting for a running one first) and publishes
    /// its outcome.
    pub async fn sync_once(&self) -> Result<RoundReport, RoundError<R::Error>> {
        let Some(api) = self.api() else {
            return Err(RoundError::Transport(TransportError::Unauthorized(
                "this device is not registered with a cloud (register or link first)".into(),
            )));
        };
        let _one = self.round_lock.lock().await;
        self.update(|s| {
            s.phase = Phase::Syncing;
            s.progress = None;
        });
        let outcome = run_round(self.replica.as_ref(), &api, self.config.batch, |p| {
            self.update(|s| s.progress = Some(p.into()));
        })
        .await;
        match &outcome {
            Ok(report) => self.update(|s| {
                s.phase = Phase::UpToDate;
                s.last_sync_at = Some(Utc::now());
                s.message = format!(
                    "up to date (pushed {}, pulled {})",
                    report.pushed, report.pulled
                );
                s.progress = None;
                s.retry_in_ms = None;
                s.notices.extend(report.notices.iter().cloned());
                let excess = s.notices.len().saturating_sub(NOTICES_KEPT);
                s.notices.drain(..excess);
            }),
            Err(e) => {
                let offline = matches!(e, RoundError::Transport(t) if t.is_transient());
                self.update(|s| {
                    s.phase = if offline {
                        Phase::Offline
                    } else {
                        Phase::Error
                    };
                    s.message = e.to_string();
                    s.progress = None;
                    // The loop sets the next try's delay once it picks one
                    // (the last failure's is stale now).
                    s.retry_in_ms = None;
                });
            }
        }
        // No receiver is not an error.
        let _ = self.settled.send(self.status());
        outcome
    }

    /// Runs the loop until `stop` resolves. See the module docs.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()> + Send) {
        tokio::pin!(stop);
        let live = tokio::spawn(self.clone().follow_live());
        let mut pending = self.replica.watch_pending();
        let mut failures: u32 = 0;
        let mut retry: Option<tokio::time::Instant> = None;
        let mut safety = tokio::time::Instant::now() + self.config.safety_interval;
        // The first round runs at once (whatever waited while the app was
        // closed).
        self.kick();
        loop {
            let sleep_until = retry;
            tokio::select! {
                _ = &mut stop => break,
                _ = self.kick.notified() => {}
                changed = pending.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.update(|_| {});
                    if self.replica.pending_count() == 0 {
                        continue;
                    }
                }
                _ = async {
                    match sleep_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(safety) => {}
            }
            safety = tokio::time::Instant::now() + self.config.safety_interval;
            if self.api().is_none() {
                retry = None;
                continue;
            }
            match self.sync_once().await {
                Ok(_) => {
                    failures = 0;
                    retry = None;
                    // Written while the round ran: go again.
                    if self.replica.pending_count() > 0 {
                        self.kick();
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(&self.config, failures, rand::thread_rng().gen());
                    tracing::info!("sync failed ({e}); retrying in {} ms", delay.as_millis());
                    self.update(|s| s.retry_in_ms = Some(delay.as_millis() as u64));
                    retry = Some(tokio::time::Instant::now() + delay);
                }
            }
        }
        live.abort();
    }

    /// Keeps the live stream open while the device is registered: every
    /// open and every poke kicks a round; a dropped stream reconnects after
    /// a back-off.
    async fn follow_live(self: Arc<Self>) {
        let mut api_rx = self.api.subscribe();
        let mut failures: u32 = 0;
        loop {
            let api = api_rx.borrow_and_update().clone();
            let Some(api) = api else {
                if api_rx.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let this = self.clone();
            let kick = move || this.kick();
            let this = self.clone();
            let opened = std::sync::atomic::AtomicBool::new(false);
            let result = tokio::select! {
                r = api.follow_pokes(
                    || {
                        opened.store(true, std::sync::atomic::Ordering::Relaxed);
                        kick();
                    },
                    |_poke| this.kick(),
                ) => r,
                changed = api_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    failures = 0;
                    continue;
                }
            };
            if opened.load(std::sync::atomic::Ordering::Relaxed) {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = backoff(&self.config, failures, rand::thread_rng().gen());
            match &result {
                Ok(()) => tracing::debug!("sync: live stream ended; reopening"),
                Err(e) => tracing::debug!(
                    "sync: live stream: {e}; retrying in {} ms",
                    delay.as_millis()
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                changed = api_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    failures = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let c = SyncerConfig {
            batch: 1,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            safety_interval: Duration::from_secs(300),
        };
        assert_eq!(backoff(&c, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&c, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&c, 3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(&c, 10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&c, 60, 1.0), Duration::from_secs(1));
    }
}
