//! Wiring: opens the store, starts the writer and the API, and owns the
//! order of graceful shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::store::{Store, StoreError, Writer};

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the relay on `listener` until `shutdown` is cancelled, then shuts
/// down in order: stop accepting connections, finish requests in flight,
/// let the writer commit everything already queued, close the database.
///
/// Taking the listener (rather than an address) lets tests bind port 0 and
/// the daemon report the bound address before serving.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let store = Store::open(&config.database).await?;
    let (writer, writer_task) = Writer::spawn(store.pool().clone());
    let state = ApiState {
        store: store.clone(),
        writer,
        token: config.server.token.clone().map(Arc::new),
        first_poll_after: config.polling.first_after,
        shutdown: shutdown.clone(),
    };
    let address = listener.local_addr()?;
    info!(%address, database = %config.database.path.display(), "jogg-relay listening");

    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;

    // The router (and with it every writer handle) is gone now; the writer
    // drains its queue and stops.
    info!("shutting down: committing queued writes");
    if let Err(err) = writer_task.await {
        tracing::error!(error = %err, "database writer task failed");
    }
    store.close().await;
    info!("shutdown complete");
    Ok(())
}
