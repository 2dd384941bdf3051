//! The console's sessions: kept in memory (a restart logs everyone out),
//! each with an absolute expiry and its own CSRF token.
//!
//! The session id is 256 random bits from the operating system, shown to
//! the browser once (in its cookie) and kept here only as its SHA-256: a
//! lookup's timing then says nothing about how close a guessed id is to a
//! real one, and the map holds nothing a browser could present.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// How long a session lasts from login, whatever it is used for.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions kept at most; a new one beyond this evicts the one nearest its
/// end, so that a client making sessions in a loop cannot grow the map.
pub const MAX_SESSIONS: usize = 1024;

/// 256 random bits from the operating system, as 64 hex digits.
///
/// # Panics
/// When the operating system has no randomness to give, which no relay can
/// run without safely.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex(&bytes)
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token every state-changing form of this session carries.
    pub csrf: String,
    /// When the session ends.
    pub expires_at: Instant,
}

/// The sessions of one process.
#[derive(Debug, Default)]
pub struct SessionStore {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

impl SessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a session at `now`; its id (for the cookie) and the session.
    pub fn create(&self, now: Instant) -> (String, Session) {
        let id = random_token();
        let session = Session {
            csrf: random_token(),
            expires_at: now + SESSION_LIFETIME,
        };
        let mut sessions = self.lock();
        sessions.retain(|_, session| session.expires_at > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires_at)
                .map(|(key, _)| *key)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(key(&id), session.clone());
        (id, session)
    }

    /// The live session with cookie value `id` at `now`, if any (an
    /// expired one is removed).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let key = key(id);
        let mut sessions = self.lock();
        match sessions.get(&key) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with cookie value `id`.
    pub fn remove(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    /// Sessions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is one call), so a poisoned lock is used as it is.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the map is keyed by: the id's SHA-256.
fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits_in_hex() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    /// A session is found by its id until its absolute end, not after, and
    /// not once removed; its CSRF token is its own.
    #[test]
    fn sessions_expire_and_end() {
        let store = SessionStore::new();
        let start = Instant::now();
        let (id, session) = store.create(start);
        let (other, other_session) = store.create(start);
        assert_ne!(session.csrf, other_session.csrf);
        assert_ne!(id, session.csrf);
        assert_eq!(store.get(&id, start), Some(session.clone()));
        let last = start + SESSION_LIFETIME - Duration::from_millis(1);
        assert_eq!(store.get(&id, last), Some(session));
        assert_eq!(store.get(&id, start + SESSION_LIFETIME), None);
        assert_eq!(store.get(&id, start), None, "an expired session is gone");
        assert!(store.get("not-a-session", start).is_none());
        store.remove(&other);
        assert!(store.get(&other, start).is_none());
        assert!(store.is_empty());
    }

    /// Beyond the cap, the session nearest its end makes way.
    #[test]
    fn the_store_is_bounded() {
        let store = SessionStore::new();
        let start = Instant::now();
        let (first, _) = store.create(start);
        for i in 1..=MAX_SESSIONS {
            store.create(start + Duration::from_secs(i as u64));
        }
        assert_eq!(store.len(), MAX_SESSIONS);
        assert!(store.get(&first, start).is_none());
    }
}
