//! What the relay does when JoggAI (or something between it and the relay)
//! misbehaves, and the schedule promises around it, end to end against the
//! simulators: misrouted answers, unusable URLs, absurd `Retry-After`s, the
//! first poll, a restart, unknown statuses, the deadline.
//!
//! The poller and the delivery worker are stepped with an explicit clock; the
//! oracles are the simulators' own records (requests received, callbacks
//! received), the API, `/metrics` and the log lines.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jogg_relay::config::Settings;
use jogg_relay::domain::{Millis, VideoId};
use jogg_relay::jogg::JoggClient;
use jogg_relay::poller::Outcome;
use jogg_relay::sim::{Ending, Fault, SimReceiver, Spelling, Timeline};
use serde_json::{Value, json};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::helpers::{TestApp, spawn_manual_app, test_settings};

// ---------------------------------------------------------------------------
// Scaffolding
// ---------------------------------------------------------------------------

/// Log lines written while a [`capture_logs`] guard is held, on this thread
/// (the tests run on a current-thread runtime, so the relay's tasks log
/// here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Every captured line.
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Captured lines containing every one of `parts`.
    fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .collect()
    }
}

/// Appends to the shared buffer.
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter(self.0.clone())
    }
}

/// Captures WARN and ERROR lines (plain text) until the guard is dropped.
fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let guard = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish()
        .set_default();
    (logs, guard)
}

/// A manual relay whose configured callback URL is `receiver`'s `/ops`.
async fn relay_for(receiver: &SimReceiver, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let ops = receiver.url("ops");
    spawn_manual_app(|s| {
        s.callbacks.urls = vec![ops];
        customize(s);
    })
    .await
}

/// The value of the series `series` (name and labels, as rendered) in the
/// relay's `/metrics`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A video that answers `status` forever.
fn stuck(status: &str) -> Timeline {
    Timeline {
        pending: 0,
        processing: 0,
        ending: Ending::Stuck(status.into()),
        spelling: Spelling::Documented,
    }
}

/// Runs delivery steps at `now` until one finds nothing to send (bounded).
async fn deliver_all(app: &TestApp, now: Millis) {
    for _ in 0..100 {
        if app.deliver(now).await == jogg_relay::delivery::Outcome::Idle {
            return;
        }
    }
    panic!("the delivery worker never went idle");
}

// ---------------------------------------------------------------------------
// Item 1: misrouted answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_answer_about_another_video_changes_nothing_and_backs_off() {
    let (logs, _guard) = capture_logs();
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.polling.jitter = 0.0).await;
    app.sim.state.script("mis-a", Timeline::completes(1, 5));
    app.enqueue(json!({"video_id": "mis-a"})).await;
    let t0 = Millis::now();
    assert_eq!(app.step(t0).await, Outcome::Worked(1));
    assert_eq!(app.video("mis-a").await.json["upstream_status"], "pending");

    // A proxy answers A's request with B's "completed".
    app.sim
        .state
        .inject_for("mis-a", [Fault::Misrouted("mis-b".into())]);
    let t1 = t0.plus(Duration::from_secs(60));
    assert_eq!(app.step(t1).await, Outcome::Worked(1));
    assert_eq!(app.sim.state.request_count(), 2, "the answer arrived");

    let video = app.video("mis-a").await.json;
    assert_eq!(video["state"], "active", "{video}");
    assert_eq!(video["upstream_status"], "pending", "nothing taken from it");
    assert_eq!(video["video_url"], Value::Null, "not B's URL");
    assert_eq!(video["transitions"].as_array().unwrap().len(), 1);
    assert_eq!(video["deliveries"], json!([]), "no callback queued");
    // Backed off like a transient error: the first failure waits
    // `min_interval` (10 s) from the poll, not the pending interval.
    let next = crate::helpers::api_millis(&video["next_poll_at"]).0 - t1.0;
    assert!(
        (10_000..11_000).contains(&next),
        "next poll {next} ms later"
    );
    deliver_all(&app, t1).await;
    assert!(receiver.state.received().is_empty(), "nothing sent");

    // Counted and warned about, naming both ids.
    assert_eq!(
        metric(&app, r#"jogg_relay_polls_total{outcome="misrouted"}"#).await,
        1.0
    );
    let warned = logs.matching(&[
        "WARN",
        "another video",
        "mis-a",
        "answered_video_id=\"mis-b\"",
    ]);
    assert_eq!(warned.len(), 1, "{:?}", logs.lines());

    // The right answers are trusted again and the video ends normally.
    let mut now = t1.plus(Duration::from_secs(60));
    for _ in 0..10 {
        app.step(now).await;
        now = now.plus(Duration::from_secs(60));
    }
    let video = app.video("mis-a").await.json;
    assert_eq!(video["state"], "completed");
    assert_eq!(video["video_url"], "https://cdn.sim.invalid/mis-a.mp4");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Item 9: only absolute http(s) URLs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn urls_that_are_not_absolute_http_are_neither_stored_nor_sent() {
    let (logs, _guard) = capture_logs();
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    let answer = |id: &str, video_url: &str, cover_url: &str| {
        Fault::Body(
            json!({"code": 0, "msg": "Success", "data": {
                "video_id": id, "status": "completed",
                "video_url": video_url, "cover_url": cover_url,
            }})
            .to_string(),
        )
    };
    app.sim.state.inject_for(
        "bad-urls",
        [answer(
            "bad-urls",
            "javascript:alert(document.cookie)",
            "data:image/svg+xml,<svg onload=alert(1)>",
        )],
    );
    app.sim.state.inject_for(
        "bad-cover",
        [answer(
            "bad-cover",
            "https://cdn.example/bad-cover.mp4",
            "/relative/cover.jpg",
        )],
    );
    for id in ["bad-urls", "bad-cover"] {
        app.enqueue(json!({"video_id": id})).await;
    }
    let now = Millis::now();
    assert_eq!(app.step(now).await, Outcome::Worked(2));

    // JoggAI decides: both are completed, with only the usable URLs.
    let video = app.video("bad-urls").await.json;
    assert_eq!(video["state"], "completed");
    assert_eq!(
        (&video["video_url"], &video["cover_url"]),
        (&Value::Null, &Value::Null)
    );
    let video = app.video("bad-cover").await.json;
    assert_eq!(video["state"], "completed");
    assert_eq!(video["video_url"], "https://cdn.example/bad-cover.mp4");
    assert_eq!(video["cover_url"], Value::Null);

    // The receiver gets `video_url: null`, never the bad value.
    deliver_all(&app, Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 2);
    for callback in &received {
        let data = &callback.body["data"];
        assert_eq!(data["status"], "completed");
        assert_eq!(data["cover_url"], Value::Null, "{data}");
        if data["video_id"] == "bad-urls" {
            assert_eq!(data["video_url"], Value::Null, "{data}");
        }
        let body = callback.body.to_string();
        assert!(!body.contains("javascript:") && !body.contains("data:image"));
    }

    // One completion without a video URL, counted; each drop warned about
    // with the video and the field.
    assert_eq!(
        metric(&app, "jogg_relay_completed_without_video_url_total").await,
        1.0
    );
    for (id, field) in [
        ("bad-urls", "video_url"),
        ("bad-urls", "cover_url"),
        ("bad-cover", "cover_url"),
    ] {
        let warned = logs.matching(&["WARN", "not an absolute http(s) URL", id, field]);
        assert_eq!(warned.len(), 1, "{id} {field}: {:?}", logs.lines());
    }
    assert_eq!(
        logs.matching(&["WARN", "without a usable video_url", "bad-urls"])
            .len(),
        1,
        "{:?}",
        logs.lines()
    );
    assert!(
        logs.matching(&["without a usable video_url", "bad-cover"])
            .is_empty()
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Item 4: Retry-After clamped to jogg.max_pause, and shown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retry_after_of_a_year_pauses_at_most_max_pause() {
    // (configured jogg.max_pause, the 429 fault, the expected pause)
    for (max_pause, fault, expected) in [
        (None, Fault::HttpRateLimit(Some("31536000".into())), 600_000),
        (
            Some("2m"),
            Fault::BusinessRateLimit(Some("31536000".into())),
            120_000,
        ),
    ] {
        let app = spawn_manual_app(|s| {
            if let Some(max_pause) = max_pause {
                s.jogg.max_pause = max_pause.into();
            }
        })
        .await;
        for i in 0..3 {
            let id = format!("y{i}");
            app.sim.state.script(&id, Timeline::completes(0, 1));
            app.enqueue(json!({ "video_id": id })).await;
        }
        assert_eq!(
            metric(&app, "jogg_relay_upstream_pause_remaining_seconds").await,
            0.0
        );
        app.sim.state.inject([fault.clone()]);
        let t0 = Millis::now();
        app.step(t0).await;

        // /readyz names the pause and its end; the API still takes work.
        let ready = app.send("GET", "/readyz", None).await;
        assert_eq!(ready.status, 200, "{ready:?}");
        let pause = &ready.json["upstream_pause"];
        assert_eq!(pause["reason"], "rate_limited");
        let until = crate::helpers::api_millis(&pause["until"]);
        let length = until.0 - t0.0;
        assert!(
            (expected..expected + 5_000).contains(&length),
            "{fault:?}: paused {length} ms"
        );
        let remaining = pause["remaining_seconds"].as_u64().unwrap();
        // (Whole seconds rounded up; the step's clock and the wall clock
        // may differ by a millisecond.)
        let seconds = expected as u64 / 1000;
        assert!(
            remaining <= seconds + 1 && remaining + 10 >= seconds,
            "{remaining}"
        );
        // The gauges say the same.
        let gauge = metric(&app, "jogg_relay_upstream_pause_remaining_seconds").await;
        assert!(
            gauge <= seconds as f64 + 0.01 && gauge > (seconds - 10) as f64,
            "{gauge}"
        );
        assert_eq!(metric(&app, "jogg_relay_upstream_throttled").await, 1.0);

        // Nothing is sent until the clamped end, and no video is due later.
        let sent = app.sim.state.request_count();
        assert_eq!(app.step(Millis(until.0 - 1)).await, Outcome::Throttled);
        assert_eq!(app.sim.state.request_count(), sent);
        for i in 0..3 {
            let video = app.video(&format!("y{i}")).await.json;
            assert!(
                crate::helpers::api_millis(&video["next_poll_at"]) <= until,
                "{video}"
            );
        }
        // At the end, polling resumes and every video completes.
        let mut now = until;
        for _ in 0..10 {
            app.step(now).await;
            now = now.plus(Duration::from_secs(60));
        }
        for i in 0..3 {
            assert_eq!(app.video(&format!("y{i}")).await.json["state"], "completed");
        }
        let ready = app.send("GET", "/readyz", None).await;
        assert_eq!(ready.json, json!({"status": "ready"}));
        app.stop().await;
    }
}

#[tokio::test]
async fn readyz_and_the_gauge_show_a_refusal_until_the_next_probe() {
    let app = spawn_manual_app(|s| s.polling.min_interval = "20s".into()).await;
    app.sim.state.script("p", Timeline::completes(0, 1));
    app.enqueue(json!({"video_id": "p"})).await;
    app.sim
        .state
        .set_auth_failure(Some(jogg_relay::sim::AuthFailure::NoPermission));
    app.step(Millis::now()).await;
    let ready = app.send("GET", "/readyz", None).await;
    assert_eq!(ready.assert_json_error(503), "upstream_paused");
    assert_eq!(ready.json["error"]["reason"], "no_permission");
    let remaining = ready.json["error"]["remaining_seconds"].as_u64().unwrap();
    assert!((15..=21).contains(&remaining), "{remaining}");
    let gauge = metric(&app, "jogg_relay_upstream_pause_remaining_seconds").await;
    assert!(gauge > 15.0 && gauge <= 20.01, "{gauge}");
    assert_eq!(
        metric(
            &app,
            r#"jogg_relay_upstream_paused{reason="no_permission"}"#
        )
        .await,
        1.0
    );
    app.stop().await;
}

#[test]
fn the_probe_delay_grows_to_five_minutes_and_no_further() {
    // The gate exactly as `serve` builds it from the defaults (probes start
    // at min_interval = 10 s).
    let config = Settings::default().validate().unwrap();
    let gate = jogg_relay::app::upstream_gate(&config);
    let now = Millis(1_800_000_000_000);
    let reason = jogg_relay::jogg::PauseReason::InvalidApiKey;
    gate.pause(reason, now);
    let mut delays = vec![(gate.next_probe_at().0 - now.0) / 1000];
    for _ in 0..8 {
        gate.probe_failed(reason, now);
        delays.push((gate.next_probe_at().0 - now.0) / 1000);
    }
    assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300, 300]);

    // A max_interval above five minutes raises the cap to it.
    let mut settings = Settings::default();
    settings.polling.max_interval = "10m".into();
    let gate = jogg_relay::app::upstream_gate(&settings.validate().unwrap());
    gate.pause(reason, now);
    for _ in 0..10 {
        gate.probe_failed(reason, now);
    }
    assert_eq!(gate.next_probe_at(), now.plus(Duration::from_secs(600)));
}

#[test]
fn the_default_429_pause_doubles_to_a_minute_through_the_configured_gate() {
    let config = Settings::default().validate().unwrap();
    let gate = jogg_relay::app::upstream_gate(&config);
    let mut now = Millis(1_800_000_000_000);
    let mut pauses = Vec::new();
    for _ in 0..9 {
        let until = gate.throttle(None, now);
        pauses.push((until.0 - now.0) / 1000);
        now = until;
    }
    assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
}

// ---------------------------------------------------------------------------
// Item 19: promises without a test
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_first_poll_waits_first_after() {
    let app = spawn_manual_app(|s| {
        s.polling.first_after = "30s".into();
        s.polling.jitter = 0.1;
    })
    .await;
    app.sim
        .state
        .set_default_timeline(Some(Timeline::completes(5, 0)));
    let before = Millis::now();
    for chunk in 0..2 {
        let videos: Vec<Value> = (0..20)
            .map(|i| json!({"video_id": format!("f{chunk}-{i}")}))
            .collect();
        app.send("POST", "/v1/videos/batch", Some(&json!({"videos": videos})))
            .await;
    }
    let after = Millis::now();

    // 30 s ± 10 %: nothing before 27 s after the first enqueue...
    for at in [before, before.plus(Duration::from_millis(26_999))] {
        assert_eq!(app.step(at).await, Outcome::Idle);
    }
    assert_eq!(app.sim.state.request_count(), 0, "nothing sent early");
    // ...every video by 33 s after the last one, each exactly once.
    let due = after.plus(Duration::from_secs(33));
    for _ in 0..10 {
        if app.step(due).await == Outcome::Idle {
            break;
        }
    }
    let requests = app.sim.state.requests();
    assert_eq!(requests.len(), 40);
    let mut ids: Vec<&str> = requests.iter().map(|r| r.raw_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 40, "each video polled once");
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_relay_keeps_the_stored_schedule() {
    let app = spawn_manual_app(|s| {
        s.polling.min_interval = "1h".into();
        s.polling.max_interval = "1h".into();
        s.polling.jitter = 0.0;
    })
    .await;
    app.sim.state.script("keep", Timeline::completes(3, 0));
    app.enqueue(json!({"video_id": "keep"})).await;
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
    let stored = crate::helpers::api_millis(&app.video("keep").await.json["next_poll_at"]);
    let database = app.config.database.url.clone();
    // Keep the folder (and the database in it) past the first relay.
    let _dir = app.stop().await;

    let app = spawn_manual_app(|s| {
        s.database.url = database;
        s.polling.min_interval = "1h".into();
        s.polling.max_interval = "1h".into();
    })
    .await;
    app.sim.state.script("keep", Timeline::completes(3, 0));
    assert_eq!(
        crate::helpers::api_millis(&app.video("keep").await.json["next_poll_at"]),
        stored
    );
    for at in [Millis::now(), Millis(stored.0 - 1)] {
        assert_eq!(app.step(at).await, Outcome::Idle);
    }
    assert_eq!(
        app.sim.state.request_count(),
        0,
        "not polled before the stored time"
    );
    assert_eq!(app.step(stored).await, Outcome::Worked(1));
    assert_eq!(app.sim.state.request_count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn unknown_statuses_are_warned_about_once_per_value() {
    let (logs, _guard) = capture_logs();
    let sim = jogg_relay::sim::SimUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_settings(dir.path(), sim.base_url.as_str())
        .validate()
        .unwrap();
    let client = JoggClient::new(&config.jogg).unwrap();
    sim.state.script("u1", stuck("rendering"));
    sim.state.script("u2", stuck("rendering"));
    sim.state.script("u3", stuck("queued_for_gpu"));
    sim.state.script("u4", stuck("processing"));
    for (id, polls) in [("u1", 3), ("u2", 2), ("u3", 2), ("u4", 2)] {
        let id = VideoId::parse(id).unwrap();
        for _ in 0..polls {
            client.poll(&id).await;
        }
    }
    assert_eq!(sim.state.request_count(), 9);
    let unknown = logs.matching(&["WARN", "unknown status"]);
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert_eq!(logs.matching(&["unknown status", "rendering"]).len(), 1);
    assert_eq!(
        logs.matching(&["unknown status", "queued_for_gpu"]).len(),
        1
    );
}

#[tokio::test]
async fn the_deadline_abandons_and_tells_the_receiver() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.polling.give_up_after = "1h".into()).await;
    app.sim.state.script("late", stuck("processing"));
    app.enqueue(json!({"video_id": "late"})).await;
    let enqueued = Millis::now();
    app.step(enqueued).await;
    assert_eq!(app.video("late").await.json["state"], "active");

    // Polls go on until the deadline (the schedule never passes it)...
    let deadline = enqueued.plus(Duration::from_secs(3600));
    let mut now = enqueued.plus(Duration::from_secs(60));
    while now < deadline.plus(Duration::from_secs(60)) {
        app.step(now).await;
        now = now.plus(Duration::from_secs(60));
    }
    let video = app.video("late").await.json;
    assert_eq!(
        (video["state"].as_str(), video["reason"].as_str()),
        (Some("abandoned"), Some("deadline")),
        "{video}"
    );
    let requests = app.sim.state.request_count();
    assert_eq!(
        app.step(now.plus(Duration::from_secs(3600))).await,
        Outcome::Idle
    );
    assert_eq!(app.sim.state.request_count(), requests, "no poll after");

    // ...and the receiver is told, once.
    deliver_all(&app, now).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let body = &received[0].body;
    assert_eq!(body["event"], "relay_video_abandoned");
    assert_eq!(body["event_id"], video["event_id"]);
    assert_eq!(body["data"]["video_id"], "late");
    assert_eq!(body["data"]["status"], "abandoned");
    assert_eq!(body["data"]["reason"], "deadline");
    app.stop().await;
}

#[tokio::test]
async fn a_created_at_in_milliseconds_neither_breaks_reads_nor_reaches_the_callback() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    app.sim.state.inject_for(
        "ms-created",
        [Fault::Body(
            json!({"code": 0, "msg": "Success", "data": {
                "video_id": "ms-created", "status": "completed",
                "video_url": "https://cdn.example/ms.mp4",
                "created_at": 1_732_806_631_000_i64,
            }})
            .to_string(),
        )],
    );
    app.enqueue(json!({"video_id": "ms-created"})).await;
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));

    // Before the fix this video made its own page, every list page holding
    // it and `status` fail with a panic while rendering the date.
    let video = app.video("ms-created").await;
    assert_eq!(video.status, 200, "{video:?}");
    assert_eq!(video.json["state"], "completed");
    assert_eq!(video.json["created_at"], Value::Null);
    let page = app.send("GET", "/v1/videos", None).await;
    assert_eq!(page.status, 200, "{page:?}");
    deliver_all(&app, Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 1);
    let body: Value = serde_json::from_slice(&received[0].raw_body).unwrap();
    assert_eq!(body["data"]["created_at"], Value::Null, "{body}");
    app.stop().await;
}
