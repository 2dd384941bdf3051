//! All persistence, behind one seam (`backend`'s traits) with two
//! engines: SQLite ([`sqlite`], one file for one daemon) and PostgreSQL
//! (several daemons on one database). [`Store`] serves the reads and
//! [`Writer`] (the group-commit writer, the same code for both engines)
//! every write; the rest of the crate sees neither engine nor SQL.
//!
//! Times are stored as [`Millis`]; see `migrations/sqlite/` and
//! `migrations/postgres/` for the schemas and the reasoning behind each
//! index.

mod backend;
pub mod health;
pub mod postgres;
pub mod records;
mod rows;
pub mod sqlite;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod writer;

use std::sync::Arc;

use tracing::instrument;

use self::backend::Reads as _;
use self::health::Health;
use self::postgres::PostgresDatabase;
use self::sqlite::SqliteDatabase;
use crate::config::{DatabaseBackend, DatabaseConfig};
use crate::domain::{Millis, VideoId, VideoState};

pub use postgres::shared::{GrantedSlot, Reservation, SharedGate, SharedPauses};
use secrecy::ExposeSecret as _;
pub use sqlite::{file, lock};

pub use health::Unready;
pub use lock::{DatabaseLock, LockError};
pub use records::{
    CancelOutcome, ConflictingFields, DeadDelivery, DeliveryAttemptRecord, DeliveryCounts,
    DeliveryRecord, EnqueueOutcome, FinishedRender, HOUR_MILLIS, HintOutcome, HourlyOutcomes,
    NewVideo, PollingRecord, PushHint, RecentTransition, RedeliverOutcome, TrackedRender,
    TransitionRecord, VideoDetails, VideoRecord,
};
pub use writer::Writer;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder for the database file could not be created.
    #[error("cannot create database folder {path}: {source}")]
    CreateDir {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database file could not be created or opened.
    #[error("cannot open the database {path}: {cause}")]
    Open {
        /// The database file.
        path: String,
        /// Why, as the operating system or SQLite put it.
        cause: String,
    },
    /// The configured path no longer names the database opened at startup,
    /// or its `-wal`/`-shm` are no longer the files the relay has open, so
    /// a write would go to a file nobody will read again.
    #[error("{0}")]
    FileLost(#[from] file::FileProblem),
    /// Applying the embedded migrations failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A write failed for a reason that concerns the whole database (it is
    /// locked, read-only or full); the message is the cause's.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The writer task has stopped (the process is shutting down).
    #[error("the database writer has stopped")]
    WriterStopped,
}

/// Figures read from the database for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Videos per state (states without videos are absent).
    pub videos: Vec<(VideoState, u64)>,
    /// How late the most overdue poll is.
    pub poll_lag_seconds: f64,
    /// How late the most overdue delivery is.
    pub delivery_lag_seconds: f64,
}

impl Gauges {
    /// The gauges from the rows every engine reads: `(state, count)` pairs
    /// (unknown states skipped) and the oldest due times.
    fn from_rows(
        counts: Vec<(String, i64)>,
        now: Millis,
        oldest_poll: Option<i64>,
        oldest_delivery: Option<i64>,
    ) -> Self {
        let lag = |due: Option<i64>| due.map_or(0.0, |at| ((now.0 - at).max(0) as f64) / 1000.0);
        Gauges {
            videos: counts
                .into_iter()
                .filter_map(|(state, n)| Some((state.parse().ok()?, u64::try_from(n).ok()?)))
                .collect(),
            poll_lag_seconds: lag(oldest_poll),
            delivery_lag_seconds: lag(oldest_delivery),
        }
    }
}

/// Whether `err` can be caused by one request of a batch (a constraint the
/// request's data violates, a value that does not decode) rather than by
/// the database as a whole.
pub(crate) fn is_constraint_or_decode(err: &StoreError) -> bool {
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => {
            !matches!(db.kind(), sqlx::error::ErrorKind::Other)
        }
        StoreError::Database(sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }) => true,
        _ => false,
    }
}

/// The engine behind a [`Store`].
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    /// One SQLite file.
    Sqlite(SqliteDatabase),
    /// A PostgreSQL database, which several relays may share.
    Postgres(PostgresDatabase),
}

/// Runs `$body` with `$db` bound to the engine's database, whichever it is.
macro_rules! on_engine {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.engine {
            Engine::Sqlite($db) => $body,
            Engine::Postgres($db) => $body,
        }
    };
}

/// Handle to the database: the engine's connection pool and the shared
/// health record. Cloned into every request's state.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Engine,
    /// Corruption reports, the file's identity (SQLite) and the last
    /// write's outcome, for readiness.
    health: Arc<Health>,
}

impl Store {
    /// Opens the configured database, creating it (SQLite) or its tables
    /// (both) when missing, and applies the embedded migrations.
    #[instrument(skip_all, fields(database = %config.url))]
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        match &config.backend {
            DatabaseBackend::Sqlite { path } => {
                let db = SqliteDatabase::open(path).await?;
                Ok(Self {
                    health: db.health().clone(),
                    engine: Engine::Sqlite(db),
                })
            }
            DatabaseBackend::Postgres { url } => {
                let db = PostgresDatabase::open(url.expose_secret()).await?;
                Ok(Self {
                    health: db.health().clone(),
                    engine: Engine::Postgres(db),
                })
            }
        }
    }

    /// What several relays on this database share (the upstream budget,
    /// the global pauses, wake-up calls): `None` for SQLite, which serves
    /// one relay.
    pub fn shared_gate(&self) -> Option<SharedGate> {
        match &self.engine {
            Engine::Sqlite(_) => None,
            Engine::Postgres(db) => Some(SharedGate::new(db.gate_pool().clone())),
        }
    }

    /// The engine, for the writer.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The shared health record (for the writer).
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Closes every connection (SQLite: checkpointing the WAL).
    pub async fn close(&self) {
        on_engine!(self, db => db.close().await)
    }

    /// Videos per state, and how late the most overdue poll and delivery
    /// are at `now` (seconds, 0 when nothing is overdue).
    pub async fn gauges(&self, now: Millis) -> Result<Gauges, StoreError> {
        on_engine!(self, db => db.gauges(now).await)
    }

    /// When the next active video is due for a poll (`None`: none is
    /// active), for the poller's idle wait. Errors are returned as they are
    /// (the caller waits its longest instead).
    pub async fn next_poll_due(&self) -> Result<Option<Millis>, StoreError> {
        on_engine!(self, db => db.next_poll_due().await)
    }

    /// When the next pending delivery is due (`None`: none is pending),
    /// for the delivery worker's idle wait. Errors are returned as they are.
    pub async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        on_engine!(self, db => db.next_delivery_due().await)
    }

    /// One video with its transitions and deliveries, or `None`.
    #[instrument(skip(self), level = "debug")]
    pub async fn video_details(
        &self,
        video_id: &VideoId,
    ) -> Result<Option<VideoDetails>, StoreError> {
        on_engine!(self, db => db.video_details(video_id).await)
    }

    /// A page of videos in insertion order, starting after row `after`.
    ///
    /// Ordering by the never-reused row id is what makes cursor pagination
    /// stable: rows inserted while a client pages land after every cursor it
    /// already holds, so each row is seen exactly once.
    #[instrument(skip(self), level = "debug")]
    pub async fn list_videos(
        &self,
        state: Option<VideoState>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        on_engine!(self, db => db.list_videos(state, after, limit).await)
    }

    /// A page of videos newest first (row id descending) before row
    /// `before` (`None`: from the newest), of one state when `state` is
    /// given, whose JoggAI id starts with `prefix` (empty: any). The
    /// console's list.
    ///
    /// The cursor is the row id, as for [`Store::list_videos`]: rows added
    /// while an operator pages land before the first page, never inside
    /// the walk, so each row is seen once.
    #[instrument(skip(self), level = "debug")]
    pub async fn browse_videos(
        &self,
        state: Option<VideoState>,
        prefix: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        on_engine!(self, db => db.browse_videos(state, prefix, before, limit).await)
    }

    /// Every delivery attempt of the video with row id `video_rowid`, in
    /// the order made (the console's video page).
    #[instrument(skip(self), level = "debug")]
    pub async fn delivery_attempts(
        &self,
        video_rowid: i64,
    ) -> Result<Vec<DeliveryAttemptRecord>, StoreError> {
        on_engine!(self, db => db.delivery_attempts(video_rowid).await)
    }

    /// Finished renders (videos JoggAI reported completed or failed), in
    /// the order they finished, starting after `after` (`terminal_at`,
    /// row id), at most `limit`. What `export-renders` writes out.
    #[instrument(skip(self), level = "debug")]
    pub async fn finished_renders(
        &self,
        after: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<FinishedRender>, StoreError> {
        on_engine!(self, db => db.finished_renders(after, limit).await)
    }

    /// The newest `count` videos (by row id, whatever their state), oldest
    /// first: what the learned schedule replays at start.
    #[instrument(skip(self), level = "debug")]
    pub async fn newest_renders(&self, count: u32) -> Result<Vec<TrackedRender>, StoreError> {
        on_engine!(self, db => db.newest_renders(count).await)
    }

    /// Callback deliveries per state (the console's backlog and dead
    /// count).
    #[instrument(skip(self), level = "debug")]
    pub async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        on_engine!(self, db => db.delivery_counts().await)
    }

    /// The newest `limit` transitions of any video, newest first (the
    /// console's overview).
    #[instrument(skip(self), level = "debug")]
    pub async fn recent_transitions(
        &self,
        limit: u32,
    ) -> Result<Vec<RecentTransition>, StoreError> {
        on_engine!(self, db => db.recent_transitions(limit).await)
    }

    /// A page of dead deliveries (each with its video's id), newest death
    /// first, before the cursor `before`: the (`died_at`, `id`) of the
    /// previous page's last row (`None`: from the newest). The console's
    /// dead deliveries page.
    ///
    /// A row's key does not change while it stays dead, so a walk by this
    /// cursor shows each row that stays dead throughout exactly once;
    /// deliveries dying during the walk land before its first page, or
    /// (when their fatal attempt started before the cursor's) once ahead
    /// of it.
    #[instrument(skip(self), level = "debug")]
    pub async fn dead_deliveries(
        &self,
        before: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<DeadDelivery>, StoreError> {
        on_engine!(self, db => db.dead_deliveries(before, limit).await)
    }

    /// What is stored of the polling of the video with row id
    /// `video_rowid` (the console's video page), or `None` without one.
    #[instrument(skip(self), level = "debug")]
    pub async fn polling(&self, video_rowid: i64) -> Result<Option<PollingRecord>, StoreError> {
        on_engine!(self, db => db.polling(video_rowid).await)
    }

    /// Videos completed and failed per hour (UTC) since `since`, oldest
    /// hour first, hours with neither left out (the console's plot).
    #[instrument(skip(self), level = "debug")]
    pub async fn hourly_outcomes(&self, since: Millis) -> Result<Vec<HourlyOutcomes>, StoreError> {
        on_engine!(self, db => db.hourly_outcomes(since).await)
    }

    /// The SQLite pool, for the store's unit tests and
    /// `store::test_support`.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn sqlite_pool(&self) -> &sqlx::SqlitePool {
        match &self.engine {
            Engine::Sqlite(db) => db.pool(),
            Engine::Postgres(_) => panic!("this test reads SQLite's internals"),
        }
    }

    /// The underlying pool, for the store's unit tests. Only `store` runs
    /// SQL: the integration tests use `store::test_support` (feature
    /// `test-support`).
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        self.sqlite_pool()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle waits' reads: the earliest due poll among active videos
    /// (not a cancelled one's), and no delivery when none is pending.
    #[tokio::test]
    async fn next_due_times_are_the_earliest_active_ones() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/relay.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        assert_eq!(store.next_poll_due().await.unwrap(), None);
        let (writer, task) = Writer::start(&store).await.unwrap();
        let video = |id: &str, first_poll_at: i64| NewVideo {
            video_id: VideoId::parse(id).unwrap(),
            callback_url: None,
            metadata: None,
            first_poll_at: Millis(first_poll_at),
        };
        writer
            .enqueue(vec![
                video("later", 5_000),
                video("cancelled", 1_000),
                video("sooner", 3_000),
            ])
            .await
            .unwrap();
        writer
            .cancel(VideoId::parse("cancelled").unwrap())
            .await
            .unwrap();
        assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(3_000)));
        assert_eq!(store.next_delivery_due().await.unwrap(), None);
        drop(writer);
        task.await.unwrap();
        store.close().await;
    }
}
