//! A callback receiver: records every callback (its raw body and headers
//! too, for tests to verify with an implementation of their own), verifies
//! both signatures, counts callbacks in flight, and can be scripted per
//! path to fail, answer slowly, ask for a later retry, answer 410 Gone,
//! redirect, or stream an endless answer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookSecret;
use crate::delivery::signing;

/// How the receiver answers one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status at once.
    Status(u16),
    /// This status with a `Retry-After` header.
    StatusWithRetryAfter(u16, String),
    /// `200`, after this long (a relay with a shorter timeout gives up).
    Slow(Duration),
    /// `302 Found` with this `Location`.
    Redirect(String),
    /// `200` with a body that never ends.
    Endless,
    /// `200` with this many bytes of body, then nothing more, the answer
    /// never finishing.
    Stall(usize),
}

/// One callback as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The path it was sent to, without the leading `/`.
    pub path: String,
    /// The body's `event_id`.
    pub event_id: Option<String>,
    /// The body's `event`.
    pub event: Option<String>,
    /// The `webhook-id` header.
    pub webhook_id: Option<String>,
    /// The `x-webhook-event` header.
    pub event_header: Option<String>,
    /// The `user-agent` header.
    pub user_agent: Option<String>,
    /// The Standard Webhooks signature verified (and `webhook-id` matched the body).
    pub standard_ok: bool,
    /// The JoggAI-style signature verified.
    pub joggai_ok: bool,
    /// The body, parsed.
    pub body: Value,
    /// The body's bytes as received.
    pub raw_body: Vec<u8>,
    /// Every request header as received.
    pub headers: HeaderMap,
    /// How it was answered.
    pub reply: Reply,
    /// Time since the receiver started.
    pub at: Duration,
    /// When it arrived (to compare with the upstream simulator's clock).
    pub arrived: Instant,
}

impl Received {
    /// Whether the relay got a 2xx in time for this one.
    pub fn accepted(&self) -> bool {
        matches!(self.reply, Reply::Status(200..=299))
    }

    /// Whether both signatures verified.
    pub fn verified(&self) -> bool {
        self.standard_ok && self.joggai_ok
    }
}

/// The receiver's state; every method is safe to call while it serves.
#[derive(Debug)]
pub struct ReceiverState {
    secret: Option<WebhookSecret>,
    /// Secrets that replace `secret` for callbacks to one path (a receiver
    /// standing in for a per-video target signed with its own secret).
    path_secrets: Mutex<HashMap<String, WebhookSecret>>,
    started: Instant,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    received: Mutex<Vec<Received>>,
    accepted: watch::Sender<usize>,
    arrivals: watch::Sender<usize>,
    /// Answer every callback with this status (an outage), when set.
    outage: Mutex<Option<u16>>,
    /// Fail callbacks at random: probability, status, seeded generator.
    random_failures: Mutex<Option<(f64, u16, fastrand::Rng)>>,
    /// Callbacks being answered now, and the most there ever were at once.
    in_flight: Mutex<(usize, usize)>,
}

impl ReceiverState {
    /// Verifies callbacks to `path` with `secret` instead of the receiver's
    /// own (per-video targets are signed with `callbacks.video_secret`).
    pub fn verify_path_with(&self, path: &str, secret: WebhookSecret) {
        self.path_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.trim_start_matches('/').to_owned(), secret);
    }

    /// Queues the answers for the next callbacks to `path`; afterwards it
    /// answers `200`.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.trim_start_matches('/').to_owned())
            .or_default()
            .extend(replies);
    }

    /// Answers the next `times` callbacks to `path` with `status`.
    pub fn fail(&self, path: &str, times: usize, status: u16) {
        self.script(path, std::iter::repeat_n(Reply::Status(status), times));
    }

    /// Answers every callback with `status` until called with `None`.
    pub fn set_outage(&self, status: Option<u16>) {
        *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Fails each callback with probability `rate` (status `status`), drawn
    /// by a generator seeded with `seed`; `rate` 0 stops.
    pub fn fail_randomly(&self, rate: f64, status: u16, seed: u64) {
        *self
            .random_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            (rate > 0.0).then(|| (rate, status, fastrand::Rng::with_seed(seed)));
    }

    /// Every callback so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The most callbacks that were being answered at once (on every
    /// address of this receiver together).
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Callbacks answered 2xx at once so far.
    pub fn accepted_count(&self) -> usize {
        *self.accepted.borrow()
    }

    /// Waits until at least `count` callbacks have arrived (however they
    /// were answered), or `limit` passes; returns whether they did.
    pub async fn wait_for_received(&self, count: usize, limit: Duration) -> bool {
        let mut arrivals = self.arrivals.subscribe();
        tokio::time::timeout(limit, arrivals.wait_for(|n| *n >= count))
            .await
            .is_ok()
    }

    /// Waits until at least `count` callbacks were accepted, or `limit`
    /// passes; returns whether they were.
    pub async fn wait_for_accepted(&self, count: usize, limit: Duration) -> bool {
        let mut accepted = self.accepted.subscribe();
        tokio::time::timeout(limit, accepted.wait_for(|n| *n >= count))
            .await
            .is_ok()
    }
}

/// A running receiver.
#[derive(Debug)]
pub struct SimReceiver {
    /// Its state, to script and inspect.
    pub state: Arc<ReceiverState>,
    /// Where it listens.
    pub address: SocketAddr,
    shutdown: CancellationToken,
    /// Stops the extra listeners of [`SimReceiver::listen_again`].
    more: Vec<CancellationToken>,
}

fn router(state: &Arc<ReceiverState>) -> Router {
    Router::new()
        .route("/{*path}", post(receive))
        .with_state(state.clone())
}

impl SimReceiver {
    /// Starts a receiver on `127.0.0.1`, port 0, verifying with `secret`.
    pub async fn start(secret: Option<WebhookSecret>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(ReceiverState {
            secret,
            path_secrets: Mutex::new(HashMap::new()),
            started: Instant::now(),
            scripts: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            accepted: watch::channel(0).0,
            arrivals: watch::channel(0).0,
            outage: Mutex::new(None),
            random_failures: Mutex::new(None),
            in_flight: Mutex::new((0, 0)),
        });
        let shutdown = super::serve_in_background(listener, router(&state));
        Ok(Self {
            state,
            address,
            shutdown,
            more: Vec::new(),
        })
    }

    /// Serves this receiver (same state, same record) on one more loopback
    /// port as well, which the relay counts as another host; returns its
    /// address.
    pub async fn listen_again(&mut self) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        self.more
            .push(super::serve_in_background(listener, router(&self.state)));
        Ok(address)
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.address, path.trim_start_matches('/'))
    }
}

impl Drop for SimReceiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for more in &self.more {
            more.cancel();
        }
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Counts one callback in flight until dropped.
struct InFlight(Arc<ReceiverState>);

impl InFlight {
    fn enter(state: &Arc<ReceiverState>) -> Self {
        let mut counts = state.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap_or_else(|p| p.into_inner()).0 -= 1;
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&state);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let event_id = parsed["event_id"].as_str().map(str::to_owned);
    let webhook_id = header_str(&headers, "webhook-id");
    let path_secret = state
        .path_secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&path)
        .cloned();
    let (standard_ok, joggai_ok) = match path_secret.as_ref().or(state.secret.as_ref()) {
        Some(secret) => {
            let standard = match (
                &webhook_id,
                header_str(&headers, "webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
                header_str(&headers, "webhook-signature"),
            ) {
                (Some(id), Some(timestamp), Some(signature)) => {
                    Some(id) == event_id.as_ref()
                        && signing::verify_standard(secret, id, timestamp, &body, &signature)
                }
                _ => false,
            };
            let joggai = header_str(&headers, "x-webhook-signature")
                .is_some_and(|signature| signing::verify_joggai(secret, &body, &signature));
            (standard, joggai)
        }
        None => (false, false),
    };
    let outage = *state.outage.lock().unwrap_or_else(|p| p.into_inner());
    let random_failure = state
        .random_failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|(rate, status, rng)| (rng.f64() < *rate).then_some(*status));
    let scripted = state
        .scripts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    let reply = match (outage, scripted, random_failure) {
        (Some(status), _, _) => Reply::Status(status),
        (None, Some(reply), _) => reply,
        (None, None, Some(status)) => Reply::Status(status),
        (None, None, None) => Reply::Status(200),
    };
    let received = Received {
        path,
        event: parsed["event"].as_str().map(str::to_owned),
        event_id,
        webhook_id,
        event_header: header_str(&headers, "x-webhook-event"),
        user_agent: header_str(&headers, "user-agent"),
        standard_ok,
        joggai_ok,
        body: parsed,
        raw_body: body.to_vec(),
        headers: headers.clone(),
        reply: reply.clone(),
        at: state.started.elapsed(),
        arrived: Instant::now(),
    };
    let accepted = received.accepted();
    state
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(received);
    if accepted {
        state.accepted.send_modify(|n| *n += 1);
    }
    state.arrivals.send_modify(|n| *n += 1);
    match reply {
        Reply::Status(status) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Reply::StatusWithRetryAfter(status, retry_after) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            [(header::RETRY_AFTER, retry_after)],
        )
            .into_response(),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
        Reply::Redirect(location) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        Reply::Endless => spaces(None),
        Reply::Stall(bytes) => spaces(Some(bytes)),
    }
}

/// A `200` whose body is spaces: for ever, as fast as the relay reads them
/// (`None`), or this many and then a stall.
fn spaces(bytes: Option<usize>) -> Response {
    let body = tokio_util::io::ReaderStream::new(Spaces(bytes));
    (StatusCode::OK, axum::body::Body::from_stream(body)).into_response()
}

/// Reads as spaces: without end (`None`), or this many more and then
/// pending for ever (the connection is closed by the client).
struct Spaces(Option<usize>);

impl tokio::io::AsyncRead for Spaces {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let room = buf.remaining();
        let count = match self.0 {
            None => room,
            // Never woken: nothing more is coming, and the client's
            // closing the connection drops this reader.
            Some(0) => return std::task::Poll::Pending,
            Some(left) => left.min(room),
        };
        buf.put_slice(&vec![b' '; count]);
        if let Some(left) = &mut self.0 {
            *left -= count;
        }
        std::task::Poll::Ready(Ok(()))
    }
}
