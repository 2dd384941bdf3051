//! `backup` and `restore` as an operator runs them: the real binary, a
//! real `serve` under load, and the restored database read back through
//! the relay's own commands and API.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

use crate::helpers::{RelayConfig, RelayProcess, TOKEN, reply, run_binary};

/// The environment every `serve` here gets: a key, and JoggAI at a closed
/// loopback port (the helper's default), so polls fail harmlessly.
const KEY: [(&str, &str); 1] = [("JOGG_RELAY__JOGG__API_KEY", "sk-test")];

/// `jogg-relay --config CONFIG ARGS...`: exit code, stdout, stderr.
fn relay_command(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_binary(&all, &[])
}

/// The ids `jogg-relay list` prints for `config`.
fn listed_ids(config: &Path) -> Vec<String> {
    let (code, stdout, stderr) = relay_command(config, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .skip(1)
        .map(|line| line.split('\t').next().unwrap().to_owned())
        .collect()
}

/// A configuration in `dir` with a database holding the videos `ids`
/// (through `enqueue`); the configuration's path.
fn database_with(dir: &Path, ids: &[&str]) -> PathBuf {
    let config = RelayConfig::new(dir).write();
    let mut args = vec!["enqueue"];
    args.extend_from_slice(ids);
    let (code, _, stderr) = relay_command(&config, &args);
    assert_eq!(code, 0, "{stderr}");
    config
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_enqueue_load_restores_every_video_acknowledged_before_it_began() {
    let dir = tempfile::tempdir().unwrap();
    // A video written before the daemon starts is in the database file
    // itself (a clean close checkpoints the log); the load's are in the
    // daemon's write-ahead log, which a copy must read too.
    let config = database_with(dir.path(), &["before-serve"]);
    let mut relay = RelayProcess::start(&config, &KEY);

    // Enqueuers recording each acknowledged id with when the answer came.
    let acknowledged: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut load = Vec::new();
    // `RelayProcess` stays on this task (its log receiver is not `Sync`);
    // the enqueuers send with a client of their own.
    let client = jogg_relay::outbound::client_builder().build().unwrap();
    let videos = format!("{}/v1/videos", relay.base());
    for worker in 0..4 {
        let (client, videos) = (client.clone(), videos.clone());
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let id = format!("load-{worker}-{n}");
                let request = client
                    .post(&videos)
                    .bearer_auth(TOKEN)
                    .json(&json!({"video_id": id}));
                let reply = reply(request.send().await.expect("enqueue sent")).await;
                assert_eq!(reply.status, 201, "{reply:?}");
                acknowledged.lock().unwrap().push((id, Instant::now()));
            }
        }));
    }
    let acknowledged_count = || acknowledged.lock().unwrap().len();
    let wait_for = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        async move {
            while acknowledged_count() < count {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(300).await;

    let copy = dir.path().join("backups").join("relay-copy.db");
    std::fs::create_dir(copy.parent().unwrap()).unwrap();
    let began = Instant::now();
    let backup = {
        let (config, copy) = (config.clone(), copy.clone());
        tokio::task::spawn_blocking(move || {
            relay_command(&config, &["backup", copy.to_str().unwrap()])
        })
    };
    let (code, stdout, stderr) = backup.await.unwrap();
    let ended = Instant::now();
    assert_eq!(code, 0, "{stderr}");
    // The load went on past the backup.
    let at_end = acknowledged_count();
    wait_for(at_end + 50).await;
    stop.cancel();
    for task in load {
        task.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: HashSet<&str> = acknowledged
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(id, _)| id.as_str())
        .collect();
    let during = acknowledged
        .iter()
        .filter(|(_, at)| (began..=ended).contains(at))
        .count();
    println!(
        "{} acknowledged before the backup, {during} while it ran, {} in all; {stdout}",
        before.len(),
        acknowledged.len()
    );
    assert!(
        during > 0,
        "no enqueue was acknowledged while the backup ran"
    );

    // Restored into a fresh configuration, read back with `list`.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_config = RelayConfig::new(fresh.path()).write();
    let (code, restored, stderr) =
        relay_command(&fresh_config, &["restore", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        restored.contains("there was no database to keep"),
        "{restored}"
    );
    let listed = listed_ids(&fresh_config);
    let listed_set: HashSet<&str> = listed.iter().map(String::as_str).collect();
    let missing: Vec<&&str> = before
        .iter()
        .filter(|id| !listed_set.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup began but not restored: {missing:?}"
    );
    let sent: HashSet<&str> = acknowledged.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        listed
            .iter()
            .all(|id| id == "before-serve" || sent.contains(id.as_str()))
    );
    // The count `backup` printed is what the restored database holds.
    assert!(
        stdout.contains(&format!(", {} video(s),", listed.len())),
        "{stdout} vs {} listed",
        listed.len()
    );

    // The restored database serves.
    let served = RelayProcess::start(&fresh_config, &KEY);
    let some_id = before.iter().next().unwrap();
    let video = served.get(&format!("/v1/videos/{some_id}")).await;
    assert_eq!(video.status, 200, "{video:?}");
    assert_eq!(video.json["state"], "active");
    drop(served);

    // Restoring over the original once its daemon stopped keeps the
    // replaced database, which still has every acknowledged video.
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
    let (code, restored, stderr) = relay_command(&config, &["restore", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let kept = kept_path(&restored);
    assert_eq!(listed_ids(&config).len(), listed.len());
    let kept_dir = tempfile::tempdir().unwrap();
    let kept_config = RelayConfig::new(kept_dir.path()).database(&kept).write();
    let kept_ids: HashSet<String> = listed_ids(&kept_config).into_iter().collect();
    assert_eq!(kept_ids.len(), acknowledged.len() + 1);
    assert!(acknowledged.iter().all(|(id, _)| kept_ids.contains(id)));
}

#[test]
fn backup_refuses_an_existing_file_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = database_with(dir.path(), &["b-1", "b-2"]);
    let target = dir.path().join("precious.db");
    std::fs::write(&target, b"precious").unwrap();
    let names = names_in(dir.path());
    let (code, stdout, stderr) = relay_command(&config, &["backup", target.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{} already exists", target.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(names_in(dir.path()), names, "nothing left behind");

    // Through a symbolic link, even a dangling one: still refused.
    #[cfg(unix)]
    {
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(dir.path().join("nowhere.db"), &link).unwrap();
        let (code, _, stderr) = relay_command(&config, &["backup", link.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(!dir.path().join("nowhere.db").exists());
    }
}

#[test]
fn backup_and_restore_of_postgres_point_to_its_tools_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let url = [(
        "JOGG_RELAY__DATABASE__URL",
        "postgres://relay:pw-s3cret@127.0.0.1:1/relay",
    )];
    let config_arg = config.to_str().unwrap();
    for (command, tool) in [("backup", "pg_dump"), ("restore", "pg_restore")] {
        let copy = dir.path().join("copy.db");
        let args = ["--config", config_arg, command, copy.to_str().unwrap()];
        let (code, stdout, stderr) = run_binary(&args, &url);
        assert_eq!(code, 64, "{command}: {stderr}");
        assert!(stderr.contains("database.url"), "{stderr}");
        assert!(stderr.contains(tool), "{stderr}");
        assert!(!format!("{stdout}{stderr}").contains("pw-s3cret"));
    }
}

/// `restore` refusing `file` with a message holding `expected`, leaving
/// the database of `config` (in `dir`) as it was.
fn assert_restore_refused(config: &Path, dir: &Path, file: &Path, expected: &str) {
    let database = dir.join("relay.db");
    let before = std::fs::read(&database).unwrap();
    let names = names_in(dir);
    let (code, stdout, stderr) = relay_command(config, &["restore", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{}: {stdout}{stderr}", file.display());
    assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    assert!(
        std::fs::read(&database).unwrap() == before,
        "database changed"
    );
    assert_eq!(names_in(dir), names, "files added or removed");
}

#[tokio::test]
async fn restore_refuses_garbage_another_programs_database_and_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let config = database_with(dir.path(), &["r-1", "r-2"]);
    let files = tempfile::tempdir().unwrap();

    let garbage = files.path().join("garbage.db");
    std::fs::write(&garbage, "not a database at all\n".repeat(200)).unwrap();
    assert_restore_refused(&config, dir.path(), &garbage, "is not a SQLite database");
    // SQLite's header with nothing valid after it.
    let fake = files.path().join("fake.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5, 8192));
    std::fs::write(&fake, bytes).unwrap();
    assert_restore_refused(&config, dir.path(), &fake, "fake.db");

    let other = files.path().join("other.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", other.display()))
            .await
            .unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert_restore_refused(&config, dir.path(), &other, "is not a jogg-relay database");

    // A relay database (a real backup) with one more migration than this
    // binary knows.
    let newer = files.path().join("newer.db");
    let (code, _, stderr) = relay_command(&config, &["backup", newer.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", newer.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, x'00', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_restore_refused(&config, dir.path(), &newer, "made by a newer jogg-relay");

    assert_eq!(listed_ids(&config), ["r-1", "r-2"]);
}

#[tokio::test]
async fn restore_refuses_while_serve_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = database_with(dir.path(), &["s-1"]);
    let relay = RelayProcess::start(&config, &KEY);
    let copy = dir.path().join("copy.db");
    let (code, _, stderr) = relay_command(&config, &["backup", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "backup needs no lock: {stderr}");
    assert!(
        relay
            .post("/v1/videos", json!({"video_id": "s-2"}))
            .await
            .status
            == 201
    );
    let (code, _, stderr) = relay_command(&config, &["restore", copy.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("already in use by another jogg-relay serve")
            && stderr.contains("stop it before restoring"),
        "{stderr}"
    );
    // Nothing was replaced under the daemon: it still reads and writes.
    assert_eq!(relay.get("/v1/videos/s-2").await.status, 200);
    let readyz = relay.send_as("GET", "/readyz", None, None).await;
    assert_eq!(readyz.status, 200, "{readyz:?}");
}

/// The lines of `restore`'s output name the kept database; its path.
fn kept_path(restored: &str) -> PathBuf {
    restored
        .lines()
        .find_map(|line| line.strip_prefix("the replaced database is kept as "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{restored}"))
}

#[tokio::test]
async fn restore_keeps_the_commits_a_killed_daemon_left_in_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = database_with(dir.path(), &["k-1"]);
    let copy = dir.path().join("copy.db");
    let (code, _, stderr) = relay_command(&config, &["backup", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");

    let relay = RelayProcess::start(&config, &KEY);
    let created = relay.post("/v1/videos", json!({"video_id": "k-2"})).await;
    assert_eq!(created.status, 201);
    relay.signal("KILL");
    drop(relay);
    // The acknowledged commit is in the log only: nothing checkpointed it.
    let wal = dir.path().join("relay.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    let shm = dir.path().join("relay.db-shm");
    assert!(shm.exists());
    let (code, restored, stderr) = relay_command(&config, &["restore", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // The replaced database's log and index are gone: the restored copy
    // must not be opened with them.
    assert!(!wal.exists(), "log left beside the restored copy");
    assert!(!shm.exists(), "index left beside the restored copy");
    assert_eq!(listed_ids(&config), ["k-1"]);
    let kept = kept_path(&restored);
    // The log was folded into the kept file, which holds every commit
    // alone: no log beside it.
    let mut kept_log = kept.clone().into_os_string();
    kept_log.push("-wal");
    assert!(!std::path::Path::new(&kept_log).exists(), "{kept_log:?}");
    let kept_dir = tempfile::tempdir().unwrap();
    let kept_config = RelayConfig::new(kept_dir.path()).database(&kept).write();
    assert_eq!(listed_ids(&kept_config), ["k-1", "k-2"]);
}

/// A database too damaged to open is replaced too (restoring is what a
/// damaged database is for), and kept as it was.
#[tokio::test]
async fn restore_replaces_a_damaged_database_and_keeps_it() {
    // Without a log, and with one: a log may hold what a repair needs, so
    // it goes with the database.
    for log in [None, Some(b"a log no one could fold".repeat(64))] {
        let dir = tempfile::tempdir().unwrap();
        let config = database_with(dir.path(), &["d-1"]);
        let copy = dir.path().join("copy.db");
        let (code, _, stderr) = relay_command(&config, &["backup", copy.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        let damaged = b"SQLite format 3\0 and then nothing a database holds".repeat(64);
        std::fs::write(dir.path().join("relay.db"), &damaged).unwrap();
        let (wal, shm) = (
            dir.path().join("relay.db-wal"),
            dir.path().join("relay.db-shm"),
        );
        match &log {
            Some(log) => std::fs::write(&wal, log).unwrap(),
            None => _ = std::fs::remove_file(&wal),
        }
        std::fs::write(&shm, b"an index").unwrap();

        let (code, restored, stderr) = relay_command(&config, &["restore", copy.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            !wal.exists(),
            "the damaged log left beside the restored copy"
        );
        assert!(
            !shm.exists(),
            "the damaged index left beside the restored copy"
        );
        let kept = kept_path(&restored);
        assert_eq!(std::fs::read(&kept).unwrap(), damaged);
        let mut kept_log = kept.into_os_string();
        kept_log.push("-wal");
        assert_eq!(std::fs::read(&kept_log).ok(), log, "{kept_log:?}");
        assert_eq!(listed_ids(&config), ["d-1"]);
    }
}
