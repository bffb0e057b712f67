//! HTTP benchmark of galaxy-cloud: the server runs in this process on
//! `127.0.0.1:0` (SQLite, durable commits, a temp data dir) and many
//! concurrent reqwest clients drive it over loopback. Prints a Markdown
//! table. Run with `make bench` (release build).
//!
//! - Galaxy_Create over HTTP: clients POST the starter as fast as they can;
//!   completion is detected from the server's own SSE stream
//!   (`/runtime/webhooks/durabletask/stream`), read over HTTP like any
//!   client would. If that stream reports a re-sync (the reader fell
//!   behind), completion is counted from `/metrics` instead, and the table
//!   says so.
//! - Status queries: clients GET the status of finished instances.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cloud::{AppState, Keys};
use durable::{Engine, EngineConfig, SqliteConfig, SqliteStore, Store};
use futures::StreamExt;
use galaxy::GalaxyTable;
use tokio::sync::watch;

// The allocator the engine benchmark uses, so the numbers compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "bench-function-key-00001";
const MASTER: &str = "bench-master-key-000001";
const STREAM: &str = "/runtime/webhooks/durabletask/stream";

/// galaxy-cloud HTTP benchmarks.
#[derive(Parser)]
struct Args {
    /// Galaxy_Create instances started over HTTP.
    #[arg(long, default_value_t = 20_000)]
    instances: usize,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Status queries in the status benchmark.
    #[arg(long, default_value_t = 50_000)]
    status_queries: usize,
    /// Keep the engine's lifecycle outbox and relay it to the system topic,
    /// as galaxy-cloud does (`false`: the engine alone, for an A/B).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    lifecycle_outbox: bool,
}

struct Running {
    base: String,
    client: reqwest::Client,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: Engine,
    store: Arc<SqliteStore>,
    table: Arc<GalaxyTable>,
    _dir: tempfile::TempDir,
}

async fn start_server(lifecycle_outbox: bool) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    // The configuration galaxy-cloud runs with.
    let store = Arc::new(SqliteStore::open_with(
        dir.path().join("engine.db"),
        SqliteConfig {
            lifecycle_outbox,
            ..SqliteConfig::default()
        },
    )?);
    let table = Arc::new(GalaxyTable::open(dir.path().join("galaxies.db"), true)?);
    let players = galaxy::players::Players::open(dir.path().join("players.db"))?;
    let events = eventgrid::RouterStore::open(dir.path().join("events.db"))?;
    events
        .put_topic(
            cloud::server::SYSTEM_TOPIC,
            Some(eventgrid::Schema::EventGridSchema),
        )
        .await?;
    let engine = Engine::start(
        store.clone() as Arc<dyn Store>,
        cloud::server::registry(
            table.clone(),
            cloud::server::hooks(&players, &events),
            false,
        ),
        EngineConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(
        engine.clone(),
        table.clone(),
        Keys::new(KEY, MASTER)?,
        players,
        events,
    )
    .with_default_host(addr.to_string());
    state.start_delivery();
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(cloud::serve(listener, state, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    Ok(Running {
        base: format!("http://{addr}"),
        client,
        stop,
        server,
        engine,
        store,
        table,
        _dir: dir,
    })
}

impl Running {
    async fn close(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await??;
        self.engine.shutdown(Duration::from_secs(10)).await;
        self.store.close();
        self.table.close();
        Ok(())
    }

    async fn completed_from_metrics(&self) -> anyhow::Result<usize> {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .header("x-functions-key", KEY)
            .send()
            .await?
            .text()
            .await?;
        let line = text
            .lines()
            .find(|l| l.starts_with("galaxy_instances{status=\"Completed\"}"))
            .context("no Completed gauge in /metrics")?;
        Ok(line.rsplit(' ').next().unwrap_or("0").parse()?)
    }
}

/// How completion was detected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Detection {
    Sse,
    SseThenMetrics,
}

/// Counts `Completed` updates on the SSE stream until `n`; stops early at
/// a re-sync, returning what it counted.
async fn count_completions(
    response: reqwest::Response,
    n: usize,
) -> anyhow::Result<(usize, bool, Instant)> {
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut done = 0;
    let needle = b"\"runtimeStatus\":\"Completed\"";
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .context("no SSE data for 60 s")?
            .context("SSE stream ended")??;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            if event.starts_with(b"event: resync") || event.starts_with(b"event:resync") {
                return Ok((done, true, Instant::now()));
            }
            if event.windows(needle.len()).any(|w| w == needle) {
                done += 1;
                if done == n {
                    return Ok((done, false, Instant::now()));
                }
            }
        }
    }
}

struct CreateResult {
    starts_per_s: f64,
    completed_per_s: f64,
    elapsed: Duration,
    detection: Detection,
    ids: Vec<String>,
}

async fn galaxy_create(r: &Running, n: usize, clients: usize) -> anyhow::Result<CreateResult> {
    let stream = r
        .client
        .get(format!("{}{STREAM}", r.base))
        .header("x-functions-key", KEY)
        .send()
        .await?;
    anyhow::ensure!(
        stream.status() == 200,
        "stream answered {}",
        stream.status()
    );
    let counter = tokio::spawn(count_completions(stream, n));

    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = r.client.clone();
        let url = format!("{}/api/orchestrators/Galaxy_Create", r.base);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let resp = client
                    .post(&url)
                    .header("x-functions-key", KEY)
                    .send()
                    .await?;
                if resp.status() != 202 {
                    bail!("starter answered {}", resp.status());
                }
                let body: serde_json::Value = resp.json().await?;
                ids.push(body["id"].as_str().unwrap_or_default().to_string());
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await??);
    }
    let started = t0.elapsed();
    let (_, resynced, mut finished) = counter.await??;
    let mut detection = Detection::Sse;
    if resynced {
        detection = Detection::SseThenMetrics;
        // Fell behind: count from the store's numbers, via /metrics, until
        // all completed. Checked at a fixed cadence with a deadline.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if r.completed_from_metrics().await? >= n {
                finished = Instant::now();
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "not all completed after 120 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = finished - t0;
    anyhow::ensure!(r.table.count()? == n as u64, "galaxy rows != instances");
    Ok(CreateResult {
        starts_per_s: n as f64 / started.as_secs_f64(),
        completed_per_s: n as f64 / elapsed.as_secs_f64(),
        elapsed,
        detection,
        ids,
    })
}

async fn status_queries(
    r: &Running,
    ids: &[String],
    total: usize,
    clients: usize,
) -> anyhow::Result<f64> {
    let ids = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = r.client.clone();
        let base = r.base.clone();
        let ids = ids.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let id = &ids[i % ids.len()];
                let resp = client
                    .get(format!(
                        "{base}/runtime/webhooks/durabletask/instances/{id}"
                    ))
                    .header("x-functions-key", KEY)
                    .send()
                    .await?;
                if resp.status() != 200 {
                    bail!("status answered {}", resp.status());
                }
                resp.bytes().await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let r = start_server(args.lifecycle_outbox).await?;
    let create = galaxy_create(&r, args.instances, args.clients).await?;
    let status = status_queries(&r, &create.ids, args.status_queries, args.clients).await?;
    r.close().await?;

    let detection = match create.detection {
        Detection::Sse => "completion seen on the SSE stream",
        Detection::SseThenMetrics => "SSE stream fell behind; completion counted from /metrics",
    };
    println!(
        "| galaxy-cloud over HTTP (loopback, SQLite FULL, {} clients, lifecycle outbox {}) | value | notes |",
        args.clients,
        if args.lifecycle_outbox { "on" } else { "off" }
    );
    println!("|---|---:|---|");
    println!(
        "| Galaxy_Create started/s (POST starter, 202) | {:.0} | {} starts |",
        create.starts_per_s, args.instances
    );
    println!(
        "| Galaxy_Create started and completed/s | {:.0} | {} instances in {:.2} s; {detection} |",
        create.completed_per_s,
        args.instances,
        create.elapsed.as_secs_f64()
    );
    println!(
        "| status queries/s (GET instance status, 200) | {:.0} | {} queries |",
        status, args.status_queries
    );
    Ok(())
}
