//! The SQLite side of `backup` and `restore` (README, "Backup and
//! restore"): copying a database with `VACUUM INTO`, and checking that a
//! file is a relay database this binary can run on.
//!
//! `VACUUM INTO` runs in one read transaction, so the copy is the database
//! as one commit left it, while the daemon keeps writing (WAL readers do not
//! block the writer), and it reads the write-ahead log too, so a source
//! with uncommitted-to-file pages is copied whole. It needs no lock of the
//! relay's and opens the source read-only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, SqliteConnection};
use tracing::instrument;

use super::MIGRATOR;

/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long the copy waits for a lock held by a writer (a checkpoint
/// restarting the log, say) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many lines of an integrity report go into a message.
const REPORT_LINES: usize = 5;

/// Why a copy or a check failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The file is not a SQLite database at all.
    #[error("{path} is not a SQLite database")]
    NotSqlite {
        /// The file.
        path: PathBuf,
    },
    /// SQLite's integrity check found damage.
    #[error("{path} is damaged: PRAGMA quick_check reports: {report}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The first lines of the report.
        report: String,
    },
    /// A SQLite database, but not one of jogg-relay's.
    #[error("{path} is not a jogg-relay database: {why}")]
    NotRelay {
        /// The file.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// A relay database with migrations this binary does not have.
    #[error(
        "{path} was made by a newer jogg-relay (its schema has migration {version}; this \
         jogg-relay knows migrations up to {known}): restore it with that version or newer"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its newest migration.
        version: i64,
        /// The newest migration this binary has.
        known: i64,
    },
    /// A relay database whose schema does not match this binary's.
    #[error("{path} is a jogg-relay database of an incompatible schema: {why}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Which migration differs.
        why: String,
    },
    /// SQLite or the file system failed.
    #[error("cannot read {path}: {cause}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's or the operating system's message.
        cause: String,
    },
}

/// What a checked database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rows in `videos`.
    pub videos: u64,
    /// Its newest applied migration.
    pub schema_version: i64,
}

/// The failure of an operation on `path`, in SQLite's own words; a file
/// with SQLite's header and garbage after it fails with `SQLITE_NOTADB` at
/// the first read, which is said as for a file without the header.
fn sqlite_error(path: &Path) -> impl Fn(sqlx::Error) -> CopyError + '_ {
    move |err| {
        let cause = super::sqlite_cause(&err);
        if cause.contains("file is not a database") {
            CopyError::NotSqlite {
                path: path.to_owned(),
            }
        } else {
            CopyError::Sqlite {
                path: path.to_owned(),
                cause,
            }
        }
    }
}

/// Opens `path`, never creating it; read-only when `read_only`.
async fn connect(path: &Path, read_only: bool) -> Result<SqliteConnection, CopyError> {
    connect_waiting(path, read_only, BUSY_TIMEOUT).await
}

/// [`connect`], waiting at most `patience` for a lock another connection
/// holds.
async fn connect_waiting(
    path: &Path,
    read_only: bool,
    patience: Duration,
) -> Result<SqliteConnection, CopyError> {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .read_only(read_only)
        .busy_timeout(patience)
        .connect()
        .await
        .map_err(sqlite_error(path))
}

/// Folds the write-ahead log of the database at `path` into the file and
/// empties it (`wal_checkpoint(TRUNCATE)`), so that the file alone holds
/// every commit and can be given another name without its log. Fails on a
/// database too damaged to open or checkpoint, or one another connection
/// keeps busy.
pub async fn fold_log(path: &Path) -> Result<(), CopyError> {
    fold_log_waiting(path, BUSY_TIMEOUT).await
}

/// [`fold_log`], waiting at most `patience` for busy connections.
async fn fold_log_waiting(path: &Path, patience: Duration) -> Result<(), CopyError> {
    let mut conn = connect_waiting(path, false, patience).await?;
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut conn)
        .await
        .map_err(sqlite_error(path))?;
    conn.close().await.map_err(sqlite_error(path))?;
    if busy != 0 {
        return Err(CopyError::Sqlite {
            path: path.to_owned(),
            cause: "its write-ahead log could not be checkpointed: a connection is busy".into(),
        });
    }
    Ok(())
}

/// Whether `path` starts with SQLite's header; a file too short to hold
/// one is not a database either.
fn check_header(path: &Path) -> Result<(), CopyError> {
    use std::io::Read as _;
    let mut header = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut header));
    match read {
        Ok(()) if &header == HEADER => Ok(()),
        Ok(()) => Err(CopyError::NotSqlite {
            path: path.to_owned(),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(CopyError::NotSqlite {
            path: path.to_owned(),
        }),
        Err(err) => Err(CopyError::Sqlite {
            path: path.to_owned(),
            cause: err.to_string(),
        }),
    }
}

/// Writes a consistent copy of the database at `source` into `target`,
/// which must exist and be empty (`VACUUM INTO` refuses anything else, so
/// the caller creates it with the mode it wants). The source is opened
/// read-only and needs no lock; the copy is not yet synced to disk.
#[instrument(skip_all, fields(source = %source.display(), target = %target.display()))]
pub async fn copy_into(source: &Path, target: &Path) -> Result<(), CopyError> {
    check_header(source)?;
    let target_text = target.to_str().ok_or_else(|| CopyError::Sqlite {
        path: target.to_owned(),
        cause: "the path is not valid UTF-8".to_owned(),
    })?;
    let mut conn = connect(source, true).await?;
    let copied = sqlx::query("VACUUM INTO ?")
        .bind(target_text)
        .execute(&mut conn)
        .await
        .map_err(sqlite_error(source));
    let _ = conn.close().await;
    copied.map(drop)
}

/// Checks a copy made by [`copy_into`] as [`inspect`] does and makes it
/// self-contained: rollback-journal mode, so that the file alone is the
/// database (the relay switches it back to WAL when it opens it).
#[instrument(skip_all, fields(path = %path.display()))]
pub async fn finish_copy(path: &Path) -> Result<Summary, CopyError> {
    let mut conn = connect(path, false).await?;
    let finished = async {
        sqlx::query("PRAGMA journal_mode = DELETE")
            .execute(&mut conn)
            .await
            .map_err(sqlite_error(path))?;
        check(&mut conn, path).await
    }
    .await;
    conn.close().await.map_err(sqlite_error(path))?;
    finished
}

/// Checks, read-only, that `path` is an undamaged relay database whose
/// schema this binary can run on (every migration one of its own, as it
/// has it; older schemas are fine, `serve` migrates them), and summarises
/// it.
#[instrument(skip_all, fields(path = %path.display()))]
pub async fn inspect(path: &Path) -> Result<Summary, CopyError> {
    check_header(path)?;
    let mut conn = connect(path, true).await?;
    let checked = check(&mut conn, path).await;
    let _ = conn.close().await;
    checked
}

/// The checks of [`inspect`] on an open connection.
async fn check(conn: &mut SqliteConnection, path: &Path) -> Result<Summary, CopyError> {
    let report: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_all(&mut *conn)
        .await
        .map_err(sqlite_error(path))?;
    if report != ["ok"] {
        return Err(CopyError::Damaged {
            path: path.to_owned(),
            report: report
                .into_iter()
                .take(REPORT_LINES)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let schema_version = check_schema(conn, path).await?;
    let videos: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM videos")
        .fetch_one(&mut *conn)
        .await
        .map_err(sqlite_error(path))?;
    Ok(Summary {
        videos: videos.try_into().unwrap_or(0),
        schema_version,
    })
}

/// Compares the migrations recorded in `path` with this binary's: the
/// first must be the relay's own (else it is some other program's
/// database), none may be newer than the newest known, and every one must
/// have completed and match this binary's text (a changed migration is a
/// schema `serve` would refuse). Returns the newest applied.
async fn check_schema(conn: &mut SqliteConnection, path: &Path) -> Result<i64, CopyError> {
    let not_relay = |why: &str| CopyError::NotRelay {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let has_table: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema \
         WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(sqlite_error(path))?;
    if !has_table {
        return Err(not_relay("it has no migrations table"));
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(sqlite_error(path))?;
    let known = |version: i64| MIGRATOR.iter().find(|m| m.version == version);
    let newest_known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let first = MIGRATOR.iter().min_by_key(|m| m.version);
    let first_matches = first.is_some_and(|first| {
        applied.iter().any(|(version, checksum, _)| {
            *version == first.version && **checksum == *first.checksum
        })
    });
    if !first_matches {
        return Err(not_relay(
            "its first migration is not jogg-relay's (another program's database)",
        ));
    }
    if let Some(&(version, ..)) = applied.iter().rev().find(|(v, ..)| *v > newest_known) {
        return Err(CopyError::Newer {
            path: path.to_owned(),
            version,
            known: newest_known,
        });
    }
    let incompatible = |why: String| CopyError::Incompatible {
        path: path.to_owned(),
        why,
    };
    for (version, checksum, success) in &applied {
        let Some(migration) = known(*version) else {
            return Err(incompatible(format!(
                "migration {version} is not one of this jogg-relay's"
            )));
        };
        if !success {
            return Err(incompatible(format!(
                "migration {version} did not complete"
            )));
        }
        if **checksum != *migration.checksum {
            return Err(incompatible(format!(
                "migration {version} differs from this jogg-relay's"
            )));
        }
    }
    Ok(applied.last().map_or(0, |(version, ..)| *version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay database at `path`, created and migrated as `serve` does.
    async fn relay_database(path: &Path) {
        use crate::store::backend::Reads as _;
        let db = super::super::SqliteDatabase::open(path).await.unwrap();
        db.close().await;
    }

    #[tokio::test]
    async fn a_copy_of_a_fresh_relay_database_passes_its_own_check() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("relay.db");
        relay_database(&source).await;
        let target = dir.path().join("copy.db");
        std::fs::File::create(&target).unwrap();
        copy_into(&source, &target).await.unwrap();
        let summary = finish_copy(&target).await.unwrap();
        let newest = MIGRATOR.iter().map(|m| m.version).max().unwrap();
        assert_eq!(
            summary,
            Summary {
                videos: 0,
                schema_version: newest
            }
        );
        assert_eq!(inspect(&target).await.unwrap(), summary);
        // Self-contained: nothing beside the copy once it is closed.
        assert!(!dir.path().join("copy.db-wal").exists());
        assert!(!dir.path().join("copy.db-journal").exists());
    }

    #[tokio::test]
    async fn a_changed_or_unfinished_migration_is_an_incompatible_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        relay_database(&path).await;
        for (n, (change, expected)) in [
            (
                "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2",
                "migration 2 differs",
            ),
            (
                "UPDATE _sqlx_migrations SET success = FALSE WHERE version = 3",
                "migration 3 did not complete",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let copy = dir.path().join(format!("copy-{n}.db"));
            std::fs::File::create(&copy).unwrap();
            copy_into(&path, &copy).await.unwrap();
            let mut conn = connect(&copy, false).await.unwrap();
            sqlx::query(change).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            let err = inspect(&copy).await.unwrap_err();
            assert!(matches!(err, CopyError::Incompatible { .. }), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    /// A log that a reader still needs cannot be emptied: the fold must
    /// say so (restore then keeps the log beside the replaced database)
    /// rather than let the log be thrown away with commits in it.
    #[tokio::test]
    async fn a_log_a_reader_still_needs_is_not_reported_folded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        relay_database(&path).await;
        let mut writer = connect(&path, false).await.unwrap();
        for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA wal_autocheckpoint = 0"] {
            sqlx::query(pragma).execute(&mut writer).await.unwrap();
        }
        let mut reader = connect(&path, true).await.unwrap();
        sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
        let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM videos")
            .fetch_one(&mut reader)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE later (x)")
            .execute(&mut writer)
            .await
            .unwrap();
        let wal = dir.path().join("relay.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);

        let err = fold_log_waiting(&path, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("a connection is busy"), "{err}");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "log emptied");

        sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
        reader.close().await.unwrap();
        writer.close().await.unwrap();
        fold_log(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    }

    /// Another program built on the same migration tool numbers its first
    /// migration 1 too: a version alone does not make a relay database.
    #[tokio::test]
    async fn another_programs_migrations_are_not_the_relays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        for statement in [
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (1, 'create notes', TRUE, x'0badc0de', 1)",
            "CREATE TABLE notes (body TEXT)",
        ] {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
        let err = inspect(&path).await.unwrap_err();
        assert!(matches!(err, CopyError::NotRelay { .. }), "{err}");
        assert!(err.to_string().contains("another program"), "{err}");
    }

    /// A path that cannot be read is reported with the system's reason,
    /// not as a file of the wrong kind.
    #[tokio::test]
    async fn an_unreadable_path_is_reported_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(dir.path()).await.unwrap_err();
        assert!(matches!(err, CopyError::Sqlite { .. }), "{err}");
        assert!(err.to_string().contains("directory"), "{err}");
    }

    /// A file too short for SQLite's header is no database: an empty one
    /// (what the daemon's lock leaves where no database was, which SQLite
    /// would open as an empty database) or a cut one. Both as the source
    /// of a copy and as a file to restore.
    #[tokio::test]
    async fn an_empty_or_short_file_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [("empty.db", &b""[..]), ("short.db", b"SQLite")] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let err = inspect(&path).await.unwrap_err();
            assert!(matches!(err, CopyError::NotSqlite { .. }), "{name}: {err}");
            let copy = dir.path().join(format!("copy-{name}"));
            std::fs::write(&copy, b"").unwrap();
            let err = copy_into(&path, &copy).await.unwrap_err();
            assert!(matches!(err, CopyError::NotSqlite { .. }), "{name}: {err}");
        }
    }
}
