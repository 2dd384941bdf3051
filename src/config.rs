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

/// Fewest characters of `server.token` when the API listens beyond
/// loopback, and fewest bytes of a webhook signing key (after base64
/// decoding): shorter secrets can be guessed or brute-forced.
pub const MIN_SECRET_LEN: usize = 16;

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
    /// Connections served at once; more wait to be accepted.
    #[serde(deserialize_with = "from_text::count")]
    pub max_connections: u32,
    /// Longest wait for a request's headers (also the keep-alive idle limit).
    pub header_timeout: String,
    /// Longest time to receive a request's body.
    pub body_timeout: String,
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
            // Checked here, with our own parser, so that the error can be
            // told without the source line the parsers quote (it may hold
            // a secret, e.g. an unterminated `api_key = "…`).
            if let Err(err) = toml::from_str::<toml::Table>(&text) {
                return Err(toml_syntax_error(path, &text, &err));
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // Only our own variables are handed to the config crate, so that an
        // unrelated `JOGG_RELAY_CONFIG` is not mistaken for a key.
        let ours: HashMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        // Every variable stays the string it is (no type guessing): a
        // token `000123` or a key of 40 digits must not become a number.
        // The numeric, boolean and list keys parse their text themselves
        // (see `from_text`).
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(false)
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
        if !bind.ip().is_loopback() {
            match &token {
                None => {
                    return Err(ConfigError::new(
                        "server.token",
                        format!(
                            "required because server.bind ({bind}) is not a loopback address; \
                             set server.token or server.token_file"
                        ),
                    ));
                }
                Some(token) if token.expose_secret().chars().count() < MIN_SECRET_LEN => {
                    return Err(ConfigError::new(
                        "server.token",
                        format!(
                            "must be at least {MIN_SECRET_LEN} characters because server.bind \
                             ({bind}) is not a loopback address (e.g. openssl rand -hex 32)"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let shutdown_grace = duration(&server.shutdown_grace, "server.shutdown_grace")?;
        if server.max_connections == 0 {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        let header_timeout = positive_duration(&server.header_timeout, "server.header_timeout")?;
        let body_timeout = positive_duration(&server.body_timeout, "server.body_timeout")?;

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
        let webhook_secret = webhook_secret(
            &callbacks.secret,
            &callbacks.secret_file,
            "callbacks.secret",
        )?;
        let video_secret = self::webhook_secret(
            &callbacks.video_secret,
            &callbacks.video_secret_file,
            "callbacks.video_secret",
        )?;
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
                max_connections: server.max_connections as usize,
                header_timeout,
                body_timeout,
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
                video_secret,
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

/// Deserializers for the keys that are not strings.
///
/// The TOML file gives them typed values; the environment gives every
/// value as text, since it is read without type guessing (guessing turned
/// a token `000123` into `123`). These accept either and parse the text
/// strictly, so an error still names the key (the config crate adds it).
mod from_text {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{self, SeqAccess, Unexpected, Visitor};

    /// A number (`requests_per_second`, `multiplier`, `jitter`).
    pub fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        struct Number;
        impl Visitor<'_> for Number {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
                Ok(value)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
                Ok(value as f64)
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
                Ok(value as f64)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<f64, E> {
                text.trim()
                    .parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(text), &self))
            }
        }
        deserializer.deserialize_any(Number)
    }

    /// A whole number that fits `u32` (`burst`, `max_in_flight`).
    pub fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        struct Count;
        impl Visitor<'_> for Count {
            type Value = u32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number from 0 to 4294967295")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
                u32::try_from(value).map_err(|_| E::invalid_value(Unexpected::Signed(value), &self))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
                u32::try_from(value)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<u32, E> {
                text.trim()
                    .parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(text), &self))
            }
        }
        deserializer.deserialize_any(Count)
    }

    /// A boolean: `true`/`false` in the file; in the environment also any
    /// case of those, or `1`/`0`.
    pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
        struct Flag;
        impl Visitor<'_> for Flag {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<bool, E> {
                Ok(value)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<bool, E> {
                match text.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(E::invalid_value(Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_any(Flag)
    }

    /// A list of strings: an array in the file, comma-separated text in
    /// the environment (entries trimmed; empty text is an empty list).
    pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings, or comma-separated text")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(items)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
                if text.trim().is_empty() {
                    return Ok(Vec::new());
                }
                Ok(text.split(',').map(|item| item.trim().to_owned()).collect())
            }
        }
        deserializer.deserialize_any(List)
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
        (config::ConfigError::FileParse { .. }, None) => {
            // The file is checked by `toml_syntax_error` first; should the
            // crate still refuse it, its message quotes the source line,
            // which may hold a secret, so none of it is passed on.
            return ConfigError::new("--config", "the file is not valid TOML");
        }
        _ => "configuration".to_owned(),
    };
    ConfigError { key, message }
}

/// A TOML syntax error told by file, line and column and the parser's
/// description, without the quoted source line that the parser's own
/// message carries: that line may hold a secret (an unterminated
/// `api_key = "…` string is quoted back in full).
fn toml_syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let place = err
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    // The description is the parser's wording of what it expected; only
    // its first line is kept, in case a later one ever quotes the source.
    let description = err.message().lines().next().unwrap_or("invalid TOML");
    ConfigError::new(
        "--config",
        format!("{} is not valid TOML{place}: {description}", path.display()),
    )
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

/// Resolves a webhook signing secret from its inline value or its `*_file`
/// twin and validates it with [`WebhookSecret::parse`] (`whsec_` + base64
/// of at least [`MIN_SECRET_LEN`] bytes); errors name `key`.
pub fn webhook_secret(
    inline: &SecretSetting,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<Option<WebhookSecret>, ConfigError> {
    secret(inline, file, key)?
        .map(|value| WebhookSecret::parse(value, key))
        .transpose()
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

    /// String keys from the environment are the variable's bytes, however
    /// much they look like numbers or booleans; the numeric, boolean and
    /// list keys still parse theirs.
    #[test]
    fn environment_strings_stay_strings_and_numbers_still_parse() {
        let forty_digits = "1234567890123456789012345678901234567890";
        for value in [
            "000123",
            "1e3",
            "true",
            "0x10",
            forty_digits,
            "1.50",
            "-0",
            "nan",
        ] {
            let settings = load_str(
                "",
                &[
                    ("JOGG_RELAY__SERVER__TOKEN", value),
                    ("JOGG_RELAY__JOGG__API_KEY", value),
                ],
            )
            .unwrap();
            assert_eq!(settings.server.token.0.as_deref(), Some(value));
            assert_eq!(settings.jogg.api_key.0.as_deref(), Some(value));
            let config = settings.validate().unwrap();
            assert_eq!(config.server.token.unwrap().expose_secret(), value);
            assert_eq!(config.jogg.api_key.unwrap().expose_secret(), value);
        }

        let settings = load_str(
            "",
            &[
                ("JOGG_RELAY__JOGG__REQUESTS_PER_SECOND", "1e3"),
                ("JOGG_RELAY__JOGG__BURST", "016"),
                ("JOGG_RELAY__JOGG__MAX_IN_FLIGHT", "4"),
                ("JOGG_RELAY__SERVER__MAX_CONNECTIONS", "64"),
                ("JOGG_RELAY__POLLING__MULTIPLIER", "2"),
                ("JOGG_RELAY__POLLING__JITTER", "0.25"),
                ("JOGG_RELAY__CALLBACKS__ALLOW_PRIVATE_TARGETS", "TRUE"),
                (
                    "JOGG_RELAY__CALLBACKS__URLS",
                    "http://a.example/x, http://b.example/y",
                ),
                ("JOGG_RELAY__CALLBACKS__RETRY_SCHEDULE", "1s"),
            ],
        )
        .unwrap();
        assert_eq!(settings.jogg.requests_per_second, 1000.0);
        assert_eq!(settings.jogg.burst, 16);
        assert_eq!(settings.jogg.max_in_flight, 4);
        assert_eq!(settings.server.max_connections, 64);
        assert_eq!(settings.polling.multiplier, 2.0);
        assert_eq!(settings.polling.jitter, 0.25);
        assert!(settings.callbacks.allow_private_targets);
        assert_eq!(
            settings.callbacks.urls,
            ["http://a.example/x", "http://b.example/y"]
        );
        assert_eq!(settings.callbacks.retry_schedule, ["1s"]);
        let none = load_str("", &[("JOGG_RELAY__CALLBACKS__URLS", "")]).unwrap();
        assert!(none.callbacks.urls.is_empty(), "empty text is no URLs");
        for (name, value, key) in [
            ("JOGG_RELAY__JOGG__BURST", "7.5", "jogg.burst"),
            (
                "JOGG_RELAY__JOGG__MAX_IN_FLIGHT",
                "-1",
                "jogg.max_in_flight",
            ),
            ("JOGG_RELAY__POLLING__JITTER", "a bit", "polling.jitter"),
            (
                "JOGG_RELAY__CALLBACKS__ALLOW_PRIVATE_TARGETS",
                "maybe",
                "callbacks.allow_private_targets",
            ),
        ] {
            assert_eq!(invalid_key("", &[(name, value)]), key, "{name}={value}");
        }
    }

    #[test]
    fn every_invalid_value_names_its_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[server]\nmax_connections = 0\n",
                &[],
                "server.max_connections",
            ),
            (
                "[server]\nheader_timeout = \"0s\"\n",
                &[],
                "server.header_timeout",
            ),
            (
                "[server]\nbody_timeout = \"soon\"\n",
                &[],
                "server.body_timeout",
            ),
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

    /// A file that does not parse is reported by file, line and column,
    /// never with the text around the error: there, an unterminated or
    /// malformed secret would be printed back.
    #[test]
    fn toml_syntax_errors_never_quote_the_source() {
        let marker = "S3CRET-marker-0123456789";
        let files = [
            format!("[jogg]\napi_key = \"{marker}\nburst = 3\n"),
            format!("[jogg]\napi_key = '{marker}\n"),
            format!("[server]\ntoken = \"\"\"{marker}\n"),
            format!("[server]\ntoken = \"{marker}\\q\"\n"),
            format!("[server]\ntoken = {marker}\n"),
            format!("[server]\ntoken = \"{marker}\" trailing\n"),
            format!("[server]\ntoken = \"{marker}\"\ntoken = \"{marker}\"\n"),
            format!("[callbacks]\nsecret = \"whsec_{marker}\\u{{ZZ}}\"\n"),
            format!("{marker} = \n"),
            format!("[{marker}\n"),
        ];
        for (index, text) in files.iter().enumerate() {
            let err = load_str(text, &[]).expect_err(text);
            let shown = err.to_string();
            assert_eq!(err.key, "--config", "{shown}");
            assert!(shown.contains("relay.toml"), "names the file: {shown}");
            assert!(shown.contains(" at line "), "names the line: {shown}");
            for fragment in ["S3CRET", "marker", "0123456789"] {
                assert!(!shown.contains(fragment), "file {index} leaked: {shown}");
            }
        }
        let err = load_str(&files[0], &[]).unwrap_err();
        assert!(err.message.contains("at line 2, column "), "{err}");
    }

    /// Plain http to JoggAI is warned about unless it stays on this
    /// machine (the tests' simulators); the warning shows no credentials.
    #[test]
    fn plain_http_upstream_beyond_loopback_is_warned_about() {
        let warnings = |base_url: &str| {
            let toml = format!("[jogg]\nbase_url = \"{base_url}\"\napi_key = \"sk-key-0123\"\n");
            load_str(&toml, &[])
                .unwrap()
                .validate()
                .unwrap()
                .startup_warnings()
        };
        for quiet in [
            "https://api.jogg.ai",
            "https://203.0.113.9",
            "http://127.0.0.1:9000",
            "http://127.8.0.1",
            "http://[::1]:9000",
            "http://[::ffff:127.0.0.1]",
            "http://localhost:9000",
            "http://LOCALHOST",
            "http://sim.localhost",
        ] {
            assert_eq!(warnings(quiet), Vec::<String>::new(), "{quiet}");
        }
        for loud in [
            "http://api.jogg.ai",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]",
            "http://localhost.example.com",
            "http://user:pa55word@proxy.example.com/",
        ] {
            let shown = warnings(loud);
            assert_eq!(shown.len(), 1, "{loud}: {shown:?}");
            assert!(shown[0].contains("jogg.base_url"), "{shown:?}");
            assert!(
                !shown[0].contains("pa55word") && !shown[0].contains("sk-key"),
                "{shown:?}"
            );
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
        let settings = load_str(
            "[server]\nbind = \"0.0.0.0:8080\"\ntoken = \"t0k-0123456789ab\"\n",
            &[],
        )
        .unwrap();
        assert!(settings.validate().unwrap().server.token.is_some());
    }

    /// Weak secrets are refused by key: a token under 16 characters on a
    /// non-loopback bind, a webhook key under 16 bytes once decoded (the
    /// limits are the boundary cases, so an off-by-one fails here).
    #[test]
    fn weak_secrets_are_refused_by_key() {
        let fifteen = "t0k-0123456789a";
        let sixteen = "t0k-0123456789ab";
        let multibyte = "ñññññññññññññññ"; // 15 characters, 30 bytes
        for (bind, token, accepted) in [
            ("0.0.0.0:8080", fifteen, false),
            ("192.0.2.7:8080", fifteen, false),
            ("[::]:8080", fifteen, false),
            ("0.0.0.0:8080", multibyte, false),
            ("0.0.0.0:8080", sixteen, true),
            ("127.0.0.1:8080", "short", true),
            ("[::1]:8080", "short", true),
        ] {
            let toml = format!("[server]\nbind = \"{bind}\"\ntoken = \"{token}\"\n");
            let result = load_str(&toml, &[]).unwrap().validate();
            match (result, accepted) {
                (Ok(_), true) => {}
                (Err(err), false) => {
                    assert_eq!(err.key, "server.token", "{err}");
                    assert!(!err.to_string().contains(token), "{err}");
                }
                (result, _) => panic!("{bind} {token}: {result:?}"),
            }
        }
        // From the token file too, and from the environment.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{fifteen}\n")).unwrap();
        let toml = format!(
            "[server]\nbind = \"0.0.0.0:8080\"\ntoken_file = {:?}\n",
            file.display().to_string()
        );
        assert_eq!(invalid_key(&toml, &[]), "server.token");
        assert_eq!(
            invalid_key(
                "[server]\nbind = \"0.0.0.0:8080\"\n",
                &[("JOGG_RELAY__SERVER__TOKEN", fifteen)]
            ),
            "server.token"
        );

        // 15 and 16 bytes after base64 decoding.
        let short = "whsec_MDEyMzQ1Njc4OWFiY2Rl";
        let enough = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==";
        let err = load_str(&format!("[callbacks]\nsecret = \"{short}\"\n"), &[])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.key, "callbacks.secret");
        assert!(!err.to_string().contains("MDEyMzQ1Njc4OWFiY2Rl"), "{err}");
        load_str(&format!("[callbacks]\nsecret = \"{enough}\"\n"), &[])
            .unwrap()
            .validate()
            .unwrap();
        std::fs::write(&file, format!("{short}\n")).unwrap();
        let toml = format!(
            "[callbacks]\nsecret_file = {:?}\n",
            file.display().to_string()
        );
        assert_eq!(invalid_key(&toml, &[]), "callbacks.secret");
        // The reusable check names whichever key it is given.
        let err =
            WebhookSecret::parse(SecretString::from(short), "callbacks.video_secret").unwrap_err();
        assert_eq!(err.key, "callbacks.video_secret");
        let err = webhook_secret(
            &SecretSetting(Some(short.into())),
            &None,
            "callbacks.video_secret",
        )
        .unwrap_err();
        assert_eq!(err.key, "callbacks.video_secret");
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
             [callbacks]\nsecret = \"whsec_c2VjcmV0LTMtbG9uZy1lbm91Z2gh\"\n",
            &[],
        )
        .unwrap();
        let config = settings.validate().unwrap();
        for rendering in [
            settings.to_redacted_toml(),
            format!("{settings:?}"),
            format!("{config:?}"),
        ] {
            for secret in [
                "tok-SECRET-1",
                "key-SECRET-2",
                "c2VjcmV0LTMtbG9uZy1lbm91Z2gh",
            ] {
                assert!(
                    !rendering.contains(secret),
                    "{secret} leaked in {rendering}"
                );
            }
        }
        assert!(settings.to_redacted_toml().contains("[redacted]"));
    }

    #[test]
    fn video_secret_is_validated_named_and_redacted() {
        assert_eq!(
            invalid_key("[callbacks]\nvideo_secret = \"not-whsec\"\n", &[]),
            "callbacks.video_secret"
        );
        let settings = load_str(
            "[callbacks]\nvideo_secret = \"whsec_dmlkZW8tU0VDUkVULTQta2V5\"\n",
            &[],
        )
        .unwrap();
        let config = settings.validate().unwrap();
        assert_eq!(
            config.callbacks.video_secret.as_ref().map(|s| s.key()),
            Some(&b"video-SECRET-4-key"[..])
        );
        assert!(config.callbacks.secret.is_none());
        for rendering in [settings.to_redacted_toml(), format!("{config:?}")] {
            assert!(
                !rendering.contains("dmlkZW8tU0VDUkVULTQta2V5"),
                "{rendering}"
            );
        }
    }

    #[test]
    fn webhook_secret_keeps_both_forms() {
        let secret = WebhookSecret::parse(
            SecretString::from("whsec_aGVsbG8sIHdlYmhvb2sgd29ybGQ="),
            "callbacks.secret",
        )
        .unwrap();
        assert_eq!(secret.key(), b"hello, webhook world");
        assert_eq!(
            secret.full().expose_secret(),
            "whsec_aGVsbG8sIHdlYmhvb2sgd29ybGQ="
        );
    }
}
