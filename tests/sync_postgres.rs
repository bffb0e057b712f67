//! Sync on PostgreSQL: two real `galaxy-cloud` processes share one
//! database (a throwaway cluster), and each of a player's two devices (the
//! `galaxy` CLI) talks to a different one. Both push at the same time,
//! round after round; they converge, and the player's versions are exactly
//! 1..N, each once (the per-player counter is right under concurrent
//! pushes from two processes). A push through one process pokes a device
//! listening on the other.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use durable::testing::PgCluster;
use serde_json::Value;

mod common;

const PER_DEVICE: usize = 150;
const ROUNDS: usize = 4;

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(url: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = common::spawn(dir.path(), &["--database-url", url]);
    let (_, base) = common::wait_listening(&lines);
    Server {
        child,
        base,
        _dir: dir,
    }
}

fn galaxy(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_galaxy"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = galaxy(dir, args);
    assert!(
        out.status.success(),
        "galaxy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn list(dir: &Path) -> Vec<(String, String)> {
    let all: Vec<Value> = serde_json::from_str(&ok(dir, &["list", "--json"])).unwrap();
    let mut v: Vec<_> = all
        .iter()
        .map(|g| {
            (
                g["rowKey"].as_str().unwrap().into(),
                g["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_serve_one_player_with_one_counter() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let (s1, s2) = (server(&url), server(&url));
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("a"), dir.path().join("b"));
    ok(&a, &["register", "--cloud", &s1.base, "--name", "a"]);
    // A code made through one process works through the other.
    let code = ok(&a, &["link"]).trim().to_string();
    ok(&b, &["link", &code, "--cloud", &s2.base, "--name", "b"]);

    // B listens live on process 2.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_galaxy"))
        .arg("--data-dir")
        .arg(&b)
        .args(["sync", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let out = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the watching device never said '{needle}'"));
        if line.contains(needle) {
            return;
        }
    };
    wait_for("UpToDate");
    ok(&a, &["create", "-n", "3"]);
    ok(&a, &["sync"]);
    // Pushed through process 1, poked through process 2.
    wait_for("pulled 3");
    let _ = Command::new("kill").arg(watcher.id().to_string()).status();
    watcher.wait().unwrap();

    // Both devices create and push at the same time, round after round,
    // each through its own process.
    for _ in 0..ROUNDS {
        ok(&a, &["create", "-n", &(PER_DEVICE / ROUNDS).to_string()]);
        ok(&b, &["create", "-n", &(PER_DEVICE / ROUNDS).to_string()]);
        let (pa, pb) = std::thread::scope(|s| {
            let pa = s.spawn(|| galaxy(&a, &["sync"]));
            let pb = s.spawn(|| galaxy(&b, &["sync"]));
            (pa.join().unwrap(), pb.join().unwrap())
        });
        assert!(pa.status.success() && pb.status.success());
    }
    ok(&a, &["sync"]);
    ok(&b, &["sync"]);
    let total = 3 + 2 * (PER_DEVICE / ROUNDS) * ROUNDS;
    let la = list(&a);
    assert_eq!(la.len(), total);
    assert_eq!(list(&b), la);

    // One counter: versions 1..=total, each once, and the counter at total.
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let versions: Vec<i64> = db
        .query(
            "SELECT version FROM galaxy.sync_galaxies ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=total as i64).collect::<Vec<_>>());
    let counter: i64 = db
        .query_one("SELECT max(counter) FROM galaxy.players", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counter, total as i64);
    drop((s1, s2));
}
