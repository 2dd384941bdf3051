//! The render-time distribution, estimated from interval-censored
//! observations: each finished video says only that it finished after one
//! age (its last unfinished poll) and before another (the poll that saw it
//! done).
//!
//! The estimate is a histogram over log-spaced bins from 10 ms to about 115
//! days, so the same code serves sub-second test renders and multi-hour
//! production ones. Each observation's weight is spread over the bins its
//! interval covers in proportion to the current estimate there (one step of
//! the self-consistency / EM algorithm of Turnbull), and every so often the
//! estimate is refitted by running that algorithm to convergence over the
//! recent observations. Old observations fade with a half-life counted in
//! observations, so a change in JoggAI's speed is followed within a few
//! half-lives.
//!
//! Within a bin, mass is taken as uniform in log time: the CDF is continuous
//! and strictly increasing where there is mass, so quantiles interpolate.

use std::collections::VecDeque;

/// Lower edge of the first bin, in seconds.
const LOW_SECONDS: f64 = 0.01;
/// Bins per factor of ten: each bin is 7.5 % wider than the previous one.
const BINS_PER_DECADE: usize = 32;
/// Decades covered: 10 ms to 10^7 s (about 115 days).
const DECADES: usize = 9;
/// Number of bins.
pub const BINS: usize = BINS_PER_DECADE * DECADES;
/// Relative weight of the log-uniform prior in each bin: small enough to
/// vanish next to real data, large enough that an interval falling where
/// the estimate has no mass still lands somewhere (spread evenly).
const PRIOR_PER_BIN: f64 = 1e-4;
/// A full refit runs after this many observations.
const REFIT_EVERY: u64 = 32;
/// EM iterations per refit, warm-started from the current estimate.
const REFIT_ITERATIONS: usize = 12;

/// One interval-censored observation: the video finished after
/// `after_seconds` and no later than `before_seconds` (ages, in seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Censored {
    /// Age at the last poll that saw the video unfinished (0 if none).
    pub after_seconds: f64,
    /// Age at the poll that saw it finished.
    pub before_seconds: f64,
}

/// Position of `seconds` on the bin axis: bin `k` covers `[k, k + 1)`.
fn position(seconds: f64) -> f64 {
    if seconds.is_nan() || seconds <= LOW_SECONDS {
        return 0.0;
    }
    ((seconds / LOW_SECONDS).log10() * BINS_PER_DECADE as f64).min(BINS as f64)
}

/// The age at position `x` on the bin axis (inverse of [`position`]).
fn seconds_at(x: f64) -> f64 {
    LOW_SECONDS * 10f64.powf(x / BINS_PER_DECADE as f64)
}

/// An interval on the bin axis, as (bin, fraction of that bin covered).
/// A point (or an interval narrower than float precision) is one bin.
fn coverage(observation: &Censored) -> Vec<(usize, f64)> {
    let (mut low, mut high) = (
        position(observation.after_seconds),
        position(observation.before_seconds),
    );
    if high < low {
        std::mem::swap(&mut low, &mut high);
    }
    let last = BINS - 1;
    if high - low < 1e-9 {
        return vec![((low.floor() as usize).min(last), 1.0)];
    }
    let first_bin = (low.floor() as usize).min(last);
    let last_bin = ((high.ceil() as usize).saturating_sub(1)).clamp(first_bin, last);
    (first_bin..=last_bin)
        .filter_map(|bin| {
            let start = (bin as f64).max(low);
            let end = ((bin + 1) as f64).min(high);
            (end > start).then_some((bin, end - start))
        })
        .collect()
}

/// A decayed, log-binned estimate of the render-time distribution (see the
/// module docs).
#[derive(Debug, Clone)]
pub struct RenderTimes {
    /// Mass per bin; sums to the effective sample count times `unit`.
    mass: Vec<f64>,
    /// Prefix sums of `mass`, `BINS + 1` long (recomputed on change).
    cumulative: Vec<f64>,
    /// Weight the next observation carries. It grows by `1 / decay` per
    /// observation instead of every bin shrinking by `decay`: the same
    /// ratios at a cost independent of the bin count.
    unit: f64,
    /// Per-observation fading factor, from the half-life.
    decay: f64,
    /// Recent observations with the `unit` they were given, for refits.
    recent: VecDeque<(Censored, f64)>,
    /// How many `recent` observations are kept.
    capacity: usize,
    /// Observations since the start (not decayed).
    observations: u64,
}

impl RenderTimes {
    /// An empty estimate whose observations lose half their weight after
    /// `half_life` newer ones.
    pub fn new(half_life: u32) -> Self {
        let half_life = f64::from(half_life.max(1));
        // Beyond ten half-lives an observation weighs under 0.1 %.
        let capacity = (half_life * 10.0).clamp(64.0, 20_000.0) as usize;
        Self {
            mass: vec![0.0; BINS],
            cumulative: vec![0.0; BINS + 1],
            unit: 1.0,
            decay: 0.5f64.powf(1.0 / half_life),
            recent: VecDeque::with_capacity(capacity),
            capacity,
            observations: 0,
        }
    }

    /// Observations taken so far (not decayed).
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// The decayed sample count: how many observations the estimate is
    /// worth (at most about `half_life / ln 2`).
    pub fn effective_samples(&self) -> f64 {
        // Counted in units of the newest observation's weight: `unit` has
        // already grown past it, to what the next one will carry.
        self.total() / (self.unit * self.decay)
    }

    /// Total mass.
    fn total(&self) -> f64 {
        self.cumulative[BINS]
    }

    /// Takes one observation.
    pub fn observe(&mut self, observation: Censored) {
        let covered = coverage(&observation);
        let weight = self.unit;
        self.spread(&covered, weight);
        self.recent.push_back((observation, weight));
        if self.recent.len() > self.capacity {
            self.recent.pop_front();
        }
        self.observations += 1;
        self.unit /= self.decay;
        if self.unit > 1e100 {
            // Rescale everything before the weights overflow.
            let scale = 1.0 / self.unit;
            self.unit = 1.0;
            self.mass.iter_mut().for_each(|m| *m *= scale);
            self.recent.iter_mut().for_each(|(_, w)| *w *= scale);
        }
        if self.observations.is_multiple_of(REFIT_EVERY) {
            self.refit(REFIT_ITERATIONS);
        } else {
            self.accumulate();
        }
    }

    /// Runs the EM algorithm over the kept observations to convergence (or
    /// `iterations` rounds), starting from the current estimate.
    pub fn refit(&mut self, iterations: usize) {
        if self.recent.is_empty() {
            self.accumulate();
            return;
        }
        let covered: Vec<(Vec<(usize, f64)>, f64)> = self
            .recent
            .iter()
            .map(|(observation, weight)| (coverage(observation), *weight))
            .collect();
        for _ in 0..iterations {
            self.accumulate();
            let previous = self.mass.clone();
            let previous_total = self.total();
            let mut next = vec![0.0; BINS];
            for (bins, weight) in &covered {
                let shares = shares(bins, &previous, previous_total);
                let sum: f64 = shares.iter().sum();
                for ((bin, _), share) in bins.iter().zip(&shares) {
                    next[*bin] += weight * share / sum;
                }
            }
            self.mass = next;
        }
        self.accumulate();
    }

    /// Adds `weight` over `covered` bins in proportion to the estimate there.
    fn spread(&mut self, covered: &[(usize, f64)], weight: f64) {
        let shares = shares(covered, &self.mass, self.total());
        let sum: f64 = shares.iter().sum();
        for ((bin, _), share) in covered.iter().zip(&shares) {
            self.mass[*bin] += weight * share / sum;
        }
    }

    /// Recomputes the prefix sums.
    fn accumulate(&mut self) {
        let mut running = 0.0;
        for (bin, mass) in self.mass.iter().enumerate() {
            self.cumulative[bin] = running;
            running += mass;
        }
        self.cumulative[BINS] = running;
    }

    /// The fraction of renders done by `seconds` (0 while empty).
    pub fn cdf(&self, seconds: f64) -> f64 {
        let total = self.total();
        if total <= 0.0 {
            return 0.0;
        }
        let x = position(seconds);
        let bin = (x.floor() as usize).min(BINS - 1);
        let within = (x - bin as f64).clamp(0.0, 1.0);
        ((self.cumulative[bin] + self.mass[bin] * within) / total).clamp(0.0, 1.0)
    }

    /// The render time (seconds) below which a fraction `p` of renders
    /// finish; `None` while empty.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 || p.is_nan() {
            return None;
        }
        let target = p.clamp(0.0, 1.0) * total;
        // The first bin whose end reaches the target (and has mass, so the
        // answer does not land in an empty stretch before it).
        let bin = self.cumulative[1..]
            .partition_point(|&end| end < target)
            .min(BINS - 1);
        let bin = (bin..BINS).find(|&b| self.mass[b] > 0.0).unwrap_or(bin);
        let within = if self.mass[bin] > 0.0 {
            ((target - self.cumulative[bin]) / self.mass[bin]).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(seconds_at(bin as f64 + within))
    }
}

/// Each covered bin's share of a new observation: the estimate's mass over
/// the covered part of the bin, plus the prior.
fn shares(covered: &[(usize, f64)], mass: &[f64], total: f64) -> Vec<f64> {
    let prior = PRIOR_PER_BIN * total.max(1e-300);
    covered
        .iter()
        .map(|&(bin, fraction)| fraction * (mass[bin] + prior))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_seconds_are_inverse_and_log_spaced() {
        for seconds in [0.02, 1.0, 240.0, 86_400.0] {
            let back = seconds_at(position(seconds));
            assert!((back / seconds - 1.0).abs() < 1e-9, "{seconds} -> {back}");
        }
        // One decade is BINS_PER_DECADE bins wherever it is.
        assert!((position(10.0) - position(1.0) - BINS_PER_DECADE as f64).abs() < 1e-9);
        assert!((position(1e5) - position(1e4) - BINS_PER_DECADE as f64).abs() < 1e-9);
        assert_eq!(position(0.0), 0.0);
        assert_eq!(position(1e12), BINS as f64);
    }

    #[test]
    fn an_interval_covers_the_fractions_of_its_bins() {
        let covered = coverage(&Censored {
            after_seconds: seconds_at(10.5),
            before_seconds: seconds_at(12.25),
        });
        let expected = [(10, 0.5), (11, 1.0), (12, 0.25)];
        assert_eq!(covered.len(), 3);
        for ((bin, fraction), (want_bin, want)) in covered.iter().zip(expected) {
            assert_eq!(*bin, want_bin);
            assert!((fraction - want).abs() < 1e-9, "{covered:?}");
        }
        // Reversed bounds are the same interval; a point is one bin.
        let reversed = coverage(&Censored {
            after_seconds: seconds_at(12.25),
            before_seconds: seconds_at(10.5),
        });
        assert_eq!(reversed, covered);
        let point = coverage(&Censored {
            after_seconds: 5.0,
            before_seconds: 5.0,
        });
        assert_eq!(point, vec![(position(5.0) as usize, 1.0)]);
    }

    #[test]
    fn exact_observations_give_their_empirical_quantiles() {
        let mut times = RenderTimes::new(1_000_000);
        for seconds in 1..=100 {
            let at = f64::from(seconds);
            times.observe(Censored {
                after_seconds: at,
                before_seconds: at,
            });
        }
        // Bins are 7.5 % wide: quantiles are right to within a bin.
        for (p, want) in [(0.1, 10.0), (0.5, 50.0), (0.9, 90.0)] {
            let got = times.quantile(p).unwrap();
            assert!((got / want - 1.0).abs() < 0.08, "p{p}: {got} vs {want}");
        }
        assert!((times.cdf(50.0) - 0.5).abs() < 0.03);
        assert_eq!(times.cdf(0.001), 0.0);
        assert!((times.cdf(1e9) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn an_empty_estimate_has_no_quantiles() {
        let times = RenderTimes::new(100);
        assert_eq!(times.quantile(0.5), None);
        assert_eq!(times.cdf(100.0), 0.0);
        assert_eq!(times.effective_samples(), 0.0);
    }

    #[test]
    fn one_observation_is_worth_one_sample() {
        let mut times = RenderTimes::new(10);
        times.observe(Censored {
            after_seconds: 1.0,
            before_seconds: 2.0,
        });
        assert!((times.effective_samples() - 1.0).abs() < 1e-12);
        times.observe(Censored {
            after_seconds: 1.0,
            before_seconds: 2.0,
        });
        // The older one now weighs 0.5^(1/10).
        let want = 1.0 + 0.5f64.powf(0.1);
        assert!((times.effective_samples() - want).abs() < 1e-12);
    }

    #[test]
    fn the_sample_count_fades_with_the_half_life() {
        let mut times = RenderTimes::new(10);
        for _ in 0..1000 {
            times.observe(Censored {
                after_seconds: 1.0,
                before_seconds: 2.0,
            });
        }
        // A geometric series: sum of 0.5^(k/10) = 1 / (1 - 0.5^0.1) = 14.93.
        assert!(
            (times.effective_samples() - 14.93).abs() < 0.05,
            "{}",
            times.effective_samples()
        );
        assert_eq!(times.observations(), 1000);
    }
}
