//! Engine benchmarks on the SQLite store with durable commits
//! (`synchronous=FULL`). Prints a Markdown table; results go to
//! BENCHMARKS.md. Run with `make bench` (release build).

/// mimalloc: the engine allocates many small, short-lived values across
/// threads, where glibc malloc's arena locks showed up in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use durable::{
    Engine, EngineConfig, InstanceId, OrchestrationContext, Registry, RuntimeStatus, SqliteStore,
    Store, TaskError,
};
use galaxy::{GalaxyTable, GALAXY_CREATE};

/// Engine benchmarks.
#[derive(Parser)]
struct Args {
    /// Instance counts for the Galaxy_Create throughput runs.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    throughput: Vec<usize>,
    /// Instances for the steady-rate latency run (at 100/s).
    #[arg(long, default_value_t = 1_000)]
    latency_instances: usize,
    /// Chain lengths.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1_000, 10_000])]
    chain: Vec<usize>,
    /// Activities in the fan-out run.
    #[arg(long, default_value_t = 10_000)]
    fan_out: usize,
    /// Instances of an untimed warm-up run before the throughput runs (its
    /// rate is printed, not held to the target): this VM runs the first
    /// second or two of load after an idle spell 20-30% slower.
    #[arg(long, default_value_t = 10_000)]
    warmup: usize,
    /// Concurrent clients starting instances in the throughput runs.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Instances whose replay state the engine keeps in memory.
    #[arg(long, default_value_t = EngineConfig::default().cache_capacity)]
    cache: usize,
}

struct Bench {
    engine: Engine,
    store: Arc<SqliteStore>,
    table: Arc<GalaxyTable>,
    _dir: tempfile::TempDir,
}

async fn chain(ctx: OrchestrationContext, n: u64) -> Result<u64, TaskError> {
    let mut v = 0u64;
    for _ in 0..n {
        v = ctx.call_activity("Step", v).await?;
    }
    Ok(v)
}

async fn fan_out(ctx: OrchestrationContext, n: u64) -> Result<u64, TaskError> {
    let tasks: Vec<_> = (0..n)
        .map(|i| ctx.call_activity::<u64>("Step", i))
        .collect();
    let mut sum = 0;
    for r in futures::future::join_all(tasks).await {
        sum += r?;
    }
    Ok(sum)
}

fn open(cache: usize) -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path().join("engine.db"))?);
    let table = Arc::new(GalaxyTable::open(dir.path().join("galaxies.db"), true)?);
    let registry = galaxy::register(Registry::new(), table.clone())
        .orchestration("Chain", chain)
        .orchestration("FanOut", fan_out)
        .activity("Step", |_, v: u64| async move { Ok::<_, String>(v + 1) });
    // The default update capacity (16,384) holds the latency run's updates
    // (about 8 per instance, read as they come); a million-slot channel
    // cost half a second of CPU to build and free around every run.
    let config = EngineConfig {
        cache_capacity: cache,
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.clone() as Arc<dyn Store>, registry, config);
    Ok(Bench {
        engine,
        store,
        table,
        _dir: dir,
    })
}

impl Bench {
    async fn close(self) {
        self.engine.shutdown(Duration::from_secs(5)).await;
        self.store.close();
        self.table.close();
    }

    async fn completed(&self) -> anyhow::Result<u64> {
        Ok(self
            .store
            .count_by_status()
            .await?
            .into_iter()
            .filter(|(s, _)| *s == RuntimeStatus::Completed)
            .map(|(_, n)| n)
            .sum())
    }
}

/// Starts `n` Galaxy_Create as fast as `clients` concurrent clients can and
/// waits for all to complete. Returns (elapsed, starts/s over the start
/// phase).
async fn throughput(n: usize, clients: usize, cache: usize) -> anyhow::Result<(Duration, f64)> {
    let b = open(cache)?;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let engine = b.engine.clone();
        handles.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                engine
                    .start_orchestration(GALAXY_CREATE, None, ())
                    .await
                    .expect("start");
                i += clients;
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let started = t0.elapsed();
    // Completions are counted from the store (an index count every 25 ms)
    // rather than from the update stream, whose per-update clones would
    // make the observer compete with the engine for the same two cores.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = b.store.count_by_status().await?;
        let done: u64 = counts
            .iter()
            .filter(|(s, _)| s.is_terminal())
            .map(|(_, n)| n)
            .sum();
        if done >= n as u64 {
            let completed = b.completed().await?;
            anyhow::ensure!(
                completed == n as u64,
                "{} of {n} did not complete: {counts:?}",
                n as u64 - completed
            );
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "stalled at {done}/{n}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let elapsed = t0.elapsed();
    anyhow::ensure!(b.table.count()? == n as u64, "galaxy rows != instances");
    b.close().await;
    Ok((elapsed, n as f64 / started.as_secs_f64()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latency start -> Completed at a steady 100 starts per second.
async fn latency(n: usize, cache: usize) -> anyhow::Result<(Duration, Duration)> {
    let b = open(cache)?;
    let mut updates = b.engine.subscribe();
    let starts: Arc<std::sync::Mutex<HashMap<InstanceId, Instant>>> = Default::default();
    let engine = b.engine.clone();
    let s2 = starts.clone();
    let starter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for _ in 0..n {
            tick.tick().await;
            let id = InstanceId::generate();
            s2.lock().unwrap().insert(id.clone(), Instant::now());
            engine
                .start_orchestration(GALAXY_CREATE, Some(id), ())
                .await
                .expect("start");
        }
    });
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let u = tokio::time::timeout(Duration::from_secs(60), updates.recv())
            .await
            .context("stalled")??;
        if u.runtime_status == RuntimeStatus::Completed {
            let at = Instant::now();
            if let Some(t) = starts.lock().unwrap().remove(&u.instance_id) {
                lat.push(at - t);
            }
        }
    }
    starter.await?;
    lat.sort();
    b.close().await;
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

async fn one(name: &str, n: usize, cache: usize) -> anyhow::Result<Duration> {
    let b = open(cache)?;
    let t0 = Instant::now();
    let id = b.engine.start_orchestration(name, None, n as u64).await?;
    let s = b
        .engine
        .wait_for_completion(&id, Duration::from_secs(600))
        .await?;
    let elapsed = t0.elapsed();
    anyhow::ensure!(
        s.runtime_status == RuntimeStatus::Completed,
        "{name} ended {:?}",
        s.failure
    );
    b.close().await;
    Ok(elapsed)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cores} cores, {cpu}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("machine: {}", machine());
    println!("store: SQLite, WAL, synchronous=FULL (durable commits), release build\n");
    println!("| benchmark | result | target |");
    println!("|---|---|---|");
    if args.warmup > 0 {
        let (elapsed, start_rate) = throughput(args.warmup, args.clients, args.cache).await?;
        println!(
            "| warm-up (not held to the target): Galaxy_Create, {} started at once | {:.0} completed/s ({:.2} s; starts {:.0}/s) | |",
            args.warmup,
            args.warmup as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            start_rate
        );
    }
    for n in &args.throughput {
        let (elapsed, start_rate) = throughput(*n, args.clients, args.cache).await?;
        println!(
            "| Galaxy_Create, {n} started at once | {:.0} completed/s ({:.2} s; starts {:.0}/s) | >= 10,000/s |",
            *n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            start_rate
        );
    }
    let (p50, p99) = latency(args.latency_instances, args.cache).await?;
    println!(
        "| Galaxy_Create latency start -> Completed at 100/s ({} instances) | p50 {:.2} ms, p99 {:.2} ms | p50 < 2 ms |",
        args.latency_instances,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let mut per_step = Vec::new();
    for n in &args.chain {
        let t = one("Chain", *n, args.cache).await?;
        let step = t.as_secs_f64() * 1e6 / *n as f64;
        per_step.push(step);
        println!(
            "| sequential chain of {n} activities | {step:.1} µs/step ({:.2} s) | |",
            t.as_secs_f64()
        );
    }
    if per_step.len() > 1 {
        println!(
            "| per-step ratio, longest / shortest chain | {:.2}x | <= 1.5x |",
            per_step[per_step.len() - 1] / per_step[0]
        );
    }
    let t = one("FanOut", args.fan_out, args.cache).await?;
    println!(
        "| fan-out of {} activities in one instance | {:.2} s total | |",
        args.fan_out,
        t.as_secs_f64()
    );
    Ok(())
}
