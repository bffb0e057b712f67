//! [`Desktop`], the app's managed state: where its data lives, the local
//! node (opened once, in the background), the cloud link, and the tasks
//! that push engine updates and sync status to the UI as Tauri events.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use durable::Engine;
use galaxy::{GalaxyEvent, GalaxyTable, PlayerDevice};
use sync::{CloudLink, NothingToSync, Reachability, Settings, SettingsFile, SyncerConfig};
use tauri::{AppHandle, Emitter, Manager, Runtime};
use tokio::sync::{broadcast, watch, OnceCell};

use crate::error::CommandError;
use crate::events::{self, UiSink};

/// Environment variable that overrides where the app keeps its data
/// (tests and benchmarks point it at temporary directories). The settings
/// file then lives there too.
pub const DATA_DIR_ENV: &str = "GALAXY_DESKTOP_DATA_DIR";

/// How often the cloud's reachability is checked when nothing changes.
const HEALTH_INTERVAL: Duration = Duration::from_secs(15);

/// How long the app waits for running turns and activities at exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);

type OnOpen = Box<dyn Fn(&Node, broadcast::Receiver<durable::Update>) + Send + Sync>;

/// How the app is started.
#[derive(Clone, Debug, Default)]
pub struct DesktopOptions {
    /// Data (and settings) directory; `None` means the OS app-data and
    /// app-config directories from Tauri's path API.
    pub data_dir: Option<PathBuf>,
}

impl DesktopOptions {
    /// From `--data-dir <path>` (or `--data-dir=<path>`) on the command
    /// line, else the [`DATA_DIR_ENV`] variable. Other arguments are
    /// ignored: WebDriver adds its own.
    pub fn from_env() -> Self {
        let mut args = std::env::args().skip(1);
        let mut data_dir = None;
        while let Some(a) = args.next() {
            if a == "--data-dir" {
                data_dir = args.next().map(PathBuf::from);
            } else if let Some(v) = a.strip_prefix("--data-dir=") {
                data_dir = Some(PathBuf::from(v));
            }
        }
        let data_dir = data_dir.or_else(|| {
            std::env::var_os(DATA_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        Self { data_dir }
    }
}

/// The parts of an open node the commands use (cheap clones).
#[derive(Clone)]
pub struct Node {
    /// The embedded engine.
    pub engine: Engine,
    /// The galaxies table.
    pub table: Arc<GalaxyTable>,
    /// The player's device: settings, account, sync loop, edits.
    pub device: Arc<PlayerDevice>,
    /// The settings held a function key (now removed): register at once.
    pub migrate_key: bool,
}

/// Where things are, once resolved.
#[derive(Clone, Debug)]
pub struct Paths {
    /// engine.db and galaxies.db.
    pub data_dir: PathBuf,
    /// The settings file.
    pub settings: PathBuf,
}

/// The app's state, managed by Tauri.
pub struct Desktop {
    options: DesktopOptions,
    started: Instant,
    paths: OnceLock<Paths>,
    node: OnceCell<Node>,
    /// The device itself, kept for a clean shutdown at exit.
    closer: Mutex<Option<Arc<PlayerDevice>>>,
    /// Called once when the node opens, with the update stream subscribed
    /// before any command could read (so nothing in between is missed).
    on_open: OnceLock<OnOpen>,
    link: OnceLock<Arc<CloudLink>>,
    warnings: Mutex<Vec<String>>,
    stop: watch::Sender<bool>,
    /// Cloud instances started by this app, to follow and show live.
    cloud_started: broadcast::Sender<String>,
}

impl Desktop {
    /// State for an app started with `options`; nothing opens until
    /// [`start`] runs (from the builder's setup).
    pub fn new(options: DesktopOptions) -> Self {
        Self {
            options,
            started: Instant::now(),
            paths: OnceLock::new(),
            node: OnceCell::new(),
            closer: Mutex::new(None),
            on_open: OnceLock::new(),
            link: OnceLock::new(),
            warnings: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
            cloud_started: broadcast::channel(64).0,
        }
    }

    /// Time since the state was made (roughly, since the process started).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Where the data and settings are (after setup).
    pub fn paths(&self) -> Result<&Paths, CommandError> {
        self.paths
            .get()
            .ok_or_else(|| CommandError::Unavailable("the app is still starting".into()))
    }

    /// The local node, opening it on first use. Concurrent callers wait for
    /// the same opening. A failure (e.g. another window holds the files) is
    /// returned to the callers waiting for it, and the next call tries again.
    pub async fn node(&self) -> Result<&Node, CommandError> {
        let paths = self.paths()?.clone();
        self.node
            .get_or_try_init(|| async {
                let dir = paths.data_dir.clone();
                let settings = paths.settings.clone();
                let (device, notes) = tokio::task::spawn_blocking(move || {
                    PlayerDevice::open(&dir, Some(settings), SyncerConfig::default())
                })
                .await
                .map_err(|e| {
                    CommandError::Internal(format!("Opening the local store crashed: {e}"))
                })?
                .map_err(|e| {
                    CommandError::Unavailable(format!(
                        "Cannot open your galaxies in {}: {e}",
                        paths.data_dir.display()
                    ))
                })?;
                for w in notes.warnings {
                    self.warn(w);
                }
                let device = Arc::new(device);
                let updates = device.node().engine.subscribe();
                let parts = Node {
                    engine: device.node().engine.clone(),
                    table: device.node().table.clone(),
                    device: device.clone(),
                    migrate_key: notes.legacy_key_dropped,
                };
                *self.closer.lock().expect("closer lock") = Some(device);
                if let Some(on_open) = self.on_open.get() {
                    on_open(&parts, updates);
                }
                Ok(parts)
            })
            .await
    }

    /// The cloud link (after setup).
    pub fn link(&self) -> Result<&Arc<CloudLink>, CommandError> {
        self.link
            .get()
            .ok_or_else(|| CommandError::Unavailable("the app is still starting".into()))
    }

    /// Problems found at start that did not stop the app (shown once).
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().expect("warnings lock").clone()
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.warnings.lock().expect("warnings lock").push(message);
    }

    /// Hands a cloud instance this app started to the task that follows
    /// it and shows it live.
    pub fn follow_cloud_instance(&self, instance_id: String) {
        let _ = self.cloud_started.send(instance_id);
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Stops the background tasks (the sync loop among them) and closes
    /// the node. Called at exit.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(device) = self.closer.lock().expect("closer lock").take() {
            tauri::async_runtime::block_on(device.close(EXIT_GRACE));
        }
    }
}

/// Resolves the paths, loads the settings, then (in the background) opens
/// the node and starts the forwarding tasks. Runs in the builder's setup:
/// the window is already loading the UI, which waits for the node through
/// its first command.
pub fn start<R: Runtime>(app: &AppHandle<R>) -> Result<(), Box<dyn std::error::Error>> {
    let desktop = app.state::<Desktop>();
    let paths = match &desktop.options.data_dir {
        Some(dir) => Paths {
            data_dir: dir.clone(),
            settings: dir.join("settings.json"),
        },
        None => Paths {
            data_dir: app.path().app_data_dir()?,
            settings: app.path().app_config_dir()?.join("settings.json"),
        },
    };
    tracing::info!(data = %paths.data_dir.display(), settings = %paths.settings.display(), "starting");
    // Reachability needs only the URL; the device (opened below) reads the
    // same file and reports a damaged one.
    let settings = SettingsFile::new(&paths.settings)
        .load()
        .unwrap_or_else(|_| Settings::default());
    let _ = desktop.paths.set(paths);
    let link = CloudLink::new(settings, Arc::new(NothingToSync));
    let _ = desktop.link.set(link.clone());

    // Sync status: checked from Rust, pushed to the UI on every change.
    tauri::async_runtime::spawn(link.clone().run(HEALTH_INTERVAL, desktop.stopped()));
    let mut statuses = link.subscribe();
    let emitter = app.clone();
    let stop = desktop.stopped();
    tauri::async_runtime::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                changed = statuses.changed() => if changed.is_err() { return },
            }
            let status = statuses.borrow_and_update().clone();
            let _ = emitter.emit(events::SYNC_STATUS, status);
        }
    });

    // SIGTERM / SIGINT (e.g. Ctrl-C after `make run`): exit like a closed
    // window, so the node shuts down cleanly.
    #[cfg(unix)]
    {
        let app = app.clone();
        tauri::async_runtime::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: exiting");
            app.exit(0);
        });
    }

    // The node: its updates are forwarded to the UI from the moment it
    // opens; it is opened off the main thread, now, so the first command
    // finds it ready.
    let sink_app = app.clone();
    let _ = desktop.on_open.set(Box::new(move |node: &Node, updates| {
        let desktop = sink_app.state::<Desktop>();
        tauri::async_runtime::spawn(galaxy::monitor::forward(
            node.engine.clone(),
            node.table.clone(),
            updates,
            UiSink(sink_app.clone()),
            desktop.stopped(),
        ));
        start_sync(&sink_app, &desktop, node);
    }));
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        if let Err(e) = app.state::<Desktop>().node().await {
            tracing::error!("{e}");
            let _ = app.emit(events::FATAL, e.to_string());
        }
    });
    Ok(())
}

/// The sync side of an open node: the loop itself, its status and the
/// galaxies it changes pushed to the UI, and (for settings that held a
/// function key) registering as soon as the cloud answers.
fn start_sync<R: Runtime>(app: &AppHandle<R>, desktop: &Desktop, node: &Node) {
    let syncer = node.device.syncer().clone();
    tauri::async_runtime::spawn(syncer.clone().run(desktop.stopped()));

    let mut statuses = syncer.subscribe();
    let emitter = app.clone();
    let stop = desktop.stopped();
    tauri::async_runtime::spawn(async move {
        tokio::pin!(stop);
        let _ = emitter.emit(events::SYNC_LOOP, statuses.borrow_and_update().clone());
        loop {
            tokio::select! {
                _ = &mut stop => return,
                changed = statuses.changed() => if changed.is_err() { return },
            }
            let status = statuses.borrow_and_update().clone();
            let _ = emitter.emit(events::SYNC_LOOP, status);
        }
    });

    let mut changes = node.device.replica().subscribe();
    let emitter = app.clone();
    let stop = desktop.stopped();
    tauri::async_runtime::spawn(async move {
        tokio::pin!(stop);
        loop {
            let event = tokio::select! {
                _ = &mut stop => return,
                e = changes.recv() => e,
            };
            match event {
                Ok(GalaxyEvent::Upserted(g)) => {
                    let _ = emitter.emit(events::GALAXY_UPSERTED, g);
                }
                Ok(GalaxyEvent::Removed { row_key }) => {
                    let _ = emitter.emit(
                        events::GALAXY_REMOVED,
                        serde_json::json!({ "rowKey": row_key }),
                    );
                }
                Ok(GalaxyEvent::Reloaded) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = emitter.emit(events::RESYNC, ());
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    // Cloud instances started here: followed on their live stream, each
    // state shown in the orchestrations panel as a cloud instance.
    let mut started = desktop.cloud_started.subscribe();
    let device = node.device.clone();
    let emitter = app.clone();
    let stop = desktop.stopped();
    tauri::async_runtime::spawn(async move {
        tokio::pin!(stop);
        loop {
            let id = tokio::select! {
                _ = &mut stop => return,
                id = started.recv() => match id {
                    Ok(id) => id,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let (device, emitter) = (device.clone(), emitter.clone());
            tauri::async_runtime::spawn(async move {
                let emit = |state: &sync::InstanceState| {
                    let _ = emitter.emit(events::CLOUD_INSTANCE, state_payload(state));
                };
                if let Err(e) = device.follow_in_cloud(&id, emit).await {
                    let _ = emitter.emit(
                        events::NOTICE,
                        format!("Lost track of the cloud's Galaxy_Create {id}: {e}; its galaxy still arrives through sync"),
                    );
                }
            });
        }
    });

    if node.migrate_key && node.device.settings().account.is_none() {
        let device = node.device.clone();
        let link = desktop.link.get().cloned();
        let emitter = app.clone();
        let stop = desktop.stopped();
        tauri::async_runtime::spawn(async move {
            let Some(link) = link else { return };
            let mut reach = link.subscribe();
            let online = async {
                let _ = reach
                    .wait_for(|s| s.connection.state == Reachability::Online)
                    .await;
            };
            tokio::select! {
                _ = stop => return,
                _ = online => {}
            }
            let url = device.settings().cloud_url;
            match device.register(&url, &device_name()).await {
                Ok(a) => {
                    tracing::info!(player = %a.player_id, "registered in place of the old function key")
                }
                Err(e) => {
                    let _ = emitter.emit(
                        events::NOTICE,
                        format!("Could not register this device with the cloud ({e}); use Settings to register."),
                    );
                }
            }
        });
    }
}

/// This device's name for the cloud: the host name.
pub fn device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "desktop".into())
}

/// A cloud instance's state as the UI's `cloud-instance` event carries it.
fn state_payload(state: &sync::InstanceState) -> serde_json::Value {
    serde_json::json!({
        "instanceId": state.instance_id,
        "runtimeStatus": state.runtime_status,
    })
}
