//! The JSON shapes on canned values: history caps, locations, bodies.

use super::*;

#[test]
fn history_answers_are_capped_in_events_and_payload_bytes() {
    let item = |result: Value| HistoryItem {
        event_type: "TaskCompleted".into(),
        result: Some(result),
        ..HistoryItem::default()
    };
    let many: Vec<HistoryItem> = (0..MAX_HISTORY_ITEMS + 5).map(|i| item(json!(i))).collect();
    let out = bounded(many, MAX_HISTORY_ITEMS + 5, 10_005);
    assert_eq!(out.len(), MAX_HISTORY_ITEMS + 1);
    assert_eq!(out[MAX_HISTORY_ITEMS].event_type, "Truncated");
    assert!(out[MAX_HISTORY_ITEMS]
        .result
        .as_ref()
        .unwrap()
        .as_str()
        .unwrap()
        .contains("10005"));
    let big = json!("b".repeat(1 << 20));
    let heavy: Vec<HistoryItem> = (0..20).map(|_| item(big.clone())).collect();
    let out = bounded(heavy, 20, 20);
    assert_eq!(out.len(), 20);
    let kept = out
        .iter()
        .filter(|i| i.result.as_ref() == Some(&big))
        .count();
    assert_eq!(kept, 15, "16 MiB of payloads, not 20");
    assert_eq!(out[19].result, Some(durable::elide::marker()));
    // The store read only the first 3 of 50 events: the answer says so.
    let few: Vec<HistoryItem> = (0..2).map(|i| item(json!(i))).collect();
    let out = bounded(few, 3, 50);
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].event_type, "Truncated");
    let note = out[2].result.as_ref().unwrap().as_str().unwrap();
    assert!(note.contains("first 3 of 50"), "{note}");
    assert_eq!(
        bounded(vec![item(json!(1))], 2, 2).len(),
        1,
        "all read: no note"
    );
}

#[test]
fn a_location_never_carries_the_master_key() {
    let uri: axum::http::Uri =
        "/runtime/webhooks/durabletask/instances/i1?showHistory=true&code=MASTER&taskHub=h"
            .parse()
            .unwrap();
    assert_eq!(
        location_of(&uri, Some("fk+1")),
        "/runtime/webhooks/durabletask/instances/i1?showHistory=true&code=fk%2B1&taskHub=h"
    );
    let bare: axum::http::Uri = "/x/i1".parse().unwrap();
    assert_eq!(location_of(&bare, Some("fk")), "/x/i1");
    // However the name is spelled, as long as the key check reads it.
    for spelled in ["%63ode", "co%64e", "%63%6F%64%65"] {
        let uri: axum::http::Uri = format!("/x/i1?{spelled}=MASTER&a=1").parse().unwrap();
        assert_eq!(
            location_of(&uri, Some("fk")),
            "/x/i1?code=fk&a=1",
            "{spelled}"
        );
    }
}

#[test]
fn a_device_location_carries_no_key_at_all() {
    let uri: axum::http::Uri = "/x/i1?code=guess&showInput=false".parse().unwrap();
    assert_eq!(location_of(&uri, None), "/x/i1?showInput=false");
    let only: axum::http::Uri = "/x/i1?code=guess".parse().unwrap();
    assert_eq!(location_of(&only, None), "/x/i1");
}

use durable::{InstanceId, RuntimeStatus};
use serde_json::json;

fn at(ms: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
}

fn ev(id: u64, ms: i64, kind: EventKind) -> HistoryEvent {
    HistoryEvent {
        event_id: id,
        timestamp: at(ms),
        kind,
    }
}

#[test]
fn check_status_uris_are_absolute_encoded_and_carry_the_key() {
    let base = BaseUrl("http://127.0.0.1:7071".into());
    let p = check_status(&base, "my id/1", "k+y");
    let i = "http://127.0.0.1:7071/runtime/webhooks/durabletask/instances/my%20id%2F1";
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({
            "id": "my id/1",
            "statusQueryGetUri": format!("{i}?code=k%2By"),
            "sendEventPostUri": format!("{i}/raiseEvent/{{eventName}}?code=k%2By"),
            "terminatePostUri": format!("{i}/terminate?reason={{text}}&code=k%2By"),
            "purgeHistoryDeleteUri": format!("{i}?code=k%2By"),
            "restartPostUri": format!("{i}/restart?code=k%2By"),
            "suspendPostUri": format!("{i}/suspend?reason={{text}}&code=k%2By"),
            "resumePostUri": format!("{i}/resume?reason={{text}}&code=k%2By"),
            "rewindPostUri": format!("{i}/rewind?reason={{text}}&code=k%2By"),
        })
    );
}

#[test]
fn history_folds_scheduling_into_answers_like_durable_functions() {
    let history = vec![
        ev(0, 0, EventKind::OrchestratorStarted),
        ev(
            1,
            0,
            EventKind::ExecutionStarted {
                name: "Galaxy_Create".into(),
                input: json!(null),
                execution_id: "e".into(),
                parent: None,
            },
        ),
        ev(
            2,
            0,
            EventKind::TaskScheduled {
                task_id: 0,
                name: "Utility_Name".into(),
                input: json!(null),
            },
        ),
        ev(
            3,
            0,
            EventKind::TaskScheduled {
                task_id: 1,
                name: "Utility_Coords".into(),
                input: json!(null),
            },
        ),
        ev(4, 5, EventKind::OrchestratorStarted),
        ev(
            5,
            5,
            EventKind::TaskCompleted {
                task_id: 0,
                result: json!("Andromeda"),
            },
        ),
        ev(
            6,
            5,
            EventKind::ExecutionCompleted {
                output: json!("Galaxy created!"),
            },
        ),
    ];
    let items = serde_json::to_value(history_items(&history, true)).unwrap();
    assert_eq!(
        items,
        json!([
            {"EventType": "ExecutionStarted", "FunctionName": "Galaxy_Create",
             "Timestamp": "2023-11-14T22:13:20.000Z", "Result": null},
            {"EventType": "TaskScheduled", "FunctionName": "Utility_Coords",
             "Timestamp": "2023-11-14T22:13:20.000Z", "Result": null},
            {"EventType": "TaskCompleted", "FunctionName": "Utility_Name",
             "ScheduledTime": "2023-11-14T22:13:20.000Z",
             "Timestamp": "2023-11-14T22:13:20.005Z", "Result": "Andromeda"},
            {"EventType": "ExecutionCompleted", "OrchestrationStatus": "Completed",
             "Timestamp": "2023-11-14T22:13:20.005Z", "Result": "Galaxy created!"},
        ])
    );
    // Without showHistoryOutput no Result appears.
    let items = serde_json::to_value(history_items(&history, false)).unwrap();
    assert!(items
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i.get("Result").is_none()));
}

#[test]
fn a_failed_execution_reads_as_execution_completed_with_status_failed() {
    let f = FailureDetails::new("ActivityFailed", "boom");
    let item = single_item(&ev(0, 0, EventKind::ExecutionFailed { error: f }), false);
    assert_eq!(item.event_type, "ExecutionCompleted");
    assert_eq!(item.orchestration_status.as_deref(), Some("Failed"));
    assert_eq!(item.failure_details.unwrap().message, "boom");
}

#[test]
fn status_body_fields_and_options() {
    let status = InstanceStatus {
        instance_id: InstanceId::new("abc").unwrap(),
        name: "Galaxy_Create".into(),
        execution_id: "e".into(),
        runtime_status: RuntimeStatus::Failed,
        input: json!({"a": 1}),
        output: None,
        custom_status: Some(json!("half")),
        failure: Some(FailureDetails::new("Panic", "oops")),
        created_at: at(0),
        last_updated_at: at(1500),
        parent_instance_id: None,
        history_events: 4,
        history_bytes: 321,
        history: None,
    };
    let body = serde_json::to_value(status_body(
        &status,
        StatusOptions {
            show_input: true,
            show_history_output: false,
        },
    ))
    .unwrap();
    assert_eq!(
        body,
        json!({
            "name": "Galaxy_Create", "instanceId": "abc", "runtimeStatus": "Failed",
            "input": {"a": 1}, "customStatus": "half", "output": "Panic: oops",
            "createdTime": "2023-11-14T22:13:20.000Z",
            "lastUpdatedTime": "2023-11-14T22:13:21.500Z",
            "historyEventCount": 4, "historyBytes": 321,
            "failureDetails": {"kind": "Panic", "message": "oops"},
        })
    );
    let hidden = status_body(
        &status,
        StatusOptions {
            show_input: false,
            show_history_output: false,
        },
    );
    assert_eq!(hidden.input, Value::Null);
}

#[test]
fn hosts_are_checked_before_they_reach_a_uri() {
    assert!(valid_host("localhost:7071"));
    assert!(valid_host("[::1]:80"));
    assert!(!valid_host("evil.com/path"));
    assert!(!valid_host("a b"));
    assert!(!valid_host(""));
}
