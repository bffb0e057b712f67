//! Crash-test child: starts `Galaxy_Create` instances with predictable ids
//! and runs the engine, printing one line per start and per completion so a
//! parent can kill it at a random point. With `--until-idle` it exits once
//! no instance is left unfinished.

/// mimalloc: the engine allocates many small, short-lived values across
/// threads, where glibc malloc's arena locks showed up in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use durable::{Error, InstanceId};
use galaxy::{LocalConfig, LocalNode, GALAXY_CREATE};
use tokio::sync::Semaphore;

/// Start Galaxy_Create load and run until killed (or idle).
#[derive(Parser)]
struct Args {
    /// Data directory (engine.db, galaxies.db).
    #[arg(long)]
    data_dir: PathBuf,
    /// Instances to start, with ids `<tag>-<n>`.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Prefix of the started ids.
    #[arg(long, default_value = "load")]
    tag: String,
    /// Exit 0 once every instance is finished.
    #[arg(long)]
    until_idle: bool,
}

async fn unfinished(node: &LocalNode) -> anyhow::Result<u64> {
    let counts = node.engine.store().count_by_status().await?;
    Ok(counts
        .iter()
        .filter(|(s, _)| !s.is_terminal())
        .map(|(_, n)| n)
        .sum())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node = Arc::new(LocalNode::open(&args.data_dir, LocalConfig::default()).context("open")?);
    let mut updates = node.engine.subscribe();
    println!("ready");
    let slots = Arc::new(Semaphore::new(32));
    let mut starts = Vec::new();
    for i in 0..args.start {
        let permit = slots.clone().acquire_owned().await?;
        let node = node.clone();
        let id = InstanceId::new(format!("{}-{i}", args.tag))?;
        starts.push(tokio::spawn(async move {
            let r = node
                .engine
                .start_orchestration(GALAXY_CREATE, Some(id.clone()), ())
                .await;
            drop(permit);
            match r {
                Ok(_) => println!("started {id}"),
                Err(Error::Conflict(_)) => {}
                Err(e) => eprintln!("start {id} failed: {e}"),
            }
        }));
    }
    for s in starts {
        s.await?;
    }
    loop {
        if unfinished(&node).await? == 0 {
            println!("idle");
            if args.until_idle {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(1), updates.recv()).await {
            Ok(Ok(u)) if u.runtime_status.is_terminal() => {
                println!("finished {} {}", u.instance_id, u.runtime_status)
            }
            _ => {}
        }
    }
    let node = Arc::try_unwrap(node).map_err(|_| anyhow::anyhow!("node still shared"))?;
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
