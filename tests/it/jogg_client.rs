//! The upstream client on the wire: URL building, the key header, transport
//! failures and oversized bodies.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use jogg_relay::config::{SecretSetting, Settings};
use jogg_relay::domain::VideoId;
use jogg_relay::jogg::{JoggClient, PollAnswer, StatusClass};
use jogg_relay::sim::{SIM_API_KEY, SimUpstream, Timeline};

/// A client with the default request timeout (10 s: a normal answer never
/// times out, however loaded the machine); see [`client_with_timeout`].
fn client(base_url: &str, api_key: &str) -> JoggClient {
    client_with_timeout(base_url, api_key, "10s")
}

fn client_with_timeout(base_url: &str, api_key: &str, timeout: &str) -> JoggClient {
    let mut settings = Settings::default();
    settings.jogg.base_url = base_url.to_owned();
    settings.jogg.api_key = SecretSetting(Some(api_key.to_owned()));
    settings.jogg.timeout = timeout.into();
    JoggClient::new(&settings.validate().unwrap().jogg).unwrap()
}

#[test]
fn status_url_keeps_a_base_path_and_encodes_the_id() {
    let id = VideoId::parse("abc-123_X").unwrap();
    let plain = client("https://api.jogg.ai", "k");
    assert_eq!(
        plain.status_url(&id).as_str(),
        "https://api.jogg.ai/v2/avatar_video/abc-123_X"
    );
    let prefixed = client("http://127.0.0.1:9/proxy/", "k");
    assert_eq!(
        prefixed.status_url(&id).as_str(),
        "http://127.0.0.1:9/proxy/v2/avatar_video/abc-123_X"
    );
}

#[tokio::test]
async fn sends_the_key_and_reads_the_status() {
    let sim = SimUpstream::start().await.unwrap();
    sim.state.script("k1", Timeline::completes(0, 0));
    let answer = client(sim.base_url.as_str(), SIM_API_KEY)
        .poll(&VideoId::parse("k1").unwrap())
        .await;
    let PollAnswer::Status(status) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(status.class, StatusClass::Completed);
    assert!(sim.state.requests()[0].key_ok);

    let refused = client(sim.base_url.as_str(), "wrong-key")
        .poll(&VideoId::parse("k1").unwrap())
        .await;
    assert!(matches!(refused, PollAnswer::Paused(_)), "{refused:?}");
}

#[tokio::test]
async fn transport_failures_are_transient() {
    // Nothing listens on port 1 of loopback.
    let answer = client("http://127.0.0.1:1", "k")
        .poll(&VideoId::parse("x").unwrap())
        .await;
    assert_eq!(answer, PollAnswer::Transient("connection failed".into()));
}

#[tokio::test]
async fn oversized_and_never_ending_answers_are_cut_off() {
    let router = Router::new()
        .route(
            "/huge/v2/avatar_video/{id}",
            get(|| async { "x".repeat(8 * 1024 * 1024) }),
        )
        .route(
            "/hang/v2/avatar_video/{id}",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let id = VideoId::parse("x").unwrap();
    let huge = client(&format!("http://{address}/huge/"), "k")
        .poll(&id)
        .await;
    assert!(
        matches!(&huge, PollAnswer::Transient(why) if why.contains("larger than")),
        "{huge:?}"
    );
    // The answer never comes (an hour); a second is enough to see the
    // timeout.
    let hang = client_with_timeout(&format!("http://{address}/hang/"), "k", "1s")
        .poll(&id)
        .await;
    assert_eq!(hang, PollAnswer::Transient("timeout".into()));
}
