//! The Galaxy Forge desktop app. Everything is in the library so tests can
//! build the same app on Tauri's mock runtime; this adapter only reads the
//! command line (`--version`, `--help`) before opening the window.

// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use clap::Parser;

/// Galaxy Forge: create galaxies through a durable workflow engine, offline
/// on this machine and synced with the cloud when online. Without options
/// it opens the app's window.
#[derive(Parser)]
#[command(name = "galaxy-desktop", version)]
struct Args {}

fn main() {
    // --version and --help print and exit 0; anything else unknown is a
    // readable error and exit 2 (clap's own handling).
    let Args {} = Args::parse();
    galaxy_desktop::run();
}
