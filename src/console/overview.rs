//! `GET /ui/`: the overview (README, "Console"). Every figure comes from
//! the same reads as the JSON API and `/metrics`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::{ConsoleState, auth, html_response, pages, store_failed};
use crate::domain::{Millis, VideoState};
use crate::poller::gate::GlobalPause;
use crate::store::{DeliveryCounts, RecentTransition};

/// Transitions listed.
pub const RECENT_TRANSITIONS: u32 = 20;

/// What the overview shows.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Videos per state, every state (zero included), in `VideoState::ALL`
    /// order.
    pub videos: Vec<(VideoState, u64)>,
    /// How late the most overdue poll is.
    pub poll_lag_seconds: f64,
    /// Deliveries per state.
    pub deliveries: DeliveryCounts,
    /// How late the most overdue delivery is.
    pub delivery_lag_seconds: f64,
    /// The pause of all polling, if any.
    pub pause: Option<GlobalPause>,
    /// `jogg.requests_per_second`.
    pub rate: f64,
    /// `jogg.burst`.
    pub burst: u32,
    /// The newest transitions, newest first.
    pub recent: Vec<RecentTransition>,
}

/// `GET /ui/`.
pub async fn show(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let (session, cookie) = match auth::page_session(&state, &headers) {
        Ok(found) => found,
        Err(answer) => return *answer,
    };
    let view = match read(&state).await {
        Ok(view) => view,
        Err(err) => return store_failed(err),
    };
    let mut response = html_response(
        StatusCode::OK,
        pages::overview(&view, auth::logout_csrf(&state, &session)),
    );
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Reads the overview's figures.
async fn read(state: &ConsoleState) -> Result<Overview, crate::store::StoreError> {
    let now = Millis::now();
    let store = &state.api.store;
    let gauges = store.gauges(now).await?;
    let deliveries = store.delivery_counts().await?;
    let recent = store.recent_transitions(RECENT_TRANSITIONS).await?;
    let videos = VideoState::ALL
        .iter()
        .map(|state| {
            let count = gauges
                .videos
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            (*state, count)
        })
        .collect();
    Ok(Overview {
        videos,
        poll_lag_seconds: gauges.poll_lag_seconds,
        deliveries,
        delivery_lag_seconds: gauges.delivery_lag_seconds,
        pause: state.api.gate.global_pause(now),
        rate: state.console.rate,
        burst: state.console.burst,
        recent,
    })
}
