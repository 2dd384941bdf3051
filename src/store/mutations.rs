//! Every write statement, each applied inside a transaction the caller
//! (the [`Writer`](super::Writer)) owns.

use sqlx::SqliteConnection;

use super::StoreError;
use super::records::{CancelOutcome, ClaimedVideo, EnqueueOutcome, NewVideo, PollUpdate, Release};
use crate::domain::{Millis, VideoId, VideoState};

/// Inserts a video unless its id is already tracked (then nothing changes).
pub(crate) async fn insert_video(
    conn: &mut SqliteConnection,
    video: &NewVideo,
    now: Millis,
) -> Result<EnqueueOutcome, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO videos (video_id, callback_url, metadata, enqueued_at, updated_at, next_poll_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (video_id) DO NOTHING",
    )
    .bind(video.video_id.as_str())
    .bind(video.callback_url.as_deref())
    .bind(video.metadata.as_deref())
    .bind(now.0)
    .bind(now.0)
    .bind(video.first_poll_at.0)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(if inserted == 1 {
        EnqueueOutcome::Created
    } else {
        EnqueueOutcome::Existing
    })
}

/// Moves an active video to `cancelled` with its transition row.
pub(crate) async fn cancel_video(
    conn: &mut SqliteConnection,
    video_id: &VideoId,
    now: Millis,
) -> Result<CancelOutcome, StoreError> {
    let cancelled: Option<i64> = sqlx::query_scalar(
        "UPDATE videos SET state = 'cancelled', next_poll_at = NULL, lease_until = NULL, \
                           updated_at = ? \
         WHERE video_id = ? AND state = 'active' RETURNING id",
    )
    .bind(now.0)
    .bind(video_id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(rowid) = cancelled {
        insert_transition(conn, rowid, "state", Some("active"), "cancelled", now).await?;
        return Ok(CancelOutcome::Cancelled);
    }
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM videos WHERE video_id = ?")
        .bind(video_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match state.map(VideoState::try_from).transpose() {
        Ok(None) => CancelOutcome::NotFound,
        Ok(Some(VideoState::Cancelled)) => CancelOutcome::AlreadyCancelled,
        Ok(Some(state)) => CancelOutcome::Terminal(state),
        Err(err) => return Err(StoreError::Database(sqlx::Error::Decode(Box::new(err)))),
    })
}

/// Appends one row to a video's transition log.
pub(crate) async fn insert_transition(
    conn: &mut SqliteConnection,
    video_rowid: i64,
    kind: &str,
    from: Option<&str>,
    to: &str,
    at: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(video_rowid)
    .bind(kind)
    .bind(from)
    .bind(to)
    .bind(at.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ids of the videos due at `?2`, most overdue first, at most `?3`.
///
/// `INDEXED BY` pins the partial index `videos_due`: the planner, without
/// statistics, would otherwise pick `videos_state_order` and sort every
/// active video; with it this is a range scan that reads only what it
/// returns, at any table size (and the statement fails loudly if the index
/// ever goes missing).
macro_rules! due_videos {
    () => {
        "SELECT id FROM videos INDEXED BY videos_due \
         WHERE state = 'active' AND next_poll_at <= ?2 ORDER BY next_poll_at LIMIT ?3"
    };
}

/// Leases up to `limit` due videos, most overdue first.
///
/// The lease is written into `next_poll_at` as well as `lease_until`: a
/// leased video is therefore simply "not due" until the lease ends, and a
/// lease abandoned by a crash makes the video due again with no sweeper.
/// The inner SELECT is a range scan of the partial index `videos_due`.
pub(crate) async fn claim_due(
    conn: &mut SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let claimed = sqlx::query_as::<_, ClaimedVideo>(concat!(
        "UPDATE videos SET next_poll_at = ?1, lease_until = ?1 WHERE id IN (",
        due_videos!(),
        ") RETURNING id, video_id, upstream_status, enqueued_at, unchanged_polls, error_streak, \
           callback_url, lease_until"
    ))
    .bind(lease_until.0)
    .bind(now.0)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(claimed)
}

/// Applies one poll's result, if the claim still holds its lease.
///
/// A terminal result writes the new state, its transitions and one outbox
/// row per target here, in the caller's single transaction: either all of
/// it is on disk or none of it is (and the poll is simply repeated).
pub(crate) async fn record_poll(
    conn: &mut SqliteConnection,
    update: &PollUpdate,
) -> Result<bool, StoreError> {
    let (state, reason, event_id, terminal_at) = match &update.terminal {
        Some(terminal) => (
            terminal.state,
            terminal.reason.as_deref(),
            Some(terminal.event_id.as_str()),
            Some(update.at.0),
        ),
        None => (VideoState::Active, None, None, None),
    };
    let fields = &update.fields;
    let applied = sqlx::query(
        "UPDATE videos SET \
           upstream_status = ?, video_url = COALESCE(?, video_url), \
           cover_url = COALESCE(?, cover_url), created_at = COALESCE(?, created_at), \
           duration = COALESCE(?, duration), error_code = COALESCE(?, error_code), \
           error_message = COALESCE(?, error_message), polls = polls + ?, \
           unchanged_polls = ?, error_streak = ?, next_poll_at = ?, lease_until = NULL, \
           state = ?, reason = ?, event_id = ?, terminal_at = ?, updated_at = ? \
         WHERE id = ? AND state = 'active' AND lease_until = ?",
    )
    .bind(update.upstream_status.as_deref())
    .bind(fields.video_url.as_deref())
    .bind(fields.cover_url.as_deref())
    .bind(fields.created_at)
    .bind(fields.duration)
    .bind(fields.error_code.as_deref())
    .bind(fields.error_message.as_deref())
    .bind(i64::from(update.counted))
    .bind(update.unchanged_polls)
    .bind(update.error_streak)
    .bind(update.next_poll_at.map(|at| at.0))
    .bind(state.as_str())
    .bind(reason)
    .bind(event_id)
    .bind(terminal_at)
    .bind(update.at.0)
    .bind(update.video_rowid)
    .bind(update.lease_until)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !applied {
        return Ok(false);
    }
    for transition in &update.transitions {
        insert_transition(
            conn,
            update.video_rowid,
            transition.kind,
            transition.from.as_deref(),
            &transition.to,
            update.at,
        )
        .await?;
    }
    if let Some(terminal) = &update.terminal {
        for url in &terminal.targets {
            sqlx::query(
                "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                         updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (video_rowid, url) DO NOTHING",
            )
            .bind(update.video_rowid)
            .bind(&terminal.event_id)
            .bind(url)
            .bind(update.at.0)
            .bind(update.at.0)
            .bind(update.at.0)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(true)
}

/// Hands a claimed video back unpolled, if the claim still holds its lease.
pub(crate) async fn release(
    conn: &mut SqliteConnection,
    release: &Release,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE videos SET next_poll_at = ?, lease_until = NULL \
         WHERE id = ? AND state = 'active' AND lease_until = ?",
    )
    .bind(release.next_poll_at.0)
    .bind(release.video_rowid)
    .bind(release.lease_until)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::DatabaseConfig;
    use crate::store::Store;

    #[tokio::test]
    async fn the_due_query_is_an_index_range_scan_without_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", due_videos!()))
                .bind(0)
                .bind(0)
                .bind(0)
                .fetch_all(store.pool())
                .await
                .unwrap();
        let details: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
        assert_eq!(details.len(), 1, "{details:?}");
        assert!(
            details[0].starts_with("SEARCH videos USING")
                && details[0].ends_with("INDEX videos_due (next_poll_at<?)"),
            "{details:?}"
        );
    }
}
