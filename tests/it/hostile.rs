//! Hostile input, generated: raw HTTP requests at the API, configuration
//! files and environments at the loader, answers at the upstream parser.
//! Case counts: `JOGG_RELAY_HOSTILE_CASES` (300 HTTP requests),
//! `PROPTEST_CASES` (proptest's own default of 256) for the others. Every
//! generator is seeded from `JOGG_RELAY_TEST_SEED` (random when unset) and
//! prints the seed.

use std::time::{Duration, SystemTime};

use jogg_relay::config::Settings;
use jogg_relay::domain::VideoId;
use jogg_relay::jogg::answer::classify;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TOKEN, spawn_app_with};

/// One raw request.
#[derive(Debug, Clone)]
struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("POST".to_owned()),
        Just("DELETE".to_owned()),
        Just("PUT".to_owned()),
        Just("PATCH".to_owned()),
        Just("HEAD".to_owned()),
        Just("OPTIONS".to_owned()),
        "[A-Z]{1,12}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[A-Za-z0-9_-]{1,20}",
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%00".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%C3%A9".to_owned()),
        "[a-z]{200,300}",
        "[!-~&&[^/?#%]]{1,10}",
    ];
    prop_oneof![
        Just("/v1/videos".to_owned()),
        Just("/v1/videos/batch".to_owned()),
        Just("/healthz".to_owned()),
        Just("/metrics".to_owned()),
        segment.clone().prop_map(|s| format!("/v1/videos/{s}")),
        segment
            .clone()
            .prop_map(|s| format!("/v1/videos/{s}/redeliver")),
        (segment.clone(), segment.clone()).prop_map(|(a, b)| format!("/v1/{a}/{b}")),
        "[a-z=&%0-9]{0,40}".prop_map(|q| format!("/v1/videos?{q}")),
        segment.prop_map(|s| format!("/{s}")),
    ]
}

fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof!["[A-Za-z0-9_-]{1,40}", ".{0,20}", Just(String::new())];
    prop_oneof![
        id.clone().prop_map(|id| serde_json::json!({"video_id": id}).to_string().into_bytes()),
        (id.clone(), id.clone())
            .prop_map(|(a, b)| format!(r#"{{"video_id":{a:?},"video_id":{b:?}}}"#).into_bytes()),
        proptest::collection::vec(id.clone(), 0..30).prop_map(|ids| {
            let videos: Vec<_> = ids.into_iter().map(|id| serde_json::json!({"video_id": id})).collect();
            serde_json::json!({"videos": videos}).to_string().into_bytes()
        }),
        (1usize..20_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        (1usize..5_000).prop_map(|depth| {
            let mut s = String::new();
            for _ in 0..depth {
                s.push_str(r#"{"video_id":"#);
            }
            s.push('1');
            s.push_str(&"}".repeat(depth));
            s.into_bytes()
        }),
        "[0-9]{1,400}".prop_map(|digits| format!(r#"{{"video_id":{digits}}}"#).into_bytes()),
        Just(br#"{"video_id":"x","metadata":{"n":1e999999}}"#.to_vec()),
        Just(br#"{"video_id":-1.7976931348623157e309}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..512),
        (1usize..200_000).prop_map(|n| format!(r#"{{"video_id":"{}"}}"#, "a".repeat(n)).into_bytes()),
        id.prop_map(|id| serde_json::json!({"video_id": id, "callback_url": "javascript:alert(1)", "metadata": [1]}).to_string().into_bytes()),
    ]
}

fn request() -> impl Strategy<Value = RawRequest> {
    let content_type = prop_oneof![
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
        Just(None),
    ];
    let auth = prop_oneof![
        3 => Just(Some(format!("Bearer {TOKEN}"))),
        1 => Just(Some("Bearer wrong".to_owned())),
        1 => Just(Some(format!("bearer {TOKEN}"))),
        1 => "[ -~]{0,60}".prop_map(Some),
        1 => Just(None),
    ];
    let extra = proptest::collection::vec(("x-[a-z]{1,10}", "[ -~]{0,100}"), 0..4);
    // Most requests get past routing, content type and authentication, so
    // the hostile bodies reach the handlers; the rest are random throughout.
    let targeted = (
        prop::sample::select(vec!["/v1/videos", "/v1/videos/batch"]),
        json_body(),
    )
        .prop_map(|(path, body)| RawRequest {
            method: "POST".into(),
            path: path.into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), format!("Bearer {TOKEN}")),
            ],
            body,
        });
    let random = (method(), path(), content_type, auth, extra, json_body()).prop_map(
        |(method, path, content_type, auth, extra, body)| {
            let mut headers = extra;
            if let Some(ct) = content_type {
                headers.push(("content-type".into(), ct));
            }
            if let Some(auth) = auth {
                headers.push(("authorization".into(), auth));
            }
            RawRequest {
                method,
                path,
                headers,
                body,
            }
        },
    );
    prop_oneof![3 => targeted, 2 => random]
}

/// Sends a request as raw bytes; returns the status, or `None` when the
/// server closed the connection without an answer.
async fn send_raw(address: &str, request: &RawRequest) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n",
        request.method, request.path
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", request.body.len()));
    // The server may answer (413) and close before the whole body is sent.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&request.body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_cause_a_5xx_and_never_reach_the_upstream_invalid() {
    let cases: usize = std::env::var("JOGG_RELAY_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let app = spawn_app_with(|s| {
        s.polling.first_after = "0s".into();
        s.polling.min_interval = "10ms".into();
        s.polling.max_interval = "10ms".into();
        s.jogg.requests_per_second = 1000.0;
    })
    .await;
    let address = app.base.trim_start_matches("http://").to_owned();
    // Seeded (and the seed printed), so a failing run can be repeated.
    let mut runner = TestRunner::new(crate::helpers::proptest_config());
    let strategy = request();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..cases {
        let request = strategy.new_tree(&mut runner).unwrap().current();
        let status = send_raw(&address, &request).await;
        if let Some(status) = status {
            assert!(
                status < 500,
                "{status} for {} {} {:?} ({} body bytes)",
                request.method,
                request.path,
                request.headers,
                request.body.len()
            );
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    println!("statuses over {cases} random requests: {statuses:?}");
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "still healthy");
    // Let the poller see whatever was accepted, then check what reached it.
    let stored = app.count("videos").await as usize;
    if stored > 0 {
        app.sim
            .state
            .wait_for_requests(1, Duration::from_secs(30))
            .await;
    }
    println!(
        "{stored} videos stored, {} upstream requests",
        app.sim.state.request_count()
    );
    for logged in app.sim.state.requests() {
        assert!(
            VideoId::parse(&logged.raw_id).is_ok(),
            "invalid id reached the upstream: {:?}",
            logged.raw_id
        );
    }
    app.stop().await;
}

/// A value of any TOML type, or garbage.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,25}",
        "-?[0-9]{1,5}\\.[0-9]{1,5}",
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        Just("true".to_owned()),
        "\"[ -~&&[^\"\\\\]]{0,30}\"".prop_map(|s| s),
        Just("\"10s\"".to_owned()),
        Just("\"0ms\"".to_owned()),
        Just("\"whsec_\"".to_owned()),
        Just("[\"5s\", 3]".to_owned()),
        Just("[]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        "[ -~]{0,10}",
    ]
}

fn known_key() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(vec![
        ("server", "bind"),
        ("server", "token"),
        ("server", "token_file"),
        ("server", "shutdown_grace"),
        ("server", "max_connections"),
        ("server", "header_timeout"),
        ("server", "body_timeout"),
        ("server", "write_timeout"),
        ("database", "url"),
        ("jogg", "base_url"),
        ("jogg", "api_key"),
        ("jogg", "api_key_file"),
        ("jogg", "timeout"),
        ("jogg", "requests_per_second"),
        ("jogg", "burst"),
        ("jogg", "max_in_flight"),
        ("polling", "first_after"),
        ("polling", "min_interval"),
        ("polling", "max_interval"),
        ("polling", "multiplier"),
        ("polling", "jitter"),
        ("polling", "give_up_after"),
        ("polling", "not_found_grace"),
        ("callbacks", "urls"),
        ("callbacks", "secret"),
        ("callbacks", "secret_file"),
        ("callbacks", "timeout"),
        ("callbacks", "retry_schedule"),
        ("callbacks", "allow_private_targets"),
        ("log", "format"),
        ("nope", "key"),
        ("jogg", "api_kee"),
    ])
}

proptest! {
    // Seeded from JOGG_RELAY_TEST_SEED (printed), like every randomized test.
    #![proptest_config(crate::helpers::proptest_config())]

    #[test]
    fn random_configuration_is_accepted_or_refused_by_key_never_a_panic(
        entries in proptest::collection::vec((known_key(), toml_value()), 0..6),
        env in proptest::collection::vec((known_key(), "[ -~]{0,20}"), 0..3),
        garbage in prop::option::of("[ -~\n]{0,80}"),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = String::new();
        for ((section, key), value) in &entries {
            toml.push_str(&format!("[{section}]\n{key} = {value}\n"));
        }
        if let Some(garbage) = garbage {
            toml.push_str(&garbage);
        }
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, &toml).unwrap();
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|((section, key), value)| (format!("JOGG_RELAY__{}__{}", section.to_uppercase(), key.to_uppercase()), value))
            .collect();
        let result = std::panic::catch_unwind(|| Settings::load(Some(&path), env.clone()).and_then(|s| s.validate().map(|_| ())));
        let outcome = result.unwrap_or_else(|_| panic!("panicked on {toml:?} {env:?}"));
        if let Err(err) = outcome {
            prop_assert!(!err.key.is_empty(), "no key named: {err:?}");
            prop_assert!(err.to_string().contains(&err.key));
        }
    }

    #[test]
    fn any_upstream_answer_is_classified_without_panicking(
        status in prop_oneof![Just(200u16), Just(429), Just(401), 100u16..600],
        retry_after in prop::option::of("[ -~]{0,40}"),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            json_answer().prop_map(|v| v.to_string().into_bytes()),
            (1usize..3000).prop_map(|d| format!("{{\"code\":0,\"data\":{}1{}}}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        ],
    ) {
        let _ = classify(status, retry_after.as_deref(), &body, SystemTime::now());
    }
}

/// JSON shaped like an answer, with every field of any type.
fn json_answer() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,20}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("completed")),
        Just(serde_json::Value::from(0)),
    ];
    let any_json = leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    (any_json.clone(), any_json.clone(), any_json.clone(), any_json).prop_map(|(code, status, url, error)| {
        serde_json::json!({"code": code, "msg": "x", "data": {"status": status, "video_url": url, "created_at": url, "error": error}})
    })
}
