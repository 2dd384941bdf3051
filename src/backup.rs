//! The `backup` and `restore` commands (README, "Backup and restore"): the
//! files around the SQLite copy of [`crate::store::sqlite::backup`].
//!
//! Both write the new file under a temporary name in the destination's
//! folder, sync it, and only then give it its name, so a crash never leaves
//! half a database under the name a user will trust:
//!
//! - `backup` links the copy to its name (`link` fails if the name exists,
//!   which is the atomic "never overwrite"), while the daemon keeps running
//!   and without its lock.
//! - `restore` takes the daemon's lock (so it refuses while `serve` runs,
//!   and no `serve` starts halfway through), folds the write-ahead log of
//!   the database it replaces into its file (so nothing committed in it is
//!   lost), links that file to `<database>.before-restore-<UTC time>`, and
//!   renames the copy over the database: at every moment the database's
//!   name holds a whole database. A database too damaged to fold is moved
//!   to that name with its log instead.
//!
//! PostgreSQL databases are refused with a pointer to PostgreSQL's own
//! tools, which do this job better than the relay could.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use tracing::instrument;

use crate::cli::CliError;
use crate::config::{DatabaseBackend, DatabaseConfig};
use crate::domain::Millis;
use crate::store::sqlite::backup::{self as copy, CopyError};
use crate::store::sqlite::file::{companion, create_private};
use crate::store::{DatabaseLock, LockError};

/// Why `backup` or `restore` failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The configured database is PostgreSQL (bad usage: exit 64).
    #[error("database.url: {0}")]
    Postgres(&'static str),
    /// `backup` never replaces a file.
    #[error("{path} already exists; backup never overwrites a file: choose another name")]
    Exists {
        /// The file given.
        path: PathBuf,
    },
    /// There is no database file to back up.
    #[error("there is no database at {path} to back up")]
    NoDatabase {
        /// The configured database.
        path: PathBuf,
    },
    /// `restore` was given the database itself.
    #[error("{path} is the configured database itself; restore a copy of it")]
    SameFile {
        /// The file given.
        path: PathBuf,
    },
    /// A `serve` holds the database's lock.
    #[error("{0}; stop it before restoring")]
    InUse(LockError),
    /// The lock could not be taken for another reason.
    #[error(transparent)]
    Lock(LockError),
    /// The copy or its check failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl From<BackupError> for CliError {
    fn from(err: BackupError) -> Self {
        match err {
            BackupError::Postgres(_) => CliError::Usage(err.to_string()),
            other => CliError::Fatal(other.into()),
        }
    }
}

/// What `backup` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The new file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Videos in it.
    pub videos: u64,
    /// Its newest migration.
    pub schema_version: i64,
}

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The database file replaced (its real path).
    pub database: PathBuf,
    /// Where the database it replaced was kept, if there was one.
    pub kept: Option<PathBuf>,
    /// Videos in the restored database.
    pub videos: u64,
    /// Its newest migration.
    pub schema_version: i64,
}

/// What `backup` says to a PostgreSQL user.
const POSTGRES_BACKUP: &str = "backup copies a SQLite database file, and this database is \
    PostgreSQL: back it up with pg_dump, which takes a consistent snapshot while the relays \
    run (README, \"Backup and restore\")";

/// What `restore` says to a PostgreSQL user.
const POSTGRES_RESTORE: &str = "restore replaces a SQLite database file, and this database is \
    PostgreSQL: stop every relay using it, then restore a pg_dump with pg_restore (README, \
    \"Backup and restore\")";

/// The SQLite file of `database`, or the PostgreSQL refusal `advice`.
fn sqlite_path<'a>(
    database: &'a DatabaseConfig,
    advice: &'static str,
) -> Result<&'a Path, BackupError> {
    match &database.backend {
        DatabaseBackend::Sqlite { path } => Ok(path),
        DatabaseBackend::Postgres { .. } => Err(BackupError::Postgres(advice)),
    }
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether anything (even a dangling symbolic link) is at `path`.
fn occupied(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// A temporary file beside `path`, empty and private (mode `0600`), for the
/// copy; removed when dropped unless [`Partial::keep`] was called.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Partial {
    /// Creates `<path>.partial-<pid>-<random>`.
    fn beside(path: &Path) -> Result<Self, BackupError> {
        let partial = companion(
            path,
            &format!(".partial-{}-{:08x}", std::process::id(), fastrand::u32(..)),
        );
        create_private(&partial).map_err(io_error("create", &partial))?;
        Ok(Self {
            path: partial,
            keep: false,
        })
    }

    /// Flushes the copy to disk (SQLite does not sync a `VACUUM INTO`).
    fn sync(&self) -> Result<(), BackupError> {
        File::open(&self.path)
            .and_then(|file| file.sync_all())
            .map_err(io_error("sync", &self.path))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
            // A copy interrupted while changing its journal mode.
            let _ = std::fs::remove_file(companion(&self.path, "-journal"));
        }
    }
}

/// Syncs `folder`, so that names just created or renamed in it survive a
/// power loss.
fn sync_folder(folder: &Path) -> Result<(), BackupError> {
    let synced = File::open(folder).and_then(|dir| dir.sync_all());
    match synced {
        Ok(()) => Ok(()),
        // Some systems cannot open or sync a folder; the data itself is
        // synced already.
        Err(err) if cfg!(not(unix)) => {
            tracing::debug!(error = %err, "cannot sync the folder");
            Ok(())
        }
        Err(source) => Err(io_error("sync the folder", folder)(source)),
    }
}

/// `backup FILE`: writes a consistent copy of the configured SQLite
/// database to `file`, which must not exist, while a daemon may run
/// (without its lock). The copy is checked as `restore` would check it.
#[instrument(skip_all, fields(file = %file.display()))]
pub async fn backup(database: &DatabaseConfig, file: &Path) -> Result<Written, BackupError> {
    let source = sqlite_path(database, POSTGRES_BACKUP)?;
    if !source.is_file() {
        return Err(BackupError::NoDatabase {
            path: source.to_owned(),
        });
    }
    // Refused early, before copying; the link below is the check that
    // counts, should the file appear meanwhile.
    if occupied(file) {
        return Err(BackupError::Exists {
            path: file.to_owned(),
        });
    }
    let partial = Partial::beside(file)?;
    copy::copy_into(source, &partial.path).await?;
    let summary = copy::finish_copy(&partial.path).await?;
    partial.sync()?;
    std::fs::hard_link(&partial.path, file).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            BackupError::Exists {
                path: file.to_owned(),
            }
        } else {
            io_error("create", file)(source)
        }
    })?;
    drop(partial);
    sync_folder(folder_of(file))?;
    let bytes = std::fs::metadata(file)
        .map_err(io_error("examine", file))?
        .len();
    Ok(Written {
        path: file.to_owned(),
        bytes,
        videos: summary.videos,
        schema_version: summary.schema_version,
    })
}

/// `restore FILE`: checks that `file` is an undamaged relay database of a
/// schema this binary runs, then, holding the daemon's lock, replaces the
/// configured SQLite database with a copy of it, keeping the replaced one.
#[instrument(skip_all, fields(file = %file.display()))]
pub async fn restore(database: &DatabaseConfig, file: &Path) -> Result<Restored, BackupError> {
    let target = sqlite_path(database, POSTGRES_RESTORE)?;
    // Checked before anything is touched: a wrong file changes nothing.
    copy::inspect(file).await?;
    let _lock = DatabaseLock::acquire(target).map_err(|err| match err {
        LockError::Held { .. } => BackupError::InUse(err),
        other => BackupError::Lock(other),
    })?;
    // The lock created the file if it was missing, so it has a real path;
    // renaming over a symbolic link would replace the link, not the
    // database.
    let target = std::fs::canonicalize(target).map_err(io_error("resolve", target))?;
    if std::fs::canonicalize(file).is_ok_and(|file| file == target) {
        return Err(BackupError::SameFile {
            path: file.to_owned(),
        });
    }
    let mut partial = Partial::beside(&target)?;
    copy::copy_into(file, &partial.path).await?;
    let summary = copy::finish_copy(&partial.path).await?;
    partial.sync()?;
    // Folded into one file, the replaced database is kept by a second name
    // and the copy renamed over the first: at every moment the database's
    // name holds a whole database. One too damaged to fold is moved aside
    // with its log instead (a crash between the two renames would leave
    // the name empty for a moment, which is no worse than what it held).
    let kept = match copy::fold_log(&target).await {
        Ok(()) => keep_by_link(&target)?,
        Err(_) => keep_replaced(&target)?,
    };
    std::fs::rename(&partial.path, &target)
        .map_err(io_error("rename the restored copy to", &target))?;
    partial.keep = true;
    sync_folder(folder_of(&target))?;
    Ok(Restored {
        database: target,
        kept,
        videos: summary.videos,
        schema_version: summary.schema_version,
    })
}

/// The failure of `action` on `path`, for `map_err`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io {
        action,
        path,
        source,
    }
}

/// Whether the file at `path` is empty (the one the lock creates when
/// there was no database is, and is not worth keeping).
fn is_empty(path: &Path) -> Result<bool, BackupError> {
    Ok(std::fs::metadata(path)
        .map_err(io_error("examine", path))?
        .len()
        == 0)
}

/// Removes `path` if it is there.
fn remove_if_present(path: &Path) -> Result<(), BackupError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_error("remove", path)(err)),
        _ => Ok(()),
    }
}

/// Links the database at `target` (its log folded into it, held under the
/// lock) to `<target>.before-restore-<UTC time>`, and removes its emptied
/// log and its index, which the restored copy must not find beside it. An
/// empty file (the one the lock creates when there was no database) is not
/// worth keeping.
fn keep_by_link(target: &Path) -> Result<Option<PathBuf>, BackupError> {
    let kept = if is_empty(target)? {
        None
    } else {
        let kept = free_name(target, Millis::now());
        std::fs::hard_link(target, &kept).map_err(io_error("keep", target))?;
        sync_folder(folder_of(target))?;
        Some(kept)
    };
    remove_if_present(&companion(target, "-wal"))?;
    remove_if_present(&companion(target, "-shm"))?;
    Ok(kept)
}

/// Moves the database at `target` (held under the lock, so no connection
/// has it open) out of the way: to `<target>.before-restore-<UTC time>`
/// with its `-wal` beside it under the matching name (SQLite finds a log by
/// its database's name, so the pair opens as it was), and removes its
/// `-shm` (an index SQLite rebuilds from the log). An empty file (the one
/// the lock creates when there was no database) is not worth keeping.
fn keep_replaced(target: &Path) -> Result<Option<PathBuf>, BackupError> {
    let wal = companion(target, "-wal");
    let shm = companion(target, "-shm");
    let wal_empty = std::fs::metadata(&wal).map_or(true, |wal| wal.len() == 0);
    let kept = if is_empty(target)? && wal_empty {
        None
    } else {
        let kept = free_name(target, Millis::now());
        std::fs::rename(target, &kept).map_err(io_error("keep", target))?;
        if !wal_empty {
            std::fs::rename(&wal, companion(&kept, "-wal")).map_err(io_error("keep", &wal))?;
        }
        Some(kept)
    };
    // An empty log holds nothing; it goes with the index (a log that held
    // something was moved to the kept name above).
    if wal_empty {
        remove_if_present(&wal)?;
    }
    remove_if_present(&shm)?;
    Ok(kept)
}

/// `<target>.before-restore-<YYYYMMDDTHHMMSSZ>` for the UTC second of
/// `now`, with `-2`, `-3`, … when restores within one second already took
/// the name (or its log's).
fn free_name(target: &Path, now: Millis) -> PathBuf {
    let stamp: String = now
        .to_rfc3339()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let base = companion(target, &format!(".before-restore-{stamp}Z"));
    let taken = |path: &Path| occupied(path) || occupied(&companion(path, "-wal"));
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| companion(&base, &format!("-{n}")))
        .find(|candidate| !taken(candidate))
        .expect("an unused name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_of_a_bare_file_name_is_the_current_one() {
        assert_eq!(folder_of(Path::new("relay.db")), Path::new("."));
        assert_eq!(folder_of(Path::new("data/relay.db")), Path::new("data"));
        assert_eq!(
            folder_of(Path::new("/var/lib/jogg-relay/relay.db")),
            Path::new("/var/lib/jogg-relay")
        );
    }

    /// The name is stamped with the UTC second (1,000,000,000 s after the
    /// epoch is 2001-09-09 01:46:40 UTC), and a name is taken when it or
    /// its log exists: a kept database must never meet a stranger's log.
    #[test]
    fn a_kept_name_carries_the_utc_second_and_skips_names_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("relay.db");
        let now = Millis(1_000_000_000_123);
        let named = |suffix: &str| {
            dir.path()
                .join(format!("relay.db.before-restore-20010909T014640Z{suffix}"))
        };
        assert_eq!(free_name(&target, now), named(""));

        std::fs::write(named(""), b"kept").unwrap();
        assert_eq!(free_name(&target, now), named("-2"));

        std::fs::write(named("-2-wal"), b"log").unwrap();
        assert_eq!(free_name(&target, now), named("-3"));

        std::fs::remove_file(named("")).unwrap();
        std::fs::write(named("-wal"), b"log").unwrap();
        assert_eq!(
            free_name(&target, now),
            named("-3"),
            "a log alone takes its name"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_partial_copy_is_private_and_gone_unless_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy.db");
        let partial = Partial::beside(&target).unwrap();
        let mode = std::fs::metadata(&partial.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let journal = companion(&partial.path, "-journal");
        std::fs::write(&journal, b"journal").unwrap();
        drop(partial);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut partial = Partial::beside(&target).unwrap();
        partial.keep = true;
        let path = partial.path.clone();
        drop(partial);
        assert!(path.exists());
    }

    #[test]
    fn remove_if_present_ignores_only_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.db-shm");
        remove_if_present(&file).unwrap();
        std::fs::write(&file, b"index").unwrap();
        remove_if_present(&file).unwrap();
        assert!(!file.exists());
        // Below a regular file: not "missing", a failure to report.
        let under_a_file = dir.path().join("plain");
        std::fs::write(&under_a_file, b"").unwrap();
        let err = remove_if_present(&under_a_file.join("x")).unwrap_err();
        assert!(
            matches!(
                err,
                BackupError::Io {
                    action: "remove",
                    ..
                }
            ),
            "{err}"
        );
    }
}
