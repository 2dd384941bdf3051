//! The render-time distribution, estimated from censored observations:
//! a finished video says only that it finished after one age (its last
//! unfinished poll) and before another (the poll that saw it done); a video
//! still rendering says that it will finish after its last unfinished poll
//! (right-censored). Counting the unfinished ones is what keeps the
//! estimate honest when a batch is half done: learning from the finished
//! ones alone would see only the quick renders.
//!
//! The estimate is a histogram over log-spaced bins from 10 ms to about 115
//! days, so the same code serves sub-second test renders and multi-hour
//! production ones. [`RenderTimes::fit`] runs the self-consistency (EM)
//! algorithm of Turnbull over weighted observations, warm-started from the
//! previous fit: each observation's weight is spread over the bins its
//! interval covers in proportion to the estimate there, until that stops
//! changing. A small log-uniform prior gives an interval that falls where
//! the estimate has no mass somewhere to go.
//!
//! Within a bin, mass is taken as uniform in log time: the CDF is continuous
//! and strictly increasing where there is mass, so quantiles interpolate.

/// Lower edge of the first bin, in seconds.
const LOW_SECONDS: f64 = 0.01;
/// Bins per factor of ten: each bin is 7.5 % wider than the previous one.
const BINS_PER_DECADE: usize = 32;
/// Decades covered: 10 ms to 10^7 s (about 115 days).
const DECADES: usize = 9;
/// Number of bins.
pub const BINS: usize = BINS_PER_DECADE * DECADES;
/// How much wider each bin is than the one before (10^(1/32), 7.5 %).
pub const BIN_WIDTH: f64 = 1.074_607_828_321_317_4;
/// Relative weight of the log-uniform prior in each bin: small enough to
/// vanish next to real data, large enough that an interval falling where
/// the estimate has no mass still lands somewhere (spread evenly).
const PRIOR_PER_BIN: f64 = 1e-3;

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

/// A log-binned estimate of the render-time distribution (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct RenderTimes {
    /// Mass per bin; sums to the weight of the observations fitted.
    mass: Vec<f64>,
    /// Prefix sums of `mass`, `BINS + 1` long.
    cumulative: Vec<f64>,
    /// The longest finished render fitted (its upper bound, seconds).
    longest_finished: f64,
}

impl Default for RenderTimes {
    fn default() -> Self {
        Self {
            mass: vec![0.0; BINS],
            cumulative: vec![0.0; BINS + 1],
            longest_finished: 0.0,
        }
    }
}

impl RenderTimes {
    /// The longest finished render fitted (its upper bound, seconds; 0
    /// when none).
    pub fn longest_finished(&self) -> f64 {
        self.longest_finished
    }

    /// Total mass.
    fn total(&self) -> f64 {
        self.cumulative[BINS]
    }

    /// Fits the estimate to `observations` (each with its weight), running
    /// `iterations` rounds of EM from the current estimate (from the prior
    /// when there is none). An observation whose `before_seconds` is
    /// infinite is right-censored: it finishes some time after
    /// `after_seconds`, but no later than `horizon_seconds` (no render is
    /// ever seen to take longer), so no mass goes beyond that.
    pub fn fit(
        &mut self,
        observations: &[(Censored, f64)],
        iterations: usize,
        horizon_seconds: f64,
    ) {
        // Bins up to the one holding the horizon carry the prior; later
        // ones stay empty unless a finished render lands there.
        let support = (position(horizon_seconds).ceil() as usize).clamp(1, BINS);
        let mut finished: Vec<(Vec<(usize, f64)>, f64)> = Vec::new();
        // Right-censored ones as (bin of the age, share of that bin at or
        // after the age, weight): each takes its part of that bin and every
        // later bin in proportion to the estimate there.
        let mut censored: Vec<(usize, f64, f64)> = Vec::new();
        let mut weight = 0.0;
        let mut finished_weight = 0.0;
        let mut longest: f64 = 0.0;
        for (observation, w) in observations {
            if !(w.is_finite() && *w > 0.0) {
                continue;
            }
            weight += w;
            if observation.before_seconds.is_finite() {
                finished_weight += w;
                longest = longest.max(observation.before_seconds);
                finished.push((coverage(observation), *w));
            } else {
                let at = position(observation.after_seconds);
                let bin = (at.floor() as usize).min(BINS - 1);
                let after = ((bin + 1) as f64 - at).clamp(0.0, 1.0);
                censored.push((bin, after, *w));
            }
        }
        if weight <= 0.0 {
            *self = Self::default();
            return;
        }
        self.longest_finished = longest;
        if self.total() <= 0.0 {
            self.mass = vec![0.0; BINS];
            for mass in &mut self.mass[..support] {
                *mass = weight / support as f64;
            }
        }
        // The prior is measured against what the finished renders weigh:
        // many new, barely polled videos must not drown the shape the
        // finished ones taught (which is what their unfinished ages are
        // read against).
        let prior = PRIOR_PER_BIN * finished_weight.max(weight * 1e-9).max(1e-300);
        let prior_at = |bin: usize| if bin < support { prior } else { 0.0 };
        for _ in 0..iterations.max(1) {
            let mut next = vec![0.0; BINS];
            for (bins, w) in &finished {
                // Each covered bin's share: the estimate's mass over the
                // covered part of the bin, plus the prior.
                let share =
                    |&(bin, fraction): &(usize, f64)| fraction * (self.mass[bin] + prior_at(bin));
                let sum: f64 = bins.iter().map(share).sum();
                for covered in bins {
                    if sum > 0.0 {
                        next[covered.0] += w * share(covered) / sum;
                    } else {
                        next[covered.0] += w * covered.1;
                    }
                }
            }
            // Tail sums: what the estimate puts at or beyond each bin.
            let mut tail = vec![0.0; BINS + 1];
            for bin in (0..BINS).rev() {
                tail[bin] = tail[bin + 1] + self.mass[bin] + prior_at(bin);
            }
            // Per unit of mass in each later bin, what the censored ones
            // starting before it give (summed along the bins below).
            let mut per_mass_from = vec![0.0; BINS + 1];
            for &(bin, after, w) in &censored {
                let own = after * (self.mass[bin] + prior_at(bin));
                let total = own + tail[bin + 1];
                if total > 0.0 {
                    next[bin] += w * own / total;
                    per_mass_from[bin + 1] += w / total;
                } else {
                    // Beyond the horizon and every estimate: where it is.
                    next[bin] += w;
                }
            }
            let mut per_mass = 0.0;
            for bin in 0..BINS {
                per_mass += per_mass_from[bin];
                next[bin] += (self.mass[bin] + prior_at(bin)) * per_mass;
            }
            self.mass = next;
        }
        self.accumulate();
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

    /// An estimate fitted to `observations`, each weighing 1, to
    /// convergence.
    fn fitted(observations: impl IntoIterator<Item = Censored>) -> RenderTimes {
        let weighted: Vec<(Censored, f64)> = observations.into_iter().map(|o| (o, 1.0)).collect();
        let mut times = RenderTimes::default();
        times.fit(&weighted, 300, 1e6);
        times
    }

    #[test]
    fn exact_observations_give_their_empirical_quantiles() {
        let times = fitted((1..=100).map(|seconds| Censored {
            after_seconds: f64::from(seconds),
            before_seconds: f64::from(seconds),
        }));
        // Bins are 7.5 % wide: quantiles are right to within a bin.
        for (p, want) in [(0.1, 10.0), (0.5, 50.0), (0.9, 90.0)] {
            let got = times.quantile(p).unwrap();
            assert!((got / want - 1.0).abs() < 0.08, "p{p}: {got} vs {want}");
        }
        assert!((times.cdf(50.0) - 0.5).abs() < 0.03);
        assert!(times.cdf(0.001) < 1e-3);
        assert!((times.cdf(1e9) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn an_unfinished_video_shares_the_bin_of_its_age_by_the_part_after_it() {
        // 50 renders finished in bin 100, 50 in bin 102, and 50 videos are
        // still rendering at the middle of bin 100. Turnbull's
        // self-consistency equations, solved by hand: with a the mass of
        // bin 100 and b = 150 - a that of bin 102, the unfinished ones give
        // bin 100 the share 0.5 a / (0.5 a + b), so a = 50 + 25 a / (150 -
        // 0.5 a), whose root is a = 63.40 (42.3 % of the mass). Counting
        // the whole bin would give 50 %, none of it 33.3 %.
        let point = |x: f64| Censored {
            after_seconds: seconds_at(x),
            before_seconds: seconds_at(x),
        };
        let unfinished = Censored {
            after_seconds: seconds_at(100.5),
            before_seconds: f64::INFINITY,
        };
        let observations: Vec<(Censored, f64)> = std::iter::repeat_n(point(100.5), 50)
            .chain(std::iter::repeat_n(point(102.5), 50))
            .chain(std::iter::repeat_n(unfinished, 50))
            .map(|o| (o, 1.0))
            .collect();
        // The horizon just past bin 102 keeps the prior (which the hand
        // solution leaves out) to a few bins.
        let mut times = RenderTimes::default();
        times.fit(&observations, 500, seconds_at(103.0));
        let a = 63.40;
        let share = times.cdf(seconds_at(101.0));
        assert!((share - a / 150.0).abs() < 0.005, "{share}");
    }

    #[test]
    fn renders_beyond_the_last_bin_land_in_it() {
        // Ages past 10^7 s (a plausible `created_at` years back, or a
        // hostile one) are kept in the last bin, finished or not.
        let times = fitted([
            Censored {
                after_seconds: 1e8,
                before_seconds: 1e9,
            },
            Censored {
                after_seconds: 1e10,
                before_seconds: f64::INFINITY,
            },
        ]);
        assert!(times.cdf(9e6) < 1e-3, "{}", times.cdf(9e6));
        assert!((times.cdf(1e12) - 1.0).abs() < 1e-12);
        let median = times.quantile(0.5).unwrap();
        assert!(median > 9e6, "{median}");
    }

    #[test]
    fn observations_without_a_usable_weight_are_left_out() {
        let good = Censored {
            after_seconds: 10.0,
            before_seconds: 20.0,
        };
        let odd = Censored {
            after_seconds: 1000.0,
            before_seconds: 2000.0,
        };
        let mut with_odd = RenderTimes::default();
        with_odd.fit(
            &[
                (good, 1.0),
                (odd, f64::NAN),
                (odd, 0.0),
                (odd, -1.0),
                (odd, f64::INFINITY),
            ],
            50,
            1e6,
        );
        let mut without = RenderTimes::default();
        without.fit(&[(good, 1.0)], 50, 1e6);
        assert_eq!(with_odd.cdf(500.0), without.cdf(500.0));
        assert!((with_odd.cdf(25.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_estimate_has_no_quantiles() {
        let times = fitted([]);
        assert_eq!(times.quantile(0.5), None);
        assert_eq!(times.cdf(100.0), 0.0);
    }

    #[test]
    fn unfinished_videos_keep_the_estimate_from_seeing_only_quick_renders() {
        // Half a batch is done, in 100–149 s; the other half is still
        // rendering at 150 s. Without the unfinished half the median would
        // be 125 s; with it, half the mass lies beyond 150 s.
        let done = (100..150).map(|s| Censored {
            after_seconds: f64::from(s) - 1.0,
            before_seconds: f64::from(s),
        });
        let unfinished = (0..50).map(|_| Censored {
            after_seconds: 150.0,
            before_seconds: f64::INFINITY,
        });
        let times = fitted(done.chain(unfinished));
        // (Within a bin, 7.5 % wide, mass is spread evenly: 150 s cuts one.)
        assert!(
            (times.cdf(150.0) - 0.5).abs() < 0.03,
            "{}",
            times.cdf(150.0)
        );
        assert!(times.quantile(0.25).unwrap() < 150.0);
        assert!(times.quantile(0.75).unwrap() > 150.0);
    }

    // Recovery of known distributions from censored observations. The
    // oracle is each distribution's closed-form quantile function (or, for
    // the mixture, its closed-form CDF inverted by bisection), never the
    // estimator itself.

    /// The standard normal CDF, from erf (Abramowitz and Stegun 7.1.26,
    /// absolute error below 1.5e-7).
    fn normal_cdf(z: f64) -> f64 {
        let x = z.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erf = 1.0 - poly * (-x * x).exp();
        0.5 * (1.0 + erf.copysign(z))
    }

    /// Standard normal quantiles (published values).
    const Z: [(f64, f64); 5] = [
        (0.1, -1.281_551_6),
        (0.25, -0.674_489_8),
        (0.5, 0.0),
        (0.9, 1.281_551_6),
        (0.99, 2.326_347_9),
    ];

    fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
        // Box-Muller; 1 - f64() is in (0, 1], so the log is finite.
        let u = 1.0 - rng.f64();
        let v = rng.f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn lognormal(rng: &mut fastrand::Rng, median: f64, sigma: f64) -> f64 {
        median * (sigma * standard_normal(rng)).exp()
    }

    /// What the relay observes of a render of `seconds`: the polls of the
    /// exponential schedule (first at `scale × 10 s`, then growing by 1.5
    /// up to `scale × 60 s`, jittered ±10 %) around the finish.
    fn censored(seconds: f64, scale: f64, rng: &mut fastrand::Rng) -> Censored {
        let mut poll = scale * 10.0 * (0.9 + 0.2 * rng.f64());
        let mut gap = scale * 10.0;
        let mut last_unfinished = 0.0;
        while poll < seconds {
            last_unfinished = poll;
            poll += gap * (0.9 + 0.2 * rng.f64());
            gap = (gap * 1.5).min(scale * 60.0);
        }
        Censored {
            after_seconds: last_unfinished,
            before_seconds: poll,
        }
    }

    fn learned(samples: impl Iterator<Item = f64>, scale: f64, seed: u64) -> RenderTimes {
        let mut rng = fastrand::Rng::with_seed(seed);
        let observations: Vec<Censored> = samples
            .map(|seconds| censored(seconds, scale, &mut rng))
            .collect();
        fitted(observations)
    }

    fn assert_close(times: &RenderTimes, p: f64, want: f64, tolerance: f64) {
        let got = times.quantile(p).unwrap();
        assert!(
            (got / want - 1.0).abs() <= tolerance,
            "p{p}: learned {got:.3}, true {want:.3} (tolerance {tolerance})"
        );
    }

    #[test]
    fn recovers_a_lognormal_at_any_time_scale() {
        // The reference workload's renders (median 240 s, sigma 0.45), and
        // the same 300 times shorter with polls scaled alike: the error is
        // the same, the estimate is scale-free.
        for scale in [1.0, 1.0 / 300.0] {
            let mut rng = fastrand::Rng::with_seed(11);
            let samples: Vec<f64> = (0..4000)
                .map(|_| lognormal(&mut rng, 240.0 * scale, 0.45))
                .collect();
            let times = learned(samples.into_iter(), scale, 12);
            for (p, z) in Z {
                let want = 240.0 * scale * (0.45 * z).exp();
                // Within 6 % in the body; the p99 rests on 40 samples.
                let tolerance = if p >= 0.99 { 0.12 } else { 0.06 };
                assert_close(&times, p, want, tolerance);
            }
        }
    }

    #[test]
    fn recovers_a_bimodal_mixture() {
        // Half quick (median 30 s), half slow (median 400 s), narrow.
        let mut rng = fastrand::Rng::with_seed(21);
        let samples: Vec<f64> = (0..4000)
            .map(|i| {
                let median = if i % 2 == 0 { 30.0 } else { 400.0 };
                lognormal(&mut rng, median, 0.2)
            })
            .collect();
        let times = learned(samples.into_iter(), 1.0, 22);
        let mixture_cdf = |t: f64| {
            0.5 * normal_cdf((t / 30.0).ln() / 0.2) + 0.5 * normal_cdf((t / 400.0).ln() / 0.2)
        };
        let mixture_quantile = |p: f64| {
            let (mut low, mut high) = (1e-3f64, 1e6f64);
            for _ in 0..200 {
                let mid = (low * high).sqrt();
                if mixture_cdf(mid) < p {
                    low = mid
                } else {
                    high = mid
                }
            }
            low
        };
        for p in [0.1, 0.25, 0.75, 0.9] {
            // The quick mode sits under the 10 s first poll: its censoring
            // intervals are as wide as the mode itself.
            let tolerance = if p < 0.5 { 0.15 } else { 0.06 };
            assert_close(&times, p, mixture_quantile(p), tolerance);
        }
        // The gap between the modes is found: almost nothing in between.
        let between = times.cdf(250.0) - times.cdf(60.0);
        assert!(between < 0.06, "mass between the modes: {between}");
    }

    #[test]
    fn recovers_a_heavy_tail() {
        // Pareto with x_m = 30 s and alpha = 1.5: quantile x_m (1-p)^(-1/alpha).
        let mut rng = fastrand::Rng::with_seed(31);
        let samples: Vec<f64> = (0..4000)
            .map(|_| 30.0 * (1.0 - rng.f64()).powf(-1.0 / 1.5))
            .collect();
        let times = learned(samples.into_iter(), 1.0, 32);
        for (p, tolerance) in [(0.25f64, 0.12), (0.5, 0.06), (0.9, 0.06), (0.99, 0.15)] {
            let want = 30.0 * (1.0 - p).powf(-1.0 / 1.5);
            assert_close(&times, p, want, tolerance);
        }
    }
}
