//! The video resource as the API shows it (README, "HTTP API"): stored records
//! rendered with RFC 3339 timestamps and metadata as a JSON object.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::{Millis, VideoState};
use crate::store::{DeliveryRecord, NewVideo, TransitionRecord, VideoDetails, VideoRecord};

/// A tracked video; `transitions` and `deliveries` are present on the
/// single-video resource and omitted in lists.
///
/// Every field but those two is always present (`null` when unknown), so
/// the description marks them required.
#[derive(Debug, Serialize, ToSchema)]
pub struct VideoResource {
    /// The JoggAI video id (1–128 characters of `[A-Za-z0-9_-]`).
    video_id: String,
    state: VideoState,
    /// JoggAI's last reported status (`pending`, `processing`, …).
    #[schema(required = true)]
    upstream_status: Option<String>,
    /// The finished video, once JoggAI reported it.
    #[schema(required = true)]
    video_url: Option<String>,
    /// The finished video's cover image.
    #[schema(required = true)]
    cover_url: Option<String>,
    /// When JoggAI says the video was created (RFC 3339).
    #[schema(required = true, format = DateTime)]
    created_at: Option<String>,
    /// Length of the finished video in seconds.
    #[schema(required = true)]
    duration: Option<f64>,
    /// JoggAI's explanation of a failed render.
    #[schema(required = true)]
    error: Option<UpstreamError>,
    /// The video's own callback URL, besides `callbacks.urls`.
    #[schema(required = true)]
    callback_url: Option<String>,
    /// The object sent at enqueue, returned in the callback.
    #[schema(required = true, value_type = Option<Object>)]
    metadata: Option<Value>,
    /// When the relay first stored the video (RFC 3339).
    #[schema(format = DateTime)]
    enqueued_at: String,
    /// The last change of the record (RFC 3339).
    #[schema(format = DateTime)]
    updated_at: String,
    /// When the next poll is due; `null` once terminal.
    #[schema(required = true, format = DateTime)]
    next_poll_at: Option<String>,
    /// Polls made so far.
    polls: i64,
    /// Why the relay stopped tracking, when it gave up (`deadline`,
    /// `not_found`, `invalid_id`).
    #[schema(required = true)]
    reason: Option<String>,
    /// The id of the callback event, once terminal.
    #[schema(required = true)]
    event_id: Option<String>,
    /// Single-video form only: every recorded change, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    transitions: Option<Vec<TransitionResource>>,
    /// Single-video form only: the callback deliveries of its event.
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryResource>>,
}

/// Upstream's explanation of a failed render.
#[derive(Debug, Serialize, ToSchema)]
struct UpstreamError {
    /// JoggAI's error code.
    #[schema(required = true)]
    code: Option<String>,
    /// JoggAI's error message.
    #[schema(required = true)]
    message: Option<String>,
}

/// One transition: `kind` says whether the upstream status or the relay
/// state changed.
#[derive(Debug, Serialize, ToSchema)]
struct TransitionResource {
    /// `status` (JoggAI's status changed) or `state` (the relay's).
    #[schema(examples("status", "state"))]
    kind: String,
    /// The value before; `null` for the first one.
    #[schema(required = true)]
    from: Option<String>,
    /// The value after.
    to: String,
    /// When it was recorded (RFC 3339).
    #[schema(format = DateTime)]
    at: String,
}

/// One callback delivery.
#[derive(Debug, Serialize, ToSchema)]
struct DeliveryResource {
    /// The target.
    url: String,
    /// The event delivered (the same for every target and redelivery).
    event_id: String,
    /// `pending`, `delivered` or `dead`.
    #[schema(examples("pending", "delivered", "dead"))]
    state: String,
    /// Attempts made so far.
    attempts: i64,
    /// HTTP status of the last attempt, if it got one.
    #[schema(required = true)]
    last_status: Option<i64>,
    /// Why the last attempt failed, if it did.
    #[schema(required = true)]
    last_error: Option<String>,
    /// Why the delivery is dead, if it is.
    #[schema(required = true)]
    reason: Option<String>,
    /// When the next attempt is due, while pending (RFC 3339).
    #[schema(required = true, format = DateTime)]
    next_attempt_at: Option<String>,
}

fn rfc3339(millis: i64) -> String {
    Millis(millis).to_rfc3339()
}

impl VideoResource {
    /// The list form: the video without its logs.
    pub fn summary(video: VideoRecord) -> Self {
        let error = (video.error_code.is_some() || video.error_message.is_some()).then_some(
            UpstreamError {
                code: video.error_code,
                message: video.error_message,
            },
        );
        Self {
            video_id: video.video_id,
            state: video.state,
            upstream_status: video.upstream_status,
            video_url: video.video_url,
            cover_url: video.cover_url,
            created_at: video
                .created_at
                .map(|secs| rfc3339(secs.saturating_mul(1000))),
            duration: video.duration,
            error,
            callback_url: video.callback_url,
            // Stored metadata was validated as a JSON object at enqueue.
            metadata: video
                .metadata
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
            enqueued_at: rfc3339(video.enqueued_at),
            updated_at: rfc3339(video.updated_at),
            next_poll_at: video.next_poll_at.map(rfc3339),
            polls: video.polls,
            reason: video.reason,
            event_id: video.event_id,
            transitions: None,
            deliveries: None,
        }
    }

    /// The full form of a video an enqueue just stored `at`, as the
    /// schema's defaults make its row: the answer to a single enqueue is
    /// built from this instead of reading the row back (a test compares the
    /// two).
    pub fn accepted(video: &NewVideo, at: Millis) -> Self {
        let row = VideoRecord {
            // Not part of the resource.
            id: 0,
            video_id: video.video_id.as_str().to_owned(),
            state: VideoState::Active,
            upstream_status: None,
            video_url: None,
            cover_url: None,
            created_at: None,
            duration: None,
            error_code: None,
            error_message: None,
            callback_url: video.callback_url.clone(),
            metadata: video.metadata.clone(),
            enqueued_at: at.0,
            updated_at: at.0,
            next_poll_at: Some(video.first_poll_at.0),
            polls: 0,
            reason: None,
            event_id: None,
        };
        let mut resource = Self::summary(row);
        resource.transitions = Some(Vec::new());
        resource.deliveries = Some(Vec::new());
        resource
    }

    /// The full single-video form.
    pub fn detailed(details: VideoDetails) -> Self {
        let mut resource = Self::summary(details.video);
        resource.transitions = Some(details.transitions.into_iter().map(transition).collect());
        resource.deliveries = Some(details.deliveries.into_iter().map(delivery).collect());
        resource
    }
}

fn transition(record: TransitionRecord) -> TransitionResource {
    TransitionResource {
        kind: record.kind,
        from: record.from_value,
        to: record.to_value,
        at: rfc3339(record.at),
    }
}

fn delivery(record: DeliveryRecord) -> DeliveryResource {
    DeliveryResource {
        url: record.url,
        event_id: record.event_id,
        state: record.state,
        attempts: record.attempts,
        last_status: record.last_status,
        last_error: record.last_error,
        reason: record.reason,
        next_attempt_at: record.next_attempt_at.map(rfc3339),
    }
}
