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
//! - idle memory side by side, 10 s after start: a minimal Tauri 2 window
//!   (the `tauri-empty-window` fixture: an empty page, Tauri's defaults)
//!   and Galaxy Forge with the store above and with ten times as many
//!   galaxies, each started directly (no WebDriver) in the same WebKit
//!   environment; PSS, USS, anonymous and file-backed PSS, and RSS per
//!   process (app, WebKitWebProcess, WebKitNetworkProcess) and summed;
//! - the size of the release `.deb` when `make package` has made one.
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
    /// How long after start a process tree counts as idle.
    idle: Duration,
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
            idle: Duration::from_secs(10),
            starts: arg("--starts", 5),
            clicks: arg("--clicks", 100),
        }
    } else {
        Plan {
            galaxies: 20,
            idle: Duration::from_secs(2),
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

/// Memory of one process, in KiB, from `/proc/<pid>/smaps_rollup`.
#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    pss_anon: u64,
    pss_file: u64,
    /// Unique set: pages only this process maps (private clean + dirty).
    uss: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Mem) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.pss_anon += o.pss_anon;
        self.pss_file += o.pss_file;
        self.uss += o.uss;
    }
}

fn memory(pid: u32) -> Mem {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        pss_anon: field("Pss_Anon:"),
        pss_file: field("Pss_File:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
    }
}

/// Starts `binary` directly on `display` (as a double-click would, no
/// WebDriver), waits `idle` (after which the tree counts as idle), and
/// measures each process of its tree; then stops it.
async fn idle_tree(
    idle: Duration,
    display: &Display,
    binary: &Path,
    env: &[(&str, &Path)],
) -> Result<Vec<(String, Mem)>> {
    let mut cmd = std::process::Command::new(binary);
    cmd.env("DISPLAY", &display.name)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    tokio::time::sleep(idle).await; // what "idle" means here
    let procs: Vec<(String, Mem)> = tree(child.id())
        .into_iter()
        .map(|pid| (name(pid), memory(pid)))
        .collect();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    support::wait_for("the measured app to exit", Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .or_else(|_| child.kill().map_err(anyhow::Error::from))?;
    ensure!(
        procs.iter().any(|(n, _)| n.starts_with("WebKitWebProces")),
        "{} started no web process: {:?}",
        binary.display(),
        procs.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    Ok(procs)
}

/// The empty-window fixture, built beside this benchmark (same profile).
fn empty_window() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark's directory")?;
    let path = dir.join("tauri-empty-window");
    ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p tauri-empty-window` in the same profile (make test and make bench do)",
        path.display()
    );
    Ok(path)
}

/// The WebKitGTK library version and how this machine draws.
fn webkit_environment() -> String {
    let version = std::process::Command::new("pkg-config")
        .args(["--modversion", "webkit2gtk-4.1"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let software = galaxy_desktop::prefer_software_drawing(Path::new("/dev/dri"), None);
    format!(
        "WebKitGTK {version}; {}",
        if software {
            "no GPU render node: compositing off, drawn in software (both apps)"
        } else {
            "GPU render node present: compositing as WebKit chooses"
        }
    )
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

    // Idle memory side by side: the empty Tauri window, then Galaxy Forge
    // with the benchmark's store and with ten times as many galaxies, each
    // started the same way and measured the same way.
    let software = galaxy_desktop::prefer_software_drawing(Path::new("/dev/dri"), None);
    let compositing_off = Path::new("1");
    let base_env: Vec<(&str, &Path)> = if software {
        vec![("WEBKIT_DISABLE_COMPOSITING_MODE", compositing_off)]
    } else {
        vec![]
    };
    let empty = idle_tree(plan.idle, &display, &empty_window()?, &base_env).await?;
    let app_bin = Path::new(support::APP);
    let with_data = |dir: &Path| -> Vec<(&'static str, std::path::PathBuf)> {
        vec![(galaxy_desktop::DATA_DIR_ENV, dir.to_path_buf())]
    };
    let small_env = with_data(data.path());
    let mut env: Vec<(&str, &Path)> = base_env.clone();
    env.extend(small_env.iter().map(|(k, v)| (*k, v.as_path())));
    let forge = idle_tree(plan.idle, &display, app_bin, &env).await?;
    let big = tempfile::tempdir()?;
    seed(big.path(), plan.galaxies * 10)
        .await
        .context("seeding the larger store")?;
    let big_env = with_data(big.path());
    let mut env: Vec<(&str, &Path)> = base_env.clone();
    env.extend(big_env.iter().map(|(k, v)| (*k, v.as_path())));
    let forge_big = idle_tree(plan.idle, &display, app_bin, &env).await?;

    let app = App::launch(&display, data.path()).await?;
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
    println!();
    println!(
        "idle memory, {} s after start, MiB: {}",
        plan.idle.as_secs(),
        webkit_environment()
    );
    println!(
        "{:<44} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "process", "PSS", "USS", "anon", "file", "RSS"
    );
    let mib1 = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    let total = |procs: &[(String, Mem)]| {
        let mut t = Mem::default();
        for (_, m) in procs {
            t += *m;
        }
        t
    };
    let print_tree = |title: String, procs: &[(String, Mem)]| {
        println!("{title}");
        let line = |label: &str, m: &Mem| {
            println!(
                "  {label:<42} {:>7} {:>7} {:>7} {:>7} {:>7}",
                mib1(m.pss),
                mib1(m.uss),
                mib1(m.pss_anon),
                mib1(m.pss_file),
                mib1(m.rss)
            )
        };
        for (name, m) in procs {
            line(name, m);
        }
        line("process tree", &total(procs));
    };
    print_tree("empty Tauri 2 window (fixture)".into(), &empty);
    print_tree(format!("Galaxy Forge, {} galaxies", plan.galaxies), &forge);
    print_tree(
        format!("Galaxy Forge, {} galaxies", plan.galaxies * 10),
        &forge_big,
    );
    let (e, f, b) = (total(&empty), total(&forge), total(&forge_big));
    println!();
    row(
        &format!("PSS ratio, Galaxy Forge ({}) / empty window", plan.galaxies),
        format!("{:.2}", f.pss as f64 / e.pss.max(1) as f64),
        "<= 1.00",
    );
    row(
        &format!("PSS added by {} more galaxies", plan.galaxies * 9),
        format!("{} MiB", mib1(b.pss.saturating_sub(f.pss))),
        "< 30 MiB",
    );
    let deb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/bundle/deb");
    let size = std::fs::read_dir(&deb)
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "deb"))
        .and_then(|e| e.metadata().ok())
        .map(|m| format!("{:.1} MiB", m.len() as f64 / 1048576.0))
        .unwrap_or_else(|| "(make package first)".into());
    row("package size (.deb, release)", size, "");
    Ok(())
}
