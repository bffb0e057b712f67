//! The galaxy events outbox: `Galaxy.Created`, `Galaxy.Renamed` and
//! `Galaxy.Deleted` for every change sync applies, written in the same
//! transaction as the change (table `galaxy_outbox` in either store), so
//! that no event goes out without its change and no change without its
//! event, across crashes. galaxy-cloud reads the rows, publishes them to its
//! system topic (deduplicated by event id) and acknowledges them.
//!
//! Which events a push makes is decided here, from the push's planned
//! writes, the same way for both stores.

use serde::Serialize;
use serde_json::{json, Value};

use super::plan::EntityWrite;

/// One event waiting in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboxEvent {
    /// The outbox row (what [`super::Players::ack_outbox`] takes).
    #[serde(skip)]
    pub seq: i64,
    /// A stable id: a `Galaxy.Created` is the galaxy's row key (the id the
    /// workload's own `Galaxy.Created` uses, so the two dedupe); the others
    /// add the version the change took.
    pub id: String,
    /// `Galaxy.Created`, `Galaxy.Renamed` or `Galaxy.Deleted`.
    pub event_type: String,
    /// `/galaxies/{rowKey}`.
    pub subject: String,
    /// The player, row key, version and (for puts) the galaxy's body.
    pub data: Value,
    /// When the change committed (ms since the epoch).
    pub at_ms: i64,
}

/// An event to insert with its change.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NewEvent {
    pub id: String,
    pub event_type: &'static str,
    pub subject: String,
    pub data: String,
}

/// The event of a galaxy created in the cloud for `player_id`.
pub(crate) fn created(player_id: &str, entity_id: &str, version: u64, body: &Value) -> NewEvent {
    make("Galaxy.Created", player_id, entity_id, version, Some(body))
}

/// The events a push's writes make (a touch, which only re-sends the
/// server's copy, makes none).
pub(crate) fn of_writes(player_id: &str, writes: &[EntityWrite]) -> Vec<NewEvent> {
    writes
        .iter()
        .filter_map(|w| match w {
            EntityWrite::Put {
                entity_id,
                version,
                body,
                created,
            } => {
                let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                let kind = if *created {
                    "Galaxy.Created"
                } else {
                    "Galaxy.Renamed"
                };
                Some(make(kind, player_id, entity_id, *version, Some(&body)))
            }
            EntityWrite::Delete { entity_id, version } => {
                Some(make("Galaxy.Deleted", player_id, entity_id, *version, None))
            }
            EntityWrite::Touch { .. } => None,
        })
        .collect()
}

fn make(
    event_type: &'static str,
    player_id: &str,
    entity_id: &str,
    version: u64,
    body: Option<&Value>,
) -> NewEvent {
    let mut data = json!({ "playerId": player_id, "rowKey": entity_id, "version": version });
    if let (Some(Value::Object(fields)), Value::Object(d)) = (body, &mut data) {
        for (k, v) in fields {
            d.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let id = if event_type == "Galaxy.Created" {
        entity_id.to_string()
    } else {
        format!("{entity_id}:{version}")
    };
    NewEvent {
        id,
        event_type,
        subject: format!("/galaxies/{entity_id}"),
        data: data.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_deletes_and_touches() {
        let writes = vec![
            EntityWrite::Put {
                entity_id: "g1".into(),
                version: 7,
                body: r#"{"name":"Andromeda","origin":"laptop"}"#.into(),
                created: true,
            },
            EntityWrite::Put {
                entity_id: "g1".into(),
                version: 8,
                body: r#"{"name":"Andromeda II","origin":"laptop"}"#.into(),
                created: false,
            },
            EntityWrite::Touch {
                entity_id: "g2".into(),
                version: 9,
            },
            EntityWrite::Delete {
                entity_id: "g1".into(),
                version: 10,
            },
        ];
        let events = of_writes("p1", &writes);
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.event_type, e.id.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("Galaxy.Created", "g1"),
                ("Galaxy.Renamed", "g1:8"),
                ("Galaxy.Deleted", "g1:10")
            ]
        );
        let renamed: Value = serde_json::from_str(&events[1].data).unwrap();
        assert_eq!(
            renamed,
            json!({"playerId": "p1", "rowKey": "g1", "version": 8,
                   "name": "Andromeda II", "origin": "laptop"})
        );
        let deleted: Value = serde_json::from_str(&events[2].data).unwrap();
        assert_eq!(
            deleted,
            json!({"playerId": "p1", "rowKey": "g1", "version": 10})
        );
        assert!(events.iter().all(|e| e.subject == "/galaxies/g1"));
    }

    #[test]
    fn a_body_cannot_overwrite_the_envelope_fields() {
        let e = created("p1", "g1", 3, &json!({"playerId": "other", "name": "N"}));
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["playerId"], "p1");
        assert_eq!(data["name"], "N");
    }
}
