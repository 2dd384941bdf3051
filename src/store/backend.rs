//! The storage seam: what the rest of the store needs from a database
//! engine, as a few traits with one implementation per engine
//! (`store::sqlite`, `store::postgres`).
//!
//! - [`Dialect`]: the engine's sqlx driver, how a write transaction opens,
//!   and which failures belong to one request rather than to the database.
//! - [`VideoQueue`] and [`Outbox`]: every write, each applied inside a
//!   transaction its caller owns (the group-commit writer, which stays the
//!   same code for both engines).
//! - [`Reads`]: what the API, the CLI, the metrics and the workers' idle
//!   waits read, outside any write transaction.
//!
//! The write traits are implemented on unit types (`Sqlite`, `Postgres`)
//! and take the connection as an argument, so that the writer can hand
//! them the transaction it holds. Both engines must honour the same
//! contract; the integration tests' store contract suite runs against
//! each. ARCHITECTURE.md lists the invariants they keep.

use std::future::Future;

use super::Gauges;
use super::StoreError;
use super::records::{
    CancelOutcome, DeadDelivery, DeliveryAttemptRecord, DeliveryCounts, EnqueueOutcome,
    FinishedRender, HintOutcome, HourlyOutcomes, NewVideo, PollingRecord, PushHint,
    RecentTransition, RedeliverOutcome, TrackedRender, VideoDetails, VideoRecord,
};
use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryRelease};
use crate::domain::poll::{ClaimedVideo, PollUpdate, Ranker, Release};
use crate::domain::{Millis, VideoId, VideoState};

/// The connection type of dialect `D` (what a transaction derefs to).
pub(crate) type Conn<D> = <<D as Dialect>::Db as sqlx::Database>::Connection;

/// An engine's driver and the few facts about it the writer needs.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The sqlx driver.
    type Db: sqlx::Database;

    /// The statement that opens a write transaction. SQLite's must take
    /// the write lock at once (`BEGIN IMMEDIATE`), or a read-then-write
    /// transaction could fail half-way with `SQLITE_BUSY`.
    const BEGIN: &'static str;

    /// Whether `err` concerns only the request that caused it (a
    /// constraint, a value that does not decode), so that the other
    /// requests of its batch are retried alone rather than all refused.
    fn is_request_specific(err: &StoreError) -> bool;
}

/// The video queue's writes: enqueues, cancels, claims with leases, poll
/// results, pushes' hints and leases handed back.
pub(crate) trait VideoQueue: Dialect {
    /// Inserts `videos`; per video, in order, whether it was created, was
    /// tracked already with the same fields, or conflicts.
    fn insert_videos(
        conn: &mut Conn<Self>,
        videos: &[&NewVideo],
        now: Millis,
    ) -> impl Future<Output = Result<Vec<EnqueueOutcome>, StoreError>> + Send;

    /// Stops tracking an active video.
    fn cancel_video(
        conn: &mut Conn<Self>,
        video_id: &VideoId,
        now: Millis,
    ) -> impl Future<Output = Result<CancelOutcome, StoreError>> + Send;

    /// Leases until `lease_until` up to `limit` due videos with a pending
    /// push, the most overdue first.
    fn claim_hinted(
        conn: &mut Conn<Self>,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ClaimedVideo>, StoreError>> + Send;

    /// Leases until `lease_until` up to `limit` due videos, the most
    /// overdue first.
    fn claim_due(
        conn: &mut Conn<Self>,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ClaimedVideo>, StoreError>> + Send;

    /// Leases until `lease_until` the `limit` best-ranked of the most
    /// overdue due videos.
    fn claim_due_ranked(
        conn: &mut Conn<Self>,
        now: Millis,
        lease_until: Millis,
        limit: u32,
        rank: &Ranker,
    ) -> impl Future<Output = Result<Vec<ClaimedVideo>, StoreError>> + Send;

    /// Applies poll results, each only if its lease still holds; per
    /// update, whether it was applied. A terminal result's state,
    /// transitions and outbox rows are written together.
    fn record_polls(
        conn: &mut Conn<Self>,
        updates: &[&PollUpdate],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;

    /// Turns a verified push into a hint (or an adoption).
    fn hint(
        conn: &mut Conn<Self>,
        hint: &PushHint,
    ) -> impl Future<Output = Result<HintOutcome, StoreError>> + Send;

    /// Hands a lease back, with the video's new due time.
    fn release(
        conn: &mut Conn<Self>,
        release: &Release,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The outbox's writes: delivery claims, attempts, releases, redeliveries,
/// and the readiness probe's row.
pub(crate) trait Outbox: Dialect {
    /// Leases up to `limit` due pending deliveries until `lease_until`.
    fn claim_deliveries(
        conn: &mut Conn<Self>,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ClaimedDelivery>, StoreError>> + Send;

    /// Records one attempt if its lease still holds; whether it did.
    fn record_attempt(
        conn: &mut Conn<Self>,
        attempt: &AttemptRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Hands a delivery's lease back, with its new due time.
    fn release_delivery(
        conn: &mut Conn<Self>,
        release: &DeliveryRelease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Queues a terminal video's callbacks again.
    fn redeliver(
        conn: &mut Conn<Self>,
        video_id: &VideoId,
        configured: &[String],
        now: Millis,
    ) -> impl Future<Output = Result<RedeliverOutcome, StoreError>> + Send;

    /// Writes the readiness probe's row: a commit that changes a page.
    fn touch_probe(
        conn: &mut Conn<Self>,
        now: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The reads, each on a pooled connection outside any write transaction.
pub(crate) trait Reads: Send + Sync {
    /// Videos per state and the poll and delivery lags at `now`.
    fn gauges(&self, now: Millis) -> impl Future<Output = Result<Gauges, StoreError>> + Send;

    /// When the next active video is due for a poll.
    fn next_poll_due(&self) -> impl Future<Output = Result<Option<Millis>, StoreError>> + Send;

    /// When the next pending delivery is due.
    fn next_delivery_due(&self) -> impl Future<Output = Result<Option<Millis>, StoreError>> + Send;

    /// One video with its transitions and deliveries.
    fn video_details(
        &self,
        video_id: &VideoId,
    ) -> impl Future<Output = Result<Option<VideoDetails>, StoreError>> + Send;

    /// A page of videos in insertion order after row `after`.
    fn list_videos(
        &self,
        state: Option<VideoState>,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<VideoRecord>, StoreError>> + Send;

    /// A page of videos newest first before row `before`, optionally of
    /// one state, whose id starts with `prefix`.
    fn browse_videos(
        &self,
        state: Option<VideoState>,
        prefix: &str,
        before: Option<i64>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<VideoRecord>, StoreError>> + Send;

    /// Every delivery attempt of one video, in the order made.
    fn delivery_attempts(
        &self,
        video_rowid: i64,
    ) -> impl Future<Output = Result<Vec<DeliveryAttemptRecord>, StoreError>> + Send;

    /// Finished renders in the order they finished, after a cursor.
    fn finished_renders(
        &self,
        after: Option<(i64, i64)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<FinishedRender>, StoreError>> + Send;

    /// The newest `count` videos, oldest first.
    fn newest_renders(
        &self,
        count: u32,
    ) -> impl Future<Output = Result<Vec<TrackedRender>, StoreError>> + Send;

    /// Callback deliveries per state.
    fn delivery_counts(&self) -> impl Future<Output = Result<DeliveryCounts, StoreError>> + Send;

    /// The newest `limit` transitions of any video, newest first.
    fn recent_transitions(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<RecentTransition>, StoreError>> + Send;

    /// A page of dead deliveries, newest death first, before the
    /// (`died_at`, delivery row id) cursor `before`.
    fn dead_deliveries(
        &self,
        before: Option<(i64, i64)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadDelivery>, StoreError>> + Send;

    /// What is stored of one video's polling, by row id.
    fn polling(
        &self,
        video_rowid: i64,
    ) -> impl Future<Output = Result<Option<PollingRecord>, StoreError>> + Send;

    /// Terminal transitions (to `completed`, to `failed`) counted per hour
    /// since `since`, oldest hour first, empty hours left out.
    fn hourly_outcomes(
        &self,
        since: Millis,
    ) -> impl Future<Output = Result<Vec<HourlyOutcomes>, StoreError>> + Send;

    /// Closes the pool.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Leases up to `limit` videos until `lease_until`, on either engine: those
/// with a pending push first, then the rest by `rank` when one is given,
/// else most overdue first. Claimed rows are due only at `lease_until` now
/// (the transaction sees its own writes), so the second query cannot take
/// them twice.
pub(crate) async fn claim<D: VideoQueue>(
    conn: &mut Conn<D>,
    now: Millis,
    lease_until: Millis,
    limit: u32,
    rank: Option<&Ranker>,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let mut claimed = D::claim_hinted(conn, now, lease_until, limit).await?;
    let rest = limit.saturating_sub(claimed.len() as u32);
    if rest > 0 {
        claimed.extend(match rank {
            Some(rank) => D::claim_due_ranked(conn, now, lease_until, rest, rank).await?,
            None => D::claim_due(conn, now, lease_until, rest).await?,
        });
    }
    Ok(claimed)
}

/// Implements [`VideoQueue`] and [`Outbox`] for the dialect `$engine` by
/// handing each call to the function of the same name in its module
/// `$mutations`, whose signatures mirror the traits' (with the engine's
/// connection type).
macro_rules! delegate_writes {
    ($engine:ty, $mutations:ident) => {
        impl $crate::store::backend::VideoQueue for $engine {
            async fn insert_videos(
                conn: &mut $crate::store::backend::Conn<Self>,
                videos: &[&$crate::store::records::NewVideo],
                now: $crate::domain::Millis,
            ) -> Result<Vec<$crate::store::records::EnqueueOutcome>, $crate::store::StoreError>
            {
                $mutations::insert_videos(conn, videos, now).await
            }

            async fn cancel_video(
                conn: &mut $crate::store::backend::Conn<Self>,
                video_id: &$crate::domain::VideoId,
                now: $crate::domain::Millis,
            ) -> Result<$crate::store::records::CancelOutcome, $crate::store::StoreError> {
                $mutations::cancel_video(conn, video_id, now).await
            }

            async fn claim_hinted(
                conn: &mut $crate::store::backend::Conn<Self>,
                now: $crate::domain::Millis,
                lease_until: $crate::domain::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::domain::poll::ClaimedVideo>, $crate::store::StoreError> {
                $mutations::claim_hinted(conn, now, lease_until, limit).await
            }

            async fn claim_due(
                conn: &mut $crate::store::backend::Conn<Self>,
                now: $crate::domain::Millis,
                lease_until: $crate::domain::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::domain::poll::ClaimedVideo>, $crate::store::StoreError> {
                $mutations::claim_due(conn, now, lease_until, limit).await
            }

            async fn claim_due_ranked(
                conn: &mut $crate::store::backend::Conn<Self>,
                now: $crate::domain::Millis,
                lease_until: $crate::domain::Millis,
                limit: u32,
                rank: &$crate::domain::poll::Ranker,
            ) -> Result<Vec<$crate::domain::poll::ClaimedVideo>, $crate::store::StoreError> {
                $mutations::claim_due_ranked(conn, now, lease_until, limit, rank).await
            }

            async fn record_polls(
                conn: &mut $crate::store::backend::Conn<Self>,
                updates: &[&$crate::domain::poll::PollUpdate],
            ) -> Result<Vec<bool>, $crate::store::StoreError> {
                $mutations::record_polls(conn, updates).await
            }

            async fn hint(
                conn: &mut $crate::store::backend::Conn<Self>,
                hint: &$crate::store::records::PushHint,
            ) -> Result<$crate::store::records::HintOutcome, $crate::store::StoreError> {
                $mutations::hint(conn, hint).await
            }

            async fn release(
                conn: &mut $crate::store::backend::Conn<Self>,
                release: &$crate::domain::poll::Release,
            ) -> Result<(), $crate::store::StoreError> {
                $mutations::release(conn, release).await
            }
        }

        impl $crate::store::backend::Outbox for $engine {
            async fn claim_deliveries(
                conn: &mut $crate::store::backend::Conn<Self>,
                now: $crate::domain::Millis,
                lease_until: $crate::domain::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::domain::delivery::ClaimedDelivery>, $crate::store::StoreError>
            {
                $mutations::claim_deliveries(conn, now, lease_until, limit).await
            }

            async fn record_attempt(
                conn: &mut $crate::store::backend::Conn<Self>,
                attempt: &$crate::domain::delivery::AttemptRecord,
            ) -> Result<bool, $crate::store::StoreError> {
                $mutations::record_attempt(conn, attempt).await
            }

            async fn release_delivery(
                conn: &mut $crate::store::backend::Conn<Self>,
                release: &$crate::domain::delivery::DeliveryRelease,
            ) -> Result<(), $crate::store::StoreError> {
                $mutations::release_delivery(conn, release).await
            }

            async fn redeliver(
                conn: &mut $crate::store::backend::Conn<Self>,
                video_id: &$crate::domain::VideoId,
                configured: &[String],
                now: $crate::domain::Millis,
            ) -> Result<$crate::store::records::RedeliverOutcome, $crate::store::StoreError> {
                $mutations::redeliver(conn, video_id, configured, now).await
            }

            async fn touch_probe(
                conn: &mut $crate::store::backend::Conn<Self>,
                now: $crate::domain::Millis,
            ) -> Result<(), $crate::store::StoreError> {
                $mutations::touch_probe(conn, now).await
            }
        }
    };
}
pub(crate) use delegate_writes;
