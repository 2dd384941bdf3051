//! Poll results and pushes: what a recorded poll changes (or, stale,
//! does not), the terminal transaction, and what a verified push does to
//! a video's schedule.

use jogg_relay::domain::poll::{NewTransition, PollUpdate, TransitionKind, UpstreamFields};
use jogg_relay::domain::{Millis, VideoState};
use jogg_relay::store::{
    CancelOutcome, DeliveryRecord, EnqueueOutcome, FinishedRender, HintOutcome, NewVideo, PushHint,
    Store, Writer,
};

use super::{
    HOOK, OWN, details, ending, finish, id, json, names, ongoing, pick, push, transition, video,
};

/// A result that leaves the video active updates its counters, fields and
/// next due time: a failed poll is not counted, a field not learned keeps
/// its value, the first poll that saw it rendering stays, the last that
/// saw it unfinished moves; transitions are appended at the result's time.
pub(super) async fn case_record_poll_updates_counters_and_the_schedule(
    store: &Store,
    writer: &Writer,
) {
    writer.enqueue(vec![video("rec-v", 100)]).await.unwrap();
    let claimed = writer
        .claim_due(Millis(100), Millis(10_000), 1)
        .await
        .unwrap();
    let first = PollUpdate {
        unchanged_polls: 0,
        fields: UpstreamFields {
            created_at: Some(1_700_000_000),
            ..UpstreamFields::default()
        },
        transitions: vec![NewTransition {
            kind: TransitionKind::Status,
            from: None,
            to: "pending".to_owned(),
        }],
        ..ongoing(&claimed[0], 200, "pending", 1_100)
    };
    assert!(writer.record_poll(first).await.unwrap());
    let stored = details(store, "rec-v").await;
    assert_eq!(stored.video.state, VideoState::Active);
    assert_eq!(stored.video.upstream_status.as_deref(), Some("pending"));
    assert_eq!(stored.video.created_at, Some(1_700_000_000));
    assert_eq!(
        (
            stored.video.polls,
            stored.video.next_poll_at,
            stored.video.updated_at
        ),
        (1, Some(1_100), 200)
    );
    assert_eq!(
        stored.transitions,
        [transition("status", None, "pending", 200)]
    );
    assert!(stored.deliveries.is_empty());
    assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(1_100)));
    assert!(
        writer
            .claim_due(Millis(1_099), Millis(20_000), 1)
            .await
            .unwrap()
            .is_empty()
    );

    let claimed = writer
        .claim_due(Millis(1_100), Millis(20_000), 1)
        .await
        .unwrap();
    let v = &claimed[0];
    assert_eq!((v.polls, v.unchanged_polls, v.error_streak), (1, 0, 0));
    assert_eq!(v.upstream_status.as_deref(), Some("pending"));
    assert_eq!(v.created_at, Some(1_700_000_000));
    assert_eq!(
        (v.unfinished_seen_at, v.rendering_seen_at),
        (Some(Millis(200)), None)
    );
    // The same status again: one more unchanged answer, nothing logged.
    assert!(
        writer
            .record_poll(ongoing(v, 1_200, "pending", 2_500))
            .await
            .unwrap()
    );

    let claimed = writer
        .claim_due(Millis(2_500), Millis(20_000), 1)
        .await
        .unwrap();
    // A failed poll: not counted, the streak grows, the status stays.
    let failed = PollUpdate {
        counted: false,
        error_streak: 1,
        unchanged_polls: claimed[0].unchanged_polls,
        unfinished_seen_at: None,
        ..ongoing(&claimed[0], 2_600, "pending", 4_000)
    };
    assert!(writer.record_poll(failed).await.unwrap());

    let claimed = writer
        .claim_due(Millis(4_000), Millis(20_000), 1)
        .await
        .unwrap();
    let v = &claimed[0];
    assert_eq!((v.polls, v.unchanged_polls, v.error_streak), (2, 1, 1));
    assert_eq!(v.unfinished_seen_at, Some(Millis(1_200)));
    let rendering = PollUpdate {
        unchanged_polls: 0,
        rendering_seen_at: Some(Millis(4_100)),
        transitions: vec![NewTransition {
            kind: TransitionKind::Status,
            from: Some("pending".to_owned()),
            to: "processing".to_owned(),
        }],
        ..ongoing(v, 4_100, "processing", 5_000)
    };
    assert!(writer.record_poll(rendering).await.unwrap());

    let claimed = writer
        .claim_due(Millis(5_000), Millis(20_000), 1)
        .await
        .unwrap();
    let later = PollUpdate {
        rendering_seen_at: Some(Millis(5_100)),
        ..ongoing(&claimed[0], 5_100, "processing", 6_000)
    };
    assert!(writer.record_poll(later).await.unwrap());
    let claimed = writer
        .claim_due(Millis(6_000), Millis(20_000), 1)
        .await
        .unwrap();
    let v = &claimed[0];
    assert_eq!((v.polls, v.unchanged_polls, v.error_streak), (4, 1, 0));
    assert_eq!(
        (v.unfinished_seen_at, v.rendering_seen_at),
        (Some(Millis(5_100)), Some(Millis(4_100)))
    );
    assert_eq!(
        details(store, "rec-v").await.transitions,
        [
            transition("status", None, "pending", 200),
            transition("status", Some("pending"), "processing", 4_100),
        ]
    );
}

/// A result whose claim lost its lease (it expired and the video was
/// claimed again, the result was already recorded, or the video was
/// cancelled) is discarded: `false`, and nothing changes.
pub(super) async fn case_record_poll_discards_a_stale_result(store: &Store, writer: &Writer) {
    writer
        .enqueue(vec![NewVideo {
            callback_url: Some(OWN.to_owned()),
            ..video("stale-v", 100)
        }])
        .await
        .unwrap();
    let stale = writer
        .claim_due(Millis(100), Millis(1_000), 1)
        .await
        .unwrap();
    let fresh = writer
        .claim_due(Millis(1_000), Millis(3_000), 1)
        .await
        .unwrap();
    let untouched = details(store, "stale-v").await;

    let late = ending(&stale[0], 1_500, VideoState::Completed, "evt-stale", &[OWN]);
    assert!(!writer.record_poll(late.clone()).await.unwrap());
    assert_eq!(details(store, "stale-v").await, untouched);
    assert_eq!(store.next_delivery_due().await.unwrap(), None);

    // Both in flight at once (one group commit): only the fresh one lands.
    let (old, new) = tokio::join!(
        writer.record_poll(late),
        writer.record_poll(ongoing(&fresh[0], 1_600, "processing", 5_000)),
    );
    assert_eq!((old.unwrap(), new.unwrap()), (false, true));
    let recorded = details(store, "stale-v").await;
    assert_eq!(recorded.video.state, VideoState::Active);
    assert_eq!(
        (recorded.video.polls, recorded.video.next_poll_at),
        (1, Some(5_000))
    );
    assert_eq!(recorded.video.event_id, None);
    assert!(recorded.deliveries.is_empty());

    // The same lease again: already handed in with its result.
    let repeat = ongoing(&fresh[0], 1_700, "processing", 2_000);
    assert!(!writer.record_poll(repeat).await.unwrap());
    assert_eq!(details(store, "stale-v").await, recorded);

    // Cancelled while its poll was in flight.
    let claimed = writer
        .claim_due(Millis(5_000), Millis(9_000), 1)
        .await
        .unwrap();
    assert_eq!(
        writer.cancel(id("stale-v")).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let cancelled = details(store, "stale-v").await;
    let done = ending(
        &claimed[0],
        5_500,
        VideoState::Completed,
        "evt-late",
        &[OWN],
    );
    assert!(!writer.record_poll(done).await.unwrap());
    assert_eq!(details(store, "stale-v").await, cancelled);
    assert_eq!(cancelled.video.state, VideoState::Cancelled);
}

/// A terminal result commits together the terminal state with its event
/// id, the fields, the transitions (in order, at the result's time) and
/// one pending delivery of that event per target, due at once; the video
/// is no longer due, and a completed one is a finished render. An
/// abandoned video keeps its reason and, without targets, has no delivery.
pub(super) async fn case_record_poll_terminal_commits_state_transitions_and_outbox(
    store: &Store,
    writer: &Writer,
) {
    writer
        .enqueue(vec![
            NewVideo {
                callback_url: Some(OWN.to_owned()),
                metadata: Some(r#"{"k":1}"#.to_owned()),
                ..video("term-v", 100)
            },
            video("term-gone", 100),
        ])
        .await
        .unwrap();
    let claimed = writer
        .claim_due(Millis(100), Millis(10_000), 10)
        .await
        .unwrap();
    let pending = PollUpdate {
        transitions: vec![NewTransition {
            kind: TransitionKind::Status,
            from: None,
            to: "pending".to_owned(),
        }],
        ..ongoing(pick(&claimed, "term-v"), 200, "pending", 1_000)
    };
    assert!(writer.record_poll(pending).await.unwrap());
    let gone = ending(
        pick(&claimed, "term-gone"),
        300,
        VideoState::Abandoned,
        "evt-gone",
        &[],
    );
    assert!(writer.record_poll(gone).await.unwrap());

    let claimed = writer
        .claim_due(Millis(1_000), Millis(10_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["term-v"]);
    let done = PollUpdate {
        fields: UpstreamFields {
            video_url: Some("https://cdn.example.com/term-v.mp4".to_owned()),
            cover_url: Some("https://cdn.example.com/term-v.jpg".to_owned()),
            created_at: Some(1_700_000_000),
            duration: Some(12.5),
            error_code: None,
            error_message: None,
        },
        rendering_seen_at: Some(Millis(1_500)),
        ..ending(
            &claimed[0],
            1_500,
            VideoState::Completed,
            "evt-done",
            &[HOOK, OWN],
        )
    };
    assert!(writer.record_poll(done).await.unwrap());

    let stored = details(store, "term-v").await;
    let row = &stored.video;
    assert_eq!(row.state, VideoState::Completed);
    assert_eq!(row.event_id.as_deref(), Some("evt-done"));
    assert_eq!(row.upstream_status.as_deref(), Some("completed"));
    assert_eq!(
        row.video_url.as_deref(),
        Some("https://cdn.example.com/term-v.mp4")
    );
    assert_eq!(
        row.cover_url.as_deref(),
        Some("https://cdn.example.com/term-v.jpg")
    );
    assert_eq!(
        (row.created_at, row.duration),
        (Some(1_700_000_000), Some(12.5))
    );
    assert_eq!(
        (row.polls, row.next_poll_at, row.updated_at),
        (2, None, 1_500)
    );
    assert_eq!((&row.reason, &row.error_code), (&None, &None));
    assert_eq!(
        stored.transitions,
        [
            transition("status", None, "pending", 200),
            transition("status", Some("pending"), "completed", 1_500),
            transition("state", Some("active"), "completed", 1_500),
        ]
    );
    let mut deliveries = stored.deliveries.clone();
    deliveries.sort_by(|a, b| a.url.cmp(&b.url));
    let due = |url: &str| DeliveryRecord {
        url: url.to_owned(),
        event_id: "evt-done".to_owned(),
        state: "pending".to_owned(),
        attempts: 0,
        last_status: None,
        last_error: None,
        reason: None,
        next_attempt_at: Some(1_500),
    };
    assert_eq!(deliveries, [due(HOOK), due(OWN)]);

    let abandoned = details(store, "term-gone").await;
    assert_eq!(abandoned.video.state, VideoState::Abandoned);
    assert_eq!(abandoned.video.reason.as_deref(), Some("deadline"));
    assert_eq!(abandoned.video.event_id.as_deref(), Some("evt-gone"));
    assert_eq!(
        abandoned.transitions,
        [transition("state", Some("active"), "abandoned", 300)]
    );
    assert!(abandoned.deliveries.is_empty());

    assert_eq!(store.next_poll_due().await.unwrap(), None);
    assert_eq!(
        store.next_delivery_due().await.unwrap(),
        Some(Millis(1_500))
    );
    assert!(
        writer
            .claim_due(Millis(i64::MAX / 2), Millis(i64::MAX / 2), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.finished_renders(None, 10).await.unwrap(),
        [FinishedRender {
            id: row.id,
            video_id: "term-v".to_owned(),
            state: "completed".to_owned(),
            enqueued_at: row.enqueued_at,
            created_at: Some(1_700_000_000),
            unfinished_seen_at: Some(200),
            rendering_seen_at: Some(1_500),
            terminal_at: 1_500,
        }]
    );
    assert_eq!(json(row.metadata.as_deref()), json(Some(r#"{"k":1}"#)));
}

/// A push that arrives while a poll is in flight is not answered by it: it
/// stays pending and brings the next poll forward to the result's
/// `repoll_after_push_at`. A push from before the claim is answered by a
/// successful poll (cleared), not by a failed one (kept).
pub(super) async fn case_record_poll_keeps_a_push_that_arrived_during_the_poll(
    store: &Store,
    writer: &Writer,
) {
    writer
        .enqueue(vec![
            video("race-early", 100),
            video("race-late", 100),
            video("race-flaky", 100),
        ])
        .await
        .unwrap();
    for (raw, at) in [("race-early", 50), ("race-flaky", 60)] {
        assert_eq!(
            writer.hint(push(raw, at, 0)).await.unwrap(),
            HintOutcome::Hinted { due_at: Millis(at) }
        );
    }
    let claimed = writer
        .claim_due(Millis(1_000), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["race-early", "race-flaky", "race-late"]);
    assert_eq!(pick(&claimed, "race-late").hinted_at, None);
    assert_eq!(
        writer.hint(push("race-late", 1_500, 10_000)).await.unwrap(),
        HintOutcome::Hinted {
            due_at: Millis(60_000)
        },
        "a leased video keeps its due time"
    );

    let result = |raw: &str| PollUpdate {
        repoll_after_push_at: Millis(12_000),
        ..ongoing(pick(&claimed, raw), 2_000, "processing", 30_000)
    };
    assert!(writer.record_poll(result("race-early")).await.unwrap());
    assert!(writer.record_poll(result("race-late")).await.unwrap());
    let failed = PollUpdate {
        counted: false,
        error_streak: 1,
        next_poll_at: Some(Millis(4_000)),
        ..result("race-flaky")
    };
    assert!(writer.record_poll(failed).await.unwrap());

    assert_eq!(
        details(store, "race-late").await.video.next_poll_at,
        Some(12_000)
    );
    assert_eq!(
        details(store, "race-early").await.video.next_poll_at,
        Some(30_000)
    );
    assert_eq!(
        details(store, "race-flaky").await.video.next_poll_at,
        Some(4_000)
    );
    let flaky = writer
        .claim_due(Millis(4_000), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&flaky), ["race-flaky"]);
    assert_eq!(flaky[0].hinted_at, Some(Millis(60)), "still pending");
    let late = writer
        .claim_due(Millis(12_000), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&late), ["race-late"]);
    assert_eq!(late[0].hinted_at, Some(Millis(1_500)));
    assert!(late[0].answers_push());
    let early = writer
        .claim_due(Millis(30_000), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&early), ["race-early"]);
    assert_eq!(early[0].hinted_at, None, "answered");
}

/// A push makes an unleased active video due at `max(push, last poll +
/// min_interval)`, never later than it was due; a leased video keeps its
/// due time and its lease; the latest push is the one kept.
pub(super) async fn case_hint_brings_the_poll_forward_within_min_interval(
    _store: &Store,
    writer: &Writer,
) {
    writer
        .enqueue(vec![
            video("hint-polled", 100),
            video("hint-leased", 100),
            video("hint-fresh", 10_000),
            video("hint-early", 1_500),
        ])
        .await
        .unwrap();
    let claimed = writer
        .claim_due(Millis(100), Millis(50_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["hint-leased", "hint-polled"]);
    let polled = ongoing(pick(&claimed, "hint-polled"), 2_000, "pending", 20_000);
    assert!(writer.record_poll(polled).await.unwrap());

    let due = |at| HintOutcome::Hinted { due_at: Millis(at) };
    // Never polled: due at the push.
    assert_eq!(
        writer.hint(push("hint-fresh", 1_000, 500)).await.unwrap(),
        due(1_000)
    );
    // Polled at 2_000: not before 2_000 + 1_000.
    assert_eq!(
        writer
            .hint(push("hint-polled", 2_100, 1_000))
            .await
            .unwrap(),
        due(3_000)
    );
    // Already due sooner than the push.
    assert_eq!(
        writer.hint(push("hint-early", 2_000, 0)).await.unwrap(),
        due(1_500)
    );
    // In flight: untouched.
    assert_eq!(
        writer.hint(push("hint-leased", 2_000, 0)).await.unwrap(),
        due(50_000)
    );
    // A later push: still not before 3_000, and it is the one kept.
    assert_eq!(
        writer
            .hint(push("hint-polled", 2_500, 1_000))
            .await
            .unwrap(),
        due(3_000)
    );

    let at_1499 = writer
        .claim_due(Millis(1_499), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&at_1499), ["hint-fresh"]);
    assert_eq!(at_1499[0].hinted_at, Some(Millis(1_000)));
    let at_2999 = writer
        .claim_due(Millis(2_999), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&at_2999), ["hint-early"]);
    let at_3000 = writer
        .claim_due(Millis(3_000), Millis(60_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&at_3000), ["hint-polled"]);
    assert_eq!(at_3000[0].hinted_at, Some(Millis(2_500)));

    let leased = ongoing(pick(&claimed, "hint-leased"), 2_200, "pending", 4_000);
    assert!(writer.record_poll(leased).await.unwrap(), "its lease held");
}

/// A push for an untracked id is ignored, or with adoption tracks it (no
/// callback URL or metadata, enqueued and due at the push, the push
/// pending); a push for a terminal video changes nothing.
pub(super) async fn case_hint_adopts_untracked_and_leaves_terminal_videos(
    store: &Store,
    writer: &Writer,
) {
    finish(
        writer,
        video("adopt-done", 0),
        40,
        VideoState::Completed,
        &[HOOK],
    )
    .await;
    writer
        .enqueue(vec![video("adopt-stopped", 50_000)])
        .await
        .unwrap();
    writer.cancel(id("adopt-stopped")).await.unwrap();
    let (done, stopped) = (
        details(store, "adopt-done").await,
        details(store, "adopt-stopped").await,
    );

    let adopting = |raw: &str, at| PushHint {
        adopt: true,
        ..push(raw, at, 0)
    };
    assert_eq!(
        writer.hint(push("adopt-stray", 7_000, 0)).await.unwrap(),
        HintOutcome::Untracked
    );
    assert_eq!(store.video_details(&id("adopt-stray")).await.unwrap(), None);
    assert_eq!(
        writer.hint(adopting("adopt-stray", 7_000)).await.unwrap(),
        HintOutcome::Adopted
    );
    let adopted = details(store, "adopt-stray").await.video;
    assert_eq!(adopted.state, VideoState::Active);
    assert_eq!(
        (adopted.enqueued_at, adopted.next_poll_at),
        (7_000, Some(7_000))
    );
    assert_eq!((adopted.callback_url, adopted.metadata), (None, None));
    assert_eq!(
        writer.enqueue(vec![video("adopt-stray", 1)]).await.unwrap(),
        [EnqueueOutcome::Existing],
        "the same as an enqueue without callback URL or metadata"
    );
    let claimed = writer
        .claim_due(Millis(7_000), Millis(9_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["adopt-stray"]);
    assert_eq!(claimed[0].hinted_at, Some(Millis(7_000)));
    assert_eq!(
        writer.hint(adopting("adopt-stray", 8_000)).await.unwrap(),
        HintOutcome::Hinted {
            due_at: Millis(9_000)
        },
        "tracked now: hinted, not adopted twice"
    );

    assert_eq!(
        writer.hint(adopting("adopt-done", 8_000)).await.unwrap(),
        HintOutcome::NotActive(VideoState::Completed)
    );
    assert_eq!(
        writer.hint(push("adopt-stopped", 8_000, 0)).await.unwrap(),
        HintOutcome::NotActive(VideoState::Cancelled)
    );
    assert_eq!(details(store, "adopt-done").await, done);
    assert_eq!(details(store, "adopt-stopped").await, stopped);
    assert_eq!(store.list_videos(None, 0, 10).await.unwrap().len(), 3);
}
