//! Identifiers, timestamps and the instance status model shared by the engine,
//! the stores and every adapter.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::history::HistoryEvent;

/// A UTC point in time. Stored as milliseconds since the Unix epoch so that
/// every store orders and compares times the same way.
pub type Timestamp = DateTime<Utc>;

/// The current wall-clock time truncated to whole milliseconds, the precision
/// every store keeps. Truncating here means a value read back from a store is
/// equal to the one written, which replay relies on.
pub fn now() -> Timestamp {
    from_millis(Utc::now().timestamp_millis())
}

/// A UUIDv7 from the clock and the thread's random generator (seeded once
/// from the OS). `Uuid::now_v7` asks the OS for random bytes on every call:
/// two system calls per started instance.
pub(crate) fn new_uuid_v7() -> uuid::Uuid {
    let ms = Utc::now().timestamp_millis().max(0) as u64;
    uuid::Builder::from_unix_timestamp_millis(ms, &rand::random::<[u8; 10]>()).into_uuid()
}

/// Converts stored milliseconds back into a [`Timestamp`].
pub fn from_millis(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_that_urls_would_change_are_refused() {
        for bad in ["", ".", "..", "a/b", "a?b", "a#b", "a\\b", "a\nb"] {
            assert!(InstanceId::new(bad).is_err(), "{bad:?}");
        }
        for good in ["...", ".a", "a.", "..a", "galaxy-1", "eg:t:s:e1"] {
            assert!(InstanceId::new(good).is_ok(), "{good:?}");
        }
        assert!(InstanceId::new("x".repeat(256)).is_ok());
        assert!(InstanceId::new("x".repeat(257)).is_err());
    }

    #[test]
    fn generated_ids_are_distinct_uuid_v7_stamped_now() {
        let before = Utc::now().timestamp_millis() as u64;
        let ids: Vec<InstanceId> = (0..1000).map(|_| InstanceId::generate()).collect();
        let after = Utc::now().timestamp_millis() as u64;
        for id in &ids {
            assert_eq!(id.as_str().len(), 32);
            let u = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(u.get_version_num(), 7);
            let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..=after).contains(&ms),
                "{ms} not in {before}..={after}"
            );
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn timestamps_serialize_exactly_as_chrono_does() {
        let mut samples: Vec<Timestamp> = vec![
            from_millis(0),
            from_millis(1_795_539_177_000),
            from_millis(1_795_539_177_007),
            from_millis(1_795_539_177_120),
            from_millis(253_402_300_799_999), // 9999-12-31T23:59:59.999
            from_millis(-62_167_219_200_000), // 0000-01-01
            from_millis(-62_167_219_200_001), // before year 0: chrono's way
            DateTime::from_timestamp(1_795_539_177, 123_456_789).unwrap(),
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(from_millis((x % 4_102_444_800_000) as i64));
        }
        for t in samples {
            #[derive(Serialize, Deserialize)]
            struct Ours(#[serde(with = "ts")] Timestamp);
            #[derive(Serialize)]
            struct Opt(#[serde(with = "ts::option")] Option<Timestamp>);
            let ours = serde_json::to_string(&Ours(t)).unwrap();
            assert_eq!(ours, serde_json::to_string(&t).unwrap());
            assert_eq!(serde_json::from_str::<Ours>(&ours).unwrap().0, t);
            assert_eq!(serde_json::to_string(&Opt(Some(t))).unwrap(), ours);
        }
        #[derive(Serialize)]
        struct Opt(#[serde(with = "ts::option")] Option<Timestamp>);
        assert_eq!(serde_json::to_string(&Opt(None)).unwrap(), "null");
    }
}

/// Serde for the timestamps of history events and messages: the same RFC
/// 3339 text as chrono's own `Serialize` (`2026-11-24T17:10:07.123Z`, no
/// fraction on a whole second), written digit by digit. chrono goes through
/// `fmt` one character at a time, which was about half the cost of
/// serializing a turn's history. Values the engine does not make (below
/// millisecond precision, years outside 0..=9999) go through chrono.
pub(crate) mod ts {
    use chrono::{Datelike, Timelike};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Timestamp;

    /// Writes `t` into `buf`; `None` when chrono must do it.
    pub(crate) fn format(t: &Timestamp, buf: &mut [u8; 24]) -> Option<usize> {
        let nanos = t.timestamp_subsec_nanos();
        let year = t.year();
        if !nanos.is_multiple_of(1_000_000) || nanos >= 1_000_000_000 || !(0..=9999).contains(&year)
        {
            return None;
        }
        fn put(buf: &mut [u8; 24], at: usize, value: u32, width: usize) {
            let mut v = value;
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        put(buf, 0, year as u32, 4);
        put(buf, 5, t.month(), 2);
        put(buf, 8, t.day(), 2);
        put(buf, 11, t.hour(), 2);
        put(buf, 14, t.minute(), 2);
        put(buf, 17, t.second(), 2);
        for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
            buf[at] = c;
        }
        let mut len = 19;
        if nanos != 0 {
            buf[19] = b'.';
            put(buf, 20, nanos / 1_000_000, 3);
            len = 23;
        }
        buf[len] = b'Z';
        Some(len + 1)
    }

    pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        match format(t, &mut buf) {
            // Only ASCII digits and separators were written.
            Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default()),
            None => t.serialize(s),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        Timestamp::deserialize(d)
    }

    /// The same for optional timestamps.
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::Timestamp;

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<Timestamp>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&Wrapped(t)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Timestamp>, D::Error> {
            Option::<Timestamp>::deserialize(d)
        }

        struct Wrapped<'a>(&'a Timestamp);

        impl serde::Serialize for Wrapped<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                super::serialize(self.0, s)
            }
        }
    }
}

/// The id of one instance, chosen by the caller or generated (UUIDv7, so ids
/// sort by creation time).
///
/// Ids end up in URLs and file-free keys, so the rules are strict: 1 to 256
/// characters, no control characters and none of `/ \ # ?`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// Validates a caller-chosen id.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        // `.` and `..` would be dot segments in the URLs made of the id,
        // which every URL parser removes (a status link would name the
        // list of instances).
        let bad = id.is_empty()
            || id == "."
            || id == ".."
            || id.chars().count() > 256
            || id
                .chars()
                .any(|c| c.is_control() || matches!(c, '/' | '\\' | '#' | '?'));
        if bad {
            return Err(Error::InvalidInstanceId(id));
        }
        Ok(Self(id))
    }

    /// A fresh id: a UUIDv7 in simple (32 hex digits) form, like the ids
    /// Durable Functions hands out.
    pub fn generate() -> Self {
        Self(new_uuid_v7().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a string read back from a store, which only ever holds ids
    /// validated on the way in.
    pub(crate) fn from_stored(id: String) -> Self {
        Self(id)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an instance is in its life. The names and their meaning follow the
/// Durable Functions `runtimeStatus` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Created; its first turn has not run yet.
    Pending,
    /// At least one turn ran and it has not finished.
    Running,
    /// The orchestrator returned a value.
    Completed,
    /// The orchestrator called continue-as-new; a new execution is queued.
    ContinuedAsNew,
    /// The orchestrator returned an error, panicked, or the engine failed it.
    Failed,
    /// Reserved for compatibility with Durable Functions; never set today.
    Canceled,
    /// Stopped by a terminate request.
    Terminated,
    /// Paused by a suspend request; messages wait until it is resumed.
    Suspended,
}

impl RuntimeStatus {
    /// Every status, in declaration order.
    pub const ALL: [RuntimeStatus; 8] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::ContinuedAsNew,
        Self::Failed,
        Self::Canceled,
        Self::Terminated,
        Self::Suspended,
    ];

    /// A terminal instance will never run another turn (rewind aside).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Canceled | Self::Terminated
        )
    }

    /// The name used on the wire and in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::ContinuedAsNew => "ContinuedAsNew",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
            Self::Terminated => "Terminated",
            Self::Suspended => "Suspended",
        }
    }

    /// Parses a wire name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something failed: a machine-readable kind and a human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetails {
    /// A stable kind such as `ActivityFailed`, `Panic`, `NonDeterminism`,
    /// `UnknownActivity`, `InvalidInput`, `HistoryLimit` or `Poison`.
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}

impl FailureDetails {
    /// Builds failure details.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// A snapshot of one instance as a store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance.
    pub instance_id: InstanceId,
    /// The orchestration's registered name.
    pub name: String,
    /// Changes with each new execution (continue-as-new, restart).
    pub execution_id: String,
    /// Where the instance is in its life.
    pub runtime_status: RuntimeStatus,
    /// The input of the current execution.
    pub input: serde_json::Value,
    /// The orchestrator's return value once Completed; the reason once Terminated.
    pub output: Option<serde_json::Value>,
    /// Whatever the orchestrator last passed to `set_custom_status`.
    pub custom_status: Option<serde_json::Value>,
    /// Set when Failed.
    pub failure: Option<FailureDetails>,
    /// When the instance was created.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub last_updated_at: Timestamp,
    /// The parent instance, for sub-orchestrations.
    pub parent_instance_id: Option<InstanceId>,
    /// Number of history events of the current execution.
    pub history_events: u64,
    /// Serialized size of those history events, in bytes.
    pub history_bytes: u64,
    /// The history itself, when asked for.
    pub history: Option<Vec<HistoryEvent>>,
}

/// Which instances a listing or a purge selects. Empty fields select all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceFilter {
    /// Only these statuses (any of them).
    pub statuses: Vec<RuntimeStatus>,
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created at or before.
    pub created_to: Option<Timestamp>,
    /// Instance id starts with.
    pub instance_id_prefix: Option<String>,
}

impl InstanceFilter {
    /// Whether no instance can match: the prefix holds a NUL, which no
    /// instance id has ([`InstanceId::new`] refuses control characters).
    /// Answered without asking the store, where it could fail
    /// (PostgreSQL's text cannot hold a NUL).
    pub fn matches_nothing(&self) -> bool {
        self.instance_id_prefix
            .as_deref()
            .is_some_and(|p| p.contains('\0'))
    }
}

/// One page of a listing request.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceQuery {
    /// Which instances.
    pub filter: InstanceFilter,
    /// At most this many (capped by the store at 1,000).
    pub page_size: usize,
    /// Read each instance's input (false: `input` is null and the store
    /// reads none, so a page of instances with large inputs stays small).
    pub with_input: bool,
    /// The opaque token of the previous page, or `None` for the first.
    pub continuation: Option<String>,
}

/// A page of instances, newest first, and the token for the next page.
#[derive(Clone, Debug, PartialEq)]
pub struct InstancePage {
    /// The instances of this page (history not included).
    pub instances: Vec<InstanceStatus>,
    /// Present when more instances match.
    pub continuation: Option<String>,
}
