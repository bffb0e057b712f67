//! Sync tests' fixtures: a `galaxy-cloud` process on a free port, two
//! devices of one player driven through the `galaxy` CLI, a device's
//! token, and a copy of a data directory (a backup).

use std::path::{Path, PathBuf};
use std::process::Child;

use serde_json::Value;

use super::ok;

pub struct Cloud {
    pub child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cloud(extra: &[&str]) -> Cloud {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = super::spawn(dir.path(), extra);
    let (_, base) = super::wait_listening(&lines);
    Cloud {
        child,
        base,
        _dir: dir,
    }
}

pub struct Devices {
    pub a: PathBuf,
    pub b: PathBuf,
    pub _dir: tempfile::TempDir,
}

/// Device A registers, device B joins A's player with a link code.
pub fn two_devices(base: &str) -> Devices {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&a, &["register", "--cloud", base, "--name", "laptop"]);
    let code = ok(&a, &["link"]).trim().to_string();
    assert_eq!(code.len(), 9, "{code}");
    ok(&b, &["link", &code, "--cloud", base, "--name", "phone"]);
    Devices { a, b, _dir: dir }
}

pub fn token(dir: &Path) -> String {
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("settings.json")).unwrap()).unwrap();
    settings["account"]["token"].as_str().unwrap().to_string()
}

/// Copies a stopped cloud's data directory (its SQLite files with their
/// write-ahead logs): a backup.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
