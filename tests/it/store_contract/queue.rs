//! The poll queue's contract: enqueue, cancel, claims with their leases
//! (plain, push-first and ranked), and hand-backs.

use std::sync::{Arc, Mutex};

use jogg_relay::domain::poll::{DueVideo, RANKED_WINDOW, Ranker, Release};
use jogg_relay::domain::{Lease, Millis, StoredId, VideoState};
use jogg_relay::store::{
    CancelOutcome, ConflictingFields, EnqueueOutcome, HintOutcome, NewVideo, Store, Writer,
};

use super::{HOOK, OWN, details, finish, id, json, names, ongoing, pick, push, transition, video};

/// A new video is created, stamped with the commit's wall-clock time and
/// stored with what was asked; the same request again (metadata spelled
/// differently, another first poll time) is `Existing` and changes nothing.
pub(super) async fn case_enqueue_creates_then_repeats_without_change(
    store: &Store,
    writer: &Writer,
) {
    let first = NewVideo {
        callback_url: Some(OWN.to_owned()),
        metadata: Some(r#"{"order":7,"tags":["x","y"]}"#.to_owned()),
        ..video("enq-a", 5_000)
    };
    let before = Millis::now();
    let outcomes = writer
        .enqueue(vec![first.clone(), video("enq-b", 6_000)])
        .await
        .unwrap();
    let after = Millis::now();
    let [
        EnqueueOutcome::Created { at },
        EnqueueOutcome::Created { at: at_b },
    ] = outcomes[..]
    else {
        panic!("both are new: {outcomes:?}");
    };
    assert!(before <= at && at <= after, "{at:?} not within the call");

    let stored = details(store, "enq-a").await;
    let row = &stored.video;
    assert_eq!(row.video_id, "enq-a");
    assert_eq!(row.state, VideoState::Active);
    assert_eq!(row.enqueued_at, at.0);
    assert_eq!(row.next_poll_at, Some(5_000));
    assert_eq!(row.callback_url.as_deref(), Some(OWN));
    assert_eq!(
        json(row.metadata.as_deref()),
        json(Some(r#"{"tags":["x","y"],"order":7}"#))
    );
    assert_eq!(
        (row.polls, &row.upstream_status, &row.event_id, &row.reason),
        (0, &None, &None, &None)
    );
    assert!(stored.transitions.is_empty() && stored.deliveries.is_empty());
    let plain = details(store, "enq-b").await;
    assert_eq!(plain.video.enqueued_at, at_b.0);
    assert_eq!(
        (plain.video.callback_url, plain.video.metadata),
        (None, None)
    );

    let repeat = NewVideo {
        metadata: Some(r#"{ "tags" : [ "x", "y" ], "order" : 7 }"#.to_owned()),
        first_poll_at: Millis(1),
        ..first
    };
    assert_eq!(
        writer
            .enqueue(vec![repeat, video("enq-b", 1)])
            .await
            .unwrap(),
        [EnqueueOutcome::Existing, EnqueueOutcome::Existing]
    );
    assert_eq!(details(store, "enq-a").await, stored, "nothing changed");
    assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(5_000)));
}

/// A different request for a tracked id is refused, naming the fields that
/// differ: a field given on one side only differs, metadata is compared as
/// JSON (key order does not count, array order and extra keys do); the
/// tracked videos stay as they were.
pub(super) async fn case_enqueue_refuses_a_different_request_naming_the_fields(
    store: &Store,
    writer: &Writer,
) {
    let meta = r#"{"k":1,"l":[1,2]}"#;
    let tracked = NewVideo {
        callback_url: Some(OWN.to_owned()),
        metadata: Some(meta.to_owned()),
        ..video("conf-a", 100)
    };
    writer
        .enqueue(vec![tracked.clone(), video("conf-b", 100)])
        .await
        .unwrap();
    let (a, b) = (
        details(store, "conf-a").await,
        details(store, "conf-b").await,
    );
    let with = |raw: &str, url: Option<&str>, metadata: Option<&str>| NewVideo {
        callback_url: url.map(str::to_owned),
        metadata: metadata.map(str::to_owned),
        ..video(raw, 100)
    };
    let differ = |callback_url, metadata| {
        EnqueueOutcome::Conflict(ConflictingFields {
            callback_url,
            metadata,
        })
    };
    let outcomes = writer
        .enqueue(vec![
            with("conf-a", Some(HOOK), Some(meta)),
            with("conf-a", None, Some(meta)),
            with("conf-a", Some(OWN), Some(r#"{"k":2,"l":[1,2]}"#)),
            with("conf-a", Some(OWN), None),
            with("conf-a", Some(OWN), Some(r#"{"k":1,"l":[2,1]}"#)),
            with("conf-a", Some(OWN), Some(r#"{"k":1,"l":[1,2],"m":null}"#)),
            with("conf-a", None, None),
            with("conf-a", Some(OWN), Some(r#"{"l":[1,2],"k":1}"#)),
            with("conf-b", Some(OWN), None),
            with("conf-b", None, Some("{}")),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            differ(true, false),
            differ(true, false),
            differ(false, true),
            differ(false, true),
            differ(false, true),
            differ(false, true),
            differ(true, true),
            EnqueueOutcome::Existing,
            differ(true, false),
            differ(false, true),
        ]
    );
    assert_eq!(details(store, "conf-a").await, a);
    assert_eq!(details(store, "conf-b").await, b);
}

/// One outcome per requested video, in request order; an id repeated in
/// one batch is stored once, as its first occurrence asked, and the later
/// occurrences are judged against it; the batch's new videos are listed in
/// request order. Two concurrent enqueues of one id: exactly one creates.
pub(super) async fn case_enqueue_batch_outcomes_follow_request_order(
    store: &Store,
    writer: &Writer,
) {
    writer.enqueue(vec![video("bat-t", 100)]).await.unwrap();
    let own = |raw: &str, due: i64, url: &str| NewVideo {
        callback_url: Some(url.to_owned()),
        ..video(raw, due)
    };
    let outcomes = writer
        .enqueue(vec![
            own("bat-n1", 200, OWN),
            video("bat-t", 100),
            own("bat-n1", 999, OWN),
            video("bat-n2", 300),
            own("bat-n1", 200, HOOK),
            own("bat-t", 100, OWN),
        ])
        .await
        .unwrap();
    let url_differs = EnqueueOutcome::Conflict(ConflictingFields {
        callback_url: true,
        metadata: false,
    });
    assert!(
        matches!(
            outcomes[..],
            [
                EnqueueOutcome::Created { .. },
                EnqueueOutcome::Existing,
                EnqueueOutcome::Existing,
                EnqueueOutcome::Created { .. },
                _,
                _,
            ]
        ) && outcomes[4..] == [url_differs, url_differs],
        "{outcomes:?}"
    );
    let n1 = details(store, "bat-n1").await.video;
    assert_eq!(
        (n1.next_poll_at, n1.callback_url.as_deref()),
        (Some(200), Some(OWN))
    );
    let listed = store.list_videos(None, 0, 10).await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|v| v.video_id.as_str()).collect();
    assert_eq!(listed, ["bat-t", "bat-n1", "bat-n2"]);

    let (one, other) = tokio::join!(
        writer.enqueue(vec![own("bat-race", 100, OWN)]),
        writer.enqueue(vec![own("bat-race", 100, HOOK)]),
    );
    let (one, other) = (one.unwrap(), other.unwrap());
    let winner = match (&one[..], &other[..]) {
        ([EnqueueOutcome::Created { .. }], [loser]) => {
            assert_eq!(*loser, url_differs);
            OWN
        }
        ([loser], [EnqueueOutcome::Created { .. }]) => {
            assert_eq!(*loser, url_differs);
            HOOK
        }
        _ => panic!("exactly one creates: {one:?} {other:?}"),
    };
    let race = details(store, "bat-race").await.video;
    assert_eq!(race.callback_url.as_deref(), Some(winner));
}

/// Cancel moves an active video to `cancelled` (logged, no longer due);
/// again it is `AlreadyCancelled`; a video in another terminal state keeps
/// it; an unknown id is `NotFound`.
pub(super) async fn case_cancel_outcomes(store: &Store, writer: &Writer) {
    finish(writer, video("can-done", 0), 50, VideoState::Completed, &[]).await;
    writer
        .enqueue(vec![video("can-1", 100), video("can-2", 200)])
        .await
        .unwrap();
    let done = details(store, "can-done").await;

    let before = Millis::now().0;
    assert_eq!(
        writer.cancel(id("can-1")).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let after = Millis::now().0;
    let cancelled = details(store, "can-1").await;
    assert_eq!(cancelled.video.state, VideoState::Cancelled);
    assert_eq!(cancelled.video.next_poll_at, None);
    assert_eq!(cancelled.video.event_id, None);
    let [logged] = &cancelled.transitions[..] else {
        panic!("one transition: {:?}", cancelled.transitions);
    };
    assert!(before <= logged.at && logged.at <= after);
    assert_eq!(
        *logged,
        transition("state", Some("active"), "cancelled", logged.at)
    );
    assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(200)));

    assert_eq!(
        writer.cancel(id("can-1")).await.unwrap(),
        CancelOutcome::AlreadyCancelled
    );
    assert_eq!(details(store, "can-1").await, cancelled);
    assert_eq!(
        writer.cancel(id("can-done")).await.unwrap(),
        CancelOutcome::Terminal(VideoState::Completed)
    );
    assert_eq!(details(store, "can-done").await, done);
    assert_eq!(
        writer.cancel(id("can-none")).await.unwrap(),
        CancelOutcome::NotFound
    );
    assert_eq!(store.video_details(&id("can-none")).await.unwrap(), None);

    let claimed = writer
        .claim_due(Millis(1_000_000), Millis(2_000_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["can-2"], "only the active video is due");
}

/// A claim takes only active videos due at its time, the most overdue
/// first, at most `limit`; each claimed video carries its row and the
/// claim's lease and time, and is not claimed again while leased.
pub(super) async fn case_claim_takes_due_videos_most_overdue_first_within_the_limit(
    store: &Store,
    writer: &Writer,
) {
    let outcomes = writer
        .enqueue(vec![
            video("due-a", 300),
            NewVideo {
                callback_url: Some(OWN.to_owned()),
                ..video("due-b", 100)
            },
            video("due-c", 200),
            video("due-d", 400),
        ])
        .await
        .unwrap();
    let EnqueueOutcome::Created { at: enqueued } = outcomes[1] else {
        panic!("{outcomes:?}");
    };
    let lease = Lease {
        until: Millis(10_000),
    };
    let first = writer.claim_due(Millis(350), lease.until, 2).await.unwrap();
    assert_eq!(names(&first), ["due-b", "due-c"]);
    let b = pick(&first, "due-b");
    assert_eq!(b.id, details(store, "due-b").await.video.id);
    assert_eq!(b.video_id, StoredId::Valid(id("due-b")));
    assert_eq!(b.enqueued_at, enqueued);
    assert_eq!(b.callback_url.as_deref(), Some(OWN));
    assert_eq!(
        (b.lease, b.claimed_at, b.hinted_at),
        (lease, Millis(350), None)
    );
    assert_eq!(
        (
            b.polls,
            b.unchanged_polls,
            b.error_streak,
            &b.upstream_status
        ),
        (0, 0, 0, &None)
    );
    assert_eq!(
        (b.created_at, b.unfinished_seen_at, b.rendering_seen_at),
        (None, None, None)
    );

    let second = writer
        .claim_due(Millis(350), lease.until, 10)
        .await
        .unwrap();
    assert_eq!(names(&second), ["due-a"]);
    assert!(
        writer
            .claim_due(Millis(399), lease.until, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let third = writer
        .claim_due(Millis(400), lease.until, 10)
        .await
        .unwrap();
    assert_eq!(names(&third), ["due-d"]);
    assert!(
        writer
            .claim_due(Millis(9_999), lease.until, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A leased video is due again when its lease ends (no sweeper): then a
/// claim takes it with a new lease.
pub(super) async fn case_claim_takes_an_expired_lease_again(store: &Store, writer: &Writer) {
    writer.enqueue(vec![video("lease-v", 100)]).await.unwrap();
    let first = writer
        .claim_due(Millis(200), Millis(1_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&first), ["lease-v"]);
    assert!(
        writer
            .claim_due(Millis(999), Millis(2_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(1_000)));
    let again = writer
        .claim_due(Millis(1_000), Millis(3_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&again), ["lease-v"]);
    assert_eq!(again[0].lease.until, Millis(3_000));
    assert_eq!(again[0].claimed_at, Millis(1_000));
    assert_eq!(again[0].polls, 0, "an expired claim polled nothing");
}

/// A video with a pending push goes ahead of every other due video, even
/// more overdue ones.
pub(super) async fn case_claim_takes_hinted_videos_first(_store: &Store, writer: &Writer) {
    writer
        .enqueue(vec![
            video("hf-a", 100),
            video("hf-b", 200),
            video("hf-h", 5_000),
        ])
        .await
        .unwrap();
    assert_eq!(
        writer.hint(push("hf-h", 300, 0)).await.unwrap(),
        HintOutcome::Hinted {
            due_at: Millis(300)
        }
    );
    let first = writer
        .claim_due(Millis(1_000), Millis(9_000), 1)
        .await
        .unwrap();
    assert_eq!(names(&first), ["hf-h"]);
    assert_eq!(first[0].hinted_at, Some(Millis(300)));
    assert!(first[0].answers_push());
    let second = writer
        .claim_due(Millis(1_000), Millis(9_000), 1)
        .await
        .unwrap();
    assert_eq!(names(&second), ["hf-a"], "then the most overdue");
}

/// What a ranking was shown: each candidate's due time (`-1` for one that
/// is not the fresh video expected), and the claim's time.
type Shown = (Vec<i64>, Millis);

/// A ranked claim with more due than `limit` scores the 4 × `limit` most
/// overdue unleased videos (in that order, at the claim's time) and takes
/// the best scored, a tie going to the more overdue; with fewer due than
/// `limit` it takes them all.
pub(super) async fn case_ranked_claim_takes_the_best_ranked_in_the_overdue_window(
    _store: &Store,
    writer: &Writer,
) {
    assert_eq!(RANKED_WINDOW, 4, "the windows below are worked out for 4");
    // rk0..rk9 due at 100..1000; rk10 not due.
    let mut videos: Vec<NewVideo> = (0..10)
        .map(|i| video(&format!("rk{i}"), 100 * (i + 1)))
        .collect();
    videos.push(video("rk10", 50_000));
    let outcomes = writer.enqueue(videos).await.unwrap();
    let EnqueueOutcome::Created { at: enqueued } = outcomes[0] else {
        panic!("{outcomes:?}");
    };
    // Later due scores higher; rk1 and rk3 tie above all.
    // What the ranking was shown: the candidates' due times, and the time.
    let seen: Arc<Mutex<Vec<Shown>>> = Arc::default();
    let rank = {
        let seen = seen.clone();
        Ranker(Arc::new(move |due: &[DueVideo], now: Millis| {
            let shown = due
                .iter()
                .map(|v| {
                    // Never polled: only its enqueue is known.
                    let fresh = v.enqueued_at == enqueued
                        && (v.created_at, v.unfinished_seen_at, v.rendering_seen_at)
                            == (None, None, None);
                    if fresh { v.next_poll_at.0 } else { -1 }
                })
                .collect();
            seen.lock().unwrap().push((shown, now));
            due.iter()
                .map(|v| match v.next_poll_at.0 {
                    200 | 400 => 1e6,
                    at => at as f64,
                })
                .collect()
        }))
    };
    let now = Millis(5_000);
    let lease = Millis(60_000);
    let claim = |limit| writer.claim_due_ranked(now, lease, limit, Some(rank.clone()));

    assert_eq!(names(&claim(1).await.unwrap()), ["rk1"]);
    assert_eq!(
        seen.lock().unwrap().pop(),
        Some((vec![100, 200, 300, 400], now))
    );
    assert_eq!(names(&claim(2).await.unwrap()), ["rk3", "rk8"]);
    assert_eq!(
        seen.lock().unwrap().pop(),
        Some((vec![100, 300, 400, 500, 600, 700, 800, 900], now))
    );
    let rest = claim(10).await.unwrap();
    assert_eq!(
        names(&rest),
        ["rk0", "rk2", "rk4", "rk5", "rk6", "rk7", "rk9"]
    );
    assert!(claim(10).await.unwrap().is_empty());
}

/// A release hands a claimed video back unpolled, due at the time it
/// names; a release under a lease the video no longer carries does nothing.
pub(super) async fn case_release_hands_the_lease_back(store: &Store, writer: &Writer) {
    writer.enqueue(vec![video("rel-v", 100)]).await.unwrap();
    let claimed = writer
        .claim_due(Millis(100), Millis(5_000), 1)
        .await
        .unwrap();
    let release = Release {
        video_rowid: claimed[0].id,
        lease: claimed[0].lease,
        next_poll_at: Millis(700),
    };
    writer.release(vec![release]).await.unwrap();
    assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(700)));
    assert_eq!(details(store, "rel-v").await.video.next_poll_at, Some(700));
    assert!(
        writer
            .claim_due(Millis(699), Millis(9_000), 1)
            .await
            .unwrap()
            .is_empty()
    );
    let again = writer
        .claim_due(Millis(700), Millis(9_000), 1)
        .await
        .unwrap();
    assert_eq!(names(&again), ["rel-v"]);
    assert_eq!((again[0].polls, again[0].lease.until), (0, Millis(9_000)));

    let stale = Release {
        next_poll_at: Millis(800),
        ..release
    };
    writer.release(vec![stale]).await.unwrap();
    writer.release(Vec::new()).await.unwrap();
    assert_eq!(store.next_poll_due().await.unwrap(), Some(Millis(9_000)));
    assert!(
        writer
            .claim_due(Millis(800), Millis(9_500), 1)
            .await
            .unwrap()
            .is_empty()
    );
    let result = ongoing(&again[0], 900, "pending", 2_000);
    assert!(writer.record_poll(result).await.unwrap(), "the lease held");
}
