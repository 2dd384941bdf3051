//! JoggAI's pushes in (`POST /webhooks/jogg`), driven step by step: the
//! signature, the hint a verified push becomes (a confirming poll, within
//! `min_interval`), adoption of untracked videos, the safety net of
//! background polls, and the push-only listener.
//!
//! Pushes are signed here with `hmac-sha256` (see `oracle`), not the
//! relay's own HMAC; the simulator's answer counts are the oracle for how
//! many polls a push caused, and the receiver's record for the callbacks.

use std::time::Duration;

use jogg_relay::config::{SecretSetting, Settings, WebhookSecret};
use jogg_relay::domain::{Millis, VideoId};
use jogg_relay::jogg::{PollAnswer, StatusClass, VideoStatus};
use jogg_relay::poller::Outcome;
use jogg_relay::poller::decide::{Decision, decide};
use jogg_relay::poller::policy::PollPolicy;
use jogg_relay::sim::{SimReceiver, Timeline};
use jogg_relay::store::{HintOutcome, PushHint, Writer};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    RelayConfig, RelayProcess, Reply, TOKEN, TestApp, api_millis, reply, run_binary,
    spawn_manual_app, spawn_manual_app_with_push_listener,
};
use crate::oracle;

/// The key JoggAI signs its pushes with, as configured in these tests.
const PUSH_SECRET: &str = "jogg-push-secret-0123456789";

/// JoggAI's event for a finished render.
const SUCCESS: &str = "generated_avatar_video_success";
/// JoggAI's event for a failed render.
const FAILED: &str = "generated_avatar_video_failed";

/// The secret callbacks to the receiver are signed with.
const CALLBACK_SECRET: &str = "whsec_c2ltLXJlY2VpdmVyLXNlY3JldC0xMjM0NQ==";

/// The limit of a push body: 64 KiB, written out here rather than read
/// from the crate.
const PUSH_LIMIT: usize = 64 * 1024;

/// Enables pushes (`jogg.webhook_secret`).
fn pushes_on(settings: &mut Settings) {
    settings.jogg.webhook_secret = SecretSetting(Some(PUSH_SECRET.into()));
}

/// A push as JoggAI sends it; the same arguments give the same bytes (and
/// the same `event_id`), as a redelivered push would.
fn push_body(event: &str, video_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": format!("jogg_evt_{video_id}_{event}"),
        "event": event,
        "timestamp": 1_732_806_631,
        "data": {
            "video_id": video_id,
            "status": if event == FAILED { "failed" } else { "completed" },
        },
    }))
    .unwrap()
}

/// `X-Webhook-Signature` of `body` under `secret`: lowercase hex
/// HMAC-SHA256, computed by the independent `hmac-sha256` crate.
fn sign(secret: &str, body: &[u8]) -> String {
    oracle::hmac_hex(secret.as_bytes(), body)
}

/// `POST {base}/webhooks/jogg` with `body`, the signature header when
/// given, and no bearer token.
async fn push_to(app: &TestApp, base: &str, body: &[u8], signature: Option<&str>) -> Reply {
    let mut request = app
        .client
        .post(format!("{base}/webhooks/jogg"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-webhook-signature", signature);
    }
    reply(request.send().await.expect("push sent")).await
}

impl TestApp {
    /// Sends a push to the API listener, without the bearer token.
    async fn push(&self, body: &[u8], signature: Option<&str>) -> Reply {
        push_to(self, &self.base, body, signature).await
    }

    /// Sends `push_body(event, video_id)` correctly signed; its outcome.
    async fn signed_push(&self, event: &str, video_id: &str) -> String {
        let body = push_body(event, video_id);
        let answer = self.push(&body, Some(&sign(PUSH_SECRET, &body))).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json["outcome"]
            .as_str()
            .unwrap_or_else(|| panic!("no outcome: {answer:?}"))
            .to_owned()
    }
}

/// The value of `series` (name and labels as rendered) in `/metrics`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn pushes(app: &TestApp, outcome: &str) -> f64 {
    metric(
        app,
        &format!("jogg_relay_pushes_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

async fn learned(app: &TestApp, by: &str) -> f64 {
    metric(
        app,
        &format!("jogg_relay_completions_learned_total{{by=\"{by}\"}}"),
    )
    .await
}

/// `hinted_at` of a video, read from the database (the API does not show
/// it).
async fn hinted_at(app: &TestApp, id: &str) -> Option<i64> {
    let store = app.store().await;
    let value = store
        .video_row(id)
        .await
        .unwrap()
        .unwrap()
        .hinted_at
        .map(|at| at.0);
    store.close().await;
    value
}

/// `next_poll_at` of a video, from `GET /v1/videos/{id}`.
async fn next_poll_at(app: &TestApp, id: &str) -> Option<Millis> {
    let video = app.video(id).await.json;
    match &video["next_poll_at"] {
        Value::Null => None,
        at => Some(api_millis(at)),
    }
}

/// The millisecond before `at`.
fn before(at: Millis) -> Millis {
    Millis(at.0 - 1)
}

fn callback_secret() -> WebhookSecret {
    WebhookSecret::parse(SecretString::from(CALLBACK_SECRET), "callbacks.secret").unwrap()
}

/// A manual relay with pushes on whose configured callback URL is
/// `receiver`'s `/ops`.
async fn relay_for(receiver: &SimReceiver, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let ops = receiver.url("ops");
    spawn_manual_app(|s| {
        pushes_on(s);
        s.callbacks.urls = vec![ops];
        s.callbacks.secret = SecretSetting(Some(CALLBACK_SECRET.into()));
        s.callbacks.timeout = "10s".into();
        customize(s);
    })
    .await
}

// ---------------------------------------------------------------------------
// The signature
// ---------------------------------------------------------------------------

/// Only the HMAC-SHA256 of the exact body under the configured secret, as
/// 64 hex digits, is accepted; every refusal is a `401 bad_signature` JSON
/// error that is counted and changes nothing about the video.
#[tokio::test]
async fn only_a_signature_of_the_exact_body_with_the_secret_is_accepted() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
    })
    .await;
    assert_eq!(app.enqueue(json!({"video_id": "p-sig"})).await.status, 201);
    let before = app.video("p-sig").await.json;

    let body = push_body(SUCCESS, "p-sig");
    let good = sign(PUSH_SECRET, &body);
    // The same push with its timestamp one digit off.
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("1732806631"), "{text}");
    let one_byte_changed = text.replacen("1732806631", "1732806632", 1).into_bytes();
    assert_eq!(one_byte_changed.len(), body.len());
    // The same JSON value with other whitespace (a proxy re-serializing it).
    let value: Value = serde_json::from_slice(&body).unwrap();
    let reformatted = serde_json::to_vec_pretty(&value).unwrap();
    assert_ne!(reformatted, body);
    let other_video = push_body(SUCCESS, "p-other");

    let refused: Vec<(&str, &[u8], Option<String>)> = vec![
        (
            "another secret",
            &body,
            Some(sign("another-secret-0123456789", &body)),
        ),
        ("the bearer token as key", &body, Some(sign(TOKEN, &body))),
        ("truncated", &body, Some(good[..63].to_owned())),
        ("half", &body, Some(good[..32].to_owned())),
        ("one digit too many", &body, Some(format!("{good}0"))),
        (
            "a space inside",
            &body,
            Some(format!("{} {}", &good[..32], &good[32..])),
        ),
        ("a sha256= prefix", &body, Some(format!("sha256={good}"))),
        ("missing", &body, None),
        ("empty", &body, Some(String::new())),
        (
            "the body changed by one byte",
            &one_byte_changed,
            Some(good.clone()),
        ),
        (
            "the body re-serialized with other whitespace",
            &reformatted,
            Some(good.clone()),
        ),
        ("another push's body", &other_video, Some(good.clone())),
    ];
    for (case, body, signature) in &refused {
        let answer = app.push(body, signature.as_deref()).await;
        assert_eq!(answer.assert_json_error(401), "bad_signature", "{case}");
    }
    assert_eq!(
        app.video("p-sig").await.json,
        before,
        "no refused push changed the video"
    );
    assert_eq!(hinted_at(&app, "p-sig").await, None);
    assert_eq!(app.count("videos").await, 1, "nothing adopted");
    assert_eq!(pushes(&app, "bad_signature").await, refused.len() as f64);
    assert_eq!(pushes(&app, "accepted").await, 0.0);
    assert_eq!(app.step(Millis::now()).await, Outcome::Idle);
    assert_eq!(app.sim.state.request_count(), 0, "no poll");

    // Uppercase hex names the same 32 bytes; the relay accepts it (JoggAI
    // sends lowercase, and refusing the other case would gain nothing).
    let answer = app.push(&body, Some(&good.to_ascii_uppercase())).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json, json!({"outcome": "accepted"}));
    assert_eq!(app.signed_push(SUCCESS, "p-sig").await, "accepted");
    assert_eq!(pushes(&app, "accepted").await, 2.0);
    assert!(hinted_at(&app, "p-sig").await.is_some());
    assert!(
        next_poll_at(&app, "p-sig").await.unwrap() <= Millis::now(),
        "due at once"
    );
    app.stop().await;
}

/// A push body up to 64 KiB is read; a larger one, correctly signed, is a
/// `413` JSON error that changes nothing.
#[tokio::test]
async fn a_push_over_64_kib_is_refused_with_413_even_when_signed() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
    })
    .await;
    for id in ["p-limit", "p-big"] {
        assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
    }
    let padded = |id: &str, size: usize| {
        let mut push: Value = serde_json::from_slice(&push_body(SUCCESS, id)).unwrap();
        push["data"]["padding"] = json!("");
        let bare = serde_json::to_vec(&push).unwrap().len();
        push["data"]["padding"] = json!("x".repeat(size - bare));
        let body = serde_json::to_vec(&push).unwrap();
        assert_eq!(body.len(), size);
        body
    };
    let at_limit = padded("p-limit", PUSH_LIMIT);
    let answer = app
        .push(&at_limit, Some(&sign(PUSH_SECRET, &at_limit)))
        .await;
    assert_eq!(answer.json, json!({"outcome": "accepted"}), "{answer:?}");

    let before = app.video("p-big").await.json;
    let over = padded("p-big", PUSH_LIMIT + 1);
    let answer = app.push(&over, Some(&sign(PUSH_SECRET, &over))).await;
    assert_eq!(answer.assert_json_error(413), "payload_too_large");
    let far_over = padded("p-big", 4 * PUSH_LIMIT);
    let answer = app
        .push(&far_over, Some(&sign(PUSH_SECRET, &far_over)))
        .await;
    assert_eq!(answer.assert_json_error(413), "payload_too_large");
    assert_eq!(app.video("p-big").await.json, before);
    assert_eq!(hinted_at(&app, "p-big").await, None);
    app.stop().await;
}

/// A verified body that is not a push is `400 invalid_push`; an event that
/// is not about a finished render, a finished video and an untracked one
/// are acknowledged (`200`, so JoggAI stops retrying) and change nothing.
#[tokio::test]
async fn verified_pushes_that_are_not_hints_change_nothing() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
    })
    .await;
    assert_eq!(app.enqueue(json!({"video_id": "p-idle"})).await.status, 201);
    let before = app.video("p-idle").await.json;
    let signed = |body: &[u8]| sign(PUSH_SECRET, body);

    for body in [
        b"not json".to_vec(),
        b"[]".to_vec(),
        serde_json::to_vec(&json!({"event": SUCCESS})).unwrap(),
        serde_json::to_vec(&json!({"event": SUCCESS, "data": {}})).unwrap(),
        serde_json::to_vec(&json!({"event": SUCCESS, "data": {"video_id": "no spaces"}})).unwrap(),
        serde_json::to_vec(&json!({"event": SUCCESS, "data": {"video_id": ""}})).unwrap(),
    ] {
        let answer = app.push(&body, Some(&signed(&body))).await;
        assert_eq!(
            answer.assert_json_error(400),
            "invalid_push",
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(pushes(&app, "malformed").await, 6.0);

    let other_event = push_body("generated_avatar_video_started", "p-idle");
    let answer = app.push(&other_event, Some(&signed(&other_event))).await;
    assert_eq!(
        answer.json,
        json!({"outcome": "unknown_event"}),
        "{answer:?}"
    );
    assert_eq!(app.signed_push(SUCCESS, "p-untracked").await, "untracked");
    assert_eq!(app.video("p-idle").await.json, before);
    assert_eq!(hinted_at(&app, "p-idle").await, None);
    assert_eq!(app.count("videos").await, 1, "without adopt_untracked");

    // A finished video: not polled again, not changed.
    app.sim.state.script("p-done", Timeline::completes(0, 0));
    let now = Millis::now();
    app.enqueue(json!({"video_id": "p-done"})).await;
    assert_eq!(app.signed_push(SUCCESS, "p-done").await, "accepted");
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
    let done = app.video("p-done").await.json;
    assert_eq!(done["state"], "completed");
    assert_eq!(app.signed_push(SUCCESS, "p-done").await, "not_active");
    assert_eq!(app.signed_push(FAILED, "p-done").await, "not_active");
    assert_eq!(app.video("p-done").await.json, done);
    assert_eq!(
        app.step(now.plus(Duration::from_secs(60))).await,
        Outcome::Idle
    );
    assert_eq!(app.sim.state.answers_for("p-done"), 1);
    assert_eq!(pushes(&app, "not_active").await, 2.0);
    assert_eq!(pushes(&app, "untracked").await, 1.0);
    assert_eq!(pushes(&app, "unknown_event").await, 1.0);
    app.stop().await;
}

/// Without `jogg.webhook_secret` the route answers `404 pushes_disabled`,
/// signed or not, and counts nothing.
#[tokio::test]
async fn without_a_webhook_secret_pushes_are_disabled() {
    let app = spawn_manual_app(|s| s.polling.first_after = "1h".into()).await;
    app.enqueue(json!({"video_id": "p-off"})).await;
    let before = app.video("p-off").await.json;
    let body = push_body(SUCCESS, "p-off");
    for signature in [Some(sign(PUSH_SECRET, &body)), None] {
        let answer = app.push(&body, signature.as_deref()).await;
        assert_eq!(answer.assert_json_error(404), "pushes_disabled");
    }
    assert_eq!(app.video("p-off").await.json, before);
    assert_eq!(hinted_at(&app, "p-off").await, None);
    assert_eq!(pushes(&app, "bad_signature").await, 0.0);
    app.stop().await;
}

/// The bearer token still guards the API with pushes on, and a push is
/// authenticated by its signature alone: the token is no substitute.
#[tokio::test]
async fn the_token_guards_the_api_and_does_not_replace_the_signature() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
    })
    .await;
    app.enqueue(json!({"video_id": "p-token"})).await;
    let body = push_body(SUCCESS, "p-token");
    let signature = sign(PUSH_SECRET, &body);

    for (method, path) in [("GET", "/v1/videos"), ("GET", "/v1/videos/p-token")] {
        let answer = reply(
            app.client
                .request(method.parse().unwrap(), format!("{}{path}", app.base))
                .header("x-webhook-signature", &signature)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.assert_json_error(401), "unauthorized", "{path}");
    }
    // A push signature on the API's own enqueue is no token either.
    let answer = reply(
        app.client
            .post(format!("{}/v1/videos", app.base))
            .header("content-type", "application/json")
            .header("x-webhook-signature", &signature)
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");

    // The token, without a signature: refused.
    let answer = reply(
        app.client
            .post(format!("{}/webhooks/jogg", app.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.assert_json_error(401), "bad_signature");
    assert_eq!(hinted_at(&app, "p-token").await, None);
    // With both, the signature is what counts.
    let answer = reply(
        app.client
            .post(format!("{}/webhooks/jogg", app.base))
            .bearer_auth(TOKEN)
            .header("x-webhook-signature", &signature)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.json, json!({"outcome": "accepted"}), "{answer:?}");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Hints
// ---------------------------------------------------------------------------

/// A push makes its video's confirming poll due at once; that one poll
/// ends it and queues the same callback a poll-learned completion would.
#[tokio::test]
async fn a_push_brings_one_confirming_poll_and_the_usual_callback() {
    let receiver = SimReceiver::start(Some(callback_secret())).await.unwrap();
    let app = relay_for(&receiver, |s| s.polling.first_after = "1h".into()).await;
    for id in ["p-push", "p-poll"] {
        app.sim.state.script(id, Timeline::completes(0, 0));
        assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
    }
    let t0 = Millis::now();
    assert_eq!(
        app.step(t0).await,
        Outcome::Idle,
        "first polls are 1 h away"
    );

    assert_eq!(app.signed_push(SUCCESS, "p-push").await, "accepted");
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
    assert_eq!(
        app.sim.state.answers_for("p-push"),
        1,
        "one confirming poll"
    );
    assert_eq!(
        app.sim.state.answers_for("p-poll"),
        0,
        "only the pushed one"
    );
    assert_eq!(app.step(Millis::now()).await, Outcome::Idle);
    let pushed = app.video("p-push").await.json;
    assert_eq!(pushed["state"], "completed", "{pushed}");
    assert_eq!(pushed["polls"], 1);
    assert_eq!(learned(&app, "push").await, 1.0);
    assert_eq!(learned(&app, "poll").await, 0.0);

    assert_eq!(
        app.deliver(Millis::now()).await,
        jogg_relay::delivery::Outcome::Worked(1)
    );
    let received = receiver.state.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].accepted() && oracle::verified(CALLBACK_SECRET, &received[0]));
    assert_eq!(received[0].path, "ops");
    assert_eq!(
        received[0].event_id,
        pushed["event_id"].as_str().map(str::to_owned)
    );
    assert_eq!(
        metric(&app, "jogg_relay_push_to_callback_seconds_count").await,
        1.0
    );

    // The other one is learned by its own schedule (first_after 1 h, with
    // its jitter).
    let later = t0.plus(Duration::from_secs(2 * 3600));
    assert_eq!(app.step(later).await, Outcome::Worked(1));
    let polled = app.video("p-poll").await.json;
    assert_eq!(polled["state"], "completed", "{polled}");
    assert_eq!(learned(&app, "poll").await, 1.0);
    assert_eq!(learned(&app, "push").await, 1.0);
    app.deliver(later.plus(Duration::from_secs(1))).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[1].event_id,
        polled["event_id"].as_str().map(str::to_owned)
    );
    assert!(received[1].accepted() && oracle::verified(CALLBACK_SECRET, &received[1]));
    assert_eq!(
        metric(&app, "jogg_relay_push_to_callback_seconds_count").await,
        1.0,
        "a poll-learned callback is no push delay"
    );

    // Same event, same shape, whichever way the completion was learned.
    let keys = |value: &Value| {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let (by_push, by_poll) = (&received[0].body, &received[1].body);
    assert_eq!(by_push["event"], "generated_avatar_video_success");
    assert_eq!(by_push["event"], by_poll["event"]);
    assert_eq!(by_push["data"]["status"], "completed");
    assert_eq!(by_push["data"]["status"], by_poll["data"]["status"]);
    assert_eq!(keys(by_push), keys(by_poll));
    assert_eq!(keys(&by_push["data"]), keys(&by_poll["data"]));
    assert_eq!(received[0].event, received[1].event);
    app.stop().await;
}

/// The push's event never decides: the confirming poll's answer does.
#[tokio::test]
async fn the_poll_decides_whatever_the_push_said() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
    })
    .await;
    app.sim
        .state
        .script("p-said-failed", Timeline::completes(0, 0));
    app.sim.state.script("p-said-done", Timeline::fails(0, 0));
    for id in ["p-said-failed", "p-said-done"] {
        app.enqueue(json!({"video_id": id})).await;
    }
    assert_eq!(app.signed_push(FAILED, "p-said-failed").await, "accepted");
    assert_eq!(app.signed_push(SUCCESS, "p-said-done").await, "accepted");
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(2));
    assert_eq!(app.video("p-said-failed").await.json["state"], "completed");
    assert_eq!(app.video("p-said-done").await.json["state"], "failed");
    assert_eq!(learned(&app, "push").await, 2.0);
    app.stop().await;
}

/// A push whose confirming poll still says `processing` changes nothing
/// but that poll: the video stays active, nothing is queued, and its next
/// poll is back on the safety-net schedule.
#[tokio::test]
async fn a_push_the_poll_does_not_confirm_changes_nothing() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
        s.callbacks.urls = vec!["https://ops.example.com/hook".into()];
    })
    .await;
    app.sim
        .state
        .script("p-early", Timeline::completes(0, 1000));
    app.enqueue(json!({"video_id": "p-early"})).await;
    assert_eq!(app.signed_push(SUCCESS, "p-early").await, "accepted");
    let polled = Millis::now();
    assert_eq!(app.step(polled).await, Outcome::Worked(1));
    assert_eq!(app.sim.state.answers_for("p-early"), 1);

    let video = app.video("p-early").await.json;
    assert_eq!(video["state"], "active", "{video}");
    assert_eq!(video["upstream_status"], "processing");
    assert_eq!(video["event_id"], Value::Null);
    assert_eq!(video["deliveries"], json!([]));
    assert_eq!(app.count("deliveries").await, 0);
    // JoggAI's status may lag its push: one more look `min_interval` (10 s)
    // later, then the safety net's 5 min.
    let next = next_poll_at(&app, "p-early").await.unwrap();
    let recorded_by = Millis::now();
    assert!(
        next >= polled.plus(Duration::from_secs(10))
            && next <= recorded_by.plus(Duration::from_secs(10)),
        "one recheck min_interval after the unconfirmed push: {next:?} after {polled:?}"
    );
    assert_eq!(
        hinted_at(&app, "p-early").await,
        None,
        "the push is answered"
    );
    assert_eq!(app.step(before(next)).await, Outcome::Idle);
    assert_eq!(app.step(next).await, Outcome::Worked(1));
    assert_eq!(app.sim.state.answers_for("p-early"), 2);
    let video = app.video("p-early").await.json;
    assert_eq!(video["state"], "active", "{video}");
    let after_recheck = next_poll_at(&app, "p-early").await.unwrap();
    assert!(
        after_recheck >= next.plus(Duration::from_secs(300)),
        "then the safety net's 5 min: {after_recheck:?} after {next:?}"
    );
    assert_eq!(
        app.step(next.plus(Duration::from_secs(299))).await,
        Outcome::Idle
    );
    assert_eq!(app.sim.state.answers_for("p-early"), 2);
    assert_eq!(learned(&app, "push").await, 0.0);
    assert_eq!(learned(&app, "poll").await, 0.0);
    app.stop().await;
}

/// A push right after a poll is answered `min_interval` after that poll,
/// not at once; a push for a video due anyway does not postpone it.
#[tokio::test]
async fn a_push_never_brings_a_poll_within_min_interval_of_the_last() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.min_interval = "10s".into();
    })
    .await;
    app.sim.state.script("p-spaced", Timeline::completes(0, 1));
    app.enqueue(json!({"video_id": "p-spaced"})).await;
    // Due at once (first_after 0s): a push leaves that as it is.
    let due = next_poll_at(&app, "p-spaced").await.unwrap();
    assert_eq!(app.signed_push(SUCCESS, "p-spaced").await, "accepted");
    assert_eq!(next_poll_at(&app, "p-spaced").await, Some(due));

    let polled = Millis::now();
    assert_eq!(app.step(polled).await, Outcome::Worked(1));
    let recorded_by = Millis::now();
    assert_eq!(
        app.video("p-spaced").await.json["upstream_status"],
        "processing"
    );
    assert_eq!(app.signed_push(SUCCESS, "p-spaced").await, "accepted");
    let next = next_poll_at(&app, "p-spaced").await.unwrap();
    assert!(
        next >= polled.plus(Duration::from_secs(10))
            && next <= recorded_by.plus(Duration::from_secs(10)),
        "due min_interval after the poll: {next:?}, polled {polled:?}..{recorded_by:?}"
    );
    assert_eq!(app.step(before(next)).await, Outcome::Idle);
    assert_eq!(app.sim.state.answers_for("p-spaced"), 1);
    assert_eq!(app.step(next).await, Outcome::Worked(1));
    assert_eq!(app.video("p-spaced").await.json["state"], "completed");
    assert_eq!(learned(&app, "push").await, 1.0);
    app.stop().await;
}

/// A confirming poll that fails (an upstream error) answers nothing: the
/// push stays pending, the retry comes on the error backoff as usual, and
/// the completion that retry learns is credited to the push.
#[tokio::test]
async fn a_push_whose_confirming_poll_fails_stays_pending() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
        s.polling.min_interval = "10s".into();
    })
    .await;
    app.sim.state.script("p-err", Timeline::completes(0, 0));
    app.enqueue(json!({"video_id": "p-err"})).await;
    app.sim
        .state
        .inject_for("p-err", [jogg_relay::sim::Fault::Http(500)]);
    assert_eq!(app.signed_push(SUCCESS, "p-err").await, "accepted");
    let pushed = hinted_at(&app, "p-err").await.expect("pending");
    let polled = Millis::now();
    assert_eq!(app.step(polled).await, Outcome::Worked(1));
    assert_eq!(app.video("p-err").await.json["state"], "active");
    assert_eq!(
        hinted_at(&app, "p-err").await,
        Some(pushed),
        "still pending"
    );
    // The error backoff (min_interval, jittered), not the push, schedules
    // the retry.
    let next = next_poll_at(&app, "p-err").await.unwrap();
    assert!(
        next >= polled.plus(Duration::from_secs(9)),
        "{next:?} after {polled:?}"
    );
    assert_eq!(app.step(before(next)).await, Outcome::Idle);
    assert_eq!(app.step(next).await, Outcome::Worked(1));
    assert_eq!(app.video("p-err").await.json["state"], "completed");
    assert_eq!(
        app.sim.state.answers_for("p-err"),
        1,
        "faults are not answers"
    );
    assert_eq!(learned(&app, "push").await, 1.0);
    assert_eq!(learned(&app, "poll").await, 0.0);
    app.stop().await;
}

/// 100 valid pushes for one video over 100 s of steps with a 10 s
/// `min_interval`: at most one poll per 10 s, per the simulator's count.
#[tokio::test]
async fn a_flood_of_pushes_polls_at_most_once_per_min_interval() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.min_interval = "10s".into();
    })
    .await;
    app.sim
        .state
        .script("p-flood", Timeline::completes(0, 100_000));
    app.enqueue(json!({"video_id": "p-flood"})).await;
    let t0 = Millis::now();
    let seconds = 100;
    for second in 0..seconds {
        assert_eq!(app.signed_push(SUCCESS, "p-flood").await, "accepted");
        app.step(t0.plus(Duration::from_secs(second))).await;
    }
    let polls = app.sim.state.answers_for("p-flood");
    assert!(
        polls <= seconds.div_ceil(10) as u32 + 1,
        "{polls} polls in {seconds} s"
    );
    // Without the pushes, the safety net (5 min) would allow one poll.
    assert!(polls >= 5, "the pushes brought polls forward: {polls}");
    assert_eq!(app.sim.state.request_count(), polls as usize);
    assert_eq!(app.sim.state.max_in_flight_per_video(), 1);
    assert_eq!(pushes(&app, "accepted").await, f64::from(seconds as u32));
    assert_eq!(app.video("p-flood").await.json["state"], "active");
    app.stop().await;
}

/// A pushed video is claimed ahead of other due videos, even more overdue
/// ones, when the poller can take only one; whichever the strategy (the
/// adaptive one ranks the rest).
#[tokio::test]
async fn a_pushed_video_is_claimed_ahead_of_other_due_videos() {
    for strategy in ["adaptive", "exponential"] {
        let app = spawn_manual_app(|s| {
            pushes_on(s);
            s.jogg.max_in_flight = 1;
            s.polling.strategy = strategy.into();
        })
        .await;
        let ids = ["p-q0", "p-q1", "p-q2", "p-q3", "p-pushed"];
        for id in ids {
            app.sim.state.script(id, Timeline::completes(0, 1000));
            assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
        }
        assert_eq!(app.signed_push(SUCCESS, "p-pushed").await, "accepted");
        assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
        assert_eq!(app.sim.state.answers_for("p-pushed"), 1, "{strategy}");
        assert_eq!(app.sim.state.request_count(), 1, "only the pushed one");
        app.stop().await;
    }
}

/// A lost push is caught by the safety net: with pushes on, an unfinished
/// video's background polls are 5 min apart (`polling.safety_net_interval`,
/// not `min_interval` as without pushes), and the next one learns the
/// completion.
#[tokio::test]
async fn a_lost_push_is_caught_by_the_safety_net_poll() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.first_after = "30s".into();
        s.polling.safety_net_interval = "5m".into();
    })
    .await;
    let plain = spawn_manual_app(|s| s.polling.first_after = "30s".into()).await;
    for app in [&app, &plain] {
        app.sim.state.script("p-lost", Timeline::completes(0, 1));
        app.enqueue(json!({"video_id": "p-lost"})).await;
    }
    let t0 = Millis::now();
    // Past first_after and its jitter.
    let first = t0.plus(Duration::from_secs(40));
    for app in [&app, &plain] {
        assert_eq!(app.step(t0).await, Outcome::Idle, "first_after 30s");
        assert_eq!(app.step(first).await, Outcome::Worked(1));
        assert_eq!(
            app.video("p-lost").await.json["upstream_status"],
            "processing"
        );
    }
    let recorded_by = Millis::now().max(first).plus(Duration::from_secs(1));
    let net = Duration::from_secs(300);
    let next = next_poll_at(&app, "p-lost").await.unwrap();
    assert!(
        next >= first.plus(net) && next <= recorded_by.plus(net),
        "5 min after the poll: {next:?} (polled at {first:?})"
    );
    // Without pushes, min_interval (10 s, jittered) schedules it.
    let plain_next = next_poll_at(&plain, "p-lost").await.unwrap();
    assert!(
        plain_next < first.plus(Duration::from_secs(60)),
        "{plain_next:?} after {first:?}"
    );
    plain.stop().await;

    assert_eq!(app.step(before(next)).await, Outcome::Idle);
    assert_eq!(app.sim.state.answers_for("p-lost"), 1);
    assert_eq!(app.step(next).await, Outcome::Worked(1));
    assert_eq!(app.video("p-lost").await.json["state"], "completed");
    assert_eq!(learned(&app, "poll").await, 1.0);
    assert_eq!(learned(&app, "push").await, 0.0);
    app.stop().await;
}

/// A push that arrives while its video's poll is in flight is not answered
/// by that poll (whose request may have left before the render finished):
/// it stays pending and brings the next poll to `min_interval` after that
/// poll. A push from before the claim is answered and cleared. Driven at
/// the store, with the poller's own `decide` building the results.
#[tokio::test]
async fn a_push_during_the_poll_survives_it() {
    let app = spawn_manual_app(|s| {
        pushes_on(s);
        s.polling.min_interval = "10s".into();
    })
    .await;
    for id in ["race-early", "race-late"] {
        app.enqueue(json!({"video_id": id})).await;
    }
    let store = app.store().await;
    let (writer, _task) = Writer::start(&store).await.unwrap();
    let policy = PollPolicy::from(&app.config.polling);
    let min_interval = Duration::from_secs(10);
    let hint = |id: &str, at: Millis| PushHint {
        video_id: VideoId::parse(id).unwrap(),
        at,
        min_interval,
        adopt: false,
    };

    let t0 = Millis::now().plus(Duration::from_secs(1));
    let lease_until = t0.plus(Duration::from_secs(30));
    assert!(matches!(
        writer
            .hint(hint("race-early", Millis(t0.0 - 500)))
            .await
            .unwrap(),
        HintOutcome::Hinted { .. }
    ));
    let claimed = writer.claim_due(t0, lease_until, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // A push during the poll leaves the lease (and the due time) alone.
    let t1 = t0.plus(Duration::from_secs(1));
    assert_eq!(
        writer.hint(hint("race-late", t1)).await.unwrap(),
        HintOutcome::Hinted {
            due_at: lease_until
        }
    );
    let t2 = t0.plus(Duration::from_secs(2));
    let processing = PollAnswer::Status(VideoStatus {
        video_id: None,
        status: "processing".into(),
        class: StatusClass::InProgress,
        video_url: None,
        cover_url: None,
        created_at: None,
        duration: None,
        error_code: None,
        error_message: None,
        rejected_urls: Vec::new(),
    });
    let mut rng = fastrand::Rng::with_seed(7);
    for video in &claimed {
        assert_eq!(
            video.answers_push(),
            video.video_id.as_str() == "race-early",
            "{video:?}"
        );
        let Decision::Record { update, .. } =
            decide(video, &processing, t2, &policy, None, &[], &mut rng)
        else {
            panic!("processing is recorded");
        };
        assert!(writer.record_poll(*update).await.unwrap());
    }

    let late = next_poll_at(&app, "race-late").await.unwrap();
    assert!(
        late <= t2.plus(min_interval),
        "the pending push brings the next poll to min_interval after this one: {late:?}"
    );
    assert_eq!(
        hinted_at(&app, "race-late").await,
        Some(t1.0),
        "still pending"
    );
    let early = next_poll_at(&app, "race-early").await.unwrap();
    assert_eq!(
        early,
        t2.plus(min_interval),
        "answered but unconfirmed: one recheck min_interval later (then the safety net)"
    );
    assert_eq!(hinted_at(&app, "race-early").await, None);

    // The pending push is answered by the next claim, which takes it first.
    let again = writer
        .claim_due(t2.plus(min_interval), t2.plus(Duration::from_secs(60)), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].video_id.as_str(), "race-late");
    assert!(again[0].answers_push());
    assert_eq!(again[1].video_id.as_str(), "race-early");
    assert!(!again[1].answers_push(), "its push was answered");
    drop(writer);
    store.close().await;
    app.stop().await;
}

/// A completion learned by a poll claimed before the push arrived is
/// learned by poll: the push neither caused that poll nor starts the
/// push-to-callback clock. The push is applied at a chosen time through a
/// second writer, and the poller's own step claims before it.
#[tokio::test]
async fn a_poll_claimed_before_the_push_is_not_credited_to_it() {
    let receiver = SimReceiver::start(Some(callback_secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    app.sim.state.script("p-crossed", Timeline::completes(0, 0));
    app.enqueue(json!({"video_id": "p-crossed"})).await;
    let due = next_poll_at(&app, "p-crossed").await.unwrap();
    let store = app.store().await;
    let (writer, _task) = Writer::start(&store).await.unwrap();
    let pushed = due.plus(Duration::from_secs(5));
    assert_eq!(
        writer
            .hint(PushHint {
                video_id: VideoId::parse("p-crossed").unwrap(),
                at: pushed,
                min_interval: Duration::from_secs(10),
                adopt: false,
            })
            .await
            .unwrap(),
        HintOutcome::Hinted { due_at: due },
        "due anyway: not postponed"
    );
    drop(writer);
    store.close().await;

    // The poll is claimed at `due`, before the push's time.
    assert_eq!(app.step(due).await, Outcome::Worked(1));
    assert_eq!(app.video("p-crossed").await.json["state"], "completed");
    assert_eq!(learned(&app, "poll").await, 1.0);
    assert_eq!(learned(&app, "push").await, 0.0);
    assert_eq!(hinted_at(&app, "p-crossed").await, None);
    app.deliver(pushed.plus(Duration::from_secs(1))).await;
    assert_eq!(receiver.state.accepted_count(), 1);
    assert_eq!(
        metric(&app, "jogg_relay_push_to_callback_seconds_count").await,
        0.0
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Untracked videos
// ---------------------------------------------------------------------------

/// Without `jogg.adopt_untracked`, a push for an unknown id is acknowledged
/// and ignored; with it, the video is tracked, polled at once and its
/// callback goes to `callbacks.urls`; a repeated push does not track it
/// twice.
#[tokio::test]
async fn untracked_videos_are_adopted_only_when_configured() {
    let ignoring = spawn_manual_app(pushes_on).await;
    assert_eq!(
        ignoring.signed_push(SUCCESS, "p-stranger").await,
        "untracked"
    );
    assert_eq!(ignoring.count("videos").await, 0);
    assert_eq!(
        ignoring.video("p-stranger").await.assert_json_error(404),
        "not_found"
    );
    assert_eq!(ignoring.step(Millis::now()).await, Outcome::Idle);
    assert_eq!(ignoring.sim.state.request_count(), 0);
    assert_eq!(pushes(&ignoring, "untracked").await, 1.0);
    ignoring.stop().await;

    let receiver = SimReceiver::start(Some(callback_secret())).await.unwrap();
    let app = relay_for(&receiver, |s| s.jogg.adopt_untracked = true).await;
    app.sim.state.script("p-adopt", Timeline::completes(0, 0));
    assert_eq!(app.signed_push(SUCCESS, "p-adopt").await, "adopted");
    let video = app.video("p-adopt").await.json;
    assert_eq!(video["state"], "active", "{video}");
    assert!(
        api_millis(&video["next_poll_at"]) <= Millis::now(),
        "due at once"
    );
    // JoggAI redelivers the same push: tracked once, the second is a hint.
    assert_eq!(app.signed_push(SUCCESS, "p-adopt").await, "accepted");
    assert_eq!(app.count("videos").await, 1);

    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
    assert_eq!(app.sim.state.answers_for("p-adopt"), 1, "one poll for both");
    let video = app.video("p-adopt").await.json;
    assert_eq!(video["state"], "completed", "{video}");
    let ops = receiver.url("ops");
    assert_eq!(video["deliveries"].as_array().unwrap().len(), 1, "{video}");
    assert_eq!(video["deliveries"][0]["url"], ops.as_str());
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "ops");
    assert_eq!(
        received[0].event_id,
        video["event_id"].as_str().map(str::to_owned)
    );
    assert_eq!(received[0].body["data"]["video_id"], "p-adopt");

    // Once more, after it finished: nothing.
    assert_eq!(app.signed_push(SUCCESS, "p-adopt").await, "not_active");
    assert_eq!(app.count("videos").await, 1);
    assert_eq!(
        app.step(Millis::now().plus(Duration::from_secs(600))).await,
        Outcome::Idle
    );
    assert_eq!(pushes(&app, "adopted").await, 1.0);
    assert_eq!(pushes(&app, "accepted").await, 1.0);
    assert_eq!(learned(&app, "push").await, 1.0);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The push-only listener
// ---------------------------------------------------------------------------

/// The second listener (`server.webhook_bind`) serves pushes and nothing
/// else; the API listener serves both.
#[tokio::test]
async fn the_push_listener_serves_only_the_push_route() {
    let app = spawn_manual_app_with_push_listener(|s| {
        pushes_on(s);
        s.polling.first_after = "1h".into();
    })
    .await;
    let push_base = app.push_base.clone().expect("a push listener");
    assert_ne!(push_base, app.base);
    app.sim.state.script("p-edge", Timeline::completes(0, 0));
    app.enqueue(json!({"video_id": "p-edge"})).await;

    let body = push_body(SUCCESS, "p-edge");
    let answer = push_to(&app, &push_base, &body, Some(&sign(PUSH_SECRET, &body))).await;
    assert_eq!(answer.json, json!({"outcome": "accepted"}), "{answer:?}");
    let answer = push_to(&app, &push_base, &body, None).await;
    assert_eq!(answer.assert_json_error(401), "bad_signature");

    for path in [
        "/v1/videos",
        "/v1/videos/p-edge",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let answer = reply(
            app.client
                .get(format!("{push_base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.assert_json_error(404), "not_found", "{path}");
        let here = reply(
            app.client
                .get(format!("{}{path}", app.base))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(here.status, 200, "{path} on the API listener: {here:?}");
    }
    let answer = reply(
        app.client
            .post(format!("{push_base}/v1/videos"))
            .bearer_auth(TOKEN)
            .json(&json!({"video_id": "p-sneaky"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.assert_json_error(404), "not_found");
    assert_eq!(app.count("videos").await, 1);

    // The API listener takes pushes too.
    assert_eq!(app.signed_push(SUCCESS, "p-edge").await, "accepted");
    assert_eq!(app.step(Millis::now()).await, Outcome::Worked(1));
    assert_eq!(app.video("p-edge").await.json["state"], "completed");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------

/// `serve` binds `server.webhook_bind` beside `server.bind` and serves
/// only pushes there; the secret never reaches its log.
#[tokio::test]
async fn serve_binds_the_push_listener_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path()).write();
    let mut relay = RelayProcess::start(
        &config,
        &[
            ("JOGG_RELAY__JOGG__API_KEY", "sk-test"),
            ("JOGG_RELAY__JOGG__WEBHOOK_SECRET", PUSH_SECRET),
            ("JOGG_RELAY__SERVER__WEBHOOK_BIND", "127.0.0.1:0"),
        ],
    );
    // The push listener's address, from the line the relay logs for it
    // (blocking on the child's output, with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    let push_address = loop {
        let line = relay
            .log
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the relay logged its push listener");
        log.push(line.clone());
        if line.contains("serving JoggAI pushes") {
            let address = line
                .split("address=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .or_else(|| line.split("\"address\":\"").nth(1)?.split('"').next())
                .expect("an address in the line");
            break address.parse::<std::net::SocketAddr>().unwrap();
        }
    };
    assert_ne!(push_address, relay.address);
    let client = jogg_relay::outbound::client_builder().build().unwrap();
    let push_base = format!("http://{push_address}");
    let body = push_body(SUCCESS, "p-served");
    let answer = reply(
        client
            .post(format!("{push_base}/webhooks/jogg"))
            .header("x-webhook-signature", sign(PUSH_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.json, json!({"outcome": "untracked"}), "{answer:?}");
    let elsewhere = reply(
        client
            .get(format!("{push_base}/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(elsewhere.assert_json_error(404), "not_found");
    let health = client
        .get(format!("{}/healthz", relay.base()))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());

    relay.signal("TERM");
    assert!(relay.wait().success(), "a clean exit");
    log.extend(relay.log.try_iter());
    let log = log.join("\n");
    assert!(!log.contains(PUSH_SECRET), "the secret leaked into the log");
}

/// `check-config` takes the push settings from the environment and never
/// shows the secret, nor a too-short one in its error.
#[test]
fn check_config_takes_push_settings_and_never_shows_the_secret() {
    let secret = "env-push-SECRET-0123456789";
    let (code, stdout, stderr) = run_binary(
        &["check-config"],
        &[
            ("JOGG_RELAY__JOGG__WEBHOOK_SECRET", secret),
            ("JOGG_RELAY__JOGG__ADOPT_UNTRACKED", "true"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "{stdout}{stderr}"
    );
    assert!(
        stdout.contains("webhook_secret = \"[redacted]\""),
        "{stdout}"
    );
    assert!(stdout.contains("adopt_untracked = true"), "{stdout}");

    let short = "short-SECRET";
    let (code, stdout, stderr) = run_binary(
        &["check-config"],
        &[("JOGG_RELAY__JOGG__WEBHOOK_SECRET", short)],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("jogg.webhook_secret"), "{stderr}");
    assert!(
        !stdout.contains(short) && !stderr.contains(short),
        "{stderr}"
    );
}
