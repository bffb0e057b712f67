//! Crash test: a child process runs Galaxy_Create load and is killed with
//! SIGKILL at random points, again and again. After a final run to idle,
//! every started instance has completed and `galaxies` holds exactly one row
//! per instance.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use durable::{RuntimeStatus, SqliteStore};
use galaxy::GalaxyTable;
use rand::Rng;

const ROUNDS: usize = 8;
const PER_ROUND: usize = 150;
/// A round with no output for this long is a hang, not a slow machine.
const STALL: Duration = Duration::from_secs(60);

fn spawn(dir: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_galaxy-load"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn galaxy-load");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut kills_mid_run = 0;
    for round in 0..ROUNDS {
        let tag = format!("r{round}");
        let (mut child, lines) = spawn(
            dir.path(),
            &["--start", &PER_ROUND.to_string(), "--tag", &tag],
        );
        // Kill after a random number of progress lines: during starts,
        // between activities, or while committing.
        let kill_after = rng.gen_range(1..=2 * PER_ROUND);
        let mut seen = 0;
        loop {
            let line = lines
                .recv_timeout(STALL)
                .unwrap_or_else(|e| panic!("round {round}: no progress ({e})"));
            seen += 1;
            if line == "idle" {
                break;
            }
            if seen >= kill_after {
                kills_mid_run += 1;
                break;
            }
        }
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
    }
    assert!(
        kills_mid_run > 0,
        "every round ran to idle: the test killed nothing mid-run"
    );

    let (mut child, lines) = spawn(dir.path(), &["--until-idle"]);
    loop {
        match lines.recv_timeout(STALL) {
            Ok(line) if line == "idle" => break,
            Ok(_) => {}
            Err(e) => panic!("final run made no progress: {e}"),
        }
    }
    assert!(child.wait().unwrap().success(), "final run failed");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(dir.path().join("engine.db")).unwrap();
        let all = common::all_instances(&store).await;
        assert!(!all.is_empty(), "no instance was ever started");
        let not_done: Vec<_> = all
            .iter()
            .filter(|s| s.runtime_status != RuntimeStatus::Completed)
            .map(|s| {
                (
                    s.instance_id.to_string(),
                    s.runtime_status,
                    s.failure.clone(),
                )
            })
            .collect();
        assert!(not_done.is_empty(), "unfinished or failed: {not_done:?}");
        let table = GalaxyTable::open(dir.path().join("galaxies.db"), true).unwrap();
        assert_eq!(table.duplicate_instances().unwrap(), Vec::<String>::new());
        assert_eq!(
            table.count().unwrap(),
            all.len() as u64,
            "one galaxy row per instance"
        );
        let ids: std::collections::HashSet<_> =
            all.iter().map(|s| s.instance_id.to_string()).collect();
        let page = table.list(None, 1000, None).unwrap();
        for g in table_all(&table, page) {
            assert!(
                ids.contains(&g.instance_id),
                "row from unknown instance {}",
                g.instance_id
            );
        }
    });
}

fn table_all(table: &GalaxyTable, first: galaxy::GalaxyPage) -> Vec<galaxy::Galaxy> {
    let mut out = first.galaxies;
    let mut next = first.continuation;
    while let Some(token) = next {
        let page = table.list(None, 1000, Some(&token)).unwrap();
        out.extend(page.galaxies);
        next = page.continuation;
    }
    out
}
