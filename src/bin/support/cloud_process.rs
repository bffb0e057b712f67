//! What the benchmark binaries share: finding the `galaxy-cloud` binary
//! and running it on a free loopback port with a temporary data
//! directory. Included by each benchmark with `#[path]` (a directory
//! without `main.rs` under `src/bin` is not a binary of its own).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context};

/// The `galaxy-cloud` binary: `given`, or the one beside this binary
/// (built in the same profile).
pub fn galaxy_cloud_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("galaxy-cloud"),
    };
    ensure!(
        bin.exists(),
        "{} not found: build galaxy-cloud in the same profile",
        bin.display()
    );
    Ok(bin)
}

/// A running `galaxy-cloud` on SQLite in a temp dir; killed on drop.
pub struct Cloud {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cloud {
    /// The server's process id (for reading its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:PORT`, for raw TCP clients.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

/// Starts `bin` on `127.0.0.1:0` with `extra` arguments and waits for its
/// `listening on` line.
pub fn start_cloud(bin: &Path, extra: &[&str]) -> anyhow::Result<Cloud> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env_remove("GALAXY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = child.stdout.take().context("stdout")?;
    for line in BufReader::new(out).lines() {
        if let Some(url) = line?.strip_prefix("galaxy-cloud listening on ") {
            return Ok(Cloud {
                child,
                base: url.trim().to_string(),
                _dir: dir,
            });
        }
    }
    bail!("galaxy-cloud ended before listening")
}
