//! The console's HTML, server-rendered with maud: every interpolated value
//! is escaped by the template macro (nothing here opts out with
//! `PreEscaped`), and no page needs JavaScript.

use maud::{DOCTYPE, Markup, html};

use super::assets::CSS_PATH;
use super::csrf;
use super::overview::Overview;
use crate::domain::Millis;
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
                    nav { a href="/ui/" { "Overview" } }
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
fn time(at: Millis) -> String {
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
