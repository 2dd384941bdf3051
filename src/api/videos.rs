//! `/v1/videos` handlers and the validation of enqueue requests.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::instrument;
use utoipa::ToSchema;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{JsonBody, VideoIdPath};
use super::resource::VideoResource;
use crate::delivery::guard;
use crate::domain::{Millis, VideoId, VideoState};
use crate::store::{CancelOutcome, ConflictingFields, EnqueueOutcome, NewVideo, RedeliverOutcome};

/// Most items in one batch request.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Largest serialized metadata object.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Default and largest page size of `GET /v1/videos`.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The body of `POST /v1/videos`, and each item of a batch.
// Only a description (its doc comment is the document's text):
// `parse_new_video` reads the body field by field, so that each mistake
// gets its own error code, and accepts exactly this shape.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// The JoggAI video id: 1–128 characters of `[A-Za-z0-9_-]`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub video_id: String,
    /// Where this video's callback goes, besides `callbacks.urls`: an
    /// absolute http(s) URL without credentials, not a literal private
    /// address unless `callbacks.allow_private_targets`.
    pub callback_url: Option<String>,
    /// Any JSON object up to 4096 bytes serialized, returned in the
    /// callback.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// The body of `POST /v1/videos/batch`.
// Only a description, like `EnqueueRequest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to 1000 videos; each is validated on its own.
    #[schema(max_items = 1000)]
    pub videos: Vec<EnqueueRequest>,
}

/// The answer to `POST /v1/videos/batch`: one result per item, in request
/// order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResults {
    /// One per item sent.
    results: Vec<BatchItem>,
}

/// What became of one batch item.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// The item's `video_id` as sent (`null` when it had none).
    #[schema(required = true, value_type = Value)]
    video_id: Value,
    outcome: BatchOutcome,
    /// Why the item was not stored (`conflict` and `invalid` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

/// The outcome of one batch item.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchOutcome {
    /// Newly tracked.
    Created,
    /// Already tracked with the same request; nothing changed.
    Existing,
    /// Already tracked with another `callback_url` or `metadata`; nothing
    /// changed.
    Conflict,
    /// Refused: `error` says why.
    Invalid,
}

/// A page of `GET /v1/videos`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VideoPage {
    /// The videos in insertion order, without `transitions` and
    /// `deliveries`.
    videos: Vec<VideoResource>,
    /// The `cursor` of the next page; `null` on the last one.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// The answer to `POST /v1/videos/{video_id}/redeliver`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    /// The video.
    #[schema(value_type = String)]
    video_id: VideoId,
    /// The event queued again, with its original id.
    event_id: String,
    /// How many callback targets it is queued for.
    targets: usize,
}

/// Validates one enqueue item (`{"video_id", "callback_url"?, "metadata"?}`).
///
/// Shared by the single and batch endpoints and the `enqueue` command, so
/// every entry point accepts exactly the same input.
pub fn parse_new_video(
    item: &Value,
    first_poll_at: Millis,
    allow_private_targets: bool,
) -> Result<NewVideo, ApiError> {
    let Value::Object(fields) = item else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "each video must be a JSON object with a \"video_id\"",
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !matches!(key.as_str(), "video_id" | "callback_url" | "metadata"))
    {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("unknown field {unknown:?}; expected video_id, callback_url, metadata"),
        ));
    }
    let video_id = match fields.get("video_id") {
        Some(Value::String(raw)) => VideoId::parse(raw)
            .map_err(|err| ApiError::bad_request("invalid_video_id", err.to_string()))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_video_id",
                "video_id must be a string",
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_video_id",
                "video_id is required",
            ));
        }
    };
    let callback_url = match fields.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(parse_callback_url(raw, allow_private_targets)?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_callback_url",
                "callback_url must be a string",
            ));
        }
    };
    let metadata = match fields.get("metadata") {
        None | Some(Value::Null) => None,
        Some(object @ Value::Object(_)) => {
            let text = object.to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(ApiError::bad_request(
                    "invalid_metadata",
                    format!("metadata must be at most {MAX_METADATA_BYTES} bytes serialized"),
                ));
            }
            Some(text)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_metadata",
                "metadata must be a JSON object",
            ));
        }
    };
    Ok(NewVideo {
        video_id,
        callback_url,
        metadata,
        first_poll_at,
    })
}

/// A per-video callback URL must be an absolute http(s) URL with a host and
/// without credentials (they would be stored and shown in clear), a host
/// name no longer than DNS allows, and,
/// unless private targets are allowed, not a literal private address (names
/// are checked again at send time, on what they resolve to).
fn parse_callback_url(raw: &str, allow_private_targets: bool) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::bad_request("invalid_callback_url", why.to_owned());
    let url = Url::parse(raw).map_err(|err| invalid(&format!("not a valid URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("callback_url must use http or https"));
    }
    if url.host().is_none() {
        return Err(invalid("callback_url must have a host"));
    }
    if guard::host_too_long(&url) {
        return Err(invalid(&format!(
            "the callback_url host is longer than {} octets",
            guard::MAX_HOST_LEN
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("callback_url must not contain credentials"));
    }
    if !allow_private_targets
        && let Some(ip) = guard::literal_ip(&url)
        && guard::is_forbidden(ip)
    {
        return Err(invalid(
            "callback_url points at a loopback, private or reserved address \
             (see callbacks.allow_private_targets)",
        ));
    }
    Ok(url.into())
}

/// `409 conflict` for an id already tracked with a different request.
fn conflict(video_id: &VideoId, fields: ConflictingFields) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "video {video_id} is already tracked with a different {}; \
             repeat the request exactly as first sent, or use another id",
            fields.names()
        ),
    )
}

/// `POST /v1/videos`: track one video; `201` when new, `200` when the same
/// request was made before, `409` when the id is tracked with a different
/// `callback_url` or `metadata`.
#[utoipa::path(
    post,
    path = "/v1/videos",
    tag = "videos",
    security(("bearer" = [])),
    operation_id = "enqueue_video",
    summary = "Track a video",
    description = "`201` when new. The id is an idempotency key with a body: the same request again answers `200` with the tracked video and changes nothing; the same id with a different `callback_url` or `metadata` answers `409` and changes nothing either.",
    request_body(content = EnqueueRequest, content_type = "application/json", description = "Body limit 64 KiB."),
    responses(
        (status = 201, description = "Newly tracked: the video as stored.", body = VideoResource),
        (status = 200, description = "The same request was made before: the tracked video, unchanged.", body = VideoResource),
        (status = 400, description = "Codes: `invalid_json`, `invalid_body`, `invalid_request`, `unknown_field`, `invalid_video_id`, `invalid_callback_url`, `invalid_metadata`.", body = ErrorBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
        (status = 408, description = "Codes: `request_timeout` (the body did not arrive within `server.body_timeout`; the connection is closed).", body = ErrorBody),
        (status = 409, description = "Codes: `conflict` (the id is tracked with a different `callback_url` or `metadata`; nothing changed).", body = ErrorBody),
        (status = 413, description = "Codes: `payload_too_large` (over 64 KiB).", body = ErrorBody),
        (status = 415, description = "Codes: `unsupported_media_type` (not sent as `application/json`).", body = ErrorBody),
        (status = 503, description = "Codes: `shutting_down`, `storage_unavailable`.", body = ErrorBody),
    )
)]
#[instrument(skip_all, level = "debug")]
pub async fn enqueue(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let video = parse_new_video(&body, first_poll_at(&state), state.allow_private_targets)?;
    let outcome = state.writer.enqueue(vec![video.clone()]).await?;
    match outcome.first() {
        Some(&EnqueueOutcome::Created { at }) => {
            state.wakeups.new_videos.announce(video.first_poll_at);
            let resource = VideoResource::accepted(&video, at);
            return Ok((StatusCode::CREATED, Json(resource)).into_response());
        }
        Some(&EnqueueOutcome::Conflict(fields)) => return Err(conflict(&video.video_id, fields)),
        Some(EnqueueOutcome::Existing) | None => {}
    }
    let details = state
        .store
        .video_details(&video.video_id)
        .await?
        .ok_or_else(|| ApiError::video_not_found(video.video_id.as_str()))?;
    Ok((StatusCode::OK, Json(VideoResource::detailed(details))).into_response())
}

/// `POST /v1/videos/batch`: track up to [`MAX_BATCH_ITEMS`] videos; each
/// item gets its own outcome (`created`, `existing`, `conflict` or
/// `invalid`) and refused items do not stop valid ones.
#[utoipa::path(
    post,
    path = "/v1/videos/batch",
    operation_id = "enqueue_videos",
    summary = "Track many videos",
    description = "Up to 1000 items. Always `200` with one result per item in request order; valid items are stored even when others are invalid or conflict. An id repeated within one batch counts as sent twice in order.",
    tag = "videos",
    security(("bearer" = [])),
    request_body(content = BatchRequest, content_type = "application/json", description = "Body limit 1 MiB."),
    responses(
        (status = 200, description = "One result per item, in request order; valid items are stored even when others are refused.", body = BatchResults),
        (status = 400, description = "Codes: `invalid_json`, `invalid_body`, `invalid_request` (not `{\"videos\": [...]}`), `unknown_field`, `too_many_items` (over 1000).", body = ErrorBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
        (status = 408, description = "Codes: `request_timeout` (the body did not arrive within `server.body_timeout`; the connection is closed).", body = ErrorBody),
        (status = 413, description = "Codes: `payload_too_large` (over 1 MiB).", body = ErrorBody),
        (status = 415, description = "Codes: `unsupported_media_type` (not sent as `application/json`).", body = ErrorBody),
        (status = 503, description = "Codes: `shutting_down`, `storage_unavailable`.", body = ErrorBody),
    )
)]
#[instrument(skip_all, level = "debug")]
pub async fn enqueue_batch(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Json<BatchResults>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let Some(Value::Array(items)) = body.get("videos") else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be {\"videos\": [...]}",
        ));
    };
    if body.as_object().is_some_and(|fields| fields.len() > 1) {
        return Err(ApiError::bad_request(
            "unknown_field",
            "the batch body takes only \"videos\"",
        ));
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("a batch holds at most {MAX_BATCH_ITEMS} videos"),
        ));
    }
    let first_poll_at = first_poll_at(&state);
    let parsed: Vec<Result<NewVideo, ApiError>> = items
        .iter()
        .map(|item| parse_new_video(item, first_poll_at, state.allow_private_targets))
        .collect();
    let valid: Vec<NewVideo> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        state.writer.enqueue(valid).await?
    };
    if outcomes
        .iter()
        .any(|outcome| matches!(outcome, EnqueueOutcome::Created { .. }))
    {
        state.wakeups.new_videos.announce(first_poll_at);
    }
    let mut outcomes = outcomes.into_iter();

    let stored = |video: &NewVideo, outcome, error: Option<ApiError>| BatchItem {
        video_id: Value::String(video.video_id.as_str().to_owned()),
        outcome,
        error: error.map(|err| ErrorDetail::new(err.code, err.message)),
    };
    let results: Vec<BatchItem> = parsed
        .iter()
        .zip(items)
        .map(|(result, item)| match result {
            Ok(video) => match outcomes.next() {
                Some(EnqueueOutcome::Created { .. }) => stored(video, BatchOutcome::Created, None),
                Some(EnqueueOutcome::Conflict(fields)) => stored(
                    video,
                    BatchOutcome::Conflict,
                    Some(conflict(&video.video_id, fields)),
                ),
                Some(EnqueueOutcome::Existing) | None => {
                    stored(video, BatchOutcome::Existing, None)
                }
            },
            Err(err) => BatchItem {
                video_id: item.get("video_id").cloned().unwrap_or(Value::Null),
                outcome: BatchOutcome::Invalid,
                error: Some(ErrorDetail::new(err.code, err.message.clone())),
            },
        })
        .collect();
    Ok(Json(BatchResults { results }))
}

/// `GET /v1/videos/{id}`.
#[utoipa::path(
    get,
    path = "/v1/videos/{video_id}",
    operation_id = "get_video",
    summary = "Read one video",
    description = "The video with its transitions and callback deliveries.",
    tag = "videos",
    security(("bearer" = [])),
    params(("video_id" = String, Path, description = "The JoggAI video id: 1–128 characters of `[A-Za-z0-9_-]`.", pattern = "^[A-Za-z0-9_-]{1,128}$")),
    responses(
        (status = 200, description = "The video with its transitions and deliveries.", body = VideoResource),
        (status = 400, description = "Codes: `invalid_video_id`.", body = ErrorBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
        (status = 404, description = "Codes: `not_found` (the video is not tracked).", body = ErrorBody),
        (status = 503, description = "Codes: `storage_unavailable`.", body = ErrorBody),
    )
)]
#[instrument(skip_all, level = "debug", fields(video_id = %video_id))]
pub async fn show(
    State(state): State<ApiState>,
    VideoIdPath(video_id): VideoIdPath,
) -> Result<Json<VideoResource>, ApiError> {
    let details = state
        .store
        .video_details(&video_id)
        .await?
        .ok_or_else(|| ApiError::video_not_found(video_id.as_str()))?;
    Ok(Json(VideoResource::detailed(details)))
}

/// Stops tracking `video_id`, as `DELETE /v1/videos/{id}` and the
/// console's cancel button do: a real cancellation is counted and logged
/// as a transition.
#[instrument(skip(state), level = "debug")]
pub async fn cancel_video(
    state: &ApiState,
    video_id: &VideoId,
) -> Result<CancelOutcome, crate::store::StoreError> {
    let outcome = state.writer.cancel(video_id.clone()).await?;
    if matches!(outcome, CancelOutcome::Cancelled) {
        state.metrics.transition(VideoState::Cancelled);
        tracing::info!(video_id = %video_id, kind = "state", from = "active", to = "cancelled", "transition");
    }
    Ok(outcome)
}

/// Queues a terminal video's event again to the configured URLs and its
/// own, as `POST /v1/videos/{id}/redeliver` and the console's redeliver
/// button do, and wakes the delivery worker.
#[instrument(skip(state), level = "debug")]
pub async fn redeliver_video(
    state: &ApiState,
    video_id: &VideoId,
) -> Result<RedeliverOutcome, crate::store::StoreError> {
    let configured = state.callback_urls.as_ref().clone();
    let outcome = state.writer.redeliver(video_id.clone(), configured).await?;
    if matches!(outcome, RedeliverOutcome::Queued { .. }) {
        state.wakeups.new_deliveries.notify_one();
    }
    Ok(outcome)
}

/// `DELETE /v1/videos/{id}`: stop tracking; `204`, idempotent.
#[utoipa::path(
    delete,
    path = "/v1/videos/{video_id}",
    operation_id = "cancel_video",
    summary = "Stop tracking a video",
    description = "Idempotent: `204` also when already cancelled.",
    tag = "videos",
    security(("bearer" = [])),
    params(("video_id" = String, Path, description = "The JoggAI video id: 1–128 characters of `[A-Za-z0-9_-]`.", pattern = "^[A-Za-z0-9_-]{1,128}$")),
    responses(
        (status = 204, description = "No longer tracked (also when it was already cancelled)."),
        (status = 400, description = "Codes: `invalid_video_id`.", body = ErrorBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
        (status = 404, description = "Codes: `not_found` (the video is not tracked).", body = ErrorBody),
        (status = 409, description = "Codes: `already_terminal` (completed, failed or abandoned; terminal states never change).", body = ErrorBody),
        (status = 503, description = "Codes: `shutting_down`, `storage_unavailable`.", body = ErrorBody),
    )
)]
#[instrument(skip_all, level = "debug", fields(video_id = %video_id))]
pub async fn cancel(
    State(state): State<ApiState>,
    VideoIdPath(video_id): VideoIdPath,
) -> Result<StatusCode, ApiError> {
    match cancel_video(&state, &video_id).await? {
        CancelOutcome::Cancelled => Ok(StatusCode::NO_CONTENT),
        CancelOutcome::AlreadyCancelled => Ok(StatusCode::NO_CONTENT),
        CancelOutcome::NotFound => Err(ApiError::video_not_found(video_id.as_str())),
        CancelOutcome::Terminal(state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_terminal",
            format!("video {video_id} is already {state}; terminal states never change"),
        )),
    }
}

/// `POST /v1/videos/{id}/redeliver`: queue a terminal video's event again
/// to its targets, with the same `event_id`; `202`.
#[utoipa::path(
    post,
    path = "/v1/videos/{video_id}/redeliver",
    operation_id = "redeliver_video",
    summary = "Send the callback again",
    description = "For a completed, failed or abandoned video: every delivery of its event (to each configured URL and its own `callback_url`) becomes pending again, missing ones are created, and the event keeps its `event_id`.",
    tag = "videos",
    security(("bearer" = [])),
    params(("video_id" = String, Path, description = "The JoggAI video id: 1–128 characters of `[A-Za-z0-9_-]`.", pattern = "^[A-Za-z0-9_-]{1,128}$")),
    responses(
        (status = 202, description = "Every delivery of the video's event is pending again, with the same `event_id`.", body = Redelivery),
        (status = 400, description = "Codes: `invalid_video_id`.", body = ErrorBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
        (status = 404, description = "Codes: `not_found` (the video is not tracked).", body = ErrorBody),
        (status = 409, description = "Codes: `no_event` (the video is active or cancelled: only completed, failed and abandoned videos have an event).", body = ErrorBody),
        (status = 503, description = "Codes: `shutting_down`, `storage_unavailable`.", body = ErrorBody),
    )
)]
#[instrument(skip_all, level = "debug", fields(video_id = %video_id))]
pub async fn redeliver(
    State(state): State<ApiState>,
    VideoIdPath(video_id): VideoIdPath,
) -> Result<Response, ApiError> {
    match redeliver_video(&state, &video_id).await? {
        RedeliverOutcome::Queued { event_id, targets } => {
            let body = Redelivery {
                video_id,
                event_id,
                targets,
            };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        RedeliverOutcome::NotFound => Err(ApiError::video_not_found(video_id.as_str())),
        RedeliverOutcome::NoEvent(video_state) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_event",
            format!(
                "video {video_id} is {video_state}; only completed, failed and abandoned videos have an event"
            ),
        )),
    }
}

/// Query of `GET /v1/videos`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/videos?state=&limit=&cursor=`: a page in insertion order.
#[utoipa::path(
    get,
    path = "/v1/videos",
    tag = "videos",
    security(("bearer" = [])),
    operation_id = "list_videos",
    summary = "List videos",
    description = "Insertion order, optionally one state. Follow `next_cursor` until it is `null`: every row is visited exactly once, even while rows are being added.",
    params(
        ("state" = Option<VideoState>, Query, description = "Only videos in this state."),
        ("limit" = Option<u32>, Query, description = "Page size, 1–1000 (default 100).", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page; leave out for the first."),
    ),
    responses(
        (status = 200, description = "A page in insertion order; follow `next_cursor` until it is `null` to visit every row once.", body = VideoPage),
        (status = 400, description = "Codes: `invalid_query` (unknown parameter), `invalid_state`, `invalid_limit`, `invalid_cursor`.", body = ErrorBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
        (status = 503, description = "Codes: `storage_unavailable`.", body = ErrorBody),
    )
)]
#[instrument(skip_all, level = "debug")]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<VideoPage>, ApiError> {
    let Query(query) =
        query.map_err(|err| ApiError::bad_request("invalid_query", err.body_text()))?;
    let filter = query
        .state
        .as_deref()
        .map(str::parse::<VideoState>)
        .transpose()
        .map_err(|err| ApiError::bad_request("invalid_state", err.to_string()))?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let after = match query.cursor.as_deref() {
        None | Some("") => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|cursor| *cursor >= 0)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor must be a next_cursor value")
            })?,
    };
    let rows = state.store.list_videos(filter, after, limit).await?;
    let next_cursor = next_page(&rows, limit, |row| row.id.to_string());
    let videos: Vec<VideoResource> = rows.into_iter().map(VideoResource::summary).collect();
    Ok(Json(VideoPage {
        videos,
        next_cursor,
    }))
}

fn first_poll_at(state: &ApiState) -> Millis {
    state
        .policy
        .first_poll_at(Millis::now(), fastrand::f64() * 2.0 - 1.0)
}

/// The cursor of the page after `rows`, made from its last row by
/// `cursor`: a full page (`limit` rows) may have more after it, a short
/// page is the last. The API's list and the console's lists page alike.
pub(crate) fn next_page<T, C>(rows: &[T], limit: u32, cursor: impl FnOnce(&T) -> C) -> Option<C> {
    rows.last()
        .filter(|_| rows.len() == limit as usize)
        .map(cursor)
}
