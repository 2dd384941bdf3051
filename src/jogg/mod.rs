//! The upstream protocol: a typed client for JoggAI's
//! `GET {base_url}/v2/avatar_video/{id}`, whose answers are classified by
//! [`answer`].

pub mod answer;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderName, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use tracing::{instrument, warn};

pub use answer::{PauseReason, PollAnswer, RejectedUrl, StatusClass, VideoStatus};

use crate::config::JoggConfig;
use crate::domain::VideoId;

/// Largest upstream body read; anything longer is cut off (and then fails
/// to parse), so a hostile or broken upstream cannot exhaust memory.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The header JoggAI reads the key from.
const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// What the client accepts.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Distinct unknown statuses remembered for "warn once"; beyond this, new
/// ones are still handled but no longer warned about.
const MAX_REMEMBERED_STATUSES: usize = 1024;

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `serve` needs `jogg.api_key`.
    #[error("jogg.api_key is not set")]
    MissingApiKey,
    /// The key cannot be sent as a header (e.g. it contains a newline).
    #[error("jogg.api_key contains characters that cannot be sent in a header")]
    UnusableApiKey,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Talks to JoggAI.
#[derive(Debug)]
pub struct JoggClient {
    http: reqwest::Client,
    base_url: Url,
    /// The key as a sensitive header value (hidden from `Debug`).
    api_key: HeaderValue,
    /// Unknown statuses already warned about.
    warned_statuses: Mutex<HashSet<String>>,
}

impl JoggClient {
    /// Builds the client; the per-request timeout is `config.timeout`.
    pub fn new(config: &JoggConfig) -> Result<Self, ClientError> {
        let key: &SecretString = config.api_key.as_ref().ok_or(ClientError::MissingApiKey)?;
        let mut api_key =
            HeaderValue::from_str(key.expose_secret()).map_err(|_| ClientError::UnusableApiKey)?;
        api_key.set_sensitive(true);
        let http = crate::outbound::client_builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.max_in_flight)
            .build()?;
        Ok(Self {
            http,
            base_url: config.base_url.clone(),
            api_key,
            warned_statuses: Mutex::new(HashSet::new()),
        })
    }

    /// The status URL of `video_id`. The id is pushed as a path segment,
    /// which percent-encodes it: ids are validated at enqueue, and this is
    /// the second fence.
    pub fn status_url(&self, video_id: &VideoId) -> Url {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("base_url is an http(s) URL, validated in config")
            .pop_if_empty()
            .extend(["v2", "avatar_video", video_id.as_str()]);
        url
    }

    /// Polls one video. Never fails: every problem is a [`PollAnswer`].
    #[instrument(skip(self), level = "debug", fields(video_id = %video_id))]
    pub async fn poll(&self, video_id: &VideoId) -> PollAnswer {
        let request = self
            .http
            .get(self.status_url(video_id))
            .header(API_KEY, self.api_key.clone())
            .header(ACCEPT, JSON);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => return PollAnswer::Transient(describe(&err)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_BODY_BYTES {
                        return PollAnswer::Transient(format!(
                            "body larger than {MAX_BODY_BYTES} bytes"
                        ));
                    }
                }
                Ok(None) => break,
                Err(err) => return PollAnswer::Transient(describe(&err)),
            }
        }
        let answer = answer::classify(status, retry_after.as_deref(), &body, SystemTime::now())
            .for_video(video_id.as_str());
        match &answer {
            PollAnswer::Status(video) => {
                for rejected in &video.rejected_urls {
                    warn!(
                        %video_id,
                        field = rejected.field,
                        value = ?rejected.value,
                        "JoggAI sent a URL that is not an absolute http(s) URL; it is dropped"
                    );
                }
                if video.class == StatusClass::Unknown {
                    self.warn_unknown_status(&video.status);
                }
            }
            PollAnswer::Misrouted { answered } => warn!(
                %video_id,
                answered_video_id = ?answered,
                "JoggAI answered about another video than the one asked for; the answer is \
                 ignored and the video backs off"
            ),
            _ => {}
        }
        answer
    }

    /// Warns once per distinct unknown status string.
    fn warn_unknown_status(&self, status: &str) {
        let mut warned = self
            .warned_statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if warned.len() < MAX_REMEMBERED_STATUSES && warned.insert(status.to_owned()) {
            warn!(
                status,
                "JoggAI answered an unknown status; it is recorded as-is and polling continues"
            );
        }
    }
}

/// A transport error in a few words, without the URL (which is fine) or any
/// header (which could hold the key: reqwest never includes headers).
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timeout".into()
    } else if err.is_connect() {
        "connection failed".into()
    } else if err.is_body() || err.is_decode() {
        "broken response body".into()
    } else {
        format!("request failed: {err}")
    }
}

/// Default pause after a 429 without a usable `Retry-After`: doubles per
/// consecutive 429, from one second up to a minute.
pub fn default_rate_limit_pause(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.min(6)).min(Duration::from_secs(60))
}
