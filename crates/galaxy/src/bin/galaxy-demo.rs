//! Headless demo: creates galaxies through the embedded engine and prints
//! every instance's status changes and history events as they happen.

/// mimalloc: the engine allocates many small, short-lived values across
/// threads, where glibc malloc's arena locks showed up in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use durable::{EventKind, RuntimeStatus};
use galaxy::{LocalConfig, LocalNode, GALAXY_CREATE};

/// Create galaxies and watch their orchestrations live.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where engine.db and galaxies.db live.
    #[arg(long, env = "GALAXY_DATA_DIR", default_value = "data/demo")]
    data_dir: PathBuf,
    /// How many galaxies to create.
    #[arg(long, default_value_t = 5)]
    count: usize,
}

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::TaskScheduled { name, .. } => format!("scheduled {name}"),
        EventKind::TaskCompleted { task_id, .. } => format!("task {task_id} completed"),
        EventKind::TaskFailed { task_id, error } => format!("task {task_id} failed: {error}"),
        EventKind::ExecutionStarted { name, .. } => format!("started {name}"),
        EventKind::ExecutionCompleted { output } => format!("completed with {output}"),
        EventKind::ExecutionFailed { error } => format!("failed: {error}"),
        other => other.type_name().to_string(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node = LocalNode::open(&args.data_dir, LocalConfig::default())
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    println!(
        "Galaxy Forge demo: data in {} (engine.db, galaxies.db)",
        args.data_dir.display()
    );
    let mut updates = node.engine.subscribe();
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..args.count {
        ids.push(
            node.engine
                .start_orchestration(GALAXY_CREATE, None, ())
                .await?,
        );
    }
    let mut open: std::collections::HashSet<_> = ids.iter().cloned().collect();
    while !open.is_empty() {
        let u = tokio::time::timeout(Duration::from_secs(30), updates.recv())
            .await
            .context("no progress for 30 s")??;
        if !open.contains(&u.instance_id) {
            continue;
        }
        let id = u.instance_id.as_str();
        let short = &id[id.len().saturating_sub(8)..];
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let events: Vec<_> = u
            .history
            .iter()
            .filter(|e| !matches!(e.kind, EventKind::OrchestratorStarted))
            .map(|e| describe(&e.kind))
            .collect();
        println!(
            "{ms:8.1} ms  {} …{short}  {:<10} {}",
            u.name,
            u.runtime_status,
            events.join(", ")
        );
        if u.runtime_status.is_terminal() {
            open.remove(&u.instance_id);
            if u.runtime_status != RuntimeStatus::Completed {
                println!("            error: {:?}", u.failure);
            }
        }
    }
    let page = node.table.list(None, 1000, None)?;
    println!("\n{} galaxies in the table:", node.table.count()?);
    for g in page.galaxies.iter().rev().take(args.count.max(5)) {
        println!(
            "  {:<28} ({:>5}, {:>5}, {:>4})  by {}",
            g.name, g.coords.x, g.coords.y, g.coords.z, g.instance_id
        );
    }
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
