//! What a relay keeps in step with the other relays on one PostgreSQL
//! database, beside the queue itself and the shared gate
//! (`poller::gate`): wake-ups for work another relay stored, and the
//! learned render-time model rebuilt from everyone's videos.
//!
//! With SQLite there is one relay per database and none of this runs.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::adaptive::SharedLearner;
use crate::config::PollingConfig;
use crate::domain::Millis;
use crate::poller::Wakeups;
use crate::poller::learning::rebuild_learner;
use crate::store::postgres::shared::{DELIVERIES_CHANNEL, VIDEOS_CHANNEL, still_there};
use crate::store::{SharedGate, Store};

/// How long to wait before listening again after the database went away.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// After this long without a notification the listening connection is
/// asked whether it is still there: a server that fell silent (its machine
/// died, the network is cut) closes nothing, and the listener would wait
/// for notifications that never come, for good.
const CHECK_LISTENER_AFTER: Duration = Duration::from_secs(5);

/// How often the learned model is rebuilt from the database, so that what
/// every relay observed reaches every relay's schedule.
pub const LEARNER_REFRESH: Duration = Duration::from_secs(60);

/// Turns the database's wake-up notifications (sent by the triggers on
/// every relay's writes, this one's included) into this relay's
/// [`Wakeups`], until `shutdown`. When the connection is lost,
/// notifications sent meanwhile are lost too: both workers are woken to
/// look for themselves once it is back.
pub async fn relay_wakeups(shared: SharedGate, wakeups: Wakeups, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match shared.listen().await {
            Ok(listener) => listener,
            Err(err) => {
                warn!(error = %err, "cannot listen for other relays' work; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RELISTEN_AFTER) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        debug!("listening for other relays' work");
        wake_all(&wakeups);
        loop {
            // Receiving is cancel-safe: a notification half read when the
            // wait ends stays buffered for the next call.
            let received = tokio::select! {
                received = tokio::time::timeout(CHECK_LISTENER_AFTER, listener.try_recv()) => received,
                () = shutdown.cancelled() => return,
            };
            let Ok(received) = received else {
                match still_there(&mut listener).await {
                    Ok(_) => continue,
                    Err(err) => {
                        warn!(error = %err, "the wake-up channel does not answer; listening again");
                        break;
                    }
                }
            };
            match received {
                Ok(Some(notification)) => match notification.channel() {
                    VIDEOS_CHANNEL => match notification.payload().parse() {
                        Ok(due) => wakeups.new_videos.announce(Millis(due)),
                        Err(_) => wakeups.new_videos.announce(Millis::now()),
                    },
                    DELIVERIES_CHANNEL => wakeups.new_deliveries.notify_one(),
                    _ => {}
                },
                // The connection was lost; `try_recv` reconnects on the
                // next call. Whatever was announced meanwhile is missed.
                Ok(None) => wake_all(&wakeups),
                Err(err) => {
                    warn!(error = %err, "lost the wake-up channel; listening again");
                    break;
                }
            }
        }
    }
}

/// Wakes both workers to look at the database themselves.
fn wake_all(wakeups: &Wakeups) {
    wakeups.new_videos.announce(Millis::now());
    wakeups.new_deliveries.notify_one();
}

/// Every [`LEARNER_REFRESH`], replaces the learner with one rebuilt from
/// the newest videos in the database (which every relay records), until
/// `shutdown`. A failed read keeps the current model.
pub async fn refresh_learner(
    store: Store,
    polling: PollingConfig,
    learner: SharedLearner,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(LEARNER_REFRESH) => {}
            () = shutdown.cancelled() => return,
        }
        match rebuild_learner(&store, &polling).await {
            Ok((fresh, _)) => learner.with(|current| *current = fresh),
            Err(err) => {
                info!(error = %err, "cannot reload the learned model; keeping the current one");
            }
        }
    }
}
