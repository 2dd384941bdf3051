//! What the two background workers (poller, delivery) share: the leases a
//! process holds, and a shutdown that waits a bounded grace for work in
//! flight.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
}
