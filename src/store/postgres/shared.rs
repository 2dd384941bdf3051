//! What several relays on one PostgreSQL database share beyond the queue:
//! the upstream gate's row (`upstream_gate`: the budget and the global
//! pauses) and the wake-up notifications the triggers of
//! `migrations/postgres/0002_shared_gate.sql` send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tracing::instrument;

use super::{ANSWER_LIMIT, CONNECT_LIMIT, answered_within, on_pooled};
use crate::domain::Millis;
use crate::store::StoreError;

/// The notification channel announcing videos due for a poll (payload:
/// the earliest due time, in milliseconds).
pub const VIDEOS_CHANNEL: &str = "jogg_relay_videos";

/// The notification channel announcing queued callbacks.
pub const DELIVERIES_CHANNEL: &str = "jogg_relay_deliveries";

/// The answer to a reservation of one or more upstream requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The slots are reserved, one per slot asked for, in slot order.
    Granted {
        /// The slots' times.
        slots: Vec<GrantedSlot>,
    },
    /// JoggAI throttled some relay: nothing is sent before `until`.
    Throttled {
        /// When sending may resume.
        until: Millis,
    },
    /// JoggAI refuses the key or the account: only probes go out.
    Refused {
        /// The refusal, as `PauseReason::as_str` spells it.
        reason: String,
        /// When the next probe may go out.
        next_probe_at: Millis,
    },
}

/// One reserved request slot, timed from the reservation on the
/// database's clock (so relays with different clocks agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantedSlot {
    /// How long to wait before sending.
    pub wait: Duration,
    /// How long until the slot's theoretical arrival time (the GCRA's, no
    /// earlier than the reservation): a request sent by then leaves the
    /// slots after it where they are; sent later, it reaches JoggAI closer
    /// to them than the budget allows.
    pub due: Duration,
}

/// The shared pause state, as read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SharedPauses {
    /// A 429 pause that may still last.
    pub throttled_until: Option<Millis>,
    /// A refusal, with when the next probe may go out.
    pub refused: Option<(String, Millis)>,
}

/// Handle on the shared gate row (cheap to clone: a pool handle).
#[derive(Debug, Clone)]
pub struct SharedGate {
    pool: PgPool,
    /// Reservation statements sent through this handle and its clones.
    reservations: Arc<AtomicU64>,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl SharedGate {
    /// The gate of the database behind `pool`.
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            reservations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many reservation statements ([`SharedGate::reserve`]) this
    /// handle and its clones have sent: with requests grouped, fewer than
    /// the requests they reserved for.
    pub fn reservations_made(&self) -> u64 {
        self.reservations.load(Ordering::Relaxed)
    }

    /// Reserves the next `slots` request slots of the global budget (GCRA
    /// with one request per `interval` and bursts within `tolerance`),
    /// unless the gate is closed at `now`. The first request after a 429
    /// pause starts from an empty bucket, as the single-relay gate does.
    ///
    /// The slots are consecutive: the row's theoretical arrival time moves
    /// on by `slots` intervals, and slot `i` waits exactly what the `i`-th
    /// of `slots` single reservations made back to back would wait. So
    /// one statement serves a group of requests without changing their
    /// schedule.
    ///
    /// One statement: the row lock orders every relay's reservations, and
    /// the database's clock times them.
    #[instrument(skip(self), level = "debug")]
    pub async fn reserve(
        &self,
        now: Millis,
        interval: Duration,
        tolerance: Duration,
        slots: u32,
    ) -> Result<Reservation, StoreError> {
        self.reservations.fetch_add(1, Ordering::Relaxed);
        // What the first slot's wait would be without the floor at zero
        // (the new arrival time, less the slots taken, less the tolerance,
        // less the clock); negative while the bucket has room.
        let reserve = sqlx::query_scalar::<_, i64>(
            "WITH clock AS ( \
               SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us) \
             UPDATE upstream_gate SET \
               tat_us = CASE WHEN throttled_until IS NOT NULL THEN clock.now_us + $2 \
                             ELSE GREATEST(tat_us, clock.now_us) END + $1 * $4, \
               throttled_until = NULL \
             FROM clock \
             WHERE id = 1 AND refused_reason IS NULL \
               AND (throttled_until IS NULL OR throttled_until <= $3) \
             RETURNING tat_us - $1 * $4 - $2 - clock.now_us",
        )
        .bind(micros(interval))
        .bind(micros(tolerance))
        .bind(now.0)
        .bind(i64::from(slots));
        let first: Option<i64> = on_pooled(&self.pool, move |conn| {
            Box::pin(async move { Ok(reserve.fetch_optional(conn).await?) })
        })
        .await?;
        if let Some(first) = first {
            let (interval, tolerance) = (micros(interval), micros(tolerance));
            let from_now = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
            let slots = (0..i64::from(slots))
                .map(|slot| {
                    let wait = first.saturating_add(interval.saturating_mul(slot));
                    GrantedSlot {
                        wait: from_now(wait),
                        due: from_now(wait.saturating_add(tolerance)),
                    }
                })
                .collect();
            return Ok(Reservation::Granted { slots });
        }
        let pauses = self.pauses(now).await?;
        Ok(match (pauses.refused, pauses.throttled_until) {
            (Some((reason, next_probe_at)), _) => Reservation::Refused {
                reason,
                next_probe_at,
            },
            (None, Some(until)) => Reservation::Throttled { until },
            // Closed a moment ago, open now: the caller tries again.
            (None, None) => Reservation::Throttled { until: now },
        })
    }

    /// The pauses in force at `now`.
    #[instrument(skip(self), level = "debug")]
    pub async fn pauses(&self, now: Millis) -> Result<SharedPauses, StoreError> {
        let read = sqlx::query_as::<_, (Option<i64>, Option<String>, Option<i64>)>(
            "SELECT throttled_until, refused_reason, next_probe_at \
                 FROM upstream_gate WHERE id = 1",
        );
        let (throttled_until, reason, next_probe_at) = on_pooled(&self.pool, move |conn| {
            Box::pin(async move { Ok(read.fetch_one(conn).await?) })
        })
        .await?;
        Ok(SharedPauses {
            throttled_until: throttled_until.filter(|until| *until > now.0).map(Millis),
            refused: reason.map(|reason| (reason, Millis(next_probe_at.unwrap_or(now.0)))),
        })
    }

    /// Every relay stops sending until `until` (a later pause already in
    /// force stays).
    #[instrument(skip(self), level = "debug")]
    pub async fn throttle(&self, until: Millis) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE upstream_gate SET throttled_until = GREATEST(COALESCE(throttled_until, $1), $1) \
             WHERE id = 1",
        )
        .bind(until.0)
        ;
        on_pooled(&self.pool, move |conn| {
            Box::pin(async move { Ok(update.execute(conn).await?) })
        })
        .await?;
        Ok(())
    }

    /// Every relay stops sending but probes, for `reason`; the next probe
    /// may go out at `next_probe_at`.
    #[instrument(skip(self), level = "debug")]
    pub async fn refuse(&self, reason: &str, next_probe_at: Millis) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE upstream_gate SET refused_reason = $1, next_probe_at = $2 WHERE id = 1",
        )
        .bind(reason.to_owned())
        .bind(next_probe_at.0);
        on_pooled(&self.pool, move |conn| {
            Box::pin(async move { Ok(update.execute(conn).await?) })
        })
        .await?;
        Ok(())
    }

    /// Takes the probe due at `now` for this relay, moving the next one to
    /// `next_probe_at`: of several relays, one probes. False when no probe
    /// is due (another relay took it) or the refusal is over.
    #[instrument(skip(self), level = "debug")]
    pub async fn take_probe(&self, now: Millis, next_probe_at: Millis) -> Result<bool, StoreError> {
        let taken = sqlx::query(
            "UPDATE upstream_gate SET next_probe_at = $2 \
             WHERE id = 1 AND refused_reason IS NOT NULL \
               AND COALESCE(next_probe_at, 0) <= $1",
        )
        .bind(now.0)
        .bind(next_probe_at.0);
        let taken = on_pooled(&self.pool, move |conn| {
            Box::pin(async move { Ok(taken.execute(conn).await?) })
        })
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// A probe succeeded: every relay sends again.
    #[instrument(skip(self), level = "debug")]
    pub async fn resume(&self) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE upstream_gate SET refused_reason = NULL, next_probe_at = NULL WHERE id = 1",
        );
        on_pooled(&self.pool, move |conn| {
            Box::pin(async move { Ok(update.execute(conn).await?) })
        })
        .await?;
        Ok(())
    }

    /// A listener on both wake-up channels, on a connection of its own:
    /// a pool of one made for it, so that a listener given up on (its
    /// server fell silent) takes no place in a pool other work needs
    /// while its connection waits for the kernel to give up on it.
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_LIMIT)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut listener = PgListener::connect_with(&own).await?;
        answered_within(ANSWER_LIMIT, async {
            Ok(listener
                .listen_all([VIDEOS_CHANNEL, DELIVERIES_CHANNEL])
                .await?)
        })
        .await?;
        Ok(listener)
    }
}

/// Whether `listener`'s connection still answers (a round trip, within
/// the store's answer limit). Notifications that arrive meanwhile are kept
/// for the listener's next receive.
pub async fn still_there(listener: &mut PgListener) -> Result<(), StoreError> {
    answered_within(ANSWER_LIMIT, async {
        sqlx::query("SELECT 1").execute(&mut *listener).await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VideoId;
    use crate::store::postgres::mutations::insert_videos;
    use crate::store::postgres::test_db::TestDb;
    use crate::store::records::NewVideo;
    use crate::worker::MAX_IDLE_WAIT;

    const SECOND: Duration = Duration::from_secs(1);

    /// The slots of a granted reservation (panics otherwise).
    fn granted_slots(reservation: Reservation) -> Vec<GrantedSlot> {
        match reservation {
            Reservation::Granted { slots } => slots,
            other => panic!("not granted: {other:?}"),
        }
    }

    /// The wait of a granted reservation of one slot (panics otherwise).
    fn granted(reservation: Reservation) -> Duration {
        match granted_slots(reservation).as_slice() {
            [slot] => slot.wait,
            slots => panic!("one slot asked for, {} granted", slots.len()),
        }
    }

    /// Whether `wait` is `expected`, less the little time the reservations
    /// themselves took (the database's clock runs on between them).
    fn about(wait: Duration, expected: Duration) -> bool {
        wait <= expected && expected - wait < Duration::from_millis(500)
    }

    /// Back-to-back reservations are spaced one interval apart once the
    /// burst (the tolerance) is spent, as GCRA spaces them: with 10 s per
    /// request and a burst of 3, three go at once, then one every 10 s.
    #[tokio::test]
    async fn reservations_follow_the_budget() {
        let Some(db) = TestDb::create("reservations_follow_the_budget").await else {
            return;
        };
        let gate = SharedGate::new(db.pool.clone());
        let now = Millis::now();
        let interval = 10 * SECOND;
        let tolerance = 2 * interval;
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(granted(
                gate.reserve(now, interval, tolerance, 1).await.unwrap(),
            ));
        }
        let expected = [0, 0, 0, 10, 20].map(|s| s * SECOND);
        for (wait, expected) in waits.iter().zip(expected) {
            assert!(about(*wait, expected), "{waits:?}");
        }
        db.drop_db().await;
    }

    /// One statement reserving several slots gives each the wait the same
    /// number of single reservations back to back would give it (the
    /// schedule `reservations_follow_the_budget` checks), and the row
    /// moves on by as many intervals: the next single reservation comes
    /// after them. Each slot is due at its GCRA arrival time, one interval
    /// after the one before (a burst's slots are sent at once but due one
    /// after the other). Slots after a 429 pause start from an empty
    /// bucket.
    #[tokio::test]
    async fn a_group_of_slots_is_the_same_schedule_as_single_reservations() {
        let Some(db) = TestDb::create("a_group_of_slots_is_the_same_schedule").await else {
            return;
        };
        let gate = SharedGate::new(db.pool.clone());
        let now = Millis::now();
        let interval = 10 * SECOND;
        let tolerance = 2 * interval;
        let group = granted_slots(gate.reserve(now, interval, tolerance, 4).await.unwrap());
        let next = granted_slots(gate.reserve(now, interval, tolerance, 1).await.unwrap());
        let slots: Vec<GrantedSlot> = group.into_iter().chain(next).collect();
        let expected = [(0, 0), (0, 10), (0, 20), (10, 30), (20, 40)]
            .map(|(wait, due)| (wait * SECOND, due * SECOND));
        assert_eq!(slots.len(), expected.len(), "{slots:?}");
        for (slot, (wait, due)) in slots.iter().zip(expected) {
            assert!(about(slot.wait, wait) && about(slot.due, due), "{slots:?}");
        }
        assert_eq!(gate.reservations_made(), 2, "one statement per call");

        // After a pause: the first slot at once, then one per interval.
        let later = Millis(now.0 + 60_000);
        gate.throttle(later).await.unwrap();
        let after = granted_slots(gate.reserve(later, interval, tolerance, 3).await.unwrap());
        let expected =
            [(0, 20), (10, 30), (20, 40)].map(|(wait, due)| (wait * SECOND, due * SECOND));
        assert_eq!(after.len(), expected.len(), "{after:?}");
        for (slot, (wait, due)) in after.iter().zip(expected) {
            assert!(about(slot.wait, wait) && about(slot.due, due), "{after:?}");
        }
        db.drop_db().await;
    }

    /// A 429 published by one relay closes the gate for every relay until
    /// it ends (a longer pause is never shortened); the first reservation
    /// after it starts from an empty bucket, so the catch-up is no burst.
    #[tokio::test]
    async fn a_throttle_closes_the_gate_until_it_ends_then_no_burst() {
        let Some(db) = TestDb::create("a_throttle_closes_the_gate").await else {
            return;
        };
        let (one, other) = (
            SharedGate::new(db.pool.clone()),
            SharedGate::new(db.pool.clone()),
        );
        let now = Millis(1_900_000_000_000);
        let until = now.plus(30 * SECOND);
        one.throttle(until).await.unwrap();
        one.throttle(now.plus(SECOND)).await.unwrap();
        let (interval, tolerance) = (10 * SECOND, 20 * SECOND);
        assert_eq!(
            other.reserve(now, interval, tolerance, 1).await.unwrap(),
            Reservation::Throttled { until }
        );
        assert_eq!(
            other.pauses(now).await.unwrap().throttled_until,
            Some(until)
        );
        // Over: granted at once, and the next waits a whole interval
        // although the burst would have allowed three at once.
        let first = granted(other.reserve(until, interval, tolerance, 1).await.unwrap());
        let second = granted(one.reserve(until, interval, tolerance, 1).await.unwrap());
        assert!(about(first, Duration::ZERO), "{first:?}");
        assert!(about(second, interval), "{second:?}");
        assert_eq!(one.pauses(until).await.unwrap(), SharedPauses::default());
        db.drop_db().await;
    }

    /// A refusal closes the gate for every relay; of two relays asking for
    /// the probe that is due, one gets it, and nobody before the next probe
    /// time it set; a successful probe reopens the gate for all.
    #[tokio::test]
    async fn a_refusal_lets_one_relay_probe_at_a_time() {
        let Some(db) = TestDb::create("a_refusal_lets_one_relay_probe").await else {
            return;
        };
        let (one, other) = (
            SharedGate::new(db.pool.clone()),
            SharedGate::new(db.pool.clone()),
        );
        let now = Millis(1_900_000_000_000);
        let first_probe = now.plus(SECOND);
        one.refuse("insufficient_credit", first_probe)
            .await
            .unwrap();
        assert_eq!(
            other.reserve(now, SECOND, SECOND, 1).await.unwrap(),
            Reservation::Refused {
                reason: "insufficient_credit".into(),
                next_probe_at: first_probe,
            }
        );
        assert!(
            !other.take_probe(now, now.plus(5 * SECOND)).await.unwrap(),
            "not due yet"
        );
        let later = now.plus(2 * SECOND);
        let next_probe = later.plus(2 * SECOND);
        let (a, b) = tokio::join!(
            one.take_probe(later, next_probe),
            other.take_probe(later, next_probe)
        );
        assert!(a.unwrap() ^ b.unwrap(), "exactly one relay probes");
        assert_eq!(
            one.pauses(later).await.unwrap().refused,
            Some(("insufficient_credit".into(), next_probe))
        );
        one.resume().await.unwrap();
        granted(other.reserve(later, SECOND, SECOND, 1).await.unwrap());
        assert!(
            !one.take_probe(next_probe, next_probe).await.unwrap(),
            "nothing to probe"
        );
        db.drop_db().await;
    }

    /// Every relay's enqueues of work due within an idle look
    /// ([`MAX_IDLE_WAIT`] after their enqueue; announced by the writer's
    /// statements) and its pushes (a trigger) are
    /// announced on the videos channel with the earliest due time, and
    /// queued callbacks on the deliveries channel. Work due later, which an
    /// idle relay finds by looking before it is due, and a claim, which
    /// changes nothing anybody waits for, announce nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_work_is_announced_to_listeners() {
        let Some(db) = TestDb::create("new_work_is_announced").await else {
            return;
        };
        let gate = SharedGate::new(db.pool.clone());
        let mut listener = gate.listen().await.unwrap();
        // Bounded: a notification that never comes fails the test.
        macro_rules! next {
            () => {
                tokio::time::timeout(Duration::from_secs(10), listener.recv())
                    .await
                    .expect("a notification within 10 s")
                    .unwrap()
            };
        }
        let horizon = i64::try_from(MAX_IDLE_WAIT.as_millis()).unwrap();
        let mut conn = db.pool.acquire().await.unwrap();
        // Enqueues as the writer stores them: (id, first poll) at `now`.
        async fn enqueue(conn: &mut sqlx::PgConnection, videos: &[(&str, i64)], now: i64) {
            let videos: Vec<NewVideo> = videos
                .iter()
                .map(|(id, due)| NewVideo {
                    video_id: VideoId::parse(id).unwrap(),
                    callback_url: None,
                    metadata: None,
                    first_poll_at: Millis(*due),
                })
                .collect();
            let videos: Vec<&NewVideo> = videos.iter().collect();
            insert_videos(conn, &videos, Millis(now)).await.unwrap();
        }
        // Due just beyond the horizon: found by looking, not announced.
        enqueue(&mut conn, &[("late", 1_000 + horizon + 1)], 1_000).await;
        enqueue(&mut conn, &[("a", 7_000), ("b", 1_500)], 1_000).await;
        // The first notification is this one: the enqueue before it sent none.
        let note = next!();
        assert_eq!((note.channel(), note.payload()), (VIDEOS_CHANNEL, "1500"));
        // Repeated: nothing stored, nothing announced.
        enqueue(&mut conn, &[("b", 1_000)], 1_000).await;
        // Due exactly at the horizon: announced (and the next notification).
        enqueue(&mut conn, &[("edge", 2_000 + horizon)], 2_000).await;
        let note = next!();
        assert_eq!(
            (note.channel(), note.payload()),
            (VIDEOS_CHANNEL, (2_000 + horizon).to_string().as_str())
        );
        drop(conn);
        // A claim-like update of the due time: nothing.
        sqlx::query("UPDATE videos SET next_poll_at = 9000, lease_until = 9000")
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE videos SET hinted_at = 3, next_poll_at = 3000 WHERE video_id = 'a'")
            .execute(&db.pool)
            .await
            .unwrap();
        let note = next!();
        assert_eq!((note.channel(), note.payload()), (VIDEOS_CHANNEL, "3000"));
        sqlx::query(
            "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) \
             SELECT id, 'e', 'http://127.0.0.1:9/', 1, 1, 1 FROM videos WHERE video_id = 'a'",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let note = next!();
        assert_eq!(note.channel(), DELIVERIES_CHANNEL);
        drop(listener);
        db.drop_db().await;
    }
}
