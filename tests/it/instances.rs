//! Several relays on one PostgreSQL database: the real binary, three
//! processes sharing the work, the upstream budget and the callbacks,
//! killed with SIGKILL while they work. The oracles are the simulator's
//! strict token bucket and the receiver's record of what it was sent.
//!
//! `JOGG_RELAY_INSTANCES_VIDEOS` (150) and `JOGG_RELAY_INSTANCES_KILLS` (4)
//! size the run; `JOGG_RELAY_TEST_SEED` repeats one.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jogg_relay::config::WebhookSecret;
use jogg_relay::sim::{Ending, SIM_API_KEY, SimReceiver, SimUpstream, Timeline};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{RelayConfig, RelayProcess, scratch_postgres};

const SECRET: &str = "whsec_c2V2ZXJhbC1pbnN0YW5jZXMtc2VjcmV0";

/// The budget the simulator enforces and the relays are given, together.
const RATE: f64 = 50.0;
const BURST: u32 = 4;

/// A size from the environment, or `default`.
fn size(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One configuration for every instance: the whole budget (not divided by
/// the number of instances), fast schedules, callbacks to `receiver`.
fn write_config(dir: &Path, sim: &SimUpstream, receiver: &SimReceiver) -> std::path::PathBuf {
    RelayConfig::new(dir)
        .server_keys("shutdown_grace = \"1s\"\n")
        .extra(&format!(
            "[jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\ntimeout = \"500ms\"\n\
             requests_per_second = {RATE:?}\nburst = {BURST}\nmax_in_flight = 8\n\
             [polling]\nfirst_after = \"0s\"\nmin_interval = \"10ms\"\nmax_interval = \"50ms\"\n\
             [callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n\
             retry_schedule = [\"20ms\", \"50ms\", \"100ms\", \"200ms\", \"400ms\", \"500ms\", \
             \"500ms\", \"500ms\", \"500ms\", \"500ms\", \"500ms\", \"500ms\"]\n",
            sim.base_url,
            receiver.url("hook"),
        ))
        .write()
}

/// Starts one instance on the PostgreSQL database `url`.
fn start(config: &Path, sim: &SimUpstream, url: &str) -> RelayProcess {
    RelayProcess::start(
        config,
        &[
            ("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str()),
            ("JOGG_RELAY__DATABASE__URL", url),
        ],
    )
}

/// Waits until `receiver` has accepted `count` callbacks, or `limit`.
async fn wait_accepted(receiver: &SimReceiver, count: usize, limit: Duration) {
    assert!(
        receiver.state.wait_for_accepted(count, limit).await,
        "only {} of {count} callbacks accepted within {limit:?}",
        receiver.state.accepted_count()
    );
}

/// The videos with at least one accepted callback.
fn delivered(receiver: &SimReceiver) -> usize {
    let mut ids: Vec<String> = receiver
        .state
        .received()
        .iter()
        .filter(|r| r.accepted())
        .filter_map(|r| r.body["data"]["video_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// Three relays on one database against one upstream with a strict
/// bucket of the configured budget, one of them killed with SIGKILL and
/// replaced several times while they work: every acknowledged video is
/// finished and its callback received, duplicates carry the same event id,
/// every relay reports the same end state, and the upstream never saw the
/// budget exceeded, across kills and restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_share_work_and_budget_through_kills() {
    let Some(cluster) = scratch_postgres() else {
        return;
    };
    let url = cluster.create_database().await.expect("a database");
    let videos = size("JOGG_RELAY_INSTANCES_VIDEOS", 150);
    let kills = size("JOGG_RELAY_INSTANCES_KILLS", 4);
    let mut rng = fastrand::Rng::with_seed(crate::helpers::test_seed());
    let secret = WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").unwrap();
    let sim = SimUpstream::start().await.unwrap();
    let receiver = SimReceiver::start(Some(secret)).await.unwrap();
    sim.state.set_budget(RATE, BURST);

    let mut endings: HashMap<String, &'static str> = HashMap::new();
    for i in 0..videos {
        let id = format!("multi-{i:04}");
        let (pending, processing) = (rng.u32(0..3), rng.u32(0..3));
        let timeline = if rng.u8(0..10) == 0 {
            Timeline::fails(pending, processing)
        } else {
            Timeline::completes(pending, processing)
        };
        let ending = match timeline.ending {
            Ending::Failed => "failed",
            _ => "completed",
        };
        sim.state.script(&id, timeline);
        endings.insert(id, ending);
    }

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver);
    let mut relays: Vec<RelayProcess> = (0..3).map(|_| start(&config, &sim, &url)).collect();

    // Every instance takes enqueues: batches round robin.
    let mut ids: Vec<&String> = endings.keys().collect();
    ids.sort_unstable();
    for (n, chunk) in ids.chunks(10).enumerate() {
        let relay = &relays[n % relays.len()];
        let batch: Vec<Value> = chunk.iter().map(|id| json!({"video_id": id})).collect();
        let reply = relay
            .post("/v1/videos/batch", json!({"videos": batch}))
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        assert!(
            reply.json["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] == "created"),
            "{:?}",
            reply.json
        );
    }

    // Kill one instance at a time while the work is under way (each
    // after a further share of the callbacks), and start a fresh one.
    let started = Instant::now();
    for kill in 1..=kills {
        wait_accepted(
            &receiver,
            kill * videos / (kills + 2),
            Duration::from_secs(60),
        )
        .await;
        let victim = rng.usize(0..relays.len());
        relays[victim].signal("KILL");
        drop(relays.remove(victim));
        relays.push(start(&config, &sim, &url));
    }
    let deadline = started + Duration::from_secs(90);
    while delivered(&receiver) < videos {
        assert!(
            Instant::now() < deadline,
            "only {} of {videos} videos delivered",
            delivered(&receiver)
        );
        wait_accepted(
            &receiver,
            receiver.state.accepted_count() + 1,
            deadline.saturating_duration_since(Instant::now()),
        )
        .await;
    }

    assert_eq!(sim.state.violations(), 0, "the shared budget held");
    let mut events: HashMap<String, String> = HashMap::new();
    for callback in receiver.state.received() {
        assert!(crate::oracle::verified(SECRET, &callback), "{callback:?}");
        let id = callback.body["data"]["video_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(callback.body["data"]["status"], endings[&id], "{id}");
        let event = callback.event_id.clone().expect("an event id");
        let first = events.entry(id.clone()).or_insert_with(|| event.clone());
        assert_eq!(*first, event, "{id}: every callback carries one event id");
    }
    // Every instance shows the same end state, with the event sent.
    for (n, relay) in relays.iter().enumerate() {
        for id in ids.iter().step_by(7) {
            let video = relay.get(&format!("/v1/videos/{id}")).await.json;
            assert_eq!(video["state"], endings[*id], "instance {n}: {id}");
            assert_eq!(
                video["event_id"],
                events[*id].as_str(),
                "instance {n}: {id}"
            );
        }
    }
}

/// Polls `path` on `relay` until it answers `status`, within `limit`.
async fn wait_for_status(relay: &RelayProcess, path: &str, status: u16, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let reply = relay.get(path).await;
        if reply.status == status {
            return reply.json;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {} {:?} after {limit:?}",
            reply.status,
            reply.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database goes away (an immediate shutdown, as in a crash) and comes
/// back: meanwhile the relay stays up, `/readyz` and enqueues answer 503
/// with a JSON error; afterwards it is ready again by itself, what it had
/// acknowledged before is still there, and new work is polled and
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rides_out_a_database_restart() {
    // A cluster of its own: the test stops its server.
    let mut cluster = match jogg_relay::scratch_postgres::ScratchCluster::start() {
        Ok(cluster) => cluster,
        Err(jogg_relay::scratch_postgres::ScratchError::NotInstalled) => {
            crate::helpers::skip_without_postgres();
            return;
        }
        Err(err) => panic!("{err}"),
    };
    let url = cluster.create_database().await.expect("a database");
    let secret = WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").unwrap();
    let sim = SimUpstream::start().await.unwrap();
    let receiver = SimReceiver::start(Some(secret)).await.unwrap();
    for id in ["before", "during", "after"] {
        sim.state.script(id, Timeline::completes(0, 1));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver);
    let relay = start(&config, &sim, &url);

    let created = relay
        .post("/v1/videos", json!({"video_id": "before"}))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    wait_accepted(&receiver, 1, Duration::from_secs(30)).await;

    cluster.stop();
    let unready = wait_for_status(&relay, "/readyz", 503, Duration::from_secs(30)).await;
    assert!(unready["error"]["code"].is_string(), "{unready}");
    let refused = relay
        .post("/v1/videos", json!({"video_id": "during"}))
        .await;
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert!(
        refused.json["error"]["code"].is_string(),
        "{:?}",
        refused.json
    );
    assert_eq!(
        relay.get("/healthz").await.status,
        200,
        "the process stays up"
    );

    cluster.restart().expect("the server starts again");
    wait_for_status(&relay, "/readyz", 200, Duration::from_secs(30)).await;
    let before = relay.get("/v1/videos/before").await;
    assert_eq!(before.json["state"], "completed", "{:?}", before.json);
    let created = relay.post("/v1/videos", json!({"video_id": "after"})).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .state
        .received()
        .iter()
        .any(|callback| callback.accepted() && callback.body["data"]["video_id"] == "after")
    {
        assert!(
            Instant::now() < deadline,
            "no callback for the video enqueued after"
        );
        receiver
            .state
            .wait_for_accepted(
                receiver.state.accepted_count() + 1,
                Duration::from_millis(200),
            )
            .await;
    }
    let after = relay.get("/v1/videos/after").await;
    assert_eq!(after.json["state"], "completed", "{:?}", after.json);
}
