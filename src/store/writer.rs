//! The group-commit writer: one task that owns every API write.
//!
//! With `synchronous=FULL` each commit costs an fsync, which caps a naive
//! one-transaction-per-request design at a few hundred requests per second.
//! Instead, requests queue on a channel; the writer takes everything queued
//! (up to [`MAX_BATCH`]), applies it in ONE transaction, commits once, and
//! only then answers each caller. Durability is unchanged (nobody is answered
//! before their data is on disk) while the fsync cost is shared by the batch.
//!
//! If the shared transaction fails, each operation is retried in its own
//! transaction so one bad request cannot fail its neighbours.

use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tracing::{instrument, warn};

use super::StoreError;
use super::records::{CancelOutcome, EnqueueOutcome, NewVideo};
use crate::domain::{Millis, VideoId, VideoState};

/// Most operations committed together.
const MAX_BATCH: usize = 512;

/// Requests waiting for the writer; callers wait (backpressure) beyond this.
const QUEUE_DEPTH: usize = 4096;

/// A write operation the writer can apply.
#[derive(Debug)]
enum WriteOp {
    /// Track these videos (idempotent per id).
    Enqueue(Vec<NewVideo>),
    /// Stop tracking this video.
    Cancel(VideoId),
}

/// The result of one [`WriteOp`].
#[derive(Debug)]
enum WriteResult {
    /// Per-video outcome of an enqueue, in request order.
    Enqueued(Vec<EnqueueOutcome>),
    /// Outcome of a cancel.
    Cancel(CancelOutcome),
}

/// An operation and the channel its caller waits on.
struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

/// Cheap, cloneable handle to the writer task.
#[derive(Clone, Debug)]
pub struct Writer {
    requests: mpsc::Sender<Request>,
}

impl Writer {
    /// Starts the writer task on `pool`. It stops once every handle is
    /// dropped and the queue is drained; await the returned handle to know
    /// the last commit has happened.
    pub fn spawn(pool: SqlitePool) -> (Self, tokio::task::JoinHandle<()>) {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(run(pool, queue));
        (Self { requests }, task)
    }

    /// Tracks `videos`; returns, once committed, whether each was new.
    pub async fn enqueue(&self, videos: Vec<NewVideo>) -> Result<Vec<EnqueueOutcome>, StoreError> {
        match self.submit(WriteOp::Enqueue(videos)).await? {
            WriteResult::Enqueued(outcomes) => Ok(outcomes),
            WriteResult::Cancel(_) => unreachable!("enqueue answered with a cancel result"),
        }
    }

    /// Cancels an active video; returns, once committed, what happened.
    pub async fn cancel(&self, video_id: VideoId) -> Result<CancelOutcome, StoreError> {
        match self.submit(WriteOp::Cancel(video_id)).await? {
            WriteResult::Cancel(outcome) => Ok(outcome),
            WriteResult::Enqueued(_) => unreachable!("cancel answered with an enqueue result"),
        }
    }

    async fn submit(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

/// The writer loop: drain the queue in batches until every sender is gone.
async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        commit_batch(&pool, &mut batch).await;
    }
}

/// Applies `batch` in one transaction and answers every caller; on failure,
/// falls back to one transaction per request.
#[instrument(skip_all, fields(size = batch.len()))]
async fn commit_batch(pool: &SqlitePool, batch: &mut Vec<Request>) {
    let shared = async {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::with_capacity(batch.len());
        for request in batch.iter() {
            results.push(apply(&mut tx, &request.op).await?);
        }
        tx.commit().await?;
        Ok::<_, StoreError>(results)
    }
    .await;

    match shared {
        Ok(results) => {
            for (request, result) in batch.drain(..).zip(results) {
                // The caller may have gone away (client disconnected); the
                // write stands regardless.
                let _ = request.reply.send(Ok(result));
            }
        }
        Err(err) if batch.len() == 1 => {
            warn!(error = %err, "write failed");
            let request = batch.pop().expect("batch has one request");
            let _ = request.reply.send(Err(err));
        }
        Err(err) => {
            warn!(error = %err, "batched write failed; retrying each request alone");
            for request in batch.drain(..) {
                let result = async {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let result = apply(&mut tx, &request.op).await?;
                    tx.commit().await?;
                    Ok(result)
                }
                .await;
                let _ = request.reply.send(result);
            }
        }
    }
}

/// Applies one operation inside the caller's transaction.
async fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> Result<WriteResult, StoreError> {
    let now = Millis::now();
    match op {
        WriteOp::Enqueue(videos) => {
            let mut outcomes = Vec::with_capacity(videos.len());
            for video in videos {
                outcomes.push(insert_video(conn, video, now).await?);
            }
            Ok(WriteResult::Enqueued(outcomes))
        }
        WriteOp::Cancel(video_id) => Ok(WriteResult::Cancel(
            cancel_video(conn, video_id, now).await?,
        )),
    }
}

/// Inserts a video unless its id is already tracked (then nothing changes).
pub(crate) async fn insert_video(
    conn: &mut SqliteConnection,
    video: &NewVideo,
    now: Millis,
) -> Result<EnqueueOutcome, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO videos (video_id, callback_url, metadata, enqueued_at, updated_at, next_poll_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (video_id) DO NOTHING",
    )
    .bind(video.video_id.as_str())
    .bind(video.callback_url.as_deref())
    .bind(video.metadata.as_deref())
    .bind(now.0)
    .bind(now.0)
    .bind(video.first_poll_at.0)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(if inserted == 1 {
        EnqueueOutcome::Created
    } else {
        EnqueueOutcome::Existing
    })
}

/// Moves an active video to `cancelled` with its transition row.
async fn cancel_video(
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
