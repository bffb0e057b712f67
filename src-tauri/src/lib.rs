//! The Galaxy Forge desktop app: a thin Tauri 2 shell around
//! [`galaxy::PlayerDevice`] (the local node, settings and sync loop) and
//! the HTML5 front end in `ui/`.
//!
//! # Layout
//! - [`configure`]: the whole app as a function of a [`tauri::Builder`], so
//!   tests build it on the mock runtime and [`run`] on WebKitGTK.
//! - `state`: [`Desktop`], the managed state (paths, node, cloud link) and
//!   the background tasks started at setup.
//! - `commands`: what the UI invokes; parse, delegate, map errors.
//! - `events`: what Rust pushes to the UI (engine updates, sync status,
//!   galaxies changed by sync).
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
pub use events::{
    CLOUD_INSTANCE, FATAL, GALAXY_ADDED, GALAXY_REMOVED, GALAXY_UPSERTED, INSTANCE_UPDATED, NOTICE,
    RESYNC, SYNC_LOOP, SYNC_STATUS,
};
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
            commands::register_device,
            commands::create_link_code,
            commands::join_player,
            commands::sign_out,
            commands::rename_galaxy,
            commands::delete_galaxy,
            commands::sync_now,
            commands::create_in_cloud,
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

/// Whether WebKit should draw without accelerated compositing: on Linux
/// when the machine has no GPU render node (`/dev/dri/renderD*`) and the
/// player has not decided (`WEBKIT_DISABLE_COMPOSITING_MODE` unset).
///
/// Why: without a GPU, WebKitGTK composites through Mesa's software
/// OpenGL (llvmpipe). Measured under Xvfb with 1,000 galaxies: every frame
/// then costs about 76 ms instead of 9 ms and the web process holds
/// 376 MiB instead of 190 MiB (BENCHMARKS.md). With a GPU, compositing is
/// left as WebKit chooses.
pub fn prefer_software_drawing(dri_dir: &std::path::Path, env_value: Option<&str>) -> bool {
    if env_value.is_some() {
        return false;
    }
    let has_render_node = std::fs::read_dir(dri_dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        })
        .unwrap_or(false);
    !has_render_node
}

/// The environment variable WebKitGTK reads to turn compositing off.
const COMPOSITING_ENV: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";

/// Runs the desktop app (the binary's `main`).
pub fn run() {
    // Before any thread exists (the variable is read by the web process,
    // which inherits our environment).
    let software = cfg!(target_os = "linux")
        && prefer_software_drawing(
            std::path::Path::new("/dev/dri"),
            std::env::var(COMPOSITING_ENV).ok().as_deref(),
        );
    if software {
        std::env::set_var(COMPOSITING_ENV, "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tao=warn,wry=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if software {
        tracing::info!("no GPU render node: WebKit draws without compositing");
    }
    let app = configure(Builder::default())
        .build(tauri::generate_context!())
        .unwrap_or_else(|e| {
            eprintln!("galaxy-desktop: cannot start: {e}");
            std::process::exit(1)
        });
    app.run(on_event);
}
