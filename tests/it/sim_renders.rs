//! The simulator's time-based renders: statuses follow a `RenderJob` on the
//! simulator's clock, answers carry the render's `created_at`, and the
//! simulator's own record (`render_outcomes`) says when each render finished
//! and when its terminal status was first answered.

use std::time::Duration;

use jogg_relay::config::SecretSetting;
use jogg_relay::domain::Millis;
use jogg_relay::poller::Outcome;
use jogg_relay::sim::{
    Fault, PushAnswer, PushSettings, RenderOutcome, SIM_API_KEY, SimUpstream, Timeline,
};
use jogg_relay::workload::RenderJob;
use serde_json::{Value, json};

use crate::helpers::spawn_manual_app;

/// 10 s in JoggAI's queue, then 100 s of rendering: `pending` until 30 s
/// (queued + a fifth of the render), `processing` until 110 s.
fn job(fails: bool) -> RenderJob {
    RenderJob {
        arrival: Duration::ZERO,
        queued: Duration::from_secs(10),
        render: Duration::from_secs(100),
        fails,
    }
}

/// An instant that is not a whole second, to see `created_at` floored.
const T0: Millis = Millis(1_700_000_000_999);

fn at(seconds: f64) -> Millis {
    T0.plus(Duration::from_secs_f64(seconds))
}

/// The `data` of the simulator's answer for `id` (null for a fault).
async fn ask(sim: &SimUpstream, id: &str) -> Value {
    let body: Value = jogg_relay::outbound::client_builder()
        .build()
        .expect("a client")
        .get(format!("{}v2/avatar_video/{id}", sim.base_url))
        .header("x-api-key", SIM_API_KEY)
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .unwrap_or(Value::Null);
    body["data"].clone()
}

#[tokio::test]
async fn the_manual_clock_moves_a_render_through_its_statuses() {
    let sim = SimUpstream::start().await.unwrap();
    sim.state.set_manual_clock(T0);
    sim.state.script_render("r1", job(false), T0);
    let mut seen = Vec::new();
    for (seconds, expected) in [
        (0.0, "pending"),
        (29.999, "pending"),
        (30.0, "processing"),
        (109.999, "processing"),
        (110.0, "completed"),
        (5000.0, "completed"),
    ] {
        sim.state.advance_clock(at(seconds));
        assert_eq!(sim.state.now(), at(seconds));
        let data = ask(&sim, "r1").await;
        assert_eq!(data["status"], expected, "at {seconds} s");
        // Whole Unix seconds, floored: 1_700_000_000.999 → 1_700_000_000.
        assert_eq!(data["created_at"], json!(1_700_000_000), "at {seconds} s");
        assert_eq!(data["video_id"], "r1");
        seen.push(data);
    }
    assert_eq!(seen[4]["video_url"], "https://cdn.sim.invalid/r1.mp4");
    assert!(seen[3].get("video_url").is_none());

    // The clock never goes back.
    sim.state.advance_clock(at(1.0));
    assert_eq!(sim.state.now(), at(5000.0));
    assert_eq!(ask(&sim, "r1").await["status"], "completed");
}

#[tokio::test]
async fn a_failing_render_ends_failed_with_an_error() {
    let sim = SimUpstream::start().await.unwrap();
    sim.state.set_manual_clock(at(109.0));
    sim.state.script_render("bad", job(true), T0);
    assert_eq!(ask(&sim, "bad").await["status"], "processing");
    sim.state.advance_clock(at(110.0));
    let data = ask(&sim, "bad").await;
    assert_eq!(data["status"], "failed");
    assert_eq!(data["error"]["code"], "render_failed");
}

#[tokio::test]
async fn without_a_manual_clock_renders_follow_wall_time() {
    let sim = SimUpstream::start().await.unwrap();
    let now = Millis::now();
    assert!((sim.state.now().0 - now.0).abs() < 60_000);
    // Submitted an hour ago: long finished. Submitted now: still pending
    // (it cannot finish during the test: 30 s of pending ahead).
    sim.state
        .script_render("old", job(false), Millis(now.0 - 3_600_000));
    sim.state.script_render("new", job(false), now);
    assert_eq!(ask(&sim, "old").await["status"], "completed");
    assert_eq!(ask(&sim, "new").await["status"], "pending");
    assert_eq!(
        ask(&sim, "new").await["created_at"],
        json!(now.0.div_euclid(1000))
    );
}

#[tokio::test]
async fn outcomes_record_the_first_terminal_answer_and_count_answered_polls() {
    let sim = SimUpstream::start().await.unwrap();
    sim.state.set_manual_clock(T0);
    sim.state.script_render("b", job(false), T0);
    sim.state.script_render("a", job(false), at(50.0));
    sim.state.script_render("never-asked", job(true), T0);

    for seconds in [0.0, 60.0, 120.0] {
        sim.state.advance_clock(at(seconds));
        ask(&sim, "b").await;
    }
    // Faults are not answers: neither counted nor detecting.
    sim.state.advance_clock(at(130.0));
    sim.state
        .inject_for("b", [Fault::Http(500), Fault::HttpRateLimit(None)]);
    ask(&sim, "b").await;
    ask(&sim, "b").await;
    // "a" (created at 50 s, finishing at 160 s): a fault at 170 s, then
    // its first terminal answer at 180 s.
    sim.state.advance_clock(at(170.0));
    sim.state.inject_for("a", [Fault::Http(503)]);
    ask(&sim, "a").await;
    sim.state.advance_clock(at(180.0));
    assert_eq!(ask(&sim, "a").await["status"], "completed");
    sim.state.advance_clock(at(200.0));
    ask(&sim, "b").await;

    assert_eq!(
        sim.state.render_outcomes(),
        vec![
            RenderOutcome {
                video_id: "a".into(),
                finished_at: at(160.0),
                detected_at: Some(at(180.0)),
                polls: 1,
            },
            RenderOutcome {
                video_id: "b".into(),
                finished_at: at(110.0),
                // The first completed answer (120 s), not the later one.
                detected_at: Some(at(120.0)),
                polls: 4,
            },
            RenderOutcome {
                video_id: "never-asked".into(),
                finished_at: at(110.0),
                detected_at: None,
                polls: 0,
            },
        ]
    );
    let report = sim.state.delay_report();
    assert_eq!(
        (report.videos, report.undetected, report.calls_per_video),
        (3, 1, 5.0 / 3.0)
    );
    // Delays of 10 s (b) and 20 s (a).
    assert_eq!(report.delay_p50, Duration::from_secs(10));
    assert_eq!(report.delay_p99, Duration::from_secs(20));
    assert_eq!(report.delay_mean, Duration::from_secs(15));
    assert_eq!(sim.state.answers_for("b"), 4);
    assert!(sim.state.terminal_answers().contains_key("b"));
    assert!(!sim.state.terminal_answers().contains_key("never-asked"));

    // Scripting a timeline over a render replaces it (and its record).
    sim.state.script("a", Timeline::completes(1, 0));
    assert_eq!(ask(&sim, "a").await["status"], "pending");
    assert_eq!(sim.state.render_outcomes().len(), 2);
}

/// The intended use: a test drives the relay's poll steps with a virtual
/// `now` and moves the simulator's clock in step, so the relay sees the
/// render finish exactly when the simulator says it did.
#[tokio::test]
async fn a_relay_stepped_in_virtual_time_sees_the_render_finish_on_the_sims_clock() {
    let app = spawn_manual_app(|_| {}).await;
    app.enqueue(json!({"video_id": "v"})).await;
    // After the enqueue, so the first poll (due at once) is due at `start`.
    let start = Millis::now();
    app.sim.state.set_manual_clock(start);
    app.sim.state.script_render("v", job(false), start);
    // A step a minute (the longest default poll interval): each finds the
    // video due and polls it once, until it is terminal.
    let mut now = start;
    let mut steps = 0;
    loop {
        app.sim.state.advance_clock(now);
        match app.step(now).await {
            Outcome::Worked(_) => steps += 1,
            _ => break,
        }
        now = now.plus(Duration::from_secs(60));
        assert!(steps < 10, "the relay never saw the render finish");
    }
    let video = app.video("v").await.json;
    assert_eq!(video["state"], "completed");
    // Polled at 0, 60 s (processing) and 120 s (completed).
    assert_eq!(
        app.sim.state.render_outcomes(),
        vec![RenderOutcome {
            video_id: "v".into(),
            finished_at: start.plus(Duration::from_secs(110)),
            detected_at: Some(start.plus(Duration::from_secs(120))),
            polls: 3,
        }]
    );
    app.stop().await;
}

/// The simulator's JoggAI-style push, signed on its own, is one the relay
/// verifies: with pushes on, the relay polls every 5 minutes, yet it sees
/// the render finish at once because the push asked for the poll.
#[tokio::test]
async fn the_relay_takes_the_simulators_push_as_a_hint() {
    const PUSH_SECRET: &str = "joggai-endpoint-secret-1234";
    let app = spawn_manual_app(|s| {
        s.jogg.webhook_secret = SecretSetting(Some(PUSH_SECRET.into()));
    })
    .await;
    app.enqueue(json!({"video_id": "v"})).await;
    let start = Millis::now();
    app.sim.state.set_manual_clock(start);
    app.sim.state.script_render("v", job(false), start);
    let url = format!("{}/webhooks/jogg", app.base).parse().unwrap();
    app.sim
        .state
        .set_pushes(Some(PushSettings::new(url, PUSH_SECRET)))
        .unwrap();
    // The first poll: pending; the next background one is 5 minutes later.
    assert!(matches!(app.step(start).await, Outcome::Worked(1)));
    let finished = start.plus(Duration::from_secs(110));
    app.sim.state.advance_clock(finished);
    assert!(matches!(app.step(finished).await, Outcome::Idle));

    assert_eq!(app.sim.state.send_due_pushes().await, 1);
    let pushes = app.sim.state.pushes();
    assert_eq!(pushes[0].attempts[0].answer, PushAnswer::Status(200));
    assert!(
        app.metrics_text()
            .await
            .contains("jogg_relay_pushes_total{outcome=\"accepted\"} 1"),
        "the relay verified the push"
    );
    assert!(matches!(app.step(finished).await, Outcome::Worked(1)));
    assert_eq!(app.video("v").await.json["state"], "completed");
    assert_eq!(
        app.sim.state.render_outcomes()[0].detected_at,
        Some(finished)
    );
    app.stop().await;
}
