//! What the store knows about its own health, for `/readyz` and for
//! refusing writes: whether the configured path still names the database
//! opened at startup, whether SQLite has reported corruption, and how the
//! last write ended.
//!
//! The writer records every commit's outcome here; readers and the writer
//! report corruption here. [`Unready`] is the reason readiness gives.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::file::{DatabaseFile, FileProblem};

/// How long a write that failed for want of storage (a full disk, an I/O
/// error, a read-only file) keeps readiness at 503 without a probe, unless
/// a write that changes something succeeds first.
///
/// A probe is one small commit, and on a nearly full disk it can still fit
/// where an enqueue no longer does: answering from the failure keeps the
/// relay out of rotation meanwhile. Failures to get the write lock are not
/// held: the probe needs that same lock, so it tests them faithfully.
pub const STORAGE_FAILURE_HOLD: Duration = Duration::from_secs(10);

/// SQLite's primary result codes for another connection holding the lock
/// (`SQLITE_BUSY`, `SQLITE_LOCKED`).
const CONTENTION_CODES: [i64; 2] = [5, 6];

/// SQLite's primary result codes that mean the file's content is damaged:
/// `SQLITE_CORRUPT` (11) and `SQLITE_NOTADB` (26).
const CORRUPTION_CODES: [i64; 2] = [11, 26];

/// Why the store is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unready {
    /// The path no longer names the open database.
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
    file: DatabaseFile,
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
}

impl Health {
    /// Health of the database `file`, with nothing known yet.
    pub fn new(file: DatabaseFile) -> Self {
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
    /// startup (one `stat`). The first failure is logged as an ERROR, and a
    /// return to normal (the file renamed back) as an INFO; the checks in
    /// between are silent, so a refused request does not log.
    pub fn check_file(&self) -> Result<(), FileProblem> {
        let checked = self.file.check();
        let mut state = self.state();
        match (&checked, &state.file_problem) {
            (Err(problem), logged) if logged.as_ref() != Some(problem) => {
                error!(path = %self.file.path().display(), reason = problem.reason(), "{problem}; writes are refused");
                state.file_problem = Some(problem.clone());
            }
            (Ok(()), Some(_)) => {
                info!(path = %self.file.path().display(), "the database file is back; writes are accepted again");
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
    /// database (locked, read-only, full, damaged).
    pub fn write_failed(&self, err: &sqlx::Error, message: &str) {
        self.note_error(err);
        let mut state = self.state();
        state.last_failure = Some(message.to_owned());
        if primary_code(err).is_none_or(|code| !CONTENTION_CODES.contains(&code)) {
            state.storage_failure =
                Some((Instant::now() + STORAGE_FAILURE_HOLD, message.to_owned()));
        }
    }

    /// Remembers a corruption report in `err` (from a read or a write).
    pub fn note_error(&self, err: &sqlx::Error) {
        let sqlx::Error::Database(db) = err else {
            return;
        };
        if primary_code(err).is_some_and(|code| CORRUPTION_CODES.contains(&code)) {
            let mut state = self.state();
            if state.corrupt.is_none() {
                error!(path = %self.file.path().display(), error = %db, "SQLite reports the database as corrupt");
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

    /// The error of the last write that ended, if it failed.
    pub fn last_failure(&self) -> Option<String> {
        self.state().last_failure.clone()
    }
}

/// SQLite's primary result code in `err`, if SQLite reported it.
fn primary_code(err: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?.parse::<i64>().ok()?;
    Some(code & 0xff)
}
