//! The validated configuration the rest of the program uses: parsed
//! durations, addresses and URLs, and secrets in redacting types.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, MIN_SECRET_LEN};
use crate::adaptive::AdaptiveSettings;

/// The validated configuration the program runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP API.
    pub server: ServerConfig,
    /// The SQLite file.
    pub database: DatabaseConfig,
    /// The upstream API and its budget.
    pub jogg: JoggConfig,
    /// The per-video poll schedule.
    pub polling: PollingConfig,
    /// Callback delivery.
    pub callbacks: CallbacksConfig,
    /// Log output.
    pub log: LogConfig,
}

impl Config {
    /// What is valid but unwise in this configuration, one sentence each,
    /// never showing a secret: `serve` logs each as a WARN at startup and
    /// `check-config` prints them.
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let base_url = &self.jogg.base_url;
        if base_url.scheme() == "http" && !is_loopback_host(base_url) {
            warnings.push(format!(
                "jogg.base_url ({}) is plain http to a host that is not loopback: \
                 the API key and every answer cross the network unencrypted; use https",
                base_url.origin().ascii_serialization()
            ));
        }
        if self.jogg.adopt_untracked && self.jogg.webhook_secret.is_none() {
            warnings.push(
                "jogg.adopt_untracked is true but jogg.webhook_secret is not set: pushes are \
                 not accepted, so no video is ever adopted"
                    .to_owned(),
            );
        }
        warnings
    }
}

/// Whether `url`'s host is this machine: `localhost` (RFC 6761, including
/// its subdomains) or a loopback address, IPv4-mapped ones included.
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// The HTTP API's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Bearer token required on `/v1/*`, when set.
    pub token: Option<SecretString>,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// Connections served at once; further connections wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, counted from when
    /// the connection opens or its previous response was sent (so it is
    /// also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Longest time from a request's headers to the end of its body.
    pub body_timeout: Duration,
    /// Longest time a response write may go without progress (the client
    /// reads nothing) before the connection is closed.
    pub write_timeout: Duration,
    /// A second listener serving only `POST /webhooks/jogg`, when set.
    pub webhook_bind: Option<SocketAddr>,
    /// Whether the operator console is served under `/ui/` (README,
    /// "Console"); off, `/ui/*` is 404.
    pub console: bool,
}

/// Where the SQLite database lives.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The URL as configured, any password redacted: for messages.
    pub url: String,
    /// Which engine holds the data, and where.
    pub backend: DatabaseBackend,
}

/// The storage engine the URL selects.
#[derive(Debug, Clone)]
pub enum DatabaseBackend {
    /// One SQLite file, for one daemon.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database, which several daemons may share.
    Postgres {
        /// The connection URL, which may carry a password.
        url: SecretString,
    },
}

impl DatabaseConfig {
    /// Accepts `sqlite://relative/path.db`, `sqlite:///absolute/path.db` and
    /// `sqlite:path.db` (a `?query` suffix is not supported, since the relay
    /// sets its own connection options), and `postgres://` or
    /// `postgresql://` URLs with any of PostgreSQL's own parameters
    /// (`sslmode`, `host` for a socket folder, ...).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let shown = super::settings::redact_database_url(url);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // The URL crate's messages never quote the input; sqlx's say
            // which parameter is wrong. Neither repeats a password.
            url::Url::parse(url).map_err(|err| {
                ConfigError::new(
                    "database.url",
                    format!("{shown:?} is not a valid PostgreSQL URL: {err}"),
                )
            })?;
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|err| {
                    ConfigError::new(
                        "database.url",
                        format!("{shown:?} is not a valid PostgreSQL URL: {err}"),
                    )
                })?;
            return Ok(Self {
                url: shown,
                backend: DatabaseBackend::Postgres {
                    url: SecretString::from(url.to_owned()),
                },
            });
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|path| !path.is_empty() && !path.contains('?'))
            .ok_or_else(|| {
                ConfigError::new(
                    "database.url",
                    format!(
                        "{shown:?} must look like sqlite://path/to/file.db or \
                         postgres://user@host/database"
                    ),
                )
            })?;
        Ok(Self {
            url: url.to_owned(),
            backend: DatabaseBackend::Sqlite {
                path: PathBuf::from(path),
            },
        })
    }

    /// The SQLite file, when the database is one.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.backend {
            DatabaseBackend::Sqlite { path } => Some(path),
            DatabaseBackend::Postgres { .. } => None,
        }
    }
}

/// The upstream API's settings.
#[derive(Debug, Clone)]
pub struct JoggConfig {
    /// Upstream origin.
    pub base_url: Url,
    /// The `x-api-key`; `serve` refuses to start without it.
    pub api_key: Option<SecretString>,
    /// Per upstream request.
    pub timeout: Duration,
    /// Global poll budget.
    pub requests_per_second: f64,
    /// Token bucket size.
    pub burst: u32,
    /// Concurrent upstream requests.
    pub max_in_flight: usize,
    /// Longest pause after a 429, whatever `Retry-After` asks for.
    pub max_pause: Duration,
    /// The secret JoggAI signs its pushes with (the key of the
    /// `X-Webhook-Signature` HMAC); pushes are accepted only when set.
    pub webhook_secret: Option<SecretString>,
    /// Whether a push for an untracked video starts tracking it.
    pub adopt_untracked: bool,
}

/// The per-video poll schedule.
#[derive(Debug, Clone)]
pub struct PollingConfig {
    /// Delay from enqueue to the first poll.
    pub first_after: Duration,
    /// First interval between polls.
    pub min_interval: Duration,
    /// Interval cap.
    pub max_interval: Duration,
    /// Interval growth per unchanged poll.
    pub multiplier: f64,
    /// ± fraction applied to every delay.
    pub jitter: f64,
    /// After this the video is abandoned (`deadline`).
    pub give_up_after: Duration,
    /// Window in which "not found" is retried.
    pub not_found_grace: Duration,
    /// How unfinished videos are scheduled.
    pub strategy: PollStrategy,
    /// The learned schedule's settings (the relay learns whatever the
    /// strategy, so `/v1/stats` shows what `adaptive` would do).
    pub adaptive: AdaptiveSettings,
    /// Least gap between background polls while JoggAI's pushes are
    /// enabled (`jogg.webhook_secret` set); `None` when they are not, and
    /// polls follow `min_interval`..`max_interval` alone.
    pub safety_net: Option<Duration>,
}

/// `polling.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStrategy {
    /// Intervals grow by `multiplier` per unchanged answer.
    Exponential,
    /// Polls spaced by the learned render-time distribution.
    Adaptive,
}

impl PollStrategy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PollStrategy::Exponential => "exponential",
            PollStrategy::Adaptive => "adaptive",
        }
    }
}

/// Callback delivery settings.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    /// Endpoints that get every event.
    pub urls: Vec<Url>,
    /// Signing secret, when callbacks are signed.
    pub secret: Option<WebhookSecret>,
    /// Signing secret for per-video targets (a URL not among `urls`), so
    /// that an API client's receiver cannot sign callbacks the operator's
    /// receivers would trust; `secret` when unset.
    pub video_secret: Option<WebhookSecret>,
    /// Per attempt.
    pub timeout: Duration,
    /// Delays after attempt 1, 2, …; after the last the delivery is dead.
    pub retry_schedule: Vec<Duration>,
    /// Allow per-video callback URLs on private addresses.
    pub allow_private_targets: bool,
}

/// Log output settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Human-readable text or JSON lines.
    pub format: LogFormat,
}

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A Standard Webhooks secret: `whsec_` followed by base64.
///
/// Both forms are kept: the decoded key signs Standard Webhooks signatures,
/// the whole string keys the JoggAI-style signature.
#[derive(Clone)]
pub struct WebhookSecret {
    /// The whole `whsec_…` string.
    full: SecretString,
    /// The base64-decoded key.
    key: secrecy::SecretBox<[u8]>,
}

impl WebhookSecret {
    /// Validates `value` as `whsec_` + base64 of a key of at least
    /// [`MIN_SECRET_LEN`] bytes; errors name `key` and never show the value.
    pub fn parse(value: SecretString, key: &str) -> Result<Self, ConfigError> {
        let encoded = value
            .expose_secret()
            .strip_prefix("whsec_")
            .ok_or_else(|| ConfigError::new(key, "must start with \"whsec_\""))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .filter(|bytes| !bytes.is_empty())
            .ok_or_else(|| {
                ConfigError::new(key, "must be \"whsec_\" followed by non-empty base64")
            })?;
        if decoded.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(
                key,
                format!(
                    "the key after \"whsec_\" decodes to {} bytes; at least {MIN_SECRET_LEN} \
                     are required (e.g. whsec_$(openssl rand -base64 32))",
                    decoded.len()
                ),
            ));
        }
        Ok(Self {
            full: value,
            key: decoded.into_boxed_slice().into(),
        })
    }

    /// The whole secret string (JoggAI-style signature key).
    pub fn full(&self) -> &SecretString {
        &self.full
    }

    /// The decoded key (Standard Webhooks signature key).
    pub fn key(&self) -> &[u8] {
        self.key.expose_secret()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}
