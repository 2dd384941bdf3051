//! What several relays on one PostgreSQL database share beyond the queue:
//! the upstream gate's row (`upstream_gate`: the budget and the global
//! pauses) and the wake-up notifications the triggers of
//! `migrations/postgres/0002_shared_gate.sql` send.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tracing::instrument;

use crate::domain::Millis;
use crate::store::StoreError;

/// The notification channel announcing videos due for a poll (payload:
/// the earliest due time, in milliseconds).
pub const VIDEOS_CHANNEL: &str = "jogg_relay_videos";

/// The notification channel announcing queued callbacks.
pub const DELIVERIES_CHANNEL: &str = "jogg_relay_deliveries";

/// The answer to a reservation of one upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved: send after this wait (measured on the
    /// database's clock, so relays with different clocks agree).
    Granted {
        /// How long to wait before sending.
        wait: Duration,
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
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl SharedGate {
    /// The gate of the database behind `pool`.
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Reserves the next request slot of the global budget (GCRA with one
    /// request per `interval` and bursts within `tolerance`), unless the
    /// gate is closed at `now`. The first request after a 429 pause starts
    /// from an empty bucket, as the single-relay gate does.
    ///
    /// One statement: the row lock orders every relay's reservations, and
    /// the database's clock times them.
    #[instrument(skip(self), level = "debug")]
    pub async fn reserve(
        &self,
        now: Millis,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Reservation, StoreError> {
        let granted: Option<i64> = sqlx::query_scalar(
            "WITH clock AS ( \
               SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us) \
             UPDATE upstream_gate SET \
               tat_us = CASE WHEN throttled_until IS NOT NULL THEN clock.now_us + $2 \
                             ELSE GREATEST(tat_us, clock.now_us) END + $1, \
               throttled_until = NULL \
             FROM clock \
             WHERE id = 1 AND refused_reason IS NULL \
               AND (throttled_until IS NULL OR throttled_until <= $3) \
             RETURNING GREATEST(0, tat_us - $1 - $2 - clock.now_us)",
        )
        .bind(micros(interval))
        .bind(micros(tolerance))
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(wait_us) = granted {
            return Ok(Reservation::Granted {
                wait: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            });
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
        let (throttled_until, reason, next_probe_at): (Option<i64>, Option<String>, Option<i64>) =
            sqlx::query_as(
                "SELECT throttled_until, refused_reason, next_probe_at \
                 FROM upstream_gate WHERE id = 1",
            )
            .fetch_one(&self.pool)
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
        sqlx::query(
            "UPDATE upstream_gate SET throttled_until = GREATEST(COALESCE(throttled_until, $1), $1) \
             WHERE id = 1",
        )
        .bind(until.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every relay stops sending but probes, for `reason`; the next probe
    /// may go out at `next_probe_at`.
    #[instrument(skip(self), level = "debug")]
    pub async fn refuse(&self, reason: &str, next_probe_at: Millis) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE upstream_gate SET refused_reason = $1, next_probe_at = $2 WHERE id = 1",
        )
        .bind(reason)
        .bind(next_probe_at.0)
        .execute(&self.pool)
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
        .bind(next_probe_at.0)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// A probe succeeded: every relay sends again.
    #[instrument(skip(self), level = "debug")]
    pub async fn resume(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE upstream_gate SET refused_reason = NULL, next_probe_at = NULL WHERE id = 1",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A listener on both wake-up channels.
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([VIDEOS_CHANNEL, DELIVERIES_CHANNEL])
            .await?;
        Ok(listener)
    }
}
