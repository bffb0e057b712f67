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
//! - `single_instance`: one window per data folder; a second launch
//!   focuses the first (no Tauri in it).
//!
//! Invariant: this is the only crate that knows Tauri. Logic (views of
//! instances, the update forwarding, settings, reachability) lives in
//! `galaxy` and `sync`, which build and test without GTK.

mod commands;
mod error;
mod events;
mod single_instance;
mod state;

use tauri::{Builder, RunEvent, Runtime};

pub use commands::AppSnapshot;
pub use error::CommandError;
pub use events::{
    CLOUD_INSTANCE, FATAL, FOCUS_REQUESTED, GALAXY_ADDED, GALAXY_REMOVED, GALAXY_UPSERTED,
    INSTANCE_UPDATED, NOTICE, RESYNC, SYNC_LOOP, SYNC_STATUS,
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
    let context = tauri::generate_context!();
    let options = DesktopOptions::from_env();
    let data_dir = options
        .data_dir
        .clone()
        .or_else(|| default_data_dir(&context.config().identifier));
    // One window per data folder: a second launch focuses the first.
    let primary = match data_dir.as_deref().map(single_instance::claim) {
        Some(Ok(single_instance::Launch::First(primary))) => Some(primary),
        Some(Ok(single_instance::Launch::Focused)) => {
            eprintln!(
                "galaxy-desktop: Galaxy Forge is already open on {}: its window was brought to the front.",
                data_dir.unwrap_or_default().display()
            );
            std::process::exit(0)
        }
        Some(Err(e)) => {
            eprintln!("galaxy-desktop: {e}");
            std::process::exit(1)
        }
        // No home folder: the store's own lock is the only guard.
        None => None,
    };
    let app = configure_with(Builder::default(), options)
        .build(context)
        .unwrap_or_else(|e| {
            eprintln!("galaxy-desktop: cannot start: {e}");
            std::process::exit(1)
        });
    if let Some(primary) = primary {
        let handle = app.handle().clone();
        primary.serve(move || bring_to_front(&handle));
    }
    app.run(on_event);
}

/// Where Tauri's path resolver puts the app's data when no folder is
/// given (`app_data_dir`), known before the app is built.
pub fn default_data_dir(identifier: &str) -> Option<std::path::PathBuf> {
    dirs::data_dir().map(|d| d.join(identifier))
}

/// Shows, un-minimizes and focuses the main window, and tells the page.
fn bring_to_front<R: Runtime>(app: &tauri::AppHandle<R>) {
    use tauri::{Emitter, Manager};
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
    }
    let _ = app.emit(FOCUS_REQUESTED, ());
}
