//! Logging set-up (`tracing` to standard error, filtered by `RUST_LOG`)
//! and the Prometheus [`metrics`].
//!
//! Spans on the per-request, per-poll and per-commit paths are at `debug`:
//! at the default filter they are never built (building one formats its
//! fields and registers it, on every poll), and the `info` events on those
//! paths carry the ids they concern themselves.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset: the relay's own events at
/// `info`, the libraries' only when they warn.
pub const DEFAULT_FILTER: &str = "warn,jogg_relay=info";

/// Installs the global subscriber, filtered by `RUST_LOG` or else by
/// `default_filter`. Text is coloured only on a terminal, so the journal and
/// log files get plain lines. Calling it twice is harmless (the second call
/// changes nothing), which keeps tests simple.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
