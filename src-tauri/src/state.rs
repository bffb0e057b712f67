//! [`Desktop`], the app's managed state: where its data lives, the local
//! node (opened once, in the background), the cloud link, and the tasks
//! that push engine updates and sync status to the UI as Tauri events.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use durable::Engine;
use galaxy::{GalaxyTable, LocalConfig, LocalNode};
use sync::{CloudLink, NothingToSync, Settings, SettingsFile};
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

type OnOpen = Box<dyn Fn(&Node, broadcast::Receiver<durable::InstanceUpdate>) + Send + Sync>;

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
    /// The node itself, kept for a clean shutdown at exit.
    closer: Mutex<Option<LocalNode>>,
    /// Called once when the node opens, with the update stream subscribed
    /// before any command could read (so nothing in between is missed).
    on_open: OnceLock<OnOpen>,
    link: OnceLock<Arc<CloudLink>>,
    settings_file: OnceLock<SettingsFile>,
    warnings: Mutex<Vec<String>>,
    stop: watch::Sender<bool>,
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
            settings_file: OnceLock::new(),
            warnings: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
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
                let node = tokio::task::spawn_blocking(move || {
                    LocalNode::open(&dir, LocalConfig::default())
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
                let updates = node.engine.subscribe();
                let parts = Node {
                    engine: node.engine.clone(),
                    table: node.table.clone(),
                };
                *self.closer.lock().expect("closer lock") = Some(node);
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

    /// The settings file (after setup).
    pub fn settings_file(&self) -> Result<&SettingsFile, CommandError> {
        self.settings_file
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

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Stops the background tasks and closes the node. Called at exit.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(node) = self.closer.lock().expect("closer lock").take() {
            tauri::async_runtime::block_on(node.shutdown(EXIT_GRACE));
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
    let file = SettingsFile::new(&paths.settings);
    let settings = file.load().unwrap_or_else(|e| {
        desktop.warn(e.to_string());
        Settings::default()
    });
    let _ = desktop.settings_file.set(file);
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
