//! The poller against the simulator, driven step by step.

use std::time::Duration;

use jogg_relay::domain::Millis;
use jogg_relay::poller::Outcome;
use jogg_relay::sim::{AuthFailure, Ending, Fault, Spelling, Timeline};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_manual_app};

/// A relay with one configured callback URL and tiny intervals.
async fn relay() -> TestApp {
    spawn_manual_app(|s| {
        s.polling.min_interval = "1ms".into();
        s.polling.max_interval = "1ms".into();
        s.callbacks.urls = vec!["https://ops.example.com/hook".into()];
    })
    .await
}

fn transitions(video: &Value) -> Vec<(String, String, String)> {
    video["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["kind"].as_str().unwrap().to_owned(),
                t["from"].as_str().unwrap_or("none").to_owned(),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn tr(kind: &str, from: &str, to: &str) -> (String, String, String) {
    (kind.into(), from.into(), to.into())
}

#[tokio::test]
async fn a_video_is_tracked_through_its_timeline_to_completion() {
    let app = relay().await;
    app.sim.state.script("v-ok", Timeline::completes(1, 2));
    app.enqueue(json!({"video_id": "v-ok", "callback_url": "https://app.example.com/cb"}))
        .await;

    app.step_until_idle().await;
    let video = app.video("v-ok").await.json;
    assert_eq!(video["state"], "completed", "{video}");
    assert_eq!(video["upstream_status"], "completed");
    assert_eq!(video["polls"], 4);
    assert_eq!(video["next_poll_at"], Value::Null);
    assert_eq!(video["video_url"], "https://cdn.sim.invalid/v-ok.mp4");
    assert_eq!(video["created_at"], "2022-01-01T00:00:00.000Z");
    assert_eq!(video["duration"], 12.5);
    assert!(video["event_id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(
        transitions(&video),
        [
            tr("status", "none", "pending"),
            tr("status", "pending", "processing"),
            tr("status", "processing", "completed"),
            tr("state", "active", "completed"),
        ]
    );
    // One outbox row per target, carrying the video's event id.
    let deliveries = video["deliveries"].as_array().unwrap();
    let urls: Vec<&str> = deliveries
        .iter()
        .map(|d| d["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        ["https://ops.example.com/hook", "https://app.example.com/cb"]
    );
    for delivery in deliveries {
        assert_eq!(delivery["state"], "pending");
        assert_eq!(delivery["event_id"], video["event_id"]);
    }
    // Tracking ended: nothing more is polled.
    let requests = app.sim.state.request_count();
    assert_eq!(
        app.step(Millis::now().plus(Duration::from_secs(3600)))
            .await,
        Outcome::Idle
    );
    assert_eq!(app.sim.state.request_count(), requests);
    app.stop().await;
}

#[tokio::test]
async fn every_terminal_spelling_and_unknown_statuses() {
    let app = relay().await;
    let cases = [
        (
            "v-completed",
            Timeline::completes(0, 1),
            "completed",
            "completed",
        ),
        (
            "v-success",
            Timeline::completes(0, 1).observed_spelling(),
            "success",
            "completed",
        ),
        ("v-failed", Timeline::fails(1, 0), "failed", "failed"),
        (
            "v-fail",
            Timeline::fails(0, 0).observed_spelling(),
            "fail",
            "failed",
        ),
        (
            "v-odd",
            Timeline {
                pending: 0,
                processing: 1,
                ending: Ending::Stuck("rendering".into()),
                spelling: Spelling::Documented,
            },
            "rendering",
            "active",
        ),
    ];
    for (id, timeline, _, _) in &cases {
        app.sim.state.script(id, timeline.clone());
        app.enqueue(json!({"video_id": id})).await;
    }
    // The stuck video never idles the poller at these intervals; a bounded
    // number of rounds is plenty for the others to finish.
    for _ in 0..10 {
        app.step(Millis::now()).await;
    }
    for (id, _, upstream, state) in cases {
        let video = app.video(id).await.json;
        assert_eq!(video["upstream_status"], upstream, "{id}");
        assert_eq!(video["state"], state, "{id}");
    }
    let failed = app.video("v-fail").await.json;
    assert_eq!(
        failed["error"],
        json!({"code": "render_failed", "message": "avatar rendering failed"})
    );
    assert_eq!(app.video("v-odd").await.json["deliveries"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn not_found_is_retried_within_the_grace_then_abandoned() {
    let app = spawn_manual_app(|s| s.polling.not_found_grace = "1h".into()).await;
    app.enqueue(json!({"video_id": "ghost"})).await;
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
    let video = app.video("ghost").await.json;
    assert_eq!(video["state"], "active");
    assert_eq!(video["transitions"], json!([]));
    app.stop().await;

    let app = spawn_manual_app(|s| s.polling.not_found_grace = "0s".into()).await;
    app.enqueue(json!({"video_id": "ghost"})).await;
    app.step(Millis::now()).await;
    let video = app.video("ghost").await.json;
    assert_eq!(
        (video["state"].as_str(), video["reason"].as_str()),
        (Some("abandoned"), Some("not_found"))
    );
    assert_eq!(transitions(&video), [tr("state", "active", "abandoned")]);
    app.stop().await;
}

#[tokio::test]
async fn parameter_error_abandons_as_invalid_id() {
    let app = relay().await;
    app.sim.state.script("bad-id", Timeline::completes(0, 0));
    app.sim.state.inject_for("bad-id", [Fault::Business(40000)]);
    app.enqueue(json!({"video_id": "bad-id"})).await;
    app.step(Millis::now()).await;
    let video = app.video("bad-id").await.json;
    assert_eq!(
        (video["state"].as_str(), video["reason"].as_str()),
        (Some("abandoned"), Some("invalid_id"))
    );
    assert_eq!(
        video["deliveries"].as_array().unwrap().len(),
        1,
        "abandoned videos get an event too"
    );
    app.stop().await;
}

#[tokio::test]
async fn transient_failures_back_off_without_changing_anything() {
    // The slow answer never comes within the timeout (an hour against
    // 2 s), and every other answer comes well within it, whatever the
    // machine's load: each attempt is the fault it was given.
    let app = spawn_manual_app(|s| {
        s.jogg.timeout = "2s".into();
        s.polling.min_interval = "1s".into();
    })
    .await;
    app.sim.state.script("flaky", Timeline::completes(0, 0));
    app.sim.state.inject_for(
        "flaky",
        [
            Fault::Http(500),
            Fault::Http(503),
            Fault::Business(50000),
            Fault::Business(31337),
            Fault::NonJson,
            Fault::Slow(Duration::from_secs(3600)),
        ],
    );
    app.enqueue(json!({"video_id": "flaky"})).await;
    let mut now = Millis::now();
    let mut previous_next_poll = 0;
    for attempt in 1..=6 {
        assert_eq!(app.step(now).await, Outcome::Worked(1), "attempt {attempt}");
        let video = app.video("flaky").await.json;
        assert_eq!(video["state"], "active");
        assert_eq!(video["transitions"], json!([]), "no transition on errors");
        let next = app.store().await;
        let video = next.video_row("flaky").await.unwrap().unwrap();
        let (streak, next_poll_at) = (video.error_streak, video.next_poll_at.unwrap().0);
        assert_eq!(streak, attempt);
        let delay = next_poll_at - now.0;
        assert!(
            delay > previous_next_poll,
            "backoff grows: {delay} after {previous_next_poll}"
        );
        previous_next_poll = delay;
        now = Millis(next_poll_at);
    }
    // Faults over: the true terminal state is reached.
    app.step(now).await;
    assert_eq!(app.video("flaky").await.json["state"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_pauses_all_polling() {
    // (fault, the pause it asks for). The clock is the one the steps are
    // given: nothing here depends on how fast the machine runs.
    for (fault, pause) in [
        (Fault::HttpRateLimit(Some("30".into())), 30_000),
        (Fault::BusinessRateLimit(Some("30".into())), 30_000),
        (Fault::HttpRateLimit(None), 1_000),
    ] {
        let app = relay().await;
        for i in 0..5 {
            app.sim
                .state
                .script(&format!("r{i}"), Timeline::completes(5, 5));
        }
        let videos: Vec<Value> = (0..5)
            .map(|i| json!({"video_id": format!("r{i}")}))
            .collect();
        app.send("POST", "/v1/videos/batch", Some(&json!({"videos": videos})))
            .await;
        app.sim.state.inject([fault.clone()]);

        let t0 = Millis::now();
        app.step(t0).await;
        let after_429 = app.sim.state.request_count();
        // Readiness is about the key, not about throttling: still 200, but
        // the pause and its end are named.
        let ready = app.send("GET", "/readyz", None).await;
        assert_eq!(ready.status, 200, "{fault:?}");
        let until = crate::helpers::api_millis(&ready.json["upstream_pause"]["until"]);
        assert_eq!(ready.json["upstream_pause"]["reason"], "rate_limited");
        // The pause starts when the 429 is handled, a little after t0.
        assert!(
            until.0 >= t0.0 + pause && until.0 < t0.0 + pause + 5_000,
            "{fault:?}: {} ms after t0",
            until.0 - t0.0
        );
        for at in [t0.0, t0.0 + pause / 2, until.0 - 1] {
            assert_eq!(
                app.step(Millis(at)).await,
                Outcome::Throttled,
                "{fault:?} at t0 + {} ms",
                at - t0.0
            );
        }
        assert_eq!(
            app.sim.state.request_count(),
            after_429,
            "nothing is sent during the pause"
        );
        // No video changed state or counted the 429 as a poll of its own;
        // the one that got the 429 is due when the pause ends.
        for i in 0..5 {
            let video = app.video(&format!("r{i}")).await.json;
            assert_eq!(video["state"], "active");
            assert!(
                crate::helpers::api_millis(&video["next_poll_at"]) <= until,
                "{video}"
            );
        }
        // The pause is over at its end: polling resumes.
        assert!(matches!(app.step(until).await, Outcome::Worked(_)));
        assert!(app.sim.state.request_count() > after_429);
        app.stop().await;
    }
}

#[tokio::test]
async fn auth_failure_pauses_everything_until_a_probe_succeeds() {
    for failure in [
        AuthFailure::BusinessCode,
        AuthFailure::Http401,
        AuthFailure::NoCredit,
        AuthFailure::NoPermission,
        AuthFailure::Http403,
    ] {
        let app = spawn_manual_app(|s| {
            s.polling.min_interval = "1s".into();
            s.jogg.max_in_flight = 1;
        })
        .await;
        for i in 0..4 {
            app.sim
                .state
                .script(&format!("a{i}"), Timeline::completes(0, 1));
            app.enqueue(json!({"video_id": format!("a{i}")})).await;
        }
        app.sim.state.set_auth_failure(Some(failure));
        let now = Millis::now();
        app.step(now).await;
        assert_eq!(app.sim.state.request_count(), 1, "{failure:?}");

        let ready = app.send("GET", "/readyz", None).await;
        assert_eq!(ready.status, 503);
        let reason = match failure {
            AuthFailure::NoCredit => "insufficient_credit",
            AuthFailure::NoPermission | AuthFailure::Http403 => "no_permission",
            AuthFailure::BusinessCode | AuthFailure::Http401 => "invalid_api_key",
        };
        assert_eq!(ready.json["error"]["reason"], reason, "{failure:?}");
        // The pause's earliest end: the first probe, `min_interval` after
        // the refusal was handled (a little after `now`).
        let next_probe =
            crate::helpers::api_millis(&ready.json["error"]["next_probe_at"]).0 - now.0;
        assert!(
            (1_000..1_500).contains(&next_probe),
            "{failure:?}: next probe {next_probe} ms after now"
        );

        // Before the probe delay: nothing at all is sent.
        assert!(matches!(app.step(now).await, Outcome::Paused(_)));
        assert_eq!(app.sim.state.request_count(), 1);
        // Each probe is a single request; failed probes back off (1 s, 2 s, …).
        app.step(now.plus(Duration::from_millis(1500))).await;
        assert_eq!(app.sim.state.request_count(), 2);
        assert!(matches!(
            app.step(now.plus(Duration::from_millis(3000))).await,
            Outcome::Paused(_)
        ));
        assert_eq!(
            app.sim.state.request_count(),
            2,
            "the second probe waits 2 s"
        );
        for i in 0..4 {
            let video = app.video(&format!("a{i}")).await.json;
            assert_eq!(
                (video["state"].as_str(), video["polls"].as_i64()),
                (Some("active"), Some(0))
            );
            assert_eq!(video["transitions"], json!([]));
        }

        // The key works again: the next probe resumes polling.
        app.sim.state.set_auth_failure(None);
        assert_eq!(
            app.step(now.plus(Duration::from_secs(4))).await,
            Outcome::Worked(1)
        );
        assert_eq!(app.send("GET", "/readyz", None).await.status, 200);
        let mut later = now.plus(Duration::from_secs(10));
        for _ in 0..10 {
            app.step(later).await;
            later = later.plus(Duration::from_secs(10));
        }
        for i in 0..4 {
            assert_eq!(app.video(&format!("a{i}")).await.json["state"], "completed");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn budget_and_concurrency_hold_for_500_videos() {
    // Both strategies: adaptive claims rank the due videos (more are due
    // than a claim takes, and one finished video is enough to rank by),
    // which must change which videos go first, never how many.
    for strategy in ["exponential", "adaptive"] {
        budget_and_concurrency_hold_for_500_videos_with(strategy).await;
    }
}

async fn budget_and_concurrency_hold_for_500_videos_with(strategy: &str) {
    let rate = 400.0;
    let burst = 8;
    let app = spawn_manual_app(|s| {
        s.polling.min_interval = "1ms".into();
        s.polling.max_interval = "1ms".into();
        s.polling.strategy = strategy.into();
        s.polling.adaptive_warmup = 1;
        s.jogg.requests_per_second = rate;
        s.jogg.burst = burst;
        s.jogg.max_in_flight = 6;
    })
    .await;
    app.sim
        .state
        .set_default_timeline(Some(Timeline::completes(0, 1)));
    app.sim.state.set_budget(rate, burst);
    for chunk in 0..5 {
        let videos: Vec<Value> = (0..100)
            .map(|i| json!({"video_id": format!("b{chunk}-{i}")}))
            .collect();
        app.send("POST", "/v1/videos/batch", Some(&json!({"videos": videos})))
            .await;
    }
    app.step_until_idle().await;

    let page = app
        .send("GET", "/v1/videos?state=completed&limit=1000", None)
        .await;
    assert_eq!(page.json["videos"].as_array().unwrap().len(), 500);
    assert_eq!(
        app.sim.state.request_count(),
        1000,
        "two polls per video, no more"
    );
    assert_eq!(app.sim.state.violations(), 0, "never over the budget");
    assert!(app.sim.state.max_in_flight_total() <= 6, "max_in_flight");
    assert_eq!(
        app.sim.state.max_in_flight_per_video(),
        1,
        "never two polls of one video"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_crashed_claim_is_polled_again_after_its_lease() {
    let app = relay().await;
    app.sim.state.script("orphan", Timeline::completes(0, 0));
    app.enqueue(json!({"video_id": "orphan"})).await;
    // A process claims the video and dies before polling it.
    let store = app.store().await;
    let (writer, _task) = jogg_relay::store::Writer::start(&store).await.unwrap();
    let now = Millis::now();
    let lease_until = now.plus(Duration::from_secs(30));
    assert_eq!(
        writer.claim_due(now, lease_until, 10).await.unwrap().len(),
        1
    );
    drop(writer);

    assert_eq!(
        app.step(now).await,
        Outcome::Idle,
        "leased elsewhere: not polled twice"
    );
    assert_eq!(app.sim.state.request_count(), 0);
    assert_eq!(
        app.step(lease_until).await,
        Outcome::Worked(1),
        "the lease expired"
    );
    assert_eq!(app.video("orphan").await.json["state"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn terminal_state_and_outbox_rows_commit_together() {
    let app = relay().await;
    app.sim.state.script("atomic", Timeline::completes(0, 0));
    app.enqueue(json!({"video_id": "atomic"})).await;
    let store = app.store().await;
    // The outbox insert fails (as a full disk would) after the state update
    // in the same transaction.
    store.set_delivery_inserts_failing(true).await.unwrap();
    let now = Millis::now();
    let result = app.poller.as_ref().unwrap().step(now).await;
    assert!(result.is_err(), "the failed write is reported: {result:?}");
    let video = app.video("atomic").await.json;
    assert_eq!(video["state"], "active", "nothing half-written");
    assert_eq!(video["transitions"], json!([]));
    assert_eq!(app.count("deliveries").await, 0);

    store.set_delivery_inserts_failing(false).await.unwrap();
    // The claim's lease is still held; once it expires, the poll is repeated.
    // (Bounded: a poller that never records the result fails the test
    // instead of hanging it.)
    let mut later = now.plus(Duration::from_secs(60));
    for steps in 1.. {
        if app.video("atomic").await.json["state"] != "active" {
            break;
        }
        assert!(steps <= 100, "the poll is never repeated");
        app.step(later).await;
        later = later.plus(Duration::from_secs(60));
    }
    let video = app.video("atomic").await.json;
    assert_eq!(video["state"], "completed");
    assert_eq!(video["deliveries"].as_array().unwrap().len(), 1);
    app.stop().await;
}
