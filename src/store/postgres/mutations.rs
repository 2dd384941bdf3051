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

use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};

use sqlx::PgConnection;

use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryNext, DeliveryRelease};
use crate::domain::poll::{ClaimedVideo, DueVideo, PollUpdate, RANKED_WINDOW, Ranker, Release};
use crate::domain::{Millis, VideoId, VideoState};
use crate::store::StoreError;
use crate::store::records::{
    CancelOutcome, ConflictingFields, EnqueueOutcome, HintOutcome, NewVideo, PushHint,
    RedeliverOutcome,
};
use crate::store::rows::{ClaimedDeliveryRow, ClaimedVideoRow, DueVideoRow};

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
                        metadata: !same_metadata(metadata, request.1),
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

/// Whether two stored `metadata` texts are the same JSON value: key order
/// and spacing do not count. The SQLite backend's comparison, made in the
/// relay rather than with `::jsonb` so that both backends agree on every
/// edge (`1` and `1.0` differ here, as they do there; `jsonb` would call
/// them equal) and an unparsable stored text is a difference, not an
/// error that fails the whole batch.
///
/// Absent and present differ; so would unparsable text from any other
/// text, which the API never stores.
fn same_metadata(stored: Option<&str>, requested: Option<&str>) -> bool {
    match (stored, requested) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => {
            match (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        _ => false,
    }
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
    let cancelled: Option<i64> = sqlx::query_scalar(
        "UPDATE videos SET state = 'cancelled', next_poll_at = NULL, lease_until = NULL, \
                           updated_at = $1 \
         WHERE video_id = $2 AND state = 'active' RETURNING id",
    )
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
            " ORDER BY next_poll_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
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
async fn claim_hinted(
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

/// Leases up to `limit` due videos: those with a pending push first
/// ([`claim_hinted`]), then the rest by `rank` when one is given
/// ([`claim_due_ranked`]), else most overdue first ([`claim_due`]).
pub(crate) async fn claim(
    conn: &mut PgConnection,
    now: Millis,
    lease_until: Millis,
    limit: u32,
    rank: Option<&Ranker>,
) -> Result<Vec<ClaimedVideo>, StoreError> {
    let mut claimed = claim_hinted(conn, now, lease_until, limit).await?;
    // Claimed rows are due only at `lease_until` now (this transaction sees
    // its own writes), so the queries below cannot take them twice.
    let rest = limit.saturating_sub(claimed.len() as u32);
    if rest > 0 {
        claimed.extend(match rank {
            Some(rank) => claim_due_ranked(conn, now, lease_until, rest, rank).await?,
            None => claim_due(conn, now, lease_until, rest).await?,
        });
    }
    Ok(claimed)
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
         ORDER BY next_poll_at LIMIT $2 FOR UPDATE SKIP LOCKED",
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
    let claimed = sqlx::query_as::<_, ClaimedVideoRow>(concat!(
        "WITH leased AS (\
           UPDATE videos SET next_poll_at = $1, lease_until = $1 \
           FROM UNNEST($3::bigint[]) WITH ORDINALITY AS c (id, n) \
           WHERE videos.id = c.id AND videos.state = 'active' AND videos.next_poll_at <= $2 \
           RETURNING videos.*, c.n) \
         SELECT ",
        claimed_columns!(),
        " FROM leased ORDER BY n"
    ))
    .bind(lease_until.0)
    .bind(now.0)
    .bind(&chosen)
    .fetch_all(conn)
    .await?;
    Ok(claimed.into_iter().map(ClaimedVideo::from).collect())
}

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

/// The join of [`record_polls`]: each element finds its video by id, and
/// only a video still active under the same lease is changed. A row
/// another transaction is changing is waited for and re-checked, so a
/// lease lost meanwhile (a cancel, another claim's result) discards the
/// result.
macro_rules! recorded_polls_from {
    () => {
        concat!(
            "FROM ",
            unnest_polls!(),
            " WHERE videos.id = u.rowid AND videos.state = 'active' \
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

/// The columns a still-active result sets for the schedule. A push that
/// arrived after the claim (`hinted_at > claimed_at`) was not answered by
/// this poll, whose request may have left before the video finished: it
/// stays pending and brings the next poll forward to the poll's time plus
/// `min_interval`. An earlier push is answered and cleared by a poll that
/// got the video's status; a failed poll (an error, not found yet: its
/// `error_streak` grew) answered nothing, so the push stays pending for the
/// retry, which the error backoff schedules as usual.
///
/// SQLite's `MIN(next, repoll)` is NULL when `next` is; `LEAST` would
/// return `repoll`, hence the explicit case (an active result always has
/// a next poll, so this only keeps the two backends identical).
macro_rules! ongoing_schedule_columns {
    () => {
        "next_poll_at = CASE WHEN videos.hinted_at > u.claimed_at \
             THEN CASE WHEN u.next_poll_at IS NOT NULL \
                  THEN LEAST(u.next_poll_at, u.repoll_after_push_at) END \
             ELSE u.next_poll_at END, \
         hinted_at = CASE WHEN videos.hinted_at > u.claimed_at OR u.error_streak > 0 \
             THEN videos.hinted_at END"
    };
}

/// The columns a terminal result sets for the record: the push this poll
/// answered stays as the mark that the completion was learned by push;
/// without one (or with only a later one) the column is cleared.
macro_rules! ending_columns {
    () => {
        "next_poll_at = NULL, \
         hinted_at = CASE WHEN videos.hinted_at <= u.claimed_at THEN videos.hinted_at END, \
         state = u.state, reason = u.reason, event_id = u.event_id, \
         terminal_at = u.terminal_at"
    };
}

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
    upstream_status: Vec<Option<&'a str>>,
    video_url: Vec<Option<&'a str>>,
    cover_url: Vec<Option<&'a str>>,
    created_at: Vec<Option<i64>>,
    duration: Vec<Option<f64>>,
    error_code: Vec<Option<&'a str>>,
    error_message: Vec<Option<&'a str>>,
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
        self.upstream_status.push(update.upstream_status.as_deref());
        self.video_url.push(update.fields.video_url.as_deref());
        self.cover_url.push(update.fields.cover_url.as_deref());
        self.created_at.push(update.fields.created_at);
        self.duration.push(update.fields.duration);
        self.error_code.push(update.fields.error_code.as_deref());
        self.error_message
            .push(update.fields.error_message.as_deref());
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

    /// Whether no result was appended.
    fn is_empty(&self) -> bool {
        self.rowid.is_empty()
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

/// [`record_polls`] for results of distinct videos.
async fn record_distinct_polls(
    conn: &mut PgConnection,
    updates: &[&PollUpdate],
) -> Result<Vec<bool>, StoreError> {
    // Most results leave the video active: their statement does not assign
    // `state` or `event_id`, as on SQLite.
    let mut ongoing = PollColumns::default();
    let mut ending = PollColumns::default();
    for update in updates {
        if update.terminal.is_some() {
            ending.push(update);
        } else {
            ongoing.push(update);
        }
    }
    let mut applied: Vec<i64> = Vec::with_capacity(updates.len());
    if !ongoing.is_empty() {
        applied.extend(
            ongoing
                .apply(
                    conn,
                    concat!(
                        "UPDATE videos SET ",
                        poll_result_columns!(),
                        ", ",
                        ongoing_schedule_columns!(),
                        " ",
                        recorded_polls_from!(),
                        " RETURNING videos.id"
                    ),
                )
                .await?,
        );
    }
    if !ending.is_empty() {
        applied.extend(
            ending
                .apply(
                    conn,
                    concat!(
                        "UPDATE videos SET ",
                        poll_result_columns!(),
                        ", ",
                        ending_columns!(),
                        " ",
                        recorded_polls_from!(),
                        " RETURNING videos.id"
                    ),
                )
                .await?,
        );
    }
    let applied: HashSet<i64> = applied.into_iter().collect();
    let applied: Vec<bool> = updates
        .iter()
        .map(|update| applied.contains(&update.video_rowid))
        .collect();

    // The transition and outbox rows of the applied results, one array per
    // column.
    let mut transitions: (Vec<i64>, Vec<&str>, Vec<Option<&str>>, Vec<&str>, Vec<i64>) =
        Default::default();
    let mut deliveries: (Vec<i64>, Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for update in updates
        .iter()
        .zip(&applied)
        .filter_map(|(u, &ok)| ok.then_some(u))
    {
        for t in &update.transitions {
            transitions.0.push(update.video_rowid);
            transitions.1.push(t.kind.as_str());
            transitions.2.push(t.from.as_deref());
            transitions.3.push(&t.to);
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
/// it (see `ongoing_schedule_columns`). So however many pushes arrive, a
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
        let due_at: Option<(Option<i64>,)> = sqlx::query_as(
            "UPDATE videos SET hinted_at = GREATEST(COALESCE(hinted_at, $2), $2), \
               next_poll_at = CASE WHEN lease_until IS NULL AND next_poll_at IS NOT NULL \
                 THEN LEAST(next_poll_at::numeric, \
                            GREATEST($2::numeric, COALESCE(polled_at::numeric + $3, $2)))::bigint \
                 ELSE next_poll_at END \
             WHERE video_id = $1 AND state = 'active' RETURNING next_poll_at",
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

/// Hands a claimed video back unpolled, if the claim still holds its lease.
pub(crate) async fn release(conn: &mut PgConnection, release: &Release) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE videos SET next_poll_at = $1, lease_until = NULL \
         WHERE id = $2 AND state = 'active' AND lease_until = $3",
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
           WHERE state = 'pending' AND next_attempt_at <= $2 ORDER BY next_attempt_at \
           LIMIT $3 FOR UPDATE SKIP LOCKED), \
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
    let applied = sqlx::query(
        "UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, \
                lease_until = NULL, last_status = $3, last_error = $4, reason = $5, \
                updated_at = $6 \
         WHERE id = $7 AND state = 'pending' AND lease_until = $8",
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
             VALUES ($1, $2, $3, $4, $5)",
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
    let mut targets: Vec<&str> = configured.iter().map(String::as_str).collect();
    if let Some(own) = callback_url.as_deref()
        && !targets.contains(&own)
    {
        targets.push(own);
    }
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
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
         WHERE video_rowid = $2 AND state = 'pending' AND lease_until IS NULL \
           AND next_attempt_at > $1",
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
    conn: &mut PgConnection,
    release: &DeliveryRelease,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $1, lease_until = NULL \
         WHERE id = $2 AND state = 'pending' AND lease_until = $3",
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
