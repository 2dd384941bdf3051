//! Prometheus metrics. Each relay owns its own recorder (no global state),
//! so several relays in one process (tests) do not mix their figures; the
//! text is rendered by the API's own `/metrics` route.
//!
//! Counters and histograms are updated where things happen; the gauges that
//! describe the database (videos by state, lags) are computed at scrape time
//! from the indexes, so they can never drift from the truth.

use ::metrics::{Counter, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::request_rate::{MinuteCount, RequestsPerMinute};
use crate::domain::{Millis, VideoState};
use crate::jogg::PauseReason;
use crate::store::Gauges;

/// Polls by outcome (`changed`, `unchanged`, `terminal`, `not_found`, `error`,
/// `misrouted`, `rate_limited`, `paused`).
pub const POLLS: &str = "jogg_relay_polls_total";
/// Upstream request duration.
pub const UPSTREAM_DURATION: &str = "jogg_relay_upstream_request_duration_seconds";
/// Time spent waiting for the rate limiter.
pub const LIMITER_WAIT: &str = "jogg_relay_rate_limiter_wait_seconds";
/// State transitions by target state.
pub const TRANSITIONS: &str = "jogg_relay_transitions_total";
/// Delivery attempts by outcome (`delivered`, `retry`, `dead`).
pub const DELIVERIES: &str = "jogg_relay_deliveries_total";
/// Delivery attempt duration.
pub const DELIVERY_DURATION: &str = "jogg_relay_delivery_attempt_duration_seconds";
/// Tracked videos by state.
pub const VIDEOS: &str = "jogg_relay_videos";
/// How overdue the most overdue poll is.
pub const POLL_LAG: &str = "jogg_relay_poll_lag_seconds";
/// How overdue the most overdue delivery is.
pub const DELIVERY_LAG: &str = "jogg_relay_delivery_lag_seconds";
/// 1 while polling is paused, by reason.
pub const UPSTREAM_PAUSED: &str = "jogg_relay_upstream_paused";
/// 1 while JoggAI's 429 throttle is in effect.
pub const UPSTREAM_THROTTLED: &str = "jogg_relay_upstream_throttled";
/// Log lines lost to an unwritable standard error.
pub const LOG_WRITE_ERRORS: &str = "jogg_relay_log_write_errors_total";
/// Seconds until polling can resume: the end of a 429 pause, or the next
/// probe while JoggAI refuses the key; 0 while polling runs.
pub const UPSTREAM_PAUSE_REMAINING: &str = "jogg_relay_upstream_pause_remaining_seconds";
/// Videos JoggAI reported completed without a usable `video_url`.
pub const COMPLETED_WITHOUT_VIDEO_URL: &str = "jogg_relay_completed_without_video_url_total";
/// Learned render time by `model` (`from_start`, `from_rendering`) and
/// `quantile`.
pub const RENDER_TIME_QUANTILE: &str = "jogg_relay_render_time_seconds";
/// Finished videos each learned model has seen.
pub const RENDER_TIME_OBSERVATIONS: &str = "jogg_relay_render_time_observations";
/// 1 once a learned model has learned enough to schedule polls.
pub const RENDER_TIME_WARMED_UP: &str = "jogg_relay_render_time_model_warmed_up";
/// Polls each finished (completed or failed) video took.
pub const POLLS_PER_FINISHED_VIDEO: &str = "jogg_relay_polls_per_finished_video";
/// JoggAI pushes received at `POST /webhooks/jogg`, by outcome (see
/// [`PUSH_OUTCOMES`]).
pub const PUSHES: &str = "jogg_relay_pushes_total";
/// Videos that completed or failed, by how the relay learned it: `push`
/// (the poll that decided answered a push) or `poll` (the schedule's own).
pub const COMPLETIONS_LEARNED: &str = "jogg_relay_completions_learned_total";
/// From a push's arrival to the first successful delivery of the callback
/// its confirming poll queued.
pub const PUSH_TO_CALLBACK: &str = "jogg_relay_push_to_callback_seconds";
/// Constant 1, labelled with the version.
pub const BUILD_INFO: &str = "jogg_relay_build_info";

/// Histogram buckets (seconds) for request durations.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets (seconds) for limiter waits.
const WAIT_BUCKETS: &[f64] = &[0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];
/// Histogram buckets (polls) for polls per finished video.
const POLL_COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0];

/// Histogram buckets (seconds) for push-to-callback delays: a push is
/// usually answered within a second; a later one waited for min_interval,
/// the budget or a failing receiver.
const PUSH_DELAY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// What became of a push, each a label value of [`PUSHES`].
pub const PUSH_OUTCOMES: [&str; 7] = [
    "accepted",
    "adopted",
    "bad_signature",
    "malformed",
    "unknown_event",
    "untracked",
    "not_active",
];
/// How a completion was learned, each a label value of [`COMPLETIONS_LEARNED`].
const LEARNED_BY: [&str; 2] = ["push", "poll"];

/// Poll outcomes, each a label value of [`POLLS`].
const POLL_OUTCOMES: [&str; 8] = [
    "changed",
    "unchanged",
    "terminal",
    "not_found",
    "error",
    "misrouted",
    "rate_limited",
    "paused",
];
/// Delivery outcomes, each a label value of [`DELIVERIES`].
const DELIVERY_OUTCOMES: [&str; 3] = ["delivered", "retry", "dead"];
/// States a transition is counted into.
const TRANSITION_STATES: [VideoState; 4] = [
    VideoState::Completed,
    VideoState::Failed,
    VideoState::Abandoned,
    VideoState::Cancelled,
];

/// The relay's metrics.
pub struct RelayMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Handles of the series updated on every poll and delivery, registered
    /// once: registering builds and hashes a key each time.
    hot: HotSeries,
    /// Upstream requests per minute over the last hour (the console's
    /// poll-budget plot).
    requests: RequestsPerMinute,
}

/// Registered handles, by label value.
struct HotSeries {
    polls: Vec<(&'static str, Counter)>,
    transitions: Vec<(VideoState, Counter)>,
    deliveries: Vec<(&'static str, Counter)>,
    completed_without_video_url: Counter,
    pushes: Vec<(&'static str, Counter)>,
    completions_learned: Vec<(&'static str, Counter)>,
    push_to_callback: Histogram,
    upstream_duration: Histogram,
    limiter_wait: Histogram,
    delivery_duration: Histogram,
    polls_per_finished_video: Histogram,
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayMetrics")
    }
}

/// What the scrape reads from the database and the gate.
#[derive(Debug, Clone, Default)]
pub struct ScrapeState {
    /// Figures from the database.
    pub gauges: Gauges,
    /// The current pause, if any.
    pub paused: Option<PauseReason>,
    /// Whether a 429 throttle is in effect.
    pub throttled: bool,
    /// Seconds until polling can resume (0 while it runs).
    pub pause_remaining_seconds: f64,
    /// The learned render-time models.
    pub render_times: Vec<crate::adaptive::ModelStats>,
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    /// A fresh set of metrics with every family described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(LIMITER_WAIT.into()), WAIT_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(POLLS_PER_FINISHED_VIDEO.into()),
                    POLL_COUNT_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(PUSH_TO_CALLBACK.into()), PUSH_DELAY_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, help.into());
        };
        describe(POLLS, None, "Upstream polls by outcome.");
        describe(
            UPSTREAM_DURATION,
            Some(Unit::Seconds),
            "Duration of upstream status requests.",
        );
        describe(
            LIMITER_WAIT,
            Some(Unit::Seconds),
            "Time polls waited for the global rate limiter.",
        );
        describe(
            TRANSITIONS,
            None,
            "Video state transitions by target state.",
        );
        describe(DELIVERIES, None, "Callback delivery attempts by outcome.");
        describe(
            DELIVERY_DURATION,
            Some(Unit::Seconds),
            "Duration of callback delivery attempts.",
        );
        describe(VIDEOS, None, "Tracked videos by state.");
        describe(
            POLL_LAG,
            Some(Unit::Seconds),
            "How late the most overdue poll is.",
        );
        describe(
            DELIVERY_LAG,
            Some(Unit::Seconds),
            "How late the most overdue delivery is.",
        );
        describe(
            UPSTREAM_PAUSED,
            None,
            "1 while polling is paused because JoggAI refuses the key or account.",
        );
        describe(
            UPSTREAM_THROTTLED,
            None,
            "1 while JoggAI's rate limiting (429) pauses polling.",
        );
        describe(
            UPSTREAM_PAUSE_REMAINING,
            Some(Unit::Seconds),
            "Seconds until polling can resume: the end of a 429 pause, or the next probe while \
             JoggAI refuses the key; 0 while polling runs.",
        );
        describe(
            COMPLETED_WITHOUT_VIDEO_URL,
            None,
            "Videos JoggAI reported completed without a usable video_url.",
        );
        describe(
            RENDER_TIME_QUANTILE,
            Some(Unit::Seconds),
            "Learned render time quantiles, by model (from_start: since the video's start; \
             from_rendering: since a poll first saw it processing).",
        );
        describe(
            RENDER_TIME_OBSERVATIONS,
            None,
            "Finished videos each learned render-time model has seen.",
        );
        describe(
            RENDER_TIME_WARMED_UP,
            None,
            "1 once a learned model has seen enough finished videos to schedule polls (with polling.strategy adaptive).",
        );
        describe(
            POLLS_PER_FINISHED_VIDEO,
            None,
            "Polls each completed or failed video took.",
        );
        describe(
            PUSHES,
            None,
            "JoggAI pushes received, by outcome (accepted: a tracked active video, polled at \
             once; adopted: an untracked video now tracked; the others changed nothing).",
        );
        describe(
            COMPLETIONS_LEARNED,
            None,
            "Videos that completed or failed, by how the relay learned it (push or poll).",
        );
        describe(
            PUSH_TO_CALLBACK,
            Some(Unit::Seconds),
            "From a JoggAI push's arrival to the first successful delivery of its callback.",
        );
        describe(BUILD_INFO, None, "Build information; always 1.");
        let counter = |name: &'static str, label: &'static str, value: &str| {
            let key = Key::from_parts(name, vec![Label::new(label, value.to_owned())]);
            let counter = recorder.register_counter(&key, &METADATA);
            // Families exist (at zero) from the start, so dashboards and
            // alerts see them before the first event.
            counter.increment(0);
            counter
        };
        let histogram =
            |name: &'static str| recorder.register_histogram(&Key::from_name(name), &METADATA);
        let hot = HotSeries {
            polls: POLL_OUTCOMES
                .map(|outcome| (outcome, counter(POLLS, "outcome", outcome)))
                .into(),
            transitions: TRANSITION_STATES
                .map(|state| (state, counter(TRANSITIONS, "to", state.as_str())))
                .into(),
            deliveries: DELIVERY_OUTCOMES
                .map(|outcome| (outcome, counter(DELIVERIES, "outcome", outcome)))
                .into(),
            completed_without_video_url: {
                let counter = recorder
                    .register_counter(&Key::from_name(COMPLETED_WITHOUT_VIDEO_URL), &METADATA);
                counter.increment(0);
                counter
            },
            pushes: PUSH_OUTCOMES
                .map(|outcome| (outcome, counter(PUSHES, "outcome", outcome)))
                .into(),
            completions_learned: LEARNED_BY
                .map(|by| (by, counter(COMPLETIONS_LEARNED, "by", by)))
                .into(),
            push_to_callback: histogram(PUSH_TO_CALLBACK),
            upstream_duration: histogram(UPSTREAM_DURATION),
            limiter_wait: histogram(LIMITER_WAIT),
            delivery_duration: histogram(DELIVERY_DURATION),
            polls_per_finished_video: histogram(POLLS_PER_FINISHED_VIDEO),
        };
        Self {
            recorder,
            handle,
            hot,
            requests: RequestsPerMinute::default(),
        }
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
            .set(value);
    }

    /// One poll ended with `outcome`.
    pub fn poll(&self, outcome: &'static str) {
        count(&self.hot.polls, &outcome);
    }

    /// A video was completed without a usable `video_url`.
    pub fn completed_without_video_url(&self) {
        self.hot.completed_without_video_url.increment(1);
    }

    /// One upstream request took `seconds` (and was sent this minute).
    pub fn upstream_request(&self, seconds: f64) {
        self.hot.upstream_duration.record(seconds);
        self.requests.record(Millis::now());
    }

    /// Upstream requests this process sent per minute, the last hour up
    /// to `now`'s minute, oldest first.
    pub fn upstream_requests_per_minute(&self, now: Millis) -> Vec<MinuteCount> {
        self.requests.last_hour(now)
    }

    /// A poll waited `seconds` for the rate limiter.
    pub fn limiter_wait(&self, seconds: f64) {
        self.hot.limiter_wait.record(seconds);
    }

    /// A video moved to `state`.
    pub fn transition(&self, state: VideoState) {
        count(&self.hot.transitions, &state);
    }

    /// A video finished (completed or failed) after `polls` polls.
    pub fn finished_render(&self, polls: i64) {
        self.hot.polls_per_finished_video.record(polls as f64);
    }

    /// A push ended with `outcome` (one of [`PUSH_OUTCOMES`]).
    pub fn push(&self, outcome: &'static str) {
        count(&self.hot.pushes, &outcome);
    }

    /// A video completed or failed; `by_push` when the deciding poll
    /// answered a push.
    pub fn completion_learned(&self, by_push: bool) {
        count(
            &self.hot.completions_learned,
            &if by_push { "push" } else { "poll" },
        );
    }

    /// A callback was first delivered `millis` after the push that ended
    /// its video arrived.
    pub fn push_to_callback(&self, millis: i64) {
        self.hot
            .push_to_callback
            .record(millis.max(0) as f64 / 1000.0);
    }

    /// A delivery attempt ended with `outcome` after `seconds`.
    pub fn delivery(&self, outcome: &'static str, seconds: f64) {
        count(&self.hot.deliveries, &outcome);
        self.hot.delivery_duration.record(seconds);
    }

    /// The Prometheus text exposition, with the scrape-time gauges set from
    /// `state`.
    pub fn render(&self, state: &ScrapeState) -> String {
        for video_state in VideoState::ALL {
            let count = state
                .gauges
                .videos
                .iter()
                .find(|(s, _)| *s == video_state)
                .map_or(0, |(_, n)| *n);
            self.gauge(
                VIDEOS,
                vec![Label::new("state", video_state.as_str())],
                count as f64,
            );
        }
        self.gauge(POLL_LAG, Vec::new(), state.gauges.poll_lag_seconds);
        self.gauge(DELIVERY_LAG, Vec::new(), state.gauges.delivery_lag_seconds);
        for reason in [
            PauseReason::InvalidApiKey,
            PauseReason::NoPermission,
            PauseReason::InsufficientCredit,
        ] {
            let paused = if state.paused == Some(reason) {
                1.0
            } else {
                0.0
            };
            self.gauge(
                UPSTREAM_PAUSED,
                vec![Label::new("reason", reason.as_str())],
                paused,
            );
        }
        self.gauge(
            UPSTREAM_THROTTLED,
            Vec::new(),
            if state.throttled { 1.0 } else { 0.0 },
        );
        self.gauge(
            UPSTREAM_PAUSE_REMAINING,
            Vec::new(),
            state.pause_remaining_seconds,
        );
        for model in &state.render_times {
            let name = model.phase.as_str();
            self.gauge(
                RENDER_TIME_OBSERVATIONS,
                vec![Label::new("model", name)],
                model.observations as f64,
            );
            self.gauge(
                RENDER_TIME_WARMED_UP,
                vec![Label::new("model", name)],
                if model.warmed_up { 1.0 } else { 0.0 },
            );
            // An unknown quantile (beyond the longest render seen finished)
            // is NaN, not left at an older value.
            for (p, seconds) in model
                .quantiles
                .iter()
                .map(|(p, seconds)| (p, seconds.unwrap_or(f64::NAN)))
            {
                self.gauge(
                    RENDER_TIME_QUANTILE,
                    vec![
                        Label::new("model", name),
                        Label::new("quantile", p.to_string()),
                    ],
                    seconds,
                );
            }
        }
        self.gauge(
            BUILD_INFO,
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        let mut text = self.handle.render();
        // Families the recorder does not hold: read at scrape time.
        let _ = std::fmt::Write::write_fmt(
            &mut text,
            format_args!(
                "# HELP {LOG_WRITE_ERRORS} Log lines lost because standard error could not be written.\n\
                 # TYPE {LOG_WRITE_ERRORS} counter\n{LOG_WRITE_ERRORS} {}\n\n",
                super::log_write_errors()
            ),
        );
        super::process::ProcessStats::read().render(&mut text);
        text
    }
}

/// Increments the counter registered for `label` (label values are fixed
/// lists, so one is always there).
fn count<L: PartialEq + std::fmt::Debug>(series: &[(L, Counter)], label: &L) {
    match series.iter().find(|(value, _)| value == label) {
        Some((_, counter)) => counter.increment(1),
        None => debug_assert!(false, "no series for {label:?}"),
    }
}
