//! The throwaway PostgreSQL cluster the PostgreSQL tests run against
//! (`helpers::scratch_postgres`), and the cluster's own promises: it serves fresh
//! databases over its private socket only, runs unprivileged, and goes away
//! when dropped or when its owner is killed.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jogg_relay::scratch_postgres::{Binaries, Durability, ScratchCluster, ScratchError};
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{scratch_postgres, skip_without_postgres};

/// The uid owning `path`.
fn owner(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().uid()
}

/// Whether process `pid` is still running: it exists and is not a zombie
/// (an orphaned server is reaped by whoever adopts it, which may take its
/// time).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits (at most 30 s) until the server `pid` stopped and `folder` is gone.
/// The watcher stops the server before it removes the folder, so the server
/// must not outlive the folder by more than its own exit takes (a server
/// left running notices its lock file gone only within a minute, and stops
/// itself then).
fn wait_until_cleaned_up(pid: u32, folder: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while folder.exists() {
        assert!(
            Instant::now() < deadline,
            "after 30 s the folder {} exists (the server {pid} runs: {})",
            folder.display(),
            running(pid),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let removed = Instant::now();
    while running(pid) {
        assert!(
            removed.elapsed() < Duration::from_secs(2),
            "the server {pid} still runs 2 s after its folder was removed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn fresh_databases_answer_over_the_socket_only_from_an_unprivileged_server() {
    let Some(cluster) = scratch_postgres() else {
        return;
    };
    let (first, second) = tokio::join!(cluster.create_database(), cluster.create_database());
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_ne!(first, second);

    // The URLs themselves connect (what a relay configured with them does).
    let mut one = PgConnection::connect(&first).await.unwrap();
    let mut two = PgConnection::connect(&second).await.unwrap();
    let answer: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut one)
        .await
        .unwrap();
    assert_eq!(answer, 1);
    let answer: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut two)
        .await
        .unwrap();
    assert_eq!(answer, 1);

    // Two databases, not two names for one: a table made in one is not in
    // the other.
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut one)
        .await
        .unwrap();
    let other: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut two)
        .await
        .unwrap();
    assert_ne!(name, other);
    sqlx::query("CREATE TABLE only_in_the_first (x int)")
        .execute(&mut one)
        .await
        .unwrap();
    let seen_in_second: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('only_in_the_first')::text")
            .fetch_one(&mut two)
            .await
            .unwrap();
    assert_eq!(seen_in_second, None);

    // No TCP listener: the socket folder is the only way in.
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut one)
        .await
        .unwrap();
    assert_eq!(listen, "");

    // The server runs as someone other than root: the owner of the data
    // folder it reports, and the uid of its process, as the kernel sees them.
    let data: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut one)
        .await
        .unwrap();
    let server_uid = owner(Path::new(&format!("/proc/{}", cluster.server_pid())));
    assert_ne!(server_uid, 0, "the server runs as root");
    assert_eq!(owner(Path::new(&data)), server_uid);
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    if own_uid != 0 {
        assert_eq!(
            server_uid, own_uid,
            "a non-root owner runs the server as itself"
        );
    }
    assert_eq!(cluster.durability(), Durability::Fast);
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut one)
        .await
        .unwrap();
    assert_eq!(fsync, "off");
}

#[tokio::test]
async fn a_dropped_cluster_stops_its_server_and_removes_its_folder() {
    if let Err(ScratchError::NotInstalled) = Binaries::find() {
        skip_without_postgres();
        return;
    }
    let started = Instant::now();
    let cluster = ScratchCluster::start_with(Durability::Durable).unwrap();
    eprintln!("a durable cluster started in {:?}", started.elapsed());
    // Its maintenance database: a CREATE DATABASE would flush every file.
    let mut connection = PgConnection::connect_with(&cluster.connect_options("postgres"))
        .await
        .unwrap();
    // The durable cluster keeps PostgreSQL's defaults.
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, "on", "{setting}");
    }
    drop(connection);
    let pid = cluster.server_pid();
    let folder = cluster.socket_folder().parent().unwrap().to_owned();
    assert!(running(pid) && folder.exists());
    drop(cluster);
    // Drop waits for the server itself: nothing is left when it returns.
    assert!(!running(pid), "the server still runs");
    assert!(!folder.exists(), "{} is still there", folder.display());
}

/// The environment variable that makes [`scratch_cluster_owner`] run.
const OWNER: &str = "JOGG_RELAY_SCRATCH_OWNER";

#[tokio::test]
async fn a_restarted_server_keeps_its_databases_and_still_goes_away_when_dropped() {
    if let Err(ScratchError::NotInstalled) = Binaries::find() {
        skip_without_postgres();
        return;
    }
    let mut cluster = ScratchCluster::start().unwrap();
    let url = cluster.create_database().await.unwrap();
    let mut before = PgConnection::connect(&url).await.unwrap();
    for statement in ["CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (42)"] {
        sqlx::query(statement).execute(&mut before).await.unwrap();
    }
    let first = cluster.server_pid();

    cluster.stop_server().unwrap();
    assert!(!running(first), "the server still runs");
    // Its clients were disconnected, and nobody gets in meanwhile.
    assert!(sqlx::query("SELECT 1").execute(&mut before).await.is_err());
    assert!(PgConnection::connect(&url).await.is_err());
    cluster.stop_server().unwrap();

    cluster.start_server().unwrap();
    let second = cluster.server_pid();
    assert_ne!(first, second);
    assert!(running(second));
    // The same URL reaches the same database, with its data.
    let mut after = PgConnection::connect(&url).await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT x FROM kept")
        .fetch_one(&mut after)
        .await
        .unwrap();
    assert_eq!(kept, 42);
    drop(after);
    cluster.start_server().unwrap();
    assert_eq!(
        cluster.server_pid(),
        second,
        "a running server is left alone"
    );

    let folder = cluster.socket_folder().parent().unwrap().to_owned();
    drop(cluster);
    assert!(!running(second), "the restarted server still runs");
    assert!(!folder.exists(), "{} is still there", folder.display());
}

/// Not a test of its own: the owner process that
/// [`a_killed_owner_leaves_no_cluster_behind`] starts (this test binary
/// again) and SIGKILLs. It starts a cluster (and with `OWNER=restart`
/// stops and starts its server again), prints where it is, and waits for
/// the end of its input.
#[test]
#[ignore = "run by a_killed_owner_leaves_no_cluster_behind"]
fn scratch_cluster_owner() {
    let Some(mode) = std::env::var_os(OWNER) else {
        return;
    };
    let mut cluster = ScratchCluster::start().unwrap();
    if mode == "restart" {
        cluster.stop_server().unwrap();
        cluster.start_server().unwrap();
    }
    println!(
        "SCRATCH_OWNER {} {}",
        cluster.server_pid(),
        cluster.socket_folder().parent().unwrap().display()
    );
    // Blocks until the parent closes the pipe (it kills us first).
    let _ = std::io::stdin().lines().count();
}

#[test]
fn a_killed_owner_leaves_no_cluster_behind() {
    kill_an_owner("1");
}

#[test]
fn a_killed_owner_leaves_no_restarted_cluster_behind() {
    kill_an_owner("restart");
}

/// Starts [`scratch_cluster_owner`] in `mode`, SIGKILLs it once its
/// cluster runs, and checks that the cluster's server and folder go away.
fn kill_an_owner(mode: &str) {
    if let Err(ScratchError::NotInstalled) = Binaries::find() {
        skip_without_postgres();
        return;
    }
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args([
            "postgres_cluster::scratch_cluster_owner",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(OWNER, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = owner.stdout.take().unwrap();
    let (lines, announced) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("SCRATCH_OWNER ") {
                let _ = lines.send(rest.to_owned());
            }
        }
    });
    let announcement = announced.recv_timeout(Duration::from_secs(60));
    let Ok(announcement) = announcement else {
        let _ = owner.kill();
        let _ = owner.wait();
        panic!("the owner process announced no cluster within 60 s");
    };
    let (pid, folder) = announcement.split_once(' ').unwrap();
    let (pid, folder): (u32, PathBuf) = (pid.parse().unwrap(), folder.into());
    assert!(running(pid), "the owner's server is not running");
    assert!(folder.join("data").exists());

    owner.kill().unwrap(); // SIGKILL: no destructor runs.
    owner.wait().unwrap();
    wait_until_cleaned_up(pid, &folder);
}
