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
//!
//! Files: `settings` (the written form and its defaults), `validated` (the
//! checked form), `from_text` (how environment text becomes numbers, flags
//! and lists), and here the loading of the layers and the validation that
//! turns one into the other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::adaptive::AdaptiveSettings;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

/// The documented default configuration, shipped in the repository.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/default.toml");

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

mod from_text;
mod settings;
#[cfg(test)]
mod tests;
mod validated;

pub use settings::{
    CallbacksSettings, DatabaseSettings, JoggSettings, LogSettings, PollingSettings, SecretSetting,
    ServerSettings, Settings, redact_database_url,
};
pub use validated::{
    CallbacksConfig, Config, DatabaseBackend, DatabaseConfig, JoggConfig, LogConfig, LogFormat,
    PollStrategy, PollingConfig, ServerConfig, WebhookSecret,
};

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
            let table = toml::from_str::<toml::Table>(&text)
                .map_err(|err| toml_syntax_error(path, &text, &err))?;
            check_string_keys(&table)?;
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
        let write_timeout = positive_duration(&server.write_timeout, "server.write_timeout")?;
        let webhook_bind = server
            .webhook_bind
            .as_deref()
            .map(|raw| {
                let address: SocketAddr = raw.parse().map_err(|_| {
                    ConfigError::new(
                        "server.webhook_bind",
                        format!("{raw:?} is not an address like 0.0.0.0:8443"),
                    )
                })?;
                // Port 0 asks the system for a free port, a different one
                // for each listener, so only a fixed port can clash.
                if address == bind && address.port() != 0 {
                    return Err(ConfigError::new(
                        "server.webhook_bind",
                        format!("{address} is server.bind already; use another port"),
                    ));
                }
                Ok(address)
            })
            .transpose()?;

        let database = database_config(&self.database)?;

        let jogg = &self.jogg;
        let base_url = http_url(&jogg.base_url, "jogg.base_url")?;
        let api_key = secret(&jogg.api_key, &jogg.api_key_file, "jogg.api_key")?;
        let jogg_timeout = positive_duration(&jogg.timeout, "jogg.timeout")?;
        if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&jogg.requests_per_second)
        {
            return Err(ConfigError::new(
                "jogg.requests_per_second",
                format!(
                    "must be a number from {MIN_REQUESTS_PER_SECOND} to \
                     {MAX_REQUESTS_PER_SECOND}, got {}",
                    jogg.requests_per_second
                ),
            ));
        }
        if !(1..=MAX_BURST).contains(&jogg.burst) {
            return Err(ConfigError::new(
                "jogg.burst",
                format!("must be from 1 to {MAX_BURST}, got {}", jogg.burst),
            ));
        }
        if jogg.max_in_flight == 0 {
            return Err(ConfigError::new("jogg.max_in_flight", "must be at least 1"));
        }
        let max_pause = duration(&jogg.max_pause, "jogg.max_pause")?;
        let jogg_webhook_secret = secret(
            &jogg.webhook_secret,
            &jogg.webhook_secret_file,
            "jogg.webhook_secret",
        )?;
        if let Some(secret) = &jogg_webhook_secret
            && secret.expose_secret().len() < MIN_SECRET_LEN
        {
            // JoggAI shows the secret when the endpoint is registered; a
            // short one could be brute-forced from one signed push.
            return Err(ConfigError::new(
                "jogg.webhook_secret",
                format!(
                    "must be at least {MIN_SECRET_LEN} bytes (the secret JoggAI shows for the endpoint)"
                ),
            ));
        }
        if webhook_bind.is_some() && jogg_webhook_secret.is_none() {
            return Err(ConfigError::new(
                "server.webhook_bind",
                "serves only POST /webhooks/jogg, which needs jogg.webhook_secret (or \
                 jogg.webhook_secret_file); set it or remove server.webhook_bind",
            ));
        }
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
        let give_up_after = positive_duration(&polling.give_up_after, "polling.give_up_after")?;
        let safety_net_interval =
            positive_duration(&polling.safety_net_interval, "polling.safety_net_interval")?;
        let strategy = match polling.strategy.as_str() {
            "exponential" => PollStrategy::Exponential,
            "adaptive" => PollStrategy::Adaptive,
            other => {
                return Err(ConfigError::new(
                    "polling.strategy",
                    format!("must be \"adaptive\" or \"exponential\", got {other:?}"),
                ));
            }
        };
        // Beyond half, two polls would cover the whole distribution: the
        // schedule degenerates into max_interval polling.
        if !(polling.adaptive_step.is_finite()
            && polling.adaptive_step >= 0.001
            && polling.adaptive_step <= 0.5)
        {
            return Err(ConfigError::new(
                "polling.adaptive_step",
                format!(
                    "must be a fraction from 0.001 to 0.5, got {}",
                    polling.adaptive_step
                ),
            ));
        }
        if !(1..=MAX_HALF_LIFE).contains(&polling.adaptive_half_life) {
            return Err(ConfigError::new(
                "polling.adaptive_half_life",
                format!(
                    "must be from 1 to {MAX_HALF_LIFE} videos, got {}",
                    polling.adaptive_half_life
                ),
            ));
        }
        // The learner keeps no more finished videos than that; a larger
        // warm-up could never be reached.
        let kept = crate::adaptive::finished_kept(polling.adaptive_half_life) as u32;
        if !(1..=kept).contains(&polling.adaptive_warmup) {
            return Err(ConfigError::new(
                "polling.adaptive_warmup",
                format!(
                    "must be from 1 to {kept} finished videos (the most the learner keeps with \
                     polling.adaptive_half_life = {}), got {}",
                    polling.adaptive_half_life, polling.adaptive_warmup
                ),
            ));
        }

        let callbacks = &self.callbacks;
        let urls = callbacks
            .urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                // Webhook URLs often carry a token in their path or query,
                // so the entry is named by position, never shown.
                http_url(url, "callbacks.urls").map_err(|_| {
                    ConfigError::new(
                        "callbacks.urls",
                        format!(
                            "entry {} is not an http:// or https:// URL with a host",
                            index + 1
                        ),
                    )
                })
            })
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
                write_timeout,
                webhook_bind,
                console: server.console,
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
                webhook_secret: jogg_webhook_secret.clone(),
                adopt_untracked: jogg.adopt_untracked,
            },
            polling: PollingConfig {
                first_after: duration(&polling.first_after, "polling.first_after")?,
                min_interval,
                max_interval,
                multiplier: polling.multiplier,
                jitter: polling.jitter,
                give_up_after,
                not_found_grace: duration(&polling.not_found_grace, "polling.not_found_grace")?,
                strategy,
                adaptive: AdaptiveSettings {
                    step: polling.adaptive_step,
                    half_life: polling.adaptive_half_life,
                    warmup: polling.adaptive_warmup,
                    horizon: give_up_after,
                },
                safety_net: jogg_webhook_secret.is_some().then_some(safety_net_interval),
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
    // its first line is kept, and any value it quotes between backticks
    // (`integer \`123…\``) is left out: that value may be a secret.
    let first_line = err.message().lines().next().unwrap_or("invalid TOML");
    let description = without_quoted_values(first_line);
    ConfigError::new(
        "--config",
        format!("{} is not valid TOML{place}: {description}", path.display()),
    )
}

/// `text` with every part between backticks replaced by `…`.
fn without_quoted_values(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    for (index, part) in text.split('`').enumerate() {
        // Even parts are outside backticks, odd ones inside.
        kept.push_str(if index % 2 == 0 { part } else { "…" });
    }
    kept
}

/// Keys written in the file that must be TOML strings. The config crate
/// would turn `api_key = 123` into the text `"123"` (and a number too large
/// for an integer into an error quoting it), so a secret or path written
/// without quotes is refused by name instead of silently reinterpreted.
/// Secrets and `*_file` paths have no default to learn their type from;
/// every other string key is found in the defaults.
fn check_string_keys(table: &toml::Table) -> Result<(), ConfigError> {
    const UNSET_STRING_KEYS: &[&str] = &[
        "server.token",
        "server.token_file",
        "jogg.api_key",
        "jogg.api_key_file",
        "callbacks.secret",
        "callbacks.secret_file",
        "callbacks.video_secret",
        "callbacks.video_secret_file",
        "jogg.webhook_secret",
        "jogg.webhook_secret_file",
        "server.webhook_bind",
        "database.url_file",
    ];
    let defaults = toml::Table::try_from(Settings::default()).unwrap_or_default();
    for (section, keys) in table {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (key, value) in keys {
            let name = format!("{section}.{key}");
            let is_string_key = UNSET_STRING_KEYS.contains(&name.as_str())
                || defaults
                    .get(section)
                    .and_then(|defaults| defaults.get(key))
                    .is_some_and(toml::Value::is_str);
            if is_string_key && !value.is_str() {
                return Err(ConfigError::new(
                    &name,
                    format!("must be a string in quotes, not a {}", value.type_str()),
                ));
            }
        }
    }
    Ok(())
}

/// Parses a duration string such as `"250ms"`, `"10s"` or `"48h"`.
fn duration(raw: &str, key: &str) -> Result<Duration, ConfigError> {
    let parsed = humantime::parse_duration(raw.trim()).map_err(|err| {
        ConfigError::new(
            key,
            format!("{raw:?} is not a duration like \"250ms\", \"10s\" or \"48h\" ({err})"),
        )
    })?;
    if parsed > MAX_DURATION {
        return Err(ConfigError::new(
            key,
            format!("{raw:?} is longer than the longest duration accepted, 3650d"),
        ));
    }
    Ok(parsed)
}

/// Slowest budget accepted: one request in about 17 minutes. Slower is no
/// budget a relay can work with, and the schedule arithmetic stays within
/// representable times.
const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
/// Fastest budget accepted; beyond it the interval between requests would
/// round to nothing, which would be no limit at all.
const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;
/// Largest burst accepted (a bucket of a whole day at the slowest budget
/// stays far within representable times).
const MAX_BURST: u32 = 100_000;

/// Largest `polling.adaptive_half_life`: the learner keeps ten half-lives of
/// videos (twice that with unfinished ones) and refits them every so often
/// under a lock the polls take, so this bounds its memory and its pauses.
const MAX_HALF_LIFE: u32 = 1_000;

/// Longest duration any key accepts (ten years): far beyond any sensible
/// schedule, and short enough that every time computed from it stays a
/// representable date.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

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

/// Resolves the database URL from `database.url` or, when set,
/// `database.url_file` (whose trailing newline is dropped). `url` has a
/// default, so the file wins only over that default: a `url` of its own
/// beside the file is refused as ambiguous.
fn database_config(settings: &DatabaseSettings) -> Result<DatabaseConfig, ConfigError> {
    let Some(path) = &settings.url_file else {
        return DatabaseConfig::parse(&settings.url);
    };
    if settings.url != DatabaseSettings::default().url {
        return Err(ConfigError::new(
            "database.url",
            "set either database.url or database.url_file, not both",
        ));
    }
    let path = credential_path(path);
    let text = std::fs::read_to_string(&path).map_err(|err| {
        ConfigError::new(
            "database.url_file",
            format!("cannot read {}: {err}", path.display()),
        )
    })?;
    DatabaseConfig::parse(text.trim_end_matches(['\r', '\n'])).map_err(|err| {
        ConfigError::new(
            "database.url_file",
            format!("{}: {}", path.display(), err.message),
        )
    })
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
