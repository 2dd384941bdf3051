//! `jogg-relay export-renders`: every finished render (a video JoggAI
//! reported completed or failed) as CSV, oldest first, with the times the
//! learned schedule learns from (README, "Command line").
//!
//! The rows are read a page at a time along the store's `(terminal_at,
//! rowid)` cursor and written as they come, so a database of millions of
//! finished videos is exported in constant memory.

use std::io::Write;
use std::time::Duration;

use tracing::instrument;

use crate::domain::Millis;
use crate::poller::learning::observation;
use crate::store::{FinishedRender, Store, StoreError};

/// The CSV header. Programs read the file by these names (the workload
/// replay does), so they are part of the interface: change them only with
/// their readers.
pub const RENDERS_CSV_HEADER: &str = "video_id,state,started_at,finished_after_seconds,\
finished_before_seconds,processing_seen_seconds";

/// Rows read from the database per query.
const PAGE: u32 = 1000;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database could not be read.
    #[error("cannot read the finished renders: {0}")]
    Store(#[from] StoreError),
    /// The output could not be written.
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes the header and one row per finished render in `store` to `out`,
/// oldest first; returns the number of rows. `give_up_after` is
/// `polling.give_up_after`, which decides whether JoggAI's `created_at` is
/// trusted as the start (see [`crate::adaptive::started_at`]).
#[instrument(skip_all)]
pub async fn write_renders(
    store: &Store,
    give_up_after: Duration,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    writeln!(out, "{RENDERS_CSV_HEADER}")?;
    let mut rows = 0u64;
    let mut after = None;
    loop {
        let page = store.finished_renders(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.terminal_at, last.id));
        for render in &page {
            writeln!(out, "{}", row(render, give_up_after))?;
        }
        rows += page.len() as u64;
    }
    out.flush()?;
    Ok(rows)
}

/// One CSV row (without the line end) for `render`: the times are in
/// seconds since its start, as the learner measures them.
pub fn row(render: &FinishedRender, give_up_after: Duration) -> String {
    let seen = observation(render, give_up_after);
    let since_start = |at: Millis| seconds(at.0.saturating_sub(seen.started_at.0));
    // Never seen unfinished: the first answer was already terminal, so all
    // that is known is that it finished after its start.
    let after = seen
        .unfinished_seen_at
        .map_or_else(|| seconds(0), since_start);
    let processing = seen.rendering_seen_at.map(since_start).unwrap_or_default();
    [
        field(&render.video_id),
        field(&render.state),
        seen.started_at.to_rfc3339(),
        after,
        since_start(Millis(render.terminal_at)),
        processing,
    ]
    .join(",")
}

/// Milliseconds as seconds with exactly three decimals, computed on
/// integers so no value is rounded; a negative span (a poll clock behind
/// the start) is 0, as the learner takes it.
fn seconds(millis: i64) -> String {
    let millis = millis.max(0);
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// `text` as a CSV field (RFC 4180): quoted, with quotes doubled, when it
/// holds a comma, a quote or a line break. Video ids are validated at
/// enqueue and never do, but a database written by another version is not
/// trusted to keep the file parseable.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render() -> FinishedRender {
        FinishedRender {
            id: 1,
            video_id: "v-1".into(),
            state: "completed".into(),
            enqueued_at: 1_700_000_000_000,
            created_at: None,
            unfinished_seen_at: Some(1_700_000_042_250),
            rendering_seen_at: Some(1_700_000_010_001),
            terminal_at: 1_700_000_052_999,
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_row_has_the_times_since_the_start_in_milliseconds() {
        assert_eq!(
            row(&render(), DAY),
            "v-1,completed,2023-11-14T22:13:20.000Z,42.250,52.999,10.001"
        );
    }

    #[test]
    fn missing_times_are_zero_after_and_empty_processing() {
        let render = FinishedRender {
            unfinished_seen_at: None,
            rendering_seen_at: None,
            state: "failed".into(),
            ..render()
        };
        assert_eq!(
            row(&render, DAY),
            "v-1,failed,2023-11-14T22:13:20.000Z,0.000,52.999,"
        );
    }

    #[test]
    fn a_plausible_created_at_is_the_start() {
        // Created 10 s before the enqueue: the start is the middle of that
        // second, and every time is measured from it.
        let render = FinishedRender {
            created_at: Some(1_699_999_990),
            ..render()
        };
        assert_eq!(
            row(&render, DAY),
            "v-1,completed,2023-11-14T22:13:10.500Z,51.750,62.499,19.501"
        );
    }

    #[test]
    fn fields_with_separators_or_quotes_are_quoted() {
        assert_eq!(field("plain-id_1"), "plain-id_1");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        let render = FinishedRender {
            video_id: "odd,\"id\"".into(),
            ..render()
        };
        assert!(row(&render, DAY).starts_with("\"odd,\"\"id\"\"\",completed,"));
    }

    #[test]
    fn seconds_keep_three_decimals_and_never_go_negative() {
        assert_eq!(seconds(0), "0.000");
        assert_eq!(seconds(7), "0.007");
        assert_eq!(seconds(86_400_123), "86400.123");
        assert_eq!(seconds(-5), "0.000");
    }
}
