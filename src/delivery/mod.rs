//! Callback delivery: the outbox worker. It claims due deliveries with
//! leases, POSTs each event signed ([`signing`]) to its target (per-video
//! targets through the [`guard`]), records every attempt, and schedules
//! retries ([`schedule`]) until the receiver has it or the delivery is dead.
//!
//! As for the poller, [`Deliverer::step`] is one round returning an
//! [`Outcome`], and [`Deliverer::run`] loops it.

pub mod guard;
pub mod payload;
pub mod schedule;
pub mod signing;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use guard::{GuardedResolver, HostLookup};

use crate::config::{Config, WebhookSecret};
use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryNext, DeliveryRelease};
use crate::domain::{Lease, Millis};
use crate::jogg::answer::parse_retry_after;
use crate::store::{Store, StoreError, Writer};
use crate::telemetry::metrics::RelayMetrics;
use crate::worker::{
    Heartbeat, HeldLeases, LeaseWorker, LoopTexts, Pace, StepClock, WakeUp, lease_step,
    run_lease_loop,
};
use schedule::AttemptResult;

/// Most deliveries in flight at once, over all targets.
pub const MAX_IN_FLIGHT: usize = 32;
/// Most deliveries in flight to one host, so a slow receiver cannot take
/// every slot and starve the others.
pub const MAX_IN_FLIGHT_PER_HOST: usize = 4;
/// Most bytes of a receiver's answer read (and ignored).
const MAX_RESPONSE_BYTES: usize = 4096;
/// Added to every lease beyond the time its attempts can take.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Attempted this many deliveries.
    Worked(usize),
    /// Nothing was due.
    Idle,
}

/// A delivery worker failure: only the store can fail it.
#[derive(Debug, thiserror::Error)]
#[error("delivery worker cannot reach the database: {0}")]
pub struct DeliveryError(#[from] pub StoreError);

/// Could not build the HTTP clients.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the callback HTTP client: {0}")]
pub struct ClientBuildError(#[from] reqwest::Error);

struct Shared {
    writer: Writer,
    /// For the operator's configured URLs.
    trusted: reqwest::Client,
    /// For per-video URLs: connects only to allowed addresses (unless
    /// `allow_private_targets`, when it is the trusted client).
    guarded: reqwest::Client,
    configured: Vec<String>,
    allow_private_targets: bool,
    /// Signs callbacks to the configured URLs.
    secret: Option<WebhookSecret>,
    /// Signs callbacks to per-video URLs (`callbacks.video_secret`, else
    /// `secret`).
    video_secret: Option<WebhookSecret>,
    timeout: Duration,
    schedule: Vec<Duration>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Resolves per-video targets for the send-time check.
    lookup: Arc<dyn HostLookup>,
    metrics: Arc<RelayMetrics>,
    /// Claims not yet settled, to hand back on shutdown.
    held: HeldLeases,
    /// Cancelled when shutdown begins: claimed deliveries that have not
    /// been sent yet are handed back instead of attempted.
    stopping: CancellationToken,
}

/// The delivery worker (see the module docs).
pub struct Deliverer {
    shared: Arc<Shared>,
    store: Store,
    in_flight: Arc<Semaphore>,
    /// Notified when deliveries were queued, to end an idle wait early.
    new_work: Arc<Notify>,
    /// How long shutdown waits for attempts in flight.
    shutdown_grace: Duration,
    /// Beaten by the delivery loop, watched by the systemd watchdog.
    heartbeat: Arc<Heartbeat>,
}

impl Deliverer {
    /// Builds the worker for `config`; it wakes from idle when `new_work`
    /// is notified.
    pub fn new(
        config: &Config,
        store: Store,
        writer: Writer,
        new_work: Arc<Notify>,
        metrics: Arc<RelayMetrics>,
    ) -> Result<Self, ClientBuildError> {
        let shutdown_grace = config.server.shutdown_grace;
        let config = &config.callbacks;
        let trusted = callback_client(config.timeout, None)?;
        let lookup: Arc<dyn HostLookup> = Arc::new(guard::SystemLookup);
        let guarded = guarded_client(
            &trusted,
            config.allow_private_targets,
            config.timeout,
            &lookup,
        )?;
        if config.secret.is_some() && config.video_secret.is_none() {
            warn!(
                "callbacks.video_secret is not set: callbacks to per-video callback_urls are \
                 signed with callbacks.secret, so their receivers could sign callbacks that \
                 the configured receivers accept"
            );
        }
        Ok(Self {
            shared: Arc::new(Shared {
                writer,
                trusted,
                guarded,
                configured: config
                    .urls
                    .iter()
                    .map(|url| url.as_str().to_owned())
                    .collect(),
                allow_private_targets: config.allow_private_targets,
                secret: config.secret.clone(),
                video_secret: config.video_secret.clone().or(config.secret.clone()),
                timeout: config.timeout,
                schedule: config.retry_schedule.clone(),
                per_host: Mutex::new(HashMap::new()),
                lookup,
                metrics,
                held: HeldLeases::default(),
                stopping: CancellationToken::new(),
            }),
            store,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            new_work,
            shutdown_grace,
            heartbeat: Arc::default(),
        })
    }

    /// The delivery loop's heartbeat (see [`Heartbeat`]).
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.heartbeat.clone()
    }

    /// Resolves per-video targets with `lookup` instead of the system
    /// resolver, both for the send-time check and for the connection (a
    /// test seam: a name whose answer changes between the two). No effect
    /// with `allow_private_targets`.
    pub fn with_lookup(self, lookup: Arc<dyn HostLookup>) -> Result<Self, ClientBuildError> {
        let Self {
            shared,
            store,
            in_flight,
            new_work,
            shutdown_grace,
            heartbeat,
        } = self;
        let Ok(mut shared) = Arc::try_unwrap(shared) else {
            unreachable!(
                "the worker's state is shared only once it runs, which takes it by reference"
            );
        };
        shared.guarded = guarded_client(
            &shared.trusted,
            shared.allow_private_targets,
            shared.timeout,
            &lookup,
        )?;
        shared.lookup = lookup;
        Ok(Self {
            shared: Arc::new(shared),
            store,
            in_flight,
            new_work,
            shutdown_grace,
            heartbeat,
        })
    }

    /// Delivers until `shutdown`. Then no new claim is made, deliveries
    /// claimed but not yet sent are handed back, attempts in flight get
    /// `server.shutdown_grace` to finish, and whatever is still unfinished is
    /// handed back due now, so the next start sends it at once. The loop is
    /// the poller's too (`worker::run_lease_loop`); what is the delivery worker's
    /// own is in its `LeaseWorker` hooks below.
    pub async fn run(&self, shutdown: CancellationToken) {
        run_lease_loop(self, shutdown).await;
    }

    /// One round: claim what is due at `now` (as many as there are free
    /// slots), attempt each, record every attempt.
    pub async fn step(&self, now: Millis) -> Result<Outcome, DeliveryError> {
        lease_step(self, now).await
    }
}

/// The delivery worker's part of the shared lease loop: no gate, leases
/// sized for the per-host bound, and any queued delivery ends the wait.
impl LeaseWorker for Deliverer {
    type Item = ClaimedDelivery;
    type Outcome = Outcome;
    type Error = DeliveryError;

    // Bounded by the in-flight slots alone.
    const MAX_CLAIM: usize = usize::MAX;
    const TEXTS: LoopTexts = LoopTexts {
        started: "delivery worker started",
        stopped: "delivery worker stopped",
        task_failed: "recording a delivery attempt failed; it will be repeated",
        step_failed: "delivery round failed; retrying shortly",
        abandoned: "deliveries still in flight after the shutdown grace were abandoned",
        handed_back: "handed back unfinished deliveries",
        hand_back_failed: "could not hand back unfinished deliveries; their leases will expire",
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

    async fn before_claim(&self, _now: Millis) -> Result<Option<Outcome>, DeliveryError> {
        Ok(None)
    }

    async fn claim(&self, now: Millis, limit: usize) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // Worst case every claimed delivery goes to one host and waits its
        // turn behind that host's bound.
        let rounds = limit.div_ceil(MAX_IN_FLIGHT_PER_HOST) as u32;
        let lease = self.shared.timeout * (rounds + 1) + LEASE_MARGIN;
        self.shared
            .writer
            .claim_deliveries(now, now.plus(lease), limit as u32)
            .await
    }

    fn lease_of(delivery: &ClaimedDelivery) -> (i64, Lease) {
        (delivery.id, delivery.lease)
    }

    fn work(
        &self,
        delivery: ClaimedDelivery,
        permit: OwnedSemaphorePermit,
        clock: StepClock,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        attempt(self.shared.clone(), delivery, permit, clock)
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
        }
    }

    async fn next_due(&self) -> Option<Millis> {
        self.store.next_delivery_due().await.unwrap_or(None)
    }

    /// Queued deliveries are due at once.
    async fn wake_up(&self) -> WakeUp {
        self.new_work.notified().await;
        WakeUp::Now
    }

    async fn hand_back(&self, held: Vec<(i64, Lease)>, now: Millis) -> Result<(), StoreError> {
        let releases = held
            .into_iter()
            .map(|(delivery_id, lease)| DeliveryRelease {
                delivery_id,
                lease,
                next_attempt_at: now,
            })
            .collect();
        self.shared.writer.release_deliveries(releases).await
    }
}

/// A client for callbacks: never through a proxy (see `outbound`), with
/// `resolver` (the guard) when given.
fn callback_client(
    timeout: Duration,
    resolver: Option<Arc<GuardedResolver>>,
) -> Result<reqwest::Client, ClientBuildError> {
    let mut builder = crate::outbound::direct_client_builder()
        .timeout(timeout)
        .connect_timeout(timeout);
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(resolver);
    }
    Ok(builder.build()?)
}

/// The client for per-video URLs: it connects only through the guard's
/// resolver over `lookup`, or is the `trusted` one when private targets
/// are allowed.
fn guarded_client(
    trusted: &reqwest::Client,
    allow_private_targets: bool,
    timeout: Duration,
    lookup: &Arc<dyn HostLookup>,
) -> Result<reqwest::Client, ClientBuildError> {
    if allow_private_targets {
        return Ok(trusted.clone());
    }
    callback_client(timeout, Some(GuardedResolver::with_lookup(lookup.clone())))
}

impl Shared {
    /// The bound for `url`'s host.
    fn host_slots(&self, url: &Url) -> Arc<Semaphore> {
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut per_host = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
        per_host
            .entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_HOST)))
            .clone()
    }
}

/// One attempt of one delivery, recorded whatever happens.
async fn attempt(
    shared: Arc<Shared>,
    delivery: ClaimedDelivery,
    _permit: OwnedSemaphorePermit,
    clock: StepClock,
) -> Result<(), StoreError> {
    let result = match Url::parse(&delivery.url) {
        Ok(url) => {
            let slots = shared.host_slots(&url);
            let host_permit = tokio::select! {
                permit = slots.acquire_owned() => permit.ok(),
                _ = shared.stopping.cancelled() => None,
            };
            if host_permit.is_none() || shared.stopping.is_cancelled() {
                // Shutting down before our turn: hand it back, due now.
                shared
                    .writer
                    .release_deliveries(vec![DeliveryRelease {
                        delivery_id: delivery.id,
                        lease: delivery.lease,
                        next_attempt_at: clock.now(),
                    }])
                    .await?;
                shared.held.settle(delivery.id);
                return Ok(());
            }
            let at = clock.now();
            let started = Instant::now();
            let result = send(&shared, &delivery, &url, at).await;
            (at, started.elapsed(), result)
        }
        Err(err) => (
            clock.now(),
            Duration::ZERO,
            AttemptResult::Forbidden(format!("invalid URL: {err}")),
        ),
    };
    let (at, took, result) = result;
    let attempt_number = u32::try_from(delivery.attempts)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let next = schedule::next_step(
        &result,
        attempt_number,
        &shared.schedule,
        clock.now(),
        fastrand::f64() * 2.0 - 1.0,
    );
    let (status, error) = match &result {
        AttemptResult::Answered { status, .. } => (Some(*status), None),
        AttemptResult::Failed(error) | AttemptResult::Forbidden(error) => {
            (None, Some(error.clone()))
        }
    };
    let recorded = shared
        .writer
        .record_attempt(AttemptRecord {
            delivery_id: delivery.id,
            lease: delivery.lease,
            at,
            status,
            error: error.clone(),
            duration_ms: i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
            next: next.clone(),
        })
        .await?;
    shared.held.settle(delivery.id);
    if !recorded {
        warn!(video_id = %delivery.video_id, event_id = %delivery.event_id, "delivery lease lost; the attempt will be repeated");
        return Ok(());
    }
    let outcome = match &next {
        DeliveryNext::Delivered => "delivered",
        DeliveryNext::Retry(_) => "retry",
        DeliveryNext::Dead(_) => "dead",
    };
    let reason = match &next {
        DeliveryNext::Dead(reason) => Some(reason.as_str()),
        _ => None,
    };
    shared.metrics.delivery(outcome, took.as_secs_f64());
    if let (DeliveryNext::Delivered, Some(pushed_at)) = (&next, delivery.pushed_at) {
        shared
            .metrics
            .push_to_callback(at.plus(took).0.saturating_sub(pushed_at.0));
    }
    info!(
        video_id = %delivery.video_id,
        event_id = %delivery.event_id,
        url = %delivery.url,
        attempt = attempt_number,
        status,
        error = error.as_deref(),
        outcome,
        reason,
        "delivery attempt"
    );
    Ok(())
}

/// Sends the event once.
async fn send(shared: &Shared, delivery: &ClaimedDelivery, url: &Url, at: Millis) -> AttemptResult {
    let trusted = shared
        .configured
        .iter()
        .any(|configured| configured == &delivery.url);
    if !trusted && guard::host_too_long(url) {
        return AttemptResult::Forbidden(guard::GuardError::HostTooLong.to_string());
    }
    let client = if trusted || shared.allow_private_targets {
        &shared.trusted
    } else {
        if let Err(err) = guard::check_target_with(url, shared.lookup.as_ref()).await {
            return match err {
                guard::GuardError::Forbidden(_) | guard::GuardError::HostTooLong => {
                    AttemptResult::Forbidden(err.to_string())
                }
                guard::GuardError::Unresolved { .. } => AttemptResult::Failed(err.to_string()),
            };
        }
        &shared.guarded
    };
    // A per-video receiver gets its own secret: with the configured
    // receivers' secret it could sign callbacks they would accept. A
    // per-video URL equal to a configured one is that trusted receiver.
    let secret = if trusted {
        &shared.secret
    } else {
        &shared.video_secret
    };
    let body = payload::event_body(delivery);
    let mut request = client
        .post(url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secret) = secret {
        let timestamp = at.0.div_euclid(1000);
        request = request
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signing::standard_signature(secret, &delivery.event_id, timestamp, &body),
            )
            .header(
                "x-webhook-signature",
                signing::joggai_signature(secret, &body),
            );
    }
    if let Some(event) = payload::event_name(delivery.state) {
        request = request.header("x-webhook-event", event);
    }
    let mut response = match request.body(body).send().await {
        Ok(response) => response,
        Err(err) if err.is_timeout() => return AttemptResult::Failed("timeout".into()),
        Err(err) if err.is_connect() => return AttemptResult::Failed("connection failed".into()),
        Err(err) => return AttemptResult::Failed(format!("request failed: {err}")),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, std::time::SystemTime::now()));
    // Read a little of the answer so the connection can be reused; never
    // more, whatever the receiver sends.
    let mut read = 0;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    AttemptResult::Answered {
        status,
        retry_after,
    }
}
