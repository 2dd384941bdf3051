//! `GET /ui/deliveries/dead` (the callbacks the relay gave up on) and its
//! redeliver buttons (README, "Console").
//!
//! Redelivering is the operation of `POST /v1/videos/{id}/redeliver`, per
//! video: the video's event is queued again, with the same event id, to
//! every current target of the video (the configured `callbacks.urls` and
//! its own `callback_url`), the ones that had it already included. So the
//! button of one dead row redelivers that row's video, and "redeliver all
//! shown" the videos of the rows on the page, each once: never a video
//! whose dead row is not shown (a video with dead rows on two pages is the
//! one exception: its other dead row is queued again with it).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use super::videos::{bad_request, form_session, page_response, param};
use super::{ConsoleState, auth, dead_page, store_failed};
use crate::api::videos::{next_page, redeliver_video};
use crate::domain::{MAX_VIDEO_ID_LEN, VideoId};
use crate::store::{DeadDelivery, RedeliverOutcome};

/// The page's address.
pub const PATH: &str = "/ui/deliveries/dead";

/// Where its buttons post.
pub const REDELIVER_PATH: &str = "/ui/deliveries/dead/redeliver";

/// Rows per page.
pub const PAGE_SIZE: u32 = 25;

/// The form field naming a video to redeliver (repeated in "redeliver all
/// shown").
pub const VIDEO_FIELD: &str = "video";

/// The "redeliver all shown" form of a full page (every row another video,
/// each id of the longest kind) fits the console's form body limit.
const _: () = assert!(
    (PAGE_SIZE as usize) * (VIDEO_FIELD.len() + 2 + MAX_VIDEO_ID_LEN) + 128
        <= super::FORM_BODY_LIMIT
);

/// What the page shows.
#[derive(Debug, Clone)]
pub struct DeadList {
    /// The rows, newest death first.
    pub rows: Vec<DeadDelivery>,
    /// The next page's address, when this page is full.
    pub next: Option<String>,
    /// Whether this is a later page (so it links back to the first).
    pub paged: bool,
    /// The outcome of the button just pressed, if any.
    pub notice: Option<Notice>,
}

impl DeadList {
    /// The videos of the rows, each once, in the rows' order: what
    /// "redeliver all shown" sends.
    pub fn shown_videos(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            if !ids.contains(&row.video_id.as_str()) {
                ids.push(&row.video_id);
            }
        }
        ids
    }
}

/// What a redeliver button did, carried through the redirect as two
/// numbers (`?redelivered=&skipped=`), so no text from the request is ever
/// shown back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// Videos whose event is queued again.
    pub redelivered: u32,
    /// Videos no longer tracked or without an event (nothing done).
    pub skipped: u32,
}

impl Notice {
    /// The notice's query string.
    fn query(self) -> String {
        format!("redelivered={}&skipped={}", self.redelivered, self.skipped)
    }

    /// The notice in the page's query, if any.
    fn parse(query: Option<&str>) -> Option<Self> {
        let count = |name| param(query, name).and_then(|raw| raw.parse::<u32>().ok());
        Some(Self {
            redelivered: count("redelivered")?,
            skipped: count("skipped").unwrap_or(0),
        })
    }
}

/// The page's address for a cursor.
pub fn page_href(before: Option<(i64, i64)>) -> String {
    match before {
        Some((at, id)) => format!("{PATH}?before={at}.{id}"),
        None => PATH.to_owned(),
    }
}

/// The cursor `<died_at>.<id>` of a "next" link.
fn parse_cursor(raw: &str) -> Option<(i64, i64)> {
    let (at, id) = raw.split_once('.')?;
    Some((at.parse().ok()?, id.parse().ok()?))
}

/// `GET /ui/deliveries/dead?before=&redelivered=&skipped=`: dead
/// deliveries newest death first; `before` is the previous page's last row
/// (the "next" link carries it).
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
    let before = match param(query, "before").as_deref() {
        None | Some("") => None,
        Some(raw) => match parse_cursor(raw) {
            Some(cursor) => Some(cursor),
            None => return bad_request("'before' must be the cursor of a \"next\" link."),
        },
    };
    let rows = match state.api.store.dead_deliveries(before, PAGE_SIZE).await {
        Ok(rows) => rows,
        Err(err) => return store_failed(err),
    };
    let next = next_page(&rows, PAGE_SIZE, |row| {
        page_href(Some((row.died_at, row.id)))
    });
    let view = DeadList {
        rows,
        next,
        paged: before.is_some(),
        notice: Notice::parse(query),
    };
    page_response(
        dead_page::page(&view, &session, auth::logout_csrf(&state, &session)),
        cookie,
    )
}

/// `POST /ui/deliveries/dead/redeliver` (CSRF-protected), with one or more
/// `video` fields: redeliver each video as `POST /v1/videos/{id}/redeliver`
/// does, then back to the list's first page with the counts (`303`).
pub async fn redeliver(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(answer) = form_session(&state, &headers, &body) {
        return *answer;
    }
    let mut videos: Vec<VideoId> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(&body) {
        if key != VIDEO_FIELD {
            continue;
        }
        let Ok(video_id) = VideoId::parse(&value) else {
            return bad_request("A video id is 1–128 letters, digits, '_' and '-'.");
        };
        if !videos.contains(&video_id) {
            videos.push(video_id);
        }
    }
    if videos.is_empty() {
        return bad_request("No video to redeliver was given.");
    }
    if videos.len() > PAGE_SIZE as usize {
        return bad_request("At most one page of videos can be redelivered at once.");
    }
    let mut notice = Notice {
        redelivered: 0,
        skipped: 0,
    };
    for video_id in &videos {
        match redeliver_video(&state.api, video_id).await {
            Ok(RedeliverOutcome::Queued { .. }) => notice.redelivered += 1,
            Ok(RedeliverOutcome::NoEvent(_) | RedeliverOutcome::NotFound) => notice.skipped += 1,
            Err(err) => return store_failed(err),
        }
    }
    tracing::info!(
        redelivered = notice.redelivered,
        skipped = notice.skipped,
        "console redeliver of dead deliveries"
    );
    Redirect::to(&format!("{PATH}?{}", notice.query())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(page_href(None), "/ui/deliveries/dead");
        let href = page_href(Some((1_700_000_000_000, 42)));
        assert_eq!(href, "/ui/deliveries/dead?before=1700000000000.42");
        assert_eq!(
            parse_cursor("1700000000000.42"),
            Some((1_700_000_000_000, 42))
        );
        for bad in ["", "1", "1.", ".2", "a.b", "1.2.3", "<script>.1"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn notices_are_numbers_only() {
        let notice = Notice {
            redelivered: 3,
            skipped: 1,
        };
        assert_eq!(Notice::parse(Some(&notice.query())), Some(notice));
        assert_eq!(Notice::parse(Some("redelivered=<b>")), None);
        assert_eq!(Notice::parse(None), None);
    }
}
