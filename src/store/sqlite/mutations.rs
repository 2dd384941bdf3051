//! Every write statement, each applied inside a transaction the caller
//! (the [`Writer`](super::Writer)) owns.

use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};

use serde::Serialize;
use sqlx::SqliteConnection;

use super::super::StoreError;
use super::super::records::{
    CancelOutcome, ConflictingFields, EnqueueOutcome, HintOutcome, NewVideo, PushHint,
    RedeliverOutcome,
};
use super::super::rows::{ClaimedDeliveryRow, ClaimedVideoRow, DueVideoRow};
use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryNext, DeliveryRelease};
use crate::domain::poll::{ClaimedVideo, DueVideo, PollUpdate, RANKED_WINDOW, Ranker, Release};
use crate::domain::{Millis, VideoId, VideoState};

/// Which of the bound array's `video_id`s are stored, with the request
/// fields they were enqueued with: one probe of the `video_id` index per
/// element.
macro_rules! existing_videos {
    () => {
        "SELECT video_id, callback_url, metadata FROM videos \
         WHERE video_id IN (SELECT value ->> 'video_id' FROM jsonb_each(?1))"
    };
}

/// Inserts `videos` in one statement; an id already tracked (or repeated
/// earlier in the same call) is left as it is. Returns, in order, what
/// happened to each: created; existing, when the request repeats the one
/// the id is tracked with (same `callback_url` and `metadata`); or a
/// conflict naming the fields that differ.
///
/// Enqueue is an idempotency key with a body: the id names one request.
/// The comparison runs here, in the writer's transaction that also
/// inserts, so two concurrent requests for one id are decided one after
/// the other, against what the first of them stored (or, in one group
/// commit, against the first occurrence in the call).
///
/// The rows travel as one JSON array bound to a single parameter and are
/// expanded by `jsonb_each`: one statement, and one hop to SQLite's thread,
/// per group commit instead of one per video. (`jsonb_each`, not
/// `json_each`: it hands each element over as binary JSON, which `->>`
/// reads in place, where `json_each` would render every element back to
/// text for each field read.)
pub(crate) async fn insert_videos(
    conn: &mut SqliteConnection,
    videos: &[&NewVideo],
    now: Millis,
) -> Result<Vec<EnqueueOutcome>, StoreError> {
    /// One element of the bound array.
    #[derive(Serialize)]
    struct Row<'a> {
        video_id: &'a str,
        callback_url: Option<&'a str>,
        metadata: Option<&'a str>,
        next_poll_at: i64,
    }
    // An id repeated within the call is sent once, its first occurrence: the
    // statement then has nothing whose order matters.
    let mut first = HashSet::with_capacity(videos.len());
    let rows: Vec<Row<'_>> = videos
        .iter()
        .filter(|video| first.insert(video.video_id.as_str()))
        .map(|video| Row {
            video_id: video.video_id.as_str(),
            callback_url: video.callback_url.as_deref(),
            metadata: video.metadata.as_deref(),
            next_poll_at: video.first_poll_at.0,
        })
        .collect();
    let rows = to_json(&rows);
    // The ids already tracked: usually none, so this returns nothing, and
    // the INSERT below needs no RETURNING (which would send one row per
    // video back from SQLite's thread). The writer holds the write lock, so
    // nothing can be inserted in between.
    let existing: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as(existing_videos!())
            .bind(&rows)
            .fetch_all(&mut *conn)
            .await?;
    // `WHERE true` tells the parser that ON CONFLICT belongs to the INSERT,
    // not to a join of the SELECT.
    sqlx::query(
        "INSERT INTO videos (video_id, callback_url, metadata, enqueued_at, updated_at, next_poll_at) \
         SELECT value ->> 'video_id', value ->> 'callback_url', value ->> 'metadata', ?2, ?2, \
                value ->> 'next_poll_at' \
         FROM jsonb_each(?1) WHERE true \
         ON CONFLICT (video_id) DO NOTHING",
    )
    .bind(rows)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    // What each id stands for: the stored row's fields, or the first
    // occurrence's in this call (the one the INSERT just stored).
    let mut known: HashMap<&str, (Option<&str>, Option<&str>)> = existing
        .iter()
        .map(|(id, url, metadata)| (id.as_str(), (url.as_deref(), metadata.as_deref())))
        .collect();
    Ok(videos
        .iter()
        .map(|video| {
            let request = (video.callback_url.as_deref(), video.metadata.as_deref());
            match known.entry(video.video_id.as_str()) {
                Entry::Vacant(slot) => {
                    slot.insert(request);
                    EnqueueOutcome::Created { at: now }
                }
                Entry::Occupied(tracked) => {
                    let (url, metadata) = *tracked.get();
                    let differs = ConflictingFields {
                        callback_url: url != request.0,
                        metadata: !crate::store::records::same_metadata(metadata, request.1),
                    };
                    if differs.callback_url || differs.metadata {
                        EnqueueOutcome::Conflict(differs)
                    } else {
                        EnqueueOutcome::Existing
                    }
                }
            }
        })
        .collect())
}

/// Serializes rows bound as one JSON parameter.
fn to_json<T: Serialize>(rows: &T) -> String {
    serde_json::to_string(rows).expect("rows of strings and numbers always serialize")
}

/// Moves an active video to `cancelled` with its transition row.
pub(crate) async fn cancel_video(
    conn: &mut SqliteConnection,
    video_id: &VideoId,
    now: Millis,
) -> Result<CancelOutcome, StoreError> {
    let cancelled: Option<i64> = sqlx::query_scalar(
        "UPDATE videos SET state = 'cancelled', next_poll_at = NULL, lease_until = NULL, \
                           updated_at = ? \
         WHERE video_id = ? AND state = 'active' RETURNING id",
    )
    .bind(now.0)
    .bind(video_id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(rowid) = cancelled {
        insert_transition(conn, rowid, "state", Some("active"), "cancelled", now).await?;
        return Ok(CancelOutcome::Cancelled);
    }
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM videos WHERE video_id = ?")
        .bind(video_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match state.map(VideoState::try_from).transpose() {
        Ok(None) => CancelOutcome::NotFound,
        Ok(Some(VideoState::Cancelled)) => CancelOutcome::AlreadyCancelled,
        Ok(Some(state)) => CancelOutcome::Terminal(state),
        Err(err) => return Err(StoreError::Database(sqlx::Error::Decode(Box::new(err)))),
    })
}

/// Appends one row to a video's transition log.
pub(crate) async fn insert_transition(
    conn: &mut SqliteConnection,
    video_rowid: i64,
    kind: &str,
    from: Option<&str>,
    to: &str,
    at: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(video_rowid)
    .bind(kind)
    .bind(from)
    .bind(to)
    .bind(at.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ids of the videos due at `?2`, most overdue first, at most `?3`.
///
/// `INDEXED BY` pins the partial index `videos_due`: the planner, without
/// statistics, would otherwise pick `videos_state_order` and sort every
/// active video; with it this is a range scan that reads only what it
/// returns, at any table size (and the statement fails loudly if the index
/// ever goes missing).
///
/// `LIMIT ?3 + 0`, not `LIMIT ?3`: SQLite plans a bare parameter in LIMIT
/// with its bound value, so each new limit would make it re-prepare the
/// statement; an expression is planned once and evaluated at run time.
macro_rules! due_videos {
    () => {
        "SELECT id FROM videos INDEXED BY videos_due \
         WHERE state = 'active' AND next_poll_at <= ?2 ORDER BY next_poll_at LIMIT ?3 + 0"
    };
}

/// The join of [`record_polls`]: the bound array drives, each element finds
/// its video by rowid, and only a video still active under the same lease
/// is changed.
///
/// The unary `+` on `state` keeps the planner off `videos_state_order`:
/// without statistics it would otherwise walk every active video and probe
/// the array for each, a full scan per batch at a million tracked videos.
macro_rules! recorded_polls_from {
    () => {
        "FROM jsonb_each(?1) AS u \
         WHERE videos.id = u.value ->> 'rowid' AND +videos.state = 'active' \
           AND videos.lease_until = u.value ->> 'lease_until'"
    };
}

/// The columns every poll result sets, from the bound array's element `u`.
/// Every column of `videos` is qualified: `jsonb_each` has an `id` too.
macro_rules! poll_result_columns {
    () => {
        "upstream_status = u.value ->> 'upstream_status', \
         video_url = COALESCE(u.value ->> 'video_url', videos.video_url), \
         cover_url = COALESCE(u.value ->> 'cover_url', videos.cover_url), \
         created_at = COALESCE(u.value ->> 'created_at', videos.created_at), \
         duration = COALESCE(u.value ->> 'duration', videos.duration), \
         error_code = COALESCE(u.value ->> 'error_code', videos.error_code), \
         error_message = COALESCE(u.value ->> 'error_message', videos.error_message), \
         polls = videos.polls + (u.value ->> 'counted'), \
         unchanged_polls = u.value ->> 'unchanged_polls', \
         error_streak = u.value ->> 'error_streak', \
         lease_until = NULL, polled_at = u.value ->> 'at', \
         unfinished_seen_at = COALESCE(u.value ->> 'unfinished_seen_at', videos.unfinished_seen_at), \
         rendering_seen_at = COALESCE(videos.rendering_seen_at, u.value ->> 'rendering_seen_at'), \
         updated_at = u.value ->> 'at'"
    };
}

/// The columns a still-active result sets for the schedule. A push that
/// arrived after the claim (`hinted_at > claimed_at`) was not answered by
/// this poll, whose request may have left before the video finished: it
/// stays pending and brings the next poll forward to the poll's time plus
/// `min_interval`. An earlier push is answered and cleared by a poll that
/// got the video's status; a failed poll (an error, not found yet: its
/// `error_streak` grew) answered nothing, so the push stays pending for the
/// retry, which the error backoff schedules as usual.
macro_rules! ongoing_schedule_columns {
    () => {
        "next_poll_at = CASE WHEN videos.hinted_at > u.value ->> 'claimed_at' \
             THEN MIN(u.value ->> 'next_poll_at', u.value ->> 'repoll_after_push_at') \
             ELSE u.value ->> 'next_poll_at' END, \
         hinted_at = CASE WHEN videos.hinted_at > u.value ->> 'claimed_at' \
               OR u.value ->> 'error_streak' > 0 \
             THEN videos.hinted_at END"
    };
}

/// The columns a terminal result sets for the record: the push this poll
/// answered stays as the mark that the completion was learned by push;
/// without one (or with only a later one) the column is cleared.
macro_rules! ending_push_columns {
    () => {
        "next_poll_at = NULL, \
         hinted_at = CASE WHEN videos.hinted_at <= u.value ->> 'claimed_at' \
             THEN videos.hinted_at END"
    };
}

/// The columns every claim returns ([`ClaimedVideo`]); `?NOW` is the
/// claim's time.
macro_rules! claimed_columns {
    ($now:literal) => {
        concat!(
            "id, video_id, upstream_status, enqueued_at, unchanged_polls, error_streak, \
             callback_url, lease_until, created_at, polls, unfinished_seen_at, \
             rendering_seen_at, ",
            $now,
            " AS claimed_at, hinted_at"
        )
    };
}

/// Leases up to `limit` videos with a pending push that are due, the most
/// overdue first: they go ahead of every other due video. A range scan of
/// the partial index `videos_hinted`, which holds only pending pushes.
pub(crate) async fn claim_hinted(
    conn: &mut SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    lease_selected(
        conn,
        concat!(
            "UPDATE videos SET next_poll_at = ?1, lease_until = ?1 WHERE id IN (\
             SELECT id FROM videos INDEXED BY videos_hinted \
             WHERE state = 'active' AND hinted_at IS NOT NULL AND next_poll_at <= ?2 \
             ORDER BY next_poll_at LIMIT ?3 + 0) RETURNING ",
            claimed_columns!("?2")
        ),
        now,
        lease_until,
        limit,
    )
    .await
}

/// Runs a claim statement (`?1` the lease's end, `?2` now, `?3` the limit)
/// and decodes the claimed rows.
async fn lease_selected(
    conn: &mut SqliteConnection,
    statement: &'static str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let claimed = sqlx::query_as::<_, ClaimedVideoRow>(statement)
        .bind(lease_until.0)
        .bind(now.0)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(claimed.into_iter().map(ClaimedVideo::from).collect())
}

/// Leases up to `limit` due videos, most overdue first.
///
/// The lease is written into `next_poll_at` as well as `lease_until`: a
/// leased video is therefore simply "not due" until the lease ends, and a
/// lease abandoned by a crash makes the video due again with no sweeper.
/// The inner SELECT is a range scan of the partial index `videos_due`.
pub(crate) async fn claim_due(
    conn: &mut SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    lease_selected(
        conn,
        concat!(
            "UPDATE videos SET next_poll_at = ?1, lease_until = ?1 WHERE id IN (",
            due_videos!(),
            ") RETURNING ",
            claimed_columns!("?2")
        ),
        now,
        lease_until,
        limit,
    )
    .await
}

/// Like [`claim_due`], but when more videos are due than `limit`, takes the
/// `limit` that `rank` scores highest among the `RANKED_WINDOW × limit`
/// most overdue (ties go to the more overdue). Every video eventually
/// becomes one of the most overdue, so none is starved.
pub(crate) async fn claim_due_ranked(
    conn: &mut SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
    rank: &Ranker,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let candidates = sqlx::query_as::<_, DueVideoRow>(
        "SELECT id, enqueued_at, created_at, unfinished_seen_at, rendering_seen_at, next_poll_at \
         FROM videos INDEXED BY videos_due \
         WHERE state = 'active' AND next_poll_at <= ?1 ORDER BY next_poll_at LIMIT ?2 + 0",
    )
    .bind(now.0)
    .bind(limit.saturating_mul(RANKED_WINDOW))
    .fetch_all(&mut *conn)
    .await?;
    let candidates: Vec<DueVideo> = candidates.into_iter().map(DueVideo::from).collect();
    if candidates.len() <= limit as usize {
        return claim_due(conn, now, lease_until, limit).await;
    }
    let scores = (rank.0)(&candidates, now);
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    // Stable: equal scores keep the most-overdue-first order.
    order.sort_by(|&a, &b| {
        let score = |i: usize| {
            scores
                .get(i)
                .copied()
                .filter(|s| s.is_finite())
                .unwrap_or(0.0)
        };
        score(b).total_cmp(&score(a))
    });
    let chosen: Vec<i64> = order
        .into_iter()
        .take(limit as usize)
        .map(|i| candidates[i].id)
        .collect();
    let claimed = sqlx::query_as::<_, ClaimedVideoRow>(concat!(
        "UPDATE videos SET next_poll_at = ?1, lease_until = ?1 \
         WHERE id IN (SELECT value FROM json_each(?2)) AND state = 'active' \
           AND next_poll_at <= ?3 \
         RETURNING ",
        claimed_columns!("?3")
    ))
    .bind(lease_until.0)
    .bind(to_json(&chosen))
    .bind(now.0)
    .fetch_all(conn)
    .await?;
    Ok(claimed.into_iter().map(ClaimedVideo::from).collect())
}

/// Applies poll results, each only if its claim still holds its lease;
/// returns, in order, whether each was applied.
///
/// A terminal result writes the new state, its transitions and one outbox
/// row per target in the caller's single transaction: either all of it is
/// on disk or none of it is (and the poll is simply repeated). As for
/// enqueues, each kind of row is written by one statement over a JSON array,
/// however many results the group commit carries.
///
/// One video can have two results here: a stale one whose lease expired
/// while its request ran, and the fresh one of the claim that followed.
/// `RETURNING` names rows, not array elements, so it cannot tell those two
/// apart; the results are therefore applied in runs without a repeated
/// video, one run after the other, in order.
pub(crate) async fn record_polls(
    conn: &mut SqliteConnection,
    updates: &[&PollUpdate],
) -> Result<Vec<bool>, StoreError> {
    let mut applied = Vec::with_capacity(updates.len());
    let mut rest = updates;
    while !rest.is_empty() {
        let mut seen = HashSet::with_capacity(rest.len());
        let run = rest
            .iter()
            .take_while(|update| seen.insert(update.video_rowid))
            .count();
        applied.extend(record_distinct_polls(conn, &rest[..run]).await?);
        rest = &rest[run..];
    }
    Ok(applied)
}

/// [`record_polls`] for results of distinct videos.
async fn record_distinct_polls(
    conn: &mut SqliteConnection,
    updates: &[&PollUpdate],
) -> Result<Vec<bool>, StoreError> {
    /// One element of the bound array: the new values of one video's row.
    #[derive(Serialize)]
    struct Row<'a> {
        rowid: i64,
        lease_until: i64,
        upstream_status: Option<&'a str>,
        video_url: Option<&'a str>,
        cover_url: Option<&'a str>,
        created_at: Option<i64>,
        duration: Option<f64>,
        error_code: Option<&'a str>,
        error_message: Option<&'a str>,
        counted: bool,
        unchanged_polls: i64,
        error_streak: i64,
        next_poll_at: Option<i64>,
        unfinished_seen_at: Option<i64>,
        rendering_seen_at: Option<i64>,
        claimed_at: i64,
        repoll_after_push_at: i64,
        state: &'a str,
        reason: Option<&'a str>,
        event_id: Option<&'a str>,
        terminal_at: Option<i64>,
        at: i64,
    }
    let rows: Vec<Row<'_>> = updates
        .iter()
        .map(|update| {
            let terminal = update.terminal.as_ref();
            Row {
                rowid: update.video_rowid,
                lease_until: update.lease.until.0,
                upstream_status: update.upstream_status.as_deref(),
                video_url: update.fields.video_url.as_deref(),
                cover_url: update.fields.cover_url.as_deref(),
                created_at: update.fields.created_at,
                duration: update.fields.duration,
                error_code: update.fields.error_code.as_deref(),
                error_message: update.fields.error_message.as_deref(),
                counted: update.counted,
                unchanged_polls: update.unchanged_polls,
                error_streak: update.error_streak,
                next_poll_at: update.next_poll_at.map(|at| at.0),
                unfinished_seen_at: update.unfinished_seen_at.map(|at| at.0),
                rendering_seen_at: update.rendering_seen_at.map(|at| at.0),
                claimed_at: update.claimed_at.0,
                repoll_after_push_at: update.repoll_after_push_at.0,
                state: terminal.map_or(VideoState::Active, |t| t.state).as_str(),
                reason: terminal.and_then(|t| t.reason.as_deref()),
                event_id: terminal.map(|t| t.event_id.as_str()),
                terminal_at: terminal.map(|_| update.at.0),
                at: update.at.0,
            }
        })
        .collect();
    // Most results leave the video active: their statement does not touch
    // `state` or `event_id`, so SQLite leaves the indexes on those columns
    // alone (it rewrites an index entry whenever its column is assigned,
    // even to the same value).
    let (ending, ongoing): (Vec<Row<'_>>, Vec<Row<'_>>) =
        rows.into_iter().partition(|row| row.event_id.is_some());
    let mut applied: Vec<i64> = Vec::with_capacity(updates.len());
    if !ongoing.is_empty() {
        applied.extend(
            sqlx::query_scalar::<_, i64>(concat!(
                "UPDATE videos SET ",
                poll_result_columns!(),
                ", ",
                ongoing_schedule_columns!(),
                " ",
                recorded_polls_from!(),
                " RETURNING videos.id"
            ))
            .bind(to_json(&ongoing))
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    if !ending.is_empty() {
        applied.extend(
            sqlx::query_scalar::<_, i64>(concat!(
                "UPDATE videos SET ",
                poll_result_columns!(),
                ", ",
                ending_push_columns!(),
                ", state = u.value ->> 'state', reason = u.value ->> 'reason', \
                 event_id = u.value ->> 'event_id', terminal_at = u.value ->> 'terminal_at' ",
                recorded_polls_from!(),
                " RETURNING videos.id"
            ))
            .bind(to_json(&ending))
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    let applied: HashSet<i64> = applied.into_iter().collect();
    let applied: Vec<bool> = updates
        .iter()
        .map(|update| applied.contains(&update.video_rowid))
        .collect();

    /// One transition row.
    #[derive(Serialize)]
    struct TransitionRow<'a> {
        video_rowid: i64,
        kind: &'a str,
        from: Option<&'a str>,
        to: &'a str,
        at: i64,
    }
    /// One outbox row.
    #[derive(Serialize)]
    struct DeliveryRow<'a> {
        video_rowid: i64,
        event_id: &'a str,
        url: &'a str,
        at: i64,
    }
    let mut transitions = Vec::new();
    let mut deliveries = Vec::new();
    for update in updates
        .iter()
        .zip(&applied)
        .filter_map(|(u, &ok)| ok.then_some(u))
    {
        transitions.extend(update.transitions.iter().map(|t| TransitionRow {
            video_rowid: update.video_rowid,
            kind: t.kind.as_str(),
            from: t.from.as_deref(),
            to: &t.to,
            at: update.at.0,
        }));
        if let Some(terminal) = &update.terminal {
            deliveries.extend(terminal.targets.iter().map(|url| DeliveryRow {
                video_rowid: update.video_rowid,
                event_id: &terminal.event_id,
                url,
                at: update.at.0,
            }));
        }
    }
    // Inserted in array order (`ORDER BY key`; a sort of a few rows), so
    // each video's transitions keep their order in the log.
    if !transitions.is_empty() {
        sqlx::query(
            "INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) \
             SELECT value ->> 'video_rowid', value ->> 'kind', value ->> 'from', value ->> 'to', \
                    value ->> 'at' \
             FROM jsonb_each(?1) ORDER BY key",
        )
        .bind(to_json(&transitions))
        .execute(&mut *conn)
        .await?;
    }
    if !deliveries.is_empty() {
        sqlx::query(
            "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) \
             SELECT value ->> 'video_rowid', value ->> 'event_id', value ->> 'url', \
                    value ->> 'at', value ->> 'at', value ->> 'at' \
             FROM jsonb_each(?1) WHERE true \
             ON CONFLICT (video_rowid, url) DO NOTHING",
        )
        .bind(to_json(&deliveries))
        .execute(&mut *conn)
        .await?;
    }
    Ok(applied)
}

/// Applies a verified push (README, "JoggAI's pushes"): an active video
/// becomes due for a confirming poll at the push's time, but no sooner than
/// `min_interval` after its last poll and never later than it was due
/// anyway; the push stays pending until a poll claimed after it answers.
///
/// A video whose poll is in flight (leased) keeps its lease and due time:
/// that poll's result sees the pending push and schedules the next poll by
/// it (see `ongoing_schedule_columns`). So however many pushes arrive, a
/// video is polled at most once per `min_interval` on their account.
///
/// An untracked video is adopted when `hint.adopt`: inserted as if
/// enqueued without `callback_url` or metadata, due at once, its push
/// pending.
pub(crate) async fn hint(
    conn: &mut SqliteConnection,
    hint: &PushHint,
) -> Result<HintOutcome, StoreError> {
    let at = hint.at;
    let spacing = i64::try_from(hint.min_interval.as_millis()).unwrap_or(i64::MAX);
    let due_at: Option<(Option<i64>,)> = sqlx::query_as(
        "UPDATE videos SET hinted_at = MAX(COALESCE(hinted_at, ?2), ?2), \
           next_poll_at = CASE WHEN lease_until IS NULL \
             THEN MIN(next_poll_at, MAX(?2, COALESCE(polled_at + ?3, ?2))) \
             ELSE next_poll_at END \
         WHERE video_id = ?1 AND state = 'active' RETURNING next_poll_at",
    )
    .bind(hint.video_id.as_str())
    .bind(at.0)
    .bind(spacing)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((due_at,)) = due_at {
        return Ok(HintOutcome::Hinted {
            due_at: Millis(due_at.unwrap_or(at.0)),
        });
    }
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM videos WHERE video_id = ?")
        .bind(hint.video_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    match state {
        Some(state) => Ok(HintOutcome::NotActive(
            VideoState::try_from(state)
                .map_err(|err| StoreError::Database(sqlx::Error::Decode(Box::new(err))))?,
        )),
        None if hint.adopt => {
            sqlx::query(
                "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at, hinted_at) \
                 VALUES (?1, ?2, ?2, ?2, ?2)",
            )
            .bind(hint.video_id.as_str())
            .bind(at.0)
            .execute(&mut *conn)
            .await?;
            Ok(HintOutcome::Adopted)
        }
        None => Ok(HintOutcome::Untracked),
    }
}

/// Hands a claimed video back unpolled, if the claim still holds its lease.
pub(crate) async fn release(
    conn: &mut SqliteConnection,
    release: &Release,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE videos SET next_poll_at = ?, lease_until = NULL \
         WHERE id = ? AND state = 'active' AND lease_until = ?",
    )
    .bind(release.next_poll_at.0)
    .bind(release.video_rowid)
    .bind(release.lease.until.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Leases up to `limit` due deliveries, most overdue first, with the event
/// each carries. As for videos, the lease is also the next attempt time, so
/// a crashed sender's deliveries become due again by themselves. (`LIMIT
/// ?3 + 0` for the reason given at `due_videos!`.)
pub(crate) async fn claim_deliveries(
    conn: &mut SqliteConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE deliveries SET next_attempt_at = ?1, lease_until = ?1 WHERE id IN (\
           SELECT id FROM deliveries INDEXED BY deliveries_due \
           WHERE state = 'pending' AND next_attempt_at <= ?2 ORDER BY next_attempt_at \
           LIMIT ?3 + 0) \
         RETURNING id",
    )
    .bind(lease_until.0)
    .bind(now.0)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let delivery = sqlx::query_as::<_, ClaimedDeliveryRow>(
            "SELECT d.id, d.url, d.attempts, d.lease_until, d.event_id, v.video_id, v.state, \
                    v.video_url, v.cover_url, v.created_at, v.duration, v.error_code, \
                    v.error_message, v.metadata, v.reason, v.terminal_at, \
                    CASE WHEN v.hinted_at IS NOT NULL AND v.state IN ('completed', 'failed') \
                      AND NOT EXISTS (\
                        SELECT 1 FROM delivery_attempts a WHERE a.delivery_id = d.id \
                          AND a.status BETWEEN 200 AND 299) \
                      THEN v.hinted_at END AS pushed_at \
             FROM deliveries d JOIN videos v ON v.id = d.video_rowid WHERE d.id = ?",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        claimed.push(ClaimedDelivery::from(delivery));
    }
    Ok(claimed)
}

/// Records one delivery attempt and what follows it, if the claim still
/// holds its lease. Returns whether it was recorded.
pub(crate) async fn record_attempt(
    conn: &mut SqliteConnection,
    attempt: &AttemptRecord,
) -> Result<bool, StoreError> {
    let (state, next_attempt_at, reason) = match &attempt.next {
        DeliveryNext::Delivered => ("delivered", None, None),
        DeliveryNext::Retry(at) => ("pending", Some(at.0), None),
        DeliveryNext::Dead(reason) => ("dead", None, Some(reason.as_str())),
    };
    let applied = sqlx::query(
        "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, \
                lease_until = NULL, last_status = ?, last_error = ?, reason = ?, updated_at = ? \
         WHERE id = ? AND state = 'pending' AND lease_until = ?",
    )
    .bind(state)
    .bind(next_attempt_at)
    .bind(attempt.status.map(i64::from))
    .bind(attempt.error.as_deref())
    .bind(reason)
    .bind(attempt.at.0)
    .bind(attempt.delivery_id)
    .bind(attempt.lease.until.0)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if applied {
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, at, status, error, duration_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(attempt.delivery_id)
        .bind(attempt.at.0)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error.as_deref())
        .bind(attempt.duration_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(applied)
}

/// Queues a terminal video's event again to its current targets (the
/// `configured` URLs and its own `callback_url`): missing deliveries are created, delivered and dead ones become
/// pending with a fresh retry schedule, pending ones are made due now
/// unless an attempt is in flight. The event id never changes.
pub(crate) async fn redeliver(
    conn: &mut SqliteConnection,
    video_id: &VideoId,
    configured: &[String],
    now: Millis,
) -> Result<RedeliverOutcome, StoreError> {
    let row: Option<(i64, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, state, event_id, callback_url FROM videos WHERE video_id = ?")
            .bind(video_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let Some((rowid, state, event_id, callback_url)) = row else {
        return Ok(RedeliverOutcome::NotFound);
    };
    let state = VideoState::try_from(state)
        .map_err(|err| StoreError::Database(sqlx::Error::Decode(Box::new(err))))?;
    let Some(event_id) = event_id else {
        return Ok(RedeliverOutcome::NoEvent(state));
    };
    let targets = crate::store::records::redelivery_targets(configured, callback_url.as_deref());
    for url in &targets {
        sqlx::query(
            "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) VALUES (?1, ?2, ?3, ?4, ?4, ?4) \
             ON CONFLICT (video_rowid, url) DO UPDATE SET \
               state = 'pending', attempts = 0, next_attempt_at = ?4, lease_until = NULL, \
               reason = NULL, updated_at = ?4 \
             WHERE deliveries.state != 'pending'",
        )
        .bind(rowid)
        .bind(&event_id)
        .bind(url)
        .bind(now.0)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?1, updated_at = ?1 \
         WHERE video_rowid = ?2 AND state = 'pending' AND lease_until IS NULL \
           AND next_attempt_at > ?1",
    )
    .bind(now.0)
    .bind(rowid)
    .execute(&mut *conn)
    .await?;
    Ok(RedeliverOutcome::Queued {
        event_id,
        targets: targets.len(),
    })
}

/// Hands a claimed delivery back unattempted, if the claim still holds its
/// lease.
pub(crate) async fn release_delivery(
    conn: &mut SqliteConnection,
    release: &DeliveryRelease,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = ?, lease_until = NULL \
         WHERE id = ? AND state = 'pending' AND lease_until = ?",
    )
    .bind(release.next_attempt_at.0)
    .bind(release.delivery_id)
    .bind(release.lease.until.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// The readiness probe's write: rewrites its one row in place, so that a
/// ready answer is backed by a real commit. The row's `writes` counter
/// changes on every probe, so the page is written even when `now` is the
/// previous probe's millisecond.
pub(crate) async fn touch_probe(
    conn: &mut SqliteConnection,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO readiness_probe (id, written_at, writes) VALUES (1, ?, 1) \
         ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at, \
                                        writes = writes + 1",
    )
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::DatabaseConfig;
    use crate::domain::poll::{NewTransition, PollUpdate, TerminalChange, TransitionKind};
    use crate::domain::{Lease, Millis, VideoId};
    use crate::store::{NewVideo, Store};

    /// A result for `rowid` under `lease` that ends the video as completed
    /// with event `event_id`, after one status transition.
    fn completed(rowid: i64, lease: Lease, event_id: &str) -> PollUpdate {
        PollUpdate {
            video_rowid: rowid,
            lease,
            at: lease.until,
            counted: true,
            upstream_status: Some("completed".into()),
            fields: Default::default(),
            unchanged_polls: 0,
            error_streak: 0,
            next_poll_at: None,
            unfinished_seen_at: None,
            rendering_seen_at: None,
            claimed_at: Millis(0),
            repoll_after_push_at: lease.until,
            transitions: vec![NewTransition {
                kind: TransitionKind::Status,
                from: None,
                to: format!("completed ({event_id})"),
            }],
            terminal: Some(TerminalChange {
                state: crate::domain::VideoState::Completed,
                reason: None,
                event_id: event_id.into(),
                targets: vec!["https://hooks.example.com/x".into()],
            }),
        }
    }

    /// Two probes within one millisecond: the second still writes a page
    /// (SQLite's log grows by a frame), so it still proves the disk takes
    /// writes.
    #[tokio::test]
    async fn every_probe_writes_a_page_even_within_one_millisecond() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let config = DatabaseConfig::parse(&format!("sqlite://{}", path.display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        let wal = dir.path().join("t.db-wal");
        let wal_len = || std::fs::metadata(&wal).unwrap().len();
        let probe = async |conn: &mut sqlx::SqliteConnection| {
            let mut tx = sqlx::Connection::begin(conn).await.unwrap();
            super::touch_probe(&mut tx, Millis(7)).await.unwrap();
            tx.commit().await.unwrap();
        };
        probe(&mut conn).await;
        let after_first = wal_len();
        probe(&mut conn).await;
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        // A frame is a 24-byte header and the page.
        assert_eq!(wal_len() - after_first, 24 + page_size as u64);
    }

    #[tokio::test]
    async fn a_ranked_claim_takes_the_best_scored_among_the_most_overdue() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        // Videos v0..v19 due at 0..19 ms, and v20 not due yet.
        let videos: Vec<NewVideo> = (0..21)
            .map(|i| NewVideo {
                video_id: VideoId::parse(&format!("v{i}")).unwrap(),
                callback_url: None,
                metadata: None,
                first_poll_at: Millis(if i == 20 { 1_000 } else { i }),
            })
            .collect();
        let refs: Vec<&NewVideo> = videos.iter().collect();
        super::insert_videos(&mut conn, &refs, Millis(0))
            .await
            .unwrap();
        // Scores rank the later-due videos higher; v3 and v5 tie with the
        // best, so the more overdue wins the tie.
        let rank = super::Ranker(std::sync::Arc::new(|due: &[super::DueVideo], _| {
            due.iter()
                .map(|v| match v.next_poll_at.0 {
                    3 | 5 => 100.0,
                    at => at as f64,
                })
                .collect()
        }));
        let names = |claimed: Vec<super::ClaimedVideo>| {
            let mut names: Vec<String> = claimed
                .into_iter()
                .map(|v| v.video_id.to_string())
                .collect();
            names.sort();
            names
        };
        // Two taken from the window of the 8 most overdue (v0..v7).
        let claimed = super::claim_due_ranked(&mut conn, Millis(100), Millis(500), 2, &rank)
            .await
            .unwrap();
        assert_eq!(names(claimed), ["v3", "v5"]);
        let claimed = super::claim_due_ranked(&mut conn, Millis(100), Millis(500), 3, &rank)
            .await
            .unwrap();
        // The window is the 12 most overdue not leased (v0..v13 but v3
        // and v5): the three latest due of those.
        assert_eq!(names(claimed), ["v11", "v12", "v13"]);
        // Fewer due than the limit: all of them, none not yet due.
        let claimed = super::claim_due_ranked(&mut conn, Millis(100), Millis(500), 50, &rank)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 15);
        assert!(claimed.iter().all(|v| v.video_id.as_str() != "v20"));
    }

    #[tokio::test]
    async fn a_stale_result_beside_the_fresh_one_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        let video = NewVideo {
            video_id: VideoId::parse("v1").unwrap(),
            callback_url: None,
            metadata: None,
            first_poll_at: Millis(0),
        };
        super::insert_videos(&mut conn, &[&video], Millis(0))
            .await
            .unwrap();
        // The first claim's lease ran out while its request was in flight;
        // a second claim took the video.
        let stale = super::claim_due(&mut conn, Millis(1), Millis(100), 1)
            .await
            .unwrap();
        let fresh = super::claim_due(&mut conn, Millis(150), Millis(300), 1)
            .await
            .unwrap();
        assert_eq!((stale.len(), fresh.len()), (1, 1));
        let rowid = fresh[0].id;

        // Both results reach the same group commit, the stale one first.
        let (old, new) = (
            completed(rowid, stale[0].lease, "evt_stale"),
            completed(rowid, fresh[0].lease, "evt_fresh"),
        );
        let applied = super::record_polls(&mut conn, &[&old, &new]).await.unwrap();
        assert_eq!(applied, vec![false, true]);

        let event: String = sqlx::query_scalar("SELECT event_id FROM videos WHERE id = ?")
            .bind(rowid)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let outbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM deliveries")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let log: Vec<String> = sqlx::query_scalar("SELECT to_value FROM transitions")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert_eq!(event, "evt_fresh");
        assert_eq!(outbox, vec!["evt_fresh"]);
        assert_eq!(log, vec!["completed (evt_fresh)"]);
        drop(conn);
        store.close().await;
    }

    /// Metadata is compared as JSON values, whatever text the row holds: a
    /// row written with other key order and spacing (by hand, or by a
    /// build whose serializer keeps insertion order) is the same request.
    #[tokio::test]
    async fn stored_metadata_is_compared_as_json_not_as_text() {
        use crate::store::{ConflictingFields, EnqueueOutcome};

        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO videos (video_id, metadata, enqueued_at, updated_at, next_poll_at) \
             VALUES ('v1', '{ \"b\" : [1, {\"y\":2,\"x\":1}], \"a\": \"z\" }', 0, 0, 0)",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        let request = |metadata: Option<&str>| NewVideo {
            video_id: VideoId::parse("v1").unwrap(),
            callback_url: None,
            metadata: metadata.map(str::to_owned),
            first_poll_at: Millis(0),
        };
        let same = request(Some(r#"{"a":"z","b":[1,{"x":1,"y":2}]}"#));
        let reordered_array = request(Some(r#"{"a":"z","b":[{"x":1,"y":2},1]}"#));
        let absent = request(None);
        let outcomes =
            super::insert_videos(&mut conn, &[&same, &reordered_array, &absent], Millis(1))
                .await
                .unwrap();
        let metadata_differs = EnqueueOutcome::Conflict(ConflictingFields {
            callback_url: false,
            metadata: true,
        });
        assert_eq!(
            outcomes,
            [EnqueueOutcome::Existing, metadata_differs, metadata_differs]
        );
        drop(conn);
        store.close().await;
    }

    /// The detail lines of SQLite's plan for `sql` on a fresh database,
    /// with its `parameters` parameters bound to NULL (the plans checked
    /// here do not depend on the values).
    async fn query_plan(sql: &str, parameters: usize) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/t.db", dir.path().display())).unwrap();
        let store = Store::open(&config).await.unwrap();
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        // Built from the module's own constant statements.
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(explain));
        for _ in 0..parameters {
            query = query.bind(None::<i64>);
        }
        let plan = query.fetch_all(store.pool()).await.unwrap();
        store.close().await;
        plan.into_iter().map(|row| row.3).collect()
    }

    #[tokio::test]
    async fn existing_ids_are_index_probes() {
        let details = query_plan(existing_videos!(), 1).await;
        assert!(
            details[0].starts_with("SEARCH videos USING ")
                && details[0].contains("INDEX")
                && details[0].ends_with("(video_id=?)"),
            "{details:?}"
        );
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN videos")),
            "{details:?}"
        );
    }

    #[tokio::test]
    async fn recorded_polls_find_their_videos_by_rowid() {
        let details = query_plan(
            concat!("UPDATE videos SET polls = 1 ", recorded_polls_from!()),
            1,
        )
        .await;
        // The array drives; each element is one primary-key lookup, never a
        // scan of the table.
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(
            details[0].starts_with("SCAN u VIRTUAL TABLE"),
            "{details:?}"
        );
        assert!(
            details[1].starts_with("SEARCH videos USING INTEGER PRIMARY KEY (rowid=?)"),
            "{details:?}"
        );
    }

    #[tokio::test]
    async fn the_due_query_is_an_index_range_scan_without_a_sort() {
        let details = query_plan(due_videos!(), 3).await;
        assert_eq!(details.len(), 1, "{details:?}");
        assert!(
            details[0].starts_with("SEARCH videos USING")
                && details[0].ends_with("INDEX videos_due (next_poll_at<?)"),
            "{details:?}"
        );
    }
}
