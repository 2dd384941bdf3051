//! Wiring: opens the store, starts the writer, the poller and the API, and
//! owns the order of graceful shutdown.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::adaptive::{Learner, SharedLearner};
use crate::api::{self, ApiShared, ApiState};
use crate::config::Config;
use crate::delivery::{ClientBuildError, Deliverer};
use crate::jogg::{ClientError, JoggClient};
use crate::peers;
use crate::poller::gate::UpstreamGate;
use crate::poller::learning::load_learner;
use crate::poller::policy::PollPolicy;
use crate::poller::{Poller, Wakeups};
use crate::store::{DatabaseLock, LockError, Store, StoreError, Writer};
use crate::telemetry::metrics::RelayMetrics;
use crate::worker::Heartbeat;

/// Longest delay between probes while JoggAI refuses the key.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(300);

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Another relay serves the same database, or its lock file is
    /// unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The callback client could not be built.
    #[error(transparent)]
    CallbackClient(#[from] ClientBuildError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// A background task ended or panicked before shutdown.
    #[error("{0}")]
    TaskFailed(String),
}

/// The upstream gate for `config`: the budget, probes that start at
/// `min_interval` and back off to five minutes, and 429 pauses of at most
/// `jogg.max_pause`.
pub fn upstream_gate(config: &Config) -> UpstreamGate {
    UpstreamGate::new(
        config.jogg.requests_per_second,
        config.jogg.burst,
        config.polling.min_interval,
        MAX_PROBE_DELAY.max(config.polling.max_interval),
    )
    .with_max_pause(config.jogg.max_pause)
}

/// The relay's long-lived parts, built and ready to run.
pub struct App {
    /// Held until [`App::run`] has closed the database (or the app is
    /// dropped): one relay per SQLite database.
    lock: Option<DatabaseLock>,
    config: Config,
    store: Store,
    writer: Writer,
    writer_task: tokio::task::JoinHandle<()>,
    gate: Arc<UpstreamGate>,
    poller: Option<Poller>,
    deliverer: Option<Deliverer>,
    wakeups: Wakeups,
    metrics: Arc<RelayMetrics>,
    /// What was learned of render times (the poller feeds it, the API
    /// shows it).
    learner: SharedLearner,
    /// Tasks added with [`App::supervise`].
    extra_tasks: Vec<(&'static str, SupervisedTask)>,
    /// Cancelled with the `shutdown` given to [`App::run`].
    shutdown_hint: CancellationToken,
    /// The listener of `server.webhook_bind`, when given
    /// ([`App::serve_pushes_on`]).
    push_listener: Option<TcpListener>,
}

/// A task run by [`App::run`] beside the workers.
type SupervisedTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Shortest time without a heartbeat that counts as a stall (see
/// [`watchdog`]).
pub const MIN_STALL: Duration = Duration::from_secs(3);

impl App {
    /// Takes the database's lock (refused while another relay, in this
    /// process or another, serves it), opens the database (creating and
    /// migrating it) and builds every part.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        // First, so a second relay changes nothing, not even by migrating.
        let lock = config
            .database
            .sqlite_path()
            .map(DatabaseLock::acquire)
            .transpose()?;
        let store = Store::open(&config.database).await?;
        let client = JoggClient::new(&config.jogg)?;
        let (writer, writer_task) = Writer::start(&store).await?;
        let gate = Arc::new(upstream_gate(&config).with_shared(store.shared_gate()));
        let wakeups = Wakeups::default();
        let metrics = Arc::new(RelayMetrics::new());
        // What was learned is an optimisation: a database whose rows cannot
        // be read back still gets a relay (which reports the damage through
        // `/readyz` and refused writes), starting to learn afresh.
        let learner = match load_learner(&store, &config.polling).await {
            Ok(learner) => learner,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read what was learned of render times; starting afresh");
                Learner::new(config.polling.adaptive)
            }
        };
        let learner = SharedLearner::new(learner);
        let poller = Poller::new(
            &config,
            store.clone(),
            writer.clone(),
            client,
            gate.clone(),
            &wakeups,
            metrics.clone(),
            learner.clone(),
        );
        let deliverer = Deliverer::new(
            &config,
            store.clone(),
            writer.clone(),
            wakeups.new_deliveries.clone(),
            metrics.clone(),
        )?;
        let shared_gate = store.shared_gate();
        let polling = config.polling.clone();
        let mut app = Self {
            lock,
            config,
            store,
            writer,
            writer_task,
            gate,
            poller: Some(poller),
            deliverer: Some(deliverer),
            wakeups,
            metrics,
            learner,
            extra_tasks: Vec::new(),
            shutdown_hint: CancellationToken::new(),
            push_listener: None,
        };
        // Relays sharing a PostgreSQL database hear of each other's work at
        // once and learn from each other's videos.
        if let Some(shared) = shared_gate {
            let wakeups = app.wakeups.clone();
            app.supervise("wake-up listener", |shutdown| {
                peers::relay_wakeups(shared, wakeups, shutdown)
            });
            let (store, learner) = (app.store.clone(), app.learner.clone());
            app.supervise("learned model refresh", |shutdown| {
                peers::refresh_learner(store, polling, learner, shutdown)
            });
        }
        Ok(app)
    }

    /// Serves `POST /webhooks/jogg` (and nothing else) on `listener` too,
    /// beside the API's listener (`server.webhook_bind`).
    pub fn serve_pushes_on(&mut self, listener: TcpListener) {
        self.push_listener = Some(listener);
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes the poller out, so that [`App::run`] serves without a poll
    /// loop and the caller drives [`Poller::step`] itself (tests do).
    pub fn take_poller(&mut self) -> Option<Poller> {
        self.poller.take()
    }

    /// The API's shared state for this relay; `shutdown` marks it as
    /// shutting down (enqueues 503, `/readyz` 503).
    pub fn api_state(&self, shutdown: CancellationToken) -> ApiState {
        ApiState::new(ApiShared {
            store: self.store.clone(),
            writer: self.writer.clone(),
            token: self.config.server.token.clone().map(Arc::new),
            push_secret: self.config.jogg.webhook_secret.clone().map(Arc::new),
            adopt_untracked: self.config.jogg.adopt_untracked,
            policy: PollPolicy::from(&self.config.polling),
            gate: self.gate.clone(),
            callback_urls: Arc::new(
                self.config
                    .callbacks
                    .urls
                    .iter()
                    .map(|url| url.as_str().to_owned())
                    .collect(),
            ),
            allow_private_targets: self.config.callbacks.allow_private_targets,
            wakeups: self.wakeups.clone(),
            metrics: self.metrics.clone(),
            learner: self.learner.clone(),
            strategy: self.config.polling.strategy,
            shutdown,
            console: crate::console::Console::new(&self.config),
        })
    }

    /// Takes the delivery worker out, like [`App::take_poller`].
    pub fn take_deliverer(&mut self) -> Option<Deliverer> {
        self.deliverer.take()
    }

    /// Runs `task` beside the workers once [`App::run`] starts, supervised
    /// like them: if it ends or panics before shutdown, the relay stops
    /// with [`AppError::TaskFailed`]. It should end when `shutdown` is
    /// cancelled. (Embedders use it for their own loops; tests use it to
    /// check the supervision itself.)
    pub fn supervise<F>(&mut self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.extra_tasks
            .push((name, Box::pin(task(self.shutdown_hint.clone()))));
    }

    /// Runs the API (and the poll and delivery loops, unless taken) on `listener` until
    /// `shutdown` is cancelled, then shuts down in order: stop accepting
    /// connections and claiming work, finish requests and polls in flight,
    /// let the writer commit everything already queued, close the database.
    ///
    /// Every background task is supervised: one that ends or panics before
    /// shutdown (the poller, the delivery worker, the watchdog, the
    /// database writer) is logged as an ERROR, shuts the relay down, and
    /// makes this return [`AppError::TaskFailed`] (exit code 1, so systemd
    /// restarts the service).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let state = self.api_state(shutdown.clone());
        let Self {
            lock,
            config,
            store,
            writer,
            mut writer_task,
            poller,
            deliverer,
            extra_tasks,
            shutdown_hint,
            push_listener,
            ..
        } = self;
        // The API state holds its own writer handle.
        drop(writer);
        // Tasks given to `supervise` before `run` knew the real token.
        crate::worker::link_stopping(&shutdown, &shutdown_hint);
        let address = listener.local_addr()?;
        info!(%address, database = %config.database.url, "jogg-relay listening");

        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut names = HashMap::new();
        let mut heartbeats = Vec::new();
        if let Some(poller) = poller {
            heartbeats.push(("poller", poller.heartbeat()));
            let shutdown = shutdown.clone();
            let task = tasks.spawn(async move { poller.run(shutdown).await });
            names.insert(task.id(), "poller");
        }
        if let Some(deliverer) = deliverer {
            heartbeats.push(("delivery worker", deliverer.heartbeat()));
            let shutdown = shutdown.clone();
            let task = tasks.spawn(async move { deliverer.run(shutdown).await });
            names.insert(task.id(), "delivery worker");
        }
        for (name, task) in extra_tasks {
            let task = tasks.spawn(task);
            names.insert(task.id(), name);
        }
        // systemd (Type=notify): the database is migrated and the listener
        // bound, so the service is ready. A no-op outside systemd.
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        if let Some(interval) = sd_notify::watchdog_enabled() {
            let shutdown = shutdown.clone();
            let task = tasks.spawn(watchdog(interval, heartbeats, shutdown, || {
                notify_systemd(&[sd_notify::NotifyState::Watchdog])
            }));
            names.insert(task.id(), "watchdog");
        }

        let limits = api::server::Limits::from(&config.server);
        let push_server = push_listener.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                info!(%address, "serving JoggAI pushes (POST /webhooks/jogg) here too");
            }
            api::server::serve(
                listener,
                api::webhook_router(state.clone()),
                limits,
                shutdown.clone(),
            )
        });
        let api_server = api::server::serve(listener, api::router(state), limits, shutdown.clone());
        // Both listeners stop together, on shutdown.
        let server = async move {
            match push_server {
                Some(push_server) => {
                    tokio::join!(api_server, push_server);
                }
                None => api_server.await,
            }
        };
        tokio::pin!(server);
        let mut failures = Vec::new();
        // Until the server has stopped: any task that ends before shutdown
        // is a failure and starts the shutdown.
        let mut writer_done = false;
        loop {
            tokio::select! {
                () = &mut server => break,
                Some(joined) = tasks.join_next_with_id() => {
                    let (id, outcome) = match joined {
                        Ok((id, ())) => (id, None),
                        Err(err) => (err.id(), Some(err)),
                    };
                    let name = names.get(&id).copied().unwrap_or("task");
                    if let Some(failure) = task_failure(name, outcome, shutdown.is_cancelled()) {
                        failures.push(failure);
                        shutdown.cancel();
                    }
                }
                joined = &mut writer_task, if !writer_done => {
                    writer_done = true;
                    let outcome = joined.err();
                    if let Some(failure) = task_failure("database writer", outcome, false) {
                        failures.push(failure);
                        shutdown.cancel();
                    }
                }
            }
        }
        // The server stops only on shutdown; the workers stop now too.
        shutdown.cancel();
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        while let Some(joined) = tasks.join_next_with_id().await {
            if let Err(err) = joined {
                let name = names.get(&err.id()).copied().unwrap_or("task");
                if let Some(failure) = task_failure(name, Some(err), true) {
                    failures.push(failure);
                }
            }
        }

        // The router, the poller and with them every writer handle are gone
        // now; the writer drains its queue and stops.
        info!("shutting down: committing queued writes");
        if !writer_done
            && let Err(err) = writer_task.await
            && let Some(failure) = task_failure("database writer", Some(err), true)
        {
            failures.push(failure);
        }
        store.close().await;
        // Only now may another relay take the database over.
        drop(lock);
        info!("shutdown complete");
        if failures.is_empty() {
            Ok(())
        } else {
            Err(AppError::TaskFailed(failures.join("; ")))
        }
    }
}

/// How a background task's end is judged: a panic is always a failure;
/// ending normally is one only before shutdown. A failure is logged as an
/// ERROR here and described for [`AppError::TaskFailed`].
fn task_failure(
    name: &str,
    panic: Option<tokio::task::JoinError>,
    shutting_down: bool,
) -> Option<String> {
    let failure = match panic {
        Some(err) if err.is_panic() => format!("the {name} panicked"),
        // Aborted: only this module aborts tasks, and not these.
        Some(_) => format!("the {name} was cancelled"),
        None if shutting_down => return None,
        None => format!("the {name} stopped unexpectedly"),
    };
    tracing::error!(task = name, "{failure}; shutting down");
    Some(failure)
}

/// The systemd watchdog: every half `interval`, pings (with `ping`) if
/// every heartbeat is fresh, that is younger than `interval` (or than
/// [`MIN_STALL`] when the interval is shorter: the loops beat once per
/// [`crate::worker::HEARTBEAT_INTERVAL`] when idle). A stalled worker stops the pings, and
/// systemd restarts the service; an ERROR names the worker. Pings resume if
/// the worker recovers first. Ends when `shutdown` is cancelled.
pub async fn watchdog(
    interval: Duration,
    heartbeats: Vec<(&'static str, Arc<Heartbeat>)>,
    shutdown: CancellationToken,
    mut ping: impl FnMut(),
) {
    let stall_after = interval.max(MIN_STALL);
    // Pinging at half the interval leaves a whole half for a late tick.
    let mut ticks = tokio::time::interval(interval / 2);
    let mut stalled: Option<&str> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match heartbeats.iter().find(|(_, beat)| beat.age() > stall_after) {
            None => {
                if let Some(worker) = stalled.take() {
                    info!(worker, "worker making progress again; pinging the watchdog");
                }
                ping();
            }
            Some((worker, beat)) => {
                if stalled.is_none() {
                    tracing::error!(
                        worker,
                        stalled_for = ?beat.age(),
                        "worker stalled; no longer pinging the systemd watchdog"
                    );
                }
                stalled = Some(worker);
            }
        }
    }
}

/// Tells systemd about the service state; failures are logged, never fatal.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Builds and runs the relay on `listener` until `shutdown` is cancelled
/// (see [`App::run`]).
///
/// Taking the listener (rather than an address) lets tests bind port 0 and
/// the daemon report the bound address before serving.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    App::build(config).await?.run(listener, shutdown).await
}
