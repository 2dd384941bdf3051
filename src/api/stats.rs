//! `GET /v1/stats`: what the relay has learned of JoggAI's render times
//! (README, "Poll strategies"). `jogg-relay stats` prints the same body,
//! rebuilt from the database.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiState;
use crate::adaptive::Learner;
use crate::config::PollStrategy;

/// The body of `/v1/stats` for `learner` under `strategy`.
pub fn body(learner: &mut Learner, strategy: PollStrategy) -> Value {
    let updated_at = learner.updated_at().map(|at| at.to_rfc3339());
    let models: Vec<Value> = learner
        .stats()
        .into_iter()
        .map(|model| {
            let quantiles: serde_json::Map<String, Value> = model
                .quantiles
                .iter()
                .map(|(p, seconds)| {
                    // p10 … p99; seconds rounded to the millisecond, null
                    // beyond the longest render seen finished.
                    let name = format!("p{}", (p * 100.0).round() as u32);
                    let value = seconds.map(|s| (s * 1000.0).round() / 1000.0);
                    (name, json!(value))
                })
                .collect();
            json!({
                "model": model.phase.as_str(),
                "observations": model.observations,
                "unfinished": model.unfinished,
                "effective_samples": (model.effective_samples * 10.0).round() / 10.0,
                "warmed_up": model.warmed_up,
                "quantiles_seconds": quantiles,
            })
        })
        .collect();
    json!({
        "strategy": strategy.as_str(),
        "render_times": {
            "updated_at": updated_at,
            "models": models,
        },
    })
}

/// `GET /v1/stats`.
pub async fn show(State(state): State<ApiState>) -> Json<Value> {
    Json(state.learner.with(|learner| body(learner, state.strategy)))
}
