//! What one callback attempt reads and decides: the claimed delivery with
//! the event it carries, the attempt's record and what follows it
//! (`delivery::schedule`), or the hand-back of an unattempted claim.

use super::{Lease, Millis, StoredId, VideoState};

/// A delivery claimed for an attempt, with the event it carries.
///
/// The event fields come from the video row, which never changes once
/// terminal, so every attempt sends the same body.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    /// Delivery rowid.
    pub id: i64,
    /// Target URL.
    pub url: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The claim's lease.
    pub lease: Lease,
    /// The event id.
    pub event_id: String,
    /// JoggAI's video id, as stored (the event names a video abandoned for
    /// an `invalid_id` as it was stored).
    pub video_id: StoredId,
    /// Terminal state.
    pub state: VideoState,
    /// Rendered video URL.
    pub video_url: Option<String>,
    /// Cover image URL.
    pub cover_url: Option<String>,
    /// Upstream creation time, unix seconds.
    pub created_at: Option<i64>,
    /// Length in seconds.
    pub duration: Option<f64>,
    /// Upstream error code.
    pub error_code: Option<String>,
    /// Upstream error message.
    pub error_message: Option<String>,
    /// Caller's metadata (a JSON object, serialized).
    pub metadata: Option<String>,
    /// Why the relay gave up, for abandoned videos.
    pub reason: Option<String>,
    /// When the terminal state was reached.
    pub terminal_at: Option<Millis>,
    /// When the push arrived whose confirming poll ended the video, while
    /// this delivery has never succeeded (so a redelivery is not counted
    /// again): the start of the push-to-callback delay.
    pub pushed_at: Option<Millis>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryNext {
    /// The receiver has it.
    Delivered,
    /// Try again at this time.
    Retry(Millis),
    /// Give up, for this reason (`gone`, `exhausted`, `forbidden_target`).
    Dead(String),
}

/// One attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Delivery rowid.
    pub delivery_id: i64,
    /// The claim's lease; the attempt is recorded only while it holds.
    pub lease: Lease,
    /// When the attempt started.
    pub at: Millis,
    /// HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Error, when the attempt failed.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: i64,
    /// What happens next.
    pub next: DeliveryNext,
}

/// Hands a claimed delivery back without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRelease {
    /// Delivery rowid.
    pub delivery_id: i64,
    /// The claim's lease; the hand-back applies only while it holds.
    pub lease: Lease,
    /// When it is due again.
    pub next_attempt_at: Millis,
}
