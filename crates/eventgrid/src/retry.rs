//! What happens after a delivery attempt: delivered, retried later (when),
//! or dead-lettered (why), by the reference's rules. Pure: an attempt's
//! outcome, the subscription's retry policy and the clock in, a
//! [`Decision`] out.
//!
//! - Success is 200-204 only.
//! - 400, 401, 403 and 413 are not retried: dead-lettered at once.
//! - Everything else (other statuses, timeouts, refused or reset
//!   connections) is retried on the schedule 10 s, 30 s, 1 min, 5 min,
//!   10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h, each delay randomised
//!   (between 80% and 120%) so receivers that failed together are not hit
//!   together again; a 429 or 503 `Retry-After` is honored when longer.
//! - `maxDeliveryAttempts` (1-30) or `eventTimeToLiveInMinutes` (1-1440),
//!   whichever comes first, ends the retries.
//! - The schedule can be scaled (a documented setting), so tests run the
//!   real sequence in seconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The delays before retry 1, 2, ... (then 12 h each).
pub const SCHEDULE: [Duration; 9] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
];
/// The delay after the schedule runs out.
pub const LATER: Duration = Duration::from_secs(12 * 3600);

/// A subscription's `retryPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// 1 to 30 (default 30).
    #[serde(default = "default_attempts")]
    pub max_delivery_attempts: u32,
    /// 1 to 1440 (default 1440).
    #[serde(default = "default_ttl")]
    pub event_time_to_live_in_minutes: u32,
}

fn default_attempts() -> u32 {
    30
}

fn default_ttl() -> u32 {
    1440
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_delivery_attempts: default_attempts(),
            event_time_to_live_in_minutes: default_ttl(),
        }
    }
}

impl RetryPolicy {
    /// Checks the ranges; what a subscription write refuses with 400.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=30).contains(&self.max_delivery_attempts) {
            return Err(format!(
                "retryPolicy.maxDeliveryAttempts must be 1 to 30 (got {})",
                self.max_delivery_attempts
            ));
        }
        if !(1..=1440).contains(&self.event_time_to_live_in_minutes) {
            return Err(format!(
                "retryPolicy.eventTimeToLiveInMinutes must be 1 to 1440 (got {})",
                self.event_time_to_live_in_minutes
            ));
        }
        Ok(())
    }

    /// How long an event may wait for this subscription, counted from
    /// publishing, with delays multiplied by `scale` (the delivery's retry
    /// scale).
    pub fn time_to_live(&self, scale: f64) -> Duration {
        Duration::from_secs(u64::from(self.event_time_to_live_in_minutes) * 60)
            .mul_f64(scale.max(0.0))
    }
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this status (and `Retry-After`, if any).
    Status(u16, Option<Duration>),
    /// No answer within the timeout.
    TimedOut,
    /// The connection failed or was reset.
    SocketError,
    /// The router would not call the destination (a link-local or metadata
    /// address, see [`crate::egress`]): never retried.
    Refused,
    /// The router could not read where the event goes (its store failed):
    /// retried like a receiver that was busy.
    RouterError,
}

impl Attempt {
    /// The `lastDeliveryOutcome` name of this attempt.
    pub fn outcome(&self) -> &'static str {
        match self {
            Attempt::Status(200..=204, _) => "Succeeded",
            Attempt::Status(400, _) => "BadRequest",
            Attempt::Status(401, _) => "Unauthorized",
            Attempt::Status(403, _) => "Forbidden",
            Attempt::Status(404, _) => "NotFound",
            Attempt::Status(413, _) => "PayloadTooLarge",
            Attempt::Status(429 | 503, _) => "Busy",
            Attempt::Status(_, _) => "GenericError",
            Attempt::TimedOut => "TimedOut",
            Attempt::SocketError => "SocketError",
            Attempt::Refused => "DestinationNotAllowed",
            Attempt::RouterError => "RouterError",
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Done.
    Delivered,
    /// Try again after this long.
    RetryAfter(Duration),
    /// Give up: the dead-letter reason.
    DeadLetter(&'static str),
}

/// The longest `Retry-After` honoured: a day, the longest time to live
/// (a receiver's larger number would overflow the arithmetic, and the
/// event is dead by then anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// A `Retry-After` header's wait, in either of its forms (seconds, or an
/// HTTP date, which counts from `now`), at most [`MAX_RETRY_AFTER`];
/// `None` for anything else.
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The decision after attempt number `attempts` (1-based) ended with
/// `attempt`, `age` after the event was published, with retry delays
/// scaled by `scale` and randomised by `unit_random` (0..1).
pub fn decide(
    attempt: &Attempt,
    attempts: u32,
    age: Duration,
    policy: RetryPolicy,
    scale: f64,
    unit_random: f64,
) -> Decision {
    match attempt {
        Attempt::Status(200..=204, _) => return Decision::Delivered,
        Attempt::Status(400 | 401 | 403 | 413, _) | Attempt::Refused => {
            return Decision::DeadLetter("NotRetriable")
        }
        _ => {}
    }
    if attempts >= policy.max_delivery_attempts {
        return Decision::DeadLetter("MaxDeliveryAttemptsExceeded");
    }
    let base = SCHEDULE
        .get(attempts.saturating_sub(1) as usize)
        .copied()
        .unwrap_or(LATER);
    let mut delay = base.mul_f64((0.8 + 0.4 * unit_random.clamp(0.0, 1.0)) * scale.max(0.0));
    if let Attempt::Status(429 | 503, Some(after)) = attempt {
        delay = delay.max(after.mul_f64(scale.clamp(0.0, 1.0).max(f64::MIN_POSITIVE)));
    }
    if age.saturating_add(delay) > policy.time_to_live(scale) {
        return Decision::DeadLetter("TimeToLiveExceeded");
    }
    Decision::RetryAfter(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_never_more_than_a_day() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 10:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: at once"
        );
        for huge in ["18446744073709551615", "99999999999"] {
            assert_eq!(retry_after(huge, now), Some(MAX_RETRY_AFTER), "{huge}");
        }
        for bad in ["", "-1", "soon", "1.5"] {
            assert_eq!(retry_after(bad, now), None, "{bad}");
        }
        // The longest wait still makes a decision (the event would outlive
        // its time to live: dead-lettered) instead of overflowing.
        let p = RetryPolicy::default();
        assert_eq!(
            decide(
                &Attempt::Status(429, retry_after("18446744073709551615", now)),
                1,
                Duration::from_secs(1),
                p,
                1.0,
                0.5
            ),
            Decision::DeadLetter("TimeToLiveExceeded")
        );
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn success_is_200_to_204_and_four_codes_are_never_retried() {
        let p = RetryPolicy::default();
        for s in [200, 201, 202, 203, 204] {
            assert_eq!(
                decide(&Attempt::Status(s, None), 1, Duration::ZERO, p, 1.0, 0.5),
                Decision::Delivered
            );
        }
        for s in [400, 401, 403, 413] {
            assert_eq!(
                decide(&Attempt::Status(s, None), 1, Duration::ZERO, p, 1.0, 0.5),
                Decision::DeadLetter("NotRetriable"),
                "{s}"
            );
        }
        // A destination the router will not call is never retried.
        assert_eq!(
            decide(&Attempt::Refused, 1, Duration::ZERO, p, 1.0, 0.5),
            Decision::DeadLetter("NotRetriable")
        );
        assert_eq!(Attempt::Refused.outcome(), "DestinationNotAllowed");
        for a in [
            Attempt::Status(205, None),
            Attempt::Status(404, None),
            Attempt::Status(500, None),
            Attempt::TimedOut,
            Attempt::SocketError,
        ] {
            assert!(
                matches!(
                    decide(&a, 1, Duration::ZERO, p, 1.0, 0.5),
                    Decision::RetryAfter(_)
                ),
                "{a:?}"
            );
        }
    }

    #[test]
    fn the_schedule_is_followed_within_its_randomisation_and_scales() {
        let p = RetryPolicy::default();
        let expected = [
            10u64, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 43_200,
        ];
        for (i, secs) in expected.iter().enumerate() {
            let attempts = i as u32 + 1;
            let at = |r| match decide(
                &Attempt::Status(500, None),
                attempts,
                Duration::ZERO,
                p,
                1.0,
                r,
            ) {
                Decision::RetryAfter(d) => d,
                other => panic!("{other:?}"),
            };
            assert_eq!(at(0.5), Duration::from_secs(*secs));
            assert_eq!(at(0.0), Duration::from_secs(*secs).mul_f64(0.8));
            assert_eq!(at(1.0), Duration::from_secs(*secs).mul_f64(1.2));
        }
        let fast = decide(&Attempt::TimedOut, 1, Duration::ZERO, p, 0.001, 0.5);
        assert_eq!(fast, Decision::RetryAfter(Duration::from_millis(10)));
    }

    #[test]
    fn retry_after_is_honored_when_longer_for_429_and_503_only() {
        let p = RetryPolicy::default();
        let long = Some(Duration::from_secs(120));
        assert_eq!(
            decide(&Attempt::Status(429, long), 1, Duration::ZERO, p, 1.0, 0.5),
            Decision::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            decide(&Attempt::Status(503, long), 1, Duration::ZERO, p, 1.0, 0.5),
            Decision::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            decide(&Attempt::Status(500, long), 1, Duration::ZERO, p, 1.0, 0.5),
            Decision::RetryAfter(Duration::from_secs(10))
        );
        let short = Some(Duration::from_secs(1));
        assert_eq!(
            decide(&Attempt::Status(429, short), 1, Duration::ZERO, p, 1.0, 0.5),
            Decision::RetryAfter(Duration::from_secs(10))
        );
    }

    #[test]
    fn attempts_and_time_to_live_end_the_retries_whichever_comes_first() {
        let p = RetryPolicy {
            max_delivery_attempts: 3,
            event_time_to_live_in_minutes: 1440,
        };
        assert!(matches!(
            decide(&Attempt::SocketError, 2, Duration::ZERO, p, 1.0, 0.5),
            Decision::RetryAfter(_)
        ));
        assert_eq!(
            decide(&Attempt::SocketError, 3, Duration::ZERO, p, 1.0, 0.5),
            Decision::DeadLetter("MaxDeliveryAttemptsExceeded")
        );
        let short = RetryPolicy {
            max_delivery_attempts: 30,
            event_time_to_live_in_minutes: 1,
        };
        assert!(matches!(
            decide(&Attempt::SocketError, 1, Duration::ZERO, short, 1.0, 0.5),
            Decision::RetryAfter(_)
        ));
        assert_eq!(
            decide(
                &Attempt::SocketError,
                2,
                Duration::from_secs(40),
                short,
                1.0,
                0.5
            ),
            Decision::DeadLetter("TimeToLiveExceeded")
        );
        assert_eq!(
            decide(
                &Attempt::SocketError,
                10,
                DAY,
                RetryPolicy::default(),
                1.0,
                0.5
            ),
            Decision::DeadLetter("TimeToLiveExceeded")
        );
    }

    #[test]
    fn policies_are_checked_and_default_like_azure() {
        let p: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert!(
            serde_json::from_str::<RetryPolicy>(r#"{"maxDeliveryAttempts": 0}"#)
                .unwrap()
                .check()
                .is_err()
        );
        assert!(
            serde_json::from_str::<RetryPolicy>(r#"{"eventTimeToLiveInMinutes": 1441}"#)
                .unwrap()
                .check()
                .is_err()
        );
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"maxRetries": 3}"#).is_err());
        assert_eq!(Attempt::Status(200, None).outcome(), "Succeeded");
        assert_eq!(Attempt::Status(503, None).outcome(), "Busy");
        assert_eq!(Attempt::TimedOut.outcome(), "TimedOut");
    }
}
