//! The poll schedule as a pure policy: given a video's counters and a random
//! jitter sample, when is it polled next. Persisted as `next_poll_at`, so a
//! restart continues the same schedule.

use std::time::Duration;

use crate::config::PollingConfig;
use crate::domain::Millis;

/// Growth of the per-video error backoff per consecutive failure.
const ERROR_BACKOFF_FACTOR: f64 = 2.0;
/// The error backoff is capped at this many `max_interval`s.
const ERROR_BACKOFF_CAP_INTERVALS: u32 = 5;

/// The schedule parameters (`[polling]` in the README's configuration reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollPolicy {
    /// Delay from enqueue to the first poll.
    pub first_after: Duration,
    /// First interval between polls.
    pub min_interval: Duration,
    /// Interval cap.
    pub max_interval: Duration,
    /// Interval growth per unchanged answer.
    pub multiplier: f64,
    /// ± fraction applied to every delay.
    pub jitter: f64,
    /// After this since enqueue, the video is abandoned (`deadline`).
    pub give_up_after: Duration,
    /// "Not found" is retried this long after enqueue.
    pub not_found_grace: Duration,
    /// While JoggAI's pushes are enabled: the least gap between background
    /// polls of an unfinished video (`polling.safety_net_interval`).
    pub safety_net: Option<Duration>,
}

impl From<&PollingConfig> for PollPolicy {
    fn from(config: &PollingConfig) -> Self {
        Self {
            first_after: config.first_after,
            min_interval: config.min_interval,
            max_interval: config.max_interval,
            multiplier: config.multiplier,
            jitter: config.jitter,
            give_up_after: config.give_up_after,
            not_found_grace: config.not_found_grace,
            safety_net: config.safety_net,
        }
    }
}

impl PollPolicy {
    /// The interval after `unchanged` answers without a status change:
    /// `min_interval × multiplier^unchanged`, capped at `max_interval`.
    pub fn interval(&self, unchanged: u32) -> Duration {
        let grown =
            self.min_interval.as_secs_f64() * self.multiplier.powi(unchanged.min(1000) as i32);
        Duration::from_secs_f64(grown.min(self.max_interval.as_secs_f64()))
    }

    /// The range the gap between two polls of an unfinished video is kept
    /// in: `[min_interval, max_interval]`, or, while pushes are enabled,
    /// `[safety_net, max(safety_net, max_interval)]` (pushes tell of
    /// completions; polls only catch the lost ones).
    pub fn gap_bounds(&self) -> (Duration, Duration) {
        match self.safety_net {
            Some(net) => (
                net.max(self.min_interval),
                net.max(self.min_interval).max(self.max_interval),
            ),
            None => (self.min_interval, self.max_interval),
        }
    }

    /// The gap to the next poll of an unfinished video: `base` (the
    /// strategy's choice) jittered, and while pushes are enabled kept
    /// within [`gap_bounds`](Self::gap_bounds) after the jitter too, so no
    /// gap is shorter than the safety net and a lost push is caught within
    /// `max(safety_net, max_interval)` of its completion.
    pub fn unfinished_gap(&self, base: Duration, unit: f64) -> Duration {
        let delay = self.jittered(base, unit);
        match self.safety_net {
            Some(_) => {
                let (low, high) = self.gap_bounds();
                delay.clamp(low, high)
            }
            None => delay,
        }
    }

    /// The delay after `streak` consecutive failed polls (`streak >= 1`):
    /// `min_interval × 2^(streak-1)`, capped at five `max_interval`s. Its own
    /// growth, so a flaky upstream backs off faster than a slow render.
    pub fn error_backoff(&self, streak: u32) -> Duration {
        let exponent = streak.saturating_sub(1).min(1000) as i32;
        let grown = self.min_interval.as_secs_f64() * ERROR_BACKOFF_FACTOR.powi(exponent);
        let cap = (self.max_interval * ERROR_BACKOFF_CAP_INTERVALS).as_secs_f64();
        Duration::from_secs_f64(grown.min(cap))
    }

    /// `delay` scaled by `1 + jitter × unit`, where `unit` is a uniform
    /// sample in `[-1, 1]` (clamped), so every delay lands in
    /// `delay × [1 - jitter, 1 + jitter]`.
    pub fn jittered(&self, delay: Duration, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        delay.mul_f64(1.0 + self.jitter * unit)
    }

    /// When a video enqueued at `enqueued_at` is first polled.
    pub fn first_poll_at(&self, enqueued_at: Millis, unit: f64) -> Millis {
        enqueued_at.plus(self.jittered(self.first_after, unit))
    }

    /// When a video enqueued at `enqueued_at` is abandoned.
    pub fn deadline(&self, enqueued_at: Millis) -> Millis {
        enqueued_at.plus(self.give_up_after)
    }

    /// Whether "not found" at `now` is still within the grace window.
    pub fn not_found_is_retried(&self, enqueued_at: Millis, now: Millis) -> bool {
        now < enqueued_at.plus(self.not_found_grace)
    }

    /// The next poll `delay` after `now`, but never after the deadline, so
    /// that a video is abandoned on time rather than up to one interval late.
    pub fn next_poll_at(&self, now: Millis, delay: Duration, enqueued_at: Millis) -> Millis {
        now.plus(delay).min(self.deadline(enqueued_at))
    }
}

/// Proptest settings seeded from `JOGG_RELAY_TEST_SEED` when set (random
/// otherwise), the seed printed, so a failing run can be repeated.
#[cfg(test)]
pub(crate) fn seeded_for_tests() -> proptest::test_runner::Config {
    let seed = std::env::var("JOGG_RELAY_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("JOGG_RELAY_TEST_SEED={seed}");
    proptest::test_runner::Config {
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..proptest::test_runner::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> PollPolicy {
        PollPolicy {
            first_after: Duration::from_secs(10),
            min_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(60),
            multiplier: 1.5,
            jitter: 0.1,
            give_up_after: Duration::from_secs(48 * 3600),
            not_found_grace: Duration::from_secs(300),
            safety_net: None,
        }
    }

    #[test]
    fn with_pushes_every_unfinished_gap_stays_within_the_safety_net_range() {
        // Defaults: a 5 minute net above a 60 s max_interval pins every
        // gap to the net, whatever the strategy chose or the jitter drew.
        let p = PollPolicy {
            safety_net: Some(Duration::from_secs(300)),
            ..policy()
        };
        assert_eq!(
            p.gap_bounds(),
            (Duration::from_secs(300), Duration::from_secs(300))
        );
        for (base, unit) in [(10, -1.0), (60, 1.0), (300, 1.0), (300, -1.0), (900, 0.0)] {
            assert_eq!(
                p.unfinished_gap(Duration::from_secs(base), unit),
                Duration::from_secs(300),
                "{base} s, {unit}"
            );
        }
        // A max_interval above the net leaves the strategy a range.
        let wide = PollPolicy {
            max_interval: Duration::from_secs(600),
            ..p
        };
        assert_eq!(
            wide.gap_bounds(),
            (Duration::from_secs(300), Duration::from_secs(600))
        );
        assert_eq!(
            wide.unfinished_gap(Duration::from_secs(400), 0.5),
            Duration::from_secs(420)
        );
        assert_eq!(
            wide.unfinished_gap(Duration::from_secs(590), 1.0),
            Duration::from_secs(600)
        );
        // A net below min_interval is no net at all.
        let low = PollPolicy {
            safety_net: Some(Duration::from_secs(1)),
            ..policy()
        };
        assert_eq!(
            low.gap_bounds(),
            (Duration::from_secs(10), Duration::from_secs(60))
        );
        // Without pushes, the jitter is not clamped.
        assert_eq!(
            policy().unfinished_gap(Duration::from_secs(60), 1.0),
            Duration::from_secs(66)
        );
        assert_eq!(
            policy().gap_bounds(),
            (Duration::from_secs(10), Duration::from_secs(60))
        );
    }

    #[test]
    fn interval_grows_by_the_multiplier_until_the_cap() {
        let p = policy();
        let secs: Vec<f64> = (0..8).map(|n| p.interval(n).as_secs_f64()).collect();
        assert_eq!(secs, [10.0, 15.0, 22.5, 33.75, 50.625, 60.0, 60.0, 60.0]);
        assert_eq!(p.interval(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_maps_the_sample_onto_the_whole_range() {
        // The sample's sign decides the side: a constant or mirrored
        // mapping would keep every delay within bounds but stop spreading
        // them (or invert the caller's sample).
        let p = policy();
        let base = Duration::from_secs(100);
        assert_eq!(p.jittered(base, -1.0), Duration::from_secs(90));
        assert_eq!(p.jittered(base, 1.0), Duration::from_secs(110));
        assert_eq!(p.jittered(base, 0.5), Duration::from_secs(105));
        assert_eq!(p.jittered(base, 0.0), base);
        assert_eq!(p.jittered(base, -7.0), Duration::from_secs(90), "clamped");
        assert_eq!(p.jittered(base, f64::NAN), base);
    }

    #[test]
    fn error_backoff_doubles_until_its_cap() {
        let p = policy();
        let secs: Vec<u64> = (1..=7).map(|n| p.error_backoff(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn next_poll_never_passes_the_deadline() {
        let p = policy();
        let enqueued = Millis(1_000_000);
        let near_deadline = p.deadline(enqueued).plus(Duration::ZERO);
        let now = Millis(near_deadline.0 - 5_000);
        assert_eq!(
            p.next_poll_at(now, Duration::from_secs(60), enqueued),
            near_deadline
        );
        assert_eq!(
            p.next_poll_at(enqueued, Duration::from_secs(60), enqueued),
            enqueued.plus(Duration::from_secs(60))
        );
    }

    #[test]
    fn not_found_grace_window() {
        let p = policy();
        let enqueued = Millis(0);
        assert!(p.not_found_is_retried(enqueued, Millis(299_999)));
        assert!(!p.not_found_is_retried(enqueued, Millis(300_000)));
    }

    proptest! {
        #![proptest_config(seeded_for_tests())]

        #[test]
        fn jitter_stays_within_its_bounds(base_ms in 1u64..10_000_000, unit in -5.0f64..5.0, jitter in 0.0f64..0.99) {
            let p = PollPolicy { jitter, ..policy() };
            let base = Duration::from_millis(base_ms);
            let delay = p.jittered(base, unit).as_secs_f64();
            let low = base.as_secs_f64() * (1.0 - jitter);
            let high = base.as_secs_f64() * (1.0 + jitter);
            prop_assert!(delay >= low - 1e-6 && delay <= high + 1e-6, "{delay} not in [{low}, {high}]");
        }

        #[test]
        fn interval_is_monotonic_and_bounded(n in 0u32..10_000, min_ms in 1u64..100_000, extra_ms in 0u64..1_000_000, multiplier in 1.0f64..10.0) {
            let p = PollPolicy {
                min_interval: Duration::from_millis(min_ms),
                max_interval: Duration::from_millis(min_ms + extra_ms),
                multiplier,
                ..policy()
            };
            let now = p.interval(n);
            prop_assert!(now >= p.min_interval.mul_f64(0.999_999));
            prop_assert!(now <= p.max_interval);
            prop_assert!(p.interval(n + 1) >= now);
        }
    }
}
