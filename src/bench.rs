//! `jogg-relay bench`: measures the real daemon (this binary's `serve`, as a
//! child process, so its CPU time and memory are its own) against the
//! simulated upstream and receiver on loopback, at several numbers of
//! tracked videos, and prints one table.
//!
//! Phases per scale, each on a fresh relay process over the same database:
//! 1. enqueue: single requests (keep-alive, concurrent clients), then
//!    batches, until `scale` videos are tracked (never due: they are the
//!    backlog the later phases run beside);
//! 2. polls: a hot set of videos polled five times each with no budget;
//! 3. deliveries: videos that complete on their first poll, enqueued at a
//!    steady 1,000 per second, each with one signed callback; detection
//!    latency from the simulator's terminal answer to the verified callback;
//! 4. budget: a backlog polled under a 200/s budget that the simulator
//!    enforces strictly.
//!
//! With `--backend postgres` the relay runs on a PostgreSQL database of a
//! throwaway cluster the bench starts itself (PostgreSQL's default
//! durability, so commits are as durable as SQLite's), and with
//! `--instances N` as N processes on that one database, the load spread
//! across them: throughput is the whole's, CPU the sum of the processes',
//! peak RSS the largest process's.
//!
//! `bench --schedule` measures something else: how soon the relay notices
//! renders finish, and how many polls that costs, per polling strategy, on
//! the reference workload ([`crate::workload::ReferenceWorkload`]) run
//! `compress` times faster than real time ([`run_schedule`]). With
//! `--push-loss`, the simulator also pushes JoggAI's webhooks to the relay
//! (losing that share of them), and the table shows how soon a push becomes
//! a callback and how late the videos whose push was lost are noticed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::config::WebhookSecret;
use crate::sim::{PushSettings, SIM_API_KEY, SimReceiver, SimUpstream, Timeline};
use crate::workload::{DelayReport, ReferenceWorkload};

const SECRET: &str = "whsec_YmVuY2htYXJrLXNpZ25pbmctc2VjcmV0";
/// Concurrent clients for single enqueues.
const CLIENTS: usize = 64;
/// Budget of the compliance phase.
const BUDGET_RATE: f64 = 200.0;
const BUDGET_BURST: u32 = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Numbers of tracked videos.
    pub scales: Vec<usize>,
    /// Single enqueue requests per scale (at most the scale).
    pub single_requests: usize,
    /// Videos in the poll phase.
    pub hot_videos: usize,
    /// Videos in the delivery phase.
    pub delivery_videos: usize,
    /// Length of the budget phase.
    pub budget_window: Duration,
    /// The database engine the relay runs on.
    pub backend: BenchBackend,
    /// Relay processes sharing the database (PostgreSQL only).
    pub instances: usize,
}

/// The database engine `bench` runs the relay on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A database on a throwaway PostgreSQL cluster the bench starts (the
    /// server binaries must be installed).
    Postgres,
}

impl BenchOptions {
    /// Refuses combinations that make no sense, with a message saying why
    /// (the command exits 64 with it).
    pub fn check(&self) -> Result<(), String> {
        if self.instances == 0 {
            return Err("--instances must be at least 1".into());
        }
        if self.instances > 1 && self.backend == BenchBackend::Sqlite {
            return Err(
                "--instances above 1 needs --backend postgres: one SQLite file serves one relay"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Where each scale's fresh database comes from.
enum Databases {
    /// A file in the scale's temporary folder.
    Sqlite,
    /// A fresh database on this cluster.
    Postgres(crate::scratch_postgres::ScratchCluster),
}

impl Databases {
    /// A new, empty database's URL (a SQLite file in `dir`).
    async fn create(&self, dir: &Path) -> anyhow::Result<String> {
        match self {
            Databases::Sqlite => Ok(format!("sqlite://{}/bench.db", dir.display())),
            Databases::Postgres(cluster) => Ok(cluster.create_database().await?),
        }
    }
}

/// One row of the table; a figure is `None` when its phase did not run
/// (no videos in it), and the table shows `–` for it, not a misleading `0`.
#[derive(Debug, Clone, Default)]
struct Row {
    scale: usize,
    single_per_s: Option<f64>,
    batch_ids_per_s: Option<f64>,
    polls_per_s: Option<f64>,
    cpu_us_per_poll: Option<f64>,
    cpu_us_per_delivery: Option<f64>,
    latency_ms: Option<[f64; 3]>,
    violations: u64,
    utilization: f64,
    peak_rss_mib: f64,
}

impl Row {
    /// The row in the table's Markdown layout.
    fn to_markdown(&self) -> String {
        let latency = self.latency_ms.map_or_else(
            || "–".to_owned(),
            |[p50, p95, p99]| format!("{p50:.1} / {p95:.1} / {p99:.1}"),
        );
        format!(
            "| {} | {} | {} | {} | {} | {} | {latency} | {} | {:.1} % | {:.1} |",
            self.scale,
            cell(self.single_per_s, 0),
            cell(self.batch_ids_per_s, 0),
            cell(self.polls_per_s, 0),
            cell(self.cpu_us_per_poll, 1),
            cell(self.cpu_us_per_delivery, 1),
            self.violations,
            self.utilization * 100.0,
            self.peak_rss_mib,
        )
    }
}

/// A figure with `decimals` decimals, or `–` for a phase that did not run.
fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// A relay child process.
struct Relay {
    child: Child,
    base: String,
}

impl Relay {
    fn start(config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--config", &config.display().to_string(), "serve"])
            // The production default: what the relay logs is part of its cost.
            .env("RUST_LOG", crate::telemetry::DEFAULT_FILTER)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start the relay")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut last = String::new();
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                // Its last line says why (e.g. a configuration error).
                bail!("the relay exited before listening: {last}");
            };
            if let Some(rest) = line.split("address=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            last = line;
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            base: format!("http://{address}"),
        })
    }

    /// User + system CPU seconds so far, from `/proc` (all threads).
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may contain spaces).
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the file, 12 and 13 here;
        // Linux reports them in USER_HZ, which is 100.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Peak resident set size, MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the relay exited with {status}");
        }
        Ok(())
    }
}

fn write_config(
    dir: &Path,
    database: &str,
    sim: &SimUpstream,
    extra: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\
             [database]\nurl = \"{database}\"\n\
             [jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\nmax_in_flight = 64\n{extra}",
            sim.base_url,
        ),
    )?;
    Ok(path)
}

/// The relay processes of one phase, all on one database.
struct Fleet {
    relays: Vec<Relay>,
}

impl Fleet {
    /// Starts `count` relays with `config`.
    fn start(config: &Path, count: usize) -> anyhow::Result<Self> {
        let relays = (0..count)
            .map(|_| Relay::start(config))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { relays })
    }

    /// The base URL of the relay that takes request number `n`: round
    /// robin.
    fn base(&self, n: usize) -> &str {
        &self.relays[n % self.relays.len()].base
    }

    /// CPU seconds of all the relays together.
    fn cpu_seconds(&self) -> f64 {
        self.relays.iter().map(Relay::cpu_seconds).sum()
    }

    /// The largest relay's peak resident set size, MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.relays
            .iter()
            .map(Relay::peak_rss_mib)
            .fold(0.0, f64::max)
    }

    fn stop(self) -> anyhow::Result<()> {
        for relay in self.relays {
            relay.stop()?;
        }
        Ok(())
    }
}

/// Scripts `count` videos named `{prefix}-{i}` with `timeline`; their ids.
fn script_videos(sim: &SimUpstream, prefix: &str, count: usize, timeline: Timeline) -> Vec<String> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            sim.state.script(&id, timeline.clone());
            id
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs every scale and prints the table.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let databases = match options.backend {
        BenchBackend::Sqlite => Databases::Sqlite,
        BenchBackend::Postgres => Databases::Postgres(
            tokio::task::spawn_blocking(|| {
                crate::scratch_postgres::ScratchCluster::start_with(
                    crate::scratch_postgres::Durability::Durable,
                )
            })
            .await?
            .context(
                "cannot start a throwaway PostgreSQL cluster for --backend postgres \
                 (install the distribution's postgresql package for initdb and postgres)",
            )?,
        ),
    };
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "jogg-relay bench: {cores} cores, {machine}; {:?} with {} relay process(es)",
        options.backend, options.instances
    );
    let mut rows = Vec::new();
    for &scale in &options.scales {
        let row = run_scale(scale, &options, &databases)
            .await
            .with_context(|| format!("scale {scale}"))?;
        eprintln!("scale {scale} done: {row:?}");
        rows.push(row);
    }
    println!();
    println!(
        "| tracked videos | single enqueue req/s | batch enqueue ids/s | polls/s (no budget) | relay CPU µs/poll | relay CPU µs/delivery | detection→callback p50 / p95 / p99 ms | budget violations | budget used | peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!("{}", r.to_markdown());
    }
    Ok(())
}

async fn run_scale(
    scale: usize,
    options: &BenchOptions,
    databases: &Databases,
) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let database = databases.create(dir.path()).await?;
    let instances = options.instances;
    let sim = SimUpstream::start().await?;
    let secret =
        WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").expect("valid");
    let receiver = SimReceiver::start(Some(secret)).await?;
    let client = crate::outbound::client_builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let mut row = Row {
        scale,
        ..Row::default()
    };
    let mut peak = 0.0f64;

    // 1. Enqueue the backlog: never due during the run.
    let config = write_config(
        dir.path(),
        &database,
        &sim,
        "[polling]\nfirst_after = \"10000h\"\n",
    )?;
    let relay = Fleet::start(&config, instances)?;
    let singles = options.single_requests.min(scale);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CLIENTS {
        let (client, next, base) = (client.clone(), next.clone(), relay.base(worker).to_owned());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= singles {
                    return Ok::<_, anyhow::Error>(());
                }
                let response = client
                    .post(format!("{base}/v1/videos"))
                    .json(&json!({"video_id": format!("backlog-{i}")}))
                    .send()
                    .await?;
                if response.status() != 201 {
                    bail!("enqueue answered {}", response.status());
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    if singles > 0 {
        row.single_per_s = Some(singles as f64 / started.elapsed().as_secs_f64());
    }

    // Bodies are serialized before the clock starts: the load generator
    // shares the machine with the relay, and its own JSON work is not what
    // this measures.
    let batches: Vec<String> = (singles..scale)
        .map(|i| json!({"video_id": format!("backlog-{i}")}))
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|batch| json!({ "videos": batch }).to_string())
        .collect();
    let started = Instant::now();
    let batch_ids = scale - singles;
    let batches = Arc::new(std::sync::Mutex::new(batches));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (client, batches, base) = (
            client.clone(),
            batches.clone(),
            relay.base(worker).to_owned(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(batch) = batches.lock().expect("not poisoned").pop() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let response = client
                    .post(format!("{base}/v1/videos/batch"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(batch)
                    .send()
                    .await?;
                if response.status() != 200 {
                    bail!("batch answered {}", response.status());
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    if batch_ids > 0 {
        row.batch_ids_per_s = Some(batch_ids as f64 / started.elapsed().as_secs_f64());
    }
    peak = peak.max(relay.peak_rss_mib());
    relay.stop()?;

    // 2. Polls with no budget: a hot set polled five times each, beside the
    // backlog.
    let hot = script_videos(&sim, "hot", options.hot_videos, Timeline::completes(4, 0));
    let config = write_config(
        dir.path(),
        &database,
        &sim,
        "requests_per_second = 1000000.0\nburst = 100000\n\
         [polling]\nfirst_after = \"0s\"\nmin_interval = \"1ms\"\nmax_interval = \"1ms\"\njitter = 0.0\n",
    )?;
    let relay = Fleet::start(&config, instances)?;
    let requests_before = sim.state.request_count();
    let cpu_before = relay.cpu_seconds();
    let started = Instant::now();
    enqueue_batches(&client, &relay, &hot).await?;
    wait_until(
        || sim.state.terminal_answers().len() >= hot.len(),
        Duration::from_secs(600),
    )
    .await?;
    let polls = (sim.state.request_count() - requests_before) as f64;
    if !hot.is_empty() {
        row.polls_per_s = Some(polls / started.elapsed().as_secs_f64());
        row.cpu_us_per_poll = Some((relay.cpu_seconds() - cpu_before) * 1e6 / polls);
    }
    peak = peak.max(relay.peak_rss_mib());
    relay.stop()?;

    // 3. Deliveries and detection latency.
    let deliver = script_videos(
        &sim,
        "deliver",
        options.delivery_videos,
        Timeline::completes(0, 0),
    );
    let config = write_config(
        dir.path(),
        &database,
        &sim,
        &format!(
            "requests_per_second = 1000000.0\nburst = 100000\n\
             [polling]\nfirst_after = \"0s\"\n\
             [callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\n",
            receiver.url("bench")
        ),
    )?;
    let relay = Fleet::start(&config, instances)?;
    let cpu_before = relay.cpu_seconds();
    // Videos finish at a steady 1,000 per second (20 every 20 ms), so the
    // latency is that of a relay keeping up, not of a queue draining.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for chunk in deliver.chunks(20) {
        pace.tick().await;
        enqueue_batches(&client, &relay, chunk).await?;
    }
    receiver
        .state
        .wait_for_accepted(deliver.len(), Duration::from_secs(600))
        .await
        .then_some(())
        .context("not every callback arrived")?;
    let cpu = relay.cpu_seconds() - cpu_before;
    let n = deliver.len() as f64;
    if !deliver.is_empty() {
        // Each delivered video was polled once too; that share is not
        // delivery work.
        let poll_share = row.cpu_us_per_poll.unwrap_or(0.0) * n;
        row.cpu_us_per_delivery = Some(((cpu * 1e6) - poll_share).max(0.0) / n);
    }
    let terminal = sim.state.terminal_answers();
    let mut latencies: Vec<f64> = receiver
        .state
        .received()
        .iter()
        .filter(|r| r.accepted() && r.verified())
        .filter_map(|r| {
            let id = r.body["data"]["video_id"].as_str()?;
            Some(
                r.arrived
                    .saturating_duration_since(*terminal.get(id)?)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        row.latency_ms = Some([
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
        ]);
    }
    peak = peak.max(relay.peak_rss_mib());
    relay.stop()?;

    // 4. Budget compliance and use, with a backlog larger than the budget.
    let backlog_size =
        ((BUDGET_RATE * (options.budget_window.as_secs_f64() + 1.0) * 2.0) as usize).max(100);
    let backlog = script_videos(
        &sim,
        "budget",
        backlog_size,
        Timeline::completes(1_000_000, 0),
    );
    let config = write_config(
        dir.path(),
        &database,
        &sim,
        &format!(
            "requests_per_second = {BUDGET_RATE:.1}\nburst = {BUDGET_BURST}\n\
             [polling]\nfirst_after = \"0s\"\nmin_interval = \"1ms\"\nmax_interval = \"1ms\"\n"
        ),
    )?;
    let relay = Fleet::start(&config, instances)?;
    sim.state.set_budget(BUDGET_RATE, BUDGET_BURST);
    enqueue_batches(&client, &relay, &backlog).await?;
    // Measure the steady state: past the first second, the initial burst
    // no longer flatters the figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sim.state.request_count();
    let started = Instant::now();
    tokio::time::sleep(options.budget_window).await;
    let sent = (sim.state.request_count() - before) as f64;
    row.utilization = sent / (BUDGET_RATE * started.elapsed().as_secs_f64());
    row.violations = sim.state.violations();
    peak = peak.max(relay.peak_rss_mib());
    relay.stop()?;

    row.peak_rss_mib = peak;
    Ok(row)
}

async fn enqueue_batches(
    client: &reqwest::Client,
    relays: &Fleet,
    ids: &[String],
) -> anyhow::Result<()> {
    for (n, chunk) in ids.chunks(1000).enumerate() {
        let videos: Vec<Value> = chunk.iter().map(|id| json!({"video_id": id})).collect();
        let response = client
            .post(format!("{}/v1/videos/batch", relays.base(n)))
            .json(&json!({"videos": videos}))
            .send()
            .await?;
        if response.status() != 200 {
            bail!("batch answered {}", response.status());
        }
    }
    Ok(())
}

/// Checks `done` every 5 ms until it holds (a benchmark, not a test).
async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

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
    let database = format!("sqlite://{}/bench.db", dir.path().display());
    let config = write_config(
        dir.path(),
        &database,
        &sim,
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

    #[test]
    fn a_phase_that_did_not_run_shows_a_dash() {
        let row = Row {
            scale: 1000,
            single_per_s: Some(5000.4),
            batch_ids_per_s: None,
            polls_per_s: None,
            cpu_us_per_poll: None,
            cpu_us_per_delivery: Some(12.34),
            latency_ms: None,
            violations: 0,
            utilization: 0.995,
            peak_rss_mib: 20.0,
        };
        assert_eq!(
            row.to_markdown(),
            "| 1000 | 5000 | – | – | – | 12.3 | – | 0 | 99.5 % | 20.0 |"
        );
    }
}
