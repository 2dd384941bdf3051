//! The read queries' contract: listing, gauges, the idle waits' due
//! times, the renders the learned schedule replays, and readiness.

use std::time::Duration;

use jogg_relay::domain::delivery::{AttemptRecord, DeliveryNext};
use jogg_relay::domain::poll::{PollUpdate, UpstreamFields};
use jogg_relay::domain::{Millis, VideoState};
use jogg_relay::store::{
    DeliveryCounts, FinishedRender, Gauges, HOUR_MILLIS, HourlyOutcomes, PushHint,
    RecentTransition, Store, TrackedRender, Writer,
};

use super::{HOOK, HOOK_2, OWN, details, ending, finish, id, names, ongoing, video};

/// Pages of videos in insertion order after a rowid cursor, each row as
/// the video's details show it, optionally of one state; a video added
/// later comes after every cursor already handed out.
pub(super) async fn case_list_videos_pages_by_cursor_and_state(store: &Store, writer: &Writer) {
    finish(writer, video("ls-done", 0), 500, VideoState::Completed, &[]).await;
    let batch = (1..=5).map(|i| video(&format!("ls-{i}"), 50_000)).collect();
    writer.enqueue(batch).await.unwrap();
    writer.enqueue(vec![video("ls-6", 50_000)]).await.unwrap();
    for raw in ["ls-2", "ls-4"] {
        writer.cancel(id(raw)).await.unwrap();
    }

    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list_videos(None, after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.iter().all(|v| v.id > after), "after the cursor");
        after = last.id;
        for row in &page {
            assert_eq!(*row, details(store, &row.video_id).await.video);
        }
        pages.push(page.into_iter().map(|v| v.video_id).collect::<Vec<_>>());
        assert!(pages.len() < 10, "pagination ends");
    }
    assert_eq!(
        pages,
        [
            vec!["ls-done", "ls-1"],
            vec!["ls-2", "ls-3"],
            vec!["ls-4", "ls-5"],
            vec!["ls-6"],
        ]
    );

    let listed = |state: Option<VideoState>, after: i64, limit: u32| async move {
        let page = store.list_videos(state, after, limit).await.unwrap();
        page.into_iter()
            .map(|v| (v.id, v.video_id))
            .collect::<Vec<_>>()
    };
    let ids = |page: &[(i64, String)]| page.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&listed(Some(VideoState::Active), 0, 10).await),
        ["ls-1", "ls-3", "ls-5", "ls-6"]
    );
    let first = listed(Some(VideoState::Cancelled), 0, 1).await;
    assert_eq!(ids(&first), ["ls-2"]);
    let second = listed(Some(VideoState::Cancelled), first[0].0, 1).await;
    assert_eq!(ids(&second), ["ls-4"]);
    assert!(
        listed(Some(VideoState::Cancelled), second[0].0, 1)
            .await
            .is_empty()
    );
    assert_eq!(
        ids(&listed(Some(VideoState::Completed), 0, 10).await),
        ["ls-done"]
    );
    assert!(listed(Some(VideoState::Failed), 0, 10).await.is_empty());
    assert!(listed(None, 0, 0).await.is_empty());

    writer.enqueue(vec![video("ls-7", 50_000)]).await.unwrap();
    assert_eq!(ids(&listed(None, after, 10).await), ["ls-7"]);
    assert_eq!(
        ids(&listed(Some(VideoState::Active), after, 10).await),
        ["ls-7"]
    );
}

/// The gauges count videos per state (absent states left out) and measure
/// how late the most overdue poll and delivery are, in seconds, at the
/// given time; a leased video or delivery is due at its lease's end.
pub(super) async fn case_gauges_count_states_and_measure_lags(store: &Store, writer: &Writer) {
    assert_eq!(
        store.gauges(Millis(5_000)).await.unwrap(),
        Gauges::default()
    );

    finish(
        writer,
        video("g-done", 0),
        2_500,
        VideoState::Completed,
        &[HOOK],
    )
    .await;
    finish(
        writer,
        video("g-gave-up", 0),
        2_600,
        VideoState::Abandoned,
        &[],
    )
    .await;
    writer
        .enqueue(vec![
            video("g-a", 1_000),
            video("g-b", 4_000),
            video("g-c", 3_000),
        ])
        .await
        .unwrap();
    writer.cancel(id("g-c")).await.unwrap();

    let gauges = |now| async move {
        let mut gauges = store.gauges(Millis(now)).await.unwrap();
        gauges.videos.sort_by_key(|(state, _)| state.as_str());
        gauges
    };
    let lags = |g: Gauges| (g.poll_lag_seconds, g.delivery_lag_seconds);
    let at_5000 = gauges(5_000).await;
    assert_eq!(
        at_5000.videos,
        [
            (VideoState::Abandoned, 1),
            (VideoState::Active, 2),
            (VideoState::Cancelled, 1),
            (VideoState::Completed, 1),
        ]
    );
    assert_eq!(lags(at_5000), (4.0, 2.5));
    assert_eq!(lags(gauges(900).await), (0.0, 0.0), "nothing overdue yet");
    assert_eq!(lags(gauges(2_000).await), (1.0, 0.0));

    let claimed = writer
        .claim_due(Millis(5_000), Millis(20_000), 1)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["g-a"]);
    let sending = writer
        .claim_deliveries(Millis(5_000), Millis(20_000), 10)
        .await
        .unwrap();
    assert_eq!(sending.len(), 1);
    assert_eq!(
        lags(gauges(5_000).await),
        (1.0, 0.0),
        "g-b is the most overdue now"
    );
    assert_eq!(lags(gauges(21_000).await), (17.0, 1.0));
}

/// The idle waits' reads: the earliest due poll among active videos and
/// the earliest due pending delivery, leases included; `None` when there
/// is none.
pub(super) async fn case_next_due_times_follow_the_queues(store: &Store, writer: &Writer) {
    let due = || async {
        (
            store.next_poll_due().await.unwrap(),
            store.next_delivery_due().await.unwrap(),
        )
    };
    assert_eq!(due().await, (None, None));
    writer
        .enqueue(vec![video("nd-a", 3_000), video("nd-b", 2_000)])
        .await
        .unwrap();
    assert_eq!(due().await, (Some(Millis(2_000)), None));
    let claimed = writer
        .claim_due(Millis(2_000), Millis(9_000), 1)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["nd-b"]);
    assert_eq!(due().await, (Some(Millis(3_000)), None));
    writer.cancel(id("nd-a")).await.unwrap();
    assert_eq!(due().await, (Some(Millis(9_000)), None), "the lease's end");

    let done = ending(
        &claimed[0],
        2_500,
        VideoState::Completed,
        "evt-nd-b",
        &[HOOK],
    );
    assert!(writer.record_poll(done).await.unwrap());
    assert_eq!(due().await, (None, Some(Millis(2_500))));
    let sending = writer
        .claim_deliveries(Millis(2_500), Millis(7_000), 10)
        .await
        .unwrap();
    assert_eq!(due().await, (None, Some(Millis(7_000))));
    let delivered = AttemptRecord {
        delivery_id: sending[0].id,
        lease: sending[0].lease,
        at: Millis(2_600),
        status: Some(200),
        error: None,
        duration_ms: 5,
        next: DeliveryNext::Delivered,
    };
    assert!(writer.record_attempt(delivered).await.unwrap());
    assert_eq!(due().await, (None, None));
}

/// Finished renders are the completed and failed videos (not abandoned,
/// cancelled or active ones), ordered by (terminal time, rowid), with the
/// times the schedule learns from, paged by that pair as cursor.
pub(super) async fn case_finished_renders_in_finish_order_with_a_cursor(
    store: &Store,
    writer: &Writer,
) {
    // fr-x is tracked first and finishes after fr-y: the order is the
    // finish order, not the order of tracking.
    writer.enqueue(vec![video("fr-x", 0)]).await.unwrap();
    let claimed = writer
        .claim_due(Millis(0), Millis(10_000), 10)
        .await
        .unwrap();
    let seen = PollUpdate {
        fields: UpstreamFields {
            created_at: Some(1_700_000_000),
            ..UpstreamFields::default()
        },
        rendering_seen_at: Some(Millis(500)),
        ..ongoing(&claimed[0], 500, "processing", 600)
    };
    assert!(writer.record_poll(seen).await.unwrap());
    let y = finish(writer, video("fr-y", 0), 1_000, VideoState::Failed, &[]).await;
    let claimed = writer
        .claim_due(Millis(600), Millis(10_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["fr-x"]);
    let x = claimed[0].id;
    let done = ending(&claimed[0], 3_000, VideoState::Completed, "evt-fr-x", &[]);
    assert!(writer.record_poll(done).await.unwrap());
    let w = finish(writer, video("fr-w", 0), 3_000, VideoState::Completed, &[]).await;
    finish(writer, video("fr-z", 0), 2_000, VideoState::Abandoned, &[]).await;
    writer
        .enqueue(vec![video("fr-u", 50_000), video("fr-k", 50_000)])
        .await
        .unwrap();
    writer.cancel(id("fr-k")).await.unwrap();
    assert!(x < y && y < w, "rowids in order of tracking");

    let render = |raw: &'static str,
                  id,
                  state: &'static str,
                  created_at,
                  seen_at: Option<i64>,
                  terminal_at| async move {
        FinishedRender {
            id,
            video_id: raw.to_owned(),
            state: state.to_owned(),
            enqueued_at: details(store, raw).await.video.enqueued_at,
            created_at,
            unfinished_seen_at: seen_at,
            rendering_seen_at: seen_at,
            terminal_at,
        }
    };
    let (ry, rx, rw) = (
        render("fr-y", y, "failed", None, None, 1_000).await,
        render(
            "fr-x",
            x,
            "completed",
            Some(1_700_000_000),
            Some(500),
            3_000,
        )
        .await,
        render("fr-w", w, "completed", None, None, 3_000).await,
    );
    let page = |after, limit| store.finished_renders(after, limit);
    assert_eq!(
        page(None, 10).await.unwrap(),
        [ry.clone(), rx.clone(), rw.clone()]
    );
    assert_eq!(page(None, 2).await.unwrap(), [ry.clone(), rx.clone()]);
    assert_eq!(
        page(Some((1_000, y)), 1).await.unwrap(),
        std::slice::from_ref(&rx)
    );
    assert_eq!(
        page(Some((3_000, x)), 10).await.unwrap(),
        std::slice::from_ref(&rw)
    );
    assert_eq!(page(Some((2_999, i64::MAX)), 10).await.unwrap(), [rx, rw]);
    assert!(page(Some((3_000, w)), 10).await.unwrap().is_empty());
}

/// The newest videos by rowid, whatever their state (adopted ones too),
/// returned oldest first.
pub(super) async fn case_newest_renders_oldest_first(store: &Store, writer: &Writer) {
    let first = finish(writer, video("nr-1", 0), 1_000, VideoState::Completed, &[]).await;
    writer
        .enqueue(vec![video("nr-2", 50_000), video("nr-3", 50_000)])
        .await
        .unwrap();
    writer.cancel(id("nr-3")).await.unwrap();
    writer.enqueue(vec![video("nr-4", 60_000)]).await.unwrap();
    let adopt = PushHint {
        video_id: id("nr-5"),
        at: Millis(7_000),
        min_interval: Duration::ZERO,
        adopt: true,
    };
    writer.hint(adopt).await.unwrap();

    let tracked = |raw: &'static str| async move {
        let row = details(store, raw).await.video;
        TrackedRender {
            id: row.id,
            state: row.state.as_str().to_owned(),
            enqueued_at: row.enqueued_at,
            created_at: None,
            unfinished_seen_at: None,
            rendering_seen_at: None,
            terminal_at: None,
        }
    };
    let newest = store.newest_renders(3).await.unwrap();
    let [cancelled, active, adopted] = &newest[..] else {
        panic!("three: {newest:?}");
    };
    // (Whether a cancelled video has a terminal time is not pinned.)
    assert_eq!(
        TrackedRender {
            terminal_at: None,
            ..cancelled.clone()
        },
        tracked("nr-3").await
    );
    assert_eq!(*active, tracked("nr-4").await);
    assert_eq!(*adopted, tracked("nr-5").await);
    assert_eq!(adopted.enqueued_at, 7_000);

    assert!(store.newest_renders(0).await.unwrap().is_empty());
    let all = store.newest_renders(100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(
        all[0],
        TrackedRender {
            id: first,
            state: "completed".to_owned(),
            terminal_at: Some(1_000),
            ..tracked("nr-1").await
        }
    );
    assert_eq!(all[1], tracked("nr-2").await);
    assert_eq!(all[2..], newest[..]);
}

/// Readiness succeeds on a healthy store, before and after writes, for
/// concurrent checks too.
pub(super) async fn case_readiness_succeeds_on_a_healthy_store(_store: &Store, writer: &Writer) {
    let limit = Duration::from_secs(5);
    assert_eq!(writer.readiness(limit).await, Ok(()));
    writer.enqueue(vec![video("ready-v", 100)]).await.unwrap();
    assert_eq!(writer.readiness(limit).await, Ok(()));
    let (a, b, c) = tokio::join!(
        writer.readiness(limit),
        writer.readiness(limit),
        writer.readiness(limit)
    );
    assert_eq!((a, b, c), (Ok(()), Ok(()), Ok(())));
}

/// The console overview's reads: deliveries counted per state over every
/// video, and the newest transitions of any video, newest first, each with
/// its video's id and current error and reason.
pub(super) async fn case_delivery_counts_and_recent_transitions(store: &Store, writer: &Writer) {
    assert_eq!(
        store.delivery_counts().await.unwrap(),
        DeliveryCounts::default()
    );
    assert!(store.recent_transitions(10).await.unwrap().is_empty());

    finish(
        writer,
        video("rt-done", 0),
        1_000,
        VideoState::Completed,
        &[HOOK, HOOK_2, OWN],
    )
    .await;
    finish(
        writer,
        video("rt-fail", 0),
        2_000,
        VideoState::Failed,
        &[HOOK],
    )
    .await;
    let claimed = writer
        .claim_deliveries(Millis(2_000), Millis(9_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4, "three targets of rt-done, one of rt-fail");
    let event_done = "evt-rt-done";
    let outcomes = [
        (HOOK, Some(200), DeliveryNext::Delivered),
        (HOOK_2, Some(503), DeliveryNext::Retry(Millis(4_000))),
        (OWN, Some(410), DeliveryNext::Dead("gone".to_owned())),
    ];
    for (url, status, next) in outcomes {
        let delivery = claimed
            .iter()
            .find(|d| d.url == url && d.event_id == event_done)
            .unwrap_or_else(|| panic!("a delivery of rt-done to {url}"));
        let done = AttemptRecord {
            delivery_id: delivery.id,
            lease: delivery.lease,
            at: Millis(2_100),
            status,
            error: None,
            duration_ms: 5,
            next,
        };
        assert!(writer.record_attempt(done).await.unwrap(), "{url}");
    }
    // rt-fail's delivery is leased, not attempted: still pending.
    assert_eq!(
        store.delivery_counts().await.unwrap(),
        DeliveryCounts {
            pending: 2,
            delivered: 1,
            dead: 1,
        }
    );

    let recent = |video: &str, kind: &str, from: Option<&str>, to: &str, at: i64, failed: bool| {
        RecentTransition {
            video_id: video.to_owned(),
            kind: kind.to_owned(),
            from_value: from.map(str::to_owned),
            to_value: to.to_owned(),
            at,
            error_code: failed.then(|| "render_failed".to_owned()),
            error_message: failed.then(|| "the render failed".to_owned()),
            reason: None,
        }
    };
    assert_eq!(
        store.recent_transitions(3).await.unwrap(),
        [
            recent("rt-fail", "state", Some("active"), "failed", 2_000, true),
            recent("rt-fail", "status", None, "failed", 2_000, true),
            recent(
                "rt-done",
                "state",
                Some("active"),
                "completed",
                1_000,
                false
            ),
        ]
    );
    assert_eq!(store.recent_transitions(10).await.unwrap().len(), 4);
    assert!(store.recent_transitions(0).await.unwrap().is_empty());
}

/// The console's plot of completions and failures per hour: terminal
/// `state` transitions counted per UTC hour since a time (inclusive),
/// oldest hour first, empty hours left out; the status transitions that
/// come with them, abandonments and cancellations are not counted. The
/// expectation is worked out by hand from the times chosen.
pub(super) async fn case_hourly_outcomes_count_terminal_transitions_per_hour(
    store: &Store,
    writer: &Writer,
) {
    const H: i64 = HOUR_MILLIS;
    assert!(store.hourly_outcomes(Millis(0)).await.unwrap().is_empty());
    let finished = [
        ("ho-before", 10 * H - 1, VideoState::Completed),
        ("ho-c1", 10 * H + 5, VideoState::Completed),
        ("ho-c2", 11 * H - 1, VideoState::Completed),
        ("ho-f1", 11 * H, VideoState::Failed),
        ("ho-a1", 11 * H + 5, VideoState::Abandoned),
        ("ho-c3", 12 * H + 100, VideoState::Completed),
        ("ho-f2", 12 * H + 200, VideoState::Failed),
        ("ho-f3", 14 * H + 7, VideoState::Failed),
    ];
    for (raw, at, state) in finished {
        finish(writer, video(raw, 0), at, state, &[HOOK]).await;
    }
    // Cancelled on the wall clock, long after every hour above.
    writer
        .enqueue(vec![video("ho-cancelled", 0)])
        .await
        .unwrap();
    writer.cancel(id("ho-cancelled")).await.unwrap();

    let hour = |hour: i64, completed: i64, failed: i64| HourlyOutcomes {
        hour: hour * H,
        completed,
        failed,
    };
    assert_eq!(
        store.hourly_outcomes(Millis(10 * H)).await.unwrap(),
        [
            hour(10, 2, 0),
            hour(11, 0, 1),
            hour(12, 1, 1),
            hour(14, 0, 1)
        ]
    );
    assert_eq!(
        store.hourly_outcomes(Millis(0)).await.unwrap(),
        [
            hour(9, 1, 0),
            hour(10, 2, 0),
            hour(11, 0, 1),
            hour(12, 1, 1),
            hour(14, 0, 1)
        ]
    );
    // `since` is inclusive, to the millisecond.
    assert_eq!(
        store.hourly_outcomes(Millis(11 * H)).await.unwrap(),
        [hour(11, 0, 1), hour(12, 1, 1), hour(14, 0, 1)]
    );
    assert_eq!(
        store.hourly_outcomes(Millis(11 * H + 1)).await.unwrap(),
        [hour(12, 1, 1), hour(14, 0, 1)]
    );
    assert!(
        store
            .hourly_outcomes(Millis(14 * H + 8))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The console's list: newest first (the reverse of insertion order)
/// before a rowid cursor, optionally of one state, of ids starting with a
/// prefix (`_` is an ordinary character there, not a wildcard); paging by
/// the last row's id visits each row once, even while videos are added.
pub(super) async fn case_browse_videos_newest_first_by_prefix_and_state(
    store: &Store,
    writer: &Writer,
) {
    finish(writer, video("br-done", 0), 500, VideoState::Completed, &[]).await;
    let batch = ["br-1", "br-2", "brx3", "br_4", "other", "br-5"]
        .into_iter()
        .map(|raw| video(raw, 50_000))
        .collect();
    writer.enqueue(batch).await.unwrap();
    writer.cancel(id("br-2")).await.unwrap();

    let walk = |state: Option<VideoState>, prefix: &'static str, limit: u32| async move {
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .browse_videos(state, prefix, before, limit)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            assert!(
                page.iter().all(|v| before.is_none_or(|b| v.id < b)),
                "before the cursor"
            );
            before = Some(last.id);
            for row in &page {
                assert_eq!(*row, details(store, &row.video_id).await.video);
            }
            pages.push(page.into_iter().map(|v| v.video_id).collect::<Vec<_>>());
            assert!(pages.len() < 10, "paging ends");
        }
        pages
    };
    assert_eq!(
        walk(None, "", 3).await,
        [
            vec!["br-5", "other", "br_4"],
            vec!["brx3", "br-2", "br-1"],
            vec!["br-done"],
        ]
    );
    assert_eq!(
        walk(None, "br-", 10).await,
        [vec!["br-5", "br-2", "br-1", "br-done"]]
    );
    // `_` matches only itself.
    assert_eq!(walk(None, "br_", 10).await, [vec!["br_4"]]);
    assert_eq!(walk(None, "br-2", 10).await, [vec!["br-2"]]);
    assert_eq!(walk(None, "BR-", 10).await, Vec::<Vec<String>>::new());
    assert_eq!(
        walk(Some(VideoState::Active), "br-", 1).await,
        [vec!["br-5"], vec!["br-1"]]
    );
    assert_eq!(
        walk(Some(VideoState::Cancelled), "", 10).await,
        [vec!["br-2"]]
    );
    assert_eq!(walk(Some(VideoState::Failed), "", 10).await.len(), 0);

    // A video added while an operator pages comes before the first page,
    // not inside the walk.
    let first = store.browse_videos(None, "br", None, 2).await.unwrap();
    writer.enqueue(vec![video("br-6", 50_000)]).await.unwrap();
    let rest = store
        .browse_videos(None, "br", Some(first[1].id), 10)
        .await
        .unwrap();
    let seen: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|v| v.video_id.as_str())
        .collect();
    assert_eq!(seen, ["br-5", "br_4", "brx3", "br-2", "br-1", "br-done"]);
    assert_eq!(
        store.browse_videos(None, "br", None, 1).await.unwrap()[0].video_id,
        "br-6"
    );
}

/// Every attempt of a video's deliveries, in the order made, with its
/// target, time, and status or error; another video's are not included.
pub(super) async fn case_delivery_attempts_of_one_video(store: &Store, writer: &Writer) {
    let rowid = finish(
        writer,
        video("da-1", 0),
        1_000,
        VideoState::Completed,
        &[HOOK, HOOK_2],
    )
    .await;
    finish(
        writer,
        video("da-2", 0),
        1_000,
        VideoState::Completed,
        &[HOOK],
    )
    .await;
    assert!(store.delivery_attempts(rowid).await.unwrap().is_empty());
    let attempt = |at: i64, status: Option<u16>, error: Option<&str>, next| {
        let error = error.map(str::to_owned);
        async move {
            let mut claimed = writer
                .claim_deliveries(Millis(at), Millis(at + 1_000), 10)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 3, "two of da-1, one of da-2");
            // Attempts recorded in delivery order (creation order).
            claimed.sort_by_key(|d| d.id);
            for delivery in claimed {
                let done = AttemptRecord {
                    delivery_id: delivery.id,
                    lease: delivery.lease,
                    at: Millis(at),
                    status,
                    error: error.clone(),
                    duration_ms: 5,
                    next: match &next {
                        Some(retry) => DeliveryNext::Retry(Millis(*retry)),
                        None => DeliveryNext::Delivered,
                    },
                };
                assert!(writer.record_attempt(done).await.unwrap());
            }
        }
    };
    attempt(1_000, None, Some("connection refused"), Some(2_000)).await;
    attempt(2_000, Some(200), None, None).await;
    let attempts = store.delivery_attempts(rowid).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.url.as_str(), a.at, a.status, a.error.as_deref()))
        .collect();
    let refused = Some("connection refused");
    assert_eq!(
        seen,
        [
            (HOOK, 1_000, None, refused),
            (HOOK_2, 1_000, None, refused),
            (HOOK, 2_000, Some(200), None),
            (HOOK_2, 2_000, Some(200), None),
        ]
    );
}
