//! The group-commit writer: one task, on a connection of its own, that owns
//! every write.
//!
//! With `synchronous=FULL` each commit costs an fsync, which caps a naive
//! one-transaction-per-request design at a few hundred requests per second.
//! Instead, requests queue on a channel; the writer takes everything queued
//! (up to [`MAX_BATCH`]), applies it in ONE transaction, commits once, and
//! only then answers each caller. Durability is unchanged (nobody is answered
//! before their data is on disk) while the fsync cost is shared by the batch.
//!
//! Within the transaction, neighbouring enqueues and neighbouring poll
//! results are each applied by one set-based statement (see
//! [`mutations`]), so a batch costs a handful of statements, not one or
//! more per request.
//!
//! If the shared transaction fails, each operation is retried in its own
//! transaction so one bad request cannot fail its neighbours.
//!
//! Before writing and again after committing, the writer checks that the
//! configured path still names the database it has open, and `-wal` and
//! `-shm` the files it has open: a commit to a file that was deleted or
//! replaced is lost for good, so its callers get an error, never an
//! acknowledgement. Every commit's outcome is recorded in the
//! store's [`Health`], which readiness reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection as _, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tracing::{instrument, warn};

use super::health::{Health, Unready};
use super::mutations;
use super::records::{
    CancelOutcome, EnqueueOutcome, HintOutcome, NewVideo, PushHint, RedeliverOutcome,
};
use super::{Store, StoreError};
use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryRelease};
use crate::domain::poll::{ClaimedVideo, PollUpdate, Ranker, Release};
use crate::domain::{Millis, VideoId};

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
    /// Lease up to `limit` videos due at `now` until `lease_until`.
    Claim {
        now: Millis,
        lease_until: Millis,
        limit: u32,
        rank: Option<Ranker>,
    },
    /// Record one poll's result.
    RecordPoll(Box<PollUpdate>),
    /// Hand claimed videos back unpolled.
    Release(Vec<Release>),
    /// Lease up to `limit` deliveries due at `now` until `lease_until`.
    ClaimDeliveries {
        now: Millis,
        lease_until: Millis,
        limit: u32,
    },
    /// Record one delivery attempt.
    RecordAttempt(AttemptRecord),
    /// Hand claimed deliveries back unattempted.
    ReleaseDeliveries(Vec<DeliveryRelease>),
    /// Queue a terminal video's event again.
    Redeliver {
        video_id: VideoId,
        configured: Vec<String>,
    },
    /// Rewrite the readiness probe's row (a real commit).
    Probe,
    /// Apply a verified push.
    Hint(PushHint),
}

/// The result of one [`WriteOp`].
#[derive(Debug)]
enum WriteResult {
    /// Per-video outcome of an enqueue, in request order.
    Enqueued(Vec<EnqueueOutcome>),
    /// Outcome of a cancel.
    Cancel(CancelOutcome),
    /// The claimed videos.
    Claimed(Vec<ClaimedVideo>),
    /// Whether the poll result was recorded (false: the lease was lost).
    Recorded(bool),
    /// Leases handed back.
    Released,
    /// The claimed deliveries.
    ClaimedDeliveries(Vec<ClaimedDelivery>),
    /// Whether the attempt was recorded (false: the lease was lost).
    RecordedAttempt(bool),
    /// What a redelivery did.
    Redelivered(RedeliverOutcome),
    /// The probe row was written.
    Probed,
    /// What a push did.
    Hinted(HintOutcome),
}

impl WriteResult {
    /// Whether the operation changed the database. A commit that changed
    /// nothing (a claim with nothing due) succeeds even on a full disk, so
    /// only a changing one shows that storage failures are over.
    fn changed(&self) -> bool {
        match self {
            WriteResult::Enqueued(outcomes) => outcomes
                .iter()
                .any(|outcome| matches!(outcome, EnqueueOutcome::Created { .. })),
            WriteResult::Cancel(outcome) => matches!(outcome, CancelOutcome::Cancelled),
            WriteResult::Claimed(videos) => !videos.is_empty(),
            WriteResult::Recorded(applied) | WriteResult::RecordedAttempt(applied) => *applied,
            WriteResult::Released | WriteResult::Probed => true,
            WriteResult::ClaimedDeliveries(deliveries) => !deliveries.is_empty(),
            WriteResult::Redelivered(outcome) => {
                matches!(outcome, RedeliverOutcome::Queued { .. })
            }
            WriteResult::Hinted(outcome) => {
                matches!(outcome, HintOutcome::Hinted { .. } | HintOutcome::Adopted)
            }
        }
    }
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
    /// The store's health record, which the writer task updates.
    health: Arc<Health>,
    /// Held by the readiness check that probes: concurrent checks wait for
    /// its probe and reuse its success instead of each writing.
    probe_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Writer {
    /// Starts the writer task on a connection of its own to `store`. It
    /// stops once every handle is dropped and the queue is drained; await the
    /// returned handle to know the last commit has happened.
    pub async fn start(store: &Store) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let conn = store.dedicated_connection().await?;
        Ok(Self::start_on(store, conn))
    }

    /// Starts the writer task on `conn`.
    fn start_on(store: &Store, conn: SqliteConnection) -> (Self, tokio::task::JoinHandle<()>) {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(run(store.clone(), conn, queue));
        let health = store.health().clone();
        let probe_turn = Arc::default();
        (
            Self {
                requests,
                health,
                probe_turn,
            },
            task,
        )
    }

    /// Whether the database can take writes now, for `/readyz`: the path
    /// still names the open file, SQLite has not reported corruption, no
    /// write failed for want of storage lately (see
    /// [`STORAGE_FAILURE_HOLD`](super::health::STORAGE_FAILURE_HOLD)), and
    /// a probe write commits within `limit`.
    ///
    /// The probe is a real write (a bare write lock taken and released
    /// passes on a full disk or a read-only file), and it goes through the
    /// writer's queue like any write, so it also proves the writer makes
    /// progress.
    ///
    /// A probe that committed answers for the checks of the next second
    /// ([`PROBE_REUSE`](super::health::PROBE_REUSE)): at most one probe
    /// write per second however many `/readyz` calls arrive. The checks
    /// without writing are made on every call, and a failed probe or write
    /// is never reused.
    #[instrument(skip_all, level = "debug")]
    pub async fn readiness(&self, limit: Duration) -> Result<(), Unready> {
        self.readiness_at(limit, Instant::now()).await
    }

    /// [`Writer::readiness`] for a check made at `now`.
    async fn readiness_at(&self, limit: Duration, now: Instant) -> Result<(), Unready> {
        self.health.known_problem()?;
        let probe = async {
            // One probe at a time: a check arriving while one runs waits
            // for it, then finds its success fresh.
            let _turn = self.probe_turn.lock().await;
            if self.health.probe_is_fresh(now) {
                return Ok(());
            }
            self.submit(WriteOp::Probe).await?;
            self.health.probe_succeeded(now);
            Ok(())
        };
        match tokio::time::timeout(limit, probe).await {
            Err(_) => Err(Unready::Unresponsive {
                limit,
                last_failure: self.health.last_failure(),
            }),
            Ok(Ok(())) => Ok(()),
            Ok(Err(StoreError::FileLost(problem))) => Err(Unready::File(problem)),
            // The writer recorded a corruption report already, if that was it.
            Ok(Err(err)) => Err(self
                .health
                .known_problem()
                .err()
                .unwrap_or_else(|| Unready::WriteFailed(err.to_string()))),
        }
    }

    /// Tracks `videos`; returns, once committed, whether each was new.
    pub async fn enqueue(&self, videos: Vec<NewVideo>) -> Result<Vec<EnqueueOutcome>, StoreError> {
        match self.submit(WriteOp::Enqueue(videos)).await? {
            WriteResult::Enqueued(outcomes) => Ok(outcomes),
            other => unreachable!("enqueue answered with {other:?}"),
        }
    }

    /// Leases up to `limit` videos due at `now` until `lease_until`, most
    /// overdue first.
    pub async fn claim_due(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ClaimedVideo>, StoreError> {
        self.claim_due_ranked(now, lease_until, limit, None).await
    }

    /// Like [`Writer::claim_due`]; when more videos are due than `limit`
    /// and a `rank` is given, takes the ones it scores highest among the
    /// most overdue.
    pub async fn claim_due_ranked(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
        rank: Option<Ranker>,
    ) -> Result<Vec<ClaimedVideo>, StoreError> {
        match self
            .submit(WriteOp::Claim {
                now,
                lease_until,
                limit,
                rank,
            })
            .await?
        {
            WriteResult::Claimed(videos) => Ok(videos),
            other => unreachable!("claim answered with {other:?}"),
        }
    }

    /// Applies a verified push (see `mutations::hint`).
    pub async fn hint(&self, hint: PushHint) -> Result<HintOutcome, StoreError> {
        match self.submit(WriteOp::Hint(hint)).await? {
            WriteResult::Hinted(outcome) => Ok(outcome),
            other => unreachable!("hint answered with {other:?}"),
        }
    }

    /// Records a poll result; `false` when the claim's lease was lost and
    /// the result was discarded.
    pub async fn record_poll(&self, update: PollUpdate) -> Result<bool, StoreError> {
        match self.submit(WriteOp::RecordPoll(Box::new(update))).await? {
            WriteResult::Recorded(applied) => Ok(applied),
            other => unreachable!("record answered with {other:?}"),
        }
    }

    /// Hands claimed videos back unpolled.
    pub async fn release(&self, releases: Vec<Release>) -> Result<(), StoreError> {
        if releases.is_empty() {
            return Ok(());
        }
        match self.submit(WriteOp::Release(releases)).await? {
            WriteResult::Released => Ok(()),
            other => unreachable!("release answered with {other:?}"),
        }
    }

    /// Leases up to `limit` due deliveries with their events.
    pub async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        match self
            .submit(WriteOp::ClaimDeliveries {
                now,
                lease_until,
                limit,
            })
            .await?
        {
            WriteResult::ClaimedDeliveries(deliveries) => Ok(deliveries),
            other => unreachable!("delivery claim answered with {other:?}"),
        }
    }

    /// Hands claimed deliveries back unattempted.
    pub async fn release_deliveries(
        &self,
        releases: Vec<DeliveryRelease>,
    ) -> Result<(), StoreError> {
        if releases.is_empty() {
            return Ok(());
        }
        match self.submit(WriteOp::ReleaseDeliveries(releases)).await? {
            WriteResult::Released => Ok(()),
            other => unreachable!("delivery release answered with {other:?}"),
        }
    }

    /// Records one delivery attempt; `false` when the lease was lost.
    pub async fn record_attempt(&self, attempt: AttemptRecord) -> Result<bool, StoreError> {
        match self.submit(WriteOp::RecordAttempt(attempt)).await? {
            WriteResult::RecordedAttempt(applied) => Ok(applied),
            other => unreachable!("attempt answered with {other:?}"),
        }
    }

    /// Queues a terminal video's event again to the `configured` URLs and
    /// its own callback URL, with the same event id.
    pub async fn redeliver(
        &self,
        video_id: VideoId,
        configured: Vec<String>,
    ) -> Result<RedeliverOutcome, StoreError> {
        match self
            .submit(WriteOp::Redeliver {
                video_id,
                configured,
            })
            .await?
        {
            WriteResult::Redelivered(outcome) => Ok(outcome),
            other => unreachable!("redeliver answered with {other:?}"),
        }
    }

    /// Cancels an active video; returns, once committed, what happened.
    pub async fn cancel(&self, video_id: VideoId) -> Result<CancelOutcome, StoreError> {
        match self.submit(WriteOp::Cancel(video_id)).await? {
            WriteResult::Cancel(outcome) => Ok(outcome),
            other => unreachable!("cancel answered with {other:?}"),
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
async fn run(store: Store, mut conn: SqliteConnection, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if commit_batch(&mut conn, &mut batch, store.health()).await == Connection::Suspect {
            conn = reconnect(&store, conn).await;
        }
    }
    if let Err(err) = conn.close().await {
        warn!(error = %err, "closing the writer's connection failed");
    }
}

/// What a batch's outcome says about the writer's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Fine to keep using.
    Sound,
    /// A database-wide failure happened on it.
    Suspect,
}

/// After a database-wide failure, a fresh connection: when SQLite rolls a
/// transaction back on its own (a full disk, an I/O error), sqlx may still
/// count it as open and refuse every later `BEGIN`, which would fail every
/// write until a restart. Keeps the old connection if no new one opens.
async fn reconnect(store: &Store, old: SqliteConnection) -> SqliteConnection {
    match store.dedicated_connection().await {
        Ok(fresh) => {
            if let Err(err) = old.close().await {
                warn!(error = %err, "closing the writer's failed connection failed");
            }
            fresh
        }
        Err(err) => {
            warn!(error = %err, "cannot reopen the database; keeping the current connection");
            old
        }
    }
}

/// Answers every request of `batch` with `err`.
fn refuse_all(batch: &mut Vec<Request>, err: impl Fn() -> StoreError) {
    for request in batch.drain(..) {
        let _ = request.reply.send(Err(err()));
    }
}

/// Applies `batch` in one transaction and answers every caller; on failure,
/// falls back to one transaction per request.
#[instrument(skip_all, level = "debug", fields(size = batch.len()))]
async fn commit_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Request>,
    health: &Health,
) -> Connection {
    // Nothing is written to a file the path no longer names: it would be
    // lost, and if the file is renamed back the writes would reappear
    // although their callers were refused. (`check_file` logs the problem
    // once; the refusals themselves are not logged.)
    if let Err(problem) = health.check_file() {
        refuse_all(batch, || StoreError::FileLost(problem.clone()));
        return Connection::Sound;
    }
    let shared = async {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let ops: Vec<&WriteOp> = batch.iter().map(|request| &request.op).collect();
        let mut results = Vec::with_capacity(ops.len());
        let mut rest = &ops[..];
        while !rest.is_empty() {
            let run = set_run_len(rest);
            results.extend(apply_run(&mut tx, &rest[..run]).await?);
            rest = &rest[run..];
        }
        tx.commit().await?;
        Ok::<_, StoreError>(results)
    }
    .await;

    match shared {
        Ok(results) => {
            // The file may have been removed or replaced while the
            // transaction ran: then the commit went to a file the next start
            // will not open, and nobody may be told their write is stored.
            if let Err(problem) = health.check_file() {
                refuse_all(batch, || StoreError::FileLost(problem.clone()));
                return Connection::Sound;
            }
            health.write_succeeded(results.iter().any(WriteResult::changed));
            for (request, result) in batch.drain(..).zip(results) {
                // The caller may have gone away (client disconnected); the
                // write stands regardless.
                let _ = request.reply.send(Ok(result));
            }
            Connection::Sound
        }
        Err(err) if batch.len() == 1 || !is_request_specific(&err) => {
            // A locked, read-only or full database fails every request the
            // same way: answer them all now rather than retrying each alone
            // (which would wait out the busy timeout once per request).
            warn!(error = %err, requests = batch.len(), "write failed");
            let message = err.to_string();
            let specific = is_request_specific(&err);
            if !specific && let StoreError::Database(cause) = &err {
                health.write_failed(cause, &message);
            }
            refuse_all(batch, || StoreError::Unavailable(message.clone()));
            if specific {
                Connection::Sound
            } else {
                Connection::Suspect
            }
        }
        Err(err) => {
            warn!(error = %err, "batched write failed; retrying each request alone");
            let mut answers = Vec::with_capacity(batch.len());
            for request in batch.drain(..) {
                let result = async {
                    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                    let mut result = apply_run(&mut tx, &[&request.op]).await?;
                    tx.commit().await?;
                    Ok(result.pop().expect("one result per operation"))
                }
                .await;
                answers.push((request, result));
            }
            // As above: no acknowledgement for commits to a lost file.
            // A request that failed alone for a database-wide reason (the
            // disk filled between the shared try and this one) counts as a
            // failed write for readiness, like a failed shared batch.
            for (_, result) in &answers {
                if let Err(err @ StoreError::Database(cause)) = result
                    && !is_request_specific(err)
                {
                    health.write_failed(cause, &err.to_string());
                }
            }
            let lost = health.check_file().err();
            if lost.is_none() {
                let changed = answers
                    .iter()
                    .any(|(_, result)| result.as_ref().is_ok_and(WriteResult::changed));
                if answers.iter().any(|(_, result)| result.is_ok()) {
                    health.write_succeeded(changed);
                }
            }
            for (request, result) in answers {
                let result = match (&lost, result) {
                    (Some(problem), _) => Err(StoreError::FileLost(problem.clone())),
                    (None, result) => result,
                };
                let _ = request.reply.send(result);
            }
            Connection::Sound
        }
    }
}

/// Whether `err` can be caused by one request of a batch (a constraint the
/// request's data violates) rather than by the database as a whole.
fn is_request_specific(err: &StoreError) -> bool {
    match err {
        StoreError::Database(sqlx::Error::Database(db)) => {
            !matches!(db.kind(), sqlx::error::ErrorKind::Other)
        }
        StoreError::Database(sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }) => true,
        _ => false,
    }
}

/// Most videos one enqueue statement carries: bounds the bound JSON array
/// (a full queue of batch requests would otherwise be one huge statement).
const MAX_VIDEOS_PER_STATEMENT: usize = 4096;

/// How many operations at the head of `ops` are applied by one set-based
/// statement: a run of enqueues (up to [`MAX_VIDEOS_PER_STATEMENT`] videos),
/// of poll results, or of readiness probes (concurrent `/readyz` calls share
/// one row write); any other operation runs alone.
///
/// Only neighbours are grouped, so operations still take effect in the
/// order they were queued.
fn set_run_len(ops: &[&WriteOp]) -> usize {
    match ops.first() {
        Some(WriteOp::Enqueue(first)) => {
            let mut videos = first.len();
            1 + ops[1..]
                .iter()
                .take_while(|op| match op {
                    WriteOp::Enqueue(more) if videos + more.len() <= MAX_VIDEOS_PER_STATEMENT => {
                        videos += more.len();
                        true
                    }
                    _ => false,
                })
                .count()
        }
        Some(WriteOp::RecordPoll(_)) => {
            1 + ops[1..]
                .iter()
                .take_while(|op| matches!(op, WriteOp::RecordPoll(_)))
                .count()
        }
        Some(WriteOp::Probe) => {
            1 + ops[1..]
                .iter()
                .take_while(|op| matches!(op, WriteOp::Probe))
                .count()
        }
        Some(_) => 1,
        None => 0,
    }
}

/// Applies a run chosen by [`set_run_len`] inside the caller's transaction;
/// one result per operation, in order.
async fn apply_run(
    conn: &mut SqliteConnection,
    run: &[&WriteOp],
) -> Result<Vec<WriteResult>, StoreError> {
    match run.first() {
        Some(WriteOp::Enqueue(_)) => {
            let videos: Vec<&NewVideo> = run
                .iter()
                .flat_map(|op| match op {
                    WriteOp::Enqueue(videos) => videos.as_slice(),
                    _ => &[],
                })
                .collect();
            let mut outcomes = mutations::insert_videos(conn, &videos, Millis::now())
                .await?
                .into_iter();
            Ok(run
                .iter()
                .map(|op| {
                    let count = match op {
                        WriteOp::Enqueue(videos) => videos.len(),
                        _ => 0,
                    };
                    WriteResult::Enqueued(outcomes.by_ref().take(count).collect())
                })
                .collect())
        }
        Some(WriteOp::RecordPoll(_)) => {
            let updates: Vec<&PollUpdate> = run
                .iter()
                .filter_map(|op| match op {
                    WriteOp::RecordPoll(update) => Some(update.as_ref()),
                    _ => None,
                })
                .collect();
            let applied = mutations::record_polls(conn, &updates).await?;
            Ok(applied.into_iter().map(WriteResult::Recorded).collect())
        }
        Some(WriteOp::Probe) => {
            mutations::touch_probe(conn, Millis::now()).await?;
            Ok(run.iter().map(|_| WriteResult::Probed).collect())
        }
        Some(op) => Ok(vec![apply(conn, op).await?]),
        None => Ok(Vec::new()),
    }
}

/// Applies one operation that has no set-based form inside the caller's
/// transaction.
async fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> Result<WriteResult, StoreError> {
    let now = Millis::now();
    match op {
        WriteOp::Enqueue(_) | WriteOp::RecordPoll(_) | WriteOp::Probe => {
            unreachable!("enqueues, poll results and probes are applied by apply_run")
        }
        WriteOp::Cancel(video_id) => Ok(WriteResult::Cancel(
            mutations::cancel_video(conn, video_id, now).await?,
        )),
        WriteOp::Claim {
            now,
            lease_until,
            limit,
            rank,
        } => Ok(WriteResult::Claimed(
            mutations::claim(conn, *now, *lease_until, *limit, rank.as_ref()).await?,
        )),
        WriteOp::Hint(hint) => Ok(WriteResult::Hinted(mutations::hint(conn, hint).await?)),
        WriteOp::Release(releases) => {
            for release in releases {
                mutations::release(conn, release).await?;
            }
            Ok(WriteResult::Released)
        }
        WriteOp::ClaimDeliveries {
            now,
            lease_until,
            limit,
        } => Ok(WriteResult::ClaimedDeliveries(
            mutations::claim_deliveries(conn, *now, *lease_until, *limit).await?,
        )),
        WriteOp::ReleaseDeliveries(releases) => {
            for release in releases {
                mutations::release_delivery(conn, release).await?;
            }
            Ok(WriteResult::Released)
        }
        WriteOp::RecordAttempt(attempt) => Ok(WriteResult::RecordedAttempt(
            mutations::record_attempt(conn, attempt).await?,
        )),
        WriteOp::Redeliver {
            video_id,
            configured,
        } => Ok(WriteResult::Redelivered(
            mutations::redeliver(conn, video_id, configured, now).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;
    use crate::store::file::{FileProblem, Part};

    async fn open(dir: &std::path::Path) -> Store {
        let config =
            DatabaseConfig::parse(&format!("sqlite://{}/relay.db", dir.display())).unwrap();
        Store::open(&config).await.unwrap()
    }

    fn videos(prefix: &str, count: usize, metadata_bytes: usize) -> Vec<NewVideo> {
        (0..count)
            .map(|i| NewVideo {
                video_id: VideoId::parse(&format!("{prefix}-{i}")).unwrap(),
                callback_url: None,
                metadata: Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(metadata_bytes))),
                first_poll_at: Millis(0),
            })
            .collect()
    }

    /// A database that cannot be written (here its writer's connection is
    /// read-only, as when the file's permissions changed before the writer
    /// reconnected) although its write lock can be taken: readiness fails,
    /// with SQLite's reason, until a write succeeds again.
    #[tokio::test]
    async fn readiness_fails_while_writes_fail_and_recovers_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let mut conn = store.dedicated_connection().await.unwrap();
        sqlx::query("PRAGMA query_only = ON")
            .execute(&mut conn)
            .await
            .unwrap();
        let (writer, task) = Writer::start_on(&store, conn);
        // The write lock is still there for the taking: the old readiness
        // check (take it and release it on a pool connection) passes.
        let mut other = store.pool().acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *other)
            .await
            .unwrap();
        sqlx::query("ROLLBACK").execute(&mut *other).await.unwrap();
        drop(other);

        let unready = writer.readiness(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(unready.reason(), "write_failed", "{unready}");
        assert!(unready.to_string().contains("readonly"), "{unready}");
        assert!(store.health().last_failure().is_some());

        // After a database-wide failure the writer reconnects (writable
        // again, like a disk with room again): the next write succeeds and
        // readiness follows it.
        writer.enqueue(videos("v", 1, 10)).await.unwrap();
        assert_eq!(store.health().last_failure(), None);
        assert_eq!(writer.readiness(Duration::from_secs(5)).await, Ok(()));
        drop(writer);
        task.await.unwrap();
        store.close().await;
    }

    #[test]
    fn neighbouring_probes_share_one_write_and_keep_their_place() {
        let cancel = WriteOp::Cancel(VideoId::parse("v").unwrap());
        let ops = [
            &WriteOp::Probe,
            &WriteOp::Probe,
            &WriteOp::Probe,
            &cancel,
            &WriteOp::Probe,
        ];
        assert_eq!(set_run_len(&ops), 3);
        assert_eq!(set_run_len(&ops[3..]), 1);
        assert_eq!(set_run_len(&ops[4..]), 1);
    }

    /// The file is removed while the writer's transaction waits for the
    /// write lock, that is after the check before writing: the commit lands
    /// in the unlinked file, and the caller is refused all the same.
    #[tokio::test(flavor = "current_thread")]
    async fn a_commit_to_a_file_removed_during_the_transaction_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let (writer, task) = Writer::start(&store).await.unwrap();
        let mut blocker = store.pool().acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .unwrap();

        let mut enqueue = Box::pin(writer.enqueue(videos("v", 1, 10)));
        // The first poll queues the request.
        assert!(futures_util::poll!(enqueue.as_mut()).is_pending());
        assert_eq!(writer.requests.capacity(), QUEUE_DEPTH - 1);
        // On this single-threaded runtime the writer runs only while the
        // test yields, and it yields only at its `BEGIN`: once the request
        // has left the queue, the check before writing has passed.
        let mut yields = 0;
        while writer.requests.capacity() < QUEUE_DEPTH {
            tokio::task::yield_now().await;
            yields += 1;
            assert!(yields < 10_000, "the writer never took the request");
        }
        let path = dir.path().join("relay.db");
        std::fs::remove_file(&path).unwrap();
        sqlx::query("ROLLBACK")
            .execute(&mut *blocker)
            .await
            .unwrap();
        drop(blocker);

        let answer = enqueue.await;
        match answer {
            Err(StoreError::FileLost(FileProblem::Removed {
                part: Part::Database,
                path: named,
            })) => {
                assert_eq!(named, path)
            }
            other => panic!("acknowledged or wrong error: {other:?}"),
        }
        drop(writer);
        task.await.unwrap();
        store.close().await;
    }

    /// How many probes SQLite's readiness row has taken.
    async fn probe_writes(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT COALESCE((SELECT writes FROM readiness_probe), 0)")
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    /// A hundred readiness checks within a second, one after the other or
    /// all at once, make one probe write; a check a second after the probe
    /// writes again.
    #[tokio::test]
    async fn readiness_writes_at_most_one_probe_per_second() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let (writer, task) = Writer::start(&store).await.unwrap();
        let limit = Duration::from_secs(5);
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);

        for i in 0..100 {
            writer.readiness_at(limit, at(i * 9)).await.unwrap();
        }
        assert_eq!(probe_writes(&store).await, 1, "one after the other");

        writer.readiness_at(limit, at(1000)).await.unwrap();
        assert_eq!(probe_writes(&store).await, 2, "a second later");

        let checks = (0..100).map(|_| writer.readiness_at(limit, at(2500)));
        for ready in futures_util::future::join_all(checks).await {
            assert_eq!(ready, Ok(()));
        }
        assert_eq!(probe_writes(&store).await, 3, "all at once");
        drop(writer);
        task.await.unwrap();
        store.close().await;
    }

    /// SQLite keeps `-wal` and `-shm` (same device and inode) while the
    /// writer's connection is open, whatever else happens: checkpoints
    /// (automatic ones, and one that truncates the log), the pool closing
    /// all its connections, another process-like store opening and closing.
    /// Only the last connection's close removes them, so the check that
    /// refuses writes after they are deleted never fires by itself.
    #[tokio::test]
    async fn the_log_files_keep_their_identity_while_the_writer_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let (writer, task) = Writer::start(&store).await.unwrap();
        // Past the automatic checkpoint (1000 pages): the log is
        // checkpointed and then rewritten from its start.
        for batch in 0..10 {
            writer
                .enqueue(videos(&format!("b{batch}"), 200, 2000))
                .await
                .unwrap();
        }
        assert_eq!(store.health().check_file(), Ok(()));

        // Another store (as the CLI opens): truncating checkpoint with a
        // journal size limit, then closing its connections.
        let other = open(dir.path()).await;
        let mut conn = other.pool().acquire().await.unwrap();
        sqlx::query("PRAGMA journal_size_limit = 0")
            .execute(&mut *conn)
            .await
            .unwrap();
        let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(busy, 0, "the checkpoint ran");
        drop(conn);
        other.close().await;
        let wal = std::fs::metadata(dir.path().join("relay.db-wal")).unwrap();
        assert_eq!(wal.len(), 0, "truncated in place");
        assert_eq!(store.health().check_file(), Ok(()));

        // Every pooled connection closes (as idle ones do after a while).
        store.pool().close().await;
        assert_eq!(store.health().check_file(), Ok(()));
        writer.enqueue(videos("after", 1, 10)).await.unwrap();
        assert_eq!(writer.readiness(Duration::from_secs(5)).await, Ok(()));

        // The writer's was the last connection: closing it removes both,
        // which the check, watching all along, reports.
        drop(writer);
        task.await.unwrap();
        assert!(!dir.path().join("relay.db-wal").exists());
        assert!(!dir.path().join("relay.db-shm").exists());
        let lost = store.health().check_file().unwrap_err();
        assert_eq!(lost.reason(), "wal_removed", "{lost}");
    }
}
