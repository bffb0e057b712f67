//! Sync on PostgreSQL: two real `galaxy-cloud` processes share one
//! database (a throwaway cluster), and each of a player's two devices (the
//! `galaxy` CLI) talks to a different one. Both push at the same time,
//! round after round; they converge, and the player's versions are exactly
//! 1..N, each once (the per-player counter is right under concurrent
//! pushes from two processes). A push through one process pokes a device
//! listening on the other.

use std::path::PathBuf;
use std::process::Child;

use durable::testing::PgCluster;

mod common;
use common::{galaxy, list, ok, Watcher};

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
    let watcher = Watcher::start(&b);
    watcher.wait_for("UpToDate");
    ok(&a, &["create", "-n", "3"]);
    ok(&a, &["sync"]);
    // Pushed through process 1, poked through process 2.
    watcher.wait_for("pulled 3");
    watcher.stop();

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
