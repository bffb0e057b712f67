//! `galaxy`: a player's device on the command line. The same crates as the
//! desktop app (a tracked local node, its settings, the sync loop), with
//! its own data directory; scripts and the headless tests drive devices
//! with it.
//!
//! Each subcommand parses, calls [`galaxy::PlayerDevice`] and prints.
//! Errors go to stderr as one readable line and exit 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use galaxy::{DeviceError, PlayerDevice};
use sync::SyncerConfig;
use tokio::sync::broadcast;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Galaxy Forge player's device on the command line: create galaxies
/// offline through the embedded engine, and sync them with galaxy-cloud.
#[derive(Debug, Parser)]
#[command(name = "galaxy", version)]
struct Cli {
    /// This device's data directory (engine.db, galaxies.db, settings.json).
    #[arg(long, env = "GALAXY_DEVICE_DIR", default_value = "data/device")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registers a new player at the cloud, with this device as its first.
    Register {
        /// The cloud's base URL, e.g. http://127.0.0.1:7071.
        #[arg(long)]
        cloud: String,
        /// This device's name, shown on galaxies it creates.
        #[arg(long)]
        name: Option<String>,
    },
    /// Without CODE: makes a link code (valid 10 minutes, once) for another
    /// device. With CODE: joins the player that made it.
    Link {
        /// A code made on a device of the player.
        code: Option<String>,
        /// The cloud's base URL (joining only; default: the saved one).
        #[arg(long)]
        cloud: Option<String>,
        /// This device's name (joining only).
        #[arg(long)]
        name: Option<String>,
    },
    /// Creates galaxies through the embedded engine (works offline), or
    /// with --in-cloud on galaxy-cloud for this player (then pulled).
    Create {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 1)]
        count: usize,
        /// Run Galaxy_Create in the cloud, follow it live, then sync.
        #[arg(long)]
        in_cloud: bool,
    },
    /// Renames a galaxy.
    Rename {
        /// The galaxy's id.
        id: String,
        /// Its new name.
        name: String,
    },
    /// Deletes a galaxy.
    Delete {
        /// The galaxy's id.
        id: String,
    },
    /// Syncs once (push, then pull); with --watch, keeps syncing live
    /// until interrupted.
    Sync {
        /// Stay connected and sync on every change here or on the cloud.
        #[arg(long)]
        watch: bool,
    },
    /// Lists the galaxies on this device.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows the account, the galaxy count and what waits to sync (JSON).
    Status,
    /// Revokes this device's token at the cloud and forgets the account;
    /// the galaxies and their pending changes stay (linking to the same
    /// player again goes on from there).
    SignOut,
}

fn device_name(given: Option<String>) -> String {
    given
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "galaxy-cli".into())
}

async fn run(cli: Cli) -> Result<(), DeviceError> {
    let (device, notes) = PlayerDevice::open(&cli.data_dir, None, SyncerConfig::default())?;
    if notes.legacy_key_dropped {
        eprintln!(
            "note: the settings held a function key; it was removed (devices use their own token)"
        );
    }
    for w in notes.warnings {
        eprintln!("warning: {w}");
    }
    let outcome = command(&device, cli.command).await;
    device.shutdown(Duration::from_secs(5)).await;
    outcome
}

async fn command(device: &PlayerDevice, command: Command) -> Result<(), DeviceError> {
    match command {
        Command::Register { cloud, name } => {
            let account = device.register(&cloud, &device_name(name)).await?;
            println!(
                "registered: player {} device {}",
                account.player_id, account.device_id
            );
        }
        Command::Link { code: None, .. } => {
            let code = device.link_code().await?;
            println!("{}", code.code);
            eprintln!("valid once, until {}", code.expires_at);
        }
        Command::Link {
            code: Some(code),
            cloud,
            name,
        } => {
            let cloud = cloud.unwrap_or_else(|| device.settings().cloud_url);
            let account = device.join(&cloud, &code, &device_name(name)).await?;
            println!(
                "linked: player {} device {}",
                account.player_id, account.device_id
            );
        }
        Command::Create {
            count,
            in_cloud: false,
        } => {
            let ids = device.create(count).await?;
            println!("created {} galaxies", ids.len());
        }
        Command::Create {
            count,
            in_cloud: true,
        } => {
            for _ in 0..count {
                let done = device
                    .create_in_cloud(|s| println!("cloud {} {}", s.instance_id, s.runtime_status))
                    .await?;
                if done.runtime_status != "Completed" {
                    return Err(DeviceError::Sync(format!(
                        "the cloud's Galaxy_Create {} ended {}",
                        done.instance_id, done.runtime_status
                    )));
                }
            }
            let report = device.sync_once().await?;
            println!(
                "created {count} galaxies in the cloud; pulled {}",
                report.pulled
            );
        }
        Command::Rename { id, name } => {
            let g = device.rename(&id, &name).await?;
            println!("renamed {} to '{}'", g.row_key, g.name);
        }
        Command::Delete { id } => {
            device.delete(&id).await?;
            println!("deleted {id}");
        }
        Command::Sync { watch: false } => {
            let report = device.sync_once().await?;
            println!("pushed {} pulled {}", report.pushed, report.pulled);
            for n in report.notices {
                println!("note: {n}");
            }
        }
        Command::Sync { watch: true } => watch(device).await?,
        Command::List { json } => {
            let all = device.list()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&all).expect("galaxies serialize")
                );
            } else {
                for g in all {
                    let origin = if g.origin.is_empty() {
                        "-"
                    } else {
                        g.origin.as_str()
                    };
                    println!(
                        "{}  {:<24} ({}, {}, {})  v{}  {}",
                        g.row_key, g.name, g.coords.x, g.coords.y, g.coords.z, g.version, origin
                    );
                }
            }
        }
        Command::SignOut => {
            device.sign_out().await?;
            println!("signed out");
        }
        Command::Status => {
            let status = device.status()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("status serializes")
            );
        }
    }
    Ok(())
}

/// Runs the sync loop until Ctrl-C or SIGTERM, printing each settled status.
async fn watch(device: &PlayerDevice) -> Result<(), DeviceError> {
    if device.settings().account.is_none() {
        return Err(DeviceError::NotRegistered);
    }
    let syncer = device.syncer().clone();
    // Subscribed before the loop starts, so its first round is printed.
    let mut settled = syncer.settled();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DeviceError::Sync(format!("cannot watch for SIGTERM: {e}")))?;
    let run = tokio::spawn(syncer.clone().run(async move {
        tokio::select! {
            _ = stop => {}
            _ = term.recv() => {}
        }
    }));
    let printer = async {
        let mut last = String::new();
        loop {
            let line = match settled.recv().await {
                Ok(s) => format!("{:?}: {} ({} pending)", s.phase, s.message, s.pending),
                Err(broadcast::error::RecvError::Lagged(n)) => format!("({n} rounds not shown)"),
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if line != last {
                println!("{line}");
                last = line;
            }
        }
    };
    tokio::select! {
        _ = printer => {}
        r = run => {
            r.map_err(|e| DeviceError::Sync(e.to_string()))?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber_init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("galaxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs (warnings and up by default) to stderr; `GALAXY_LOG` changes it.
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GALAXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
