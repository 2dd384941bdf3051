//! The limit on login attempts: a token bucket for the whole process (the
//! API has no rate limiting to reuse). Failed attempts spend a token; a
//! successful one gets its token back. With the bucket empty, logins are
//! refused without the token even being compared, so guessing runs at
//! most at the refill rate however many connections an attacker opens.
//!
//! It is per process rather than per client: behind a proxy or an SSH
//! tunnel every client has the same address.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts allowed in a row.
pub const BURST: u32 = 10;
/// One more attempt is allowed per this much time.
pub const REFILL: Duration = Duration::from_secs(6);

/// The bucket.
#[derive(Debug)]
pub struct LoginLimiter {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl LoginLimiter {
    /// A full bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(Bucket {
                tokens: f64::from(BURST),
                last: now,
            }),
        }
    }

    /// Takes a token for an attempt at `now`: `Ok` to go ahead, or how
    /// long until the next attempt is allowed.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.lock();
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed / REFILL.as_secs_f64()).min(f64::from(BURST));
        bucket.last = now.max(bucket.last);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(REFILL.mul_f64(1.0 - bucket.tokens))
        }
    }

    /// Gives back the token of an attempt that succeeded.
    pub fn refund(&self) {
        let mut bucket = self.lock();
        bucket.tokens = (bucket.tokens + 1.0).min(f64::from(BURST));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `BURST` failures in a row, then one per `REFILL`; successes cost
    /// nothing.
    #[test]
    fn failures_are_limited_and_successes_free() {
        let start = Instant::now();
        let limiter = LoginLimiter::new(start);
        for _ in 0..100 {
            limiter.take(start).unwrap();
            limiter.refund();
        }
        for attempt in 0..BURST {
            assert!(limiter.take(start).is_ok(), "attempt {attempt}");
        }
        let wait = limiter.take(start).unwrap_err();
        assert!(wait <= REFILL && wait > REFILL / 2, "{wait:?}");
        assert!(limiter.take(start + REFILL / 2).is_err());
        assert!(limiter.take(start + REFILL).is_ok());
        assert!(limiter.take(start + REFILL).is_err());
    }
}
