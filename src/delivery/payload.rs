//! The callback body (README, "Callbacks"), mirroring JoggAI's own webhook so that
//! receivers can consume either.

use serde::Serialize;
use serde_json::Value;

use crate::domain::VideoState;
use crate::domain::delivery::ClaimedDelivery;

/// `event` for a completed video.
pub const EVENT_SUCCESS: &str = "generated_avatar_video_success";
/// `event` for a failed video.
pub const EVENT_FAILED: &str = "generated_avatar_video_failed";
/// `event` for a video the relay gave up on.
pub const EVENT_ABANDONED: &str = "relay_video_abandoned";

/// The whole body.
#[derive(Debug, Serialize)]
struct Event<'a> {
    event_id: &'a str,
    event: &'static str,
    /// When the video reached its terminal state, unix seconds; the same on
    /// every attempt, so the body never changes.
    timestamp: i64,
    data: Data<'a>,
}

/// `data`.
#[derive(Debug, Serialize)]
struct Data<'a> {
    video_id: &'a str,
    status: &'static str,
    video_url: Option<&'a str>,
    cover_url: Option<&'a str>,
    created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    metadata: Value,
}

#[derive(Debug, Serialize)]
struct ErrorData<'a> {
    code: Option<&'a str>,
    message: Option<&'a str>,
}

/// The `event` name of a terminal state (`None` for states without one).
pub fn event_name(state: VideoState) -> Option<&'static str> {
    match state {
        VideoState::Completed => Some(EVENT_SUCCESS),
        VideoState::Failed => Some(EVENT_FAILED),
        VideoState::Abandoned => Some(EVENT_ABANDONED),
        VideoState::Active | VideoState::Cancelled => None,
    }
}

/// Serializes the event a delivery carries. Deterministic: the same row
/// always gives the same bytes.
pub fn event_body(delivery: &ClaimedDelivery) -> Vec<u8> {
    let error = (delivery.state == VideoState::Failed
        && (delivery.error_code.is_some() || delivery.error_message.is_some()))
    .then_some(ErrorData {
        code: delivery.error_code.as_deref(),
        message: delivery.error_message.as_deref(),
    });
    let event = Event {
        event_id: &delivery.event_id,
        event: event_name(delivery.state).unwrap_or(EVENT_ABANDONED),
        timestamp: delivery.terminal_at.map_or(0, |at| at.0).div_euclid(1000),
        data: Data {
            video_id: delivery.video_id.as_str(),
            status: delivery.state.as_str(),
            video_url: delivery.video_url.as_deref(),
            cover_url: delivery.cover_url.as_deref(),
            created_at: delivery.created_at,
            duration: delivery.duration,
            error,
            reason: (delivery.state == VideoState::Abandoned)
                .then_some(delivery.reason.as_deref())
                .flatten(),
            metadata: delivery
                .metadata
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or_else(|| Value::Object(Default::default())),
        },
    };
    serde_json::to_vec(&event).expect("an event always serializes")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{Lease, Millis, StoredId, VideoId};

    fn delivery(state: VideoState) -> ClaimedDelivery {
        ClaimedDelivery {
            id: 1,
            url: "https://x.example/cb".into(),
            attempts: 0,
            lease: Lease { until: Millis(0) },
            event_id: "evt_abc".into(),
            video_id: StoredId::Valid(VideoId::parse("v1").unwrap()),
            state,
            video_url: Some("https://cdn/v1.mp4".into()),
            cover_url: Some("https://cdn/v1.jpg".into()),
            created_at: Some(1_640_995_200),
            duration: Some(12.5),
            error_code: Some("render_failed".into()),
            error_message: Some("boom".into()),
            metadata: Some(r#"{"order":42}"#.into()),
            reason: Some("deadline".into()),
            terminal_at: Some(Millis(1_732_806_631_999)),
            pushed_at: None,
        }
    }

    fn body(state: VideoState) -> Value {
        serde_json::from_slice(&event_body(&delivery(state))).unwrap()
    }

    #[test]
    fn completed_event_matches_the_contract() {
        assert_eq!(
            body(VideoState::Completed),
            json!({"event_id": "evt_abc", "event": "generated_avatar_video_success",
                   "timestamp": 1_732_806_631,
                   "data": {"video_id": "v1", "status": "completed",
                            "video_url": "https://cdn/v1.mp4", "cover_url": "https://cdn/v1.jpg",
                            "created_at": 1_640_995_200, "duration": 12.5,
                            "metadata": {"order": 42}}})
        );
    }

    #[test]
    fn failed_carries_the_error_and_abandoned_the_reason() {
        let failed = body(VideoState::Failed);
        assert_eq!(failed["event"], EVENT_FAILED);
        assert_eq!(
            failed["data"]["error"],
            json!({"code": "render_failed", "message": "boom"})
        );
        assert!(failed["data"].get("reason").is_none());
        let abandoned = body(VideoState::Abandoned);
        assert_eq!(abandoned["event"], EVENT_ABANDONED);
        assert_eq!(abandoned["data"]["status"], "abandoned");
        assert_eq!(abandoned["data"]["reason"], "deadline");
        assert!(abandoned["data"].get("error").is_none());
    }

    #[test]
    fn a_failure_with_only_a_code_or_only_a_message_still_carries_the_error() {
        let only_message = ClaimedDelivery {
            error_code: None,
            ..delivery(VideoState::Failed)
        };
        let body: Value = serde_json::from_slice(&event_body(&only_message)).unwrap();
        assert_eq!(
            body["data"]["error"],
            json!({"code": null, "message": "boom"})
        );
        let only_code = ClaimedDelivery {
            error_message: None,
            ..delivery(VideoState::Failed)
        };
        let body: Value = serde_json::from_slice(&event_body(&only_code)).unwrap();
        assert_eq!(
            body["data"]["error"],
            json!({"code": "render_failed", "message": null})
        );
        let neither = ClaimedDelivery {
            error_code: None,
            error_message: None,
            ..delivery(VideoState::Failed)
        };
        let body: Value = serde_json::from_slice(&event_body(&neither)).unwrap();
        assert!(body["data"].get("error").is_none(), "{body}");
    }

    #[test]
    fn a_stored_id_that_does_not_validate_is_named_as_stored() {
        let odd = ClaimedDelivery {
            video_id: StoredId::Invalid("a b".into()),
            ..delivery(VideoState::Abandoned)
        };
        let body: Value = serde_json::from_slice(&event_body(&odd)).unwrap();
        assert_eq!(body["data"]["video_id"], "a b");
    }

    // That every attempt sends the same bytes is tested on the bytes
    // actually sent: tests/it/delivery.rs,
    // `two_attempts_send_the_same_bytes_and_the_same_ids`.
}
