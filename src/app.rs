//! Wiring: opens the store, starts the writer, the poller and the API, and
//! owns the order of graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::delivery::{ClientBuildError, Deliverer};
use crate::jogg::{ClientError, JoggClient};
use crate::poller::gate::UpstreamGate;
use crate::poller::policy::PollPolicy;
use crate::poller::{Poller, Wakeups};
use crate::store::{Store, StoreError, Writer};
use crate::telemetry::metrics::RelayMetrics;

/// Longest delay between probes while JoggAI refuses the key.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(300);

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
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
    config: Config,
    store: Store,
    writer: Writer,
    writer_task: tokio::task::JoinHandle<()>,
    gate: Arc<UpstreamGate>,
    poller: Option<Poller>,
    deliverer: Option<Deliverer>,
    wakeups: Wakeups,
    metrics: Arc<RelayMetrics>,
}

impl App {
    /// Opens the database (creating and migrating it) and builds every part.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let store = Store::open(&config.database).await?;
        let client = JoggClient::new(&config.jogg)?;
        let (writer, writer_task) = Writer::start(&store).await?;
        let gate = Arc::new(upstream_gate(&config));
        let wakeups = Wakeups::default();
        let metrics = Arc::new(RelayMetrics::new());
        let poller = Poller::new(
            &config,
            store.clone(),
            writer.clone(),
            client,
            gate.clone(),
            &wakeups,
            metrics.clone(),
        );
        let deliverer = Deliverer::new(
            &config,
            store.clone(),
            writer.clone(),
            wakeups.new_deliveries.clone(),
            metrics.clone(),
        )?;
        Ok(Self {
            config,
            store,
            writer,
            writer_task,
            gate,
            poller: Some(poller),
            deliverer: Some(deliverer),
            wakeups,
            metrics,
        })
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
        ApiState {
            store: self.store.clone(),
            writer: self.writer.clone(),
            token: self.config.server.token.clone().map(Arc::new),
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
            shutdown,
        }
    }

    /// Takes the delivery worker out, like [`App::take_poller`].
    pub fn take_deliverer(&mut self) -> Option<Deliverer> {
        self.deliverer.take()
    }

    /// Runs the API (and the poll and delivery loops, unless taken) on `listener` until
    /// `shutdown` is cancelled, then shuts down in order: stop accepting
    /// connections and claiming work, finish requests and polls in flight,
    /// let the writer commit everything already queued, close the database.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let state = self.api_state(shutdown.clone());
        let Self {
            config,
            store,
            writer,
            writer_task,
            poller,
            deliverer,
            ..
        } = self;
        // The API state holds its own writer handle.
        drop(writer);
        let address = listener.local_addr()?;
        info!(%address, database = %config.database.path.display(), "jogg-relay listening");

        let poller_task = poller.map(|poller| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { poller.run(shutdown).await })
        });
        // systemd (Type=notify): the database is migrated and the listener
        // bound, so the service is ready. A no-op outside systemd.
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        let watchdog_task = sd_notify::watchdog_enabled().map(|interval| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // Pinging at half the interval leaves a whole half for a
                // late tick; a stalled runtime stops pinging and systemd
                // restarts the service.
                let mut ticks = tokio::time::interval(interval / 2);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = ticks.tick() => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
                    }
                }
            })
        });
        let deliverer_task = deliverer.map(|deliverer| {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { deliverer.run(shutdown).await })
        });
        let served = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        // `serve` can also end with an error; the workers stop either way.
        shutdown.cancel();
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        if let Some(task) = watchdog_task {
            let _ = task.await;
        }
        if let Some(task) = poller_task
            && let Err(err) = task.await
        {
            tracing::error!(error = %err, "poller task failed");
        }
        if let Some(task) = deliverer_task
            && let Err(err) = task.await
        {
            tracing::error!(error = %err, "delivery task failed");
        }

        // The router, the poller and with them every writer handle are gone
        // now; the writer drains its queue and stops.
        info!("shutting down: committing queued writes");
        if let Err(err) = writer_task.await {
            tracing::error!(error = %err, "database writer task failed");
        }
        store.close().await;
        info!("shutdown complete");
        served.map_err(AppError::from)
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
