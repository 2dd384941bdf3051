//! `jogg-relay simulate`: replays a render workload against the polling
//! strategies in virtual time, with no HTTP and no database, and reports
//! for each what it costs (calls per video) and how late it learns of each
//! finished render (detection delay).
//!
//! `exponential` and `adaptive` run the relay's own code: every answer goes
//! through [`decide::decide`] (the function the poller calls), finished
//! videos teach a real [`Learner`], and when the budget cannot poll every
//! due video, `adaptive` chooses with the poller's own ranking
//! ([`learning::ranker`]) over the same window of most overdue videos the
//! claim uses. Two baselines run beside them: a fixed 15 s loop (what
//! JoggAI's own client does) and JoggAI's polling guide.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use crate::adaptive::{Learner, Observation, Schedule, SharedLearner};
use crate::config::{Config, PollingConfig};
use crate::domain::poll::{ClaimedVideo, DueVideo, RANKED_WINDOW, Ranker};
use crate::domain::{Lease, Millis, StoredId, VideoId};
use crate::jogg::{PollAnswer, StatusClass, VideoStatus};
use crate::poller::decide::{self, Decision};
use crate::poller::learning;
use crate::poller::policy::PollPolicy;
use crate::workload::{DelayReport, RenderJob};

/// Virtual time at which every run starts (a plausible date, so that the
/// relay's date arithmetic sees realistic values).
const EPOCH: Millis = Millis(1_800_000_000_000);

/// A polling strategy to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A poll every 15 s from submission.
    Fixed15,
    /// JoggAI's guide: every 10 s during the first minute, every 30 s
    /// until the fifth, then every 60 s.
    Guide,
    /// The relay's `exponential` strategy.
    Exponential,
    /// The relay's `adaptive` strategy, learning from scratch during the
    /// run.
    Adaptive,
    /// `adaptive`, trained first on a separate run of the same workload.
    AdaptivePretrained,
}

impl Strategy {
    /// Every strategy, in the table's order.
    pub const ALL: [Strategy; 5] = [
        Strategy::Fixed15,
        Strategy::Guide,
        Strategy::Exponential,
        Strategy::Adaptive,
        Strategy::AdaptivePretrained,
    ];

    /// The table's label.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Fixed15 => "fixed 15 s loop",
            Strategy::Guide => "JoggAI guide 10 s→30 s→60 s",
            Strategy::Exponential => "exponential",
            Strategy::Adaptive => "adaptive (from scratch)",
            Strategy::AdaptivePretrained => "adaptive (pre-trained)",
        }
    }
}

/// The upstream budget of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Requests per second.
    pub rate: f64,
    /// Bucket size.
    pub burst: u32,
    /// Videos one claim takes (the window a ranked claim chooses from is
    /// `RANKED_WINDOW` times this).
    pub claim: u32,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The `[polling]` settings (`exponential` and `adaptive` use them).
    pub polling: PollingConfig,
    /// The budget; `None` for none.
    pub budget: Option<Budget>,
    /// Seeds the jitter and the event ids.
    pub seed: u64,
    /// Multiplies the baselines' fixed intervals, so that they stay
    /// comparable on a time-compressed workload.
    pub scale: f64,
}

impl Scenario {
    /// The relay's configured schedule and budget, every duration
    /// multiplied by `scale` (and the budget, in real-time requests per
    /// second, divided by it); claims of a quarter of `jogg.max_in_flight`,
    /// as the poller makes them.
    pub fn from_config(config: &Config, scale: f64, budget: Option<f64>, seed: u64) -> Self {
        // The strategies are compared on polling alone: JoggAI's pushes are
        // not simulated, so the safety net (which only makes sense beside
        // them) is left out; `bench --schedule --push-loss` measures pushes.
        let polling = PollingConfig {
            safety_net: None,
            ..config.polling.clone()
        };
        Self {
            polling: scaled_polling(&polling, scale),
            budget: budget.map(|rate| Budget {
                rate: rate / scale,
                burst: config.jogg.burst,
                claim: (config.jogg.max_in_flight as u32 / 4).max(1),
            }),
            seed,
            scale,
        }
    }
}

/// One video during a run.
#[derive(Debug, Clone)]
struct Tracked {
    job: RenderJob,
    enqueued_at: Millis,
    upstream_status: Option<String>,
    unchanged_polls: i64,
    unfinished_seen_at: Option<i64>,
    rendering_seen_at: Option<i64>,
    next_poll_at: Millis,
    polls: u32,
    detected_at: Option<Millis>,
}

impl Tracked {
    fn finished_at(&self) -> Millis {
        self.enqueued_at.plus(self.job.finishes_after())
    }
}

/// Runs `jobs` under `strategy`; returns the report (delays in the
/// workload's own time) and the learner as it ended.
pub fn run(
    jobs: &[RenderJob],
    strategy: Strategy,
    scenario: &Scenario,
    learner: Learner,
) -> (DelayReport, Learner) {
    let policy = PollPolicy::from(&scenario.polling);
    // This run's videos come after any the learner already knows, as new
    // rowids would.
    let first_id = learner.newest_video().map_or(0, |id| id + 1);
    let learner = SharedLearner::new(learner);
    let ranker = learning::ranker(
        learner.clone(),
        policy.give_up_after,
        learning::starving_after(&scenario.polling),
    );
    let adaptive = matches!(strategy, Strategy::Adaptive | Strategy::AdaptivePretrained);
    let mut rng = fastrand::Rng::with_seed(scenario.seed);
    let mut videos: Vec<Tracked> = jobs
        .iter()
        .map(|job| {
            let enqueued_at = EPOCH.plus(job.arrival);
            let first = match strategy {
                Strategy::Fixed15 => Duration::from_secs(15).mul_f64(scenario.scale),
                Strategy::Guide => Duration::from_secs(10).mul_f64(scenario.scale),
                _ => policy.jittered(policy.first_after, rng.f64() * 2.0 - 1.0),
            };
            Tracked {
                job: *job,
                enqueued_at,
                upstream_status: None,
                unchanged_polls: 0,
                unfinished_seen_at: None,
                rendering_seen_at: None,
                next_poll_at: enqueued_at.plus(first),
                polls: 0,
                detected_at: None,
            }
        })
        .collect();
    // Due order: (next poll, index); the index breaks ties like rowids do.
    let mut due: BinaryHeap<Reverse<(i64, usize)>> = videos
        .iter()
        .enumerate()
        .map(|(i, v)| Reverse((v.next_poll_at.0, i)))
        .collect();
    let mut bucket = scenario
        .budget
        .map(|budget| TokenBucket::new(budget, EPOCH));

    // Videos claimed (under a budget) and waiting for their token, as the
    // daemon's claimed videos wait at its gate.
    let mut claimed: VecDeque<usize> = VecDeque::new();
    loop {
        let index = match (&mut bucket, scenario.budget) {
            (Some(bucket), Some(budget)) => {
                if claimed.is_empty() {
                    let Some(&Reverse((earliest, _))) = due.peek() else {
                        break;
                    };
                    let at = Millis(earliest).max(bucket.next_token_at());
                    claimed = claim(
                        &mut due,
                        &videos,
                        at,
                        budget.claim,
                        adaptive.then_some(&ranker),
                        first_id,
                    );
                }
                let Some(index) = claimed.pop_front() else {
                    break;
                };
                let now = bucket.next_token_at().max(videos[index].next_poll_at);
                bucket.take(now);
                (index, now)
            }
            _ => {
                let Some(Reverse((at, index))) = due.pop() else {
                    break;
                };
                (index, Millis(at))
            }
        };
        let (index, now) = index;
        let video = &mut videos[index];
        video.polls += 1;
        let age = Duration::from_millis((now.0 - video.enqueued_at.0).max(0) as u64);
        let status = video.job.status_at(age);
        let next = match strategy {
            Strategy::Fixed15 | Strategy::Guide => {
                if status == "completed" || status == "failed" {
                    None
                } else {
                    Some(now.plus(baseline_gap(strategy, age, scenario.scale)))
                }
            }
            _ => {
                let schedule = adaptive.then(|| learner.schedule());
                let (next, learned) = poll_with_relay_code(
                    video,
                    now,
                    status,
                    &policy,
                    schedule.as_deref(),
                    &mut rng,
                );
                if let Some(observation) = learned {
                    learner.with(|learner| learner.record(first_id + index as i64, &observation));
                }
                next
            }
        };
        match next {
            Some(at) => {
                // Time moves on in whole milliseconds: a gap that rounds to
                // nothing would poll the same instant for ever.
                let at = at.max(Millis(now.0 + 1));
                video.next_poll_at = at;
                due.push(Reverse((at.0, index)));
            }
            None => video.detected_at = Some(now),
        }
    }

    let polls: Vec<u32> = videos.iter().map(|v| v.polls).collect();
    let delays: Vec<Duration> = videos
        .iter()
        .filter_map(|v| {
            let detected = v.detected_at?;
            Some(Duration::from_millis(
                (detected.0 - v.finished_at().0).max(0) as u64,
            ))
        })
        .collect();
    let undetected = videos.len() - delays.len();
    let report = DelayReport::from_samples(&polls, &delays, undetected);
    let learner = learner.with(|learner| learner.clone());
    (report, learner)
}

/// The daemon's claim at `now`: up to `limit` due videos, the most overdue
/// first, or (with a `ranker`) the best scored among the `RANKED_WINDOW ×
/// limit` most overdue, ties to the more overdue; the others stay due.
fn claim(
    due: &mut BinaryHeap<Reverse<(i64, usize)>>,
    videos: &[Tracked],
    now: Millis,
    limit: u32,
    ranker: Option<&Ranker>,
    first_id: i64,
) -> VecDeque<usize> {
    let limit = limit.max(1) as usize;
    let window = if ranker.is_some() {
        limit * RANKED_WINDOW as usize
    } else {
        limit
    };
    let mut candidates = Vec::with_capacity(window);
    while candidates.len() < window {
        match due.peek() {
            Some(&Reverse((at, index))) if at <= now.0 => {
                due.pop();
                candidates.push(index);
            }
            _ => break,
        }
    }
    if let Some(ranker) = ranker.filter(|_| candidates.len() > limit) {
        let rows: Vec<DueVideo> = candidates
            .iter()
            .map(|&i| due_row(&videos[i], first_id + i as i64))
            .collect();
        let scores = (ranker.0)(&rows, now);
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        // Stable: equal scores keep the most-overdue-first order.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let (taken, left) = order.split_at(limit);
        for &i in left {
            let other = candidates[i];
            due.push(Reverse((videos[other].next_poll_at.0, other)));
        }
        return taken.iter().map(|&i| candidates[i]).collect();
    }
    candidates.into_iter().collect()
}

/// A video as the claim's ranking sees it.
fn due_row(video: &Tracked, id: i64) -> DueVideo {
    DueVideo {
        id,
        enqueued_at: video.enqueued_at,
        created_at: None,
        unfinished_seen_at: video.unfinished_seen_at.map(Millis),
        rendering_seen_at: video.rendering_seen_at.map(Millis),
        next_poll_at: video.next_poll_at,
    }
}

/// The gap after a poll at `age` under a baseline strategy.
fn baseline_gap(strategy: Strategy, age: Duration, scale: f64) -> Duration {
    let seconds = match strategy {
        Strategy::Fixed15 => 15.0,
        _ if age < Duration::from_secs(60).mul_f64(scale) => 10.0,
        _ if age < Duration::from_secs(300).mul_f64(scale) => 30.0,
        _ => 60.0,
    };
    Duration::from_secs_f64(seconds * scale)
}

/// One poll of `video` answered `status` at `now`, decided by the relay's
/// own [`decide::decide`]. Returns the next poll (`None` once the video is
/// terminal) and what the answer teaches (the caller feeds it to the
/// learner whatever the strategy, as the relay does).
fn poll_with_relay_code(
    video: &mut Tracked,
    now: Millis,
    status: &str,
    policy: &PollPolicy,
    schedule_with: Option<&Schedule>,
    rng: &mut fastrand::Rng,
) -> (Option<Millis>, Option<Observation>) {
    let claimed = ClaimedVideo {
        id: 0,
        video_id: StoredId::Valid(VideoId::parse("simulated").expect("a valid id")),
        upstream_status: video.upstream_status.clone(),
        enqueued_at: video.enqueued_at,
        unchanged_polls: video.unchanged_polls,
        error_streak: 0,
        callback_url: None,
        lease: Lease { until: Millis(0) },
        created_at: None,
        polls: i64::from(video.polls) - 1,
        unfinished_seen_at: video.unfinished_seen_at.map(Millis),
        rendering_seen_at: video.rendering_seen_at.map(Millis),
        claimed_at: now,
        hinted_at: None,
    };
    let answer = PollAnswer::Status(VideoStatus {
        video_id: None,
        status: status.to_owned(),
        class: StatusClass::of(status),
        video_url: None,
        cover_url: None,
        created_at: None,
        duration: None,
        error_code: None,
        error_message: None,
        rejected_urls: Vec::new(),
    });
    let Decision::Record {
        update, learned, ..
    } = decide::decide(&claimed, &answer, now, policy, schedule_with, &[], rng)
    else {
        unreachable!("a status answer is always recorded");
    };
    video.upstream_status = update.upstream_status.clone();
    video.unchanged_polls = update.unchanged_polls;
    if let Some(at) = update.unfinished_seen_at {
        video.unfinished_seen_at = Some(at.0);
    }
    if video.rendering_seen_at.is_none() {
        video.rendering_seen_at = update.rendering_seen_at.map(|at| at.0);
    }
    if update.terminal.is_some() {
        return (None, learned);
    }
    (update.next_poll_at, learned)
}

/// The budget as a token bucket in virtual time.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Millis,
}

impl TokenBucket {
    fn new(budget: Budget, at: Millis) -> Self {
        Self {
            rate: budget.rate,
            capacity: f64::from(budget.burst.max(1)),
            tokens: f64::from(budget.burst.max(1)),
            at,
        }
    }

    fn refill(&mut self, now: Millis) {
        let elapsed = (now.0 - self.at.0).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// When the next whole token is there.
    fn next_token_at(&self) -> Millis {
        if self.tokens >= 1.0 {
            return self.at;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        self.at.plus(Duration::from_secs_f64(wait))
    }

    fn take(&mut self, now: Millis) {
        self.refill(now);
        self.tokens -= 1.0;
    }
}

/// The table of a comparison, in Markdown; delays are multiplied by
/// `to_real_time` (the workload's compression).
pub fn table(rows: &[(Strategy, DelayReport)], to_real_time: f64) -> String {
    let mut text = String::from(
        "| strategy | calls / video | delay p50 (s) | p95 (s) | p99 (s) | mean (s) | undetected |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (strategy, report) in rows {
        let report = report.scaled(to_real_time);
        let _ = writeln!(
            text,
            "| {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            strategy.label(),
            report.calls_per_video,
            report.delay_p50.as_secs_f64(),
            report.delay_p95.as_secs_f64(),
            report.delay_p99.as_secs_f64(),
            report.delay_mean.as_secs_f64(),
            report.undetected,
        );
    }
    text
}

/// What `jogg-relay simulate` compares.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The measured workload.
    pub jobs: Vec<RenderJob>,
    /// A separate workload of the same kind, which the pre-trained
    /// `adaptive` row learns from first.
    pub training: Vec<RenderJob>,
    /// The relay's settings (already scaled like the workload).
    pub scenario: Scenario,
}

/// Runs every strategy on the comparison's workload; rows in
/// [`Strategy::ALL`] order.
pub fn compare(comparison: &Comparison) -> Vec<(Strategy, DelayReport)> {
    let fresh = || Learner::new(comparison.scenario.polling.adaptive);
    Strategy::ALL
        .iter()
        .map(|&strategy| {
            let learner = if strategy == Strategy::AdaptivePretrained {
                run(
                    &comparison.training,
                    Strategy::Adaptive,
                    &comparison.scenario,
                    fresh(),
                )
                .1
            } else {
                fresh()
            };
            let (report, _) = run(&comparison.jobs, strategy, &comparison.scenario, learner);
            (strategy, report)
        })
        .collect()
}

/// `polling` with every duration of the schedule multiplied by `scale`, to
/// replay a time-compressed workload with the same schedule.
pub fn scaled_polling(polling: &PollingConfig, scale: f64) -> PollingConfig {
    PollingConfig {
        first_after: polling.first_after.mul_f64(scale),
        min_interval: polling.min_interval.mul_f64(scale),
        max_interval: polling.max_interval.mul_f64(scale),
        give_up_after: polling.give_up_after.mul_f64(scale),
        not_found_grace: polling.not_found_grace.mul_f64(scale),
        safety_net: polling.safety_net.map(|net| net.mul_f64(scale)),
        ..polling.clone()
    }
}

#[cfg(test)]
mod tests {
    //! The targets, replayed: deterministic (virtual time, fixed
    //! seeds), so they are asserted here rather than in a timed test. The
    //! oracle for every delay is the workload's own finish time.

    use super::*;
    use crate::config::Settings;
    use crate::workload::ReferenceWorkload;

    fn comparison(seed: u64, scale: f64, budget: Option<f64>) -> Vec<(Strategy, DelayReport)> {
        let config = Settings::default().validate().expect("defaults are valid");
        let workload = |seed| {
            ReferenceWorkload {
                videos: 1500,
                scale,
                seed,
            }
            .generate()
        };
        compare(&Comparison {
            jobs: workload(seed),
            training: workload(seed + 1000),
            scenario: Scenario::from_config(&config, scale, budget, seed),
        })
    }

    #[test]
    fn a_configuration_with_pushes_is_simulated_as_polling_alone() {
        // The safety net stretches polls to 5 minutes because pushes tell
        // of completions; without simulated pushes it would only make every
        // strategy look slow, so the comparison leaves it out.
        let mut settings = Settings::default();
        settings.jogg.webhook_secret =
            crate::config::SecretSetting(Some("0123456789abcdef-push".into()));
        let config = settings.validate().expect("valid");
        assert!(config.polling.safety_net.is_some());
        let with_pushes = Scenario::from_config(&config, 1.0, None, 1);
        let without = Scenario::from_config(
            &Settings::default().validate().expect("valid"),
            1.0,
            None,
            1,
        );
        assert_eq!(with_pushes.polling.safety_net, None);
        let jobs = ReferenceWorkload {
            videos: 200,
            scale: 1.0,
            seed: 4,
        }
        .generate();
        let run = |scenario: Scenario| {
            compare(&Comparison {
                jobs: jobs.clone(),
                training: jobs.clone(),
                scenario,
            })
        };
        assert_eq!(
            format!("{:?}", run(with_pushes)),
            format!("{:?}", run(without))
        );
    }

    fn row(rows: &[(Strategy, DelayReport)], strategy: Strategy) -> DelayReport {
        rows.iter()
            .find(|(s, _)| *s == strategy)
            .expect("every strategy runs")
            .1
    }

    #[test]
    fn adaptive_halves_the_median_delay_for_at_most_a_fifth_more_calls() {
        for (seed, scale) in [(1, 1.0), (2, 1.0), (3, 1.0 / 30.0)] {
            let rows = comparison(seed, scale, None);
            let exponential = row(&rows, Strategy::Exponential);
            let fixed = row(&rows, Strategy::Fixed15);
            for adaptive in [Strategy::Adaptive, Strategy::AdaptivePretrained] {
                let adaptive = row(&rows, adaptive);
                let context = format!("seed {seed}, scale {scale}\n{}", table(&rows, 1.0 / scale));
                assert_eq!(adaptive.undetected, 0, "{context}");
                assert!(
                    adaptive.delay_p50.as_secs_f64() * 2.0 <= exponential.delay_p50.as_secs_f64(),
                    "{context}"
                );
                assert!(
                    adaptive.calls_per_video <= 1.2 * exponential.calls_per_video,
                    "{context}"
                );
                assert!(adaptive.delay_p95 <= exponential.delay_p95, "{context}");
                assert!(
                    fixed.calls_per_video >= 1.5 * adaptive.calls_per_video,
                    "{context}"
                );
            }
        }
    }

    #[test]
    fn under_saturation_adaptive_is_no_later_on_average() {
        // Budgets below what the schedules ask for (about 1.2 requests per
        // second here): every due video competes for tokens.
        for budget in [0.25, 0.5] {
            let rows = comparison(5, 1.0, Some(budget));
            let exponential = row(&rows, Strategy::Exponential);
            let adaptive = row(&rows, Strategy::Adaptive);
            assert!(
                exponential.calls_per_video < 6.0,
                "the budget binds: {}",
                table(&rows, 1.0)
            );
            assert!(
                adaptive.delay_mean <= exponential.delay_mean,
                "budget {budget}\n{}",
                table(&rows, 1.0)
            );
        }
    }

    #[test]
    fn the_budget_bucket_admits_no_more_than_rate_and_burst() {
        let budget = Budget {
            rate: 2.0,
            burst: 3,
            claim: 1,
        };
        let mut bucket = TokenBucket::new(budget, Millis(0));
        let mut taken = Vec::new();
        for _ in 0..23 {
            let at = bucket.next_token_at();
            bucket.take(at);
            taken.push(at.0);
        }
        // Three at once, then one every 500 ms: 20 more take 10 s.
        assert_eq!(&taken[..3], &[0, 0, 0]);
        assert_eq!(taken[3], 500);
        assert_eq!(*taken.last().unwrap(), 10_000);
    }
}
