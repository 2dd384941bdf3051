//! The PostgreSQL engine behind the storage seam: the pool the reads use,
//! the writer's own connection, and the write traits over [`mutations`].

use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgConnection};

use super::{ANSWER_LIMIT, CONNECT_LIMIT, answered_within, mutations, on_pooled, reads};
use crate::domain::{Millis, VideoId, VideoState};
use crate::store::backend::{Dialect, Reads};
use crate::store::health::Health;
use crate::store::records::{
    DeadDelivery, DeliveryAttemptRecord, DeliveryCounts, FinishedRender, HourlyOutcomes,
    PollingRecord, RecentTransition, TrackedRender, VideoDetails, VideoRecord,
};
use crate::store::writer::WriterEngine;
use crate::store::{Gauges, StoreError};

/// Connections for the shared gate: reservations from a relay's polls in
/// flight, pause updates, and the wake-up listener's own.
const GATE_CONNECTIONS: u32 = 4;

/// The PostgreSQL dialect of the write traits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Postgres;

/// An open PostgreSQL database: the readers' pool and how to open the
/// writer's connection.
#[derive(Clone, Debug)]
pub(crate) struct PostgresDatabase {
    pool: PgPool,
    /// Connections for the shared gate's row (see [`GATE_CONNECTIONS`]).
    gate_pool: PgPool,
    /// How the writer's own connection is opened (and reopened).
    options: Arc<PgConnectOptions>,
    /// Corruption reports and the last write's outcome, for readiness.
    health: Arc<Health>,
}

impl PostgresDatabase {
    /// Connects to `url` and applies the embedded migrations.
    pub(crate) async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, options) = super::connect(url).await?;
        // Every upstream request commits a reservation on the one gate
        // row, which stays locked until the commit returns: waiting for
        // the log flush there would cap every relay together at one
        // request per flush. Reservations need no durability (a server
        // crash forgets the last few, which only makes the next slots
        // come a little sooner; the queue's own commits keep waiting).
        let gate_pool = PgPoolOptions::new()
            .max_connections(GATE_CONNECTIONS)
            .acquire_timeout(super::CONNECT_LIMIT)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        Ok(Self {
            pool,
            gate_pool,
            options: Arc::new(options),
            health: Arc::new(Health::new(None)),
        })
    }

    /// The shared health record.
    pub(crate) fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The pool of the shared gate's statements and the wake-up listener.
    pub(crate) fn gate_pool(&self) -> &PgPool {
        &self.gate_pool
    }

    /// A read's error, remembered when it reports damaged data.
    fn read_error(&self, err: StoreError) -> StoreError {
        if let StoreError::Database(cause) = &err {
            self.health.note_error(cause);
        }
        err
    }
}

impl Reads for PostgresDatabase {
    async fn gauges(&self, now: Millis) -> Result<Gauges, StoreError> {
        on_pooled(&self.pool, |conn| Box::pin(reads::gauges(conn, now)))
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn next_poll_due(&self) -> Result<Option<Millis>, StoreError> {
        on_pooled(&self.pool, |conn| Box::pin(reads::next_poll_due(conn))).await
    }

    async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        on_pooled(&self.pool, |conn| Box::pin(reads::next_delivery_due(conn))).await
    }

    async fn video_details(&self, video_id: &VideoId) -> Result<Option<VideoDetails>, StoreError> {
        // The closure's future may not borrow the caller's id.
        let video_id = video_id.clone();
        on_pooled(&self.pool, move |conn| {
            Box::pin(async move { reads::video_details(conn, &video_id).await })
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn list_videos(
        &self,
        state: Option<VideoState>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::list_videos(conn, state, after, limit))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn browse_videos(
        &self,
        state: Option<VideoState>,
        prefix: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<VideoRecord>, StoreError> {
        // The closure's future may not borrow the caller's prefix.
        let prefix = prefix.to_owned();
        on_pooled(&self.pool, move |conn| {
            let prefix = prefix.clone();
            Box::pin(async move { reads::browse_videos(conn, state, &prefix, before, limit).await })
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn delivery_attempts(
        &self,
        video_rowid: i64,
    ) -> Result<Vec<DeliveryAttemptRecord>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::delivery_attempts(conn, video_rowid))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn finished_renders(
        &self,
        after: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<FinishedRender>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::finished_renders(conn, after, limit))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn newest_renders(&self, count: u32) -> Result<Vec<TrackedRender>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::newest_renders(conn, count))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn delivery_counts(&self) -> Result<DeliveryCounts, StoreError> {
        on_pooled(&self.pool, |conn| Box::pin(reads::delivery_counts(conn)))
            .await
            .map_err(|err| self.read_error(err))
    }

    async fn recent_transitions(&self, limit: u32) -> Result<Vec<RecentTransition>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::recent_transitions(conn, limit))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn dead_deliveries(
        &self,
        before: Option<(i64, i64)>,
        limit: u32,
    ) -> Result<Vec<DeadDelivery>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::dead_deliveries(conn, before, limit))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn polling(&self, video_rowid: i64) -> Result<Option<PollingRecord>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::polling(conn, video_rowid))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn hourly_outcomes(&self, since: Millis) -> Result<Vec<HourlyOutcomes>, StoreError> {
        on_pooled(&self.pool, |conn| {
            Box::pin(reads::hourly_outcomes(conn, since))
        })
        .await
        .map_err(|err| self.read_error(err))
    }

    async fn close(&self) {
        // Closing waits for every connection to come back; one lost to a
        // silent server (see `on_pooled`) comes back within the answer
        // limit, and a shutdown waits no longer than that.
        for pool in [&self.gate_pool, &self.pool] {
            if tokio::time::timeout(super::ANSWER_LIMIT, pool.close())
                .await
                .is_err()
            {
                tracing::warn!("a database connection did not close in time; leaving it");
            }
        }
    }
}

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    /// READ COMMITTED: every statement here re-checks its row's state and
    /// lease, which PostgreSQL re-evaluates on the newest row version.
    const BEGIN: &'static str = "BEGIN";

    /// Besides constraints and decoding, a serialization failure or a
    /// deadlock (class 40) between relays concerns the transaction, not
    /// the database: the batch is retried request by request.
    fn is_request_specific(err: &StoreError) -> bool {
        if let StoreError::Database(sqlx::Error::Database(db)) = err
            && db.code().is_some_and(|code| code.starts_with("40"))
        {
            return true;
        }
        crate::store::is_constraint_or_decode(err)
    }
}

impl WriterEngine for Postgres {
    type Database = PostgresDatabase;
    const TRANSACTION_LIMIT: Option<std::time::Duration> = Some(ANSWER_LIMIT);
    /// `insert_videos` writes with its one INSERT and then only reads.
    const ENQUEUES_COMMIT_ALONE: bool = true;

    async fn writer_connection(db: &PostgresDatabase) -> Result<PgConnection, StoreError> {
        answered_within(CONNECT_LIMIT, async { Ok(db.options.connect().await?) }).await
    }
}

crate::store::backend::delegate_writes!(Postgres, mutations);
