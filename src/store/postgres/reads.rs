//! The read queries of [`Store`](crate::store::Store) in PostgreSQL's
//! dialect: the same arguments and results as the store's methods (which
//! add the health bookkeeping around them).
//!
//! PostgreSQL has no index hints: the partial indexes the SQLite queries
//! name with `INDEXED BY` are chosen here by the planner, because each
//! `WHERE` repeats the index's predicate and each `ORDER BY` its columns.

use sqlx::PgConnection;
use tracing::instrument;

use crate::domain::{Millis, VideoId, VideoState};
use crate::store::records::{
    DeadDelivery, DeliveryAttemptRecord, DeliveryCounts, DeliveryRecord, FinishedRender,
    HourlyOutcomes, PollingRecord, RecentTransition, TrackedRender, TransitionRecord, VideoDetails,
    VideoRecord,
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

/// Videos per state (in the order of the states' names, as SQLite's
/// grouping returns them), and how late the most overdue poll and delivery are
/// at `now` (seconds, 0 when nothing is overdue).
///
/// The count may be an index-only scan of `videos_state_order` once the
/// table is vacuumed; the lags read the first entry of the due indexes.
pub(crate) async fn gauges(conn: &mut PgConnection, now: Millis) -> Result<Gauges, StoreError> {
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM videos GROUP BY state ORDER BY state")
            .fetch_all(&mut *conn)
            .await?;
    let oldest_poll: Option<Option<i64>> = sqlx::query_scalar(FIRST_POLL_DUE)
        .fetch_optional(&mut *conn)
        .await?;
    let oldest_delivery: Option<Option<i64>> = sqlx::query_scalar(FIRST_DELIVERY_DUE)
        .fetch_optional(&mut *conn)
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
pub(crate) async fn next_poll_due(conn: &mut PgConnection) -> Result<Option<Millis>, StoreError> {
    let next: Option<Option<i64>> = sqlx::query_scalar(FIRST_POLL_DUE)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(next.flatten().map(Millis))
}

/// When the next pending delivery is due (`None`: none is pending).
pub(crate) async fn next_delivery_due(
    conn: &mut PgConnection,
) -> Result<Option<Millis>, StoreError> {
    let next: Option<Option<i64>> = sqlx::query_scalar(FIRST_DELIVERY_DUE)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(next.flatten().map(Millis))
}

/// One video with its transitions and deliveries, or `None`.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn video_details(
    conn: &mut PgConnection,
    video_id: &VideoId,
) -> Result<Option<VideoDetails>, StoreError> {
    let Some(video) = sqlx::query_as::<_, VideoRecord>(concat!(
        "SELECT ",
        video_columns!(),
        " FROM videos WHERE video_id = $1"
    ))
    .bind(video_id.as_str())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let transitions = sqlx::query_as::<_, TransitionRecord>(
        "SELECT kind, from_value, to_value, at FROM transitions \
         WHERE video_rowid = $1 ORDER BY id",
    )
    .bind(video.id)
    .fetch_all(&mut *conn)
    .await?;
    let deliveries = sqlx::query_as::<_, DeliveryRecord>(
        "SELECT url, event_id, state, attempts, last_status, last_error, reason, \
                next_attempt_at \
         FROM deliveries WHERE video_rowid = $1 ORDER BY id",
    )
    .bind(video.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(VideoDetails {
        video,
        transitions,
        deliveries,
    }))
}

/// A page of videos in id order, starting after row `after`, of one state
/// when `state` is given (served by `videos_state_order`).
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn list_videos(
    conn: &mut PgConnection,
    state: Option<VideoState>,
    after: i64,
    limit: u32,
) -> Result<Vec<VideoRecord>, StoreError> {
    let horizon = settled_horizon(conn).await?;
    let rows = match state {
        Some(state) => {
            sqlx::query_as::<_, VideoRecord>(concat!(
                "SELECT ",
                video_columns!(),
                " FROM videos WHERE state = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4"
            ))
            .bind(state.as_str())
            .bind(after)
            .bind(horizon)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query_as::<_, VideoRecord>(concat!(
                "SELECT ",
                video_columns!(),
                " FROM videos WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
            ))
            .bind(after)
            .bind(horizon)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?
        }
    };
    Ok(rows)
}

/// The key of the advisory lock that every INSERT into `videos` holds
/// shared from before it draws a row id until it commits (the trigger of
/// `migrations/postgres/0007_inserts_ordered_for_list_pages.sql`, which
/// names the same number: the bytes of "joggvids").
const VIDEO_INSERTS_LOCK: i64 = i64::from_be_bytes(*b"joggvids");

/// How long a page waits for the inserts in flight to commit before it is
/// refused (`55P03`, storage busy). They take milliseconds; a transaction
/// left open by a frozen relay would otherwise hold the page, and every
/// insert queued behind its request, for as long as it stays open.
const HORIZON_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";

/// The highest row id up to which every row of `videos` is settled: no
/// row with an id at or below it can still appear.
///
/// Ids are drawn when an INSERT runs and rows appear when it commits, so
/// with several relays inserting, id 7 can appear after id 8 was listed,
/// and a cursor past 8 would never show it. Taking the inserts' advisory
/// lock exclusively waits for the inserts in flight and holds new ones
/// back for the two statements below; once it is granted, every id drawn
/// so far belongs to a finished transaction, and later ones will be
/// higher than the highest id seen here. A page listed up to it then
/// skips nothing a later page could not show.
#[instrument(skip(conn), level = "debug")]
async fn settled_horizon(conn: &mut PgConnection) -> Result<i64, StoreError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query(HORIZON_LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(VIDEO_INSERTS_LOCK)
        .execute(&mut *tx)
        .await?;
    // A statement of its own: its snapshot is taken after the lock was
    // granted, so it sees every insert that held the lock before.
    let horizon: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM videos")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(horizon)
}

/// A page of videos newest first (id descending) before row `before`, of
/// one state when `state` is given, whose id starts with `prefix` (compared
/// as text: `_` and `%` are no wildcards).
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn browse_videos(
    conn: &mut PgConnection,
    state: Option<VideoState>,
    prefix: &str,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<VideoRecord>, StoreError> {
    // The first page starts at the settled horizon: a row above it may
    // still have a lower neighbour in flight, which would then appear
    // inside the walk, above its cursor, and be skipped.
    let before = match before {
        Some(before) => before,
        None => settled_horizon(conn).await?.saturating_add(1),
    };
    Ok(sqlx::query_as::<_, VideoRecord>(concat!(
        "SELECT ",
        video_columns!(),
        " FROM videos WHERE ($1::text IS NULL OR state = $1) \
         AND left(video_id, length($2::text)) = $2 AND id < $3 ORDER BY id DESC LIMIT $4"
    ))
    .bind(state.map(VideoState::as_str))
    .bind(prefix)
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?)
}

/// Every delivery attempt of the video with row id `video_rowid`, in the
/// order made.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn delivery_attempts(
    conn: &mut PgConnection,
    video_rowid: i64,
) -> Result<Vec<DeliveryAttemptRecord>, StoreError> {
    Ok(sqlx::query_as::<_, DeliveryAttemptRecord>(
        "SELECT d.url, a.at, a.status, a.error \
         FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
         WHERE d.video_rowid = $1 ORDER BY a.id",
    )
    .bind(video_rowid)
    .fetch_all(&mut *conn)
    .await?)
}

/// Finished renders (videos JoggAI reported completed or failed), in the
/// order they finished, starting after `after` (`terminal_at`, id), at
/// most `limit`. The `WHERE` repeats the predicate of the partial index
/// `videos_finished` (`terminal_at`, `id`), whose scan starts at the
/// cursor.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn finished_renders(
    conn: &mut PgConnection,
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
    .fetch_all(&mut *conn)
    .await?)
}

/// The newest `count` videos (by id, whatever their state), oldest first.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn newest_renders(
    conn: &mut PgConnection,
    count: u32,
) -> Result<Vec<TrackedRender>, StoreError> {
    let mut rows = sqlx::query_as::<_, TrackedRender>(
        "SELECT id, state, enqueued_at, created_at, unfinished_seen_at, rendering_seen_at, \
                terminal_at FROM videos ORDER BY id DESC LIMIT $1",
    )
    .bind(i64::from(count))
    .fetch_all(&mut *conn)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// Callback deliveries per state (one pass over the outbox).
pub(crate) async fn delivery_counts(conn: &mut PgConnection) -> Result<DeliveryCounts, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
            .fetch_all(&mut *conn)
            .await?;
    Ok(DeliveryCounts::from_rows(rows))
}

/// The newest `limit` transitions of any video, newest first: a backward
/// walk of the transitions' primary key.
pub(crate) async fn recent_transitions(
    conn: &mut PgConnection,
    limit: u32,
) -> Result<Vec<RecentTransition>, StoreError> {
    Ok(sqlx::query_as::<_, RecentTransition>(
        "SELECT v.video_id, t.kind, t.from_value, t.to_value, t.at, v.error_code, \
                v.error_message, v.reason \
         FROM transitions t JOIN videos v ON v.id = t.video_rowid \
         ORDER BY t.id DESC LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?)
}

/// Dead deliveries newest death first before the (`died_at`, id) cursor
/// `before`: a backward walk of the partial index `deliveries_dead`
/// (`updated_at`, `id`), whose predicate the `WHERE` repeats.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn dead_deliveries(
    conn: &mut PgConnection,
    before: Option<(i64, i64)>,
    limit: u32,
) -> Result<Vec<DeadDelivery>, StoreError> {
    let (at, id) = before.unwrap_or((i64::MAX, i64::MAX));
    Ok(sqlx::query_as::<_, DeadDelivery>(
        "SELECT d.id, v.video_id, d.url, d.event_id, d.attempts, d.last_status, d.last_error, \
                d.reason, d.updated_at AS died_at \
         FROM deliveries d JOIN videos v ON v.id = d.video_rowid \
         WHERE d.state = 'dead' AND (d.updated_at, d.id) < ($1, $2) \
         ORDER BY d.updated_at DESC, d.id DESC LIMIT $3",
    )
    .bind(at)
    .bind(id)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?)
}

/// What is stored of one video's polling, by row id.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn polling(
    conn: &mut PgConnection,
    video_rowid: i64,
) -> Result<Option<PollingRecord>, StoreError> {
    Ok(sqlx::query_as::<_, PollingRecord>(
        "SELECT polled_at, unchanged_polls, error_streak, lease_until, hinted_at \
         FROM videos WHERE id = $1",
    )
    .bind(video_rowid)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Terminal transitions per hour since `since`, oldest hour first: grouped
/// here, over the partial index `transitions_terminal` (the `WHERE` repeats
/// its predicate). `at` is never negative, so integer division floors.
#[instrument(skip(conn), level = "debug")]
pub(crate) async fn hourly_outcomes(
    conn: &mut PgConnection,
    since: Millis,
) -> Result<Vec<HourlyOutcomes>, StoreError> {
    Ok(sqlx::query_as::<_, HourlyOutcomes>(
        "SELECT (at / 3600000) * 3600000 AS hour, \
                COUNT(*) FILTER (WHERE to_value = 'completed') AS completed, \
                COUNT(*) FILTER (WHERE to_value = 'failed') AS failed \
         FROM transitions \
         WHERE kind = 'state' AND to_value IN ('completed', 'failed') AND at >= $1 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(since.0)
    .fetch_all(&mut *conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::test_db::TestDb;

    /// Each read answers from hand-written rows as worked out here.
    #[tokio::test]
    async fn reads_answer_from_the_rows() {
        let Some(db) = TestDb::create("reads").await else {
            return;
        };
        let mut conn = db.conn().await;
        let pool = &mut *conn;
        assert_eq!(next_poll_due(&mut *pool).await.unwrap(), None);
        assert_eq!(next_delivery_due(&mut *pool).await.unwrap(), None);
        sqlx::raw_sql(
            "INSERT INTO videos (video_id, state, upstream_status, video_url, duration, \
                                 created_at, metadata, enqueued_at, updated_at, next_poll_at, \
                                 polls, event_id, terminal_at, unfinished_seen_at, \
                                 rendering_seen_at) \
             VALUES ('a', 'active', NULL, NULL, NULL, NULL, NULL, 1, 1, 3000, 0, NULL, NULL, \
                     NULL, NULL), \
                    ('b', 'active', NULL, NULL, NULL, NULL, NULL, 2, 2, 1000, 0, NULL, NULL, \
                     NULL, NULL), \
                    ('c', 'completed', 'done', 'https://cdn.example/c.mp4', 12.5, 1700000000, \
                     '{\"k\": 1}', 10, 500, NULL, 3, 'evt_c', 500, 400, 300), \
                    ('d', 'failed', 'error', NULL, NULL, NULL, NULL, 20, 500, NULL, 2, 'evt_d', \
                     500, 450, NULL), \
                    ('e', 'cancelled', NULL, NULL, NULL, NULL, NULL, 30, 30, NULL, 0, NULL, \
                     NULL, NULL, NULL), \
                    ('f', 'abandoned', NULL, NULL, NULL, NULL, NULL, 40, 100, NULL, 0, 'evt_f', \
                     100, NULL, NULL); \
             INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) \
             SELECT id, 'status', NULL, 'rendering', 200 FROM videos WHERE video_id = 'c'; \
             INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) \
             SELECT id, 'state', 'active', 'completed', 500 FROM videos WHERE video_id = 'c'; \
             INSERT INTO deliveries (video_rowid, event_id, url, state, attempts, \
                                     next_attempt_at, last_status, created_at, updated_at) \
             SELECT id, 'evt_c', 'https://h.example/1', 'pending', 1, 2000, 503, 500, 600 \
             FROM videos WHERE video_id = 'c'; \
             INSERT INTO deliveries (video_rowid, event_id, url, state, attempts, \
                                     next_attempt_at, last_status, created_at, updated_at) \
             SELECT id, 'evt_c', 'https://h.example/2', 'delivered', 1, NULL, 200, 500, 600 \
             FROM videos WHERE video_id = 'c'",
        )
        .execute(&mut *pool)
        .await
        .unwrap();

        let gauges = gauges(&mut *pool, Millis(4_000)).await.unwrap();
        assert_eq!(
            gauges,
            Gauges {
                videos: vec![
                    (VideoState::Abandoned, 1),
                    (VideoState::Active, 2),
                    (VideoState::Cancelled, 1),
                    (VideoState::Completed, 1),
                    (VideoState::Failed, 1),
                ],
                // b is due at 1000, the pending delivery at 2000.
                poll_lag_seconds: 3.0,
                delivery_lag_seconds: 2.0,
            }
        );
        // Nothing overdue yet: no lag.
        let early = super::gauges(&mut *pool, Millis(500)).await.unwrap();
        assert_eq!(
            (early.poll_lag_seconds, early.delivery_lag_seconds),
            (0.0, 0.0)
        );
        assert_eq!(
            next_poll_due(&mut *pool).await.unwrap(),
            Some(Millis(1_000))
        );
        assert_eq!(
            next_delivery_due(&mut *pool).await.unwrap(),
            Some(Millis(2_000))
        );

        let names = |rows: Vec<VideoRecord>| -> Vec<String> {
            rows.into_iter().map(|v| v.video_id).collect()
        };
        assert_eq!(
            names(list_videos(&mut *pool, None, 0, 2).await.unwrap()),
            ["a", "b"]
        );
        let b_id = list_videos(&mut *pool, None, 0, 2).await.unwrap()[1].id;
        assert_eq!(
            names(list_videos(&mut *pool, None, b_id, 10).await.unwrap()),
            ["c", "d", "e", "f"]
        );
        assert_eq!(
            names(
                list_videos(&mut *pool, Some(VideoState::Active), 0, 10)
                    .await
                    .unwrap()
            ),
            ["a", "b"]
        );
        assert_eq!(
            names(
                list_videos(&mut *pool, Some(VideoState::Completed), 0, 10)
                    .await
                    .unwrap()
            ),
            ["c"]
        );

        let details = video_details(&mut *pool, &VideoId::parse("c").unwrap())
            .await
            .unwrap()
            .unwrap();
        let c = &details.video;
        assert_eq!(
            (
                c.state,
                c.upstream_status.as_deref(),
                c.video_url.as_deref(),
                c.duration,
                c.created_at,
                c.metadata.as_deref(),
                c.enqueued_at,
                c.updated_at,
                c.next_poll_at,
                c.polls,
                c.event_id.as_deref()
            ),
            (
                VideoState::Completed,
                Some("done"),
                Some("https://cdn.example/c.mp4"),
                Some(12.5),
                Some(1_700_000_000),
                Some(r#"{"k": 1}"#),
                10,
                500,
                None,
                3,
                Some("evt_c")
            )
        );
        assert_eq!(
            details.transitions,
            [
                TransitionRecord {
                    kind: "status".into(),
                    from_value: None,
                    to_value: "rendering".into(),
                    at: 200
                },
                TransitionRecord {
                    kind: "state".into(),
                    from_value: Some("active".into()),
                    to_value: "completed".into(),
                    at: 500
                },
            ]
        );
        assert_eq!(
            details.deliveries,
            [
                DeliveryRecord {
                    url: "https://h.example/1".into(),
                    event_id: "evt_c".into(),
                    state: "pending".into(),
                    attempts: 1,
                    last_status: Some(503),
                    last_error: None,
                    reason: None,
                    next_attempt_at: Some(2_000),
                },
                DeliveryRecord {
                    url: "https://h.example/2".into(),
                    event_id: "evt_c".into(),
                    state: "delivered".into(),
                    attempts: 1,
                    last_status: Some(200),
                    last_error: None,
                    reason: None,
                    next_attempt_at: None,
                },
            ]
        );
        assert_eq!(
            video_details(&mut *pool, &VideoId::parse("zz").unwrap())
                .await
                .unwrap(),
            None
        );

        // Completed and failed only (not f, abandoned), by (terminal_at, id).
        let finished = finished_renders(&mut *pool, None, 10).await.unwrap();
        let finished_names: Vec<&str> = finished.iter().map(|r| r.video_id.as_str()).collect();
        assert_eq!(finished_names, ["c", "d"]);
        assert_eq!(
            finished[0],
            FinishedRender {
                id: c.id,
                video_id: "c".into(),
                state: "completed".into(),
                enqueued_at: 10,
                created_at: Some(1_700_000_000),
                unfinished_seen_at: Some(400),
                rendering_seen_at: Some(300),
                terminal_at: 500,
            }
        );
        let after_c = finished_renders(&mut *pool, Some((500, c.id)), 10)
            .await
            .unwrap();
        assert_eq!(after_c.len(), 1);
        assert_eq!(after_c[0].video_id, "d");
        assert_eq!(
            finished_renders(&mut *pool, None, 1).await.unwrap().len(),
            1
        );

        let newest = newest_renders(&mut *pool, 2).await.unwrap();
        let states: Vec<&str> = newest.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, ["cancelled", "abandoned"]);
        assert_eq!(newest[1].terminal_at, Some(100));
        drop(conn);
        db.drop_db().await;
    }

    /// Ids of a page of records.
    fn ids(rows: &[VideoRecord]) -> Vec<&str> {
        rows.iter().map(|row| row.video_id.as_str()).collect()
    }

    /// Enqueues `id` on `conn` the way the writer does.
    async fn enqueue(conn: &mut PgConnection, id: &str) {
        let video = crate::store::records::NewVideo {
            video_id: VideoId::parse(id).unwrap(),
            callback_url: None,
            metadata: None,
            first_poll_at: Millis(1),
        };
        crate::store::postgres::mutations::insert_videos(conn, &[&video], Millis(1))
            .await
            .unwrap();
    }

    /// How many advisory lock requests wait, by PostgreSQL's own lock table.
    async fn waiting_for_advisory_locks(conn: &mut PgConnection) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    }

    /// Waits (polling PostgreSQL's lock table, at most 10 s) until `count`
    /// advisory lock requests wait.
    async fn until_waiting(conn: &mut PgConnection, count: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while waiting_for_advisory_locks(conn).await != count {
            assert!(
                std::time::Instant::now() < deadline,
                "{count} lock requests never waited"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Two relays insert at once: the one that drew the lower id commits
    /// last. A page read in between waits for it rather than listing the
    /// higher id alone, after which a cursor past it would never show the
    /// lower one; the console's first page waits the same way.
    #[tokio::test]
    async fn pages_wait_for_lower_ids_still_being_inserted() {
        let Some(db) = TestDb::create("settled_horizon").await else {
            return;
        };
        let (mut first, mut second, mut watcher) =
            (db.conn().await, db.conn().await, db.conn().await);
        let mut slow = sqlx::Connection::begin(&mut *first).await.unwrap();
        enqueue(&mut slow, "drawn-first").await;
        // The other relay's insert is not held up by the one in flight.
        enqueue(&mut second, "drawn-second").await;
        let (mut for_list, mut for_browse) = (db.conn().await, db.conn().await);
        let list = tokio::spawn(async move { list_videos(&mut for_list, None, 0, 100).await });
        let browse =
            tokio::spawn(async move { browse_videos(&mut for_browse, None, "", None, 100).await });
        until_waiting(&mut watcher, 2).await;
        assert!(!list.is_finished() && !browse.is_finished());
        slow.commit().await.unwrap();
        let listed = list.await.unwrap().unwrap();
        assert_eq!(ids(&listed), ["drawn-first", "drawn-second"]);
        let browsed = browse.await.unwrap().unwrap();
        assert_eq!(ids(&browsed), ["drawn-second", "drawn-first"]);
        // The next insert draws a higher id and is listed after them.
        enqueue(&mut second, "drawn-third").await;
        let after = listed.last().unwrap().id;
        let next = list_videos(&mut second, None, after, 100).await.unwrap();
        assert_eq!(ids(&next), ["drawn-third"]);
        drop((first, second, watcher));
        db.drop_db().await;
    }

    /// An insert left open (a relay frozen mid-transaction) costs a page a
    /// refusal after the lock timeout, a contention error, not a hang; the
    /// inserts queued behind the page's request go on once it gives up.
    #[tokio::test]
    async fn a_page_behind_an_insert_left_open_is_refused_and_others_go_on() {
        let Some(db) = TestDb::create("settled_horizon_timeout").await else {
            return;
        };
        let (mut first, mut second) = (db.conn().await, db.conn().await);
        let mut frozen = sqlx::Connection::begin(&mut *first).await.unwrap();
        enqueue(&mut frozen, "left-open").await;
        let started = std::time::Instant::now();
        let refused = list_videos(&mut second, None, 0, 100).await.unwrap_err();
        let StoreError::Database(sqlx::Error::Database(cause)) = &refused else {
            panic!("not a database error: {refused:?}");
        };
        assert_eq!(cause.code().as_deref(), Some("55P03"), "{refused}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        enqueue(&mut second, "goes-on").await;
        frozen.rollback().await.unwrap();
        let listed = list_videos(&mut second, None, 0, 100).await.unwrap();
        assert_eq!(ids(&listed), ["goes-on"]);
        drop((first, second));
        db.drop_db().await;
    }
}
