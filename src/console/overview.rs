//! `GET /ui/`: the overview (README, "Console"). Every figure comes from
//! the same reads as the JSON API and `/metrics`; the plots' figures too
//! (terminal transitions per hour, the learner's fit behind `/v1/stats`),
//! but for the requests per minute, which only this process counts
//! (`telemetry::request_rate`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::plots::{HourBar, RenderTimeCurve};
use super::{ConsoleState, auth, html_response, pages, store_failed};
use crate::adaptive::estimate::RenderTimes;
use crate::adaptive::{ModelStats, Phase};
use crate::domain::{Millis, VideoState};
use crate::poller::gate::GlobalPause;
use crate::store::{DeliveryCounts, HOUR_MILLIS, HourlyOutcomes, RecentTransition};
use crate::telemetry::request_rate::MinuteCount;

/// Transitions listed.
pub const RECENT_TRANSITIONS: u32 = 20;

/// Hours the completions-and-failures plot covers, the current one last.
pub const HOURS_PLOTTED: i64 = 24;

/// Points sampled along a learned render-time CDF.
const CURVE_POINTS: usize = 121;

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
    /// Completions and failures per hour, the last [`HOURS_PLOTTED`]
    /// hours (UTC), oldest first, the current (partial) hour last.
    pub hours: Vec<HourBar>,
    /// The learned render-time distributions, as drawn.
    pub render_times: Vec<RenderTimeCurve>,
    /// Upstream requests this process sent per minute, the last hour.
    pub requests: Vec<MinuteCount>,
    /// Whether the database is PostgreSQL, where other relays may share
    /// the budget (their requests are not in `requests`).
    pub shared_budget: bool,
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
    let this_hour = now.0.div_euclid(HOUR_MILLIS) * HOUR_MILLIS;
    let since = Millis(this_hour - (HOURS_PLOTTED - 1) * HOUR_MILLIS);
    let hours = hour_bars(since, &store.hourly_outcomes(since).await?);
    // `stats` refits a small learner first; the schedule taken after it is
    // that fit, so the curve and its quantiles agree with `/v1/stats`.
    let (stats, schedule) = state
        .api
        .learner
        .with(|learner| (learner.stats(), learner.schedule().clone()));
    let render_times = stats
        .iter()
        .map(|model| curve(schedule.model(model.phase), model))
        .collect();
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
        hours,
        render_times,
        requests: state.api.metrics.upstream_requests_per_minute(now),
        shared_budget: store.shared_gate().is_some(),
    })
}

/// The [`HOURS_PLOTTED`] hours from `since` (an hour's start), each with
/// its counts from `rows` (the store leaves out hours with none).
pub fn hour_bars(since: Millis, rows: &[HourlyOutcomes]) -> Vec<HourBar> {
    (0..HOURS_PLOTTED)
        .map(|i| {
            let hour = since.0 + i * HOUR_MILLIS;
            let row = rows.iter().find(|row| row.hour == hour);
            HourBar {
                hour: Millis(hour),
                completed: row.map_or(0, |r| u64::try_from(r.completed).unwrap_or(0)),
                failed: row.map_or(0, |r| u64::try_from(r.failed).unwrap_or(0)),
            }
        })
        .collect()
}

/// The CDF of `model` sampled on a logarithmic grid wide enough for its
/// bulk (p0.5 to p99.5, no further than twice the longest render seen
/// finished: beyond it only "later" is known), at least a factor of ten,
/// with its reported quantiles; no points before a video finished.
fn curve(model: &RenderTimes, stats: &ModelStats) -> RenderTimeCurve {
    let measures = match stats.phase {
        Phase::FromStart => "from the start",
        Phase::FromRendering => "from first seen rendering",
    };
    let range = match (model.quantile(0.005), model.quantile(0.995)) {
        (Some(low), Some(high)) if stats.observations > 0 => {
            let high = high.min(model.longest_finished() * 2.0).max(low);
            let (mut low, mut high) = (low / 1.5, high * 1.5);
            if high / low < 10.0 {
                let middle = (low * high).sqrt();
                (low, high) = (middle / 10f64.sqrt(), middle * 10f64.sqrt());
            }
            Some((low.max(0.01), high.max(0.1)))
        }
        _ => None,
    };
    let points = range.map_or_else(Vec::new, |(low, high)| {
        let step = (high / low).ln() / (CURVE_POINTS - 1) as f64;
        (0..CURVE_POINTS)
            .map(|i| {
                let seconds = low * (step * i as f64).exp();
                (seconds, model.cdf(seconds))
            })
            .collect()
    });
    RenderTimeCurve {
        model: stats.phase.as_str(),
        measures,
        observations: stats.observations,
        points,
        quantiles: stats.quantiles.clone(),
    }
}
