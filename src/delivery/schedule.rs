//! What follows a delivery attempt: a pure function of the attempt's result,
//! the retry schedule and a jitter sample.

use std::time::Duration;

use crate::domain::Millis;
use crate::domain::delivery::DeliveryNext;

/// ± fraction applied to every retry delay, so receivers recovering from an
/// outage are not hit by every relay's retries at the same instant.
pub const RETRY_JITTER: f64 = 0.1;
/// A receiver's `Retry-After` is honoured up to this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Reasons a delivery is dead.
pub mod reason {
    /// The receiver answered 410 Gone.
    pub const GONE: &str = "gone";
    /// The last scheduled retry failed.
    pub const EXHAUSTED: &str = "exhausted";
    /// The per-video URL resolves to a forbidden address.
    pub const FORBIDDEN_TARGET: &str = "forbidden_target";
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered this HTTP status (with `Retry-After`, if any).
    Answered {
        /// HTTP status.
        status: u16,
        /// The receiver's `Retry-After`, parsed.
        retry_after: Option<Duration>,
    },
    /// No answer: timeout, connection error, …
    Failed(String),
    /// The target guard refused the URL.
    Forbidden(String),
}

/// Decides what follows attempt number `attempt` (1-based).
///
/// `schedule[k]` is the delay after attempt `k + 1`; after the last entry the
/// delivery is dead. 429 and 503 honour `Retry-After` (clamped to
/// [`MAX_RETRY_AFTER`]) instead of the schedule's delay, but still use up a
/// step, so a receiver cannot keep a delivery alive forever.
pub fn next_step(
    result: &AttemptResult,
    attempt: u32,
    schedule: &[Duration],
    now: Millis,
    jitter_unit: f64,
) -> DeliveryNext {
    let retry_after = match result {
        AttemptResult::Answered { status, .. } if (200..300).contains(status) => {
            return DeliveryNext::Delivered;
        }
        AttemptResult::Answered { status: 410, .. } => {
            return DeliveryNext::Dead(reason::GONE.into());
        }
        AttemptResult::Forbidden(_) => return DeliveryNext::Dead(reason::FORBIDDEN_TARGET.into()),
        AttemptResult::Answered {
            status: 429 | 503,
            retry_after,
        } => *retry_after,
        AttemptResult::Answered { .. } | AttemptResult::Failed(_) => None,
    };
    let Some(scheduled) = schedule.get(attempt.saturating_sub(1) as usize) else {
        return DeliveryNext::Dead(reason::EXHAUSTED.into());
    };
    let delay = match retry_after {
        Some(asked) => asked.min(MAX_RETRY_AFTER),
        None => {
            let unit = if jitter_unit.is_finite() {
                jitter_unit.clamp(-1.0, 1.0)
            } else {
                0.0
            };
            scheduled.mul_f64(1.0 + RETRY_JITTER * unit)
        }
    };
    DeliveryNext::Retry(now.plus(delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = Millis(1_000_000);

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(5), Duration::from_secs(300)]
    }

    fn answered(status: u16) -> AttemptResult {
        AttemptResult::Answered {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn success_gone_and_forbidden_end_at_once() {
        for status in [200, 201, 204, 299] {
            assert_eq!(
                next_step(&answered(status), 1, &schedule(), NOW, 0.0),
                DeliveryNext::Delivered
            );
        }
        assert_eq!(
            next_step(&answered(410), 1, &schedule(), NOW, 0.0),
            DeliveryNext::Dead("gone".into())
        );
        assert_eq!(
            next_step(
                &AttemptResult::Forbidden("10.0.0.1".into()),
                1,
                &schedule(),
                NOW,
                0.0
            ),
            DeliveryNext::Dead("forbidden_target".into())
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_die() {
        for result in [
            answered(500),
            answered(404),
            answered(301),
            AttemptResult::Failed("timeout".into()),
        ] {
            assert_eq!(
                next_step(&result, 1, &schedule(), NOW, 0.0),
                DeliveryNext::Retry(Millis(1_005_000))
            );
            assert_eq!(
                next_step(&result, 2, &schedule(), NOW, 0.0),
                DeliveryNext::Retry(Millis(1_300_000))
            );
            assert_eq!(
                next_step(&result, 3, &schedule(), NOW, 0.0),
                DeliveryNext::Dead("exhausted".into())
            );
        }
        assert_eq!(
            next_step(&answered(500), 1, &[], NOW, 0.0),
            DeliveryNext::Dead("exhausted".into())
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(
            next_step(&answered(500), 1, &schedule(), NOW, 1.0),
            DeliveryNext::Retry(Millis(1_005_500))
        );
        assert_eq!(
            next_step(&answered(500), 1, &schedule(), NOW, -7.0),
            DeliveryNext::Retry(Millis(1_004_500))
        );
    }

    #[test]
    fn retry_after_is_honoured_and_clamped_on_429_and_503_only() {
        let asked = |status, secs| AttemptResult::Answered {
            status,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            next_step(&asked(429, 60), 1, &schedule(), NOW, 0.0),
            DeliveryNext::Retry(Millis(1_060_000))
        );
        assert_eq!(
            next_step(&asked(503, 1), 1, &schedule(), NOW, 0.0),
            DeliveryNext::Retry(Millis(1_001_000))
        );
        assert_eq!(
            next_step(&asked(429, 86_400), 1, &schedule(), NOW, 0.0),
            DeliveryNext::Retry(NOW.plus(MAX_RETRY_AFTER))
        );
        assert_eq!(
            next_step(&asked(500, 60), 1, &schedule(), NOW, 0.0),
            DeliveryNext::Retry(Millis(1_005_000))
        );
        assert_eq!(
            next_step(&asked(429, 60), 3, &schedule(), NOW, 0.0),
            DeliveryNext::Dead("exhausted".into())
        );
    }
}
