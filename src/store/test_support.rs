//! Test-only access to the database behind a [`Store`], for the integration
//! tests: reading the internal columns the API does not show (leases, due
//! times, push hints), counting rows, and forcing the states a test needs
//! (a row written by hand, a failing insert, another process holding the
//! write lock).
//!
//! Compiled only with the `test-support` cargo feature, which the crate's
//! own tests enable (through a dev-dependency on the crate itself): a
//! release build has none of it, and nothing outside `store` runs SQL.

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;

use super::{Store, StoreError};
use crate::domain::Millis;

/// A video's row with its internal columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRow {
    /// The rowid (what transitions and deliveries refer to).
    pub id: i64,
    /// JoggAI's id.
    pub video_id: String,
    /// `active`, `completed`, `failed`, `abandoned` or `cancelled`.
    pub state: String,
    /// The completion event's id, once terminal.
    pub event_id: Option<String>,
    /// When the current claim's lease ends (`None`: not claimed).
    pub lease_until: Option<Millis>,
    /// When the next poll is due (`None` once no longer active).
    pub next_poll_at: Option<Millis>,
    /// When a verified push last arrived for it.
    pub hinted_at: Option<Millis>,
    /// Failed polls in a row.
    pub error_streak: i64,
}

/// A query of [`VideoRow`]'s columns, in order, with `$rest` after `FROM
/// videos`.
macro_rules! select_videos {
    ($rest:literal) => {
        concat!(
            "SELECT id, video_id, state, event_id, lease_until, next_poll_at, hinted_at, \
             error_streak FROM videos ",
            $rest
        )
    };
}

/// The columns [`select_videos`] reads.
type VideoColumns = (
    i64,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
);

impl From<VideoColumns> for VideoRow {
    fn from(
        (id, video_id, state, event_id, lease_until, next_poll_at, hinted_at, error_streak): VideoColumns,
    ) -> Self {
        Self {
            id,
            video_id,
            state,
            event_id,
            lease_until: lease_until.map(Millis),
            next_poll_at: next_poll_at.map(Millis),
            hinted_at: hinted_at.map(Millis),
            error_streak,
        }
    }
}

/// A delivery's row with its internal columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// Where the event goes.
    pub url: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the current claim's lease ends (`None`: not claimed).
    pub lease_until: Option<Millis>,
    /// When the next attempt is due (`None` once no longer pending).
    pub next_attempt_at: Option<Millis>,
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// The HTTP status answered (`None`: no answer).
    pub status: Option<i64>,
    /// How long the attempt took.
    pub duration_ms: i64,
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRow {
    /// The video's rowid ([`VideoRow::id`]).
    pub video_rowid: i64,
    /// `status` or `state`.
    pub kind: String,
    /// The value before (`None` for the first status).
    pub from_value: Option<String>,
    /// The value after.
    pub to_value: String,
}

/// A table whose rows [`Store::row_count`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `videos`.
    Videos,
    /// `transitions`.
    Transitions,
    /// `deliveries`.
    Deliveries,
}

/// A write lock held on a connection of the store's pool, as another
/// process writing would hold it; [`WriteLock::release`] rolls it back.
#[derive(Debug)]
pub struct WriteLock {
    conn: PoolConnection<Sqlite>,
}

impl WriteLock {
    /// Rolls the held transaction back, releasing the lock.
    pub async fn release(mut self) -> Result<(), StoreError> {
        sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
        Ok(())
    }
}

impl Store {
    /// Every video's row, in rowid order.
    pub async fn video_rows(&self) -> Result<Vec<VideoRow>, StoreError> {
        let rows: Vec<VideoColumns> = sqlx::query_as(select_videos!("ORDER BY id"))
            .fetch_all(self.sqlite_pool())
            .await?;
        Ok(rows.into_iter().map(VideoRow::from).collect())
    }

    /// The row of the video `video_id`, if tracked.
    pub async fn video_row(&self, video_id: &str) -> Result<Option<VideoRow>, StoreError> {
        let row: Option<VideoColumns> = sqlx::query_as(select_videos!("WHERE video_id = ?"))
            .bind(video_id)
            .fetch_optional(self.sqlite_pool())
            .await?;
        Ok(row.map(VideoRow::from))
    }

    /// Every delivery's row, in rowid order.
    pub async fn delivery_rows(&self) -> Result<Vec<DeliveryRow>, StoreError> {
        /// url, state, attempts, lease_until, next_attempt_at.
        type DeliveryColumns = (String, String, i64, Option<i64>, Option<i64>);
        let rows: Vec<DeliveryColumns> = sqlx::query_as(
            "SELECT url, state, attempts, lease_until, next_attempt_at \
             FROM deliveries ORDER BY id",
        )
        .fetch_all(self.sqlite_pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(url, state, attempts, lease_until, next_attempt_at)| DeliveryRow {
                    url,
                    state,
                    attempts,
                    lease_until: lease_until.map(Millis),
                    next_attempt_at: next_attempt_at.map(Millis),
                },
            )
            .collect())
    }

    /// Every recorded delivery attempt, in the order they were recorded.
    pub async fn attempt_rows(&self) -> Result<Vec<AttemptRow>, StoreError> {
        let rows: Vec<(Option<i64>, i64)> =
            sqlx::query_as("SELECT status, duration_ms FROM delivery_attempts ORDER BY id")
                .fetch_all(self.sqlite_pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(status, duration_ms)| AttemptRow {
                status,
                duration_ms,
            })
            .collect())
    }

    /// Every recorded transition, in the order they were recorded.
    pub async fn transition_rows(&self) -> Result<Vec<TransitionRow>, StoreError> {
        let rows: Vec<(i64, String, Option<String>, String)> = sqlx::query_as(
            "SELECT video_rowid, kind, from_value, to_value FROM transitions ORDER BY id",
        )
        .fetch_all(self.sqlite_pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(video_rowid, kind, from_value, to_value)| TransitionRow {
                video_rowid,
                kind,
                from_value,
                to_value,
            })
            .collect())
    }

    /// Number of rows in `table`.
    pub async fn row_count(&self, table: Table) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Videos => "SELECT COUNT(*) FROM videos",
            Table::Transitions => "SELECT COUNT(*) FROM transitions",
            Table::Deliveries => "SELECT COUNT(*) FROM deliveries",
        };
        Ok(sqlx::query_scalar(sql)
            .fetch_one(self.sqlite_pool())
            .await?)
    }

    /// Moves the enqueue of the videos `video_ids` to `enqueued_at`, their
    /// next poll to `next_poll_at` (for tests running on a virtual clock;
    /// the API stamps enqueues with the wall clock).
    pub async fn set_enqueue_times(
        &self,
        video_ids: &[&str],
        enqueued_at: Millis,
        next_poll_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE videos SET enqueued_at = ?1, next_poll_at = ?2 \
             WHERE video_id IN (SELECT value FROM json_each(?3))",
        )
        .bind(enqueued_at.0)
        .bind(next_poll_at.0)
        .bind(serde_json::to_string(video_ids).expect("strings serialize"))
        .execute(self.sqlite_pool())
        .await?;
        Ok(())
    }

    /// Rewrites the URL of the deliveries to `from` as `to`, as a row
    /// written by hand or by an older version (which the API would refuse).
    pub async fn set_delivery_url(&self, from: &str, to: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET url = ?1 WHERE url = ?2")
            .bind(to)
            .bind(from)
            .execute(self.sqlite_pool())
            .await?;
        Ok(())
    }

    /// Sets the last error of the deliveries to `url`, as a row written by
    /// hand or by an older version (or a receiver's text the relay one day
    /// records): what the console must show as text, whatever it holds.
    pub async fn set_delivery_error(&self, url: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET last_error = ?1 WHERE url = ?2")
            .bind(error)
            .bind(url)
            .execute(self.sqlite_pool())
            .await?;
        Ok(())
    }

    /// Makes every insert into the delivery outbox fail (`true`, with
    /// SQLite's `simulated failure`), or work again (`false`).
    pub async fn set_delivery_inserts_failing(&self, failing: bool) -> Result<(), StoreError> {
        let sql = if failing {
            "CREATE TRIGGER fail_outbox BEFORE INSERT ON deliveries \
             BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
        } else {
            "DROP TRIGGER fail_outbox"
        };
        sqlx::query(sql).execute(self.sqlite_pool()).await?;
        Ok(())
    }

    /// Takes the database's write lock (`BEGIN IMMEDIATE`) and holds it
    /// until [`WriteLock::release`], as another process writing would.
    pub async fn hold_write_lock(&self) -> Result<WriteLock, StoreError> {
        let mut conn = self.sqlite_pool().acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(WriteLock { conn })
    }

    /// Where `table`'s root page starts in the database file: its page
    /// number (from 1) and the page size, for a test that damages it.
    pub async fn root_page(&self, table: &str) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT (SELECT rootpage FROM sqlite_schema WHERE name = ?), \
                    (SELECT page_size FROM pragma_page_size())",
        )
        .bind(table)
        .fetch_one(self.sqlite_pool())
        .await?)
    }
}
