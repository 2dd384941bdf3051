//! JoggAI's own pushes, simulated: when a scripted render
//! ([`SimState::script_render`]) reaches its terminal status on the
//! simulator's clock, the simulator POSTs a JoggAI-style webhook for it to a
//! configured URL ([`PushSettings`], enabled with [`SimState::set_pushes`]),
//! as JoggAI does for an endpoint registered with it (README, "JoggAI's
//! pushes").
//!
//! A push is `POST` with a JSON body
//! `{"event_id","event","timestamp","data":{"video_id","status",…}}`, the
//! header `X-Webhook-Signature` (lowercase hex HMAC-SHA256 of the raw body,
//! keyed with the endpoint's secret string as bytes) and `X-Webhook-Event`.
//! Like JoggAI, the simulator expects a 2xx within a timeout (5 s) and
//! retries a push that did not get one a few times (3, 5 s apart); and it
//! can lose pushes at random (a seeded drop rate), to exercise the relay's
//! safety net.
//!
//! The signature is computed here with the `hmac` and `sha2` crates
//! directly, not with the relay's verifier or its callback signing, so tests
//! can use the simulator as an independent oracle; [`signed_push`] builds
//! and signs a hand-made push the same way.
//!
//! Time: on the wall clock a background task (started with the
//! [`SimUpstream`](super::SimUpstream), stopped when it is dropped) sends
//! each push when it comes due, to within a few milliseconds. On the manual
//! clock ([`SimState::set_manual_clock`]) nothing is sent by itself: a test
//! moves the clock and calls [`SimState::send_due_pushes`].
//!
//! Every push that came due is recorded ([`SimState::pushes`]): when its
//! render finished, whether it was dropped, and each attempt with the
//! answer it got: the oracle for the push-to-callback delay.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::Url;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, instrument};

use super::upstream::SimState;
use crate::domain::Millis;
use crate::workload::RenderJob;

/// The event of a push for a render that completed.
pub const EVENT_SUCCESS: &str = "generated_avatar_video_success";
/// The event of a push for a render that failed.
pub const EVENT_FAILED: &str = "generated_avatar_video_failed";
/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Webhook-Signature";
/// The header repeating the body's `event`.
pub const EVENT_HEADER: &str = "X-Webhook-Event";

/// How the simulator pushes: where, signed with what, and how unreliably.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Where pushes are POSTed (e.g. the relay's `…/webhooks/jogg`).
    pub url: Url,
    /// The endpoint's secret: its bytes key the HMAC (it is not decoded).
    pub secret: SecretString,
    /// Share of pushes lost, from 0 (none) to 1 (all): a lost push is never
    /// sent, retries included.
    pub drop_rate: f64,
    /// From a render's end to its push's first attempt, on the simulator's
    /// clock.
    pub delay: Duration,
    /// Seed of the generator that decides which pushes are lost: the same
    /// seed and the same scripted renders lose the same pushes.
    pub seed: u64,
    /// Further attempts after one that got no 2xx (an HTTP error status or
    /// a transport error): JoggAI makes 3.
    pub retries: u32,
    /// From a failed attempt's end to the next attempt: JoggAI waits 5 s.
    pub retry_spacing: Duration,
    /// How long an attempt may take before it counts as failed: JoggAI
    /// expects a 2xx within 5 s.
    pub timeout: Duration,
}

impl PushSettings {
    /// Pushes to `url` signed with `secret`, as JoggAI sends them: none
    /// lost, sent as soon as a render ends, 3 retries 5 s apart, a 5 s
    /// timeout, seed 0.
    pub fn new(url: Url, secret: &str) -> Self {
        Self {
            url,
            secret: SecretString::from(secret),
            drop_rate: 0.0,
            delay: Duration::ZERO,
            seed: 0,
            retries: 3,
            retry_spacing: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why [`SimState::set_pushes`] refused its settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushSettingsError {
    /// The drop rate is not a number from 0 to 1.
    #[error("drop_rate must be a number from 0 to 1, got {0}")]
    DropRate(f64),
}

/// What one attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAnswer {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer in time: connection refused or reset, timeout, … (the
    /// error's text).
    Transport(String),
}

impl PushAnswer {
    /// Whether the push was taken (a 2xx).
    pub fn is_success(&self) -> bool {
        matches!(self, PushAnswer::Status(200..=299))
    }
}

/// One attempt to send a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAttempt {
    /// When it was sent, on the simulator's clock.
    pub at: Millis,
    /// When it was sent, as an [`Instant`] (to compare with a
    /// [`Received::arrived`](super::Received::arrived) on the same machine).
    pub sent: Instant,
    /// What it got back.
    pub answer: PushAnswer,
}

/// One push that came due: the simulator's record of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRecord {
    /// The render's video id.
    pub video_id: String,
    /// The push's `event_id` (the same for its retries).
    pub event_id: String,
    /// [`EVENT_SUCCESS`] or [`EVENT_FAILED`].
    pub event: &'static str,
    /// When the render reached its terminal status (simulator's clock).
    pub finished_at: Millis,
    /// When the first attempt was due: `finished_at` + the delay.
    pub due_at: Millis,
    /// Whether the push was lost (never sent).
    pub dropped: bool,
    /// The attempts made so far, in order (none when dropped).
    pub attempts: Vec<PushAttempt>,
}

impl PushRecord {
    /// The attempt that got a 2xx, if one did.
    pub fn accepted(&self) -> Option<&PushAttempt> {
        self.attempts.iter().find(|a| a.answer.is_success())
    }
}

/// The lowercase hex HMAC-SHA256 of `body` keyed with `secret`'s bytes:
/// the `X-Webhook-Signature` of a push.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A push's JSON body. `data` carries `video_id` and `status`, and for a
/// `failed` (or `fail`) status an `error` object, otherwise `video_url` and
/// `cover_url`; `timestamp` is in Unix seconds.
pub fn push_body(
    event_id: &str,
    event: &str,
    video_id: &str,
    status: &str,
    timestamp: i64,
) -> Vec<u8> {
    let mut data = json!({"video_id": video_id, "status": status});
    if matches!(status, "failed" | "fail") {
        data["error"] = json!({"code": "render_failed", "message": "avatar rendering failed"});
    } else {
        data["video_url"] = json!(format!("https://cdn.sim.invalid/{video_id}.mp4"));
        data["cover_url"] = json!(format!("https://cdn.sim.invalid/{video_id}.jpg"));
    }
    json!({
        "event_id": event_id,
        "event": event,
        "timestamp": timestamp,
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// A hand-made push stamped with the current time: its body
/// ([`push_body`]) and that body's signature ([`sign`]), to send with the
/// headers [`SIGNATURE_HEADER`] and [`EVENT_HEADER`].
pub fn signed_push(
    secret: &str,
    event_id: &str,
    event: &str,
    video_id: &str,
    status: &str,
) -> (Vec<u8>, String) {
    let body = push_body(
        event_id,
        event,
        video_id,
        status,
        Millis::now().0.div_euclid(1000),
    );
    let signature = sign(secret, &body);
    (body, signature)
}

/// The simulator's pushes: settings, record, and what wakes the sender.
#[derive(Debug, Default)]
pub(super) struct Pushes {
    book: Mutex<Book>,
    /// Wakes the background sender when a push is planned or answered.
    wakeup: Notify,
    /// Built on first use: most simulators never push.
    client: OnceLock<reqwest::Client>,
}

#[derive(Debug)]
struct Book {
    settings: Option<PushSettings>,
    /// Decides which pushes are lost (seeded by the settings).
    drops: fastrand::Rng,
    /// Makes event ids unique across simulators.
    nonce: u64,
    next_seq: u64,
    /// Every planned push, by the order it was planned.
    entries: BTreeMap<u64, Entry>,
}

impl Default for Book {
    fn default() -> Self {
        Self {
            settings: None,
            drops: fastrand::Rng::with_seed(0),
            nonce: fastrand::u64(..),
            next_seq: 0,
            entries: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    record: PushRecord,
    status: &'static str,
    /// Whether it came due (then it is in the record for good).
    came_due: bool,
    /// When its next attempt is due; `None` while one is in flight or when
    /// none is left.
    next_due: Option<Millis>,
    /// Body and signature, fixed when it first comes due: a retry repeats
    /// the same message.
    signed: Option<(Vec<u8>, String)>,
}

/// An attempt taken to be sent.
#[derive(Debug)]
struct Due {
    seq: u64,
    video_id: String,
    event: &'static str,
    body: Vec<u8>,
    signature: String,
    url: Url,
    timeout: Duration,
}

impl SimState {
    fn push_book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.pushes.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts pushing (or, with `None`, stops: pushes not yet due are
    /// forgotten, attempts in flight end without retries; the record stays).
    ///
    /// Every scripted render gets a push, those scripted before this call
    /// too (in video id order; one whose push is already due is pushed at
    /// once), except renders already pushed. The drop generator restarts
    /// from the settings' seed, so the same settings and renders lose the
    /// same pushes.
    pub fn set_pushes(&self, settings: Option<PushSettings>) -> Result<(), PushSettingsError> {
        if let Some(settings) = &settings
            && !(0.0..=1.0).contains(&settings.drop_rate)
        {
            return Err(PushSettingsError::DropRate(settings.drop_rate));
        }
        {
            let mut book = self.push_book();
            book.entries.retain(|_, entry| entry.came_due);
            if let Some(settings) = &settings {
                book.drops = fastrand::Rng::with_seed(settings.seed);
            }
            book.settings = settings;
        }
        let pushed: std::collections::HashSet<String> = self
            .push_book()
            .entries
            .values()
            .map(|entry| entry.record.video_id.clone())
            .collect();
        for (video_id, job, created) in self.scripted_renders() {
            if !pushed.contains(&video_id) {
                self.plan_push(&video_id, &job, created);
            }
        }
        self.pushes.wakeup.notify_one();
        Ok(())
    }

    /// Every push that came due so far (dropped or attempted), in the order
    /// they were planned; attempts in flight are not listed yet.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.push_book()
            .entries
            .values()
            .filter(|entry| entry.came_due)
            .map(|entry| entry.record.clone())
            .collect()
    }

    /// Sends every attempt due at the simulator's current time that was not
    /// made yet (first attempts and retries; lost pushes are recorded as
    /// dropped), one after the other in the order they were planned, and
    /// waits for their answers. For tests on the manual clock, where nothing
    /// is sent otherwise. Returns the number of attempts made.
    pub async fn send_due_pushes(&self) -> usize {
        let due = self.take_due_pushes(false);
        let count = due.len();
        for attempt in due {
            self.attempt_push(attempt).await;
        }
        count
    }

    /// Plans the push of the render `video_id` created at `created`
    /// (replacing one planned for it that is not due yet), if pushes are on.
    pub(super) fn plan_push(&self, video_id: &str, job: &RenderJob, created: Millis) {
        self.unplan_push(video_id);
        let mut book = self.push_book();
        let Some((drop_rate, delay)) = book.settings.as_ref().map(|s| (s.drop_rate, s.delay))
        else {
            return;
        };
        let dropped = book.drops.f64() < drop_rate;
        let seq = book.next_seq;
        book.next_seq += 1;
        let finished_at = created.plus(job.finishes_after());
        let due_at = finished_at.plus(delay);
        let (event, status) = if job.fails {
            (EVENT_FAILED, "failed")
        } else {
            (EVENT_SUCCESS, "completed")
        };
        let event_id = format!("sim-evt-{:016x}-{seq}", book.nonce);
        book.entries.insert(
            seq,
            Entry {
                record: PushRecord {
                    video_id: video_id.to_owned(),
                    event_id,
                    event,
                    finished_at,
                    due_at,
                    dropped,
                    attempts: Vec::new(),
                },
                status,
                came_due: false,
                next_due: Some(due_at),
                signed: None,
            },
        );
        drop(book);
        self.pushes.wakeup.notify_one();
    }

    /// Loses the push planned for `video_id`, whatever the drop rate: it
    /// is recorded as dropped when it comes due and never sent. `false`
    /// when no push is planned for it (pushes are off, or it came due).
    pub fn lose_push(&self, video_id: &str) -> bool {
        let mut book = self.push_book();
        let planned = book
            .entries
            .values_mut()
            .find(|entry| !entry.came_due && entry.record.video_id == video_id);
        match planned {
            Some(entry) => {
                entry.record.dropped = true;
                true
            }
            None => false,
        }
    }

    /// Forgets the push planned for `video_id` if it is not due yet (its
    /// render was scripted again, or replaced by a timeline); one that came
    /// due stays in the record.
    pub(super) fn unplan_push(&self, video_id: &str) {
        self.push_book()
            .entries
            .retain(|_, entry| entry.came_due || entry.record.video_id != video_id);
    }

    /// Takes the attempts due now (marking them in flight), and records the
    /// lost pushes that came due. The background sender takes nothing on
    /// the manual clock.
    fn take_due_pushes(&self, background: bool) -> Vec<Due> {
        if background && self.is_manual_clock() {
            return Vec::new();
        }
        let now = self.now();
        let mut book = self.push_book();
        let Some((url, secret, timeout)) = book
            .settings
            .as_ref()
            .map(|s| (s.url.clone(), s.secret.clone(), s.timeout))
        else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (&seq, entry) in &mut book.entries {
            if entry.next_due.is_none_or(|at| at > now) {
                continue;
            }
            entry.came_due = true;
            entry.next_due = None;
            if entry.record.dropped {
                debug!(video_id = %entry.record.video_id, "push lost");
                continue;
            }
            let (body, signature) = entry.signed.get_or_insert_with(|| {
                let body = push_body(
                    &entry.record.event_id,
                    entry.record.event,
                    &entry.record.video_id,
                    entry.status,
                    now.0.div_euclid(1000),
                );
                let signature = sign(secret.expose_secret(), &body);
                (body, signature)
            });
            due.push(Due {
                seq,
                video_id: entry.record.video_id.clone(),
                event: entry.record.event,
                body: body.clone(),
                signature: signature.clone(),
                url: url.clone(),
                timeout,
            });
        }
        due
    }

    /// How long the background sender may sleep: until the next attempt is
    /// due; `None` when nothing is planned or the clock is manual.
    fn next_push_wait(&self) -> Option<Duration> {
        if self.is_manual_clock() {
            return None;
        }
        let next = self
            .push_book()
            .entries
            .values()
            .filter_map(|entry| entry.next_due)
            .min()?;
        let wait = next.0.saturating_sub(Millis::now().0).max(0);
        Some(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
    }

    /// Sends one attempt and records its answer, planning a retry when it
    /// got no 2xx and retries are left.
    #[instrument(skip_all, fields(video_id = %due.video_id))]
    async fn attempt_push(&self, due: Due) {
        let client = self.pushes.client.get_or_init(|| {
            crate::outbound::direct_client_builder()
                .build()
                .expect("a plain HTTP client builds")
        });
        let at = self.now();
        let sent = Instant::now();
        let answer = match client
            .post(due.url)
            .timeout(due.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, due.signature)
            .header(EVENT_HEADER, due.event)
            .body(due.body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read to the end, so the connection can be used again.
                let _ = response.bytes().await;
                PushAnswer::Status(status)
            }
            Err(err) => PushAnswer::Transport(error_chain(&err)),
        };
        debug!(?answer, "push attempt answered");
        let failed = !answer.is_success();
        let answered = self.now();
        let mut book = self.push_book();
        let retry = book.settings.as_ref().map(|s| (s.retries, s.retry_spacing));
        if let Some(entry) = book.entries.get_mut(&due.seq) {
            entry.record.attempts.push(PushAttempt { at, sent, answer });
            if let Some((retries, spacing)) = retry
                && failed
                && entry.record.attempts.len() <= retries as usize
            {
                entry.next_due = Some(answered.plus(spacing));
            }
        }
        drop(book);
        self.pushes.wakeup.notify_one();
    }
}

/// An error and its sources, as one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The background sender of a wall-clock simulator: sends each attempt when
/// it comes due (each on its own task, so a slow receiver delays no other
/// push) until `stop` is cancelled.
pub(super) fn spawn_sender(state: Arc<SimState>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let wait = state.next_push_wait();
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    // Nothing planned (or the clock is manual): wait to be
                    // woken.
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                // Something was planned or answered: look again.
                () = state.pushes.wakeup.notified() => continue,
                () = sleep => {}
            }
            for due in state.take_due_pushes(true) {
                let (state, stop) = (state.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = state.attempt_push(due) => {}
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::sim::{Received, SimReceiver, SimUpstream};

    /// An instant that is not a whole second, to see `timestamp` floored.
    const T0: Millis = Millis(1_700_000_000_500);

    fn at(seconds: f64) -> Millis {
        T0.plus(Duration::from_secs_f64(seconds))
    }

    /// Queued 10 s, rendered 100 s: terminal 110 s after its creation.
    fn job(fails: bool) -> RenderJob {
        RenderJob {
            arrival: Duration::ZERO,
            queued: Duration::from_secs(10),
            render: Duration::from_secs(100),
            fails,
        }
    }

    const SECRET: &str = "push-secret-of-the-endpoint";

    /// The independent oracle: another crate's HMAC-SHA256, hex-encoded.
    fn oracle_signature(secret: &str, body: &[u8]) -> String {
        hmac_sha256::HMAC::mac(body, secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn header(received: &Received, name: &str) -> String {
        received
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    async fn manual_sim(
        receiver: &SimReceiver,
        adjust: impl FnOnce(&mut PushSettings),
    ) -> SimUpstream {
        let sim = SimUpstream::start().await.unwrap();
        sim.state.set_manual_clock(T0);
        let mut settings = PushSettings::new(Url::parse(&receiver.url("push")).unwrap(), SECRET);
        adjust(&mut settings);
        sim.state.set_pushes(Some(settings)).unwrap();
        sim
    }

    #[test]
    fn the_signature_is_the_published_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_hand_made_push_is_signed_over_its_exact_bytes() {
        let (body, signature) = signed_push(SECRET, "e1", EVENT_FAILED, "v1", "failed");
        assert_eq!(signature, oracle_signature(SECRET, &body));
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["event_id"], "e1");
        assert_eq!(parsed["event"], EVENT_FAILED);
        assert_eq!(parsed["data"]["video_id"], "v1");
        assert_eq!(parsed["data"]["status"], "failed");
        assert_eq!(parsed["data"]["error"]["code"], "render_failed");
        let now = Millis::now().0 / 1000;
        let timestamp = parsed["timestamp"].as_i64().unwrap();
        assert!((now - 5..=now).contains(&timestamp), "{timestamp} vs {now}");

        let completed: Value = serde_json::from_slice(&push_body(
            "e2",
            EVENT_SUCCESS,
            "v2",
            "completed",
            1_700_000_000,
        ))
        .unwrap();
        assert_eq!(
            completed["data"]["video_url"],
            "https://cdn.sim.invalid/v2.mp4"
        );
        assert_eq!(
            completed["data"]["cover_url"],
            "https://cdn.sim.invalid/v2.jpg"
        );
        assert!(completed["data"].get("error").is_none());
    }

    #[tokio::test]
    async fn a_finished_render_is_pushed_once_after_its_delay_and_not_before() {
        let receiver = SimReceiver::start(None).await.unwrap();
        let sim = manual_sim(&receiver, |s| s.delay = Duration::from_secs(2)).await;
        sim.state.script_render("r1", job(false), T0);
        sim.state.script_render("r2", job(true), at(1.0));

        for seconds in [0.0, 110.0, 111.999] {
            sim.state.advance_clock(at(seconds));
            assert_eq!(sim.state.send_due_pushes().await, 0, "at {seconds} s");
        }
        assert!(sim.state.pushes().is_empty());
        assert!(receiver.state.received().is_empty());

        sim.state.advance_clock(at(112.0));
        assert_eq!(sim.state.send_due_pushes().await, 1);
        assert_eq!(sim.state.send_due_pushes().await, 0, "sent once");
        let received = receiver.state.received();
        assert_eq!(received.len(), 1);
        let push = &received[0];
        assert_eq!(push.path, "push");
        assert_eq!(
            header(push, "x-webhook-signature"),
            oracle_signature(SECRET, &push.raw_body)
        );
        assert_eq!(header(push, "x-webhook-event"), EVENT_SUCCESS);
        assert_eq!(header(push, "content-type"), "application/json");
        assert_eq!(push.body["event"], EVENT_SUCCESS);
        assert_eq!(push.body["data"]["video_id"], "r1");
        assert_eq!(push.body["data"]["status"], "completed");
        assert_eq!(
            push.body["data"]["video_url"],
            "https://cdn.sim.invalid/r1.mp4"
        );
        // Sent at 1_700_000_112.5 s: whole seconds, floored.
        assert_eq!(push.body["timestamp"], 1_700_000_112);

        let records = sim.state.pushes();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.video_id, "r1");
        assert_eq!(push.body["event_id"], record.event_id.as_str());
        assert_eq!((record.finished_at, record.due_at), (at(110.0), at(112.0)));
        assert!(!record.dropped);
        assert_eq!(record.attempts.len(), 1);
        assert_eq!(record.attempts[0].at, at(112.0));
        assert_eq!(record.attempts[0].answer, PushAnswer::Status(200));
        assert_eq!(record.accepted(), Some(&record.attempts[0]));

        // The failing render, a second later, with its own event id.
        sim.state.advance_clock(at(10_000.0));
        assert_eq!(sim.state.send_due_pushes().await, 1);
        assert_eq!(sim.state.send_due_pushes().await, 0);
        let received = receiver.state.received();
        assert_eq!(received.len(), 2);
        let failed = &received[1];
        assert_eq!(header(failed, "x-webhook-event"), EVENT_FAILED);
        assert_eq!(failed.body["data"]["video_id"], "r2");
        assert_eq!(failed.body["data"]["status"], "failed");
        assert_eq!(failed.body["data"]["error"]["code"], "render_failed");
        assert_ne!(failed.body["event_id"], push.body["event_id"]);
        let records = sim.state.pushes();
        assert_eq!(records[1].finished_at, at(111.0));
        assert_eq!(records[1].event, EVENT_FAILED);
    }

    /// The ids whose pushes were lost, after every push came due.
    async fn lost(drop_rate: f64, seed: u64) -> (Vec<String>, Vec<String>) {
        let receiver = SimReceiver::start(None).await.unwrap();
        let sim = manual_sim(&receiver, |s| {
            s.drop_rate = drop_rate;
            s.seed = seed;
        })
        .await;
        for i in 0..40 {
            sim.state.script_render(&format!("v{i:02}"), job(false), T0);
        }
        sim.state.advance_clock(at(110.0));
        let sent = sim.state.send_due_pushes().await;
        let records = sim.state.pushes();
        assert_eq!(records.len(), 40, "every push came due");
        let dropped: Vec<String> = records
            .iter()
            .filter(|r| r.dropped)
            .map(|r| r.video_id.clone())
            .collect();
        assert!(
            records
                .iter()
                .filter(|r| r.dropped)
                .all(|r| r.attempts.is_empty())
        );
        let mut received: Vec<String> = receiver
            .state
            .received()
            .iter()
            .map(|r| r.body["data"]["video_id"].as_str().unwrap().to_owned())
            .collect();
        received.sort();
        assert_eq!(sent, received.len());
        assert_eq!(received.len() + dropped.len(), 40);
        (dropped, received)
    }

    #[tokio::test]
    async fn the_drop_rate_loses_pushes_repeatably() {
        let (dropped, received) = lost(1.0, 1).await;
        assert_eq!((dropped.len(), received.len()), (40, 0));
        let (dropped, received) = lost(0.0, 1).await;
        assert_eq!((dropped.len(), received.len()), (0, 40));
        let (half, sent) = lost(0.5, 7).await;
        assert!((5..=35).contains(&half.len()), "{half:?}");
        assert!(sent.iter().all(|id| !half.contains(id)));
        assert_eq!(
            lost(0.5, 7).await.0,
            half,
            "the same seed loses the same pushes"
        );
        assert_ne!(lost(0.5, 8).await.0, half, "another seed, others");
    }

    #[tokio::test]
    async fn a_push_lost_on_purpose_is_never_sent() {
        let receiver = SimReceiver::start(None).await.unwrap();
        let sim = manual_sim(&receiver, |_| {}).await;
        sim.state.script_render("kept", job(false), T0);
        sim.state.script_render("lost", job(false), T0);
        assert!(sim.state.lose_push("lost"));
        assert!(!sim.state.lose_push("never-scripted"));
        sim.state.advance_clock(at(10_000.0));
        assert_eq!(sim.state.send_due_pushes().await, 1);
        let sent: Vec<String> = receiver
            .state
            .received()
            .iter()
            .map(|r| r.body["data"]["video_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(sent, ["kept"]);
        let lost: Vec<(String, bool, usize)> = sim
            .state
            .pushes()
            .into_iter()
            .map(|r| (r.video_id, r.dropped, r.attempts.len()))
            .collect();
        assert!(lost.contains(&("lost".to_owned(), true, 0)), "{lost:?}");
        assert!(!sim.state.lose_push("kept"), "already came due");
    }

    #[tokio::test]
    async fn a_drop_rate_outside_zero_to_one_is_refused() {
        let sim = SimUpstream::start().await.unwrap();
        for rate in [1.5, -0.1, f64::NAN] {
            let settings = PushSettings {
                drop_rate: rate,
                ..PushSettings::new(Url::parse("http://127.0.0.1:9/").unwrap(), SECRET)
            };
            let err = sim.state.set_pushes(Some(settings)).unwrap_err();
            assert!(err.to_string().contains("drop_rate"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_push_without_a_2xx_is_retried_after_the_spacing() {
        let receiver = SimReceiver::start(None).await.unwrap();
        receiver.state.fail("push", 2, 503);
        let sim = manual_sim(&receiver, |_| {}).await;
        sim.state.script_render("r1", job(false), T0);
        sim.state.advance_clock(at(110.0));
        assert_eq!(sim.state.send_due_pushes().await, 1);
        // Not before 5 s have passed.
        sim.state.advance_clock(at(114.999));
        assert_eq!(sim.state.send_due_pushes().await, 0);
        sim.state.advance_clock(at(115.0));
        assert_eq!(sim.state.send_due_pushes().await, 1);
        sim.state.advance_clock(at(120.0));
        assert_eq!(sim.state.send_due_pushes().await, 1);
        // Taken: no more.
        sim.state.advance_clock(at(1000.0));
        assert_eq!(sim.state.send_due_pushes().await, 0);

        let received = receiver.state.received();
        let statuses: Vec<_> = received.iter().map(|r| r.reply.clone()).collect();
        assert_eq!(
            statuses,
            [503, 503, 200].map(crate::sim::Reply::Status).to_vec()
        );
        // A retry repeats the same message.
        assert!(received.iter().all(|r| r.raw_body == received[0].raw_body));
        let attempts = &sim.state.pushes()[0].attempts;
        let record: Vec<_> = attempts.iter().map(|a| (a.at, a.answer.clone())).collect();
        assert_eq!(
            record,
            [
                (at(110.0), PushAnswer::Status(503)),
                (at(115.0), PushAnswer::Status(503)),
                (at(120.0), PushAnswer::Status(200)),
            ]
        );
    }

    #[tokio::test]
    async fn a_push_is_given_up_after_its_retries() {
        let receiver = SimReceiver::start(None).await.unwrap();
        receiver.state.set_outage(Some(500));
        let sim = manual_sim(&receiver, |_| {}).await;
        sim.state.script_render("r1", job(false), T0);
        let mut sent = 0;
        for step in 0..10 {
            sim.state.advance_clock(at(110.0 + 5.0 * f64::from(step)));
            sent += sim.state.send_due_pushes().await;
        }
        // The first attempt and JoggAI's 3 retries.
        assert_eq!(sent, 4);
        assert_eq!(receiver.state.received().len(), 4);
        let record = &sim.state.pushes()[0];
        assert_eq!(record.attempts.len(), 4);
        assert_eq!(record.accepted(), None);
    }

    #[tokio::test]
    async fn a_transport_error_is_recorded_and_retried() {
        // A port that was just free: nothing listens there.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let sim = SimUpstream::start().await.unwrap();
        sim.state.set_manual_clock(T0);
        let settings = PushSettings {
            retries: 1,
            retry_spacing: Duration::from_secs(1),
            ..PushSettings::new(
                Url::parse(&format!("http://{closed}/push")).unwrap(),
                SECRET,
            )
        };
        sim.state.set_pushes(Some(settings)).unwrap();
        sim.state.script_render("r1", job(false), T0);
        for seconds in [110.0, 111.0, 112.0, 200.0] {
            sim.state.advance_clock(at(seconds));
            sim.state.send_due_pushes().await;
        }
        let attempts = &sim.state.pushes()[0].attempts;
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert!(
            attempts
                .iter()
                .all(|a| matches!(a.answer, PushAnswer::Transport(_))),
            "{attempts:?}"
        );
    }

    #[tokio::test]
    async fn renders_scripted_before_pushes_are_turned_on_are_pushed_too() {
        let receiver = SimReceiver::start(None).await.unwrap();
        let sim = SimUpstream::start().await.unwrap();
        sim.state.set_manual_clock(T0);
        sim.state.script_render("early", job(false), T0);
        // Replaced by a timeline: no push.
        sim.state.script_render("timeline", job(false), T0);
        sim.state
            .script("timeline", crate::sim::Timeline::completes(0, 0));
        sim.state
            .set_pushes(Some(PushSettings::new(
                Url::parse(&receiver.url("push")).unwrap(),
                SECRET,
            )))
            .unwrap();
        sim.state.script_render("late", job(false), T0);
        sim.state.advance_clock(at(110.0));
        assert_eq!(sim.state.send_due_pushes().await, 2);
        let ids: Vec<_> = sim.state.pushes().into_iter().map(|r| r.video_id).collect();
        assert_eq!(ids, ["early", "late"]);
        // Turning them on again does not push a render twice.
        sim.state
            .set_pushes(Some(PushSettings::new(
                Url::parse(&receiver.url("push")).unwrap(),
                SECRET,
            )))
            .unwrap();
        assert_eq!(sim.state.send_due_pushes().await, 0);
    }

    #[tokio::test]
    async fn on_the_wall_clock_pushes_go_by_themselves_until_the_simulator_is_dropped() {
        let receiver = SimReceiver::start(None).await.unwrap();
        let sim = SimUpstream::start().await.unwrap();
        sim.state
            .set_pushes(Some(PushSettings::new(
                Url::parse(&receiver.url("push")).unwrap(),
                SECRET,
            )))
            .unwrap();
        let instant = RenderJob {
            arrival: Duration::ZERO,
            queued: Duration::ZERO,
            render: Duration::ZERO,
            fails: false,
        };
        sim.state.script_render("now", instant, sim.state.now());
        assert!(
            receiver
                .state
                .wait_for_received(1, Duration::from_secs(10))
                .await,
            "the background sender pushed it"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim
            .state
            .pushes()
            .first()
            .and_then(PushRecord::accepted)
            .is_none()
        {
            assert!(Instant::now() < deadline, "the attempt was never recorded");
            tokio::task::yield_now().await;
        }
        assert_eq!(receiver.state.received().len(), 1);

        // Dropping the simulator ends its tasks: nothing holds its state.
        let state = Arc::downgrade(&sim.state);
        drop(sim);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.strong_count() > 0 {
            assert!(Instant::now() < deadline, "a task outlived the simulator");
            tokio::task::yield_now().await;
        }
    }
}
