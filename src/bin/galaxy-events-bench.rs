//! Event router benchmark: the real `galaxy-cloud` binary (SQLite, durable
//! commits, a temp data dir) and a webhook receiver in this process, over
//! loopback. Prints Markdown tables. Run with `make bench`.
//!
//! - Throughput: N events published by concurrent publishers (one event
//!   per request, or batches of 100), until the receiver has them all;
//!   delivery batches of 1 or 100.
//! - Latency: 1,000 events/s for a few seconds, one per request; each
//!   event carries its publish time, the receiver takes the difference.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::Notify;

#[path = "support/cloud_process.rs"]
mod cloud_process;
use cloud_process::{galaxy_cloud_binary, start_cloud, Cloud};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "events-bench-function-key";
const MASTER: &str = "events-bench-master-key-1";

/// Event router benchmarks.
#[derive(Parser)]
struct Args {
    /// Events per throughput run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent publishers (single events are also run with four times
    /// as many: each publisher waits for its durable commit, so their
    /// number bounds the rate).
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Seconds of the 1,000 events/s latency run.
    #[arg(long, default_value_t = 5)]
    latency_seconds: u64,
    /// The galaxy-cloud binary (default: beside this one).
    #[arg(long)]
    galaxy_cloud: Option<PathBuf>,
}

#[derive(Default)]
struct Received {
    count: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
    arrived: Notify,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn receive(
    State(r): State<Arc<Received>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if headers.get("aeg-event-type").and_then(|h| h.to_str().ok()) == Some("SubscriptionValidation")
    {
        return axum::Json(json!({ "validationResponse": v[0]["data"]["validationCode"] }))
            .into_response();
    }
    let now = now_us();
    let events = v.as_array().cloned().unwrap_or_default();
    {
        let mut l = r.latencies_us.lock().unwrap();
        for e in &events {
            if let Some(t) = e["data"]["t"].as_u64() {
                l.push(now.saturating_sub(t));
            }
        }
    }
    r.count.fetch_add(events.len(), Ordering::SeqCst);
    r.arrived.notify_waiters();
    axum::http::StatusCode::OK.into_response()
}

async fn receiver() -> anyhow::Result<(String, Arc<Received>)> {
    let state = Arc::new(Received::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, state))
}

struct Topic {
    endpoint: String,
    key: String,
}

async fn setup(
    http: &reqwest::Client,
    cloud: &Cloud,
    topic: &str,
    hook: &str,
    delivery_batch: u32,
) -> anyhow::Result<Topic> {
    let t: Value = http
        .put(format!("{}/api/events/topics/{topic}", cloud.base))
        .header("x-functions-key", KEY)
        .json(&json!({"inputSchema": "EventGridSchema"}))
        .send()
        .await?
        .json()
        .await?;
    let keys: Value = http
        .post(format!("{}/api/events/topics/{topic}/listKeys", cloud.base))
        .header("x-functions-key", KEY)
        .send()
        .await?
        .json()
        .await?;
    http.put(format!("{}/api/events/topics/{topic}/eventSubscriptions/bench", cloud.base))
        .header("x-functions-key", KEY)
        .json(&json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": hook, "maxEventsPerBatch": delivery_batch, "preferredBatchSizeInKilobytes": 1024}}}))
        .send()
        .await?
        .error_for_status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: Value = http
            .get(format!(
                "{}/api/events/topics/{topic}/eventSubscriptions/bench",
                cloud.base
            ))
            .header("x-functions-key", KEY)
            .send()
            .await?
            .json()
            .await?;
        if s["properties"]["provisioningState"] == "Succeeded" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the subscription was never validated: {s}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Topic {
        endpoint: t["endpoint"].as_str().context("endpoint")?.to_string(),
        key: keys["key1"].as_str().context("key")?.to_string(),
    })
}

fn event(i: usize) -> Value {
    json!({"id": format!("e{i}"), "subject": "/bench", "eventType": "Bench.Event", "eventTime": "2026-12-01T00:00:00Z",
           "data": {"i": i, "t": now_us()}})
}

async fn wait_for(received: &Received, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while received.count.load(Ordering::SeqCst) < n {
        let notified = received.arrived.notified();
        if received.count.load(Ordering::SeqCst) >= n {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {} of {n} events arrived",
            received.count.load(Ordering::SeqCst)
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
    Ok(())
}

async fn throughput(
    bin: &std::path::Path,
    args: &Args,
    publishers: usize,
    per_request: usize,
    delivery_batch: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let cloud = start_cloud(bin, &["--function-key", KEY, "--master-key", MASTER])?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let (hook, received) = receiver().await?;
    let topic = setup(&http, &cloud, "bench", &hook, delivery_batch).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (http, next, endpoint, key, n) = (
            http.clone(),
            next.clone(),
            topic.endpoint.clone(),
            topic.key.clone(),
            args.events,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(per_request, Ordering::SeqCst);
                if start >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let batch: Vec<Value> = (start..(start + per_request).min(n)).map(event).collect();
                let r = http
                    .post(&endpoint)
                    .header("aeg-sas-key", &key)
                    .json(&batch)
                    .send()
                    .await?;
                ensure!(
                    r.status().as_u16() == 200,
                    "publish answered {}",
                    r.status()
                );
            }
        }));
    }
    for p in tasks {
        p.await??;
    }
    let published = t0.elapsed();
    wait_for(&received, args.events, Duration::from_secs(600)).await?;
    Ok((published, t0.elapsed()))
}

async fn latency(bin: &std::path::Path, args: &Args) -> anyhow::Result<Vec<u64>> {
    let cloud = start_cloud(bin, &["--function-key", KEY, "--master-key", MASTER])?;
    let http = reqwest::Client::new();
    let (hook, received) = receiver().await?;
    let topic = setup(&http, &cloud, "latency", &hook, 1).await?;
    let total = 1000 * args.latency_seconds as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (http, endpoint, key) = (http.clone(), topic.endpoint.clone(), topic.key.clone());
        sends.spawn(async move {
            http.post(&endpoint)
                .header("aeg-sas-key", &key)
                .json(&[event(i)])
                .send()
                .await
        });
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }
    wait_for(&received, total, Duration::from_secs(120)).await?;
    let mut l = received.latencies_us.lock().unwrap().clone();
    l.sort_unstable();
    Ok(l)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = galaxy_cloud_binary(args.galaxy_cloud.as_deref())?;
    println!("## Event router: throughput\n");
    println!(
        "{} events published by concurrent publishers to galaxy-cloud (SQLite, durable commits) and pushed to a webhook receiver on loopback ({} cores). A publish is answered after its commit, so with single events the publishers' number bounds the rate. Target: 10,000 events/s end to end.\n",
        args.events,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| publishers | events per publish | events per delivery | published/s | end to end/s |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let p = args.publishers;
    for (publishers, per_request, delivery) in
        [(p, 1usize, 1u32), (p * 4, 1, 1), (p, 100, 1), (p, 100, 100)]
    {
        let (published, done) = throughput(&bin, &args, publishers, per_request, delivery).await?;
        println!(
            "| {publishers} | {per_request} | {delivery} | {:.0} | {:.0} |",
            args.events as f64 / published.as_secs_f64(),
            args.events as f64 / done.as_secs_f64()
        );
    }
    let l = latency(&bin, &args).await?;
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!("\n## Event router: latency at 1,000 events/s\n");
    println!(
        "One event per publish, one per delivery, for {} s. Target: p50 < 5 ms, p99 < 50 ms.\n",
        args.latency_seconds
    );
    println!("| p50 | p90 | p99 | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
