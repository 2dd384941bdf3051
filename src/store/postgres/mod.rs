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

use std::str::FromStr as _;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tracing::instrument;

use super::StoreError;

/// Connections in the pool: reads run in parallel, and each writer
/// transaction holds one for its duration.
const MAX_CONNECTIONS: u32 = 8;

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
