//! What the relay learns of JoggAI's render times: `/v1/stats`, the
//! `/metrics` series, persistence across a restart, and the `stats` and
//! `export-renders` commands of the real binary.
//!
//! The oracle is the poll schedule the tests drive themselves: every step
//! runs at a clock the test picks (20 s apart, every active video due at
//! each), so each finished video is known to have finished after the step
//! that last saw it unfinished and before the step that saw it finished,
//! whatever the learner computes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jogg_relay::config::Settings;
use jogg_relay::domain::Millis;
use jogg_relay::poller::Outcome;
use jogg_relay::sim::{Ending, Spelling, Timeline};
use serde_json::{Value, json};

use crate::helpers::{TestApp, api_millis, run_binary, spawn_manual_app};
use crate::operations::Exposition;

/// Time between two driven steps; every unfinished video is due again
/// after `INTERVAL`, so each step polls every active video once.
const STEP: Duration = Duration::from_secs(20);
const INTERVAL: &str = "10s";

/// A log bin of the learned histogram is 10^(1/32) wide (7.5 %): a quantile
/// is exact to within one bin on either side.
const BIN: f64 = 1.075;

/// The finished videos: (id, unfinished answers before the `processing`
/// ones, `processing` answers, fails). Eleven from the start and nine seen
/// processing: no reported quantile times either count is a whole number,
/// so the order statistics below bound each quantile strictly.
const FINISHED: [(&str, u32, u32, bool); 11] = [
    ("r0", 0, 0, false),
    ("r1-pending", 1, 0, false),
    ("r1", 0, 1, false),
    ("r2", 0, 2, false),
    ("r2-fail", 1, 1, true),
    ("r2-late", 1, 1, false),
    ("r3", 1, 2, false),
    ("r3-fail", 0, 3, true),
    ("r4", 2, 2, false),
    ("r5", 1, 4, false),
    ("r6", 3, 3, false),
];
/// Never finishes (always `processing`).
const STUCK: &str = "stuck";
/// Unknown to JoggAI: abandoned at its first answer (no grace).
const GONE: &str = "gone";
/// Cancelled before its first poll.
const DROPPED: &str = "dropped";

/// One finished video of the scenario.
struct Plan {
    id: &'static str,
    pending: u32,
    processing: u32,
    fails: bool,
}

impl Plan {
    /// The step that saw it finished (steps are numbered from 0).
    fn finished_step(&self) -> usize {
        (self.pending + self.processing) as usize
    }
}

/// What the test drove: each step's clock window, `[start, end]` in
/// milliseconds (the poller stamps results with the step's start plus the
/// time it took), and each video's enqueue time as the API reported it.
struct Scenario {
    plans: Vec<Plan>,
    windows: Vec<(i64, i64)>,
    enqueued_at: HashMap<String, i64>,
}

/// Relay settings for the scenario: a fixed 10 s interval, no jitter, a
/// budget that never waits, and observations that (practically) never fade
/// so each weighs the same.
fn scenario_settings(s: &mut Settings) {
    s.polling.min_interval = INTERVAL.into();
    s.polling.max_interval = INTERVAL.into();
    s.polling.jitter = 0.0;
    s.polling.not_found_grace = "0s".into();
    s.polling.adaptive_half_life = 1_000;
    s.polling.adaptive_warmup = 10;
    s.jogg.requests_per_second = 1000.0;
    s.jogg.burst = 100;
    s.jogg.max_in_flight = 64;
}

/// Runs the scenario on a fresh manual relay: enqueue, cancel one, then
/// drive one step per 20 s of clock until every finishing video finished.
async fn run_scenario(customize: impl FnOnce(&mut Settings)) -> (TestApp, Scenario) {
    let app = spawn_manual_app(|s| {
        scenario_settings(s);
        customize(s);
    })
    .await;
    let plans: Vec<Plan> = FINISHED
        .iter()
        .map(|&(id, pending, processing, fails)| Plan {
            id,
            pending,
            processing,
            fails,
        })
        .collect();
    for plan in &plans {
        let timeline = if plan.fails {
            Timeline::fails(plan.pending, plan.processing)
        } else {
            Timeline::completes(plan.pending, plan.processing)
        };
        app.sim.state.script(plan.id, timeline);
    }
    app.sim.state.script(
        STUCK,
        Timeline {
            pending: 0,
            processing: 0,
            ending: Ending::Stuck("processing".into()),
            spelling: Spelling::Documented,
        },
    );
    app.sim.state.script(DROPPED, Timeline::completes(0, 0));
    let mut enqueued_at = HashMap::new();
    let ids = plans.iter().map(|p| p.id).chain([STUCK, GONE, DROPPED]);
    for id in ids {
        let reply = app.enqueue(json!({"video_id": id})).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        enqueued_at.insert(id.to_owned(), api_millis(&reply.json["enqueued_at"]).0);
    }
    assert_eq!(
        app.send("DELETE", &format!("/v1/videos/{DROPPED}"), None)
            .await
            .status,
        204
    );

    let last_step = plans.iter().map(Plan::finished_step).max().unwrap();
    let start = Millis::now();
    let mut windows = Vec::new();
    for step in 0..=last_step {
        let at = start.plus(STEP * step as u32);
        // Every video still active is due: the finishing ones not yet
        // finished, the stuck one, and (first step only) the unknown one.
        let expected =
            plans.iter().filter(|p| p.finished_step() >= step).count() + 1 + usize::from(step == 0);
        let began = Instant::now();
        let outcome = app.step(at).await;
        let took = i64::try_from(began.elapsed().as_millis()).unwrap() + 1;
        assert_eq!(outcome, Outcome::Worked(expected), "step {step}");
        windows.push((at.0, at.0 + took));
    }
    // The simulator's own count: each finished video was answered once per
    // step until it finished, and no more.
    for plan in &plans {
        assert_eq!(
            app.sim.state.answers_for(plan.id),
            plan.pending + plan.processing + 1,
            "{}",
            plan.id
        );
        let want = if plan.fails { "failed" } else { "completed" };
        assert_eq!(app.video(plan.id).await.json["state"], want, "{}", plan.id);
    }
    assert_eq!(app.video(GONE).await.json["state"], "abandoned");
    assert_eq!(app.video(STUCK).await.json["state"], "active");
    assert_eq!(app.video(DROPPED).await.json["state"], "cancelled");
    assert_eq!(app.sim.state.answers_for(DROPPED), 0);
    let scenario = Scenario {
        plans,
        windows,
        enqueued_at,
    };
    (app, scenario)
}

/// Seconds between two millisecond instants.
fn secs(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

impl Scenario {
    /// For each finished video, the widest its render time from the start
    /// can be: (lowest "finished after", highest "finished before"), from
    /// the windows of the steps that saw it unfinished last and finished;
    /// then the stuck video, still rendering at the last step: (its age
    /// then, infinity).
    fn bounds_from_start(&self) -> Vec<(f64, f64)> {
        let stuck_start = self.enqueued_at[STUCK];
        let last = self.windows.last().unwrap();
        self.plans
            .iter()
            .map(|plan| {
                let start = self.enqueued_at[plan.id];
                let done = plan.finished_step();
                let after = match done.checked_sub(1) {
                    Some(step) => secs(self.windows[step].0 - start).max(0.0),
                    None => 0.0,
                };
                (after, secs(self.windows[done].1 - start))
            })
            .chain([(secs(last.0 - stuck_start), f64::INFINITY)])
            .collect()
    }

    /// The same from the step that first saw it `processing`, for the
    /// videos that were (the stuck one was, at the first step).
    fn bounds_from_rendering(&self) -> Vec<(f64, f64)> {
        let last = self.windows.last().unwrap();
        self.plans
            .iter()
            .filter(|plan| plan.processing > 0)
            .map(|plan| {
                let (seen_from, seen_to) = self.windows[plan.pending as usize];
                let done = plan.finished_step();
                let last_unfinished = self.windows[done - 1];
                let after = secs(last_unfinished.0 - seen_to).max(0.0);
                (after, secs(self.windows[done].1 - seen_from))
            })
            .chain([(secs(last.0 - self.windows[0].1), f64::INFINITY)])
            .collect()
    }
}

/// The reported quantiles, by name, in seconds (`None` when reported as
/// unknown).
fn quantiles(model: &Value) -> Vec<(String, Option<f64>)> {
    let map = model["quantiles_seconds"]
        .as_object()
        .unwrap_or_else(|| panic!("no quantiles in {model}"));
    map.iter()
        .map(|(name, value)| (name.clone(), value.as_f64()))
        .collect()
}

/// Asserts that the quantile `p` of a distribution whose every observation
/// lies within its `bounds` interval is `got`, up to one bin: at least the
/// ⌈p·n⌉-th smallest lower end, at most the ⌈p·n⌉-th smallest upper end.
/// Where that upper end is infinite (a video still rendering) the quantile
/// is not known, and must be reported as such.
fn assert_within_order_statistics(what: &str, p: f64, got: Option<f64>, bounds: &[(f64, f64)]) {
    let mut lows: Vec<f64> = bounds.iter().map(|b| b.0).collect();
    let mut highs: Vec<f64> = bounds.iter().map(|b| b.1).collect();
    lows.sort_by(f64::total_cmp);
    highs.sort_by(f64::total_cmp);
    let rank = (p * bounds.len() as f64).ceil() as usize;
    // When p·n is a whole number any value between the rank-th and the
    // next order statistic is a p-quantile.
    let whole = ((p * bounds.len() as f64) - rank as f64).abs() < 1e-9;
    let high_rank = if whole {
        (rank + 1).min(bounds.len())
    } else {
        rank
    };
    let (low, high) = (
        lows[rank - 1] / BIN - 0.001,
        highs[high_rank - 1] * BIN + 0.001,
    );
    match got {
        Some(got) => assert!(
            (low..=high).contains(&got),
            "{what} p{p}: {got} s is outside [{low}, {high}] (bounds {bounds:?})"
        ),
        None => assert!(
            high.is_infinite(),
            "{what} p{p} is reported unknown, but lies in [{low}, {high}] (bounds {bounds:?})"
        ),
    }
}

/// Asserts every quantile of `model` (a `/v1/stats` model) against `bounds`.
fn assert_model_matches(model: &Value, bounds: &[(f64, f64)]) {
    let name = model["model"].as_str().unwrap();
    let finished = bounds.iter().filter(|b| b.1.is_finite()).count();
    assert_eq!(model["observations"], finished, "{model}");
    assert_eq!(model["unfinished"], bounds.len() - finished, "{model}");
    let reported = quantiles(model);
    let names: Vec<&str> = reported.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let mut want = vec!["p10", "p25", "p50", "p75", "p90", "p95", "p99"];
    want.sort_unstable();
    assert_eq!(sorted, want, "{model}");
    let mut previous = 0.0;
    for p in [10, 25, 50, 75, 90, 95, 99] {
        let got = reported
            .iter()
            .find(|(n, _)| *n == format!("p{p}"))
            .unwrap()
            .1;
        if let Some(got) = got {
            assert!(
                got >= previous,
                "{name}: quantiles must not decrease: {model}"
            );
            previous = got;
        }
        assert_within_order_statistics(name, f64::from(p) / 100.0, got, bounds);
    }
}

/// The model named `name` in a `/v1/stats` body.
fn model<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["render_times"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == name)
        .unwrap_or_else(|| panic!("no model {name} in {stats}"))
}

/// `GET /v1/stats`, asserted 200.
async fn stats(app: &TestApp) -> Value {
    let reply = app.send("GET", "/v1/stats", None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.content_type.starts_with("application/json"));
    reply.json
}

#[tokio::test]
async fn learned_render_times_match_the_driven_polls_and_survive_a_restart() {
    let (app, scenario) = run_scenario(|_| {}).await;
    let before = stats(&app).await;
    assert_eq!(before["strategy"], "adaptive", "{before}");
    let from_start = model(&before, "from_start");
    let from_rendering = model(&before, "from_rendering");
    assert_model_matches(from_start, &scenario.bounds_from_start());
    assert_model_matches(from_rendering, &scenario.bounds_from_rendering());
    // Warm-up is 10 finished videos: 11 from the start, 9 seen processing.
    assert_eq!(from_start["warmed_up"], true);
    assert_eq!(from_rendering["warmed_up"], false);
    // The last observation is the last video's terminal poll.
    let last = scenario.windows.last().unwrap();
    let updated = api_millis(&before["render_times"]["updated_at"]).0;
    assert!((last.0..=last.1).contains(&updated), "{before}");

    // A new relay on the same database starts from what was learned.
    let database = app.config.database.url.clone();
    let _dir = app.stop().await;
    let app = spawn_manual_app(|s| {
        scenario_settings(s);
        s.database.url = database;
    })
    .await;
    let after = stats(&app).await;
    assert_eq!(
        after["render_times"]["updated_at"],
        before["render_times"]["updated_at"]
    );
    for name in ["from_start", "from_rendering"] {
        let (was, is) = (model(&before, name), model(&after, name));
        for field in ["observations", "effective_samples", "warmed_up"] {
            assert_eq!(is[field], was[field], "{name} {field}: {before} {after}");
        }
    }
    // The quantiles are rebuilt by refitting the replayed observations to
    // convergence, while the running relay's estimate was built one
    // observation at a time: both must agree with the driven polls.
    assert_model_matches(model(&after, "from_start"), &scenario.bounds_from_start());
    assert_model_matches(
        model(&after, "from_rendering"),
        &scenario.bounds_from_rendering(),
    );
    let database = app.config.database.url.clone();
    let _dir = app.stop().await;
    // And the rebuild is deterministic: a second restart shows exactly
    // the same.
    let app = spawn_manual_app(|s| {
        scenario_settings(s);
        s.database.url = database;
    })
    .await;
    assert_eq!(stats(&app).await, after);
    app.stop().await;
}

#[tokio::test]
async fn stats_needs_the_token_and_shows_the_configured_strategy() {
    let app = spawn_manual_app(|s| s.polling.strategy = "adaptive".into()).await;
    let url = format!("{}/v1/stats", app.base);
    let anonymous = crate::helpers::reply(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!(anonymous.assert_json_error(401), "unauthorized");
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .unwrap();
    let wrong = crate::helpers::reply(wrong).await;
    assert_eq!(wrong.assert_json_error(401), "unauthorized");

    // Nothing learned yet: both models, empty.
    let body = stats(&app).await;
    let empty = |name: &str| {
        json!({
            "model": name,
            "observations": 0,
            "unfinished": 0,
            "effective_samples": 0.0,
            "warmed_up": false,
            "quantiles_seconds": {},
        })
    };
    assert_eq!(
        body,
        json!({
            "strategy": "adaptive",
            "render_times": {
                "updated_at": null,
                "models": [empty("from_start"), empty("from_rendering")],
            },
        })
    );
    // Only GET.
    let post = app.send("POST", "/v1/stats", Some(&json!({}))).await;
    assert_eq!(post.assert_json_error(405), "method_not_allowed");
    app.stop().await;
}

/// The buckets of a histogram in `metrics`, as (upper bound, count).
fn buckets(metrics: &Exposition, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    metrics
        .samples
        .iter()
        .filter(|(n, _, _)| *n == bucket)
        .map(|(_, labels, value)| {
            let le = labels
                .strip_prefix("le=\"")
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or_else(|| panic!("bucket labels {labels}"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, *value)
        })
        .collect()
}

#[tokio::test]
async fn metrics_show_the_learned_quantiles_and_polls_per_finished_video() {
    let (app, scenario) = run_scenario(|_| {}).await;
    let metrics = Exposition::parse(&app.metrics_text().await);
    for (family, kind) in [
        ("jogg_relay_render_time_seconds", "gauge"),
        ("jogg_relay_render_time_observations", "gauge"),
        ("jogg_relay_render_time_model_warmed_up", "gauge"),
        ("jogg_relay_polls_per_finished_video", "histogram"),
    ] {
        assert_eq!(
            metrics.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    let model = |name: &str| format!("model=\"{name}\"");
    assert_eq!(
        metrics.value("jogg_relay_render_time_observations", &model("from_start")),
        FINISHED.len() as f64
    );
    assert_eq!(
        metrics.value(
            "jogg_relay_render_time_observations",
            &model("from_rendering")
        ),
        (scenario.bounds_from_rendering().len() - 1) as f64,
        "the stuck video is not finished"
    );
    assert_eq!(
        metrics.value(
            "jogg_relay_render_time_model_warmed_up",
            &model("from_start")
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "jogg_relay_render_time_model_warmed_up",
            &model("from_rendering")
        ),
        0.0
    );
    for (name, bounds) in [
        ("from_start", scenario.bounds_from_start()),
        ("from_rendering", scenario.bounds_from_rendering()),
    ] {
        for p in ["0.1", "0.25", "0.5", "0.75", "0.9", "0.95", "0.99"] {
            let labels = format!("model=\"{name}\",quantile=\"{p}\"");
            let seconds = metrics.value("jogg_relay_render_time_seconds", &labels);
            // Unknown quantiles are NaN.
            let seconds = (!seconds.is_nan()).then_some(seconds);
            assert_within_order_statistics(name, p.parse().unwrap(), seconds, &bounds);
        }
    }

    // The simulator's count of answers per finished video is the oracle;
    // the abandoned, cancelled and still active videos are not counted.
    let answers: Vec<f64> = scenario
        .plans
        .iter()
        .map(|plan| f64::from(app.sim.state.answers_for(plan.id)))
        .collect();
    let family = "jogg_relay_polls_per_finished_video";
    assert_eq!(
        metrics.value(&format!("{family}_count"), ""),
        answers.len() as f64
    );
    assert_eq!(
        metrics.value(&format!("{family}_sum"), ""),
        answers.iter().sum::<f64>()
    );
    let buckets = buckets(&metrics, family);
    assert!(buckets.len() > 3, "{buckets:?}");
    for (le, count) in buckets {
        let want = answers.iter().filter(|&&a| a <= le).count() as f64;
        assert_eq!(count, want, "bucket le={le}");
    }
    app.stop().await;
}

/// Splits CSV text (RFC 4180: quoted fields may hold commas, doubled
/// quotes and line breaks) into records of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quoted field");
    assert!(
        field.is_empty() && record.is_empty(),
        "the last record has no line end"
    );
    records
}

/// A configuration for the real binary on `app`'s database, with the
/// scenario's learning settings.
fn cli_config(app: &TestApp) -> std::path::PathBuf {
    crate::helpers::RelayConfig::new(app.dir.path())
        .database(app.config.database.sqlite_path().unwrap())
        .extra("[polling]\nadaptive_half_life = 1000\nadaptive_warmup = 10\n")
        .write()
}

/// Milliseconds from an RFC 3339 text.
fn millis(text: &str) -> i64 {
    api_millis(&Value::from(text)).0
}

/// Milliseconds from a CSV seconds field (exactly three decimals).
fn field_millis(text: &str) -> i64 {
    let (whole, fraction) = text
        .split_once('.')
        .unwrap_or_else(|| panic!("no decimals: {text:?}"));
    assert_eq!(fraction.len(), 3, "three decimals: {text:?}");
    whole.parse::<i64>().unwrap() * 1000 + fraction.parse::<i64>().unwrap()
}

#[tokio::test]
async fn stats_and_export_renders_read_the_database_beside_a_running_relay() {
    let (app, scenario) = run_scenario(|_| {}).await;
    // The relay keeps running (and holding its lock) while the commands run.
    let config = cli_config(&app);
    let config = config.to_str().unwrap();

    let (code, stdout, stderr) = run_binary(&["--config", config, "stats"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("stats prints JSON");
    assert_eq!(printed["strategy"], "adaptive");
    assert_model_matches(model(&printed, "from_start"), &scenario.bounds_from_start());
    assert_model_matches(
        model(&printed, "from_rendering"),
        &scenario.bounds_from_rendering(),
    );

    let (code, csv, stderr) = run_binary(&["--config", config, "export-renders"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let records = parse_csv(&csv);
    assert_eq!(
        records[0],
        [
            "video_id",
            "state",
            "started_at",
            "finished_after_seconds",
            "finished_before_seconds",
            "processing_seen_seconds"
        ]
    );
    let rows = &records[1..];
    // One row per completed or failed video: the abandoned, cancelled and
    // active ones have none.
    let mut ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let mut want: Vec<&str> = scenario.plans.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    want.sort_unstable();
    assert_eq!(ids, want, "{csv}");
    let mut previous_step = 0;
    for row in rows {
        assert_eq!(row.len(), 6, "{row:?}");
        let plan = scenario.plans.iter().find(|p| p.id == row[0]).unwrap();
        let state = if plan.fails { "failed" } else { "completed" };
        assert_eq!(row[1], state, "{row:?}");
        // Oldest first: by the step that saw them finish.
        assert!(plan.finished_step() >= previous_step, "order: {csv}");
        previous_step = plan.finished_step();
        // The start is the enqueue (JoggAI's created_at in the simulator is
        // years older, beyond give_up_after, so it is not trusted).
        let started = millis(&row[2]);
        assert_eq!(started, scenario.enqueued_at[plan.id], "{row:?}");
        let (after, before) = (field_millis(&row[3]), field_millis(&row[4]));
        assert!(after <= before, "{row:?}");
        let within = |at: i64, step: usize| {
            let (from, to) = scenario.windows[step];
            (from..=to).contains(&at)
        };
        assert!(within(started + before, plan.finished_step()), "{row:?}");
        match plan.finished_step().checked_sub(1) {
            None => assert_eq!(row[3], "0.000", "never seen unfinished: {row:?}"),
            Some(step) => assert!(within(started + after, step), "{row:?}"),
        }
        // Present exactly when the simulator answered `processing`.
        if plan.processing > 0 {
            let seen = field_millis(&row[5]);
            assert!(within(started + seen, plan.pending as usize), "{row:?}");
        } else {
            assert_eq!(row[5], "", "never processing: {row:?}");
        }
    }

    // To a file: the same bytes, and nothing left beside it.
    let out = app.dir.path().join("exports").join("renders.csv");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let (code, stdout, stderr) = run_binary(
        &[
            "--config",
            config,
            "export-renders",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), csv);
    let listed: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, ["renders.csv"]);
    // A folder that does not exist is an error naming the file.
    let missing = app.dir.path().join("nowhere").join("renders.csv");
    let (code, _, stderr) = run_binary(
        &[
            "--config",
            config,
            "export-renders",
            "-o",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");

    // A relay started on this database shows what `stats` printed.
    let database = app.config.database.url.clone();
    let _dir = app.stop().await;
    let app = spawn_manual_app(|s| {
        scenario_settings(s);
        s.database.url = database;
    })
    .await;
    assert_eq!(stats(&app).await, printed);
    app.stop().await;
}

#[tokio::test]
async fn export_renders_pages_through_every_finished_row_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("relay.db");
    let config = crate::helpers::RelayConfig::new(dir.path()).write();
    let config = config.to_str().unwrap();
    // The binary creates the schema.
    let (code, _, stderr) = run_binary(&["--config", config, "list"], &[]);
    assert_eq!(code, 0, "{stderr}");

    // 2,500 finished rows (several pages), their finishing order unlike
    // their row order, three finishing in each millisecond (so the pages
    // of 1,000 split a tie), and active, abandoned and cancelled rows
    // among them.
    const ROWS: i64 = 2_500;
    const BASE: i64 = 1_700_000_000_000;
    let finished_at = |n: i64| BASE + 60_000 + (n * 7919 % ROWS) / 3 * 1000;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for n in 0..ROWS + 30 {
        let id = if n == 5 {
            // Written by something other than the API (which refuses it).
            "odd,\"id\"".to_owned()
        } else {
            format!("bulk-{n}")
        };
        let state = match n {
            n if n >= ROWS => ["active", "abandoned", "cancelled"][(n % 3) as usize],
            n if n % 10 == 0 => "failed",
            _ => "completed",
        };
        let terminal = (state != "active").then(|| finished_at(n));
        sqlx::query(
            "INSERT INTO videos (video_id, state, enqueued_at, updated_at, terminal_at, \
             unfinished_seen_at, rendering_seen_at) VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)",
        )
        .bind(&id)
        .bind(state)
        .bind(BASE)
        .bind(terminal)
        .bind(terminal.map(|t| t - 500))
        .bind((n % 2 == 0).then_some(BASE + 1))
        .execute(&pool)
        .await
        .unwrap();
        if n < ROWS {
            expected.push((finished_at(n), n, id, state));
        }
    }
    pool.close().await;
    // Oldest first; ties in insertion order.
    expected.sort();

    let (code, csv, stderr) = run_binary(&["--config", config, "export-renders"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let records = parse_csv(&csv);
    let rows = &records[1..];
    assert_eq!(rows.len(), expected.len());
    for (row, (at, n, id, state)) in rows.iter().zip(&expected) {
        assert_eq!(&row[0], id);
        assert_eq!(&row[1], state);
        assert_eq!(row[2], "2023-11-14T22:13:20.000Z");
        assert_eq!(field_millis(&row[4]), at - BASE, "{row:?}");
        assert_eq!(field_millis(&row[3]), at - 500 - BASE, "{row:?}");
        let processing = if n % 2 == 0 { "0.001" } else { "" };
        assert_eq!(row[5], processing, "{row:?}");
    }
}
