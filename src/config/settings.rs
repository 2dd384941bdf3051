//! The configuration as written: what the layers merge into, what
//! `config/default.toml` must equal, and what `check-config` prints (with
//! secrets redacted by [`SecretSetting`]).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::from_text;

/// A secret as written in the configuration. Its `Debug` and `Serialize`
/// never show the value, so the whole [`Settings`] tree can be logged or
/// printed safely.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretSetting(pub Option<String>);

impl SecretSetting {
    /// Whether no value was given.
    pub fn is_unset(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("[redacted]"),
            None => f.write_str("None"),
        }
    }
}

impl Serialize for SecretSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(_) => serializer.serialize_some("[redacted]"),
            None => serializer.serialize_none(),
        }
    }
}

/// The whole configuration as written (see the module docs).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[server]`: the HTTP API.
    pub server: ServerSettings,
    /// `[database]`: the SQLite file.
    pub database: DatabaseSettings,
    /// `[jogg]`: the upstream API and its budget.
    pub jogg: JoggSettings,
    /// `[polling]`: the per-video poll schedule.
    pub polling: PollingSettings,
    /// `[callbacks]`: where and how events are delivered.
    pub callbacks: CallbacksSettings,
    /// `[log]`: log output.
    pub log: LogSettings,
}

/// `[server]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// API listen address.
    pub bind: String,
    /// Bearer token for `/v1/*`.
    #[serde(skip_serializing_if = "SecretSetting::is_unset")]
    pub token: SecretSetting,
    /// File holding the bearer token (systemd `LoadCredential`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: String,
    /// Connections served at once; more wait to be accepted.
    #[serde(deserialize_with = "from_text::count")]
    pub max_connections: u32,
    /// Longest wait for a request's headers (also the keep-alive idle limit).
    pub header_timeout: String,
    /// Longest time to receive a request's body.
    pub body_timeout: String,
    /// Longest time a response write may make no progress (a client that
    /// does not read).
    pub write_timeout: String,
    /// Optional second listener serving only `POST /webhooks/jogg`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_bind: Option<String>,
    /// Whether the operator console is served under `/ui/`.
    #[serde(deserialize_with = "from_text::flag")]
    pub console: bool,
}

/// `[database]` as written.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` or `postgres://user:password@host/db`;
    /// shown (by `check-config`, in logs) with any password redacted.
    pub url: String,
    /// File holding the URL (it may carry a password), instead of `url`.
    pub url_file: Option<PathBuf>,
}

/// As `check-config` shows it: the URL with any password redacted, or,
/// when the URL comes from a file, only that file (`url` then holds a
/// default the relay does not use).
impl Serialize for DatabaseSettings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut section = serializer.serialize_struct("DatabaseSettings", 1)?;
        match &self.url_file {
            Some(file) => section.serialize_field("url_file", file)?,
            None => section.serialize_field("url", &redact_database_url(&self.url))?,
        }
        section.end()
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_database_url(&self.url))
            .field("url_file", &self.url_file)
            .finish()
    }
}

/// `url` with its password (in the authority, or a `password` query
/// parameter) replaced by `redacted`, for messages and `check-config`. A
/// text that does not parse as a URL is shown with everything before its
/// last `@` hidden, since that part may hold a password.
pub fn redact_database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.scheme() != "sqlite" => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            if parsed.query_pairs().any(|(key, _)| key == "password") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if key == "password" {
                            "redacted".into()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("[redacted]@{host}"),
            None => url.to_owned(),
        },
    }
}

/// `[jogg]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoggSettings {
    /// Upstream origin.
    pub base_url: String,
    /// The `x-api-key`.
    #[serde(skip_serializing_if = "SecretSetting::is_unset")]
    pub api_key: SecretSetting,
    /// File holding the API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Per upstream request.
    pub timeout: String,
    /// Global poll budget.
    #[serde(deserialize_with = "from_text::number")]
    pub requests_per_second: f64,
    /// Token bucket size.
    #[serde(deserialize_with = "from_text::count")]
    pub burst: u32,
    /// Concurrent upstream requests.
    #[serde(deserialize_with = "from_text::count")]
    pub max_in_flight: u32,
    /// Longest pause after a 429, whatever `Retry-After` asks for.
    pub max_pause: String,
    /// The secret JoggAI signs its pushes with; enables `POST /webhooks/jogg`.
    #[serde(skip_serializing_if = "SecretSetting::is_unset")]
    pub webhook_secret: SecretSetting,
    /// File holding the push secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Whether a push for a video the relay does not track starts tracking it.
    #[serde(deserialize_with = "from_text::flag")]
    pub adopt_untracked: bool,
}

/// `[polling]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollingSettings {
    /// Delay from enqueue to the first poll.
    pub first_after: String,
    /// First interval between polls.
    pub min_interval: String,
    /// Interval cap.
    pub max_interval: String,
    /// Interval growth per unchanged poll.
    #[serde(deserialize_with = "from_text::number")]
    pub multiplier: f64,
    /// ± fraction applied to every delay.
    #[serde(deserialize_with = "from_text::number")]
    pub jitter: f64,
    /// After this the video is abandoned (`deadline`).
    pub give_up_after: String,
    /// Window in which "not found" is retried.
    pub not_found_grace: String,
    /// `adaptive` or `exponential`.
    pub strategy: String,
    /// Adaptive: probability mass between two polls of one video.
    #[serde(deserialize_with = "from_text::number")]
    pub adaptive_step: f64,
    /// Adaptive: finished videos after which an observation weighs half.
    #[serde(deserialize_with = "from_text::count")]
    pub adaptive_half_life: u32,
    /// Adaptive: finished videos learned before the learned schedule is used.
    #[serde(deserialize_with = "from_text::count")]
    pub adaptive_warmup: u32,
    /// While pushes are enabled: least gap between background polls.
    pub safety_net_interval: String,
}

/// `[callbacks]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbacksSettings {
    /// Endpoints that get every event.
    #[serde(deserialize_with = "from_text::list")]
    pub urls: Vec<String>,
    /// `whsec_…` signing secret.
    #[serde(skip_serializing_if = "SecretSetting::is_unset")]
    pub secret: SecretSetting,
    /// File holding the signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// `whsec_…` secret for callbacks to per-video `callback_url`s.
    #[serde(skip_serializing_if = "SecretSetting::is_unset")]
    pub video_secret: SecretSetting,
    /// File holding the per-video signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_secret_file: Option<PathBuf>,
    /// Per delivery attempt.
    pub timeout: String,
    /// Delays after attempt 1, 2, …
    #[serde(deserialize_with = "from_text::list")]
    pub retry_schedule: Vec<String>,
    /// Allow per-video callback URLs on private addresses.
    #[serde(deserialize_with = "from_text::flag")]
    pub allow_private_targets: bool,
}

/// `[log]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `"text"` or `"json"`.
    pub format: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            token: SecretSetting::default(),
            token_file: None,
            shutdown_grace: "10s".into(),
            max_connections: 1024,
            header_timeout: "10s".into(),
            body_timeout: "30s".into(),
            write_timeout: "30s".into(),
            webhook_bind: None,
            console: true,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/jogg-relay.db".into(),
            url_file: None,
        }
    }
}

impl Default for JoggSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.jogg.ai".into(),
            api_key: SecretSetting::default(),
            api_key_file: None,
            timeout: "10s".into(),
            requests_per_second: 10.0,
            burst: 10,
            max_in_flight: 16,
            max_pause: "10m".into(),
            webhook_secret: SecretSetting::default(),
            webhook_secret_file: None,
            adopt_untracked: false,
        }
    }
}

impl Default for PollingSettings {
    fn default() -> Self {
        Self {
            first_after: "10s".into(),
            min_interval: "10s".into(),
            max_interval: "60s".into(),
            multiplier: 1.5,
            jitter: 0.1,
            give_up_after: "48h".into(),
            not_found_grace: "5m".into(),
            strategy: "adaptive".into(),
            adaptive_step: 0.06,
            adaptive_half_life: 100,
            adaptive_warmup: 20,
            safety_net_interval: "5m".into(),
        }
    }
}

impl Default for CallbacksSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: SecretSetting::default(),
            secret_file: None,
            video_secret: SecretSetting::default(),
            video_secret_file: None,
            timeout: "10s".into(),
            retry_schedule: ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"]
                .map(String::from)
                .to_vec(),
            allow_private_targets: false,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
        }
    }
}
