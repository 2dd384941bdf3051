//! `GET /ui/videos` (the list), `GET /ui/videos/{id}` (one video) and the
//! video page's buttons (README, "Console"). The buttons call the same
//! operations as `DELETE /v1/videos/{id}` and
//! `POST /v1/videos/{id}/redeliver`.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::Session;
use super::{ConsoleState, auth, csrf, html_response, pages, store_failed};
use crate::api::videos::{cancel_video, next_page, redeliver_video};
use crate::domain::{Millis, VideoId, VideoState};
use crate::store::{
    CancelOutcome, DeliveryAttemptRecord, PollingRecord, RedeliverOutcome, VideoDetails,
    VideoRecord,
};

/// Videos per page of the list.
pub const PAGE_SIZE: u32 = 25;

/// Longest search: a whole video id.
const MAX_SEARCH: usize = 128;

/// What the list shows: its filter, its rows, and the next page's address.
#[derive(Debug, Clone)]
pub struct VideoList {
    /// The state filtered on, if any.
    pub state: Option<VideoState>,
    /// The id prefix searched for (empty: any).
    pub search: String,
    /// The rows, newest first.
    pub rows: Vec<VideoRecord>,
    /// The next page's address, when this page is full.
    pub next: Option<String>,
    /// Whether this is a later page (so the list links back to the first).
    pub paged: bool,
}

/// What the video page shows.
#[derive(Debug, Clone)]
pub struct VideoView {
    /// The video, its transitions and deliveries.
    pub details: VideoDetails,
    /// Every delivery attempt, in the order made.
    pub attempts: Vec<DeliveryAttemptRecord>,
    /// What is stored of its polling.
    pub polling: Option<PollingRecord>,
    /// When the page was drawn (whether a lease still holds).
    pub now: Millis,
    /// The outcome of the button just pressed, if any.
    pub flash: Option<Flash>,
}

/// The outcome of a button, carried through the redirect as a fixed code
/// (`?flash=`), so no text from the request is ever shown back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flash {
    /// The video was cancelled.
    Cancelled,
    /// It was cancelled already.
    AlreadyCancelled,
    /// It is completed, failed or abandoned: no cancelling.
    AlreadyTerminal,
    /// Its event is queued again.
    Redelivered,
    /// Active or cancelled: no event to redeliver.
    NoEvent,
}

impl Flash {
    /// Every flash, for parsing.
    const ALL: [Flash; 5] = [
        Flash::Cancelled,
        Flash::AlreadyCancelled,
        Flash::AlreadyTerminal,
        Flash::Redelivered,
        Flash::NoEvent,
    ];

    /// Its code in the address.
    pub fn code(self) -> &'static str {
        match self {
            Flash::Cancelled => "cancelled",
            Flash::AlreadyCancelled => "already_cancelled",
            Flash::AlreadyTerminal => "already_terminal",
            Flash::Redelivered => "redelivered",
            Flash::NoEvent => "no_event",
        }
    }

    /// What the page says.
    pub fn message(self) -> &'static str {
        match self {
            Flash::Cancelled => "The video is cancelled: the relay no longer polls it.",
            Flash::AlreadyCancelled => "The video was already cancelled.",
            Flash::AlreadyTerminal => {
                "Not cancelled: the video is already completed, failed or abandoned, \
                 and terminal states never change."
            }
            Flash::Redelivered => {
                "The callback is queued again to every target, with the same event id."
            }
            Flash::NoEvent => {
                "Not redelivered: only completed, failed and abandoned videos have an event."
            }
        }
    }

    /// Whether it reports a refusal.
    pub fn is_error(self) -> bool {
        matches!(self, Flash::AlreadyTerminal | Flash::NoEvent)
    }

    fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|flash| flash.code() == code)
    }
}

/// The query's `name` parameter (the first, when repeated).
pub(super) fn param(query: Option<&str>, name: &str) -> Option<String> {
    csrf::form_field(query.unwrap_or_default().as_bytes(), name)
}

/// `400` with a page saying what was wrong in the query or the form.
pub(super) fn bad_request(message: &str) -> Response {
    html_response(
        StatusCode::BAD_REQUEST,
        pages::message("Bad request", message),
    )
}

/// A page with the session's cookie, when it was just opened.
pub(super) fn page_response(
    page: maud::Markup,
    cookie: Option<axum::http::HeaderValue>,
) -> Response {
    let mut response = html_response(StatusCode::OK, page);
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The list's address for a filter, a search and a cursor.
pub fn list_href(state: Option<VideoState>, search: &str, before: Option<i64>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(state) = state {
        query.append_pair("state", state.as_str());
    }
    if !search.is_empty() {
        query.append_pair("q", search);
    }
    if let Some(before) = before {
        query.append_pair("before", &before.to_string());
    }
    let query = query.finish();
    if query.is_empty() {
        "/ui/videos".to_owned()
    } else {
        format!("/ui/videos?{query}")
    }
}

/// A video page's address.
pub fn video_href(video_id: &str) -> String {
    format!("/ui/videos/{video_id}")
}

/// `GET /ui/videos?state=&q=&before=`: videos newest first, of one state
/// when `state` is given, whose id starts with `q`; `before` is the
/// previous page's last row (the "next" link carries it).
pub async fn list(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (session, cookie) = match auth::page_session(&state, &headers) {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let query = query.as_deref();
    let filter = match param(query, "state").as_deref() {
        None | Some("") => None,
        Some(raw) => match raw.parse::<VideoState>() {
            Ok(filter) => Some(filter),
            Err(err) => return bad_request(&err.to_string()),
        },
    };
    let search = param(query, "q").unwrap_or_default().trim().to_owned();
    // Ids are 1–128 of [A-Za-z0-9_-]; anything else could match nothing.
    if search.len() > MAX_SEARCH
        || !search
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad_request(
            "Search by a video id or its beginning: up to 128 letters, digits, '_' and '-'.",
        );
    }
    let before = match param(query, "before").as_deref() {
        None | Some("") => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(before) if before > 0 => Some(before),
            _ => return bad_request("'before' must be the row number of a \"next\" link."),
        },
    };
    let rows = match state
        .api
        .store
        .browse_videos(filter, &search, before, PAGE_SIZE)
        .await
    {
        Ok(rows) => rows,
        Err(err) => return store_failed(err),
    };
    let next = next_page(&rows, PAGE_SIZE, |row| {
        list_href(filter, &search, Some(row.id))
    });
    let view = VideoList {
        state: filter,
        search,
        rows,
        next,
        paged: before.is_some(),
    };
    page_response(
        pages::videos(&view, auth::logout_csrf(&state, &session)),
        cookie,
    )
}

/// The video id in the path, or the 404 page.
fn path_id(raw: &str) -> Result<VideoId, Box<Response>> {
    VideoId::parse(raw).map_err(|_| Box::new(not_tracked()))
}

/// `404` for a video the relay does not track.
fn not_tracked() -> Response {
    html_response(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "The relay does not track this video."),
    )
}

/// `GET /ui/videos/{id}?flash=`: the video, its polls, its timeline, its
/// deliveries with every attempt, and its buttons.
pub async fn show(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let (session, cookie) = match auth::page_session(&state, &headers) {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let video_id = match path_id(&raw) {
        Ok(id) => id,
        Err(answer) => return *answer,
    };
    let store = &state.api.store;
    let details = match store.video_details(&video_id).await {
        Ok(Some(details)) => details,
        Ok(None) => return not_tracked(),
        Err(err) => return store_failed(err),
    };
    let attempts = match store.delivery_attempts(details.video.id).await {
        Ok(attempts) => attempts,
        Err(err) => return store_failed(err),
    };
    let polling = match store.polling(details.video.id).await {
        Ok(polling) => polling,
        Err(err) => return store_failed(err),
    };
    let flash = param(query.as_deref(), "flash").and_then(|code| Flash::parse(&code));
    let view = VideoView {
        details,
        attempts,
        polling,
        now: Millis::now(),
        flash,
    };
    page_response(
        pages::video(&view, &session, state.console.token.is_some()),
        cookie,
    )
}

/// The session of a button's request, its CSRF token checked; `Err` is the
/// answer instead (the login form, or a refusal).
pub(super) fn form_session(
    state: &ConsoleState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Session, Box<Response>> {
    let (session, _) = auth::page_session(state, headers)?;
    if !csrf::verify(
        &session.csrf,
        csrf::form_field(body, csrf::FIELD).as_deref(),
    ) {
        return Err(Box::new(auth::csrf_refused()));
    }
    Ok(session)
}

/// The video a button's request acts on, once its session and CSRF token
/// are checked; `Err` is the answer instead.
fn button_target(
    state: &ConsoleState,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<VideoId, Box<Response>> {
    form_session(state, headers, body)?;
    path_id(raw)
}

/// Back to the video's page with `flash` (`303`).
fn back(video_id: &VideoId, flash: Flash) -> Response {
    Redirect::to(&format!(
        "{}?flash={}",
        video_href(video_id.as_str()),
        flash.code()
    ))
    .into_response()
}

/// `POST /ui/videos/{id}/cancel` (CSRF-protected): stop tracking, as
/// `DELETE /v1/videos/{id}` does.
pub async fn cancel(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let video_id = match button_target(&state, &headers, &raw, &body) {
        Ok(id) => id,
        Err(answer) => return *answer,
    };
    let flash = match cancel_video(&state.api, &video_id).await {
        Ok(CancelOutcome::Cancelled) => Flash::Cancelled,
        Ok(CancelOutcome::AlreadyCancelled) => Flash::AlreadyCancelled,
        Ok(CancelOutcome::Terminal(_)) => Flash::AlreadyTerminal,
        Ok(CancelOutcome::NotFound) => return not_tracked(),
        Err(err) => return store_failed(err),
    };
    tracing::info!(video_id = %video_id, outcome = flash.code(), "console cancel");
    back(&video_id, flash)
}

/// `POST /ui/videos/{id}/redeliver` (CSRF-protected): queue the event
/// again, as `POST /v1/videos/{id}/redeliver` does.
pub async fn redeliver(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let video_id = match button_target(&state, &headers, &raw, &body) {
        Ok(id) => id,
        Err(answer) => return *answer,
    };
    let flash = match redeliver_video(&state.api, &video_id).await {
        Ok(RedeliverOutcome::Queued { .. }) => Flash::Redelivered,
        Ok(RedeliverOutcome::NoEvent(_)) => Flash::NoEvent,
        Ok(RedeliverOutcome::NotFound) => return not_tracked(),
        Err(err) => return store_failed(err),
    };
    tracing::info!(video_id = %video_id, outcome = flash.code(), "console redeliver");
    back(&video_id, flash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_addresses_keep_the_filter_and_encode_it() {
        assert_eq!(list_href(None, "", None), "/ui/videos");
        assert_eq!(
            list_href(Some(VideoState::Active), "ab-_", Some(42)),
            "/ui/videos?state=active&q=ab-_&before=42"
        );
    }

    #[test]
    fn flashes_round_trip_and_unknown_codes_show_nothing() {
        for flash in Flash::ALL {
            assert_eq!(Flash::parse(flash.code()), Some(flash));
        }
        assert_eq!(Flash::parse("<script>"), None);
    }
}
