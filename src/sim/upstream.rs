//! A JoggAI simulator: `GET /v2/avatar_video/{id}` with scripted per-video
//! timelines, fault injection, a strict token bucket that counts budget
//! violations, concurrency high-water marks and a request log.
//!
//! Two kinds of scripted videos:
//! - [`Timeline`]s advance per answered poll (not per second), so tests are
//!   deterministic whatever the machine's speed;
//! - renders ([`SimState::script_render`]) follow a [`RenderJob`] on the
//!   simulator's clock: wall time by default, or a manual clock that a test
//!   driving the relay with a virtual `now` moves in step. The simulator
//!   records when each render finished and when its terminal status was
//!   first answered ([`SimState::render_outcomes`]): the oracle for the
//!   relay's detection delay.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use reqwest::Url;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::Millis;
use crate::workload::{DelayReport, RenderJob};

/// The API key the simulator accepts unless told otherwise.
pub const SIM_API_KEY: &str = "sim-api-key";

/// How a video ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// `completed` (or `success` with the alternative spelling).
    Completed,
    /// `failed` (or `fail`), with an error object.
    Failed,
    /// Never ends: answers this status forever.
    Stuck(String),
}

/// Which words the simulator uses for the terminal statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `completed` / `failed`, as documented.
    Documented,
    /// `success` / `fail`, as observed.
    Observed,
}

/// A video's scripted life: `pending` for the first `pending` answers,
/// `processing` for the next `processing`, then its ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// Answers saying `pending`.
    pub pending: u32,
    /// Answers saying `processing` after that.
    pub processing: u32,
    /// Then this.
    pub ending: Ending,
    /// Terminal status words.
    pub spelling: Spelling,
}

impl Timeline {
    /// Completes after `pending` + `processing` answers.
    pub fn completes(pending: u32, processing: u32) -> Self {
        Self {
            pending,
            processing,
            ending: Ending::Completed,
            spelling: Spelling::Documented,
        }
    }

    /// Fails after `pending` + `processing` answers.
    pub fn fails(pending: u32, processing: u32) -> Self {
        Self {
            ending: Ending::Failed,
            ..Self::completes(pending, processing)
        }
    }

    /// The same timeline answered with `success`/`fail`.
    pub fn observed_spelling(mut self) -> Self {
        self.spelling = Spelling::Observed;
        self
    }

    /// The status of the `answer`-th answer (0-based).
    fn status_at(&self, answer: u32) -> &str {
        if answer < self.pending {
            "pending"
        } else if answer < self.pending + self.processing {
            "processing"
        } else {
            match (&self.ending, self.spelling) {
                (Ending::Completed, Spelling::Documented) => "completed",
                (Ending::Completed, Spelling::Observed) => "success",
                (Ending::Failed, Spelling::Documented) => "failed",
                (Ending::Failed, Spelling::Observed) => "fail",
                (Ending::Stuck(status), _) => status,
            }
        }
    }
}

/// An injected misbehaviour, used for one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An HTTP status with a plain body (500, 502, 503, …).
    Http(u16),
    /// HTTP 200 with this business code.
    Business(i64),
    /// HTTP 429, with this `Retry-After` header when given.
    HttpRateLimit(Option<String>),
    /// Business code 429 in an HTTP 200, with this `Retry-After` when given.
    BusinessRateLimit(Option<String>),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// HTTP 200 with an HTML body.
    NonJson,
    /// A proxy or cache mix-up: HTTP 200, code 0, `completed` with its URLs,
    /// but for this other video id.
    Misrouted(String),
    /// HTTP 200 with exactly this body (`application/json`).
    Body(String),
}

/// How a failing key is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// HTTP 200 with code 10105.
    BusinessCode,
    /// HTTP 401.
    Http401,
    /// HTTP 200 with code 18020 (out of credit).
    NoCredit,
    /// HTTP 200 with code 18025 (no permission).
    NoPermission,
    /// HTTP 403.
    Http403,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The id path segment as received (percent-decoded).
    pub raw_id: String,
    /// Whether the `x-api-key` header matched.
    pub key_ok: bool,
    /// Time since the simulator started. The log entry and the choice of
    /// the answer are made at once, so this is also (within the time the
    /// server takes to write it) when an injected fault was answered.
    pub at: Duration,
    /// The injected fault this request was answered with, if any.
    pub fault: Option<Fault>,
}

/// A strict token bucket: every request that finds it empty is a violation.
#[derive(Debug)]
struct StrictBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
    violations: u64,
}

impl StrictBucket {
    fn take(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
        } else {
            self.violations += 1;
        }
    }
}

/// A video whose status follows a [`RenderJob`] on the simulator's clock.
#[derive(Debug, Clone)]
struct ScriptedRender {
    job: RenderJob,
    created: Millis,
    detected_at: Option<Millis>,
    polls: u32,
}

/// What became of one scripted render: the simulator's own record, to judge
/// how quickly the relay noticed it finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOutcome {
    /// The video.
    pub video_id: String,
    /// When the render reached its terminal status: `created` +
    /// [`RenderJob::finishes_after`], on the simulator's clock.
    pub finished_at: Millis,
    /// When the terminal status was first answered (simulator's clock), if
    /// it was.
    pub detected_at: Option<Millis>,
    /// Requests for the video that were answered with its status (faults,
    /// authentication failures and rate limits excluded).
    pub polls: u32,
}

#[derive(Debug, Default)]
struct Inner {
    timelines: HashMap<String, Timeline>,
    renders: HashMap<String, ScriptedRender>,
    /// The manual clock, when set; wall time otherwise.
    manual_clock: Option<Millis>,
    answers: HashMap<String, u32>,
    /// When each video was first answered with a terminal status.
    turned_terminal: HashMap<String, Instant>,
    default_timeline: Option<Timeline>,
    faults: VecDeque<Fault>,
    video_faults: HashMap<String, VecDeque<Fault>>,
    auth_failure: Option<AuthFailure>,
    /// Random faults: the probability per request, the faults to pick from
    /// and the generator (seeded, so a run can be repeated).
    random_faults: Option<(f64, Vec<Fault>, fastrand::Rng)>,
    bucket: Option<StrictBucket>,
    log: Vec<LoggedRequest>,
    in_flight: HashMap<String, u32>,
    in_flight_total: u32,
    max_in_flight_per_video: u32,
    max_in_flight_total: u32,
}

/// Shared simulator state; every method is safe to call while it serves.
#[derive(Debug)]
pub struct SimState {
    inner: Mutex<Inner>,
    api_key: String,
    started: Instant,
    /// Requests received so far, to wait on.
    arrivals: tokio::sync::watch::Sender<usize>,
    /// JoggAI-style pushes of scripted renders ([`super::push`]).
    pub(super) pushes: super::push::Pushes,
}

impl SimState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scripts `video_id`'s timeline (restarting its answer count, and
    /// replacing a render scripted for it).
    pub fn script(&self, video_id: &str, timeline: Timeline) {
        let mut inner = self.lock();
        inner.timelines.insert(video_id.to_owned(), timeline);
        inner.renders.remove(video_id);
        inner.answers.remove(video_id);
        drop(inner);
        self.unplan_push(video_id);
    }

    /// Scripts `video_id` as a render submitted at `created` (simulator's
    /// clock): its status is `job.status_at(now - created)`, and its answers
    /// carry `created_at` = `created` in whole Unix seconds, as JoggAI's do.
    /// Replaces any timeline or render scripted for the id before (and
    /// restarts its record). With pushes on ([`set_pushes`](Self::set_pushes)),
    /// its push is planned for when it finishes.
    pub fn script_render(&self, video_id: &str, job: RenderJob, created: Millis) {
        let mut inner = self.lock();
        inner.timelines.remove(video_id);
        inner.answers.remove(video_id);
        inner.turned_terminal.remove(video_id);
        inner.renders.insert(
            video_id.to_owned(),
            ScriptedRender {
                job,
                created,
                detected_at: None,
                polls: 0,
            },
        );
        drop(inner);
        self.plan_push(video_id, &job, created);
    }

    /// Every scripted render as (video id, job, created), by video id.
    pub(super) fn scripted_renders(&self) -> Vec<(String, RenderJob, Millis)> {
        let mut renders: Vec<_> = self
            .lock()
            .renders
            .iter()
            .map(|(id, render)| (id.clone(), render.job, render.created))
            .collect();
        renders.sort_by(|a, b| a.0.cmp(&b.0));
        renders
    }

    /// Whether the manual clock is on.
    pub(super) fn is_manual_clock(&self) -> bool {
        self.lock().manual_clock.is_some()
    }

    /// Stops the wall clock: from now on the simulator's time is `now`,
    /// until moved with [`advance_clock`](Self::advance_clock).
    pub fn set_manual_clock(&self, now: Millis) {
        self.lock().manual_clock = Some(now);
    }

    /// Moves the manual clock forward to `to` (starting it there if the
    /// simulator was on wall time). The clock never goes back: an earlier
    /// `to` leaves it where it is, as the relay's own time never goes back.
    pub fn advance_clock(&self, to: Millis) {
        let mut inner = self.lock();
        let current = inner.manual_clock.unwrap_or(to);
        inner.manual_clock = Some(current.max(to));
    }

    /// The simulator's current time: the manual clock if set, else wall time.
    pub fn now(&self) -> Millis {
        self.lock().manual_clock.unwrap_or_else(Millis::now)
    }

    /// The detection delays and poll counts of every scripted render so
    /// far, from [`render_outcomes`](Self::render_outcomes): one delay
    /// (first terminal answer − render end) per detected render; the others
    /// count as undetected.
    pub fn delay_report(&self) -> DelayReport {
        let outcomes = self.render_outcomes();
        let polls: Vec<u32> = outcomes.iter().map(|o| o.polls).collect();
        let delays: Vec<Duration> = outcomes
            .iter()
            .filter_map(|o| {
                let late = o.detected_at?.0.saturating_sub(o.finished_at.0);
                Some(Duration::from_millis(u64::try_from(late).unwrap_or(0)))
            })
            .collect();
        DelayReport::from_samples(&polls, &delays, outcomes.len() - delays.len())
    }

    /// The record of every scripted render, sorted by video id.
    pub fn render_outcomes(&self) -> Vec<RenderOutcome> {
        let inner = self.lock();
        let mut outcomes: Vec<RenderOutcome> = inner
            .renders
            .iter()
            .map(|(id, render)| RenderOutcome {
                video_id: id.clone(),
                finished_at: render.created.plus(render.job.finishes_after()),
                detected_at: render.detected_at,
                polls: render.polls,
            })
            .collect();
        outcomes.sort_by(|a, b| a.video_id.cmp(&b.video_id));
        outcomes
    }

    /// Timeline for ids that were not scripted (otherwise they are "not found").
    pub fn set_default_timeline(&self, timeline: Option<Timeline>) {
        self.lock().default_timeline = timeline;
    }

    /// Queues faults used by the next requests, whatever the video.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    /// Queues faults used by the next requests for `video_id`.
    pub fn inject_for(&self, video_id: &str, faults: impl IntoIterator<Item = Fault>) {
        self.lock()
            .video_faults
            .entry(video_id.to_owned())
            .or_default()
            .extend(faults);
    }

    /// From now on, each request without a queued fault ([`inject`](Self::inject),
    /// [`inject_for`](Self::inject_for)) fails with probability `rate`, with
    /// a fault drawn from `faults` by a generator seeded with `seed`; `rate`
    /// 0 stops.
    pub fn set_random_faults(&self, rate: f64, faults: Vec<Fault>, seed: u64) {
        self.lock().random_faults = (rate > 0.0 && !faults.is_empty())
            .then(|| (rate, faults, fastrand::Rng::with_seed(seed)));
    }

    /// Makes every request fail authentication (or stop failing, with `None`).
    pub fn set_auth_failure(&self, failure: Option<AuthFailure>) {
        self.lock().auth_failure = failure;
    }

    /// Starts counting requests beyond `rate`/`burst` as violations.
    pub fn set_budget(&self, rate: f64, burst: u32) {
        self.lock().bucket = Some(StrictBucket {
            rate,
            capacity: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
            violations: 0,
        });
    }

    /// Requests that arrived over the budget.
    pub fn violations(&self) -> u64 {
        self.lock().bucket.as_ref().map_or(0, |b| b.violations)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// Number of requests so far.
    pub fn request_count(&self) -> usize {
        self.lock().log.len()
    }

    /// Waits until at least `count` requests have arrived, or `limit`
    /// passes; returns whether they did.
    pub async fn wait_for_requests(&self, count: usize, limit: Duration) -> bool {
        let mut arrivals = self.arrivals.subscribe();
        tokio::time::timeout(limit, arrivals.wait_for(|n| *n >= count))
            .await
            .is_ok()
    }

    /// Most concurrent requests ever seen for a single video.
    pub fn max_in_flight_per_video(&self) -> u32 {
        self.lock().max_in_flight_per_video
    }

    /// Most concurrent requests ever seen in total.
    pub fn max_in_flight_total(&self) -> u32 {
        self.lock().max_in_flight_total
    }

    /// When each video was first answered with a terminal status (the
    /// moment the simulated render "finished" as far as the relay can know).
    pub fn terminal_answers(&self) -> HashMap<String, Instant> {
        self.lock().turned_terminal.clone()
    }

    /// Answers given so far for `video_id` (faults excluded), whether it
    /// follows a timeline or a render.
    pub fn answers_for(&self, video_id: &str) -> u32 {
        let inner = self.lock();
        match inner.renders.get(video_id) {
            Some(render) => render.polls,
            None => inner.answers.get(video_id).copied().unwrap_or(0),
        }
    }
}

/// Decrements the in-flight counters when a request ends, even if the
/// client went away mid-answer.
struct InFlight<'a> {
    state: &'a SimState,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut inner = self.state.lock();
        inner.in_flight_total -= 1;
        if let Some(count) = inner.in_flight.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                inner.in_flight.remove(&self.id);
            }
        }
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimUpstream {
    /// Its state, to script and inspect.
    pub state: Arc<SimState>,
    /// `http://127.0.0.1:PORT`, to use as `jogg.base_url`.
    pub base_url: Url,
    /// Where it listens.
    pub address: SocketAddr,
    shutdown: CancellationToken,
}

impl SimUpstream {
    /// Starts a simulator on `127.0.0.1`, port 0, accepting [`SIM_API_KEY`].
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Starts a simulator on `address`.
    pub async fn start_on(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(SimState {
            inner: Mutex::new(Inner::default()),
            api_key: SIM_API_KEY.to_owned(),
            started: Instant::now(),
            arrivals: tokio::sync::watch::channel(0).0,
            pushes: super::push::Pushes::default(),
        });
        let router = Router::new()
            .route("/v2/avatar_video/{id}", get(answer))
            .with_state(state.clone());
        let shutdown = super::serve_in_background(listener, router);
        // Stopped with the server, when the simulator is dropped.
        super::push::spawn_sender(state.clone(), shutdown.clone());
        Ok(Self {
            state,
            base_url: Url::parse(&format!("http://{address}")).expect("valid URL"),
            address,
            shutdown,
        })
    }
}

impl Drop for SimUpstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The simulated endpoint.
async fn answer(
    State(state): State<Arc<SimState>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let now = Instant::now();
    let key_ok = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|key| key == state.api_key);
    let (fault, auth_failure) = {
        let mut inner = state.lock();
        let queued = match inner
            .video_faults
            .get_mut(&raw_id)
            .and_then(VecDeque::pop_front)
        {
            Some(fault) => Some(fault),
            None => inner.faults.pop_front(),
        };
        let fault = queued.or_else(|| {
            let (rate, faults, rng) = inner.random_faults.as_mut()?;
            (rng.f64() < *rate).then(|| faults[rng.usize(..faults.len())].clone())
        });
        inner.log.push(LoggedRequest {
            raw_id: raw_id.clone(),
            key_ok,
            at: now - state.started,
            fault: fault.clone(),
        });
        if let Some(bucket) = inner.bucket.as_mut() {
            bucket.take(now);
        }
        inner.in_flight_total += 1;
        inner.max_in_flight_total = inner.max_in_flight_total.max(inner.in_flight_total);
        let count = inner.in_flight.entry(raw_id.clone()).or_insert(0);
        *count += 1;
        let count = *count;
        inner.max_in_flight_per_video = inner.max_in_flight_per_video.max(count);
        (fault, inner.auth_failure)
    };
    state.arrivals.send_modify(|n| *n += 1);
    let _in_flight = InFlight {
        state: &state,
        id: raw_id.clone(),
    };

    if !key_ok || auth_failure.is_some() {
        return match auth_failure.unwrap_or(AuthFailure::BusinessCode) {
            AuthFailure::Http401 => (StatusCode::UNAUTHORIZED, "unauthorized").into_response(),
            AuthFailure::BusinessCode => envelope(10105, "invalid api key", None),
            AuthFailure::NoCredit => envelope(18020, "insufficient credit", None),
            AuthFailure::NoPermission => envelope(18025, "no permission", None),
            AuthFailure::Http403 => (StatusCode::FORBIDDEN, "forbidden").into_response(),
        };
    }
    match fault {
        Some(Fault::Http(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "upstream trouble").into_response();
        }
        Some(Fault::Business(code)) => return envelope(code, "simulated error", None),
        Some(Fault::HttpRateLimit(retry_after)) => {
            let mut response = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::BusinessRateLimit(retry_after)) => {
            let mut response = envelope(429, "rate limited", None);
            if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::NonJson) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Bad gateway</body></html>",
            )
                .into_response();
        }
        Some(Fault::Misrouted(other)) => {
            let data = json!({
                "video_id": other,
                "status": "completed",
                "video_url": format!("https://cdn.sim.invalid/{other}.mp4"),
                "cover_url": format!("https://cdn.sim.invalid/{other}.jpg"),
                "created_at": 1_640_995_200,
                "duration": 12.5,
            });
            return envelope(0, "Success", Some(data));
        }
        Some(Fault::Body(body)) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }

    let (status, created_at) = {
        let mut inner = state.lock();
        // The clock is read after any `Slow` fault: the answer reflects the
        // moment it is given.
        let clock = inner.manual_clock.unwrap_or_else(Millis::now);
        if let Some(render) = inner.renders.get_mut(&raw_id) {
            // A render asked about before its creation is simply pending.
            let age = u64::try_from(clock.0.saturating_sub(render.created.0)).unwrap_or(0);
            let age = Duration::from_millis(age);
            let status = render.job.status_at(age);
            render.polls = render.polls.saturating_add(1);
            let terminal = matches!(status, "completed" | "failed");
            if terminal && render.detected_at.is_none() {
                render.detected_at = Some(clock);
            }
            let created_at = render.created.0.div_euclid(1000);
            if terminal {
                inner.turned_terminal.entry(raw_id.clone()).or_insert(now);
            }
            (status.to_owned(), created_at)
        } else {
            let timeline = inner
                .timelines
                .get(&raw_id)
                .cloned()
                .or_else(|| inner.default_timeline.clone());
            let Some(timeline) = timeline else {
                return envelope(10104, "video not found", None);
            };
            let answered = inner.answers.entry(raw_id.clone()).or_insert(0);
            let status = timeline.status_at(*answered).to_owned();
            *answered = answered.saturating_add(1);
            if *answered > timeline.pending + timeline.processing
                && !matches!(timeline.ending, Ending::Stuck(_))
            {
                inner.turned_terminal.entry(raw_id.clone()).or_insert(now);
            }
            (status, 1_640_995_200)
        }
    };
    let finished = matches!(status.as_str(), "completed" | "success");
    let failed = matches!(status.as_str(), "failed" | "fail");
    let mut data = json!({
        "video_id": raw_id,
        "status": status,
        "created_at": created_at,
    });
    if finished {
        data["video_url"] = json!(format!("https://cdn.sim.invalid/{raw_id}.mp4"));
        data["cover_url"] = json!(format!("https://cdn.sim.invalid/{raw_id}.jpg"));
        data["duration"] = json!(12.5);
    }
    if failed {
        data["error"] = json!({"code": "render_failed", "message": "avatar rendering failed"});
    }
    envelope(0, "Success", Some(data))
}

fn envelope(code: i64, msg: &str, data: Option<serde_json::Value>) -> Response {
    let body = json!({"code": code, "msg": msg, "data": data, "rid": "sim-request"});
    (StatusCode::OK, axum::Json(body)).into_response()
}
