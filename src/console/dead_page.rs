//! The dead deliveries page's HTML (README, "Console"), with maud as in
//! [`pages`](super::pages): every value escaped, URLs and errors shown as
//! text, never as links.

use maud::{Markup, html};

use super::csrf;
use super::deliveries::{DeadList, REDELIVER_PATH, VIDEO_FIELD, page_href};
use super::pages::{layout, or_dash, time};
use super::session::Session;
use super::videos::video_href;
use crate::domain::Millis;

/// A redeliver form for `videos`, with the session's CSRF token.
fn redeliver_form(session: &Session, videos: &[&str], id: Option<&str>, label: &str) -> Markup {
    html! {
        form.action method="post" action=(REDELIVER_PATH) id=[id] {
            input type="hidden" name=(csrf::FIELD) value=(session.csrf);
            @for video in videos {
                input type="hidden" name=(VIDEO_FIELD) value=(video);
            }
            button type="submit" { (label) }
        }
    }
}

/// The page: the notice of the button just pressed, "redeliver all shown",
/// the rows with a button each, and the paging links.
pub fn page(view: &DeadList, session: &Session, logout_csrf: Option<&str>) -> Markup {
    let shown = view.shown_videos();
    layout(
        "Dead deliveries",
        logout_csrf,
        html! {
            h2 { "Dead deliveries" }
            @if let Some(notice) = view.notice {
                p.notice id="flash" {
                    "Queued again: " (notice.redelivered) " video(s), with the same event id."
                    @if notice.skipped > 0 {
                        " Skipped " (notice.skipped)
                        " no longer tracked or without an event."
                    }
                }
            }
            p.muted {
                "Callbacks the relay gave up on, the latest death first. Redelivering a row \
                 queues its video's event again, with the same event id, to every current \
                 target of the video (callbacks.urls and its own callback_url), including \
                 targets that already had it, as POST /v1/videos/{id}/redeliver does."
            }
            @if view.rows.is_empty() {
                p.muted id="no-dead" { "No dead delivery." }
            } @else {
                (redeliver_form(
                    session,
                    &shown,
                    Some("redeliver-all"),
                    &format!("Redeliver all shown ({} video(s))", shown.len()),
                ))
                table id="dead" {
                    thead { tr {
                        th { "Video" } th { "Callback URL" } th.num { "Attempts" }
                        th { "Last answer" } th { "Died" } th {}
                    } }
                    tbody {
                        @for row in &view.rows {
                            tr data-video=(row.video_id) {
                                td.mono { a.video href=(video_href(&row.video_id)) { (row.video_id) } }
                                td.mono.url { (row.url) }
                                td.num { (row.attempts) }
                                td.mono.answer {
                                    @if let Some(status) = row.last_status { "HTTP " (status) " " }
                                    @if let Some(error) = &row.last_error { (error) " " }
                                    @if let Some(reason) = &row.reason { "(" (reason) ")" }
                                    @if row.last_status.is_none() && row.last_error.is_none() && row.reason.is_none() {
                                        (or_dash(None::<&str>))
                                    }
                                }
                                td { time { (time(Millis(row.died_at))) } }
                                td { (redeliver_form(session, &[row.video_id.as_str()], None, "Redeliver")) }
                            }
                        }
                    }
                }
            }
            p.paging {
                @if view.paged {
                    a id="first" href=(page_href(None)) { "First page" }
                    " "
                }
                @if let Some(next) = &view.next {
                    a id="next" href=(next) { "Next page" }
                }
            }
        },
    )
}
