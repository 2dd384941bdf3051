//! Several relays on one PostgreSQL database: `serve` processes of the real
//! binary sharing a database of the test binary's throwaway cluster (or a
//! cluster of the test's own, when the test restarts its server), against
//! one simulated JoggAI with a strict token bucket and one callback
//! receiver. What they must hold together is judged from the simulators'
//! own records, never from the relays' database or API:
//!
//! - the upstream's request log and bucket: every video was answered with
//!   its terminal status, no request went over the shared budget, nothing
//!   was sent while JoggAI's 429 pause lasted;
//! - the receiver's record: every acknowledged video's callback arrived,
//!   signed, and every copy of it carries the same event id.
//!
//! The one exception, the list's paging while relays insert, is judged
//! against the same list read again once nothing is being written.
//!
//! Each test skips loudly without PostgreSQL's server binaries (and fails
//! under `JOGG_RELAY_REQUIRE_POSTGRES=1`). The kill test's seed comes from
//! `JOGG_RELAY_TEST_SEED` (random, printed).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jogg_relay::config::WebhookSecret;
use jogg_relay::scratch_postgres::{ScratchCluster, ScratchError};
use jogg_relay::sim::{Fault, LoggedRequest, SIM_API_KEY, SimReceiver, SimUpstream, Timeline};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    RelayConfig, RelayProcess, StallingProxy, scratch_postgres, skip_without_postgres, test_seed,
};

/// The callback signing secret (`whsec_` + base64 of 27 bytes).
const SECRET: &str = "whsec_c2V2ZXJhbC1yZWxheXMtb25lLWRhdGFiYXNl";

/// JoggAI's budget as the simulator enforces it, and as every relay is
/// configured (`jogg.requests_per_second`, `jogg.burst`): the relays share
/// it, so together they must stay inside it.
const RATE: f64 = 30.0;
const BURST: u32 = 5;

/// A relay configuration in `dir`: the simulator as upstream with the
/// shared budget, fast exponential polling, callbacks to `receiver`'s
/// `/hook` retried quickly. The database comes from the environment
/// ([`start`]), the file's SQLite path is never used.
fn write_config(dir: &Path, sim: &SimUpstream, receiver: &SimReceiver) -> PathBuf {
    RelayConfig::new(dir)
        .server_keys("shutdown_grace = \"1s\"\n")
        .extra(&format!(
            "[jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\ntimeout = \"2s\"\n\
             requests_per_second = {RATE:?}\nburst = {BURST}\n\
             [polling]\nstrategy = \"exponential\"\nfirst_after = \"0s\"\n\
             min_interval = \"100ms\"\nmax_interval = \"200ms\"\n\
             [callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\ntimeout = \"1s\"\n\
             retry_schedule = [\"50ms\", \"100ms\", \"200ms\", \"300ms\", \"500ms\", \"500ms\", \
             \"500ms\", \"500ms\", \"500ms\", \"500ms\", \"500ms\", \"500ms\"]\n",
            sim.base_url,
            receiver.url("hook"),
        ))
        .write()
}

/// `serve` with `config` on the PostgreSQL `database`, polling `sim`.
fn start(config: &Path, database: &str, sim: &SimUpstream) -> RelayProcess {
    RelayProcess::start(
        config,
        &[
            ("JOGG_RELAY__JOGG__BASE_URL", sim.base_url.as_str()),
            ("JOGG_RELAY__DATABASE__URL", database),
        ],
    )
}

/// The upstream simulator, counting requests over [`RATE`]/[`BURST`], and
/// a receiver verifying signatures made with [`SECRET`].
async fn simulators() -> (SimUpstream, SimReceiver) {
    let secret = WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").unwrap();
    let sim = SimUpstream::start().await.unwrap();
    sim.state.set_budget(RATE, BURST);
    (sim, SimReceiver::start(Some(secret)).await.unwrap())
}

/// Scripts `count` videos that end after one to three answers (one in ten
/// fails); returns id → the terminal status the callback must carry.
fn script_videos(
    sim: &SimUpstream,
    prefix: &str,
    count: usize,
    rng: &mut fastrand::Rng,
) -> HashMap<String, &'static str> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i:04}");
            let (pending, processing) = (rng.u32(0..2), rng.u32(0..2));
            let (timeline, ending) = if rng.u8(0..10) == 0 {
                (Timeline::fails(pending, processing), "failed")
            } else {
                (Timeline::completes(pending, processing), "completed")
            };
            sim.state.script(&id, timeline);
            (id, ending)
        })
        .collect()
}

/// Enqueues `ids` through `relays` in turn (`turn` carries on between
/// calls): batches of random sizes, and now and then a single video
/// through `POST /v1/videos`. Every video must be acknowledged as created.
async fn enqueue_round_robin(
    relays: &[RelayProcess],
    ids: &[String],
    turn: &mut usize,
    rng: &mut fastrand::Rng,
) {
    let mut rest = ids;
    while !rest.is_empty() {
        let relay = &relays[*turn % relays.len()];
        *turn += 1;
        let take = rng.usize(1..=25).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        if take == 1 && rng.bool() {
            let reply = relay
                .post("/v1/videos", json!({"video_id": chunk[0]}))
                .await;
            assert_eq!(reply.status, 201, "{} {reply:?}", chunk[0]);
            continue;
        }
        let videos: Vec<Value> = chunk.iter().map(|id| json!({"video_id": id})).collect();
        let reply = relay
            .post("/v1/videos/batch", json!({"videos": videos}))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let results = reply.json["results"].as_array().expect("batch results");
        assert_eq!(results.len(), chunk.len(), "{reply:?}");
        for (id, result) in chunk.iter().zip(results) {
            assert_eq!(result["video_id"], json!(id), "{reply:?}");
            assert_eq!(result["outcome"], "created", "{reply:?}");
        }
    }
}

/// The ids with a callback the receiver accepted.
fn delivered(receiver: &SimReceiver) -> HashSet<String> {
    receiver
        .state
        .received()
        .iter()
        .filter(|callback| callback.accepted())
        .filter_map(|callback| callback.body["data"]["video_id"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Waits (at most `limit`) until every id of `expected` has an accepted
/// callback; names the missing ones otherwise.
async fn wait_for_callbacks<'a>(
    receiver: &SimReceiver,
    expected: impl IntoIterator<Item = &'a String> + Clone,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let done = delivered(receiver);
        let missing: Vec<&String> = expected
            .clone()
            .into_iter()
            .filter(|id| !done.contains(*id))
            .collect();
        if missing.is_empty() {
            return;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "after {limit:?}, {} videos had no callback: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        receiver
            .state
            .wait_for_accepted(receiver.state.accepted_count() + 1, remaining)
            .await;
    }
}

/// Checks the receiver's record against `endings` (every acknowledged
/// video and its terminal status): each video's callbacks all verify, carry
/// its terminal status and one event id, at least one was accepted, and no
/// callback names a video that was not acknowledged. Returns the number of
/// duplicate deliveries (accepted copies beyond the first).
fn check_callbacks(receiver: &SimReceiver, endings: &HashMap<String, &'static str>) -> usize {
    let mut per_video: HashMap<String, Vec<jogg_relay::sim::Received>> = HashMap::new();
    for callback in receiver.state.received() {
        assert!(
            crate::oracle::verified(SECRET, &callback),
            "signatures verify: {callback:?}"
        );
        let id = callback.body["data"]["video_id"]
            .as_str()
            .expect("a video id")
            .to_owned();
        assert!(
            endings.contains_key(&id),
            "a callback for {id}, never acknowledged"
        );
        per_video.entry(id).or_default().push(callback);
    }
    let mut duplicates = 0;
    for (id, ending) in endings {
        let callbacks = per_video
            .get(id)
            .unwrap_or_else(|| panic!("{id}: acknowledged, no callback"));
        let accepted = callbacks.iter().filter(|c| c.accepted()).count();
        assert!(accepted >= 1, "{id}: no callback accepted");
        duplicates += accepted - 1;
        let event_id = callbacks[0].event_id.clone();
        assert!(event_id.is_some(), "{id}: no event id");
        for callback in callbacks {
            assert_eq!(callback.event_id, event_id, "{id}: one event id");
            assert_eq!(
                callback.body["data"]["status"], *ending,
                "{id}: the terminal status JoggAI answered"
            );
        }
    }
    duplicates
}

/// The ids the simulator answered with their terminal status (its record
/// of what the relays learned).
fn answered_terminal(sim: &SimUpstream) -> HashSet<String> {
    sim.state.terminal_answers().into_keys().collect()
}

/// Three relays on one database, enqueued through in turn, each killed
/// (SIGKILL) and replaced by a fresh process at random moments: every
/// acknowledged video still reaches its end and its callback, duplicates
/// keep the event id, and the three never exceed the one budget, across
/// the kills and restarts. Then, with one relay left idle, a video stored
/// by another process (the `enqueue` command) is polled at once: the
/// database's notification woke the relay, not its idle look once a
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_killed_at_random_lose_nothing_and_share_one_budget() {
    const VIDEOS: usize = 180;
    const KILLS: usize = 4;
    let Some(cluster) = scratch_postgres() else {
        return;
    };
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(test_seed());
    let database = cluster.create_database().await.unwrap();
    let (sim, receiver) = simulators().await;
    // Some callbacks fail, so that redeliveries cross kills and instances.
    receiver.state.fail_randomly(0.1, 500, rng.u64(..));
    let endings = script_videos(&sim, "fleet", VIDEOS, &mut rng);
    let mut ids: Vec<String> = endings.keys().cloned().collect();
    ids.sort();
    rng.shuffle(&mut ids);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver);
    let mut relays: Vec<RelayProcess> = (0..3).map(|_| start(&config, &database, &sim)).collect();

    // One wave of videos per round; after each but the last, one relay is
    // killed once the fleet has sent a random number of requests: at most
    // one per video not yet answered with its end, so they are still at
    // work, the budget their bottleneck (a wave is due at once, far more
    // than 30 requests a second).
    let waves: Vec<&[String]> = ids.chunks(VIDEOS.div_ceil(KILLS + 1)).collect();
    let mut turn = 0;
    let mut enqueued = 0;
    for (round, wave) in waves.iter().enumerate() {
        enqueue_round_robin(&relays, wave, &mut turn, &mut rng).await;
        enqueued += wave.len();
        if round == KILLS {
            break;
        }
        let terminal = answered_terminal(&sim);
        let unfinished = ids[..enqueued]
            .iter()
            .filter(|id| !terminal.contains(*id))
            .count();
        let target = sim.state.request_count() + rng.usize(1..=unfinished);
        assert!(
            sim.state
                .wait_for_requests(target, Duration::from_secs(30))
                .await,
            "the relays sent no {target}th request"
        );
        let victim = rng.usize(0..relays.len());
        relays[victim].signal("KILL");
        relays[victim].wait();
        println!(
            "round {round}: killed relay {victim} after {:?} ({} requests, {} callbacks)",
            started.elapsed(),
            sim.state.request_count(),
            receiver.state.received().len()
        );
        relays[victim] = start(&config, &database, &sim);
    }
    wait_for_callbacks(&receiver, &ids, Duration::from_secs(45)).await;
    println!(
        "{VIDEOS} videos, {KILLS} kills: all delivered after {:?}, {} requests, {} callbacks",
        started.elapsed(),
        sim.state.request_count(),
        receiver.state.received().len()
    );

    // The upstream's record: every video was answered with its end, and
    // never over the budget nor twice at once.
    let terminal = answered_terminal(&sim);
    let unanswered: Vec<&String> = ids.iter().filter(|id| !terminal.contains(*id)).collect();
    assert!(
        unanswered.is_empty(),
        "never answered terminal: {unanswered:?}"
    );
    assert_eq!(sim.state.violations(), 0, "requests over the shared budget");
    assert_eq!(
        sim.state.max_in_flight_per_video(),
        1,
        "never two polls of one video at once"
    );
    // The receiver's record.
    let duplicates = check_callbacks(&receiver, &endings);
    println!("{duplicates} duplicate deliveries, each with its event id");

    // Wake-ups through the database. Two relays stop (cleanly); the third
    // is idle, looking for due work on its own once a second. A video the
    // `enqueue` command stores (another process, no relay involved) is
    // announced by the database's trigger and polled at once.
    for relay in &mut relays[1..] {
        relay.signal("TERM");
        assert_eq!(relay.wait().code(), Some(0), "a clean shutdown");
    }
    let mut latencies = Vec::new();
    for i in 0..8 {
        let id = format!("woken-{i}");
        sim.state.script(&id, Timeline::completes(0, 0));
        let before = sim.state.request_count();
        let (config, database) = (config.clone(), database.clone());
        let enqueue_id = id.clone();
        let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
            crate::helpers::run_binary(
                &["--config", config.to_str().unwrap(), "enqueue", &enqueue_id],
                &[("JOGG_RELAY__DATABASE__URL", &database)],
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{stdout}{stderr}");
        // The command exits after its commit, the moment the trigger's
        // notification goes out.
        let stored = Instant::now();
        let polled = loop {
            let remaining = Duration::from_secs(5).saturating_sub(stored.elapsed());
            assert!(!remaining.is_zero(), "{id} was not polled within 5 s");
            let seen = sim.state.request_count();
            if sim.state.requests()[before..]
                .iter()
                .any(|r| r.raw_id == id)
            {
                break stored.elapsed();
            }
            sim.state.wait_for_requests(seen + 1, remaining).await;
        };
        latencies.push(polled);
    }
    println!("first poll after another process's enqueue: {latencies:?}");
    // Without the notification the relay finds the video only at its next
    // look, up to a second later (here close to a second each time: every
    // enqueue follows the previous video's end, when the relay went idle).
    // With it, the first poll follows within milliseconds; the bound leaves
    // room for a busy machine.
    let prompt = latencies
        .iter()
        .filter(|latency| **latency < Duration::from_millis(300))
        .count();
    assert!(
        prompt >= 6,
        "polled promptly only {prompt} times of 8: {latencies:?}"
    );
    assert_eq!(sim.state.violations(), 0);
    println!("whole test: {:?}", started.elapsed());
}

/// How long JoggAI asks the relays to pause (`Retry-After`, seconds).
const PAUSE_SECONDS: u64 = 3;

/// The requests logged in `from..to` (the simulator's time).
fn requests_between(log: &[LoggedRequest], from: Duration, to: Duration) -> Vec<&LoggedRequest> {
    log.iter().filter(|r| r.at > from && r.at < to).collect()
}

/// Three busy relays on one budget; JoggAI answers one request with 429
/// and `Retry-After`: no relay sends anything until the pause is over,
/// beyond what was already on its way when the 429 was answered. Every
/// relay shows the pause on `/readyz`, and polling resumes afterwards
/// inside the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_answered_to_one_relay_pauses_them_all() {
    const VIDEOS: usize = 120;
    /// What may still arrive after the 429 was answered: requests another
    /// relay let through just before the pause reached the database (the
    /// relay that got the 429 publishes it in one UPDATE of one row, a few
    /// milliseconds; each request checks the row when it reserves its
    /// slot), plus a request's trip over loopback, plus scheduling delays
    /// on a busy two-core machine. The slots the relays reserve ahead of
    /// time reach seconds into the future when they are busy (up to
    /// `max_in_flight` each), far beyond this.
    const IN_FLIGHT_MARGIN: Duration = Duration::from_millis(250);
    let Some(cluster) = scratch_postgres() else {
        return;
    };
    let database = cluster.create_database().await.unwrap();
    let (sim, receiver) = simulators().await;
    // Videos that never finish: a backlog far beyond the budget, so every
    // relay always has requests waiting for their slot.
    let ids: Vec<String> = (0..VIDEOS).map(|i| format!("busy-{i:03}")).collect();
    for id in &ids {
        sim.state.script(id, Timeline::completes(10_000, 0));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver);
    let relays: Vec<RelayProcess> = (0..3).map(|_| start(&config, &database, &sim)).collect();
    let mut turn = 0;
    enqueue_round_robin(&relays, &ids, &mut turn, &mut fastrand::Rng::with_seed(14)).await;
    // Two seconds of work at the budget: every relay is sending.
    assert!(
        sim.state
            .wait_for_requests(2 * RATE as usize, Duration::from_secs(20))
            .await
    );

    sim.state
        .inject([Fault::HttpRateLimit(Some(PAUSE_SECONDS.to_string()))]);
    let answered_429 = loop {
        let seen = sim.state.request_count();
        if let Some(request) = sim.state.requests().iter().find(|r| r.fault.is_some()) {
            break request.at;
        }
        assert!(
            sim.state
                .wait_for_requests(seen + 1, Duration::from_secs(10))
                .await,
            "no request took the 429"
        );
    };
    // Every relay shows the pause while it lasts (they adopt it from the
    // database when they next try to send).
    let pause_end = answered_429 + Duration::from_secs(PAUSE_SECONDS);
    let pause_over = Instant::now() + Duration::from_secs(PAUSE_SECONDS);
    for (i, relay) in relays.iter().enumerate() {
        loop {
            let ready = relay.get("/readyz").await;
            assert_eq!(ready.status, 200, "{ready:?}");
            if ready.json["upstream_pause"]["reason"] == "rate_limited" {
                break;
            }
            // Not slept: each answer is read as soon as it comes.
            assert!(
                Instant::now() < pause_over,
                "relay {i} never showed the pause: {ready:?}"
            );
        }
    }
    // Polling resumes by itself once the pause is over.
    let resumed = loop {
        let seen = sim.state.request_count();
        let log = sim.state.requests();
        if let Some(request) = log.iter().find(|r| r.at >= pause_end) {
            break request.at;
        }
        assert!(
            sim.state
                .wait_for_requests(seen + 1, Duration::from_secs(PAUSE_SECONDS + 10))
                .await,
            "polling never resumed after the pause"
        );
    };

    let log = sim.state.requests();
    let in_flight = requests_between(&log, answered_429, answered_429 + IN_FLIGHT_MARGIN);
    let during = requests_between(&log, answered_429 + IN_FLIGHT_MARGIN, pause_end);
    println!(
        "429 answered at {answered_429:?}; {} requests within {IN_FLIGHT_MARGIN:?} after it \
         (already on their way), {} during the pause, resumed at {resumed:?}",
        in_flight.len(),
        during.len()
    );
    assert!(
        during.is_empty(),
        "{} requests sent during the pause ({answered_429:?}..{pause_end:?}): {:?}",
        during.len(),
        during.iter().map(|r| r.at).collect::<Vec<_>>()
    );
    assert!(
        resumed < pause_end + Duration::from_secs(2),
        "polling resumed only at {resumed:?}, the pause ended at {pause_end:?}"
    );
    assert_eq!(sim.state.violations(), 0, "requests over the shared budget");
}

/// Waits (at most `limit`) until `relay` has logged `count` lines
/// containing `text`; the lines it logged meanwhile are dropped.
fn wait_for_log_lines(relay: &RelayProcess, text: &str, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut seen = 0;
    while seen < count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match relay.log.recv_timeout(remaining) {
            Ok(line) => seen += usize::from(line.contains(text)),
            Err(_) => {
                panic!("after {limit:?} the relay had logged {seen} of {count} lines with {text:?}")
            }
        }
    }
}

/// Checks `relay` while its database is away: it stays up, says it is
/// not ready and refuses enqueues (ids `refused-{round}-…`) and reads with a
/// JSON 503, each within `limit`, `attempts` times over.
async fn refuses_while_away(relay: &RelayProcess, round: &str, attempts: usize, limit: Duration) {
    let away = Instant::now();
    // Not ready, in JSON, once the relay notices (a successful readiness
    // probe answers for one second).
    let unready = loop {
        let ready = relay.get("/readyz").await;
        if ready.status != 200 {
            break ready;
        }
        assert!(
            away.elapsed() < limit,
            "still ready {limit:?} after the database went away: {ready:?}"
        );
    };
    assert_eq!(
        unready.assert_json_error(503),
        "database_unavailable",
        "{unready:?}"
    );
    // Enqueues are refused as unavailable, not as a server error, and
    // without hanging.
    for attempt in 0..attempts {
        let asked = Instant::now();
        let single = json!({"video_id": format!("refused-{round}-{attempt}")});
        let refused = relay.post("/v1/videos", single).await;
        assert_eq!(
            refused.assert_json_error(503),
            "storage_unavailable",
            "{refused:?}"
        );
        let batch = json!({"videos": [{"video_id": format!("refused-{round}-batch-{attempt}")}]});
        let refused = relay.post("/v1/videos/batch", batch).await;
        assert_eq!(
            refused.assert_json_error(503),
            "storage_unavailable",
            "{refused:?}"
        );
        assert!(
            asked.elapsed() < limit,
            "two enqueues took {:?} to be refused",
            asked.elapsed()
        );
        let asked = Instant::now();
        let ready = relay.get("/readyz").await;
        assert_eq!(
            ready.assert_json_error(503),
            "database_unavailable",
            "{ready:?}"
        );
        // Reads too.
        let read = relay.get("/v1/videos/before-00").await;
        assert_eq!(
            read.assert_json_error(503),
            "storage_unavailable",
            "{read:?}"
        );
        assert!(
            asked.elapsed() < limit,
            "a readiness check and a read took {:?} to be refused",
            asked.elapsed()
        );
    }
    assert_eq!(relay.get("/healthz").await.status, 200, "alive");
}

/// Stops `cluster`'s server under `relay` and checks the relay through the
/// outage ([`refuses_while_away`], promptly: a stopped server refuses
/// connections at once). The server stays away until the relay has tried
/// twice more to listen for the other relays' work (a second apart): every
/// part of it has met the outage by then. Returns once the server accepts
/// connections again.
async fn outage(cluster: &mut ScratchCluster, relay: &RelayProcess, round: &str) {
    tokio::task::block_in_place(|| cluster.stop_server()).unwrap();
    let stopped = Instant::now();
    refuses_while_away(relay, round, 3, Duration::from_secs(5)).await;
    relay.log.try_iter().for_each(drop);
    tokio::task::block_in_place(|| {
        wait_for_log_lines(
            relay,
            "cannot listen for other relays' work",
            2,
            Duration::from_secs(10),
        )
    });
    println!("{round} outage: database away for {:?}", stopped.elapsed());
    tokio::task::block_in_place(|| cluster.start_server()).unwrap();
}

/// Enqueues `count` videos `before-NN` through `relay`: the even ones
/// finish at once (their callbacks are awaited), the odd ones stay
/// `pending` until scripted otherwise. Returns every id, the waiting ones,
/// and the ending each callback must carry.
async fn half_finished(
    relay: &RelayProcess,
    sim: &SimUpstream,
    receiver: &SimReceiver,
    count: usize,
) -> (Vec<String>, Vec<String>, HashMap<String, &'static str>) {
    let before: Vec<String> = (0..count).map(|i| format!("before-{i:02}")).collect();
    let (quick, waiting): (Vec<String>, Vec<String>) = before
        .iter()
        .cloned()
        .partition(|id| id.ends_with(['0', '2', '4', '6', '8']));
    let mut endings = HashMap::new();
    for id in &before {
        let pending = if quick.contains(id) { 0 } else { u32::MAX };
        sim.state.script(id, Timeline::completes(pending, 0));
        endings.insert(id.clone(), "completed");
    }
    let mut rng = fastrand::Rng::with_seed(count as u64);
    enqueue_round_robin(std::slice::from_ref(relay), &before, &mut 0, &mut rng).await;
    wait_for_callbacks(receiver, &quick, Duration::from_secs(20)).await;
    (before, waiting, endings)
}

/// Waits until `relay` is ready (at most `limit`); returns how long that
/// took. Each answer is read as it comes: a failed probe is never reused.
async fn ready_within(relay: &RelayProcess, limit: Duration) -> Duration {
    let asked = Instant::now();
    loop {
        let ready = relay.get("/readyz").await;
        if ready.status == 200 {
            return asked.elapsed();
        }
        assert!(
            asked.elapsed() < limit,
            "not ready {limit:?} after the database came back: {ready:?}"
        );
    }
}

/// Scripts `ids` to complete at their second answer and enqueues them
/// through `relay`; records their ending in `endings`.
async fn enqueue_new(
    relay: &RelayProcess,
    sim: &SimUpstream,
    ids: &[String],
    endings: &mut HashMap<String, &'static str>,
) {
    for id in ids {
        sim.state.script(id, Timeline::completes(1, 0));
        endings.insert(id.clone(), "completed");
    }
    let mut rng = fastrand::Rng::with_seed(ids.len() as u64);
    enqueue_round_robin(std::slice::from_ref(relay), ids, &mut 0, &mut rng).await;
}

/// A relay whose PostgreSQL server is stopped and started again (same data
/// folder), twice: while it is away the relay stays up, says it is not
/// ready and refuses enqueues with a JSON 503, promptly ([`outage`]). Once
/// it is back the relay takes an enqueue as its very first write, finishes
/// what it had acknowledged before, and, idle, is ready again by itself at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_waited_out_and_loses_nothing() {
    let started = Instant::now();
    // A cluster of its own: the shared one serves the other tests.
    let mut cluster = match ScratchCluster::start() {
        Ok(cluster) => cluster,
        Err(ScratchError::NotInstalled) => {
            skip_without_postgres();
            return;
        }
        Err(err) => panic!("the test's PostgreSQL cluster did not start: {err}"),
    };
    let database = cluster.create_database().await.unwrap();
    let (sim, receiver) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver);
    let mut relay = start(&config, &database, &sim);

    // Acknowledged before the stop: half finish at once, half stay
    // `pending` until after the restart.
    let (before, waiting, mut endings) = half_finished(&relay, &sim, &receiver, 30).await;
    let polled = || -> u32 { waiting.iter().map(|id| sim.state.answers_for(id)).sum() };
    let polled_before = polled();
    assert!(polled_before > 0, "the waiting videos are being polled");

    outage(&mut cluster, &relay, "first").await;
    assert_eq!(
        polled(),
        polled_before,
        "no poll while the database was away"
    );
    // New work is taken at once: the first write after the restart (this
    // enqueue, sent before anything else) finds the database.
    let after: Vec<String> = (0..10).map(|i| format!("after-{i:02}")).collect();
    enqueue_new(&relay, &sim, &after, &mut endings).await;
    // The videos acknowledged before the stop finish now.
    for id in &waiting {
        sim.state.script(id, Timeline::completes(0, 0));
    }
    let everything: Vec<String> = before.iter().chain(&after).cloned().collect();
    wait_for_callbacks(&receiver, &everything, Duration::from_secs(20)).await;

    // Again, the relay idle this time (nothing due, so no write of its own
    // clears the outage): ready as soon as the database is back, by itself.
    outage(&mut cluster, &relay, "second").await;
    let back = ready_within(&relay, Duration::from_secs(3)).await;
    println!("idle relay ready {back:?} after the database came back");
    let last: Vec<String> = (0..5).map(|i| format!("last-{i:02}")).collect();
    enqueue_new(&relay, &sim, &last, &mut endings).await;
    wait_for_callbacks(&receiver, &last, Duration::from_secs(20)).await;

    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "the relay is the same process"
    );
    // The refused enqueues were never acknowledged; every callback is for
    // a video that was.
    check_callbacks(&receiver, &endings);
    let terminal = answered_terminal(&sim);
    assert!(endings.keys().all(|id| terminal.contains(id)));
    assert_eq!(sim.state.violations(), 0);
    relay.signal("TERM");
    assert_eq!(relay.wait().code(), Some(0), "a clean shutdown");
    println!("whole test: {:?}", started.elapsed());
}

/// A relay whose PostgreSQL server falls silent mid-work (its machine died
/// or the network is cut: no error, no closed connection, just no answer)
/// and is then replaced at the same address, the old connections staying
/// silent for good. While it is silent the relay stays up and refuses
/// enqueues, reads and readiness with a JSON 503 within a bounded time
/// instead of hanging on the dead connections; once the replacement
/// answers it is ready again by itself, takes new work, and finishes what
/// it had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_falls_silent_is_given_up_on_and_its_replacement_used() {
    let Some(cluster) = scratch_postgres() else {
        return;
    };
    let database = cluster.create_database().await.unwrap();
    let proxy = StallingProxy::start(cluster.socket_path()).await;
    let (sim, receiver) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, &receiver);
    let mut relay = start(&config, &proxy.url_for(&database), &sim);

    // Acknowledged before the cut: half finish at once, half stay
    // `pending` until after the fail-over.
    let (before, waiting, mut endings) = half_finished(&relay, &sim, &receiver, 10).await;

    proxy.cut();
    let cut = Instant::now();
    refuses_while_away(&relay, "silent", 2, Duration::from_secs(20)).await;
    println!("silent database: refused throughout, {:?}", cut.elapsed());

    proxy.fail_over();
    let replaced = ready_within(&relay, Duration::from_secs(20)).await;
    println!("ready {replaced:?} after the replacement answered");
    let after: Vec<String> = (0..5).map(|i| format!("after-{i:02}")).collect();
    enqueue_new(&relay, &sim, &after, &mut endings).await;
    for id in &waiting {
        sim.state.script(id, Timeline::completes(0, 0));
    }
    let everything: Vec<String> = before.iter().chain(&after).cloned().collect();
    wait_for_callbacks(&receiver, &everything, Duration::from_secs(30)).await;

    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "the relay is the same process"
    );
    check_callbacks(&receiver, &endings);
    assert_eq!(sim.state.violations(), 0);
    relay.signal("TERM");
    // No connection to the silent server may hold the shutdown up: the log
    // ends (the process exits) within the grace period and the limits. On
    // failure, the relay's last words say what it was waiting for.
    let mut last_lines = std::collections::VecDeque::new();
    let stopping = Instant::now();
    while let Ok(line) = relay.log.recv_timeout(Duration::from_secs(30)) {
        if last_lines.len() == 30 {
            last_lines.pop_front();
        }
        last_lines.push_back(line);
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "still logging 30 s after SIGTERM: {last_lines:#?}"
        );
    }
    assert!(
        relay.child.try_wait().unwrap().is_some() || stopping.elapsed() < Duration::from_secs(30),
        "silent for 30 s after SIGTERM without exiting; its last lines: {last_lines:#?}"
    );
    assert_eq!(relay.wait().code(), Some(0), "a clean shutdown");
}

/// A walk of `GET /v1/videos` through `relay`, `limit` a page, from
/// `start` (a cursor) until `next_cursor` is null: the ids in the order
/// listed, and the last cursor received with the id of the row it follows
/// (the last of that full page), from which a later walk resumes.
async fn walk_list(
    relay: &RelayProcess,
    limit: usize,
    start: Option<&(String, String)>,
) -> (Vec<String>, Option<(String, String)>) {
    let mut ids = Vec::new();
    let mut resume = start.cloned();
    loop {
        let path = match &resume {
            Some((cursor, _)) => format!("/v1/videos?limit={limit}&cursor={cursor}"),
            None => format!("/v1/videos?limit={limit}"),
        };
        let reply = relay.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        for video in reply.json["videos"].as_array().expect("videos") {
            ids.push(video["video_id"].as_str().expect("video_id").to_owned());
        }
        match reply.json["next_cursor"].as_str() {
            Some(next) => {
                resume = Some((next.to_owned(), ids.last().expect("a full page").clone()))
            }
            None => return (ids, resume),
        }
    }
}

/// Three relays take single enqueues at once while a client walks the
/// list's pages through each relay in turn, each walk resuming from the
/// last cursor the one before received: near the newest rows, where a row
/// still being inserted can have a lower id than one already committed
/// (several writers draw ids in one order and commit in another). Judged
/// against the settled list once the enqueues are over: each walk lists,
/// once and in order, every video the settled list has between its start
/// and its last id (rows added later may be missing, never rows passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_walks_skip_nothing_while_three_relays_enqueue() {
    const PER_RELAY: usize = 600;
    const PAGE: usize = 20;
    let Some(cluster) = scratch_postgres() else {
        return;
    };
    let database = cluster.create_database().await.unwrap();
    let sim = SimUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Nothing is polled while the list is walked: the first poll is an
    // hour away.
    let config = RelayConfig::new(dir.path())
        .extra(&format!(
            "[jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\n\
             [polling]\nfirst_after = \"1h\"\n",
            sim.base_url
        ))
        .write();
    let relays: Vec<RelayProcess> = (0..3).map(|_| start(&config, &database, &sim)).collect();
    let count = relays.len();
    let writing = std::sync::atomic::AtomicUsize::new(2 * count);
    // Two clients per relay, so that each relay's commits carry several.
    let writers = futures_util::future::join_all((0..2 * count).map(|client| {
        let (relay, writing) = (&relays[client % count], &writing);
        async move {
            for i in (client / count..PER_RELAY).step_by(2) {
                let id = format!("r{}-{i:04}", client % count);
                let reply = relay.post("/v1/videos", json!({"video_id": id})).await;
                assert_eq!(reply.status, 201, "{id}: {reply:?}");
            }
            writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }));
    let walker = async {
        // (the id the walk resumed after, if any; the ids it listed)
        let mut walks: Vec<(Option<String>, Vec<String>)> = Vec::new();
        let mut resume: Option<(String, String)> = None;
        while writing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            let relay = &relays[walks.len() % count];
            let (ids, last_full) = walk_list(relay, PAGE, resume.as_ref()).await;
            walks.push((resume.as_ref().map(|(_, id)| id.clone()), ids));
            resume = last_full.or(resume);
        }
        walks
    };
    let (_, walks) = tokio::join!(writers, walker);

    let (settled, _) = walk_list(&relays[0], 100, None).await;
    assert_eq!(settled.len(), count * PER_RELAY);
    let position: HashMap<&str, usize> = settled
        .iter()
        .enumerate()
        .map(|(at, id)| (id.as_str(), at))
        .collect();
    let mut rows_checked = 0;
    for (n, (after, walk)) in walks.iter().enumerate() {
        let from = after.as_ref().map_or(0, |id| position[id.as_str()] + 1);
        let places: Vec<usize> = walk.iter().map(|id| position[id.as_str()]).collect();
        assert!(
            places.windows(2).all(|pair| pair[0] < pair[1]),
            "walk {n} is not in the list's order, or lists a row twice: {walk:?}"
        );
        let Some(&last) = places.last() else {
            continue;
        };
        assert!(places[0] >= from, "walk {n} went back before its cursor");
        let listed: HashSet<&str> = walk.iter().map(String::as_str).collect();
        let skipped: Vec<&String> = settled[from..last]
            .iter()
            .filter(|id| !listed.contains(id.as_str()))
            .collect();
        assert!(skipped.is_empty(), "walk {n} skipped {skipped:?}");
        rows_checked += walk.len();
    }
    println!(
        "{} walks beside the enqueues listed {rows_checked} rows",
        walks.len()
    );
    assert!(walks.len() > 10, "too few walks ran beside the enqueues");
}
