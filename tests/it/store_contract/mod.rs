//! The storage contract: what every backend of `jogg_relay::store` must do,
//! written once and run, unchanged, against each of them.
//!
//! The cases talk to the store only through the API the rest of the crate
//! uses (`Store`'s reads and `Writer`'s operations), never through SQL or
//! HTTP, so they hold for any backend. Each expectation is worked out by
//! hand from the documented semantics (the doc comments of
//! `src/store/mutations.rs` and `src/store/records.rs`, ARCHITECTURE.md's
//! invariants), never read back from the code under test.
//!
//! Every case is an `async fn case_…(store, writer)` in [`queue`] (enqueue,
//! cancel, claims, releases), [`polls`] (poll results, pushes), [`outbox`]
//! (callback deliveries), [`reads`] (the read queries and readiness) or
//! [`console`] (the console's dead deliveries and polls); the
//! `contract_cases!` list below instantiates each one per backend:
//! `store_contract::sqlite::case_…` on a database file of its own, and
//! `store_contract::postgres::case_…` on a database of its own on the
//! throwaway PostgreSQL cluster, or skipped (loudly) without PostgreSQL's
//! server binaries.

mod console;
mod outbox;
mod polls;
mod queue;
mod reads;

use std::time::Duration;

use jogg_relay::config::DatabaseConfig;
use jogg_relay::domain::poll::{
    ClaimedVideo, NewTransition, PollUpdate, TerminalChange, TransitionKind, UpstreamFields,
};
use jogg_relay::domain::{Millis, VideoId, VideoState};
use jogg_relay::store::{
    EnqueueOutcome, NewVideo, PushHint, Store, TransitionRecord, VideoDetails, Writer,
};
use tokio::task::JoinHandle;

/// A backend the contract runs against.
#[derive(Debug, Clone, Copy)]
enum ContractBackend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the test binary's throwaway PostgreSQL cluster.
    Postgres,
}

/// What keeps a case's database alive: the SQLite file's temporary folder
/// (a PostgreSQL database goes with the throwaway cluster).
struct Guard(#[allow(dead_code)] Option<tempfile::TempDir>);

impl ContractBackend {
    /// An empty store of this backend with its writer running, or `None`
    /// when the backend is not available here (reported on stderr, so a
    /// skipped run is not mistaken for a passing one; CI forbids it).
    async fn open(self, case: &str) -> Option<(Store, Writer, JoinHandle<()>, Guard)> {
        let (url, guard) = match self {
            ContractBackend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let url = format!("sqlite://{}/relay.db", dir.path().display());
                (url, Guard(Some(dir)))
            }
            ContractBackend::Postgres => {
                let cluster = crate::helpers::scratch_postgres()?;
                let url = cluster
                    .create_database()
                    .await
                    .unwrap_or_else(|err| panic!("{case}: no database: {err}"));
                (url, Guard(None))
            }
        };
        let config = DatabaseConfig::parse(&url)
            .unwrap_or_else(|err| panic!("{self:?} database URL refused: {err}"));
        let store = Store::open(&config)
            .await
            .unwrap_or_else(|err| panic!("{self:?} store does not open: {err}"));
        let (writer, task) = Writer::start(&store).await.expect("the writer starts");
        Some((store, writer, task, guard))
    }

    /// Stops the writer once its last commit is done and closes the store.
    async fn close(store: Store, writer: Writer, task: JoinHandle<()>, _guard: Guard) {
        drop(writer);
        task.await.expect("the writer task ends cleanly");
        store.close().await;
    }
}

/// Instantiates every listed case once per backend, as
/// `sqlite::case_…` and `postgres::case_…`.
macro_rules! contract_cases {
    ($($module:ident :: $case:ident),* $(,)?) => {
        /// The contract on SQLite.
        mod sqlite {
            contract_cases!(@backend Sqlite; $($module::$case),*);
        }
        /// The contract on PostgreSQL (skipped without a server).
        mod postgres {
            contract_cases!(@backend Postgres; $($module::$case),*);
        }
    };
    (@backend $backend:ident; $($module:ident :: $case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let backend = super::ContractBackend::$backend;
                let Some((store, writer, task, guard)) = backend.open(stringify!($case)).await
                else {
                    return;
                };
                super::$module::$case(&store, &writer).await;
                super::ContractBackend::close(store, writer, task, guard).await;
            }
        )*
    };
}

contract_cases!(
    queue::case_enqueue_creates_then_repeats_without_change,
    queue::case_enqueue_refuses_a_different_request_naming_the_fields,
    queue::case_enqueue_batch_outcomes_follow_request_order,
    queue::case_cancel_outcomes,
    queue::case_claim_takes_due_videos_most_overdue_first_within_the_limit,
    queue::case_claim_takes_an_expired_lease_again,
    queue::case_claim_takes_hinted_videos_first,
    queue::case_ranked_claim_takes_the_best_ranked_in_the_overdue_window,
    polls::case_record_poll_updates_counters_and_the_schedule,
    polls::case_record_poll_discards_a_stale_result,
    polls::case_record_poll_terminal_commits_state_transitions_and_outbox,
    polls::case_record_poll_keeps_a_push_that_arrived_during_the_poll,
    queue::case_release_hands_the_lease_back,
    polls::case_hint_brings_the_poll_forward_within_min_interval,
    polls::case_hint_adopts_untracked_and_leaves_terminal_videos,
    outbox::case_claim_deliveries_takes_due_pending_earliest_first,
    outbox::case_record_attempt_delivered_retry_dead,
    outbox::case_record_attempt_discards_a_stale_attempt,
    outbox::case_release_deliveries_hands_the_lease_back,
    outbox::case_redeliver_requeues_the_same_event_to_current_targets,
    outbox::case_redeliver_hurries_pending_and_spares_in_flight,
    outbox::case_delivery_carries_the_push_until_delivered,
    reads::case_list_videos_pages_by_cursor_and_state,
    reads::case_gauges_count_states_and_measure_lags,
    reads::case_next_due_times_follow_the_queues,
    reads::case_finished_renders_in_finish_order_with_a_cursor,
    reads::case_newest_renders_oldest_first,
    reads::case_delivery_counts_and_recent_transitions,
    reads::case_hourly_outcomes_count_terminal_transitions_per_hour,
    reads::case_browse_videos_newest_first_by_prefix_and_state,
    reads::case_delivery_attempts_of_one_video,
    reads::case_readiness_succeeds_on_a_healthy_store,
    console::case_dead_deliveries_newest_death_first_by_cursor,
    console::case_polling_as_the_row_keeps_it,
);

// ---------------------------------------------------------------------------
// Building requests and results
// ---------------------------------------------------------------------------

/// A callback target configured for every video.
const HOOK: &str = "https://hooks.example.com/relay";
/// Another configured target.
const HOOK_2: &str = "https://hooks2.example.com/relay";
/// A video's own callback target.
const OWN: &str = "https://own.example.com/callback";

/// A valid video id.
fn id(raw: &str) -> VideoId {
    VideoId::parse(raw).expect("a valid id")
}

/// An enqueue of `raw`, first due at `first_poll_at`, without a callback
/// URL or metadata (struct update syntax adds them).
fn video(raw: &str, first_poll_at: i64) -> NewVideo {
    NewVideo {
        video_id: id(raw),
        callback_url: None,
        metadata: None,
        first_poll_at: Millis(first_poll_at),
    }
}

/// A poll result for `claimed`, seen at `at`, that leaves it active with
/// upstream status `status` and its next poll at `next`: counted, no
/// failure, no change of status (an answer changing it adds its
/// transition), the video seen unfinished at `at`, no push-driven repoll
/// before `next`.
fn ongoing(claimed: &ClaimedVideo, at: i64, status: &str, next: i64) -> PollUpdate {
    PollUpdate {
        video_rowid: claimed.id,
        lease: claimed.lease,
        at: Millis(at),
        counted: true,
        upstream_status: Some(status.to_owned()),
        fields: UpstreamFields::default(),
        unchanged_polls: claimed.unchanged_polls + 1,
        error_streak: 0,
        next_poll_at: Some(Millis(next)),
        unfinished_seen_at: Some(Millis(at)),
        rendering_seen_at: None,
        claimed_at: claimed.claimed_at,
        repoll_after_push_at: Millis(next),
        transitions: Vec::new(),
        terminal: None,
    }
}

/// A poll result for `claimed`, seen at `at`, that ends it in `state` with
/// event `event_id` for `targets`: `completed` brings a video URL, `failed`
/// an error, `abandoned` the reason `deadline` (and keeps the upstream
/// status); the log gets the status change (if any) then the state change.
fn ending(
    claimed: &ClaimedVideo,
    at: i64,
    state: VideoState,
    event_id: &str,
    targets: &[&str],
) -> PollUpdate {
    let mut fields = UpstreamFields::default();
    let mut reason = None;
    let status = match state {
        VideoState::Completed => {
            fields.video_url = Some(format!(
                "https://cdn.example.com/{}.mp4",
                claimed.video_id.as_str()
            ));
            Some("completed".to_owned())
        }
        VideoState::Failed => {
            fields.error_code = Some("render_failed".to_owned());
            fields.error_message = Some("the render failed".to_owned());
            Some("failed".to_owned())
        }
        _ => {
            reason = Some("deadline".to_owned());
            claimed.upstream_status.clone()
        }
    };
    let mut transitions = Vec::new();
    if status != claimed.upstream_status {
        transitions.push(NewTransition {
            kind: TransitionKind::Status,
            from: claimed.upstream_status.clone(),
            to: status.clone().expect("a new status"),
        });
    }
    transitions.push(NewTransition {
        kind: TransitionKind::State,
        from: Some("active".to_owned()),
        to: state.as_str().to_owned(),
    });
    PollUpdate {
        upstream_status: status,
        fields,
        unchanged_polls: 0,
        next_poll_at: None,
        unfinished_seen_at: None,
        transitions,
        terminal: Some(TerminalChange {
            state,
            reason,
            event_id: event_id.to_owned(),
            targets: targets.iter().map(|url| (*url).to_owned()).collect(),
        }),
        ..ongoing(claimed, at, "unused", 0)
    }
}

/// Tracks `new` (which must be due at 0, with no other active video due
/// then) and ends it at `at` in `state` with event `evt-<id>` for
/// `targets`; returns the video's rowid.
async fn finish(
    writer: &Writer,
    new: NewVideo,
    at: i64,
    state: VideoState,
    targets: &[&str],
) -> i64 {
    let raw = new.video_id.as_str().to_owned();
    assert_eq!(new.first_poll_at, Millis(0));
    assert!(matches!(
        writer.enqueue(vec![new]).await.unwrap()[..],
        [EnqueueOutcome::Created { .. }]
    ));
    let claimed = writer.claim_due(Millis(0), Millis(at), 10).await.unwrap();
    assert_eq!(names(&claimed), [raw.as_str()], "only {raw} is due at 0");
    let result = ending(&claimed[0], at, state, &format!("evt-{raw}"), targets);
    assert!(writer.record_poll(result).await.unwrap());
    claimed[0].id
}

/// The ids of claimed videos, sorted (a claim's result is a set: the
/// order it comes back in is not part of the contract).
fn names(claimed: &[ClaimedVideo]) -> Vec<&str> {
    let mut names: Vec<&str> = claimed.iter().map(|v| v.video_id.as_str()).collect();
    names.sort_unstable();
    names
}

/// The claimed video `raw` among `claimed`.
fn pick<'a>(claimed: &'a [ClaimedVideo], raw: &str) -> &'a ClaimedVideo {
    claimed
        .iter()
        .find(|v| v.video_id.as_str() == raw)
        .unwrap_or_else(|| panic!("{raw} was not claimed: {claimed:?}"))
}

/// The tracked video `raw`, with its logs.
async fn details(store: &Store, raw: &str) -> VideoDetails {
    store
        .video_details(&id(raw))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{raw} is tracked"))
}

/// Metadata text as a JSON value: a backend may store it in another
/// spelling (a JSON column), which is the same metadata.
fn json(text: Option<&str>) -> Option<serde_json::Value> {
    text.map(|text| serde_json::from_str(text).expect("stored metadata is JSON"))
}

/// A transition as the log shows it.
fn transition(kind: &str, from: Option<&str>, to: &str, at: i64) -> TransitionRecord {
    TransitionRecord {
        kind: kind.to_owned(),
        from_value: from.map(str::to_owned),
        to_value: to.to_owned(),
        at,
    }
}

/// A verified push about `raw` at `at`, without adoption.
fn push(raw: &str, at: i64, min_interval_ms: u64) -> PushHint {
    PushHint {
        video_id: id(raw),
        at: Millis(at),
        min_interval: Duration::from_millis(min_interval_ms),
        adopt: false,
    }
}
