//! Logging set-up (`tracing` to standard error, filtered by `RUST_LOG`)
//! and the Prometheus [`metrics`].
//!
//! Spans on the per-request, per-poll and per-commit paths are at `debug`:
//! at the default filter they are never built (building one formats its
//! fields and registers it, on every poll), and the `info` events on those
//! paths carry the ids they concern themselves.
//!
//! Logging never fails the code that logs: a standard error that is closed
//! or a broken pipe loses the lines (they are counted, see
//! [`log_write_errors`]) but never panics a task.

pub mod metrics;
pub mod process;
pub mod request_rate;

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset: the relay's own events at
/// `info`, the libraries' only when they warn.
pub const DEFAULT_FILTER: &str = "warn,jogg_relay=info";

/// Log lines that could not be written to standard error.
static LOG_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many log lines were lost because standard error could not be
/// written (closed, a broken pipe, a full disk behind a redirect).
pub fn log_write_errors() -> u64 {
    LOG_WRITE_ERRORS.load(Ordering::Relaxed)
}

/// Standard error for the log, made infallible: a failed write is counted
/// and reported as done.
///
/// Why: tracing-subscriber's fmt layer reports a failed write with
/// `eprintln!`, and `eprintln!` panics when standard error itself is broken
/// (EPIPE), which killed whichever task logged next (the poller, the signal
/// handler). Returning `Ok` means that path is never taken; internal error
/// reporting is also switched off in [`init`] for good measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One call per line, through the locked handle: lines from several
        // threads are not interleaved.
        if io::stderr().lock().write_all(buf).is_err() {
            LOG_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Why `RUST_LOG` was not used.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not UTF-8.
    #[error("RUST_LOG is not valid UTF-8")]
    NotUnicode,
    /// Not a filter `tracing-subscriber` understands.
    #[error("RUST_LOG={value:?} is not a valid filter: {source}")]
    Invalid {
        /// The variable's value.
        value: String,
        /// The parser's error.
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The filter for `rust_log` (the value of `RUST_LOG`, if set): it parsed,
/// or `default_filter` and why `rust_log` could not be used.
pub fn filter_from(
    rust_log: Option<std::ffi::OsString>,
    default_filter: &str,
) -> (EnvFilter, Option<FilterError>) {
    let fallback = || EnvFilter::new(default_filter);
    let Some(value) = rust_log.filter(|value| !value.is_empty()) else {
        return (fallback(), None);
    };
    let Some(value) = value.to_str() else {
        return (fallback(), Some(FilterError::NotUnicode));
    };
    match EnvFilter::builder().parse(value) {
        Ok(filter) => (filter, None),
        Err(source) => (
            fallback(),
            Some(FilterError::Invalid {
                value: value.to_owned(),
                source,
            }),
        ),
    }
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else by
/// `default_filter`. An invalid `RUST_LOG` is not silently replaced: the
/// relay starts with `default_filter` and its first log line is a warning
/// naming the variable and the parse error (README, "Logs").
///
/// Text is coloured only on a terminal, so the journal and log files get
/// plain lines. Calling it twice is harmless (the second call changes
/// nothing), which keeps tests simple.
pub fn init(format: LogFormat, default_filter: &str) {
    let (filter, problem) = filter_from(std::env::var_os("RUST_LOG"), default_filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    if let (Ok(()), Some(problem)) = (installed, problem) {
        tracing::warn!(error = %problem, default = default_filter, "ignoring RUST_LOG; using the default filter");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_rust_log_is_used_and_an_invalid_one_is_reported() {
        let (filter, problem) = filter_from(Some("debug,hyper=warn".into()), "warn");
        assert!(problem.is_none());
        assert_eq!(filter.to_string(), "hyper=warn,debug");

        let (filter, problem) = filter_from(None, "warn");
        assert!(problem.is_none());
        assert_eq!(filter.to_string(), "warn");

        let (filter, problem) = filter_from(Some("jogg_relay=loud".into()), "warn");
        let message = problem.expect("reported").to_string();
        assert!(
            message.contains("RUST_LOG") && message.contains("jogg_relay=loud"),
            "{message}"
        );
        assert_eq!(filter.to_string(), "warn", "the default is used instead");
    }
}
