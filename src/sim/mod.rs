//! Simulators for hermetic runs: a JoggAI upstream (which can also push
//! JoggAI-style webhooks, [`push`]) and a callback receiver (used by tests,
//! `demo` and benchmarks). Both bind to loopback on a port of the caller's
//! choosing (port 0 in tests).

pub mod push;
pub mod receiver;
pub mod upstream;

pub use push::{PushAnswer, PushAttempt, PushRecord, PushSettings, PushSettingsError, signed_push};
pub use receiver::{Received, ReceiverState, Reply, SimReceiver};
pub use upstream::{
    AuthFailure, Ending, Fault, LoggedRequest, RenderOutcome, SIM_API_KEY, SimState, SimUpstream,
    Spelling, Timeline,
};

/// Serves `router` on `listener` in a background task until the returned
/// token is cancelled (each simulator cancels it when dropped).
fn serve_in_background(
    listener: tokio::net::TcpListener,
    router: axum::Router,
) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    shutdown
}
