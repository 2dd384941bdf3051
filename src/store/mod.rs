//! All persistence: the SQLite connection set-up, the embedded migrations,
//! the read queries, and (in [`writer`]) the single group-commit writer that
//! every API write goes through.
//!
//! Times are stored as [`Millis`]; see `migrations/` for the schema and the
//! reasoning behind each index.

pub mod file;
pub mod health;
pub mod lock;
mod mutations;
// Not wired to `Store` yet: the backend seam will call it.
#[allow(dead_code)]
mod postgres;
pub mod records;
mod rows;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tracing::instrument;

use self::health::Health;
use crate::config::DatabaseConfig;
use crate::domain::{Millis, VideoId, VideoState};

pub use health::Unready;
pub use lock::{DatabaseLock, LockError};
pub use records::{
    CancelOutcome, ConflictingFields, DeliveryRecord, EnqueueOutcome, FinishedRender, HintOutcome,
    NewVideo, PushHint, RedeliverOutcome, TrackedRender, TransitionRecord, VideoDetails,
    VideoRecord,
};
pub use writer::Writer;

/// How long a connection waits for another writer's lock before giving up
/// with `SQLITE_BUSY`. Generous, because a second process (the CLI) may be
/// writing at the same time as the daemon.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool. Reads run in parallel under WAL; writes are
/// serialised by SQLite (and, within the daemon, by [`Writer`]).
const MAX_CONNECTIONS: u32 = 4;

/// Page cache of the writer's connection (`PRAGMA cache_size`; negative
/// means KiB): 8 MiB instead of SQLite's 2 MiB, so that the pages every
/// commit touches (index interiors, the newest leaves) are not read back
/// from disk. Bounded, so memory does not grow with the database.
const WRITER_CACHE_SIZE: &str = "-8192";

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

/// SQLite's own words for a failed open, without sqlx's wrapping (which
/// repeats them).
fn sqlite_cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
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

/// Handle to the database: a connection pool with the relay's pragmas.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// How every connection is opened, for the writer's own connection
    /// (shared: a `Store` is cloned into every request's state).
    options: Arc<SqliteConnectOptions>,
    /// The file's identity, corruption reports and the last write's
    /// outcome, for readiness.
    health: Arc<Health>,
}

impl Store {
    /// Opens (creating when missing, mode `0600`) the database file and its
    /// parent folders (mode `0700`), applies the embedded migrations, and
    /// records the identity of the file and of its `-wal` and `-shm`.
    ///
    /// Only start-up creates the file (here, or the daemon's
    /// [`DatabaseLock`] just before): every connection opened later (the
    /// pool's, the writer's) fails if the file is gone rather than creating
    /// an empty database at the path.
    #[instrument(skip_all, fields(path = %config.path.display()))]
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            file::create_private_dirs(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let open_error = |cause: String| StoreError::Open {
            path: config.path.display().to_string(),
            cause,
        };
        let mut file = file::prepare(&config.path).map_err(|err| open_error(err.to_string()))?;
        let (pool, options) = Self::connect(&config.path)
            .await
            .map_err(|err| open_error(sqlite_cause(&err)))?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        // The pool's connection is open in WAL mode: `-wal` and `-shm`
        // exist, and keep their identity while a connection stays open
        // (the writer's, for the daemon's whole life).
        file.record_log_files();
        Ok(Self {
            pool,
            options: Arc::new(options),
            health: Arc::new(Health::new(file)),
        })
    }

    /// Connects with the durability settings ARCHITECTURE.md explains: WAL so readers never
    /// block the writer, `synchronous=FULL` so an acknowledged commit survives
    /// power loss, a busy timeout, and foreign keys enforced.
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

    /// The shared health record (for the writer).
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Converts a read's error, remembering a corruption report for
    /// readiness.
    fn read_error(&self, err: sqlx::Error) -> StoreError {
        self.health.note_error(&err);
        StoreError::Database(err)
    }

    /// A connection outside the pool, for the [`Writer`]: owning one
    /// connection for good keeps its page cache valid between commits
    /// (another connection's commit would invalidate it) and spares the
    /// pool checkout per transaction.
    pub(crate) async fn dedicated_connection(&self) -> Result<SqliteConnection, StoreError> {
        let options = (*self.options)
            .clone()
            .pragma("cache_size", WRITER_CACHE_SIZE);
        Ok(options.connect().await?)
    }

    /// The underlying pool, for the store's unit tests. Only `store` runs
    /// SQL: the integration tests use `store::test_support` (feature
    /// `test-support`).
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Videos per state, and how late the most overdue poll and delivery
    /// are at `now` (seconds, 0 when nothing is overdue). Each figure is an
    /// index scan: counting by state walks `videos_state_order`, the lags
    /// read the first entry of the due indexes.
    pub async fn gauges(&self, now: Millis) -> Result<Gauges, StoreError> {
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
        let lag = |due: Option<i64>| due.map_or(0.0, |at| ((now.0 - at).max(0) as f64) / 1000.0);
        Ok(Gauges {
            videos: counts
                .into_iter()
                .filter_map(|(state, n)| Some((state.parse().ok()?, u64::try_from(n).ok()?)))
                .collect(),
            poll_lag_seconds: lag(oldest_poll),
            delivery_lag_seconds: lag(oldest_delivery),
        })
    }

    /// When the next active video is due for a poll (`None`: none is
    /// active), for the poller's idle wait: the first entry of the
    /// `videos_due` index. Errors are returned as they are (the caller
    /// waits its longest instead).
    pub async fn next_poll_due(&self) -> Result<Option<Millis>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_poll_at FROM videos INDEXED BY videos_due \
             WHERE state = 'active' ORDER BY next_poll_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(next.map(Millis))
    }

    /// When the next pending delivery is due (`None`: none is pending),
    /// for the delivery worker's idle wait: the first entry of the
    /// `deliveries_due` index. Errors are returned as they are.
    pub async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due \
             WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(next.map(Millis))
    }

    /// One video with its transitions and deliveries, or `None`.
    #[instrument(skip(self), level = "debug")]
    pub async fn video_details(
        &self,
        video_id: &VideoId,
    ) -> Result<Option<VideoDetails>, StoreError> {
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

    /// A page of videos in insertion order, starting after row `after`.
    ///
    /// Ordering by the never-reused rowid is what makes cursor pagination
    /// stable: rows inserted while a client pages land after every cursor it
    /// already holds, so each row is seen exactly once.
    #[instrument(skip(self), level = "debug")]
    pub async fn list_videos(
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

    /// Finished renders (videos JoggAI reported completed or failed), in
    /// the order they finished, starting after `after` (`terminal_at`,
    /// rowid), at most `limit`. What the learned schedule replays at start
    /// and `export-renders` writes out.
    #[instrument(skip(self), level = "debug")]
    pub async fn finished_renders(
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

    /// The newest `count` videos (by rowid, whatever their state), oldest
    /// first: what the learned schedule replays at start.
    #[instrument(skip(self), level = "debug")]
    pub async fn newest_renders(&self, count: u32) -> Result<Vec<TrackedRender>, StoreError> {
        let mut rows = sqlx::query_as::<_, TrackedRender>(records::SELECT_NEWEST_RENDERS)
            .bind(count)
            .fetch_all(&self.pool)
            .await
            .map_err(|err| self.read_error(err))?;
        rows.reverse();
        Ok(rows)
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
