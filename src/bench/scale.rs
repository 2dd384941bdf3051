//! The scale benchmark: the relay at several numbers of tracked videos, on
//! SQLite or PostgreSQL, one relay or several sharing a PostgreSQL
//! database, and one table.
//!
//! Phases per scale, each on fresh relay processes over the same database:
//! 1. enqueue: single requests (keep-alive, concurrent clients, each a bare
//!    HTTP/1.1 connection: `load`), then
//!    batches, until `scale` videos are tracked (never due: they are the
//!    backlog the later phases run beside);
//! 2. polls: a hot set of videos polled five times each with no budget;
//! 3. deliveries: videos that complete on their first poll, enqueued at a
//!    steady 1,000 per second, each with one signed callback; detection
//!    latency from the simulator's terminal answer to the verified callback;
//! 4. budget: a backlog polled under a 200/s budget that the simulator
//!    enforces strictly.
//!
//! With several relays, every request of the load generator goes to the
//! next relay in turn (single requests, batches, the deliveries' batches),
//! and the relays share the polling through the database: throughput is
//! the whole's, CPU per poll and per delivery the sum over the relays,
//! memory each relay's own (the table shows the largest; a second table
//! shows every relay's CPU time per phase and peak RSS).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde_json::json;

use super::backend::{BenchBackend, Databases};
use super::load;
use super::relay::Fleet;
use super::{SECRET, cell, enqueue_batches, percentile, script_videos, wait_until, write_config};
use crate::config::WebhookSecret;
use crate::sim::{SimReceiver, SimUpstream, Timeline};

/// Concurrent clients for single enqueues, unless `--clients` says.
pub const DEFAULT_CLIENTS: usize = 64;
/// Clients sending batches to each relay at once.
const BATCH_CLIENTS_PER_RELAY: usize = 4;
/// Budget of the compliance phase.
const BUDGET_RATE: f64 = 200.0;
const BUDGET_BURST: u32 = 20;
/// Most relays `--instances` starts: each holds up to 13 connections (the
/// readers' pool of 8, the shared gate's 4, the writer's) of the throwaway
/// cluster's 200.
pub const MAX_INSTANCES: usize = 12;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Numbers of tracked videos.
    pub scales: Vec<usize>,
    /// Single enqueue requests per scale (at most the scale).
    pub single_requests: usize,
    /// Concurrent clients sending the single requests, each waiting for
    /// its answer before it sends the next (spread over the relays).
    pub clients: usize,
    /// Videos in the poll phase.
    pub hot_videos: usize,
    /// Videos in the delivery phase.
    pub delivery_videos: usize,
    /// Length of the budget phase.
    pub budget_window: Duration,
    /// The storage engine.
    pub backend: BenchBackend,
    /// Relay processes sharing the database (more than one on PostgreSQL
    /// only).
    pub instances: usize,
}

impl BenchOptions {
    /// Whether the options can run; the problem, naming the flag, if not.
    pub fn check(&self) -> Result<(), String> {
        if self.instances == 0 {
            return Err("--instances must be at least 1".into());
        }
        if self.instances > 1 && self.backend != BenchBackend::Postgres {
            return Err(format!(
                "--instances {} needs --backend postgres: on SQLite one relay owns the database \
                 (its lock file), so several cannot share it",
                self.instances
            ));
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.instances > MAX_INSTANCES {
            return Err(format!(
                "--instances must be at most {MAX_INSTANCES} (each relay holds up to 13 of the \
                 throwaway cluster's 200 connections), got {}",
                self.instances
            ));
        }
        Ok(())
    }
}

/// What one relay used in one scale.
#[derive(Debug, Clone, Default)]
struct RelayFigures {
    /// CPU seconds in the enqueue, poll, delivery and budget phases.
    cpu_seconds: [f64; 4],
    /// Peak resident set size over the phases, MiB.
    peak_rss_mib: f64,
}

/// One row of the table; a figure is `None` when its phase did not run
/// (no videos in it), and the table shows `–` for it, not a misleading `0`.
#[derive(Debug, Clone, Default)]
struct Row {
    scale: usize,
    single_per_s: Option<f64>,
    batch_ids_per_s: Option<f64>,
    polls_per_s: Option<f64>,
    /// Summed over the relays.
    cpu_us_per_poll: Option<f64>,
    /// Summed over the relays.
    cpu_us_per_delivery: Option<f64>,
    latency_ms: Option<[f64; 3]>,
    violations: u64,
    utilization: f64,
    /// The largest relay's.
    peak_rss_mib: f64,
    /// The PostgreSQL server's CPU per poll (none on SQLite, whose work
    /// is in the relay's figure).
    server_cpu_us_per_poll: Option<f64>,
    /// Each relay's own figures.
    relays: Vec<RelayFigures>,
}

impl Row {
    /// The table's header, Markdown.
    const HEADER: &str = "| tracked videos | single enqueue req/s | batch enqueue ids/s | polls/s (no budget) | relay CPU µs/poll | relay CPU µs/delivery | detection→callback p50 / p95 / p99 ms | budget violations | budget used | peak RSS MiB | PostgreSQL server CPU µs/poll |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    /// The per-relay table's header, Markdown.
    const RELAYS_HEADER: &str = "| tracked videos | relay | CPU s: enqueue | polls | deliveries | budget | peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|";

    /// The row in the table's Markdown layout.
    fn to_markdown(&self) -> String {
        let latency = self.latency_ms.map_or_else(
            || "–".to_owned(),
            |[p50, p95, p99]| format!("{p50:.1} / {p95:.1} / {p99:.1}"),
        );
        format!(
            "| {} | {} | {} | {} | {} | {} | {latency} | {} | {:.1} % | {:.1} | {} |",
            self.scale,
            cell(self.single_per_s, 0),
            cell(self.batch_ids_per_s, 0),
            cell(self.polls_per_s, 0),
            cell(self.cpu_us_per_poll, 1),
            cell(self.cpu_us_per_delivery, 1),
            self.violations,
            self.utilization * 100.0,
            self.peak_rss_mib,
            cell(self.server_cpu_us_per_poll, 1),
        )
    }

    /// One line per relay in the per-relay table's layout.
    fn relays_markdown(&self) -> Vec<String> {
        self.relays
            .iter()
            .enumerate()
            .map(|(i, relay)| {
                let [enqueue, polls, deliveries, budget] = relay.cpu_seconds;
                format!(
                    "| {} | {} | {enqueue:.2} | {polls:.2} | {deliveries:.2} | {budget:.2} | {:.1} |",
                    self.scale,
                    i + 1,
                    relay.peak_rss_mib
                )
            })
            .collect()
    }
}

/// Runs every scale and prints the table.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    if let Err(problem) = options.check() {
        bail!("{problem}");
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let databases = Databases::start(options.backend).await?;
    println!("jogg-relay bench: {cores} cores, {machine}");
    println!("database: {}", databases.describe());
    if options.instances > 1 {
        println!(
            "{} relays on one database, requests spread round-robin: throughput is the whole's, \
             relay CPU per poll and per delivery the sum over the relays, peak RSS the largest \
             relay's (each relay's figures follow the table)",
            options.instances
        );
    }
    let mut rows = Vec::new();
    for &scale in &options.scales {
        let row = run_scale(scale, &options, &databases)
            .await
            .with_context(|| format!("scale {scale}"))?;
        eprintln!("scale {scale} done: {row:?}");
        rows.push(row);
    }
    println!();
    println!("{}", Row::HEADER);
    for r in &rows {
        println!("{}", r.to_markdown());
    }
    if options.instances > 1 {
        println!();
        println!("{}", Row::RELAYS_HEADER);
        for r in &rows {
            for line in r.relays_markdown() {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// What one phase cost: measured from [`Meter::start`] to
/// [`Meter::finish`].
struct Meter<'a> {
    fleet: &'a Fleet,
    databases: &'a Databases,
    relays_before: Vec<f64>,
    server_before: Option<f64>,
}

/// A phase's cost, as [`Meter::finish`] reports it.
struct PhaseCost {
    /// Each relay's CPU seconds in the phase.
    relay_cpu_seconds: Vec<f64>,
    /// The database server's CPU seconds in the phase (PostgreSQL).
    server_cpu_seconds: Option<f64>,
    /// Each relay's peak RSS so far, MiB.
    peak_rss_mib: Vec<f64>,
}

impl PhaseCost {
    /// CPU seconds of all the relays together.
    fn relay_cpu_total(&self) -> f64 {
        self.relay_cpu_seconds.iter().sum()
    }
}

impl<'a> Meter<'a> {
    fn start(fleet: &'a Fleet, databases: &'a Databases) -> Self {
        Self {
            relays_before: fleet.cpu_seconds(),
            server_before: databases.server_cpu_seconds(),
            fleet,
            databases,
        }
    }

    fn finish(self) -> PhaseCost {
        let relay_cpu_seconds = self
            .fleet
            .cpu_seconds()
            .iter()
            .zip(&self.relays_before)
            .map(|(after, before)| after - before)
            .collect();
        let server_cpu_seconds = self
            .databases
            .server_cpu_seconds()
            .zip(self.server_before)
            .map(|(after, before)| after - before);
        PhaseCost {
            relay_cpu_seconds,
            server_cpu_seconds,
            peak_rss_mib: self.fleet.peak_rss_mib(),
        }
    }
}

/// Adds a phase's cost to each relay's figures (phase 0 to 3).
fn account(row: &mut Row, phase: usize, cost: &PhaseCost) {
    row.relays
        .resize_with(cost.relay_cpu_seconds.len(), RelayFigures::default);
    for (relay, (cpu, rss)) in row
        .relays
        .iter_mut()
        .zip(cost.relay_cpu_seconds.iter().zip(&cost.peak_rss_mib))
    {
        relay.cpu_seconds[phase] = *cpu;
        relay.peak_rss_mib = relay.peak_rss_mib.max(*rss);
    }
}

async fn run_scale(
    scale: usize,
    options: &BenchOptions,
    databases: &Databases,
) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let database_url = databases.create(dir.path()).await?;
    let sim = SimUpstream::start().await?;
    let secret =
        WebhookSecret::parse(SecretString::from(SECRET), "callbacks.secret").expect("valid");
    let receiver = SimReceiver::start(Some(secret)).await?;
    let client = crate::outbound::client_builder()
        .pool_max_idle_per_host(BATCH_CLIENTS_PER_RELAY)
        .build()?;
    let mut row = Row {
        scale,
        ..Row::default()
    };
    let config = |extra: &str| write_config(dir.path(), &sim, &database_url, extra);
    let start = |config: &std::path::Path| Fleet::start(config, options.instances);

    // 1. Enqueue the backlog: never due during the run.
    let fleet = start(&config("[polling]\nfirst_after = \"10000h\"\n")?)?;
    let bases: Arc<Vec<String>> = Arc::new(fleet.bases());
    let meter = Meter::start(&fleet, databases);
    let singles = options.single_requests.min(scale);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.clients {
        let (next, bases) = (next.clone(), bases.clone());
        workers.push(tokio::spawn(async move {
            // A keep-alive connection to each relay, opened on first use.
            let mut connections: Vec<Option<load::Connection>> =
                (0..bases.len()).map(|_| None).collect();
            let mut body = String::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= singles {
                    return Ok::<_, anyhow::Error>(());
                }
                let relay = i % bases.len();
                let connection = match &mut connections[relay] {
                    Some(connection) => connection,
                    empty => empty.insert(load::Connection::open(&bases[relay]).await?),
                };
                body.clear();
                write!(body, r#"{{"video_id":"backlog-{i}"}}"#)?;
                let status = connection.post_json("/v1/videos", body.as_bytes()).await?;
                if status != 201 {
                    bail!("enqueue answered {status}");
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
    // this measures. Each batch names the relay it goes to.
    let batches: Vec<(String, String)> = (singles..scale)
        .map(|i| json!({"video_id": format!("backlog-{i}")}))
        .collect::<Vec<_>>()
        .chunks(1000)
        .enumerate()
        .map(|(i, batch)| {
            (
                bases[i % bases.len()].clone(),
                json!({ "videos": batch }).to_string(),
            )
        })
        .collect();
    let started = Instant::now();
    let batch_ids = scale - singles;
    let batches = Arc::new(std::sync::Mutex::new(batches));
    let mut workers = Vec::new();
    for _ in 0..BATCH_CLIENTS_PER_RELAY * bases.len() {
        let (client, batches) = (client.clone(), batches.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some((base, batch)) = batches.lock().expect("not poisoned").pop() else {
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
    account(&mut row, 0, &meter.finish());
    fleet.stop()?;

    // 2. Polls with no budget: a hot set polled five times each, beside the
    // backlog.
    let hot = script_videos(&sim, "hot", options.hot_videos, Timeline::completes(4, 0));
    let fleet = start(&config(
        "requests_per_second = 1000000.0\nburst = 100000\n\
         [polling]\nfirst_after = \"0s\"\nmin_interval = \"1ms\"\nmax_interval = \"1ms\"\njitter = 0.0\n",
    )?)?;
    let requests_before = sim.state.request_count();
    let meter = Meter::start(&fleet, databases);
    let started = Instant::now();
    enqueue_batches(&client, &fleet.bases(), 0, &hot).await?;
    wait_until(
        || sim.state.terminal_answers().len() >= hot.len(),
        Duration::from_secs(600),
    )
    .await?;
    let polls = (sim.state.request_count() - requests_before) as f64;
    let elapsed = started.elapsed().as_secs_f64();
    let cost = meter.finish();
    if !hot.is_empty() {
        row.polls_per_s = Some(polls / elapsed);
        row.cpu_us_per_poll = Some(cost.relay_cpu_total() * 1e6 / polls);
        row.server_cpu_us_per_poll = cost.server_cpu_seconds.map(|cpu| cpu * 1e6 / polls);
    }
    account(&mut row, 1, &cost);
    fleet.stop()?;

    // 3. Deliveries and detection latency.
    let deliver = script_videos(
        &sim,
        "deliver",
        options.delivery_videos,
        Timeline::completes(0, 0),
    );
    let fleet = start(&config(&format!(
        "requests_per_second = 1000000.0\nburst = 100000\n\
         [polling]\nfirst_after = \"0s\"\n\
         [callbacks]\nurls = [\"{}\"]\nsecret = \"{SECRET}\"\n",
        receiver.url("bench")
    ))?)?;
    let bases = fleet.bases();
    let meter = Meter::start(&fleet, databases);
    // Videos finish at a steady 1,000 per second (20 every 20 ms), so the
    // latency is that of a relay keeping up, not of a queue draining.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (i, chunk) in deliver.chunks(20).enumerate() {
        pace.tick().await;
        enqueue_batches(&client, &bases, i, chunk).await?;
    }
    receiver
        .state
        .wait_for_accepted(deliver.len(), Duration::from_secs(600))
        .await
        .then_some(())
        .context("not every callback arrived")?;
    let cost = meter.finish();
    let n = deliver.len() as f64;
    if !deliver.is_empty() {
        // Each delivered video was polled once too; that share is not
        // delivery work.
        let poll_share = row.cpu_us_per_poll.unwrap_or(0.0) * n;
        row.cpu_us_per_delivery = Some(((cost.relay_cpu_total() * 1e6) - poll_share).max(0.0) / n);
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
    account(&mut row, 2, &cost);
    fleet.stop()?;

    // 4. Budget compliance and use, with a backlog larger than the budget.
    let backlog_size =
        ((BUDGET_RATE * (options.budget_window.as_secs_f64() + 1.0) * 2.0) as usize).max(100);
    let backlog = script_videos(
        &sim,
        "budget",
        backlog_size,
        Timeline::completes(1_000_000, 0),
    );
    let fleet = start(&config(&format!(
        "requests_per_second = {BUDGET_RATE:.1}\nburst = {BUDGET_BURST}\n\
         [polling]\nfirst_after = \"0s\"\nmin_interval = \"1ms\"\nmax_interval = \"1ms\"\n"
    ))?)?;
    let meter = Meter::start(&fleet, databases);
    sim.state.set_budget(BUDGET_RATE, BUDGET_BURST);
    enqueue_batches(&client, &fleet.bases(), 0, &backlog).await?;
    // Measure the steady state: past the first second, the initial burst
    // no longer flatters the figure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sim.state.request_count();
    let started = Instant::now();
    tokio::time::sleep(options.budget_window).await;
    let sent = (sim.state.request_count() - before) as f64;
    row.utilization = sent / (BUDGET_RATE * started.elapsed().as_secs_f64());
    row.violations = sim.state.violations();
    account(&mut row, 3, &meter.finish());
    fleet.stop()?;

    row.peak_rss_mib = row
        .relays
        .iter()
        .map(|relay| relay.peak_rss_mib)
        .fold(0.0, f64::max);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            server_cpu_us_per_poll: None,
            relays: Vec::new(),
        };
        assert_eq!(
            row.to_markdown(),
            "| 1000 | 5000 | – | – | – | 12.3 | – | 0 | 99.5 % | 20.0 | – |"
        );
        // The header has a column for every cell.
        let columns = Row::HEADER.lines().next().unwrap().matches('|').count();
        assert_eq!(row.to_markdown().matches('|').count(), columns);
    }

    #[test]
    fn each_relay_has_a_line_of_its_own() {
        let row = Row {
            scale: 1000,
            relays: vec![
                RelayFigures {
                    cpu_seconds: [0.5, 1.25, 0.75, 0.125],
                    peak_rss_mib: 21.0,
                },
                RelayFigures {
                    cpu_seconds: [0.25, 1.0, 0.5, 0.0],
                    peak_rss_mib: 19.5,
                },
            ],
            ..Row::default()
        };
        assert_eq!(
            row.relays_markdown(),
            [
                "| 1000 | 1 | 0.50 | 1.25 | 0.75 | 0.12 | 21.0 |",
                "| 1000 | 2 | 0.25 | 1.00 | 0.50 | 0.00 | 19.5 |",
            ]
        );
        let columns = Row::RELAYS_HEADER
            .lines()
            .next()
            .unwrap()
            .matches('|')
            .count();
        assert_eq!(row.relays_markdown()[0].matches('|').count(), columns);
    }

    #[test]
    fn options_out_of_range_are_refused_naming_their_flag() {
        let options = |backend, instances| BenchOptions {
            scales: vec![1],
            single_requests: 1,
            clients: 1,
            hot_videos: 1,
            delivery_videos: 1,
            budget_window: Duration::from_secs(1),
            backend,
            instances,
        };
        assert_eq!(options(BenchBackend::Sqlite, 1).check(), Ok(()));
        assert_eq!(options(BenchBackend::Postgres, 1).check(), Ok(()));
        assert_eq!(
            options(BenchBackend::Postgres, MAX_INSTANCES).check(),
            Ok(())
        );
        let problem = options(BenchBackend::Sqlite, 3).check().unwrap_err();
        assert!(
            problem.contains("--instances 3 needs --backend postgres"),
            "{problem}"
        );
        let no_clients = BenchOptions {
            clients: 0,
            ..options(BenchBackend::Sqlite, 1)
        };
        let problem = no_clients.check().unwrap_err();
        assert!(
            problem.contains("--clients must be at least 1"),
            "{problem}"
        );
        for backend in [BenchBackend::Sqlite, BenchBackend::Postgres] {
            let problem = options(backend, 0).check().unwrap_err();
            assert!(
                problem.contains("--instances must be at least 1"),
                "{problem}"
            );
        }
        let problem = options(BenchBackend::Postgres, MAX_INSTANCES + 1)
            .check()
            .unwrap_err();
        assert!(problem.contains("--instances must be at most"), "{problem}");
    }
}
