//! The vocabulary every module shares: validated video ids, the states a
//! tracked video moves through, the relay's notion of time and of a claim's
//! lease; and, in the sub-modules, what the workers' pure decisions read
//! and produce: [`poll`] for a poll round, [`delivery`] for a callback
//! attempt. The store reads and writes these types; nothing here knows
//! how they are stored.

pub mod delivery;
pub mod poll;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest video id the relay accepts (README, "HTTP API").
pub const MAX_VIDEO_ID_LEN: usize = 128;

/// A JoggAI video id that passed validation: 1 to 128 characters of
/// `[A-Za-z0-9_-]`.
///
/// Because nothing else can be put into an upstream URL path, an id that
/// reached this type can never turn into path traversal (`../x`), a second
/// path segment or a query string on the upstream request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VideoId(String);

/// Why a string is not a valid [`VideoId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidVideoId {
    /// The id is the empty string.
    #[error("video_id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_VIDEO_ID_LEN`] bytes.
    #[error("video_id must be at most {MAX_VIDEO_ID_LEN} characters")]
    TooLong,
    /// The id contains a character outside `[A-Za-z0-9_-]`.
    #[error("video_id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadCharacter,
}

impl VideoId {
    /// Validates `raw` as a video id.
    pub fn parse(raw: &str) -> Result<Self, InvalidVideoId> {
        if raw.is_empty() {
            return Err(InvalidVideoId::Empty);
        }
        // Checked on bytes: a non-ASCII character is rejected below anyway,
        // so its byte length never matters for acceptance.
        if raw.len() > MAX_VIDEO_ID_LEN {
            return Err(InvalidVideoId::TooLong);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidVideoId::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VideoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VideoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A video id as read back from the database.
///
/// Everything the relay writes was validated on the way in, so a stored id
/// is nearly always [`StoredId::Valid`]. A row written by something else
/// (a hand edit, another tool) may hold a string that no longer validates:
/// it is still claimed and answered for (the poller abandons it with reason
/// `invalid_id` without sending it upstream; its callback names it as
/// stored), so it cannot simply fail to decode.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum StoredId {
    /// The id validates: it may go into an upstream URL.
    Valid(VideoId),
    /// The stored string, which does not validate.
    Invalid(String),
}

impl StoredId {
    /// Validates a stored string.
    pub fn from_stored(raw: String) -> Self {
        match VideoId::parse(&raw) {
            Ok(id) => StoredId::Valid(id),
            Err(_) => StoredId::Invalid(raw),
        }
    }

    /// The id, when it validates.
    pub fn valid(&self) -> Option<&VideoId> {
        match self {
            StoredId::Valid(id) => Some(id),
            StoredId::Invalid(_) => None,
        }
    }

    /// The string as stored.
    pub fn as_str(&self) -> &str {
        match self {
            StoredId::Valid(id) => id.as_str(),
            StoredId::Invalid(raw) => raw,
        }
    }
}

impl From<VideoId> for StoredId {
    fn from(id: VideoId) -> Self {
        StoredId::Valid(id)
    }
}

impl fmt::Display for StoredId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for StoredId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredId::Valid(id) => fmt::Debug::fmt(id, f),
            StoredId::Invalid(raw) => write!(f, "Invalid({raw:?})"),
        }
    }
}

/// Where a tracked video stands (README, "HTTP API": `state`).
///
/// `Active` is the only non-terminal state; a terminal state never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VideoState {
    /// Still being polled: upstream says pending, processing or something unknown.
    Active,
    /// Upstream reported success.
    Completed,
    /// Upstream reported failure.
    Failed,
    /// The relay gave up (`deadline`, `not_found` or `invalid_id`).
    Abandoned,
    /// Tracking was stopped through `DELETE /v1/videos/{id}`.
    Cancelled,
}

impl VideoState {
    /// Every state, in lifecycle order.
    pub const ALL: [VideoState; 5] = [
        VideoState::Active,
        VideoState::Completed,
        VideoState::Failed,
        VideoState::Abandoned,
        VideoState::Cancelled,
    ];

    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoState::Active => "active",
            VideoState::Completed => "completed",
            VideoState::Failed => "failed",
            VideoState::Abandoned => "abandoned",
            VideoState::Cancelled => "cancelled",
        }
    }

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        self != VideoState::Active
    }
}

impl fmt::Display for VideoState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`VideoState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}; expected one of active, completed, failed, abandoned, cancelled")]
pub struct UnknownState(pub String);

impl FromStr for VideoState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VideoState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A point in time as stored in the database: milliseconds since the Unix
/// epoch, UTC. Integers keep the "due" indexes small and comparisons cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    /// This instant moved forward by `delay` (saturating).
    pub fn plus(self, delay: Duration) -> Self {
        let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        Millis(self.0.saturating_add(delay))
    }

    /// The latest instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
    pub const MAX_RFC3339: Millis = Millis(253_402_300_799_999);

    /// RFC 3339 UTC rendering with millisecond precision, as the API shows
    /// timestamps. Instants outside what RFC 3339 can write (before 1970 or
    /// after the year 9999: an upstream that sends milliseconds where
    /// seconds belong, a huge configured delay) are clamped to its range
    /// rather than failing: rendering never panics, whatever was stored.
    pub fn to_rfc3339(self) -> String {
        let clamped = self.0.clamp(0, Self::MAX_RFC3339.0);
        let since_epoch = Duration::from_millis(u64::try_from(clamped).unwrap_or(0));
        humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
    }
}

/// A claim's lease on a row: the claim owns the row until `until`, and its
/// result is only recorded (or the row handed back) while the row still
/// carries this exact lease. A later claim of the same row (after this one
/// expired) carries a later lease, so a stale result cannot overwrite it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lease {
    /// When the lease ends (the row is due again then, should the claim be
    /// lost).
    pub until: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        let longest = "a".repeat(MAX_VIDEO_ID_LEN);
        for ok in ["a", "A-z_09", "3f1c9a2e-77b0-4b0e-9d61", longest.as_str()] {
            assert_eq!(VideoId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        let too_long = "a".repeat(MAX_VIDEO_ID_LEN + 1);
        assert_eq!(VideoId::parse(""), Err(InvalidVideoId::Empty));
        assert_eq!(VideoId::parse(&too_long), Err(InvalidVideoId::TooLong));
        for bad in ["../x", "a/b", "a b", "%2e%2e", "vidé", "a?b", "a#b", "a.b"] {
            assert_eq!(
                VideoId::parse(bad),
                Err(InvalidVideoId::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn stored_ids_keep_what_does_not_validate() {
        let valid = StoredId::from_stored("v-1_A".to_owned());
        assert_eq!(valid.valid(), Some(&VideoId::parse("v-1_A").unwrap()));
        assert_eq!(valid.as_str(), "v-1_A");
        let invalid = StoredId::from_stored("../x".to_owned());
        assert_eq!(invalid, StoredId::Invalid("../x".to_owned()));
        assert_eq!(invalid.valid(), None);
        assert_eq!(invalid.to_string(), "../x");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in VideoState::ALL {
            assert_eq!(state.as_str().parse::<VideoState>(), Ok(state));
        }
        assert!("done".parse::<VideoState>().is_err());
    }

    #[test]
    fn millis_render_as_rfc3339_utc() {
        assert_eq!(
            Millis(1_732_806_631_250).to_rfc3339(),
            "2024-11-28T15:10:31.250Z"
        );
    }

    #[test]
    fn instants_beyond_rfc3339_are_clamped_not_fatal() {
        assert_eq!(Millis::MAX_RFC3339.to_rfc3339(), "9999-12-31T23:59:59.999Z");
        for beyond in [
            Millis::MAX_RFC3339.0 + 1,
            1_732_806_631_000 * 1000,
            i64::MAX,
        ] {
            assert_eq!(Millis(beyond).to_rfc3339(), "9999-12-31T23:59:59.999Z");
        }
        for before in [-1, i64::MIN] {
            assert_eq!(Millis(before).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        }
    }
}
