//! All persistence: the SQLite connection set-up, the embedded migrations,
//! the read queries, and (in [`writer`]) the single group-commit writer that
//! every API write goes through.
//!
//! Times are stored as [`Millis`]; see `migrations/` for the schema and the
//! reasoning behind each index.

mod mutations;
pub mod records;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tracing::instrument;

use crate::config::DatabaseConfig;
use crate::domain::{VideoId, VideoState};

pub use records::{
    AttemptRecord, CancelOutcome, ClaimedDelivery, ClaimedVideo, DeliveryNext, DeliveryRecord,
    EnqueueOutcome, NewTransition, NewVideo, PollUpdate, RedeliverOutcome, Release, TerminalChange,
    TransitionRecord, UpstreamFields, VideoDetails, VideoRecord,
};
pub use writer::Writer;

/// How long a connection waits for another writer's lock before giving up
/// with `SQLITE_BUSY`. Generous, because a second process (the CLI) may be
/// writing at the same time as the daemon.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool. Reads run in parallel under WAL; writes are
/// serialised by SQLite (and, within the daemon, by [`Writer`]).
const MAX_CONNECTIONS: u32 = 4;

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
    /// Applying the embedded migrations failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The writer task has stopped (the process is shutting down).
    #[error("the database writer has stopped")]
    WriterStopped,
}

/// Handle to the database: a connection pool with the relay's pragmas.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating when missing) the database file and its parent folder,
    /// and applies the embedded migrations.
    #[instrument(skip_all, fields(path = %config.path.display()))]
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let store = Self::connect(&config.path).await?;
        sqlx::migrate!("./migrations").run(&store.pool).await?;
        Ok(store)
    }

    /// Connects with the durability settings of DESIGN 4: WAL so readers never
    /// block the writer, `synchronous=FULL` so an acknowledged commit survives
    /// power loss, a busy timeout, and foreign keys enforced.
    async fn connect(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// The underlying pool, for the writer and the workers.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers a trivial query (for `/readyz`).
    pub async fn is_usable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// One video with its transitions and deliveries, or `None`.
    #[instrument(skip(self))]
    pub async fn video_details(
        &self,
        video_id: &VideoId,
    ) -> Result<Option<VideoDetails>, StoreError> {
        let Some(video) = sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEO_BY_ID)
            .bind(video_id.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let transitions = sqlx::query_as::<_, TransitionRecord>(
            "SELECT kind, from_value, to_value, at FROM transitions \
             WHERE video_rowid = ? ORDER BY id",
        )
        .bind(video.id)
        .fetch_all(&self.pool)
        .await?;
        let deliveries = sqlx::query_as::<_, DeliveryRecord>(
            "SELECT url, event_id, state, attempts, last_status, last_error, reason, \
                    next_attempt_at \
             FROM deliveries WHERE video_rowid = ? ORDER BY id",
        )
        .bind(video.id)
        .fetch_all(&self.pool)
        .await?;
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
    #[instrument(skip(self))]
    pub async fn list_videos(
        &self,
        state: Option<VideoState>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        let rows = match state {
            Some(state) => {
                sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEOS_PAGE_BY_STATE)
                    .bind(state.as_str())
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_as::<_, VideoRecord>(records::SELECT_VIDEOS_PAGE)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows)
    }
}
