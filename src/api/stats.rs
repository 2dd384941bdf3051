//! `GET /v1/stats`: what the relay has learned of JoggAI's render times
//! (README, "Poll strategies"). `jogg-relay stats` prints the same body,
//! rebuilt from the database.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::error::ErrorBody;
use crate::adaptive::Learner;
use crate::config::PollStrategy;

/// The body of `GET /v1/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBody {
    /// The configured `polling.strategy`.
    #[schema(value_type = String, examples("exponential", "adaptive"))]
    strategy: &'static str,
    render_times: RenderTimesBody,
}

/// What was learned of render times.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenderTimesBody {
    /// The terminal poll of the last video seen finished (RFC 3339); `null`
    /// before one.
    #[schema(required = true, format = DateTime)]
    updated_at: Option<String>,
    /// `from_start` (since the video started) and `from_rendering` (since
    /// a poll first saw it `processing`).
    models: Vec<ModelBody>,
}

/// One learned distribution.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelBody {
    /// `from_start` or `from_rendering`.
    #[schema(value_type = String, examples("from_start", "from_rendering"))]
    model: &'static str,
    /// Finished videos it is fitted to.
    observations: u64,
    /// Videos still rendering it is fitted to.
    unfinished: u64,
    /// What the finished ones are worth after older ones faded (one
    /// decimal).
    effective_samples: f64,
    /// Whether `adaptive_warmup` of them have finished.
    warmed_up: bool,
    /// `p10`, `p25`, `p50`, `p75`, `p90`, `p95`, `p99` of the render time in
    /// seconds (to the millisecond); empty until the first finished video,
    /// `null` for a quantile beyond the longest render seen finished.
    quantiles_seconds: BTreeMap<String, Option<f64>>,
}

/// The body of `/v1/stats` for `learner` under `strategy`.
pub fn body(learner: &mut Learner, strategy: PollStrategy) -> StatsBody {
    let updated_at = learner.updated_at().map(|at| at.to_rfc3339());
    let models = learner
        .stats()
        .into_iter()
        .map(|model| {
            let quantiles_seconds = model
                .quantiles
                .iter()
                .map(|(p, seconds)| {
                    // p10 … p99; seconds rounded to the millisecond, null
                    // beyond the longest render seen finished.
                    let name = format!("p{}", (p * 100.0).round() as u32);
                    let value = seconds.map(|s| (s * 1000.0).round() / 1000.0);
                    (name, value)
                })
                .collect();
            ModelBody {
                model: model.phase.as_str(),
                observations: model.observations,
                unfinished: model.unfinished,
                effective_samples: (model.effective_samples * 10.0).round() / 10.0,
                warmed_up: model.warmed_up,
                quantiles_seconds,
            }
        })
        .collect();
    StatsBody {
        strategy: strategy.as_str(),
        render_times: RenderTimesBody { updated_at, models },
    }
}

/// `GET /v1/stats`.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "get_stats",
    summary = "Learned render times",
    description = "The configured `polling.strategy` and, per model, what the relay has learned of JoggAI's render times.",
    tag = "videos",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The configured strategy and the learned render times.", body = StatsBody),
        (status = 401, description = "Codes: `unauthorized` (missing or wrong bearer token).", body = ErrorBody),
    )
)]
pub async fn show(State(state): State<ApiState>) -> Json<StatsBody> {
    Json(state.learner.with(|learner| body(learner, state.strategy)))
}
