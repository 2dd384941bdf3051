//! Render workloads: when videos arrive and how long JoggAI takes to render
//! them, for the simulator's time-based videos (`SimState::script_render`),
//! the scheduling benchmark (`jogg-relay bench --schedule`) and offline
//! simulations of the polling strategies.
//!
//! A workload is a list of [`RenderJob`]s. It comes either from the
//! [`ReferenceWorkload`] (the distribution the polling strategies are judged
//! on) or from a CSV of observed renders ([`from_csv`], which reads what
//! `jogg-relay export-renders` writes). [`DelayReport`] summarises how
//! quickly a strategy noticed the renders finish and what it cost.

use std::collections::HashMap;
use std::time::Duration;

/// One simulated render.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderJob {
    /// When the video is submitted (and enqueued in the relay), since the
    /// start of the run.
    pub arrival: Duration,
    /// Extra time spent waiting in JoggAI's queue before rendering starts.
    pub queued: Duration,
    /// Rendering time proper.
    pub render: Duration,
    /// Whether the render ends `failed` instead of `completed`.
    pub fails: bool,
}

impl RenderJob {
    /// Time from submission to the terminal status: `queued + render`.
    pub fn finishes_after(&self) -> Duration {
        self.queued + self.render
    }

    /// The same job with every duration multiplied by `factor` (a
    /// time-compressed replay).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            arrival: self.arrival.mul_f64(factor),
            queued: self.queued.mul_f64(factor),
            render: self.render.mul_f64(factor),
            ..self
        }
    }

    /// The status JoggAI reports `age` after submission: `pending` while
    /// queued and through the first fifth of the render (JoggAI is seen to
    /// answer `pending` for a while after a render starts), `processing`
    /// until [`finishes_after`](Self::finishes_after), then `completed`
    /// (or `failed` when the job fails).
    pub fn status_at(&self, age: Duration) -> &'static str {
        if age < self.queued + self.render.mul_f64(0.2) {
            "pending"
        } else if age < self.finishes_after() {
            "processing"
        } else if self.fails {
            "failed"
        } else {
            "completed"
        }
    }
}

/// Median render time of the reference workload, seconds.
pub const REFERENCE_MEDIAN_RENDER_SECS: f64 = 240.0;
/// Log-scale standard deviation (sigma) of the reference render time.
pub const REFERENCE_RENDER_SIGMA: f64 = 0.45;
/// Share of reference videos that also wait in JoggAI's queue.
pub const REFERENCE_QUEUED_SHARE: f64 = 0.10;
/// Mean of that queue wait (exponential), seconds.
pub const REFERENCE_MEAN_QUEUE_SECS: f64 = 600.0;
/// Videos per arrival wave.
pub const WAVE_VIDEOS: usize = 50;
/// A wave's videos arrive spread uniformly over this many seconds.
pub const WAVE_SPREAD_SECS: f64 = 60.0;
/// A new wave starts every this many seconds.
pub const WAVE_PERIOD_SECS: f64 = 600.0;

/// The reference workload polling strategies are compared on.
///
/// - Render time: lognormal, median 240 s, sigma 0.45 (so p5 ≈ 115 s,
///   p95 ≈ 503 s).
/// - 10 % of the videos first wait in JoggAI's queue for an exponential
///   time of mean 600 s.
/// - Arrivals come in waves, as a batch job submits them: 50 videos spread
///   uniformly over 60 s, a new wave every 10 minutes (video `i` is in wave
///   `i / 50`; the last wave may be partial).
/// - No render fails.
///
/// Every duration, arrivals included, is multiplied by `scale`: with
/// `scale = 1.0 / 30.0` a run lasts 30 times less, and every figure
/// measured on it is multiplied by 30 to read it in real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceWorkload {
    /// Number of videos.
    pub videos: usize,
    /// Time compression factor applied to every duration (1.0: real time).
    pub scale: f64,
    /// Seed of the generator: the same seed gives the same workload.
    pub seed: u64,
}

impl ReferenceWorkload {
    /// The workload's jobs, sorted by arrival.
    pub fn generate(&self) -> Vec<RenderJob> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut jobs: Vec<RenderJob> = (0..self.videos)
            .map(|i| {
                let arrival = wave_arrival(i, &mut rng);
                let render = lognormal(
                    &mut rng,
                    REFERENCE_MEDIAN_RENDER_SECS.ln(),
                    REFERENCE_RENDER_SIGMA,
                );
                // Both draws happen for every video, so the render times do
                // not depend on which videos were queued.
                let queued_draw = exponential(&mut rng, REFERENCE_MEAN_QUEUE_SECS);
                let queued = if rng.f64() < REFERENCE_QUEUED_SHARE {
                    queued_draw
                } else {
                    0.0
                };
                RenderJob {
                    arrival: seconds(arrival * self.scale),
                    queued: seconds(queued * self.scale),
                    render: seconds(render * self.scale),
                    fails: false,
                }
            })
            .collect();
        jobs.sort_by_key(|job| job.arrival);
        jobs
    }
}

/// Arrival of the `index`-th video in the reference waves, seconds.
fn wave_arrival(index: usize, rng: &mut fastrand::Rng) -> f64 {
    (index / WAVE_VIDEOS) as f64 * WAVE_PERIOD_SECS + rng.f64() * WAVE_SPREAD_SECS
}

/// A uniform draw in (0, 1]: never 0, so its logarithm is finite.
fn open_unit(rng: &mut fastrand::Rng) -> f64 {
    1.0 - rng.f64()
}

/// A standard normal draw (Box-Muller; one of the pair is used).
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let radius = (-2.0 * open_unit(rng).ln()).sqrt();
    let angle = std::f64::consts::TAU * rng.f64();
    radius * angle.cos()
}

/// A lognormal draw: `exp(mu + sigma·Z)`, whose median is `exp(mu)`.
fn lognormal(rng: &mut fastrand::Rng, mu: f64, sigma: f64) -> f64 {
    (mu + sigma * standard_normal(rng)).exp()
}

/// An exponential draw of the given mean (inverse transform).
fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    -mean * open_unit(rng).ln()
}

/// Seconds as a duration; the generators only produce finite,
/// non-negative values, and anything else is clamped rather than panicking.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// Why a workload CSV cannot be read. Lines are counted from 1 (the
/// header), as an editor shows them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// The text has no header line.
    #[error("the workload CSV is empty: expected a header line")]
    Empty,
    /// The header names neither way of giving the render time.
    #[error(
        "line 1: the header needs a render_seconds column, or both \
         finished_after_seconds and finished_before_seconds"
    )]
    NoRenderColumn,
    /// A column is named twice in the header.
    #[error("line 1: column {column:?} appears twice")]
    DuplicateColumn {
        /// The column.
        column: String,
    },
    /// A row has no value where one is required.
    #[error("line {line}, column {column}: missing value")]
    Missing {
        /// The line.
        line: usize,
        /// The column's name.
        column: String,
    },
    /// A value is not a finite, non-negative number of seconds.
    #[error("line {line}, column {column}: {value:?} is not a non-negative number of seconds")]
    BadNumber {
        /// The line.
        line: usize,
        /// The column's name.
        column: String,
        /// The value as written.
        value: String,
    },
    /// `finished_after_seconds` is later than `finished_before_seconds`.
    #[error(
        "line {line}, column finished_before_seconds: {before} is before finished_after_seconds ({after})"
    )]
    BadInterval {
        /// The line.
        line: usize,
        /// The interval's start.
        after: f64,
        /// The interval's end.
        before: f64,
    },
    /// A `state` that is neither a terminal nor a known live state.
    #[error(
        "line {line}, column state: unknown state {value:?}; expected completed, failed, \
         or active, abandoned, cancelled (skipped)"
    )]
    BadState {
        /// The line.
        line: usize,
        /// The value as written.
        value: String,
    },
    /// A row with a quote that is never closed.
    #[error("line {line}: unterminated quoted field")]
    Unterminated {
        /// The line.
        line: usize,
    },
}

/// Reads a workload from CSV text.
///
/// The first non-blank line is the header; columns are found by name, in
/// any order, and unknown columns are ignored. The render time is given
/// either as `render_seconds`, or as an interval `finished_after_seconds` ..
/// `finished_before_seconds` (the relay knows a render finished between its
/// last non-terminal answer and its first terminal one) in which the render
/// time is drawn uniformly with a generator seeded with `seed`. Optional
/// columns: `queued_seconds` (extra queue wait, default 0), `state`
/// (`failed`/`fail` make the job fail; `completed`/`success` or empty do
/// not; rows in `active`, `abandoned` or `cancelled` are skipped, their
/// render time being unknown), `arrival_seconds` (otherwise the jobs arrive
/// in the reference waves, in row order, unscaled). Fields may be
/// double-quoted. The file written by `jogg-relay export-renders` is read
/// as is.
///
/// The jobs are sorted by arrival.
pub fn from_csv(text: &str, seed: u64) -> Result<Vec<RenderJob>, WorkloadError> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_end_matches('\r')))
        .filter(|(_, line)| !line.trim().is_empty());
    let (header_line, header) = lines.next().ok_or(WorkloadError::Empty)?;
    let names = split_fields(header, header_line)?;
    let mut columns: HashMap<String, usize> = HashMap::new();
    for (index, name) in names.iter().enumerate() {
        let name = name.trim().to_ascii_lowercase();
        if columns.insert(name.clone(), index).is_some() {
            return Err(WorkloadError::DuplicateColumn { column: name });
        }
    }
    let column = |name: &str| columns.get(name).copied();
    let render_column = column("render_seconds");
    let interval = column("finished_after_seconds").zip(column("finished_before_seconds"));
    if render_column.is_none() && interval.is_none() {
        return Err(WorkloadError::NoRenderColumn);
    }
    let (queued_column, state_column, arrival_column) = (
        column("queued_seconds"),
        column("state"),
        column("arrival_seconds"),
    );

    let mut jobs = Vec::new();
    for (line, text) in lines {
        let fields = split_fields(text, line)?;
        let value = |index: usize| fields.get(index).map_or("", |v| v.trim());
        let fails = match state_column.map(value) {
            None | Some("" | "completed" | "success") => false,
            Some("failed" | "fail") => true,
            Some("active" | "abandoned" | "cancelled") => continue,
            Some(other) => {
                return Err(WorkloadError::BadState {
                    line,
                    value: other.to_owned(),
                });
            }
        };
        let number = |index: usize, name: &str| -> Result<Option<f64>, WorkloadError> {
            let raw = value(index);
            if raw.is_empty() {
                return Ok(None);
            }
            match raw.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
                _ => Err(WorkloadError::BadNumber {
                    line,
                    column: name.to_owned(),
                    value: raw.to_owned(),
                }),
            }
        };
        let required = |index: usize, name: &str| -> Result<f64, WorkloadError> {
            number(index, name)?.ok_or_else(|| WorkloadError::Missing {
                line,
                column: name.to_owned(),
            })
        };
        // `render_seconds` wins when a row has it; otherwise the interval.
        let explicit = match render_column {
            Some(index) => number(index, "render_seconds")?,
            None => None,
        };
        let render = match (explicit, interval) {
            (Some(render), _) => render,
            (None, Some((after_index, before_index))) => {
                let after = required(after_index, "finished_after_seconds")?;
                let before = required(before_index, "finished_before_seconds")?;
                if before < after {
                    return Err(WorkloadError::BadInterval {
                        line,
                        after,
                        before,
                    });
                }
                after + rng.f64() * (before - after)
            }
            (None, None) => {
                return Err(WorkloadError::Missing {
                    line,
                    column: "render_seconds".to_owned(),
                });
            }
        };
        let queued = match queued_column {
            Some(index) => number(index, "queued_seconds")?.unwrap_or(0.0),
            None => 0.0,
        };
        let arrival = match arrival_column {
            Some(index) => required(index, "arrival_seconds")?,
            None => wave_arrival(jobs.len(), &mut rng),
        };
        jobs.push(RenderJob {
            arrival: seconds(arrival),
            queued: seconds(queued),
            render: seconds(render),
            fails,
        });
    }
    jobs.sort_by_key(|job| job.arrival);
    Ok(jobs)
}

/// Splits one CSV line into fields: commas separate, a field may be
/// double-quoted (`""` inside quotes is a quote).
fn split_fields(text: &str, line: usize) -> Result<Vec<String>, WorkloadError> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err(WorkloadError::Unterminated { line });
    }
    fields.push(field);
    Ok(fields)
}

/// How quickly a polling strategy noticed renders finish, and at what cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelayReport {
    /// Videos in the run.
    pub videos: usize,
    /// Upstream calls per video, on average.
    pub calls_per_video: f64,
    /// Median detection delay (terminal status first seen − render end).
    pub delay_p50: Duration,
    /// 95th percentile of the detection delay.
    pub delay_p95: Duration,
    /// 99th percentile of the detection delay.
    pub delay_p99: Duration,
    /// Mean detection delay.
    pub delay_mean: Duration,
    /// Videos whose terminal status was never seen.
    pub undetected: usize,
}

impl DelayReport {
    /// The report of a run: `polls_per_video` holds one count per video
    /// (detected or not), `delays` one delay per detected video. Quantiles
    /// are nearest-rank (the smallest sample with at least p·n samples at
    /// or below it); with no delays they are zero.
    pub fn from_samples(polls_per_video: &[u32], delays: &[Duration], undetected: usize) -> Self {
        let videos = polls_per_video.len();
        let calls: u64 = polls_per_video.iter().map(|&p| u64::from(p)).sum();
        let calls_per_video = if videos == 0 {
            0.0
        } else {
            calls as f64 / videos as f64
        };
        let mut sorted = delays.to_vec();
        sorted.sort_unstable();
        let delay_mean = if sorted.is_empty() {
            Duration::ZERO
        } else {
            // Summed in nanoseconds (u128), so no sum of delays overflows.
            let total: u128 = sorted.iter().map(Duration::as_nanos).sum();
            let mean = total / sorted.len() as u128;
            Duration::from_nanos(u64::try_from(mean).unwrap_or(u64::MAX))
        };
        Self {
            videos,
            calls_per_video,
            delay_p50: nearest_rank(&sorted, 0.50),
            delay_p95: nearest_rank(&sorted, 0.95),
            delay_p99: nearest_rank(&sorted, 0.99),
            delay_mean,
            undetected,
        }
    }

    /// The same report with every delay multiplied by `factor` (to read a
    /// time-compressed run in real time: `factor` = the compression).
    pub fn scaled(&self, factor: f64) -> Self {
        let scale = |d: Duration| seconds(d.as_secs_f64() * factor);
        Self {
            delay_p50: scale(self.delay_p50),
            delay_p95: scale(self.delay_p95),
            delay_p99: scale(self.delay_p99),
            delay_mean: scale(self.delay_mean),
            ..*self
        }
    }
}

/// The nearest-rank `p` quantile of `sorted` (ascending); zero when empty.
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7),
    /// written here independently of the generator under test.
    fn erf(x: f64) -> f64 {
        let sign = x.signum();
        let x = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        sign * (1.0 - poly * (-x * x).exp())
    }

    /// The closed-form lognormal CDF of the reference render time.
    fn reference_cdf(seconds: f64) -> f64 {
        0.5 * (1.0
            + erf(
                (seconds.ln() - 240f64.ln()) / (REFERENCE_RENDER_SIGMA * std::f64::consts::SQRT_2)
            ))
    }

    fn workload(videos: usize, seed: u64) -> Vec<RenderJob> {
        ReferenceWorkload {
            videos,
            scale: 1.0,
            seed,
        }
        .generate()
    }

    #[test]
    fn erf_matches_published_values() {
        // Abramowitz & Stegun, table 7.1.
        for (x, expected) in [
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
        ] {
            assert!((erf(x) - expected).abs() < 2e-7, "erf({x})");
            assert!((erf(-x) + expected).abs() < 2e-7, "erf(-{x})");
        }
    }

    #[test]
    fn render_times_follow_the_stated_lognormal() {
        let jobs = workload(20_000, 7);
        let mut renders: Vec<f64> = jobs.iter().map(|j| j.render.as_secs_f64()).collect();
        renders.sort_by(f64::total_cmp);
        let median = renders[renders.len() / 2];
        assert!((median / 240.0 - 1.0).abs() < 0.03, "median {median}");
        let logs: Vec<f64> = renders.iter().map(|r| r.ln()).collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let sd =
            (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (logs.len() - 1) as f64).sqrt();
        assert!((sd / 0.45 - 1.0).abs() < 0.05, "log-sd {sd}");
        // Kolmogorov-Smirnov distance to the closed-form CDF: the 1 %
        // critical value for n = 20,000 is 1.63/sqrt(n) ≈ 0.0115.
        let n = renders.len() as f64;
        let distance = renders
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let cdf = reference_cdf(r);
                (cdf - i as f64 / n)
                    .abs()
                    .max(((i + 1) as f64 / n - cdf).abs())
            })
            .fold(0.0, f64::max);
        assert!(distance < 0.0115, "KS distance {distance}");
        // Published lognormal quantiles: exp(ln 240 ± 1.645·0.45) = 114.6 s, 502.6 s.
        let p5 = renders[(0.05 * n) as usize];
        let p95 = renders[(0.95 * n) as usize];
        assert!((p5 / 114.6 - 1.0).abs() < 0.04, "p5 {p5}");
        assert!((p95 / 502.6 - 1.0).abs() < 0.04, "p95 {p95}");
    }

    #[test]
    fn a_tenth_of_the_videos_wait_in_the_queue_for_ten_minutes_on_average() {
        let jobs = workload(20_000, 11);
        let queued: Vec<f64> = jobs
            .iter()
            .filter(|j| j.queued > Duration::ZERO)
            .map(|j| j.queued.as_secs_f64())
            .collect();
        let share = queued.len() as f64 / jobs.len() as f64;
        assert!((share - 0.10).abs() < 0.015, "queued share {share}");
        // The mean of ~2,000 exponential draws has a 2.2 % standard error.
        let mean = queued.iter().sum::<f64>() / queued.len() as f64;
        assert!((mean / 600.0 - 1.0).abs() < 0.08, "mean queue wait {mean}");
    }

    #[test]
    fn arrivals_come_in_waves_of_fifty_every_ten_minutes() {
        let jobs = workload(120, 3);
        assert!(jobs.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        for (wave, chunk) in jobs.chunks(50).enumerate() {
            let start = wave as f64 * 600.0;
            for job in chunk {
                let at = job.arrival.as_secs_f64();
                assert!((start..start + 60.0).contains(&at), "wave {wave}: {at}");
            }
        }
        assert_eq!(jobs.chunks(50).last().map(<[_]>::len), Some(20));
        assert!(jobs.iter().all(|j| !j.fails));
    }

    #[test]
    fn scale_multiplies_every_duration() {
        let real = workload(500, 5);
        let fast = ReferenceWorkload {
            videos: 500,
            scale: 1.0 / 30.0,
            seed: 5,
        }
        .generate();
        assert_eq!(real.len(), fast.len());
        let close =
            |a: Duration, b: Duration| (a.as_secs_f64() / 30.0 - b.as_secs_f64()).abs() < 1e-6;
        for (r, f) in real.iter().zip(&fast) {
            assert!(close(r.arrival, f.arrival), "{r:?} vs {f:?}");
            assert!(close(r.queued, f.queued), "{r:?} vs {f:?}");
            assert!(close(r.render, f.render), "{r:?} vs {f:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_workload_and_another_does_not() {
        assert_eq!(workload(300, 42), workload(300, 42));
        assert_ne!(workload(300, 42), workload(300, 43));
    }

    #[test]
    fn status_follows_the_render_phases_at_their_boundaries() {
        let job = RenderJob {
            arrival: Duration::ZERO,
            queued: secs(100.0),
            render: secs(200.0),
            fails: false,
        };
        assert_eq!(job.finishes_after(), secs(300.0));
        // Pending until queued + 0.2·render = 140 s.
        assert_eq!(job.status_at(Duration::ZERO), "pending");
        assert_eq!(
            job.status_at(secs(140.0) - Duration::from_nanos(1)),
            "pending"
        );
        assert_eq!(job.status_at(secs(140.0)), "processing");
        assert_eq!(
            job.status_at(secs(300.0) - Duration::from_nanos(1)),
            "processing"
        );
        assert_eq!(job.status_at(secs(300.0)), "completed");
        assert_eq!(job.status_at(secs(1e6)), "completed");
        let failing = RenderJob { fails: true, ..job };
        assert_eq!(failing.status_at(secs(299.0)), "processing");
        assert_eq!(failing.status_at(secs(300.0)), "failed");
    }

    #[test]
    fn csv_with_render_seconds_in_any_column_order() {
        let text = "state,arrival_seconds,extra,render_seconds,queued_seconds\n\
                    completed,30,x,200.5,\n\
                    failed,10,y,100,50\n\
                    \n\
                    \"success\",20,\"a,b\",300,0\n";
        let jobs = from_csv(text, 1).unwrap();
        assert_eq!(
            jobs,
            vec![
                RenderJob {
                    arrival: secs(10.0),
                    queued: secs(50.0),
                    render: secs(100.0),
                    fails: true
                },
                RenderJob {
                    arrival: secs(20.0),
                    queued: Duration::ZERO,
                    render: secs(300.0),
                    fails: false
                },
                RenderJob {
                    arrival: secs(30.0),
                    queued: Duration::ZERO,
                    render: secs(200.5),
                    fails: false
                },
            ]
        );
    }

    #[test]
    fn csv_exported_by_the_relay_draws_renders_inside_the_interval() {
        let text = "video_id,state,started_at,finished_after_seconds,finished_before_seconds,processing_seen_seconds\r\n\
                    v1,completed,2025-01-01T00:00:00.000Z,200,230,40\r\n\
                    v2,failed,2025-01-01T00:00:10.000Z,90,90,\r\n\
                    v3,active,2025-01-01T00:00:20.000Z,,,\r\n\
                    v4,completed,2025-01-01T00:00:30.000Z,400.5,460,100\r\n";
        let jobs = from_csv(text, 9).unwrap();
        assert_eq!(jobs.len(), 3, "the active video is skipped");
        // No arrival column: the rows arrive in the first reference wave.
        assert!(jobs.iter().all(|j| j.arrival < secs(60.0)));
        assert!(jobs.iter().all(|j| j.queued == Duration::ZERO));
        let mut renders: Vec<(f64, bool)> = jobs
            .iter()
            .map(|j| (j.render.as_secs_f64(), j.fails))
            .collect();
        renders.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!((renders[0].0 - 90.0).abs() < 1e-9 && renders[0].1);
        assert!((200.0..=230.0).contains(&renders[1].0) && !renders[1].1);
        assert!((400.5..=460.0).contains(&renders[2].0) && !renders[2].1);
        assert_eq!(from_csv(text, 9).unwrap(), jobs, "deterministic per seed");
        assert_ne!(from_csv(text, 10).unwrap(), jobs, "the seed matters");
    }

    #[test]
    fn interval_draws_are_uniform() {
        let mut text =
            String::from("finished_after_seconds,finished_before_seconds,arrival_seconds\n");
        for _ in 0..4000 {
            text.push_str("100,200,0\n");
        }
        let jobs = from_csv(&text, 4).unwrap();
        let below_125 = jobs.iter().filter(|j| j.render < secs(125.0)).count() as f64;
        let below_150 = jobs.iter().filter(|j| j.render < secs(150.0)).count() as f64;
        assert!((below_125 / 4000.0 - 0.25).abs() < 0.03, "{below_125}");
        assert!((below_150 / 4000.0 - 0.5).abs() < 0.03, "{below_150}");
    }

    #[test]
    fn csv_errors_name_the_line_and_column() {
        let cases = [
            ("", "the workload CSV is empty: expected a header line"),
            (
                "video_id,finished_after_seconds\nv,1\n",
                "line 1: the header needs a render_seconds column, or both finished_after_seconds and finished_before_seconds",
            ),
            (
                "render_seconds,render_seconds\n1,2\n",
                "line 1: column \"render_seconds\" appears twice",
            ),
            (
                "render_seconds\n10\n\nabc\n",
                "line 4, column render_seconds: \"abc\" is not a non-negative number of seconds",
            ),
            (
                "render_seconds,queued_seconds\n10,-1\n",
                "line 2, column queued_seconds: \"-1\" is not a non-negative number of seconds",
            ),
            (
                "render_seconds\n10\nNaN\n",
                "line 3, column render_seconds: \"NaN\" is not a non-negative number of seconds",
            ),
            (
                "finished_after_seconds,finished_before_seconds\n10,20\n5,\n",
                "line 3, column finished_before_seconds: missing value",
            ),
            (
                "finished_after_seconds,finished_before_seconds\n30,20\n",
                "line 2, column finished_before_seconds: 20 is before finished_after_seconds (30)",
            ),
            (
                "render_seconds,state\n10,done\n",
                "line 2, column state: unknown state \"done\"; expected completed, failed, or active, abandoned, cancelled (skipped)",
            ),
            (
                "render_seconds,arrival_seconds\n10,\n",
                "line 2, column arrival_seconds: missing value",
            ),
            (
                "render_seconds\n\"10\n",
                "line 2: unterminated quoted field",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                from_csv(text, 0).unwrap_err().to_string(),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn delay_report_uses_nearest_rank_quantiles() {
        let delays: Vec<Duration> = (1..=100).rev().map(Duration::from_secs).collect();
        let report = DelayReport::from_samples(&[3, 4, 5, 8], &delays, 2);
        assert_eq!(report.videos, 4);
        assert!((report.calls_per_video - 5.0).abs() < 1e-12);
        assert_eq!(report.delay_p50, Duration::from_secs(50));
        assert_eq!(report.delay_p95, Duration::from_secs(95));
        assert_eq!(report.delay_p99, Duration::from_secs(99));
        assert_eq!(report.delay_mean, Duration::from_millis(50_500));
        assert_eq!(report.undetected, 2);
        // Ten samples: p95 and p99 are both the largest (rank 10).
        let ten: Vec<Duration> = (1..=10).map(Duration::from_secs).collect();
        let report = DelayReport::from_samples(&[1], &ten, 0);
        assert_eq!(report.delay_p50, Duration::from_secs(5));
        assert_eq!(report.delay_p95, Duration::from_secs(10));
        assert_eq!(report.delay_p99, Duration::from_secs(10));
        let scaled = report.scaled(30.0);
        assert_eq!(scaled.delay_p50, Duration::from_secs(150));
        assert_eq!(scaled.delay_mean, Duration::from_secs(165));
        assert_eq!(scaled.calls_per_video, report.calls_per_video);
        let empty = DelayReport::from_samples(&[], &[], 0);
        assert_eq!(empty.calls_per_video, 0.0);
        assert_eq!(empty.delay_p99, Duration::ZERO);
    }
}
