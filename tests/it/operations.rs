//! Operating the relay: metrics, readiness, secrets in logs, shutdown.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use jogg_relay::app::App;
use jogg_relay::domain::Millis;
use jogg_relay::sim::{AuthFailure, Fault, Reply, SIM_API_KEY, SimReceiver, SimUpstream, Timeline};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::helpers::{RelayConfig, RelayProcess, TOKEN, spawn_manual_app};

/// A parsed Prometheus text exposition: family → type, and every sample.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    /// Family name → type.
    pub(crate) types: HashMap<String, String>,
    /// (sample name, labels as written, value).
    pub(crate) samples: Vec<(String, String, f64)>,
}

impl Exposition {
    /// Parses the text format strictly enough to catch what `promtool check
    /// metrics` would reject: unknown line shapes, bad names or values,
    /// samples without a TYPE, duplicate TYPE lines.
    pub(crate) fn parse(text: &str) -> Self {
        let mut exposition = Exposition::default();
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
                })
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(valid_name(name), "bad family name: {line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    exposition.types.insert(name.into(), kind.into()).is_none(),
                    "duplicate TYPE: {line}"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(valid_name(rest.split(' ').next().unwrap()), "{line}");
            } else {
                assert!(!line.starts_with('#'), "unknown comment: {line}");
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    other => other
                        .parse()
                        .unwrap_or_else(|_| panic!("bad value: {line}")),
                };
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect("closing brace");
                        for pair in labels.split(',').filter(|p| !p.is_empty()) {
                            let (key, quoted) = pair.split_once('=').expect("label=value");
                            assert!(
                                valid_name(key) && quoted.starts_with('"') && quoted.ends_with('"'),
                                "{line}"
                            );
                        }
                        (name, labels)
                    }
                    None => (series, ""),
                };
                assert!(valid_name(name), "bad sample name: {line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix).filter(|base| {
                            exposition
                                .types
                                .get(*base)
                                .is_some_and(|t| t == "histogram")
                        })
                    })
                    .unwrap_or(name);
                assert!(
                    exposition.types.contains_key(family),
                    "sample without TYPE: {line}"
                );
                exposition.samples.push((name.into(), labels.into(), value));
            }
        }
        exposition
    }

    /// The value of the sample `name{labels}`.
    pub(crate) fn value(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
    }
}

#[tokio::test]
async fn metrics_after_a_run_have_every_family_with_its_type() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let hook = receiver.url("hook");
    let app = spawn_manual_app(|s| s.callbacks.urls = vec![hook]).await;
    app.sim.state.script("m-done", Timeline::completes(0, 0));
    app.sim.state.script("m-wait", Timeline::completes(5, 0));
    app.sim.state.inject_for("m-err", [Fault::Http(502)]);
    for id in ["m-done", "m-wait", "m-err", "m-cancel"] {
        app.enqueue(json!({"video_id": id})).await;
    }
    app.send("DELETE", "/v1/videos/m-cancel", None).await;
    app.step(Millis::now()).await;
    app.deliver(Millis::now()).await;

    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let metrics = Exposition::parse(&text);
    for (family, kind) in [
        ("jogg_relay_videos", "gauge"),
        ("jogg_relay_polls_total", "counter"),
        ("jogg_relay_upstream_request_duration_seconds", "histogram"),
        ("jogg_relay_transitions_total", "counter"),
        ("jogg_relay_deliveries_total", "counter"),
        ("jogg_relay_delivery_attempt_duration_seconds", "histogram"),
        ("jogg_relay_poll_lag_seconds", "gauge"),
        ("jogg_relay_delivery_lag_seconds", "gauge"),
        ("jogg_relay_rate_limiter_wait_seconds", "histogram"),
        ("jogg_relay_upstream_paused", "gauge"),
        ("jogg_relay_upstream_throttled", "gauge"),
        ("jogg_relay_build_info", "gauge"),
    ] {
        assert_eq!(
            metrics.types.get(family).map(String::as_str),
            Some(kind),
            "{family} in\n{text}"
        );
    }
    assert_eq!(
        metrics.value("jogg_relay_videos", "state=\"completed\""),
        1.0
    );
    assert_eq!(metrics.value("jogg_relay_videos", "state=\"active\""), 2.0);
    assert_eq!(
        metrics.value("jogg_relay_videos", "state=\"cancelled\""),
        1.0
    );
    assert_eq!(
        metrics.value("jogg_relay_polls_total", "outcome=\"terminal\""),
        1.0
    );
    assert_eq!(
        metrics.value("jogg_relay_polls_total", "outcome=\"error\""),
        1.0,
        "the 502"
    );
    assert_eq!(
        metrics.value("jogg_relay_polls_total", "outcome=\"changed\""),
        1.0,
        "m-wait's first answer"
    );
    assert_eq!(
        metrics.value("jogg_relay_transitions_total", "to=\"completed\""),
        1.0
    );
    assert_eq!(
        metrics.value("jogg_relay_transitions_total", "to=\"cancelled\""),
        1.0
    );
    assert_eq!(
        metrics.value("jogg_relay_deliveries_total", "outcome=\"delivered\""),
        1.0
    );
    assert_eq!(
        metrics.value("jogg_relay_upstream_request_duration_seconds_count", ""),
        3.0
    );
    assert_eq!(
        metrics.value("jogg_relay_delivery_attempt_duration_seconds_count", ""),
        1.0
    );
    assert_eq!(
        metrics.value("jogg_relay_upstream_paused", "reason=\"invalid_api_key\""),
        0.0
    );
    assert_eq!(
        metrics.value(
            "jogg_relay_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );

    // The pause shows up too.
    app.sim
        .state
        .set_auth_failure(Some(AuthFailure::BusinessCode));
    app.step(Millis::now().plus(Duration::from_secs(3600)))
        .await;
    let text = app.metrics_text().await;
    let metrics = Exposition::parse(&text);
    assert_eq!(
        metrics.value("jogg_relay_upstream_paused", "reason=\"invalid_api_key\""),
        1.0
    );
    assert!(metrics.value("jogg_relay_poll_lag_seconds", "") >= 0.0);
    app.stop().await;
}

#[tokio::test]
async fn readyz_flips_for_the_database_and_back() {
    let app = spawn_manual_app(|_| {}).await;
    assert_eq!(app.send("GET", "/readyz", None).await.status, 200);
    // Another process holds the write lock.
    let store = app.store().await;
    let blocker = store.hold_write_lock().await.unwrap();
    // The probe that just committed answers for a second (README): the
    // held lock shows once that second is over, when the next probe waits
    // out its own limit. Real time, as the relay's probe waits on SQLite.
    let started = std::time::Instant::now();
    let ready = loop {
        let ready = app.send("GET", "/readyz", None).await;
        if ready.status != 200 || started.elapsed() > Duration::from_secs(10) {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.assert_json_error(503), "database_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        app.send("GET", "/healthz", None).await.status,
        200,
        "alive all the same"
    );
    blocker.release().await.unwrap();
    assert_eq!(app.send("GET", "/readyz", None).await.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn readyz_and_enqueue_answer_503_while_shutting_down() {
    let sim = SimUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::helpers::test_settings(dir.path(), sim.base_url.as_str())
        .validate()
        .unwrap();
    let relay = App::build(config).await.unwrap();
    let shutdown = CancellationToken::new();
    let router = jogg_relay::api::router(relay.api_state(shutdown.clone()));
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert_eq!(
        router
            .clone()
            .oneshot(get("/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    shutdown.cancel();
    let response = router.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");
    let enqueue = Request::post("/v1/videos")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"video_id":"late"}"#))
        .unwrap();
    assert_eq!(router.oneshot(enqueue).await.unwrap().status(), 503);
}

fn relay_config(
    dir: &std::path::Path,
    sim: &SimUpstream,
    receiver: &SimReceiver,
    extra: &str,
) -> std::path::PathBuf {
    RelayConfig::new(dir)
        .server_keys("shutdown_grace = \"1s\"\n")
        .extra(&format!(
            "[jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\ntimeout = \"30s\"\n\
             [polling]\nfirst_after = \"0s\"\nmin_interval = \"20ms\"\nmax_interval = \"20ms\"\n\
             [callbacks]\nurls = [\"{}\"]\nsecret = \"whsec_b3BzLXNlY3JldC12YWx1ZS0xMjM=\"\ntimeout = \"30s\"\n\
             retry_schedule = [\"50ms\"]\n{extra}",
            sim.base_url,
            receiver.url("hook"),
        ))
        .write()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_errors_or_check_config() {
    let sim = SimUpstream::start().await.unwrap();
    let receiver = SimReceiver::start(None).await.unwrap();
    sim.state.script("secret-video", Timeline::completes(0, 1));
    let dir = tempfile::tempdir().unwrap();
    let config = relay_config(dir.path(), &sim, &receiver, "");
    let mut relay = RelayProcess::start(
        &config,
        &[
            ("RUST_LOG", "trace"),
            ("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str()),
        ],
    );
    let wrong = relay
        .send_as("GET", "/v1/videos", Some("guess"), None)
        .await;
    assert_eq!(wrong.status, 401);
    let created = relay
        .post("/v1/videos", json!({"video_id": "secret-video"}))
        .await;
    assert_eq!(created.status, 201);
    assert!(
        receiver
            .state
            .wait_for_accepted(1, Duration::from_secs(30))
            .await,
        "callback delivered"
    );
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
    let log: Vec<String> = relay.take_log().try_iter().collect();
    assert!(log.len() > 20, "trace logging produced output");
    let (code, check, check_err) =
        crate::helpers::run_binary(&["--config", config.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(code, 0);
    let everything = format!("{}\n{check}\n{check_err}\n{:?}", log.join("\n"), wrong.json);
    for secret in [
        SIM_API_KEY,
        TOKEN,
        "whsec_b3BzLXNlY3JldC12YWx1ZS0xMjM=",
        "b3BzLXNlY3JldC12YWx1ZS0xMjM",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_video_and_event_ids() {
    let sim = SimUpstream::start().await.unwrap();
    let receiver = SimReceiver::start(None).await.unwrap();
    sim.state.script("json-video", Timeline::completes(0, 0));
    let dir = tempfile::tempdir().unwrap();
    let config = relay_config(dir.path(), &sim, &receiver, "[log]\nformat = \"json\"\n");
    let mut relay = RelayProcess::start(
        &config,
        &[("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str())],
    );
    relay
        .post("/v1/videos", json!({"video_id": "json-video"}))
        .await;
    assert!(
        receiver
            .state
            .wait_for_accepted(1, Duration::from_secs(30))
            .await
    );
    relay.signal("TERM");
    relay.wait();
    let lines: Vec<Value> = relay
        .take_log()
        .try_iter()
        .map(|line| serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let transition = lines
        .iter()
        .find(|l| l["fields"]["message"] == "transition" && l["fields"]["to"] == "completed")
        .expect("a transition event");
    assert_eq!(transition["fields"]["video_id"], "json-video");
    let delivery = lines
        .iter()
        .find(|l| l["fields"]["message"] == "delivery attempt")
        .expect("a delivery event");
    assert_eq!(delivery["fields"]["video_id"], "json-video");
    assert!(
        delivery["fields"]["event_id"]
            .as_str()
            .unwrap()
            .starts_with("evt_")
    );
    assert_eq!(delivery["fields"]["outcome"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_flight_exits_within_the_grace_and_hands_work_back() {
    let sim = SimUpstream::start().await.unwrap();
    let receiver = SimReceiver::start(None).await.unwrap();
    // One video completes at once and its callback hangs; the other's poll
    // hangs.
    sim.state.script("quick", Timeline::completes(0, 0));
    sim.state.script("stuck", Timeline::completes(0, 0));
    sim.state
        .inject_for("stuck", [Fault::Slow(Duration::from_secs(60))]);
    receiver
        .state
        .script("hook", [Reply::Slow(Duration::from_secs(60))]);
    let dir = tempfile::tempdir().unwrap();
    let config = relay_config(dir.path(), &sim, &receiver, "");
    let mut relay = RelayProcess::start(
        &config,
        &[("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str())],
    );
    for id in ["quick", "stuck"] {
        relay.post("/v1/videos", json!({"video_id": id})).await;
    }
    assert!(
        sim.state
            .wait_for_requests(2, Duration::from_secs(30))
            .await,
        "both polled"
    );
    assert!(
        receiver
            .state
            .wait_for_received(1, Duration::from_secs(30))
            .await,
        "callback in flight"
    );

    let signalled = std::time::Instant::now();
    relay.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = relay.wait();
        (status, relay)
    })
    .await
    .unwrap()
    .0;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(10),
        "exited after {took:?} with a 1 s grace"
    );

    // Everything unfinished is handed back, due at once for the next start.
    let handed_back_by = Millis::now();
    let db = jogg_relay::config::DatabaseConfig::parse(&format!(
        "sqlite://{}/relay.db",
        dir.path().display()
    ))
    .unwrap();
    let store = jogg_relay::store::Store::open(&db).await.unwrap();
    let video = store.video_row("stuck").await.unwrap().unwrap();
    let (state, lease, next_poll) = (video.state, video.lease_until, video.next_poll_at.unwrap());
    assert_eq!((state.as_str(), lease), ("active", None));
    assert!(next_poll <= handed_back_by);
    let delivery = store.delivery_rows().await.unwrap().remove(0);
    let (state, lease, next_attempt) = (
        delivery.state,
        delivery.lease_until,
        delivery.next_attempt_at.unwrap(),
    );
    assert_eq!((state.as_str(), lease), ("pending", None));
    assert!(next_attempt <= handed_back_by);
    store.close().await;

    // The next start takes both at once.
    let relay = RelayProcess::start(
        &config,
        &[("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str())],
    );
    assert!(
        receiver
            .state
            .wait_for_accepted(1, Duration::from_secs(30))
            .await,
        "callback resent"
    );
    assert!(
        sim.state
            .wait_for_requests(3, Duration::from_secs(30))
            .await,
        "stuck video polled again"
    );
    drop(relay);
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = RelayConfig::new(dir.path())
        .extra("[jogg]\napi_key = \"k\"\n")
        .write();
    let relay = RelayProcess::start(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // 200 ms: pings every 100 ms.
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut buffer = [0u8; 256];
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Datagrams arrive in order: READY, then watchdog pings.
    while messages
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 2
    {
        let n = socket.recv(&mut buffer).expect("a notification");
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        assert!(std::time::Instant::now() < deadline, "{messages:?}");
    }
    assert!(messages[0].contains("READY=1"), "{messages:?}");
    relay.signal("TERM");
    // Pings may still arrive before it; they must not keep this waiting.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = socket.recv(&mut buffer).expect("a notification");
        if String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no STOPPING=1");
    }
}

/// The selectors of the relay's metrics in a PromQL expression: each
/// `jogg_relay_…` name with its `label="value"` matchers (other matcher
/// kinds are left out).
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("jogg_relay_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        if let Some(inner) = tail[end..].strip_prefix('{') {
            let inner = &inner[..inner.find('}').expect("closing brace")];
            for pair in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some((key, value)) = pair.split_once('=')
                    && !key.ends_with(['!', '='])
                    && !value.starts_with(['~', '='])
                {
                    matchers.push((
                        key.trim().to_owned(),
                        value.trim().trim_matches('"').to_owned(),
                    ));
                }
            }
        }
        found.push((name, matchers));
        rest = &tail[end..];
    }
    found
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_series_the_relay_exports() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json"))
            .expect("the dashboard is valid JSON");

    // A run that touches every family: polls, a finished video (render
    // times, polls per finished video), a delivery.
    let receiver = SimReceiver::start(None).await.unwrap();
    let hook = receiver.url("hook");
    let app = spawn_manual_app(|s| {
        s.callbacks.urls = vec![hook];
        s.polling.min_interval = "1ms".into();
        s.polling.max_interval = "1ms".into();
    })
    .await;
    app.sim.state.script("g-done", Timeline::completes(1, 1));
    app.enqueue(json!({"video_id": "g-done"})).await;
    app.step_until_idle().await;
    assert_eq!(app.video("g-done").await.json["state"], "completed");
    app.deliver(Millis::now()).await;
    let metrics = Exposition::parse(&app.metrics_text().await);

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let mut queried = Vec::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let found = selectors(expr);
            assert!(!found.is_empty(), "no relay metric in {expr}");
            for (name, matchers) in found {
                // A histogram is queried through its _bucket/_sum/_count series.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix).filter(|base| {
                            metrics.types.get(*base).is_some_and(|t| t == "histogram")
                        })
                    })
                    .unwrap_or(&name);
                assert!(
                    metrics.types.contains_key(family),
                    "{expr}: the relay exports no {family}"
                );
                for (key, value) in &matchers {
                    let pair = format!("{key}=\"{value}\"");
                    assert!(
                        metrics.samples.iter().any(
                            |(n, labels, _)| *n == name && labels.split(',').any(|l| l == pair)
                        ),
                        "{expr}: no {name} sample has {pair}"
                    );
                }
                queried.push(family.to_owned());
            }
        }
    }
    for family in [
        "jogg_relay_render_time_seconds",
        "jogg_relay_polls_per_finished_video",
    ] {
        assert!(
            queried.iter().any(|q| q == family),
            "no panel shows {family}"
        );
    }
    app.stop().await;
}
