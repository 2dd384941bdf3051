//! The console's HTML, server-rendered with maud: every interpolated value
//! is escaped by the template macro (nothing here opts out with
//! `PreEscaped`), and no page needs JavaScript.

use maud::{DOCTYPE, Markup, html};

use super::assets::CSS_PATH;
use super::csrf;
use super::overview::{HOURS_PLOTTED, Overview};
use super::plots;
use super::session::Session;
use super::videos::{VideoList, VideoView, list_href, video_href};
use crate::domain::{Millis, VideoState};
use crate::poller::gate::GlobalPause;

/// A page: the header (with a logout button when `logout_csrf` is given:
/// the session's CSRF token), then `body`.
pub fn layout(title: &str, logout_csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jogg-relay" }
                link rel="stylesheet" href=(CSS_PATH);
            }
            body {
                header {
                    h1 { "jogg-relay" }
                    nav {
                        a href="/ui/" id="nav-overview" { "Overview" }
                        " · "
                        a href="/ui/videos" id="nav-videos" { "Videos" }
                        " · "
                        a href=(super::deliveries::PATH) id="nav-dead" { "Dead deliveries" }
                    }
                    @if let Some(token) = logout_csrf {
                        form method="post" action="/ui/logout" {
                            input type="hidden" name=(csrf::FIELD) value=(token);
                            button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form, with `message` above it when an attempt was refused.
pub fn login(message: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            form.login method="post" action="/ui/login" {
                h2 { "Log in" }
                @if let Some(message) = message {
                    p.error id="login-error" { (message) }
                }
                label for="token" { "The relay's token (" code { "server.token" } ")" }
                input type="password" id="token" name="token" autocomplete="current-password" required autofocus;
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

/// A page that only says `message` (errors).
pub fn message(title: &str, message: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h2 { (title) }
            p { (message) }
            p { a href="/ui/" { "Back to the overview" } }
        },
    )
}

/// An RFC 3339 time.
pub(super) fn time(at: Millis) -> String {
    at.to_rfc3339()
}

/// A figure with its label, `id` for tests and links.
fn card(id: &str, label: &str, value: impl maud::Render, bad: bool) -> Markup {
    html! {
        div.card.bad[bad] id=(id) {
            span.n { (value) }
            span.label { (label) }
        }
    }
}

/// The overview (README, "Console").
pub fn overview(view: &Overview, logout_csrf: Option<&str>) -> Markup {
    layout(
        "Overview",
        logout_csrf,
        html! {
            @if let Some(pause) = view.pause {
                div.notice id="pause" {
                    @match pause {
                        GlobalPause::Refused { .. } => {
                            "Polling is paused: JoggAI refuses the relay's requests ("
                            code { (pause.reason()) } "). Next probe at "
                            time { (time(pause.ends_at())) } "."
                        }
                        GlobalPause::RateLimited { .. } => {
                            "Polling is paused: JoggAI asked the relay to slow down ("
                            code { (pause.reason()) } ") until "
                            time { (time(pause.ends_at())) } "."
                        }
                    }
                }
            }
            h2 { "Videos" }
            div.cards {
                @for (state, count) in &view.videos {
                    (card(&format!("videos-{}", state.as_str()), state.as_str(), count, false))
                }
            }
            p.muted { "Most overdue poll: " (format!("{:.1}", view.poll_lag_seconds)) " s late." }
            h2 { "Completions and failures per hour" }
            figure.plot {
                (plots::outcomes_per_hour(&view.hours))
                figcaption.muted { "Videos that completed or failed in each of the last "
                    (HOURS_PLOTTED) " hours (UTC), from their recorded transitions; the last bar is the hour under way." }
            }
            h2 { "Callback deliveries" }
            div.cards {
                (card("deliveries-pending", "backlog (pending)", view.deliveries.pending, false))
                (card("deliveries-dead", "dead", view.deliveries.dead, view.deliveries.dead > 0))
                (card("deliveries-delivered", "delivered", view.deliveries.delivered, false))
            }
            p.muted { "Most overdue delivery: " (format!("{:.1}", view.delivery_lag_seconds)) " s late." }
            h2 { "Poll budget" }
            div.cards {
                (card("budget-rate", "requests per second (jogg.requests_per_second)", view.rate, false))
                (card("budget-burst", "burst (jogg.burst)", view.burst, false))
            }
            @if view.pause.is_none() {
                p.muted id="no-pause" { "Polling is not paused." }
            }
            figure.plot {
                (plots::budget_use(&view.requests, view.rate))
                figcaption.muted id="budget-scope" {
                    "Requests this relay sent to JoggAI per minute (counted in memory since it started), "
                    "against the budget of " code { "jogg.requests_per_second" } " × 60."
                    @if view.shared_budget {
                        " On PostgreSQL the budget is shared by every relay on the database: "
                        "the other relays' requests are not counted here."
                    }
                }
            }
            h2 { "Learned render times" }
            div.plots {
                @for curve in &view.render_times {
                    figure.plot {
                        (plots::render_times(curve))
                        figcaption.muted {
                            "Fraction of renders done by each time, " (curve.measures) " ("
                            code { (curve.model) } ", " (curve.observations) " finished videos)"
                            @if !curve.quantiles.is_empty() { ": " }
                            @for (i, (p, seconds)) in curve.quantiles.iter().enumerate() {
                                @if i > 0 { ", " }
                                "p" ((p * 100.0).round() as u32) " "
                                @if let Some(seconds) = seconds { (plots::duration_label(*seconds)) }
                                @else { "unknown (beyond the longest render seen finished)" }
                            }
                            "."
                        }
                    }
                }
            }
            h2 { "Recent transitions" }
            @if view.recent.is_empty() {
                p.muted { "None yet." }
            } @else {
                table id="recent" {
                    thead { tr { th { "At" } th { "Video" } th { "Kind" } th { "From" } th { "To" } th { "Detail" } } }
                    tbody {
                        @for row in &view.recent {
                            tr {
                                td { time { (time(Millis(row.at))) } }
                                td.mono { (row.video_id) }
                                td { (row.kind) }
                                // Long values wrap; the title repeats them whole.
                                @if let Some(from) = &row.from_value {
                                    td.mono.from title=(from) { (from) }
                                } @else {
                                    td.mono.from { span.muted { "—" } }
                                }
                                td.mono.to title=(row.to_value) { (row.to_value) }
                                td.detail {
                                    // The video's error and reason belong to its end.
                                    @if row.kind == "state" {
                                        @if let Some(code) = &row.error_code { code { (code) } " " }
                                        @if let Some(message) = &row.error_message { (message) }
                                        @if let Some(reason) = &row.reason { " (" (reason) ")" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An optional value, or a muted dash.
pub(super) fn or_dash(value: Option<impl maud::Render>) -> Markup {
    html! {
        @if let Some(value) = value { (value) } @else { span.muted { "—" } }
    }
}

/// An optional time in milliseconds, or a muted dash.
pub(super) fn time_or_dash(at: Option<i64>) -> Markup {
    or_dash(at.map(|at| html! { time { (time(Millis(at))) } }))
}

/// The videos list (README, "Console").
pub fn videos(view: &VideoList, logout_csrf: Option<&str>) -> Markup {
    layout(
        "Videos",
        logout_csrf,
        html! {
            h2 { "Videos" }
            form.filter id="filter" method="get" action="/ui/videos" {
                label for="state" { "State " }
                select id="state" name="state" {
                    option value="" selected[view.state.is_none()] { "any" }
                    @for state in VideoState::ALL {
                        option value=(state.as_str()) selected[view.state == Some(state)] { (state.as_str()) }
                    }
                }
                label for="q" { " Id or its beginning " }
                input type="search" id="q" name="q" value=(view.search) maxlength="128" autocomplete="off";
                " "
                button type="submit" id="search" { "Show" }
            }
            @if view.rows.is_empty() {
                p.muted id="no-videos" { "No video matches." }
            } @else {
                table id="videos" {
                    thead { tr { th { "Video" } th { "State" } th { "Upstream status" } th { "Enqueued" } th { "Updated" } th.num { "Polls" } } }
                    tbody {
                        @for row in &view.rows {
                            tr {
                                td.mono { a.video href=(video_href(&row.video_id)) { (row.video_id) } }
                                td { (row.state.as_str()) }
                                td.mono { (or_dash(row.upstream_status.as_deref())) }
                                td { time { (time(Millis(row.enqueued_at))) } }
                                td { time { (time(Millis(row.updated_at))) } }
                                td.num { (row.polls) }
                            }
                        }
                    }
                }
            }
            p.paging {
                @if view.paged {
                    a id="first" href=(list_href(view.state, &view.search, None)) { "First page" }
                    " "
                }
                @if let Some(next) = &view.next {
                    a id="next" href=(next) { "Next page" }
                }
            }
        },
    )
}

/// One video's page (README, "Console"): its fields, its buttons, its
/// polls, its transitions in time order, its deliveries with every attempt. URLs
/// from upstream or callers are shown as text, never as links.
pub fn video(view: &VideoView, session: &Session, with_login: bool) -> Markup {
    let video = &view.details.video;
    let logout_csrf = with_login.then_some(session.csrf.as_str());
    let button = |action: &str, id: &str, label: &str| {
        html! {
            form.action method="post" action=(format!("{}/{action}", video_href(&video.video_id))) {
                input type="hidden" name=(csrf::FIELD) value=(session.csrf);
                button type="submit" id=(id) { (label) }
            }
        }
    };
    layout(
        &video.video_id,
        logout_csrf,
        html! {
            h2 { "Video " span.mono id="video-id" { (video.video_id) } }
            @if let Some(flash) = view.flash {
                p.error[flash.is_error()].notice[!flash.is_error()] id="flash" { (flash.message()) }
            }
            div.actions {
                @if video.state == VideoState::Active {
                    (button("cancel", "cancel", "Cancel (stop tracking)"))
                }
                @if matches!(video.state, VideoState::Completed | VideoState::Failed | VideoState::Abandoned) {
                    (button("redeliver", "redeliver", "Redeliver the callback"))
                }
            }
            table.fields id="fields" {
                tbody {
                    tr { th { "State" } td id="field-state" { (video.state.as_str()) } }
                    tr { th { "Upstream status" } td.mono { (or_dash(video.upstream_status.as_deref())) } }
                    tr { th { "Reason" } td.mono { (or_dash(video.reason.as_deref())) } }
                    tr { th { "Error" } td id="field-error" {
                        @if let Some(code) = &video.error_code { code { (code) } " " }
                        @if let Some(message) = &video.error_message { (message) }
                        @if video.error_code.is_none() && video.error_message.is_none() { span.muted { "—" } }
                    } }
                    tr { th { "Video URL" } td.mono id="field-video-url" { (or_dash(video.video_url.as_deref())) } }
                    tr { th { "Cover URL" } td.mono id="field-cover-url" { (or_dash(video.cover_url.as_deref())) } }
                    tr { th { "Duration" } td { (or_dash(video.duration.map(|d| format!("{d} s")))) } }
                    tr { th { "Created upstream" } td { (or_dash(video.created_at.map(|s| time(Millis(s.saturating_mul(1000)))))) } }
                    tr { th { "Enqueued" } td { time { (time(Millis(video.enqueued_at))) } } }
                    tr { th { "Updated" } td { time { (time(Millis(video.updated_at))) } } }
                    tr { th { "Next poll" } td { (time_or_dash(video.next_poll_at)) } }
                    tr { th { "Polls" } td { (video.polls) } }
                    tr { th { "Callback URL" } td.mono { (or_dash(video.callback_url.as_deref())) } }
                    tr { th { "Event id" } td.mono { (or_dash(video.event_id.as_deref())) } }
                    tr { th { "Metadata" } td { @if let Some(metadata) = &video.metadata {
                        pre.mono id="metadata" { (metadata) }
                    } @else { span.muted { "—" } } } }
                }
            }
            (super::polls::section(video, view.polling.as_ref(), view.now))
            h2 { "Timeline" }
            @if view.details.transitions.is_empty() {
                p.muted id="no-transitions" { "No transition yet." }
            } @else {
                ol.timeline id="timeline" {
                    @for transition in &view.details.transitions {
                        li {
                            time { (time(Millis(transition.at))) } " "
                            span.kind { (transition.kind) } ": "
                            span.mono { (or_dash(transition.from_value.as_deref())) }
                            " → "
                            span.mono.to { (transition.to_value) }
                        }
                    }
                }
            }
            h2 { "Callback deliveries" }
            @if view.details.deliveries.is_empty() {
                p.muted id="no-deliveries" { "None." }
            }
            @for delivery in &view.details.deliveries {
                @let attempts: Vec<&crate::store::DeliveryAttemptRecord> =
                    view.attempts.iter().filter(|a| a.url == delivery.url).collect();
                section.delivery {
                    h3.mono { (delivery.url) }
                    p {
                        "State " strong.delivery-state { (delivery.state) }
                        @if let Some(reason) = &delivery.reason { " (" code { (reason) } ")" }
                        ", " (delivery.attempts) " attempts, event " code { (delivery.event_id) }
                        @if delivery.state == "pending" {
                            ", next attempt " (time_or_dash(delivery.next_attempt_at))
                        }
                        "."
                    }
                    @if attempts.is_empty() {
                        p.muted { "No attempt yet." }
                    } @else {
                        table.attempts {
                            thead { tr { th { "At" } th { "Answer" } th { "Next attempt" } } }
                            tbody {
                                @for (i, attempt) in attempts.iter().enumerate() {
                                    tr {
                                        td { time { (time(Millis(attempt.at))) } }
                                        td.mono.answer {
                                            @if let Some(status) = attempt.status { "HTTP " (status) }
                                            @if let Some(error) = &attempt.error {
                                                @if attempt.status.is_some() { " " }
                                                (error)
                                            }
                                        }
                                        td {
                                            // The next attempt is the one after it, or, for the
                                            // last, the one the delivery waits for.
                                            @if let Some(next) = attempts.get(i + 1) {
                                                time { (time(Millis(next.at))) }
                                            } @else if delivery.state == "pending" {
                                                (time_or_dash(delivery.next_attempt_at))
                                            } @else {
                                                span.muted { "—" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that breaks out of an element or an attribute comes out as
    /// text (the browser tests check the same in a real DOM).
    #[test]
    fn values_are_escaped() {
        let page = message("<t>", "\"><script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&quot;&gt;&lt;script&gt;"), "{page}");
        let form = layout("x", Some("\"onmouseover=\"x"), html! {}).into_string();
        assert!(
            form.contains("value=\"&quot;onmouseover=&quot;x\""),
            "{form}"
        );
    }
}
