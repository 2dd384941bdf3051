//! The PostgreSQL backend: the connection pool, the embedded migrations of
//! `migrations/postgres/`, and the dialect of every statement the store
//! runs (`mutations` for the writes, `reads` for the read queries).
//!
//! Several relay instances may share one PostgreSQL database, so unlike
//! SQLite (one writer, serialised by the file lock) the statements here
//! expect concurrent writers: claims lease rows found with `FOR UPDATE SKIP
//! LOCKED`, every write is conditioned on the row's current state and
//! lease, and enqueues learn which ids they really inserted from the
//! insert itself. They assume PostgreSQL's default isolation, READ
//! COMMITTED: each statement sees what was committed before it began, and
//! an UPDATE that meets a row changed by a concurrent transaction waits for
//! it and re-checks its `WHERE` against the new version.

mod database;
pub(crate) mod mutations;
pub(crate) mod reads;
pub mod shared;

pub(crate) use database::{Postgres, PostgresDatabase};

use std::future::Future;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tracing::instrument;

use super::StoreError;

/// Connections in the pool: reads run in parallel, and each writer
/// transaction holds one for its duration.
const MAX_CONNECTIONS: u32 = 8;

/// How long a new connection, or a pooled one (whose check before use is
/// a round trip), may take. A server that refuses connections fails at
/// once; one whose machine died or whose network is cut sends nothing at
/// all, and without a limit a request would wait for the kernel to give
/// up on the TCP connection (a quarter of an hour).
pub(crate) const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// How long a statement (a read) or a writer's whole transaction may go
/// unanswered before the connection is given up as dead, for the same
/// reason. Every statement the relay runs finds its rows by key or by an
/// index with a limit and takes milliseconds; ten seconds is a server
/// that is gone (or stalled on its disk for as long, which the relay then
/// reports as unavailable too).
pub(crate) const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// `work`, unless the database leaves it unanswered for `limit`: then a
/// timed-out I/O error, which the store's health counts as a server out of
/// reach (readiness fails while it lasts, and the connection is replaced).
pub(crate) async fn answered_within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(StoreError::Database(no_answer(limit))))
}

/// `work` on a connection of `pool`, unless the database leaves it
/// unanswered for [`ANSWER_LIMIT`] (see [`answered_within`]). A connection
/// given up on is closed, not returned: the pool would first ask it
/// whether it is still usable, and a silent server never answers that, so
/// the pool's place would be lost until the kernel gave up on the socket.
pub(crate) async fn on_pooled<T>(
    pool: &PgPool,
    work: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut conn = pool.acquire().await?;
    let Ok(answer) = tokio::time::timeout(ANSWER_LIMIT, work(&mut conn)).await else {
        conn.close_on_drop();
        return Err(StoreError::Database(no_answer(ANSWER_LIMIT)));
    };
    // Returned here rather than on drop, so that the pool's check on
    // return (a round trip, which sqlx does not bound) is bounded too: a
    // server falling silent just after answering would otherwise keep the
    // connection's place for good. Given up on, the check's future drops
    // the connection, which frees its place.
    if tokio::time::timeout(ANSWER_LIMIT, conn.return_to_pool())
        .await
        .is_err()
    {
        tracing::debug!("a pooled connection did not answer its check on return; closed");
    }
    answer
}

/// A boxed future borrowing a connection for `'c`.
pub(crate) type BoxFuture<'c, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// The error of a database that did not answer within `limit`.
pub(crate) fn no_answer(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the database did not answer within {} s", limit.as_secs()),
    ))
}

/// Connects to the PostgreSQL database at `url` (`postgres://…` or
/// `postgresql://…`, including `?host=/socket/folder` for a Unix socket)
/// and applies the embedded migrations.
///
/// Several instances starting at once are safe: sqlx takes an advisory
/// lock around the migrations, so one applies them and the others find
/// them applied.
#[instrument(skip_all)]
pub(crate) async fn connect(url: &str) -> Result<(PgPool, PgConnectOptions), StoreError> {
    let open_error = |cause: String| StoreError::Open {
        path: crate::config::redact_database_url(url),
        cause,
    };
    let options = PgConnectOptions::from_str(url)
        .map_err(|err| open_error(cause(&err)))?
        .application_name("jogg-relay");
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(CONNECT_LIMIT)
        .connect_with(options.clone())
        .await
        .map_err(|err| open_error(cause(&err)))?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok((pool, options))
}

/// The server's own words for a failed connection, without sqlx's wrapping.
fn cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod test_db {
    use sqlx::postgres::PgPool;

    /// A fresh, migrated database for one test, on the test binary's
    /// throwaway cluster.
    pub(crate) struct TestDb {
        /// The pool on the test's database (migrated).
        pub(crate) pool: PgPool,
    }

    impl TestDb {
        /// Creates and migrates a database for `test`, or returns `None`
        /// (reported loudly, or a panic under
        /// `JOGG_RELAY_REQUIRE_POSTGRES=1`) when PostgreSQL's server
        /// binaries are missing.
        pub(crate) async fn create(test: &str) -> Option<Self> {
            let cluster = crate::scratch_postgres::shared_for_tests()?;
            let url = cluster
                .create_database()
                .await
                .unwrap_or_else(|err| panic!("{test}: cannot create a database: {err}"));
            let (pool, _) = super::connect(&url).await.unwrap();
            Some(Self { pool })
        }

        /// A connection of its own (a second relay instance's, say).
        pub(crate) async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
            self.pool.acquire().await.unwrap()
        }

        /// Closes the pool (the cluster goes with the test binary).
        pub(crate) async fn drop_db(self) {
            self.pool.close().await;
        }
    }
}
