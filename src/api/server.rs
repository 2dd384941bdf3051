//! The HTTP server loop: accepts connections up to `server.max_connections`,
//! serves each with HTTP/1.1 under a header timeout and a body timeout, and
//! shuts down gracefully.
//!
//! Why not `axum::serve`: it holds every connection for as long as the
//! client likes (slow headers, slow bodies, idle keep-alive) and accepts
//! without limit, so a few hundred slow clients exhaust the file descriptors
//! and `/healthz` stops answering.
//!
//! The design (README, "HTTP API", under "Connections"):
//! - a semaphore of `max_connections` permits; the loop takes a permit
//!   *before* it accepts, so connections beyond the cap wait in the kernel's
//!   listen backlog (they are not refused) and are accepted as slots free;
//! - hyper's header-read timer closes a connection that has not sent a
//!   complete request head within `header_timeout` of opening or of its
//!   previous response, which bounds slow headers and idle keep-alive alike;
//! - `body_deadline` gives the body `body_timeout` from the end of the
//!   headers; a slower body gets `408 request_timeout` and the connection
//!   is closed;
//! - `WriteDeadline` closes a connection whose response writes make no
//!   progress for `write_timeout`: the client is not reading (hyper's header
//!   timer does not run while hyper writes, so without it a client that
//!   pipelines requests and never reads would keep its slot forever).
//!
//! Every slot is therefore freed within `header_timeout` (or
//! `header_timeout + body_timeout` for a request that trickles its body, or
//! `write_timeout` after a client stops reading) whatever the clients do,
//! so a health check waiting in the backlog is answered within that time
//! even when slow clients hold every slot.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ApiError;
use super::write_deadline::WriteDeadline;
use crate::config::ServerConfig;

/// Pause after a failed `accept` (typically EMFILE, out of descriptors), so
/// the loop does not spin while nothing can be accepted.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The server's limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for a request head (also the idle keep-alive limit).
    pub header_timeout: Duration,
    /// Longest time for a request body, from the end of its headers.
    pub body_timeout: Duration,
    /// Longest time a response write may make no progress.
    pub write_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl From<&ServerConfig> for Limits {
    fn from(config: &ServerConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            write_timeout: config.write_timeout,
            shutdown_grace: config.shutdown_grace,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops
/// accepting, lets every connection finish the request it is serving (idle
/// connections close at once) and waits up to `limits.shutdown_grace` for
/// them before dropping the rest.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let router = router.layer(middleware::from_fn_with_state(
        BodyTimeout(limits.body_timeout),
        body_deadline,
    ));
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        // A slot first: beyond the cap, connections wait in the backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the slots are never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Responses are small and written at once; Nagle would only delay
        // them.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            // Writes that stall (the client does not read) end the
            // connection; see `WriteDeadline`.
            let stream = WriteDeadline::new(stream, limits.write_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, take no other.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                // Timeouts and clients that hang up are routine.
                debug!(%peer, error = %err, "connection closed with an error");
            }
        });
    }
    // Stop accepting: connections arriving now are refused.
    drop(listener);
    let open = connections.len();
    if open > 0 {
        info!(
            connections = open,
            "waiting for requests in flight to finish"
        );
    }
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            grace = ?limits.shutdown_grace,
            "connections still open after the shutdown grace were closed"
        );
        connections.abort_all();
    }
}

/// The body timeout, as the middleware's state.
#[derive(Debug, Clone, Copy)]
struct BodyTimeout(Duration);

/// Gives the request body until `body_timeout` after its headers. A body
/// that is not complete by then fails to read; whatever the handler made
/// of that is replaced by `408 request_timeout` with `Connection: close`.
async fn body_deadline(
    State(BodyTimeout(limit)): State<BodyTimeout>,
    request: Request,
    next: Next,
) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(limit)),
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!("the request body did not arrive within {limit:?}"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline cut the body short.
    expired: Arc<AtomicBool>,
}

/// The error a body read gets after the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        // Data that is already there is taken even at the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
