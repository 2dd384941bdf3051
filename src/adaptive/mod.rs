//! The adaptive poll schedule (`polling.strategy = "adaptive"`): learn how
//! long JoggAI takes to render, from the relay's own finished videos, and
//! poll each video when a completion has become likely.
//!
//! - [`estimate`] holds the render-time distribution, learned from
//!   interval-censored observations.
//! - [`Learner`] keeps two of them: time from the video's start, and time
//!   from the first poll that saw it rendering (JoggAI says `pending` while
//!   a video waits in its queue, which can last far longer than the render
//!   itself; once it says `processing`, the clock that matters restarts).
//! - [`Schedule::next_gap`] spaces polls by equal steps of probability
//!   mass of the learned distribution; [`Schedule::completion_chance`] ranks
//!   due videos when the budget cannot poll them all.
//!
//! Everything here is pure and synchronous: the poller owns a `Learner`
//! behind a lock, feeds it each finished video after its terminal result is
//! committed, and rebuilds it from the database at start (see
//! ARCHITECTURE.md), so what was learned survives restarts without a
//! separate file.

pub mod estimate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::domain::Millis;
use estimate::{Censored, RenderTimes};

/// The quantiles reported by [`Learner::stats`] and in `/metrics`.
pub const REPORTED_QUANTILES: [f64; 7] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

/// When the learned distribution has this little mass left beyond an age,
/// the video is past everything seen: it is polled every `max_interval`.
const EXHAUSTED: f64 = 1e-3;

/// Beyond the last this much of the learned mass, the completion chance
/// uses an exponential tail (see [`Schedule::completion_chance`]).
const TAIL: f64 = 0.01;

/// How many finished videos a learner with `half_life` keeps: ten
/// half-lives (beyond which a video weighs under 0.1 %), at least 256.
pub fn finished_kept(half_life: u32) -> usize {
    (half_life.max(1) as usize * 10).max(256)
}

/// The adaptive strategy's own settings (`polling.adaptive_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSettings {
    /// Probability mass between two polls of one video.
    pub step: f64,
    /// Observations after which an observation weighs half.
    pub half_life: u32,
    /// Finished videos needed before a model is used (before that the
    /// exponential schedule runs).
    pub warmup: u32,
    /// No render is ever seen to take longer (`polling.give_up_after`): a
    /// video still rendering is known to finish later than its age, but
    /// not beyond this.
    pub horizon: Duration,
}

/// What the relay knows of one video's render: when it started, when it
/// was last seen unfinished, when it was first seen rendering, and when it
/// was seen finished (if it has been). Built by the poller from each
/// answer, and by the store from the newest videos at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// When the video started (see [`started_at`]).
    pub started_at: Millis,
    /// The last poll that saw it unfinished; `None` before one did.
    pub unfinished_seen_at: Option<Millis>,
    /// The first poll that saw it rendering (an unfinished status other
    /// than `pending`).
    pub rendering_seen_at: Option<Millis>,
    /// The poll that saw it finished; `None` while it is not.
    pub finished_seen_at: Option<Millis>,
}

impl Observation {
    /// What it says of the render time measured from `origin`: finished
    /// within an interval, or still unfinished after an age (right-censored,
    /// `before_seconds` infinite); `None` when nothing has been seen after
    /// the origin yet.
    fn censored_from(&self, origin: Millis) -> Option<Censored> {
        let after = self
            .unfinished_seen_at
            .map(|at| seconds_between(origin, at));
        match self.finished_seen_at {
            Some(finished) => Some(Censored {
                after_seconds: after.unwrap_or(0.0),
                before_seconds: seconds_between(origin, finished),
            }),
            None => Some(Censored {
                after_seconds: after?,
                before_seconds: f64::INFINITY,
            }),
        }
    }
}

/// Where a video stands, for scheduling its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoClock {
    /// When it started (see [`started_at`]).
    pub started_at: Millis,
    /// The first poll that saw it rendering, if one has.
    pub rendering_seen_at: Option<Millis>,
}

/// The start of a video's render clock: JoggAI's `created_at` when it is
/// plausible, else the enqueue time.
///
/// `created_at` has whole-second resolution, so it is used only when it is
/// at least a second before the enqueue (the app enqueued late, or the
/// relay was behind); the true start is then somewhere in that second, and
/// its middle is taken. It must also not be older than `give_up_after`
/// before the enqueue (a stale or wrong clock), nor after the enqueue.
pub fn started_at(enqueued_at: Millis, created_at: Option<i64>, give_up_after: Duration) -> Millis {
    let Some(created_ms) = created_at.and_then(|s| s.checked_mul(1000)) else {
        return enqueued_at;
    };
    let oldest = enqueued_at
        .0
        .saturating_sub(give_up_after.as_millis() as i64);
    if created_ms >= oldest && created_ms.saturating_add(1000) <= enqueued_at.0 {
        Millis(created_ms + 500)
    } else {
        enqueued_at
    }
}

/// Seconds from `from` to `to`, never negative.
fn seconds_between(from: Millis, to: Millis) -> f64 {
    (to.0.saturating_sub(from.0)).max(0) as f64 / 1000.0
}

/// Which learned clock applies to a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(usize)]
pub enum Phase {
    /// Time since the video's start (no poll has seen it rendering yet).
    FromStart,
    /// Time since the first poll that saw it rendering.
    FromRendering,
}

impl Phase {
    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::FromStart => "from_start",
            Phase::FromRendering => "from_rendering",
        }
    }
}

/// A fit runs after this many updates at least (and whenever a model has
/// just learned enough to be used); with many videos kept, after one update
/// per [`REFIT_SHARE`] of them, so that the cost of fitting per update stays
/// the same whatever the number kept.
const REFIT_EVERY: u32 = 32;
/// See [`REFIT_EVERY`].
const REFIT_SHARE: usize = 8;
/// EM rounds per fit, each warm-started from the previous fit.
const FIT_ITERATIONS: usize = 8;
/// EM rounds of a fit from scratch (after the replay at start).
const FULL_FIT_ITERATIONS: usize = 100;
/// Up to this many videos kept, a report refits first (a few milliseconds).
const REFIT_ON_REPORT: usize = 4096;

/// The two learned distributions (see the module docs), fitted to the
/// newest videos the relay has polled, in the order it took them: the
/// finished ones and the ones still rendering alike, each weighing less the
/// more videos came after it (`half_life`). Weighting by arrival rather
/// than by finish keeps a half-done batch from looking quick, and a
/// finished one from looking slow.
#[derive(Debug, Clone)]
pub struct Learner {
    settings: AdaptiveSettings,
    /// Weight factor per newer video.
    decay: f64,
    /// Finished videos kept: ten half-lives, beyond which a video weighs
    /// under 0.1 % (unfinished ones are kept beside them, up to as many).
    capacity: usize,
    /// The newest videos by rowid (the order the relay took them).
    videos: BTreeMap<i64, Observation>,
    /// Finished videos among `videos`, per model.
    finished: [usize; 2],
    /// Updates since the last fit.
    since_fit: u32,
    /// The last fit: what polls are scheduled and ranked by. Shared, so
    /// readers never wait for a fit (see [`SharedLearner::schedule`]).
    schedule: Arc<Schedule>,
    /// When a video was last seen finished.
    updated_at: Option<Millis>,
}

/// The fitted models, immutable: what the poller schedules by and the claim
/// ranks by, read without the learner's lock.
#[derive(Debug, Clone)]
pub struct Schedule {
    step: f64,
    from_start: RenderTimes,
    from_rendering: RenderTimes,
    /// Whether each model had learned enough when it was fitted.
    warm: [bool; 2],
}

/// One learned distribution as reported on `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStats {
    /// Which clock it measures.
    pub phase: Phase,
    /// Finished videos it is fitted to.
    pub observations: u64,
    /// Videos still rendering it is fitted to (each known to take longer
    /// than its age at its last poll).
    pub unfinished: u64,
    /// What the finished ones are worth after fading (the newest video
    /// weighs 1).
    pub effective_samples: f64,
    /// Whether it has learned enough to schedule polls (it does with
    /// `polling.strategy = "adaptive"`).
    pub warmed_up: bool,
    /// `(p, seconds)` for each of [`REPORTED_QUANTILES`]; empty until the
    /// first observation, and `None` for a quantile beyond the longest
    /// render seen finished (videos still rendering put mass there, but
    /// nothing says where).
    pub quantiles: Vec<(f64, Option<f64>)>,
}

impl Learner {
    /// An empty learner.
    pub fn new(settings: AdaptiveSettings) -> Self {
        let half_life = f64::from(settings.half_life.max(1));
        Self {
            settings,
            decay: 0.5f64.powf(1.0 / half_life),
            capacity: finished_kept(settings.half_life),
            videos: BTreeMap::new(),
            finished: [0; 2],
            since_fit: 0,
            schedule: Arc::new(Schedule {
                step: settings.step,
                from_start: RenderTimes::default(),
                from_rendering: RenderTimes::default(),
                warm: [false; 2],
            }),
            updated_at: None,
        }
    }

    /// The last fit.
    pub fn schedule(&self) -> &Arc<Schedule> {
        &self.schedule
    }

    /// Whether `observation` counts as finished in `phase`'s model.
    fn finished_in(observation: &Observation, phase: Phase) -> bool {
        observation.finished_seen_at.is_some()
            && (phase == Phase::FromStart || observation.rendering_seen_at.is_some())
    }

    /// Takes what is now known of `video` (its rowid: the relay takes
    /// videos in rowid order), and refits when enough has changed. A video
    /// older than every one kept, once the learner is full, is ignored.
    pub fn record(&mut self, video: i64, observation: &Observation) {
        self.replay(video, observation);
        let newly_warm = [Phase::FromStart, Phase::FromRendering]
            .into_iter()
            .any(|phase| self.warm(phase) != self.schedule.warm[phase as usize]);
        let refit_every = (self.videos.len() / REFIT_SHARE).max(REFIT_EVERY as usize);
        if self.since_fit as usize >= refit_every || newly_warm {
            self.fit(FIT_ITERATIONS);
        }
    }

    /// Like [`Learner::record`], without refitting: for a batch (the replay
    /// at start), followed by one [`Learner::refit`].
    pub fn replay(&mut self, video: i64, observation: &Observation) {
        if self.videos.len() >= self.capacity
            && self
                .videos
                .first_key_value()
                .is_some_and(|(&oldest, _)| video < oldest)
        {
            return;
        }
        let previous = self.videos.insert(video, *observation);
        for phase in [Phase::FromStart, Phase::FromRendering] {
            let was = previous.is_some_and(|p| Self::finished_in(&p, phase));
            let is = Self::finished_in(observation, phase);
            let count = &mut self.finished[phase as usize];
            *count = (*count + usize::from(is)).saturating_sub(usize::from(was));
        }
        // The oldest go once more than `capacity` of them have finished
        // (or twice that many are kept at all): a large batch of new,
        // unfinished videos must not push out what the finished ones
        // taught, which is what their right-censored ages are read against.
        while self.finished[Phase::FromStart as usize] > self.capacity
            || self.videos.len() > 2 * self.capacity
        {
            let Some((_, evicted)) = self.videos.pop_first() else {
                break;
            };
            for phase in [Phase::FromStart, Phase::FromRendering] {
                if Self::finished_in(&evicted, phase) {
                    self.finished[phase as usize] -= 1;
                }
            }
        }
        if let Some(finished) = observation.finished_seen_at {
            self.updated_at = Some(self.updated_at.map_or(finished, |at| at.max(finished)));
        }
        self.since_fit += 1;
    }

    /// The newest video recorded (its rowid).
    pub fn newest_video(&self) -> Option<i64> {
        self.videos.last_key_value().map(|(&id, _)| id)
    }

    /// Fits both models to convergence (after a batch of records, such as
    /// the replay at start).
    pub fn refit(&mut self) {
        self.fit(FULL_FIT_ITERATIONS);
    }

    /// Fits both models to the kept videos, `iterations` EM rounds each,
    /// warm-started from the last fit, and publishes the result.
    fn fit(&mut self, iterations: usize) {
        self.since_fit = 0;
        let mut fitted = Schedule::clone(&self.schedule);
        for phase in [Phase::FromStart, Phase::FromRendering] {
            let observations = self.observations(phase);
            let model = match phase {
                Phase::FromStart => &mut fitted.from_start,
                Phase::FromRendering => &mut fitted.from_rendering,
            };
            model.fit(
                &observations,
                iterations,
                self.settings.horizon.as_secs_f64(),
            );
            fitted.warm[phase as usize] = self.warm(phase);
        }
        self.schedule = Arc::new(fitted);
    }

    /// What the kept videos say of `phase`'s clock, newest first, each with
    /// its weight (the newest weighs 1).
    fn observations(&self, phase: Phase) -> Vec<(Censored, f64)> {
        let mut weight = 1.0;
        let mut observations = Vec::with_capacity(self.videos.len());
        for observation in self.videos.values().rev() {
            let origin = match phase {
                Phase::FromStart => Some(observation.started_at),
                Phase::FromRendering => observation.rendering_seen_at,
            };
            if let Some(censored) = origin.and_then(|o| observation.censored_from(o)) {
                observations.push((censored, weight));
            }
            weight *= self.decay;
        }
        observations
    }

    /// When the last observation was taken.
    pub fn updated_at(&self) -> Option<Millis> {
        self.updated_at
    }

    fn warm(&self, phase: Phase) -> bool {
        self.finished[phase as usize] >= self.settings.warmup as usize
    }

    /// See [`Schedule::next_gap`] (on the last fit; the relay reads the
    /// published [`Schedule`] instead, tests read it through here).
    #[cfg(test)]
    pub fn next_gap(
        &self,
        video: &VideoClock,
        now: Millis,
        min_gap: Duration,
        max_gap: Duration,
    ) -> Option<Duration> {
        self.schedule.next_gap(video, now, min_gap, max_gap)
    }

    /// See [`Schedule::completion_chance`] (on the last fit; as above).
    #[cfg(test)]
    pub fn completion_chance(
        &self,
        video: &VideoClock,
        last_seen: Option<Millis>,
        now: Millis,
    ) -> f64 {
        self.schedule.completion_chance(video, last_seen, now)
    }

    /// Both models, for `/v1/stats`, the CLI and `/metrics`: the counts of
    /// what is kept now, the quantiles of the last fit. A learner small
    /// enough to fit in a few milliseconds is refitted first, so a report
    /// is current; a larger one shows its last fit, at most an eighth of
    /// its videos old (the lock this runs under is the one every poll
    /// takes to record its result).
    pub fn stats(&mut self) -> Vec<ModelStats> {
        if self.since_fit > 0 && self.videos.len() <= REFIT_ON_REPORT {
            self.fit(FIT_ITERATIONS);
        }
        [Phase::FromStart, Phase::FromRendering]
            .into_iter()
            .map(|phase| {
                let model = self.schedule.model(phase);
                let observations = self.observations(phase);
                ModelStats {
                    phase,
                    observations: self.finished[phase as usize] as u64,
                    unfinished: observations
                        .iter()
                        .filter(|(o, _)| o.before_seconds.is_infinite())
                        .count() as u64,
                    effective_samples: observations
                        .iter()
                        .filter(|(o, _)| o.before_seconds.is_finite())
                        .map(|(_, w)| w)
                        .sum(),
                    warmed_up: self.warm(phase),
                    quantiles: REPORTED_QUANTILES
                        .iter()
                        .filter_map(|&p| {
                            let seconds = model.quantile(p)?;
                            // Beyond the longest render seen finished, only
                            // "later" is known (videos still rendering).
                            let known = seconds <= model.longest_finished() * estimate::BIN_WIDTH;
                            Some((p, known.then_some(seconds)))
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

impl Schedule {
    /// The distribution fitted for `phase` (the console draws its CDF).
    pub fn model(&self, phase: Phase) -> &RenderTimes {
        match phase {
            Phase::FromStart => &self.from_start,
            Phase::FromRendering => &self.from_rendering,
        }
    }

    fn warm(&self, phase: Phase) -> bool {
        self.warm[phase as usize]
    }

    /// The clock that applies to `video` and its origin: time since it was
    /// seen rendering when that model has learned enough, else time since
    /// its start; `None` while neither has (cold start).
    fn clock(&self, video: &VideoClock) -> Option<(Phase, Millis)> {
        match video.rendering_seen_at {
            Some(at) if self.warm(Phase::FromRendering) => Some((Phase::FromRendering, at)),
            _ if self.warm(Phase::FromStart) => Some((Phase::FromStart, video.started_at)),
            _ => None,
        }
    }

    /// The gap to the next poll of `video`, seen unfinished at `now`: until
    /// the learned distribution has gained `step` of probability mass since
    /// the video's current age, within `[min_gap, max_gap]`. `None` while
    /// nothing has been learned for it: the caller falls back to the
    /// exponential schedule.
    pub fn next_gap(
        &self,
        video: &VideoClock,
        now: Millis,
        min_gap: Duration,
        max_gap: Duration,
    ) -> Option<Duration> {
        let (phase, origin) = self.clock(video)?;
        Some(gap_by_mass(
            self.model(phase),
            seconds_between(origin, now),
            self.step,
            min_gap,
            max_gap,
        ))
    }

    /// The chance that `video`, unfinished at `last_seen` (or never polled),
    /// has finished by `now`: what the poller ranks due videos by when the
    /// budget cannot poll them all. 0 while nothing has been learned.
    pub fn completion_chance(
        &self,
        video: &VideoClock,
        last_seen: Option<Millis>,
        now: Millis,
    ) -> f64 {
        let Some((phase, origin)) = self.clock(video) else {
            return 0.0;
        };
        let model = self.model(phase);
        let age_then = last_seen.map_or(0.0, |at| seconds_between(origin, at));
        let age_now = seconds_between(origin, now);
        let done_then = model.cdf(age_then);
        let left = 1.0 - done_then;
        if left > TAIL {
            return ((model.cdf(age_now) - done_then) / left).clamp(0.0, 1.0);
        }
        // In the last percent of what was learned the estimate rests on a
        // handful of videos, and beyond it on none: the tail is taken as
        // exponential, with the mean an exponential tail would have given
        // the learned p90 and p99. Its chance still grows with the time
        // since the last poll, so a video JoggAI keeps in its queue for
        // long is not starved by younger ones.
        let (Some(p90), Some(p99)) = (model.quantile(0.9), model.quantile(0.99)) else {
            return 0.0;
        };
        let tail_mean = ((p99 - p90) / std::f64::consts::LN_10).max(1e-3);
        let waited = age_now - age_then.max(model.quantile(1.0 - TAIL).unwrap_or(age_then));
        (1.0 - (-waited.max(0.0) / tail_mean).exp()).clamp(0.0, 1.0)
    }
}

/// The gap after which `model` has gained `step` of mass beyond `age`
/// (seconds), clamped to `[min_gap, max_gap]`; `max_gap` once the age is
/// past nearly all of the learned mass.
pub fn gap_by_mass(
    model: &RenderTimes,
    age: f64,
    step: f64,
    min_gap: Duration,
    max_gap: Duration,
) -> Duration {
    let done = model.cdf(age);
    if done >= 1.0 - EXHAUSTED {
        return max_gap;
    }
    // The last poll of the learned range lands at its end, not beyond it.
    let target = (done + step).min(1.0 - EXHAUSTED);
    let Some(next_age) = model.quantile(target) else {
        return max_gap;
    };
    let gap = (next_age - age).max(0.0);
    Duration::from_secs_f64(gap.min(max_gap.as_secs_f64())).clamp(min_gap, max_gap)
}

/// A [`Learner`] shared by the poller (which feeds it), the API
/// (`/v1/stats`, `/metrics`) and the claim, with its last fit published
/// beside it: scheduling and ranking read the fit without waiting for the
/// learner (the claim ranks inside the database's write transaction).
#[derive(Debug, Clone)]
pub struct SharedLearner {
    learner: Arc<std::sync::Mutex<Learner>>,
    schedule: Arc<std::sync::Mutex<Arc<Schedule>>>,
}

impl SharedLearner {
    /// Shares `learner`.
    pub fn new(learner: Learner) -> Self {
        let schedule = learner.schedule.clone();
        Self {
            learner: Arc::new(std::sync::Mutex::new(learner)),
            schedule: Arc::new(std::sync::Mutex::new(schedule)),
        }
    }

    /// Runs `f` on the learner, then publishes its fit. The lock is held
    /// only for pure arithmetic, never across I/O; a panic while holding it
    /// cannot leave the learner half-updated in a harmful way (the worst is
    /// one lost observation), so a poisoned lock is simply taken over.
    pub fn with<R>(&self, f: impl FnOnce(&mut Learner) -> R) -> R {
        let mut learner = self.learner.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut learner);
        let fitted = learner.schedule.clone();
        drop(learner);
        *self.schedule.lock().unwrap_or_else(|p| p.into_inner()) = fitted;
        result
    }

    /// The last fit (a pointer copy under a lock held for nothing else).
    pub fn schedule(&self) -> Arc<Schedule> {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn settings() -> AdaptiveSettings {
        AdaptiveSettings {
            step: 0.06,
            half_life: 1000,
            warmup: 20,
            horizon: Duration::from_secs(48 * 3600),
        }
    }

    /// A learner that has seen `count` videos finish at exactly 100 s, 101
    /// s, … from their start (and 10 s less from when rendering was seen).
    fn trained(count: u32) -> Learner {
        let mut learner = Learner::new(settings());
        for i in 0..count {
            let start = Millis(1_000_000 * i64::from(i));
            let done = start.plus(Duration::from_secs(100 + u64::from(i % 100)));
            learner.record(
                i64::from(i),
                &Observation {
                    started_at: start,
                    unfinished_seen_at: Some(done),
                    rendering_seen_at: Some(start.plus(Duration::from_secs(10))),
                    finished_seen_at: Some(done),
                },
            );
        }
        learner.refit();
        learner
    }

    fn lognormal(rng: &mut fastrand::Rng, median: f64, sigma: f64) -> f64 {
        let u = 1.0 - rng.f64();
        let v = rng.f64();
        median * (sigma * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()).exp()
    }

    /// Video `id` started at `id` minutes and rendered for `seconds`, seen
    /// by polls every 10 s.
    fn finished_video(id: i64, seconds: f64) -> Observation {
        let start = Millis(id * 60_000);
        let polls_before = (seconds / 10.0).floor() as u64;
        Observation {
            started_at: start,
            unfinished_seen_at: Some(start.plus(Duration::from_secs(10 * polls_before))),
            rendering_seen_at: None,
            finished_seen_at: Some(start.plus(Duration::from_secs(10 * (polls_before + 1)))),
        }
    }

    #[test]
    fn follows_a_change_of_speed_within_a_few_half_lives() {
        // JoggAI halves its render time; with a half-life of 100 videos the
        // estimate has followed 500 videos later.
        let mut rng = fastrand::Rng::with_seed(41);
        let mut learner = Learner::new(AdaptiveSettings {
            half_life: 100,
            ..settings()
        });
        let median = |learner: &mut Learner| learner.stats()[0].quantiles[2].1.unwrap();
        for id in 0..1500 {
            learner.record(id, &finished_video(id, lognormal(&mut rng, 240.0, 0.45)));
        }
        assert!(
            (median(&mut learner) / 240.0 - 1.0).abs() < 0.1,
            "{}",
            median(&mut learner)
        );
        for id in 1500..2000 {
            learner.record(id, &finished_video(id, lognormal(&mut rng, 120.0, 0.45)));
        }
        learner.refit();
        assert!(
            (median(&mut learner) / 120.0 - 1.0).abs() < 0.1,
            "{}",
            median(&mut learner)
        );
    }

    #[test]
    fn a_half_done_batch_does_not_look_quick() {
        // 200 videos submitted at once; the 60 quickest have finished by
        // 170 s, the rest are still rendering. Learning from the finished
        // ones alone would put the median near 150 s; the unfinished ones
        // say most renders take longer than 170 s.
        let mut rng = fastrand::Rng::with_seed(5);
        let mut renders: Vec<f64> = (0..200).map(|_| lognormal(&mut rng, 240.0, 0.45)).collect();
        renders.sort_by(f64::total_cmp);
        let mut learner = Learner::new(settings());
        for (id, seconds) in renders.iter().enumerate() {
            let mut video = finished_video(0, *seconds);
            if *seconds > 170.0 {
                video.finished_seen_at = None;
                video.unfinished_seen_at = Some(Millis(170_000));
            }
            learner.record(id as i64, &video);
        }
        learner.refit();
        let stats = &learner.stats()[0];
        assert_eq!(
            stats.observations as usize,
            renders.iter().filter(|s| **s <= 170.0).count()
        );
        assert!(stats.unfinished > 100);
        let done_by_170 = learner.schedule.from_start.cdf(170.0);
        let truth = renders.iter().filter(|s| **s <= 170.0).count() as f64 / 200.0;
        assert!(
            (done_by_170 - truth).abs() < 0.03,
            "{done_by_170} vs {truth}: {:?}",
            learner.stats()
        );
    }

    #[test]
    fn the_sample_count_fades_with_the_half_life_and_the_oldest_are_dropped() {
        let mut learner = Learner::new(AdaptiveSettings {
            half_life: 10,
            ..settings()
        });
        for id in 0..1000 {
            learner.record(id, &finished_video(id, 100.0));
        }
        learner.refit();
        let stats = &learner.stats()[0];
        // Ten half-lives kept, at least 256: 256 videos, weighing a
        // geometric series 1 + 0.5^0.1 + … = (1 - 0.5^25.6) / (1 - 0.5^0.1).
        assert_eq!(stats.observations, 256);
        assert!(
            (stats.effective_samples - 14.93).abs() < 0.05,
            "{}",
            stats.effective_samples
        );
        // An older video than every one kept is ignored, finished or not.
        learner.record(3, &finished_video(3, 5.0));
        let mut unfinished = finished_video(4, 5.0);
        unfinished.finished_seen_at = None;
        learner.record(4, &unfinished);
        assert_eq!(learner.stats()[0].observations, 256);
        assert_eq!(learner.stats()[0].unfinished, 0);
        // The oldest kept one (744) still takes news of itself.
        learner.record(744, &unfinished);
        assert_eq!(learner.stats()[0].observations, 255);
        assert_eq!(learner.stats()[0].unfinished, 1);
    }

    #[test]
    fn a_video_seen_rendering_keeps_the_clock_from_its_start_until_that_model_is_warm() {
        // Nothing was ever seen `processing`: only the model from the start
        // has learned (renders of 100 s).
        let mut learner = Learner::new(settings());
        for id in 0..40 {
            learner.record(id, &finished_video(id, 100.0));
        }
        let video = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: Some(Millis(40_000)),
        };
        let gap = learner.next_gap(&video, Millis(50_000), MIN, MAX).unwrap();
        assert!(gap < Duration::from_secs(55), "{gap:?}");
    }

    #[test]
    fn past_everything_learned_the_chance_grows_like_an_exponential_tail() {
        // Renders end uniformly over 100–200 s: an exponential tail with
        // the learned p90 and p99 (about 190 and 199 s) has a mean of about
        // 9 s / ln 10 = 3.9 s.
        let learner = trained(1000);
        let video = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: None,
        };
        let chance = |last: i64, now: i64| {
            learner.completion_chance(&video, Some(Millis(last * 1000)), Millis(now * 1000))
        };
        assert_eq!(chance(250, 250), 0.0, "no time, no chance");
        let one_second = chance(250, 251);
        assert!((0.1..0.5).contains(&one_second), "{one_second}");
        assert!(chance(250, 300) > 0.99, "{}", chance(250, 300));
    }

    #[test]
    fn reports_are_current_and_count_what_they_are_fitted_to() {
        let mut learner = Learner::new(settings());
        for id in 0..40 {
            learner.record(id, &finished_video(id, 100.0));
        }
        let median = |learner: &mut Learner| learner.stats()[0].quantiles[2].1.unwrap();
        assert!((median(&mut learner) - 105.0).abs() < 8.0);
        // Sixty more, of 1000 s, without a fit of their own: the report
        // refits first.
        for id in 40..100 {
            learner.record(id, &finished_video(id, 1000.0));
        }
        assert!(median(&mut learner) > 500.0, "{}", median(&mut learner));
        // Unfinished ones, by model: two seen rendering, one not.
        for (id, rendering) in [(100, true), (101, true), (102, false)] {
            let mut video = finished_video(id, 100.0);
            video.finished_seen_at = None;
            video.rendering_seen_at = rendering.then_some(video.started_at);
            learner.record(id, &video);
        }
        let stats = learner.stats();
        assert_eq!((stats[0].observations, stats[0].unfinished), (100, 3));
        assert_eq!((stats[1].observations, stats[1].unfinished), (0, 2));
    }

    #[test]
    fn quantiles_up_to_the_longest_render_seen_are_known() {
        // Every render finished between 1000 and 1010 s: every quantile is
        // known (the last bin reaches a little past 1010 s).
        let mut learner = Learner::new(settings());
        for id in 0..50 {
            learner.record(id, &finished_video(id, 1005.0));
        }
        let stats = learner.stats();
        assert!(
            stats[0]
                .quantiles
                .iter()
                .all(|(_, seconds)| seconds.is_some()),
            "{stats:?}"
        );
        // One still rendering at 2000 s: beyond the longest seen, p99 is
        // not known.
        let mut video = finished_video(50, 1005.0);
        video.finished_seen_at = None;
        video.unfinished_seen_at = Some(video.started_at.plus(Duration::from_secs(2000)));
        learner.record(50, &video);
        let stats = learner.stats();
        assert_eq!(stats[0].quantiles.last().unwrap().1, None, "{stats:?}");
    }

    #[test]
    fn unfinished_videos_are_kept_up_to_twice_the_finished_ones() {
        let mut learner = Learner::new(AdaptiveSettings {
            half_life: 10,
            ..settings()
        });
        for id in 0..600 {
            let mut video = finished_video(id, 100.0);
            video.finished_seen_at = None;
            learner.record(id, &video);
        }
        // 256 finished would be kept; unfinished ones up to twice that.
        assert_eq!(learner.stats()[0].unfinished, 512);
        assert_eq!(learner.newest_video(), Some(599));
    }

    #[test]
    fn the_schedule_follows_new_videos_without_being_asked_to_refit() {
        // 20 videos of 100 s warm the model up, then 500 of 300 s arrive:
        // the schedule must have learned them by itself (no refit call).
        let mut learner = Learner::new(settings());
        for id in 0..20 {
            learner.record(id, &finished_video(id, 100.0));
        }
        let video = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: None,
        };
        let gap_at_50 = |learner: &Learner| learner.next_gap(&video, Millis(50_000), MIN, MAX);
        // All renders take 100 s: the next poll is at 100 s.
        assert!(gap_at_50(&learner).unwrap() < Duration::from_secs(55));
        for id in 20..520 {
            learner.record(id, &finished_video(id, 300.0));
        }
        // 6 % of renders are done by about 300 s now: capped at MAX.
        assert_eq!(gap_at_50(&learner), Some(MAX));
    }

    const MIN: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn a_cold_learner_leaves_the_schedule_to_the_exponential_one() {
        let video = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: None,
        };
        assert_eq!(trained(19).next_gap(&video, Millis(30_000), MIN, MAX), None);
        assert!(
            trained(20)
                .next_gap(&video, Millis(30_000), MIN, MAX)
                .is_some()
        );
        assert_eq!(
            trained(19).completion_chance(&video, None, Millis(150_000)),
            0.0
        );
    }

    #[test]
    fn polls_follow_the_learned_mass() {
        // Renders take 100–200 s, uniformly: before them the next poll goes
        // where 6 % of them are done (106 s); inside, 6 % further (6 s);
        // past them all, every max_interval.
        let learner = trained(1000);
        let video = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: None,
        };
        let gap = |age_s: u64| {
            learner
                .next_gap(&video, Millis(age_s as i64 * 1000), MIN, MAX)
                .unwrap()
                .as_secs_f64()
        };
        assert!((gap(10) - 60.0).abs() < 1e-9, "capped at max: {}", gap(10));
        assert!(
            (gap(60) - 46.0).abs() < 4.0,
            "to the 6 % point: {}",
            gap(60)
        );
        assert!(
            (gap(150) - 6.0).abs() < 1.5,
            "one step of mass: {}",
            gap(150)
        );
        assert_eq!(gap(400), 60.0, "past everything learned");
    }

    #[test]
    fn the_rendering_clock_is_used_once_seen_and_learned() {
        let learner = trained(1000);
        // Seen rendering at 500 s (it waited in JoggAI's queue): its clock
        // restarts, renders end 90–190 s after that, so at 585 s the next
        // poll is due soon (6 % of renders end by about 96 s), where the
        // clock from its start is past everything learned.
        let queued = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: Some(Millis(500_000)),
        };
        let gap = learner
            .next_gap(&queued, Millis(585_000), MIN, MAX)
            .unwrap();
        assert!((gap.as_secs_f64() - 11.0).abs() < 2.0, "{gap:?}");
        let unseen = VideoClock {
            rendering_seen_at: None,
            ..queued
        };
        assert_eq!(
            learner.next_gap(&unseen, Millis(585_000), MIN, MAX),
            Some(MAX)
        );
    }

    #[test]
    fn the_completion_chance_grows_with_time_and_stays_a_probability() {
        let learner = trained(1000);
        let video = VideoClock {
            started_at: Millis(0),
            rendering_seen_at: None,
        };
        let chance = |last: Option<i64>, now: i64| {
            learner.completion_chance(&video, last.map(|s| Millis(s * 1000)), Millis(now * 1000))
        };
        assert!(chance(None, 50) < 1e-3);
        assert!(
            (chance(None, 150) - 0.5).abs() < 0.05,
            "{}",
            chance(None, 150)
        );
        assert!(
            (chance(Some(150), 175) - 0.5).abs() < 0.06,
            "{}",
            chance(Some(150), 175)
        );
        assert!(chance(None, 250) > 0.99);
        // Past everything learned, the chance still grows with the wait.
        assert!(chance(Some(300), 310) < chance(Some(300), 400));
        assert!(chance(Some(300), 400) <= 1.0);
    }

    #[test]
    fn created_at_is_the_start_only_when_plausible() {
        let day = Duration::from_secs(86_400);
        let enqueued = Millis(1_700_000_100_400);
        // A minute before the enqueue, or the whole second before it: the
        // middle of that second.
        assert_eq!(
            started_at(enqueued, Some(1_700_000_040), day),
            Millis(1_700_000_040_500)
        );
        assert_eq!(
            started_at(enqueued, Some(1_700_000_099), day),
            Millis(1_700_000_099_500)
        );
        // The second of the enqueue itself (the start may be after the
        // middle), after it, or older than give_up_after: the enqueue time.
        for created in [1_700_000_100, 1_700_000_101, 1_700_000_500, 1_600_000_000] {
            assert_eq!(
                started_at(enqueued, Some(created), day),
                enqueued,
                "{created}"
            );
        }
        assert_eq!(started_at(enqueued, None, day), enqueued);
        assert_eq!(started_at(enqueued, Some(i64::MAX), day), enqueued);
    }

    proptest! {
        #![proptest_config(crate::poller::policy::seeded_for_tests())]

        #[test]
        fn gaps_stay_within_bounds_and_grow_with_the_step(
            age_ms in 0u64..1_000_000,
            step in 0.001f64..0.5,
            bigger in 0.0f64..0.5,
            min_ms in 1u64..30_000,
            extra_ms in 0u64..120_000,
        ) {
            let learner = trained(300);
            let model = learner.schedule().model(Phase::FromStart);
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + extra_ms));
            let age = age_ms as f64 / 1000.0;
            let small = gap_by_mass(model, age, step, min, max);
            let large = gap_by_mass(model, age, (step + bigger).min(0.5), min, max);
            prop_assert!(small >= min && small <= max, "{small:?} not in [{min:?}, {max:?}]");
            prop_assert!(large >= small, "step {step} gave {small:?}, larger gave {large:?}");
        }
    }
}
