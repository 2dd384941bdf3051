//! Reliability: the real binary, killed and faulted the way production
//! fails, against the simulated upstream and receiver. Sizes come from
//! environment variables so the same tests run much larger by hand:
//!
//! - `JOGG_RELAY_CRASH_VIDEOS` (1000) and `JOGG_RELAY_CRASH_KILLS` (10)
//! - `JOGG_RELAY_FAULT_VIDEOS` (200)
//! - `JOGG_RELAY_OUTAGE_VIDEOS` (50)
//! - `JOGG_RELAY_TEST_SEED` (random; printed, to repeat a run)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jogg_relay::config::{DatabaseConfig, WebhookSecret};
use jogg_relay::sim::{Fault, SIM_API_KEY, SimReceiver, SimUpstream, Timeline};
use jogg_relay::store::Store;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{RelayConfig, RelayProcess};

const SECRET: &str = "whsec_cmVsaWFiaWxpdHktc3VpdGUtc2VjcmV0";

/// A size from the environment, or `default`.
fn size(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's seed: from `JOGG_RELAY_TEST_SEED`, or random (and printed).
fn seed() -> u64 {
    crate::helpers::test_seed()
}

/// A relay configuration for `dir`, polling `sim` and calling `receiver`'s
/// `/hook`, fast schedules and a generous budget.
fn write_config(
    dir: &Path,
    sim: &SimUpstream,
    receiver: &SimReceiver,
    retry_schedule: &str,
) -> PathBuf {
    RelayConfig::new(dir)
        .server_keys("shutdown_grace = \"1s\"\n")
        .extra(&format!(
            "[jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\ntimeout = \"500ms\"\n\
             requests_per_second = 2000.0\nburst = 50\nmax_in_flight = 32\n\
             [polling]\nfirst_after = \"0s\"\nmin_interval = \"10ms\"\nmax_interval = \"20ms\"\n\
             [callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n\
             retry_schedule = {retry_schedule}\n",
            sim.base_url,
            receiver.url("hook"),
        ))
        .write()
}

fn start(config: &Path, sim: &SimUpstream) -> RelayProcess {
    RelayProcess::start(
        config,
        &[("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str())],
    )
}

/// Scripts `count` videos with varied timelines; returns id → ending
/// (`completed` or `failed`).
fn script_videos(
    sim: &SimUpstream,
    prefix: &str,
    count: usize,
    rng: &mut fastrand::Rng,
) -> HashMap<String, &'static str> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i:05}");
            let (pending, processing) = (rng.u32(0..3), rng.u32(0..3));
            let mut timeline = if rng.u8(0..10) == 0 {
                Timeline::fails(pending, processing)
            } else {
                Timeline::completes(pending, processing)
            };
            if rng.bool() {
                timeline = timeline.observed_spelling();
            }
            let ending = if matches!(timeline.ending, jogg_relay::sim::Ending::Failed) {
                "failed"
            } else {
                "completed"
            };
            sim.state.script(&id, timeline);
            (id, ending)
        })
        .collect()
}

/// Enqueues every id through the batch endpoint; every item must be acknowledged.
async fn enqueue_all(relay: &RelayProcess, ids: &[String]) {
    for chunk in ids.chunks(1000) {
        let videos: Vec<Value> = chunk.iter().map(|id| json!({"video_id": id})).collect();
        let reply = relay
            .post("/v1/videos/batch", json!({"videos": videos}))
            .await
            .json;
        assert!(
            reply["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] == "created")
        );
    }
}

/// Waits until every id in `expected` has an accepted, verified callback.
async fn wait_for_all_callbacks(receiver: &SimReceiver, expected: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let received = receiver.state.received();
        let mut delivered: Vec<&str> = received
            .iter()
            .filter(|r| r.accepted())
            .filter_map(|r| r.body["data"]["video_id"].as_str())
            .collect();
        delivered.sort_unstable();
        delivered.dedup();
        if delivered.len() >= expected {
            return;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "only {} of {expected} videos had their callback after {limit:?}",
            delivered.len()
        );
        receiver
            .state
            .wait_for_accepted(receiver.state.accepted_count() + 1, remaining)
            .await;
    }
}

/// The upstream simulator and a receiver that verifies signatures made with
/// [`SECRET`].
async fn simulators() -> (SimUpstream, SimReceiver) {
    let secret = WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").unwrap();
    (
        SimUpstream::start().await.unwrap(),
        SimReceiver::start(Some(secret)).await.unwrap(),
    )
}

async fn open_store(dir: &Path) -> Store {
    Store::open(&DatabaseConfig::parse(&format!("sqlite://{}/relay.db", dir.display())).unwrap())
        .await
        .unwrap()
}

/// Rank of a status in a timeline: a valid path only moves forward.
fn rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "processing" => 1,
        _ => 2,
    }
}

/// Checks the end state of every video: terminal as scripted, a valid
/// transition log, callbacks delivered, duplicates with the same event id.
async fn check_outcome(
    dir: &Path,
    receiver: &SimReceiver,
    endings: &HashMap<String, &'static str>,
) {
    let store = open_store(dir).await;
    let videos: Vec<(i64, String, String, Option<String>)> = store
        .video_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|video| (video.id, video.video_id, video.state, video.event_id))
        .collect();
    assert_eq!(
        videos.len(),
        endings.len(),
        "every acknowledged video is stored"
    );
    let transitions = store.transition_rows().await.unwrap();
    let mut log: HashMap<i64, Vec<(String, Option<String>, String)>> = HashMap::new();
    for transition in transitions {
        log.entry(transition.video_rowid).or_default().push((
            transition.kind,
            transition.from_value,
            transition.to_value,
        ));
    }
    let mut callbacks: HashMap<String, Vec<&jogg_relay::sim::Received>> = HashMap::new();
    let received = receiver.state.received();
    for callback in &received {
        assert!(
            crate::oracle::verified(SECRET, callback),
            "signatures verify: {callback:?}"
        );
        let id = callback.body["data"]["video_id"]
            .as_str()
            .unwrap()
            .to_owned();
        callbacks.entry(id).or_default().push(callback);
    }
    for (rowid, video_id, state, event_id) in &videos {
        let ending = endings[video_id];
        assert_eq!(state, ending, "{video_id} ends as scripted");
        let entries = &log[rowid];
        // Status transitions form a chain from "none", moving forward only;
        // exactly one state transition closes the log.
        let statuses: Vec<_> = entries.iter().filter(|e| e.0 == "status").collect();
        let mut previous: Option<&String> = None;
        for (_, from, to) in &statuses {
            assert_eq!(
                from.as_ref(),
                previous,
                "{video_id}: chained transitions {entries:?}"
            );
            if let Some(previous) = previous {
                assert!(
                    rank(to) > rank(previous),
                    "{video_id}: went backwards {entries:?}"
                );
            }
            previous = Some(to);
        }
        let states: Vec<_> = entries.iter().filter(|e| e.0 == "state").collect();
        assert_eq!(
            states.len(),
            1,
            "{video_id}: one terminal transition {entries:?}"
        );
        assert_eq!(
            entries.last().unwrap().0,
            "state",
            "{video_id}: nothing after the terminal state"
        );
        assert_eq!(states[0].2, ending);
        // Every callback for the video carries the same event, the one stored.
        let sent = &callbacks[video_id];
        assert!(sent.iter().any(|c| c.accepted()), "{video_id} delivered");
        for callback in sent {
            assert_eq!(
                callback.event_id.as_deref(),
                event_id.as_deref(),
                "{video_id}: one event id"
            );
            assert_eq!(
                callback.body["data"]["status"], ending,
                "{video_id}: terminal state never changed"
            );
        }
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_loses_nothing() {
    let count = size("JOGG_RELAY_CRASH_VIDEOS", 1000);
    let kills = size("JOGG_RELAY_CRASH_KILLS", 10);
    let mut rng = fastrand::Rng::with_seed(seed());
    let (sim, receiver) = simulators().await;
    receiver.state.fail_randomly(0.2, 500, rng.u64(..));
    let endings = script_videos(&sim, "crash", count, &mut rng);
    let mut ids: Vec<String> = endings.keys().cloned().collect();
    ids.sort();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &sim,
        &receiver,
        r#"["20ms", "40ms", "80ms", "160ms", "320ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms"]"#,
    );

    let mut relay = start(&config, &sim);
    enqueue_all(&relay, &ids).await;
    let started = Instant::now();
    for kill in 0..kills {
        // Let it work for a random while (measured in upstream requests and
        // callbacks, not in time), then kill it without warning.
        let polls = sim.state.request_count() + rng.usize(20..(count * 3 / kills).max(21));
        let callbacks = receiver.state.received().len() + rng.usize(0..(count / kills).max(1));
        let limit = Duration::from_secs(60);
        if rng.bool() {
            sim.state.wait_for_requests(polls, limit).await;
        } else {
            receiver.state.wait_for_received(callbacks, limit).await;
        }
        relay.signal("KILL");
        relay.wait();
        println!(
            "kill {} after {:?}: {} polls, {} callbacks",
            kill + 1,
            started.elapsed(),
            sim.state.request_count(),
            receiver.state.received().len()
        );
        relay = start(&config, &sim);
    }
    wait_for_all_callbacks(&receiver, count, Duration::from_secs(300)).await;
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
    println!(
        "{count} videos, {kills} kills: {:?}, {} polls, {} callbacks ({} duplicates of delivered events)",
        started.elapsed(),
        sim.state.request_count(),
        receiver.state.received().len(),
        receiver
            .state
            .received()
            .iter()
            .filter(|r| r.accepted())
            .count()
            - count,
    );
    assert_eq!(
        sim.state.max_in_flight_per_video(),
        1,
        "never two polls of one video at once"
    );
    check_outcome(dir.path(), &receiver, &endings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_never_decide_an_outcome() {
    let count = size("JOGG_RELAY_FAULT_VIDEOS", 200);
    let mut rng = fastrand::Rng::with_seed(seed());
    let (sim, receiver) = simulators().await;
    let endings = script_videos(&sim, "fault", count, &mut rng);
    let mut ids: Vec<String> = endings.keys().cloned().collect();
    ids.sort();
    sim.state.set_random_faults(
        0.3,
        vec![
            Fault::Http(500),
            Fault::Http(502),
            Fault::Http(503),
            Fault::Slow(Duration::from_secs(2)),
            Fault::NonJson,
            Fault::Business(50000),
            // 429s pause all polling; with `Retry-After: 0` they cost no
            // wall time here (the growing default pause without the header
            // is covered by the poller tests).
            Fault::HttpRateLimit(Some("0".into())),
            Fault::BusinessRateLimit(Some("0".into())),
        ],
        rng.u64(..),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &sim,
        &receiver,
        r#"["20ms", "50ms", "100ms", "200ms"]"#,
    );
    let relay = start(&config, &sim);
    enqueue_all(&relay, &ids).await;
    // Faults for a good while: about three answers per video, or until
    // every video has been answered with its end (short timelines may not
    // need three; waiting for requests that never come stalled this test).
    let mut seen = sim.state.request_count();
    while seen < count * 3 && sim.state.terminal_answers().len() < count {
        if !sim
            .state
            .wait_for_requests(seen + 1, Duration::from_secs(30))
            .await
        {
            break;
        }
        seen = sim.state.request_count();
    }
    // The faults really were answered (the simulator's own record).
    let log = sim.state.requests();
    let faulted = log.iter().filter(|request| request.fault.is_some()).count();
    println!("{faulted} of {} requests answered with a fault", log.len());
    assert!(
        faulted * 5 >= log.len(),
        "only {faulted} of {} requests were answered with a fault",
        log.len()
    );
    let store = open_store(dir.path()).await;
    let decided: Vec<(String, String)> = store
        .video_rows()
        .await
        .unwrap()
        .into_iter()
        .filter(|video| video.state != "active")
        .map(|video| (video.video_id, video.state))
        .collect();
    for (id, state) in &decided {
        assert_eq!(state, endings[id], "{id} decided by a fault");
    }
    store.close().await;
    // Faults stop: everything reaches its true end.
    sim.state.set_random_faults(0.0, Vec::new(), 0);
    wait_for_all_callbacks(&receiver, count, Duration::from_secs(120)).await;
    check_outcome(dir.path(), &receiver, &endings).await;
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outage_then_recovery_delivers_everything_in_retry_order() {
    let count = size("JOGG_RELAY_OUTAGE_VIDEOS", 50);
    let mut rng = fastrand::Rng::with_seed(seed());
    let (sim, receiver) = simulators().await;
    receiver.state.set_outage(Some(503));
    let endings = script_videos(&sim, "outage", count, &mut rng);
    let mut ids: Vec<String> = endings.keys().cloned().collect();
    ids.sort();
    let dir = tempfile::tempdir().unwrap();
    let schedule = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0];
    let config = write_config(
        dir.path(),
        &sim,
        &receiver,
        r#"["100ms", "200ms", "400ms", "800ms", "1600ms", "3200ms", "6400ms", "10s"]"#,
    );
    let relay = start(&config, &sim);
    enqueue_all(&relay, &ids).await;
    // The outage lasts until every video has failed at least four attempts
    // (0.1 + 0.2 + 0.4 s of retries and more), then the receiver recovers.
    let mut attempts_per_video: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while attempts_per_video.len() < count || attempts_per_video.values().any(|n| *n < 4) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "not every video failed four attempts: {attempts_per_video:?}"
        );
        receiver
            .state
            .wait_for_received(receiver.state.received().len() + 1, remaining)
            .await;
        attempts_per_video.clear();
        for callback in receiver.state.received() {
            *attempts_per_video
                .entry(
                    callback.body["data"]["video_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
                .or_default() += 1;
        }
    }
    receiver.state.set_outage(None);
    wait_for_all_callbacks(&receiver, count, Duration::from_secs(60)).await;
    check_outcome(dir.path(), &receiver, &endings).await;

    // Per video: attempts spaced by the schedule (± 10 % jitter), the
    // original event id throughout, delivered last.
    let mut by_video: HashMap<String, Vec<jogg_relay::sim::Received>> = HashMap::new();
    for callback in receiver.state.received() {
        by_video
            .entry(
                callback.body["data"]["video_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
            .or_default()
            .push(callback);
    }
    for (id, attempts) in &by_video {
        for (k, pair) in attempts.windows(2).enumerate() {
            let gap = (pair[1].at - pair[0].at).as_secs_f64();
            assert!(
                gap >= schedule[k] * 0.9 - 0.005,
                "{id}: attempt {} after {gap:.3}s, schedule says {}",
                k + 2,
                schedule[k]
            );
            assert_eq!(pair[0].event_id, pair[1].event_id);
        }
        assert!(
            attempts.last().unwrap().accepted(),
            "{id}: the last attempt is the accepted one"
        );
        assert_eq!(
            attempts.iter().filter(|a| a.accepted()).count(),
            1,
            "{id}: delivered once"
        );
    }
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_survived_and_recovered_from() {
    let sim = SimUpstream::start().await.unwrap();
    let receiver = SimReceiver::start(None).await.unwrap();
    sim.state
        .set_default_timeline(Some(Timeline::completes(2, 2)));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver, r#"["50ms"]"#);
    let mut relay = start(&config, &sim);
    let enqueue = |id: String| relay.post("/v1/videos", json!({"video_id": id}));
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        assert_eq!(enqueue(id.clone()).await.status, 201);
        acknowledged.push(id);
    }

    // Another process takes the write lock and holds it past the busy timeout.
    let store = open_store(dir.path()).await;
    let blocker = store.hold_write_lock().await.unwrap();
    let ready = relay.get("/readyz").await;
    assert_eq!(ready.status, 503);
    let during = enqueue("during".into()).await;
    let status = during.status;
    let body = during.json;
    assert_eq!(
        status, 503,
        "not acknowledged while the database is locked: {body}"
    );
    assert_eq!(body["error"]["code"], "storage_unavailable");
    assert_eq!(relay.get("/healthz").await.status, 200);
    blocker.release().await.unwrap();
    store.close().await;

    // It recovers by itself: ready again, accepting, and finishing its work.
    assert_eq!(relay.get("/readyz").await.status, 200);
    for i in 0..5 {
        let id = format!("after-{i}");
        assert_eq!(enqueue(id.clone()).await.status, 201);
        acknowledged.push(id);
    }
    wait_for_all_callbacks(&receiver, acknowledged.len(), Duration::from_secs(60)).await;
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0));
    let log: Vec<String> = relay.take_log().try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("database is locked")),
        "the trouble is logged clearly"
    );
    assert!(!log.iter().any(|l| l.contains("panicked")), "no panic");
    let store = open_store(dir.path()).await;
    let stored: Vec<String> = store
        .video_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|video| video.video_id)
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "{id} acknowledged and kept");
    }
    assert!(!stored.contains(&"during".to_owned()));
    store.close().await;
}
