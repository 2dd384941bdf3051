//! Where the scale benchmark keeps its databases: a SQLite file per scale,
//! or a database per scale on a throwaway PostgreSQL cluster the bench
//! starts for the run, with PostgreSQL's default durability (`fsync` and
//! `synchronous_commit` on: an acknowledged write waits for the log flush,
//! as on SQLite with `synchronous=FULL`), so that the figures compare.
//! SQLite works inside the relay's process; PostgreSQL in the server's, so
//! the bench also measures the server's CPU time.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use super::relay::ProcStat;
use crate::scratch_postgres::{Binaries, Durability, ScratchCluster, ScratchError};

/// The storage engine the relay under measurement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchBackend {
    /// A SQLite file (`database.url = "sqlite://…"`), one relay.
    #[default]
    Sqlite,
    /// A database on a throwaway PostgreSQL cluster the bench starts
    /// (`database.url = "postgres://…"`), one or several relays.
    Postgres,
}

/// The databases of a run (see the module's documentation).
pub(super) enum Databases {
    /// A file in each scale's temporary folder.
    Sqlite,
    /// Databases on a cluster that lives as long as the run.
    Postgres {
        /// The running cluster.
        cluster: ScratchCluster,
        /// `postgres --version`, for the report.
        version: String,
    },
}

impl Databases {
    /// Prepares `backend`: for PostgreSQL, finds the server binaries and
    /// starts the cluster (an error naming the binaries and the package
    /// to install when they are missing).
    pub(super) async fn start(backend: BenchBackend) -> anyhow::Result<Self> {
        match backend {
            BenchBackend::Sqlite => Ok(Self::Sqlite),
            BenchBackend::Postgres => {
                // initdb and the server's start block for about a second.
                tokio::task::spawn_blocking(start_cluster).await?
            }
        }
    }

    /// A fresh, empty database for one scale; its `database.url`. `dir` is
    /// the scale's temporary folder (where a SQLite file goes).
    pub(super) async fn create(&self, dir: &Path) -> anyhow::Result<String> {
        match self {
            Self::Sqlite => Ok(super::sqlite_url(dir)),
            Self::Postgres { cluster, .. } => cluster
                .create_database()
                .await
                .context("cannot create a database on the throwaway PostgreSQL cluster"),
        }
    }

    /// What the report says of the database.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Sqlite => "SQLite (synchronous=FULL)".to_owned(),
            Self::Postgres { version, .. } => format!(
                "{version}, a throwaway cluster on a Unix socket with the default durability \
                 (fsync, synchronous_commit on)"
            ),
        }
    }

    /// CPU seconds the PostgreSQL server has used so far (the postmaster,
    /// its live processes, and those that ended); `None` on SQLite, whose
    /// work is the relay's own.
    pub(super) fn server_cpu_seconds(&self) -> Option<f64> {
        let Self::Postgres { cluster, .. } = self else {
            return None;
        };
        Some(process_tree_cpu_seconds(cluster.server_pid()))
    }
}

/// Starts the cluster with PostgreSQL's default durability.
fn start_cluster() -> anyhow::Result<Databases> {
    let binaries = Binaries::find().map_err(explain)?;
    let version = Command::new(&binaries.postgres)
        .arg("--version")
        .output()
        .ok()
        .map(|out| server_version(&String::from_utf8_lossy(&out.stdout)))
        .unwrap_or_else(|| "PostgreSQL".to_owned());
    let cluster = ScratchCluster::start_from(&binaries, Durability::Durable).map_err(explain)?;
    Ok(Databases::Postgres { cluster, version })
}

/// `PostgreSQL 15.18 (Debian …)` from `postgres --version`'s
/// `postgres (PostgreSQL) 15.18 (Debian …)`.
fn server_version(output: &str) -> String {
    let output = output.trim();
    match output.split_once("(PostgreSQL) ") {
        Some((_, version)) => format!("PostgreSQL {version}"),
        None if output.is_empty() => "PostgreSQL".to_owned(),
        None => output.to_owned(),
    }
}

/// Says why the cluster is needed in front of why it could not start
/// (for missing binaries: which, and the package to install).
fn explain(err: ScratchError) -> anyhow::Error {
    anyhow::Error::new(err)
        .context("bench --backend postgres cannot start its throwaway PostgreSQL cluster")
}

/// CPU seconds of process `root` and its direct children, live or ended
/// (ended ones once `root` has waited for them, as the postmaster does at
/// once for its backends).
fn process_tree_cpu_seconds(root: u32) -> f64 {
    let Some(own) = ProcStat::read(root) else {
        return 0.0;
    };
    let children: f64 = children_of(root)
        .iter()
        .map(|(_, stat)| stat.cpu_seconds)
        .sum();
    own.cpu_seconds + own.reaped_children_cpu_seconds + children
}

/// The live children of process `root`, with their figures.
fn children_of(root: u32) -> Vec<(u32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, ProcStat::read(pid)?)))
        .filter(|(_, stat)| stat.ppid == root)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_server_binaries_name_them_and_the_package() {
        let message = format!("{:#}", explain(ScratchError::NotInstalled));
        for needed in [
            "bench --backend postgres",
            "initdb",
            "postgres",
            "install the distribution's postgresql package",
        ] {
            assert!(message.contains(needed), "{needed}: {message}");
        }
    }

    #[test]
    fn the_server_version_reads_as_postgresql_and_its_number() {
        assert_eq!(
            server_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            "PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"
        );
        assert_eq!(server_version(""), "PostgreSQL");
    }

    #[test]
    fn a_process_tree_finds_the_live_children() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30"])
            .spawn()
            .unwrap();
        let found = children_of(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.iter().any(|stat| stat.0 == child.id()), "{found:?}");
        assert!(
            !children_of(std::process::id())
                .iter()
                .any(|stat| stat.0 == child.id())
        );
    }
}
