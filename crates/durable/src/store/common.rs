//! What both stores encode and decode the same way, written once: payloads
//! as JSON text, stored statuses, terminal statuses as an SQL list, and the
//! listing's continuation tokens.

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

#[cfg(test)]
mod tests {
    use super::*;

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
