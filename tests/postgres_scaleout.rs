//! Scale-out on PostgreSQL: three real `galaxy-cloud` processes share one
//! database (a throwaway cluster started by the test) as competing
//! workers. 2,000 `Galaxy_Create` (and a few more if needed) are started
//! over HTTP through all three; one process is killed with SIGKILL while it
//! holds leased work. Every
//! instance completes, with exactly one galaxy row each, and nothing is left
//! queued or leased.
//!
//! The victim's work is taken over by the survivors long before its leases
//! (60 s for turns, 300 s for activities) would expire: the test's deadline
//! is shorter than that, so a takeover that waited for expiry fails it.
//! Waits poll a condition with a deadline; no sleep stands in for one.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use durable::testing::PgCluster;
use durable::{PostgresConfig, PostgresStore, RuntimeStatus, Store};
use futures::StreamExt;
use galaxy::PgGalaxyTable;
use reqwest::StatusCode;
use serde_json::Value;

const FUNCTION_KEY: &str = "scaleout-function-key-01";
const MASTER_KEY: &str = "scaleout-master-key-0001";
const INSTANCES: usize = 2000;
const PROCESSES: usize = 3;
/// Starts in flight at once.
const CONCURRENCY: usize = 32;
/// Longest wait for a server to start or stop.
const STARTUP: Duration = Duration::from_secs(30);
/// Longest wait for all instances to complete after the last start; well
/// under the 60 s orchestration lease, so lease expiry cannot rescue a
/// takeover that does not happen.
const COMPLETION: Duration = Duration::from_secs(45);

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

fn start_server(database_url: &str, name: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{database_url}&application_name={name}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_galaxy-cloud"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--database-url")
        .arg(&url)
        .args(["--function-key", FUNCTION_KEY, "--master-key", MASTER_KEY])
        .env_remove("GALAXY_LISTEN")
        .env_remove("GALAXY_DATA_DIR")
        .env_remove("GALAXY_DATABASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn galaxy-cloud");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + STARTUP;
    let base = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
        if let Some(url) = line.strip_prefix("galaxy-cloud listening on ") {
            break url.trim().to_string();
        }
    };
    Server {
        child,
        base,
        _dir: dir,
    }
}

/// Starts `count` Galaxy_Create round-robin over `servers`; returns the ids.
async fn start_many(client: &reqwest::Client, servers: &[&str], count: usize) -> Vec<String> {
    futures::stream::iter(0..count)
        .map(|i| {
            let url = format!(
                "{}/api/orchestrators/Galaxy_Create",
                servers[i % servers.len()]
            );
            async move {
                let r = client
                    .post(&url)
                    .header("x-functions-key", FUNCTION_KEY)
                    .json(&Value::Null)
                    .send()
                    .await
                    .expect("start request");
                assert_eq!(r.status(), StatusCode::ACCEPTED, "start via {url}");
                let body: Value = r.json().await.unwrap();
                body["id"].as_str().expect("instance id").to_string()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Polls `f` until it yields a value; `None` once `limit` passed.
async fn poll_for<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it yields a value; fails the test once `limit` passed.
async fn poll<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_for(limit, f)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

async fn count(store: &PostgresStore, status: RuntimeStatus) -> u64 {
    store
        .count_by_status()
        .await
        .unwrap()
        .into_iter()
        .filter(|(s, _)| *s == status)
        .map(|(_, n)| n)
        .sum()
}

/// Sends `child` the signal `name` (TERM, STOP, CONT).
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Stops a server with SIGTERM and waits for a clean exit.
fn terminate(mut server: Server) {
    signal(&server.child, "TERM");
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            assert!(exit.success(), "galaxy-cloud exited with {exit}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "galaxy-cloud did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn sql(
    client: &tokio_postgres::Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client.query_one(query, params).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_on_one_database_survive_a_sigkill() {
    let database_url = PgCluster::shared().create_database().await.unwrap();
    let mut servers: Vec<Option<Server>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PROCESSES)
            .map(|i| {
                let url = &database_url;
                s.spawn(move || start_server(url, &format!("scaleout-{i}")))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| Some(h.join().unwrap()))
            .collect()
    });
    let bases: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().base.clone())
        .collect();
    let (db, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let store = PostgresStore::connect(PostgresConfig::new(&database_url))
        .await
        .unwrap();
    let client = reqwest::Client::new();

    // First half through all three.
    let all: Vec<&str> = bases.iter().map(String::as_str).collect();
    let mut ids = start_many(&client, &all, INSTANCES / 2).await;

    // Kill the third process at a moment it holds leased work. Polling for
    // that while it runs can miss it (a fast process holds a lease for
    // milliseconds): it is frozen instead (SIGSTOP) and, once none of its
    // database sessions is running a statement, its leases cannot change;
    // killed if it holds any, else let go, given more work, and frozen again.
    let victim = PROCESSES - 1;
    let victim_name = format!("scaleout-{victim}");
    let victim_worker: i64 = sql(
        &db,
        "SELECT w.id FROM durable.workers w JOIN pg_stat_activity a \
         ON a.pid = w.pid AND a.backend_start = w.backend_start WHERE a.application_name = $1",
        &[&victim_name],
    )
    .await;
    let leases = "SELECT (SELECT count(*) FROM durable.instances WHERE lock_owner = $1) \
                  + (SELECT count(*) FROM durable.activities WHERE lock_owner = $1)";
    let running = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                   AND state = 'active'";
    let mut killed = servers[victim].take().unwrap();
    let deadline = Instant::now() + COMPLETION;
    let held = loop {
        assert!(
            Instant::now() < deadline,
            "the victim was never frozen quiet holding leased work"
        );
        signal(&killed.child, "STOP");
        // One of its statements may wait for a lock that its own frozen
        // transaction holds (it stopped between a turn's statements and
        // its COMMIT) and so never end: then let it go and try again.
        let quiet = poll_for(Duration::from_secs(2), || async {
            (sql(&db, running, &[&victim_name]).await == 0).then_some(())
        });
        if quiet.await.is_none() {
            signal(&killed.child, "CONT");
            continue;
        }
        let held = sql(&db, leases, &[&victim_worker]).await;
        if held > 0 {
            break held;
        }
        signal(&killed.child, "CONT");
        ids.extend(start_many(&client, &[killed.base.as_str()], 50).await);
    };
    killed.child.kill().unwrap(); // SIGKILL on Unix, stopped or not
    killed.child.wait().unwrap();
    let unfinished_at_kill =
        count(&store, RuntimeStatus::Pending).await + count(&store, RuntimeStatus::Running).await;
    assert!(unfinished_at_kill > 0, "nothing was in flight at the kill");
    let killed_at = Instant::now();

    // Second half through the survivors.
    let survivors: Vec<&str> = bases[..victim].iter().map(String::as_str).collect();
    ids.extend(start_many(&client, &survivors, INSTANCES - INSTANCES / 2).await);
    // INSTANCES, plus what the victim was given while it held no lease.
    let total = ids.len();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), total, "an instance id was handed out twice");

    let completed = poll("every instance to complete", COMPLETION, || async {
        let done = count(&store, RuntimeStatus::Completed).await;
        (done == total as u64).then_some(done)
    })
    .await;
    assert_eq!(completed, total as u64);
    let took = killed_at.elapsed();

    // Every started instance, and nothing else, completed with the output.
    let listed = common::all_instances(&store).await;
    assert_eq!(listed.len(), total);
    for s in &listed {
        assert!(
            unique.contains(&s.instance_id.to_string()),
            "unknown instance {}",
            s.instance_id
        );
        assert_eq!(
            s.runtime_status,
            RuntimeStatus::Completed,
            "{}",
            s.instance_id
        );
        assert_eq!(
            s.output,
            Some(Value::from("Galaxy created!")),
            "{}",
            s.instance_id
        );
    }

    // Exactly one galaxy row per instance.
    let table = PgGalaxyTable::connect(&database_url, "galaxy", 2)
        .await
        .unwrap();
    assert_eq!(
        table.duplicate_instances().await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(table.count().await.unwrap(), total as u64);
    let mut rows = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let page = table.list(None, 1000, token.as_deref()).await.unwrap();
        rows.extend(page.galaxies.into_iter().map(|g| g.instance_id));
        token = page.continuation;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(rows.len(), total);
    assert!(
        ids.iter().all(|id| rows.contains(id)),
        "an instance has no galaxy row"
    );

    // None stuck: no message, activity or lease is left, the victim's
    // leases were taken over and its registration dropped.
    assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
    assert_eq!(
        sql(
            &db,
            "SELECT count(*) FROM durable.instances WHERE lock_token IS NOT NULL",
            &[]
        )
        .await,
        0
    );
    assert_eq!(sql(&db, leases, &[&victim_worker]).await, 0);
    assert_eq!(
        sql(
            &db,
            "SELECT count(*) FROM durable.workers WHERE id = $1",
            &[&victim_worker]
        )
        .await,
        0,
        "the dead worker is still registered"
    );

    // Any process answers for any instance: one started on the victim is
    // read through a survivor, and its galaxy is listed there.
    let first_on_victim = &ids[victim];
    let r = client
        .get(format!(
            "{}/runtime/webhooks/durabletask/instances/{first_on_victim}",
            bases[0]
        ))
        .header("x-functions-key", FUNCTION_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["runtimeStatus"], "Completed");
    let r = client
        .get(format!("{}/api/galaxies?top=1000", bases[1]))
        .header("x-functions-key", FUNCTION_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    eprintln!(
        "scale-out: {total} instances; victim held {held} leases at the kill, \
         {unfinished_at_kill} instances unfinished; all complete {took:.1?} after the kill"
    );
    store.close().await;
    table.close();
    // The survivors shut down cleanly on SIGTERM.
    for server in servers.iter_mut().filter_map(Option::take) {
        terminate(server);
    }
}

/// Live updates cross processes: a stream opened on one process carries
/// the instances another process creates and runs, through Completed, and
/// a starter in wait mode on that other process answers 200 with the
/// output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_process_carries_what_another_commits() {
    let database_url = PgCluster::shared().create_database().await.unwrap();
    let a = start_server(&database_url, "live-a");
    let b = start_server(&database_url, "live-b");
    let client = reqwest::Client::new();
    let stream = client
        .get(format!("{}/runtime/webhooks/durabletask/stream", b.base))
        .header("x-functions-key", FUNCTION_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut events = common::sse::Sse::new(stream);
    let id = "live-across-processes";
    let started = client
        .post(format!(
            "{}/api/orchestrators/Galaxy_Create/{id}?timeout=30",
            a.base
        ))
        .header("x-functions-key", FUNCTION_KEY)
        .json(&Value::Null)
        .send()
        .await
        .unwrap();
    assert_eq!(
        started.status(),
        StatusCode::OK,
        "a's starter waited for completion"
    );
    let output: Value = started.json().await.unwrap();
    assert_eq!(output, "Galaxy created!");
    let mut statuses = Vec::new();
    loop {
        let (event, data) = events.next_for(id).await;
        assert_eq!(event, "update");
        let status = data["runtimeStatus"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "Completed" {
            break;
        }
    }
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("Pending"),
        "{statuses:?}"
    );
}
