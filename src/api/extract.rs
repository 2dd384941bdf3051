//! Request extractors whose every rejection is an [`ApiError`], so bad input
//! never produces axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde_json::Value;

use super::error::ApiError;
use crate::domain::VideoId;

/// A request body that must be `application/json` and parse as JSON.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as content-type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        let value = serde_json::from_slice(&bytes).map_err(|err| {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {err}"))
        })?;
        Ok(Self(value))
    }
}

/// Maps a failure to read the body; the only one a client causes on purpose
/// is exceeding the size limit.
fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this endpoint accepts",
        )
    } else {
        ApiError::bad_request("invalid_body", rejection.body_text())
    }
}

/// The `{video_id}` path segment, validated.
pub struct VideoIdPath(pub VideoId);

impl<S: Send + Sync> FromRequestParts<S> for VideoIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::bad_request("invalid_video_id", "the path is not valid UTF-8")
            })?;
        VideoId::parse(&raw)
            .map(Self)
            .map_err(|err| ApiError::bad_request("invalid_video_id", err.to_string()))
    }
}
