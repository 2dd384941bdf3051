//! One daemon per database: an exclusive advisory lock (`flock`) on a lock
//! file beside the database, `<database>.lock`, held by `serve` for its
//! whole life and holding its pid as text.
//!
//! The lock file is named after the database's canonical path (symbolic
//! links, `.` and `..` resolved, relative paths made absolute), so two
//! configurations that reach one file through a symlink or a relative and
//! an absolute path share one lock. Hard links and bind mounts still give
//! one file two canonical paths, which the lock cannot tell apart: do not
//! configure a database through them.
//!
//! The lock is not taken on the database file itself: SQLite locks that
//! file with POSIX locks, which belong to the process and are all dropped
//! when ANY descriptor of the file the process has open is closed, so the
//! relay opens no descriptor of its own on it.
//!
//! Two daemons on one database would each poll at the full budget and each
//! keep their own upstream pause, so together they break the rate limit the
//! relay promises. The CLI's one-shot commands (`enqueue`, `status`, `list`,
//! `redeliver`) do not take the lock: SQLite serialises their writes with the
//! daemon's.
//!
//! The kernel releases the lock when the process ends, however it ends, so a
//! crashed daemon never leaves a stale lock behind; the file itself stays
//! (removing it would let two processes lock two different files).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another relay in this process) holds it.
    #[error(
        "the database {database} is already in use by another jogg-relay serve ({holder}); \
         only one serve may run per database (lock file {lock})"
    )]
    Held {
        /// The database file.
        database: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// "pid N" as written by the holder, or a note that it wrote none.
        holder: String,
    },
    /// The database file could not be created or resolved to its
    /// canonical path (which names the lock file).
    #[error("cannot open the database {database}: {source}")]
    Open {
        /// The database file, as configured.
        database: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The lock file could not be created, opened or locked.
    #[error("cannot lock the database {database} (lock file {lock}): {source}")]
    Io {
        /// The database file.
        database: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct DatabaseLock {
    /// Keeps the lock: it lives as long as this open file.
    _file: File,
}

/// The lock file of the database at the canonical path `database`: that
/// path with `.lock` appended.
pub fn lock_path(database: &Path) -> PathBuf {
    super::file::companion(database, ".lock")
}

impl DatabaseLock {
    /// Takes the lock of `database` without waiting, creating the lock file
    /// (mode `0600`) when missing, and writes this process's pid into it.
    ///
    /// The database file (and its folders) is created first when missing,
    /// as [`Store::open`](crate::store::Store::open) would: only an existing file
    /// has a canonical path to name the lock file after.
    #[tracing::instrument(skip_all, fields(database = %database.display()))]
    pub fn acquire(database: &Path) -> Result<Self, LockError> {
        let open_error = |source| LockError::Open {
            database: database.to_owned(),
            source,
        };
        if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
            super::file::create_private_dirs(parent).map_err(open_error)?;
        }
        super::file::prepare(database).map_err(open_error)?;
        let canonical = std::fs::canonicalize(database).map_err(open_error)?;
        let lock = lock_path(&canonical);
        let io_error = |source| LockError::Io {
            database: database.to_owned(),
            lock: lock.clone(),
            source,
        };
        let mut file = open_lock_file(&lock).map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    database: database.to_owned(),
                    holder: holder(&mut file),
                    lock,
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        // Only the holder writes, and only after locking, so a refused
        // process never clobbers the pid it reports.
        let write_pid = |file: &mut File| {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        write_pid(&mut file).map_err(io_error)?;
        Ok(Self { _file: file })
    }
}

/// Opens (creating with mode `0600`) the lock file, in the database's
/// folder. Never truncates: the holder's pid must survive a refused process
/// opening it.
fn open_lock_file(path: &Path) -> io::Result<File> {
    match super::file::create_private(path) {
        Ok(file) => Ok(file),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().read(true).write(true).open(path)
        }
        Err(err) => Err(err),
    }
}

/// Who holds the lock, as its lock file says.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match read.ok().and(text.trim().parse::<u32>().ok()) {
        Some(pid) => format!("pid {pid}"),
        None => "pid not recorded yet".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("relay.db");
        let first = DatabaseLock::acquire(&database).unwrap();
        let lock = dir.path().join("relay.db.lock");
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap().trim(),
            std::process::id().to_string()
        );
        let refused = DatabaseLock::acquire(&database).unwrap_err();
        let message = refused.to_string();
        assert!(matches!(refused, LockError::Held { .. }), "{message}");
        assert!(
            message.contains(&database.display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        DatabaseLock::acquire(&database).expect("released with the first holder");
    }

    #[cfg(unix)]
    #[test]
    fn a_database_reached_through_a_symlink_shares_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("relay.db");
        let _first = DatabaseLock::acquire(&database).unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&database, &link).unwrap();
        let refused = DatabaseLock::acquire(&link).unwrap_err();
        assert!(matches!(refused, LockError::Held { .. }), "{refused}");
        // The lock file is the real database's; none is created beside
        // the link.
        assert!(!dir.path().join("link.db.lock").exists());
    }
}
