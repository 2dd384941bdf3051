//! The command line (README, "Command line") and its exit codes: 0 success, 64 bad usage
//! or invalid configuration (naming the key), 1 any other fatal error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::resource::VideoResource;
use crate::api::videos::parse_new_video;
use crate::config::{Config, ConfigError, Settings};
use crate::domain::{Millis, VideoId, VideoState};
use crate::export::ExportError;
use crate::poller::learning::load_learner;
use crate::poller::policy::PollPolicy;
use crate::store::{EnqueueOutcome, RedeliverOutcome, Store, Writer};
use crate::{app, telemetry};

pub mod docs;

/// `println!` that never panics: a closed or broken standard output (the
/// reader of `jogg-relay list | head` went away) loses the text instead of
/// turning the exit code into a panic's 101.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see [`say`]).
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Exit code for bad usage and invalid configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// What `--version` prints after the name: the crate's version and the
/// source revision the binary was built from (`build.rs`: the short git
/// hash, `-dirty` when tracked files had changes, or `unknown revision`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("JOGG_RELAY_BUILD_REVISION"),
    ")"
);

/// jogg-relay: polls JoggAI for avatar video status and delivers signed callbacks.
#[derive(Debug, Parser)]
#[command(name = "jogg-relay", version = VERSION, about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "JOGG_RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP API, poller and callback delivery.
    Serve,
    /// Run the relay end-to-end against the built-in JoggAI simulator and
    /// callback receiver (loopback only, temporary database, no setup).
    Demo,
    /// Start tracking video ids (directly in the database).
    Enqueue {
        /// Video ids to track.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Per-video callback URL, in addition to the configured ones.
        #[arg(long, value_name = "URL")]
        callback_url: Option<String>,
        /// JSON object echoed back in the callback.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
    },
    /// Show a video's state, transitions and deliveries as JSON.
    Status {
        /// Video id.
        id: String,
    },
    /// List tracked videos, oldest first.
    List {
        /// Only videos in this state (active, completed, failed, abandoned, cancelled).
        #[arg(long)]
        state: Option<String>,
    },
    /// Replay a render workload against the poll strategies in virtual
    /// time (seconds, no network) and print calls per video and detection
    /// delays for each, using the `[polling]` settings of the configuration.
    Simulate {
        /// Videos in the reference workload.
        #[arg(long, default_value_t = 2_000)]
        videos: usize,
        /// Replay these renders instead (a CSV as `export-renders` writes, or
        /// with a `render_seconds` column).
        #[arg(long, value_name = "FILE")]
        renders: Option<PathBuf>,
        /// Seed of the workload and of the jitter.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Multiply every duration (workload and schedule) by this; figures
        /// are reported divided by it, in real-time seconds.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Upstream budget in requests per second (real time); none if unset.
        #[arg(long)]
        budget: Option<f64>,
    },
    /// Measure the relay (as a child process) against the simulators at
    /// several numbers of tracked videos, and print a table; with
    /// `--schedule`, measure instead how soon each polling strategy notices
    /// renders finish on the reference workload, time-compressed.
    Bench {
        /// Numbers of tracked videos, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 100_000, 1_000_000])]
        scales: Vec<usize>,
        /// Single enqueue requests per scale.
        #[arg(long, default_value_t = 20_000)]
        single_requests: usize,
        /// Concurrent clients sending the single enqueue requests, each
        /// waiting for its answer before the next (with several instances,
        /// spread over them in turn).
        #[arg(long, default_value_t = crate::bench::DEFAULT_CLIENTS, conflicts_with = "schedule")]
        clients: usize,
        /// Videos in the poll phase (five polls each).
        #[arg(long, default_value_t = 4_000)]
        hot_videos: usize,
        /// Videos in the delivery phase.
        #[arg(long, default_value_t = 2_000)]
        delivery_videos: usize,
        /// Seconds of the budget phase.
        #[arg(long, default_value_t = 10)]
        budget_seconds: u64,
        /// The database engine the relay runs on: a SQLite file, or a
        /// database on a throwaway PostgreSQL cluster the bench starts
        /// (needs PostgreSQL's server binaries, initdb and postgres).
        #[arg(long, value_enum, default_value_t = crate::bench::BenchBackend::Sqlite, conflicts_with = "schedule")]
        backend: crate::bench::BenchBackend,
        /// Relay processes sharing the database, the load spread across
        /// them (above 1 only with `--backend postgres`).
        #[arg(long, default_value_t = 1, conflicts_with = "schedule")]
        instances: usize,
        /// Run the scheduling benchmark instead of the scales: the reference
        /// render workload, time-compressed, once per polling strategy.
        #[arg(long)]
        schedule: bool,
        /// Videos of the scheduling benchmark.
        #[arg(long, default_value_t = 300, requires = "schedule")]
        videos: usize,
        /// Time compression of the scheduling benchmark (30: renders and
        /// poll intervals 30 times shorter; delays are shown multiplied back).
        #[arg(long, default_value_t = 30.0, requires = "schedule")]
        compress: f64,
        /// Polling strategies to compare.
        #[arg(long, value_enum, default_value_t = crate::bench::StrategyChoice::Both, requires = "schedule")]
        strategy: crate::bench::StrategyChoice,
        /// Seed of the scheduling benchmark's workload.
        #[arg(long, default_value_t = 1, requires = "schedule")]
        seed: u64,
        /// Poll budget of the scheduling benchmark, real-time requests per
        /// second (the relay gets rate × compress).
        #[arg(long, default_value_t = 10.0, requires = "schedule")]
        rate: f64,
        /// Scheduling benchmark with JoggAI's pushes: the share of pushes
        /// lost (0 to 1); without it, polling alone.
        #[arg(long, value_name = "FRACTION", requires = "schedule")]
        push_loss: Option<f64>,
        /// Real-time seconds from a render's end to its push (the simulator
        /// waits this divided by --compress).
        #[arg(long, default_value_t = 0.5, requires = "push_loss")]
        push_delay: f64,
    },
    /// Queue a terminal video's callback event again (same event id).
    Redeliver {
        /// Video id.
        id: String,
    },
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Print what the relay has learned of JoggAI's render times as JSON
    /// (the body of `GET /v1/stats`), rebuilt from the database.
    Stats,
    /// Write every finished (completed or failed) video's render times as
    /// CSV, oldest first.
    ExportRenders {
        /// Write to this file (replaced once complete) instead of standard
        /// output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a consistent copy of the SQLite database to FILE while the
    /// daemon runs (never overwrites FILE; PostgreSQL: use pg_dump).
    Backup {
        /// The copy to create; it must not exist.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Replace the SQLite database with a copy made by `backup`, with the
    /// daemon stopped; the database it replaces is kept beside it
    /// (PostgreSQL: use pg_restore).
    Restore {
        /// The copy to restore.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// `completions` and `manpages`: the command line described from its
    /// own definition (see [`docs`]).
    #[command(flatten)]
    Docs(docs::DocsCommand),
}

/// How a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or invalid configuration: exit 64.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error("{0:#}")]
    Fatal(#[from] anyhow::Error),
}

impl From<ConfigError> for CliError {
    fn from(err: ConfigError) -> Self {
        CliError::Usage(err.to_string())
    }
}

/// Parses the command line, runs the command and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            tell!("jogg-relay: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(CliError::Fatal(err)) => {
            tell!("jogg-relay: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The process environment as strings. `std::env::vars` would panic on a
/// value that is not UTF-8 and print it, secret or not; here one of ours is
/// refused by name only, and anyone else's is not our business.
fn environment() -> Result<Vec<(String, String)>, CliError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => vars.push((name, value)),
            Err(_) if name.starts_with(crate::config::ENV_PREFIX) => {
                return Err(CliError::Usage(format!(
                    "invalid configuration: {name}: the value is not valid UTF-8"
                )));
            }
            Err(_) => {}
        }
    }
    Ok(vars)
}

/// `err` and its causes on one line, `outer: inner: …`, leaving out a cause
/// whose text the line already holds: many errors print their source in
/// their own message too, and an operator should read each thing once.
fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Loads the configuration and runs the command on a Tokio runtime.
pub fn run(cli: Cli) -> Result<(), CliError> {
    // These describe the command line alone: no configuration is read, so
    // they work where there is none (a package build, a fresh machine).
    if let Command::Docs(docs) = &cli.command {
        return docs.run();
    }
    let settings = Settings::load(cli.config.as_deref(), environment()?)?;
    let config = settings.validate()?;
    // The demo prints its own story; the relay's info lines would repeat it.
    let default_filter = match cli.command {
        Command::Demo | Command::Bench { .. } => "warn",
        _ => telemetry::DEFAULT_FILTER,
    };
    telemetry::init(config.log.format, default_filter);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Serve) && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(serve_worker_threads());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Demo => crate::demo::run().await.map_err(CliError::Fatal),
            Command::Bench {
                schedule: true,
                videos,
                compress,
                strategy,
                seed,
                rate,
                push_loss,
                push_delay,
                ..
            } => {
                let push_delay = std::time::Duration::try_from_secs_f64(push_delay).map_err(|_| {
                    CliError::Usage(format!(
                        "--push-delay must be a non-negative number of seconds, got {push_delay}"
                    ))
                })?;
                let options = crate::bench::ScheduleOptions {
                    videos,
                    compress,
                    strategy,
                    seed,
                    rate,
                    push_loss,
                    push_delay,
                };
                options.check().map_err(CliError::Usage)?;
                crate::bench::run_schedule(options)
                    .await
                    .map_err(CliError::Fatal)
            }
            Command::Bench {
                scales,
                single_requests,
                clients,
                hot_videos,
                delivery_videos,
                budget_seconds,
                backend,
                instances,
                ..
            } => {
                let options = crate::bench::BenchOptions {
                    scales,
                    single_requests,
                    clients,
                    hot_videos,
                    delivery_videos,
                    budget_window: std::time::Duration::from_secs(budget_seconds),
                    backend,
                    instances,
                };
                options.check().map_err(CliError::Usage)?;
                crate::bench::run(options).await.map_err(CliError::Fatal)
            }
            Command::Simulate {
                videos,
                renders,
                seed,
                scale,
                budget,
            } => simulate(&config, videos, renders.as_deref(), seed, scale, budget),
            Command::Enqueue {
                ids,
                callback_url,
                metadata,
            } => enqueue(&config, ids, callback_url, metadata).await,
            Command::Status { id } => status(&config, &id).await,
            Command::List { state } => list(&config, state.as_deref()).await,
            Command::Redeliver { id } => redeliver(&config, &id).await,
            Command::Stats => stats(&config).await,
            Command::ExportRenders { output } => export_renders(&config, output.as_deref()).await,
            Command::Backup { file } => backup(&config, &file).await,
            Command::Restore { file } => restore(&config, &file).await,
            // Answered before the configuration is loaded (above); answering
            // again here keeps the match total without a panic path.
            Command::Docs(docs) => docs.run(),
            Command::CheckConfig => {
                tell!("configuration is valid");
                for warning in config.startup_warnings() {
                    tell!("warning: {warning}");
                }
                use std::io::Write as _;
                let _ = std::io::stdout()
                    .lock()
                    .write_all(settings.to_redacted_toml().as_bytes());
                Ok(())
            }
        }
    })
}

/// `simulate`: the strategies compared on a workload (see [`crate::simulate`]).
fn simulate(
    config: &Config,
    videos: usize,
    renders: Option<&Path>,
    seed: u64,
    scale: f64,
    budget: Option<f64>,
) -> Result<(), CliError> {
    use crate::simulate::{Comparison, Scenario, compare, table};
    use crate::workload::{ReferenceWorkload, from_csv};
    if !(1..=1_000_000).contains(&videos) {
        return Err(CliError::Usage(format!(
            "--videos must be from 1 to 1000000, got {videos}"
        )));
    }
    // Below 0.001 the schedules' gaps would shrink towards the millisecond
    // the simulation counts in.
    if !(scale.is_finite() && (0.001..=1000.0).contains(&scale)) {
        return Err(CliError::Usage(format!(
            "--scale must be a number from 0.001 to 1000, got {scale}"
        )));
    }
    if let Some(rate) = budget
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(CliError::Usage(format!(
            "--budget must be a positive number of requests per second, got {rate}"
        )));
    }
    let (jobs, training) = match renders {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| CliError::Usage(format!("cannot read {}: {err}", path.display())))?;
            let load = |seed| {
                from_csv(&text, seed)
                    .map(|jobs| jobs.into_iter().map(|job| job.scaled(scale)).collect())
                    .map_err(|err| CliError::Usage(format!("{}: {err}", path.display())))
            };
            (load(seed)?, load(seed.wrapping_add(1))?)
        }
        None => {
            let workload = |seed| ReferenceWorkload {
                videos,
                scale,
                seed,
            };
            (
                workload(seed).generate(),
                workload(seed.wrapping_add(1)).generate(),
            )
        }
    };
    let comparison = Comparison {
        jobs,
        training,
        scenario: Scenario::from_config(config, scale, budget, seed),
    };
    let rows = compare(&comparison);
    say!(
        "{} videos, seed {seed}, scale {scale}, budget {}; delays in real-time seconds\n",
        comparison.jobs.len(),
        budget.map_or("none".to_owned(), |rate| format!("{rate}/s"))
    );
    say!("{}", table(&rows, 1.0 / scale));
    Ok(())
}

/// `serve`: the daemon, until SIGTERM or SIGINT.
async fn serve(config: Config) -> Result<(), CliError> {
    if config.jogg.api_key.is_none() {
        return Err(CliError::Usage(
            "invalid configuration: jogg.api_key: required by serve; \
             set jogg.api_key or jogg.api_key_file"
                .into(),
        ));
    }
    for warning in config.startup_warnings() {
        tracing::warn!("{warning}");
    }
    // Built before binding: a second relay on the same database is refused
    // by the database lock, with a message naming the running one, rather
    // than by a busy port.
    let bind = config.server.bind;
    let webhook_bind = config.server.webhook_bind;
    let mut relay = app::App::build(config).await.map_err(anyhow::Error::from)?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (server.bind)"))?;
    if let Some(webhook_bind) = webhook_bind {
        let push_listener = TcpListener::bind(webhook_bind)
            .await
            .with_context(|| format!("cannot listen on {webhook_bind} (server.webhook_bind)"))?;
        relay.serve_pushes_on(push_listener);
    }
    let shutdown = CancellationToken::new();
    let mut signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let relay = relay.run(listener, shutdown.clone());
    tokio::pin!(relay);
    // The signal handler is supervised like the relay's own tasks: if it
    // died, SIGTERM would be ignored, so the relay stops and exits 1.
    let handler_failed = tokio::select! {
        result = &mut relay => {
            signals.abort();
            return result.context("the relay stopped").map_err(CliError::Fatal);
        }
        joined = &mut signals => joined.is_err(),
    };
    if handler_failed {
        tracing::error!("the signal handler failed; shutting down");
        shutdown.cancel();
    }
    relay.await.context("the relay stopped")?;
    if handler_failed {
        return Err(anyhow::anyhow!("the signal handler failed").into());
    }
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = sigterm.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the relay");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}

/// `enqueue`: validates every id first (so a typo stores nothing), then
/// writes them in one transaction. An id already tracked with a different
/// `--callback-url` or `--metadata` is left unchanged and printed as
/// `conflict`; the others are stored, and the command then exits 1.
async fn enqueue(
    config: &Config,
    ids: Vec<String>,
    callback_url: Option<String>,
    metadata: Option<String>,
) -> Result<(), CliError> {
    let metadata: Option<Value> = metadata
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|err| CliError::Usage(format!("--metadata is not valid JSON: {err}")))?;
    let policy = PollPolicy::from(&config.polling);
    let first_poll_at = policy.first_poll_at(Millis::now(), fastrand::f64() * 2.0 - 1.0);
    let videos = ids
        .iter()
        .map(|id| {
            let item = json!({"video_id": id, "callback_url": callback_url, "metadata": metadata});
            parse_new_video(&item, first_poll_at, config.callbacks.allow_private_targets)
                .map_err(|err| CliError::Usage(format!("{id:?}: {}", err.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let store = open_store(config).await?;
    let (writer, writer_task) = Writer::start(&store)
        .await
        .context("cannot open the database for writing")?;
    let outcomes = writer
        .enqueue(videos)
        .await
        .context("cannot store the videos")?;
    drop(writer);
    let _ = writer_task.await;
    let mut conflicts = Vec::new();
    for (id, outcome) in ids.iter().zip(outcomes) {
        let word = match outcome {
            EnqueueOutcome::Created { .. } => "created",
            EnqueueOutcome::Existing => "existing",
            EnqueueOutcome::Conflict(fields) => {
                conflicts.push(format!("{id} (different {})", fields.names()));
                "conflict"
            }
        };
        say!("{word}\t{id}");
    }
    store.close().await;
    // The other ids are stored; the exit code still tells a script that
    // not everything it asked for is tracked as asked.
    if !conflicts.is_empty() {
        return Err(anyhow::anyhow!(
            "already tracked with a different request, left unchanged: {}",
            conflicts.join(", ")
        )
        .into());
    }
    Ok(())
}

/// `redeliver`: re-queues the event in the database; a running daemon
/// sends it within a second.
async fn redeliver(config: &Config, id: &str) -> Result<(), CliError> {
    let video_id = VideoId::parse(id).map_err(|err| CliError::Usage(format!("{id:?}: {err}")))?;
    let store = open_store(config).await?;
    let (writer, writer_task) = Writer::start(&store)
        .await
        .context("cannot open the database for writing")?;
    let configured = config
        .callbacks
        .urls
        .iter()
        .map(|url| url.as_str().to_owned())
        .collect();
    let outcome = writer
        .redeliver(video_id.clone(), configured)
        .await
        .context("cannot queue the redelivery")?;
    drop(writer);
    let _ = writer_task.await;
    store.close().await;
    match outcome {
        RedeliverOutcome::Queued { event_id, targets } => {
            say!("queued\t{video_id}\t{event_id}\t{targets} target(s)");
            Ok(())
        }
        RedeliverOutcome::NotFound => {
            Err(anyhow::anyhow!("video {video_id} is not tracked").into())
        }
        RedeliverOutcome::NoEvent(state) => Err(anyhow::anyhow!(
            "video {video_id} is {state}; only completed, failed and abandoned videos have an event"
        )
        .into()),
    }
}

/// `status`: the video resource as the API shows it.
async fn status(config: &Config, id: &str) -> Result<(), CliError> {
    let video_id = VideoId::parse(id).map_err(|err| CliError::Usage(format!("{id:?}: {err}")))?;
    let store = open_store(config).await?;
    let details = store
        .video_details(&video_id)
        .await
        .context("cannot read the video")?
        .ok_or_else(|| anyhow::anyhow!("video {video_id} is not tracked"))?;
    let text = serde_json::to_string_pretty(&VideoResource::detailed(details))
        .context("cannot render the video")?;
    say!("{text}");
    store.close().await;
    Ok(())
}

/// `list`: one line per video, tab-separated, every page.
async fn list(config: &Config, state: Option<&str>) -> Result<(), CliError> {
    let state = state
        .map(str::parse::<VideoState>)
        .transpose()
        .map_err(|err| CliError::Usage(format!("--state: {err}")))?;
    let store = open_store(config).await?;
    let mut after = 0;
    say!("video_id\tstate\tupstream_status\tpolls\tupdated_at");
    loop {
        let page = store
            .list_videos(state, after, 1000)
            .await
            .context("cannot list videos")?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for video in &page {
            say!(
                "{}\t{}\t{}\t{}\t{}",
                video.video_id,
                video.state,
                video.upstream_status.as_deref().unwrap_or("-"),
                video.polls,
                Millis(video.updated_at).to_rfc3339(),
            );
        }
    }
    store.close().await;
    Ok(())
}

/// `stats`: the learner the daemon would start with, rebuilt from the
/// database the same way, shown as `GET /v1/stats` shows it.
async fn stats(config: &Config) -> Result<(), CliError> {
    let store = open_store(config).await?;
    let mut learner = load_learner(&store, &config.polling)
        .await
        .context("cannot read the finished renders")?;
    store.close().await;
    let text = serde_json::to_string_pretty(&crate::api::stats::body(
        &mut learner,
        config.polling.strategy,
    ))
    .context("cannot render the statistics")?;
    say!("{text}");
    Ok(())
}

/// `export-renders`: the CSV of [`crate::export`], to standard output or
/// to `output`. A file is written beside its final name and renamed into
/// place once complete, so a reader never sees half an export.
async fn export_renders(config: &Config, output: Option<&Path>) -> Result<(), CliError> {
    let store = open_store(config).await?;
    let give_up_after = config.polling.give_up_after;
    let result = match output {
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match crate::export::write_renders(&store, give_up_after, &mut out).await {
                // The reader went away (`export-renders | head`): like
                // `list`, the rest is simply not written.
                Err(ExportError::Write(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                    Ok(())
                }
                other => other.map(drop).map_err(anyhow::Error::from),
            }
        }
        Some(path) => export_to_file(&store, give_up_after, path).await,
    };
    store.close().await;
    Ok(result?)
}

/// Writes the export to a temporary file beside `path`, then renames it
/// over `path`; removes the temporary file if anything fails.
async fn export_to_file(
    store: &Store,
    give_up_after: std::time::Duration,
    path: &Path,
) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let written = async {
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let rows = crate::export::write_renders(store, give_up_after, &mut out).await?;
        out.into_inner()
            .map_err(|err| err.into_error())
            .and_then(|file| file.sync_all())
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("cannot rename the export to {}", path.display()))?;
        anyhow::Ok(rows)
    }
    .await;
    match written {
        Ok(rows) => {
            tell!("exported {rows} finished render(s) to {}", path.display());
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            Err(err.context(format!("cannot export to {}", path.display())))
        }
    }
}

/// `backup`: see [`crate::backup::backup`]; prints what was written.
async fn backup(config: &Config, file: &Path) -> Result<(), CliError> {
    let written = crate::backup::backup(&config.database, file).await?;
    say!(
        "wrote {}: {} bytes, {} video(s), schema version {}",
        written.path.display(),
        written.bytes,
        written.videos,
        written.schema_version
    );
    Ok(())
}

/// `restore`: see [`crate::backup::restore`]; prints what was restored and
/// where the replaced database was kept.
async fn restore(config: &Config, file: &Path) -> Result<(), CliError> {
    let restored = crate::backup::restore(&config.database, file).await?;
    say!(
        "restored {} into {}: {} video(s), schema version {}",
        file.display(),
        restored.database.display(),
        restored.videos,
        restored.schema_version
    );
    match &restored.kept {
        Some(kept) => say!("the replaced database is kept as {}", kept.display()),
        None => say!("there was no database to keep"),
    }
    Ok(())
}

/// Async worker threads for `serve`: half the cores, at least one.
///
/// SQLite does its work on threads of its own (one per connection), so a
/// runtime thread per core would leave the relay's threads competing for the
/// same cores; on the 2-core reference machine one runtime thread cut CPU
/// per poll by about a sixth against two (BENCHMARKS.md). Tokio's own
/// `TOKIO_WORKER_THREADS` overrides this.
fn serve_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// Opens the database for a one-shot command (no lock: these commands
/// work beside a running daemon). The store's error names the path.
async fn open_store(config: &Config) -> Result<Store, CliError> {
    Ok(Store::open(&config.database)
        .await
        .map_err(anyhow::Error::from)?)
}
