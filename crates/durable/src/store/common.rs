//! What both stores encode and decode the same way, written once: payloads
//! as JSON text, stored statuses, terminal statuses as an SQL list, the
//! listing's continuation tokens, and a status read's history cap.

use crate::history::HistoryEvent;
use crate::types::{InstanceId, RuntimeStatus};

use super::StoreError;

/// A payload as the JSON text both stores keep.
pub(crate) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("values built from JSON serialize")
}

/// A stored JSON text back; unreadable text is an incompatible store.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Incompatible(format!("unreadable stored value: {e}")))
}

/// A stored status name back.
pub(crate) fn parse_status(s: &str) -> Result<RuntimeStatus, StoreError> {
    RuntimeStatus::parse(s).ok_or_else(|| StoreError::Incompatible(format!("unknown status {s}")))
}

/// `'Completed','Failed',...`: the terminal statuses as an SQL list.
pub(crate) fn terminal_list() -> String {
    RuntimeStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A listing's continuation token: where the next page starts (newest
/// first, by creation time then id). The engine seals it with a MAC before
/// it leaves the process.
pub(crate) fn encode_token(created_ms: i64, id: &InstanceId) -> String {
    format!("{created_ms}:{id}")
}

/// [`encode_token`] back; `None` for anything else.
pub(crate) fn decode_token(token: &str) -> Option<(i64, String)> {
    let (ms, id) = token.split_once(':')?;
    Some((ms.parse().ok()?, id.to_string()))
}

/// What a status read returns beyond the status columns (see
/// [`super::Store::read_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRead {
    /// Read the input (else it is `null`).
    pub input: bool,
    /// Read the history, up to this cap.
    pub history: Option<HistoryCap>,
}

/// The most history one status read holds: the first `max_events` events,
/// and no stored turn after the one that takes the events' stored JSON
/// past `max_bytes` (a store keeps a turn's events together, so one turn
/// may take it past by that turn's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryCap {
    /// Most events.
    pub max_events: usize,
    /// Most bytes of stored history JSON, give or take the last turn.
    pub max_bytes: usize,
}

impl HistoryCap {
    /// No cap: the whole history.
    pub const ALL: Self = Self {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };

    /// The bound on a stored turn's first event id that a query can use:
    /// a turn starting at or past `max_events` holds no event within the
    /// cap, so the database need not read or send it.
    pub(crate) fn first_event_limit(&self) -> i64 {
        i64::try_from(self.max_events).unwrap_or(i64::MAX)
    }
}

/// History read a stored turn at a time until the cap is reached.
pub(crate) struct CappedHistory {
    cap: HistoryCap,
    bytes: usize,
    pub(crate) events: Vec<HistoryEvent>,
}

impl CappedHistory {
    pub(crate) fn new(cap: HistoryCap) -> Self {
        Self {
            cap,
            bytes: 0,
            events: Vec::new(),
        }
    }

    /// Whether another stored turn should be read.
    pub(crate) fn wants_more(&self) -> bool {
        self.events.len() < self.cap.max_events && self.bytes < self.cap.max_bytes
    }

    /// Adds one stored turn (its JSON array of events).
    pub(crate) fn take(&mut self, stored: &str) -> Result<(), StoreError> {
        self.bytes += stored.len();
        self.events.extend(parse::<Vec<HistoryEvent>>(stored)?);
        self.events.truncate(self.cap.max_events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventKind;

    fn turn(first: u64, n: u64) -> String {
        let events: Vec<HistoryEvent> = (first..first + n)
            .map(|event_id| HistoryEvent {
                event_id,
                timestamp: crate::types::now(),
                kind: EventKind::OrchestratorStarted,
            })
            .collect();
        json(&events)
    }

    #[test]
    fn a_capped_history_stops_at_its_event_count_or_after_the_turn_past_its_bytes() {
        let mut by_count = CappedHistory::new(HistoryCap {
            max_events: 5,
            max_bytes: usize::MAX,
        });
        let mut first = 0;
        while by_count.wants_more() {
            by_count.take(&turn(first, 3)).unwrap();
            first += 3;
        }
        let ids: Vec<u64> = by_count.events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4], "the first five, in order");

        let one = turn(0, 3).len();
        let mut by_bytes = CappedHistory::new(HistoryCap {
            max_events: usize::MAX,
            max_bytes: one + 1,
        });
        let mut turns = 0;
        while by_bytes.wants_more() {
            by_bytes.take(&turn(turns * 3, 3)).unwrap();
            turns += 1;
        }
        assert_eq!(turns, 2, "the turn that went past the bytes is the last");
        assert_eq!(by_bytes.events.len(), 6);
        assert!(CappedHistory::new(HistoryCap {
            max_events: 1,
            max_bytes: 1
        })
        .take("not json")
        .is_err());
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let id = InstanceId::new("a:b").unwrap();
        let t = encode_token(1_700_000_000_123, &id);
        assert_eq!(decode_token(&t), Some((1_700_000_000_123, "a:b".into())));
        assert_eq!(decode_token("no-colon"), None);
        assert_eq!(decode_token("x:id"), None);
    }

    #[test]
    fn statuses_and_the_terminal_list() {
        for s in RuntimeStatus::ALL {
            assert_eq!(parse_status(s.as_str()).unwrap(), s);
        }
        assert!(matches!(
            parse_status("Sleeping"),
            Err(StoreError::Incompatible(_))
        ));
        let list = terminal_list();
        assert!(
            list.contains("'Completed'") && list.contains("'Failed'"),
            "{list}"
        );
        assert!(!list.contains("'Running'"), "{list}");
    }

    #[test]
    fn payloads_round_trip_and_unreadable_ones_are_incompatible() {
        let v = serde_json::json!({"a": [1, "x"]});
        assert_eq!(parse::<serde_json::Value>(&json(&v)).unwrap(), v);
        assert!(matches!(
            parse::<serde_json::Value>("{not json"),
            Err(StoreError::Incompatible(_))
        ));
    }
}
