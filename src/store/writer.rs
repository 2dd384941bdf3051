//! The group-commit writer: one task, on a connection of its own, that owns
//! every write.
//!
//! With `synchronous=FULL` each commit costs an fsync, which caps a naive
//! one-transaction-per-request design at a few hundred requests per second.
//! Instead, requests queue on a channel; the writer takes everything queued
//! (up to `MAX_BATCH`), applies it in ONE transaction, commits once, and
//! only then answers each caller. Durability is unchanged (nobody is answered
//! before their data is on disk) while the fsync cost is shared by the batch.
//!
//! Within the transaction, neighbouring enqueues and neighbouring poll
//! results are each applied by one set-based statement (see
//! `mutations`), so a batch costs a handful of statements, not one or
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

use sqlx::Connection as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, instrument, warn};

use super::backend::{Conn, Outbox, VideoQueue};
use super::health::{Health, Unready};
use super::postgres::Postgres;
use super::records::{
    CancelOutcome, EnqueueOutcome, HintOutcome, NewVideo, PushHint, RedeliverOutcome,
};
use super::sqlite::Sqlite;
use super::{Engine, Store, StoreError};
use crate::domain::delivery::{AttemptRecord, ClaimedDelivery, DeliveryRelease};
use crate::domain::poll::{ClaimedVideo, PollUpdate, Ranker, Release};
use crate::domain::{Millis, VideoId};

/// Most operations committed together.
const MAX_BATCH: usize = 512;

/// Requests waiting for the writer; callers wait (backpressure) beyond this.
const QUEUE_DEPTH: usize = 4096;

/// A request's reply channel, and its result between being applied and
/// the commit: nobody is answered before the batch is on disk, so each
/// operation's result waits here, typed, until then.
#[derive(Debug)]
struct Pending<T> {
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// The result of the latest application, set by [`Pending::stage`].
    staged: Option<T>,
}

impl<T: Outcome> Pending<T> {
    /// A request not applied yet, answered on `reply`.
    fn new(reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            reply,
            staged: None,
        }
    }

    /// Keeps `result` for the answer after the commit (replacing the result
    /// of an earlier, rolled-back application); returns whether it changed
    /// the database.
    fn stage(&mut self, result: T) -> bool {
        let changed = result.changed();
        self.staged = Some(result);
        changed
    }

    /// Answers with the staged result, once the transaction that produced
    /// it committed. Only operations applied in that transaction are
    /// answered this way, so a result is always staged (were none, the
    /// dropped channel would tell the caller the writer stopped: never a
    /// success without a result). The caller may have gone away (client
    /// disconnected); the write stands regardless.
    fn answer(self) {
        if let Some(result) = self.staged {
            let _ = self.reply.send(Ok(result));
        }
    }

    /// Answers with `err`; nothing this request staged was committed.
    fn refuse(self, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

/// The result of one kind of write.
trait Outcome {
    /// Whether the operation changed the database. A commit that changed
    /// nothing (a claim with nothing due) succeeds even on a full disk, so
    /// only a changing one shows that storage failures are over.
    fn changed(&self) -> bool;
}

/// Per-video outcome of an enqueue, in request order.
impl Outcome for Vec<EnqueueOutcome> {
    fn changed(&self) -> bool {
        self.iter()
            .any(|outcome| matches!(outcome, EnqueueOutcome::Created { .. }))
    }
}

impl Outcome for CancelOutcome {
    fn changed(&self) -> bool {
        matches!(self, CancelOutcome::Cancelled)
    }
}

/// The claimed videos.
impl Outcome for Vec<ClaimedVideo> {
    fn changed(&self) -> bool {
        !self.is_empty()
    }
}

/// The claimed deliveries.
impl Outcome for Vec<ClaimedDelivery> {
    fn changed(&self) -> bool {
        !self.is_empty()
    }
}

/// Whether a poll result or a delivery attempt was recorded (false: the
/// lease was lost).
impl Outcome for bool {
    fn changed(&self) -> bool {
        *self
    }
}

/// Leases handed back, or the probe row written.
impl Outcome for () {
    fn changed(&self) -> bool {
        true
    }
}

impl Outcome for RedeliverOutcome {
    fn changed(&self) -> bool {
        matches!(self, RedeliverOutcome::Queued { .. })
    }
}

impl Outcome for HintOutcome {
    fn changed(&self) -> bool {
        matches!(self, HintOutcome::Hinted { .. } | HintOutcome::Adopted)
    }
}

/// A write operation the writer can apply, with the channel its caller
/// waits on for the operation's own result type.
#[derive(Debug)]
enum WriteOp {
    /// Track these videos (idempotent per id); whether each was new.
    Enqueue {
        videos: Vec<NewVideo>,
        reply: Pending<Vec<EnqueueOutcome>>,
    },
    /// Stop tracking this video.
    Cancel {
        video_id: VideoId,
        reply: Pending<CancelOutcome>,
    },
    /// Lease up to `limit` videos due at `now` until `lease_until`.
    Claim {
        now: Millis,
        lease_until: Millis,
        limit: u32,
        rank: Option<Ranker>,
        reply: Pending<Vec<ClaimedVideo>>,
    },
    /// Record one poll's result; whether it was (false: the lease was lost).
    RecordPoll {
        update: Box<PollUpdate>,
        reply: Pending<bool>,
    },
    /// Hand claimed videos back unpolled.
    Release {
        releases: Vec<Release>,
        reply: Pending<()>,
    },
    /// Lease up to `limit` deliveries due at `now` until `lease_until`.
    ClaimDeliveries {
        now: Millis,
        lease_until: Millis,
        limit: u32,
        reply: Pending<Vec<ClaimedDelivery>>,
    },
    /// Record one delivery attempt; whether it was (false: the lease was
    /// lost).
    RecordAttempt {
        attempt: AttemptRecord,
        reply: Pending<bool>,
    },
    /// Hand claimed deliveries back unattempted.
    ReleaseDeliveries {
        releases: Vec<DeliveryRelease>,
        reply: Pending<()>,
    },
    /// Queue a terminal video's event again.
    Redeliver {
        video_id: VideoId,
        configured: Vec<String>,
        reply: Pending<RedeliverOutcome>,
    },
    /// Rewrite the readiness probe's row (a real commit).
    Probe { reply: Pending<()> },
    /// Apply a verified push.
    Hint {
        hint: PushHint,
        reply: Pending<HintOutcome>,
    },
}

impl WriteOp {
    /// Answers with the result staged by the committed transaction.
    fn answer(self) {
        match self {
            WriteOp::Enqueue { reply, .. } => reply.answer(),
            WriteOp::Cancel { reply, .. } => reply.answer(),
            WriteOp::Claim { reply, .. } => reply.answer(),
            WriteOp::RecordPoll { reply, .. } => reply.answer(),
            WriteOp::Release { reply, .. } => reply.answer(),
            WriteOp::ClaimDeliveries { reply, .. } => reply.answer(),
            WriteOp::RecordAttempt { reply, .. } => reply.answer(),
            WriteOp::ReleaseDeliveries { reply, .. } => reply.answer(),
            WriteOp::Redeliver { reply, .. } => reply.answer(),
            WriteOp::Probe { reply } => reply.answer(),
            WriteOp::Hint { reply, .. } => reply.answer(),
        }
    }

    /// Answers with `err`.
    fn refuse(self, err: StoreError) {
        match self {
            WriteOp::Enqueue { reply, .. } => reply.refuse(err),
            WriteOp::Cancel { reply, .. } => reply.refuse(err),
            WriteOp::Claim { reply, .. } => reply.refuse(err),
            WriteOp::RecordPoll { reply, .. } => reply.refuse(err),
            WriteOp::Release { reply, .. } => reply.refuse(err),
            WriteOp::ClaimDeliveries { reply, .. } => reply.refuse(err),
            WriteOp::RecordAttempt { reply, .. } => reply.refuse(err),
            WriteOp::ReleaseDeliveries { reply, .. } => reply.refuse(err),
            WriteOp::Redeliver { reply, .. } => reply.refuse(err),
            WriteOp::Probe { reply } => reply.refuse(err),
            WriteOp::Hint { reply, .. } => reply.refuse(err),
        }
    }
}

/// Cheap, cloneable handle to the writer task.
#[derive(Clone, Debug)]
pub struct Writer {
    requests: mpsc::Sender<WriteOp>,
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
        match store.engine() {
            Engine::Sqlite(db) => {
                let conn = Sqlite::writer_connection(db).await?;
                Ok(Self::start_on::<Sqlite>(store, db.clone(), conn))
            }
            Engine::Postgres(db) => {
                let conn = Postgres::writer_connection(db).await?;
                Ok(Self::start_on::<Postgres>(store, db.clone(), conn))
            }
        }
    }

    /// Starts the writer task on `conn`, a connection to `db` (which it
    /// reconnects to after a database-wide failure).
    fn start_on<D: WriterEngine>(
        store: &Store,
        db: D::Database,
        conn: Conn<D>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(run::<D>(store.health().clone(), db, conn, queue));
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
            self.submit(|reply| WriteOp::Probe { reply }).await?;
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
        self.submit(|reply| WriteOp::Enqueue { videos, reply })
            .await
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
        self.submit(|reply| WriteOp::Claim {
            now,
            lease_until,
            limit,
            rank,
            reply,
        })
        .await
    }

    /// Applies a verified push (see `mutations::hint`).
    pub async fn hint(&self, hint: PushHint) -> Result<HintOutcome, StoreError> {
        self.submit(|reply| WriteOp::Hint { hint, reply }).await
    }

    /// Records a poll result; `false` when the claim's lease was lost and
    /// the result was discarded.
    pub async fn record_poll(&self, update: PollUpdate) -> Result<bool, StoreError> {
        self.submit(|reply| WriteOp::RecordPoll {
            update: Box::new(update),
            reply,
        })
        .await
    }

    /// Hands claimed videos back unpolled.
    pub async fn release(&self, releases: Vec<Release>) -> Result<(), StoreError> {
        if releases.is_empty() {
            return Ok(());
        }
        self.submit(|reply| WriteOp::Release { releases, reply })
            .await
    }

    /// Leases up to `limit` due deliveries with their events.
    pub async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.submit(|reply| WriteOp::ClaimDeliveries {
            now,
            lease_until,
            limit,
            reply,
        })
        .await
    }

    /// Hands claimed deliveries back unattempted.
    pub async fn release_deliveries(
        &self,
        releases: Vec<DeliveryRelease>,
    ) -> Result<(), StoreError> {
        if releases.is_empty() {
            return Ok(());
        }
        self.submit(|reply| WriteOp::ReleaseDeliveries { releases, reply })
            .await
    }

    /// Records one delivery attempt; `false` when the lease was lost.
    pub async fn record_attempt(&self, attempt: AttemptRecord) -> Result<bool, StoreError> {
        self.submit(|reply| WriteOp::RecordAttempt { attempt, reply })
            .await
    }

    /// Queues a terminal video's event again to the `configured` URLs and
    /// its own callback URL, with the same event id.
    pub async fn redeliver(
        &self,
        video_id: VideoId,
        configured: Vec<String>,
    ) -> Result<RedeliverOutcome, StoreError> {
        self.submit(|reply| WriteOp::Redeliver {
            video_id,
            configured,
            reply,
        })
        .await
    }

    /// Cancels an active video; returns, once committed, what happened.
    pub async fn cancel(&self, video_id: VideoId) -> Result<CancelOutcome, StoreError> {
        self.submit(|reply| WriteOp::Cancel { video_id, reply })
            .await
    }

    /// Queues the operation `op` builds around its reply channel, and waits
    /// for its result (given only after its commit).
    async fn submit<T: Outcome>(
        &self,
        op: impl FnOnce(Pending<T>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(op(Pending::new(reply)))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

/// An engine the writer can run on: its write traits, and how to open the
/// writer's own connection.
pub(crate) trait WriterEngine: VideoQueue + Outbox {
    /// The open database the connection comes from.
    type Database: Clone + Send + Sync + 'static;

    /// Whether a batch of enqueues alone may run without an explicit
    /// transaction: true where the insert is one statement and the rest of
    /// the run only reads (PostgreSQL). SQLite's enqueue looks the ids up
    /// before it inserts, which is right only under the write lock its
    /// transaction takes first.
    const ENQUEUES_COMMIT_ALONE: bool;

    /// How long a transaction may go unanswered before it is abandoned
    /// and the connection replaced (`None`: no limit). A network server
    /// can fall silent without closing the connection.
    const TRANSACTION_LIMIT: Option<Duration>;

    /// A connection of the writer's own (outside any pool).
    fn writer_connection(
        db: &Self::Database,
    ) -> impl std::future::Future<Output = Result<Conn<Self>, StoreError>> + Send;
}

/// The writer loop: drain the queue in batches until every sender is gone.
///
/// After a database-wide failure the connection is replaced before the
/// next batch, and again before each later one for as long as no new
/// connection opens: a PostgreSQL server that went away and came back
/// leaves the old connection dead, and the first write after its return
/// must not be refused for it.
///
/// A connection that stopped answering (see
/// [`WriterEngine::TRANSACTION_LIMIT`]) is dropped at once, and new ones
/// are tried in the background, at most one a second, while every batch is
/// refused at once with that failure: a silent server must not make each
/// request wait out a connection attempt of its own.
async fn run<D: WriterEngine>(
    health: Arc<Health>,
    db: D::Database,
    conn: Conn<D>,
    mut queue: mpsc::Receiver<WriteOp>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut link = Link::<D>::Open {
        conn,
        suspect: false,
    };
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        link = match link {
            Link::Open {
                conn,
                suspect: true,
            } => {
                let (conn, suspect) = reconnect::<D>(&db, conn).await;
                Link::Open { conn, suspect }
            }
            Link::Lost(attempt) => attempt.next(&db).await,
            open => open,
        };
        match &mut link {
            Link::Open { conn, suspect } => {
                match commit_batch::<D>(conn, &mut batch, &health).await {
                    Connection::Sound => {}
                    Connection::Suspect => *suspect = true,
                    Connection::Silent(failure) => {
                        warn!(error = %failure, "the database stopped answering; opening a new connection");
                        link = Link::Lost(Reconnect::start(&db, failure, Instant::now()));
                    }
                }
            }
            Link::Lost(attempt) => {
                let message = attempt.failure.clone();
                refuse_all(&mut batch, || StoreError::Unavailable(message.clone()));
            }
        }
    }
    if let Link::Open { conn, .. } = link {
        close::<D>(conn, "closing the writer's connection failed").await;
    }
}

/// The writer's connection, or its absence after it fell silent.
enum Link<D: WriterEngine> {
    /// A connection to write on; `suspect` after a database-wide failure
    /// (replaced before the next batch if a new one opens).
    Open { conn: Conn<D>, suspect: bool },
    /// The connection stopped answering and was dropped; a new one is
    /// being opened.
    Lost(Reconnect<D>),
}

/// Opening a connection in the background after the last one fell silent.
struct Reconnect<D: WriterEngine> {
    /// Why writes are refused meanwhile (the newest failure's message).
    failure: String,
    /// The attempt under way.
    attempt: tokio::task::JoinHandle<Result<Conn<D>, StoreError>>,
    /// When the attempt started (the next one starts a second later).
    started: Instant,
}

impl<D: WriterEngine> Reconnect<D> {
    /// Starts opening a connection to `db` at `start` (or now, if that is
    /// past); `failure` is why.
    fn start(db: &D::Database, failure: String, start: Instant) -> Self {
        let db = db.clone();
        Self {
            failure,
            attempt: tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                D::writer_connection(&db).await
            }),
            started: start.max(Instant::now()),
        }
    }

    /// The link after this attempt: still this attempt while it is under
    /// way, the new connection if it opened, or else the next attempt.
    async fn next(self, db: &D::Database) -> Link<D> {
        if !self.attempt.is_finished() {
            return Link::Lost(self);
        }
        let failure = match self.attempt.await {
            Ok(Ok(conn)) => {
                info!("the database answers again on a new connection");
                return Link::Open {
                    conn,
                    suspect: false,
                };
            }
            Ok(Err(err)) => err.to_string(),
            Err(join) => join.to_string(),
        };
        Link::Lost(Self::start(db, failure, self.started + RECONNECT_SPACING))
    }
}

/// The least time between two attempts to open a connection after the
/// last one fell silent.
const RECONNECT_SPACING: Duration = Duration::from_secs(1);

/// What a batch's outcome says about the writer's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Connection {
    /// Fine to keep using.
    Sound,
    /// A database-wide failure happened on it.
    Suspect,
    /// It stopped answering (the message says how): drop it.
    Silent(String),
}

/// After a database-wide failure, a fresh connection: when SQLite rolls a
/// transaction back on its own (a full disk, an I/O error), sqlx may still
/// count it as open and refuse every later `BEGIN`, which would fail every
/// write until a restart; a PostgreSQL connection dies with its server.
/// Keeps the old connection if no new one opens, and then says it is still
/// suspect (`true`).
async fn reconnect<D: WriterEngine>(db: &D::Database, old: Conn<D>) -> (Conn<D>, bool) {
    match D::writer_connection(db).await {
        Ok(fresh) => {
            close::<D>(old, "closing the writer's failed connection failed").await;
            (fresh, false)
        }
        Err(err) => {
            warn!(error = %err, "cannot reopen the database; keeping the current connection");
            (old, true)
        }
    }
}

/// Closes `conn`, logging `failed` if that fails. A connection to a server
/// that fell silent never answers the goodbye: within the engine's
/// transaction limit it is dropped instead.
async fn close<D: WriterEngine>(conn: Conn<D>, failed: &str) {
    if let Err(err) = within_limit::<D, _>(async { Ok(conn.close().await?) }).await {
        warn!(error = %err, "{failed}");
    }
}

/// `work`, abandoned with a timed-out error after the engine's
/// [`WriterEngine::TRANSACTION_LIMIT`]. Abandoning a transaction drops it
/// unfinished: the server rolls it back, or has committed it if the
/// commit reached it, so a refused caller's write may still be stored.
/// Every write here may be repeated safely (enqueues are idempotent,
/// results and releases are conditioned on the lease), and the connection
/// is replaced before the next batch.
async fn within_limit<D: WriterEngine, T>(
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match D::TRANSACTION_LIMIT {
        Some(limit) => super::postgres::answered_within(limit, work).await,
        None => work.await,
    }
}

/// Whether `err` says the connection stopped answering (the engine's
/// limit ran out, or the kernel gave up on the connection).
fn fell_silent(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(sqlx::Error::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Answers every request of `batch` with `err`.
fn refuse_all(batch: &mut Vec<WriteOp>, err: impl Fn() -> StoreError) {
    for request in batch.drain(..) {
        request.refuse(err());
    }
}

/// Applies `batch` in one transaction and answers every caller; on failure,
/// falls back to one transaction per request.
#[instrument(skip_all, level = "debug", fields(size = batch.len()))]
async fn commit_batch<D: WriterEngine>(
    conn: &mut Conn<D>,
    batch: &mut Vec<WriteOp>,
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
    // A batch of enqueues alone is one INSERT (the look-up of ids tracked
    // already only reads): where the engine allows, it commits by itself,
    // which spares the round trips of BEGIN and COMMIT.
    let alone = D::ENQUEUES_COMMIT_ALONE
        && matches!(batch.first(), Some(WriteOp::Enqueue { .. }))
        && set_run_len(batch) == batch.len();
    let shared = within_limit::<D, _>(async {
        if alone {
            return apply_run::<D>(conn, batch).await;
        }
        let mut tx = conn.begin_with(D::BEGIN).await?;
        let mut changed = false;
        let mut rest = &mut batch[..];
        while !rest.is_empty() {
            let run = set_run_len(rest);
            let (head, tail) = rest.split_at_mut(run);
            changed |= apply_run::<D>(&mut tx, head).await?;
            rest = tail;
        }
        tx.commit().await?;
        Ok::<_, StoreError>(changed)
    })
    .await;

    match shared {
        Ok(changed) => {
            // The file may have been removed or replaced while the
            // transaction ran: then the commit went to a file the next start
            // will not open, and nobody may be told their write is stored.
            if let Err(problem) = health.check_file() {
                refuse_all(batch, || StoreError::FileLost(problem.clone()));
                return Connection::Sound;
            }
            health.write_succeeded(changed);
            for request in batch.drain(..) {
                request.answer();
            }
            Connection::Sound
        }
        Err(err) if batch.len() == 1 || !D::is_request_specific(&err) => {
            // A locked, read-only or full database fails every request the
            // same way: answer them all now rather than retrying each alone
            // (which would wait out the busy timeout once per request).
            warn!(error = %err, requests = batch.len(), "write failed");
            let message = err.to_string();
            let specific = D::is_request_specific(&err);
            if !specific && let StoreError::Database(cause) = &err {
                health.write_failed(cause, &message);
            }
            refuse_all(batch, || StoreError::Unavailable(message.clone()));
            if specific {
                Connection::Sound
            } else if fell_silent(&err) {
                Connection::Silent(message)
            } else {
                Connection::Suspect
            }
        }
        Err(err) => {
            warn!(error = %err, "batched write failed; retrying each request alone");
            // Each request again in its own transaction: a success stages
            // its result anew (what the shared attempt staged was rolled
            // back), a failure is that request's answer. After a failure
            // that concerns the whole database (the disk filled meanwhile,
            // the server fell silent) the rest are refused with it rather
            // than each waiting for the same failure.
            let mut answers = Vec::with_capacity(batch.len());
            let mut database_wide: Option<String> = None;
            let mut silent = false;
            for mut request in batch.drain(..) {
                if let Some(message) = &database_wide {
                    answers.push((request, Err(StoreError::Unavailable(message.clone()))));
                    continue;
                }
                let result = within_limit::<D, _>(async {
                    let mut tx = conn.begin_with(D::BEGIN).await?;
                    let changed =
                        apply_run::<D>(&mut tx, std::slice::from_mut(&mut request)).await?;
                    tx.commit().await?;
                    Ok(changed)
                })
                .await;
                if let Err(err) = &result
                    && !D::is_request_specific(err)
                {
                    database_wide = Some(err.to_string());
                    silent = fell_silent(err);
                }
                answers.push((request, result));
            }
            // As above: no acknowledgement for commits to a lost file.
            // A request that failed alone for a database-wide reason (the
            // disk filled between the shared try and this one) counts as a
            // failed write for readiness, like a failed shared batch.
            for (_, result) in &answers {
                if let Err(err @ StoreError::Database(cause)) = result
                    && !D::is_request_specific(err)
                {
                    health.write_failed(cause, &err.to_string());
                }
            }
            let lost = health.check_file().err();
            if lost.is_none() {
                let changed = answers.iter().any(|(_, result)| matches!(result, Ok(true)));
                if answers.iter().any(|(_, result)| result.is_ok()) {
                    health.write_succeeded(changed);
                }
            }
            for (request, result) in answers {
                match (&lost, result) {
                    (Some(problem), _) => request.refuse(StoreError::FileLost(problem.clone())),
                    (None, Ok(_)) => request.answer(),
                    (None, Err(err)) => request.refuse(err),
                }
            }
            match database_wide {
                Some(message) if silent => Connection::Silent(message),
                Some(_) => Connection::Suspect,
                None => Connection::Sound,
            }
        }
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
fn set_run_len(ops: &[WriteOp]) -> usize {
    match ops.first() {
        Some(WriteOp::Enqueue { videos: first, .. }) => {
            let mut videos = first.len();
            1 + ops[1..]
                .iter()
                .take_while(|op| match op {
                    WriteOp::Enqueue { videos: more, .. }
                        if videos + more.len() <= MAX_VIDEOS_PER_STATEMENT =>
                    {
                        videos += more.len();
                        true
                    }
                    _ => false,
                })
                .count()
        }
        Some(WriteOp::RecordPoll { .. }) => {
            1 + ops[1..]
                .iter()
                .take_while(|op| matches!(op, WriteOp::RecordPoll { .. }))
                .count()
        }
        Some(WriteOp::Probe { .. }) => {
            1 + ops[1..]
                .iter()
                .take_while(|op| matches!(op, WriteOp::Probe { .. }))
                .count()
        }
        Some(_) => 1,
        None => 0,
    }
}

/// Applies a run chosen by [`set_run_len`] inside the caller's transaction,
/// staging each operation's result; returns whether any changed the
/// database.
async fn apply_run<D: VideoQueue + Outbox>(
    conn: &mut Conn<D>,
    run: &mut [WriteOp],
) -> Result<bool, StoreError> {
    match run.first() {
        Some(WriteOp::Enqueue { .. }) => {
            let videos: Vec<&NewVideo> = run
                .iter()
                .flat_map(|op| match op {
                    WriteOp::Enqueue { videos, .. } => videos.as_slice(),
                    _ => &[],
                })
                .collect();
            let mut outcomes = D::insert_videos(conn, &videos, Millis::now())
                .await?
                .into_iter();
            let mut changed = false;
            for op in run {
                if let WriteOp::Enqueue { videos, reply } = op {
                    changed |= reply.stage(outcomes.by_ref().take(videos.len()).collect());
                }
            }
            Ok(changed)
        }
        Some(WriteOp::RecordPoll { .. }) => {
            let updates: Vec<&PollUpdate> = run
                .iter()
                .filter_map(|op| match op {
                    WriteOp::RecordPoll { update, .. } => Some(update.as_ref()),
                    _ => None,
                })
                .collect();
            let applied = D::record_polls(conn, &updates).await?;
            let mut changed = false;
            let replies = run.iter_mut().filter_map(|op| match op {
                WriteOp::RecordPoll { reply, .. } => Some(reply),
                _ => None,
            });
            for (reply, applied) in replies.zip(applied) {
                changed |= reply.stage(applied);
            }
            Ok(changed)
        }
        Some(WriteOp::Probe { .. }) => {
            D::touch_probe(conn, Millis::now()).await?;
            let mut changed = false;
            for op in run {
                if let WriteOp::Probe { reply } = op {
                    changed |= reply.stage(());
                }
            }
            Ok(changed)
        }
        Some(_) => {
            let mut changed = false;
            for op in run {
                changed |= apply::<D>(conn, op).await?;
            }
            Ok(changed)
        }
        None => Ok(false),
    }
}

/// Applies one operation inside the caller's transaction, staging its
/// result; returns whether it changed the database. (Enqueues, poll
/// results and probes are applied by [`apply_run`], alone or with their
/// neighbours.)
async fn apply<D: VideoQueue + Outbox>(
    conn: &mut Conn<D>,
    op: &mut WriteOp,
) -> Result<bool, StoreError> {
    let now = Millis::now();
    match op {
        // A run of one (boxed: the two functions call each other).
        WriteOp::Enqueue { .. } | WriteOp::RecordPoll { .. } | WriteOp::Probe { .. } => {
            Box::pin(apply_run::<D>(conn, std::slice::from_mut(op))).await
        }
        WriteOp::Cancel { video_id, reply } => {
            Ok(reply.stage(D::cancel_video(conn, video_id, now).await?))
        }
        WriteOp::Claim {
            now,
            lease_until,
            limit,
            rank,
            reply,
        } => Ok(reply.stage(
            super::backend::claim::<D>(conn, *now, *lease_until, *limit, rank.as_ref()).await?,
        )),
        WriteOp::Hint { hint, reply } => Ok(reply.stage(D::hint(conn, hint).await?)),
        WriteOp::Release { releases, reply } => {
            for release in releases.iter() {
                D::release(conn, release).await?;
            }
            Ok(reply.stage(()))
        }
        WriteOp::ClaimDeliveries {
            now,
            lease_until,
            limit,
            reply,
        } => Ok(reply.stage(D::claim_deliveries(conn, *now, *lease_until, *limit).await?)),
        WriteOp::ReleaseDeliveries { releases, reply } => {
            for release in releases.iter() {
                D::release_delivery(conn, release).await?;
            }
            Ok(reply.stage(()))
        }
        WriteOp::RecordAttempt { attempt, reply } => {
            Ok(reply.stage(D::record_attempt(conn, attempt).await?))
        }
        WriteOp::Redeliver {
            video_id,
            configured,
            reply,
        } => Ok(reply.stage(D::redeliver(conn, video_id, configured, now).await?)),
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
        let Engine::Sqlite(db) = store.engine() else {
            unreachable!("a SQLite store")
        };
        let mut conn = db.dedicated_connection().await.unwrap();
        sqlx::query("PRAGMA query_only = ON")
            .execute(&mut conn)
            .await
            .unwrap();
        let (writer, task) = Writer::start_on::<Sqlite>(&store, db.clone(), conn);
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
        let probe = || WriteOp::Probe {
            reply: Pending::new(oneshot::channel().0),
        };
        let cancel = WriteOp::Cancel {
            video_id: VideoId::parse("v").unwrap(),
            reply: Pending::new(oneshot::channel().0),
        };
        let ops = [probe(), probe(), probe(), cancel, probe()];
        assert_eq!(set_run_len(&ops), 3);
        assert_eq!(set_run_len(&ops[3..]), 1);
        assert_eq!(set_run_len(&ops[4..]), 1);
    }

    /// One request of a batch violating a constraint fails alone: the
    /// shared transaction is rolled back, every request is retried in its
    /// own, and each caller gets its own answer (its outcome, or the
    /// violation), its neighbours' writes stored.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_failing_in_a_batch_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        // A constraint only the second request breaks.
        sqlx::query("CREATE UNIQUE INDEX one_video_per_url ON videos (callback_url)")
            .execute(store.pool())
            .await
            .unwrap();
        let (writer, task) = Writer::start(&store).await.unwrap();
        let video = |id: &str, url: &str| {
            vec![NewVideo {
                video_id: VideoId::parse(id).unwrap(),
                callback_url: Some(url.to_owned()),
                metadata: None,
                first_poll_at: Millis(0),
            }]
        };
        // On this single-threaded runtime all three are queued before the
        // writer runs, so they share one batch (and one insert statement).
        let (first, clash, other) = tokio::join!(
            writer.enqueue(video("a", "https://example.com/x")),
            writer.enqueue(video("b", "https://example.com/x")),
            writer.enqueue(video("c", "https://example.com/y")),
        );
        assert!(
            matches!(first.unwrap()[..], [EnqueueOutcome::Created { .. }]),
            "the first keeps its answer"
        );
        match clash {
            Err(StoreError::Database(sqlx::Error::Database(db))) => {
                assert_eq!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
            }
            other => panic!("the clashing request is refused: {other:?}"),
        }
        assert!(matches!(
            other.unwrap()[..],
            [EnqueueOutcome::Created { .. }]
        ));
        for (id, stored) in [("a", true), ("b", false), ("c", true)] {
            let details = store
                .video_details(&VideoId::parse(id).unwrap())
                .await
                .unwrap();
            assert_eq!(details.is_some(), stored, "{id}");
        }
        drop(writer);
        task.await.unwrap();
        store.close().await;
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
