//! The process as an operator runs it: logging to a broken standard error,
//! supervision of background tasks, the systemd watchdog, the HTTP
//! server's timeouts and connection cap, and the `process_*` metrics.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jogg_relay::app::{App, AppError};
use jogg_relay::sim::{Fault, SIM_API_KEY, SimUpstream, Timeline};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::helpers::{RelayConfig, RelayProcess, TOKEN, binary, spawn_app_with, test_settings};

/// Writes a `serve` configuration for the simulator at `sim_url` into
/// `dir`, with `extra` appended.
fn write_config(dir: &std::path::Path, sim_url: &str, extra: &str) -> std::path::PathBuf {
    RelayConfig::new(dir)
        .extra(&format!(
            "[jogg]\nbase_url = \"{sim_url}\"\napi_key = \"{SIM_API_KEY}\"\n{extra}"
        ))
        .write()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stderr_never_stops_the_relay() {
    let sim = SimUpstream::start().await.unwrap();
    sim.state.script("pipe-1", Timeline::completes(1, 0));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        sim.base_url.as_str(),
        "[polling]\nfirst_after = \"0s\"\nmin_interval = \"20ms\"\nmax_interval = \"50ms\"\n",
    );
    let mut relay = RelayProcess::start(
        &config,
        &[
            ("RUST_LOG", "debug"),
            ("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str()),
        ],
    );
    // Past the address, close the pipe's only read end: the thread reading
    // it ends at the next line, and every later write to standard error
    // fails with EPIPE.
    drop(relay.take_log());

    // Requests, polls, transitions and deliveries all log (at debug, a lot).
    let enqueued = relay
        .post("/v1/videos", json!({"video_id": "pipe-1"}))
        .await;
    assert_eq!(enqueued.status, 201);
    // The video completes only if the poller survives its logging: the
    // simulator answers "processing" once, then "completed".
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let video = relay.get("/v1/videos/pipe-1").await;
        if video.json["state"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the poller stopped polling: {:?}",
            video.json
        );
        sim.state
            .wait_for_requests(sim.state.request_count() + 1, Duration::from_millis(500))
            .await;
    }
    let health = relay.get("/healthz").await;
    assert_eq!(health.status, 200);
    // The relay knows it lost lines: the test did exercise the broken pipe.
    let metrics = relay.metrics_text().await;
    let lost: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("jogg_relay_log_write_errors_total "))
        .expect("the lost-lines counter")
        .parse()
        .unwrap();
    assert!(lost > 0.0, "{lost} lines lost");

    // The signal handler logs too; SIGTERM must still stop the relay, cleanly.
    relay.signal("TERM");
    let code = tokio::task::spawn_blocking(move || relay.wait().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
}

#[tokio::test]
async fn a_background_task_that_panics_or_ends_stops_the_relay_with_an_error() {
    for (panics, expected) in [(true, "panicked"), (false, "stopped unexpectedly")] {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimUpstream::start().await.unwrap();
        let config = test_settings(dir.path(), sim.base_url.as_str())
            .validate()
            .unwrap();
        let mut app = App::build(config).await.unwrap();
        let (fail, failed) = tokio::sync::oneshot::channel::<()>();
        app.supervise("test loop", move |shutdown| async move {
            tokio::select! {
                _ = failed => {}
                _ = shutdown.cancelled() => return,
            }
            if panics {
                panic!("test loop failed");
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let relay = tokio::spawn(app.run(listener, shutdown.clone()));
        let client = jogg_relay::outbound::client_builder().build().unwrap();
        let health = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "serving before the failure");

        fail.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(30), relay)
            .await
            .expect("the relay stops by itself")
            .unwrap();
        match result {
            Err(AppError::TaskFailed(message)) => {
                assert!(
                    message.contains("test loop") && message.contains(expected),
                    "{message}"
                );
            }
            other => panic!("expected TaskFailed, got {other:?}"),
        }
        assert!(shutdown.is_cancelled(), "the failure shut the relay down");
        assert!(
            client.get(format!("{base}/healthz")).send().await.is_err(),
            "the listener is closed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_pings_only_while_every_heartbeat_is_fresh() {
    use jogg_relay::app::{MIN_STALL, watchdog};
    use jogg_relay::worker::Heartbeat;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let busy = Arc::new(Heartbeat::default());
    let stuck = Arc::new(Heartbeat::default());
    let pings = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let interval = Duration::from_millis(200);
    let task = tokio::spawn(watchdog(
        interval,
        vec![("busy", busy.clone()), ("stuck", stuck.clone())],
        shutdown.clone(),
        {
            let pings = pings.clone();
            move || {
                pings.fetch_add(1, Ordering::SeqCst);
            }
        },
    ));
    // Both beat for two seconds: a ping every 100 ms.
    for _ in 0..20 {
        busy.beat();
        stuck.beat();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_stall = pings.load(Ordering::SeqCst);
    assert!(before_stall >= 19, "{before_stall} pings");
    // "stuck" stops beating; past MIN_STALL the pings stop.
    for _ in 0..50 {
        busy.beat();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_stall = pings.load(Ordering::SeqCst);
    let expected_max = before_stall + (MIN_STALL.as_millis() / 100) as usize + 1;
    assert!(
        after_stall <= expected_max,
        "{after_stall} pings, at most {expected_max} expected"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        pings.load(Ordering::SeqCst),
        after_stall,
        "no pings while stalled"
    );
    // It recovers: pings resume.
    busy.beat();
    stuck.beat();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(pings.load(Ordering::SeqCst) > after_stall, "pings resumed");
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn systemd_watchdog_stops_when_the_poller_stalls() {
    use std::os::unix::net::UnixDatagram;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime.block_on(SimUpstream::start()).unwrap();
    // The first answer pauses polling (invalid key); the probe that follows
    // is made by the poll loop itself and is held by the simulator far
    // longer than the stall limit (the request timeout is longer still):
    // a poll loop that hangs, deterministically.
    sim.state.inject_for(
        "stall-1",
        [
            Fault::Business(10105),
            Fault::Slow(Duration::from_secs(600)),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = write_config(
        dir.path(),
        sim.base_url.as_str(),
        "timeout = \"600s\"\n[polling]\nfirst_after = \"0s\"\nmin_interval = \"10ms\"\n",
    );
    let mut relay = RelayProcess::start(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // 200 ms: pings every 100 ms while the workers are healthy.
            ("WATCHDOG_USEC", "200000"),
            ("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str()),
        ],
    );
    let mut buffer = [0u8; 256];
    // Idle workers keep the pings going past the stall limit: their loops
    // beat at least once a second.
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let idle_until = Instant::now() + jogg_relay::app::MIN_STALL + Duration::from_secs(1);
    let mut pings = 0;
    while Instant::now() < idle_until {
        let n = socket
            .recv(&mut buffer)
            .expect("pings continue while the workers are idle");
        if String::from_utf8_lossy(&buffer[..n]).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(pings > 10, "{pings} pings while idle");

    let status = runtime
        .block_on(relay.post("/v1/videos", json!({"video_id": "stall-1"})))
        .status;
    assert_eq!(status, 201);
    // Pings stop: a whole second without one (ten intervals), within an
    // overall deadline.
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match socket.recv(&mut buffer) {
            Ok(_) => assert!(Instant::now() < deadline, "the watchdog kept pinging"),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("{err}"),
        }
    }
    // The relay says why.
    let log = relay.take_log();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stalled = loop {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a log line naming the stalled worker");
        if line.contains("worker stalled") {
            break line;
        }
    };
    assert!(stalled.contains("poller"), "{stalled}");
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
}

/// Opens a connection that sends a partial request head and nothing more.
async fn slow_connection(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\nx-slow: ")
        .await
        .unwrap();
    stream
}

/// Waits until the server closes `stream` (EOF or reset), reading and
/// dropping whatever it sends; the time it took.
async fn closed_by_server(mut stream: TcpStream, limit: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closed the connection in time");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_the_api_keeps_answering() {
    const CAP: usize = 8;
    let app = spawn_app_with(|s| {
        s.server.max_connections = CAP as u32;
        s.server.header_timeout = "1s".into();
        s.server.body_timeout = "1s".into();
    })
    .await;
    let address = app.base.trim_start_matches("http://").to_owned();

    // Three times the cap of slowloris connections.
    let mut slow = Vec::new();
    for _ in 0..CAP * 3 {
        slow.push(slow_connection(&address).await);
    }
    let started = tokio::time::Instant::now();
    let closers: Vec<_> = slow
        .into_iter()
        .map(|stream| tokio::spawn(closed_by_server(stream, Duration::from_secs(15))))
        .collect();
    // A health check queued behind them is answered once slots free: each
    // round of CAP connections is closed one header timeout after it was
    // accepted. (A new client: the test app's pooled connection already
    // holds a slot.)
    let health = jogg_relay::outbound::client_builder()
        .build()
        .unwrap()
        .get(format!("{}/healthz", app.base))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("healthz answers while slow clients hold the slots");
    assert_eq!(health.status(), 200);
    let health_after = started.elapsed();
    let mut closed_after = Vec::new();
    for closer in closers {
        closed_after.push(closer.await.unwrap());
    }
    closed_after.sort();
    // The first CAP were accepted at once and closed by the header timeout;
    // no connection was served beyond the cap (the last ones waited for a
    // slot, so they closed at least one more timeout later).
    assert!(
        closed_after[CAP - 1] >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    assert!(
        closed_after[CAP * 3 - 1] >= Duration::from_millis(1900),
        "connections beyond the cap waited: {closed_after:?}"
    );
    assert!(
        health_after >= Duration::from_millis(900),
        "the health check waited for a slot: {health_after:?}"
    );

    // A body that trickles gets 408 once the body timeout is over.
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/videos HTTP/1.1\r\nhost: relay\r\nauthorization: Bearer {TOKEN}\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"video_id\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the slow body is answered and the connection closed")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"request_timeout\""), "{response}");
    assert_eq!(app.count("videos").await, 0, "nothing was stored");

    // An idle keep-alive connection is closed after the header timeout.
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    closed_by_server(stream, Duration::from_secs(10)).await;

    // And the API answers normally.
    let enqueued = app.enqueue(json!({"video_id": "after-slowloris"})).await;
    assert_eq!(enqueued.status, 201, "{enqueued:?}");
    app.stop().await;
}

/// Opens a connection with a small receive buffer and, from a background
/// task, pipelines `GET /metrics` on it without end, never reading an
/// answer. The task ends with the error its writes get once the relay
/// closes the connection; the read half is returned so that the client side
/// stays open.
async fn non_reading_connection(
    address: SocketAddr,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<std::io::Error>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // Set before connecting, so the window the relay sees stays small.
    socket.set_recv_buffer_size(4096).unwrap();
    let (reader, mut writer) = socket.connect(address).await.unwrap().into_split();
    let requests = b"GET /metrics HTTP/1.1\r\nhost: relay\r\n\r\n".repeat(100);
    // A relay stuck writing answers stops reading requests, so this blocks
    // once the buffers are full; only the relay closing the connection can
    // make a write fail (the client never closes it).
    let writes = tokio::spawn(async move {
        loop {
            if let Err(err) = writer.write_all(&requests).await {
                return err;
            }
        }
    });
    (reader, writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answers_cannot_hold_the_slots() {
    const CAP: usize = 4;
    let app = spawn_app_with(|s| {
        s.server.max_connections = CAP as u32;
        s.server.write_timeout = "1s".into();
    })
    .await;
    let address: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    // Every slot taken by a client that pipelines scrapes (far more answer
    // bytes than the socket buffers hold) and reads nothing.
    let mut stalled = Vec::new();
    for _ in 0..CAP {
        stalled.push(non_reading_connection(address).await);
    }
    let started = tokio::time::Instant::now();
    // A fresh client's health check waits in the backlog until a stalled
    // connection is closed. (The test app's pooled connection holds a slot
    // too, until its header timeout of 10 s.)
    let health = jogg_relay::outbound::client_builder()
        .build()
        .unwrap()
        .get(format!("{}/healthz", app.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("healthz answers while clients that never read hold the slots");
    assert_eq!(health.status(), 200);
    let health_after = started.elapsed();
    assert!(
        health_after >= Duration::from_millis(900),
        "the health check waited for a slot: {health_after:?}"
    );

    // Every stalled connection was closed by the relay: the client's writes
    // fail (reset, or a broken pipe after the relay's FIN).
    let mut readers = Vec::new();
    for (index, (reader, writes)) in stalled.into_iter().enumerate() {
        let err = tokio::time::timeout(Duration::from_secs(10), writes)
            .await
            .unwrap_or_else(|_| panic!("the relay closed connection {index}"))
            .unwrap();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "connection {index}: {err}"
        );
        readers.push(reader);
    }
    drop(readers);

    // And the API answers normally.
    let enqueued = app
        .enqueue(json!({"video_id": "after-stalled-readers"}))
        .await;
    assert_eq!(enqueued.status, 201, "{enqueued:?}");
    app.stop().await;
}

#[tokio::test]
async fn process_metrics_describe_this_process() {
    let app = spawn_app_with(|_| {}).await;
    // Files the process holds open: the count must include them.
    let held: Vec<_> = (0..40).map(|_| tempfile::tempfile().unwrap()).collect();
    let text = app.metrics_text().await;
    let sample = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|line| line.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    for (family, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind} in\n{text}"
        );
    }
    // Oracles independent of /proc: the kernel's own accounting.
    let (limit, usage) = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        (limit, usage)
    };
    assert_eq!(sample("process_max_fds"), limit.rlim_cur as f64);
    let open = sample("process_open_fds");
    assert!(
        open >= held.len() as f64 && open <= limit.rlim_cur as f64,
        "{open} open fds"
    );
    let cpu_seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu_now = cpu_seconds(usage.ru_utime) + cpu_seconds(usage.ru_stime);
    let cpu = sample("process_cpu_seconds_total");
    // Clock ticks are 10 ms; the scrape was before the getrusage call.
    assert!(cpu > 0.0 && cpu <= cpu_now + 0.02, "{cpu} s vs {cpu_now} s");
    let rss = sample("process_resident_memory_bytes");
    let peak = usage.ru_maxrss as f64 * 1024.0;
    // The kernel updates its peak lazily and counts resident pages per
    // thread in batches, so the two readings can differ by some pages; a
    // wrong unit (pages, KiB) would be off by a factor of 1024 or more.
    assert!(rss > 1e6 && rss <= peak * 1.5, "{rss} bytes, peak {peak}");
    drop(held);
    app.stop().await;
}

#[test]
fn an_invalid_rust_log_is_reported_and_the_default_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:1", "");
    let (code, _, stderr) = crate::helpers::run_binary(
        &["--config", config.to_str().unwrap(), "check-config"],
        &[("RUST_LOG", "jogg_relay=loudest")],
    );
    assert_eq!(code, 0, "{stderr}");
    let warning = stderr
        .lines()
        .find(|line| line.contains("WARN"))
        .unwrap_or_else(|| panic!("a warning in {stderr}"));
    assert!(
        warning.contains("RUST_LOG") && warning.contains("jogg_relay=loudest"),
        "{warning}"
    );
}

#[test]
fn commands_writing_to_a_closed_pipe_exit_normally() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:1", "");
    let config = config.to_str().unwrap();
    let (code, _, stderr) =
        crate::helpers::run_binary(&["--config", config, "enqueue", "a1", "a2", "a3"], &[]);
    assert_eq!(code, 0, "{stderr}");
    for args in [vec!["list"], vec!["status", "a1"], vec!["check-config"]] {
        // `jogg-relay list | head -0`: the reader is gone before the output.
        let mut child = Command::new(binary())
            .args(["--config", config])
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
