//! The PostgreSQL backend: the connection pool, the embedded migrations of
//! `migrations/postgres/`, and the dialect of every statement the store
//! runs ([`mutations`] for the writes, [`reads`] for the read queries).
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

pub(crate) mod mutations;
pub(crate) mod reads;

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
pub(crate) async fn connect(url: &str) -> Result<PgPool, StoreError> {
    let open_error = |cause: String| StoreError::Open {
        path: redacted(url),
        cause,
    };
    let options = PgConnectOptions::from_str(url)
        .map_err(|err| open_error(cause(&err)))?
        .application_name("jogg-relay");
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .connect_with(options)
        .await
        .map_err(|err| open_error(cause(&err)))?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}

/// The server's own words for a failed connection, without sqlx's wrapping.
fn cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// `url` without its password, for messages: the URL names the database,
/// the password must never appear in a log or an error.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have a password at all.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "the configured PostgreSQL database".to_owned(),
    }
}

/// A fresh, migrated database per test on the server named by
/// `JOGG_RELAY_TEST_PG_URL`, or `None` (with a loud note on stderr) when it
/// is not set.
#[cfg(test)]
pub(crate) mod test_db {
    use sqlx::Connection as _;
    use sqlx::postgres::{PgConnection, PgPool};

    /// The environment variable naming a server the tests may create
    /// databases on.
    const URL_VAR: &str = "JOGG_RELAY_TEST_PG_URL";

    /// A database created for one test; dropped by [`TestDb::drop_db`].
    pub(crate) struct TestDb {
        /// The pool on the test's database (migrated).
        pub(crate) pool: PgPool,
        /// The server's URL, for dropping the database.
        admin_url: String,
        /// The database's name.
        name: String,
    }

    impl TestDb {
        /// Creates and migrates a database named after `test`, or returns
        /// `None` when no server is configured.
        pub(crate) async fn create(test: &str) -> Option<Self> {
            let Ok(admin_url) = std::env::var(URL_VAR) else {
                eprintln!("SKIPPED (no {URL_VAR}): {test}");
                return None;
            };
            let name = format!("jr_{}_{}", test, fastrand::u32(..));
            let mut admin = PgConnection::connect(&admin_url).await.unwrap();
            // The name is built from a test's name and a number: no quoting
            // issue can arise. (One statement per call: CREATE DATABASE
            // cannot run in the implicit transaction of a multi-statement
            // string.)
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
            let mut url = url::Url::parse(&admin_url).unwrap();
            url.set_path(&format!("/{name}"));
            let pool = super::connect(url.as_str()).await.unwrap();
            Some(Self {
                pool,
                admin_url,
                name,
            })
        }

        /// A connection of its own (a second relay instance's, say).
        pub(crate) async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
            self.pool.acquire().await.unwrap()
        }

        /// Closes the pool and drops the database.
        pub(crate) async fn drop_db(self) {
            self.pool.close().await;
            let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await
            .unwrap();
            admin.close().await.unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    /// A password never reaches an error message.
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redacted("postgres://relay:s3cret@db.example.com:5432/relay"),
            "postgres://relay:***@db.example.com:5432/relay"
        );
        assert_eq!(
            super::redacted("postgres://relay@localhost/relay?host=/run/pg"),
            "postgres://relay@localhost/relay?host=/run/pg"
        );
        assert!(!super::redacted("postgres://u:s3cret@[bad").contains("s3cret"));
    }
}
