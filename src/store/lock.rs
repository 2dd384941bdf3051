//! One daemon per database: an exclusive advisory lock (`flock`) on a lock
//! file beside the database, `<database>.lock`, held by `serve` for its
//! whole life and holding its pid as text.
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

use std::ffi::OsString;
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

/// The lock file of `database`: its path with `.lock` appended.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = OsString::from(database.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

impl DatabaseLock {
    /// Takes the lock of `database` without waiting, creating the lock file
    /// (mode `0600`) when missing, and writes this process's pid into it.
    #[tracing::instrument(skip_all, fields(database = %database.display()))]
    pub fn acquire(database: &Path) -> Result<Self, LockError> {
        let lock = lock_path(database);
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

/// Opens (creating with mode `0600`, and its folder, which is the
/// database's) the lock file. Never truncates: the holder's pid must
/// survive a refused process opening it.
fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
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
}
