//! Embeds `tauri.conf.json`, the capabilities and the `ui/` front end.

fn main() {
    tauri_build::build()
}
