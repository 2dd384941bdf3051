//! The video resource as the API shows it (README, "HTTP API"): stored records
//! rendered with RFC 3339 timestamps and metadata as a JSON object.

use serde::Serialize;
use serde_json::Value;

use crate::domain::{Millis, VideoState};
use crate::store::{DeliveryRecord, NewVideo, TransitionRecord, VideoDetails, VideoRecord};

/// A tracked video; `transitions` and `deliveries` are present on the
/// single-video resource and omitted in lists.
#[derive(Debug, Serialize)]
pub struct VideoResource {
    video_id: String,
    state: VideoState,
    upstream_status: Option<String>,
    video_url: Option<String>,
    cover_url: Option<String>,
    created_at: Option<String>,
    duration: Option<f64>,
    error: Option<UpstreamError>,
    callback_url: Option<String>,
    metadata: Option<Value>,
    enqueued_at: String,
    updated_at: String,
    next_poll_at: Option<String>,
    polls: i64,
    reason: Option<String>,
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transitions: Option<Vec<TransitionResource>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryResource>>,
}

/// Upstream's explanation of a failed render.
#[derive(Debug, Serialize)]
struct UpstreamError {
    code: Option<String>,
    message: Option<String>,
}

/// One transition: `kind` says whether the upstream status or the relay
/// state changed.
#[derive(Debug, Serialize)]
struct TransitionResource {
    kind: String,
    from: Option<String>,
    to: String,
    at: String,
}

/// One callback delivery.
#[derive(Debug, Serialize)]
struct DeliveryResource {
    url: String,
    event_id: String,
    state: String,
    attempts: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    reason: Option<String>,
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
