//! Desktop app benchmark, in the real app under Xvfb (driven like the
//! end-to-end tests). `cargo bench -p galaxy-desktop --bench desktop`
//! (`make bench`) measures, with 1,000 galaxies in the local store:
//!
//! - cold start: WebDriver session requested (the app process is spawned)
//!   until the page has painted its first frame with the galaxies listed;
//! - click -> Completed shown: measured in the page, from the click event
//!   on Create Galaxy until the frame that shows the instance Completed is
//!   painted, one click at a time, 100 clicks (awaited through a promise in
//!   the page: polling over WebDriver would compete with the frames);
//! - idle memory: RSS (and PSS) summed over the app's process tree
//!   (the app and its WebKit web and network processes), 3 s after start.
//!
//! `-- --galaxies N --starts N --clicks N` change the sizes of the full run.
//! Run by `cargo test --all-targets` (no `--bench` argument) it does a
//! small smoke run instead, so the harness cannot rot.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use galaxy::{LocalConfig, LocalNode, GALAXY_CREATE};
use support::{App, Display};

/// One click's times, in ms since the click, as the page recorded them.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClickTimes {
    /// Until the frame showing Completed was painted.
    ms: f64,
    /// Until the create command answered.
    invoke_ms: f64,
    /// Until the DOM showed Completed (before that frame was painted).
    shown_ms: f64,
    /// The engine's own created -> last updated (millisecond timestamps).
    engine_ms: f64,
}

struct Plan {
    galaxies: usize,
    starts: usize,
    clicks: usize,
}

fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let arg = |name: &str, default: usize| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let plan = if full {
        Plan {
            galaxies: arg("--galaxies", 1000),
            starts: arg("--starts", 5),
            clicks: arg("--clicks", 100),
        }
    } else {
        Plan {
            galaxies: 20,
            starts: 1,
            clicks: 5,
        }
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(plan, full))
}

async fn seed(dir: &Path, n: usize) -> Result<()> {
    let node = LocalNode::open(dir, LocalConfig::default())?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            node.engine
                .start_orchestration(GALAXY_CREATE, None, ())
                .await?,
        );
    }
    for id in &ids {
        node.engine
            .wait_for_completion(id, Duration::from_secs(120))
            .await?;
    }
    ensure!(node.table.count()? as usize == n, "seeded galaxies");
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Pids of `root` and all its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parents.push((pid, ppid));
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// (RSS, PSS) in KiB of one process.
fn memory(pid: u32) -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

fn name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(plan: Plan, full: bool) -> Result<()> {
    let data = tempfile::tempdir()?;
    seed(data.path(), plan.galaxies).await.context("seeding")?;
    let display = Display::start()?;

    // Cold starts.
    let mut starts = Vec::new();
    let mut loads = Vec::new();
    for _ in 0..plan.starts {
        let app = App::launch(&display, data.path()).await?;
        app.wait_js(
            "the first paint",
            "return !!window.galaxyForge.metrics.firstPaint",
        )
        .await?;
        let paint = app
            .eval("const m = window.galaxyForge.metrics.firstPaint; return m && [m.at, m.uptimeMs]")
            .await?;
        let shown = app.eval("return window.galaxyForge.mapCount()").await?;
        ensure!(
            shown.as_u64() == Some(plan.galaxies as u64),
            "{shown} galaxies shown"
        );
        let at = paint[0].as_f64().context("firstPaint")?;
        let requested = app
            .session_requested_at
            .duration_since(UNIX_EPOCH)?
            .as_secs_f64()
            * 1000.0;
        starts.push(at - requested);
        loads.push(paint[1].as_f64().unwrap_or(0.0));
        app.close().await?;
    }

    // Idle memory, then clicks, in one more launch.
    let app = App::launch(&display, data.path()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // settle: this is what "idle" means
    let mut rss = 0;
    let mut pss = 0;
    let mut procs = Vec::new();
    for pid in tree(app.pid) {
        let (r, p) = memory(pid);
        rss += r;
        pss += p;
        procs.push(format!("{} {} MiB", name(pid), r / 1024));
    }

    for i in 0..plan.clicks {
        app.click("#create").await?;
        app.eval_async(&format!(
            "window.galaxyForge.whenClicks({}).then(arguments[arguments.length - 1])",
            i + 1
        ))
        .await
        .context("the click to show Completed")?;
    }
    let clicks = app.eval("return window.galaxyForge.metrics.clicks").await?;
    let clicks: Vec<ClickTimes> = serde_json::from_value(clicks)?;
    let part = |f: fn(&ClickTimes) -> f64| {
        let mut v: Vec<f64> = clicks.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, 0.5)
    };
    let (invoke, event, engine) = (
        part(|c| c.invoke_ms),
        part(|c| c.shown_ms),
        part(|c| c.engine_ms),
    );
    let mut clicks: Vec<f64> = clicks.iter().map(|c| c.ms).collect();
    ensure!(
        clicks.len() == plan.clicks,
        "{} clicks measured",
        clicks.len()
    );
    app.close().await?;
    clicks.sort_by(|a, b| a.total_cmp(b));
    let mut sorted_starts = starts.clone();
    sorted_starts.sort_by(|a, b| a.total_cmp(b));

    println!();
    println!(
        "galaxy-desktop benchmark{} ({} galaxies in the store)",
        if full {
            ""
        } else {
            " (smoke run: pass --bench for the full one)"
        },
        plan.galaxies
    );
    println!("{:<52} {:>12} {:>10}", "measure", "value", "target");
    println!(
        "{:<52} {:>9.0} ms {:>10}",
        format!("cold start to first paint, median of {}", plan.starts),
        percentile(&sorted_starts, 0.5),
        "< 1000 ms"
    );
    println!(
        "{:<52} {:>9.0} ms {:>10}",
        "cold start to first paint, worst",
        sorted_starts.last().copied().unwrap_or(0.0),
        ""
    );
    println!(
        "{:<52} {:>9.0} ms {:>10}",
        "  of which process start to snapshot loaded (median)",
        {
            let mut l = loads.clone();
            l.sort_by(|a, b| a.total_cmp(b));
            percentile(&l, 0.5)
        },
        ""
    );
    println!(
        "{:<52} {:>9.1} ms {:>10}",
        format!("click -> Completed shown, p50 of {}", plan.clicks),
        percentile(&clicks, 0.5),
        "< 50 ms"
    );
    println!(
        "{:<52} {:>9.1} ms {:>10}",
        format!("click -> Completed shown, p99 of {}", plan.clicks),
        percentile(&clicks, 0.99),
        ""
    );
    println!(
        "{:<52} {:>9.1} ms",
        "  p50 click -> create command answered", invoke
    );
    println!(
        "{:<52} {:>9.1} ms",
        "  p50 click -> Completed in the page (not yet painted)", event
    );
    println!(
        "{:<52} {:>9.1} ms",
        "  p50 engine created -> completed (ms clock)", engine
    );
    println!(
        "{:<52} {:>9} MiB {:>9}",
        "idle RSS, process tree",
        rss / 1024,
        "< 150 MiB"
    );
    println!(
        "{:<52} {:>9} MiB",
        "idle PSS, process tree (shared pages split)",
        pss / 1024
    );
    println!("  processes: {}", procs.join(", "));
    Ok(())
}
