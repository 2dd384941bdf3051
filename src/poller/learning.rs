//! Between the store and the learned schedule: the observation a finished
//! row stands for, the learner rebuilt from the database at start, and the
//! claim's ranking by completion chance.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::adaptive::{Learner, Observation, SharedLearner, VideoClock, started_at};
use crate::config::PollingConfig;
use crate::domain::Millis;
use crate::domain::poll::{DueVideo, Ranker};
use crate::store::{FinishedRender, Store, StoreError, TrackedRender};

/// What a finished row teaches (`export-renders` writes it out).
pub fn observation(render: &FinishedRender, give_up_after: Duration) -> Observation {
    Observation {
        started_at: started_at(Millis(render.enqueued_at), render.created_at, give_up_after),
        unfinished_seen_at: render.unfinished_seen_at.map(Millis),
        rendering_seen_at: render.rendering_seen_at.map(Millis),
        finished_seen_at: Some(Millis(render.terminal_at)),
    }
}

/// What a tracked row teaches: finished when JoggAI said completed or
/// failed; otherwise (still active, or ended by the relay or a client) only
/// that it was unfinished at its last poll.
pub fn tracked_observation(render: &TrackedRender, give_up_after: Duration) -> Observation {
    let finished = matches!(render.state.as_str(), "completed" | "failed");
    Observation {
        started_at: started_at(Millis(render.enqueued_at), render.created_at, give_up_after),
        unfinished_seen_at: render.unfinished_seen_at.map(Millis),
        rendering_seen_at: render.rendering_seen_at.map(Millis),
        finished_seen_at: render.terminal_at.filter(|_| finished).map(Millis),
    }
}

/// How overdue a video must be for the ranked claim to take it before
/// likelier ones: two `max_interval`s, the longest gap the schedule itself
/// would ever leave twice over.
pub fn starving_after(polling: &PollingConfig) -> Duration {
    polling.max_interval * 2
}

/// How many of the newest videos a learner replays: as many as it keeps
/// while running (the finished ones it keeps, and as many again unfinished).
pub fn replayed(polling: &PollingConfig) -> u32 {
    u32::try_from(2 * crate::adaptive::finished_kept(polling.adaptive.half_life))
        .unwrap_or(u32::MAX)
}

/// A learner rebuilt from the newest videos in `store`, in the order the
/// relay took them, so a restart keeps what was learned.
pub async fn load_learner(store: &Store, polling: &PollingConfig) -> Result<Learner, StoreError> {
    let (learner, replayed) = rebuild_learner(store, polling).await?;
    if replayed > 0 {
        info!(videos = replayed, "render times learned from the database");
    }
    Ok(learner)
}

/// A learner fitted to the newest videos in `store`, and how many videos
/// it read (quietly: relays sharing a database rebuild it periodically).
pub async fn rebuild_learner(
    store: &Store,
    polling: &PollingConfig,
) -> Result<(Learner, usize), StoreError> {
    let mut learner = Learner::new(polling.adaptive);
    let renders = store.newest_renders(replayed(polling)).await?;
    for render in &renders {
        let observation = tracked_observation(render, polling.give_up_after);
        // A video never answered with a status was never recorded while
        // the relay ran either.
        if observation.unfinished_seen_at.is_some() || observation.finished_seen_at.is_some() {
            learner.replay(render.id, &observation);
        }
    }
    learner.refit();
    Ok((learner, renders.len()))
}

/// The claim's ranking under the adaptive strategy: the chance that each
/// due video has finished since it was last seen unfinished, except that a
/// video overdue by `starving_after` or more goes first, the most overdue
/// first (today's order). A chance is only an estimate; without that floor
/// an unlucky video could wait behind likelier ones for as long as the
/// budget stays short, where most overdue first bounds every wait.
pub fn ranker(learner: SharedLearner, give_up_after: Duration, starving_after: Duration) -> Ranker {
    let starving_ms = i64::try_from(starving_after.as_millis()).unwrap_or(i64::MAX);
    Ranker(Arc::new(move |due: &[DueVideo], now: Millis| {
        // The last fit: this runs inside the claim's write transaction,
        // which must not wait for the learner.
        let schedule = learner.schedule();
        {
            due.iter()
                .map(|video| {
                    let overdue_ms = now.0.saturating_sub(video.next_poll_at.0);
                    if overdue_ms >= starving_ms {
                        // Above every chance (at most 1), in overdue order.
                        return 1.0 + overdue_ms as f64 / 1e13;
                    }
                    let clock = VideoClock {
                        started_at: started_at(video.enqueued_at, video.created_at, give_up_after),
                        rendering_seen_at: video.rendering_seen_at,
                    };
                    schedule.completion_chance(&clock, video.unfinished_seen_at, now)
                })
                .collect()
        }
    }))
}
