//! Shared-budget reservations grouped, the way the writer groups commits.
//!
//! Every request a relay sends on PostgreSQL reserves its slot in the one
//! `upstream_gate` row. One transaction per request costs a round trip and
//! a row lock per request, which caps a busy relay (the server's CPU goes
//! to the gate). So the requests asking for a slot while a reservation is
//! in flight wait for it to finish and then share the next one: a single
//! statement reserves as many consecutive slots as there are waiters
//! ([`SharedGate::reserve`]), each waiter getting the slot it would have
//! got alone, back to back. One waiter is one slot, asked for at once: a
//! quiet relay waits no longer than before; a busy one sends one
//! statement for many requests.
//!
//! Slots are reserved only for the waiters still there when the statement
//! is sent: a slot held for later is a burst later. A waiter that gives
//! up afterwards leaves its slot unused, which only spends less than the
//! budget.
//!
//! The reservations run in a task of their own, started when the first
//! waiter arrives and ended when nobody waits, so a waiter that is
//! dropped (its poll cancelled at shutdown) never strands the others.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::domain::Millis;
use crate::store::{Reservation, SharedGate, StoreError};

/// One waiter's share of a group's reservation.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// Send at `at`; sent after `due` (the slot's GCRA arrival time), the
    /// request would move the slots after it.
    SendAt {
        /// When to send.
        at: Instant,
        /// The latest time that keeps the schedule.
        due: Instant,
    },
    /// JoggAI throttled some relay: nothing is sent before this time.
    Throttled(Millis),
    /// JoggAI refuses the key or the account (the reason as stored), the
    /// next probe due at this time.
    Refused(String, Millis),
    /// The database did not answer the reservation.
    Unreachable(Arc<StoreError>),
}

/// A request waiting for its slot.
#[derive(Debug)]
struct Waiter {
    /// The step clock's time when it asked (pauses are judged by it).
    now: Millis,
    reply: oneshot::Sender<Slot>,
}

/// The waiters of the next group, and whether a reservation is running.
#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiter>,
    reserving: bool,
}

/// The grouped reservations of one relay's gate.
#[derive(Debug)]
pub(super) struct SlotGroups {
    shared: SharedGate,
    interval: Duration,
    tolerance: Duration,
    queue: Mutex<Queue>,
}

impl SlotGroups {
    /// Groups of slots on `shared`, one request per `interval` with bursts
    /// within `tolerance`.
    pub(super) fn new(shared: SharedGate, interval: Duration, tolerance: Duration) -> Self {
        Self {
            shared,
            interval,
            tolerance,
            queue: Mutex::new(Queue::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for one request asked for at step time `now`: reserved at
    /// once when no reservation is running, else in the next group.
    pub(super) async fn slot(self: &Arc<Self>, now: Millis) -> Slot {
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.lock();
            queue.waiting.push(Waiter { now, reply });
            if !queue.reserving {
                queue.reserving = true;
                tokio::spawn(Arc::clone(self).reserve_groups());
            }
        }
        // The task ends only with an empty queue, having answered every
        // waiter; a reply dropped unanswered means it died (a panic).
        answer.await.unwrap_or_else(|_| {
            Slot::Unreachable(Arc::new(StoreError::Unavailable(
                "the shared gate's reservations stopped".into(),
            )))
        })
    }

    /// Reserves group after group until nobody waits.
    async fn reserve_groups(self: Arc<Self>) {
        let mut running = Running {
            queue: &self.queue,
            done: false,
        };
        loop {
            let group: Vec<Waiter> = {
                let mut queue = self.lock();
                // Slots only for those still waiting.
                queue.waiting.retain(|waiter| !waiter.reply.is_closed());
                if queue.waiting.is_empty() {
                    queue.reserving = false;
                    running.done = true;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            self.reserve(group).await;
        }
    }

    /// One statement for the whole group; every waiter gets its answer.
    async fn reserve(&self, group: Vec<Waiter>) {
        // A pause in force at any waiter's time holds for the group: the
        // earliest time is the one most likely to be paused.
        let now = group
            .iter()
            .map(|waiter| waiter.now)
            .min()
            .unwrap_or(Millis(0));
        let slots = u32::try_from(group.len()).unwrap_or(u32::MAX);
        let reserved = self
            .shared
            .reserve(now, self.interval, self.tolerance, slots)
            .await;
        let answered = Instant::now();
        match reserved {
            Ok(Reservation::Granted { slots }) => {
                for (waiter, slot) in group.into_iter().zip(slots) {
                    let _ = waiter.reply.send(Slot::SendAt {
                        at: answered + slot.wait,
                        due: answered + slot.due,
                    });
                }
            }
            Ok(Reservation::Throttled { until }) => answer_all(group, Slot::Throttled(until)),
            Ok(Reservation::Refused {
                reason,
                next_probe_at,
            }) => answer_all(group, Slot::Refused(reason, next_probe_at)),
            Err(err) => answer_all(group, Slot::Unreachable(Arc::new(err))),
        }
    }
}

/// Gives every waiter of `group` the same answer.
fn answer_all(group: Vec<Waiter>, slot: Slot) {
    for waiter in group {
        let _ = waiter.reply.send(slot.clone());
    }
}

/// Clears the running flag should the reservation task end abnormally
/// (a panic), dropping the queued replies so that their waiters hear of
/// it instead of waiting for ever, and the next request starts afresh.
struct Running<'a> {
    queue: &'a Mutex<Queue>,
    /// Set when the task ends normally, the flag cleared with the queue
    /// found empty (under the same lock).
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.reserving = false;
        queue.waiting.clear();
    }
}
