//! The database file itself: created by the relay (mode `0600`) before
//! SQLite opens it, and identified by device and inode so that a file
//! deleted or replaced under a running relay is noticed.
//!
//! Only [`prepare`] (the startup open) creates the file; every SQLite
//! connection opens it with `create_if_missing(false)`, so a connection
//! opened after the file was removed fails instead of creating a fresh empty
//! database at the path.

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

/// Why the configured path no longer names the database the relay opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    /// Nothing is at the path any more.
    #[error("the database file {path} was removed while the relay was running; restart the relay")]
    Removed {
        /// The configured path.
        path: PathBuf,
    },
    /// Another file is at the path (a restore or a copy renamed over it).
    #[error(
        "the database file {path} was replaced by another file while the relay was running; restart the relay"
    )]
    Replaced {
        /// The configured path.
        path: PathBuf,
    },
    /// The path cannot be examined (its folder lost its permissions).
    #[error("cannot examine the database file {path}: {message}")]
    Unreadable {
        /// The configured path.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },
}

impl FileProblem {
    /// Short machine-readable name, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        match self {
            FileProblem::Removed { .. } => "file_removed",
            FileProblem::Replaced { .. } => "file_replaced",
            FileProblem::Unreadable { .. } => "file_unreadable",
        }
    }
}

/// The database file as opened at startup.
#[derive(Debug, Clone)]
pub struct DatabaseFile {
    path: PathBuf,
    id: Option<FileId>,
}

impl DatabaseFile {
    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still names the file opened at startup.
    pub fn check(&self) -> Result<(), FileProblem> {
        let Some(expected) = self.id else {
            return Ok(());
        };
        match std::fs::metadata(&self.path) {
            Ok(metadata) if FileId::of(&metadata) == Some(expected) => Ok(()),
            Ok(_) => Err(FileProblem::Replaced {
                path: self.path.clone(),
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(FileProblem::Removed {
                path: self.path.clone(),
            }),
            Err(err) => Err(FileProblem::Unreadable {
                path: self.path.clone(),
                message: err.to_string(),
            }),
        }
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
    Ok(DatabaseFile {
        path: path.to_owned(),
        id: FileId::of(&metadata),
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
}
