//! `jogg-relay demo`: the real relay pipeline against the built-in JoggAI
//! simulator and callback receiver, all on loopback with a temporary
//! database. It enqueues a handful of videos with varied timelines, prints
//! every transition and every verified callback as it happens, and succeeds
//! once every expected callback has arrived with valid signatures.
//!
//! JoggAI's pushes are on: two renders finish at the same moment; the
//! simulator pushes one of them (the relay learns of it at once, by push)
//! and loses the other's push (the relay learns of it at its next
//! safety-net poll).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{SecretSetting, Settings, WebhookSecret};
use crate::sim::{PushSettings, Reply, SIM_API_KEY, SimReceiver, SimUpstream, Timeline};
use crate::workload::RenderJob;

/// The whole demo must finish within this.
const DEADLINE: Duration = Duration::from_secs(60);
/// How often the demo looks at its videos to print new transitions.
const REFRESH: Duration = Duration::from_millis(100);
/// The demo's signing secret (`whsec_` + base64 of "jogg-relay demo secret").
const DEMO_SECRET: &str = "whsec_am9nZy1yZWxheSBkZW1vIHNlY3JldA==";
/// The demo's secret for per-video callback URLs, set so the demo shows a
/// configuration without the startup warning about a shared secret.
const DEMO_VIDEO_SECRET: &str = "whsec_am9nZy1yZWxheSBkZW1vIHBlci12aWRlbyBzZWNyZXQ=";
/// The secret the simulated JoggAI signs its pushes with.
const DEMO_PUSH_SECRET: &str = "jogg-relay demo push secret";
/// The render time of the two pushed renders: between two safety-net
/// polls, so the lost push is noticed visibly later than the delivered one.
const PUSHED_RENDER: Duration = Duration::from_millis(1_600);
/// The render whose push arrives, and the one whose push is lost.
const PUSHED: &str = "demo-pushed";
const PUSH_LOST: &str = "demo-push-lost";

/// The videos the demo enqueues: id, timeline, and whether it also has its
/// own callback URL.
fn scenario() -> Vec<(&'static str, Timeline, bool)> {
    vec![
        ("demo-intro", Timeline::completes(1, 2), false),
        ("demo-quick", Timeline::completes(0, 1), false),
        (
            "demo-success-spelling",
            Timeline::completes(1, 1).observed_spelling(),
            false,
        ),
        ("demo-long-render", Timeline::completes(2, 4), false),
        ("demo-broken-avatar", Timeline::fails(1, 1), false),
        ("demo-own-callback", Timeline::completes(1, 1), true),
        ("demo-queued", Timeline::completes(3, 1), false),
        ("demo-short", Timeline::completes(0, 2), false),
        ("demo-extra", Timeline::completes(1, 1), false),
        ("demo-last", Timeline::completes(2, 2), false),
    ]
}

/// Runs the demo, printing to standard output. Fails if not every expected
/// callback arrived verified in time.
pub async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let stamp = |started: Instant| format!("[{:>5.1}s]", started.elapsed().as_secs_f64());
    let secret = WebhookSecret::parse(SecretString::from(DEMO_SECRET), "callbacks.secret")
        .expect("the demo secret is valid");
    let upstream = SimUpstream::start()
        .await
        .context("cannot start the JoggAI simulator")?;
    let receiver = SimReceiver::start(Some(secret))
        .await
        .context("cannot start the callback receiver")?;
    let video_secret = WebhookSecret::parse(
        SecretString::from(DEMO_VIDEO_SECRET),
        "callbacks.video_secret",
    )
    .expect("the demo's per-video secret is valid");
    receiver.state.verify_path_with("hooks/own", video_secret);
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;

    let mut settings = Settings::default();
    settings.database.url = format!("sqlite://{}", dir.path().join("demo.db").display());
    settings.server.bind = "127.0.0.1:0".into();
    settings.jogg.base_url = upstream.base_url.to_string();
    settings.jogg.api_key = SecretSetting(Some(SIM_API_KEY.into()));
    settings.jogg.requests_per_second = 20.0;
    settings.jogg.burst = 5;
    settings.polling.first_after = "0s".into();
    settings.polling.min_interval = "300ms".into();
    settings.polling.max_interval = "1s".into();
    // JoggAI's pushes on: background polls relax to the safety net.
    settings.jogg.webhook_secret = SecretSetting(Some(DEMO_PUSH_SECRET.into()));
    settings.polling.safety_net_interval = "1s".into();
    settings.callbacks.urls = vec![receiver.url("hooks/app")];
    settings.callbacks.secret = SecretSetting(Some(DEMO_SECRET.into()));
    settings.callbacks.video_secret = SecretSetting(Some(DEMO_VIDEO_SECRET.into()));
    settings.callbacks.retry_schedule = vec!["500ms".into(), "1s".into(), "2s".into()];
    // The per-video callback URL below points at the loopback receiver,
    // which the target guard would (rightly) refuse in production.
    settings.callbacks.allow_private_targets = true;
    let config = settings.validate().context("demo configuration")?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let relay = App::build(config).await.context("cannot build the relay")?;
    let relay_task = tokio::spawn(relay.run(listener, shutdown.clone()));

    println!("jogg-relay demo");
    println!("  relay API        {api}");
    println!("  JoggAI simulator {}", upstream.base_url);
    println!("  callback sink    {}", receiver.url("hooks/app"));
    println!(
        "  database         {}",
        dir.path().join("demo.db").display()
    );
    println!("  JoggAI pushes to {api}/webhooks/jogg (one of two lost on purpose)");
    println!();
    upstream
        .state
        .set_pushes(Some(PushSettings::new(
            reqwest::Url::parse(&format!("{api}/webhooks/jogg"))?,
            DEMO_PUSH_SECRET,
        )))
        .context("cannot turn the simulator's pushes on")?;

    // The receiver refuses the first callback it gets, to show a retry
    // carrying the same event id.
    receiver.state.script("hooks/app", [Reply::Status(503)]);
    let client = crate::outbound::client_builder().build()?;
    let mut expected = 0;
    for (id, timeline, own_callback) in scenario() {
        upstream.state.script(id, timeline);
        let mut body = json!({"video_id": id, "metadata": {"demo": true}});
        expected += 1;
        if own_callback {
            body["callback_url"] = json!(receiver.url("hooks/own"));
            expected += 1;
        }
        let response = client
            .post(format!("{api}/v1/videos"))
            .json(&body)
            .send()
            .await?;
        println!(
            "{} enqueued {id:<24} -> HTTP {}",
            stamp(started),
            response.status().as_u16()
        );
    }
    for id in [PUSHED, PUSH_LOST] {
        let render = RenderJob {
            arrival: Duration::ZERO,
            queued: Duration::ZERO,
            render: PUSHED_RENDER,
            fails: false,
        };
        upstream
            .state
            .script_render(id, render, upstream.state.now());
        expected += 1;
        let response = client
            .post(format!("{api}/v1/videos"))
            .json(&json!({"video_id": id, "metadata": {"demo": true}}))
            .send()
            .await?;
        println!(
            "{} enqueued {id:<24} -> HTTP {}  (renders {:.1}s)",
            stamp(started),
            response.status().as_u16(),
            PUSHED_RENDER.as_secs_f64()
        );
    }
    upstream.state.lose_push(PUSH_LOST);
    println!();

    let mut seen_transitions: HashMap<String, usize> = HashMap::new();
    let mut seen_callbacks = 0;
    let mut seen_pushes = 0;
    let ids: Vec<&str> = scenario()
        .into_iter()
        .map(|(id, _, _)| id)
        .chain([PUSHED, PUSH_LOST])
        .collect();
    let outcome = loop {
        let pushes = upstream.state.pushes();
        for push in pushes.iter().skip(seen_pushes) {
            let what = if push.dropped {
                "LOST (the relay will notice at its next safety-net poll)".to_owned()
            } else {
                "sent to the relay".to_owned()
            };
            println!(
                "{} JoggAI push {:<19} {:<24} {what}",
                stamp(started),
                push.event,
                push.video_id
            );
        }
        seen_pushes = pushes.len();
        for &id in &ids {
            let video: Value = client
                .get(format!("{api}/v1/videos/{id}"))
                .send()
                .await?
                .json()
                .await?;
            let transitions = video["transitions"].as_array().cloned().unwrap_or_default();
            let seen = seen_transitions.entry(id.to_owned()).or_default();
            for transition in transitions.iter().skip(*seen) {
                println!(
                    "{} {id:<24} {:<6} {} -> {}",
                    stamp(started),
                    transition["kind"].as_str().unwrap_or("?"),
                    transition["from"].as_str().unwrap_or("(none)"),
                    transition["to"].as_str().unwrap_or("?"),
                );
            }
            *seen = transitions.len();
        }
        let received = receiver.state.received();
        for callback in received.iter().skip(seen_callbacks) {
            let mut line = format!(
                "{} callback /{:<10} {:<31} {:<24} {}",
                stamp(started),
                callback.path,
                callback.event.as_deref().unwrap_or("?"),
                callback.body["data"]["video_id"].as_str().unwrap_or("?"),
                callback.event_id.as_deref().unwrap_or("?"),
            );
            let _ = write!(
                line,
                "  signatures {}",
                if callback.verified() {
                    "verified"
                } else {
                    "INVALID"
                }
            );
            if !callback.accepted() {
                let _ = write!(
                    line,
                    "  (receiver answered {:?}; the relay will retry)",
                    callback.reply
                );
            }
            println!("{line}");
        }
        seen_callbacks = received.len();
        let verified = received
            .iter()
            .filter(|c| c.accepted() && c.verified())
            .count();
        if received.iter().any(|c| !c.verified()) {
            break Err(anyhow::anyhow!(
                "a callback arrived with an invalid signature"
            ));
        }
        if verified >= expected {
            break Ok(verified);
        }
        if started.elapsed() > DEADLINE {
            break Err(anyhow::anyhow!(
                "only {verified} of {expected} callbacks arrived within {DEADLINE:?}"
            ));
        }
        tokio::time::sleep(REFRESH).await;
    };

    // How the relay learned of each completion, as its metrics say.
    let metrics = client
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let learned = |by: &str| {
        let series = format!("jogg_relay_completions_learned_total{{by=\"{by}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .unwrap_or("?")
            .to_owned()
    };
    let (by_push, by_poll) = (learned("push"), learned("poll"));

    shutdown.cancel();
    relay_task
        .await
        .context("relay task")?
        .context("relay stopped with an error")?;
    let verified = outcome?;
    if verified != expected {
        bail!("expected {expected} callbacks, got {verified}");
    }
    println!();
    println!(
        "all {expected} callbacks arrived with valid signatures in {:.1}s; \
         duplicates would carry the same event_id",
        started.elapsed().as_secs_f64()
    );
    println!(
        "completions learned by push: {by_push} ({PUSHED}, confirmed by one poll the moment \
         its push arrived), by poll: {by_poll} (the others, {PUSH_LOST} at the safety-net poll \
         after its lost push)"
    );
    Ok(())
}
