//! Galaxy_Create/s on PostgreSQL with one and with several galaxy-cloud
//! processes sharing one database. Prints a Markdown table.
//!
//! Starts a throwaway cluster with PostgreSQL's durable defaults (fsync on)
//! on 127.0.0.1, then for each process count: a fresh database, that many
//! real `galaxy-cloud` processes (the binary next to this one, so build both
//! in the same profile), `--instances` Galaxy_Create started over HTTP
//! round-robin through them by `--clients` concurrent clients, and the time
//! until every instance is Completed (counted in the database). Run with
//! `make bench` (release build).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use durable::testing::{ClusterOptions, PgCluster};
use futures::StreamExt;

#[path = "support/cloud_process.rs"]
mod cloud_process;

const KEY: &str = "pg-bench-function-key-01";
const MASTER: &str = "pg-bench-master-key-0001";

/// Galaxy_Create/s on PostgreSQL, one and several processes.
#[derive(Parser)]
struct Args {
    /// Galaxy_Create instances per run.
    #[arg(long, default_value_t = 5_000)]
    instances: usize,
    /// Process counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    processes: Vec<usize>,
    /// Concurrent HTTP clients starting instances.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Run the cluster without fsync: an upper bound that shows how much of
    /// the time is the disk's; not what a deployment should do.
    #[arg(long)]
    no_fsync: bool,
    /// Use this server instead of a throwaway cluster: a URL of its
    /// maintenance database (each run creates a fresh database there).
    #[arg(long)]
    server_url: Option<String>,
    /// The galaxy-cloud binary (default: next to this one).
    #[arg(long)]
    galaxy_cloud: Option<PathBuf>,
}

/// A galaxy-cloud process; killed if still running when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &PathBuf, url: &str, dir: &std::path::Path) -> anyhow::Result<Server> {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--database-url", url])
        .arg("--data-dir")
        .arg(dir)
        .args(["--function-key", KEY, "--master-key", MASTER])
        .env_remove("GALAXY_LISTEN")
        .env_remove("GALAXY_DATA_DIR")
        .env_remove("GALAXY_DATABASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut server = Server {
        child,
        base: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("galaxy-cloud did not start")?;
        if let Some(base) = line.strip_prefix("galaxy-cloud listening on ") {
            server.base = base.trim().to_string();
            return Ok(server);
        }
    }
}

fn terminate(mut server: Server) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?
        .success();
    ensure!(ok, "kill -TERM failed");
    let exit = server.child.wait()?;
    ensure!(exit.success(), "galaxy-cloud exited with {exit}");
    Ok(())
}

struct Run {
    processes: usize,
    instances: usize,
    started_in: Duration,
    completed_in: Duration,
    /// CPU the PostgreSQL server used during the run (ms; `None` on a
    /// server of one's own, which this process cannot see).
    server_cpu_ms: Option<f64>,
    /// CPU the galaxy-cloud processes used (ms).
    cloud_cpu_ms: f64,
}

/// `(ppid, CPU ms of the process itself, CPU ms of its reaped children)`
/// from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32, tick_ms: f64) -> Option<(u32, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Some((
        n(1) as u32,
        (n(11) + n(12)) * tick_ms,
        (n(13) + n(14)) * tick_ms,
    ))
}

/// CPU ms used so far by a process tree: the root, its reaped children
/// (exited backends), and its live children.
fn tree_cpu_ms(root: u32, tick_ms: f64) -> f64 {
    let Some((_, own, reaped)) = proc_cpu(root, tick_ms) else {
        return 0.0;
    };
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((ppid, own, reaped)) = proc_cpu(pid, tick_ms) {
            if ppid == root {
                total += own + reaped;
            }
        }
    }
    total
}

/// Milliseconds per clock tick of `/proc` CPU times.
fn tick_ms() -> f64 {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    1000.0 / hz
}

async fn completed(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM durable.instances WHERE runtime_status = 'Completed'",
            &[],
        )
        .await?
        .get(0))
}

/// Creates a fresh database on the server of `admin_url`; returns its URL.
async fn create_database(admin_url: &str, n: usize) -> anyhow::Result<String> {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let name = format!("galaxy_pg_bench_{}_{n}", std::process::id());
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    let mut config: tokio_postgres::Config = admin_url.parse()?;
    config.dbname(&name);
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => bail!("--server-url must name a TCP host"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    Ok(format!("postgres://{user}@{host}:{port}/{name}"))
}

async fn run(
    args: &Args,
    bin: &PathBuf,
    admin_url: &str,
    processes: usize,
    postmaster: Option<u32>,
) -> anyhow::Result<Run> {
    let tick = tick_ms();
    let url = create_database(admin_url, processes).await?;
    let dirs: Vec<tempfile::TempDir> = (0..processes)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let servers: Vec<Server> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|d| s.spawn(|| start_server(bin, &url, d.path())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start thread"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let client = reqwest::Client::new();
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();

    let cloud_cpu = |servers: &[Server]| -> f64 {
        servers
            .iter()
            .filter_map(|s| proc_cpu(s.child.id(), tick))
            .map(|(_, own, _)| own)
            .sum()
    };
    let server_before = postmaster.map(|p| tree_cpu_ms(p, tick));
    let cloud_before = cloud_cpu(&servers);
    let t0 = Instant::now();
    let statuses: Vec<reqwest::StatusCode> = futures::stream::iter(0..args.instances)
        .map(|i| {
            let url = format!("{}/api/orchestrators/Galaxy_Create", bases[i % bases.len()]);
            let client = &client;
            async move {
                client
                    .post(url)
                    .header("x-functions-key", KEY)
                    .json(&serde_json::Value::Null)
                    .send()
                    .await
                    .map(|r| r.status())
            }
        })
        .buffer_unordered(args.clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let started_in = t0.elapsed();
    ensure!(
        statuses.iter().all(|s| *s == reqwest::StatusCode::ACCEPTED),
        "a start was refused"
    );
    // Completion is counted in the database; a query every 20 ms costs the
    // servers nothing they would notice.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if completed(&db).await? == args.instances as i64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("instances did not complete within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed_in = t0.elapsed();
    let server_cpu_ms = postmaster
        .zip(server_before)
        .map(|(p, before)| tree_cpu_ms(p, tick) - before);
    let cloud_cpu_ms = cloud_cpu(&servers) - cloud_before;
    for s in servers {
        terminate(s)?;
    }
    Ok(Run {
        processes,
        instances: args.instances,
        started_in,
        completed_in,
        server_cpu_ms,
        cloud_cpu_ms,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = cloud_process::galaxy_cloud_binary(args.galaxy_cloud.as_deref())?;
    let cluster = match &args.server_url {
        Some(_) => None,
        None => Some(PgCluster::start(if args.no_fsync {
            ClusterOptions::fast()
        } else {
            ClusterOptions::durable()
        })?),
    };
    let admin_url = match (&args.server_url, &cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => c.url("postgres"),
        (None, None) => unreachable!("a cluster is started without --server-url"),
    };
    // The postmaster: the server's CPU is its tree's.
    let postmaster = cluster.as_ref().and_then(|c| {
        std::fs::read_to_string(c.dir().join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    let mut runs = Vec::new();
    for &p in &args.processes {
        runs.push(run(&args, &bin, &admin_url, p, postmaster).await?);
    }
    if let Some(c) = cluster {
        c.stop();
    }
    println!("## Galaxy_Create on PostgreSQL\n");
    println!(
        "{} Galaxy_Create per run, started over HTTP by {} clients round-robin through the \
         processes; one throwaway PostgreSQL {} cluster ({}) on the same machine \
         ({} cores).\n",
        args.instances,
        args.clients,
        server_version(),
        if args.no_fsync {
            "fsync off: an upper bound, not durable"
        } else {
            "fsync on"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| galaxy-cloud processes | started/s | Galaxy_Create completed/s | all done in \
         | PostgreSQL CPU per Galaxy_Create | galaxy-cloud CPU per Galaxy_Create |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        let per = |ms: f64| format!("{:.2} ms", ms / r.instances as f64);
        println!(
            "| {} | {:.0} | {:.0} | {:.1} s | {} | {} |",
            r.processes,
            r.instances as f64 / r.started_in.as_secs_f64(),
            r.instances as f64 / r.completed_in.as_secs_f64(),
            r.completed_in.as_secs_f64(),
            r.server_cpu_ms.map_or("n/a (own server)".to_string(), per),
            per(r.cloud_cpu_ms)
        );
    }
    Ok(())
}

/// The major version of the server binaries used.
fn server_version() -> String {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .max()
        })
        .unwrap_or_else(|| "?".into())
}
