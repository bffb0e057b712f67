//! What the update broadcast ([`crate::Engine::subscribe`]) may carry.
//!
//! The broadcast keeps its last `update_capacity` updates for subscribers
//! that are behind, so a subscriber that stops reading pins them all: with
//! megabyte inputs that would be gigabytes. Updates therefore carry
//! payloads (inputs, results, output, custom status) up to
//! [`UPDATE_PAYLOAD_LIMIT`] bytes of JSON in all; a payload past that is
//! replaced by a marker that says where to read it (the instance's status
//! and history, which the store serves in full). With the default
//! capacity (16,384 updates) the broadcast holds at most about 16,384 x
//! (4 KiB + the fixed fields), some 80 MiB. The check stops counting at
//! the limit, so a large value costs no more than a small one to look at.

use serde_json::{json, Value};

use crate::history::{EventKind, HistoryEvent};

/// Largest payload an update carries, in bytes of JSON (approximately:
/// string escapes are not counted).
pub const UPDATE_PAYLOAD_LIMIT: usize = 4096;

/// Whether `v` takes more than `limit` bytes as JSON (string escapes not
/// counted); stops as soon as it knows.
fn larger_than(v: &Value, limit: usize) -> bool {
    fn walk(v: &Value, budget: &mut isize) -> bool {
        *budget -= match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 20,
            Value::String(s) => s.len() as isize + 2,
            Value::Array(items) => {
                *budget -= 2 + items.len() as isize;
                if *budget < 0 {
                    return true;
                }
                return items.iter().any(|i| walk(i, budget));
            }
            Value::Object(fields) => {
                *budget -= 2 + fields.len() as isize;
                for (k, item) in fields {
                    *budget -= k.len() as isize + 3;
                    if *budget < 0 || walk(item, budget) {
                        return true;
                    }
                }
                return *budget < 0;
            }
        };
        *budget < 0
    }
    let mut budget = limit as isize;
    walk(v, &mut budget)
}

/// The marker that replaces a payload too large for an update.
pub fn marker() -> Value {
    json!({
        "$elided": format!(
            "larger than {UPDATE_PAYLOAD_LIMIT} bytes; read the instance's status (showInput) or history (showHistory, showHistoryOutput)"
        )
    })
}

/// How much payload an update may still carry.
pub struct Budget(isize);

impl Default for Budget {
    fn default() -> Self {
        Self(UPDATE_PAYLOAD_LIMIT as isize)
    }
}

impl Budget {
    /// A budget of `bytes` (for answers larger than an update).
    pub fn of(bytes: usize) -> Self {
        Self(bytes as isize)
    }

    /// Takes `v`'s size from the budget; false (and nothing taken) if it
    /// does not fit.
    fn take(&mut self, v: &Value) -> bool {
        if self.0 < 0 || larger_than(v, self.0 as usize) {
            return false;
        }
        self.0 -= approx_size(v) as isize;
        true
    }
}

/// The size `larger_than` counts, for a value known to be small.
fn approx_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.len() + items.iter().map(approx_size).sum::<usize>(),
        Value::Object(fields) => {
            2 + fields.len()
                + fields
                    .iter()
                    .map(|(k, v)| k.len() + 3 + approx_size(v))
                    .sum::<usize>()
        }
    }
}

/// `v` if it fits the update's budget, else the marker.
pub fn value(v: &Value, budget: &mut Budget) -> Value {
    if budget.take(v) {
        v.clone()
    } else {
        marker()
    }
}

/// The payload of an event kind, by reference or by mutable reference
/// (one list of the kinds that carry one).
macro_rules! payload_of {
    ($kind:expr) => {
        match $kind {
            EventKind::ExecutionStarted { input, .. }
            | EventKind::TaskScheduled { input, .. }
            | EventKind::SubOrchestrationCreated { input, .. }
            | EventKind::EventRaised { input, .. }
            | EventKind::ContinuedAsNew { input, .. } => Some(input),
            EventKind::TaskCompleted { result, .. }
            | EventKind::SubOrchestrationCompleted { result, .. } => Some(result),
            EventKind::ExecutionCompleted { output, .. } => Some(output),
            _ => None,
        }
    };
}

fn payload(kind: &EventKind) -> Option<&Value> {
    payload_of!(kind)
}

fn payload_mut(kind: &mut EventKind) -> Option<&mut Value> {
    payload_of!(kind)
}

/// A copy of `history` for an update: payloads past the budget replaced by
/// the marker (an instance's input is never copied; other large payloads
/// are copied once, then dropped for the marker, so nothing large is kept).
pub fn history(history: &[HistoryEvent], budget: &mut Budget) -> Vec<HistoryEvent> {
    history
        .iter()
        .map(|e| match payload(&e.kind) {
            Some(p) if !budget.take(p) => {
                // The input (the usual large payload) is left out of the
                // clone; other kinds are cloned, then their payload replaced.
                let mut kind = match &e.kind {
                    EventKind::ExecutionStarted {
                        name,
                        execution_id,
                        parent,
                        ..
                    } => EventKind::ExecutionStarted {
                        name: name.clone(),
                        input: Value::Null,
                        execution_id: execution_id.clone(),
                        parent: parent.clone(),
                    },
                    other => other.clone(),
                };
                if let Some(slot) = payload_mut(&mut kind) {
                    *slot = marker();
                }
                HistoryEvent {
                    event_id: e.event_id,
                    timestamp: e.timestamp,
                    kind,
                }
            }
            _ => e.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded_without_walking_everything() {
        assert!(!larger_than(&json!({"a": [1, 2, "x"]}), 100));
        assert!(larger_than(&json!("x".repeat(5000)), 4096));
        assert!(!larger_than(&json!("x".repeat(4000)), 4096));
        let wide = Value::Array((0..100_000).map(|i| json!(i)).collect());
        assert!(larger_than(&wide, 4096));
        let deep = json!({"k": {"k": {"k": "y".repeat(10_000)}}});
        assert!(larger_than(&deep, 4096));
    }

    #[test]
    fn large_payloads_become_markers_and_small_ones_stay() {
        let big = json!("z".repeat(1 << 20));
        let events = vec![
            HistoryEvent {
                event_id: 0,
                timestamp: chrono::Utc::now(),
                kind: EventKind::ExecutionStarted {
                    name: "O".into(),
                    input: big.clone(),
                    execution_id: "e".into(),
                    parent: None,
                },
            },
            HistoryEvent {
                event_id: 1,
                timestamp: chrono::Utc::now(),
                kind: EventKind::TaskScheduled {
                    task_id: 0,
                    name: "A".into(),
                    input: json!({"small": true}),
                },
            },
        ];
        let mut budget = Budget::default();
        let out = history(&events, &mut budget);
        assert!(
            matches!(&out[0].kind, EventKind::ExecutionStarted { input, name, .. }
            if *input == marker() && name == "O")
        );
        assert_eq!(out[1], events[1]);
        assert_eq!(value(&big, &mut budget), marker());
        assert_eq!(value(&json!(3), &mut budget), json!(3));
        // The budget is per update: many medium payloads do not all fit.
        let mut budget = Budget::default();
        let medium = json!("m".repeat(1500));
        let kept: Vec<Value> = (0..5).map(|_| value(&medium, &mut budget)).collect();
        assert_eq!(kept.iter().filter(|v| **v == medium).count(), 2);
        assert_eq!(kept[4], marker());
    }
}
