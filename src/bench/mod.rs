//! `jogg-relay bench`: measures the real daemon (this binary's `serve`, as a
//! child process, so its CPU time and memory are its own) against the
//! simulated upstream and receiver on loopback.
//!
//! Two benchmarks share the machinery here (the relay child process, its
//! configuration, the load helpers):
//!
//! - the scales ([`run`], `scale`): throughput, CPU and memory at several
//!   numbers of tracked videos, on SQLite or on a throwaway PostgreSQL
//!   cluster (`backend`), with one relay or (PostgreSQL) several sharing
//!   the database;
//! - `bench --schedule` ([`run_schedule`], `schedule`): how soon the relay
//!   notices renders finish, and how many polls that costs, per polling
//!   strategy, on the reference workload.

mod backend;
mod load;
mod relay;
mod scale;
mod schedule;

pub use backend::BenchBackend;
pub use scale::{BenchOptions, DEFAULT_CLIENTS, run};
pub use schedule::{ScheduleOptions, StrategyChoice, run_schedule};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::sim::{SIM_API_KEY, SimUpstream, Timeline};

/// The callbacks' signing secret in both benchmarks.
const SECRET: &str = "whsec_YmVuY2htYXJrLXNpZ25pbmctc2VjcmV0";

/// Writes the relay's configuration to `dir/relay.toml`: loopback on any
/// port, the database at `database_url`, the simulator as JoggAI, then
/// `extra` (more keys of `[jogg]`, then sections).
fn write_config(
    dir: &Path,
    sim: &SimUpstream,
    database_url: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\
             [database]\nurl = \"{database_url}\"\n\
             [jogg]\nbase_url = \"{}\"\napi_key = \"{SIM_API_KEY}\"\nmax_in_flight = 64\n{extra}",
            sim.base_url,
        ),
    )?;
    Ok(path)
}

/// The URL of a SQLite database `bench.db` in `dir`.
fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/bench.db", dir.display())
}

/// Scripts `count` videos named `{prefix}-{i}` with `timeline`; their ids.
fn script_videos(sim: &SimUpstream, prefix: &str, count: usize, timeline: Timeline) -> Vec<String> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            sim.state.script(&id, timeline.clone());
            id
        })
        .collect()
}

/// The `p` quantile (0 to 1) of `sorted`, nearest rank; NaN when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A figure with `decimals` decimals, or `–` for a phase that did not run.
fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Enqueues `ids` in batches of 1,000, round-robin over the relays at
/// `bases` starting with `bases[first % n]` (one relay, or the load spread
/// over several).
async fn enqueue_batches(
    client: &reqwest::Client,
    bases: &[String],
    first: usize,
    ids: &[String],
) -> anyhow::Result<()> {
    for (i, chunk) in ids.chunks(1000).enumerate() {
        let base = &bases[(first + i) % bases.len()];
        let videos: Vec<Value> = chunk.iter().map(|id| json!({"video_id": id})).collect();
        let response = client
            .post(format!("{base}/v1/videos/batch"))
            .json(&json!({"videos": videos}))
            .send()
            .await?;
        if response.status() != 200 {
            bail!("batch answered {}", response.status());
        }
    }
    Ok(())
}

/// Checks `done` every 5 ms until it holds (a benchmark, not a test).
async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
