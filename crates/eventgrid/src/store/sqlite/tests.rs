//! The writer's group transaction on a real SQLite file.

use rusqlite::Connection;
use serde_json::json;
use tokio::sync::oneshot;

use super::writer::{write_group, Write};
use super::SqliteRouter;
use crate::event::Event;
use crate::store::{Next, RecordedAttempt, StoreError};

fn event(id: &str) -> Event {
    let json = json!({"id": id, "subject": "/s", "eventType": "T", "data": {}});
    Event {
        id: id.to_string(),
        size: json.to_string().len(),
        json,
    }
}

fn publish(topic: &str, id: &str) -> (Write, oneshot::Receiver<Result<usize, StoreError>>) {
    let (reply, answer) = oneshot::channel();
    let op = Write::Publish {
        topic: topic.to_string(),
        events: vec![event(id)],
        now_ms: 1,
        reply,
    };
    (op, answer)
}

#[test]
fn a_failing_write_is_answered_alone_and_the_others_in_its_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteRouter::open(&path).unwrap());
    let mut conn = Connection::open(&path).unwrap();
    // Attempts can no longer be recorded: a record fails inside the group.
    conn.execute_batch("DROP TABLE attempts").unwrap();

    let (first, first_answer) = publish("t", "e1");
    let (reply, record_answer) = oneshot::channel();
    let record = Write::Record {
        attempts: vec![RecordedAttempt {
            seq: 1,
            topic: "t".into(),
            subscription: "s".into(),
            n: 1,
            at_ms: 2,
            outcome: "Succeeded".into(),
            status: Some(200),
            next: Next::Delivered,
        }],
        reply,
    };
    let (last, last_answer) = publish("t", "e2");
    write_group(&mut conn, vec![first, record, last]);

    let answer = |mut rx: oneshot::Receiver<Result<usize, StoreError>>| {
        rx.try_recv().expect("answered when the group is done")
    };
    assert_eq!(answer(first_answer).unwrap(), 0);
    assert_eq!(answer(last_answer).unwrap(), 0);
    let mut record_answer = record_answer;
    let failed = record_answer.try_recv().expect("answered").unwrap_err();
    assert!(failed.to_string().contains("attempts"), "{failed}");
    let stored: Vec<String> = conn
        .prepare("SELECT event_id FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, ["e1", "e2"]);
}
