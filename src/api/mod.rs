//! The HTTP API (README, "HTTP API"): routes, bearer authentication, health checks.
//!
//! Every response an API client can get, success or error, is JSON; see
//! [`error`] for how framework-generated errors are brought into line.

pub mod error;
mod extract;
pub mod openapi;
pub mod resource;
pub mod server;
pub mod stats;
pub mod videos;
pub mod webhook;
mod write_deadline;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::adaptive::SharedLearner;
use crate::config::PollStrategy;
use crate::domain::Millis;
use crate::poller::Wakeups;
use crate::poller::gate::{GlobalPause, UpstreamGate};
use crate::poller::policy::PollPolicy;
use crate::store::{Store, Writer};
use crate::telemetry::metrics::{RelayMetrics, ScrapeState};
pub use error::ApiError;
use error::{ErrorBody, ErrorDetail};

/// How long `/readyz` waits for its probe write to commit.
const READINESS_DB_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest body accepted by the single-video endpoints.
pub const SINGLE_BODY_LIMIT: usize = 64 * 1024;
/// Largest body accepted by the batch endpoint.
pub const BATCH_BODY_LIMIT: usize = 1024 * 1024;

/// The handlers' shared state: one reference-counted [`ApiShared`].
///
/// axum clones the state for every request, once per handler and once per
/// `from_fn_with_state` layer it passes. Cloning the fields themselves was
/// a dozen reference counts (and a lock, for the cancellation token) per
/// clone, each touched by both worker threads: 15 % of a relay's CPU under
/// single enqueues (BENCHMARKS.md, "One reference count per request").
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

impl ApiState {
    /// Wraps `shared` for the routers.
    pub fn new(shared: ApiShared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// Everything the handlers share, behind [`ApiState`].
pub struct ApiShared {
    /// Reads.
    pub store: Store,
    /// Writes (group commit).
    pub writer: Writer,
    /// Bearer token required on `/v1/*`, when configured.
    pub token: Option<Arc<SecretString>>,
    /// The key of JoggAI's push signatures; `POST /webhooks/jogg` answers
    /// `404 pushes_disabled` without it.
    pub push_secret: Option<Arc<SecretString>>,
    /// Whether a push for an untracked video starts tracking it.
    pub adopt_untracked: bool,
    /// The poll schedule (for the first poll of new videos).
    pub policy: PollPolicy,
    /// The upstream gate, whose pause makes the relay not ready.
    pub gate: Arc<UpstreamGate>,
    /// The configured callback URLs (targets of a redelivery).
    pub callback_urls: Arc<Vec<String>>,
    /// Whether per-video callback URLs may be private addresses.
    pub allow_private_targets: bool,
    /// Wakes the workers when there is new work.
    pub wakeups: Wakeups,
    /// Counters and histograms, rendered by `/metrics`.
    pub metrics: Arc<RelayMetrics>,
    /// What was learned of render times (`/v1/stats`, `/metrics`).
    pub learner: SharedLearner,
    /// `polling.strategy`, reported by `/v1/stats`.
    pub strategy: PollStrategy,
    /// Cancelled when the process starts shutting down: enqueues then get 503
    /// and `/readyz` reports not ready.
    pub shutdown: CancellationToken,
    /// The operator console served under `/ui/`, unless `server.console`
    /// is off.
    pub console: Option<Arc<crate::console::Console>>,
}

/// Builds the router with every route, limit and middleware.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route(
            "/videos",
            post(videos::enqueue)
                .get(videos::list)
                .layer(DefaultBodyLimit::max(SINGLE_BODY_LIMIT)),
        )
        .route(
            "/videos/batch",
            post(videos::enqueue_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route(
            "/videos/{video_id}",
            get(videos::show)
                .delete(videos::cancel)
                .layer(DefaultBodyLimit::max(SINGLE_BODY_LIMIT)),
        )
        .route("/stats", get(stats::show))
        .route(
            "/videos/{video_id}/redeliver",
            post(videos::redeliver).layer(DefaultBodyLimit::max(SINGLE_BODY_LIMIT)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    let api = Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve));
    let console = state.console.clone();
    let routes = finish(api.merge(push_routes()), state.clone());
    // Added after `finish`, so the console's HTML error pages are not
    // rewritten into the API's JSON errors.
    match console {
        Some(console) => routes.merge(crate::console::router(state, console)),
        None => routes,
    }
}

/// The router of `server.webhook_bind`: `POST /webhooks/jogg` and nothing
/// else, so that port can be reachable from the internet while the API
/// stays on loopback.
pub fn webhook_router(state: ApiState) -> Router {
    finish(push_routes(), state)
}

/// The push route, which needs no bearer token: its signature is its
/// authentication.
fn push_routes() -> Router<ApiState> {
    Router::new().route(
        "/webhooks/jogg",
        post(webhook::receive).layer(DefaultBodyLimit::max(webhook::PUSH_BODY_LIMIT)),
    )
}

/// What every router shares: JSON errors for unknown routes and methods
/// and for everything the framework answers, and a handler panic answered
/// like any other error.
fn finish(routes: Router<ApiState>, state: ApiState) -> Router {
    routes
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(error::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// Rejects `/v1/*` requests without the configured bearer token.
async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token);
        let accepted = presented.is_some_and(|token| {
            tokens_match(token.as_bytes(), expected.expose_secret().as_bytes())
        });
        if !accepted {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` value, or `None` for any
/// other scheme or an empty token.
///
/// RFC 9110 §11.1 makes the scheme name case-insensitive and separates it
/// from the credentials by one or more spaces (`1*SP`), so `bearer x` and
/// `BEARER   x` are the same as `Bearer x`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ').trim_end_matches([' ', '\t']);
    (!token.is_empty()).then_some(token)
}

/// Compares a presented token with the configured one in constant time.
///
/// Both are hashed first, so the comparison (`subtle`'s, not a hand-written
/// loop the optimizer might shortcut) always runs over 32 bytes and its
/// timing reveals neither how much of a guess was right nor the token's
/// length.
pub(crate) fn tokens_match(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest as _, Sha256};
    use subtle::ConstantTimeEq as _;
    Sha256::digest(presented)
        .ct_eq(&Sha256::digest(expected))
        .into()
}

/// The body of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(value_type = String, examples("ok"))]
    status: &'static str,
}

/// The body of a `200` from `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, examples("ready"))]
    status: &'static str,
    /// Present while a 429 from JoggAI pauses polling (it ends by itself;
    /// the relay stays ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_pause: Option<RateLimitPause>,
}

/// A pause of all polling after a 429, as `/readyz` names it.
#[derive(Debug, Serialize, ToSchema)]
struct RateLimitPause {
    /// Always `rate_limited`.
    #[schema(value_type = String, examples("rate_limited"))]
    reason: &'static str,
    /// When polling resumes (RFC 3339).
    #[schema(format = DateTime)]
    until: String,
    /// Whole seconds until `until`.
    remaining_seconds: u64,
}

/// `GET /healthz`: the process is alive and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "Liveness",
    description = "`200` while the process serves.",
    tag = "operations",
    responses((status = 200, description = "The process is alive and serving.", body = Health))
)]
async fn healthz() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

/// `GET /readyz`: the relay can do its job.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    summary = "Readiness",
    description = "`200` when the relay can do its job (a probe write committed), `503` with the reason otherwise.",
    tag = "operations",
    responses(
        (status = 200, description = "Ready; `upstream_pause` names a 429 pause and its end.", body = Ready),
        (status = 503, description = "Codes: `upstream_paused` (JoggAI refuses the key or credit; `reason` is `invalid_api_key`, `no_permission` or `insufficient_credit`, with `next_probe_at` and `remaining_seconds`), `database_unavailable` (`reason` says why; README, \"HTTP API\", lists them), `shutting_down`.", body = ErrorBody),
    )
)]
async fn readyz(State(state): State<ApiState>) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    // Every pause of all polling is named with its end: a refusal of the key
    // or account (503: it lasts until an operator acts and a probe
    // succeeds), or a 429 pause (200: bounded by `jogg.max_pause`, it ends by
    // itself and the API keeps taking work).
    let now = Millis::now();
    let pause = state.gate.global_pause(now);
    if let Some(GlobalPause::Refused {
        reason,
        next_probe_at,
    }) = pause
    {
        let body = ErrorBody {
            error: ErrorDetail {
                reason: Some(reason.as_str()),
                next_probe_at: Some(next_probe_at.to_rfc3339()),
                remaining_seconds: Some(remaining_seconds(pause, now)),
                ..ErrorDetail::new(
                    "upstream_paused",
                    format!(
                        "JoggAI refuses the relay's requests ({}); polling is paused until a probe succeeds",
                        reason.as_str()
                    ),
                )
            },
        };
        return Ok((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
    }
    if let Err(unready) = state.writer.readiness(READINESS_DB_LIMIT).await {
        let body = ErrorBody {
            error: ErrorDetail {
                reason: Some(unready.reason()),
                ..ErrorDetail::new("database_unavailable", unready.to_string())
            },
        };
        return Ok((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
    }
    let upstream_pause = match pause {
        Some(GlobalPause::RateLimited { until }) => Some(RateLimitPause {
            reason: "rate_limited",
            until: until.to_rfc3339(),
            remaining_seconds: remaining_seconds(pause, now),
        }),
        _ => None,
    };
    let body = Ready {
        status: "ready",
        upstream_pause,
    };
    Ok(axum::Json(body).into_response())
}

/// Whole seconds until `pause` ends, rounded up (0 without a pause).
fn remaining_seconds(pause: Option<GlobalPause>, now: Millis) -> u64 {
    pause.map_or(0, |pause| {
        pause.remaining(now).as_millis().div_ceil(1000) as u64
    })
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "The relay's counters, gauges and histograms, with the standard `process_*` families on Linux.",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format (deploy/README.md lists the series).", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 503, description = "Codes: `storage_unavailable` (the database gauges cannot be read).", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let now = Millis::now();
    let gauges = state.store.gauges(now).await?;
    let pause = state.gate.global_pause(now);
    let text = state.metrics.render(&ScrapeState {
        gauges,
        paused: state.gate.paused(),
        throttled: state.gate.throttled_until(now).is_some(),
        pause_remaining_seconds: pause.map_or(0.0, |pause| pause.remaining(now).as_secs_f64()),
        render_times: state.learner.with(|learner| learner.stats()),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not support that method",
    )
}

/// A handler panic is a bug; answer it like any other error instead of
/// dropping the connection.
fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, tokens_match};

    #[test]
    fn token_comparison() {
        assert!(tokens_match(b"secret", b"secret"));
        assert!(!tokens_match(b"secret", b"secreT"));
        assert!(!tokens_match(b"secret", b"secret2"));
        assert!(!tokens_match(b"", b"secret"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_tolerates_spaces() {
        for value in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "bEaReR   tok",
            "Bearer tok ",
        ] {
            assert_eq!(bearer_token(value), Some("tok"), "{value:?}");
        }
        for value in [
            "tok",
            "Basic tok",
            "Bearer",
            "Bearer ",
            "Bearertok",
            "Bearer\ttok",
            " Bearer tok",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
