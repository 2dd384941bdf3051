//! The adaptive strategy in the daemon itself: the real poller, store and
//! learner, stepped in virtual time against the simulator's timed renders.
//! The oracle is the simulator's own record of when each render finished
//! and when its terminal status was first answered.

use jogg_relay::domain::Millis;
use jogg_relay::workload::{DelayReport, ReferenceWorkload, RenderJob};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_manual_app};

/// Renders of the reference workload.
fn renders(seed: u64, videos: usize) -> Vec<RenderJob> {
    ReferenceWorkload {
        videos,
        scale: 1.0,
        seed,
    }
    .generate()
}

/// A relay with `strategy` and the shipped schedule (first poll 10 s after
/// the enqueue) and a budget that never binds.
async fn relay_with(strategy: &str) -> TestApp {
    spawn_manual_app(|settings| {
        settings.polling.strategy = strategy.into();
        settings.polling.first_after = "10s".into();
        settings.jogg.requests_per_second = 10_000.0;
        settings.jogg.burst = 10_000;
    })
    .await
}

/// Enqueues `ids` through the API as if at virtual time `at`: the API
/// stamps an enqueue with the wall clock, so the test moves the rows' enqueue
/// time (and their first poll, 10 s later) to the virtual clock it steps
/// the relay with. Nothing has polled them yet, so nothing else depends on
/// the stamp.
async fn enqueue_at(
    app: &TestApp,
    store: &jogg_relay::store::Store,
    renders: &[(String, RenderJob)],
    at: Millis,
) {
    let ids: Vec<&str> = renders.iter().map(|(id, _)| id.as_str()).collect();
    let videos: Vec<Value> = ids.iter().map(|id| json!({"video_id": id})).collect();
    let reply = app
        .send("POST", "/v1/videos/batch", Some(&json!({"videos": videos})))
        .await;
    assert!(reply.status < 300, "{reply:?}");
    store
        .set_enqueue_times(&ids, at, Millis(at.0 + 10000))
        .await
        .expect("move the enqueue to the virtual clock");
    for (id, job) in renders {
        app.sim.state.script_render(id, *job, at);
    }
}

/// Runs the reference workload's `videos` (seed `seed`) through `app`, in
/// waves as the workload says, stepping from event to event in virtual
/// time until no video is active.
async fn run_workload(app: &TestApp, seed: u64, videos: usize) {
    let store = app.store().await;
    let start = Millis::now();
    app.sim.state.set_manual_clock(start);
    let jobs = renders(seed, videos);
    let mut arrivals = jobs.iter().enumerate().peekable();
    let mut now = start;
    for _ in 0..200_000 {
        let due: Option<i64> = store
            .next_poll_due()
            .await
            .expect("next due time")
            .map(|at| at.0);
        let next_arrival = arrivals.peek().map(|(_, job)| start.plus(job.arrival));
        match (due, next_arrival) {
            (None, None) => return,
            (due, Some(arrival)) if due.is_none_or(|due| arrival.0 <= due) => {
                // Every video arriving at this instant (to the millisecond).
                let mut ids = Vec::new();
                while let Some((i, job)) = arrivals.peek() {
                    if start.plus(job.arrival) != arrival {
                        break;
                    }
                    ids.push((format!("render-{i}"), **job));
                    arrivals.next();
                }
                now = now.max(arrival);
                app.sim.state.advance_clock(now);
                enqueue_at(app, &store, &ids, arrival).await;
            }
            (Some(due), _) => {
                now = now.max(Millis(due));
                app.sim.state.advance_clock(now);
                app.step(now).await;
            }
            (None, Some(_)) => unreachable!("handled above"),
        }
    }
    panic!("videos still active after 200 000 steps");
}

/// Polls per video and detection delays, from the simulator's record.
fn report(app: &TestApp) -> DelayReport {
    app.sim.state.delay_report()
}

#[tokio::test]
async fn learning_from_scratch_the_daemon_detects_completions_sooner_than_exponential() {
    let videos = 200;
    let mut reports = Vec::new();
    for strategy in ["exponential", "adaptive"] {
        let app = relay_with(strategy).await;
        run_workload(&app, 7, videos).await;
        let stats = app.send("GET", "/v1/stats", None).await.json;
        assert_eq!(stats["strategy"], strategy);
        assert_eq!(
            stats["render_times"]["models"][0]["observations"],
            json!(videos),
            "{stats}"
        );
        reports.push(report(&app));
        app.stop().await;
    }
    let (exponential, adaptive) = (reports[0], reports[1]);
    let shown = format!("exponential {exponential:?}\nadaptive {adaptive:?}");
    println!("{shown}");
    assert_eq!(exponential.undetected + adaptive.undetected, 0, "{shown}");
    assert!(
        adaptive.delay_p50.as_secs_f64() * 1.5 <= exponential.delay_p50.as_secs_f64(),
        "{shown}"
    );
    assert!(adaptive.delay_mean < exponential.delay_mean, "{shown}");
    assert!(
        adaptive.calls_per_video <= 1.2 * exponential.calls_per_video,
        "{shown}"
    );
}
