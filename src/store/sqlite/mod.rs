//! The SQLite engine: one file, one daemon (see [`lock`]), WAL with
//! `synchronous=FULL`, and every write through the group-commit writer's
//! own connection. The SQL dialect is SQLite's own (`jsonb_each` for
//! set-based batches, `INDEXED BY` to pin plans, `BEGIN IMMEDIATE`).

pub mod backup;
pub mod file;
pub mod lock;
pub(super) mod mutations;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tracing::instrument;

use super::backend::{Dialect, Reads};
use super::health::Health;
use super::records::{
    self, DeadDelivery, DeliveryAttemptRecord, DeliveryCounts, DeliveryRecord, FinishedRender,
    HourlyOutcomes, PollingRecord, RecentTransition, TrackedRender, TransitionRecord, VideoDetails,
    VideoRecord,
};
use super::{Gauges, StoreError};
use crate::domain::{Millis, VideoId, VideoState};

/// How long a connection waits for another writer's lock before giving up
/// with `SQLITE_BUSY`. Generous, because a second process (the CLI) may be
/// writing at the same time as the daemon.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool. Reads run in parallel under WAL; writes are
/// serialised by SQLite (and, within the daemon, by the writer).
const MAX_CONNECTIONS: u32 = 4;

/// Page cache of the writer's connection (`PRAGMA cache_size`; negative
/// means KiB): 8 MiB instead of SQLite's 2 MiB, so that the pages every
/// commit touches (index interiors, the newest leaves) are not read back
/// from disk. Bounded, so memory does not grow with the database.
const WRITER_CACHE_SIZE: &str = "-8192";

/// The embedded migrations of the SQLite schema: applied at every open,
/// and what `restore` compares a file's recorded migrations with.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite's own words for a failed open, without sqlx's wrapping (which
/// repeats them).
fn sqlite_cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// The SQLite dialect of the write traits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sqlite;

/// An open SQLite database: the readers' pool and how to open the writer's
/// connection.
#[derive(Clone, Debug)]
pub(crate) struct SqliteDatabase {
    pool: SqlitePool,
    /// How every connection is opened, for the writer's own connection.
    options: Arc<SqliteConnectOptions>,
    /// The file's identity, corruption reports and the last write's
    /// outcome, for readiness (shared with the store and the writer).
    health: Arc<Health>,
}

impl SqliteDatabase {
    /// Opens (creating when missing, mode `0600`) the database file and its
    /// parent folders (mode `0700`), applies the embedded migrations, and
    /// records the identity of the file and of its `-wal` and `-shm`.
    ///
    /// Only start-up creates the file (here, or the daemon's
    /// [`DatabaseLock`](lock::DatabaseLock) just before): every connection
    /// opened later (the pool's, the writer's) fails if the file is gone
    /// rather than creating an empty database at the path.
    #[instrument(skip_all, fields(path = %path.display()))]
    pub(crate) async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            file::create_private_dirs(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let open_error = |cause: String| StoreError::Open {
            path: path.display().to_string(),
            cause,
        };
        let mut file = file::prepare(path).map_err(|err| open_error(err.to_string()))?;
        let (pool, options) = Self::connect(path)
            .await
            .map_err(|err| open_error(sqlite_cause(&err)))?;
        MIGRATOR.run(&pool).await?;
        // The pool's connection is open in WAL mode: `-wal` and `-shm`
        // exist, and keep their identity while a connection stays open
        // (the writer's, for the daemon's whole life).
        file.record_log_files();
        Ok(Self {
            pool,
            options: Arc::new(options),
            health: Arc::new(Health::new(Some(file))),
        })
    }

    /// Connects with the durability settings ARCHITECTURE.md explains: WAL
    /// so readers never block the writer, `synchronous=FULL` so an
    /// acknowledged commit survives power loss, a busy timeout, and foreign
    /// keys enforced.
    async fn connect(path: &Path) -> Result<(SqlitePool, SqliteConnectOptions), sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Statement journals (the undo log of one multi-row statement
            // inside a transaction) in memory rather than in a temporary
            // file opened and closed on every commit.
            .pragma("temp_store", "memory");
        // No liveness ping on every acquire (the default): a connection to a
        // local file does not go stale, and the ping is a round trip to
        // SQLite's thread before every transaction and read.
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        Ok((pool, options))
    }

    /// The shared health record.
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The readers' pool (for `store::test_support` and the store's unit
    /// tests).
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A connection outside the pool, for the writer: owning one
    /// connection for good keeps its page cache valid between commits
    /// (another connection's commit would invalidate it) and spares the
    /// pool checkout per transaction.
    pub(crate) async fn dedicated_connection(&self) -> Result<SqliteConnection, StoreError> {
        let options = (*self.options)
            .clone()
            .pragma("cache_size", WRITER_CACHE_SIZE);
        Ok(options.connect().await?)
    }

    /// Converts a read's error, remembering a corruption report for
    /// readiness.
    fn read_error(&self, err: sqlx::Error) -> StoreError {
        self.health.note_error(&err);
        StoreError::Database(err)
    }
}

impl Reads for SqliteDatabase {
    /// Each figure is an index scan: counting by state walks
    /// `videos_state_order`, the lags read the first entry of the due
    /// indexes.
    async fn gauges(&self, now: Millis) -> Result<Gauges, StoreError> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM videos GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(|err| self.read_error(err))?;
        let oldest_poll: Option<i64> = sqlx::query_scalar(
            "SELECT next_poll_at FROM videos INDEXED BY videos_due \
             WHERE state = 'active' ORDER BY next_poll_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| self.read_error(err))?;
        let oldest_delivery: Option<i64> = sqlx::query_scalar(
            "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due \
             WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| self.read_error(err))?;
        Ok(Gauges::from_rows(counts, now, oldest_poll, oldest_delivery))
    }

    /// The first entry of the `videos_due` index.
    async fn next_poll_due(&self) -> Result<Option<Millis>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_poll_at FROM videos INDEXED BY videos_due \
             WHERE state = 'active' ORDER BY next_poll_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(next.map(Millis))
    }

    /// The first entry of the `deliveries_due` index.
    async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due \
             WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(next.map(Millis))
    }

    async fn video_details(&self, video_id: &VideoId) -> Result<Option<VideoDetails>, StoreError> {
        // A pool connection opened after the file was replaced would read
        // the other file: answer from neither.
        self.health.check_file()?;
        let Some(video) = sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEO_BY_ID)
            .bind(video_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.read_error(err))?
        else {
            return Ok(None);
        };
        let transitions = sqlx::query_as::<_, TransitionRecord>(
            "SELECT kind, from_value, to_value, at FROM transitions \
             WHERE video_rowid = ? ORDER BY id",
        )
        .bind(video.id)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.read_error(err))?;
        let deliveries = sqlx::query_as::<_, DeliveryRecord>(
            "SELECT url, event_id, state, attempts, last_status, last_error, reason, \
                    next_attempt_at \
             FROM deliveries WHERE video_rowid = ? ORDER BY id",
        )
        .bind(video.id)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| self.read_error(err))?;
        Ok(Some(VideoDetails {
            video,
            transitions,
            deliveries,
        }))
    }

    async fn list_videos(
        &self,
        state: Option<VideoState>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        self.health.check_file()?;
        let rows = match state {
            Some(state) => sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEOS_PAGE_BY_STATE)
                .bind(state.as_str())
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|err| self.read_error(err))?,
            None => sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEOS_PAGE)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|err| self.read_error(err))?,
        };
        Ok(rows)
    }

    async fn browse_videos(
        &self,
        state: Option<VideoState>,
        prefix: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        self.health.check_file()?;
        sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEOS_NEWEST_FIRST)
            .bind(state.map(VideoState::as_str))
            .bind(prefix)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn delivery_attempts(
        &self,
        video_rowid: i64,
    ) -> Result<Vec<DeliveryAttemptRecord>, StoreError> {
        self.health.check_file()?;
        sqlx::query_as::<_, DeliveryAttemptRecord>(records::SELECT_DELIVERY_ATTEMPTS)
            .bind(video_rowid)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn finished_renders(
        &self,
        after: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<FinishedRender>, StoreError> {
        let (at, id) = after.unwrap_or((i64::MIN, i64::MIN));
        sqlx::query_as::<_, FinishedRender>(records::SELECT_FINISHED_RENDERS_AFTER)
            .bind(at)
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn newest_renders(&self, count: u32) -> Result<Vec<TrackedRender>, StoreError> {
        let mut rows = sqlx::query_as::<_, TrackedRender>(records::SELECT_NEWEST_RENDERS)
            .bind(count)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))?;
        rows.reverse();
        Ok(rows)
    }

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(records::SELECT_DELIVERY_COUNTS)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))?;
        Ok(DeliveryCounts::from_rows(rows))
    }

    async fn recent_transitions(&self, limit: u32) -> Result<Vec<RecentTransition>, StoreError> {
        sqlx::query_as::<_, RecentTransition>(records::SELECT_RECENT_TRANSITIONS)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn dead_deliveries(
        &self,
        before: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<DeadDelivery>, StoreError> {
        self.health.check_file()?;
        let (at, id) = before.unwrap_or((i64::MAX, i64::MAX));
        sqlx::query_as::<_, DeadDelivery>(records::SELECT_DEAD_DELIVERIES)
            .bind(at)
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn polling(&self, video_rowid: i64) -> Result<Option<PollingRecord>, StoreError> {
        self.health.check_file()?;
        sqlx::query_as::<_, PollingRecord>(records::SELECT_POLLING)
            .bind(video_rowid)
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn hourly_outcomes(&self, since: Millis) -> Result<Vec<HourlyOutcomes>, StoreError> {
        self.health.check_file()?;
        sqlx::query_as::<_, HourlyOutcomes>(records::SELECT_HOURLY_OUTCOMES)
            .bind(since.0)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))
    }

    /// Closes every connection, checkpointing the WAL.
    async fn close(&self) {
        self.pool.close().await;
    }
}

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    const BEGIN: &'static str = "BEGIN IMMEDIATE";

    fn is_request_specific(err: &StoreError) -> bool {
        super::is_constraint_or_decode(err)
    }
}

crate::store::backend::delegate_writes!(Sqlite, mutations);

impl super::writer::WriterEngine for Sqlite {
    /// A local file answers or fails; a stalled disk is waited out (the
    /// busy timeout bounds lock waits).
    const TRANSACTION_LIMIT: Option<std::time::Duration> = None;
    /// Its enqueue looks up, then inserts, under one write lock.
    const ENQUEUES_COMMIT_ALONE: bool = false;
    type Database = SqliteDatabase;

    async fn writer_connection(db: &SqliteDatabase) -> Result<SqliteConnection, StoreError> {
        db.dedicated_connection().await
    }
}
