//! Every write statement in PostgreSQL's dialect, each applied inside a
//! transaction the caller (the writer) owns: one function per function of
//! the SQLite backend's `mutations`, with the same name, arguments and
//! result, and the same effect row for row.
//!
//! What differs, and why:
//! - Several relay instances may write at once (see the module above).
//!   Claims choose their rows with `FOR UPDATE SKIP LOCKED`: a row another
//!   transaction is claiming is passed over, not waited for, and a row
//!   claimed and committed meanwhile is re-checked against the claim's
//!   `WHERE` and dropped, so two claims never lease one row.
//! - Batches travel as one array per column, expanded by `UNNEST`, where
//!   SQLite binds one JSON array and expands it with `jsonb_each`: one
//!   statement per kind of row however many the group commit carries.
//! - `GREATEST`/`LEAST` stand for SQLite's two-argument `MAX`/`MIN`. They
//!   skip NULLs where SQLite's return NULL; each use below says why that
//!   cannot change the result, or keeps SQLite's NULL explicitly.
//! - Results come back in a defined order (most overdue first, or the
//!   ranking's order), where SQLite's `RETURNING` order is unspecified.
//! - Text that came from outside (upstream's status and error strings, a
//!   delivery's error) is stored with any U+0000 replaced (see
//!   [`storable`]): PostgreSQL's TEXT cannot hold it.
//!
//! Plans that do not depend on statistics: every statement that changes
//! rows it names (by id, by video id, or a batch of ids) finds them by
//! that key, whatever the planner's statistics say. A new database has
//! none yet, or ones taken before a large enqueue (or while nothing was
//! active), and with those the planner reads a condition such as
//! `state = 'active'` or a due time as "matches a handful of rows" and
//! walks a whole index instead: the partial due index (every due or every
//! active video, hashed against a batch of results), or `(state, id)`
//! (every active video, filtered by video id). So, in those statements:
//! - the state (and a due time) is tested inside `COALESCE(…, FALSE)`:
//!   the same test (a NULL fails a `WHERE` just as FALSE does), but one no
//!   index serves and that implies no partial index's predicate, and one
//!   the planner, having no statistics for it, takes to hold for half the
//!   rows: it stays a filter on the rows found by key, and does not make
//!   them look like a single row that a whole batch may be compared with
//!   in a loop (which `state || '' = 'active'`, guessed true for 0.5 % of
//!   rows, did);
//! - a batch joined from arrays names its ids once more as
//!   `videos.id = ANY(…)`, which the primary key answers and which the
//!   planner counts as about as many rows as the array holds, so the
//!   batch is fetched by key and hashed against the arrays.
//!
//! The claims (`ORDER BY` due time `LIMIT`) keep the plain forms: they
//! are what the due indexes serve.

use std::borrow::Cow;
use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};

use sqlx::PgConnection;

use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryNext, DeliveryRelease};
use crate::domain::poll::{ClaimedVideo, DueVideo, PollUpdate, RANKED_WINDOW, Ranker, Release};
use crate::domain::{Millis, VideoId, VideoState};
use crate::store::StoreError;
use crate::store::postgres::shared::VIDEOS_CHANNEL;
use crate::store::records::{
    CancelOutcome, ConflictingFields, EnqueueOutcome, HintOutcome, NewVideo, PushHint,
    RedeliverOutcome,
};
use crate::store::rows::{ClaimedDeliveryRow, ClaimedVideoRow, DueVideoRow};
use crate::worker::MAX_IDLE_WAIT;

/// Tells every listening relay (itself included) when the earliest of the
/// videos this call stored is due, if that is within an idle look
/// ([`MAX_IDLE_WAIT`]) of `now`: another relay then takes it at once
/// rather than at the end of its idle wait. Work due later is not
/// announced: an idle relay looks at the database at least that often, so
/// it finds that work before it is due, and a notification costs every
/// listener's server process a wake-up (ARCHITECTURE.md, "The storage
/// seam"). The usual enqueue (`polling.first_after` 10 s) sends nothing,
/// and no trigger runs for it.
///
/// Inside a transaction the notification goes out at its commit; after an
/// enqueue batch that committed alone, it follows that commit. Either way a
/// listener that hears it finds the rows.
async fn announce_if_due_soon(
    conn: &mut PgConnection,
    stored: &[&NewVideo],
    inserted: &HashSet<String>,
    now: Millis,
) -> Result<(), StoreError> {
    let earliest = stored
        .iter()
        .filter(|video| inserted.contains(video.video_id.as_str()))
        .map(|video| video.first_poll_at)
        .min();
    match earliest {
        Some(due) if due <= now.plus(MAX_IDLE_WAIT) => {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(VIDEOS_CHANNEL)
                .bind(due.0.to_string())
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Inserts `videos` in one statement; an id already tracked (or repeated
/// earlier in the same call) is left as it is. Returns, in order, what
/// happened to each: created; existing, when the request repeats the one
/// the id is tracked with (same `callback_url` and `metadata`); or a
/// conflict naming the fields that differ.
///
/// Unlike SQLite's, which looks for the tracked ids first (it holds the
/// only write lock, so nothing can be inserted in between), the insert
/// itself says which ids it stored (`RETURNING`): another instance may
/// insert the same id between a look-up and the insert. An id the insert
/// skipped was committed by someone else before it (the insert waits for a
/// concurrent transaction inserting the same id, and stores nothing if
/// that one commits), so the look-up that follows, a new statement, sees
/// the row it conflicted with.
pub(crate) async fn insert_videos(
    conn: &mut PgConnection,
    videos: &[&NewVideo],
    now: Millis,
) -> Result<Vec<EnqueueOutcome>, StoreError> {
    // An id repeated within the call is sent once, its first occurrence: an
    // INSERT must not meet its own row twice.
    let mut first = HashSet::with_capacity(videos.len());
    let unique: Vec<&NewVideo> = videos
        .iter()
        .copied()
        .filter(|video| first.insert(video.video_id.as_str()))
        .collect();
    let ids: Vec<&str> = unique.iter().map(|v| v.video_id.as_str()).collect();
    let urls: Vec<Option<&str>> = unique.iter().map(|v| v.callback_url.as_deref()).collect();
    let metadata: Vec<Option<&str>> = unique.iter().map(|v| v.metadata.as_deref()).collect();
    let due: Vec<i64> = unique.iter().map(|v| v.first_poll_at.0).collect();
    // In array order (`ORDER BY n`), so that ids, which order list pages,
    // follow the request's order as they do on SQLite.
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO videos (video_id, callback_url, metadata, enqueued_at, updated_at, \
                             next_poll_at) \
         SELECT u.video_id, u.callback_url, u.metadata, $5, $5, u.next_poll_at \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY \
              AS u (video_id, callback_url, metadata, next_poll_at, n) \
         ORDER BY u.n \
         ON CONFLICT (video_id) DO NOTHING RETURNING video_id",
    )
    .bind(&ids)
    .bind(&urls)
    .bind(&metadata)
    .bind(&due)
    .bind(now.0)
    .fetch_all(&mut *conn)
    .await?;
    let inserted: HashSet<String> = inserted.into_iter().collect();
    announce_if_due_soon(conn, &unique, &inserted, now).await?;
    // The ids tracked already: usually none, and then no look-up at all.
    let skipped: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !inserted.contains(*id))
        .collect();
    let existing: Vec<(String, Option<String>, Option<String>)> = if skipped.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT video_id, callback_url, metadata FROM videos \
             WHERE video_id = ANY($1::text[])",
        )
        .bind(&skipped)
        .fetch_all(&mut *conn)
        .await?
    };
    // What each id stands for: the stored row's fields, or the first
    // occurrence's in this call (the one the INSERT just stored).
    let mut known: HashMap<&str, (Option<&str>, Option<&str>)> = existing
        .iter()
        .map(|(id, url, metadata)| (id.as_str(), (url.as_deref(), metadata.as_deref())))
        .collect();
    videos
        .iter()
        .map(|video| {
            let request = (video.callback_url.as_deref(), video.metadata.as_deref());
            match known.entry(video.video_id.as_str()) {
                Entry::Vacant(slot) => {
                    if !inserted.contains(video.video_id.as_str()) {
                        // Skipped by the insert, yet not found: only a
                        // snapshot older than the conflicting row's commit
                        // (an isolation stricter than READ COMMITTED)
                        // could do that.
                        return Err(StoreError::Database(sqlx::Error::RowNotFound));
                    }
                    slot.insert(request);
                    Ok(EnqueueOutcome::Created { at: now })
                }
                Entry::Occupied(tracked) => {
                    let (url, metadata) = *tracked.get();
                    let differs = ConflictingFields {
                        callback_url: url != request.0,
                        metadata: !crate::store::records::same_metadata(metadata, request.1),
                    };
                    Ok(if differs.callback_url || differs.metadata {
                        EnqueueOutcome::Conflict(differs)
                    } else {
                        EnqueueOutcome::Existing
                    })
                }
            }
        })
        .collect()
}

/// Moves an active video to `cancelled` with its transition row.
///
/// A poll result under the lease this clears finds the video no longer
/// active and is discarded; a concurrent one that commits first makes the
/// video terminal, and this UPDATE, re-checked against that version,
/// changes nothing.
pub(crate) async fn cancel_video(
    conn: &mut PgConnection,
    video_id: &VideoId,
    now: Millis,
) -> Result<CancelOutcome, StoreError> {
    let cancelled: Option<i64> = sqlx::query_scalar(CANCEL_ACTIVE)
        .bind(now.0)
        .bind(video_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(rowid) = cancelled {
        insert_transition(conn, rowid, "state", Some("active"), "cancelled", now).await?;
        return Ok(CancelOutcome::Cancelled);
    }
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM videos WHERE video_id = $1")
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

/// [`cancel_video`]'s change (`$1` now, `$2` the video id): the video is
/// found by its id, the state only checked (see the module's
/// documentation on plans).
const CANCEL_ACTIVE: &str = "UPDATE videos SET state = 'cancelled', next_poll_at = NULL, \
                                                lease_until = NULL, updated_at = $1 \
                             WHERE video_id = $2 AND COALESCE(state = 'active', FALSE) RETURNING id";

/// Appends one row to a video's transition log.
pub(crate) async fn insert_transition(
    conn: &mut PgConnection,
    video_rowid: i64,
    kind: &str,
    from: Option<&str>,
    to: &str,
    at: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) \
         VALUES ($1, $2, $3, $4, $5)",
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

/// The columns every claim returns ([`ClaimedVideo`]), from the CTE
/// `leased`; `$2` is the claim's time.
macro_rules! claimed_columns {
    () => {
        "id, video_id, upstream_status, enqueued_at, unchanged_polls, error_streak, \
         callback_url, lease_until, created_at, polls, unfinished_seen_at, \
         rendering_seen_at, $2::bigint AS claimed_at, hinted_at"
    };
}

/// A claim of the videos a `picked` CTE selects (`$1` the lease's end, `$2`
/// now, `$3` the limit): each is leased, and returned most overdue first.
///
/// The lease is written into `next_poll_at` as well as `lease_until`: a
/// leased video is therefore simply "not due" until the lease ends, and a
/// lease abandoned by a crash makes the video due again with no sweeper.
///
/// `FOR UPDATE SKIP LOCKED` sits below the `LIMIT` in the plan: rows
/// another claim holds are skipped without counting, so a claim takes up to
/// `limit` of the rows nobody else is taking. A row whose claim committed
/// after this statement's snapshot is re-read and re-checked by the lock,
/// and, no longer due, is dropped.
macro_rules! lease_picked {
    ($picked:literal) => {
        concat!(
            "WITH picked AS (",
            $picked,
            " ORDER BY next_poll_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), \
             leased AS (\
               UPDATE videos SET next_poll_at = $1, lease_until = $1 FROM picked \
               WHERE videos.id = picked.id \
               RETURNING videos.*, picked.due_at) \
             SELECT ",
            claimed_columns!(),
            " FROM leased ORDER BY due_at, id"
        )
    };
}

/// Leases up to `limit` videos with a pending push that are due, the most
/// overdue first: they go ahead of every other due video. The `WHERE` is
/// the predicate of the partial index `videos_hinted`, which holds only
/// pending pushes.
pub(crate) async fn claim_hinted(
    conn: &mut PgConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    lease_selected(
        conn,
        lease_picked!(
            "SELECT id, next_poll_at AS due_at FROM videos \
             WHERE state = 'active' AND hinted_at IS NOT NULL AND next_poll_at <= $2"
        ),
        now,
        lease_until,
        limit,
    )
    .await
}

/// Runs a claim statement (`$1` the lease's end, `$2` now, `$3` the limit)
/// and decodes the claimed rows.
async fn lease_selected(
    conn: &mut PgConnection,
    statement: &'static str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let claimed = sqlx::query_as::<_, ClaimedVideoRow>(statement)
        .bind(lease_until.0)
        .bind(now.0)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    Ok(claimed.into_iter().map(ClaimedVideo::from).collect())
}

/// Leases up to `limit` due videos, most overdue first. The `WHERE` is the
/// predicate of the partial index `videos_due`.
pub(crate) async fn claim_due(
    conn: &mut PgConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    lease_selected(
        conn,
        lease_picked!(
            "SELECT id, next_poll_at AS due_at FROM videos \
             WHERE state = 'active' AND next_poll_at <= $2"
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
///
/// The window is locked (`FOR UPDATE SKIP LOCKED`) as it is read: the rows
/// ranked are rows no other claim can take before this transaction ends,
/// so the chosen ones are all still there to lease. The unchosen ones stay
/// locked until then too; other claims pass over them meanwhile.
pub(crate) async fn claim_due_ranked(
    conn: &mut PgConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
    rank: &Ranker,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let candidates = sqlx::query_as::<_, DueVideoRow>(
        "SELECT id, enqueued_at, created_at, unfinished_seen_at, rendering_seen_at, next_poll_at \
         FROM videos WHERE state = 'active' AND next_poll_at <= $1 \
         ORDER BY next_poll_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now.0)
    .bind(i64::from(limit.saturating_mul(RANKED_WINDOW)))
    .fetch_all(&mut *conn)
    .await?;
    let candidates: Vec<DueVideo> = candidates.into_iter().map(DueVideo::from).collect();
    // No more due than the limit: all of them, most overdue first (what
    // SQLite's `claim_due` returns; these rows are already locked here).
    let chosen: Vec<i64> = if candidates.len() <= limit as usize {
        candidates.iter().map(|video| video.id).collect()
    } else {
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
        order
            .into_iter()
            .take(limit as usize)
            .map(|i| candidates[i].id)
            .collect()
    };
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    // Returned in the chosen order: best ranked first.
    let claimed = sqlx::query_as::<_, ClaimedVideoRow>(LEASE_RANKED)
        .bind(lease_until.0)
        .bind(now.0)
        .bind(&chosen)
        .fetch_all(conn)
        .await?;
    Ok(claimed.into_iter().map(ClaimedVideo::from).collect())
}

/// The lease of [`claim_due_ranked`]'s chosen videos (`$3`, best first;
/// `$1` the lease's end, `$2` now), returned in that order. The chosen
/// ids are read by primary key whatever the statistics (see the module's
/// documentation on plans): with ones taken before a burst of due videos,
/// the plain `state = 'active' AND next_poll_at <= $2` made the planner
/// hash the batch against a scan of every due video.
const LEASE_RANKED: &str = concat!(
    "WITH leased AS (\
       UPDATE videos SET next_poll_at = $1, lease_until = $1 \
       FROM UNNEST($3::bigint[]) WITH ORDINALITY AS c (id, n) \
       WHERE videos.id = c.id AND videos.id = ANY($3::bigint[]) \
         AND COALESCE(videos.state = 'active' AND videos.next_poll_at <= $2, FALSE) \
       RETURNING videos.*, c.n) \
     SELECT ",
    claimed_columns!(),
    " FROM leased ORDER BY n"
);

/// The arrays [`record_distinct_polls`] binds (`$1` to `$22`), expanded
/// as `u`: one element per result.
macro_rules! unnest_polls {
    () => {
        "UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                $6::bigint[], $7::float8[], $8::text[], $9::text[], $10::boolean[], \
                $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], \
                $16::bigint[], $17::bigint[], $18::text[], $19::text[], $20::text[], \
                $21::bigint[], $22::bigint[]) \
         AS u (rowid, lease_until, upstream_status, video_url, cover_url, \
               created_at, duration, error_code, error_message, counted, \
               unchanged_polls, error_streak, next_poll_at, unfinished_seen_at, \
               rendering_seen_at, claimed_at, repoll_after_push_at, state, reason, event_id, \
               terminal_at, at)"
    };
}

/// The join of [`record_polls`]: each element finds its video by id (the
/// ids named again as `ANY($1)`, the state tested in a `COALESCE`: see the
/// module's documentation on plans), and only a video still active under
/// the same lease is changed. A row another transaction is changing is
/// waited for and re-checked, so a lease lost meanwhile (a cancel, another
/// claim's result) discards the result.
macro_rules! recorded_polls_from {
    () => {
        concat!(
            "FROM ",
            unnest_polls!(),
            " WHERE videos.id = u.rowid AND videos.id = ANY($1::bigint[]) \
               AND COALESCE(videos.state = 'active', FALSE) \
               AND videos.lease_until = u.lease_until"
        )
    };
}

/// The columns every poll result sets, from the array element `u`.
macro_rules! poll_result_columns {
    () => {
        "upstream_status = u.upstream_status, \
         video_url = COALESCE(u.video_url, videos.video_url), \
         cover_url = COALESCE(u.cover_url, videos.cover_url), \
         created_at = COALESCE(u.created_at, videos.created_at), \
         duration = COALESCE(u.duration, videos.duration), \
         error_code = COALESCE(u.error_code, videos.error_code), \
         error_message = COALESCE(u.error_message, videos.error_message), \
         polls = videos.polls + CASE WHEN u.counted THEN 1 ELSE 0 END, \
         unchanged_polls = u.unchanged_polls, \
         error_streak = u.error_streak, \
         lease_until = NULL, polled_at = u.at, \
         unfinished_seen_at = COALESCE(u.unfinished_seen_at, videos.unfinished_seen_at), \
         rendering_seen_at = COALESCE(videos.rendering_seen_at, u.rendering_seen_at), \
         updated_at = u.at"
    };
}

/// The columns a result sets for the schedule and the record; `u.event_id`
/// is set exactly for a terminal result.
///
/// While the video stays active: a push that arrived after the claim
/// (`hinted_at > claimed_at`) was not answered by this poll, whose request
/// may have left before the video finished: it stays pending and brings
/// the next poll forward to the poll's time plus `min_interval`. An
/// earlier push is answered and cleared by a poll that got the video's
/// status; a failed poll (an error, not found yet: its `error_streak`
/// grew) answered nothing, so the push stays pending for the retry, which
/// the error backoff schedules as usual. SQLite's `MIN(next, repoll)` is
/// NULL when `next` is, where `LEAST` would return `repoll`: hence the
/// inner case (an active result always has a next poll, so it only keeps
/// the backends identical).
///
/// Once terminal: the push this poll answered stays as the mark that the
/// completion was learned by push; without one (or with only a later one)
/// the column is cleared. `state` is `active` in a result that is not
/// terminal, which is what the `WHERE` requires the row to be; `reason`,
/// `event_id` and `terminal_at` are kept.
///
/// SQLite runs this as two statements so that an active result leaves the
/// indexed `state` and `event_id` unassigned (it rewrites an index entry on
/// every assignment). PostgreSQL's cost does not depend on what a
/// statement assigns: an update that changes no indexed value stays in
/// place (HOT) whatever it assigns, and one that changes any (here
/// `next_poll_at`, nearly always) adds an entry to every index of the
/// table anyway. So one statement serves both.
macro_rules! schedule_columns {
    () => {
        "next_poll_at = CASE \
             WHEN u.event_id IS NOT NULL THEN NULL \
             WHEN videos.hinted_at > u.claimed_at \
               THEN CASE WHEN u.next_poll_at IS NOT NULL \
                    THEN LEAST(u.next_poll_at, u.repoll_after_push_at) END \
             ELSE u.next_poll_at END, \
         hinted_at = CASE \
             WHEN u.event_id IS NOT NULL \
               THEN CASE WHEN videos.hinted_at <= u.claimed_at THEN videos.hinted_at END \
             WHEN videos.hinted_at > u.claimed_at OR u.error_streak > 0 \
               THEN videos.hinted_at END, \
         state = u.state, \
         reason = CASE WHEN u.event_id IS NOT NULL THEN u.reason ELSE videos.reason END, \
         event_id = COALESCE(u.event_id, videos.event_id), \
         terminal_at = CASE WHEN u.event_id IS NOT NULL THEN u.terminal_at \
             ELSE videos.terminal_at END"
    };
}

/// Text as PostgreSQL can store it. TEXT cannot hold U+0000 (SQLite's
/// can), and a statement carrying one fails as a whole, so one status
/// string from upstream with a NUL in it would fail every group commit
/// its result joins, on every retry. It is stored with U+FFFD (the
/// replacement character) instead; any other text is stored as it is.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The bound arrays of new transition rows: video row id, kind, from, to,
/// at.
type TransitionColumns<'a> = (
    Vec<i64>,
    Vec<&'a str>,
    Vec<Option<Cow<'a, str>>>,
    Vec<Cow<'a, str>>,
    Vec<i64>,
);

/// Applies poll results, each only if its claim still holds its lease;
/// returns, in order, whether each was applied.
///
/// A terminal result writes the new state, its transitions and one outbox
/// row per target in the caller's single transaction: either all of it is
/// committed or none of it is (and the poll is simply repeated). Each kind
/// of row is written by one statement over arrays, however many results
/// the group commit carries.
///
/// One video can have two results here: a stale one whose lease expired
/// while its request ran, and the fresh one of the claim that followed. An
/// `UPDATE … FROM` that joins one row to two elements applies only one of
/// them, and `RETURNING` names rows, not elements; the results are
/// therefore applied in runs without a repeated video, one run after the
/// other, in order, as on SQLite.
pub(crate) async fn record_polls(
    conn: &mut PgConnection,
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

/// The columns of a batch of poll results, one array each, bound to
/// [`unnest_polls`]'s parameters in order.
#[derive(Default)]
struct PollColumns<'a> {
    rowid: Vec<i64>,
    lease_until: Vec<i64>,
    upstream_status: Vec<Option<Cow<'a, str>>>,
    video_url: Vec<Option<&'a str>>,
    cover_url: Vec<Option<&'a str>>,
    created_at: Vec<Option<i64>>,
    duration: Vec<Option<f64>>,
    error_code: Vec<Option<Cow<'a, str>>>,
    error_message: Vec<Option<Cow<'a, str>>>,
    counted: Vec<bool>,
    unchanged_polls: Vec<i64>,
    error_streak: Vec<i64>,
    next_poll_at: Vec<Option<i64>>,
    unfinished_seen_at: Vec<Option<i64>>,
    rendering_seen_at: Vec<Option<i64>>,
    claimed_at: Vec<i64>,
    repoll_after_push_at: Vec<i64>,
    state: Vec<&'a str>,
    reason: Vec<Option<&'a str>>,
    event_id: Vec<Option<&'a str>>,
    terminal_at: Vec<Option<i64>>,
    at: Vec<i64>,
}

impl<'a> PollColumns<'a> {
    /// Appends one result.
    fn push(&mut self, update: &'a PollUpdate) {
        let terminal = update.terminal.as_ref();
        self.rowid.push(update.video_rowid);
        self.lease_until.push(update.lease.until.0);
        self.upstream_status
            .push(update.upstream_status.as_deref().map(storable));
        self.video_url.push(update.fields.video_url.as_deref());
        self.cover_url.push(update.fields.cover_url.as_deref());
        self.created_at.push(update.fields.created_at);
        self.duration.push(update.fields.duration);
        self.error_code
            .push(update.fields.error_code.as_deref().map(storable));
        self.error_message
            .push(update.fields.error_message.as_deref().map(storable));
        self.counted.push(update.counted);
        self.unchanged_polls.push(update.unchanged_polls);
        self.error_streak.push(update.error_streak);
        self.next_poll_at.push(update.next_poll_at.map(|at| at.0));
        self.unfinished_seen_at
            .push(update.unfinished_seen_at.map(|at| at.0));
        self.rendering_seen_at
            .push(update.rendering_seen_at.map(|at| at.0));
        self.claimed_at.push(update.claimed_at.0);
        self.repoll_after_push_at
            .push(update.repoll_after_push_at.0);
        self.state
            .push(terminal.map_or(VideoState::Active, |t| t.state).as_str());
        self.reason.push(terminal.and_then(|t| t.reason.as_deref()));
        self.event_id.push(terminal.map(|t| t.event_id.as_str()));
        self.terminal_at.push(terminal.map(|_| update.at.0));
        self.at.push(update.at.0);
    }

    /// Runs `statement` (an UPDATE over [`unnest_polls`] returning the ids
    /// it changed) with these arrays bound.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        statement: &'static str,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(statement)
            .bind(&self.rowid)
            .bind(&self.lease_until)
            .bind(&self.upstream_status)
            .bind(&self.video_url)
            .bind(&self.cover_url)
            .bind(&self.created_at)
            .bind(&self.duration)
            .bind(&self.error_code)
            .bind(&self.error_message)
            .bind(&self.counted)
            .bind(&self.unchanged_polls)
            .bind(&self.error_streak)
            .bind(&self.next_poll_at)
            .bind(&self.unfinished_seen_at)
            .bind(&self.rendering_seen_at)
            .bind(&self.claimed_at)
            .bind(&self.repoll_after_push_at)
            .bind(&self.state)
            .bind(&self.reason)
            .bind(&self.event_id)
            .bind(&self.terminal_at)
            .bind(&self.at)
            .fetch_all(conn)
            .await?)
    }
}

/// The statement of [`record_distinct_polls`]: every result of the batch
/// applied to its row, returning the ids of the rows it changed.
const RECORD_POLLS: &str = concat!(
    "UPDATE videos SET ",
    poll_result_columns!(),
    ", ",
    schedule_columns!(),
    " ",
    recorded_polls_from!(),
    " RETURNING videos.id"
);

/// [`record_polls`] for results of distinct videos.
async fn record_distinct_polls(
    conn: &mut PgConnection,
    updates: &[&PollUpdate],
) -> Result<Vec<bool>, StoreError> {
    // In id order: two instances' batches that share videos (one holding a
    // stale result) then lock the shared rows in the same order, as the
    // join walks the arrays, instead of each waiting for the other.
    let mut by_id = updates.to_vec();
    by_id.sort_by_key(|update| update.video_rowid);
    let mut columns = PollColumns::default();
    for update in by_id {
        columns.push(update);
    }
    let applied = columns.apply(conn, RECORD_POLLS).await?;
    let applied: HashSet<i64> = applied.into_iter().collect();
    let applied: Vec<bool> = updates
        .iter()
        .map(|update| applied.contains(&update.video_rowid))
        .collect();

    // The transition and outbox rows of the applied results, one array per
    // column.
    let mut transitions: TransitionColumns<'_> = Default::default();
    let mut deliveries: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for update in updates
        .iter()
        .zip(&applied)
        .filter_map(|(u, &ok)| ok.then_some(u))
    {
        for t in &update.transitions {
            transitions.0.push(update.video_rowid);
            transitions.1.push(t.kind.as_str());
            transitions.2.push(t.from.as_deref().map(storable));
            transitions.3.push(storable(&t.to));
            transitions.4.push(update.at.0);
        }
        if let Some(terminal) = &update.terminal {
            for url in &terminal.targets {
                deliveries.0.push(update.video_rowid);
                deliveries.1.push(&terminal.event_id);
                deliveries.2.push(url);
                deliveries.3.push(update.at.0);
            }
        }
    }
    // Inserted in array order (`ORDER BY n`), so each video's transitions
    // keep their order in the log (ids are drawn in insertion order).
    if !transitions.0.is_empty() {
        sqlx::query(
            "INSERT INTO transitions (video_rowid, kind, from_value, to_value, at) \
             SELECT t.video_rowid, t.kind, t.from_value, t.to_value, t.at \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
                  WITH ORDINALITY AS t (video_rowid, kind, from_value, to_value, at, n) \
             ORDER BY t.n",
        )
        .bind(&transitions.0)
        .bind(&transitions.1)
        .bind(&transitions.2)
        .bind(&transitions.3)
        .bind(&transitions.4)
        .execute(&mut *conn)
        .await?;
    }
    if !deliveries.0.is_empty() {
        sqlx::query(
            "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) \
             SELECT d.video_rowid, d.event_id, d.url, d.at, d.at, d.at \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[]) \
                  WITH ORDINALITY AS d (video_rowid, event_id, url, at, n) \
             ORDER BY d.n \
             ON CONFLICT (video_rowid, url) DO NOTHING",
        )
        .bind(&deliveries.0)
        .bind(&deliveries.1)
        .bind(&deliveries.2)
        .bind(&deliveries.3)
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
/// it (see `schedule_columns`). So however many pushes arrive, a
/// video is polled at most once per `min_interval` on their account.
///
/// An untracked video is adopted when `hint.adopt`: inserted as if
/// enqueued without `callback_url` or metadata, due at once, its push
/// pending. If another instance inserts it first (an enqueue, or its own
/// adoption of the same push), the push is applied to that row instead.
pub(crate) async fn hint(
    conn: &mut PgConnection,
    hint: &PushHint,
) -> Result<HintOutcome, StoreError> {
    let at = hint.at;
    let spacing = i64::try_from(hint.min_interval.as_millis()).unwrap_or(i64::MAX);
    // At most twice: the second round runs only when a concurrent insert of
    // the id won the race, and then finds the row.
    for _ in 0..2 {
        // `polled_at + spacing` in NUMERIC: a `min_interval` near i64::MAX
        // (SQLite turns the overflowing sum into a REAL) must not fail the
        // statement; the result is at most `next_poll_at`, so it fits
        // BIGINT again. `next_poll_at IS NOT NULL` keeps SQLite's
        // `MIN(NULL, …)` = NULL (an active video always has one).
        let due_at: Option<(Option<i64>,)> = sqlx::query_as(HINT_ACTIVE)
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
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM videos WHERE video_id = $1")
                .bind(hint.video_id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        match state {
            Some(state) => {
                return Ok(HintOutcome::NotActive(
                    VideoState::try_from(state)
                        .map_err(|err| StoreError::Database(sqlx::Error::Decode(Box::new(err))))?,
                ));
            }
            None if hint.adopt => {
                let adopted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at, \
                                         hinted_at) \
                     VALUES ($1, $2, $2, $2, $2) ON CONFLICT (video_id) DO NOTHING RETURNING id",
                )
                .bind(hint.video_id.as_str())
                .bind(at.0)
                .fetch_optional(&mut *conn)
                .await?;
                if adopted.is_some() {
                    return Ok(HintOutcome::Adopted);
                }
            }
            None => return Ok(HintOutcome::Untracked),
        }
    }
    // Inserted by someone else, yet not found: only an isolation stricter
    // than READ COMMITTED could do that.
    Err(StoreError::Database(sqlx::Error::RowNotFound))
}

/// [`hint`]'s change of an active video (`$1` the video id, `$2` the
/// push's time, `$3` `min_interval` in ms), found by its id (see the
/// module's documentation on plans).
const HINT_ACTIVE: &str = "UPDATE videos SET hinted_at = GREATEST(COALESCE(hinted_at, $2), $2), \
       next_poll_at = CASE WHEN lease_until IS NULL AND next_poll_at IS NOT NULL \
         THEN LEAST(next_poll_at::numeric, \
                    GREATEST($2::numeric, COALESCE(polled_at::numeric + $3, $2)))::bigint \
         ELSE next_poll_at END \
     WHERE video_id = $1 AND COALESCE(state = 'active', FALSE) RETURNING next_poll_at";

/// Hands a claimed video back unpolled, if the claim still holds its lease.
pub(crate) async fn release(conn: &mut PgConnection, release: &Release) -> Result<(), StoreError> {
    sqlx::query(RELEASE_VIDEO)
        .bind(release.next_poll_at.0)
        .bind(release.video_rowid)
        .bind(release.lease.until.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// [`release`]'s change (`$1` the next poll, `$2` the row id, `$3` the
/// lease's end), by primary key (see the module's documentation on plans).
const RELEASE_VIDEO: &str = "UPDATE videos SET next_poll_at = $1, lease_until = NULL \
                             WHERE id = $2 AND COALESCE(state = 'active', FALSE) AND lease_until = $3";

/// Leases up to `limit` due deliveries, most overdue first, with the event
/// each carries. As for videos, the lease is also the next attempt time, so
/// a crashed sender's deliveries become due again by themselves, and the
/// candidates are locked with `SKIP LOCKED` (see `lease_picked`). One
/// statement: the leased rows are joined to their videos on the way out.
///
/// `pushed_at` is the push that taught the relay the completion, for a
/// delivery that has not yet succeeded; the nested `CASE` makes sure the
/// look for an earlier successful attempt runs only for a video whose
/// completion was learned by push (PostgreSQL may evaluate the operands of
/// an `AND` in any order).
pub(crate) async fn claim_deliveries(
    conn: &mut PgConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let claimed = sqlx::query_as::<_, ClaimedDeliveryRow>(
        "WITH picked AS (\
           SELECT id, next_attempt_at AS due_at FROM deliveries \
           WHERE state = 'pending' AND next_attempt_at <= $2 ORDER BY next_attempt_at, \
           id LIMIT $3 FOR UPDATE SKIP LOCKED), \
         leased AS (\
           UPDATE deliveries SET next_attempt_at = $1, lease_until = $1 FROM picked \
           WHERE deliveries.id = picked.id \
           RETURNING deliveries.id, deliveries.url, deliveries.attempts, deliveries.lease_until, \
                     deliveries.event_id, deliveries.video_rowid, picked.due_at) \
         SELECT d.id, d.url, d.attempts, d.lease_until, d.event_id, v.video_id, v.state, \
                v.video_url, v.cover_url, v.created_at, v.duration, v.error_code, \
                v.error_message, v.metadata, v.reason, v.terminal_at, \
                CASE WHEN v.hinted_at IS NOT NULL AND v.state IN ('completed', 'failed') THEN \
                  CASE WHEN NOT EXISTS (\
                    SELECT 1 FROM delivery_attempts a WHERE a.delivery_id = d.id \
                      AND a.status BETWEEN 200 AND 299) \
                  THEN v.hinted_at END \
                END AS pushed_at \
         FROM leased d JOIN videos v ON v.id = d.video_rowid ORDER BY d.due_at, d.id",
    )
    .bind(lease_until.0)
    .bind(now.0)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    Ok(claimed.into_iter().map(ClaimedDelivery::from).collect())
}

/// Records one delivery attempt and what follows it, if the claim still
/// holds its lease. Returns whether it was recorded.
pub(crate) async fn record_attempt(
    conn: &mut PgConnection,
    attempt: &AttemptRecord,
) -> Result<bool, StoreError> {
    let (state, next_attempt_at, reason) = match &attempt.next {
        DeliveryNext::Delivered => ("delivered", None, None),
        DeliveryNext::Retry(at) => ("pending", Some(at.0), None),
        DeliveryNext::Dead(reason) => ("dead", None, Some(reason.as_str())),
    };
    let applied = sqlx::query(RECORD_ATTEMPT)
        .bind(state)
        .bind(next_attempt_at)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error.as_deref().map(storable))
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
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(attempt.delivery_id)
        .bind(attempt.at.0)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error.as_deref().map(storable))
        .bind(attempt.duration_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(applied)
}

/// [`record_attempt`]'s change of the delivery (`$1` its new state, `$2`
/// the next attempt, `$3` to `$5` what came back, `$6` now, `$7` its id,
/// `$8` the lease's end), by primary key (see the module's documentation
/// on plans).
const RECORD_ATTEMPT: &str = "UPDATE deliveries SET state = $1, attempts = attempts + 1, \
            next_attempt_at = $2, lease_until = NULL, last_status = $3, last_error = $4, \
            reason = $5, updated_at = $6 \
     WHERE id = $7 AND COALESCE(state = 'pending', FALSE) AND lease_until = $8";

/// Queues a terminal video's event again to its current targets (the
/// `configured` URLs and its own `callback_url`): missing deliveries are
/// created, delivered and dead ones become pending with a fresh retry
/// schedule, pending ones are made due now unless an attempt is in flight.
/// The event id never changes.
///
/// The targets go in as one array; a URL configured twice is sent once
/// (an upsert must not meet its own row twice) but counted as SQLite
/// counts it.
pub(crate) async fn redeliver(
    conn: &mut PgConnection,
    video_id: &VideoId,
    configured: &[String],
    now: Millis,
) -> Result<RedeliverOutcome, StoreError> {
    let row: Option<(i64, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, state, event_id, callback_url FROM videos WHERE video_id = $1")
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
    let mut once = HashSet::with_capacity(targets.len());
    let urls: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|url| once.insert(*url))
        .collect();
    sqlx::query(
        "INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                 updated_at) \
         SELECT $1, $2, t.url, $4, $4, $4 \
         FROM UNNEST($3::text[]) WITH ORDINALITY AS t (url, n) ORDER BY t.n \
         ON CONFLICT (video_rowid, url) DO UPDATE SET \
           state = 'pending', attempts = 0, next_attempt_at = $4, lease_until = NULL, \
           reason = NULL, updated_at = $4 \
         WHERE deliveries.state <> 'pending'",
    )
    .bind(rowid)
    .bind(&event_id)
    .bind(&urls)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(REDELIVER_NOW)
        .bind(now.0)
        .bind(rowid)
        .execute(&mut *conn)
        .await?;
    Ok(RedeliverOutcome::Queued {
        event_id,
        targets: targets.len(),
    })
}

/// [`redeliver`]'s move of a video's pending deliveries that wait for a
/// later attempt (`$2` its row id) to now (`$1`): found by the video's row
/// id (the `(video_rowid, url)` key), the state and the time only checked
/// (see the module's documentation on plans).
const REDELIVER_NOW: &str = "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
     WHERE video_rowid = $2 AND lease_until IS NULL \
       AND COALESCE(state = 'pending' AND next_attempt_at > $1, FALSE)";

/// Hands a claimed delivery back unattempted, if the claim still holds its
/// lease.
pub(crate) async fn release_delivery(
    conn: &mut PgConnection,
    release: &DeliveryRelease,
) -> Result<(), StoreError> {
    sqlx::query(RELEASE_DELIVERY)
        .bind(release.next_attempt_at.0)
        .bind(release.delivery_id)
        .bind(release.lease.until.0)
        .execute(conn)
        .await?;
    Ok(())
}

/// [`release_delivery`]'s change (`$1` the next attempt, `$2` its id, `$3`
/// the lease's end), by primary key (see the module's documentation on
/// plans).
const RELEASE_DELIVERY: &str = "UPDATE deliveries SET next_attempt_at = $1, lease_until = NULL \
     WHERE id = $2 AND COALESCE(state = 'pending', FALSE) AND lease_until = $3";

/// The readiness probe's write: rewrites its one row in place, so that a
/// ready answer is backed by a real commit. The row's `writes` counter
/// changes on every probe, so no probe is an update that changes nothing.
pub(crate) async fn touch_probe(conn: &mut PgConnection, now: Millis) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO readiness_probe (id, written_at, writes) VALUES (1, $1, 1) \
         ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at, \
                                        writes = readiness_probe.writes + 1",
    )
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
// The tests read rows back as tuples of their columns, named where bound.
#[allow(clippy::type_complexity)]
mod tests {
    //! Each test runs on a fresh database of the test binary's throwaway
    //! cluster (skipped, loudly, without PostgreSQL's server binaries). The expected
    //! rows are worked out by hand from the documented semantics; rows are
    //! set up and read back with plain SQL, not with the code under test.

    use std::collections::HashSet;
    use std::time::Duration;

    use sqlx::{Connection as _, PgConnection};

    use super::*;
    use crate::domain::poll::{NewTransition, TerminalChange, TransitionKind, UpstreamFields};
    use crate::domain::{Lease, StoredId};
    use crate::store::postgres::test_db::TestDb;

    /// The claim the writer makes, on this engine.
    async fn claim(
        conn: &mut PgConnection,
        now: Millis,
        lease_until: Millis,
        limit: u32,
        rank: Option<&Ranker>,
    ) -> Result<Vec<ClaimedVideo>, StoreError> {
        crate::store::backend::claim::<crate::store::postgres::Postgres>(
            conn,
            now,
            lease_until,
            limit,
            rank,
        )
        .await
    }

    /// How long a statement that must not wait for another transaction's
    /// locks may take before the test calls it blocked.
    const NO_WAIT: Duration = Duration::from_secs(10);

    fn new_video(id: &str, url: Option<&str>, metadata: Option<&str>, due: i64) -> NewVideo {
        NewVideo {
            video_id: VideoId::parse(id).unwrap(),
            callback_url: url.map(str::to_owned),
            metadata: metadata.map(str::to_owned),
            first_poll_at: Millis(due),
        }
    }

    /// Runs hand-written set-up SQL.
    async fn exec(conn: &mut PgConnection, sql: &'static str) {
        sqlx::raw_sql(sql).execute(conn).await.unwrap();
    }

    /// The internal columns of a video that the tests check.
    #[derive(Debug, PartialEq)]
    struct Video {
        state: String,
        next_poll_at: Option<i64>,
        lease_until: Option<i64>,
        hinted_at: Option<i64>,
        polled_at: Option<i64>,
        polls: i64,
        updated_at: i64,
    }

    async fn video(conn: &mut PgConnection, video_id: &str) -> Video {
        let (state, next_poll_at, lease_until, hinted_at, polled_at, polls, updated_at) =
            sqlx::query_as(
                "SELECT state, next_poll_at, lease_until, hinted_at, polled_at, polls, \
                        updated_at FROM videos WHERE video_id = $1",
            )
            .bind(video_id)
            .fetch_one(conn)
            .await
            .unwrap();
        Video {
            state,
            next_poll_at,
            lease_until,
            hinted_at,
            polled_at,
            polls,
            updated_at,
        }
    }

    async fn rowid(conn: &mut PgConnection, video_id: &str) -> i64 {
        sqlx::query_scalar("SELECT id FROM videos WHERE video_id = $1")
            .bind(video_id)
            .fetch_one(conn)
            .await
            .unwrap()
    }

    /// Every transition: (video_id, kind, from, to, at), in log order.
    async fn transitions(
        conn: &mut PgConnection,
    ) -> Vec<(String, String, Option<String>, String, i64)> {
        sqlx::query_as(
            "SELECT v.video_id, t.kind, t.from_value, t.to_value, t.at \
             FROM transitions t JOIN videos v ON v.id = t.video_rowid ORDER BY t.id",
        )
        .fetch_all(conn)
        .await
        .unwrap()
    }

    /// A delivery's columns the tests check.
    #[derive(Debug, PartialEq, sqlx::FromRow)]
    struct Delivery {
        video_id: String,
        event_id: String,
        url: String,
        state: String,
        attempts: i64,
        next_attempt_at: Option<i64>,
        lease_until: Option<i64>,
        last_status: Option<i64>,
        reason: Option<String>,
        updated_at: i64,
    }

    /// Every delivery, in id order.
    async fn deliveries(conn: &mut PgConnection) -> Vec<Delivery> {
        sqlx::query_as(
            "SELECT v.video_id, d.event_id, d.url, d.state, d.attempts, d.next_attempt_at, \
                    d.lease_until, d.last_status, d.reason, d.updated_at \
             FROM deliveries d JOIN videos v ON v.id = d.video_rowid ORDER BY d.id",
        )
        .fetch_all(conn)
        .await
        .unwrap()
    }

    /// A still-active result for `claimed`, seen at `at`, due again at
    /// `next`.
    fn ongoing(claimed: &ClaimedVideo, at: i64, next: i64) -> PollUpdate {
        PollUpdate {
            video_rowid: claimed.id,
            lease: claimed.lease,
            at: Millis(at),
            counted: true,
            upstream_status: Some("rendering".into()),
            fields: UpstreamFields::default(),
            unchanged_polls: 0,
            error_streak: 0,
            next_poll_at: Some(Millis(next)),
            unfinished_seen_at: Some(Millis(at)),
            rendering_seen_at: None,
            claimed_at: claimed.claimed_at,
            repoll_after_push_at: Millis(at + 1_000),
            transitions: Vec::new(),
            terminal: None,
        }
    }

    /// A result ending `claimed` as completed with `event_id`, to `targets`.
    fn completed(claimed: &ClaimedVideo, at: i64, event_id: &str, targets: &[&str]) -> PollUpdate {
        PollUpdate {
            upstream_status: Some("completed".into()),
            next_poll_at: None,
            unfinished_seen_at: None,
            transitions: vec![NewTransition {
                kind: TransitionKind::Status,
                from: claimed.upstream_status.clone(),
                to: format!("completed ({event_id})"),
            }],
            terminal: Some(TerminalChange {
                state: VideoState::Completed,
                reason: None,
                event_id: event_id.into(),
                targets: targets.iter().map(|t| t.to_string()).collect(),
            }),
            ..ongoing(claimed, at, 0)
        }
    }

    fn ids(claimed: &[ClaimedVideo]) -> Vec<&str> {
        claimed.iter().map(|v| v.video_id.as_str()).collect()
    }

    /// Terminal event ids stay unique although only the rows that have one
    /// are indexed (PostgreSQL itself is the judge): any number of videos
    /// without one, a second video given an id already taken refused.
    #[tokio::test]
    async fn event_ids_stay_unique_and_unset_ones_cost_no_index_entry() {
        let Some(db) = TestDb::create("event_ids").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at) \
             VALUES ('a', 1, 1), ('b', 1, 1), ('c', 1, 1); \
             UPDATE videos SET event_id = 'e1' WHERE video_id = 'a'",
        )
        .await;
        let duplicate = sqlx::query("UPDATE videos SET event_id = 'e1' WHERE video_id = 'b'")
            .execute(&mut *conn)
            .await
            .expect_err("a second video with the same event id");
        let code = duplicate
            .as_database_error()
            .and_then(|err| err.code())
            .map(|code| code.into_owned());
        assert_eq!(code.as_deref(), Some("23505"), "{duplicate}");
        let definition: String = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'videos_event_id_key'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(
            definition.starts_with("CREATE UNIQUE INDEX")
                && definition.ends_with("WHERE (event_id IS NOT NULL)"),
            "{definition}"
        );
        drop(conn);
        db.drop_db().await;
    }

    #[tokio::test]
    async fn enqueue_reports_repeats_and_conflicts_within_one_batch() {
        let Some(db) = TestDb::create("enqueue").await else {
            return;
        };
        let mut conn = db.conn().await;
        // v1 is tracked already, its metadata written with other key
        // order and spacing.
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, callback_url, metadata, enqueued_at, updated_at, \
                                 next_poll_at) \
             VALUES ('v1', 'https://a.example/h', '{ \"b\" : [1, {\"y\":2,\"x\":1}], \"a\": \"z\" }', \
                     5, 5, 5)",
        )
        .await;
        let batch = [
            new_video("v2", Some("https://b.example/h"), Some(r#"{"k":1}"#), 100),
            new_video(
                "v1",
                Some("https://a.example/h"),
                Some(r#"{"a":"z","b":[1,{"x":1,"y":2}]}"#),
                100,
            ),
            new_video(
                "v2",
                Some("https://b.example/h"),
                Some(r#"{ "k": 1 }"#),
                200,
            ),
            new_video("v2", Some("https://b.example/h"), Some(r#"{"k":1.0}"#), 200),
            new_video("v1", None, Some(r#"{"a":"z","b":[1,{"x":1,"y":2}]}"#), 100),
            new_video("v3", None, None, 300),
            new_video("v3", Some("https://c.example/h"), Some("{}"), 300),
        ];
        let refs: Vec<&NewVideo> = batch.iter().collect();
        let outcomes = insert_videos(&mut conn, &refs, Millis(1_000))
            .await
            .unwrap();
        let differ = |callback_url, metadata| {
            EnqueueOutcome::Conflict(ConflictingFields {
                callback_url,
                metadata,
            })
        };
        assert_eq!(
            outcomes,
            [
                EnqueueOutcome::Created { at: Millis(1_000) },
                EnqueueOutcome::Existing,
                EnqueueOutcome::Existing,
                // 1.0 is not 1 (as on SQLite, which compares serde_json values).
                differ(false, true),
                differ(true, false),
                EnqueueOutcome::Created { at: Millis(1_000) },
                differ(true, true),
            ]
        );
        // Stored: v1 untouched, v2 and v3 as their first occurrences, in
        // the batch's order.
        let rows: Vec<(
            String,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<i64>,
        )> = sqlx::query_as(
            "SELECT video_id, callback_url, metadata, enqueued_at, updated_at, next_poll_at \
                 FROM videos ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            rows,
            [
                (
                    "v1".into(),
                    Some("https://a.example/h".into()),
                    Some("{ \"b\" : [1, {\"y\":2,\"x\":1}], \"a\": \"z\" }".into()),
                    5,
                    5,
                    Some(5)
                ),
                (
                    "v2".into(),
                    Some("https://b.example/h".into()),
                    Some(r#"{"k":1}"#.into()),
                    1_000,
                    1_000,
                    Some(100)
                ),
                ("v3".into(), None, None, 1_000, 1_000, Some(300)),
            ]
        );
        drop(conn);
        db.drop_db().await;
    }

    /// Blocks until some backend of the test's database waits for a lock,
    /// or fails after a deadline.
    async fn wait_for_lock_wait(db: &TestDb) {
        let deadline = tokio::time::Instant::now() + NO_WAIT;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no backend ever waited for a lock"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Two instances enqueue the same id at once: the second's insert waits
    /// for the first's transaction, and once that commits, reports the id
    /// as tracked (here with another callback_url: a conflict), not as
    /// created.
    #[tokio::test]
    async fn an_enqueue_racing_another_instance_compares_with_its_row() {
        let Some(db) = TestDb::create("enqueue_race").await else {
            return;
        };
        let mut first = db.conn().await;
        let mut tx1 = first.begin().await.unwrap();
        let mine = new_video("v9", Some("https://one.example/h"), None, 10);
        assert_eq!(
            insert_videos(&mut tx1, &[&mine], Millis(1)).await.unwrap(),
            [EnqueueOutcome::Created { at: Millis(1) }]
        );
        let pool = db.pool.clone();
        let second = tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let mut tx2 = conn.begin().await.unwrap();
            let theirs = new_video("v9", Some("https://two.example/h"), None, 20);
            let other = new_video("v10", None, None, 20);
            let outcomes = insert_videos(&mut tx2, &[&theirs, &other], Millis(2))
                .await
                .unwrap();
            tx2.commit().await.unwrap();
            outcomes
        });
        wait_for_lock_wait(&db).await;
        tx1.commit().await.unwrap();
        let outcomes = tokio::time::timeout(NO_WAIT, second)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            outcomes,
            [
                EnqueueOutcome::Conflict(ConflictingFields {
                    callback_url: true,
                    metadata: false
                }),
                EnqueueOutcome::Created { at: Millis(2) },
            ]
        );
        let url: Option<String> =
            sqlx::query_scalar("SELECT callback_url FROM videos WHERE video_id = 'v9'")
                .fetch_one(&mut *first)
                .await
                .unwrap();
        assert_eq!(url.as_deref(), Some("https://one.example/h"));
        drop(first);
        db.drop_db().await;
    }

    /// Ten due videos, two of them with a pending push. One instance's
    /// claim (not yet committed) holds four; another's, at the same time,
    /// takes the other six without waiting, pushes first then most overdue
    /// first; no video is leased twice.
    #[tokio::test]
    async fn concurrent_claims_skip_each_others_rows() {
        let Some(db) = TestDb::create("claims").await else {
            return;
        };
        let mut a = db.conn().await;
        let mut b = db.conn().await;
        // v0..v9 due at 0..9; v7 and v8 hinted; v10 not due yet.
        exec(
            &mut a,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at, hinted_at) \
             SELECT 'v' || i, 0, 0, CASE WHEN i = 10 THEN 1000 ELSE i END, \
                    CASE WHEN i IN (7, 8) THEN 1 END \
             FROM generate_series(0, 10) AS i",
        )
        .await;
        let mut tx_a = a.begin().await.unwrap();
        let first = claim(&mut tx_a, Millis(100), Millis(500), 4, None)
            .await
            .unwrap();
        // Pushes first, then the most overdue.
        assert_eq!(ids(&first), ["v7", "v8", "v0", "v1"]);
        let mut tx_b = b.begin().await.unwrap();
        let second = tokio::time::timeout(
            NO_WAIT,
            claim(&mut tx_b, Millis(100), Millis(600), 10, None),
        )
        .await
        .expect("the second claim waited for the first one's rows")
        .unwrap();
        assert_eq!(ids(&second), ["v2", "v3", "v4", "v5", "v6", "v9"]);
        tx_b.commit().await.unwrap();
        tx_a.commit().await.unwrap();
        // Each row carries the lease of the claim that took it.
        let leases: Vec<(String, Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT video_id, lease_until, next_poll_at FROM videos ORDER BY id")
                .fetch_all(&mut *a)
                .await
                .unwrap();
        for (id, lease, next) in leases {
            let expected = match id.as_str() {
                "v7" | "v8" | "v0" | "v1" => (Some(500), Some(500)),
                "v10" => (None, Some(1000)),
                _ => (Some(600), Some(600)),
            };
            assert_eq!((lease, next), expected, "{id}");
        }
        // What a claim returns of each row.
        let v7 = &first[0];
        assert_eq!(v7.lease, Lease { until: Millis(500) });
        assert_eq!(v7.claimed_at, Millis(100));
        assert_eq!(v7.hinted_at, Some(Millis(1)));
        assert_eq!(v7.enqueued_at, Millis(0));
        assert!(v7.answers_push());
        drop((a, b));
        db.drop_db().await;
    }

    /// Many instances claiming at once, each in its own transactions, with
    /// plain, pushed and ranked claims: every due video is leased exactly
    /// once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_claimers_lease_every_video_exactly_once() {
        let Some(db) = TestDb::create("claim_race").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at, hinted_at) \
             SELECT 'v' || i, 0, 0, i % 50, CASE WHEN i % 7 = 0 THEN 1 END \
             FROM generate_series(1, 300) AS i",
        )
        .await;
        let rank = Ranker(std::sync::Arc::new(|due: &[DueVideo], _| {
            due.iter().map(|v| (v.id % 13) as f64).collect()
        }));
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..6i64 {
            let pool = db.pool.clone();
            let rank = rank.clone();
            tasks.spawn(async move {
                let mut conn = pool.acquire().await.unwrap();
                let mut taken = Vec::new();
                loop {
                    let mut tx = conn.begin().await.unwrap();
                    let ranked = (worker % 2 == 0).then_some(&rank);
                    let claimed = claim(&mut tx, Millis(100), Millis(1_000 + worker), 7, ranked)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    if claimed.is_empty() {
                        return taken;
                    }
                    taken.extend(claimed.into_iter().map(|v| v.id));
                }
            });
        }
        let mut taken: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
        // What the racers left (rows a ranked window held when the last
        // racer looked) is taken now, alone.
        taken.extend(
            claim_due(&mut conn, Millis(100), Millis(2_000), 1_000)
                .await
                .unwrap()
                .into_iter()
                .map(|v| v.id),
        );
        let distinct: HashSet<i64> = taken.iter().copied().collect();
        assert_eq!(taken.len(), 300, "a video was leased twice or never");
        assert_eq!(distinct.len(), 300);
        let unleased: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM videos WHERE lease_until IS NULL")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(unleased, 0);
        drop(conn);
        db.drop_db().await;
    }

    #[tokio::test]
    async fn a_ranked_claim_takes_the_best_scored_among_the_most_overdue() {
        let Some(db) = TestDb::create("ranked").await else {
            return;
        };
        let mut conn = db.conn().await;
        // v0..v19 due at 0..19 ms, and v20 not due yet.
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
             SELECT 'v' || i, 0, 0, CASE WHEN i = 20 THEN 1000 ELSE i END \
             FROM generate_series(0, 20) AS i",
        )
        .await;
        // Scores rank the later-due videos higher; v3 and v5 tie with the
        // best, so the more overdue wins the tie.
        let rank = Ranker(std::sync::Arc::new(|due: &[DueVideo], _| {
            due.iter()
                .map(|v| match v.next_poll_at.0 {
                    3 | 5 => 100.0,
                    at => at as f64,
                })
                .collect()
        }));
        // Two taken from the window of the 8 most overdue (v0..v7), best
        // first.
        let claimed = claim_due_ranked(&mut conn, Millis(100), Millis(500), 2, &rank)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["v3", "v5"]);
        // The window is the 12 most overdue not leased (v0..v13 but v3 and
        // v5): the three latest due of those.
        let claimed = claim_due_ranked(&mut conn, Millis(100), Millis(500), 3, &rank)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["v13", "v12", "v11"]);
        // Fewer due than the limit: all of them, most overdue first, none
        // not yet due.
        let claimed = claim_due_ranked(&mut conn, Millis(100), Millis(500), 50, &rank)
            .await
            .unwrap();
        assert_eq!(
            ids(&claimed),
            [
                "v0", "v1", "v2", "v4", "v6", "v7", "v8", "v9", "v10", "v14", "v15", "v16", "v17",
                "v18", "v19"
            ]
        );
        drop(conn);
        db.drop_db().await;
    }

    /// A row something else wrote, whose id no longer validates, is still
    /// claimed, its id marked invalid.
    #[tokio::test]
    async fn a_claimed_row_keeps_an_id_that_does_not_validate() {
        let Some(db) = TestDb::create("invalid_id").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
             VALUES ('a b', 5, 5, 10)",
        )
        .await;
        let claimed = claim_due(&mut conn, Millis(20), Millis(90), 1)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].video_id, StoredId::Invalid("a b".into()));
        assert_eq!(claimed[0].hinted_at, None);
        drop(conn);
        db.drop_db().await;
    }

    /// The first claim's lease ran out while its request was in flight; a
    /// second claim took the video. Both results reach one group commit,
    /// the stale one first: only the fresh one is applied, and a stale one
    /// arriving alone later changes nothing either.
    #[tokio::test]
    async fn a_stale_result_is_discarded() {
        let Some(db) = TestDb::create("stale").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
             VALUES ('v1', 0, 0, 0)",
        )
        .await;
        let stale = claim_due(&mut conn, Millis(1), Millis(100), 1)
            .await
            .unwrap();
        let fresh = claim_due(&mut conn, Millis(150), Millis(300), 1)
            .await
            .unwrap();
        assert_eq!((stale.len(), fresh.len()), (1, 1));
        let (old, new) = (
            completed(&stale[0], 160, "evt_stale", &["https://h.example/x"]),
            completed(&fresh[0], 170, "evt_fresh", &["https://h.example/x"]),
        );
        assert_eq!(
            record_polls(&mut conn, &[&old, &new]).await.unwrap(),
            [false, true]
        );
        let late = ongoing(&stale[0], 180, 5_000);
        assert_eq!(record_polls(&mut conn, &[&late]).await.unwrap(), [false]);

        let event: Option<String> =
            sqlx::query_scalar("SELECT event_id FROM videos WHERE video_id = 'v1'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(event.as_deref(), Some("evt_fresh"));
        let row = video(&mut conn, "v1").await;
        assert_eq!(
            row,
            Video {
                state: "completed".into(),
                next_poll_at: None,
                lease_until: None,
                hinted_at: None,
                polled_at: Some(170),
                polls: 1,
                updated_at: 170,
            }
        );
        let outbox: Vec<String> = deliveries(&mut conn)
            .await
            .into_iter()
            .map(|d| d.event_id)
            .collect();
        assert_eq!(outbox, ["evt_fresh"]);
        let log: Vec<String> = transitions(&mut conn)
            .await
            .into_iter()
            .map(|t| t.3)
            .collect();
        assert_eq!(log, ["completed (evt_fresh)"]);
        drop(conn);
        db.drop_db().await;
    }

    /// A terminal result beside an ongoing one: the state, the upstream
    /// fields, the transitions in order and one pending delivery per target
    /// are written; rolled back, none of it is; with the outbox failing,
    /// the whole result fails.
    #[tokio::test]
    async fn a_terminal_result_writes_state_transitions_and_outbox_together() {
        let Some(db) = TestDb::create("terminal").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, upstream_status, video_url, enqueued_at, updated_at, \
                                 next_poll_at, hinted_at, rendering_seen_at, unfinished_seen_at) \
             VALUES ('t', 'rendering', 'https://old.example/v.mp4', 0, 0, 10, 5, 7, 8), \
                    ('o', NULL, NULL, 0, 0, 20, NULL, NULL, NULL)",
        )
        .await;
        let claimed = claim(&mut conn, Millis(100), Millis(900), 2, None)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["t", "o"]);
        let mut end = completed(
            &claimed[0],
            400,
            "evt_t",
            &["https://u1.example/h", "https://u2.example/h"],
        );
        end.fields = UpstreamFields {
            video_url: Some("https://cdn.example/t.mp4".into()),
            cover_url: Some("https://cdn.example/t.jpg".into()),
            created_at: Some(1_700_000_000),
            duration: Some(12.5),
            error_code: None,
            error_message: None,
        };
        end.rendering_seen_at = Some(Millis(390));
        end.transitions.push(NewTransition {
            kind: TransitionKind::State,
            from: Some("active".into()),
            to: "completed".into(),
        });
        let mut on = ongoing(&claimed[1], 410, 2_000);
        on.upstream_status = Some("pending".into());
        on.transitions.push(NewTransition {
            kind: TransitionKind::Status,
            from: None,
            to: "pending".into(),
        });

        // Rolled back: nothing of it stays.
        let mut tx = conn.begin().await.unwrap();
        assert_eq!(
            record_polls(&mut tx, &[&end, &on]).await.unwrap(),
            [true, true]
        );
        tx.rollback().await.unwrap();
        assert_eq!(video(&mut conn, "t").await.state, "active");
        assert_eq!(video(&mut conn, "t").await.lease_until, Some(900));
        assert!(transitions(&mut conn).await.is_empty());
        assert!(deliveries(&mut conn).await.is_empty());

        // The outbox refuses rows: the result fails as a whole.
        exec(
            &mut conn,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON deliveries \
               FOR EACH ROW EXECUTE FUNCTION refuse()",
        )
        .await;
        let mut tx = conn.begin().await.unwrap();
        assert!(record_polls(&mut tx, &[&end, &on]).await.is_err());
        tx.rollback().await.unwrap();
        exec(&mut conn, "DROP TRIGGER refuse ON deliveries").await;
        assert_eq!(video(&mut conn, "t").await.state, "active");
        assert!(transitions(&mut conn).await.is_empty());

        // Committed.
        let mut tx = conn.begin().await.unwrap();
        assert_eq!(
            record_polls(&mut tx, &[&end, &on]).await.unwrap(),
            [true, true]
        );
        tx.commit().await.unwrap();

        let upstream: (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<f64>,
        ) = sqlx::query_as(
            "SELECT upstream_status, video_url, cover_url, created_at, duration \
             FROM videos WHERE video_id = 't'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            upstream,
            (
                Some("completed".into()),
                Some("https://cdn.example/t.mp4".into()),
                Some("https://cdn.example/t.jpg".into()),
                Some(1_700_000_000),
                Some(12.5),
            )
        );
        let record: (
            String,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            i64,
        ) = sqlx::query_as(
            "SELECT state, event_id, terminal_at, next_poll_at, lease_until, hinted_at, \
                    rendering_seen_at, unfinished_seen_at, polls \
             FROM videos WHERE video_id = 't'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            record,
            (
                "completed".into(),
                Some("evt_t".into()),
                Some(400),
                None,
                None,
                // The push (at 5) came before the claim (at 100): this poll
                // answered it, and the mark stays.
                Some(5),
                // The first poll that saw it rendering stays the first.
                Some(7),
                // Not unfinished in this answer: kept.
                Some(8),
                1,
            )
        );
        assert_eq!(
            video(&mut conn, "o").await,
            Video {
                state: "active".into(),
                next_poll_at: Some(2_000),
                lease_until: None,
                hinted_at: None,
                polled_at: Some(410),
                polls: 1,
                updated_at: 410,
            }
        );
        assert_eq!(
            transitions(&mut conn).await,
            [
                (
                    "t".into(),
                    "status".into(),
                    Some("rendering".into()),
                    "completed (evt_t)".into(),
                    400
                ),
                (
                    "t".into(),
                    "state".into(),
                    Some("active".into()),
                    "completed".into(),
                    400
                ),
                ("o".into(), "status".into(), None, "pending".into(), 410),
            ]
        );
        let pending = |url: &str| Delivery {
            video_id: "t".into(),
            event_id: "evt_t".into(),
            url: url.into(),
            state: "pending".into(),
            attempts: 0,
            next_attempt_at: Some(400),
            lease_until: None,
            last_status: None,
            reason: None,
            updated_at: 400,
        };
        assert_eq!(
            deliveries(&mut conn).await,
            [
                pending("https://u1.example/h"),
                pending("https://u2.example/h")
            ]
        );
        drop(conn);
        db.drop_db().await;
    }

    /// The push rules of a still-active result: a push before the claim is
    /// answered and cleared by a successful poll; one after the claim stays
    /// pending and brings the next poll forward to `repoll_after_push_at`;
    /// a failed poll answers nothing, so its push stays.
    #[tokio::test]
    async fn ongoing_results_keep_or_clear_the_pending_push() {
        let Some(db) = TestDb::create("ongoing_push").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at, hinted_at) \
             VALUES ('answered', 0, 0, 10, 50), ('late', 0, 0, 11, 50), \
                    ('failed', 0, 0, 12, 50)",
        )
        .await;
        let claimed = claim(&mut conn, Millis(1_000), Millis(9_000), 3, None)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["answered", "late", "failed"]);
        // A push for `late` arrives while its poll is in flight: the
        // leased video keeps its due time (the lease).
        let pushed = hint(
            &mut conn,
            &PushHint {
                video_id: VideoId::parse("late").unwrap(),
                at: Millis(1_500),
                min_interval: Duration::from_secs(1),
                adopt: false,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            pushed,
            HintOutcome::Hinted {
                due_at: Millis(9_000)
            }
        );
        let answered = ongoing(&claimed[0], 2_000, 60_000);
        let late = PollUpdate {
            repoll_after_push_at: Millis(3_000),
            ..ongoing(&claimed[1], 2_000, 60_000)
        };
        let failed = PollUpdate {
            counted: false,
            error_streak: 1,
            ..ongoing(&claimed[2], 2_000, 60_000)
        };
        assert_eq!(
            record_polls(&mut conn, &[&answered, &late, &failed])
                .await
                .unwrap(),
            [true, true, true]
        );
        let expect = |next, hinted, polls| Video {
            state: "active".into(),
            next_poll_at: Some(next),
            lease_until: None,
            hinted_at: hinted,
            polled_at: Some(2_000),
            polls,
            updated_at: 2_000,
        };
        assert_eq!(video(&mut conn, "answered").await, expect(60_000, None, 1));
        assert_eq!(
            video(&mut conn, "late").await,
            expect(3_000, Some(1_500), 1)
        );
        assert_eq!(
            video(&mut conn, "failed").await,
            expect(60_000, Some(50), 0)
        );
        drop(conn);
        db.drop_db().await;
    }

    fn push(video_id: &str, at: i64, min_interval: Duration, adopt: bool) -> PushHint {
        PushHint {
            video_id: VideoId::parse(video_id).unwrap(),
            at: Millis(at),
            min_interval,
            adopt,
        }
    }

    /// A push makes the video due at `max(at, polled_at + min_interval)`
    /// but never later than it was due; `hinted_at` only moves forward; a
    /// leased video keeps its due time; other states and unknown ids are
    /// reported, and adopted when asked.
    #[tokio::test]
    async fn a_push_schedules_the_confirming_poll() {
        let Some(db) = TestDb::create("hint").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, state, enqueued_at, updated_at, next_poll_at, \
                                 polled_at, lease_until) \
             VALUES ('p', 'active', 0, 0, 50000, 1000, NULL), \
                    ('never', 'active', 0, 0, 50000, NULL, NULL), \
                    ('soon', 'active', 0, 0, 4000, 1000, NULL), \
                    ('leased', 'active', 0, 0, 70000, 1000, 70000), \
                    ('huge', 'active', 0, 0, 50000, 1000, NULL), \
                    ('done', 'completed', 0, 0, NULL, 1000, NULL)",
        )
        .await;
        let five = Duration::from_secs(5);
        let due = |at| HintOutcome::Hinted { due_at: Millis(at) };
        // max(2000, 1000 + 5000) = 6000, sooner than 50000.
        assert_eq!(
            hint(&mut conn, &push("p", 2_000, five, false))
                .await
                .unwrap(),
            due(6_000)
        );
        assert_eq!(video(&mut conn, "p").await.hinted_at, Some(2_000));
        // An older push: hinted_at stays 2000; min(6000, max(1500, 6000)).
        assert_eq!(
            hint(&mut conn, &push("p", 1_500, five, false))
                .await
                .unwrap(),
            due(6_000)
        );
        assert_eq!(video(&mut conn, "p").await.hinted_at, Some(2_000));
        // A later push: hinted_at 9000; min(6000, max(9000, 6000)) = 6000.
        assert_eq!(
            hint(&mut conn, &push("p", 9_000, five, false))
                .await
                .unwrap(),
            due(6_000)
        );
        assert_eq!(video(&mut conn, "p").await.hinted_at, Some(9_000));
        // Never polled: due at the push.
        assert_eq!(
            hint(&mut conn, &push("never", 3_000, five, false))
                .await
                .unwrap(),
            due(3_000)
        );
        // Due sooner than the push would make it: unchanged.
        assert_eq!(
            hint(&mut conn, &push("soon", 2_000, five, false))
                .await
                .unwrap(),
            due(4_000)
        );
        // Leased: the lease stays the due time, the push is recorded.
        assert_eq!(
            hint(&mut conn, &push("leased", 2_000, five, false))
                .await
                .unwrap(),
            due(70_000)
        );
        let leased = video(&mut conn, "leased").await;
        assert_eq!(
            (leased.lease_until, leased.hinted_at),
            (Some(70_000), Some(2_000))
        );
        // An interval past i64 milliseconds: no overflow, due time kept.
        assert_eq!(
            hint(&mut conn, &push("huge", 2_000, Duration::MAX, false))
                .await
                .unwrap(),
            due(50_000)
        );
        assert_eq!(
            hint(&mut conn, &push("done", 2_000, five, true))
                .await
                .unwrap(),
            HintOutcome::NotActive(VideoState::Completed)
        );
        assert_eq!(video(&mut conn, "done").await.hinted_at, None);
        assert_eq!(
            hint(&mut conn, &push("stranger", 2_000, five, false))
                .await
                .unwrap(),
            HintOutcome::Untracked
        );
        let strangers: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM videos WHERE video_id = 'stranger'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(strangers, 0);
        assert_eq!(
            hint(&mut conn, &push("stranger", 2_500, five, true))
                .await
                .unwrap(),
            HintOutcome::Adopted
        );
        let adopted: (
            String,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
        ) = sqlx::query_as(
            "SELECT state, enqueued_at, updated_at, next_poll_at, hinted_at, callback_url, \
                        metadata FROM videos WHERE video_id = 'stranger'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            adopted,
            (
                "active".into(),
                2_500,
                2_500,
                Some(2_500),
                Some(2_500),
                None,
                None
            )
        );
        drop(conn);
        db.drop_db().await;
    }

    /// Two instances claim deliveries at once: disjoint, without waiting.
    /// Attempts are recorded only under the claim's lease, a retry keeps the
    /// delivery pending, a success or a dead end closes it; a hand-back
    /// needs the lease too.
    #[tokio::test]
    async fn deliveries_are_claimed_attempted_and_released_under_their_lease() {
        let Some(db) = TestDb::create("deliveries").await else {
            return;
        };
        let mut a = db.conn().await;
        let mut b = db.conn().await;
        exec(
            &mut a,
            "INSERT INTO videos (video_id, state, video_url, metadata, duration, created_at, \
                                 event_id, terminal_at, hinted_at, enqueued_at, updated_at) \
             VALUES ('d1', 'completed', 'https://cdn.example/1.mp4', '{\"k\":1}', 12.5, \
                     1700000000, 'e1', 900, 700, 0, 0), \
                    ('d2', 'failed', NULL, NULL, NULL, NULL, 'e2', 950, NULL, 0, 0); \
             INSERT INTO deliveries (video_rowid, event_id, url, state, next_attempt_at, \
                                     created_at, updated_at) \
             SELECT v.id, v.event_id, d.url, d.state, d.due, 0, 0 \
             FROM (VALUES (1, 'd1', 'https://a.example', 'pending', 100), \
                          (2, 'd1', 'https://b.example', 'pending', 200), \
                          (3, 'd2', 'https://c.example', 'pending', 300), \
                          (4, 'd2', 'https://later.example', 'pending', 10000), \
                          (5, 'd2', 'https://dead.example', 'dead', NULL)) \
                  AS d (n, video, url, state, due) \
             JOIN videos v ON v.video_id = d.video ORDER BY d.n",
        )
        .await;
        let mut tx_a = a.begin().await.unwrap();
        let first = claim_deliveries(&mut tx_a, Millis(1_000), Millis(5_000), 2)
            .await
            .unwrap();
        let mut tx_b = b.begin().await.unwrap();
        let second = tokio::time::timeout(
            NO_WAIT,
            claim_deliveries(&mut tx_b, Millis(1_000), Millis(6_000), 10),
        )
        .await
        .expect("the second claim waited for the first one's rows")
        .unwrap();
        tx_b.commit().await.unwrap();
        tx_a.commit().await.unwrap();
        let urls =
            |claimed: &[ClaimedDelivery]| claimed.iter().map(|d| d.url.clone()).collect::<Vec<_>>();
        assert_eq!(urls(&first), ["https://a.example", "https://b.example"]);
        assert_eq!(urls(&second), ["https://c.example"]);
        let da = &first[0];
        assert_eq!(
            (
                da.attempts,
                da.lease,
                da.event_id.as_str(),
                da.video_id.as_str(),
                da.state
            ),
            (
                0,
                Lease {
                    until: Millis(5_000)
                },
                "e1",
                "d1",
                VideoState::Completed
            )
        );
        assert_eq!(
            (
                da.video_url.as_deref(),
                da.metadata.as_deref(),
                da.duration,
                da.created_at,
                da.terminal_at,
                da.pushed_at
            ),
            (
                Some("https://cdn.example/1.mp4"),
                Some(r#"{"k":1}"#),
                Some(12.5),
                Some(1_700_000_000),
                Some(Millis(900)),
                // Completion learned by push at 700, nothing delivered yet.
                Some(Millis(700))
            )
        );
        // No push for d2.
        assert_eq!(second[0].pushed_at, None);

        let attempt = |d: &ClaimedDelivery, lease: i64, at: i64, status: u16, next| AttemptRecord {
            delivery_id: d.id,
            lease: Lease {
                until: Millis(lease),
            },
            at: Millis(at),
            status: Some(status),
            error: None,
            duration_ms: 40,
            next,
        };
        // Not the claim's lease: nothing recorded.
        assert!(
            !record_attempt(
                &mut a,
                &attempt(da, 4_999, 1_100, 503, DeliveryNext::Retry(Millis(2_000)))
            )
            .await
            .unwrap()
        );
        assert!(
            record_attempt(
                &mut a,
                &attempt(da, 5_000, 1_100, 503, DeliveryNext::Retry(Millis(2_000)))
            )
            .await
            .unwrap()
        );
        // The lease is spent.
        assert!(
            !record_attempt(
                &mut a,
                &attempt(da, 5_000, 1_200, 503, DeliveryNext::Retry(Millis(2_000)))
            )
            .await
            .unwrap()
        );
        let db_ = &first[1];
        assert!(
            record_attempt(
                &mut a,
                &attempt(db_, 5_000, 1_150, 410, DeliveryNext::Dead("gone".into()))
            )
            .await
            .unwrap()
        );
        // The retry is due at 2000; b is dead; c is leased until 6000.
        let again = claim_deliveries(&mut a, Millis(2_500), Millis(8_000), 10)
            .await
            .unwrap();
        assert_eq!(urls(&again), ["https://a.example"]);
        assert_eq!(
            (again[0].attempts, again[0].pushed_at),
            (1, Some(Millis(700)))
        );
        assert!(
            record_attempt(
                &mut a,
                &attempt(&again[0], 8_000, 2_600, 204, DeliveryNext::Delivered)
            )
            .await
            .unwrap()
        );
        // Handing c back: not with a stale lease, yes with its own.
        let dc = &second[0];
        let hand_back = |lease: i64| DeliveryRelease {
            delivery_id: dc.id,
            lease: Lease {
                until: Millis(lease),
            },
            next_attempt_at: Millis(7_000),
        };
        release_delivery(&mut a, &hand_back(5_000)).await.unwrap();
        assert_eq!(deliveries(&mut a).await[2].lease_until, Some(6_000));
        release_delivery(&mut a, &hand_back(6_000)).await.unwrap();

        let row = |video: &str,
                   url: &str,
                   state: &str,
                   attempts,
                   next,
                   lease,
                   status,
                   reason: Option<&str>,
                   updated| Delivery {
            video_id: video.into(),
            event_id: if video == "d1" { "e1" } else { "e2" }.into(),
            url: url.into(),
            state: state.into(),
            attempts,
            next_attempt_at: next,
            lease_until: lease,
            last_status: status,
            reason: reason.map(str::to_owned),
            updated_at: updated,
        };
        assert_eq!(
            deliveries(&mut a).await,
            [
                row(
                    "d1",
                    "https://a.example",
                    "delivered",
                    2,
                    None,
                    None,
                    Some(204),
                    None,
                    2_600
                ),
                row(
                    "d1",
                    "https://b.example",
                    "dead",
                    1,
                    None,
                    None,
                    Some(410),
                    Some("gone"),
                    1_150
                ),
                row(
                    "d2",
                    "https://c.example",
                    "pending",
                    0,
                    Some(7_000),
                    None,
                    None,
                    None,
                    0
                ),
                row(
                    "d2",
                    "https://later.example",
                    "pending",
                    0,
                    Some(10_000),
                    None,
                    None,
                    None,
                    0
                ),
                row(
                    "d2",
                    "https://dead.example",
                    "dead",
                    0,
                    None,
                    None,
                    None,
                    None,
                    0
                ),
            ]
        );
        let log: Vec<(String, i64, Option<i64>, Option<String>, i64)> = sqlx::query_as(
            "SELECT d.url, a.at, a.status, a.error, a.duration_ms \
             FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id ORDER BY a.id",
        )
        .fetch_all(&mut *a)
        .await
        .unwrap();
        assert_eq!(
            log,
            [
                ("https://a.example".into(), 1_100, Some(503), None, 40),
                ("https://b.example".into(), 1_150, Some(410), None, 40),
                ("https://a.example".into(), 2_600, Some(204), None, 40),
            ]
        );

        // Redelivered: a's earlier success means its push no longer
        // counts; b (never delivered) still carries it.
        assert_eq!(
            redeliver(
                &mut a,
                &VideoId::parse("d1").unwrap(),
                &["https://a.example".into(), "https://b.example".into()],
                Millis(10_000)
            )
            .await
            .unwrap(),
            RedeliverOutcome::Queued {
                event_id: "e1".into(),
                targets: 2
            }
        );
        let resent = claim_deliveries(&mut a, Millis(10_000), Millis(20_000), 10)
            .await
            .unwrap();
        // Most overdue first: c (handed back due at 7000), then the rows
        // due at 10000 in id order.
        assert_eq!(
            urls(&resent),
            [
                "https://c.example",
                "https://a.example",
                "https://b.example",
                "https://later.example"
            ]
        );
        let pushed: Vec<Option<Millis>> = resent.iter().map(|d| d.pushed_at).collect();
        assert_eq!(pushed, [None, None, Some(Millis(700)), None]);
        drop((a, b));
        db.drop_db().await;
    }

    /// A redelivery re-arms every current target: delivered and dead rows
    /// become pending afresh, a missing one is created, an idle pending one
    /// is made due now, one in flight is left alone.
    #[tokio::test]
    async fn redeliver_requeues_every_target() {
        let Some(db) = TestDb::create("redeliver").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, state, callback_url, event_id, enqueued_at, updated_at) \
             VALUES ('r1', 'completed', 'https://own.example', 'e9', 0, 0), \
                    ('r2', 'active', NULL, NULL, 0, 0), \
                    ('r3', 'cancelled', NULL, NULL, 0, 0); \
             INSERT INTO deliveries (video_rowid, event_id, url, state, attempts, next_attempt_at, \
                                     lease_until, reason, created_at, updated_at) \
             SELECT v.id, 'e9', d.url, d.state, d.attempts, d.due, d.lease, d.reason, 0, 0 \
             FROM (VALUES (1, 'https://c1.example', 'delivered', 1, NULL, NULL, NULL), \
                          (2, 'https://own.example', 'dead', 5, NULL, NULL, 'exhausted'), \
                          (3, 'https://p.example', 'pending', 2, 99000, NULL, NULL), \
                          (4, 'https://q.example', 'pending', 1, 98000, 98000, NULL)) \
                  AS d (n, url, state, attempts, due, lease, reason) \
             JOIN videos v ON v.video_id = 'r1' ORDER BY d.n",
        )
        .await;
        let configured = [
            "https://c1.example".to_owned(),
            "https://c2.example".to_owned(),
            "https://c1.example".to_owned(),
        ];
        // Three configured entries (one repeated) and the video's own URL:
        // four targets, as SQLite counts them.
        assert_eq!(
            redeliver(
                &mut conn,
                &VideoId::parse("r1").unwrap(),
                &configured,
                Millis(5_000)
            )
            .await
            .unwrap(),
            RedeliverOutcome::Queued {
                event_id: "e9".into(),
                targets: 4
            }
        );
        let row = |url: &str, attempts, next, lease, updated| Delivery {
            video_id: "r1".into(),
            event_id: "e9".into(),
            url: url.into(),
            state: "pending".into(),
            attempts,
            next_attempt_at: Some(next),
            lease_until: lease,
            last_status: None,
            reason: None,
            updated_at: updated,
        };
        assert_eq!(
            deliveries(&mut conn).await,
            [
                row("https://c1.example", 0, 5_000, None, 5_000),
                row("https://own.example", 0, 5_000, None, 5_000),
                row("https://p.example", 2, 5_000, None, 5_000),
                row("https://q.example", 1, 98_000, Some(98_000), 0),
                row("https://c2.example", 0, 5_000, None, 5_000),
            ]
        );
        assert_eq!(
            redeliver(
                &mut conn,
                &VideoId::parse("r2").unwrap(),
                &configured,
                Millis(5_000)
            )
            .await
            .unwrap(),
            RedeliverOutcome::NoEvent(VideoState::Active)
        );
        assert_eq!(
            redeliver(
                &mut conn,
                &VideoId::parse("r3").unwrap(),
                &configured,
                Millis(5_000)
            )
            .await
            .unwrap(),
            RedeliverOutcome::NoEvent(VideoState::Cancelled)
        );
        assert_eq!(
            redeliver(
                &mut conn,
                &VideoId::parse("nope").unwrap(),
                &configured,
                Millis(5_000)
            )
            .await
            .unwrap(),
            RedeliverOutcome::NotFound
        );
        drop(conn);
        db.drop_db().await;
    }

    /// Cancel ends an active video with its transition; the poll in flight
    /// then finds its lease gone. Repeated, or on another state, it reports
    /// what is there.
    #[tokio::test]
    async fn cancel_ends_an_active_video_only() {
        let Some(db) = TestDb::create("cancel").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, state, enqueued_at, updated_at, next_poll_at) \
             VALUES ('c', 'active', 0, 0, 0), ('f', 'failed', 0, 0, NULL)",
        )
        .await;
        let claimed = claim_due(&mut conn, Millis(10), Millis(500), 1)
            .await
            .unwrap();
        let id = |s: &str| VideoId::parse(s).unwrap();
        assert_eq!(
            cancel_video(&mut conn, &id("c"), Millis(20)).await.unwrap(),
            CancelOutcome::Cancelled
        );
        assert_eq!(
            record_polls(&mut conn, &[&ongoing(&claimed[0], 30, 1_000)])
                .await
                .unwrap(),
            [false]
        );
        assert_eq!(
            video(&mut conn, "c").await,
            Video {
                state: "cancelled".into(),
                next_poll_at: None,
                lease_until: None,
                hinted_at: None,
                polled_at: None,
                polls: 0,
                updated_at: 20,
            }
        );
        assert_eq!(
            transitions(&mut conn).await,
            [(
                "c".into(),
                "state".into(),
                Some("active".into()),
                "cancelled".into(),
                20
            )]
        );
        assert_eq!(
            cancel_video(&mut conn, &id("c"), Millis(40)).await.unwrap(),
            CancelOutcome::AlreadyCancelled
        );
        assert_eq!(
            cancel_video(&mut conn, &id("f"), Millis(40)).await.unwrap(),
            CancelOutcome::Terminal(VideoState::Failed)
        );
        assert_eq!(
            cancel_video(&mut conn, &id("x"), Millis(40)).await.unwrap(),
            CancelOutcome::NotFound
        );
        assert_eq!(transitions(&mut conn).await.len(), 1);
        drop(conn);
        db.drop_db().await;
    }

    /// A hand-back needs the claim's lease.
    #[tokio::test]
    async fn a_release_needs_the_claims_lease() {
        let Some(db) = TestDb::create("release").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
             VALUES ('v', 0, 0, 0)",
        )
        .await;
        let claimed = claim_due(&mut conn, Millis(10), Millis(500), 1)
            .await
            .unwrap();
        let back = |lease| Release {
            video_rowid: claimed[0].id,
            lease: Lease {
                until: Millis(lease),
            },
            next_poll_at: Millis(77),
        };
        release(&mut conn, &back(499)).await.unwrap();
        let v = video(&mut conn, "v").await;
        assert_eq!((v.next_poll_at, v.lease_until), (Some(500), Some(500)));
        release(&mut conn, &back(500)).await.unwrap();
        let v = video(&mut conn, "v").await;
        assert_eq!((v.next_poll_at, v.lease_until), (Some(77), None));
        assert_eq!(rowid(&mut conn, "v").await, claimed[0].id);
        drop(conn);
        db.drop_db().await;
    }

    /// Every probe rewrites the one row and counts itself, even within one
    /// millisecond.
    #[tokio::test]
    async fn every_probe_changes_the_row() {
        let Some(db) = TestDb::create("probe").await else {
            return;
        };
        let mut conn = db.conn().await;
        touch_probe(&mut conn, Millis(7)).await.unwrap();
        touch_probe(&mut conn, Millis(7)).await.unwrap();
        touch_probe(&mut conn, Millis(9)).await.unwrap();
        let rows: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT id, written_at, writes FROM readiness_probe")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        assert_eq!(rows, [(1, 9, 3)]);
        drop(conn);
        db.drop_db().await;
    }

    /// With several results for one video in a batch (a stale one between
    /// two runs), each is judged against the row as the previous ones left
    /// it, in order.
    #[tokio::test]
    async fn repeated_videos_in_one_batch_apply_in_order() {
        let Some(db) = TestDb::create("repeat").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
             VALUES ('a', 0, 0, 0), ('b', 0, 0, 0)",
        )
        .await;
        let first = claim_due(&mut conn, Millis(1), Millis(100), 2)
            .await
            .unwrap();
        let second = claim_due(&mut conn, Millis(200), Millis(300), 2)
            .await
            .unwrap();
        assert_eq!(ids(&first), ["a", "b"]);
        assert_eq!(ids(&second), ["a", "b"]);
        // b's fresh result, a's stale one, a's fresh one, b's stale one.
        let batch = [
            ongoing(&second[1], 210, 1_000),
            ongoing(&first[0], 220, 2_000),
            ongoing(&second[0], 230, 3_000),
            ongoing(&first[1], 240, 4_000),
        ];
        let refs: Vec<&PollUpdate> = batch.iter().collect();
        assert_eq!(
            record_polls(&mut conn, &refs).await.unwrap(),
            [true, false, true, false]
        );
        assert_eq!(video(&mut conn, "a").await.next_poll_at, Some(3_000));
        assert_eq!(video(&mut conn, "b").await.next_poll_at, Some(1_000));
        drop(conn);
        db.drop_db().await;
    }

    /// Upstream strings with a NUL in them (which PostgreSQL's TEXT cannot
    /// hold) are stored with U+FFFD in its place instead of failing the
    /// batch, and so is a delivery error.
    #[tokio::test]
    async fn text_with_a_nul_is_stored_with_a_replacement_character() {
        let Some(db) = TestDb::create("nul").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, state, event_id, enqueued_at, updated_at, next_poll_at) \
             VALUES ('n', 'active', NULL, 0, 0, 0), ('m', 'completed', 'e', 0, 0, NULL); \
             INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) \
             SELECT id, 'e', 'https://h.example', 0, 0, 0 FROM videos WHERE video_id = 'm'",
        )
        .await;
        let claimed = claim_due(&mut conn, Millis(1), Millis(100), 1)
            .await
            .unwrap();
        let mut result = ongoing(&claimed[0], 10, 1_000);
        result.upstream_status = Some("ren\0dering".into());
        result.fields.error_code = Some("E\0".into());
        result.fields.error_message = Some("\0bad".into());
        result.transitions.push(NewTransition {
            kind: TransitionKind::Status,
            from: Some("\0".into()),
            to: "ren\0dering".into(),
        });
        assert_eq!(record_polls(&mut conn, &[&result]).await.unwrap(), [true]);
        let stored: (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT upstream_status, error_code, error_message FROM videos WHERE video_id = 'n'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(
            stored,
            (
                Some("ren\u{FFFD}dering".into()),
                Some("E\u{FFFD}".into()),
                Some("\u{FFFD}bad".into())
            )
        );
        assert_eq!(
            transitions(&mut conn).await,
            [(
                "n".into(),
                "status".into(),
                Some("\u{FFFD}".into()),
                "ren\u{FFFD}dering".into(),
                10
            )]
        );
        let sending = claim_deliveries(&mut conn, Millis(1), Millis(100), 1)
            .await
            .unwrap();
        let failed = AttemptRecord {
            delivery_id: sending[0].id,
            lease: sending[0].lease,
            at: Millis(5),
            status: None,
            error: Some("reset\0".into()),
            duration_ms: 1,
            next: DeliveryNext::Retry(Millis(50)),
        };
        assert!(record_attempt(&mut conn, &failed).await.unwrap());
        let errors: (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT d.last_error, a.error FROM deliveries d \
             JOIN delivery_attempts a ON a.delivery_id = d.id",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let replaced = Some("reset\u{FFFD}".to_owned());
        assert_eq!(errors, (replaced.clone(), replaced));
        drop(conn);
        db.drop_db().await;
    }

    /// Videos due at the same millisecond are claimed oldest (lowest id)
    /// first, as SQLite's index (which carries the rowid) orders them,
    /// whatever order their rows were last written in.
    #[tokio::test]
    async fn videos_due_at_once_are_claimed_oldest_first() {
        let Some(db) = TestDb::create("ties").await else {
            return;
        };
        let mut conn = db.conn().await;
        exec(
            &mut conn,
            "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
             VALUES ('x', 0, 0, 100), ('y', 0, 0, 100), ('z', 0, 0, 100); \
             UPDATE videos SET next_poll_at = 5 WHERE video_id = 'z'; \
             UPDATE videos SET next_poll_at = 5 WHERE video_id = 'y'; \
             UPDATE videos SET next_poll_at = 5 WHERE video_id = 'x'; \
             INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, created_at, \
                                     updated_at) \
             SELECT id, 'e' || video_id, 'https://h.example', 100, 0, 0 FROM videos \
             ORDER BY id; \
             UPDATE deliveries SET next_attempt_at = 5 WHERE event_id = 'ez'; \
             UPDATE deliveries SET next_attempt_at = 5 WHERE event_id = 'ey'; \
             UPDATE deliveries SET next_attempt_at = 5 WHERE event_id = 'ex'",
        )
        .await;
        let claimed = claim_due(&mut conn, Millis(10), Millis(50), 2)
            .await
            .unwrap();
        assert_eq!(ids(&claimed), ["x", "y"]);
        let sending = claim_deliveries(&mut conn, Millis(10), Millis(50), 2)
            .await
            .unwrap();
        let events: Vec<&str> = sending.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(events, ["ex", "ey"]);
        drop(conn);
        db.drop_db().await;
    }

    /// How an `EXPLAIN (FORMAT JSON)` plan reads `table`, one entry per
    /// scan of it (the changed table's own update node aside): the scan's
    /// kind and the index it walks (a bitmap heap scan's, from its bitmap
    /// index scans), e.g. `Index Scan using videos_pkey` or `Seq Scan`.
    fn reads_of(plan: &serde_json::Value, table: &str, found: &mut Vec<String>) {
        use serde_json::Value;
        fn index_names(node: &Value, names: &mut Vec<String>) {
            if let Some(name) = node.get("Index Name").and_then(Value::as_str) {
                names.push(name.to_owned());
            }
            for child in node
                .get("Plans")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                index_names(child, names);
            }
        }
        if let Some(object) = plan.as_object() {
            let kind = object
                .get("Node Type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if object.get("Relation Name").and_then(Value::as_str) == Some(table)
                && kind != "ModifyTable"
            {
                let mut names = Vec::new();
                index_names(plan, &mut names);
                found.push(if names.is_empty() {
                    kind.to_owned()
                } else {
                    format!("{kind} using {}", names.join(" + "))
                });
            }
            object
                .values()
                .for_each(|value| reads_of(value, table, found));
        } else if let Some(array) = plan.as_array() {
            array.iter().for_each(|value| reads_of(value, table, found));
        }
    }

    /// How PostgreSQL would run `statement` with the SQL literals `args` as
    /// its parameters, on `conn` as it is now: the reads of `table` in its
    /// plan. `generic`: the plan made without the parameters' values, the
    /// one a prepared statement settles on after its first executions.
    async fn reads_in_plan(
        conn: &mut PgConnection,
        statement: &str,
        args: &str,
        table: &str,
        generic: bool,
    ) -> Vec<String> {
        let mode = if generic {
            "force_generic_plan"
        } else {
            "force_custom_plan"
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PREPARE plan_check AS {statement}; SET plan_cache_mode = {mode}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) EXECUTE plan_check({args})"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        sqlx::raw_sql("DEALLOCATE plan_check; RESET plan_cache_mode")
            .execute(&mut *conn)
            .await
            .unwrap();
        let mut found = Vec::new();
        reads_of(&plan, table, &mut found);
        pairwise_joins(&plan, &mut found);
        found
    }

    /// A nested loop that matches rows by comparing their ids in a join
    /// filter (each row of one side against every row of the other,
    /// quadratic in the batch) rather than through an index or a hash:
    /// noted in `found`.
    fn pairwise_joins(plan: &serde_json::Value, found: &mut Vec<String>) {
        use serde_json::Value;
        if let Some(object) = plan.as_object() {
            let filter = object.get("Join Filter").and_then(Value::as_str);
            if object.get("Node Type").and_then(Value::as_str) == Some("Nested Loop")
                && filter.is_some_and(|filter| filter.contains(".id = "))
            {
                found.push(format!("Nested Loop comparing every pair: {filter:?}"));
            }
            object
                .values()
                .for_each(|value| pairwise_joins(value, found));
        } else if let Some(array) = plan.as_array() {
            array.iter().for_each(|value| pairwise_joins(value, found));
        }
    }

    /// `statement` as it was written before its plan was made independent
    /// of the statistics: the state and due time as plain (indexable)
    /// conditions, and no `ANY` over the batch's ids. For the control: the
    /// databases below do mislead the planner.
    fn unshaped(statement: &str) -> String {
        let plain = statement
            .replace(
                "COALESCE(videos.state = 'active' AND videos.next_poll_at <= $2, FALSE)",
                "videos.state = 'active' AND videos.next_poll_at <= $2",
            )
            .replace(
                "COALESCE(state = 'pending' AND next_attempt_at > $1, FALSE)",
                "state = 'pending' AND next_attempt_at > $1",
            )
            .replace(
                "COALESCE(videos.state = 'active', FALSE)",
                "videos.state = 'active'",
            )
            .replace("COALESCE(state = 'active', FALSE)", "state = 'active'")
            .replace("COALESCE(state = 'pending', FALSE)", "state = 'pending'")
            .replace(" AND videos.id = ANY($1::bigint[])", "")
            .replace(" AND videos.id = ANY($3::bigint[])", "");
        assert_ne!(plain, statement, "nothing to undo in {statement}");
        plain
    }

    /// The writer's statements that change rows they name find them by
    /// key (the primary key, or the unique key they name) on a new
    /// database whatever its statistics say, in the plan made for the
    /// values and in the generic one, and a batch is never matched with
    /// its rows pair by pair. The databases are the ones the bench
    /// and a new deployment meet (PostgreSQL's own `EXPLAIN` is the
    /// oracle): statistics taken before a burst of due videos (a backlog
    /// due later, then four thousand due now), none at all yet, and ones
    /// taken while nothing was active or pending. On each of them the
    /// statements as they were written before walk a partial index or
    /// `(state, id)` over every due or active row instead: the control.
    #[tokio::test]
    async fn the_writers_statements_find_their_rows_by_key_whatever_the_statistics() {
        // (what the scenario is, the SQL that makes it)
        let scenarios = [
            (
                "analyzed before the burst",
                "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
                 SELECT 'backlog-' || i, 0, 0, 36000000 FROM generate_series(1, 1000) AS i; \
                 ANALYZE videos; \
                 INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
                 SELECT 'hot-' || i, 0, 0, 1 FROM generate_series(1, 10000) AS i; \
                 INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, \
                                         created_at, updated_at) \
                 SELECT id, 'e' || id, 'https://a.example/', 1, 0, 0 FROM videos",
            ),
            (
                "never analyzed",
                "INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
                 SELECT 'backlog-' || i, 0, 0, 36000000 FROM generate_series(1, 1000) AS i; \
                 INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
                 SELECT 'hot-' || i, 0, 0, 1 FROM generate_series(1, 10000) AS i; \
                 INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, \
                                         created_at, updated_at) \
                 SELECT id, 'e' || id, 'https://a.example/', 1, 0, 0 FROM videos",
            ),
            (
                "analyzed while nothing was active or pending",
                "INSERT INTO videos (video_id, state, event_id, enqueued_at, updated_at) \
                 SELECT 'done-' || i, 'completed', 'e-' || i, 0, 0 \
                 FROM generate_series(1, 10000) AS i; \
                 INSERT INTO deliveries (video_rowid, event_id, url, state, created_at, \
                                         updated_at) \
                 SELECT id, event_id, 'https://a.example/', 'delivered', 0, 0 FROM videos; \
                 ANALYZE videos; ANALYZE deliveries; \
                 INSERT INTO videos (video_id, enqueued_at, updated_at, next_poll_at) \
                 SELECT 'hot-' || i, 0, 0, 1 FROM generate_series(1, 10000) AS i; \
                 INSERT INTO deliveries (video_rowid, event_id, url, next_attempt_at, \
                                         created_at, updated_at) \
                 SELECT id, 'e' || id, 'https://b.example/', 1, 0, 0 FROM videos \
                 WHERE state = 'active'",
            ),
        ];
        // (statement, its parameters, the table it changes, the key that
        // must find the rows). Ids 1001..1016 are due, active and pending
        // in every scenario.
        let ids = "'{1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014,\
                   1015,1016}'";
        let lease_args = format!("500, 100, {ids}");
        let poll_args = format!(
            "{ids}, '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', \
             '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', \
             '{{}}', '{{}}'"
        );
        let statements: [(&str, &str, &str, &str); 8] = [
            (LEASE_RANKED, &lease_args, "videos", "videos_pkey"),
            (RECORD_POLLS, &poll_args, "videos", "videos_pkey"),
            (
                CANCEL_ACTIVE,
                "200, 'hot-7'",
                "videos",
                "videos_video_id_key",
            ),
            (
                HINT_ACTIVE,
                "'hot-7', 200, 0",
                "videos",
                "videos_video_id_key",
            ),
            (RELEASE_VIDEO, "300, 1007, 500", "videos", "videos_pkey"),
            (
                RECORD_ATTEMPT,
                "'delivered', NULL, 200, NULL, NULL, 200, 1007, 500",
                "deliveries",
                "deliveries_pkey",
            ),
            (
                RELEASE_DELIVERY,
                "300, 1007, 500",
                "deliveries",
                "deliveries_pkey",
            ),
            (
                REDELIVER_NOW,
                "0, 1007",
                "deliveries",
                "deliveries_video_rowid_url_key",
            ),
        ];
        // Per statement: the scenarios where the old form missed its key.
        let mut misled: Vec<Vec<(&str, Vec<String>)>> = vec![Vec::new(); statements.len()];
        for (scenario, setup) in scenarios {
            let Some(db) = TestDb::create("plans").await else {
                return;
            };
            let mut conn = db.conn().await;
            // Statistics exactly as the scenario says: no autovacuum
            // analyzing the tables while the test looks.
            exec(
                &mut conn,
                "ALTER TABLE videos SET (autovacuum_enabled = off); \
                 ALTER TABLE deliveries SET (autovacuum_enabled = off)",
            )
            .await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
                .execute(&mut *conn)
                .await
                .unwrap();
            for (i, (statement, args, table, key)) in statements.iter().enumerate() {
                let by_key = [format!("Index Scan using {key}")];
                let by_key_bitmap = [format!("Bitmap Heap Scan using {key}")];
                for generic in [false, true] {
                    let reads = reads_in_plan(&mut conn, statement, args, table, generic).await;
                    assert!(
                        reads == by_key || reads == by_key_bitmap,
                        "{scenario}, {} plan: {reads:?} for {statement}",
                        if generic { "generic" } else { "custom" },
                    );
                }
                let old = unshaped(statement);
                let reads = reads_in_plan(&mut conn, &old, args, table, false).await;
                if reads != by_key && reads != by_key_bitmap {
                    misled[i].push((scenario, reads));
                }
            }
            drop(conn);
            db.drop_db().await;
        }
        for ((statement, ..), misled) in statements.iter().zip(&misled) {
            assert!(
                !misled.is_empty(),
                "no scenario misleads the planner on the old form of {statement}"
            );
        }
    }
}
