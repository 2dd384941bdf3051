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
/// with [`SECRET`], retrying after 1 s, 1 s, 1 s.
async fn relay_for(
    receiver: &SimReceiver,
    customize: impl FnOnce(&mut jogg_relay::config::Settings),
) -> TestApp {
    let ops = receiver.url("ops");
    spawn_manual_app(|s| {
        s.callbacks.urls = vec![ops];
        s.callbacks.secret = jogg_relay::config::SecretSetting(Some(SECRET.into()));
        s.callbacks.retry_schedule = vec!["1s".into(), "1s".into(), "1s".into()];
        s.callbacks.timeout = "300ms".into();
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
    let attempts: Vec<(Option<i64>,)> =
        sqlx::query_as("SELECT status FROM delivery_attempts ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        attempts,
        [(Some(500),), (Some(500),), (Some(500),), (Some(200),)]
    );
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
    let app = relay_for(&receiver, |_| {}).await;
    receiver
        .state
        .script("ops", [Reply::Slow(Duration::from_secs(5))]);
    completed_video(&app, "d-slow", json!({})).await;
    let now = Millis::now();
    app.deliver(now).await;
    let delivery = delivery_of(&app.video("d-slow").await.json, &receiver.url("ops"));
    assert_eq!(delivery["state"], "pending");
    assert_eq!(delivery["last_error"], "timeout");
    app.deliver(now.plus(Duration::from_secs(2))).await;
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
        sqlx::query_scalar::<_, i64>("SELECT next_attempt_at FROM deliveries")
            .fetch_one(store.pool())
            .await
            .unwrap()
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
