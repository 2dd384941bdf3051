//! The outbox's contract: claiming due deliveries with their event,
//! recording attempts, hand-backs and redelivery.

use jogg_relay::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryNext, DeliveryRelease};
use jogg_relay::domain::{Lease, Millis, StoredId, VideoState};
use jogg_relay::store::{
    CancelOutcome, DeliveryRecord, HintOutcome, NewVideo, RedeliverOutcome, Store, Writer,
};

use super::{HOOK, HOOK_2, OWN, details, ending, finish, id, json, names, pick, push, video};

/// One attempt of the claimed delivery `claimed` at `at`, answered with
/// `status` (or failing with `error`), followed by `next`.
fn attempt(
    claimed: &ClaimedDelivery,
    at: i64,
    status: Option<u16>,
    error: Option<&str>,
    next: DeliveryNext,
) -> AttemptRecord {
    AttemptRecord {
        delivery_id: claimed.id,
        lease: claimed.lease,
        at: Millis(at),
        status,
        error: error.map(str::to_owned),
        duration_ms: 25,
        next,
    }
}

/// The claimed delivery to `url`.
fn to<'a>(claimed: &'a [ClaimedDelivery], url: &str) -> &'a ClaimedDelivery {
    claimed
        .iter()
        .find(|d| d.url == url)
        .unwrap_or_else(|| panic!("no delivery to {url} claimed: {claimed:?}"))
}

/// The target URLs of claimed deliveries, sorted.
fn urls(claimed: &[ClaimedDelivery]) -> Vec<&str> {
    let mut urls: Vec<&str> = claimed.iter().map(|d| d.url.as_str()).collect();
    urls.sort_unstable();
    urls
}

/// The deliveries of video `raw`, sorted by URL.
async fn deliveries(store: &Store, raw: &str) -> Vec<DeliveryRecord> {
    let mut deliveries = details(store, raw).await.deliveries;
    deliveries.sort_by(|a, b| a.url.cmp(&b.url));
    deliveries
}

/// A delivery record of event `event_id` to `url` with what its attempts
/// left: state, attempts, last status and error, reason, next attempt.
#[allow(clippy::too_many_arguments)]
fn record(
    url: &str,
    event_id: &str,
    state: &str,
    attempts: i64,
    last_status: Option<i64>,
    last_error: Option<&str>,
    reason: Option<&str>,
    next_attempt_at: Option<i64>,
) -> DeliveryRecord {
    DeliveryRecord {
        url: url.to_owned(),
        event_id: event_id.to_owned(),
        state: state.to_owned(),
        attempts,
        last_status,
        last_error: last_error.map(str::to_owned),
        reason: reason.map(str::to_owned),
        next_attempt_at,
    }
}

/// A claim takes pending deliveries due at its time, the earliest first,
/// at most `limit`, each with its event as the video row holds it; a
/// claimed delivery is not claimed again until its lease ends.
pub(super) async fn case_claim_deliveries_takes_due_pending_earliest_first(
    store: &Store,
    writer: &Writer,
) {
    let with_metadata = NewVideo {
        metadata: Some(r#"{"k":1}"#.to_owned()),
        ..video("out-a", 0)
    };
    finish(writer, with_metadata, 1_000, VideoState::Completed, &[HOOK]).await;
    finish(
        writer,
        video("out-b", 0),
        2_000,
        VideoState::Failed,
        &[HOOK],
    )
    .await;
    let both = [HOOK, HOOK_2];
    finish(
        writer,
        video("out-c", 0),
        3_000,
        VideoState::Completed,
        &both,
    )
    .await;
    finish(
        writer,
        video("out-d", 0),
        4_000,
        VideoState::Abandoned,
        &[HOOK],
    )
    .await;
    let lease = Lease {
        until: Millis(9_000),
    };

    let first = writer
        .claim_deliveries(Millis(2_500), lease.until, 1)
        .await
        .unwrap();
    let [a] = &first[..] else {
        panic!("one claimed: {first:?}");
    };
    assert_eq!(json(a.metadata.as_deref()), json(Some(r#"{ "k": 1 }"#)));
    let expected = ClaimedDelivery {
        id: a.id,
        url: HOOK.to_owned(),
        attempts: 0,
        lease,
        event_id: "evt-out-a".to_owned(),
        video_id: StoredId::Valid(id("out-a")),
        state: VideoState::Completed,
        video_url: Some("https://cdn.example.com/out-a.mp4".to_owned()),
        cover_url: None,
        created_at: None,
        duration: None,
        error_code: None,
        error_message: None,
        metadata: a.metadata.clone(),
        reason: None,
        terminal_at: Some(Millis(1_000)),
        pushed_at: None,
    };
    assert_eq!(*a, expected);

    let second = writer
        .claim_deliveries(Millis(2_500), lease.until, 10)
        .await
        .unwrap();
    let [b] = &second[..] else {
        panic!("one claimed: {second:?}");
    };
    assert_ne!(b.id, a.id);
    assert_eq!(
        (b.event_id.as_str(), b.state),
        ("evt-out-b", VideoState::Failed)
    );
    assert_eq!(
        (b.error_code.as_deref(), b.error_message.as_deref()),
        (Some("render_failed"), Some("the render failed"))
    );
    assert_eq!((&b.video_url, &b.metadata), (&None, &None));
    assert_eq!(b.terminal_at, Some(Millis(2_000)));
    assert!(
        writer
            .claim_deliveries(Millis(2_500), lease.until, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let c = writer
        .claim_deliveries(Millis(5_000), lease.until, 2)
        .await
        .unwrap();
    assert_eq!(
        urls(&c),
        both,
        "the two due at 3_000 before the one due at 4_000"
    );
    assert!(c.iter().all(|d| d.event_id == "evt-out-c"));
    let d = writer
        .claim_deliveries(Millis(5_000), lease.until, 10)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].state, d[0].reason.as_deref()),
        (VideoState::Abandoned, Some("deadline"))
    );

    assert_eq!(store.next_delivery_due().await.unwrap(), Some(lease.until));
    assert!(
        writer
            .claim_deliveries(Millis(8_999), Millis(12_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = writer
        .claim_deliveries(Millis(9_000), Millis(12_000), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 5, "every expired lease: {again:?}");
    assert!(
        again
            .iter()
            .all(|d| d.attempts == 0 && d.lease.until == Millis(12_000))
    );
}

/// An attempt is recorded with its outcome: delivered, retried at the
/// time it names (due again then, not before), or dead with its reason;
/// each attempt counts and leaves its status or error as the last.
pub(super) async fn case_record_attempt_delivered_retry_dead(store: &Store, writer: &Writer) {
    finish(
        writer,
        video("att-v", 0),
        1_000,
        VideoState::Completed,
        &[HOOK, HOOK_2, OWN],
    )
    .await;
    let claimed = writer
        .claim_deliveries(Millis(1_000), Millis(5_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let outcomes = [
        (HOOK, Some(200), DeliveryNext::Delivered),
        (HOOK_2, Some(503), DeliveryNext::Retry(Millis(4_000))),
        (OWN, Some(410), DeliveryNext::Dead("gone".to_owned())),
    ];
    for (url, status, next) in outcomes {
        let done = attempt(to(&claimed, url), 1_100, status, None, next);
        assert!(writer.record_attempt(done).await.unwrap(), "{url}");
    }
    let event = "evt-att-v";
    assert_eq!(
        deliveries(store, "att-v").await,
        [
            record(HOOK, event, "delivered", 1, Some(200), None, None, None),
            record(
                HOOK_2,
                event,
                "pending",
                1,
                Some(503),
                None,
                None,
                Some(4_000)
            ),
            record(OWN, event, "dead", 1, Some(410), None, Some("gone"), None),
        ]
    );
    assert_eq!(
        store.next_delivery_due().await.unwrap(),
        Some(Millis(4_000))
    );
    assert!(
        writer
            .claim_deliveries(Millis(3_999), Millis(8_000), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let retry = writer
        .claim_deliveries(Millis(4_000), Millis(8_000), 10)
        .await
        .unwrap();
    assert_eq!(urls(&retry), [HOOK_2]);
    assert_eq!(retry[0].attempts, 1);
    let refused = attempt(
        &retry[0],
        4_100,
        None,
        Some("connection refused"),
        DeliveryNext::Retry(Millis(6_000)),
    );
    assert!(writer.record_attempt(refused).await.unwrap());
    assert_eq!(
        deliveries(store, "att-v").await[1],
        record(
            HOOK_2,
            event,
            "pending",
            2,
            None,
            Some("connection refused"),
            None,
            Some(6_000)
        )
    );

    let last = writer
        .claim_deliveries(Millis(6_000), Millis(8_000), 10)
        .await
        .unwrap();
    assert_eq!((urls(&last), last[0].attempts), (vec![HOOK_2], 2));
    let exhausted = attempt(
        &last[0],
        6_100,
        Some(500),
        None,
        DeliveryNext::Dead("exhausted".to_owned()),
    );
    assert!(writer.record_attempt(exhausted).await.unwrap());
    assert_eq!(
        deliveries(store, "att-v").await[1],
        record(
            HOOK_2,
            event,
            "dead",
            3,
            Some(500),
            None,
            Some("exhausted"),
            None
        )
    );
    assert_eq!(store.next_delivery_due().await.unwrap(), None);
}

/// An attempt whose claim lost its lease (it expired and the delivery was
/// claimed again, or the attempt was already recorded) is discarded:
/// `false`, and nothing changes.
pub(super) async fn case_record_attempt_discards_a_stale_attempt(store: &Store, writer: &Writer) {
    finish(
        writer,
        video("sa-v", 0),
        1_000,
        VideoState::Completed,
        &[HOOK],
    )
    .await;
    let old = writer
        .claim_deliveries(Millis(1_000), Millis(5_000), 10)
        .await
        .unwrap();
    let new = writer
        .claim_deliveries(Millis(5_000), Millis(9_000), 10)
        .await
        .unwrap();
    assert_eq!((old.len(), new.len()), (1, 1));
    let untouched = deliveries(store, "sa-v").await;

    let late = attempt(&old[0], 5_100, Some(200), None, DeliveryNext::Delivered);
    assert!(!writer.record_attempt(late).await.unwrap());
    assert_eq!(deliveries(store, "sa-v").await, untouched);
    assert_eq!(untouched[0].attempts, 0);

    let fresh = attempt(
        &new[0],
        5_200,
        Some(500),
        None,
        DeliveryNext::Retry(Millis(7_000)),
    );
    assert!(writer.record_attempt(fresh).await.unwrap());
    let recorded = deliveries(store, "sa-v").await;
    assert_eq!(
        recorded,
        [record(
            HOOK,
            "evt-sa-v",
            "pending",
            1,
            Some(500),
            None,
            None,
            Some(7_000)
        )]
    );
    let repeat = attempt(&new[0], 5_300, Some(200), None, DeliveryNext::Delivered);
    assert!(!writer.record_attempt(repeat).await.unwrap());
    assert_eq!(deliveries(store, "sa-v").await, recorded);
}

/// A release hands a claimed delivery back unattempted, due at the time
/// it names; one under a lease the delivery no longer carries does
/// nothing.
pub(super) async fn case_release_deliveries_hands_the_lease_back(store: &Store, writer: &Writer) {
    finish(
        writer,
        video("rd-v", 0),
        1_000,
        VideoState::Completed,
        &[HOOK],
    )
    .await;
    let claimed = writer
        .claim_deliveries(Millis(1_000), Millis(5_000), 10)
        .await
        .unwrap();
    let release = DeliveryRelease {
        delivery_id: claimed[0].id,
        lease: claimed[0].lease,
        next_attempt_at: Millis(2_000),
    };
    writer.release_deliveries(vec![release]).await.unwrap();
    assert_eq!(
        deliveries(store, "rd-v").await,
        [record(
            HOOK,
            "evt-rd-v",
            "pending",
            0,
            None,
            None,
            None,
            Some(2_000)
        )]
    );
    assert_eq!(
        store.next_delivery_due().await.unwrap(),
        Some(Millis(2_000))
    );
    assert!(
        writer
            .claim_deliveries(Millis(1_999), Millis(6_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = writer
        .claim_deliveries(Millis(2_000), Millis(6_000), 10)
        .await
        .unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 0));

    let stale = DeliveryRelease {
        next_attempt_at: Millis(3_000),
        ..release
    };
    writer.release_deliveries(vec![stale]).await.unwrap();
    writer.release_deliveries(Vec::new()).await.unwrap();
    assert_eq!(
        store.next_delivery_due().await.unwrap(),
        Some(Millis(6_000))
    );
    let delivered = attempt(&again[0], 2_100, Some(200), None, DeliveryNext::Delivered);
    assert!(
        writer.record_attempt(delivered).await.unwrap(),
        "the lease held"
    );
}

/// Redelivery queues a terminal video's event again, with its id, to the
/// configured URLs and the video's own (once): delivered and dead
/// deliveries become pending with a fresh count, due now, and missing ones
/// are created; a delivery to a URL no longer a target is left alone. A
/// video without an event, or unknown, is not redelivered.
pub(super) async fn case_redeliver_requeues_the_same_event_to_current_targets(
    store: &Store,
    writer: &Writer,
) {
    assert_eq!(
        writer
            .redeliver(id("rq-none"), vec![HOOK.to_owned()])
            .await
            .unwrap(),
        RedeliverOutcome::NotFound
    );
    let own = NewVideo {
        callback_url: Some(OWN.to_owned()),
        ..video("rq-v", 0)
    };
    finish(writer, own, 1_000, VideoState::Completed, &[HOOK, OWN]).await;
    writer
        .enqueue(vec![
            video("rq-active", 50_000),
            video("rq-stopped", 50_000),
        ])
        .await
        .unwrap();
    assert_eq!(
        writer.cancel(id("rq-stopped")).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        writer
            .redeliver(id("rq-active"), vec![HOOK.to_owned()])
            .await
            .unwrap(),
        RedeliverOutcome::NoEvent(VideoState::Active)
    );
    assert_eq!(
        writer
            .redeliver(id("rq-stopped"), vec![HOOK.to_owned()])
            .await
            .unwrap(),
        RedeliverOutcome::NoEvent(VideoState::Cancelled)
    );
    assert!(details(store, "rq-stopped").await.deliveries.is_empty());

    let claimed = writer
        .claim_deliveries(Millis(1_000), Millis(5_000), 10)
        .await
        .unwrap();
    let delivered = attempt(
        to(&claimed, HOOK),
        1_100,
        Some(200),
        None,
        DeliveryNext::Delivered,
    );
    assert!(writer.record_attempt(delivered).await.unwrap());
    let gone = DeliveryNext::Dead("gone".to_owned());
    assert!(
        writer
            .record_attempt(attempt(to(&claimed, OWN), 1_100, Some(410), None, gone))
            .await
            .unwrap()
    );
    assert_eq!(store.next_delivery_due().await.unwrap(), None);

    let before = Millis::now();
    let queued = writer
        .redeliver(id("rq-v"), vec![HOOK_2.to_owned(), OWN.to_owned()])
        .await
        .unwrap();
    let after = Millis::now();
    assert_eq!(
        queued,
        RedeliverOutcome::Queued {
            event_id: "evt-rq-v".to_owned(),
            targets: 2
        }
    );
    let now = |d: &DeliveryRecord| {
        let at = d.next_attempt_at.expect("due");
        assert!(
            before.0 <= at && at <= after.0,
            "due at the redelivery: {d:?}"
        );
        Some(at)
    };
    let [hook, hook_2, own] = &deliveries(store, "rq-v").await[..] else {
        panic!("three deliveries");
    };
    let event = "evt-rq-v";
    assert_eq!(
        *hook,
        record(HOOK, event, "delivered", 1, Some(200), None, None, None)
    );
    assert_eq!(
        *hook_2,
        record(HOOK_2, event, "pending", 0, None, None, None, now(hook_2))
    );
    // The last attempt's status stays on record until the next attempt.
    assert_eq!(
        *own,
        record(OWN, event, "pending", 0, Some(410), None, None, now(own))
    );
    assert_eq!(
        details(store, "rq-v").await.video.event_id.as_deref(),
        Some(event)
    );

    let resent = writer
        .claim_deliveries(after, Millis(after.0 + 60_000), 10)
        .await
        .unwrap();
    assert_eq!(urls(&resent), [HOOK_2, OWN]);
    assert!(
        resent
            .iter()
            .all(|d| d.event_id == event && d.attempts == 0)
    );
    assert_eq!(
        writer
            .redeliver(id("rq-v"), vec![OWN.to_owned()])
            .await
            .unwrap(),
        RedeliverOutcome::Queued {
            event_id: event.to_owned(),
            targets: 1
        },
        "the video's own URL counts once"
    );
}

/// Redelivery makes a pending delivery waiting for its retry due now,
/// keeping its count, and leaves a delivery whose attempt is in flight (and
/// its lease) alone.
pub(super) async fn case_redeliver_hurries_pending_and_spares_in_flight(
    store: &Store,
    writer: &Writer,
) {
    finish(
        writer,
        video("rh-v", 0),
        1_000,
        VideoState::Completed,
        &[HOOK, HOOK_2],
    )
    .await;
    let hour = 3_600_000;
    let start = Millis::now().0;
    let claimed = writer
        .claim_deliveries(Millis(1_000), Millis(start + hour), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let later = DeliveryNext::Retry(Millis(start + 2 * hour));
    assert!(
        writer
            .record_attempt(attempt(to(&claimed, HOOK), 1_100, Some(503), None, later))
            .await
            .unwrap()
    );

    let before = Millis::now();
    assert_eq!(
        writer
            .redeliver(id("rh-v"), vec![HOOK.to_owned(), HOOK_2.to_owned()])
            .await
            .unwrap(),
        RedeliverOutcome::Queued {
            event_id: "evt-rh-v".to_owned(),
            targets: 2
        }
    );
    let after = Millis::now();
    let [hook, hook_2] = &deliveries(store, "rh-v").await[..] else {
        panic!("two deliveries");
    };
    let due = hook.next_attempt_at.expect("pending");
    assert!(before.0 <= due && due <= after.0, "due now: {hook:?}");
    assert_eq!(
        *hook,
        record(
            HOOK,
            "evt-rh-v",
            "pending",
            1,
            Some(503),
            None,
            None,
            Some(due)
        )
    );
    assert_eq!(
        *hook_2,
        record(
            HOOK_2,
            "evt-rh-v",
            "pending",
            0,
            None,
            None,
            None,
            Some(start + hour)
        )
    );
    assert_eq!(store.next_delivery_due().await.unwrap(), Some(Millis(due)));
    let in_flight = attempt(
        to(&claimed, HOOK_2),
        1_200,
        Some(200),
        None,
        DeliveryNext::Delivered,
    );
    assert!(
        writer.record_attempt(in_flight).await.unwrap(),
        "its lease held"
    );
}

/// A delivery of a completion that a push's confirming poll found carries
/// the push's time until one attempt succeeds; not when the push came
/// after the poll's claim, nor for an abandoned video.
pub(super) async fn case_delivery_carries_the_push_until_delivered(
    _store: &Store,
    writer: &Writer,
) {
    writer
        .enqueue(vec![
            video("cp-pushed", 100),
            video("cp-crossed", 100),
            video("cp-gone", 100),
        ])
        .await
        .unwrap();
    writer.hint(push("cp-pushed", 50, 0)).await.unwrap();
    writer.hint(push("cp-gone", 60, 0)).await.unwrap();
    let claimed = writer
        .claim_due(Millis(1_000), Millis(5_000), 10)
        .await
        .unwrap();
    assert_eq!(names(&claimed), ["cp-crossed", "cp-gone", "cp-pushed"]);
    assert_eq!(
        writer.hint(push("cp-crossed", 1_100, 0)).await.unwrap(),
        HintOutcome::Hinted {
            due_at: Millis(5_000)
        }
    );
    for (raw, state) in [
        ("cp-pushed", VideoState::Completed),
        ("cp-crossed", VideoState::Completed),
        ("cp-gone", VideoState::Abandoned),
    ] {
        let result = ending(
            pick(&claimed, raw),
            1_200,
            state,
            &format!("evt-{raw}"),
            &[HOOK],
        );
        assert!(writer.record_poll(result).await.unwrap());
    }

    let sent = writer
        .claim_deliveries(Millis(1_200), Millis(5_000), 10)
        .await
        .unwrap();
    let event = |raw: &str| {
        let want = format!("evt-{raw}");
        move |d: &&ClaimedDelivery| d.event_id == want
    };
    let pushed_at = |claimed: &[ClaimedDelivery], raw: &str| {
        claimed.iter().find(event(raw)).expect("claimed").pushed_at
    };
    assert_eq!(pushed_at(&sent, "cp-pushed"), Some(Millis(50)));
    assert_eq!(pushed_at(&sent, "cp-crossed"), None);
    assert_eq!(pushed_at(&sent, "cp-gone"), None);

    let pushed = sent.iter().find(event("cp-pushed")).unwrap();
    let failed = attempt(
        pushed,
        1_300,
        Some(500),
        None,
        DeliveryNext::Retry(Millis(2_000)),
    );
    assert!(writer.record_attempt(failed).await.unwrap());
    let retry = writer
        .claim_deliveries(Millis(2_000), Millis(5_000), 10)
        .await
        .unwrap();
    assert_eq!(
        pushed_at(&retry, "cp-pushed"),
        Some(Millis(50)),
        "not delivered yet"
    );
    let delivered = attempt(&retry[0], 2_100, Some(204), None, DeliveryNext::Delivered);
    assert!(writer.record_attempt(delivered).await.unwrap());
    assert!(matches!(
        writer
            .redeliver(id("cp-pushed"), vec![HOOK.to_owned()])
            .await
            .unwrap(),
        RedeliverOutcome::Queued { .. }
    ));
    let resent = writer
        .claim_deliveries(Millis::now(), Millis(i64::MAX / 2), 10)
        .await
        .unwrap();
    assert_eq!(
        pushed_at(&resent, "cp-pushed"),
        None,
        "delivered once already"
    );
}
