//! Prometheus metrics: requests by route and status, instances by status,
//! work-item queue depth and dispatch latency.
//!
//! Counters are kept here; instance counts and queue depth are read from
//! the store at scrape time, so they are exact and cost nothing between
//! scrapes. Dispatch latency is measured from the engine's update stream
//! (creation → first turn), which needs no engine hook.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use durable::{InstanceId, RuntimeStatus, Timestamp, Update};
use tokio::sync::{broadcast, watch};

/// Upper bounds (seconds) of the dispatch latency buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Creations remembered while waiting for their first turn; beyond this
/// the oldest half is forgotten (their latency goes unmeasured) so memory
/// stays bounded whatever the load.
const MAX_PENDING: usize = 200_000;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// Request counts of one route: (method, status) -> count.
type ByMethodStatus = HashMap<(&'static str, u16), u64>;

/// The server's own counters.
#[derive(Default)]
pub struct Metrics {
    /// route template -> (method, status) -> count. Keyed by route first so
    /// the hot path looks up with a borrowed `&str` and allocates nothing.
    requests: Mutex<HashMap<String, ByMethodStatus>>,
    dispatch: Mutex<Histogram>,
    lagged: AtomicU64,
    streams: AtomicI64,
}

/// Store-side numbers read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct StoreGauges {
    /// Instances per runtime status.
    pub by_status: Vec<(RuntimeStatus, u64)>,
    /// Instances with visible messages.
    pub orchestration_queue: u64,
    /// Queued activities.
    pub activity_queue: u64,
}

impl Metrics {
    /// Counts one answered request. Methods outside the standard set are
    /// counted as `other`, so arbitrary methods cannot grow the label set.
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        let method = match method {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "HEAD" => "HEAD",
            "OPTIONS" => "OPTIONS",
            _ => "other",
        };
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let by_route = match map.get_mut(route) {
            Some(m) => m,
            None => map.entry(route.to_string()).or_default(),
        };
        *by_route.entry((method, status)).or_default() += 1;
    }

    /// Requests answered so far for `route` with `status`, any method.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        map.get(route)
            .map(|m| {
                m.iter()
                    .filter(|((_, s), _)| *s == status)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Records one dispatch latency.
    pub fn observe_dispatch(&self, seconds: f64) {
        self.dispatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(seconds);
    }

    /// Dispatch latencies observed so far.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count
    }

    /// An event stream opened (+1) or closed (-1).
    pub fn stream_delta(&self, delta: i64) {
        self.streams.fetch_add(delta, Ordering::Relaxed);
    }

    /// Notes that an update-stream subscriber fell behind.
    pub fn note_lag(&self) {
        self.lagged.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: &StoreGauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP galaxy_http_requests_total HTTP requests answered, by method, route and status.\n");
        out.push_str("# TYPE galaxy_http_requests_total counter\n");
        let requests: BTreeMap<(String, String, u16), u64> = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|(route, m)| {
                m.iter().map(move |((method, status), n)| {
                    ((method.to_string(), route.clone(), *status), *n)
                })
            })
            .collect();
        for ((method, route, status), n) in requests {
            let _ = writeln!(
                out,
                "galaxy_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(&method),
                escape(&route)
            );
        }
        out.push_str(
            "# HELP galaxy_instances Orchestration instances in the store, by runtime status.\n",
        );
        out.push_str("# TYPE galaxy_instances gauge\n");
        for status in RuntimeStatus::ALL {
            let n: u64 = gauges
                .by_status
                .iter()
                .filter(|(s, _)| *s == status)
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(out, "galaxy_instances{{status=\"{status}\"}} {n}");
        }
        out.push_str(
            "# HELP galaxy_work_items_queued Work items waiting to be leased, by queue.\n",
        );
        out.push_str("# TYPE galaxy_work_items_queued gauge\n");
        let _ = writeln!(
            out,
            "galaxy_work_items_queued{{queue=\"orchestration\"}} {}",
            gauges.orchestration_queue
        );
        let _ = writeln!(
            out,
            "galaxy_work_items_queued{{queue=\"activity\"}} {}",
            gauges.activity_queue
        );
        out.push_str("# HELP galaxy_dispatch_latency_seconds Time from an instance's creation to the start of its first turn.\n");
        out.push_str("# TYPE galaxy_dispatch_latency_seconds histogram\n");
        {
            let h = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "galaxy_dispatch_latency_seconds_bucket{{le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "galaxy_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "galaxy_dispatch_latency_seconds_sum {}", h.sum);
            let _ = writeln!(out, "galaxy_dispatch_latency_seconds_count {}", h.count);
        }
        out.push_str("# HELP galaxy_update_stream_lagged_total Times a live-update subscriber of this server fell behind and re-synced.\n");
        out.push_str("# TYPE galaxy_update_stream_lagged_total counter\n");
        let _ = writeln!(
            out,
            "galaxy_update_stream_lagged_total {}",
            self.lagged.load(Ordering::Relaxed)
        );
        out.push_str("# HELP galaxy_event_streams Open Server-Sent Events streams.\n");
        out.push_str("# TYPE galaxy_event_streams gauge\n");
        let _ = writeln!(
            out,
            "galaxy_event_streams {}",
            self.streams.load(Ordering::Relaxed)
        );
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the event router's per-topic counters.
pub fn render_events(out: &mut String, counts: &[eventgrid::store::TopicCounts]) {
    type Family = (
        &'static str,
        &'static str,
        fn(&eventgrid::store::TopicCounts) -> u64,
    );
    let families: [Family; 5] = [
        (
            "galaxy_events_published_total",
            "Events accepted, by topic.",
            |c| c.published,
        ),
        (
            "galaxy_events_billed_operations_total",
            "Billed operations (each event in 64 KB units), by topic.",
            |c| c.billed_units,
        ),
        (
            "galaxy_events_delivered_total",
            "Deliveries that succeeded, by topic.",
            |c| c.delivered,
        ),
        (
            "galaxy_events_retried_total",
            "Delivery attempts after the first, by topic.",
            |c| c.retried,
        ),
        (
            "galaxy_events_dead_letters",
            "Dead letters kept now, by topic: a re-drive, or the deletion of their subscription or topic, takes them away.",
            |c| c.dead_lettered,
        ),
    ];
    for (name, help, get) in families {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for c in counts {
            let _ = writeln!(out, "{name}{{topic=\"{}\"}} {}", escape(&c.topic), get(c));
        }
    }
}

/// Middleware: counts every answered request under its route template
/// (`/runtime/webhooks/durabletask/instances/{instanceId}`, not the
/// concrete path, so the label set stays small) or `unmatched`.
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    metrics.count_request(method.as_str(), route, response.status().as_u16());
    response
}

/// Watches the update stream: remembers when each instance was created and
/// records the delay until its first turn started.
pub(crate) async fn watch_dispatch(
    mut updates: broadcast::Receiver<Update>,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut created: HashMap<InstanceId, Timestamp> = HashMap::new();
    loop {
        let update = tokio::select! {
            u = updates.recv() => u,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match update {
            Ok(u) if u.runtime_status == RuntimeStatus::Pending && u.history.is_empty() => {
                if created.len() >= MAX_PENDING {
                    let mut by_age: Vec<_> = created.iter().map(|(k, v)| (*v, k.clone())).collect();
                    by_age.sort();
                    for (_, id) in by_age.into_iter().take(MAX_PENDING / 2) {
                        created.remove(&id);
                    }
                }
                created.insert(u.instance_id.clone(), u.at);
            }
            Ok(u) => {
                if let Some(at) = created.remove(&u.instance_id) {
                    let seconds = (u.at - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    metrics.observe_dispatch(seconds);
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Missed updates: the remembered creations may never see
                // their first turn here; start over.
                metrics.note_lag();
                created.clear();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_family_and_escapes_labels() {
        let m = Metrics::default();
        m.count_request("GET", "/a\"b", 200);
        m.count_request("GET", "/a\"b", 200);
        m.observe_dispatch(0.003);
        let text = m.render(&StoreGauges {
            by_status: vec![(RuntimeStatus::Completed, 7)],
            orchestration_queue: 2,
            activity_queue: 3,
        });
        assert!(text.contains(
            "galaxy_http_requests_total{method=\"GET\",route=\"/a\\\"b\",status=\"200\"} 2"
        ));
        assert!(text.contains("galaxy_instances{status=\"Completed\"} 7"));
        assert!(text.contains("galaxy_instances{status=\"Running\"} 0"));
        assert!(text.contains("galaxy_work_items_queued{queue=\"activity\"} 3"));
        assert!(text.contains("galaxy_dispatch_latency_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("galaxy_dispatch_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("galaxy_dispatch_latency_seconds_count 1"));
    }
}
