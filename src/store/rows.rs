//! The rows the claims read, as SQLite returns them, and their decoding
//! into the domain's types: the workers' decisions never see a column type.

use crate::domain::delivery::ClaimedDelivery;
use crate::domain::poll::{ClaimedVideo, DueVideo};
use crate::domain::{Lease, Millis, StoredId, VideoState};

/// A due video's columns, as the ranked claim reads them.
#[derive(sqlx::FromRow)]
pub(super) struct DueVideoRow {
    id: i64,
    enqueued_at: i64,
    created_at: Option<i64>,
    unfinished_seen_at: Option<i64>,
    rendering_seen_at: Option<i64>,
    next_poll_at: i64,
}

impl From<DueVideoRow> for DueVideo {
    fn from(row: DueVideoRow) -> Self {
        DueVideo {
            id: row.id,
            enqueued_at: Millis(row.enqueued_at),
            created_at: row.created_at,
            unfinished_seen_at: row.unfinished_seen_at.map(Millis),
            rendering_seen_at: row.rendering_seen_at.map(Millis),
            next_poll_at: Millis(row.next_poll_at),
        }
    }
}

/// A claimed video's columns (see `claimed_columns!`).
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedVideoRow {
    id: i64,
    video_id: String,
    upstream_status: Option<String>,
    enqueued_at: i64,
    unchanged_polls: i64,
    error_streak: i64,
    callback_url: Option<String>,
    lease_until: i64,
    created_at: Option<i64>,
    polls: i64,
    unfinished_seen_at: Option<i64>,
    rendering_seen_at: Option<i64>,
    claimed_at: i64,
    hinted_at: Option<i64>,
}

impl From<ClaimedVideoRow> for ClaimedVideo {
    fn from(row: ClaimedVideoRow) -> Self {
        ClaimedVideo {
            id: row.id,
            video_id: StoredId::from_stored(row.video_id),
            upstream_status: row.upstream_status,
            enqueued_at: Millis(row.enqueued_at),
            unchanged_polls: row.unchanged_polls,
            error_streak: row.error_streak,
            callback_url: row.callback_url,
            lease: Lease {
                until: Millis(row.lease_until),
            },
            created_at: row.created_at,
            polls: row.polls,
            unfinished_seen_at: row.unfinished_seen_at.map(Millis),
            rendering_seen_at: row.rendering_seen_at.map(Millis),
            claimed_at: Millis(row.claimed_at),
            hinted_at: row.hinted_at.map(Millis),
        }
    }
}

/// A claimed delivery's columns, with its video's (see
/// `mutations::claim_deliveries`).
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedDeliveryRow {
    id: i64,
    url: String,
    attempts: i64,
    lease_until: i64,
    event_id: String,
    video_id: String,
    #[sqlx(try_from = "String")]
    state: VideoState,
    video_url: Option<String>,
    cover_url: Option<String>,
    created_at: Option<i64>,
    duration: Option<f64>,
    error_code: Option<String>,
    error_message: Option<String>,
    metadata: Option<String>,
    reason: Option<String>,
    terminal_at: Option<i64>,
    pushed_at: Option<i64>,
}

impl From<ClaimedDeliveryRow> for ClaimedDelivery {
    fn from(row: ClaimedDeliveryRow) -> Self {
        ClaimedDelivery {
            id: row.id,
            url: row.url,
            attempts: row.attempts,
            lease: Lease {
                until: Millis(row.lease_until),
            },
            event_id: row.event_id,
            video_id: StoredId::from_stored(row.video_id),
            state: row.state,
            video_url: row.video_url,
            cover_url: row.cover_url,
            created_at: row.created_at,
            duration: row.duration,
            error_code: row.error_code,
            error_message: row.error_message,
            metadata: row.metadata,
            reason: row.reason,
            terminal_at: row.terminal_at.map(Millis),
            pushed_at: row.pushed_at.map(Millis),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::DatabaseConfig;
    use crate::domain::{Lease, Millis, StoredId};
    use crate::store::Store;

    /// A row something else wrote, whose id no longer validates, is still
    /// claimed: its id comes back as stored, marked invalid (the poller
    /// then abandons it with reason `invalid_id`), and the times come back
    /// as the claim wrote them.
    #[tokio::test]
    async fn a_claimed_row_keeps_an_id_that_does_not_validate() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at, hinted_at) \
             VALUES ('a b', 5, 5, 10, 7)",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        let claimed =
            super::super::sqlite::mutations::claim_due(&mut conn, Millis(20), Millis(90), 1)
                .await
                .unwrap();
        assert_eq!(claimed.len(), 1);
        let video = &claimed[0];
        assert_eq!(video.video_id, StoredId::Invalid("a b".into()));
        assert_eq!(video.video_id.valid(), None);
        assert_eq!(video.enqueued_at, Millis(5));
        assert_eq!(video.lease, Lease { until: Millis(90) });
        assert_eq!(video.claimed_at, Millis(20));
        assert_eq!(video.hinted_at, Some(Millis(7)));
        assert!(video.answers_push());
        drop(conn);
        store.close().await;
    }
}
