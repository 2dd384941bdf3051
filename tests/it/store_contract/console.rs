//! The console's own reads: the dead deliveries page's walk and what a
//! video's row keeps of its polling.

use jogg_relay::domain::delivery::{AttemptRecord, DeliveryNext};
use jogg_relay::domain::poll::PollUpdate;
use jogg_relay::domain::{Millis, VideoState};
use jogg_relay::store::{DeadDelivery, PollingRecord, Store, Writer};

use super::{HOOK, HOOK_2, details, finish, id, ongoing, push, video};

/// A dead row as the page lists it, but for its row id (a number the test
/// cannot know), which is compared separately.
fn dead(row: &DeadDelivery) -> (&str, &str, &str, i64, Option<i64>, Option<&str>, &str, i64) {
    (
        row.video_id.as_str(),
        row.url.as_str(),
        row.event_id.as_str(),
        row.attempts,
        row.last_status,
        row.last_error.as_deref(),
        row.reason.as_deref().unwrap_or("-"),
        row.died_at,
    )
}

/// Dead deliveries only (not delivered or pending ones), the latest death
/// first, ties in the reverse of the rows' creation; each with its video's
/// id and what killed it; paged by the last row's (death time, id), which
/// visits each row once; a redelivered row is no longer listed.
pub(super) async fn case_dead_deliveries_newest_death_first_by_cursor(
    store: &Store,
    writer: &Writer,
) {
    assert!(store.dead_deliveries(None, 10).await.unwrap().is_empty());
    for (raw, state, targets) in [
        ("dd-a", VideoState::Completed, &[HOOK, HOOK_2][..]),
        ("dd-b", VideoState::Completed, &[HOOK][..]),
        ("dd-c", VideoState::Failed, &[HOOK][..]),
    ] {
        finish(writer, video(raw, 0), 1_000, state, targets).await;
    }
    let claimed = writer
        .claim_deliveries(Millis(1_000), Millis(9_000), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for delivery in &claimed {
        let (at, status, error, next) = match (delivery.video_id.as_str(), delivery.url.as_str()) {
            ("dd-a", HOOK) => (1_500, Some(410), None, DeliveryNext::Dead("gone".into())),
            ("dd-a", _) => (1_200, Some(200), None, DeliveryNext::Delivered),
            ("dd-b", _) => (
                1_500,
                None,
                Some("connection refused"),
                DeliveryNext::Dead("exhausted".into()),
            ),
            _ => (1_100, Some(503), None, DeliveryNext::Retry(Millis(3_000))),
        };
        let done = AttemptRecord {
            delivery_id: delivery.id,
            lease: delivery.lease,
            at: Millis(at),
            status,
            error: error.map(str::to_owned),
            duration_ms: 5,
            next,
        };
        assert!(writer.record_attempt(done).await.unwrap());
    }
    // dd-c is pending, so not listed yet; it dies on its second attempt.
    let listed = store.dead_deliveries(None, 10).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let retry = writer
        .claim_deliveries(Millis(3_000), Millis(9_000), 10)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1);
    let killed = AttemptRecord {
        delivery_id: retry[0].id,
        lease: retry[0].lease,
        at: Millis(3_100),
        status: None,
        error: Some("forbidden target".to_owned()),
        duration_ms: 0,
        next: DeliveryNext::Dead("forbidden_target".into()),
    };
    assert!(writer.record_attempt(killed).await.unwrap());

    let c = (
        "dd-c",
        HOOK,
        "evt-dd-c",
        2,
        None,
        Some("forbidden target"),
        "forbidden_target",
        3_100,
    );
    let b = (
        "dd-b",
        HOOK,
        "evt-dd-b",
        1,
        None,
        Some("connection refused"),
        "exhausted",
        1_500,
    );
    let a = ("dd-a", HOOK, "evt-dd-a", 1, Some(410), None, "gone", 1_500);
    let all = store.dead_deliveries(None, 10).await.unwrap();
    assert_eq!(all.iter().map(dead).collect::<Vec<_>>(), [c, b, a]);
    // dd-b's delivery was created after dd-a's: the later row first.
    assert!(all[1].id > all[2].id, "{all:?}");

    let first = store.dead_deliveries(None, 2).await.unwrap();
    assert_eq!(first.iter().map(dead).collect::<Vec<_>>(), [c, b]);
    let cursor = Some((first[1].died_at, first[1].id));
    let second = store.dead_deliveries(cursor, 2).await.unwrap();
    assert_eq!(second.iter().map(dead).collect::<Vec<_>>(), [a]);
    let end = Some((second[0].died_at, second[0].id));
    assert!(store.dead_deliveries(end, 2).await.unwrap().is_empty());

    // Redelivered, dd-b's row is pending again and no longer listed; the
    // others stay.
    writer
        .redeliver(id("dd-b"), vec![HOOK.to_owned()])
        .await
        .unwrap();
    let after = store.dead_deliveries(None, 10).await.unwrap();
    assert_eq!(after.iter().map(dead).collect::<Vec<_>>(), [c, a]);
}

/// A video's polling as its row keeps it: nothing before the first poll;
/// a claim's lease; the last poll's time, its unchanged answers and its
/// failures in a row; a push waiting for its confirming poll. No row for
/// an unknown row id.
pub(super) async fn case_polling_as_the_row_keeps_it(store: &Store, writer: &Writer) {
    writer.enqueue(vec![video("pl-1", 100)]).await.unwrap();
    let rowid = details(store, "pl-1").await.video.id;
    let none = PollingRecord {
        polled_at: None,
        unchanged_polls: 0,
        error_streak: 0,
        lease_until: None,
        hinted_at: None,
    };
    assert_eq!(store.polling(rowid).await.unwrap(), Some(none.clone()));

    let claimed = writer
        .claim_due(Millis(100), Millis(5_000), 1)
        .await
        .unwrap();
    assert_eq!(
        store.polling(rowid).await.unwrap(),
        Some(PollingRecord {
            lease_until: Some(5_000),
            ..none.clone()
        })
    );
    let answered = PollUpdate {
        unchanged_polls: 3,
        ..ongoing(&claimed[0], 1_000, "processing", 2_000)
    };
    assert!(writer.record_poll(answered).await.unwrap());
    assert_eq!(
        store.polling(rowid).await.unwrap(),
        Some(PollingRecord {
            polled_at: Some(1_000),
            unchanged_polls: 3,
            ..none.clone()
        })
    );

    let claimed = writer
        .claim_due(Millis(2_000), Millis(6_000), 1)
        .await
        .unwrap();
    let failed = PollUpdate {
        counted: false,
        error_streak: 2,
        unchanged_polls: 3,
        unfinished_seen_at: None,
        ..ongoing(&claimed[0], 2_100, "processing", 4_000)
    };
    assert!(writer.record_poll(failed).await.unwrap());
    writer.hint(push("pl-1", 2_500, 0)).await.unwrap();
    assert_eq!(
        store.polling(rowid).await.unwrap(),
        Some(PollingRecord {
            polled_at: Some(2_100),
            unchanged_polls: 3,
            error_streak: 2,
            lease_until: None,
            hinted_at: Some(2_500),
        })
    );
    assert_eq!(store.polling(rowid + 1_000).await.unwrap(), None);
}
