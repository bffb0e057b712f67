//! The Galaxy Forge desktop app. Everything is in the library so tests can
//! build the same app on Tauri's mock runtime.

// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    galaxy_desktop::run();
}
