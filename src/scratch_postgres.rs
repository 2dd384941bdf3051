//! A throwaway PostgreSQL cluster for the tests and the PostgreSQL benchmark:
//! started from the installed server binaries in a private temporary folder,
//! reachable only through a Unix socket in that folder (never TCP), and
//! removed again when it is dropped or when the process that started it
//! ends in any way.
//!
//! The binaries (`initdb` and `postgres`, from one folder) are looked up on
//! `PATH`, then in the newest `/usr/lib/postgresql/<version>/bin` (where
//! Debian and Ubuntu keep them off `PATH`). Without them [`ScratchCluster::start`]
//! answers [`ScratchError::NotInstalled`], which the tests turn into a loud
//! skip.
//!
//! PostgreSQL refuses to run as root, so a root process runs `initdb` and the
//! server as the unprivileged `nobody` user, in a folder handed over to that
//! user; anyone else runs them as themselves.
//!
//! Test binaries end without running the destructors of statics, and may be
//! killed, so [`Drop`] alone cannot be relied on: a watcher shell started
//! alongside the cluster reads from a pipe whose only writer this process
//! holds. When the process ends, however it ends, the kernel closes the
//! pipe, the watcher's `read` returns, and it stops the server (immediate
//! shutdown) and removes the folder.
//!
//! A test of what a relay does while its database server is away stops the
//! server and starts it again on the same data folder
//! ([`ScratchCluster::stop_server`], [`ScratchCluster::start_server`]); the
//! watcher is told each new server's pid, and that none runs meanwhile.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tempfile::TempDir;
use tracing::instrument;

/// The cluster's superuser, created by `initdb`; every database URL the
/// cluster hands out connects as this role (no password: the socket folder
/// is private and authentication is `trust`).
pub const SUPERUSER: &str = "jogg_relay";

/// Where Debian-style installations keep one `bin` folder per major version.
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// The port only names the socket file (`.s.PGSQL.5432`): the server listens
/// on no TCP address, and the socket folder is private to the cluster.
const PORT: u16 = 5432;

/// How long a start may take, from `initdb` to the first accepted connection.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long an immediate shutdown may take before the server is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Pause between two attempts to connect while the server starts.
const RETRY_STEP: Duration = Duration::from_millis(20);

/// The longest socket path the kernel accepts (`sun_path` holds 108 bytes,
/// the last of them the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The socket file's name inside the socket folder (for the length check).
const SOCKET_FILE: &str = ".s.PGSQL.5432";

/// The watcher: each line on its standard input is the running server's
/// pid, or empty while none runs (the last line counts: the server may be
/// stopped and started again); the end of input means this process is
/// gone. It then asks the server, if one runs, for an immediate shutdown,
/// waits until the server has removed its pid file or exited (at most ten
/// seconds: a zombie nobody reaps still answers `kill -0`), and removes the
/// folder (`$1`). It ignores the terminal's interrupt and hang-up, which
/// are meant for the test run, not for it.
const WATCHER_SCRIPT: &str = r#"trap '' INT HUP
pid=
while read -r line; do pid=$line; done
if [ -n "$pid" ]; then
  kill -QUIT "$pid" 2>/dev/null
  n=0
  while [ "$n" -lt 100 ] && [ -e "$1/data/postmaster.pid" ] && kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    n=$((n + 1))
  done
fi
rm -rf -- "$1"
"#;

/// Why a scratch cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// No folder on `PATH` nor any `/usr/lib/postgresql/*/bin` holds both
    /// `initdb` and `postgres`.
    #[error(
        "the PostgreSQL server binaries (initdb and postgres) are neither on PATH nor in \
         {VERSIONED_ROOT}/*/bin; install the distribution's postgresql package"
    )]
    NotInstalled,
    /// A file, folder or process operation failed.
    #[error("cannot {step}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// The temporary folder's path is too long for a Unix socket inside it.
    #[error(
        "the cluster's socket path {path} is too long for a Unix socket ({length} bytes, \
         at most {MAX_SOCKET_PATH}); point TMPDIR at a shorter folder"
    )]
    SocketPathTooLong {
        /// The socket file's path.
        path: PathBuf,
        /// Its length in bytes.
        length: usize,
    },
    /// The temporary folder's path is not UTF-8, so it cannot go into a URL.
    #[error("the cluster's socket folder {0} is not valid UTF-8; point TMPDIR at another folder")]
    NotUtf8(PathBuf),
    /// `initdb` failed.
    #[error("initdb failed ({status}):\n{output}")]
    Initdb {
        /// Its exit status.
        status: ExitStatus,
        /// Its standard output and error.
        output: String,
    },
    /// The server exited before it accepted a connection.
    #[error("the PostgreSQL server exited while starting ({status}); the end of its log:\n{log}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The server did not accept a connection within the start deadline.
    #[error(
        "the PostgreSQL server accepted no connection within {START_DEADLINE:?} \
         (last error: {last}); the end of its log:\n{log}"
    )]
    NotReady {
        /// The last connection error.
        last: String,
        /// The end of its log.
        log: String,
    },
    /// A statement on the running cluster failed.
    #[error("the scratch cluster refused {step}: {source}")]
    Sql {
        /// What was being done.
        step: &'static str,
        /// The cause.
        source: sqlx::Error,
    },
}

/// Shorthand for an [`ScratchError::Io`] naming its step.
fn io_error(step: &'static str) -> impl FnOnce(io::Error) -> ScratchError {
    move |source| ScratchError::Io { step, source }
}

/// Shorthand for an [`ScratchError::Sql`] naming its step.
fn sql_error(step: &'static str) -> impl FnOnce(sqlx::Error) -> ScratchError {
    move |source| ScratchError::Sql { step, source }
}

/// What the server trades for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// No flushes to disk (`fsync`, `synchronous_commit` and
    /// `full_page_writes` off): a crash of the machine loses the cluster,
    /// which a throwaway cluster does not mind. For tests.
    #[default]
    Fast,
    /// PostgreSQL's defaults: every commit is flushed, as on a production
    /// server. For benchmarks whose numbers should mean something.
    Durable,
}

impl Durability {
    /// The `-c` settings this choice adds to the server's command line.
    fn server_settings(self) -> &'static [&'static str] {
        match self {
            Durability::Fast => &[
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ],
            Durability::Durable => &[],
        }
    }
}

/// The server binaries a cluster is started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `initdb`, which creates the data folder.
    pub initdb: PathBuf,
    /// `postgres`, the server, from the same folder as `initdb`.
    pub postgres: PathBuf,
}

impl Binaries {
    /// The first folder on `PATH` that holds both binaries, else the newest
    /// `/usr/lib/postgresql/<version>/bin` that does.
    pub fn find() -> Result<Self, ScratchError> {
        Self::find_in(std::env::var_os("PATH"), Path::new(VERSIONED_ROOT))
    }

    /// [`Binaries::find`] with the search path and the versioned root given.
    fn find_in(path: Option<OsString>, versioned_root: &Path) -> Result<Self, ScratchError> {
        let path = path.unwrap_or_default();
        std::env::split_paths(&path)
            .chain(versioned_bin_folders(versioned_root))
            .find_map(|folder| Self::in_folder(&folder))
            .ok_or(ScratchError::NotInstalled)
    }

    /// Both binaries from `folder`, when it holds both. They must come from
    /// one folder: `initdb` runs the `postgres` beside it, and a data folder
    /// only opens with the major version that created it.
    fn in_folder(folder: &Path) -> Option<Self> {
        let initdb = folder.join("initdb");
        let postgres = folder.join("postgres");
        (is_executable(&initdb) && is_executable(&postgres)).then_some(Self { initdb, postgres })
    }
}

/// Whether `path` is (or links to) a file someone may execute.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The `bin` folders under `root` whose parent is named like a version
/// (`15`, `9.6`), newest first.
fn versioned_bin_folders(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u64>().ok())
                .collect::<Option<Vec<_>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, folder)| folder).collect()
}

/// The user the server runs as, when it must not run as this process's.
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// `nobody` when this process is root (PostgreSQL refuses to run as root),
/// else `None`: the server runs as this process's user.
fn server_user() -> Option<ServerUser> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    Some(lookup_user(c"nobody").unwrap_or(ServerUser {
        uid: 65534,
        gid: 65534,
    }))
}

/// The uid and primary gid of the user `name`, from the password database.
fn lookup_user(name: &std::ffi::CStr) -> Option<ServerUser> {
    // SAFETY: getpwnam_r writes only into `entry` and `buffer`, whose sizes
    // it is given, and sets `found` to `&mut entry` or null; `entry` is
    // read only when it succeeded.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(ServerUser {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        })
    }
}

/// A command that runs as `user` (when set), in `folder`, with no standard
/// input and without the terminal's signals (its own process group).
fn server_command(program: &Path, user: Option<ServerUser>, folder: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(folder)
        .stdin(Stdio::null())
        .process_group(0);
    if let Some(user) = user {
        // std drops the supplementary groups (setgroups) before switching.
        command.uid(user.uid).gid(user.gid);
    }
    command
}

/// The watcher shell (see the module's documentation), holding the write
/// end of its standard input.
struct Watcher {
    child: Option<Child>,
}

impl Watcher {
    /// Starts the watcher over `folder`; from now on the folder goes away
    /// when this process does.
    fn spawn(folder: &Path) -> Result<Self, ScratchError> {
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHER_SCRIPT)
            .arg("scratch-postgres-watcher")
            .arg(folder)
            .stdin(Stdio::piped())
            // Nothing of a test run's output may stay open in a process
            // that outlives it (a pipe reader would wait for it).
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_error("start the cluster's watcher (/bin/sh)"))?;
        Ok(Self { child: Some(child) })
    }

    /// Tells the watcher which process is the server, or (`None`) that
    /// none runs.
    fn arm(&mut self, server_pid: Option<u32>) -> Result<(), ScratchError> {
        let stdin = self.child.as_mut().and_then(|child| child.stdin.as_mut());
        let stdin = stdin.ok_or_else(|| ScratchError::Io {
            step: "arm the cluster's watcher",
            source: io::Error::other("the watcher has no input"),
        })?;
        let line = server_pid.map(|pid| pid.to_string()).unwrap_or_default();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(io_error("arm the cluster's watcher"))
    }

    /// Stops the watcher without letting it act: the caller cleans up
    /// itself. Done before the server is reaped, so the watcher can never
    /// signal a pid the kernel has handed to another process.
    fn disarm(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// A running throwaway cluster (see the module's documentation).
///
/// Dropping it stops the server (immediate shutdown) and removes its
/// folder; so does the end of the process that started it.
pub struct ScratchCluster {
    /// The postmaster, this process's child.
    server: Child,
    /// Cleans up if this process ends without dropping the cluster.
    watcher: Watcher,
    /// The folder holding `data/`, `socket/` and `server.log`. Dropped
    /// last, after the server stopped.
    folder: TempDir,
    /// Where the server's socket is.
    socket_folder: PathBuf,
    /// The server binary, to start the server again.
    postgres: PathBuf,
    /// Who the server runs as (`None`: as this process's user).
    user: Option<ServerUser>,
    /// What the server was started with.
    durability: Durability,
    /// Numbers the databases [`ScratchCluster::create_database`] creates.
    next_database: AtomicU64,
}

impl ScratchCluster {
    /// [`ScratchCluster::start_with`] for tests: [`Durability::Fast`].
    pub fn start() -> Result<Self, ScratchError> {
        Self::start_with(Durability::Fast)
    }

    /// Finds the binaries and starts a cluster with `durability`.
    ///
    /// Blocks until the server accepts connections (about half a second,
    /// most of it `initdb`; at most 30 s). It may be called inside or
    /// outside a Tokio runtime.
    pub fn start_with(durability: Durability) -> Result<Self, ScratchError> {
        Self::start_from(&Binaries::find()?, durability)
    }

    /// Starts a cluster from `binaries` (see [`ScratchCluster::start_with`]).
    #[instrument(skip_all, fields(postgres = %binaries.postgres.display(), ?durability))]
    pub fn start_from(binaries: &Binaries, durability: Durability) -> Result<Self, ScratchError> {
        let user = server_user();
        let folder = tempfile::Builder::new()
            .prefix("jogg-relay-pg-")
            .tempdir()
            .map_err(io_error("create the cluster's temporary folder"))?;
        // Declared after `folder`, so an early return drops (stops) the
        // watcher before the folder goes.
        let watcher = Watcher::spawn(folder.path())?;
        let data_folder = folder.path().join("data");
        let socket_folder = folder.path().join("socket");
        let socket_path = socket_folder.join(SOCKET_FILE);
        let length = socket_path.as_os_str().len();
        if length > MAX_SOCKET_PATH {
            return Err(ScratchError::SocketPathTooLong {
                path: socket_path,
                length,
            });
        }
        if socket_folder.to_str().is_none() {
            return Err(ScratchError::NotUtf8(socket_folder));
        }
        fs::create_dir(&socket_folder).map_err(io_error("create the cluster's socket folder"))?;
        if let Some(user) = user {
            for owned in [folder.path(), &socket_folder] {
                chown(owned, Some(user.uid), Some(user.gid))
                    .map_err(io_error("hand the cluster's folder to the nobody user"))?;
            }
        }

        let initdb = server_command(&binaries.initdb, user, folder.path())
            .arg("--pgdata")
            .arg(&data_folder)
            .args([
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--username={SUPERUSER}"))
            // The C locale: the cluster must not depend on which locales the
            // machine has, and it orders text by bytes, as SQLite does.
            .arg("--locale=C")
            .output()
            .map_err(io_error("run initdb"))?;
        if !initdb.status.success() {
            return Err(ScratchError::Initdb {
                status: initdb.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&initdb.stdout),
                    String::from_utf8_lossy(&initdb.stderr)
                ),
            });
        }

        let server = spawn_server(
            &binaries.postgres,
            user,
            folder.path(),
            &socket_folder,
            durability,
        )?;
        // From here on the cluster's Drop stops the server on any error.
        let mut cluster = Self {
            server,
            watcher,
            folder,
            socket_folder,
            postgres: binaries.postgres.clone(),
            user,
            durability,
            next_database: AtomicU64::new(1),
        };
        cluster.watcher.arm(Some(cluster.server.id()))?;
        cluster.wait_until_accepting()?;
        Ok(cluster)
    }

    /// Connects until the server accepts a connection, it exits, or the
    /// start deadline passes.
    fn wait_until_accepting(&mut self) -> Result<(), ScratchError> {
        let options = self.connect_options("postgres");
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let server = &mut self.server;
        // sqlx is asynchronous: a runtime of its own, on a thread of its own
        // so that this works inside a caller's runtime too.
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(Failure::Io)?;
                    runtime.block_on(async {
                        loop {
                            let attempt = tokio::time::timeout_at(
                                deadline,
                                PgConnection::connect_with(&options),
                            )
                            .await;
                            let last = match attempt {
                                Ok(Ok(connection)) => {
                                    let _ = connection.close().await;
                                    return Ok(());
                                }
                                Ok(Err(error)) => error.to_string(),
                                Err(_elapsed) => "connection attempt timed out".to_owned(),
                            };
                            if let Ok(Some(status)) = server.try_wait() {
                                return Err(Failure::Exited(status));
                            }
                            if tokio::time::Instant::now() >= deadline {
                                return Err(Failure::NotReady(last));
                            }
                            tokio::time::sleep(RETRY_STEP).await;
                        }
                    })
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(Failure::Io(io::Error::other("the waiting thread panicked")))
                })
        });

        /// Why the wait ended without a connection (the log is read after).
        enum Failure {
            Io(io::Error),
            Exited(ExitStatus),
            NotReady(String),
        }
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Io(source)) => Err(ScratchError::Io {
                step: "wait for the PostgreSQL server",
                source,
            }),
            Err(Failure::Exited(status)) => Err(ScratchError::Exited {
                status,
                log: self.log_tail(),
            }),
            Err(Failure::NotReady(last)) => Err(ScratchError::NotReady {
                last,
                log: self.log_tail(),
            }),
        }
    }

    /// The last few kilobytes of the server's log, for error messages.
    fn log_tail(&self) -> String {
        const TAIL: u64 = 4096;
        let read = || -> io::Result<String> {
            let mut file = File::open(self.folder.path().join("server.log"))?;
            let length = file.metadata()?.len();
            file.seek(SeekFrom::Start(length.saturating_sub(TAIL)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|error| format!("(the log could not be read: {error})"))
    }

    /// Connection options for `database` as [`SUPERUSER`], over the socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_folder)
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// Creates a new, empty database and returns its URL,
    /// `postgres://jogg_relay@localhost/<name>?host=<socket folder>`. Each
    /// call creates a database of its own (`scratch_1`, `scratch_2`, …).
    #[instrument(skip(self), level = "debug")]
    pub async fn create_database(&self) -> Result<String, ScratchError> {
        let name = format!(
            "scratch_{}",
            self.next_database.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::connect_with(&self.connect_options("postgres"))
            .await
            .map_err(sql_error("a connection"))?;
        // The name is ours (a prefix and a number): nothing to quote.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .map_err(sql_error("CREATE DATABASE"))?;
        let _ = admin.close().await;
        Ok(self.database_url(&name))
    }

    /// The URL of `database` on this cluster (which need not exist).
    pub fn database_url(&self, database: &str) -> String {
        let mut url = url::Url::parse(&format!("postgres://{SUPERUSER}@localhost/{database}"))
            .expect("a database name from the cluster makes a valid URL");
        // Checked to be UTF-8 at start; the query encoding escapes the rest.
        let socket = self.socket_folder.to_str().unwrap_or_default();
        url.query_pairs_mut().append_pair("host", socket);
        url.into()
    }

    /// The folder holding the server's socket.
    pub fn socket_folder(&self) -> &Path {
        &self.socket_folder
    }

    /// The server's Unix socket itself (for a test that puts something
    /// between a relay and the server).
    pub fn socket_path(&self) -> PathBuf {
        self.socket_folder.join(format!(".s.PGSQL.{PORT}"))
    }

    /// The server's (the postmaster's) process id: the running server's,
    /// or the last one's while it is stopped.
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    /// What the server was started with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Stops the server as an administrator restarting it would, keeping
    /// its data folder: a fast shutdown (PostgreSQL's `SIGINT`: open
    /// transactions are rolled back, every client is disconnected, the data
    /// is checkpointed and the socket removed). Connections fail from then
    /// on, until [`ScratchCluster::start_server`]. Blocks until the server
    /// has exited (it is killed after ten seconds); stopping a stopped
    /// server does nothing.
    #[instrument(skip(self))]
    pub fn stop_server(&mut self) -> Result<(), ScratchError> {
        self.shut_down(libc::SIGINT);
        // The watcher learns only now, with the server gone, that none
        // runs: had this process ended before, the watcher would still have
        // stopped it. (Its pid was free for an instant in between; the
        // kernel hands out pids in turn, so none can be reused that soon.)
        self.watcher.arm(None)
    }

    /// Starts the server again on the same data folder, socket and
    /// settings, after [`ScratchCluster::stop_server`] (or a crash), and
    /// blocks until it accepts connections: every database and URL handed
    /// out before works again. Does nothing while the server runs.
    #[instrument(skip(self))]
    pub fn start_server(&mut self) -> Result<(), ScratchError> {
        if let Ok(None) = self.server.try_wait() {
            return Ok(());
        }
        self.server = spawn_server(
            &self.postgres,
            self.user,
            self.folder.path(),
            &self.socket_folder,
            self.durability,
        )?;
        self.watcher.arm(Some(self.server.id()))?;
        self.wait_until_accepting()
    }

    /// Sends the server `signal` (`SIGQUIT`: immediate shutdown, `SIGINT`:
    /// fast shutdown) and waits for it to exit, killing it after
    /// [`STOP_DEADLINE`]. Does nothing if it has exited already.
    fn shut_down(&mut self, signal: libc::c_int) {
        if let Ok(Some(_)) = self.server.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.server.id()) {
            // SAFETY: kill has no memory effects; the pid is our unreaped
            // child, so it cannot name another process.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            match self.server.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Starts the server on the data folder in `folder` (created by `initdb`),
/// listening on the socket in `socket_folder` only, its output appended to
/// `folder/server.log`.
fn spawn_server(
    postgres: &Path,
    user: Option<ServerUser>,
    folder: &Path,
    socket_folder: &Path,
    durability: Durability,
) -> Result<Child, ScratchError> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(folder.join("server.log"))
        .map_err(io_error("open the server's log file"))?;
    let log_too = log
        .try_clone()
        .map_err(io_error("open the server's log file"))?;
    let mut server = server_command(postgres, user, folder);
    server
        .arg("-D")
        .arg(folder.join("data"))
        .arg("-k")
        .arg(socket_folder)
        .args(["-c", "listen_addresses=", "-c", &format!("port={PORT}")])
        .args(["-c", "max_connections=200"]);
    for setting in durability.server_settings() {
        server.args(["-c", setting]);
    }
    server
        .stdout(log)
        .stderr(log_too)
        .spawn()
        .map_err(io_error("start the PostgreSQL server"))
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        // The watcher first: once the server is reaped its pid is free.
        self.watcher.disarm();
        self.shut_down(libc::SIGQUIT);
        // `folder` (a TempDir) removes the folder when the fields drop.
    }
}

impl std::fmt::Debug for ScratchCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchCluster")
            .field("folder", &self.folder.path())
            .field("server_pid", &self.server.id())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// What a test that needs PostgreSQL prints when the server binaries are
/// missing (and what it panics with under `JOGG_RELAY_REQUIRE_POSTGRES=1`).
const SKIPPED: &str = "SKIPPED: PostgreSQL tests need initdb/postgres \
                       (install the distribution's postgresql package)";

/// The environment variable that turns a skip into a failure (CI sets it).
const REQUIRE: &str = "JOGG_RELAY_REQUIRE_POSTGRES";

/// One cluster for a whole test binary (unit or integration tests),
/// started on first use; each test takes databases of its own from it
/// ([`ScratchCluster::create_database`]). `None` when the server binaries
/// are missing: the test should return at once, having been reported by
/// [`skip_without_postgres`].
pub fn shared_for_tests() -> Option<&'static ScratchCluster> {
    static CLUSTER: OnceLock<Result<ScratchCluster, ScratchError>> = OnceLock::new();
    match CLUSTER.get_or_init(ScratchCluster::start) {
        Ok(cluster) => Some(cluster),
        Err(ScratchError::NotInstalled) => {
            skip_without_postgres();
            None
        }
        Err(error) => panic!("the scratch PostgreSQL cluster did not start: {error}"),
    }
}

/// Reports a test skipped for want of the server binaries: loudly, past the
/// test harness's output capture, once per calling test; or panics when
/// `JOGG_RELAY_REQUIRE_POSTGRES` is `1` (CI sets it, so that a run without
/// PostgreSQL cannot pass).
pub fn skip_without_postgres() {
    if std::env::var_os(REQUIRE).is_some_and(|value| value == "1") {
        panic!("{SKIPPED} ({REQUIRE}=1 forbids skipping)");
    }
    // Written to the standard error itself, not through eprintln!, which
    // the harness captures and shows only for failed tests.
    let _ = writeln!(std::io::stderr(), "{SKIPPED}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an executable file at `path`, creating its folders.
    fn executable(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_newest_versioned_folder_wins_by_number_not_by_name() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "16", "16.beta"] {
            executable(&root.path().join(version).join("bin/initdb"));
            executable(&root.path().join(version).join("bin/postgres"));
        }
        let found = Binaries::find_in(None, root.path()).unwrap();
        assert_eq!(found.initdb, root.path().join("16/bin/initdb"));
        assert_eq!(found.postgres, root.path().join("16/bin/postgres"));
    }

    #[test]
    fn path_comes_first_and_needs_both_binaries_in_one_folder() {
        let root = tempfile::tempdir().unwrap();
        executable(&root.path().join("only-initdb/initdb"));
        executable(&root.path().join("both/initdb"));
        executable(&root.path().join("both/postgres"));
        executable(&root.path().join("versions/15/bin/initdb"));
        executable(&root.path().join("versions/15/bin/postgres"));
        let path =
            std::env::join_paths([root.path().join("only-initdb"), root.path().join("both")])
                .unwrap();
        let found = Binaries::find_in(Some(path), &root.path().join("versions")).unwrap();
        assert_eq!(found.initdb, root.path().join("both/initdb"));
    }

    #[test]
    fn files_that_are_not_executable_do_not_count() {
        let root = tempfile::tempdir().unwrap();
        executable(&root.path().join("bin/initdb"));
        fs::write(root.path().join("bin/postgres"), "").unwrap();
        let path = OsString::from(root.path().join("bin"));
        let missing = Binaries::find_in(Some(path), &root.path().join("none"));
        assert!(
            matches!(missing, Err(ScratchError::NotInstalled)),
            "{missing:?}"
        );
    }
}
