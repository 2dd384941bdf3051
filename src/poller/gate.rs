//! The upstream gate: the global request budget (a GCRA rate limiter) and
//! the global pauses (429 throttling; auth or credit failures).
//!
//! Everything that sends a request to JoggAI passes [`UpstreamGate::acquire`]
//! first, so the budget and the pauses hold for the whole process whatever
//! the number of videos.
//!
//! The limiter is GCRA on Tokio's clock (so it follows `tokio::time::pause`
//! in tests). The pauses are kept in [`Millis`], the clock the poller's steps
//! are given: a step handed a later `now` sees a pause as over, so tests
//! step through a pause without waiting for it, and `/readyz` can show its
//! end as a timestamp. It keeps a little of the bucket in reserve: requests leave the
//! relay on schedule but reach JoggAI after a variable network delay, and a
//! sender with no slack at all would be seen over budget whenever one
//! request travels faster than the one before it. The steady rate is the
//! full budget; only the initial burst is slightly smaller.
//!
//! On PostgreSQL several relays share one budget: the gate then reserves
//! each request's slot in the database ([`SharedGate::reserve`], the same
//! GCRA on one row; requests asking at the same time share one statement,
//! see `gate/groups.rs`), publishes the pauses it starts or ends there, and
//! adopts those another relay started: when it reserves a slot, and again
//! just before sending a request that waited for its slot (a busy relay's
//! slots lie up to `jogg.max_in_flight` requests ahead, and a 429 answered
//! to another relay meanwhile must stop them too). Of several paused
//! relays, one probes at a time ([`SharedGate::take_probe`]).

mod groups;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::domain::Millis;
use crate::jogg::{PauseReason, default_rate_limit_pause};
use crate::store::{SharedGate, SharedPauses};
use groups::{Slot, SlotGroups};

/// How long a relay waits before trying again when the shared gate cannot
/// be reached (the database is away): its requests are not sent meanwhile,
/// since their slots cannot be reserved.
const SHARED_GATE_RETRY: Duration = Duration::from_secs(1);

/// Arrival jitter the reserve is sized to absorb.
const JITTER_ALLOWANCE: Duration = Duration::from_millis(20);
/// With a bucket of one there is no reserve to keep; the rate is lowered by
/// this fraction instead.
const SINGLE_TOKEN_RATE_MARGIN: f64 = 0.05;

/// How late a request may still be sent after its slot is due (the
/// GCRA's theoretical arrival time of that slot, which a request sent in a
/// burst reaches later than its send time). Sent by then, a request leaves
/// the slots after it where they are; sent later (its task ran late on a
/// loaded machine), it reaches JoggAI bunched with the requests of the next
/// slots, eating the reserve the network's jitter needs. So half of that
/// reserve is allowed; beyond it the slot is dropped and another reserved
/// instead. An unused slot only spends less than the budget.
const STALE_SLOT: Duration = Duration::from_millis(JITTER_ALLOWANCE.as_millis() as u64 / 2);

/// How many slots a request may reach too late before it gives up its
/// turn ([`Closed::Late`]): a machine too loaded to keep any slot must not
/// keep reserving them.
const MAX_STALE_SLOTS: u32 = 3;

/// Longest 429 pause unless configured otherwise (`jogg.max_pause`).
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(600);

/// Why [`UpstreamGate::acquire`] did not grant a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Polling is paused until a probe succeeds.
    Paused(PauseReason),
    /// JoggAI asked us to slow down; try again at this time.
    Throttled(Millis),
    /// The relay is shutting down (set by the caller, never by the gate).
    Stopping,
    /// The shared budget cannot be reached (the database is away); try
    /// again at this time.
    Unavailable(Millis),
    /// The request's task ran too late to use the slots it reserved (the
    /// machine is overloaded); try again at this time.
    Late(Millis),
}

/// A pause change told to the other relays.
#[derive(Debug, Clone, Copy)]
enum SharedChange {
    Throttle(Millis),
    Refuse(PauseReason, Millis),
    Resume,
}

/// The reason another relay stored; a name this version does not know
/// (a newer relay's) reads as a refused key, which pauses all the same.
fn adopted_reason(name: &str) -> PauseReason {
    PauseReason::from_name(name).unwrap_or(PauseReason::InvalidApiKey)
}

/// State behind the lock.
#[derive(Debug)]
struct GateState {
    /// GCRA theoretical arrival time of the next request.
    tat: Instant,
    /// Set while JoggAI's 429 pause lasts (cleared by the first request
    /// admitted after it).
    throttled_until: Option<Millis>,
    /// Bumped on every new throttle, so requests already waiting for their
    /// slot notice that a throttle began while they waited.
    throttle_epoch: u64,
    /// Consecutive 429s without `Retry-After`, for the default growth.
    consecutive_throttles: u32,
    /// The auth/credit pause, if any.
    paused: Option<PauseReason>,
    /// Consecutive failed probes, for the probe delay growth.
    failed_probes: u32,
    /// When the next probe may be sent while paused.
    next_probe_at: Millis,
}

/// A pause of all polling, as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalPause {
    /// JoggAI refuses the key or the account: nothing is polled until a
    /// probe succeeds; the next probe goes out at `next_probe_at`.
    Refused {
        /// Why.
        reason: PauseReason,
        /// The earliest time the pause can end.
        next_probe_at: Millis,
    },
    /// JoggAI answered 429: nothing is polled until `until`.
    RateLimited {
        /// When polling resumes.
        until: Millis,
    },
}

impl GlobalPause {
    /// The earliest time polling can resume.
    pub fn ends_at(self) -> Millis {
        match self {
            GlobalPause::Refused { next_probe_at, .. } => next_probe_at,
            GlobalPause::RateLimited { until } => until,
        }
    }

    /// Time from `now` until [`GlobalPause::ends_at`] (zero once it passed).
    pub fn remaining(self, now: Millis) -> Duration {
        Duration::from_millis(u64::try_from(self.ends_at().0 - now.0).unwrap_or(0))
    }

    /// Stable snake_case name: the refusal's reason, or `rate_limited`.
    pub fn reason(self) -> &'static str {
        match self {
            GlobalPause::Refused { reason, .. } => reason.as_str(),
            GlobalPause::RateLimited { .. } => "rate_limited",
        }
    }
}

/// The global budget and pause state (see the module docs).
#[derive(Debug)]
pub struct UpstreamGate {
    /// Time between requests at the budget.
    interval: Duration,
    /// How far ahead of the schedule a request may go (the burst).
    tolerance: Duration,
    /// First probe delay while paused; it doubles per failed probe.
    probe_base: Duration,
    /// Longest probe delay.
    probe_cap: Duration,
    /// Longest 429 pause, whatever `Retry-After` says.
    max_pause: Duration,
    /// The budget and pauses shared with other relays on one database.
    shared: Option<SharedGate>,
    /// The shared budget's reservations, grouped (set with `shared`).
    groups: Option<Arc<SlotGroups>>,
    /// Whether the last reservation in the shared gate failed (so that a
    /// database away is logged once, not per request).
    shared_unreachable: AtomicBool,
    state: Mutex<GateState>,
}

impl UpstreamGate {
    /// A gate for `rate` requests per second with bursts of `burst`.
    /// `probe_base`/`probe_cap` bound the delay between probes while paused.
    pub fn new(rate: f64, burst: u32, probe_base: Duration, probe_cap: Duration) -> Self {
        // The configuration bounds `rate` and `burst`; saturating here keeps
        // the gate total should a caller not.
        let mut interval = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX);
        let usable_burst = if burst >= 2 {
            let reserve = (JITTER_ALLOWANCE.as_secs_f64() / interval.as_secs_f64()).ceil() as u32;
            burst - reserve.clamp(1, burst - 1)
        } else {
            interval = interval.mul_f64(1.0 + SINGLE_TOKEN_RATE_MARGIN);
            1
        };
        Self {
            interval,
            tolerance: interval.saturating_mul(usable_burst - 1),
            probe_base,
            probe_cap: probe_cap.max(probe_base),
            max_pause: DEFAULT_MAX_PAUSE,
            shared: None,
            groups: None,
            shared_unreachable: AtomicBool::new(false),
            state: Mutex::new(GateState {
                tat: Instant::now(),
                throttled_until: None,
                throttle_epoch: 0,
                consecutive_throttles: 0,
                paused: None,
                failed_probes: 0,
                next_probe_at: Millis(0),
            }),
        }
    }

    /// The same gate with 429 pauses clamped to `max_pause`
    /// (`jogg.max_pause`), so that one absurd `Retry-After` cannot stop
    /// polling for a year.
    pub fn with_max_pause(mut self, max_pause: Duration) -> Self {
        self.max_pause = max_pause;
        self
    }

    /// Shares the budget and the pauses with every relay on the database
    /// behind `shared`.
    pub fn with_shared(mut self, shared: Option<SharedGate>) -> Self {
        self.groups = shared.as_ref().map(|shared| {
            Arc::new(SlotGroups::new(
                shared.clone(),
                self.interval,
                self.tolerance,
            ))
        });
        self.shared = shared;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a slot in the budget. Fails at once while paused or
    /// throttled at `now`, and also if a throttle begins while waiting: the
    /// caller then hands its video back instead of holding it through the
    /// pause.
    ///
    /// A slot the task reaches late (more than `STALE_SLOT`, 10 ms, after
    /// it is due) is not used: another is reserved, `MAX_STALE_SLOTS` (3)
    /// slots in all ([`Closed::Late`] after that).
    pub async fn acquire(&self, now: Millis) -> Result<(), Closed> {
        let called = Instant::now();
        for stale in 0..MAX_STALE_SLOTS {
            // Later rounds judge the pauses at the time they ask again.
            let asked = if stale == 0 {
                now
            } else {
                now.plus(called.elapsed())
            };
            let due = self.send_on_slot(asked, called).await?;
            let late = Instant::now().saturating_duration_since(due);
            if late <= STALE_SLOT {
                return Ok(());
            }
            debug!(
                late_ms = late.as_millis() as u64,
                "a request reached its slot too late to be sent on it; reserving another"
            );
        }
        Err(Closed::Late(now.plus(called.elapsed())))
    }

    /// One slot: reserves it, waits for it, and checks the pauses again;
    /// returns when the slot is due (its GCRA arrival time: sent later, the
    /// request would move the slots after it).
    async fn send_on_slot(&self, now: Millis, called: Instant) -> Result<Instant, Closed> {
        let (local_slot, epoch) = {
            let mut state = self.lock();
            if let Some(reason) = state.paused {
                return Err(Closed::Paused(reason));
            }
            let instant = Instant::now();
            match state.throttled_until {
                Some(until) if until > now => return Err(Closed::Throttled(until)),
                Some(_) => {
                    // The first request after a 429 pause: resume at the
                    // steady rate with an empty bucket, so the catch-up is
                    // not a burst.
                    state.throttled_until = None;
                    state.tat = instant + self.tolerance;
                }
                None => {}
            }
            // A shared budget is reserved in the database instead. The
            // slot is due at its arrival time, and sent up to the
            // tolerance before it.
            let local_slot = self.groups.is_none().then(|| {
                let tat = state.tat.max(instant);
                state.tat = tat + self.interval;
                let send_at = tat
                    .checked_sub(self.tolerance)
                    .unwrap_or(instant)
                    .max(instant);
                (send_at, tat)
            });
            (local_slot, state.throttle_epoch)
        };
        let (send_at, due) = match (&self.groups, local_slot) {
            (Some(groups), _) => self.reserve_shared(groups, now).await?,
            (None, Some(slot)) => slot,
            (None, None) => (Instant::now(), Instant::now()),
        };
        let waits = send_at > Instant::now();
        tokio::time::sleep_until(send_at).await;
        if let Some(shared) = &self.shared
            && waits
        {
            // A busy relay's slots lie up to `max_in_flight` requests
            // ahead; a pause another relay started meanwhile is in the
            // database, not yet here.
            self.recheck_shared(shared, now.plus(called.elapsed()))
                .await?;
        }
        let state = self.lock();
        if let Some(reason) = state.paused {
            return Err(Closed::Paused(reason));
        }
        if state.throttle_epoch != epoch
            && let Some(until) = state.throttled_until
        {
            return Err(Closed::Throttled(until));
        }
        Ok(due)
    }

    /// Reserves a slot of the shared budget, grouped with the other
    /// requests asking meanwhile: when to send and when the slot is due,
    /// or why not (a pause another relay started is adopted here). While
    /// the database cannot be reached nothing is sent; that is logged
    /// once, and once more when it answers again.
    async fn reserve_shared(
        &self,
        groups: &Arc<SlotGroups>,
        now: Millis,
    ) -> Result<(Instant, Instant), Closed> {
        let slot = groups.slot(now).await;
        let unreachable = matches!(slot, Slot::Unreachable(_));
        if self.shared_unreachable.swap(unreachable, Ordering::AcqRel) != unreachable {
            match &slot {
                Slot::Unreachable(err) => warn!(
                    error = %err,
                    "cannot reserve requests in the budget shared through the database; \
                     nothing is sent to JoggAI until it answers"
                ),
                _ => info!("the shared budget answers again; polling resumed"),
            }
        }
        match slot {
            Slot::SendAt { at, due } => Ok((at, due)),
            Slot::Throttled(until) => {
                self.adopt_throttle(until);
                Err(Closed::Throttled(until))
            }
            Slot::Refused(reason, next_probe_at) => {
                let reason = adopted_reason(&reason);
                self.adopt_pause(reason, next_probe_at);
                Err(Closed::Paused(reason))
            }
            Slot::Unreachable(_) => Err(Closed::Unavailable(now.plus(SHARED_GATE_RETRY))),
        }
    }

    /// Just before a request that waited for its reserved slot is sent:
    /// whether a pause began meanwhile on the database (another relay was
    /// answered 429, or refused). It is adopted, and the request is not
    /// sent; neither is it while the database cannot be asked.
    async fn recheck_shared(&self, shared: &SharedGate, now: Millis) -> Result<(), Closed> {
        match shared.pauses(now).await {
            Ok(pauses) => self.adopt(&pauses).map_or(Ok(()), Err),
            Err(_) => Err(Closed::Unavailable(now.plus(SHARED_GATE_RETRY))),
        }
    }

    /// Takes on the pauses other relays published, and says why the gate
    /// is closed because of them, if it is (a refusal before a throttle).
    fn adopt(&self, pauses: &SharedPauses) -> Option<Closed> {
        if let Some(until) = pauses.throttled_until {
            self.adopt_throttle(until);
        }
        if let Some((reason, next_probe_at)) = &pauses.refused {
            let reason = adopted_reason(reason);
            self.adopt_pause(reason, *next_probe_at);
            return Some(Closed::Paused(reason));
        }
        pauses.throttled_until.map(Closed::Throttled)
    }

    /// Another relay was throttled until `until`: so is this one (without
    /// logging again what that relay logged).
    fn adopt_throttle(&self, until: Millis) {
        let mut state = self.lock();
        if state.throttled_until.is_none_or(|current| current < until) {
            state.throttled_until = Some(until);
            state.throttle_epoch += 1;
        }
    }

    /// Another relay was refused for `reason`: this one pauses too, and
    /// probes (taking turns with the others) from `next_probe_at`.
    fn adopt_pause(&self, reason: PauseReason, next_probe_at: Millis) {
        let mut state = self.lock();
        if state.paused.is_none() {
            warn!(
                reason = reason.as_str(),
                "JoggAI refused another relay's requests; polling is paused here too"
            );
            state.paused = Some(reason);
            state.failed_probes = 0;
        }
        state.next_probe_at = next_probe_at;
    }

    /// While paused or throttled, what the other relays on the database
    /// know: a pause one of them started, a refusal a probe of theirs
    /// ended (polling resumes here too), when the next probe is due.
    /// Without a shared gate, or when the database does not answer,
    /// nothing changes.
    pub async fn refresh(&self, now: Millis) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Ok(pauses) = shared.pauses(now).await else {
            return;
        };
        self.adopt(&pauses);
        if pauses.refused.is_none() {
            let mut state = self.lock();
            if let Some(reason) = state.paused.take() {
                info!(
                    reason = reason.as_str(),
                    "another relay's probe succeeded; polling resumed"
                );
                state.failed_probes = 0;
            }
        }
    }

    /// Whether this relay may send the probe due at `now`: always alone;
    /// with other relays on the database, only the one that takes the turn
    /// (moving the next probe one probe delay later for all of them).
    pub async fn take_probe(&self, now: Millis) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let next = now.plus(self.probe_delay(self.lock().failed_probes));
        match shared.take_probe(now, next).await {
            Ok(true) => true,
            Ok(false) => {
                self.refresh(now).await;
                false
            }
            Err(err) => {
                warn!(error = %err, "cannot take the probe's turn in the shared gate");
                false
            }
        }
    }

    /// The delay before the next probe after `failed` failed probes.
    fn probe_delay(&self, failed: u32) -> Duration {
        self.probe_base
            .mul_f64(2f64.powi(failed.min(30) as i32))
            .min(self.probe_cap)
    }

    /// Tells the other relays (in the background: the pause already holds
    /// here, and a database that does not answer must not hold up the
    /// poll that saw it).
    fn publish(&self, change: SharedChange) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        tokio::spawn(async move {
            let published = match change {
                SharedChange::Throttle(until) => shared.throttle(until).await,
                SharedChange::Refuse(reason, next_probe_at) => {
                    shared.refuse(reason.as_str(), next_probe_at).await
                }
                SharedChange::Resume => shared.resume().await,
            };
            if let Err(err) = published {
                warn!(error = %err, "cannot tell the other relays about a pause");
            }
        });
    }

    /// JoggAI answered 429 at `now`: pause every request for `retry_after`
    /// (or a growing default), never longer than `max_pause`; afterwards
    /// requests resume at the steady rate. Returns when the pause ends.
    pub fn throttle(&self, retry_after: Option<Duration>, now: Millis) -> Millis {
        let mut state = self.lock();
        let asked =
            retry_after.unwrap_or_else(|| default_rate_limit_pause(state.consecutive_throttles));
        let pause = asked.min(self.max_pause);
        state.consecutive_throttles = state.consecutive_throttles.saturating_add(1);
        let until = now.plus(pause);
        let already_throttled = state.throttled_until.is_some_and(|current| current > now);
        if state.throttled_until.is_none_or(|current| current < until) {
            state.throttled_until = Some(until);
            state.throttle_epoch += 1;
            self.publish(SharedChange::Throttle(until));
        }
        // Logged once per pause: answers to requests that were already in
        // flight add nothing.
        if !already_throttled && asked > pause {
            warn!(
                retry_after_s = asked.as_secs(),
                pause_ms = pause.as_millis() as u64,
                until = %until.to_rfc3339(),
                "JoggAI rate-limited the relay (429) and asked for a pause longer than \
                 jogg.max_pause; all polling paused for jogg.max_pause"
            );
        } else if !already_throttled {
            warn!(
                pause_ms = pause.as_millis() as u64,
                until = %until.to_rfc3339(),
                "JoggAI rate-limited the relay (429); all polling paused"
            );
        }
        state.throttled_until.unwrap_or(until)
    }

    /// An answer that was not a 429: the default throttle growth starts over.
    pub fn note_not_throttled(&self) {
        self.lock().consecutive_throttles = 0;
    }

    /// JoggAI refuses the key or the account: pause all polling until a
    /// probe succeeds. Logged once per pause; more refusals from requests
    /// that were already in flight change nothing.
    pub fn pause(&self, reason: PauseReason, now: Millis) {
        let mut state = self.lock();
        if state.paused.is_some() {
            return;
        }
        error!(
            reason = reason.as_str(),
            "JoggAI refuses the relay's requests; polling is paused and one probe is retried \
             with growing delay until it succeeds"
        );
        state.paused = Some(reason);
        state.failed_probes = 0;
        state.next_probe_at = now.plus(self.probe_base);
        self.publish(SharedChange::Refuse(reason, state.next_probe_at));
    }

    /// A probe was refused again: the next one waits twice as long (up to
    /// the cap).
    pub fn probe_failed(&self, reason: PauseReason, now: Millis) {
        let mut state = self.lock();
        state.paused = Some(reason);
        state.failed_probes = state.failed_probes.saturating_add(1);
        state.next_probe_at = now.plus(self.probe_delay(state.failed_probes));
        self.publish(SharedChange::Refuse(reason, state.next_probe_at));
    }

    /// A probe succeeded: polling resumes.
    pub fn resume(&self) {
        let mut state = self.lock();
        if let Some(reason) = state.paused.take() {
            info!(
                reason = reason.as_str(),
                "JoggAI accepts the relay's requests again; polling resumed"
            );
            self.publish(SharedChange::Resume);
        }
        state.failed_probes = 0;
    }

    /// The current auth/credit pause, if any.
    pub fn paused(&self) -> Option<PauseReason> {
        self.lock().paused
    }

    /// While paused: when the next probe may go out.
    pub fn next_probe_at(&self) -> Millis {
        self.lock().next_probe_at
    }

    /// The end of the 429 throttle in effect at `now`, if any.
    pub fn throttled_until(&self, now: Millis) -> Option<Millis> {
        self.lock().throttled_until.filter(|until| *until > now)
    }

    /// The pause of all polling in effect at `now`, if any; a refusal wins
    /// over a 429 pause (it lasts until a probe succeeds).
    pub fn global_pause(&self, now: Millis) -> Option<GlobalPause> {
        let state = self.lock();
        if let Some(reason) = state.paused {
            return Some(GlobalPause::Refused {
                reason,
                next_probe_at: state.next_probe_at,
            });
        }
        state
            .throttled_until
            .filter(|until| *until > now)
            .map(|until| GlobalPause::RateLimited { until })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(rate: f64, burst: u32) -> UpstreamGate {
        UpstreamGate::new(rate, burst, Duration::from_secs(1), Duration::from_secs(60))
    }

    /// A step clock reading, far from zero like a real one.
    const T0: Millis = Millis(1_800_000_000_000);

    /// Instants at which `n` back-to-back acquisitions are granted, for
    /// requests made at step time `at`.
    async fn grant_times(gate: &UpstreamGate, n: usize, at: Millis) -> Vec<Duration> {
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..n {
            gate.acquire(at).await.unwrap();
            times.push(Instant::now() - start);
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn steady_rate_after_a_burst_with_a_reserve() {
        // 10/s, burst 10: interval 100 ms, one token kept in reserve.
        let times = grant_times(&gate(10.0, 10), 12, T0).await;
        let millis: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_budget_in_any_window() {
        let rate = 50.0;
        let burst = 5;
        let times = grant_times(&gate(rate, burst), 300, T0).await;
        // A strict bucket (capacity `burst`, refill `rate`) fed these times
        // never goes below zero.
        assert_eq!(over_budget(times, rate, burst), None);
    }

    /// The first send time in `times` (sorted here) that a strict token
    /// bucket of capacity `burst` refilled at `rate` per second refuses:
    /// the upstream's view of the budget, written apart from the gate.
    fn over_budget(mut times: Vec<Duration>, rate: f64, burst: u32) -> Option<Duration> {
        times.sort();
        let mut tokens = f64::from(burst);
        let mut last = Duration::ZERO;
        for at in times {
            tokens = (tokens + (at - last).as_secs_f64() * rate).min(f64::from(burst));
            last = at;
            tokens -= 1.0;
            if tokens < -1e-9 {
                return Some(at);
            }
        }
        None
    }

    /// Polls `future` once, without waiting.
    async fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> bool {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx).is_pending())
        })
        .await
    }

    /// A request whose task reaches its slot late (the machine was busy)
    /// is not sent on it: sent then, it would reach JoggAI bunched with
    /// the next slot's request. It reserves another slot, after those
    /// already reserved, and the sends stay within a strict bucket.
    #[tokio::test(start_paused = true)]
    async fn a_slot_reached_late_is_not_used() {
        // 10 requests a second, no burst: one slot every 105 ms.
        let (rate, burst) = (10.0, 1);
        let gate = gate(rate, burst);
        let start = Instant::now();
        gate.acquire(T0).await.unwrap();
        let timed = |acquire| async move {
            let granted: Result<(), Closed> = acquire;
            granted.unwrap();
            Instant::now() - start
        };
        let mut late = Box::pin(async { timed(gate.acquire(T0).await).await });
        let mut next = Box::pin(async { timed(gate.acquire(T0).await).await });
        // Both reserve their slots (105 ms and 210 ms) and wait.
        assert!(poll_once(&mut late).await && poll_once(&mut next).await);
        // The first one's task runs again only at 155 ms, 50 ms late.
        tokio::time::advance(Duration::from_millis(155)).await;
        let (late, next) = tokio::join!(late, next);
        let sent = vec![Duration::ZERO, late, next];
        assert_eq!(over_budget(sent.clone(), rate, burst), None, "{sent:?}");
        assert!(
            late > next,
            "the late request goes after the next one: {sent:?}"
        );
    }

    /// A request whose task is late for every slot it gets gives its turn
    /// up after three (its video is handed back) rather than keep taking
    /// slots nobody uses.
    #[tokio::test(start_paused = true)]
    async fn a_request_late_for_every_slot_gives_its_turn_up() {
        let ms = Duration::from_millis;
        // No burst: one slot every 105 ms.
        let gate = gate(10.0, 1);
        let start = Instant::now();
        gate.acquire(T0).await.unwrap();
        let mut late = Box::pin(gate.acquire(T0));
        assert!(poll_once(&mut late).await, "slot at 105 ms");
        // Ten more requests wait behind it: the slots up to 1,155 ms.
        let mut behind: Vec<_> = (0..10).map(|_| Box::pin(gate.acquire(T0))).collect();
        for request in &mut behind {
            assert!(poll_once(request).await);
        }
        // Its task wakes 55 ms after each slot it gets: at 160 ms (the
        // next slot: 1,260 ms), at 1,315 ms (next: 1,365 ms), at 1,420 ms.
        for wake in [160, 1315] {
            tokio::time::advance(start + ms(wake) - Instant::now()).await;
            assert!(poll_once(&mut late).await, "another slot at {wake} ms");
        }
        tokio::time::advance(start + ms(1420) - Instant::now()).await;
        assert_eq!(late.await, Err(Closed::Late(T0.plus(ms(1420)))));
        drop(behind);
    }

    /// A slot is due at its GCRA arrival time, up to the tolerance after
    /// its send time: a request that waited for its slot and wakes late but
    /// by then is still sent (it moves no later slot, and a dropped slot
    /// would be budget lost); one that wakes after it is not.
    #[tokio::test(start_paused = true)]
    async fn a_late_slot_is_used_until_it_is_due() {
        // 10 requests a second, burst 10: nine at once (one token in
        // reserve), then one slot every 100 ms, each due 800 ms after it
        // may be sent.
        let (rate, burst) = (10.0, 10);
        let gate = gate(rate, burst);
        let start = Instant::now();
        let mut sent = grant_times(&gate, 9, T0).await;
        let timed = |acquire| async move {
            let granted: Result<(), Closed> = acquire;
            granted.unwrap();
            Instant::now() - start
        };
        // Eleven more: request i may be sent from 100 (i + 1) ms and is
        // due at 900 + 100 i ms.
        let mut waiting: Vec<_> = (0..11)
            .map(|_| Box::pin(async { timed(gate.acquire(T0).await).await }))
            .collect();
        for request in &mut waiting {
            assert!(poll_once(request).await, "waits for its slot");
        }
        // The first one's task runs again at 700 ms: 600 ms after its send
        // time, before its slot is due. Sent.
        tokio::time::advance(Duration::from_millis(700)).await;
        let first = waiting.remove(0).await;
        assert_eq!(first, Duration::from_millis(700), "used, not dropped");
        sent.push(first);
        // The others' at 1,100 ms: the second's slot was due at 1,000 ms,
        // so it takes the next free one (sent from 1,200 ms); the third's
        // is due at 1,100 ms, the others' later. They are sent at once.
        tokio::time::advance(Duration::from_millis(400)).await;
        let second = waiting.remove(0);
        let (second, others) = tokio::join!(second, futures_util::future::join_all(waiting));
        assert_eq!(second, Duration::from_millis(1200), "dropped its slot");
        assert_eq!(others, vec![Duration::from_millis(1100); 9]);
        sent.push(second);
        sent.extend(others);
        assert_eq!(over_budget(sent.clone(), rate, burst), None, "{sent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_refuses_then_resumes_without_a_burst() {
        let gate = gate(10.0, 10);
        let until = gate.throttle(Some(Duration::from_secs(2)), T0);
        assert_eq!(until, T0.plus(Duration::from_secs(2)));
        let just_before = Millis(until.0 - 1);
        assert_eq!(
            gate.acquire(just_before).await,
            Err(Closed::Throttled(until))
        );
        assert_eq!(gate.throttled_until(just_before), Some(until));
        assert_eq!(gate.throttled_until(until), None);
        // The bucket was full before the pause; afterwards it is empty.
        let times = grant_times(&gate, 3, until).await;
        let millis: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [0, 100, 200], "steady rate, no catch-up burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_during_the_wait_is_noticed() {
        let gate = std::sync::Arc::new(gate(1.0, 1));
        gate.acquire(T0).await.unwrap();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(T0).await }
        });
        tokio::task::yield_now().await;
        gate.throttle(Some(Duration::from_secs(30)), T0);
        assert!(matches!(waiting.await.unwrap(), Err(Closed::Throttled(_))));
    }

    /// The length of each of `n` consecutive 429 pauses without
    /// `Retry-After`, the first at `from`, each next one arriving as the
    /// previous pause ends.
    fn default_pauses(gate: &UpstreamGate, n: usize, from: Millis) -> Vec<u64> {
        let mut now = from;
        (0..n)
            .map(|_| {
                let until = gate.throttle(None, now);
                let pause = (until.0 - now.0) as u64 / 1000;
                now = until;
                pause
            })
            .collect()
    }

    #[test]
    fn default_throttle_doubles_up_to_a_minute() {
        let gate = gate(10.0, 10);
        assert_eq!(
            default_pauses(&gate, 9, T0),
            [1, 2, 4, 8, 16, 32, 60, 60, 60],
            "1 s doubling, capped at 60 s"
        );
        gate.note_not_throttled();
        let later = T0.plus(Duration::from_secs(3600));
        assert_eq!(
            default_pauses(&gate, 2, later),
            [1, 2],
            "growth starts over"
        );
    }

    #[test]
    fn a_later_429_never_shortens_a_pause() {
        let gate = gate(10.0, 10);
        assert_eq!(gate.throttle(None, T0), T0.plus(Duration::from_secs(1)));
        assert_eq!(gate.throttle(None, T0), T0.plus(Duration::from_secs(2)));
        gate.note_not_throttled();
        assert_eq!(
            gate.throttle(None, T0),
            T0.plus(Duration::from_secs(2)),
            "never shortens a pause"
        );
    }

    #[test]
    fn every_429_pause_is_clamped_to_max_pause() {
        let gate = gate(10.0, 10).with_max_pause(DEFAULT_MAX_PAUSE);
        let year = Duration::from_secs(31_536_000);
        assert_eq!(
            gate.throttle(Some(year), T0),
            T0.plus(Duration::from_secs(600))
        );
        assert_eq!(
            gate.global_pause(T0),
            Some(GlobalPause::RateLimited {
                until: T0.plus(Duration::from_secs(600))
            })
        );
        // The default growth is clamped too.
        let gate = self::gate(10.0, 10).with_max_pause(Duration::from_secs(5));
        assert_eq!(default_pauses(&gate, 5, T0), [1, 2, 4, 5, 5]);
    }

    /// The WARN lines `f` logs.
    fn warnings(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn each_429_pause_is_logged_once_saying_whether_it_was_clamped() {
        let gate = gate(10.0, 10).with_max_pause(Duration::from_secs(600));
        let thirty = Some(Duration::from_secs(30));
        let logged = warnings(|| {
            // One pause, and the 429s of requests already in flight.
            gate.throttle(thirty, T0);
            gate.throttle(thirty, T0.plus(Duration::from_secs(10)));
            gate.throttle(Some(Duration::from_secs(31_536_000)), Millis(T0.0 + 29_999));
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].contains("rate-limited"), "{logged:?}");
        assert!(!logged[0].contains("max_pause"), "not clamped: {logged:?}");

        // A 429 when the (stretched) pause has ended begins a new one; a
        // year is clamped, and the log says so.
        let ended = gate.throttled_until(T0).unwrap();
        let logged = warnings(|| {
            gate.throttle(Some(Duration::from_secs(31_536_000)), ended);
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(
            logged[0].contains("longer than jogg.max_pause")
                && logged[0].contains("retry_after_s=31536000")
                && logged[0].contains("pause_ms=600000"),
            "{logged:?}"
        );

        // Exactly max_pause is not a clamp.
        let gate = self::gate(10.0, 10).with_max_pause(Duration::from_secs(30));
        let logged = warnings(|| {
            gate.throttle(thirty, T0);
        });
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(!logged[0].contains("max_pause"), "{logged:?}");
    }

    #[tokio::test]
    async fn global_pause_names_the_refusal_first_then_the_throttle() {
        let gate = gate(10.0, 10);
        assert_eq!(gate.global_pause(T0), None);
        let until = gate.throttle(Some(Duration::from_secs(30)), T0);
        let throttled = gate.global_pause(T0).unwrap();
        assert_eq!(throttled, GlobalPause::RateLimited { until });
        assert_eq!(throttled.reason(), "rate_limited");
        assert_eq!(throttled.remaining(T0), Duration::from_secs(30));
        assert_eq!(
            throttled.remaining(until.plus(Duration::from_secs(5))),
            Duration::ZERO
        );
        gate.pause(PauseReason::NoPermission, T0);
        let refused = gate.global_pause(T0).unwrap();
        assert_eq!(
            refused,
            GlobalPause::Refused {
                reason: PauseReason::NoPermission,
                next_probe_at: T0.plus(Duration::from_secs(1))
            }
        );
        assert_eq!(refused.reason(), "no_permission");
        gate.resume();
        assert_eq!(gate.global_pause(until), None, "both over");
    }

    #[tokio::test]
    async fn pause_refuses_and_probe_delay_grows_until_resumed() {
        let gate = gate(10.0, 10);
        let now = Millis(1_000_000);
        gate.pause(PauseReason::InvalidApiKey, now);
        assert_eq!(
            gate.acquire(now).await,
            Err(Closed::Paused(PauseReason::InvalidApiKey))
        );
        assert_eq!(gate.next_probe_at(), Millis(1_001_000));
        // Refusals of requests already in flight do not stretch the pause.
        gate.pause(PauseReason::InvalidApiKey, now);
        assert_eq!(gate.next_probe_at(), Millis(1_001_000));
        gate.probe_failed(PauseReason::InvalidApiKey, now);
        assert_eq!(gate.next_probe_at(), Millis(1_002_000));
        gate.probe_failed(PauseReason::InvalidApiKey, now);
        assert_eq!(gate.next_probe_at(), Millis(1_004_000));
        gate.resume();
        assert_eq!(gate.paused(), None);
        assert!(gate.acquire(now).await.is_ok());
    }

    /// Two relays' gates on one PostgreSQL database: a 429 one of them
    /// sees closes the other's gate (published in the background, adopted
    /// at the other's next request); a refusal pauses the other too; the
    /// probe of one reopens both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_on_one_database_share_their_pauses() {
        use crate::store::postgres::test_db::TestDb;
        let Some(db) = TestDb::create("relays_share_their_pauses").await else {
            return;
        };
        let shared = || Some(SharedGate::new(db.pool.clone()));
        let (one, other) = (
            gate(50.0, 5).with_shared(shared()),
            gate(50.0, 5).with_shared(shared()),
        );
        let now = Millis::now();
        assert_eq!(other.acquire(now).await, Ok(()));

        let until = one.throttle(Some(Duration::from_secs(30)), now);
        // Published in the background: the other relay sees it within a
        // bounded time (each try is one reservation, granted until then).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match other.acquire(now).await {
                Err(Closed::Throttled(seen)) => {
                    assert_eq!(seen, until);
                    break;
                }
                Ok(()) => assert!(std::time::Instant::now() < deadline, "never adopted"),
                Err(closed) => panic!("{closed:?}"),
            }
        }
        assert_eq!(other.throttled_until(now), Some(until));

        let after = until.plus(Duration::from_secs(1));
        one.pause(PauseReason::InsufficientCredit, after);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match other.acquire(after).await {
                Err(Closed::Paused(reason)) => {
                    assert_eq!(reason, PauseReason::InsufficientCredit);
                    break;
                }
                Ok(()) => assert!(std::time::Instant::now() < deadline, "never adopted"),
                Err(closed) => panic!("{closed:?}"),
            }
        }
        assert_eq!(other.paused(), Some(PauseReason::InsufficientCredit));

        // The first relay's probe succeeds: the other resumes on refresh.
        one.resume();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while other.paused().is_some() {
            assert!(std::time::Instant::now() < deadline, "never resumed");
            other.refresh(after).await;
        }
        assert_eq!(other.acquire(after).await, Ok(()));
        drop((one, other));
        db.drop_db().await;
    }

    /// Two gates on one database draw from one budget: with a budget of
    /// two requests a second and no burst, the second request, from the
    /// other relay, waits about half a second; and of the two relays
    /// asking for the probe that is due during a refusal, exactly one gets
    /// it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_on_one_database_share_one_budget_and_take_turns_probing() {
        use crate::store::postgres::test_db::TestDb;
        let Some(db) = TestDb::create("relays_share_one_budget").await else {
            return;
        };
        let shared = || Some(SharedGate::new(db.pool.clone()));
        let (one, other) = (
            gate(2.0, 1).with_shared(shared()),
            gate(2.0, 1).with_shared(shared()),
        );
        let now = Millis::now();
        let started = std::time::Instant::now();
        one.acquire(now).await.unwrap();
        other.acquire(now).await.unwrap();
        // A sleep is never shorter than asked: a lower bound is exact.
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );

        one.pause(PauseReason::InvalidApiKey, now);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while other.paused().is_none() {
            assert!(std::time::Instant::now() < deadline, "never adopted");
            other.refresh(now).await;
        }
        let due = other.next_probe_at();
        assert_eq!(due, one.next_probe_at());
        let (a, b) = tokio::join!(one.take_probe(due), other.take_probe(due));
        assert!(a ^ b, "exactly one relay probes: {a} {b}");
        assert!(!one.take_probe(due).await && !other.take_probe(due).await);
        drop((one, other));
        db.drop_db().await;
    }

    /// Many requests at once on two relays sharing one database: the
    /// reservations are grouped (fewer statements than requests), and the
    /// sends of both relays together still fit a strict bucket of the
    /// configured rate and burst, as JoggAI counts them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_reservations_of_two_relays_keep_one_budget() {
        use crate::store::postgres::test_db::TestDb;
        let Some(db) = TestDb::create("grouped_reservations_keep_one_budget").await else {
            return;
        };
        let (rate, burst, each) = (50.0, 5, 40);
        let shared = [
            SharedGate::new(db.pool.clone()),
            SharedGate::new(db.pool.clone()),
        ];
        let gates = shared
            .clone()
            .map(|shared| std::sync::Arc::new(gate(rate, burst).with_shared(Some(shared))));
        let start = Instant::now();
        let now = Millis::now();
        let mut requests = tokio::task::JoinSet::new();
        for gate in &gates {
            for _ in 0..each {
                let gate = gate.clone();
                requests.spawn(async move {
                    gate.acquire(now).await.unwrap();
                    Instant::now() - start
                });
            }
        }
        let sent = requests.join_all().await;
        assert_eq!(sent.len(), 2 * each);
        assert_eq!(
            over_budget(sent.clone(), rate, burst),
            None,
            "sent at {sent:?}"
        );
        let statements: u64 = shared.iter().map(SharedGate::reservations_made).sum();
        assert!(
            statements < (2 * each) as u64,
            "{statements} reservations for {} requests",
            2 * each
        );
        drop(gates);
        db.drop_db().await;
    }

    /// A throttle another relay published reaches every request of a
    /// group: one reservation finds the gate closed, and each waiter is
    /// told until when.
    #[tokio::test]
    async fn a_published_throttle_reaches_every_waiter_of_a_group() {
        use crate::store::postgres::test_db::TestDb;
        let Some(db) = TestDb::create("a_throttle_reaches_every_waiter").await else {
            return;
        };
        let (publisher, shared) = (
            SharedGate::new(db.pool.clone()),
            SharedGate::new(db.pool.clone()),
        );
        let relay = gate(50.0, 5).with_shared(Some(shared.clone()));
        let now = Millis::now();
        let until = now.plus(Duration::from_secs(30));
        publisher.throttle(until).await.unwrap();
        // Eight requests asking at once, on this one-thread runtime: all
        // of them are queued before the reservation runs.
        let answers = futures_util::future::join_all((0..8).map(|_| relay.acquire(now))).await;
        assert_eq!(answers, vec![Err(Closed::Throttled(until)); 8]);
        assert_eq!(shared.reservations_made(), 1, "one group");
        assert_eq!(relay.throttled_until(now), Some(until), "adopted");
        drop(relay);
        db.drop_db().await;
    }

    /// A pause adopted from another relay never shortens a longer one this
    /// relay knows of, and a longer one extends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_adopted_throttle_only_ever_extends() {
        use crate::store::postgres::test_db::TestDb;
        let Some(db) = TestDb::create("an_adopted_throttle_extends").await else {
            return;
        };
        let shared = SharedGate::new(db.pool.clone());
        let other = gate(50.0, 5).with_shared(Some(shared.clone()));
        let now = Millis::now();
        let (short, long, longer) = (
            now.plus(Duration::from_secs(5)),
            now.plus(Duration::from_secs(60)),
            now.plus(Duration::from_secs(90)),
        );
        shared.throttle(long).await.unwrap();
        other.refresh(now).await;
        assert_eq!(other.throttled_until(now), Some(long));
        // The shared row keeps the longest pause; the relay's own shorter
        // news would not shorten it either.
        shared.throttle(short).await.unwrap();
        other.refresh(now).await;
        assert_eq!(other.throttled_until(now), Some(long));
        // While throttled the poller refreshes before each round.
        shared.throttle(longer).await.unwrap();
        other.refresh(now).await;
        assert_eq!(other.throttled_until(now), Some(longer));
        assert_eq!(other.acquire(now).await, Err(Closed::Throttled(longer)));
        assert_eq!(
            shared.pauses(longer).await.unwrap().throttled_until,
            None,
            "over at its end"
        );
        drop(other);
        db.drop_db().await;
    }
}
