//! Sync benchmark: the real `galaxy-cloud` binary (SQLite, durable commits,
//! a temp data dir) and two devices ([`galaxy::PlayerDevice`], the library
//! the app and the CLI use) in this process, talking HTTP over loopback.
//! Prints Markdown tables. Run with `make bench` (release build).
//!
//! - Bulk: N galaxies created offline on device A through its embedded
//!   engine (not timed), then the time until device B has them all: A's
//!   push rounds, then B's pull rounds.
//! - Live: both devices run their sync loops; a galaxy written on A (its
//!   row committed) until B's store has it (B's replica announces it):
//!   A's loop pushes on the local write, the cloud pokes B, B pulls.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::Utc;
use clap::Parser;
use galaxy::{Coords, Galaxy, GalaxyEvent, PlayerDevice};
use sync::SyncerConfig;

#[path = "support/cloud_process.rs"]
mod cloud_process;
use cloud_process::{galaxy_cloud_binary, start_cloud};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sync benchmarks.
#[derive(Parser)]
struct Args {
    /// Galaxies created offline on device A for the bulk run.
    #[arg(long, default_value_t = 100_000)]
    galaxies: usize,
    /// Galaxies written one at a time for the live latency run.
    #[arg(long, default_value_t = 300)]
    live: usize,
    /// Bulk runs (this machine drifts; the table shows each).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The galaxy-cloud binary (default: beside this one).
    #[arg(long)]
    galaxy_cloud: Option<PathBuf>,
}

fn open(dir: &std::path::Path) -> anyhow::Result<PlayerDevice> {
    let (device, _) = PlayerDevice::open(dir, None, SyncerConfig::default())?;
    Ok(device)
}

struct Bulk {
    push: Duration,
    pull: Duration,
}

async fn bulk(bin: &std::path::Path, n: usize) -> anyhow::Result<Bulk> {
    let cloud = start_cloud(bin, &[])?;
    let dir = tempfile::tempdir()?;
    let a = open(&dir.path().join("a"))?;
    let b = open(&dir.path().join("b"))?;
    a.register(&cloud.base, "bench-a").await?;
    let code = a.link_code().await?;
    b.join(&cloud.base, &code.code, "bench-b").await?;
    a.create(n).await?;
    ensure!(
        a.replica().table().pending_changes() == n as u64,
        "outbox holds every galaxy"
    );
    let t0 = Instant::now();
    let pushed = a.sync_once().await?;
    let push = t0.elapsed();
    let t1 = Instant::now();
    let pulled = b.sync_once().await?;
    let pull = t1.elapsed();
    ensure!(pushed.pushed == n as u64, "pushed {} of {n}", pushed.pushed);
    ensure!(pulled.pulled == n as u64, "pulled {} of {n}", pulled.pulled);
    ensure!(b.node().table.count()? == n as u64, "B holds every galaxy");
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    Ok(Bulk { push, pull })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn live(bin: &std::path::Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let cloud = start_cloud(bin, &[])?;
    let dir = tempfile::tempdir()?;
    let a = open(&dir.path().join("a"))?;
    let b = open(&dir.path().join("b"))?;
    a.register(&cloud.base, "bench-a").await?;
    let code = a.link_code().await?;
    b.join(&cloud.base, &code.code, "bench-b").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let runs = [
        tokio::spawn(a.syncer().clone().run(stop(stop_rx.clone()))),
        tokio::spawn(b.syncer().clone().run(stop(stop_rx))),
    ];
    // Both loops up to date (their live streams open) before measuring.
    for d in [&a, &b] {
        let mut s = d.syncer().subscribe();
        tokio::time::timeout(
            Duration::from_secs(30),
            s.wait_for(|s| s.phase == sync::Phase::UpToDate),
        )
        .await
        .context("a device never got up to date")??;
    }
    let mut events = b.replica().subscribe();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        let g = Galaxy {
            partition_key: "galaxies".into(),
            row_key: id.clone(),
            timestamp: Utc::now(),
            name: format!("Live {i}"),
            coords: Coords { x: 1, y: 2, z: 3 },
            instance_id: format!("live-{i}"),
            version: 0,
            origin: String::new(),
        };
        let t0 = Instant::now();
        a.replica().table().insert(g).await?;
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .context("B never received a live galaxy")??;
            if matches!(&e, GalaxyEvent::Upserted(g) if g.row_key == id) {
                samples.push(t0.elapsed());
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    for r in runs {
        r.await?;
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    samples.sort();
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = galaxy_cloud_binary(args.galaxy_cloud.as_deref())?;
    println!("## Sync: bulk (device A to device B through galaxy-cloud)\n");
    println!(
        "{} galaxies created offline on A; then A pushes (batches of 500) and B pulls (pages \
         of 500), over HTTP on loopback to galaxy-cloud on SQLite with durable commits ({} cores). \
         Target: B has them all within 5 s.\n",
        args.galaxies,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| run | push | pull | A to B total | mutations/s |");
    println!("|---:|---:|---:|---:|---:|");
    for run in 1..=args.runs {
        let r = bulk(&bin, args.galaxies).await?;
        let total = r.push + r.pull;
        println!(
            "| {run} | {:.2} s | {:.2} s | {:.2} s | {:.0} |",
            r.push.as_secs_f64(),
            r.pull.as_secs_f64(),
            total.as_secs_f64(),
            args.galaxies as f64 / total.as_secs_f64()
        );
    }
    let samples = live(&bin, args.live).await?;
    println!("\n## Sync: live (a galaxy written on A until it is in B's store)\n");
    println!(
        "{} galaxies, one at a time, both devices running their sync loops (push on local \
         write, poke over SSE, pull). Target: p50 under 50 ms, p99 under 200 ms.\n",
        args.live
    );
    println!("| p50 | p90 | p99 | max |");
    println!("|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().context("no samples")?)
    );
    Ok(())
}
