//! The JSON shapes of the contract (check-status payload, instance status,
//! history events, table entities) and the pure functions that build them
//! from engine and table types. No I/O here, so the shapes are tested as
//! data.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::SecondsFormat;
use durable::{EventKind, FailureDetails, HistoryEvent, InstanceStatus, InstanceUpdate, Timestamp};
use galaxy::Galaxy;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::AppError;
use crate::state::AppState;

/// Base path of the management API.
pub const MANAGEMENT: &str = "/runtime/webhooks/durabletask";

/// ISO 8601 UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub fn iso(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so an
/// instance id or key can go into a path segment or query value as is.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of the request, for absolute URIs: the `Host`
/// header (else the server's own address) and `X-Forwarded-Proto` when a
/// proxy in front terminates TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(pub String);

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let host = match parts.headers.get(header::HOST) {
            Some(v) => v.to_str().ok().map(str::to_string),
            None => parts
                .uri
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| Some(state.default_host.to_string())),
        };
        let host = host.filter(|h| valid_host(h)).ok_or_else(|| {
            AppError::bad_request("InvalidHost", "the Host header is not a valid host[:port]")
        })?;
        let https = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        let scheme = if https { "https" } else { "http" };
        Ok(BaseUrl(format!("{scheme}://{host}")))
    }
}

/// The check-status payload: where to follow an instance and how to
/// control it. Every URI is absolute and carries the system key (see
/// [`crate::keys`]: it opens these routes and no others).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// The instance id.
    pub id: String,
    /// GET: the instance status.
    pub status_query_get_uri: String,
    /// POST: raise an event (replace `{eventName}`).
    pub send_event_post_uri: String,
    /// POST: terminate (replace `{text}` with the reason).
    pub terminate_post_uri: String,
    /// DELETE: purge the instance's history.
    pub purge_history_delete_uri: String,
    /// POST: restart the instance.
    pub restart_post_uri: String,
    /// POST: suspend (replace `{text}` with the reason).
    pub suspend_post_uri: String,
    /// POST: resume (replace `{text}` with the reason).
    pub resume_post_uri: String,
    /// POST: rewind a Failed instance (replace `{text}` with the reason);
    /// the Durable Functions client libraries read it from the payload.
    pub rewind_post_uri: String,
}

/// The path and query of a status request as its 202 `Location`: the same
/// URL, except that a `code` it carried becomes the system key (a
/// caller who used the master or function key must not see it handed on in a header
/// that proxies log and clients follow), or is left out where there is no
/// key to hand on (`None`: a player's device, which authenticates with its
/// own token and must never see the operator's key).
pub fn location_of(uri: &axum::http::Uri, key: Option<&str>) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .filter_map(|pair| {
            // The name as the key check reads it (decoded: `%63ode` is
            // `code` there too).
            let name = form_urlencoded::parse(pair.as_bytes())
                .next()
                .map(|(n, _)| n);
            if name.as_deref() == Some("code") {
                key.map(|k| format!("code={}", encode(k)))
            } else {
                Some(pair.to_string())
            }
        })
        .collect();
    if query.is_empty() {
        return path.to_string();
    }
    format!("{path}?{}", query.join("&"))
}

/// The absolute URL of an instance's status.
pub fn instance_url(base: &BaseUrl, id: &str) -> String {
    format!("{}{MANAGEMENT}/instances/{}", base.0, encode(id))
}

/// Builds the check-status payload for `id`.
pub fn check_status(base: &BaseUrl, id: &str, key: &str) -> CheckStatus {
    let instance = instance_url(base, id);
    let code = format!("code={}", encode(key));
    CheckStatus {
        id: id.to_string(),
        status_query_get_uri: format!("{instance}?{code}"),
        send_event_post_uri: format!("{instance}/raiseEvent/{{eventName}}?{code}"),
        terminate_post_uri: format!("{instance}/terminate?reason={{text}}&{code}"),
        purge_history_delete_uri: format!("{instance}?{code}"),
        restart_post_uri: format!("{instance}/restart?{code}"),
        suspend_post_uri: format!("{instance}/suspend?reason={{text}}&{code}"),
        resume_post_uri: format!("{instance}/resume?reason={{text}}&{code}"),
        rewind_post_uri: format!("{instance}/rewind?reason={{text}}&{code}"),
    }
}

/// The check-status payload for a player's device: no key in any URI (the
/// device sends its token as a header); of them, only the status URI (and
/// its `/stream`) opens to a device token.
pub fn check_status_for_device(base: &BaseUrl, id: &str) -> CheckStatus {
    let instance = instance_url(base, id);
    CheckStatus {
        id: id.to_string(),
        status_query_get_uri: instance.clone(),
        send_event_post_uri: format!("{instance}/raiseEvent/{{eventName}}"),
        terminate_post_uri: format!("{instance}/terminate?reason={{text}}"),
        purge_history_delete_uri: instance.clone(),
        restart_post_uri: format!("{instance}/restart"),
        suspend_post_uri: format!("{instance}/suspend?reason={{text}}"),
        resume_post_uri: format!("{instance}/resume?reason={{text}}"),
        rewind_post_uri: format!("{instance}/rewind?reason={{text}}"),
    }
}

/// Why an instance failed (extension: Durable Functions only gives the
/// message in `output`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Failure {
    /// Stable kind, e.g. `ActivityFailed`, `Panic`, `NonDeterminism`.
    pub kind: String,
    /// What happened.
    pub message: String,
}

impl From<&FailureDetails> for Failure {
    fn from(f: &FailureDetails) -> Self {
        Self {
            kind: f.kind.clone(),
            message: f.message.clone(),
        }
    }
}

/// One history event as Durable Functions shows it. Fields that do not
/// apply to an event type are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryItem {
    /// `ExecutionStarted`, `TaskCompleted`, `TaskFailed`, `TimerFired`,
    /// `EventRaised`, `ExecutionCompleted`, ...
    pub event_type: String,
    /// Orchestration, activity or sub-orchestration name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_name: Option<String>,
    /// When the event was recorded.
    pub timestamp: String,
    /// When the task this event answers was scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    /// When a timer fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<String>,
    /// Result or payload (only with `showHistoryOutput=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Event name of `EventRaised`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Sub-orchestration instance id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Final status, on `ExecutionCompleted` and `ExecutionTerminated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestration_status: Option<String>,
    /// Reason given to terminate, suspend, resume or rewind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why a task or the execution failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<Failure>,
}

/// What a scheduled task was, to annotate its answer.
struct Scheduled {
    name: String,
    at: Timestamp,
}

/// Converts a history the way Durable Functions shows it: turn markers
/// (`OrchestratorStarted`) are left out and a task's `*Scheduled` /
/// `*Created` event is folded into its answer (which gains `FunctionName`
/// and `ScheduledTime`); unanswered ones stay visible.
pub fn history_items(events: &[HistoryEvent], show_output: bool) -> Vec<HistoryItem> {
    let mut scheduled: HashMap<u64, Scheduled> = HashMap::new();
    let mut answered = std::collections::HashSet::new();
    for e in events {
        match &e.kind {
            EventKind::TaskScheduled { task_id, name, .. }
            | EventKind::SubOrchestrationCreated { task_id, name, .. } => {
                scheduled.insert(
                    *task_id,
                    Scheduled {
                        name: name.clone(),
                        at: e.timestamp,
                    },
                );
            }
            k if !k.is_action_record() => {
                if let Some(id) = k.task_id() {
                    answered.insert(id);
                }
            }
            _ => {}
        }
    }
    events
        .iter()
        .filter(|e| match &e.kind {
            EventKind::OrchestratorStarted => false,
            EventKind::TaskScheduled { task_id, .. }
            | EventKind::SubOrchestrationCreated { task_id, .. } => !answered.contains(task_id),
            _ => true,
        })
        .map(|e| history_item(e, show_output, |task| scheduled.get(&task)))
        .collect()
}

/// Converts one event on its own (for the live stream, where an answer's
/// scheduling event came in an earlier update).
pub fn single_item(e: &HistoryEvent, show_output: bool) -> HistoryItem {
    history_item(e, show_output, |_| None)
}

fn history_item<'a>(
    e: &HistoryEvent,
    show_output: bool,
    scheduled: impl Fn(u64) -> Option<&'a Scheduled>,
) -> HistoryItem {
    let out = |v: &Value| show_output.then(|| v.clone());
    let mut item = HistoryItem {
        event_type: e.kind.type_name().to_string(),
        timestamp: iso(e.timestamp),
        ..HistoryItem::default()
    };
    let answer = |item: &mut HistoryItem, task: u64| {
        if let Some(s) = scheduled(task) {
            item.function_name = Some(s.name.clone());
            item.scheduled_time = Some(iso(s.at));
        }
    };
    match &e.kind {
        EventKind::ExecutionStarted { name, input, .. } => {
            item.function_name = Some(name.clone());
            item.result = out(input);
        }
        EventKind::OrchestratorStarted => {}
        EventKind::TaskScheduled { name, input, .. } => {
            item.function_name = Some(name.clone());
            item.result = out(input);
        }
        EventKind::TaskCompleted { task_id, result } => {
            answer(&mut item, *task_id);
            item.result = out(result);
        }
        EventKind::TaskFailed { task_id, error }
        | EventKind::SubOrchestrationFailed { task_id, error } => {
            answer(&mut item, *task_id);
            item.failure_details = Some(error.into());
        }
        EventKind::TimerCreated { fire_at, .. } | EventKind::TimerFired { fire_at, .. } => {
            item.fire_at = Some(iso(*fire_at));
        }
        EventKind::SubOrchestrationCreated {
            name,
            instance_id,
            input,
            ..
        } => {
            item.function_name = Some(name.clone());
            item.instance_id = Some(instance_id.to_string());
            item.result = out(input);
        }
        EventKind::SubOrchestrationCompleted { task_id, result } => {
            answer(&mut item, *task_id);
            item.result = out(result);
        }
        EventKind::EventRaised { name, input } => {
            item.name = Some(name.clone());
            item.result = out(input);
        }
        EventKind::Suspended { reason }
        | EventKind::Resumed { reason }
        | EventKind::Rewound { reason } => item.reason = reason.clone(),
        EventKind::Terminated { reason } => {
            item.reason = reason.clone();
            item.orchestration_status = Some("Terminated".into());
        }
        // Durable Functions reports every end of an execution as
        // ExecutionCompleted with the final status.
        EventKind::ContinuedAsNew { input } => {
            item.event_type = "ExecutionCompleted".into();
            item.orchestration_status = Some("ContinuedAsNew".into());
            item.result = out(input);
        }
        EventKind::ExecutionCompleted { output } => {
            item.orchestration_status = Some("Completed".into());
            item.result = out(output);
        }
        EventKind::ExecutionFailed { error } => {
            item.event_type = "ExecutionCompleted".into();
            item.orchestration_status = Some("Failed".into());
            item.failure_details = Some(error.into());
            item.result = show_output.then(|| Value::String(error.to_string()));
        }
    }
    item
}

/// An instance's status as the contract shows it, plus history size
/// (`historyEventCount`, `historyBytes`) and `failureDetails` as extensions.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusBody {
    /// Orchestration name.
    pub name: String,
    /// Instance id.
    pub instance_id: String,
    /// Pending, Running, Completed, ContinuedAsNew, Failed, Canceled,
    /// Terminated or Suspended.
    pub runtime_status: String,
    /// Input of the current execution (`null` with `showInput=false`).
    pub input: Value,
    /// Last custom status set by the orchestrator.
    pub custom_status: Value,
    /// Output when Completed; the reason when Terminated; the error
    /// message when Failed.
    pub output: Value,
    /// ISO 8601 UTC.
    pub created_time: String,
    /// ISO 8601 UTC.
    pub last_updated_time: String,
    /// History events of the current execution, with `showHistory=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_events: Option<Vec<HistoryItem>>,
    /// Extension: number of history events of the current execution.
    pub history_event_count: u64,
    /// Extension: serialized size of those events in bytes.
    pub history_bytes: u64,
    /// Extension: why it failed, when Failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<Failure>,
}

/// What to include in a status body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusOptions {
    /// Include the input.
    pub show_input: bool,
    /// Include results in history events.
    pub show_history_output: bool,
}

/// Builds the status body. History is included when `status.history` holds it.
pub fn status_body(status: &InstanceStatus, options: StatusOptions) -> StatusBody {
    let output = match (&status.output, &status.failure) {
        (Some(v), _) => v.clone(),
        (None, Some(f)) => Value::String(f.to_string()),
        (None, None) => Value::Null,
    };
    StatusBody {
        name: status.name.clone(),
        instance_id: status.instance_id.to_string(),
        runtime_status: status.runtime_status.to_string(),
        input: if options.show_input {
            status.input.clone()
        } else {
            Value::Null
        },
        custom_status: status.custom_status.clone().unwrap_or(Value::Null),
        output,
        created_time: iso(status.created_at),
        last_updated_time: iso(status.last_updated_at),
        history_events: status.history.as_ref().map(|h| {
            bounded(
                history_items(h, options.show_history_output),
                h.len(),
                status.history_events,
            )
        }),
        history_event_count: status.history_events,
        history_bytes: status.history_bytes,
        failure_details: status.failure.as_ref().map(Failure::from),
    }
}

/// Most history events one status answer carries.
pub const MAX_HISTORY_ITEMS: usize = 10_000;
/// Most payload bytes (inputs, results) one status answer's history
/// carries; later payloads come as `$elided` markers.
pub const MAX_HISTORY_PAYLOAD: usize = 16 << 20;

/// What a status request reads of the history: the first
/// [`MAX_HISTORY_ITEMS`] events, and no stored turn after the one that
/// takes them past [`MAX_HISTORY_PAYLOAD`] bytes of stored JSON. This is
/// what bounds the memory one status request takes, whatever the
/// instance's history holds.
pub const HISTORY_CAP: durable::store::HistoryCap = durable::store::HistoryCap {
    max_events: MAX_HISTORY_ITEMS,
    max_bytes: MAX_HISTORY_PAYLOAD,
};

/// A history answer within [`MAX_HISTORY_ITEMS`] and
/// [`MAX_HISTORY_PAYLOAD`]: the first events, and a last item of type
/// `Truncated` saying how many were left out, when the `read` events
/// (the store's [`HISTORY_CAP`]) or the items are fewer than the
/// instance's `total`.
fn bounded(mut items: Vec<HistoryItem>, read: usize, total: u64) -> Vec<HistoryItem> {
    let shown = read.min(MAX_HISTORY_ITEMS);
    let cut = items.len() > MAX_HISTORY_ITEMS || (shown as u64) < total;
    items.truncate(MAX_HISTORY_ITEMS);
    let mut budget = durable::elide::Budget::of(MAX_HISTORY_PAYLOAD);
    for item in &mut items {
        if let Some(v) = item.result.as_mut() {
            *v = durable::elide::value(v, &mut budget);
        }
    }
    if cut {
        items.push(HistoryItem {
            event_type: "Truncated".into(),
            result: Some(Value::String(format!(
                "the first {shown} of {} history events; one answer carries at most {MAX_HISTORY_ITEMS} events and {} MiB of history",
                total.max(shown as u64),
                MAX_HISTORY_PAYLOAD >> 20
            ))),
            ..HistoryItem::default()
        });
    }
    items
}

/// One live update as the event streams send it (`event: update`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateBody {
    /// Instance id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Status after the change.
    pub runtime_status: String,
    /// Output once finished.
    pub output: Value,
    /// Custom status.
    pub custom_status: Value,
    /// When Failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<Failure>,
    /// When the change happened (ISO 8601 UTC).
    pub last_updated_time: String,
    /// The history events the change added, in order (not folded: a
    /// task's answer arrives in a later update than its scheduling).
    pub history_events: Vec<HistoryItem>,
}

/// Builds a live update body.
pub fn update_body(u: &InstanceUpdate, show_output: bool) -> UpdateBody {
    UpdateBody {
        instance_id: u.instance_id.to_string(),
        name: u.name.clone(),
        runtime_status: u.runtime_status.to_string(),
        output: u
            .output
            .clone()
            .or_else(|| u.failure.as_ref().map(|f| Value::String(f.to_string())))
            .unwrap_or(Value::Null),
        custom_status: u.custom_status.clone().unwrap_or(Value::Null),
        failure_details: u.failure.as_ref().map(Failure::from),
        last_updated_time: iso(u.at),
        history_events: u
            .history
            .iter()
            .filter(|e| !matches!(e.kind, EventKind::OrchestratorStarted))
            .map(|e| single_item(e, show_output))
            .collect(),
    }
}

/// A galaxy as a table entity (Azure Table Storage JSON, no metadata).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct GalaxyEntity {
    /// The entity's ETag, as in Table Storage's JSON.
    #[serde(rename = "odata.etag")]
    pub etag: String,
    /// Partition key.
    #[serde(rename = "PartitionKey")]
    pub partition_key: String,
    /// Row key.
    #[serde(rename = "RowKey")]
    pub row_key: String,
    /// When the row was written (ISO 8601 UTC).
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    /// Galaxy name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Coordinate, left to right.
    #[serde(rename = "X")]
    pub x: i32,
    /// Coordinate, bottom to top.
    #[serde(rename = "Y")]
    pub y: i32,
    /// Coordinate, depth.
    #[serde(rename = "Z")]
    pub z: i32,
    /// The orchestration instance that created it.
    #[serde(rename = "InstanceId")]
    pub instance_id: String,
}

/// A page of galaxies (`{"value":[...]}` as in Table Storage).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct GalaxyList {
    /// The entities of this page, in key order.
    pub value: Vec<GalaxyEntity>,
}

/// The ETag of a row: rows are written once and never change, so their
/// timestamp identifies the version, as in Table Storage.
pub fn etag(g: &Galaxy) -> String {
    format!(
        "W/\"datetime'{}'\"",
        encode(&g.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true))
    )
}

/// Builds a table entity.
pub fn entity(g: &Galaxy) -> GalaxyEntity {
    GalaxyEntity {
        etag: etag(g),
        partition_key: g.partition_key.clone(),
        row_key: g.row_key.clone(),
        timestamp: iso(g.timestamp),
        name: g.name.clone(),
        x: g.coords.x,
        y: g.coords.y,
        z: g.coords.z,
        instance_id: g.instance_id.clone(),
    }
}

#[cfg(test)]
mod tests;
