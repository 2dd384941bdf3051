//! `bench --schedule`: how soon the relay notices renders finish, and how
//! many polls that costs, per polling strategy, on the reference workload
//! ([`crate::workload::ReferenceWorkload`]) run `compress` times faster than
//! real time ([`run_schedule`]). With `--push-loss`, the simulator also
//! pushes JoggAI's webhooks to the relay (losing that share of them), and
//! the table shows how soon a push becomes a callback and how late the
//! videos whose push was lost are noticed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde_json::json;

use super::relay::Relay;
use super::{SECRET, cell, percentile, sqlite_url, write_config};
use crate::config::WebhookSecret;
use crate::sim::{PushSettings, SimReceiver, SimUpstream};
use crate::workload::{DelayReport, ReferenceWorkload};

/// Which polling strategies `bench --schedule` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyChoice {
    /// `polling.strategy = "exponential"`: backoff from the last change.
    Exponential,
    /// `polling.strategy = "adaptive"`: polls when completions are likely.
    Adaptive,
    /// Both, one after the other, each on a fresh relay and database.
    Both,
}

impl StrategyChoice {
    /// The `polling.strategy` values to run, in order.
    pub fn strategies(self) -> &'static [&'static str] {
        match self {
            StrategyChoice::Exponential => &["exponential"],
            StrategyChoice::Adaptive => &["adaptive"],
            StrategyChoice::Both => &["exponential", "adaptive"],
        }
    }
}

/// What `bench --schedule` runs.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// Videos of the reference workload.
    pub videos: usize,
    /// Time compression: every duration of the workload and of the polling
    /// configuration is divided by it, every measured delay multiplied.
    pub compress: f64,
    /// Strategies to run.
    pub strategy: StrategyChoice,
    /// Seed of the workload (the same for every strategy).
    pub seed: u64,
    /// The poll budget in real-time-equivalent requests per second (the
    /// relay gets `rate × compress`, the simulator enforces the same).
    pub rate: f64,
    /// With pushes: the share of JoggAI's pushes lost (0 to 1). `None`: no
    /// pushes, polling alone.
    pub push_loss: Option<f64>,
    /// From a render's end to its push, real-time equivalent (the
    /// simulator waits `push_delay / compress`).
    pub push_delay: Duration,
}

impl ScheduleOptions {
    /// Whether the options can run; the problem, naming the flag, if not.
    pub fn check(&self) -> Result<(), String> {
        if self.videos == 0 {
            return Err("--videos must be at least 1".into());
        }
        if !(self.compress.is_finite() && self.compress > 0.0) {
            return Err(format!(
                "--compress must be a positive number, got {}",
                self.compress
            ));
        }
        if let Some(loss) = self.push_loss
            && !(0.0..=1.0).contains(&loss)
        {
            return Err(format!(
                "--push-loss must be a fraction from 0 to 1, got {loss}"
            ));
        }
        // The relay's budget (rate × compress) must be one it accepts.
        let relay_rate = self.rate * self.compress;
        if !(relay_rate.is_finite() && (0.001..=1_000_000.0).contains(&relay_rate)) {
            return Err(format!(
                "--rate × --compress must be between 0.001 and 1000000 requests per second, got {relay_rate}"
            ));
        }
        Ok(())
    }
}

/// Burst of the schedule benchmark's budget: the shipped default. A burst
/// is a number of requests, not a duration, so it is not compressed.
const SCHEDULE_BURST: u32 = 10;

/// One row of the schedule table: a strategy's report, its delays already
/// in real-time-equivalent terms.
#[derive(Debug, Clone)]
struct ScheduleRow {
    strategy: &'static str,
    report: DelayReport,
    violations: u64,
    /// With pushes: what they achieved.
    pushes: Option<PushFigures>,
}

/// What pushes achieved in one strategy's run.
#[derive(Debug, Clone, PartialEq)]
struct PushFigures {
    /// From an accepted push being sent to its video's verified callback
    /// arriving at the receiver, milliseconds of wall-clock time (not
    /// scaled: loopback latency does not shrink with the compression):
    /// p50, p95, max. `None` when no push was accepted.
    push_to_callback_ms: Option<[f64; 3]>,
    /// Videos whose push was lost (dropped, or never answered 2xx).
    lost: usize,
    /// Of those, the pushes sent but never answered 2xx by the relay (the
    /// rest were dropped by the simulator).
    refused: usize,
    /// Of those, the latest verified callback after its render's end,
    /// real-time-equivalent seconds; `None` when none was lost (or none of
    /// them got a callback).
    lost_latest_s: Option<f64>,
    /// What that is held to: `safety_net_interval + max_interval`,
    /// real-time-equivalent seconds.
    bound_s: f64,
    /// Videos that never got a verified callback.
    without_callback: usize,
}

impl ScheduleRow {
    const HEADER: &str = "| strategy | videos | calls per video | detection delay p50 / p95 / p99 s | mean delay s | undetected | budget violations |\n|---|---:|---:|---:|---:|---:|---:|";

    /// The header of the table with pushes.
    const PUSH_HEADER: &str = "| strategy | videos | calls per video | detection delay p50 / p95 / p99 s | push→callback p50 / p95 / max ms | pushes lost (refused) | lost: latest callback after render end s (bound) | without callback | budget violations |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|";

    fn to_markdown(&self) -> String {
        let r = &self.report;
        let Some(pushes) = &self.pushes else {
            return format!(
                "| {} | {} | {:.2} | {:.1} / {:.1} / {:.1} | {:.1} | {} | {} |",
                self.strategy,
                r.videos,
                r.calls_per_video,
                r.delay_p50.as_secs_f64(),
                r.delay_p95.as_secs_f64(),
                r.delay_p99.as_secs_f64(),
                r.delay_mean.as_secs_f64(),
                r.undetected,
                self.violations,
            );
        };
        let push_to_callback = pushes.push_to_callback_ms.map_or_else(
            || "–".to_owned(),
            |[p50, p95, max]| format!("{p50:.1} / {p95:.1} / {max:.1}"),
        );
        format!(
            "| {} | {} | {:.2} | {:.1} / {:.1} / {:.1} | {push_to_callback} | {} ({}) | {} ({:.0}) | {} | {} |",
            self.strategy,
            r.videos,
            r.calls_per_video,
            r.delay_p50.as_secs_f64(),
            r.delay_p95.as_secs_f64(),
            r.delay_p99.as_secs_f64(),
            pushes.lost,
            pushes.refused,
            cell(pushes.lost_latest_s, 1),
            pushes.bound_s,
            pushes.without_callback,
            self.violations,
        )
    }
}

/// A duration as the configuration writes it, in whole microseconds (at
/// least one).
fn config_duration(duration: Duration) -> String {
    format!("{}us", duration.as_micros().max(1))
}

/// Real-time-equivalent `polling.safety_net_interval` of the runs with
/// pushes: the shipped default.
const SAFETY_NET_SECS: f64 = 300.0;
/// Real-time-equivalent `polling.max_interval`: the shipped default.
const MAX_INTERVAL_SECS: f64 = 60.0;

/// Where the relay of a run with pushes sends its callbacks, and the
/// secret JoggAI's pushes are signed with.
/// (No `Debug`: it holds a secret.)
#[derive(Clone)]
struct PushTargets {
    /// `jogg.webhook_secret` (random per run).
    webhook_secret: String,
    /// The receiver's URL, for `callbacks.urls`.
    callback_url: String,
}

/// The relay's configuration for one strategy: every polling duration of
/// the shipped defaults divided by `compress`, the budget multiplied. With
/// pushes, also the push secret, the compressed safety net, and signed
/// callbacks to the receiver.
fn schedule_config(
    options: &ScheduleOptions,
    strategy: &str,
    pushes: Option<&PushTargets>,
) -> String {
    let scaled =
        |seconds: f64| config_duration(Duration::from_secs_f64(seconds / options.compress));
    let mut config = format!(
        "requests_per_second = {:.3}\nburst = {SCHEDULE_BURST}\n",
        options.rate * options.compress
    );
    if let Some(pushes) = pushes {
        config.push_str(&format!("webhook_secret = \"{}\"\n", pushes.webhook_secret));
    }
    config.push_str(&format!(
        "[polling]\nfirst_after = \"{}\"\nmin_interval = \"{}\"\nmax_interval = \"{}\"\n\
         jitter = 0.1\nstrategy = \"{strategy}\"\n",
        scaled(10.0),
        scaled(10.0),
        scaled(MAX_INTERVAL_SECS),
    ));
    if let Some(pushes) = pushes {
        config.push_str(&format!(
            "safety_net_interval = \"{}\"\n\
             [callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\n",
            scaled(SAFETY_NET_SECS),
            pushes.callback_url,
        ));
    }
    config
}

/// A random push secret: 32 letters and digits.
fn random_push_secret() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

/// `bench --schedule`: runs the reference workload against the real relay
/// once per strategy and prints one table row per strategy.
pub async fn run_schedule(options: ScheduleOptions) -> anyhow::Result<()> {
    if let Err(problem) = options.check() {
        bail!("{problem}");
    }
    println!(
        "jogg-relay bench --schedule: {} videos of the reference workload (seed {}), \
         {}x faster than real time, budget {} requests/s (real time); delays in \
         real-time-equivalent seconds",
        options.videos, options.seed, options.compress, options.rate
    );
    if let Some(loss) = options.push_loss {
        println!(
            "with JoggAI's pushes: {:.0} % lost, sent {} s (real time) after each render ends; \
             safety net {SAFETY_NET_SECS} s; push→callback in wall-clock milliseconds (not scaled)",
            loss * 100.0,
            options.push_delay.as_secs_f64(),
        );
    }
    let mut rows = Vec::new();
    for &strategy in options.strategy.strategies() {
        let row = run_strategy(&options, strategy)
            .await
            .with_context(|| format!("strategy {strategy}"))?;
        eprintln!("strategy {strategy} done: {row:?}");
        rows.push(row);
    }
    println!();
    if options.push_loss.is_some() {
        println!("{}", ScheduleRow::PUSH_HEADER);
    } else {
        println!("{}", ScheduleRow::HEADER);
    }
    for row in &rows {
        println!("{}", row.to_markdown());
    }
    Ok(())
}

/// One strategy on a fresh simulator, relay and database: enqueues each
/// video at its (compressed) arrival, scripting the simulator with the
/// render created at that moment, then waits until the relay has seen
/// every render end (with pushes: until every video has its verified
/// callback).
async fn run_strategy(
    options: &ScheduleOptions,
    strategy: &'static str,
) -> anyhow::Result<ScheduleRow> {
    let jobs = ReferenceWorkload {
        videos: options.videos,
        scale: 1.0 / options.compress,
        seed: options.seed,
    }
    .generate();
    let dir = tempfile::tempdir()?;
    let sim = SimUpstream::start().await?;
    let receiver = match options.push_loss {
        Some(_) => {
            let secret = WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret")
                .expect("valid");
            Some(SimReceiver::start(Some(secret)).await?)
        }
        None => None,
    };
    let targets = receiver.as_ref().map(|receiver| PushTargets {
        webhook_secret: random_push_secret(),
        callback_url: receiver.url("schedule"),
    });
    let config = write_config(
        dir.path(),
        &sim,
        &sqlite_url(dir.path()),
        &schedule_config(options, strategy, targets.as_ref()),
    )?;
    let relay = Relay::start(&config)?;
    let client = crate::outbound::client_builder().build()?;
    sim.state
        .set_budget(options.rate * options.compress, SCHEDULE_BURST);
    if let (Some(loss), Some(targets)) = (options.push_loss, &targets) {
        let compressed = |d: Duration| d.div_f64(options.compress);
        let url = format!("{}/webhooks/jogg", relay.base).parse()?;
        sim.state.set_pushes(Some(PushSettings {
            drop_rate: loss,
            delay: compressed(options.push_delay),
            seed: options.seed,
            retry_spacing: compressed(Duration::from_secs(5)),
            // Not compressed: how fast the relay answers on loopback does
            // not shrink with the workload.
            ..PushSettings::new(url, &targets.webhook_secret)
        }))?;
    }

    let started = tokio::time::Instant::now();
    // When each render ends, as an instant comparable with the receiver's.
    let mut render_ends = std::collections::HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        tokio::time::sleep_until(started + job.arrival).await;
        let id = format!("render-{i}");
        sim.state.script_render(&id, *job, sim.state.now());
        render_ends.insert(id.clone(), Instant::now() + job.finishes_after());
        let response = client
            .post(format!("{}/v1/videos", relay.base))
            .json(&json!({"video_id": id}))
            .send()
            .await?;
        if response.status() != 201 {
            bail!("enqueue answered {}", response.status());
        }
    }
    // Every render ends by its arrival plus its duration; past that, the
    // relay needs at most a few of its longest intervals to notice. The
    // margin is generous: a slow relay shows as delay, not as a failure.
    let last_end = jobs
        .iter()
        .map(|job| job.arrival + job.finishes_after())
        .max()
        .unwrap_or_default();
    let longest_gap = Duration::from_secs_f64(
        if options.push_loss.is_some() {
            SAFETY_NET_SECS.max(MAX_INTERVAL_SECS)
        } else {
            MAX_INTERVAL_SECS
        } / options.compress,
    );
    let deadline = started + last_end + longest_gap * 10 + Duration::from_secs(30);
    let done = || match &receiver {
        Some(receiver) => callbacks_by_video(receiver).len() >= jobs.len(),
        None => sim
            .state
            .render_outcomes()
            .iter()
            .all(|o| o.detected_at.is_some()),
    };
    while !done() {
        if tokio::time::Instant::now() > deadline {
            eprintln!("strategy {strategy}: deadline passed with videos still unfinished");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let violations = sim.state.violations();
    relay.stop()?;
    let pushes = receiver.as_ref().map(|receiver| {
        push_figures(
            &sim.state.pushes(),
            &callbacks_by_video(receiver),
            &render_ends,
            options.compress,
        )
    });
    Ok(ScheduleRow {
        strategy,
        report: sim.state.delay_report().scaled(options.compress),
        violations,
        pushes,
    })
}

/// When each video's first verified, accepted callback arrived.
fn callbacks_by_video(receiver: &SimReceiver) -> std::collections::HashMap<String, Instant> {
    let mut first = std::collections::HashMap::new();
    for callback in receiver.state.received() {
        if !(callback.accepted() && callback.verified()) {
            continue;
        }
        if let Some(id) = callback.body["data"]["video_id"].as_str() {
            first
                .entry(id.to_owned())
                .and_modify(|at: &mut Instant| *at = (*at).min(callback.arrived))
                .or_insert(callback.arrived);
        }
    }
    first
}

/// The push figures of a run: `pushes` is the simulator's record,
/// `callbacks` the first verified callback per video, `render_ends` when
/// each render ended (every video of the run), `compress` the compression.
fn push_figures(
    pushes: &[crate::sim::PushRecord],
    callbacks: &std::collections::HashMap<String, Instant>,
    render_ends: &std::collections::HashMap<String, Instant>,
    compress: f64,
) -> PushFigures {
    let mut push_to_callback: Vec<f64> = Vec::new();
    let mut lost_latest: Option<f64> = None;
    let (mut lost, mut refused) = (0, 0);
    for push in pushes {
        let callback = callbacks.get(&push.video_id);
        match push.accepted() {
            Some(attempt) => {
                // A callback that came first (a poll noticed the render
                // before the push was sent) counts as no delay.
                if let Some(callback) = callback {
                    push_to_callback.push(
                        callback
                            .saturating_duration_since(attempt.sent)
                            .as_secs_f64()
                            * 1000.0,
                    );
                }
            }
            None => {
                lost += 1;
                if !push.dropped {
                    refused += 1;
                }
                if let (Some(callback), Some(end)) = (callback, render_ends.get(&push.video_id)) {
                    let late = callback.saturating_duration_since(*end).as_secs_f64() * compress;
                    lost_latest = Some(lost_latest.map_or(late, |l: f64| l.max(late)));
                }
            }
        }
    }
    push_to_callback.sort_by(f64::total_cmp);
    PushFigures {
        push_to_callback_ms: push_to_callback.last().map(|&max| {
            [
                percentile(&push_to_callback, 0.5),
                percentile(&push_to_callback, 0.95),
                max,
            ]
        }),
        lost,
        refused,
        lost_latest_s: lost_latest,
        bound_s: SAFETY_NET_SECS + MAX_INTERVAL_SECS,
        without_callback: render_ends
            .keys()
            .filter(|id| !callbacks.contains_key(*id))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_config_compresses_the_default_polling() {
        let options = ScheduleOptions {
            videos: 1,
            compress: 30.0,
            strategy: StrategyChoice::Both,
            seed: 1,
            rate: 10.0,
            push_loss: None,
            push_delay: Duration::from_millis(500),
        };
        let exponential = schedule_config(&options, "exponential", None);
        assert_eq!(
            exponential,
            "requests_per_second = 300.000\nburst = 10\n[polling]\nfirst_after = \"333333us\"\n\
             min_interval = \"333333us\"\nmax_interval = \"2000000us\"\njitter = 0.1\n\
             strategy = \"exponential\"\n"
        );
        assert!(schedule_config(&options, "adaptive", None).ends_with("strategy = \"adaptive\"\n"));
        // And the relay accepts it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, format!("[jogg]\napi_key = \"k\"\n{exponential}")).unwrap();
        let settings = crate::config::Settings::load(Some(&path), []).expect("loads");
        let config = settings.validate().expect("a valid configuration");
        assert_eq!(config.polling.min_interval, Duration::from_micros(333_333));
        assert_eq!(config.polling.max_interval, Duration::from_secs(2));
        assert_eq!(
            config.polling.strategy,
            crate::config::PollStrategy::Exponential
        );
    }

    #[test]
    fn a_schedule_row_shows_real_time_seconds() {
        let report = DelayReport::from_samples(
            &[4, 6],
            &[Duration::from_millis(100), Duration::from_millis(300)],
            0,
        )
        .scaled(30.0);
        let row = ScheduleRow {
            strategy: "adaptive",
            report,
            violations: 0,
            pushes: None,
        };
        assert_eq!(
            row.to_markdown(),
            "| adaptive | 2 | 5.00 | 3.0 / 9.0 / 9.0 | 6.0 | 0 | 0 |"
        );
        assert_eq!(
            StrategyChoice::Both.strategies(),
            ["exponential", "adaptive"]
        );
    }

    #[test]
    fn the_schedule_config_with_pushes_enables_them_and_verifies_callbacks() {
        let options = ScheduleOptions {
            videos: 1,
            compress: 30.0,
            strategy: StrategyChoice::Adaptive,
            seed: 1,
            rate: 10.0,
            push_loss: Some(0.2),
            push_delay: Duration::from_millis(500),
        };
        let targets = PushTargets {
            webhook_secret: "0123456789abcdefABCDEF".into(),
            callback_url: "http://127.0.0.1:4000/schedule".into(),
        };
        let text = schedule_config(&options, "adaptive", Some(&targets));
        assert_eq!(
            text,
            format!(
                "requests_per_second = 300.000\nburst = 10\n\
                 webhook_secret = \"0123456789abcdefABCDEF\"\n\
                 [polling]\nfirst_after = \"333333us\"\nmin_interval = \"333333us\"\n\
                 max_interval = \"2000000us\"\njitter = 0.1\nstrategy = \"adaptive\"\n\
                 safety_net_interval = \"10000000us\"\n\
                 [callbacks]\nurls = [\"http://127.0.0.1:4000/schedule\"]\nsecret = \"{SECRET}\"\n"
            )
        );
        // And the relay reads it as meant: pushes on, a 300 s / 30 net,
        // signed callbacks to the receiver.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, format!("[jogg]\napi_key = \"k\"\n{text}")).unwrap();
        let settings = crate::config::Settings::load(Some(&path), []).expect("loads");
        let config = settings.validate().expect("a valid configuration");
        assert_eq!(
            config
                .jogg
                .webhook_secret
                .as_ref()
                .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned()),
            Some("0123456789abcdefABCDEF".to_owned())
        );
        assert_eq!(config.polling.safety_net, Some(Duration::from_secs(10)));
        assert_eq!(config.polling.max_interval, Duration::from_secs(2));
        assert_eq!(
            config
                .callbacks
                .urls
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:4000/schedule"]
        );
        assert!(config.callbacks.secret.is_some());
        // A random secret is long enough for the relay, and new each run.
        let (a, b) = (random_push_secret(), random_push_secret());
        assert!(
            a.len() >= 16 && a.chars().all(|c| c.is_ascii_alphanumeric()),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn push_loss_outside_zero_to_one_is_refused() {
        let options = |loss| ScheduleOptions {
            videos: 1,
            compress: 30.0,
            strategy: StrategyChoice::Adaptive,
            seed: 1,
            rate: 10.0,
            push_loss: Some(loss),
            push_delay: Duration::from_millis(500),
        };
        for loss in [0.0, 0.2, 1.0] {
            assert_eq!(options(loss).check(), Ok(()));
        }
        for loss in [-0.1, 1.5, f64::NAN] {
            let problem = options(loss).check().unwrap_err();
            assert!(problem.contains("--push-loss"), "{problem}");
        }
    }

    #[test]
    fn push_figures_separate_lost_pushes_from_delivered_ones() {
        use crate::sim::{PushAnswer, PushAttempt, PushRecord};
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let attempt = |sent: Instant, status: u16| PushAttempt {
            at: crate::domain::Millis(0),
            sent,
            answer: PushAnswer::Status(status),
        };
        let record = |id: &str, dropped: bool, attempts: Vec<PushAttempt>| PushRecord {
            video_id: id.into(),
            event_id: format!("e-{id}"),
            event: crate::sim::push::EVENT_SUCCESS,
            finished_at: crate::domain::Millis(0),
            due_at: crate::domain::Millis(0),
            dropped,
            attempts,
        };
        let pushes = vec![
            // Delivered: callbacks 20 ms and 40 ms after the accepted push
            // (the second after a failed attempt).
            record("a", false, vec![attempt(ms(100), 200)]),
            record(
                "b",
                false,
                vec![attempt(ms(100), 503), attempt(ms(200), 200)],
            ),
            // Lost: dropped, and refused every time.
            record("c", true, vec![]),
            record("d", false, vec![attempt(ms(100), 500); 4]),
        ];
        let callbacks = std::collections::HashMap::from([
            ("a".to_owned(), ms(120)),
            ("b".to_owned(), ms(240)),
            ("c".to_owned(), ms(1100)),
            ("d".to_owned(), ms(600)),
        ]);
        let ends = std::collections::HashMap::from([
            ("a".to_owned(), ms(90)),
            ("b".to_owned(), ms(90)),
            ("c".to_owned(), ms(100)),
            ("d".to_owned(), ms(100)),
            ("e".to_owned(), ms(100)),
        ]);
        let figures = push_figures(&pushes, &callbacks, &ends, 30.0);
        let [p50, p95, max] = figures.push_to_callback_ms.expect("delivered pushes");
        assert!(
            (p50 - 20.0).abs() < 0.01 || (p50 - 40.0).abs() < 0.01,
            "{p50}"
        );
        assert!(
            (p95 - 40.0).abs() < 0.01 && (max - 40.0).abs() < 0.01,
            "{p95} {max}"
        );
        assert_eq!((figures.lost, figures.refused), (2, 1));
        // c: 1000 ms after its render's end, 30 s in real time.
        let latest = figures.lost_latest_s.expect("lost videos with callbacks");
        assert!((latest - 30.0).abs() < 0.01, "{latest}");
        assert_eq!(figures.bound_s, 360.0);
        // e never got a callback.
        assert_eq!(figures.without_callback, 1);
    }

    #[test]
    fn a_schedule_row_with_pushes_shows_them() {
        let report = DelayReport::from_samples(
            &[2, 3],
            &[Duration::from_millis(20), Duration::from_millis(40)],
            0,
        )
        .scaled(30.0);
        let mut row = ScheduleRow {
            strategy: "adaptive",
            report,
            violations: 0,
            pushes: Some(PushFigures {
                push_to_callback_ms: Some([3.24, 9.87, 25.0]),
                lost: 61,
                refused: 1,
                lost_latest_s: Some(301.26),
                bound_s: 360.0,
                without_callback: 0,
            }),
        };
        assert_eq!(
            row.to_markdown(),
            "| adaptive | 2 | 2.50 | 0.6 / 1.2 / 1.2 | 3.2 / 9.9 / 25.0 | 61 (1) | 301.3 (360) | 0 | 0 |"
        );
        // The header has a column for every cell.
        let columns = ScheduleRow::PUSH_HEADER
            .lines()
            .next()
            .unwrap()
            .matches('|')
            .count();
        assert_eq!(row.to_markdown().matches('|').count(), columns);
        row.pushes = Some(PushFigures {
            push_to_callback_ms: None,
            lost: 0,
            refused: 0,
            lost_latest_s: None,
            bound_s: 360.0,
            without_callback: 2,
        });
        assert_eq!(
            row.to_markdown(),
            "| adaptive | 2 | 2.50 | 0.6 / 1.2 / 1.2 | – | 0 (0) | – (360) | 2 | 0 |"
        );
    }
}
