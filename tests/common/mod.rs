//! What the cross-process tests share: starting the real `galaxy-cloud`
//! binary on a free loopback port and reading the address it prints, and
//! driving devices through the real `galaxy` CLI.
#![allow(dead_code)]

pub mod devices;
pub mod router;
pub mod sse;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest wait for the server's first lines.
const WAIT: Duration = Duration::from_secs(30);

/// Starts `galaxy-cloud` on `127.0.0.1:0` with `dir` as its data directory
/// and `extra` arguments; returns the child and its stdout lines.
pub fn spawn(dir: &Path, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    spawn_on(dir, "127.0.0.1:0", extra)
}

/// [`spawn`] on a chosen address (a restart on the same port).
pub fn spawn_on(dir: &Path, listen: &str, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
    spawn_with(dir, listen, extra, Stdio::piped(), &[])
}

/// [`spawn_on`] with the server's stderr (its log) sent to `stderr` and
/// extra environment variables (e.g. `GALAXY_LOG`).
pub fn spawn_with(
    dir: &Path,
    listen: &str,
    extra: &[&str],
    stderr: Stdio,
    env: &[(&str, &str)],
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_galaxy-cloud"))
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env_remove("GALAXY_FUNCTION_KEY")
        .env_remove("GALAXY_MASTER_KEY")
        .env_remove("GALAXY_DATABASE_URL")
        .env_remove("GALAXY_LISTEN")
        .env_remove("GALAXY_DATA_DIR")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn galaxy-cloud");
    let out = child.stdout.take().expect("stdout");
    (child, lines_of(out))
}

/// The lines `read` gives, as they come (read on a thread of their own).
pub fn lines_of(read: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(read).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines up to and including the `listening on` line, and the URL in it.
pub fn wait_listening(lines: &mpsc::Receiver<String>) -> (Vec<String>, String) {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no 'listening on' line ({e}); got {seen:?}"));
        if let Some(url) = line.strip_prefix("galaxy-cloud listening on ") {
            let url = url.trim().to_string();
            seen.push(line);
            return (seen, url);
        }
        seen.push(line);
    }
}

/// Runs `galaxy --data-dir dir args...`.
pub fn galaxy(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_galaxy"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("GALAXY_DEVICE_DIR")
        .output()
        .expect("run galaxy")
}

/// Runs `galaxy` and returns its stdout; fails the test on a non-zero exit.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = galaxy(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "galaxy {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The galaxies of a device: (row key, name), sorted.
pub fn list(dir: &Path) -> Vec<(String, String)> {
    let all: Vec<serde_json::Value> = serde_json::from_str(&ok(dir, &["list", "--json"])).unwrap();
    let mut v: Vec<_> = all
        .iter()
        .map(|g| {
            (
                g["rowKey"].as_str().unwrap().to_string(),
                g["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A device running `galaxy sync --watch`, whose status lines a test
/// waits on.
pub struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    /// Starts watching on the device in `dir`.
    pub fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_galaxy"))
            .arg("--data-dir")
            .arg(dir)
            .args(["sync", "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn galaxy sync --watch");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Self { child, lines }
    }

    /// Waits for a status line containing `needle`.
    pub fn wait_for(&self, needle: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("the watching device never said '{needle}'"));
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Stops it with SIGTERM; true when it exited cleanly.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

/// Every instance `store` holds, with its input, all pages read.
pub async fn all_instances(store: &dyn durable::Store) -> Vec<durable::InstanceStatus> {
    let mut all = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list_instances(&durable::InstanceQuery {
                filter: durable::InstanceFilter::default(),
                page_size: 1000,
                with_input: true,
                continuation,
            })
            .await
            .expect("listing instances");
        all.extend(page.instances);
        continuation = page.continuation;
        if continuation.is_none() {
            return all;
        }
    }
}
