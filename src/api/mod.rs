//! The HTTP API (DESIGN 3.3): routes, bearer authentication, health checks.
//!
//! Every response an API client can get, success or error, is JSON; see
//! [`error`] for how framework-generated errors are brought into line.

pub mod error;
mod extract;
pub mod resource;
pub mod videos;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::domain::Millis;
use crate::poller::Wakeups;
use crate::poller::gate::{GlobalPause, UpstreamGate};
use crate::poller::policy::PollPolicy;
use crate::store::{Store, Writer};
use crate::telemetry::metrics::{RelayMetrics, ScrapeState};
pub use error::ApiError;

/// How long `/readyz` waits for the database's write lock.
const READINESS_DB_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest body accepted by the single-video endpoints.
pub const SINGLE_BODY_LIMIT: usize = 64 * 1024;
/// Largest body accepted by the batch endpoint.
pub const BATCH_BODY_LIMIT: usize = 1024 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Reads.
    pub store: Store,
    /// Writes (group commit).
    pub writer: Writer,
    /// Bearer token required on `/v1/*`, when configured.
    pub token: Option<Arc<SecretString>>,
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
    /// Cancelled when the process starts shutting down: enqueues then get 503
    /// and `/readyz` reports not ready.
    pub shutdown: CancellationToken,
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
        .route(
            "/videos/{video_id}/redeliver",
            post(videos::redeliver).layer(DefaultBodyLimit::max(SINGLE_BODY_LIMIT)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), expected.expose_secret().as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Compares two byte strings in time that depends only on their lengths, so
/// response timing does not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /healthz`: the process is alive and serving.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the relay can do its job.
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
        let body = json!({"error": {
            "code": "upstream_paused",
            "reason": reason.as_str(),
            "message": format!(
                "JoggAI refuses the relay's requests ({}); polling is paused until a probe succeeds",
                reason.as_str()
            ),
            "next_probe_at": next_probe_at.to_rfc3339(),
            "remaining_seconds": remaining_seconds(pause, now),
        }});
        return Ok((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
    }
    if !state.store.is_usable(READINESS_DB_LIMIT).await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database does not answer",
        ));
    }
    let mut body = json!({"status": "ready"});
    if let Some(GlobalPause::RateLimited { until }) = pause {
        body["upstream_pause"] = json!({
            "reason": "rate_limited",
            "until": until.to_rfc3339(),
            "remaining_seconds": remaining_seconds(pause, now),
        });
    }
    Ok(axum::Json(body).into_response())
}

/// Whole seconds until `pause` ends, rounded up (0 without a pause).
fn remaining_seconds(pause: Option<GlobalPause>, now: Millis) -> u64 {
    pause.map_or(0, |pause| {
        pause.remaining(now).as_millis().div_ceil(1000) as u64
    })
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let now = Millis::now();
    let gauges = state.store.gauges(now).await?;
    let pause = state.gate.global_pause(now);
    let text = state.metrics.render(&ScrapeState {
        gauges,
        paused: state.gate.paused(),
        throttled: state.gate.throttled_until(now).is_some(),
        pause_remaining_seconds: pause.map_or(0.0, |pause| pause.remaining(now).as_secs_f64()),
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
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
