//! `POST /webhooks/jogg`: JoggAI's own pushes (README, "JoggAI's pushes").
//!
//! A push is authenticated by its `X-Webhook-Signature` (HMAC-SHA256 of the
//! raw body, keyed with `jogg.webhook_secret`), checked in constant time
//! before anything in the body is read. A verified push about a tracked,
//! active video is only a *hint*: the video becomes due for a confirming
//! poll at once (ahead of other due videos, within the budget and the
//! per-video `min_interval`), and that poll's answer decides through the
//! same code as every poll. So a forged, replayed or misrouted push can
//! never decide anything, a flood of valid ones cannot raise a video's poll
//! rate above one per `min_interval`, and the downstream event is the same
//! whether the completion was learned by push or by poll.
//!
//! Answers: `200` whenever the push was verified and understood, even when
//! it changes nothing (an unknown event, an untracked or finished video),
//! since JoggAI retries anything else; `401` for a missing or wrong
//! signature; `400` for a verified body that is not a push; `413` beyond
//! [`PUSH_BODY_LIMIT`]; `503` while the database cannot take the hint, so
//! JoggAI retries.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument};
use utoipa::ToSchema;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use crate::delivery::signing;
use crate::domain::{Millis, VideoId};
use crate::store::{HintOutcome, PushHint};

/// Largest push body accepted (JoggAI's are a few hundred bytes).
pub const PUSH_BODY_LIMIT: usize = 64 * 1024;

/// The header JoggAI signs its pushes with.
pub const SIGNATURE_HEADER: &str = "x-webhook-signature";

/// The events that say a render ended; any other is acknowledged and
/// ignored.
const FINISHED_EVENTS: [&str; 2] = [
    "generated_avatar_video_success",
    "generated_avatar_video_failed",
];

/// Whether `presented` (the header's value) is the HMAC-SHA256 of `body`
/// keyed with `secret`, written as 64 hex digits.
///
/// JoggAI writes lowercase hex; uppercase digits are accepted too, since
/// they name the same bytes and refusing them would gain nothing. Anything
/// else (another length, whitespace inside, a prefix such as `sha256=`) is
/// refused. The decoded bytes are compared in constant time, so the timing
/// does not reveal how much of a guess was right.
pub fn signature_is_valid(secret: &[u8], body: &[u8], presented: &[u8]) -> bool {
    decode_hex_32(presented).is_some_and(|presented| {
        signing::constant_time_eq(&presented, &signing::joggai_digest(secret, body))
    })
}

/// Exactly 64 hex digits as 32 bytes.
fn decode_hex_32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(bytes)
}

/// The answer to a verified push.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushReceipt {
    outcome: PushOutcome,
}

/// What a verified push did (also the `outcome` label of
/// `jogg_relay_pushes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    /// A tracked, active video: its confirming poll is due.
    Accepted,
    /// An untracked video, now tracked (`jogg.adopt_untracked`).
    Adopted,
    /// An untracked video, ignored.
    Untracked,
    /// A video no longer active, ignored.
    NotActive,
    /// An event other than the end of a render, ignored.
    UnknownEvent,
}

impl PushOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PushOutcome::Accepted => "accepted",
            PushOutcome::Adopted => "adopted",
            PushOutcome::Untracked => "untracked",
            PushOutcome::NotActive => "not_active",
            PushOutcome::UnknownEvent => "unknown_event",
        }
    }
}

/// The parts of a push the relay reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct Push {
    /// JoggAI's id of the push (logged; duplicates are harmless anyway).
    #[serde(default)]
    event_id: Option<serde_json::Value>,
    event: String,
    #[serde(default)]
    data: Option<PushData>,
}

/// `data` of a push.
#[derive(Debug, Deserialize)]
struct PushData {
    video_id: String,
}

/// `POST /webhooks/jogg` (see the module docs).
#[utoipa::path(
    post,
    path = "/webhooks/jogg",
    operation_id = "receive_push",
    summary = "Take a JoggAI push",
    description = "JoggAI's own webhook, verified by its signature and taken as a hint: a push about a tracked, active video makes it due for a confirming poll, whose answer decides. Needs `jogg.webhook_secret`; no bearer token.",
    tag = "pushes",
    params(
        ("X-Webhook-Signature" = String, Header, description = "HMAC-SHA256 of the raw body keyed with `jogg.webhook_secret`, as 64 hex digits (either case). It replaces the bearer token on this route.", pattern = "^[0-9a-fA-F]{64}$"),
    ),
    request_body(content = Object, content_type = "application/json", description = "JoggAI's push as it sent it (`event`, `data.video_id`; other fields are ignored); its bytes are what is signed. Body limit 64 KiB; the content type is not checked."),
    responses(
        (status = 200, description = "Verified and understood, even when it changes nothing.", body = PushReceipt),
        (status = 400, description = "Codes: `invalid_push` (a verified body that is not a push), `invalid_body`.", body = ErrorBody),
        (status = 401, description = "Codes: `bad_signature` (missing or wrong `X-Webhook-Signature`).", body = ErrorBody),
        (status = 404, description = "Codes: `pushes_disabled` (no `jogg.webhook_secret`).", body = ErrorBody),
        (status = 408, description = "Codes: `request_timeout` (the body did not arrive within `server.body_timeout`; the connection is closed).", body = ErrorBody),
        (status = 413, description = "Codes: `payload_too_large` (over 64 KiB).", body = ErrorBody),
        (status = 503, description = "Codes: `shutting_down`, `storage_unavailable` (JoggAI retries).", body = ErrorBody),
    )
)]
#[instrument(skip_all, name = "push")]
pub async fn receive(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle(&state, &headers, &body).await {
        Ok(outcome) => {
            state.metrics.push(outcome.as_str());
            (StatusCode::OK, Json(PushReceipt { outcome })).into_response()
        }
        Err((outcome, error)) => {
            if let Some(outcome) = outcome {
                state.metrics.push(outcome);
            }
            let mut response = error.into_response();
            // A push has no bearer scheme to offer.
            response.headers_mut().remove(header::WWW_AUTHENTICATE);
            response
        }
    }
}

/// Verifies, parses and applies one push; what it did, or the error to
/// answer with the metric label of the refusal (if it counts as one).
async fn handle(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PushOutcome, (Option<&'static str>, ApiError)> {
    let Some(secret) = &state.push_secret else {
        return Err((
            None,
            ApiError::new(
                StatusCode::NOT_FOUND,
                "pushes_disabled",
                "JoggAI pushes are not enabled on this relay (set jogg.webhook_secret)",
            ),
        ));
    };
    let presented = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !signature_is_valid(secret.expose_secret().as_bytes(), body, presented) {
        debug!(
            signed = headers.contains_key(SIGNATURE_HEADER),
            "push refused: missing or wrong signature"
        );
        return Err((
            Some("bad_signature"),
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "missing or wrong X-Webhook-Signature",
            ),
        ));
    }
    let malformed = |message: String| {
        (
            Some("malformed"),
            ApiError::bad_request("invalid_push", message),
        )
    };
    let push: Push = serde_json::from_slice(body)
        .map_err(|err| malformed(format!("the body is not a JoggAI push: {err}")))?;
    if !FINISHED_EVENTS.contains(&push.event.as_str()) {
        debug!(event = %push.event, "push ignored: not an event about a finished render");
        return Ok(PushOutcome::UnknownEvent);
    }
    let data = push
        .data
        .ok_or_else(|| malformed("the push has no data.video_id".to_owned()))?;
    let video_id =
        VideoId::parse(&data.video_id).map_err(|err| malformed(format!("data.video_id: {err}")))?;
    if state.shutdown.is_cancelled() {
        return Err((None, ApiError::shutting_down()));
    }
    let at = Millis::now();
    let outcome = state
        .writer
        .hint(PushHint {
            video_id: video_id.clone(),
            at,
            min_interval: state.policy.min_interval,
            adopt: state.adopt_untracked,
        })
        .await
        .map_err(|err| (None, ApiError::from(err)))?;
    let event_id = push.event_id.as_ref().map(ToString::to_string);
    match outcome {
        HintOutcome::Hinted { due_at } => {
            state.wakeups.new_videos.announce(due_at);
            info!(%video_id, event = %push.event, event_id, "push: confirming poll due");
            Ok(PushOutcome::Accepted)
        }
        HintOutcome::Adopted => {
            state.wakeups.new_videos.announce(at);
            info!(%video_id, event = %push.event, event_id, "push: untracked video adopted");
            Ok(PushOutcome::Adopted)
        }
        HintOutcome::NotActive(video_state) => {
            debug!(%video_id, state = %video_state, "push ignored: the video is no longer active");
            Ok(PushOutcome::NotActive)
        }
        HintOutcome::Untracked => {
            debug!(%video_id, "push ignored: the video is not tracked");
            Ok(PushOutcome::Untracked)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2: an independent, published vector.
    #[test]
    fn verifies_the_published_hmac_sha256_vector_in_either_case() {
        let key = b"Jefe";
        let data = b"what do ya want for nothing?";
        let mac = b"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(signature_is_valid(key, data, mac));
        assert!(signature_is_valid(
            key,
            data,
            mac.to_ascii_uppercase().as_slice()
        ));
        assert!(!signature_is_valid(b"Jefe2", data, mac), "another key");
        assert!(!signature_is_valid(
            key,
            b"what do ya want for nothing!",
            mac
        ));
        assert!(!signature_is_valid(key, data, &mac[..63]), "truncated");
        let mut flipped = mac.to_vec();
        flipped[63] = b'4';
        assert!(!signature_is_valid(key, data, &flipped), "last digit");
        for wrapped in [
            format!(" {}", std::str::from_utf8(mac).unwrap()),
            format!("sha256={}", std::str::from_utf8(mac).unwrap()),
            format!("{} ", std::str::from_utf8(&mac[..63]).unwrap()),
        ] {
            assert!(
                !signature_is_valid(key, data, wrapped.as_bytes()),
                "{wrapped:?}"
            );
        }
        assert!(!signature_is_valid(key, data, b""), "missing");
        assert!(!signature_is_valid(key, data, &[b'g'; 64]), "not hex");
    }
}
