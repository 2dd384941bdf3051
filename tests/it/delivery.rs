//! Callback delivery against the simulated receiver, driven step by step.

use std::time::Duration;

use jogg_relay::config::WebhookSecret;
use jogg_relay::delivery::Outcome;
use jogg_relay::domain::Millis;
use jogg_relay::sim::{Received, Reply, SimReceiver, Timeline};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_manual_app};
use crate::oracle;

const SECRET: &str = "whsec_c2ltLXJlY2VpdmVyLXNlY3JldC0xMjM0NQ==";

fn secret() -> WebhookSecret {
    WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").unwrap()
}

/// A relay whose configured callback URL is `receiver`'s `/ops`, signing
/// with [`SECRET`], retrying after 1 s, 1 s, 1 s. The attempt timeout is
/// generous (a loaded machine must never turn a normal answer into a
/// timeout, which would change the attempt counts the tests assert); the
/// timeout test sets a short one and a receiver that never answers in it.
async fn relay_for(
    receiver: &SimReceiver,
    customize: impl FnOnce(&mut jogg_relay::config::Settings),
) -> TestApp {
    let ops = receiver.url("ops");
    spawn_manual_app(|s| {
        s.callbacks.urls = vec![ops];
        s.callbacks.secret = jogg_relay::config::SecretSetting(Some(SECRET.into()));
        s.callbacks.retry_schedule = vec!["1s".into(), "1s".into(), "1s".into()];
        s.callbacks.timeout = "10s".into();
        customize(s);
    })
    .await
}

/// Enqueues `id` (completing on its first poll) and polls it to completion.
async fn completed_video(app: &TestApp, id: &str, extra: Value) -> Value {
    app.sim.state.script(id, Timeline::completes(0, 0));
    let mut body = json!({"video_id": id});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    assert!(app.enqueue(body).await.status < 300);
    app.step(Millis::now()).await;
    let video = app.video(id).await.json;
    assert_eq!(video["state"], "completed", "{video}");
    video
}

/// Runs delivery steps at `now`, `now + 2 s`, … until one is idle at its
/// time, `rounds` at most; returns the time after the last.
async fn deliver_rounds(app: &TestApp, mut now: Millis, rounds: usize) -> Millis {
    for _ in 0..rounds {
        app.deliver(now).await;
        now = now.plus(Duration::from_secs(2));
    }
    now
}

fn delivery_of(video: &Value, url: &str) -> Value {
    video["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["url"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("no delivery to {url} in {video}"))
}

#[tokio::test]
async fn fails_three_times_then_delivered_with_one_event_id() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    receiver.state.fail("ops", 3, 500);
    let video = completed_video(&app, "d-retry", json!({"metadata": {"order": 7}})).await;
    let event_id = video["event_id"].as_str().unwrap().to_owned();

    let now = deliver_rounds(&app, Millis::now(), 4).await;
    assert_eq!(
        app.deliver(now).await,
        Outcome::Idle,
        "nothing left to send"
    );
    let received = receiver.state.received();
    assert_eq!(received.len(), 4);
    for callback in &received {
        assert_eq!(callback.event_id.as_deref(), Some(event_id.as_str()));
        assert_eq!(callback.webhook_id.as_deref(), Some(event_id.as_str()));
        assert!(
            oracle::verified(SECRET, callback),
            "both signatures verify: {callback:?}"
        );
        assert_eq!(
            callback.event.as_deref(),
            Some("generated_avatar_video_success")
        );
        assert_eq!(
            callback.event_header.as_deref(),
            Some("generated_avatar_video_success")
        );
        assert_eq!(
            callback.user_agent.as_deref(),
            Some(concat!("jogg-relay/", env!("CARGO_PKG_VERSION")))
        );
    }
    assert!(received[3].accepted());
    let body = &received[3].body;
    assert_eq!(body["data"]["video_id"], "d-retry");
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(
        body["data"]["video_url"],
        "https://cdn.sim.invalid/d-retry.mp4"
    );
    assert_eq!(body["data"]["metadata"], json!({"order": 7}));
    assert_eq!(
        received[0].body, received[3].body,
        "every attempt sends the same body"
    );

    let delivery = delivery_of(&app.video("d-retry").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "delivered");
    assert_eq!(delivery["attempts"], 4);
    assert_eq!(delivery["last_status"], 200);
    assert_eq!(delivery["next_attempt_at"], Value::Null);
    let store = app.store().await;
    let attempts: Vec<Option<i64>> = store
        .attempt_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|attempt| attempt.status)
        .collect();
    assert_eq!(attempts, [Some(500), Some(500), Some(500), Some(200)]);
    app.stop().await;
}

#[tokio::test]
async fn gone_is_dead_after_one_attempt() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    receiver.state.fail("ops", 1, 410);
    completed_video(&app, "d-gone", json!({})).await;
    deliver_rounds(&app, Millis::now(), 3).await;
    assert_eq!(receiver.state.received().len(), 1);
    let delivery = delivery_of(&app.video("d-gone").await.json, &receiver.url("ops"));
    assert_eq!(
        (delivery["state"].as_str(), delivery["reason"].as_str()),
        (Some("dead"), Some("gone"))
    );
    assert_eq!(delivery["attempts"], 1);
    app.stop().await;
}

#[tokio::test]
async fn slow_receiver_times_out_and_is_retried() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.timeout = "2s".into()).await;
    // Far beyond the timeout: the first attempt times out whatever the
    // machine's load; the second is answered at once, well within it.
    receiver
        .state
        .script("ops", [Reply::Slow(Duration::from_secs(3600))]);
    completed_video(&app, "d-slow", json!({})).await;
    let now = Millis::now();
    app.deliver(now).await;
    let delivery = delivery_of(&app.video("d-slow").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "pending");
    assert_eq!(delivery["last_error"], "timeout");
    // The retry is due 1 s (± jitter) after the attempt ended, which was
    // the 2 s timeout after `now`.
    app.deliver(now.plus(Duration::from_secs(10))).await;
    let delivery = delivery_of(&app.video("d-slow").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "delivered");
    assert_eq!(delivery["attempts"], 2);
    app.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    receiver.state.script(
        "ops",
        [
            Reply::StatusWithRetryAfter(503, "120".into()),
            Reply::StatusWithRetryAfter(429, "30".into()),
        ],
    );
    completed_video(&app, "d-later", json!({})).await;
    let store = app.store().await;
    let next_attempt = || async {
        store.delivery_rows().await.unwrap()[0]
            .next_attempt_at
            .unwrap()
            .0
    };
    let now = Millis::now();
    app.deliver(now).await;
    let after_503 = next_attempt().await - now.0;
    assert!(
        (120_000..125_000).contains(&after_503),
        "Retry-After: 120 → {after_503} ms"
    );
    // Not due before then, whatever the schedule says.
    assert_eq!(
        app.deliver(now.plus(Duration::from_secs(60))).await,
        Outcome::Idle
    );
    let second = now.plus(Duration::from_secs(121));
    app.deliver(second).await;
    let after_429 = next_attempt().await - second.0;
    assert!(
        (30_000..35_000).contains(&after_429),
        "Retry-After: 30 → {after_429} ms"
    );
    app.stop().await;
}

#[tokio::test]
async fn exhausted_schedule_is_dead() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    receiver.state.fail("ops", 100, 502);
    completed_video(&app, "d-dead", json!({})).await;
    deliver_rounds(&app, Millis::now(), 8).await;
    assert_eq!(
        receiver.state.received().len(),
        4,
        "one attempt plus three retries"
    );
    let delivery = delivery_of(&app.video("d-dead").await.json, &receiver.url("ops"));
    assert_eq!(
        (delivery["state"].as_str(), delivery["reason"].as_str()),
        (Some("dead"), Some("exhausted"))
    );
    assert_eq!(delivery["last_status"], 502);
    app.stop().await;
}

#[tokio::test]
async fn unsigned_without_a_secret() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.secret = Default::default()).await;
    completed_video(&app, "d-plain", json!({})).await;
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].accepted());
    assert_eq!(
        received[0].webhook_id, None,
        "no signature headers without a secret"
    );
    app.stop().await;
}

#[tokio::test]
async fn failed_and_abandoned_events() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |s| s.polling.not_found_grace = "0s".into()).await;
    app.sim.state.script("d-failed", Timeline::fails(0, 0));
    app.enqueue(json!({"video_id": "d-failed"})).await;
    app.enqueue(json!({"video_id": "d-missing"})).await;
    app.step(Millis::now()).await;
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    let by_video = |id: &str| -> Received {
        received
            .iter()
            .find(|r| r.body["data"]["video_id"] == id)
            .cloned()
            .unwrap()
    };
    let failed = by_video("d-failed");
    assert_eq!(
        failed.event.as_deref(),
        Some("generated_avatar_video_failed")
    );
    assert_eq!(failed.body["data"]["status"], "failed");
    assert_eq!(failed.body["data"]["error"]["code"], "render_failed");
    let abandoned = by_video("d-missing");
    assert_eq!(abandoned.event.as_deref(), Some("relay_video_abandoned"));
    assert_eq!(abandoned.body["data"]["status"], "abandoned");
    assert_eq!(abandoned.body["data"]["reason"], "not_found");
    assert!(oracle::verified(SECRET, &failed) && oracle::verified(SECRET, &abandoned));
    app.stop().await;
}

#[tokio::test]
async fn per_video_targets_on_private_addresses_are_refused_by_default() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    let port = receiver.address.port();
    for literal in [
        format!("http://127.0.0.1:{port}/own"),
        "http://10.0.0.1/own".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        format!("http://[::1]:{port}/own"),
        format!("http://[::ffff:127.0.0.1]:{port}/own"),
    ] {
        let reply = app
            .enqueue(json!({"video_id": "d-private", "callback_url": literal}))
            .await;
        assert_eq!(
            reply.assert_json_error(400),
            "invalid_callback_url",
            "{literal}"
        );
    }
    // A name is checked when sending, on what it resolves to.
    let by_name = format!("http://localhost:{port}/own");
    completed_video(&app, "d-local", json!({"callback_url": by_name})).await;
    deliver_rounds(&app, Millis::now(), 3).await;
    let video = app.video("d-local").await.json;
    let own = delivery_of(&video, &by_name);
    assert_eq!(
        (own["state"].as_str(), own["reason"].as_str()),
        (Some("dead"), Some("forbidden_target"))
    );
    assert!(
        receiver.state.received().iter().all(|r| r.path == "ops"),
        "nothing reached /own"
    );
    // The operator's configured URL on loopback is trusted.
    assert_eq!(
        delivery_of(&video, &receiver.url("ops"))["state"],
        "delivered"
    );
    app.stop().await;
}

#[tokio::test]
async fn private_targets_are_allowed_with_the_flag() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.allow_private_targets = true).await;
    let port = receiver.address.port();
    for (i, url) in [
        "http://10.0.0.1/own".to_owned(),
        "http://169.254.169.254/latest".to_owned(),
        format!("http://[::1]:{port}/own"),
        format!("http://[::ffff:127.0.0.1]:{port}/own"),
    ]
    .iter()
    .enumerate()
    {
        // Accepted, but never delivered here: the test only sends to loopback.
        let reply = app
            .enqueue(json!({"video_id": format!("d-allowed-{i}"), "callback_url": url}))
            .await;
        assert_eq!(reply.status, 201, "{url}");
    }
    app.send("DELETE", "/v1/videos/d-allowed-0", None).await;
    app.send("DELETE", "/v1/videos/d-allowed-1", None).await;
    app.send("DELETE", "/v1/videos/d-allowed-2", None).await;
    app.send("DELETE", "/v1/videos/d-allowed-3", None).await;
    for (id, url) in [
        ("d-loop-ip", format!("http://127.0.0.1:{port}/own-ip")),
        ("d-loop-name", format!("http://localhost:{port}/own-name")),
    ] {
        completed_video(&app, id, json!({"callback_url": url})).await;
    }
    app.deliver(Millis::now()).await;
    let mut paths: Vec<String> = receiver
        .state
        .received()
        .into_iter()
        .filter(|r| r.accepted())
        .map(|r| r.path)
        .collect();
    paths.sort();
    assert_eq!(paths, ["ops", "ops", "own-ip", "own-name"]);
    app.stop().await;
}

#[tokio::test]
async fn redelivery_resends_the_same_event_id_without_new_rows() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    let video = completed_video(&app, "d-again", json!({})).await;
    app.deliver(Millis::now()).await;
    assert_eq!(receiver.state.accepted_count(), 1);

    let reply = app.send("POST", "/v1/videos/d-again/redeliver", None).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.json["event_id"], video["event_id"]);
    assert_eq!(
        delivery_of(&app.video("d-again").await.json, &receiver.url("ops"))["state"],
        "pending"
    );
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].event_id, received[1].event_id);
    assert_eq!(received[1].event_id.as_deref(), video["event_id"].as_str());
    assert_eq!(app.count("deliveries").await, 1, "no duplicate rows");

    // Active and cancelled videos have no event; unknown ones are 404.
    app.sim.state.script("d-active", Timeline::completes(50, 0));
    app.enqueue(json!({"video_id": "d-active"})).await;
    assert_eq!(
        app.send("POST", "/v1/videos/d-active/redeliver", None)
            .await
            .assert_json_error(409),
        "no_event"
    );
    assert_eq!(
        app.send("POST", "/v1/videos/nobody/redeliver", None)
            .await
            .assert_json_error(404),
        "not_found"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_claimed_but_unsent_delivery_is_sent_after_its_lease_and_across_a_restart() {
    let receiver = SimReceiver::start(Some(secret())).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    completed_video(&app, "d-crash", json!({})).await;
    // Another process claims the delivery and dies before sending it.
    let store = app.store().await;
    let (writer, _task) = jogg_relay::store::Writer::start(&store).await.unwrap();
    let now = Millis::now();
    let lease_until = now.plus(Duration::from_secs(30));
    assert_eq!(
        writer
            .claim_deliveries(now, lease_until, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    drop(writer);
    assert_eq!(
        app.deliver(now).await,
        Outcome::Idle,
        "leased: not sent twice"
    );

    // The relay restarts on the same database.
    let config = app.config.clone();
    let dir = app.stop().await;
    let mut relay = jogg_relay::app::App::build(config).await.unwrap();
    let deliverer = relay.take_deliverer().unwrap();
    assert_eq!(deliverer.step(now).await.unwrap(), Outcome::Idle);
    assert_eq!(
        deliverer.step(lease_until).await.unwrap(),
        Outcome::Worked(1)
    );
    let received = receiver.state.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].accepted() && oracle::verified(SECRET, &received[0]));
    drop(deliverer);
    drop(relay);
    drop(dir);
}

/// The secret per-video targets are signed with in the tests that set
/// `callbacks.video_secret`.
const VIDEO_SECRET: &str = "whsec_cGVyLXZpZGVvLXJlY2VpdmVyLXNlY3JldA==";

#[tokio::test]
async fn a_reference_receiver_accepts_the_callback_as_sent() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    completed_video(&app, "d-reference", json!({})).await;
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 1);
    let callback = &received[0];
    // Exactly what a receiver using the Standard Webhooks library does:
    // headers, raw body, timestamp tolerance.
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&callback.raw_body, &callback.headers)
        .expect("the reference implementation accepts the callback");
    assert!(oracle::joggai_ok(SECRET, callback), "{callback:?}");
    assert_eq!(
        callback.headers["content-type"], "application/json",
        "callbacks are JSON"
    );
    assert_eq!(
        callback.headers["user-agent"],
        concat!("jogg-relay/", env!("CARGO_PKG_VERSION"))
    );
    // A wrong secret is refused by the same oracle (it is not vacuous).
    assert!(!oracle::verified(VIDEO_SECRET, callback));
    app.stop().await;
}

#[tokio::test]
async fn two_attempts_send_the_same_bytes_and_the_same_ids() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    receiver.state.fail("ops", 1, 500);
    completed_video(
        &app,
        "d-same-bytes",
        json!({"metadata": {"k": [1, 2.5, "é"]}}),
    )
    .await;
    let now = Millis::now();
    app.deliver(now).await;
    app.deliver(now.plus(Duration::from_secs(2))).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 2, "one failed attempt, one accepted");
    assert!(!received[0].accepted() && received[1].accepted());
    assert_eq!(
        received[0].raw_body, received[1].raw_body,
        "byte-identical bodies"
    );
    assert_eq!(
        received[0].headers["webhook-id"],
        received[1].headers["webhook-id"]
    );
    assert_eq!(received[0].event_id, received[1].event_id);
    assert!(received.iter().all(|r| oracle::verified(SECRET, r)));
    app.stop().await;
}

#[tokio::test]
async fn per_video_callbacks_are_signed_with_the_video_secret() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| {
        s.callbacks.allow_private_targets = true;
        s.callbacks.video_secret = jogg_relay::config::SecretSetting(Some(VIDEO_SECRET.into()));
    })
    .await;
    let own = receiver.url("own");
    completed_video(&app, "d-own", json!({"callback_url": own})).await;
    // A per-video URL equal to the configured one is that trusted receiver.
    let ops = receiver.url("ops");
    completed_video(&app, "d-ops", json!({"callback_url": ops})).await;
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 3, "{received:?}");
    for callback in &received {
        let video = callback.body["data"]["video_id"].as_str().unwrap();
        if callback.path == "own" {
            assert!(
                oracle::verified(VIDEO_SECRET, callback),
                "{video}: video secret"
            );
            assert!(
                !oracle::standard_ok(SECRET, callback) && !oracle::joggai_ok(SECRET, callback),
                "{video}: the per-video receiver cannot learn the main secret's signatures"
            );
        } else {
            assert!(oracle::verified(SECRET, callback), "{video}: main secret");
            assert!(!oracle::standard_ok(VIDEO_SECRET, callback), "{video}");
        }
    }
    assert_eq!(
        received.iter().filter(|r| r.path == "own").count(),
        1,
        "{received:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_video_secret_per_video_callbacks_use_the_main_secret() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.allow_private_targets = true).await;
    completed_video(&app, "d-own", json!({"callback_url": receiver.url("own")})).await;
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| oracle::verified(SECRET, r)));
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed_and_count_as_failures() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let elsewhere = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    receiver
        .state
        .script("ops", [Reply::Redirect(elsewhere.url("stolen"))]);
    completed_video(&app, "d-redirect", json!({})).await;
    app.deliver(Millis::now()).await;
    assert_eq!(receiver.state.received().len(), 1);
    assert!(
        elsewhere.state.received().is_empty(),
        "the redirect target never sees the callback"
    );
    let delivery = delivery_of(&app.video("d-redirect").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "pending", "a 302 is retried: {delivery}");
    assert_eq!(delivery["last_status"], 302);
    assert_eq!(delivery["attempts"], 1);
    app.stop().await;
}

#[tokio::test]
async fn an_endless_answer_does_not_stall_the_attempt() {
    let receiver = SimReceiver::start(None).await.unwrap();
    // A timeout far beyond how long reading 4 KiB takes: an attempt that
    // kept reading would end only at the timeout.
    let app = relay_for(&receiver, |s| s.callbacks.timeout = "5s".into()).await;
    receiver.state.script("ops", [Reply::Endless]);
    completed_video(&app, "d-endless", json!({})).await;
    app.deliver(Millis::now()).await;
    let delivery = delivery_of(&app.video("d-endless").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    let store = app.store().await;
    let took = store.attempt_rows().await.unwrap()[0].duration_ms;
    assert!(
        took < 2_500,
        "the attempt stopped reading early, it took {took} ms (timeout 5000 ms)"
    );
    app.stop().await;
}

#[tokio::test]
async fn no_more_than_4_kib_of_an_answer_is_waited_for() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.timeout = "5s".into()).await;
    // A little more than 4 KiB, then the answer stalls: a relay that wanted
    // more would wait until the timeout.
    receiver.state.script("ops", [Reply::Stall(5000)]);
    completed_video(&app, "d-stall", json!({})).await;
    app.deliver(Millis::now()).await;
    let delivery = delivery_of(&app.video("d-stall").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    let store = app.store().await;
    let took = store.attempt_rows().await.unwrap()[0].duration_ms;
    assert!(took < 2_500, "took {took} ms (timeout 5000 ms)");
    app.stop().await;
}

#[tokio::test]
async fn at_most_four_callbacks_to_one_host_at_once() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.timeout = "10s".into()).await;
    // Slow answers, so every attempt the relay allows overlaps the others.
    receiver.state.script(
        "ops",
        std::iter::repeat_n(Reply::Slow(Duration::from_millis(400)), 10),
    );
    for i in 0..10 {
        completed_video(&app, &format!("d-host-{i}"), json!({})).await;
    }
    assert_eq!(app.deliver(Millis::now()).await, Outcome::Worked(10));
    assert_eq!(receiver.state.received().len(), 10);
    assert_eq!(
        receiver.state.max_in_flight(),
        jogg_relay::delivery::MAX_IN_FLIGHT_PER_HOST
    );
    assert_eq!(receiver.state.max_in_flight(), 4, "the documented bound");
    app.stop().await;
}

#[tokio::test]
async fn at_most_32_callbacks_at_once() {
    let mut receiver = SimReceiver::start(None).await.unwrap();
    // 16 hosts (ports) with 3 deliveries each: the per-host bound never
    // binds, the global one does.
    let mut urls = Vec::new();
    for i in 0..16 {
        let address = receiver.listen_again().await.unwrap();
        let path = format!("ops{i}");
        receiver.state.script(
            &path,
            // Long enough for all 32 connections to open while the first
            // is still held, even on a loaded machine.
            std::iter::repeat_n(Reply::Slow(Duration::from_secs(1)), 3),
        );
        urls.push(format!("http://{address}/{path}"));
    }
    let app = relay_for(&receiver, move |s| {
        s.callbacks.urls = urls;
        s.callbacks.timeout = "10s".into();
    })
    .await;
    for i in 0..3 {
        completed_video(&app, &format!("d-wide-{i}"), json!({})).await;
    }
    assert_eq!(app.deliver(Millis::now()).await, Outcome::Worked(32));
    assert_eq!(receiver.state.received().len(), 32);
    assert_eq!(receiver.state.max_in_flight(), 32, "the documented bound");
    app.stop().await;
}

/// Answers each lookup with the next scripted address, counting lookups.
struct Rebinding {
    answers: std::sync::Mutex<std::collections::VecDeque<std::net::IpAddr>>,
    lookups: std::sync::atomic::AtomicUsize,
}

impl jogg_relay::delivery::guard::HostLookup for Rebinding {
    fn lookup(&self, _host: &str) -> jogg_relay::delivery::guard::LookupFuture {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = self.answers.lock().unwrap().pop_front();
        Box::pin(async move {
            answer
                .map(|ip| vec![ip])
                .ok_or_else(|| std::io::Error::other("no more answers"))
        })
    }
}

#[tokio::test]
async fn a_name_rebound_to_loopback_after_the_check_is_not_connected_to() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let mut app = relay_for(&receiver, |_| {}).await;
    // "localhost" would reach the receiver through the system resolver;
    // the relay's resolver answers a public address to the send-time check
    // and loopback to the connection.
    let rebinding = std::sync::Arc::new(Rebinding {
        answers: std::sync::Mutex::new(
            ["93.184.216.34", "127.0.0.1"]
                .map(|a| a.parse().unwrap())
                .into(),
        ),
        lookups: Default::default(),
    });
    let deliverer = app.deliverer.take().unwrap();
    app.deliverer = Some(deliverer.with_lookup(rebinding.clone()).unwrap());
    let own = format!("http://localhost:{}/own", receiver.address.port());
    completed_video(&app, "d-rebind", json!({"callback_url": own})).await;
    app.deliver(Millis::now()).await;
    assert_eq!(
        rebinding.lookups.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "looked up for the check and again for the connection"
    );
    assert!(
        receiver.state.received().iter().all(|r| r.path == "ops"),
        "nothing reached /own: {:?}",
        receiver.state.received()
    );
    let delivery = delivery_of(&app.video("d-rebind").await.json, &own);
    assert_eq!(delivery["state"], "pending", "{delivery}");
    assert_eq!(delivery["last_status"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn host_names_longer_than_253_octets_are_refused_at_enqueue() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.allow_private_targets = true).await;
    let label = "a".repeat(63);
    let host = |last: usize| format!("{label}.{label}.{label}.{}", "b".repeat(last));
    let reply = app
        .enqueue(json!({"video_id": "d-long", "callback_url": format!("https://{}/x", host(62))}))
        .await;
    assert_eq!(reply.assert_json_error(400), "invalid_callback_url");
    let reply = app
        .enqueue(json!({"video_id": "d-long", "callback_url": format!("https://{}/x", host(61))}))
        .await;
    assert_eq!(reply.status, 201, "253 octets is fine: {reply:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_stored_host_name_longer_than_253_octets_is_refused_at_send_time() {
    for allow_private_targets in [false, true] {
        let receiver = SimReceiver::start(None).await.unwrap();
        let app = relay_for(&receiver, |s| {
            s.callbacks.allow_private_targets = allow_private_targets;
        })
        .await;
        completed_video(
            &app,
            "d-long-row",
            json!({"callback_url": "https://short.invalid/x"}),
        )
        .await;
        // A row written before the enqueue check existed, or by hand.
        let label = "a".repeat(63);
        let long = format!("https://{label}.{label}.{label}.{}/x", "b".repeat(62));
        let store = app.store().await;
        store
            .set_delivery_url("https://short.invalid/x", &long)
            .await
            .unwrap();
        app.deliver(Millis::now()).await;
        let delivery = delivery_of(&app.video("d-long-row").await.json, &long);
        assert_eq!(
            (delivery["state"].as_str(), delivery["reason"].as_str()),
            (Some("dead"), Some("forbidden_target")),
            "allow_private_targets = {allow_private_targets}: refused without a lookup, \
             not retried as unresolvable: {delivery}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn transition_forms_of_private_space_are_refused_at_enqueue() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    for literal in [
        "http://[2002:7f00:1::1]/x",
        "http://[2001::1]/x",
        "http://[64:ff9b::a00:1]/x",
        "http://[64:ff9b:1::1]/x",
        "http://[::ffff:0:a00:1]/x",
        "http://[100::1]/x",
        "http://192.88.99.1/x",
    ] {
        let reply = app
            .enqueue(json!({"video_id": "d-transition", "callback_url": literal}))
            .await;
        assert_eq!(
            reply.assert_json_error(400),
            "invalid_callback_url",
            "{literal}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_terminal_video_is_a_conflict() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |_| {}).await;
    completed_video(&app, "d-done", json!({})).await;
    let reply = app.send("DELETE", "/v1/videos/d-done", None).await;
    assert_eq!(reply.assert_json_error(409), "already_terminal");
    assert_eq!(app.video("d-done").await.json["state"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn redelivery_revives_dead_deliveries_and_creates_missing_ones() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.retry_schedule = vec![]).await;
    receiver.state.fail("ops", 1, 500);
    let video = completed_video(&app, "d-revive", json!({})).await;
    app.deliver(Millis::now()).await;
    let dead = delivery_of(&app.video("d-revive").await.json, &receiver.url("ops"));
    assert_eq!(
        (dead["state"].as_str(), dead["reason"].as_str()),
        (Some("dead"), Some("exhausted"))
    );

    // Cancelled videos have no event.
    app.sim
        .state
        .script("d-cancelled", Timeline::completes(50, 0));
    app.enqueue(json!({"video_id": "d-cancelled"})).await;
    assert_eq!(
        app.send("DELETE", "/v1/videos/d-cancelled", None)
            .await
            .status,
        204
    );
    assert_eq!(
        app.send("POST", "/v1/videos/d-cancelled/redeliver", None)
            .await
            .assert_json_error(409),
        "no_event"
    );

    // The operator adds a receiver after the event, and restarts.
    let config = app.config.clone();
    let dir = app.stop().await;
    let mut settings = crate::helpers::test_settings(dir.path(), "http://127.0.0.1:1");
    settings.callbacks.urls = vec![receiver.url("ops"), receiver.url("added")];
    settings.callbacks.secret = jogg_relay::config::SecretSetting(Some(SECRET.into()));
    settings.callbacks.retry_schedule = vec![];
    let restarted = settings.validate().unwrap();
    assert_eq!(restarted.database.url, config.database.url);
    let mut relay = jogg_relay::app::App::build(restarted.clone())
        .await
        .unwrap();
    let deliverer = relay.take_deliverer().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(listener, shutdown.clone()));
    let client = jogg_relay::outbound::client_builder().build().unwrap();
    let redeliver = crate::helpers::reply(
        client
            .post(format!("{base}/v1/videos/d-revive/redeliver"))
            .bearer_auth(crate::helpers::TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(redeliver.status, 202, "{redeliver:?}");
    assert_eq!(redeliver.json["targets"], 2, "{redeliver:?}");
    assert_eq!(redeliver.json["event_id"], video["event_id"]);
    assert_eq!(
        deliverer.step(Millis::now()).await.unwrap(),
        Outcome::Worked(2)
    );
    let received = receiver.state.received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert_eq!(paths[0], "ops");
    let mut later = paths[1..].to_vec();
    later.sort();
    assert_eq!(later, ["added", "ops"]);
    assert!(received[1..].iter().all(|r| r.accepted()
        && r.event_id.as_deref() == video["event_id"].as_str()
        && oracle::verified(SECRET, r)));
    drop(deliverer);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    drop(dir);
}

#[tokio::test]
async fn callbacks_go_straight_to_the_receiver_whatever_proxy_the_environment_names() {
    let receiver = SimReceiver::start(None).await.unwrap();
    // A completed video whose callback is still due, in a database.
    let app = relay_for(&receiver, |_| {}).await;
    completed_video(&app, "d-proxy", json!({})).await;
    let database = app.config.database.sqlite_path().unwrap().to_owned();
    let dir = app.stop().await;

    // A "proxy" that only counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = proxied.clone();
    let proxy_used = std::sync::Arc::new(tokio::sync::Notify::new());
    let used = proxy_used.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = proxy.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            used.notify_one();
            drop(connection);
        }
    });

    let config = crate::helpers::RelayConfig::new(dir.path())
        .database(&database)
        .extra(&format!(
            "[callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\n",
            receiver.url("ops"),
        ))
        .write();
    let proxies = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .map(|name| (name, proxy_url.as_str()));
    let mut relay = crate::helpers::RelayProcess::start(
        &config,
        &[&[("JOGG_RELAY__JOGG__API_KEY", "sk-test")][..], &proxies].concat(),
    );

    // Whichever comes first: the callback at the receiver, or a connection
    // to the proxy (then the test fails at once, not at the deadline).
    tokio::select! {
        arrived = receiver.state.wait_for_accepted(1, Duration::from_secs(30)) => {
            assert!(arrived, "the callback arrived");
        }
        _ = proxy_used.notified() => {}
    }
    assert_eq!(
        proxied.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing went through the proxy"
    );
    assert!(oracle::verified(SECRET, &receiver.state.received()[0]));
    relay.signal("KILL");
    relay.wait();
    let mut log = std::mem::take(&mut relay.startup);
    log.extend(relay.take_log().try_iter());
    let warnings = log
        .iter()
        .filter(|line| line.contains("WARN") && line.contains("callbacks.video_secret"))
        .count();
    assert_eq!(warnings, 1, "one startup warning: {log:#?}");
    assert!(!log.iter().any(|line| line.contains(SECRET)));
}

#[tokio::test]
async fn redelivery_counts_the_videos_own_callback_url_once() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let app = relay_for(&receiver, |s| s.callbacks.allow_private_targets = true).await;
    let own = receiver.url("own");
    completed_video(&app, "d-own", json!({"callback_url": own})).await;
    let same = receiver.url("ops");
    completed_video(&app, "d-same", json!({"callback_url": same})).await;
    deliver_rounds(&app, Millis::now(), 1).await;

    // The configured receiver and the video's own: two targets.
    let queued = app.send("POST", "/v1/videos/d-own/redeliver", None).await;
    assert_eq!(queued.status, 202, "{queued:?}");
    assert_eq!(queued.json["targets"], 2, "{queued:?}");
    // An own URL that is a configured one is one target, not two.
    let queued = app.send("POST", "/v1/videos/d-same/redeliver", None).await;
    assert_eq!(queued.json["targets"], 1, "{queued:?}");

    let before = receiver.state.received().len();
    deliver_rounds(&app, Millis::now(), 1).await;
    let mut again: Vec<String> = receiver.state.received()[before..]
        .iter()
        .map(|r| format!("{} {}", r.path, r.event_id.as_deref().unwrap_or("-")))
        .collect();
    again.sort();
    let own_event = app.video("d-own").await.json["event_id"].clone();
    let same_event = app.video("d-same").await.json["event_id"].clone();
    let (own_event, same_event) = (own_event.as_str().unwrap(), same_event.as_str().unwrap());
    let mut expected = vec![
        format!("ops {own_event}"),
        format!("own {own_event}"),
        format!("ops {same_event}"),
    ];
    expected.sort();
    assert_eq!(
        again, expected,
        "each target once, with the original event ids"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_cut_off_by_shutdown_is_handed_back_due_at_once() {
    let receiver = SimReceiver::start(None).await.unwrap();
    // The receiver answers 200 and then never finishes the body: the
    // attempt is still in flight when the relay is told to stop.
    receiver.state.script("ops", [Reply::Stall(0)]);
    let ops = receiver.url("ops");
    let app = crate::helpers::spawn_app_with(|s| {
        s.callbacks.urls = vec![ops];
        s.callbacks.timeout = "60s".into();
        s.polling.first_after = "0s".into();
        s.server.shutdown_grace = "200ms".into();
    })
    .await;
    app.sim.state.script("d-cut", Timeline::completes(0, 0));
    assert_eq!(app.enqueue(json!({"video_id": "d-cut"})).await.status, 201);
    assert!(
        receiver
            .state
            .wait_for_received(1, Duration::from_secs(30))
            .await,
        "the callback was sent"
    );
    let database = app.config.database.clone();
    let _dir = app.stop().await;

    // Handed back: no lease left (the next start sends it at once instead of
    // waiting the lease out), due now, and the cut-off attempt not counted.
    let store = jogg_relay::store::Store::open(&database).await.unwrap();
    let delivery = store.delivery_rows().await.unwrap().remove(0);
    let (lease_until, next_attempt_at, attempts) = (
        delivery.lease_until,
        delivery.next_attempt_at.unwrap(),
        delivery.attempts,
    );
    assert_eq!(lease_until, None);
    assert!(next_attempt_at <= Millis::now(), "due at once");
    assert_eq!(attempts, 0);
    store.close().await;
}
