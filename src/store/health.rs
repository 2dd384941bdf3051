//! What the store knows about its own health, for `/readyz` and for
//! refusing writes: whether the configured path still names the database
//! opened at startup (and `-wal`/`-shm` the files it has open), whether
//! SQLite has reported corruption, how the last write ended, and when the
//! last readiness probe committed (reused for [`PROBE_REUSE`]).
//!
//! The writer records every commit's outcome here; readers and the writer
//! report corruption here. [`Unready`] is the reason readiness gives.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::sqlite::file::{DatabaseFile, FileProblem};

/// How long a write that failed for want of storage (a full disk, an I/O
/// error, a read-only file) keeps readiness at 503 without a probe, unless
/// a write that changes something succeeds first.
///
/// A probe is one small commit, and on a nearly full disk it can still fit
/// where an enqueue no longer does: answering from the failure keeps the
/// relay out of rotation meanwhile. Failures to get the write lock are not
/// held: the probe needs that same lock, so it tests them faithfully.
pub const STORAGE_FAILURE_HOLD: Duration = Duration::from_secs(10);

/// How long a readiness probe that committed answers for later readiness
/// checks: `/readyz` is unauthenticated, and each probe is a commit with an
/// fsync, so a flood of probes would compete with enqueues. At most one
/// probe write per second; a failure is not reused (see
/// [`Health::write_failed`]).
pub const PROBE_REUSE: Duration = Duration::from_secs(1);

/// SQLite's primary result codes for another connection holding the lock
/// (`SQLITE_BUSY`, `SQLITE_LOCKED`).
const CONTENTION_CODES: [i64; 2] = [5, 6];

/// SQLite's primary result codes that mean the file's content is damaged:
/// `SQLITE_CORRUPT` (11) and `SQLITE_NOTADB` (26).
const CORRUPTION_CODES: [i64; 2] = [11, 26];

/// Why the store is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unready {
    /// The path no longer names the open database, or its log files are
    /// not the ones the relay has open.
    #[error("{0}")]
    File(FileProblem),
    /// SQLite reported that the database is damaged.
    #[error("the database is corrupt ({0}); restore it from a backup and restart the relay")]
    Corrupt(String),
    /// The probe write failed.
    #[error("the database refused a write: {0}")]
    WriteFailed(String),
    /// The probe write did not finish in time.
    #[error("the database did not complete a write within {limit:?}{}", last_failure.as_ref().map(|m| format!("; the last write failed: {m}")).unwrap_or_default())]
    Unresponsive {
        /// How long the probe was given.
        limit: Duration,
        /// Why the last write that ended failed, if it did.
        last_failure: Option<String>,
    },
}

impl Unready {
    /// Short machine-readable name, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        match self {
            Unready::File(problem) => problem.reason(),
            Unready::Corrupt(_) => "corrupt",
            Unready::WriteFailed(_) => "write_failed",
            Unready::Unresponsive { .. } => "unresponsive",
        }
    }
}

/// Shared by every clone of a store and its writer.
#[derive(Debug)]
pub struct Health {
    /// The SQLite file and its logs; `None` for PostgreSQL, whose files
    /// are the server's business.
    file: Option<DatabaseFile>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The error of the last write that ended, if it failed.
    last_failure: Option<String>,
    /// Until when a storage failure answers readiness, and its message.
    storage_failure: Option<(Instant, String)>,
    /// SQLite's message the first time it reported corruption; kept, as a
    /// damaged file does not mend itself.
    corrupt: Option<String>,
    /// The file problem already logged, so it is logged once.
    file_problem: Option<FileProblem>,
    /// When the last readiness probe that committed was asked for; cleared
    /// by a failed write, so that a failure is never hidden behind it.
    probe_succeeded_at: Option<Instant>,
}

impl Health {
    /// Health of the SQLite database `file`, or of a PostgreSQL database
    /// (`None`), with nothing known yet.
    pub fn new(file: Option<DatabaseFile>) -> Self {
        Self {
            file,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state
        // inconsistent (each update is one assignment).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the configured path still names the database opened at
    /// startup, and its `-wal` and `-shm` the files recorded then (a
    /// `stat` each). The first failure is logged as an ERROR, and a
    /// return to normal (the file renamed back) as an INFO; the checks in
    /// between are silent, so a refused request does not log.
    pub fn check_file(&self) -> Result<(), FileProblem> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let checked = file.check();
        let mut state = self.state();
        match (&checked, &state.file_problem) {
            (Err(problem), logged) if logged.as_ref() != Some(problem) => {
                error!(path = %file.path().display(), reason = problem.reason(), "{problem}; writes are refused");
                state.file_problem = Some(problem.clone());
            }
            (Ok(()), Some(_)) => {
                info!(path = %file.path().display(), "the database's files are back; writes are accepted again");
                state.file_problem = None;
            }
            _ => {}
        }
        checked
    }

    /// Records that a write committed; `changed` says whether it changed
    /// anything (only such a commit shows that storage failures are over).
    pub fn write_succeeded(&self, changed: bool) {
        let mut state = self.state();
        state.last_failure = None;
        if changed {
            state.storage_failure = None;
        }
    }

    /// Records that a write failed for a reason that concerns the whole
    /// database (locked, read-only, full, damaged, or a PostgreSQL server
    /// out of reach). Only storage failures are held for
    /// [`STORAGE_FAILURE_HOLD`]: a lock held by another connection or a
    /// server out of reach is tested faithfully by the probe, which needs
    /// the same lock and the same connection.
    pub fn write_failed(&self, err: &sqlx::Error, message: &str) {
        self.note_error(err);
        let mut state = self.state();
        state.last_failure = Some(message.to_owned());
        state.probe_succeeded_at = None;
        if !self.is_contention(err) && !self.is_disconnection(err) {
            state.storage_failure =
                Some((Instant::now() + STORAGE_FAILURE_HOLD, message.to_owned()));
        }
    }

    /// Remembers a corruption report in `err` (from a read or a write).
    pub fn note_error(&self, err: &sqlx::Error) {
        let sqlx::Error::Database(db) = err else {
            return;
        };
        if self.is_corruption(err) {
            let mut state = self.state();
            if state.corrupt.is_none() {
                error!(error = %db, "the database reports damaged data");
                state.corrupt = Some(db.message().to_owned());
            }
        }
    }

    /// The reasons known without writing: the file, corruption, and a
    /// storage failure within [`STORAGE_FAILURE_HOLD`].
    pub fn known_problem(&self) -> Result<(), Unready> {
        self.check_file().map_err(Unready::File)?;
        let state = self.state();
        if let Some(message) = &state.corrupt {
            return Err(Unready::Corrupt(message.clone()));
        }
        match &state.storage_failure {
            Some((until, message)) if Instant::now() < *until => {
                Err(Unready::WriteFailed(message.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Records that a readiness probe asked for at `at` committed.
    pub fn probe_succeeded(&self, at: Instant) {
        let mut state = self.state();
        state.probe_succeeded_at = state.probe_succeeded_at.max(Some(at));
    }

    /// Whether a probe committed for a request less than [`PROBE_REUSE`]
    /// before `now` (or after it), with no write failed since.
    pub fn probe_is_fresh(&self, now: Instant) -> bool {
        self.state()
            .probe_succeeded_at
            .is_some_and(|at| now.saturating_duration_since(at) < PROBE_REUSE)
    }

    /// The error of the last write that ended, if it failed.
    pub fn last_failure(&self) -> Option<String> {
        self.state().last_failure.clone()
    }
}

impl Health {
    /// Whether `err` says another connection holds a lock: SQLite's
    /// `SQLITE_BUSY`/`SQLITE_LOCKED`, PostgreSQL's lock timeouts and
    /// deadlocks (class 40 and `55P03`).
    fn is_contention(&self, err: &sqlx::Error) -> bool {
        match &self.file {
            Some(_) => primary_code(err).is_some_and(|code| CONTENTION_CODES.contains(&code)),
            None => sqlstate(err).is_some_and(|code| code.starts_with("40") || code == "55P03"),
        }
    }

    /// Whether `err` says the PostgreSQL server could not be reached or
    /// went away: an error of the connection itself (I/O, TLS, protocol),
    /// or the server's classes `08` (connection exception) and `57`
    /// (operator intervention: shutting down, starting up). Never for
    /// SQLite, whose I/O errors are its file's.
    fn is_disconnection(&self, err: &sqlx::Error) -> bool {
        if self.file.is_some() {
            return false;
        }
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(_) => {
                sqlstate(err).is_some_and(|code| code.starts_with("08") || code.starts_with("57"))
            }
            _ => false,
        }
    }

    /// Whether `err` says the stored data is damaged: SQLite's
    /// `SQLITE_CORRUPT`/`SQLITE_NOTADB`, PostgreSQL's class `XX` codes for
    /// corrupted data or index (`XX001`, `XX002`).
    fn is_corruption(&self, err: &sqlx::Error) -> bool {
        match &self.file {
            Some(_) => primary_code(err).is_some_and(|code| CORRUPTION_CODES.contains(&code)),
            None => sqlstate(err).is_some_and(|code| code == "XX001" || code == "XX002"),
        }
    }
}

/// PostgreSQL's SQLSTATE in `err`, if the server reported one.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    Some(db.code()?.into_owned())
}

/// SQLite's primary result code in `err`, if SQLite reported it.
fn primary_code(err: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?.parse::<i64>().ok()?;
    Some(code & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe's success answers for a second, and not at all once a
    /// write failed after it.
    #[test]
    fn a_probe_is_reused_for_a_second_and_never_past_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = super::super::sqlite::file::prepare(&dir.path().join("relay.db")).unwrap();
        let health = Health::new(Some(file));
        let start = Instant::now();
        assert!(!health.probe_is_fresh(start), "no probe yet");
        health.probe_succeeded(start);
        assert!(health.probe_is_fresh(start + Duration::from_millis(999)));
        assert!(!health.probe_is_fresh(start + PROBE_REUSE));
        health.write_failed(&sqlx::Error::PoolTimedOut, "database is locked");
        assert!(!health.probe_is_fresh(start));
    }

    /// A PostgreSQL server out of reach lasts as long as the probe fails,
    /// not [`STORAGE_FAILURE_HOLD`] longer; SQLite's failures keep it.
    #[test]
    fn a_lost_postgres_connection_is_not_held_like_a_storage_failure() {
        let lost = || sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into());
        let postgres = Health::new(None);
        postgres.write_failed(&lost(), "broken pipe");
        assert_eq!(postgres.known_problem(), Ok(()));
        assert_eq!(postgres.last_failure().as_deref(), Some("broken pipe"));

        let dir = tempfile::tempdir().unwrap();
        let file = super::super::sqlite::file::prepare(&dir.path().join("relay.db")).unwrap();
        let sqlite = Health::new(Some(file));
        sqlite.write_failed(&lost(), "disk I/O error");
        assert!(
            matches!(sqlite.known_problem(), Err(Unready::WriteFailed(_))),
            "{:?}",
            sqlite.known_problem()
        );
    }
}
