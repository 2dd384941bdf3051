//! The rows the store reads and writes, and the outcomes of its write
//! operations.

use crate::domain::{Millis, VideoId, VideoState};

/// The columns of [`VideoRecord`], shared by every query that reads one.
macro_rules! video_columns {
    () => {
        "id, video_id, state, upstream_status, video_url, cover_url, created_at, duration, \
         error_code, error_message, callback_url, metadata, enqueued_at, updated_at, \
         next_poll_at, polls, reason, event_id"
    };
}

/// One video by its JoggAI id.
pub(crate) const SELECT_VIDEO_BY_ID: &str = concat!(
    "SELECT ",
    video_columns!(),
    " FROM videos WHERE video_id = ?"
);
/// A page of videos after a rowid, any state.
pub(crate) const SELECT_VIDEOS_PAGE: &str = concat!(
    "SELECT ",
    video_columns!(),
    " FROM videos WHERE id > ? ORDER BY id LIMIT ?"
);
/// A page of videos after a rowid, one state (served by `videos_state_order`).
pub(crate) const SELECT_VIDEOS_PAGE_BY_STATE: &str = concat!(
    "SELECT ",
    video_columns!(),
    " FROM videos WHERE state = ? AND id > ? ORDER BY id LIMIT ?"
);

/// Videos newest first (row id descending) before a rowid cursor, of one
/// state when `?1` is not NULL, whose id starts with `?2` (compared as
/// text, so `_` and `%` are no wildcards): the console's list.
pub(crate) const SELECT_VIDEOS_NEWEST_FIRST: &str = concat!(
    "SELECT ",
    video_columns!(),
    " FROM videos WHERE (?1 IS NULL OR state = ?1) \
     AND substr(video_id, 1, length(?2)) = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4"
);

/// Every delivery attempt of one video (by rowid), in the order made.
pub(crate) const SELECT_DELIVERY_ATTEMPTS: &str = "SELECT d.url, a.at, a.status, a.error \
     FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
     WHERE d.video_rowid = ? ORDER BY a.id";

/// One attempt to deliver a callback, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryAttemptRecord {
    /// The delivery's target URL.
    pub url: String,
    /// When the attempt was made.
    pub at: i64,
    /// The HTTP status, when the receiver answered.
    pub status: Option<i64>,
    /// The transport error or refusal, when it did not.
    pub error: Option<String>,
}

/// A tracked video as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct VideoRecord {
    /// Rowid: insertion order, the pagination cursor.
    pub id: i64,
    /// JoggAI's id.
    pub video_id: String,
    /// Where the video stands.
    #[sqlx(try_from = "String")]
    pub state: VideoState,
    /// Last status string upstream answered, as-is.
    pub upstream_status: Option<String>,
    /// Rendered video, once upstream has it.
    pub video_url: Option<String>,
    /// Cover image, once upstream has it.
    pub cover_url: Option<String>,
    /// Upstream's creation time, unix seconds.
    pub created_at: Option<i64>,
    /// Video length in seconds, when upstream tells.
    pub duration: Option<f64>,
    /// Upstream's error code for a failed render.
    pub error_code: Option<String>,
    /// Upstream's error message for a failed render.
    pub error_message: Option<String>,
    /// Per-video callback target.
    pub callback_url: Option<String>,
    /// Caller's JSON object, serialized.
    pub metadata: Option<String>,
    /// When the relay accepted the video.
    pub enqueued_at: i64,
    /// Last change of this row.
    pub updated_at: i64,
    /// Next poll, while active.
    pub next_poll_at: Option<i64>,
    /// Polls made so far.
    pub polls: i64,
    /// Why the relay stopped tracking, when it gave up.
    pub reason: Option<String>,
    /// The terminal event's id, once there is one.
    pub event_id: Option<String>,
}

/// One entry of a video's transition log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TransitionRecord {
    /// `status` (upstream status) or `state` (relay state).
    pub kind: String,
    /// Previous value; `None` for the first upstream answer.
    pub from_value: Option<String>,
    /// New value.
    pub to_value: String,
    /// When it happened.
    pub at: i64,
}

/// One of the newest transitions of any video, with what the console's
/// overview shows beside it (README, "Console").
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecentTransition {
    /// The video's JoggAI id.
    pub video_id: String,
    /// `status` (upstream status) or `state` (relay state).
    pub kind: String,
    /// Previous value; `None` for the first upstream answer.
    pub from_value: Option<String>,
    /// New value (an upstream status as JoggAI wrote it).
    pub to_value: String,
    /// When it happened.
    pub at: i64,
    /// The video's error code from upstream, as it is now.
    pub error_code: Option<String>,
    /// The video's error message from upstream, as it is now.
    pub error_message: Option<String>,
    /// Why the relay stopped tracking the video, if it did.
    pub reason: Option<String>,
}

/// The newest transitions of any video, newest first: a walk back along
/// the transitions' primary key, each joined to its video by rowid.
pub(crate) const SELECT_RECENT_TRANSITIONS: &str = "SELECT v.video_id, t.kind, t.from_value, \
     t.to_value, t.at, v.error_code, v.error_message, v.reason \
     FROM transitions t JOIN videos v ON v.id = t.video_rowid \
     ORDER BY t.id DESC LIMIT ?";

/// Milliseconds in one hour: the width of [`HourlyOutcomes`]' buckets.
pub const HOUR_MILLIS: i64 = 3_600_000;

/// How many videos completed and failed in one hour (UTC), as counted from
/// their terminal `state` transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct HourlyOutcomes {
    /// The hour's start (milliseconds since the Unix epoch, a multiple of
    /// [`HOUR_MILLIS`]).
    pub hour: i64,
    /// Transitions to `completed` in it.
    pub completed: i64,
    /// Transitions to `failed` in it.
    pub failed: i64,
}

/// Terminal transitions per hour since `?` (inclusive), oldest hour first,
/// hours without one left out. Grouped by the database, over the partial
/// index `transitions_terminal` (whose predicate the `WHERE` repeats), so
/// the overview's cost does not grow with the transitions kept. `at` is
/// never negative, so integer division floors.
pub(crate) const SELECT_HOURLY_OUTCOMES: &str = "SELECT (at / 3600000) * 3600000 AS hour, \
     COUNT(*) FILTER (WHERE to_value = 'completed') AS completed, \
     COUNT(*) FILTER (WHERE to_value = 'failed') AS failed \
     FROM transitions INDEXED BY transitions_terminal \
     WHERE kind = 'state' AND to_value IN ('completed', 'failed') AND at >= ? \
     GROUP BY hour ORDER BY hour";

/// Callback deliveries per state, over every video.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Waiting for their next attempt (the backlog).
    pub pending: u64,
    /// Accepted by their target.
    pub delivered: u64,
    /// Given up on (README, "Delivery and retries").
    pub dead: u64,
}

impl DeliveryCounts {
    /// The counts from `(state, count)` rows; unknown states are skipped.
    pub(crate) fn from_rows(rows: Vec<(String, i64)>) -> Self {
        let mut counts = Self::default();
        for (state, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "pending" => counts.pending = n,
                "delivered" => counts.delivered = n,
                "dead" => counts.dead = n,
                _ => {}
            }
        }
        counts
    }
}

/// Deliveries per state: one pass over the outbox (there is no index by
/// state beyond the pending ones'), read when the console's overview is.
pub(crate) const SELECT_DELIVERY_COUNTS: &str =
    "SELECT state, COUNT(*) FROM deliveries GROUP BY state";

/// A dead callback delivery with its video's id, as the console's dead
/// deliveries page lists it (README, "Console").
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadDelivery {
    /// The delivery's row id: with `died_at`, the page's cursor.
    pub id: i64,
    /// The video's JoggAI id.
    pub video_id: String,
    /// Target URL.
    pub url: String,
    /// The event that was not delivered.
    pub event_id: String,
    /// Attempts made.
    pub attempts: i64,
    /// HTTP status of the last attempt, when it got one.
    pub last_status: Option<i64>,
    /// Error of the last attempt, when it failed without one.
    pub last_error: Option<String>,
    /// Why it is dead (`gone`, `exhausted`, `forbidden_target`).
    pub reason: Option<String>,
    /// When it died: the row's last change, which for a dead delivery is
    /// the attempt that killed it (nothing else writes a dead row).
    pub died_at: i64,
}

/// Dead deliveries newest death first, before a (`died_at`, id) cursor.
/// The `WHERE` repeats the partial index `deliveries_dead`'s predicate and
/// its `ORDER BY` the index's columns, so a page is a short backward walk
/// of the dead rows only, however large the outbox.
pub(crate) const SELECT_DEAD_DELIVERIES: &str = "SELECT d.id, v.video_id, d.url, d.event_id, \
     d.attempts, d.last_status, d.last_error, d.reason, d.updated_at AS died_at \
     FROM deliveries d INDEXED BY deliveries_dead JOIN videos v ON v.id = d.video_rowid \
     WHERE d.state = 'dead' AND (d.updated_at, d.id) < (?1, ?2) \
     ORDER BY d.updated_at DESC, d.id DESC LIMIT ?3";

/// What the store keeps of a video's polling beyond [`VideoRecord`]'s
/// `polls`, `upstream_status` and `next_poll_at`: polls are counted, not
/// logged one by one (README, "Console"), so this is all there is.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PollingRecord {
    /// When the last poll was recorded (`None` before one).
    pub polled_at: Option<i64>,
    /// Answers in a row without a change of status (the interval grows
    /// with it).
    pub unchanged_polls: i64,
    /// Failed polls in a row (transport or server errors, not found yet):
    /// 0 when the last poll got an answer.
    pub error_streak: i64,
    /// While a poller holds the video: when its lease ends.
    pub lease_until: Option<i64>,
    /// While active: when a push not yet answered by a poll arrived; once
    /// terminal: the push whose confirming poll ended the video.
    pub hinted_at: Option<i64>,
}

/// One video's [`PollingRecord`], by row id.
pub(crate) const SELECT_POLLING: &str = "SELECT polled_at, unchanged_polls, error_streak, \
     lease_until, hinted_at FROM videos WHERE id = ?";

/// One callback delivery (outbox row) as shown on the video resource.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRecord {
    /// Target URL.
    pub url: String,
    /// The event being delivered.
    pub event_id: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// HTTP status of the last attempt, when it got one.
    pub last_status: Option<i64>,
    /// Error of the last attempt, when it failed.
    pub last_error: Option<String>,
    /// Why it is dead, when it is.
    pub reason: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<i64>,
}

/// A video with its logs, as `GET /v1/videos/{id}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoDetails {
    /// The video row.
    pub video: VideoRecord,
    /// Its transitions, oldest first.
    pub transitions: Vec<TransitionRecord>,
    /// Its callback deliveries.
    pub deliveries: Vec<DeliveryRecord>,
}

/// A validated enqueue request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVideo {
    /// The id to track.
    pub video_id: VideoId,
    /// Per-video callback target, already validated.
    pub callback_url: Option<String>,
    /// Caller's metadata, a serialized JSON object.
    pub metadata: Option<String>,
    /// When the first poll is due.
    pub first_poll_at: Millis,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// The video is new and now tracked, accepted `at` (its `enqueued_at`).
    Created {
        /// Its `enqueued_at`.
        at: Millis,
    },
    /// The video was already tracked with the same `callback_url` and
    /// `metadata`: a repeat of the same request; nothing changed.
    Existing,
    /// The video was already tracked with a different `callback_url` or
    /// `metadata`: a different request for the same id, refused; nothing
    /// changed.
    Conflict(ConflictingFields),
}

/// Which fields of a refused enqueue differ from the tracked video's.
///
/// A field given on one side and absent on the other differs too: leaving
/// out a `callback_url` the video was enqueued with asks for a video without
/// one, which is not what is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictingFields {
    /// The `callback_url` differs.
    pub callback_url: bool,
    /// The `metadata` differs (as JSON values: key order and spacing do not
    /// count).
    pub metadata: bool,
}

impl ConflictingFields {
    /// The differing fields' names, for messages: `callback_url`,
    /// `metadata` or `callback_url and metadata`.
    pub fn names(&self) -> &'static str {
        match (self.callback_url, self.metadata) {
            (true, true) => "callback_url and metadata",
            (true, false) => "callback_url",
            (false, _) => "metadata",
        }
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The video was active and is now cancelled.
    Cancelled,
    /// The video was already cancelled (DELETE is idempotent).
    AlreadyCancelled,
    /// The video had already reached another terminal state, which never changes.
    Terminal(VideoState),
    /// No such video.
    NotFound,
}

impl TryFrom<String> for VideoState {
    type Error = crate::domain::UnknownState;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

/// A verified push about one video, as the writer applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushHint {
    /// The video the push is about.
    pub video_id: VideoId,
    /// When it arrived.
    pub at: Millis,
    /// The per-video `polling.min_interval`: the confirming poll is due at
    /// `at`, but never sooner than this after the video's last poll.
    pub min_interval: std::time::Duration,
    /// Start tracking the video if it is not tracked (`jogg.adopt_untracked`).
    pub adopt: bool,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintOutcome {
    /// The video is active; its confirming poll is due at this time.
    Hinted {
        /// When the confirming poll is due.
        due_at: Millis,
    },
    /// The video was not tracked and now is, due for a poll at once.
    Adopted,
    /// The video is tracked but no longer active; nothing changed.
    NotActive(VideoState),
    /// The video is not tracked and adoption is off; nothing changed.
    Untracked,
}

/// What a redelivery request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeliverOutcome {
    /// The event is queued again to this many targets.
    Queued {
        /// The event id being re-sent.
        event_id: String,
        /// Targets queued.
        targets: usize,
    },
    /// The video has no event (it is active or cancelled).
    NoEvent(VideoState),
    /// No such video.
    NotFound,
}

/// The columns of a finished render; the `WHERE` matches the partial index
/// `videos_finished` exactly, so SQLite walks it instead of the table.
macro_rules! finished_renders {
    ($rest:literal) => {
        concat!(
            "SELECT id, video_id, state, enqueued_at, created_at, unfinished_seen_at, \
                    rendering_seen_at, terminal_at \
             FROM videos INDEXED BY videos_finished WHERE state IN ('completed', 'failed') ",
            $rest
        )
    };
}

/// Finished renders after a (`terminal_at`, rowid) cursor, oldest first.
pub(crate) const SELECT_FINISHED_RENDERS_AFTER: &str =
    finished_renders!("AND (terminal_at, id) > (?1, ?2) ORDER BY terminal_at, id LIMIT ?3 + 0");

/// The newest videos (by rowid), newest first, with what the learned
/// schedule replays of them.
pub(crate) const SELECT_NEWEST_RENDERS: &str = "SELECT id, state, enqueued_at, created_at, \
     unfinished_seen_at, rendering_seen_at, terminal_at FROM videos ORDER BY id DESC LIMIT ?1 + 0";

/// A tracked video as the learned schedule replays it at start.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrackedRender {
    /// Rowid: the order the relay took the videos in.
    pub id: i64,
    /// Its state.
    pub state: String,
    /// When the relay accepted it.
    pub enqueued_at: i64,
    /// JoggAI's `created_at` (Unix seconds), if it gave one.
    pub created_at: Option<i64>,
    /// The last poll that saw it unfinished.
    pub unfinished_seen_at: Option<i64>,
    /// The first poll that saw it rendering.
    pub rendering_seen_at: Option<i64>,
    /// When it ended, if it has.
    pub terminal_at: Option<i64>,
}

/// A video JoggAI reported completed or failed, with the times the relay
/// learns its render time from.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FinishedRender {
    /// Rowid (the export's cursor, with `terminal_at`).
    pub id: i64,
    /// JoggAI's id.
    pub video_id: String,
    /// `completed` or `failed`.
    pub state: String,
    /// When the relay accepted it.
    pub enqueued_at: i64,
    /// JoggAI's `created_at` (Unix seconds), if it gave one.
    pub created_at: Option<i64>,
    /// The last poll that saw it unfinished.
    pub unfinished_seen_at: Option<i64>,
    /// The first poll that saw it rendering.
    pub rendering_seen_at: Option<i64>,
    /// The poll that saw it finished.
    pub terminal_at: i64,
}

/// Whether two stored `metadata` texts are the same JSON value: key order
/// and spacing do not count (both sides are serialized by `serde_json`,
/// but rows written by another version or by hand need not be).
///
/// Absent and present differ; so would unparsable text from any other
/// text, which the API never stores. Compared here rather than in SQL, so
/// that both engines agree on every edge (PostgreSQL's `jsonb` would call
/// `1` and `1.0` equal) and an unparsable stored text is a difference, not
/// an error failing the whole batch.
pub(crate) fn same_metadata(stored: Option<&str>, requested: Option<&str>) -> bool {
    match (stored, requested) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => {
            match (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Where a redelivery sends a video's event: the configured URLs, then the
/// video's own `callback_url` unless it is one of them. (A URL configured
/// twice stays twice: it counts as configured.)
pub(crate) fn redelivery_targets<'a>(
    configured: &'a [String],
    own: Option<&'a str>,
) -> Vec<&'a str> {
    let mut targets: Vec<&str> = configured.iter().map(String::as_str).collect();
    if let Some(own) = own
        && !targets.contains(&own)
    {
        targets.push(own);
    }
    targets
}
