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

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// One line of the printed table.
fn row(measure: &str, value: String, target: &str) {
    println!("{measure:<52} {value:>12} {target:>10}");
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
    ensure!(
        clicks.len() == plan.clicks,
        "{} clicks measured",
        clicks.len()
    );
    app.close().await?;
    let times = |f: fn(&ClickTimes) -> f64| sorted(clicks.iter().map(f).collect());
    let shown = times(|c| c.ms);
    let starts = sorted(starts);

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
    let ms0 = |v: f64| format!("{v:.0} ms");
    let ms1 = |v: f64| format!("{v:.1} ms");
    let mib = |kib: u64| format!("{} MiB", kib / 1024);
    row(
        &format!("cold start to first paint, median of {}", plan.starts),
        ms0(percentile(&starts, 0.5)),
        "< 1000 ms",
    );
    row(
        "cold start to first paint, worst",
        ms0(starts.last().copied().unwrap_or(0.0)),
        "",
    );
    row(
        "  of which process start to snapshot loaded (median)",
        ms0(percentile(&sorted(loads), 0.5)),
        "",
    );
    row(
        &format!("click -> Completed shown, p50 of {}", plan.clicks),
        ms1(percentile(&shown, 0.5)),
        "< 50 ms",
    );
    row(
        &format!("click -> Completed shown, p99 of {}", plan.clicks),
        ms1(percentile(&shown, 0.99)),
        "",
    );
    row(
        "  p50 click -> create command answered",
        ms1(percentile(&times(|c| c.invoke_ms), 0.5)),
        "",
    );
    row(
        "  p50 click -> Completed in the page (not yet painted)",
        ms1(percentile(&times(|c| c.shown_ms), 0.5)),
        "",
    );
    row(
        "  p50 engine created -> completed (ms clock)",
        ms1(percentile(&times(|c| c.engine_ms), 0.5)),
        "",
    );
    row("idle RSS, process tree", mib(rss), "< 150 MiB");
    row("idle PSS, process tree (shared pages split)", mib(pss), "");
    println!("  processes: {}", procs.join(", "));
    Ok(())
}
