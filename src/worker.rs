//! What the two background workers (poller, delivery) share: the
//! lease-worker loop itself (`run_lease_loop`, `lease_step`) over the
//! `LeaseWorker` hooks each implements, the leases a process holds, and a
//! shutdown that waits a bounded grace for work in flight.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::{Lease, Millis};
use crate::store::StoreError;

/// The tasks a worker runs: each records its own result and may fail only
/// on the store.
pub type Tasks = JoinSet<Result<(), StoreError>>;

/// The result of a finished task, as the worker's error type. A task that
/// panicked is logged and otherwise ignored: its claim's lease expires and
/// the work is done again.
pub fn settle<E: From<StoreError>>(
    joined: Result<Result<(), StoreError>, JoinError>,
) -> Result<(), E> {
    match joined {
        Ok(result) => result.map_err(E::from),
        Err(err) => {
            warn!(error = %err, "worker task failed");
            Ok(())
        }
    }
}

/// Waits for every task in `tasks` (a worker's step); after all of them
/// have finished, the last failure if there was one.
pub async fn settle_all<E: From<StoreError>>(tasks: &mut Tasks) -> Result<(), E> {
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = settle::<E>(joined) {
            failure = Some(err);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The time of a step as its tasks see it: the `now` the step was given,
/// advanced by the real time elapsed since. In production `now` is the wall
/// clock and this is the wall clock; a test that hands a step a future
/// `now` sees its results scheduled from that future consistently.
#[derive(Debug, Clone, Copy)]
pub struct StepClock {
    base: Millis,
    started: tokio::time::Instant,
}

impl StepClock {
    /// A clock reading `base` now.
    pub fn starting_at(base: Millis) -> Self {
        Self {
            base,
            started: tokio::time::Instant::now(),
        }
    }

    /// The step's time now.
    pub fn now(&self) -> Millis {
        self.base.plus(self.started.elapsed())
    }
}

/// Longest a worker loop goes without a heartbeat while it waits by design
/// (idle, for slots, for the end of a throttle).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// When a worker loop last came round: the systemd watchdog is pinged only
/// while every worker's heartbeat is fresh, so a loop that hangs (or died)
/// stops the pings and systemd restarts the relay. Loops beat on every
/// iteration, and their waits are bounded by [`HEARTBEAT_INTERVAL`].
#[derive(Debug)]
pub struct Heartbeat {
    origin: tokio::time::Instant,
    /// Milliseconds from `origin` to the last beat.
    last: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// The loop is alive now.
    pub fn beat(&self) {
        let elapsed = self.origin.elapsed().as_millis() as u64;
        self.last.fetch_max(elapsed, Ordering::Relaxed);
    }

    /// Time since the last beat (since creation, before the first).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// Slots for a claim: waits for at least `min` (one at the least) free
/// slots of `in_flight`, then takes every other free one, up to `max`.
/// Taking slots before claiming means a claimed item never waits for one.
/// Waiting for slots is waiting for tasks that have their own timeouts,
/// so it beats `heartbeat` while it waits.
pub async fn acquire_slots(
    in_flight: &Arc<Semaphore>,
    min: usize,
    max: usize,
    heartbeat: &Heartbeat,
) -> Vec<OwnedSemaphorePermit> {
    let mut permits = Vec::with_capacity(min);
    while permits.len() < min.max(1) {
        let acquire = in_flight.clone().acquire_owned();
        tokio::pin!(acquire);
        let permit = loop {
            heartbeat.beat();
            if let Ok(permit) = tokio::time::timeout(HEARTBEAT_INTERVAL, &mut acquire).await {
                break permit.expect("the in-flight semaphore is never closed");
            }
        };
        permits.push(permit);
    }
    while permits.len() < max {
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => permits.push(permit),
            Err(_) => break,
        }
    }
    permits
}

/// Cancels `stopping` as soon as `shutdown` is cancelled, so tasks that
/// only see `stopping` hear about the shutdown too.
pub fn link_stopping(shutdown: &CancellationToken, stopping: &CancellationToken) {
    let (shutdown, stopping) = (shutdown.clone(), stopping.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopping.cancel();
    });
}

/// After shutdown: gives the `tasks` still running `grace` to finish, then
/// aborts the rest. Returns whether all finished in time.
pub async fn drain_within_grace(
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
    grace: Duration,
) -> bool {
    let drain = async { while tasks.join_next().await.is_some() {} };
    let finished = step_within_grace(drain, shutdown, grace).await.is_some();
    tasks.abort_all();
    finished
}

/// The leases this process holds (row id → lease), so that on shutdown it
/// can hand back exactly its own unfinished claims, never another
/// process's.
#[derive(Debug, Default)]
pub struct HeldLeases(Mutex<HashMap<i64, Lease>>);

impl HeldLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Row `id` is claimed under `lease`.
    pub fn hold(&self, id: i64, lease: Lease) {
        self.lock().insert(id, lease);
    }

    /// Row `id`'s claim is settled (recorded or handed back).
    pub fn settle(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Every claim still held, emptying the set.
    pub fn take_all(&self) -> Vec<(i64, Lease)> {
        self.lock().drain().collect()
    }
}

/// Awaits `step`. If `shutdown` fires while it runs, the step gets `grace`
/// more to finish; past that it is dropped (aborting its tasks) and this
/// returns `None`.
pub async fn step_within_grace<T>(
    step: impl Future<Output = T>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Option<T> {
    tokio::pin!(step);
    tokio::select! {
        result = &mut step => Some(result),
        _ = shutdown.cancelled() => tokio::time::timeout(grace, step).await.ok(),
    }
}

/// Longest idle wait between looks for due work: an enqueue or a new
/// delivery also ends the wait, but a look at least this often bounds what
/// a missed wake-up can cost.
pub const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);

/// What the loop does after a step, as the worker reads its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Work was claimed: claim again at once (slots permitting).
    Again,
    /// Nothing was due: wait until the next item is due, at most
    /// [`MAX_IDLE_WAIT`].
    Idle,
    /// The worker cannot send now (the poller's pause or throttle): wait
    /// this long (or for a wake-up, or a task to finish).
    Wait(Duration),
}

/// What a worker's wake-up signal said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WakeUp {
    /// New work may be due: look now.
    Now,
    /// New work is due at this time: wait no longer than until then.
    At(Millis),
    /// Nothing to act on (the news was already taken): wait on.
    Nothing,
}

/// The log lines that name the worker in the shared loop.
#[derive(Debug)]
pub(crate) struct LoopTexts {
    pub started: &'static str,
    pub stopped: &'static str,
    /// A task failed to record its result.
    pub task_failed: &'static str,
    /// A step failed (claim or probe).
    pub step_failed: &'static str,
    /// Tasks still running when the grace ended.
    pub abandoned: &'static str,
    pub handed_back: &'static str,
    pub hand_back_failed: &'static str,
}

/// A worker that claims due items under leases and works each in its own
/// task: the poller and the delivery worker. [`run_lease_loop`] and
/// [`lease_step`] are the loop and the step both share; the trait holds
/// only what differs between them, so that shutdown, hand-back, heartbeats
/// and the wait between steps are written (and fixed) once.
pub(crate) trait LeaseWorker: Sync {
    /// One claimed item.
    type Item: Send + 'static;
    /// What one step did.
    type Outcome: Send;
    /// A step failure (only the store fails a step).
    type Error: From<StoreError> + std::fmt::Display + Send;

    /// Most items claimed at once.
    const MAX_CLAIM: usize;
    /// The loop's log lines.
    const TEXTS: LoopTexts;

    /// Bounds the tasks in flight; one slot per claimed item.
    fn in_flight(&self) -> &Arc<Semaphore>;
    /// Beaten by the loop (see [`Heartbeat`]).
    fn heartbeat(&self) -> &Heartbeat;
    /// Claims not yet settled, handed back on shutdown.
    fn held(&self) -> &HeldLeases;
    /// Cancelled when shutdown begins, so that claimed items not yet sent
    /// are handed back instead of worked.
    fn stopping(&self) -> &CancellationToken;
    /// How long shutdown waits for tasks in flight.
    fn shutdown_grace(&self) -> Duration;

    /// Before any slot is taken or claim made: `Some` ends the step with
    /// that outcome (the poller's pause, probe and throttle).
    fn before_claim(
        &self,
        now: Millis,
    ) -> impl Future<Output = Result<Option<Self::Outcome>, Self::Error>> + Send;
    /// Claims up to `limit` items due at `now`.
    fn claim(
        &self,
        now: Millis,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Self::Item>, StoreError>> + Send;
    /// The row id and lease of a claimed item.
    fn lease_of(item: &Self::Item) -> (i64, Lease);
    /// The task that works one claimed item, holding `permit` until done.
    fn work(
        &self,
        item: Self::Item,
        permit: OwnedSemaphorePermit,
        clock: StepClock,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;
    /// The outcome of a step that claimed `count` items.
    fn worked(count: usize) -> Self::Outcome;
    /// The outcome of a step that found nothing due.
    fn idle() -> Self::Outcome;
    /// What the loop does after `outcome`.
    fn pace(&self, outcome: &Self::Outcome) -> Pace;
    /// When the next item is due, if any (for the idle wait).
    fn next_due(&self) -> impl Future<Output = Option<Millis>> + Send;
    /// Waits for the worker's wake-up signal.
    fn wake_up(&self) -> impl Future<Output = WakeUp> + Send;
    /// Hands back `held` claims, due at `now`.
    fn hand_back(
        &self,
        held: Vec<(i64, Lease)>,
        now: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One round of `worker`: claim what is due at `now` (as many as there are
/// free slots), work each, wait for every task.
pub(crate) async fn lease_step<W: LeaseWorker>(
    worker: &W,
    now: Millis,
) -> Result<W::Outcome, W::Error> {
    let mut tasks = JoinSet::new();
    let outcome = dispatch(worker, now, &mut tasks, 1).await?;
    settle_all::<W::Error>(&mut tasks).await?;
    Ok(outcome)
}

/// Claims what is due at `now` and starts its tasks in `tasks` without
/// waiting for them: at least `min_batch` free slots are awaited first (so
/// a busy worker claims in batches, not one by one), then every free slot
/// is used.
async fn dispatch<W: LeaseWorker>(
    worker: &W,
    now: Millis,
    tasks: &mut Tasks,
    min_batch: usize,
) -> Result<W::Outcome, W::Error> {
    // The clock starts now: waiting for slots below must not make the
    // claim's lease or the results' times lag behind real time.
    let clock = StepClock::starting_at(now);
    if let Some(outcome) = worker.before_claim(now).await? {
        return Ok(outcome);
    }
    // Slots first, then claims: a claimed item never waits for a slot, so
    // its lease only has to cover the item's own work.
    let permits = acquire_slots(
        worker.in_flight(),
        min_batch,
        W::MAX_CLAIM,
        worker.heartbeat(),
    )
    .await;
    let claimed = worker.claim(clock.now(), permits.len()).await?;
    if claimed.is_empty() {
        return Ok(W::idle());
    }
    let count = claimed.len();
    for item in &claimed {
        let (id, lease) = W::lease_of(item);
        worker.held().hold(id, lease);
    }
    for (item, permit) in claimed.into_iter().zip(permits) {
        tasks.spawn(worker.work(item, permit, clock));
    }
    Ok(W::worked(count))
}

/// Logs a finished task's failure: its lease expires and the item is
/// worked again.
fn reap<W: LeaseWorker>(joined: Result<Result<(), StoreError>, JoinError>) {
    if let Err(err) = settle::<W::Error>(joined) {
        warn!(error = %err, "{}", W::TEXTS.task_failed);
    }
}

/// Runs `worker` until `shutdown`. Tasks run continuously: a new claim is
/// made as soon as a quarter of the slots are free, not when a whole round
/// has finished, so one slow item never holds up the others. Between
/// claims the loop waits (as [`LeaseWorker::pace`] says) until a task
/// finishes, a wake-up, or the wait ends, beating the heartbeat at least
/// every [`HEARTBEAT_INTERVAL`].
///
/// On shutdown no new claim is made, claimed items not yet sent are handed
/// back by their tasks, tasks in flight get the worker's shutdown grace to
/// finish, and whatever is still held after that is handed back due now,
/// so the next start takes it at once.
pub(crate) async fn run_lease_loop<W: LeaseWorker>(worker: &W, shutdown: CancellationToken) {
    let texts = &W::TEXTS;
    info!("{}", texts.started);
    link_stopping(&shutdown, worker.stopping());
    // Every slot is free when the loop starts.
    let min_batch = (worker.in_flight().available_permits() / 4).max(1);
    let mut tasks = JoinSet::new();
    while !shutdown.is_cancelled() {
        worker.heartbeat().beat();
        while let Some(joined) = tasks.try_join_next() {
            reap::<W>(joined);
        }
        let batch = if tasks.is_empty() { 1 } else { min_batch };
        let dispatched = tokio::select! {
            _ = shutdown.cancelled() => break,
            dispatched = dispatch(worker, Millis::now(), &mut tasks, batch) => dispatched,
        };
        let wait = match dispatched.map(|outcome| worker.pace(&outcome)) {
            Ok(Pace::Again) => continue,
            Ok(Pace::Idle) => idle_wait(worker).await,
            Ok(Pace::Wait(wait)) => wait,
            Err(err) => {
                warn!(error = %err, "{}", texts.step_failed);
                MAX_IDLE_WAIT
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            worker.heartbeat().beat();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut sleep => break,
                woken = worker.wake_up() => match woken {
                    WakeUp::Now => break,
                    WakeUp::Nothing => continue,
                    // Wait on for new work that is not due yet, just no
                    // longer than until it is.
                    WakeUp::At(due) => {
                        let until_due = due.0.saturating_sub(Millis::now().0);
                        if until_due <= 0 {
                            break;
                        }
                        let due_at = tokio::time::Instant::now()
                            + Duration::from_millis(until_due as u64);
                        if due_at < sleep.deadline() {
                            sleep.as_mut().reset(due_at);
                        }
                    }
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    reap::<W>(joined);
                    break;
                }
            }
        }
    }
    let grace = worker.shutdown_grace();
    if !drain_within_grace(&mut tasks, &shutdown, grace).await {
        warn!(grace = ?grace, "{}", texts.abandoned);
    }
    let held = worker.held().take_all();
    let count = held.len();
    match worker.hand_back(held, Millis::now()).await {
        Ok(()) if count > 0 => info!(count, "{}", texts.handed_back),
        Ok(()) => {}
        Err(err) => warn!(error = %err, "{}", texts.hand_back_failed),
    }
    info!("{}", texts.stopped);
}

/// How long to wait when nothing is due: until the next item is due, at
/// most [`MAX_IDLE_WAIT`] (so new work is seen promptly).
async fn idle_wait<W: LeaseWorker>(worker: &W) -> Duration {
    match worker.next_due().await {
        Some(Millis(at)) => Duration::from_millis((at - Millis::now().0).clamp(1, 1000) as u64),
        None => MAX_IDLE_WAIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_gets_the_grace_and_no_more() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let quick = step_within_grace(
            tokio::time::sleep(Duration::from_secs(5)),
            &shutdown,
            Duration::from_secs(10),
        );
        assert_eq!(quick.await, Some(()));
        let slow = step_within_grace(
            tokio::time::sleep(Duration::from_secs(60)),
            &shutdown,
            Duration::from_secs(10),
        );
        assert_eq!(slow.await, None);
    }

    #[test]
    fn held_leases_are_settled_or_taken() {
        let held = HeldLeases::default();
        let lease = |until| Lease {
            until: Millis(until),
        };
        held.hold(1, lease(100));
        held.hold(2, lease(200));
        held.settle(1);
        assert_eq!(held.take_all(), [(2, lease(200))]);
        assert!(held.take_all().is_empty());
    }
    /// A worker whose items never finish: only the shared loop's shutdown
    /// can settle them.
    struct Stuck {
        in_flight: Arc<Semaphore>,
        heartbeat: Heartbeat,
        held: HeldLeases,
        stopping: CancellationToken,
        due: Mutex<Vec<i64>>,
        new_work: tokio::sync::Notify,
        /// What `hand_back` was given, and when.
        handed_back: Mutex<Vec<(i64, Lease, Millis)>>,
    }

    impl LeaseWorker for Stuck {
        type Item = (i64, Lease);
        type Outcome = usize;
        type Error = StoreError;
        const MAX_CLAIM: usize = 8;
        const TEXTS: LoopTexts = LoopTexts {
            started: "started",
            stopped: "stopped",
            task_failed: "task failed",
            step_failed: "step failed",
            abandoned: "abandoned",
            handed_back: "handed back",
            hand_back_failed: "hand back failed",
        };
        fn in_flight(&self) -> &Arc<Semaphore> {
            &self.in_flight
        }
        fn heartbeat(&self) -> &Heartbeat {
            &self.heartbeat
        }
        fn held(&self) -> &HeldLeases {
            &self.held
        }
        fn stopping(&self) -> &CancellationToken {
            &self.stopping
        }
        fn shutdown_grace(&self) -> Duration {
            Duration::from_secs(10)
        }
        async fn before_claim(&self, _now: Millis) -> Result<Option<usize>, StoreError> {
            Ok(None)
        }
        async fn claim(&self, now: Millis, limit: usize) -> Result<Vec<(i64, Lease)>, StoreError> {
            let mut due = self.due.lock().unwrap();
            let take = due.len().min(limit);
            let lease = Lease {
                until: now.plus(Duration::from_secs(60)),
            };
            Ok(due.drain(..take).map(|id| (id, lease)).collect())
        }
        fn lease_of(item: &(i64, Lease)) -> (i64, Lease) {
            *item
        }
        fn work(
            &self,
            _item: (i64, Lease),
            permit: OwnedSemaphorePermit,
            _clock: StepClock,
        ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
            never_finishes(permit)
        }
        fn worked(count: usize) -> usize {
            count
        }
        fn idle() -> usize {
            0
        }
        fn pace(&self, outcome: &usize) -> Pace {
            if *outcome > 0 {
                Pace::Again
            } else {
                Pace::Idle
            }
        }
        async fn next_due(&self) -> Option<Millis> {
            None
        }
        async fn wake_up(&self) -> WakeUp {
            self.new_work.notified().await;
            WakeUp::Now
        }
        async fn hand_back(&self, held: Vec<(i64, Lease)>, now: Millis) -> Result<(), StoreError> {
            let mut handed_back = self.handed_back.lock().unwrap();
            handed_back.extend(held.into_iter().map(|(id, lease)| (id, lease, now)));
            Ok(())
        }
    }

    /// A task that outlives any grace, holding its slot.
    async fn never_finishes(_permit: OwnedSemaphorePermit) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_claims_on_wake_up_and_hands_back_what_outlives_the_grace() {
        let worker = Arc::new(Stuck {
            in_flight: Arc::new(Semaphore::new(4)),
            heartbeat: Heartbeat::default(),
            held: HeldLeases::default(),
            stopping: CancellationToken::new(),
            due: Mutex::new(Vec::new()),
            new_work: tokio::sync::Notify::new(),
            handed_back: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let running = tokio::spawn({
            let (worker, shutdown) = (worker.clone(), shutdown.clone());
            async move { run_lease_loop(&*worker, shutdown).await }
        });
        // Idle: nothing due. Work queued and announced is claimed at once,
        // well before the idle wait would have ended.
        tokio::time::sleep(Duration::from_millis(10)).await;
        worker.due.lock().unwrap().extend([1, 2, 3]);
        worker.new_work.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(worker.due.lock().unwrap().is_empty());
        assert_eq!(worker.in_flight.available_permits(), 1);

        // Stuck tasks get the grace, then their leases come back due now.
        let stopped_at = tokio::time::Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), running)
            .await
            .expect("the loop stops after the grace")
            .unwrap();
        assert_eq!(stopped_at.elapsed(), Duration::from_secs(10));
        assert!(worker.stopping.is_cancelled());
        let mut handed_back = worker.handed_back.lock().unwrap().clone();
        handed_back.sort_by_key(|(id, ..)| *id);
        assert_eq!(
            handed_back.iter().map(|(id, ..)| *id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(worker.held.take_all().is_empty());
        assert_eq!(worker.in_flight.available_permits(), 4);
    }
}
