//! `jogg-relay serve` (the real binary) against the in-process simulator.

use std::time::Duration;

use jogg_relay::sim::{SIM_API_KEY, SimUpstream, Timeline};
use serde_json::json;

use crate::helpers::{RelayConfig, RelayProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tracks_videos_to_their_terminal_states() {
    let sim = SimUpstream::start().await.unwrap();
    sim.state.script("s-ok", Timeline::completes(1, 1));
    sim.state
        .script("s-success", Timeline::completes(0, 2).observed_spelling());
    sim.state.script("s-fail", Timeline::fails(1, 0));
    sim.state
        .script("s-fail2", Timeline::fails(0, 1).observed_spelling());
    // "s-missing" is not scripted: not found, abandoned once the grace ends.
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::new(dir.path())
        .extra(&format!(
            "[jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\nrequests_per_second = 50.0\n\
             [polling]\nfirst_after = \"0s\"\nmin_interval = \"20ms\"\nmax_interval = \"50ms\"\n\
             not_found_grace = \"100ms\"\n",
            sim.base_url
        ))
        .write();
    let mut relay = RelayProcess::start(
        &config,
        &[("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str())],
    );
    let videos: Vec<_> = ["s-ok", "s-success", "s-fail", "s-fail2", "s-missing"]
        .iter()
        .map(|id| json!({"video_id": id}))
        .collect();
    let batch = relay
        .post("/v1/videos/batch", json!({"videos": videos}))
        .await;
    assert_eq!(batch.status, 200);

    // The relay logs every transition after committing it; wait for the
    // five terminal state transitions in its own output.
    let log = relay.take_log();
    let lines = tokio::task::spawn_blocking(move || {
        let mut terminal = 0;
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while terminal < 5 {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or_else(|_| panic!("five terminal transitions within a minute: {seen:#?}"));
            if line.contains("transition") && line.contains("active") {
                terminal += 1;
            }
            seen.push(line);
        }
        seen
    })
    .await
    .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("s-ok") && l.contains("completed")),
        "{lines:#?}"
    );

    for (id, state) in [
        ("s-ok", "completed"),
        ("s-success", "completed"),
        ("s-fail", "failed"),
        ("s-fail2", "failed"),
        ("s-missing", "abandoned"),
    ] {
        let video = relay.get(&format!("/v1/videos/{id}")).await;
        assert_eq!(video.json["state"], state, "{id}: {:?}", video.json);
    }
    let requests = sim.state.requests();
    assert!(
        requests.iter().all(|r| r.key_ok),
        "every request carried the key"
    );
    assert_eq!(sim.state.max_in_flight_per_video(), 1);
}
