//! The read queries of [`Store`](crate::store::Store) in PostgreSQL's
//! dialect: the same arguments and results as the store's methods (which
//! add the health bookkeeping around them).
//!
//! PostgreSQL has no index hints: the partial indexes the SQLite queries
//! name with `INDEXED BY` are chosen here by the planner, because each
//! `WHERE` repeats the index's predicate and each `ORDER BY` its columns.

use sqlx::PgPool;
use tracing::instrument;

use crate::domain::{Millis, VideoId, VideoState};
use crate::store::records::{
    DeliveryRecord, FinishedRender, TrackedRender, TransitionRecord, VideoDetails, VideoRecord,
};
use crate::store::{Gauges, StoreError};

/// The columns of [`VideoRecord`], shared by every query that reads one.
macro_rules! video_columns {
    () => {
        "id, video_id, state, upstream_status, video_url, cover_url, created_at, duration, \
         error_code, error_message, callback_url, metadata, enqueued_at, updated_at, \
         next_poll_at, polls, reason, event_id"
    };
}

/// The most overdue active video's due time: the first entry of the
/// partial index `videos_due`. (An active video always has one; the
/// column is read as nullable all the same, so a row broken by hand reads
/// as "nothing due" rather than failing the caller.)
const FIRST_POLL_DUE: &str = "SELECT next_poll_at FROM videos \
     WHERE state = 'active' ORDER BY next_poll_at LIMIT 1";

/// The most overdue pending delivery's due time: the first entry of the
/// partial index `deliveries_due`.
const FIRST_DELIVERY_DUE: &str = "SELECT next_attempt_at FROM deliveries \
     WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1";

/// Videos per state, and how late the most overdue poll and delivery are
/// at `now` (seconds, 0 when nothing is overdue).
///
/// The count may be an index-only scan of `videos_state_order` once the
/// table is vacuumed; the lags read the first entry of the due indexes.
pub(crate) async fn gauges(pool: &PgPool, now: Millis) -> Result<Gauges, StoreError> {
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM videos GROUP BY state")
            .fetch_all(pool)
            .await?;
    let oldest_poll: Option<Option<i64>> = sqlx::query_scalar(FIRST_POLL_DUE)
        .fetch_optional(pool)
        .await?;
    let oldest_delivery: Option<Option<i64>> = sqlx::query_scalar(FIRST_DELIVERY_DUE)
        .fetch_optional(pool)
        .await?;
    let lag = |due: Option<i64>| due.map_or(0.0, |at| ((now.0 - at).max(0) as f64) / 1000.0);
    Ok(Gauges {
        videos: counts
            .into_iter()
            .filter_map(|(state, n)| Some((state.parse().ok()?, u64::try_from(n).ok()?)))
            .collect(),
        poll_lag_seconds: lag(oldest_poll.flatten()),
        delivery_lag_seconds: lag(oldest_delivery.flatten()),
    })
}

/// When the next active video is due for a poll (`None`: none is active).
pub(crate) async fn next_poll_due(pool: &PgPool) -> Result<Option<Millis>, StoreError> {
    let next: Option<Option<i64>> = sqlx::query_scalar(FIRST_POLL_DUE)
        .fetch_optional(pool)
        .await?;
    Ok(next.flatten().map(Millis))
}

/// When the next pending delivery is due (`None`: none is pending).
pub(crate) async fn next_delivery_due(pool: &PgPool) -> Result<Option<Millis>, StoreError> {
    let next: Option<Option<i64>> = sqlx::query_scalar(FIRST_DELIVERY_DUE)
        .fetch_optional(pool)
        .await?;
    Ok(next.flatten().map(Millis))
}

/// One video with its transitions and deliveries, or `None`.
#[instrument(skip(pool), level = "debug")]
pub(crate) async fn video_details(
    pool: &PgPool,
    video_id: &VideoId,
) -> Result<Option<VideoDetails>, StoreError> {
    let Some(video) = sqlx::query_as::<_, VideoRecord>(concat!(
        "SELECT ",
        video_columns!(),
        " FROM videos WHERE video_id = $1"
    ))
    .bind(video_id.as_str())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let transitions = sqlx::query_as::<_, TransitionRecord>(
        "SELECT kind, from_value, to_value, at FROM transitions \
         WHERE video_rowid = $1 ORDER BY id",
    )
    .bind(video.id)
    .fetch_all(pool)
    .await?;
    let deliveries = sqlx::query_as::<_, DeliveryRecord>(
        "SELECT url, event_id, state, attempts, last_status, last_error, reason, \
                next_attempt_at \
         FROM deliveries WHERE video_rowid = $1 ORDER BY id",
    )
    .bind(video.id)
    .fetch_all(pool)
    .await?;
    Ok(Some(VideoDetails {
        video,
        transitions,
        deliveries,
    }))
}

/// A page of videos in id order, starting after row `after`, of one state
/// when `state` is given (served by `videos_state_order`).
#[instrument(skip(pool), level = "debug")]
pub(crate) async fn list_videos(
    pool: &PgPool,
    state: Option<VideoState>,
    after: i64,
    limit: u32,
) -> Result<Vec<VideoRecord>, StoreError> {
    let rows = match state {
        Some(state) => {
            sqlx::query_as::<_, VideoRecord>(concat!(
                "SELECT ",
                video_columns!(),
                " FROM videos WHERE state = $1 AND id > $2 ORDER BY id LIMIT $3"
            ))
            .bind(state.as_str())
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query_as::<_, VideoRecord>(concat!(
                "SELECT ",
                video_columns!(),
                " FROM videos WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows)
}

/// Finished renders (videos JoggAI reported completed or failed), in the
/// order they finished, starting after `after` (`terminal_at`, id), at
/// most `limit`. The `WHERE` repeats the predicate of the partial index
/// `videos_finished` (`terminal_at`, `id`), whose scan starts at the
/// cursor.
#[instrument(skip(pool), level = "debug")]
pub(crate) async fn finished_renders(
    pool: &PgPool,
    after: Option<(i64, i64)>,
    limit: u32,
) -> Result<Vec<FinishedRender>, StoreError> {
    let (at, id) = after.unwrap_or((i64::MIN, i64::MIN));
    Ok(sqlx::query_as::<_, FinishedRender>(
        "SELECT id, video_id, state, enqueued_at, created_at, unfinished_seen_at, \
                rendering_seen_at, terminal_at \
         FROM videos WHERE state IN ('completed', 'failed') \
           AND (terminal_at, id) > ($1, $2) ORDER BY terminal_at, id LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// The newest `count` videos (by id, whatever their state), oldest first.
#[instrument(skip(pool), level = "debug")]
pub(crate) async fn newest_renders(
    pool: &PgPool,
    count: u32,
) -> Result<Vec<TrackedRender>, StoreError> {
    let mut rows = sqlx::query_as::<_, TrackedRender>(
        "SELECT id, state, enqueued_at, created_at, unfinished_seen_at, rendering_seen_at, \
                terminal_at FROM videos ORDER BY id DESC LIMIT $1",
    )
    .bind(i64::from(count))
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(rows)
}
