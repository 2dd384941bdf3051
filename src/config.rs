//! Configuration: built-in defaults, then an optional TOML file, then
//! `JOGG_RELAY__SECTION__KEY` environment variables (later wins), validated
//! into a typed [`Config`].
//!
//! Two layers of types keep the concerns apart:
//! - [`Settings`] is the configuration as written: durations as strings,
//!   secrets as they came. It is what the layers merge into, what
//!   `config/default.toml` must equal, and what `check-config` prints (with
//!   secrets redacted by [`SecretSetting`]).
//! - [`Config`] is the validated result the rest of the program uses: parsed
//!   durations, addresses and URLs, and secrets in redacting types. Every
//!   validation failure is a [`ConfigError`] naming the offending key, which
//!   the command line turns into exit code 64.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The documented default configuration, shipped in the repository.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override the configuration.
pub const ENV_PREFIX: &str = "JOGG_RELAY";

/// A configuration problem, always tied to the key that caused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// The dotted key (`jogg.requests_per_second`), or the file for parse errors.
    pub key: String,
    /// What is wrong with it, never including a secret's value.
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Settings: the configuration as written
// ---------------------------------------------------------------------------

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
}

/// `[database]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db`.
    pub url: String,
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
    pub requests_per_second: f64,
    /// Token bucket size.
    pub burst: u32,
    /// Concurrent upstream requests.
    pub max_in_flight: u32,
    /// Longest pause after a 429, whatever `Retry-After` asks for.
    pub max_pause: String,
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
    pub multiplier: f64,
    /// ± fraction applied to every delay.
    pub jitter: f64,
    /// After this the video is abandoned (`deadline`).
    pub give_up_after: String,
    /// Window in which "not found" is retried.
    pub not_found_grace: String,
}

/// `[callbacks]` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbacksSettings {
    /// Endpoints that get every event.
    pub urls: Vec<String>,
    /// `whsec_…` signing secret.
    #[serde(skip_serializing_if = "SecretSetting::is_unset")]
    pub secret: SecretSetting,
    /// File holding the signing secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Per delivery attempt.
    pub timeout: String,
    /// Delays after attempt 1, 2, …
    pub retry_schedule: Vec<String>,
    /// Allow per-video callback URLs on private addresses.
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
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://data/jogg-relay.db".into(),
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
        }
    }
}

impl Default for CallbacksSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: SecretSetting::default(),
            secret_file: None,
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

impl Settings {
    /// Merges the layers: built-in defaults, then `file` (when given), then
    /// the `JOGG_RELAY__SECTION__KEY` variables found in `env`.
    ///
    /// `env` is passed in rather than read here so tests stay hermetic; the
    /// command line passes `std::env::vars()`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = config::Config::try_from(&Settings::default())
            .map_err(|err| ConfigError::new("defaults", err.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                ConfigError::new("--config", format!("cannot read {}: {err}", path.display()))
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // Only our own variables are handed to the config crate, so that an
        // unrelated `JOGG_RELAY_CONFIG` is not mistaken for a key.
        let ours: HashMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("callbacks.urls")
            .with_list_parse_key("callbacks.retry_schedule")
            .source(Some(ours.into_iter().collect()));
        builder
            .add_source(environment)
            .build()
            .and_then(|merged| merged.try_deserialize::<Settings>())
            .map_err(config_crate_error)
    }

    /// Validates the merged settings into a [`Config`], reading `*_file`
    /// secrets from disk.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let server = &self.server;
        let bind: SocketAddr = server.bind.parse().map_err(|_| {
            ConfigError::new(
                "server.bind",
                format!("{:?} is not an address like 127.0.0.1:8080", server.bind),
            )
        })?;
        let token = secret(&server.token, &server.token_file, "server.token")?;
        if !bind.ip().is_loopback() && token.is_none() {
            return Err(ConfigError::new(
                "server.token",
                format!(
                    "required because server.bind ({bind}) is not a loopback address; \
                     set server.token or server.token_file"
                ),
            ));
        }
        let shutdown_grace = duration(&server.shutdown_grace, "server.shutdown_grace")?;

        let database = DatabaseConfig::parse(&self.database.url)?;

        let jogg = &self.jogg;
        let base_url = http_url(&jogg.base_url, "jogg.base_url")?;
        let api_key = secret(&jogg.api_key, &jogg.api_key_file, "jogg.api_key")?;
        let jogg_timeout = positive_duration(&jogg.timeout, "jogg.timeout")?;
        if !(jogg.requests_per_second.is_finite() && jogg.requests_per_second > 0.0) {
            return Err(ConfigError::new(
                "jogg.requests_per_second",
                format!(
                    "must be a positive number, got {}",
                    jogg.requests_per_second
                ),
            ));
        }
        if jogg.burst == 0 {
            return Err(ConfigError::new("jogg.burst", "must be at least 1"));
        }
        if jogg.max_in_flight == 0 {
            return Err(ConfigError::new("jogg.max_in_flight", "must be at least 1"));
        }
        let max_pause = duration(&jogg.max_pause, "jogg.max_pause")?;
        if max_pause < Duration::from_secs(1) {
            // Shorter would all but ignore JoggAI's 429s.
            return Err(ConfigError::new("jogg.max_pause", "must be at least 1s"));
        }

        let polling = &self.polling;
        let min_interval = positive_duration(&polling.min_interval, "polling.min_interval")?;
        let max_interval = positive_duration(&polling.max_interval, "polling.max_interval")?;
        if min_interval > max_interval {
            return Err(ConfigError::new(
                "polling.min_interval",
                format!(
                    "{} is greater than polling.max_interval ({})",
                    polling.min_interval, polling.max_interval
                ),
            ));
        }
        if !(polling.multiplier.is_finite() && polling.multiplier >= 1.0) {
            return Err(ConfigError::new(
                "polling.multiplier",
                format!("must be a number >= 1.0, got {}", polling.multiplier),
            ));
        }
        if !(polling.jitter.is_finite() && (0.0..1.0).contains(&polling.jitter)) {
            return Err(ConfigError::new(
                "polling.jitter",
                format!("must be a fraction in [0, 1), got {}", polling.jitter),
            ));
        }

        let callbacks = &self.callbacks;
        let urls = callbacks
            .urls
            .iter()
            .map(|url| http_url(url, "callbacks.urls"))
            .collect::<Result<Vec<_>, _>>()?;
        let webhook_secret = secret(
            &callbacks.secret,
            &callbacks.secret_file,
            "callbacks.secret",
        )?
        .map(|value| WebhookSecret::parse(value, "callbacks.secret"))
        .transpose()?;
        let retry_schedule = callbacks
            .retry_schedule
            .iter()
            .map(|delay| duration(delay, "callbacks.retry_schedule"))
            .collect::<Result<Vec<_>, _>>()?;

        let format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("must be \"text\" or \"json\", got {other:?}"),
                ));
            }
        };

        Ok(Config {
            server: ServerConfig {
                bind,
                token,
                shutdown_grace,
            },
            database,
            jogg: JoggConfig {
                base_url,
                api_key,
                timeout: jogg_timeout,
                requests_per_second: jogg.requests_per_second,
                burst: jogg.burst,
                max_in_flight: jogg.max_in_flight as usize,
                max_pause,
            },
            polling: PollingConfig {
                first_after: duration(&polling.first_after, "polling.first_after")?,
                min_interval,
                max_interval,
                multiplier: polling.multiplier,
                jitter: polling.jitter,
                give_up_after: positive_duration(&polling.give_up_after, "polling.give_up_after")?,
                not_found_grace: duration(&polling.not_found_grace, "polling.not_found_grace")?,
            },
            callbacks: CallbacksConfig {
                urls,
                secret: webhook_secret,
                timeout: positive_duration(&callbacks.timeout, "callbacks.timeout")?,
                retry_schedule,
                allow_private_targets: callbacks.allow_private_targets,
            },
            log: LogConfig { format },
        })
    }

    /// The effective configuration as TOML, secrets redacted: what
    /// `check-config` prints.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// Turns the config crate's errors into ours, keeping the key it names.
fn config_crate_error(err: config::ConfigError) -> ConfigError {
    let message = err.to_string();
    // Serde's "unknown field `x`" carries the field only in its text; the
    // config crate adds the section it was found in.
    let unknown_field = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field.to_owned());
    let key = match (&err, unknown_field) {
        (
            config::ConfigError::At {
                key: Some(section), ..
            },
            Some(field),
        ) => {
            format!("{section}.{field}")
        }
        (_, Some(field)) => field,
        (
            config::ConfigError::Type { key: Some(key), .. }
            | config::ConfigError::At { key: Some(key), .. },
            None,
        ) => key.clone(),
        (config::ConfigError::FileParse { .. }, None) => "--config".to_owned(),
        _ => "configuration".to_owned(),
    };
    ConfigError { key, message }
}

/// Parses a duration string such as `"250ms"`, `"10s"` or `"48h"`.
fn duration(raw: &str, key: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(raw.trim()).map_err(|err| {
        ConfigError::new(
            key,
            format!("{raw:?} is not a duration like \"250ms\", \"10s\" or \"48h\" ({err})"),
        )
    })
}

/// Like [`duration`], refusing zero.
fn positive_duration(raw: &str, key: &str) -> Result<Duration, ConfigError> {
    let parsed = duration(raw, key)?;
    if parsed.is_zero() {
        return Err(ConfigError::new(key, "must be greater than zero"));
    }
    Ok(parsed)
}

/// Parses an absolute `http` or `https` URL with a host.
fn http_url(raw: &str, key: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw)
        .map_err(|err| ConfigError::new(key, format!("{raw:?} is not a valid URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(
            key,
            format!("{raw:?} must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(url)
}

/// Resolves a secret from its inline value or its `*_file` twin (never both).
///
/// A file's trailing newline is dropped, since editors and `echo` add one.
fn secret(
    inline: &SecretSetting,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<Option<SecretString>, ConfigError> {
    let file_key = format!("{key}_file");
    let value = match (&inline.0, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                key,
                format!("set either {key} or {file_key}, not both"),
            ));
        }
        (Some(value), None) => value.clone(),
        (None, Some(path)) => {
            let path = credential_path(path);
            let text = std::fs::read_to_string(&path).map_err(|err| {
                ConfigError::new(&file_key, format!("cannot read {}: {err}", path.display()))
            })?;
            text.trim_end_matches(['\r', '\n']).to_owned()
        }
        (None, None) => return Ok(None),
    };
    if value.trim().is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    Ok(Some(SecretString::from(value)))
}

/// A relative `*_file` path is looked up in systemd's credentials directory
/// when the service runs with `LoadCredential=`, so the unit can say
/// `api_key_file = "jogg-api-key"`.
fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Config: the validated configuration
// ---------------------------------------------------------------------------

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

/// The HTTP API's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Bearer token required on `/v1/*`, when set.
    pub token: Option<SecretString>,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
}

/// Where the SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The URL as configured, for messages.
    pub url: String,
    /// The database file.
    pub path: PathBuf,
}

impl DatabaseConfig {
    /// Accepts `sqlite://relative/path.db`, `sqlite:///absolute/path.db` and
    /// `sqlite:path.db`; a `?query` suffix is not supported, since the relay
    /// sets its own connection options.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|path| !path.is_empty() && !path.contains('?'))
            .ok_or_else(|| {
                ConfigError::new(
                    "database.url",
                    format!("{url:?} must look like sqlite://path/to/file.db"),
                )
            })?;
        Ok(Self {
            url: url.to_owned(),
            path: PathBuf::from(path),
        })
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
}

/// Callback delivery settings.
#[derive(Debug, Clone)]
pub struct CallbacksConfig {
    /// Endpoints that get every event.
    pub urls: Vec<Url>,
    /// Signing secret, when callbacks are signed.
    pub secret: Option<WebhookSecret>,
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
    /// Validates `value` as `whsec_` + non-empty base64.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load(Some(&path), env(vars))
    }

    fn invalid_key(toml: &str, vars: &[(&str, &str)]) -> String {
        match load_str(toml, vars).and_then(|settings| settings.validate()) {
            Ok(_) => panic!("accepted: {toml} {vars:?}"),
            Err(err) => err.key,
        }
    }

    #[test]
    fn default_toml_is_exactly_the_builtin_defaults() {
        let parsed: Settings = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Settings::default());
        // And the loader sees the same thing.
        assert_eq!(
            load_str(DEFAULT_CONFIG_TOML, &[]).unwrap(),
            Settings::default()
        );
        Settings::default().validate().unwrap();
    }

    #[test]
    fn max_pause_defaults_to_ten_minutes_and_is_configurable() {
        let config = Settings::default().validate().unwrap();
        assert_eq!(config.jogg.max_pause, Duration::from_secs(600));
        let settings = load_str("[jogg]\nmax_pause = \"90s\"\n", &[]).unwrap();
        assert_eq!(
            settings.validate().unwrap().jogg.max_pause,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        let toml =
            "[jogg]\nburst = 3\nrequests_per_second = 2.5\n[polling]\nmin_interval = \"250ms\"\n";
        let from_file = load_str(toml, &[]).unwrap();
        assert_eq!(from_file.jogg.burst, 3);
        assert_eq!(from_file.jogg.requests_per_second, 2.5);
        assert_eq!(
            from_file.jogg.max_in_flight, 16,
            "untouched keys keep defaults"
        );

        let with_env = load_str(
            toml,
            &[
                ("JOGG_RELAY__JOGG__BURST", "7"),
                ("JOGG_RELAY__POLLING__MIN_INTERVAL", "500ms"),
                (
                    "JOGG_RELAY__CALLBACKS__URLS",
                    "http://a.example/x,http://b.example/y",
                ),
                ("JOGG_RELAY__CALLBACKS__RETRY_SCHEDULE", "1s,2s"),
                ("JOGG_RELAY_CONFIG", "/ignored.toml"),
            ],
        )
        .unwrap();
        assert_eq!(with_env.jogg.burst, 7);
        assert_eq!(with_env.jogg.requests_per_second, 2.5);
        let config = with_env.validate().unwrap();
        assert_eq!(config.polling.min_interval, Duration::from_millis(500));
        assert_eq!(config.callbacks.urls.len(), 2);
        assert_eq!(
            config.callbacks.retry_schedule,
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
    }

    #[test]
    fn every_invalid_value_names_its_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[jogg]\nrequests_per_second = 0\n",
                &[],
                "jogg.requests_per_second",
            ),
            (
                "[jogg]\nrequests_per_second = -1.5\n",
                &[],
                "jogg.requests_per_second",
            ),
            (
                "",
                &[("JOGG_RELAY__JOGG__REQUESTS_PER_SECOND", "fast")],
                "jogg.requests_per_second",
            ),
            ("[jogg]\nburst = 0\n", &[], "jogg.burst"),
            ("[jogg]\nmax_in_flight = 0\n", &[], "jogg.max_in_flight"),
            ("[jogg]\nbase_url = \"not a url\"\n", &[], "jogg.base_url"),
            (
                "[jogg]\nbase_url = \"ftp://x.example\"\n",
                &[],
                "jogg.base_url",
            ),
            ("[jogg]\ntimeout = \"soon\"\n", &[], "jogg.timeout"),
            ("[jogg]\nmax_pause = \"500ms\"\n", &[], "jogg.max_pause"),
            ("[jogg]\nmax_pause = \"a year\"\n", &[], "jogg.max_pause"),
            (
                "[polling]\nmin_interval = \"2m\"\nmax_interval = \"1m\"\n",
                &[],
                "polling.min_interval",
            ),
            ("[polling]\nmultiplier = 0.5\n", &[], "polling.multiplier"),
            ("[polling]\njitter = 1.5\n", &[], "polling.jitter"),
            (
                "[polling]\ngive_up_after = \"forever\"\n",
                &[],
                "polling.give_up_after",
            ),
            (
                "[callbacks]\nurls = [\"http://ok.example\", \"::nope\"]\n",
                &[],
                "callbacks.urls",
            ),
            (
                "[callbacks]\nsecret = \"not-whsec\"\n",
                &[],
                "callbacks.secret",
            ),
            (
                "[callbacks]\nsecret = \"whsec_!!!\"\n",
                &[],
                "callbacks.secret",
            ),
            (
                "[callbacks]\nretry_schedule = [\"5s\", \"later\"]\n",
                &[],
                "callbacks.retry_schedule",
            ),
            ("[server]\nbind = \"localhost\"\n", &[], "server.bind"),
            ("[server]\nbind = \"0.0.0.0:8080\"\n", &[], "server.token"),
            ("[database]\nurl = \"postgres://x\"\n", &[], "database.url"),
            ("[log]\nformat = \"xml\"\n", &[], "log.format"),
            (
                "[jogg]\napi_key_file = \"/nonexistent/key\"\n",
                &[],
                "jogg.api_key_file",
            ),
            (
                "[jogg]\napi_key = \"k\"\napi_key_file = \"/x\"\n",
                &[],
                "jogg.api_key",
            ),
            ("[jogg]\nburst = \"many\"\n", &[], "jogg.burst"),
        ];
        for (toml, vars, key) in cases {
            assert_eq!(&invalid_key(toml, vars), key, "{toml} {vars:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        assert_eq!(
            invalid_key("[jogg]\napi_kee = \"x\"\n", &[]),
            "jogg.api_kee"
        );
        assert_eq!(invalid_key("[jgog]\n", &[]), "jgog");
        assert_eq!(
            invalid_key("", &[("JOGG_RELAY__POLLING__MIN", "1s")]),
            "polling.min"
        );
    }

    #[test]
    fn non_loopback_bind_is_accepted_with_a_token() {
        let settings =
            load_str("[server]\nbind = \"0.0.0.0:8080\"\ntoken = \"t0k\"\n", &[]).unwrap();
        assert!(settings.validate().unwrap().server.token.is_some());
    }

    #[test]
    fn secrets_come_from_files_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("key");
        std::fs::write(&key_path, "sk-file-123\n").unwrap();
        let toml = format!(
            "[jogg]\napi_key_file = {:?}\n",
            key_path.display().to_string()
        );
        let config = load_str(&toml, &[]).unwrap().validate().unwrap();
        assert_eq!(config.jogg.api_key.unwrap().expose_secret(), "sk-file-123");
    }

    #[test]
    fn redacted_output_never_shows_secrets() {
        let settings = load_str(
            "[server]\ntoken = \"tok-SECRET-1\"\n[jogg]\napi_key = \"key-SECRET-2\"\n\
             [callbacks]\nsecret = \"whsec_c2VjcmV0LTM=\"\n",
            &[],
        )
        .unwrap();
        let config = settings.validate().unwrap();
        for rendering in [
            settings.to_redacted_toml(),
            format!("{settings:?}"),
            format!("{config:?}"),
        ] {
            for secret in ["tok-SECRET-1", "key-SECRET-2", "c2VjcmV0LTM"] {
                assert!(
                    !rendering.contains(secret),
                    "{secret} leaked in {rendering}"
                );
            }
        }
        assert!(settings.to_redacted_toml().contains("[redacted]"));
    }

    #[test]
    fn webhook_secret_keeps_both_forms() {
        let secret =
            WebhookSecret::parse(SecretString::from("whsec_aGVsbG8="), "callbacks.secret").unwrap();
        assert_eq!(secret.key(), b"hello");
        assert_eq!(secret.full().expose_secret(), "whsec_aGVsbG8=");
    }
}
