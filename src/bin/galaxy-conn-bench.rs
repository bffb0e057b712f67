//! Idle-connection benchmark: what open, idle connections cost the real
//! `galaxy-cloud` binary, and whether a new client is still served while
//! they are open. Prints a Markdown table. Run with `make bench`.
//!
//! Each scenario starts a fresh server, reads its RSS (`/proc/PID/status`),
//! opens the connections from this process and reads the RSS again. A
//! probe connection opened after all of them asks for `/healthz`: the
//! server accepts connections in order, so its answer also says every
//! connection before it was accepted (or, at the connection limit, how
//! long a new client waits for a free slot).
//!
//! - silent: connections that never send a byte (a slowloris at rest);
//! - keep-alive: connections that made one request and stay open;
//! - defaults: silent connections against the default limits
//!   (`--max-connections 4096`, `--header-read-timeout 10s`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use futures::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "support/cloud_process.rs"]
mod cloud_process;
use cloud_process::{galaxy_cloud_binary, start_cloud, Cloud};

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;
/// A connect that takes longer is tried again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a scenario keeps opening connections (at the connection
/// limit the rest wait in the kernel's queue and never connect).
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// How long the probe may take to be answered.
const PROBE_DEADLINE: Duration = Duration::from_secs(60);

/// Idle-connection benchmark.
#[derive(Parser)]
struct Args {
    /// Connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The galaxy-cloud binary (default: beside this one).
    #[arg(long)]
    galaxy_cloud: Option<PathBuf>,
}

/// RSS and peak RSS of a process, in KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// One plain HTTP/1.1 request on `stream`; returns the status line.
async fn request(stream: &mut TcpStream, path: &str) -> anyhow::Result<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // The answers here are small: read until the head and body are in.
    loop {
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "connection closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + length {
                return Ok(text.lines().next().unwrap_or_default().to_string());
            }
        }
    }
}

struct Row {
    scenario: &'static str,
    opened: usize,
    rss_before: u64,
    rss_after: u64,
    peak: u64,
    probe: Duration,
    probe_status: String,
}

async fn scenario(
    bin: &std::path::Path,
    name: &'static str,
    n: usize,
    extra: &[&str],
    keep_alive: bool,
) -> anyhow::Result<Row> {
    let cloud: Cloud = start_cloud(bin, extra)?;
    let addr = cloud.addr().to_string();
    // Warm the server up with one request, then read its baseline.
    let mut warm = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .context("connecting to a fresh server")??;
    request(&mut warm, "/healthz").await?;
    drop(warm);
    let (rss_before, _) = memory_kib(cloud.pid())?;
    // Loopback here drops a SYN now and then under a burst of connects
    // (a plain Python server shows it too); a connect that times out is
    // tried again until the deadline.
    let deadline = Instant::now() + OPEN_DEADLINE;
    let mut connections: Vec<TcpStream> = Vec::with_capacity(n);
    while connections.len() < n && Instant::now() < deadline {
        let missing = n - connections.len();
        let opened: Vec<TcpStream> = stream::iter(0..missing)
            .map(|_| {
                let addr = addr.clone();
                async move {
                    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
                        .await
                        .ok()?
                        .ok()?;
                    if keep_alive {
                        request(&mut s, "/healthz").await.ok()?;
                    }
                    Some(s)
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .filter_map(|s| async move { s })
            .collect()
            .await;
        connections.extend(opened);
    }
    let opened = connections.len();
    eprintln!("{name}: {opened} of {n} connections open");
    let t0 = Instant::now();
    let probe = async {
        // The probe's connect may need a retry too (see above).
        let mut s = loop {
            if let Ok(Ok(s)) =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await
            {
                break s;
            }
        };
        request(&mut s, "/healthz").await
    };
    let probe_status = tokio::time::timeout(PROBE_DEADLINE, probe)
        .await
        .map(|r| r.unwrap_or_else(|e| format!("failed: {e}")))
        .unwrap_or_else(|_| format!("no answer in {} s", PROBE_DEADLINE.as_secs()));
    let probe_time = t0.elapsed();
    let (rss_after, peak) = memory_kib(cloud.pid())?;
    drop(connections);
    Ok(Row {
        scenario: name,
        opened,
        rss_before,
        rss_after,
        peak,
        probe: probe_time,
        probe_status,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = galaxy_cloud_binary(args.galaxy_cloud.as_deref())?;
    let n = args.connections;
    let room = (n + 100).to_string();
    let rows = vec![
        scenario(
            &bin,
            "silent",
            n,
            &["--max-connections", &room, "--header-read-timeout", "600s"],
            false,
        )
        .await?,
        scenario(
            &bin,
            "keep-alive",
            n,
            &["--max-connections", &room, "--header-read-timeout", "600s"],
            true,
        )
        .await?,
        scenario(&bin, "defaults", n, &[], false).await?,
    ];
    println!("### galaxy-cloud with {n} idle connections\n");
    println!(
        "| scenario | connections opened | RSS before | RSS with them | per connection | peak RSS | new client's /healthz |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let per = (r.rss_after.saturating_sub(r.rss_before)) as f64 / r.opened.max(1) as f64;
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} MiB | {} after {:.0} ms |",
            r.scenario,
            r.opened,
            r.rss_before as f64 / 1024.0,
            r.rss_after as f64 / 1024.0,
            per,
            r.peak as f64 / 1024.0,
            r.probe_status,
            r.probe.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
