//! The Galaxy Forge desktop app: a thin Tauri 2 shell around
//! [`galaxy::LocalNode`] and the HTML5 front end in `ui/`.
//!
//! # Layout
//! - [`configure`]: the whole app as a function of a [`tauri::Builder`], so
//!   tests build it on the mock runtime and [`run`] on WebKitGTK.
//! - `state`: [`Desktop`], the managed state (paths, node, cloud link) and
//!   the background tasks started at setup.
//! - `commands`: what the UI invokes; parse, delegate, map errors.
//! - `events`: what Rust pushes to the UI (engine updates, sync status).
//! - `error`: [`CommandError`], serialized as `{kind, message}`.
//!
//! Invariant: this is the only crate that knows Tauri. Logic (views of
//! instances, the update forwarding, settings, reachability) lives in
//! `galaxy` and `sync`, which build and test without GTK.

mod commands;
mod error;
mod events;
mod state;

use tauri::{Builder, RunEvent, Runtime};

pub use commands::AppSnapshot;
pub use error::CommandError;
pub use events::{FATAL, GALAXY_ADDED, INSTANCE_UPDATED, RESYNC, SYNC_STATUS};
pub use state::{Desktop, DesktopOptions, DATA_DIR_ENV};

/// The app with options from the command line and environment
/// ([`DesktopOptions::from_env`]).
pub fn configure<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    configure_with(builder, DesktopOptions::from_env())
}

/// The app with explicit options (tests give each app its own data dir).
pub fn configure_with<R: Runtime>(builder: Builder<R>, options: DesktopOptions) -> Builder<R> {
    builder
        .manage(Desktop::new(options))
        .invoke_handler(tauri::generate_handler![
            commands::load_state,
            commands::create_galaxy,
            commands::list_instances,
            commands::get_instance,
            commands::terminate_instance,
            commands::suspend_instance,
            commands::resume_instance,
            commands::purge_instance,
            commands::list_galaxies,
            commands::sync_status,
            commands::check_connection,
            commands::get_settings,
            commands::save_settings,
            commands::ui_ready,
        ])
        .setup(|app| state::start(app.handle()))
}

/// Closes the node cleanly when the app exits. Pass to `App::run`.
pub fn on_event<R: Runtime>(app: &tauri::AppHandle<R>, event: RunEvent) {
    if let RunEvent::Exit = event {
        use tauri::Manager;
        app.state::<Desktop>().shutdown();
    }
}

/// Runs the desktop app (the binary's `main`).
pub fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tao=warn,wry=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let app = configure(Builder::default())
        .build(tauri::generate_context!())
        .unwrap_or_else(|e| {
            eprintln!("galaxy-desktop: cannot start: {e}");
            std::process::exit(1)
        });
    app.run(on_event);
}
