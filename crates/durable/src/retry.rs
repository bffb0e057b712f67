//! Retry policies for activities, applied inside the orchestrator with
//! durable timers (so a retry schedule survives restarts).

use std::sync::Arc;
use std::time::Duration;

use crate::types::FailureDetails;

/// Decides whether a failure is worth retrying.
pub type RetryFilter = Arc<dyn Fn(&FailureDetails) -> bool + Send + Sync>;

/// How to retry a failing activity. Mirrors Durable Functions' `RetryOptions`.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Wait before the second attempt.
    pub first_interval: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Each wait is the previous one times this.
    pub backoff_coefficient: f64,
    /// No wait is longer than this.
    pub max_interval: Duration,
    /// Stop retrying once this much time has passed since the first attempt.
    pub total_timeout: Option<Duration>,
    /// Which failures to retry; `None` retries all.
    pub retry_if: Option<RetryFilter>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("first_interval", &self.first_interval)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_coefficient", &self.backoff_coefficient)
            .field("max_interval", &self.max_interval)
            .field("total_timeout", &self.total_timeout)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting `first_interval` then doubling.
    pub fn new(max_attempts: u32, first_interval: Duration) -> Self {
        Self {
            first_interval,
            max_attempts,
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(3600),
            total_timeout: None,
            retry_if: None,
        }
    }

    /// The wait before attempt `attempt + 1`, or `None` to give up.
    pub fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        error: &FailureDetails,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        if let Some(filter) = &self.retry_if {
            if !filter(error) {
                return None;
            }
        }
        // In f64 seconds, capped before converting back: a large attempt
        // number or coefficient overflows a Duration (mul_f64 would panic).
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.backoff_coefficient.max(1.0).powi(exponent);
        let secs = self.first_interval.as_secs_f64() * factor;
        let delay = if secs.is_finite() {
            Duration::try_from_secs_f64(secs)
                .unwrap_or(self.max_interval)
                .min(self.max_interval)
        } else {
            self.max_interval
        };
        if let Some(total) = self.total_timeout {
            if elapsed + delay > total {
                return None;
            }
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_stops() {
        let mut p = RetryPolicy::new(5, Duration::from_secs(1));
        p.max_interval = Duration::from_secs(3);
        let e = FailureDetails::new("X", "y");
        let delays: Vec<_> = (1..=5)
            .map(|a| p.next_delay(a, Duration::ZERO, &e))
            .collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(3)),
                Some(Duration::from_secs(3)),
                None
            ]
        );
        p.total_timeout = Some(Duration::from_secs(10));
        assert_eq!(p.next_delay(2, Duration::from_secs(9), &e), None);
        p.retry_if = Some(Arc::new(|e: &FailureDetails| e.kind != "Fatal"));
        assert_eq!(
            p.next_delay(1, Duration::ZERO, &FailureDetails::new("Fatal", "")),
            None
        );
        // Huge attempt numbers and coefficients stay capped instead of
        // overflowing.
        let mut p = RetryPolicy::new(u32::MAX, Duration::from_millis(20));
        p.max_interval = Duration::from_secs(60);
        for attempt in [71, 1_000, u32::MAX - 1] {
            assert_eq!(
                p.next_delay(attempt, Duration::ZERO, &e),
                Some(Duration::from_secs(60))
            );
        }
        p.backoff_coefficient = f64::INFINITY;
        assert_eq!(
            p.next_delay(2, Duration::ZERO, &e),
            Some(Duration::from_secs(60))
        );
    }
}
