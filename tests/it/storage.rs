//! The database under operational accidents: its file deleted or replaced
//! under a running relay, damaged pages, two daemons on one file, file
//! modes, and how an open error is reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jogg_relay::app::{App, AppError};
use jogg_relay::store::Store;
use serde_json::json;

use crate::helpers::{
    RelayConfig, RelayProcess, TestApp, binary, run_binary, spawn_app, spawn_manual_app,
};

/// The API key every real relay here is started with (none is in its
/// configuration file).
const KEY: [(&str, &str); 1] = [("JOGG_RELAY__JOGG__API_KEY", "sk-test")];

/// The database file of a test relay.
fn db_path(app: &TestApp) -> PathBuf {
    app.config.database.sqlite_path().unwrap().to_owned()
}

/// Asserts `/readyz` answers 503 `database_unavailable` with `reason`, and
/// returns its message.
async fn assert_unready(app: &TestApp, reason: &str) -> String {
    let ready = app.send("GET", "/readyz", None).await;
    assert_eq!(ready.assert_json_error(503), "database_unavailable");
    assert_eq!(ready.json["error"]["reason"], reason, "{ready:?}");
    ready.json["error"]["message"].as_str().unwrap().to_owned()
}

/// Reads through the API: the videos' (refused) and `/metrics` (which
/// reads the database for its gauges), many at once so the pool opens new
/// connections (it holds up to 4; only one was opened at startup).
async fn read_concurrently(app: &TestApp) {
    let videos = (0..4).map(|i| async move {
        if i % 2 == 0 {
            app.video("kept-1").await
        } else {
            app.send("GET", "/v1/videos", None).await
        }
    });
    for reply in futures_util::future::join_all(videos).await {
        // Refused, as no connection can tell which file it reads.
        assert_eq!(reply.assert_json_error(503), "storage_unavailable");
    }
    let scrapes = (0..8).map(|_| app.send("GET", "/metrics", None));
    for reply in futures_util::future::join_all(scrapes).await {
        // Answered from a connection already open, or refused by SQLite
        // when a new connection finds no file; never from a new file
        // (checked by the caller).
        assert!(reply.status == 200 || reply.status == 503, "{reply:?}");
    }
}

#[tokio::test]
async fn a_removed_database_file_refuses_writes_and_readiness_and_no_read_recreates_it() {
    let app = spawn_app().await;
    let db = db_path(&app);
    assert_eq!(app.enqueue(json!({"video_id": "kept-1"})).await.status, 201);

    std::fs::remove_file(&db).unwrap();

    let refused = app.enqueue(json!({"video_id": "lost-1"})).await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    let message = assert_unready(&app, "file_removed").await;
    assert!(message.contains(&db.display().to_string()), "{message}");
    read_concurrently(&app).await;
    assert!(
        !db.exists(),
        "a connection created a new database file at the path"
    );
    // Still refused: no write slipped through to a fresh file either.
    let refused = app
        .send(
            "POST",
            "/v1/videos/batch",
            Some(&json!({"videos": [{"video_id": "lost-2"}]})),
        )
        .await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    assert_eq!(
        app.send("GET", "/healthz", None).await.status,
        200,
        "alive all the same"
    );
    app.stop().await;
}

#[tokio::test]
async fn nothing_is_written_while_the_file_is_moved_away_and_writes_resume_when_it_is_back() {
    let app = spawn_manual_app(|_| {}).await;
    let db = db_path(&app);
    let away = db.with_file_name("relay.db.away");
    std::fs::rename(&db, &away).unwrap();
    let refused = app.enqueue(json!({"video_id": "vid-1"})).await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    assert_unready(&app, "file_removed").await;

    // The same file, renamed back: the relay takes writes again, and the
    // refused video was not stored behind its caller's back.
    std::fs::rename(&away, &db).unwrap();
    assert_eq!(app.send("GET", "/readyz", None).await.status, 200);
    let again = app.enqueue(json!({"video_id": "vid-1"})).await;
    assert_eq!(again.status, 201, "{again:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_database_file_is_logged_as_one_error_however_many_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let mut relay = RelayProcess::start(&config, &KEY);
    let enqueue = |id: &str| relay.post("/v1/videos", json!({ "video_id": id }));
    assert_eq!(enqueue("kept-1").await.status, 201);
    let db = dir.path().join("relay.db");
    std::fs::remove_file(&db).unwrap();
    for i in 0..5 {
        let refused = enqueue(&format!("lost-{i}")).await;
        assert_eq!(refused.status, 503);
        let ready = relay.get("/readyz").await;
        assert_eq!(ready.status, 503);
    }
    relay.signal("TERM");
    assert_eq!(relay.child.wait().unwrap().code(), Some(0));
    // Every line, up to the end of the output (the reader thread ends with
    // it), with an overall deadline.
    let log = relay.take_log();
    let lines = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break lines,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the log never ended"),
            }
        }
    })
    .await
    .unwrap();
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{lines:#?}");
    assert!(errors[0].contains(&db.display().to_string()), "{errors:?}");
    assert!(errors[0].contains("removed"), "{errors:?}");
}

#[tokio::test]
async fn a_database_file_replaced_by_rename_refuses_writes_and_readiness() {
    let app = spawn_manual_app(|_| {}).await;
    let db = db_path(&app);
    assert_eq!(app.enqueue(json!({"video_id": "kept-1"})).await.status, 201);
    assert_eq!(app.send("GET", "/readyz", None).await.status, 200);

    // An operator restores "a backup": another valid database, renamed over
    // the path while the relay runs.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("backup.db");
    let backup = Store::open(
        &jogg_relay::config::DatabaseConfig::parse(&format!("sqlite://{}", other.display()))
            .unwrap(),
    )
    .await
    .unwrap();
    backup.close().await;
    let staged = db.with_file_name("relay.db.restore");
    std::fs::copy(&other, &staged).unwrap();
    std::fs::rename(&staged, &db).unwrap();

    let refused = app.enqueue(json!({"video_id": "lost-1"})).await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    let message = assert_unready(&app, "file_replaced").await;
    assert!(message.contains(&db.display().to_string()), "{message}");
    app.stop().await;
}

/// SQLite's file `<database><suffix>` beside the database of `app`.
fn log_file(app: &TestApp, suffix: &str) -> PathBuf {
    let mut name = db_path(app).into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Asserts that `app` refuses writes and reads and answers `/readyz` with
/// `reason`, naming `file`.
async fn assert_refused(app: &TestApp, reason: &str, file: &Path) {
    let refused = app.enqueue(json!({"video_id": "lost-1"})).await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    let refused = app
        .send(
            "POST",
            "/v1/videos/batch",
            Some(&json!({"videos": [{"video_id": "lost-2"}]})),
        )
        .await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    let message = assert_unready(app, reason).await;
    assert!(message.contains(&file.display().to_string()), "{message}");
    // What the running relay still has open is not what a restart reads.
    let read = app.video("kept-1").await;
    assert_eq!(read.assert_json_error(503), "storage_unavailable");
}

/// The write-ahead log holds every commit since the last checkpoint; a
/// relay that kept appending to a deleted one would acknowledge enqueues
/// that a kill loses.
#[tokio::test]
async fn a_removed_write_ahead_log_refuses_writes_and_readiness() {
    let app = spawn_manual_app(|_| {}).await;
    assert_eq!(app.enqueue(json!({"video_id": "kept-1"})).await.status, 201);
    assert_eq!(app.send("GET", "/readyz", None).await.status, 200);
    let wal = log_file(&app, "-wal");
    std::fs::remove_file(&wal).unwrap();
    assert_refused(&app, "wal_removed", &wal).await;
    app.stop().await;
}

/// SQLite keeps the log files beside the real file when the configured
/// path is a symbolic link; they are watched there.
#[tokio::test]
async fn a_removed_write_ahead_log_behind_a_symlinked_path_refuses_writes() {
    let real = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let real_db = real.path().join("real.db");
    let link = links.path().join("link.db");
    // An empty file is a new database to SQLite; a link to nothing is
    // refused at start (the relay does not create files through links).
    std::fs::File::create(&real_db).unwrap();
    std::os::unix::fs::symlink(&real_db, &link).unwrap();
    let app = spawn_manual_app(|s| s.database.url = format!("sqlite://{}", link.display())).await;
    assert_eq!(app.enqueue(json!({"video_id": "kept-1"})).await.status, 201);
    let mut wal = real_db.into_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    std::fs::remove_file(&wal).unwrap();
    let refused = app.enqueue(json!({"video_id": "lost-1"})).await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    assert_unready(&app, "wal_removed").await;
    app.stop().await;
}

#[tokio::test]
async fn a_replaced_write_ahead_log_refuses_writes_and_readiness() {
    let app = spawn_manual_app(|_| {}).await;
    assert_eq!(app.enqueue(json!({"video_id": "kept-1"})).await.status, 201);
    let wal = log_file(&app, "-wal");
    let staged = wal.with_file_name("relay.db-wal.copy");
    std::fs::copy(&wal, &staged).unwrap();
    std::fs::rename(&staged, &wal).unwrap();
    assert_refused(&app, "wal_replaced", &wal).await;
    app.stop().await;
}

/// The shared-memory index is how processes agree on the log's content: a
/// CLI command would build another one beside a deleted one.
#[tokio::test]
async fn a_removed_shared_memory_index_refuses_writes_and_readiness() {
    let app = spawn_manual_app(|_| {}).await;
    assert_eq!(app.enqueue(json!({"video_id": "kept-1"})).await.status, 201);
    let shm = log_file(&app, "-shm");
    std::fs::remove_file(&shm).unwrap();
    assert_refused(&app, "shm_removed", &shm).await;
    app.stop().await;
}

/// What an operator relies on: an enqueue answered 201 survives a crash.
/// After the log is deleted under the real daemon, nothing is answered 201
/// (each enqueue would be appended to the unlinked log and lost with the
/// process), and what a restart reads agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_enqueue_acknowledged_after_the_log_is_deleted_is_lost_by_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let mut relay = RelayProcess::start(&config, &KEY);
    let enqueue = |id: String| relay.post("/v1/videos", json!({ "video_id": id }));
    assert_eq!(enqueue("kept-1".into()).await.status, 201);
    std::fs::remove_file(dir.path().join("relay.db-wal")).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let id = format!("after-{i}");
        let answer = enqueue(id.clone()).await;
        match answer.status {
            201 => acknowledged.push(id),
            status => assert_eq!(status, 503),
        }
    }
    relay.signal("KILL");
    relay.wait();

    let config = config.to_str().unwrap();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| {
            let (code, _, _) = run_binary(&["--config", config, "status", id], &[]);
            code != 0
        })
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged with 201, gone after the kill: {lost:?}"
    );
}

#[tokio::test]
async fn readiness_names_corruption_once_sqlite_reports_damaged_pages() {
    // A relay stores some videos and stops cleanly (the WAL is folded into
    // the file and removed).
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let first = spawn_manual_app(|settings| settings.database.url = url.clone()).await;
    for i in 0..20 {
        let id = format!("vid-{i}");
        assert_eq!(first.enqueue(json!({"video_id": id})).await.status, 201);
    }
    let db = db_path(&first);
    let store = first.store().await;
    let (root, page_size) = store.root_page("videos").await.unwrap();
    store.close().await;
    first.stop().await;
    assert!(!db.with_file_name("relay.db-wal").exists());

    // The `videos` table's root page is overwritten with garbage, as a
    // failing disk or a stray write would.
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        file.seek(SeekFrom::Start(((root - 1) * page_size) as u64))
            .unwrap();
        file.write_all(&vec![0xA5; page_size as usize]).unwrap();
    }

    let app = spawn_manual_app(|settings| settings.database.url = url.clone()).await;
    let refused = app.enqueue(json!({"video_id": "vid-new"})).await;
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");
    let message = assert_unready(&app, "corrupt").await;
    assert!(message.contains("malformed"), "SQLite's words: {message}");
    // It stays so: a damaged file does not mend itself.
    assert_unready(&app, "corrupt").await;
    app.stop().await;
}

#[tokio::test]
async fn a_second_relay_on_the_same_database_in_one_process_is_refused_until_the_first_stops() {
    let app = spawn_app().await;
    let db = db_path(&app);
    let refused = App::build(app.config.clone()).await.err().expect("refused");
    assert!(matches!(refused, AppError::Lock(_)), "{refused}");
    let message = refused.to_string();
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    let config = app.config.clone();
    app.stop().await;
    // Stopping released the lock.
    let again = App::build(config).await.expect("the lock was released");
    drop(again);
}

/// Waits (at most 30 s) for `child` to exit, killing it past that;
/// returns its exit code (`None` when killed) and standard error.
fn wait_with_deadline(mut child: std::process::Child) -> (Option<i32>, String) {
    let mut stderr = child.stderr.take().unwrap();
    let (done, read) = std::sync::mpsc::channel();
    // Standard error reaches its end when the child exits.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = done.send(());
        text
    });
    let exited = read.recv_timeout(Duration::from_secs(30)).is_ok();
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let text = reader.join().unwrap();
    (if exited { status.code() } else { None }, text)
}

/// Runs `serve` with `config` while another one runs, until it exits (with
/// a deadline); its exit code and standard error.
fn second_serve(config: &Path) -> (Option<i32>, String) {
    let second = Command::new(binary())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_clear()
        .env("JOGG_RELAY__JOGG__API_KEY", "sk-test")
        .env("JOGG_RELAY__JOGG__BASE_URL", "http://127.0.0.1:1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_deadline(second)
}

#[test]
fn a_second_serve_on_the_same_database_is_refused_naming_it_and_the_running_pid() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let first = RelayProcess::start(&config, &KEY);

    let (code, stderr) = second_serve(&config);
    assert_eq!(code, Some(1), "the second serve must exit: {stderr}");
    let db = dir.path().join("relay.db");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert!(stderr.contains("already in use"), "{stderr}");

    // The one-shot commands work beside the running daemon.
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) = run_binary(&["--config", config, "enqueue", "beside-1"], &[]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "created\tbeside-1\n"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run_binary(&["--config", config, "status", "beside-1"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"active\""), "{stdout}");
    let (code, stdout, stderr) = run_binary(&["--config", config, "list"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("beside-1"), "{stdout}");
    // `redeliver` reads and writes the database too: it gets as far as
    // finding the video still active.
    let (code, _, stderr) = run_binary(&["--config", config, "redeliver", "beside-1"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is active"), "{stderr}");
}

/// A second `serve` configured with another path to the same file (a
/// symbolic link in another folder) is refused like one with the same path.
#[cfg(unix)]
#[test]
fn a_second_serve_reaching_the_database_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let first = RelayProcess::start(&config, &KEY);

    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("link.db");
    std::os::unix::fs::symlink(dir.path().join("relay.db"), &link).unwrap();
    let config = RelayConfig::new(elsewhere.path()).database(&link).write();
    let (code, stderr) = second_serve(&config);
    assert_eq!(code, Some(1), "the second serve must exit: {stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert!(stderr.contains(&link.display().to_string()), "{stderr}");
}

#[cfg(unix)]
#[test]
fn database_folders_wal_shm_and_lock_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // The database's folders do not exist yet: the relay creates them.
    let folder = dir.path().join("state").join("db");
    let config = RelayConfig::new(dir.path())
        .database(&folder.join("relay.db"))
        .write();
    // The most permissive umask. The relay logs its address once the
    // database is open in WAL mode, so every file exists by then.
    let relay = RelayProcess::start_after(&config, &KEY, Some("umask 000"));
    let mode_of = |path: &Path| {
        let metadata = std::fs::metadata(path).ok();
        metadata.map(|m| m.permissions().mode() & 0o777)
    };
    let modes: Vec<(String, Option<u32>)> =
        ["relay.db", "relay.db-wal", "relay.db-shm", "relay.db.lock"]
            .iter()
            .map(|name| (name.to_string(), mode_of(&folder.join(name))))
            .collect();
    let folder_modes = [mode_of(&dir.path().join("state")), mode_of(&folder)];
    drop(relay);
    assert_eq!(
        folder_modes,
        [Some(0o700), Some(0o700)],
        "created folders 0700: {:?}",
        folder_modes.map(|mode| mode.map(|m| format!("{m:o}")))
    );
    assert!(
        modes.iter().all(|(_, mode)| *mode == Some(0o600)),
        "every file 0600: {:?}",
        modes
            .iter()
            .map(|(name, mode)| format!(
                "{name}: {}",
                mode.map_or("missing".into(), |m| format!("{m:o}"))
            ))
            .collect::<Vec<_>>()
    );
}

/// A full disk, for real as far as the relay can tell: a file size limit
/// (`ulimit -f`, with `SIGXFSZ` ignored so writes past it fail with
/// `EFBIG`) stops the WAL from growing. A probe of one small commit can
/// still fit where an enqueue no longer does; readiness must not say ready
/// while enqueues are refused.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_as_soon_as_a_full_disk_refuses_an_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    // 600 blocks (of 512 bytes for dash, 1024 for bash): room for the
    // migrated database and some dozens of pages more.
    let relay = RelayProcess::start_after(&config, &KEY, Some("trap '' XFSZ; ulimit -f 600"));
    let pad = "x".repeat(3000);
    let mut refused = None;
    for i in 0..1000 {
        let answer = relay
            .post(
                "/v1/videos",
                json!({"video_id": format!("vid-{i}"), "metadata": {"pad": pad}}),
            )
            .await;
        if answer.status != 201 {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("the file size limit was reached");
    assert_eq!(refused.assert_json_error(503), "storage_unavailable");

    let ready = relay.get("/readyz").await;
    assert_eq!(ready.assert_json_error(503), "database_unavailable");
    assert_eq!(ready.json["error"]["reason"], "write_failed", "{ready:?}");
    let message = ready.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("disk I/O error"),
        "SQLite's words: {message}"
    );
    let health = relay.get("/healthz").await;
    assert_eq!(health.status, 200, "alive all the same");

    // Started again on the full disk, the relay has no failed write to go
    // by: its probe must find the disk full by writing. (A few probes may
    // still fit in the room the refused enqueue could not use; each takes
    // some of it.) A probe's success answers for a second, so the checks
    // are spread over seconds: this real process's clock cannot be paused.
    drop(relay);
    let relay = RelayProcess::start_after(&config, &KEY, Some("trap '' XFSZ; ulimit -f 600"));
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let ready = relay.get("/readyz").await;
        let done = ready.status == 503;
        answers.push(ready);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let last = answers.last().unwrap();
    assert_eq!(last.status, 503, "ready on a full disk: {answers:?}");
    assert_eq!(last.json["error"]["reason"], "write_failed", "{last:?}");
}

#[test]
fn a_database_open_error_is_one_line_naming_the_path_once() {
    let dir = tempfile::tempdir().unwrap();
    // The configured database is a folder.
    let db = dir.path().join("relay.db");
    std::fs::create_dir(&db).unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let (code, stdout, stderr) = run_binary(
        &["--config", config.to_str().unwrap(), "status", "vid-1"],
        &[],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let path = db.display().to_string();
    assert_eq!(stderr.matches(&path).count(), 1, "{stderr}");
    // No cause is repeated along the chain.
    let parts: Vec<&str> = stderr.trim_end().split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} repeated: {stderr}"
        );
    }
    assert!(stderr.contains("not a regular file"), "{stderr}");
}
