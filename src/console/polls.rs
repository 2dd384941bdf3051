//! The video page's polls (README, "Console").
//!
//! The relay does not store polls one by one: a row per poll would be a
//! write on the hot path for every answer. What the page shows is what
//! the video's row keeps: the count, the last poll's time and what it
//! learned (the upstream status, or that it failed, and how many in a
//! row: the failure's text is only in the log), the next due time, a
//! poller's lease, and a push waiting for its confirming poll.

use maud::{Markup, html};

use super::pages::{or_dash, time, time_or_dash};
use crate::domain::{Millis, VideoState};
use crate::store::{PollingRecord, VideoRecord};

/// The polls section: `polling` is `None` only if the row vanished
/// between the page's reads (then only the count is shown).
pub fn section(video: &VideoRecord, polling: Option<&PollingRecord>, now: Millis) -> Markup {
    let active = video.state == VideoState::Active;
    html! {
        h2 { "Polls" }
        table.fields id="polls" {
            tbody {
                tr { th { "Polls made" } td id="poll-count" { (video.polls) } }
                @if let Some(polling) = polling {
                    tr { th { "Last poll" } td id="poll-last" { (time_or_dash(polling.polled_at)) } }
                    tr { th { "What it saw" } td id="poll-saw" { (saw(video, polling)) } }
                }
                tr { th { "Next poll due" } td id="poll-next" {
                    @if active { (time_or_dash(video.next_poll_at)) }
                    @else { span.muted { "— (no longer polled: " (video.state.as_str()) ")" } }
                } }
                @if let Some(polling) = polling {
                    tr { th { "Claimed" } td id="poll-lease" { (lease(polling.lease_until, now)) } }
                    @if let Some(at) = polling.hinted_at {
                        tr { th { "Push" } td id="poll-push" {
                            @if active {
                                "A push arrived at " time { (time(Millis(at))) }
                                "; its confirming poll is due."
                            } @else {
                                "The ending was learned by a push at " time { (time(Millis(at))) } "."
                            }
                        } }
                    }
                }
            }
        }
        p.muted {
            "Polls are counted, not logged one by one; an error's text is in the relay's log."
        }
    }
}

/// The last poll's outcome: nothing yet, failures in a row, or the
/// upstream status it answered (and for how many answers it has not
/// changed).
fn saw(video: &VideoRecord, polling: &PollingRecord) -> Markup {
    html! {
        @if polling.polled_at.is_none() {
            span.muted { "— (not polled yet)" }
        } @else if polling.error_streak > 0 {
            span.error { "failed" } " ("
            (polling.error_streak) " failed poll(s) in a row; last status answered: "
            span.mono { (or_dash(video.upstream_status.as_deref())) } ")"
        } @else {
            "status " span.mono { (or_dash(video.upstream_status.as_deref())) }
            @if polling.unchanged_polls > 0 {
                " (unchanged for " (polling.unchanged_polls) " answer(s))"
            }
        }
    }
}

/// Who holds the video: a live lease (the store does not record which
/// relay or worker holds it), an expired one, or none.
fn lease(lease_until: Option<i64>, now: Millis) -> Markup {
    html! {
        @match lease_until {
            Some(until) if until > now.0 => {
                "By a poller, lease until " time { (time(Millis(until))) }
                " (which relay holds it is not stored)."
            }
            Some(until) => {
                "Lease expired at " time { (time(Millis(until))) }
                " without an answer; any poller may take the video again."
            }
            None => { span.muted { "No" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease is live until its end, then expired; none is "No".
    #[test]
    fn leases_are_live_expired_or_absent() {
        let text = |lease_until| lease(lease_until, Millis(2_000)).into_string();
        assert!(text(Some(2_001)).starts_with("By a poller, lease until"));
        assert!(text(Some(2_000)).starts_with("Lease expired at"));
        assert!(text(None).contains("No"));
    }
}
