//! What one answer does to one video: a pure function from (claimed video,
//! answer, time, policy, randomness) to the row update and the signal for
//! the upstream gate. No I/O, so every outcome is unit-tested here.

use reqwest::Url;

use super::policy::PollPolicy;
use crate::adaptive::{Observation, Schedule, VideoClock, started_at};
use crate::domain::poll::{
    ClaimedVideo, NewTransition, PollUpdate, Release, TerminalChange, TransitionKind,
    UpstreamFields,
};
use crate::domain::{Millis, VideoState};
use crate::jogg::{PauseReason, PollAnswer, StatusClass};

/// Why the relay stopped tracking a video on its own.
pub mod reason {
    /// `polling.give_up_after` passed.
    pub const DEADLINE: &str = "deadline";
    /// Still "not found" after `polling.not_found_grace`.
    pub const NOT_FOUND: &str = "not_found";
    /// JoggAI rejected the id (40000).
    pub const INVALID_ID: &str = "invalid_id";
}

/// What the poller must do with one answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this update (the answer was about the video).
    Record {
        /// The row update.
        update: Box<PollUpdate>,
        /// A label for logs and metrics.
        outcome: PollOutcome,
        /// What the answer teaches the learned schedule about the video
        /// (any status answer; learned once the update is committed).
        learned: Option<Observation>,
    },
    /// Nothing about the video: hand it back and act on the whole upstream.
    Global {
        /// Hand the video back, due again at `next_poll_at` (for a 429, the
        /// poller moves it to the end of the gate's pause).
        release: Release,
        /// What the gate must do.
        signal: GateSignal,
    },
}

/// How the gate reacts to an answer that concerns every video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateSignal {
    /// 429: throttle everything.
    Throttle(Option<std::time::Duration>),
    /// Auth or credit failure: pause everything.
    Pause(PauseReason),
}

/// The label of a recorded poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// The upstream status changed (the first answer counts).
    Changed,
    /// Same status as before.
    Unchanged,
    /// The video reached a terminal state.
    Terminal(VideoState),
    /// Not found yet; retried.
    NotFoundRetry,
    /// A failed poll; the video backs off.
    Error,
    /// An answer about another video; ignored, the video backs off.
    Misrouted,
}

impl PollOutcome {
    /// Stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Changed => "changed",
            PollOutcome::Unchanged => "unchanged",
            PollOutcome::Terminal(_) => "terminal",
            PollOutcome::NotFoundRetry => "not_found",
            PollOutcome::Error => "error",
            PollOutcome::Misrouted => "misrouted",
        }
    }
}

/// The randomness a decision needs, injectable for tests.
pub trait Randomness {
    /// A uniform sample in `[-1, 1]` for jitter.
    fn jitter_unit(&mut self) -> f64;
    /// A new event id, `evt_` + 32 hex digits.
    fn event_id(&mut self) -> String;
}

impl Randomness for fastrand::Rng {
    fn jitter_unit(&mut self) -> f64 {
        self.f64() * 2.0 - 1.0
    }

    fn event_id(&mut self) -> String {
        format!("evt_{:016x}{:016x}", self.u64(..), self.u64(..))
    }
}

/// Callback targets of a video: the configured URLs, then its own, without
/// duplicates.
pub fn targets(configured: &[Url], own: Option<&str>) -> Vec<String> {
    let mut targets: Vec<String> = Vec::with_capacity(configured.len() + 1);
    for url in configured.iter().map(Url::as_str).chain(own) {
        if !targets.iter().any(|known| known == url) {
            targets.push(url.to_owned());
        }
    }
    targets
}

/// Whether an unfinished status says the video is rendering (JoggAI's
/// `processing`), as opposed to waiting in its queue (`pending`) or a word
/// the relay does not know.
fn is_rendering(status: &str) -> bool {
    status.trim().eq_ignore_ascii_case("processing")
}

/// Decides what `answer` does to `video` at `now`. With a `learned`
/// schedule (`polling.strategy = "adaptive"`), unfinished videos are
/// scheduled by it once it has learned enough; without one, or before
/// that, by the exponential schedule.
pub fn decide(
    video: &ClaimedVideo,
    answer: &PollAnswer,
    now: Millis,
    policy: &PollPolicy,
    learned_schedule: Option<&Schedule>,
    configured_targets: &[Url],
    rng: &mut impl Randomness,
) -> Decision {
    let enqueued_at = video.enqueued_at;
    // One decision schedules at most one delay; drawn up front so the
    // terminal helper below can own `rng` for the event id.
    let jitter = rng.jitter_unit();
    let mut update = PollUpdate {
        video_rowid: video.id,
        lease: video.lease,
        at: now,
        counted: true,
        upstream_status: video.upstream_status.clone(),
        fields: UpstreamFields::default(),
        unchanged_polls: video.unchanged_polls,
        error_streak: 0,
        next_poll_at: None,
        unfinished_seen_at: None,
        rendering_seen_at: None,
        claimed_at: video.claimed_at,
        repoll_after_push_at: now.plus(policy.min_interval),
        transitions: Vec::new(),
        terminal: None,
    };
    let mut learned = None;
    let mut terminal = |update: &mut PollUpdate, state: VideoState, reason: Option<&str>| {
        update.transitions.push(NewTransition {
            kind: TransitionKind::State,
            from: Some(VideoState::Active.as_str().to_owned()),
            to: state.as_str().to_owned(),
        });
        update.terminal = Some(TerminalChange {
            state,
            reason: reason.map(str::to_owned),
            event_id: rng.event_id(),
            targets: targets(configured_targets, video.callback_url.as_deref()),
        });
        update.next_poll_at = None;
        PollOutcome::Terminal(state)
    };

    let outcome = match answer {
        PollAnswer::Status(status) => {
            let changed = video.upstream_status.as_deref() != Some(status.status.as_str());
            if changed {
                update.transitions.push(NewTransition {
                    kind: TransitionKind::Status,
                    from: video.upstream_status.clone(),
                    to: status.status.clone(),
                });
                update.upstream_status = Some(status.status.clone());
                update.unchanged_polls = 0;
            } else {
                update.unchanged_polls = video.unchanged_polls.saturating_add(1);
            }
            update.fields = UpstreamFields {
                video_url: status.video_url.clone(),
                cover_url: status.cover_url.clone(),
                created_at: status.created_at,
                duration: status.duration,
                error_code: status.error_code.clone(),
                error_message: status.error_message.clone(),
            };
            let started = started_at(
                enqueued_at,
                status.created_at.or(video.created_at),
                policy.give_up_after,
            );
            let video_rendering_seen_at = video.rendering_seen_at;
            let finished = Observation {
                started_at: started,
                unfinished_seen_at: video.unfinished_seen_at,
                rendering_seen_at: video_rendering_seen_at,
                finished_seen_at: Some(now),
            };
            match status.class {
                StatusClass::Completed => {
                    learned = Some(finished);
                    terminal(&mut update, VideoState::Completed, None)
                }
                StatusClass::Failed => {
                    learned = Some(finished);
                    terminal(&mut update, VideoState::Failed, None)
                }
                StatusClass::InProgress | StatusClass::Unknown => {
                    update.unfinished_seen_at = Some(now);
                    let rendering_seen_at = video_rendering_seen_at.or_else(|| {
                        is_rendering(&status.status).then(|| {
                            update.rendering_seen_at = Some(now);
                            now
                        })
                    });
                    learned = Some(Observation {
                        unfinished_seen_at: Some(now),
                        rendering_seen_at,
                        finished_seen_at: None,
                        ..finished
                    });
                    let clock = VideoClock {
                        started_at: started,
                        rendering_seen_at,
                    };
                    let (shortest, longest) = policy.gap_bounds();
                    let learned = learned_schedule
                        .and_then(|schedule| schedule.next_gap(&clock, now, shortest, longest));
                    let unchanged = u32::try_from(update.unchanged_polls).unwrap_or(u32::MAX);
                    let base = learned.unwrap_or_else(|| policy.interval(unchanged));
                    let mut delay = policy.unfinished_gap(base, jitter);
                    if video.answers_push() {
                        // JoggAI pushes once the video is done, but its
                        // status endpoint may lag the push a moment: one
                        // more look `min_interval` later, then the usual
                        // schedule (the safety net) again.
                        delay = delay.min(policy.min_interval);
                    }
                    update.next_poll_at = Some(policy.next_poll_at(now, delay, enqueued_at));
                    if changed {
                        PollOutcome::Changed
                    } else {
                        PollOutcome::Unchanged
                    }
                }
            }
        }
        PollAnswer::InvalidId => {
            terminal(&mut update, VideoState::Abandoned, Some(reason::INVALID_ID))
        }
        PollAnswer::NotFound if !policy.not_found_is_retried(enqueued_at, now) => {
            terminal(&mut update, VideoState::Abandoned, Some(reason::NOT_FOUND))
        }
        // A misrouted answer is an upstream fault like any other: nothing in
        // it is about this video, so only the error backoff applies.
        PollAnswer::NotFound | PollAnswer::Transient(_) | PollAnswer::Misrouted { .. } => {
            update.error_streak = video.error_streak.saturating_add(1);
            let streak = u32::try_from(update.error_streak).unwrap_or(u32::MAX);
            let delay = policy.jittered(policy.error_backoff(streak), jitter);
            update.next_poll_at = Some(policy.next_poll_at(now, delay, enqueued_at));
            match answer {
                PollAnswer::NotFound => PollOutcome::NotFoundRetry,
                PollAnswer::Misrouted { .. } => PollOutcome::Misrouted,
                _ => PollOutcome::Error,
            }
        }
        PollAnswer::RateLimited { retry_after } => {
            // Due again when the gate's pause ends: the poller sets that
            // (the gate clamps `retry_after` to `jogg.max_pause` and never
            // shortens a pause already in effect).
            return Decision::Global {
                release: Release {
                    video_rowid: video.id,
                    lease: video.lease,
                    next_poll_at: now,
                },
                signal: GateSignal::Throttle(*retry_after),
            };
        }
        PollAnswer::Paused(reason) => {
            return Decision::Global {
                release: Release {
                    video_rowid: video.id,
                    lease: video.lease,
                    next_poll_at: now,
                },
                signal: GateSignal::Pause(*reason),
            };
        }
    };

    // The deadline applies whatever the answer, unless it just ended the
    // video anyway.
    if update.terminal.is_none() && now >= policy.deadline(enqueued_at) {
        let outcome = terminal(&mut update, VideoState::Abandoned, Some(reason::DEADLINE));
        // What the answer said is still true (the video was unfinished
        // now, as its row will say): the learner hears it too.
        return Decision::Record {
            update: Box::new(update),
            outcome,
            learned,
        };
    }
    Decision::Record {
        update: Box::new(update),
        outcome,
        learned,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{Lease, StoredId, VideoId};
    use crate::jogg::VideoStatus;

    #[test]
    fn production_randomness_spreads_jitter_over_both_sides_and_mints_event_ids() {
        let mut rng = fastrand::Rng::with_seed(7);
        let samples: Vec<f64> = (0..2000).map(|_| rng.jitter_unit()).collect();
        assert!(samples.iter().all(|u| (-1.0..=1.0).contains(u)));
        let (low, high) = samples
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), u| (lo.min(*u), hi.max(*u)));
        assert!(low < -0.95 && high > 0.95, "[{low}, {high}]");
        let first = rng.event_id();
        let second = rng.event_id();
        assert_ne!(first, second);
        for id in [first, second] {
            let hex = id.strip_prefix("evt_").expect("evt_ prefix");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }

    /// Fixed randomness: no jitter, numbered event ids.
    struct Fixed(u32);

    impl Randomness for Fixed {
        fn jitter_unit(&mut self) -> f64 {
            0.0
        }
        fn event_id(&mut self) -> String {
            self.0 += 1;
            format!("evt_{}", self.0)
        }
    }

    fn policy() -> PollPolicy {
        PollPolicy {
            first_after: Duration::from_secs(10),
            min_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
            give_up_after: Duration::from_secs(3600),
            not_found_grace: Duration::from_secs(300),
            safety_net: None,
        }
    }

    fn video(status: Option<&str>) -> ClaimedVideo {
        ClaimedVideo {
            id: 7,
            video_id: StoredId::Valid(VideoId::parse("v").unwrap()),
            upstream_status: status.map(str::to_owned),
            enqueued_at: Millis(0),
            unchanged_polls: 2,
            error_streak: 3,
            callback_url: Some("https://own.example/cb".into()),
            lease: Lease { until: Millis(99) },
            created_at: None,
            polls: 4,
            unfinished_seen_at: None,
            rendering_seen_at: None,
            claimed_at: Millis(50),
            hinted_at: None,
        }
    }

    fn status(s: &str) -> PollAnswer {
        PollAnswer::Status(VideoStatus {
            video_id: Some("v".into()),
            status: s.into(),
            class: StatusClass::of(s),
            video_url: None,
            cover_url: None,
            created_at: None,
            duration: None,
            error_code: None,
            error_message: None,
            rejected_urls: Vec::new(),
        })
    }

    fn record(decision: Decision) -> (PollUpdate, PollOutcome) {
        match decision {
            Decision::Record {
                update, outcome, ..
            } => (*update, outcome),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    const NOW: Millis = Millis(60_000);

    fn run(video: &ClaimedVideo, answer: &PollAnswer, now: Millis) -> Decision {
        let configured = [Url::parse("https://ops.example/hook").unwrap()];
        decide(
            video,
            answer,
            now,
            &policy(),
            None,
            &configured,
            &mut Fixed(0),
        )
    }

    #[test]
    fn a_push_the_poll_does_not_confirm_is_looked_at_once_more_after_min_interval() {
        let policy = PollPolicy {
            safety_net: Some(Duration::from_secs(300)),
            ..policy()
        };
        let decide_for = |video: &ClaimedVideo| {
            let decision = decide(
                video,
                &status("processing"),
                NOW,
                &policy,
                None,
                &[],
                &mut Fixed(0),
            );
            record(decision).0.next_poll_at
        };
        let pushed = ClaimedVideo {
            hinted_at: Some(Millis(40)),
            ..video(Some("processing"))
        };
        assert_eq!(decide_for(&pushed), Some(NOW.plus(Duration::from_secs(10))));
        // Without a push, or with one after the claim (that one is still
        // pending and brought forward by the store), the safety net.
        for video in [
            video(Some("processing")),
            ClaimedVideo {
                hinted_at: Some(Millis(60)),
                ..video(Some("processing"))
            },
        ] {
            assert_eq!(decide_for(&video), Some(NOW.plus(Duration::from_secs(300))));
        }
    }

    #[test]
    fn first_answer_is_a_transition_from_none_and_resets_the_interval() {
        let (update, outcome) = record(run(&video(None), &status("pending"), NOW));
        assert_eq!(outcome, PollOutcome::Changed);
        assert_eq!(
            update.transitions,
            [NewTransition {
                kind: TransitionKind::Status,
                from: None,
                to: "pending".into()
            }]
        );
        assert_eq!(update.unchanged_polls, 0);
        assert_eq!(update.error_streak, 0, "a good answer ends an error streak");
        assert_eq!(update.next_poll_at, Some(Millis(70_000)));
        assert!(update.counted);
    }

    /// A learner that has seen `count` videos take exactly 100–199 s.
    fn learner(count: i64) -> crate::adaptive::Learner {
        use crate::adaptive::{AdaptiveSettings, Learner, Observation};
        let mut learner = Learner::new(AdaptiveSettings {
            step: 0.1,
            half_life: 1000,
            warmup: 20,
            horizon: Duration::from_secs(3600),
        });
        for id in 0..count {
            let start = Millis(id * 1_000_000);
            let done = start.plus(Duration::from_secs(100 + (id % 100) as u64));
            learner.record(
                id,
                &Observation {
                    started_at: start,
                    unfinished_seen_at: Some(done),
                    rendering_seen_at: None,
                    finished_seen_at: Some(done),
                },
            );
        }
        learner.refit();
        learner
    }

    #[test]
    fn a_learned_schedule_replaces_the_exponential_one_only_once_warm() {
        let configured = [Url::parse("https://ops.example/hook").unwrap()];
        let video = video(Some("processing"));
        let decide_with = |learner: Option<&crate::adaptive::Learner>, now: Millis| {
            let learner = learner.map(|l| &**l.schedule());
            let (update, _) = record(decide(
                &video,
                &status("processing"),
                now,
                &policy(),
                learner,
                &configured,
                &mut Fixed(0),
            ));
            update.next_poll_at
        };
        let exponential = decide_with(None, NOW);
        // Cold (19 of 20 finished): the exponential schedule, to the ms.
        assert_eq!(decide_with(Some(&learner(19)), NOW), exponential);
        // Warm: at 150 s renders finish at 1 % per second, so a step of
        // 10 % is 10 s; at 60 s, before any has finished, the next poll
        // goes where the first 10 % have (110 s).
        let warm = learner(1000);
        let at_150 = Millis(150_000);
        assert_eq!(
            decide_with(Some(&warm), at_150).map(|at| (at.0 - at_150.0) / 1000),
            Some(10)
        );
        let early = decide_with(Some(&warm), NOW).unwrap();
        assert!((early.0 - 110_000).abs() <= 2_000, "{early:?}");
        assert_ne!(decide_with(Some(&warm), at_150), decide_with(None, at_150));
    }

    #[test]
    fn every_status_answer_tells_the_learner_what_it_saw() {
        let configured = [Url::parse("https://ops.example/hook").unwrap()];
        let mut seen = video(Some("pending"));
        seen.unfinished_seen_at = Some(Millis(50_000));
        let learned = |video: &ClaimedVideo, answer: &str| match decide(
            video,
            &status(answer),
            NOW,
            &policy(),
            None,
            &configured,
            &mut Fixed(0),
        ) {
            Decision::Record {
                learned, update, ..
            } => (learned.unwrap(), update),
            other => panic!("{other:?}"),
        };
        // Still pending: unfinished now, not rendering.
        let (observation, update) = learned(&seen, "pending");
        assert_eq!(observation.unfinished_seen_at, Some(NOW));
        assert_eq!(observation.rendering_seen_at, None);
        assert_eq!(observation.finished_seen_at, None);
        assert_eq!(
            (update.unfinished_seen_at, update.rendering_seen_at),
            (Some(NOW), None)
        );
        // First seen processing: rendering from now.
        let (observation, update) = learned(&seen, "processing");
        assert_eq!(observation.rendering_seen_at, Some(NOW));
        assert_eq!(update.rendering_seen_at, Some(NOW));
        // Finished: after the last unfinished poll, by now; nothing new
        // written to those columns.
        let (observation, update) = learned(&seen, "completed");
        assert_eq!(observation.unfinished_seen_at, Some(Millis(50_000)));
        assert_eq!(observation.finished_seen_at, Some(NOW));
        assert_eq!(
            (update.unfinished_seen_at, update.rendering_seen_at),
            (None, None)
        );
        // At the deadline the video is abandoned, and what the answer saw
        // (unfinished now, as its row says) is still learned.
        let late = Millis(3_600_000);
        match decide(
            &seen,
            &status("processing"),
            late,
            &policy(),
            None,
            &configured,
            &mut Fixed(0),
        ) {
            Decision::Record {
                learned, update, ..
            } => {
                assert_eq!(update.terminal.unwrap().reason.as_deref(), Some("deadline"));
                assert_eq!(update.unfinished_seen_at, Some(late));
                assert_eq!(learned.unwrap().unfinished_seen_at, Some(late));
            }
            other => panic!("{other:?}"),
        }
        // An error teaches nothing.
        match decide(
            &seen,
            &PollAnswer::Transient("x".into()),
            NOW,
            &policy(),
            None,
            &configured,
            &mut Fixed(0),
        ) {
            Decision::Record { learned, .. } => assert_eq!(learned, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unchanged_answer_grows_the_interval() {
        let (update, outcome) = record(run(&video(Some("processing")), &status("processing"), NOW));
        assert_eq!(outcome, PollOutcome::Unchanged);
        assert!(update.transitions.is_empty());
        assert_eq!(update.unchanged_polls, 3);
        // 10 s × 2^3 = 80 s, capped at 60 s.
        assert_eq!(update.next_poll_at, Some(Millis(120_000)));
    }

    #[test]
    fn every_success_and_failure_spelling_is_terminal_with_outbox_rows() {
        for (spelling, state) in [
            ("completed", VideoState::Completed),
            ("success", VideoState::Completed),
            ("succeeded", VideoState::Completed),
            ("failed", VideoState::Failed),
            ("fail", VideoState::Failed),
            ("error", VideoState::Failed),
        ] {
            let (update, outcome) = record(run(&video(Some("processing")), &status(spelling), NOW));
            assert_eq!(outcome, PollOutcome::Terminal(state), "{spelling}");
            let terminal = update.terminal.unwrap();
            assert_eq!(terminal.state, state);
            assert_eq!(terminal.event_id, "evt_1");
            assert_eq!(
                terminal.targets,
                ["https://ops.example/hook", "https://own.example/cb"]
            );
            assert_eq!(update.next_poll_at, None);
            assert_eq!(
                update.transitions,
                [
                    NewTransition {
                        kind: TransitionKind::Status,
                        from: Some("processing".into()),
                        to: spelling.into()
                    },
                    NewTransition {
                        kind: TransitionKind::State,
                        from: Some("active".into()),
                        to: state.as_str().into()
                    },
                ]
            );
        }
    }

    #[test]
    fn unknown_status_is_recorded_and_polling_continues() {
        let (update, outcome) =
            record(run(&video(Some("pending")), &status("queued_for_gpu"), NOW));
        assert_eq!(outcome, PollOutcome::Changed);
        assert_eq!(update.upstream_status.as_deref(), Some("queued_for_gpu"));
        assert!(update.terminal.is_none());
        assert!(update.next_poll_at.is_some());
    }

    #[test]
    fn not_found_is_retried_within_grace_then_abandons() {
        let (update, outcome) = record(run(&video(None), &PollAnswer::NotFound, Millis(299_000)));
        assert_eq!(outcome, PollOutcome::NotFoundRetry);
        assert_eq!(update.error_streak, 4);
        assert!(update.terminal.is_none());

        let (update, _) = record(run(&video(None), &PollAnswer::NotFound, Millis(300_000)));
        let terminal = update.terminal.unwrap();
        assert_eq!(
            (terminal.state, terminal.reason.as_deref()),
            (VideoState::Abandoned, Some("not_found"))
        );
    }

    #[test]
    fn invalid_id_abandons_at_once() {
        let (update, _) = record(run(&video(None), &PollAnswer::InvalidId, NOW));
        let terminal = update.terminal.unwrap();
        assert_eq!(
            (terminal.state, terminal.reason.as_deref()),
            (VideoState::Abandoned, Some("invalid_id"))
        );
    }

    #[test]
    fn transient_errors_back_off_without_changing_state() {
        let answer = PollAnswer::Transient("HTTP 502".into());
        let (update, outcome) = record(run(&video(Some("processing")), &answer, NOW));
        assert_eq!(outcome, PollOutcome::Error);
        assert_eq!(update.error_streak, 4);
        assert!(update.transitions.is_empty());
        assert!(update.terminal.is_none());
        assert_eq!(update.upstream_status.as_deref(), Some("processing"));
        // 10 s × 2^3 = 80 s.
        assert_eq!(update.next_poll_at, Some(Millis(140_000)));
    }

    #[test]
    fn deadline_abandons_whatever_the_answer() {
        let late = Millis(3_600_000);
        // (A late "not found" ends as `not_found`: its own grace is over too.)
        for answer in [
            status("processing"),
            PollAnswer::Transient("timeout".into()),
        ] {
            let (update, _) = record(run(&video(Some("processing")), &answer, late));
            let terminal = update.terminal.unwrap();
            assert_eq!(terminal.reason.as_deref(), Some("deadline"), "{answer:?}");
        }
        // A terminal answer at the deadline still wins.
        let (update, _) = record(run(&video(Some("processing")), &status("completed"), late));
        assert_eq!(update.terminal.unwrap().state, VideoState::Completed);
    }

    #[test]
    fn a_misrouted_answer_changes_nothing_and_backs_off() {
        // A "completed" answer about another video, for a video in progress.
        let answer = status("completed").for_video("other");
        assert_eq!(
            answer,
            PollAnswer::Misrouted {
                answered: "v".into()
            }
        );
        let video = video(Some("processing"));
        let (update, outcome) = record(run(&video, &answer, NOW));
        assert_eq!(outcome, PollOutcome::Misrouted);
        assert_eq!(outcome.as_str(), "misrouted");
        assert!(update.terminal.is_none(), "no terminal state");
        assert!(update.transitions.is_empty(), "no transition");
        assert_eq!(update.upstream_status.as_deref(), Some("processing"));
        assert_eq!(update.fields, UpstreamFields::default(), "no URL taken");
        assert_eq!(update.unchanged_polls, video.unchanged_polls);
        // Backs off like a transient error: streak 3 → 4, 10 s × 2^3.
        assert_eq!(update.error_streak, 4);
        assert_eq!(update.next_poll_at, Some(Millis(140_000)));
        let (transient, _) = record(run(&video, &PollAnswer::Transient("x".into()), NOW));
        assert_eq!(update.next_poll_at, transient.next_poll_at);
    }

    #[test]
    fn global_answers_release_the_video_untouched() {
        let decision = run(
            &video(Some("processing")),
            &PollAnswer::Paused(PauseReason::InsufficientCredit),
            NOW,
        );
        assert_eq!(
            decision,
            Decision::Global {
                release: Release {
                    video_rowid: 7,
                    lease: Lease { until: Millis(99) },
                    next_poll_at: NOW
                },
                signal: GateSignal::Pause(PauseReason::InsufficientCredit),
            }
        );
        let retry_after = Some(Duration::from_secs(5));
        let decision = run(&video(None), &PollAnswer::RateLimited { retry_after }, NOW);
        assert_eq!(
            decision,
            Decision::Global {
                release: Release {
                    video_rowid: 7,
                    lease: Lease { until: Millis(99) },
                    next_poll_at: NOW
                },
                signal: GateSignal::Throttle(retry_after),
            }
        );
    }

    #[test]
    fn targets_are_deduplicated() {
        let configured = [Url::parse("https://a.example/x").unwrap()];
        assert_eq!(
            targets(&configured, Some("https://a.example/x")),
            ["https://a.example/x"]
        );
        assert_eq!(targets(&[], None), Vec::<String>::new());
    }
}
