//! Running the server: opening the store and table, binding, signals and
//! graceful shutdown.
//!
//! Shutdown order: stop accepting and tell streams and waits to end
//! ([`AppState::begin_shutdown`]), let in-flight requests finish (up to
//! [`DRAIN`]), stop the engine (running turns and activities get
//! [`ENGINE_GRACE`]; leased work not finished returns to the queue when its
//! lease expires), close the databases, exit 0.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use durable::{
    Engine, EngineConfig, PostgresConfig, PostgresStore, Registry, SqliteConfig, SqliteStore, Store,
};
use futures::future::BoxFuture;
use galaxy::{Galaxies, GalaxyTable, PgGalaxyTable};
use tokio::net::TcpListener;

use crate::config::Args;
use crate::keys::{self, KeyError, Keys};
use crate::state::AppState;

/// How long in-flight requests get to finish after shutdown begins.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long running turns and activities get at shutdown.
pub const ENGINE_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The keys could not be loaded, created or accepted.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// The engine store refused to open.
    #[error("engine store: {0}")]
    Store(#[from] durable::StoreError),
    /// The galaxies table refused to open.
    #[error("galaxies table: {0}")]
    Table(#[from] galaxy::TableError),
    /// The event router's store refused to open.
    #[error("events store: {0}")]
    Events(#[from] eventgrid::store::StoreError),
    /// The players store refused to open.
    #[error("players store: {0}")]
    Players(#[from] galaxy::players::PlayersError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another I/O failure (data directory, serving).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A store stopped working while serving (its writer died); the server
    /// drained and stopped so that a supervisor restarts it.
    #[error("stopped because {0}")]
    Unhealthy(String),
}

/// How often the stores' health (`AppState::health`) is checked while
/// serving.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Resolves (with the reason) one interval after a store of `state`
/// first reported itself unhealthy: until then the port stays open and
/// `/healthz` answers 503 with the reason, so a supervisor or load
/// balancer polling it sees why before the process drains (else the
/// window would be whatever was left of the interval, possibly nothing).
async fn sickness(state: AppState) -> String {
    loop {
        tokio::time::sleep(HEALTH_EVERY).await;
        if let Err(reason) = state.health() {
            tracing::error!("{reason}: draining in {HEALTH_EVERY:?}");
            tokio::time::sleep(HEALTH_EVERY).await;
            return reason;
        }
    }
}

/// Where the engine keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// SQLite in `<dir>/engine.db` (the default).
    Sqlite(PathBuf),
    /// PostgreSQL at this URL.
    Postgres(String),
}

impl StoreChoice {
    /// The choice the command line makes.
    pub fn from_args(args: &Args) -> Self {
        match &args.database_url {
            Some(url) => Self::Postgres(url.clone()),
            None => Self::Sqlite(args.data_dir.clone()),
        }
    }
}

/// An open engine store and how to close it once the engine has stopped.
pub struct OpenStore {
    /// The store, behind the trait the engine uses.
    pub store: Arc<dyn Store>,
    close: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

impl OpenStore {
    /// Closes the store: SQLite flushes and stops its threads; PostgreSQL
    /// hands this process's leases back at once, so other processes take
    /// the work over without waiting for the leases to expire.
    pub async fn close(self) {
        (self.close)().await
    }
}

/// Opens the engine store. This is the one place a store backend is
/// chosen: everything above it sees only `Arc<dyn Store>`.
pub async fn open_store(choice: &StoreChoice) -> Result<OpenStore, ServeError> {
    match choice {
        StoreChoice::Sqlite(dir) => {
            crate::keys::create_private_dir(dir)?;
            let store = Arc::new(SqliteStore::open_with(
                dir.join("engine.db"),
                SqliteConfig {
                    lifecycle_outbox: true,
                    ..SqliteConfig::default()
                },
            )?);
            let closing = store.clone();
            Ok(OpenStore {
                store,
                close: Box::new(move || Box::pin(async move { closing.close() })),
            })
        }
        StoreChoice::Postgres(url) => {
            let store = Arc::new(
                PostgresStore::connect(PostgresConfig {
                    lifecycle_outbox: true,
                    ..PostgresConfig::new(url.clone())
                })
                .await?,
            );
            let closing = store.clone();
            Ok(OpenStore {
                store,
                close: Box::new(move || Box::pin(async move { closing.close().await })),
            })
        }
    }
}

/// Schema of the galaxies table in PostgreSQL.
pub const PG_GALAXY_SCHEMA: &str = "galaxy";

/// Opens the galaxies table beside the engine store: SQLite in the data
/// directory, or the PostgreSQL database, where every process sharing it
/// writes and reads one table (so a galaxy row is written once however many
/// processes run the activity).
pub async fn open_table(choice: &StoreChoice, data_dir: &Path) -> Result<Galaxies, ServeError> {
    Ok(match choice {
        StoreChoice::Sqlite(_) => {
            Arc::new(GalaxyTable::open(data_dir.join("galaxies.db"), true)?).into()
        }
        StoreChoice::Postgres(url) => {
            Arc::new(PgGalaxyTable::connect(url, PG_GALAXY_SCHEMA, 8).await?).into()
        }
    })
}

/// Opens the players store beside the engine store: `players.db` in the
/// data directory, or tables in the PostgreSQL database (shared by every
/// process serving the same players).
pub async fn open_players(
    choice: &StoreChoice,
    data_dir: &Path,
) -> Result<galaxy::players::Players, ServeError> {
    Ok(match choice {
        StoreChoice::Sqlite(_) => galaxy::players::Players::open(data_dir.join("players.db"))?,
        StoreChoice::Postgres(url) => {
            galaxy::players::Players::connect(url, PG_GALAXY_SCHEMA).await?
        }
    })
}

/// Schema of the event router's tables in PostgreSQL.
pub const PG_EVENTS_SCHEMA: &str = "eventgrid";

/// Opens the event router's store beside the engine store: `events.db` in
/// the data directory, or tables in the PostgreSQL database (the processes
/// sharing it split the delivery work through leases).
pub async fn open_events(
    choice: &StoreChoice,
    data_dir: &Path,
    delivery_timeout: std::time::Duration,
) -> Result<eventgrid::RouterStore, ServeError> {
    Ok(match choice {
        StoreChoice::Sqlite(_) => eventgrid::RouterStore::open(data_dir.join("events.db"))?,
        StoreChoice::Postgres(url) => {
            let lease = eventgrid::store::lease_for(delivery_timeout);
            eventgrid::RouterStore::connect(url, PG_EVENTS_SCHEMA, lease).await?
        }
    })
}

/// The functions this server runs: `Galaxy_Create` and its activities
/// (a galaxy a player starts also goes into the player's synced galaxies;
/// every galaxy is announced on the system topic when `hooks` say so), and
/// the samples when asked for.
pub fn registry(table: impl Into<Galaxies>, hooks: galaxy::CloudHooks, samples: bool) -> Registry {
    let registry = galaxy::register_for_cloud(Registry::new(), table, hooks);
    if samples {
        crate::samples::register(registry)
    } else {
        registry
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then drains
/// (see the module docs). Returns once the listener is closed; the engine
/// is left to the caller.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    let app = crate::app(state.clone());
    let begin = state.clone();
    let server = async move {
        crate::listen::serve(listener, app, limits, async move {
            shutdown.await;
            begin.begin_shutdown();
        })
        .await;
        Ok(())
    };
    let drained = state.shutdown_signal();
    let deadline = async move {
        drained.await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        r = server => r,
        _ = deadline => {
            tracing::warn!("requests still open {DRAIN:?} after shutdown began; closing them");
            Ok(())
        }
    }
}

pub use crate::system_events::{SystemEvents, SYSTEM_TOPIC};

/// The cloud's workload hooks over its players and event stores.
pub fn hooks(
    players: &galaxy::players::Players,
    events: &eventgrid::RouterStore,
) -> galaxy::CloudHooks {
    galaxy::CloudHooks {
        players: Some(players.clone()),
        observer: Some(Arc::new(SystemEvents(events.clone()))),
    }
}

/// A server started by [`spawn_local`]: its address, and how to stop it.
pub struct LocalServer {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The shared state (engine, players).
    pub state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    store: Arc<SqliteStore>,
    table: Arc<GalaxyTable>,
}

impl LocalServer {
    /// Stops serving, then the engine, then closes the databases.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
        self.state.engine.shutdown(ENGINE_GRACE).await;
        self.store.close();
        self.table.close();
    }
}

/// Runs galaxy-cloud inside this process on `listen` (e.g.
/// `127.0.0.1:0`) with SQLite files in `dir`: what other crates' tests and
/// benchmarks use to talk to a real server without a child process.
pub async fn spawn_local(dir: &Path, listen: &str, keys: Keys) -> Result<LocalServer, ServeError> {
    crate::keys::create_private_dir(dir)?;
    let store = Arc::new(SqliteStore::open_with(
        dir.join("engine.db"),
        SqliteConfig {
            lifecycle_outbox: true,
            ..SqliteConfig::default()
        },
    )?);
    let table = Arc::new(GalaxyTable::open(dir.join("galaxies.db"), true)?);
    let players = galaxy::players::Players::open(dir.join("players.db"))?;
    let events = eventgrid::RouterStore::open(dir.join("events.db"))?;
    events
        .put_topic(SYSTEM_TOPIC, Some(eventgrid::Schema::EventGridSchema))
        .await?;
    let engine = Engine::start(
        store.clone() as Arc<dyn Store>,
        registry(table.clone(), hooks(&players, &events), false),
        EngineConfig::default(),
    );
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr()?;
    let state = AppState::new(engine, table.clone(), keys, players, events)
        .with_default_host(addr.to_string());
    state.start_delivery();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(LocalServer {
        base_url: format!("http://{addr}"),
        state,
        stop,
        served,
        store,
        table,
    })
}

/// How often old tombstones and events are purged (and once at start).
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Runs `purge` (which forgets what is older than `retention` and says how
/// much) at start and every [`PURGE_EVERY`] (at most every `retention`)
/// until shutdown.
async fn purge_every<F, Fut, E>(
    what: &'static str,
    retention: Duration,
    shutdown: impl Future<Output = ()>,
    mut purge: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, E>>,
    E: std::fmt::Display,
{
    tokio::pin!(shutdown);
    loop {
        match purge().await {
            Ok(0) => {}
            Ok(n) => tracing::info!("purged {n} {what} older than {retention:?}"),
            Err(e) => tracing::warn!("purging {what} failed: {e}"),
        }
        let every = if retention.is_zero() {
            Duration::from_secs(1)
        } else {
            PURGE_EVERY.min(retention)
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Installs the SIGTERM and Ctrl-C (SIGINT) handlers now and returns a
/// future that resolves on either. Installed before the server announces
/// itself, so a signal sent right after the `listening on` line is a
/// graceful shutdown, not the default (immediate) death.
pub fn termination() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Runs `galaxy-cloud` with these arguments until SIGTERM or Ctrl-C.
///
/// Prints (stdout) the keys when it creates them, then exactly one line
/// `galaxy-cloud listening on http://ADDR` with the bound address (tests
/// and scripts parse it), and `galaxy-cloud stopped` at the end.
pub async fn run(args: Args) -> Result<(), ServeError> {
    // First, so a signal at any later point is a graceful shutdown.
    let signals = termination()?;
    let choice = StoreChoice::from_args(&args);
    // The store first: a database that cannot be reached fails the start
    // before anything is written to the data directory.
    let opened = open_store(&choice).await?;
    crate::keys::create_private_dir(&args.data_dir)?;
    let (keys, created) = match Keys::load_or_create(
        &args.data_dir,
        args.function_key.clone(),
        args.master_key.clone(),
    ) {
        Ok(k) => k,
        Err(e) => {
            opened.close().await;
            return Err(e.into());
        }
    };
    if created {
        // A key given by flag or environment is the caller's: never shown.
        let shown = |given: &Option<String>, key: &str, flag: &str| match given {
            Some(_) => format!("(given with {flag}; not shown)"),
            None => key.to_string(),
        };
        println!(
            "galaxy-cloud: created keys in {} (shown once; keep them)\n  function key: {}\n  master key:   {}",
            keys::keys_path(&args.data_dir).display(),
            shown(&args.function_key, keys.function_key(), "--function-key"),
            shown(&args.master_key, keys.master_key(), "--master-key"),
        );
    }
    let table = match open_table(&choice, &args.data_dir).await {
        Ok(t) => t,
        Err(e) => {
            opened.close().await;
            return Err(e);
        }
    };
    let players = match open_players(&choice, &args.data_dir).await {
        Ok(p) => p,
        Err(e) => {
            opened.close().await;
            return Err(e);
        }
    };
    let events = match open_events(&choice, &args.data_dir, args.event_delivery_timeout).await {
        Ok(e) => e,
        Err(e) => {
            opened.close().await;
            return Err(e);
        }
    };
    if let Err(e) = events
        .put_topic(SYSTEM_TOPIC, Some(eventgrid::Schema::EventGridSchema))
        .await
    {
        opened.close().await;
        return Err(e.into());
    }
    let engine = Engine::start(
        opened.store.clone(),
        registry(table.clone(), hooks(&players, &events), args.samples),
        EngineConfig::default(),
    );
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(source) => {
            engine.shutdown(ENGINE_GRACE).await;
            opened.close().await;
            return Err(ServeError::Bind {
                addr: args.listen.clone(),
                source,
            });
        }
    };
    let addr = listener.local_addr()?;
    let state = AppState::new(engine.clone(), table.clone(), keys, players.clone(), events)
        .with_default_host(addr.to_string())
        .with_limits(crate::listen::Limits {
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            max_connections: args.max_connections as usize,
            max_streams_per_key: args.max_streams_per_key as usize,
        })
        .with_event_config(eventgrid::deliver::DeliveryConfig {
            retry_scale: args.event_retry_scale,
            timeout: args.event_delivery_timeout,
            ..eventgrid::deliver::DeliveryConfig::default()
        });
    state.start_delivery();
    let retention = args.tombstone_retention;
    tokio::spawn(purge_every(
        "tombstones",
        retention,
        state.shutdown_signal(),
        move || {
            let players = players.clone();
            async move { players.purge_tombstones(retention).await }
        },
    ));
    let (events, retention) = (state.events.clone(), args.event_retention);
    tokio::spawn(purge_every(
        "delivered events",
        retention,
        state.shutdown_signal(),
        move || {
            let events = events.clone();
            let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let before = chrono::Utc::now().timestamp_millis().saturating_sub(ms);
            async move { events.sweep(before).await }
        },
    ));
    println!("galaxy-cloud listening on http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // A dead store writer stops the server like a signal does (drain,
    // then exit non-zero), so a supervisor restarts it.
    let sick = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let (sick, watched) = (sick.clone(), state.clone());
        async move {
            tokio::select! {
                () = signals => {}
                reason = sickness(watched) => {
                    tracing::error!("{reason}: draining and stopping");
                    eprintln!("galaxy-cloud: {reason}; draining and stopping");
                    *sick.lock().expect("sick lock") = Some(reason);
                }
            }
        }
    };
    let served = serve(listener, state, stop).await;
    engine.shutdown(ENGINE_GRACE).await;
    drop(engine);
    opened.close().await;
    table.close();
    served?;
    if let Some(reason) = sick.lock().expect("sick lock").take() {
        return Err(ServeError::Unhealthy(reason));
    }
    println!("galaxy-cloud stopped");
    Ok(())
}
