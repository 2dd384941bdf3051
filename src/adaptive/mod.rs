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
//! - [`Learner::next_gap`] spaces polls by equal steps of probability
//!   mass of the learned distribution; [`Learner::completion_chance`] ranks
//!   due videos when the budget cannot poll them all.
//!
//! Everything here is pure and synchronous: the poller owns a `Learner`
//! behind a lock, feeds it each finished video after its terminal result is
//! committed, and rebuilds it from the database at start (see
//! ARCHITECTURE.md), so what was learned survives restarts without a
//! separate file.

pub mod estimate;

use std::time::Duration;

use serde::Serialize;

use crate::domain::Millis;
use estimate::{Censored, RenderTimes};

/// The quantiles reported by [`Learner::stats`] and in `/metrics`.
pub const REPORTED_QUANTILES: [f64; 7] = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

/// When the learned distribution has this little mass left beyond an age,
/// the video is past everything seen: it is polled every `max_interval`.
const EXHAUSTED: f64 = 1e-3;

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
}

/// What one finished video tells: when it started, when it was last seen
/// unfinished, when it was seen finished, and when it was first seen
/// rendering. Built by the poller from a terminal answer, and by the store
/// from finished rows at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// When the video started (see [`started_at`]).
    pub started_at: Millis,
    /// The last poll that saw it unfinished; `None` if the first answer
    /// was already terminal.
    pub unfinished_seen_at: Option<Millis>,
    /// The first poll that saw it rendering (an unfinished status other
    /// than `pending`).
    pub rendering_seen_at: Option<Millis>,
    /// The poll that saw it finished.
    pub finished_seen_at: Millis,
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

/// The two learned distributions (see the module docs).
#[derive(Debug, Clone)]
pub struct Learner {
    settings: AdaptiveSettings,
    from_start: RenderTimes,
    from_rendering: RenderTimes,
    /// When the last observation was taken (its terminal poll).
    updated_at: Option<Millis>,
}

/// One learned distribution as reported on `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStats {
    /// Which clock it measures.
    pub phase: Phase,
    /// Finished videos it has learned from.
    pub observations: u64,
    /// What those are worth after fading.
    pub effective_samples: f64,
    /// Whether it has learned enough to schedule polls (it does with
    /// `polling.strategy = "adaptive"`).
    pub warmed_up: bool,
    /// `(p, seconds)` for each of [`REPORTED_QUANTILES`]; empty until the
    /// first observation.
    pub quantiles: Vec<(f64, f64)>,
}

impl Learner {
    /// An empty learner.
    pub fn new(settings: AdaptiveSettings) -> Self {
        Self {
            settings,
            from_start: RenderTimes::new(settings.half_life),
            from_rendering: RenderTimes::new(settings.half_life),
            updated_at: None,
        }
    }

    /// Learns from one finished video.
    pub fn observe(&mut self, observation: &Observation) {
        let finished = observation.finished_seen_at;
        let after = |from: Millis| {
            observation
                .unfinished_seen_at
                .map_or(0.0, |at| seconds_between(from, at))
        };
        self.from_start.observe(Censored {
            after_seconds: after(observation.started_at),
            before_seconds: seconds_between(observation.started_at, finished),
        });
        if let Some(rendering) = observation.rendering_seen_at {
            self.from_rendering.observe(Censored {
                after_seconds: after(rendering),
                before_seconds: seconds_between(rendering, finished),
            });
        }
        self.updated_at = Some(self.updated_at.map_or(finished, |at| at.max(finished)));
    }

    /// Makes the estimates exact for what has been observed (after a batch
    /// of observations, such as the replay at start).
    pub fn refit(&mut self) {
        self.from_start.refit(50);
        self.from_rendering.refit(50);
    }

    /// When the last observation was taken.
    pub fn updated_at(&self) -> Option<Millis> {
        self.updated_at
    }

    fn model(&self, phase: Phase) -> &RenderTimes {
        match phase {
            Phase::FromStart => &self.from_start,
            Phase::FromRendering => &self.from_rendering,
        }
    }

    fn warm(&self, phase: Phase) -> bool {
        self.model(phase).observations() >= u64::from(self.settings.warmup)
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
            self.settings.step,
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
        let done_then = last_seen.map_or(0.0, |at| model.cdf(seconds_between(origin, at)));
        let done_now = model.cdf(seconds_between(origin, now));
        let left = 1.0 - done_then;
        if left <= EXHAUSTED {
            // Past all that was learned: as likely as anything in the tail.
            return EXHAUSTED;
        }
        ((done_now - done_then) / left).clamp(0.0, 1.0)
    }

    /// Both models, for `/v1/stats`, the CLI and `/metrics`.
    pub fn stats(&self) -> Vec<ModelStats> {
        [Phase::FromStart, Phase::FromRendering]
            .into_iter()
            .map(|phase| {
                let model = self.model(phase);
                ModelStats {
                    phase,
                    observations: model.observations(),
                    effective_samples: model.effective_samples(),
                    warmed_up: self.warm(phase),
                    quantiles: REPORTED_QUANTILES
                        .iter()
                        .filter_map(|&p| model.quantile(p).map(|s| (p, s)))
                        .collect(),
                }
            })
            .collect()
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

/// A [`Learner`] shared by the poller (which feeds and reads it), the API
/// (`/v1/stats`, `/metrics`) and the claim (which ranks by it).
#[derive(Debug, Clone)]
pub struct SharedLearner(std::sync::Arc<std::sync::Mutex<Learner>>);

impl SharedLearner {
    /// Shares `learner`.
    pub fn new(learner: Learner) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(learner)))
    }

    /// Runs `f` on the learner. The lock is held only for pure arithmetic,
    /// never across I/O; a panic while holding it cannot leave the learner
    /// half-updated in a harmful way (the worst is one lost observation),
    /// so a poisoned lock is simply taken over.
    pub fn with<R>(&self, f: impl FnOnce(&mut Learner) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}
