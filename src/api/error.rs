//! The API's one error shape, `{"error":{"code":"snake_case","message":"…"}}`,
//! and the safety net that gives every other error response that shape too.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Every error body the API answers: `{"error":{"code","message",…}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` object of every error body, also the `error` of a refused
/// batch item.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, snake_case (`invalid_video_id`,
    /// `not_found`, …); each response lists the codes it can carry.
    pub code: &'static str,
    /// Human-readable explanation; never contains a secret.
    pub message: String,
    /// `/readyz` only: which database or upstream condition makes the relay
    /// unready (README, "HTTP API", under "Health").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `/readyz` with `upstream_paused` only: when the next probe of JoggAI
    /// goes out (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub next_probe_at: Option<String>,
    /// `/readyz` with `upstream_paused` only: whole seconds until
    /// `next_probe_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_seconds: Option<u64>,
}

impl ErrorDetail {
    /// An error with only its code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            ..Self::default()
        }
    }
}

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid_video_id`, `not_found`, …).
    pub code: &'static str,
    /// Human-readable explanation; never contains a secret.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400` with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `404 not_found` for a video id.
    pub fn video_not_found(video_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("video {video_id} is not tracked"),
        )
    }

    /// `503 shutting_down`: the relay no longer accepts work.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the relay is shutting down; retry against the next instance",
        )
    }

    /// The error for a bare status produced outside our handlers (framework
    /// rejections, fallbacks), with a code derived from the status.
    pub fn from_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            status if status.is_client_error() => "bad_request",
            _ => "internal",
        };
        let message = status.canonical_reason().unwrap_or("error").to_owned();
        Self::new(status, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // The cause is logged here, with its chain; the client only learns
        // that the store failed, which is all it can act on. A lost database
        // file is logged once by the store when it is noticed, not again for
        // every refused request.
        if matches!(err, StoreError::FileLost(_)) {
            tracing::debug!(error = %err, "request refused: the database file is gone");
        } else {
            tracing::error!(error = %err, "store failure while serving a request");
        }
        match err {
            StoreError::WriterStopped => ApiError::shutting_down(),
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the database is not available; retry later",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail::new(self.code, self.message),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Middleware: any error response that is not JSON already (a framework
/// rejection we did not map, a fallback, a body-limit layer) is replaced by
/// the standard JSON error for its status, so clients only ever parse one
/// error shape.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let mut replacement = ApiError::from_status(status).into_response();
    // Keep headers that matter to the client (e.g. `allow` on a 405).
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            replacement.headers_mut().insert(name, value.clone());
        }
    }
    replacement
}
