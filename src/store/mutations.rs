//! Every write statement, each applied inside a transaction the caller
//! (the [`Writer`](super::Writer)) owns.

use sqlx::SqliteConnection;

use super::StoreError;
use super::records::{
    AttemptRecord, CancelOutcome, ClaimedDelivery, ClaimedVideo, DeliveryNext, DeliveryRelease,
    EnqueueOutcome, NewVideo, PollUpdate, RedeliverOutcome, Release,
};
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

/// Leases up to `limit` due deliveries, most overdue first, with the event
/// each carries. As for videos, the lease is also the next attempt time, so
/// a crashed sender's deliveries become due again by themselves.
pub(crate) async fn claim_deliveries(
    conn: &mut SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE deliveries SET next_attempt_at = ?1, lease_until = ?1 WHERE id IN (\
           SELECT id FROM deliveries INDEXED BY deliveries_due \
           WHERE state = 'pending' AND next_attempt_at <= ?2 ORDER BY next_attempt_at LIMIT ?3) \
         RETURNING id",
    )
    .bind(lease_until.0)
    .bind(now.0)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let delivery = sqlx::query_as::<_, ClaimedDelivery>(
            "SELECT d.id, d.url, d.attempts, d.lease_until, d.event_id, v.video_id, v.state, \
                    v.video_url, v.cover_url, v.created_at, v.duration, v.error_code, \
                    v.error_message, v.metadata, v.reason, v.terminal_at \
             FROM deliveries d JOIN videos v ON v.id = d.video_rowid WHERE d.id = ?",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        claimed.push(delivery);
    }
    Ok(claimed)
}

/// Records one delivery attempt and what follows it, if the claim still
/// holds its lease. Returns whether it was recorded.
pub(crate) async fn record_attempt(
    conn: &mut SqliteConnection,
    attempt: &AttemptRecord,
) -> Result<bool, StoreError> {
    let (state, next_attempt_at, reason) = match &attempt.next {
        DeliveryNext::Delivered => ("delivered", None, None),
        DeliveryNext::Retry(at) => ("pending", Some(at.0), None),
        DeliveryNext::Dead(reason) => ("dead", None, Some(reason.as_str())),
    };
    let applied = sqlx::query(
        "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, \
                lease_until = NULL, last_status = ?, last_error = ?, reason = ?, updated_at = ? \
         WHERE id = ? AND state = 'pending' AND lease_until = ?",
    )
    .bind(state)
    .bind(next_attempt_at)
    .bind(attempt.status.map(i64::from))
    .bind(attempt.error.as_deref())
    .bind(reason)
    .bind(attempt.at.0)
    .bind(attempt.delivery_id)
    .bind(attempt.lease_until)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if applied {
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, at, status, error, duration_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(attempt.delivery_id)
        .bind(attempt.at.0)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error.as_deref())
        .bind(attempt.duration_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(applied)
}

/// Queues a terminal video's event again to its current targets (the
/// `configured` URLs and its own `callback_url`): missing deliveries are created, delivered and dead ones become
/// pending with a fresh retry schedule, pending ones are made due now
/// unless an attempt is in flight. The event id never changes.
pub(crate) async fn redeliver(
    conn: &mut SqliteConnection,
    video_id: &VideoId,
    configured: &[String],
    now: Millis,
) -> Result<RedeliverOutcome, StoreError> {
    let row: Option<(i64, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, state, event_id, callback_url FROM videos WHERE video_id = ?")
            .bind(video_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let Some((rowid, state, event_id, callback_url)) = row else {
        return Ok(RedeliverOutcome::NotFound);
    };
    let state = VideoState::try_from(state)
        .map_err(|err| StoreError::Database(sqlx::Error::Decode(Box::new(err))))?;
    let Some(event_id) = event_id else {
        return Ok(RedeliverOutcome::NoEvent(state));
    };
    let mut targets: Vec<&str> = configured.iter().map(String::as_str).collect();
    if let Some(own) = callback_url.as_deref()
        && !targets.contains(&own)
    {
        targets.push(own);
    }
    for url in &targets {
        sqlx::query(
            "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) VALUES (?1, ?2, ?3, ?4, ?4, ?4) \
             ON CONFLICT (video_rowid, url) DO UPDATE SET \
               state = 'pending', attempts = 0, next_attempt_at = ?4, lease_until = NULL, \
               reason = NULL, updated_at = ?4 \
             WHERE deliveries.state != 'pending'",
        )
        .bind(rowid)
        .bind(&event_id)
        .bind(url)
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?1, updated_at = ?1 \
         WHERE video_rowid = ?2 AND state = 'pending' AND lease_until IS NULL \
           AND next_attempt_at > ?1",
    )
    .bind(now.0)
    .bind(rowid)
    .execute(&mut *conn)
    .await?;
    Ok(RedeliverOutcome::Queued {
        event_id,
        targets: targets.len(),
    })
}

/// Hands a claimed delivery back unattempted, if the claim still holds its
/// lease.
pub(crate) async fn release_delivery(
    conn: &mut SqliteConnection,
    release: &DeliveryRelease,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?, lease_until = NULL \
         WHERE id = ? AND state = 'pending' AND lease_until = ?",
    )
    .bind(release.next_attempt_at.0)
    .bind(release.delivery_id)
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
