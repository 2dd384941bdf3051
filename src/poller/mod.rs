//! The poller: claims due videos with leases, polls JoggAI for each within
//! the global budget ([`gate`]), decides what each answer means
//! ([`decide`]) and records the result through the group-commit writer.
//!
//! One [`Poller::step`] is one claim-poll-record round and returns an
//! [`Outcome`]; [`Poller::run`] loops it. Tests drive `step` directly with
//! an explicit clock.

pub mod decide;
pub mod gate;
pub mod learning;
pub mod policy;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use reqwest::Url;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::adaptive::SharedLearner;
use crate::config::{Config, PollStrategy};
use crate::domain::poll::{ClaimedVideo, Ranker, Release};
use crate::domain::{Lease, Millis, VideoState};
use crate::jogg::{JoggClient, PauseReason, PollAnswer};
use crate::store::{Store, StoreError, Writer};
use crate::telemetry::metrics::RelayMetrics;
use crate::worker::{
    HEARTBEAT_INTERVAL, Heartbeat, HeldLeases, LeaseWorker, LoopTexts, Pace, StepClock, WakeUp,
    lease_step, run_lease_loop,
};
use decide::{Decision, GateSignal, PollOutcome};
use gate::{Closed, UpstreamGate};
use policy::PollPolicy;

/// Most videos claimed in one round.
const MAX_CLAIM: usize = 256;
/// Added to every lease beyond the time its polls can take (a slot is held
/// before the claim, so only scheduling delays have to fit in here).
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Wake-up calls between the parts of the relay, so that new work is
/// picked up at once instead of at the end of an idle wait.
#[derive(Debug, Clone, Default)]
pub struct Wakeups {
    /// Videos were enqueued (the poller waits on it).
    pub new_videos: Arc<NewVideos>,
    /// Deliveries were queued (the delivery worker waits on it).
    pub new_deliveries: Arc<Notify>,
}

/// Enqueues tell the poller when their videos are first due, so that it
/// wakes when there is something to poll rather than on every enqueue: a new
/// video is normally due only `polling.first_after` later, and a claim made
/// on each enqueue would find nothing and cost a write transaction.
#[derive(Debug)]
pub struct NewVideos {
    /// Earliest first poll announced since the poller last took it;
    /// `i64::MAX` when none.
    earliest_due: AtomicI64,
    /// Wakes the poller's wait.
    notify: Notify,
}

impl Default for NewVideos {
    fn default() -> Self {
        Self {
            earliest_due: AtomicI64::new(i64::MAX),
            notify: Notify::new(),
        }
    }
}

impl NewVideos {
    /// Videos were stored; the earliest of them is first due at `due`.
    pub fn announce(&self, due: Millis) {
        self.earliest_due.fetch_min(due.0, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Waits for an announcement, then takes the earliest due time
    /// announced since the last call (`None` if a previous call already took
    /// it).
    async fn next(&self) -> Option<Millis> {
        self.notify.notified().await;
        match self.earliest_due.swap(i64::MAX, Ordering::AcqRel) {
            i64::MAX => None,
            due => Some(Millis(due)),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Polled this many videos (recorded or handed back).
    Worked(usize),
    /// Nothing was due.
    Idle,
    /// Polling is paused for this reason and no probe was due.
    Paused(PauseReason),
    /// JoggAI throttled us; nothing is sent until it ends.
    Throttled,
}

/// A poller failure: only the store can fail it (upstream problems are
/// answers, not errors).
#[derive(Debug, thiserror::Error)]
#[error("poller cannot reach the database: {0}")]
pub struct PollerError(#[from] pub StoreError);

/// Everything a poll task needs, shared by all of them.
struct Shared {
    writer: Writer,
    client: JoggClient,
    gate: Arc<UpstreamGate>,
    policy: PollPolicy,
    /// What was learned of render times; fed by every finished video
    /// whatever the strategy, used for scheduling only when `adaptive`.
    learner: SharedLearner,
    /// Whether the learned schedule is used (`polling.strategy`).
    adaptive: bool,
    targets: Vec<Url>,
    /// Notified when a terminal result queued deliveries.
    deliveries_queued: Arc<Notify>,
    metrics: Arc<RelayMetrics>,
    /// Claims not yet settled, to hand back on shutdown.
    held: HeldLeases,
    /// Cancelled when shutdown begins: claimed videos that have not been
    /// sent yet are handed back instead of polled.
    stopping: CancellationToken,
}

/// The poller (see the module docs).
pub struct Poller {
    shared: Arc<Shared>,
    store: Store,
    /// Bounds concurrent upstream requests (`jogg.max_in_flight`).
    in_flight: Arc<Semaphore>,
    /// Budget, for sizing claims and leases.
    requests_per_second: f64,
    /// Per upstream request.
    request_timeout: Duration,
    /// Announces enqueued videos, to end an idle wait when they are due.
    new_videos: Arc<NewVideos>,
    /// How long shutdown waits for polls in flight.
    shutdown_grace: Duration,
    /// Beaten by the poll loop, watched by the systemd watchdog.
    heartbeat: Arc<Heartbeat>,
    /// Ranks due videos when more are due than a claim takes (adaptive).
    ranker: Option<Ranker>,
}

impl Poller {
    /// Builds a poller that writes through `writer` and checks `gate`. It
    /// wakes from idle when `wakeups.new_videos` is notified, and notifies
    /// `wakeups.new_deliveries` when it queued callbacks. It feeds
    /// `learner` with every finished video.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        store: Store,
        writer: Writer,
        client: JoggClient,
        gate: Arc<UpstreamGate>,
        wakeups: &Wakeups,
        metrics: Arc<RelayMetrics>,
        learner: SharedLearner,
    ) -> Self {
        let adaptive = config.polling.strategy == PollStrategy::Adaptive;
        let ranker = adaptive.then(|| {
            learning::ranker(
                learner.clone(),
                config.polling.give_up_after,
                learning::starving_after(&config.polling),
            )
        });
        Self {
            shared: Arc::new(Shared {
                writer,
                client,
                gate,
                policy: PollPolicy::from(&config.polling),
                learner,
                adaptive,
                targets: config.callbacks.urls.clone(),
                deliveries_queued: wakeups.new_deliveries.clone(),
                metrics,
                held: HeldLeases::default(),
                stopping: CancellationToken::new(),
            }),
            store,
            in_flight: Arc::new(Semaphore::new(config.jogg.max_in_flight)),
            requests_per_second: config.jogg.requests_per_second,
            request_timeout: config.jogg.timeout,
            new_videos: wakeups.new_videos.clone(),
            shutdown_grace: config.server.shutdown_grace,
            heartbeat: Arc::default(),
            ranker,
        }
    }

    /// The poll loop's heartbeat (see [`Heartbeat`]).
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// The gate this poller sends through (for `/readyz`).
    pub fn gate(&self) -> &Arc<UpstreamGate> {
        &self.shared.gate
    }

    /// Polls until `shutdown`. Then no new claim is made, videos claimed
    /// but not yet sent are handed back, polls in flight get
    /// `server.shutdown_grace` to finish, and whatever is still unfinished
    /// after that is handed back due now, so the next start takes it at once.
    /// The loop is the one the delivery worker runs too
    /// (`worker::run_lease_loop`); what is the poller's own is in its
    /// `LeaseWorker` hooks below.
    pub async fn run(&self, shutdown: CancellationToken) {
        run_lease_loop(self, shutdown).await;
    }

    /// One round: claim what is due at `now` (as many as there are free
    /// in-flight slots), poll each within the budget, record every result.
    #[instrument(skip(self), level = "debug")]
    pub async fn step(&self, now: Millis) -> Result<Outcome, PollerError> {
        lease_step(self, now).await
    }

    /// While paused: at most one probe (a real poll of one due video) per
    /// probe delay. Success resumes polling; the same failure keeps the pause
    /// and grows the delay.
    async fn probe(&self, reason: PauseReason, now: Millis) -> Result<Outcome, PollerError> {
        let gate = &self.shared.gate;
        if now < gate.next_probe_at() || !gate.take_probe(now).await {
            return Ok(Outcome::Paused(reason));
        }
        let Some(video) = self.claim(now, 1).await?.pop() else {
            return Ok(Outcome::Paused(reason));
        };
        debug!(video_id = %video.video_id, "probing JoggAI while paused");
        let answer = request(&self.shared, &video).await;
        if let PollAnswer::Paused(reason) = answer {
            self.shared.metrics.poll("paused");
            gate.probe_failed(reason, now);
            self.shared
                .writer
                .release(vec![Release {
                    video_rowid: video.id,
                    lease: video.lease,
                    next_poll_at: now,
                }])
                .await?;
            return Ok(Outcome::Paused(reason));
        }
        gate.resume();
        apply(&self.shared, &video, &answer, now).await?;
        Ok(Outcome::Worked(1))
    }
}

/// The poller's part of the shared lease loop: the gate (pause, probe,
/// throttle) before every claim, claims ranked and leased for the budget,
/// and waking for newly announced videos only once they are due.
impl LeaseWorker for Poller {
    type Item = ClaimedVideo;
    type Outcome = Outcome;
    type Error = PollerError;

    const MAX_CLAIM: usize = MAX_CLAIM;
    const TEXTS: LoopTexts = LoopTexts {
        started: "poller started",
        stopped: "poller stopped",
        task_failed: "recording a poll failed; its lease will expire and it is polled again",
        step_failed: "poll round failed; retrying shortly",
        abandoned: "polls still in flight after the shutdown grace were abandoned",
        handed_back: "handed back unfinished polls",
        hand_back_failed: "could not hand back unfinished polls; their leases will expire",
    };

    fn in_flight(&self) -> &Arc<Semaphore> {
        &self.in_flight
    }

    fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    fn held(&self) -> &HeldLeases {
        &self.shared.held
    }

    fn stopping(&self) -> &CancellationToken {
        &self.shared.stopping
    }

    fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// Nothing is claimed while the gate is closed: paused, at most a
    /// probe; throttled, nothing until the throttle ends.
    async fn before_claim(&self, now: Millis) -> Result<Option<Outcome>, PollerError> {
        let gate = &self.shared.gate;
        if gate.paused().is_some() || gate.throttled_until(now).is_some() {
            // Another relay on the database may have ended it.
            gate.refresh(now).await;
        }
        if let Some(reason) = gate.paused() {
            return self.probe(reason, now).await.map(Some);
        }
        if gate.throttled_until(now).is_some() {
            return Ok(Some(Outcome::Throttled));
        }
        Ok(None)
    }

    /// Claims up to `limit` due videos, with a lease long enough for all of
    /// them to pass the budget and finish their request.
    async fn claim(&self, now: Millis, limit: usize) -> Result<Vec<ClaimedVideo>, StoreError> {
        let budget_wait = Duration::from_secs_f64(limit as f64 / self.requests_per_second);
        let lease = budget_wait + self.request_timeout + LEASE_MARGIN;
        self.shared
            .writer
            .claim_due_ranked(now, now.plus(lease), limit as u32, self.ranker.clone())
            .await
    }

    fn lease_of(video: &ClaimedVideo) -> (i64, Lease) {
        (video.id, video.lease)
    }

    fn work(
        &self,
        video: ClaimedVideo,
        permit: OwnedSemaphorePermit,
        clock: StepClock,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        poll_one(self.shared.clone(), video, permit, clock)
    }

    fn worked(count: usize) -> Outcome {
        Outcome::Worked(count)
    }

    fn idle() -> Outcome {
        Outcome::Idle
    }

    fn pace(&self, outcome: &Outcome) -> Pace {
        match outcome {
            Outcome::Worked(_) => Pace::Again,
            Outcome::Idle => Pace::Idle,
            Outcome::Paused(_) => {
                let until_probe = self.shared.gate.next_probe_at().0 - Millis::now().0;
                Pace::Wait(Duration::from_millis(until_probe.clamp(0, 1000) as u64))
            }
            // Looked at again every heartbeat interval: the throttle can be
            // long, and the loop must show it is alive.
            Outcome::Throttled => {
                let now = Millis::now();
                Pace::Wait(
                    self.shared
                        .gate
                        .throttled_until(now)
                        .map_or(Duration::ZERO, |until| {
                            Duration::from_millis(until.0.saturating_sub(now.0).max(0) as u64)
                        })
                        .min(HEARTBEAT_INTERVAL),
                )
            }
        }
    }

    async fn next_due(&self) -> Option<Millis> {
        self.store.next_poll_due().await.unwrap_or(None)
    }

    /// An enqueue announces when its videos are first due: the loop waits
    /// on until then rather than claiming nothing at once.
    async fn wake_up(&self) -> WakeUp {
        match self.new_videos.next().await {
            Some(due) => WakeUp::At(due),
            None => WakeUp::Nothing,
        }
    }

    async fn hand_back(&self, held: Vec<(i64, Lease)>, now: Millis) -> Result<(), StoreError> {
        let releases = held
            .into_iter()
            .map(|(video_rowid, lease)| Release {
                video_rowid,
                lease,
                next_poll_at: now,
            })
            .collect();
        self.shared.writer.release(releases).await
    }
}

/// One video: wait for the budget, poll, record. The permit bounds the
/// requests in flight and is released when this returns.
async fn poll_one(
    shared: Arc<Shared>,
    video: ClaimedVideo,
    _permit: OwnedSemaphorePermit,
    clock: StepClock,
) -> Result<(), StoreError> {
    let waited = tokio::time::Instant::now();
    let admitted = tokio::select! {
        admitted = shared.gate.acquire(clock.now()) => admitted,
        _ = shared.stopping.cancelled() => Err(Closed::Stopping),
    };
    shared.metrics.limiter_wait(waited.elapsed().as_secs_f64());
    let result = match admitted {
        Ok(()) => {
            let answer = request(&shared, &video).await;
            apply(&shared, &video, &answer, clock.now()).await
        }
        Err(closed) => {
            // Paused, throttled or stopping before our turn: hand the video
            // back, due when the gate reopens.
            let next_poll_at = match closed {
                Closed::Paused(_) | Closed::Stopping => clock.now(),
                Closed::Throttled(until) | Closed::Unavailable(until) | Closed::Late(until) => {
                    until
                }
            };
            shared
                .writer
                .release(vec![Release {
                    video_rowid: video.id,
                    lease: video.lease,
                    next_poll_at,
                }])
                .await
        }
    };
    if result.is_ok() {
        shared.held.settle(video.id);
    }
    result
}

/// Sends one status request, timed.
async fn request(shared: &Shared, video: &ClaimedVideo) -> PollAnswer {
    // Ids were validated at enqueue; a row that fails now was written by
    // something else, and it must not reach the upstream URL.
    let Some(id) = video.video_id.valid() else {
        return PollAnswer::InvalidId;
    };
    let started = tokio::time::Instant::now();
    let answer = shared.client.poll(id).await;
    shared
        .metrics
        .upstream_request(started.elapsed().as_secs_f64());
    answer
}

/// Acts on one answer: a record for the video, or a signal for the gate.
async fn apply(
    shared: &Shared,
    video: &ClaimedVideo,
    answer: &PollAnswer,
    now: Millis,
) -> Result<(), StoreError> {
    // The last fit, read without the learner's lock.
    let schedule = shared.adaptive.then(|| shared.learner.schedule());
    let decision = decide::decide(
        video,
        answer,
        now,
        &shared.policy,
        schedule.as_deref(),
        &shared.targets,
        &mut fastrand::Rng::new(),
    );
    match decision {
        Decision::Record {
            update,
            outcome,
            learned,
        } => {
            shared.gate.note_not_throttled();
            shared.metrics.poll(outcome.as_str());
            if let PollAnswer::Transient(error) = answer {
                debug!(video_id = %video.video_id, %error, "poll failed; backing off");
            }
            let transitions = update.transitions.clone();
            let update_video_url = update.fields.video_url.clone();
            let recorded = shared.writer.record_poll(*update).await?;
            if !recorded {
                warn!(video_id = %video.video_id, "lease lost before the result was recorded; it will be polled again");
                return Ok(());
            }
            if let PollOutcome::Terminal(state) = outcome {
                shared.metrics.transition(state);
                if matches!(state, VideoState::Completed | VideoState::Failed) {
                    shared.metrics.completion_learned(video.answers_push());
                }
            }
            if let Some(observation) = learned {
                // Learned only now that the result is committed: a crash
                // before this point loses nothing, the restart replays it
                // from the database.
                shared
                    .learner
                    .with(|learner| learner.record(video.id, &observation));
                if observation.finished_seen_at.is_some() {
                    shared
                        .metrics
                        .finished_render(video.polls.saturating_add(1));
                }
            }
            if outcome == PollOutcome::Terminal(VideoState::Completed) && update_video_url.is_none()
            {
                // JoggAI decides that the video is done; the receiver learns
                // it without a link (README, Callbacks).
                shared.metrics.completed_without_video_url();
                warn!(
                    video_id = %video.video_id,
                    "JoggAI reported the video completed without a usable video_url in its \
                     answer; it is completed all the same"
                );
            }
            for transition in transitions {
                info!(
                    video_id = %video.video_id,
                    kind = transition.kind.as_str(),
                    from = transition.from.as_deref().unwrap_or("none"),
                    to = %transition.to,
                    "transition"
                );
            }
            if let PollOutcome::Terminal(state) = outcome {
                debug!(video_id = %video.video_id, %state, "tracking ended");
                shared.deliveries_queued.notify_one();
            }
        }
        Decision::Global {
            mut release,
            signal,
        } => {
            match signal {
                GateSignal::Throttle(retry_after) => {
                    shared.metrics.poll("rate_limited");
                    // Due again when the (clamped) pause ends.
                    release.next_poll_at = shared.gate.throttle(retry_after, now);
                }
                GateSignal::Pause(reason) => {
                    shared.metrics.poll("paused");
                    shared.gate.pause(reason, now);
                }
            }
            shared.writer.release(vec![release]).await?;
        }
    }
    Ok(())
}
