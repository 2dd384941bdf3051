//! What one poll round reads and decides: which due videos a claim takes
//! ([`DueVideo`], [`Ranker`]), the claimed video, and the update (or
//! hand-back) that `poller::decide` makes of one answer about it. The store
//! claims videos as [`ClaimedVideo`]s and applies [`PollUpdate`]s and
//! [`Release`]s; how, is its business.

use std::fmt;
use std::sync::Arc;

use super::{Lease, Millis, StoredId, VideoState};

/// A due video as the claim's ranking sees it (see [`Ranker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueVideo {
    /// Rowid.
    pub id: i64,
    /// When the relay accepted it.
    pub enqueued_at: Millis,
    /// JoggAI's `created_at` (Unix seconds), once an answer gave it.
    pub created_at: Option<i64>,
    /// The last poll that saw it unfinished.
    pub unfinished_seen_at: Option<Millis>,
    /// The first poll that saw it rendering.
    pub rendering_seen_at: Option<Millis>,
    /// When it became due.
    pub next_poll_at: Millis,
}

/// How many of the most overdue videos a ranked claim chooses from, per
/// video it takes: enough choice to matter, bounded work per claim.
pub const RANKED_WINDOW: u32 = 4;

/// Scores due videos at a time (higher is polled first), for when more are
/// due than one claim takes: the adaptive strategy ranks them by the chance
/// that they have finished. Pure and quick: it runs inside the claim's
/// write transaction.
#[derive(Clone)]
pub struct Ranker(pub Arc<RankFn>);

/// The function inside a [`Ranker`]: one score per due video, in order.
pub type RankFn = dyn Fn(&[DueVideo], Millis) -> Vec<f64> + Send + Sync;

impl fmt::Debug for Ranker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ranker")
    }
}

/// A video claimed for polling: what the poller needs to decide what the
/// answer means.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedVideo {
    /// Rowid.
    pub id: i64,
    /// JoggAI's id, as stored (a row whose id no longer validates is
    /// abandoned with reason `invalid_id`, never sent upstream).
    pub video_id: StoredId,
    /// Last status upstream answered, as-is.
    pub upstream_status: Option<String>,
    /// When the relay accepted it (deadline and not-found grace count from here).
    pub enqueued_at: Millis,
    /// Consecutive answers without a status change.
    pub unchanged_polls: i64,
    /// Consecutive failed polls.
    pub error_streak: i64,
    /// Per-video callback target.
    pub callback_url: Option<String>,
    /// The claim's lease.
    pub lease: Lease,
    /// JoggAI's `created_at` (Unix seconds), once an answer gave it.
    pub created_at: Option<i64>,
    /// Answers about the video so far.
    pub polls: i64,
    /// The last poll that saw it unfinished.
    pub unfinished_seen_at: Option<Millis>,
    /// The first poll that saw it rendering.
    pub rendering_seen_at: Option<Millis>,
    /// When this claim was made: a push that arrives later was not
    /// answered by this poll (its request may have left before the video
    /// finished), so it stays pending.
    pub claimed_at: Millis,
    /// The latest push not yet answered by a poll, if any (README,
    /// "JoggAI's pushes").
    pub hinted_at: Option<Millis>,
}

impl ClaimedVideo {
    /// Whether this poll answers a push: one arrived before the claim.
    pub fn answers_push(&self) -> bool {
        self.hinted_at.is_some_and(|at| at <= self.claimed_at)
    }
}

/// What a transition log entry records a change of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    /// The status string upstream answered.
    Status,
    /// The relay's [`VideoState`].
    State,
}

impl TransitionKind {
    /// The name stored in the transition log and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Status => "status",
            TransitionKind::State => "state",
        }
    }
}

impl fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transition to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransition {
    /// What changed.
    pub kind: TransitionKind,
    /// Previous value.
    pub from: Option<String>,
    /// New value.
    pub to: String,
}

/// Upstream fields learned from an answer; `None` keeps what is stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamFields {
    /// Rendered video URL.
    pub video_url: Option<String>,
    /// Cover image URL.
    pub cover_url: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: Option<i64>,
    /// Length in seconds.
    pub duration: Option<f64>,
    /// Error code of a failed render.
    pub error_code: Option<String>,
    /// Error message of a failed render.
    pub error_message: Option<String>,
}

/// A terminal state reached by a poll: written with its transition and one
/// outbox row per target, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalChange {
    /// `completed`, `failed` or `abandoned`.
    pub state: VideoState,
    /// Why the relay gave up, for `abandoned`.
    pub reason: Option<String>,
    /// The event's id, fixed from now on.
    pub event_id: String,
    /// Callback targets (configured URLs and the video's own), deduplicated.
    pub targets: Vec<String>,
}

/// Everything one poll changes about one video.
#[derive(Debug, Clone, PartialEq)]
pub struct PollUpdate {
    /// Rowid.
    pub video_rowid: i64,
    /// The claim's lease; the update applies only while it holds.
    pub lease: Lease,
    /// When the answer was seen.
    pub at: Millis,
    /// Whether this counts as a poll (an upstream answer about the video).
    pub counted: bool,
    /// The upstream status after this poll.
    pub upstream_status: Option<String>,
    /// New upstream fields.
    pub fields: UpstreamFields,
    /// New count of answers without a status change.
    pub unchanged_polls: i64,
    /// New count of consecutive failures.
    pub error_streak: i64,
    /// Next poll, `None` when terminal.
    pub next_poll_at: Option<Millis>,
    /// Set when this answer saw the video unfinished (kept otherwise).
    pub unfinished_seen_at: Option<Millis>,
    /// Set when this answer is the first to see it rendering (kept otherwise).
    pub rendering_seen_at: Option<Millis>,
    /// When the claim was made (a push after it stays pending).
    pub claimed_at: Millis,
    /// If a push arrived while this poll ran, the video's next poll comes
    /// no later than this (its last poll plus `min_interval`).
    pub repoll_after_push_at: Millis,
    /// Transitions to append, in order.
    pub transitions: Vec<NewTransition>,
    /// The terminal state, when reached.
    pub terminal: Option<TerminalChange>,
}

/// Hands a claimed video back without a result (the poll did not happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Rowid.
    pub video_rowid: i64,
    /// The claim's lease; the hand-back applies only while it holds.
    pub lease: Lease,
    /// When it is due again.
    pub next_poll_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_kinds_keep_their_stored_names() {
        assert_eq!(TransitionKind::Status.as_str(), "status");
        assert_eq!(TransitionKind::State.to_string(), "state");
    }

    #[test]
    fn a_poll_answers_a_push_only_if_the_push_came_before_the_claim() {
        let video = |hinted_at: Option<i64>| ClaimedVideo {
            id: 1,
            video_id: StoredId::Invalid(String::new()),
            upstream_status: None,
            enqueued_at: Millis(0),
            unchanged_polls: 0,
            error_streak: 0,
            callback_url: None,
            lease: Lease { until: Millis(200) },
            created_at: None,
            polls: 0,
            unfinished_seen_at: None,
            rendering_seen_at: None,
            claimed_at: Millis(100),
            hinted_at: hinted_at.map(Millis),
        };
        assert!(!video(None).answers_push());
        assert!(video(Some(99)).answers_push());
        assert!(video(Some(100)).answers_push());
        assert!(!video(Some(101)).answers_push());
    }
}
