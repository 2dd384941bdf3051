//! The database file itself: created by the relay (mode `0600`) before
//! SQLite opens it, and identified by device and inode so that a file
//! deleted or replaced under a running relay is noticed.
//!
//! Only [`prepare`] (the startup open) creates the file; every SQLite
//! connection opens it with `create_if_missing(false)`, so a connection
//! opened after the file was removed fails instead of creating a fresh empty
//! database at the path.

use std::ffi::OsString;
use std::fs::{Metadata, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Mode of every file the relay creates for its database (the database,
/// its lock file; SQLite gives `-wal` and `-shm` the database's mode):
/// only the service user may read tracked videos and callback URLs.
pub const FILE_MODE: u32 = 0o600;

/// What names one file on one filesystem: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    /// The identity of the file `metadata` describes.
    #[cfg(unix)]
    fn of(metadata: &Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        Some(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }

    /// Without device and inode numbers the file cannot be identified.
    #[cfg(not(unix))]
    fn of(_metadata: &Metadata) -> Option<Self> {
        None
    }
}

/// Which of the database's files a [`FileProblem`] concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The database file itself (the configured path).
    Database,
    /// SQLite's write-ahead log, `<database>-wal`.
    Wal,
    /// SQLite's shared-memory index of the log, `<database>-shm`.
    Shm,
}

impl Part {
    /// How messages name the file.
    fn noun(self) -> &'static str {
        match self {
            Part::Database => "database file",
            Part::Wal => "database's write-ahead log",
            Part::Shm => "database's shared-memory index",
        }
    }

    /// What to do about it, for messages. A log or index unlinked under
    /// the relay is still open in it: the last connection's clean close
    /// checkpoints that log into the database file (unless another
    /// connection opened meanwhile keeps it from being the last), which a
    /// kill never does.
    fn advice(self) -> &'static str {
        match self {
            Part::Database => "restart the relay",
            Part::Wal | Part::Shm => {
                "stop the relay with SIGTERM, not SIGKILL (a clean stop can still fold the latest \
                 commits, held in the relay's open log, into the database file) and start it again"
            }
        }
    }
}

/// Why the configured path no longer names the database the relay opened,
/// or the log files beside it are no longer the ones it has open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    /// Nothing is at the path any more.
    #[error("the {} {path} was removed while the relay was running; {}", part.noun(), part.advice())]
    Removed {
        /// Which file.
        part: Part,
        /// Its path.
        path: PathBuf,
    },
    /// Another file is at the path (a restore or a copy renamed over it).
    #[error(
        "the {} {path} was replaced by another file while the relay was running; {}", part.noun(), part.advice()
    )]
    Replaced {
        /// Which file.
        part: Part,
        /// Its path.
        path: PathBuf,
    },
    /// The path cannot be examined (its folder lost its permissions).
    #[error("cannot examine the {} {path}: {message}", part.noun())]
    Unreadable {
        /// Which file.
        part: Part,
        /// Its path.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },
}

impl FileProblem {
    /// Short machine-readable name, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        match self {
            FileProblem::Removed { part, .. } => match part {
                Part::Database => "file_removed",
                Part::Wal => "wal_removed",
                Part::Shm => "shm_removed",
            },
            FileProblem::Replaced { part, .. } => match part {
                Part::Database => "file_replaced",
                Part::Wal => "wal_replaced",
                Part::Shm => "shm_replaced",
            },
            FileProblem::Unreadable { part, .. } => match part {
                Part::Database => "file_unreadable",
                Part::Wal => "wal_unreadable",
                Part::Shm => "shm_unreadable",
            },
        }
    }
}

/// One file the relay has open, as identified when it was opened.
#[derive(Debug, Clone)]
struct Watched {
    part: Part,
    path: PathBuf,
    id: FileId,
}

impl Watched {
    /// The file at `path` now, to be compared later; `None` when it cannot
    /// be identified (no such file, or no inode numbers on this system).
    fn record(part: Part, path: PathBuf) -> Option<Self> {
        let metadata = std::fs::metadata(&path).ok()?;
        Some(Self {
            part,
            id: FileId::of(&metadata)?,
            path,
        })
    }

    /// Whether the path still names the file recorded.
    fn check(&self) -> Result<(), FileProblem> {
        let (part, path) = (self.part, || self.path.clone());
        match std::fs::metadata(&self.path) {
            Ok(metadata) if FileId::of(&metadata) == Some(self.id) => Ok(()),
            Ok(_) => Err(FileProblem::Replaced { part, path: path() }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(FileProblem::Removed { part, path: path() })
            }
            Err(err) => Err(FileProblem::Unreadable {
                part,
                path: path(),
                message: err.to_string(),
            }),
        }
    }
}

/// `<database><suffix>`, the name SQLite gives a companion file (and the
/// relay its lock file and backup names).
pub(crate) fn companion(database: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(database.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The database file as opened at startup, and (once recorded with
/// [`DatabaseFile::record_log_files`]) SQLite's `-wal` and `-shm` files.
///
/// SQLite unlinks `-wal` and `-shm` only when the last connection to the
/// database closes (in any process: closing needs an exclusive lock that
/// every other open connection blocks), and a checkpoint rewinds or
/// truncates the log in place. The relay's writer keeps one connection open
/// for its whole life, so while it runs the two files keep their identity;
/// one deleted or replaced is an accident, and commits appended to an
/// unlinked log are lost when the process dies.
#[derive(Debug, Clone)]
pub struct DatabaseFile {
    path: PathBuf,
    /// The files compared on every check: the database first (so that
    /// moving everything away reports the database), then the log files
    /// once recorded. Empty where files have no inode numbers.
    watched: Vec<Watched>,
}

impl DatabaseFile {
    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the identity of `<database>-wal` and `<database>-shm` as
    /// they are now (call with a connection open, so that both exist); a
    /// file absent now is not checked later.
    pub fn record_log_files(&mut self) {
        self.watched.retain(|file| file.part == Part::Database);
        if self.watched.is_empty() {
            // Without the database's identity there is none of theirs.
            return;
        }
        // SQLite follows a symbolic link to the database and keeps its log
        // files beside the real file, not beside the link.
        let real = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        for (part, suffix) in [(Part::Wal, "-wal"), (Part::Shm, "-shm")] {
            let companion = companion(&real, suffix);
            match Watched::record(part, companion.clone()) {
                Some(watched) => self.watched.push(watched),
                None => tracing::warn!(
                    file = %companion.display(),
                    "cannot find SQLite's log file beside the database; it is not watched \
                     for deletion"
                ),
            }
        }
    }

    /// Whether `path` still names the file opened at startup, and the log
    /// files beside it the ones recorded.
    pub fn check(&self) -> Result<(), FileProblem> {
        self.watched.iter().try_for_each(Watched::check)
    }
}

/// Creates the database file with mode `0600` when it does not exist yet
/// (whatever the umask), and checks that `path` names a regular file.
///
/// SQLite would create a missing file itself, with mode `0644` less the
/// umask; creating it first is what gives the database, and through it the
/// `-wal` and `-shm` files, the relay's mode.
#[tracing::instrument(skip_all, fields(path = %path.display()))]
pub fn prepare(path: &Path) -> io::Result<DatabaseFile> {
    match create_private(path) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let watched = FileId::of(&metadata).map(|id| Watched {
        part: Part::Database,
        path: path.to_owned(),
        id,
    });
    Ok(DatabaseFile {
        path: path.to_owned(),
        watched: watched.into_iter().collect(),
    })
}

/// Creates `path` (failing if it exists) readable and writable by its
/// owner only.
pub fn create_private(path: &Path) -> io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let file = options.mode(FILE_MODE).open(path)?;
        // The mode given to open() is reduced by the umask; setting it
        // afterwards makes it exact.
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

/// Mode of every folder the relay creates for its database: only the
/// service user may add, remove or rename files in it (a folder others can
/// write lets them swap the database or its lock file).
pub const FOLDER_MODE: u32 = 0o700;

/// Creates `folder` and its missing ancestors with mode `0700` whatever
/// the umask; folders that already exist keep their mode.
#[tracing::instrument(level = "debug", fields(folder = %folder.display()))]
pub fn create_private_dirs(folder: &Path) -> io::Result<()> {
    // The missing folders, deepest first: up to the first that exists.
    let mut missing = Vec::new();
    let mut next = Some(folder);
    while let Some(current) = next.filter(|p| !p.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(current) {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::NotFound => missing.push(current),
            Err(err) => return Err(err),
        }
        next = current.parent();
    }
    for created in missing.into_iter().rev() {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(FOLDER_MODE);
        }
        match builder.create(created) {
            Ok(()) => {}
            // Created meanwhile by someone else: theirs, with their mode.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && created.is_dir() => continue,
            Err(err) => return Err(err),
        }
        // The mode given to mkdir() is reduced by the umask; setting it
        // afterwards makes it exact.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(created, std::fs::Permissions::from_mode(FOLDER_MODE))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_private_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let file = prepare(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"kept").unwrap();
        prepare(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(file.check(), Ok(()));
    }

    #[test]
    fn a_folder_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare(dir.path()).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
    }

    #[cfg(unix)]
    #[test]
    fn removal_and_replacement_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let file = prepare(&path).unwrap();
        let other = dir.path().join("other.db");
        std::fs::write(&other, b"").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(file.check().unwrap_err().reason(), "file_replaced");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.check().unwrap_err().reason(), "file_removed");
    }

    #[cfg(unix)]
    #[test]
    fn missing_folders_are_created_private_and_existing_ones_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = existing.join("a").join("b");
        create_private_dirs(&deep).unwrap();
        assert_eq!(mode(&existing), 0o755);
        assert_eq!(mode(&existing.join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        // Again: nothing to create, nothing changed.
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dirs(&deep).unwrap();
        assert_eq!(mode(&deep), 0o750);
    }
}
