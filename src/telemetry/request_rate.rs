//! The upstream requests this process sent, counted per wall-clock minute
//! over the last hour: what the console's poll-budget plot draws against
//! `jogg.requests_per_second`. In memory only, so it starts empty at each
//! start and counts this process alone (README, "Console").

use std::sync::Mutex;

use crate::domain::Millis;

/// Minutes kept (the ring's length).
pub const MINUTES: usize = 60;

/// Milliseconds in one minute.
const MINUTE_MILLIS: i64 = 60_000;

/// Requests sent in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCount {
    /// The minute's start.
    pub minute: Millis,
    /// Requests sent in it.
    pub requests: u32,
}

/// A ring of per-minute counts (see the module docs). One short lock per
/// request: requests are bounded by the budget, tens per second at most.
#[derive(Debug)]
pub struct RequestsPerMinute {
    /// Slot `m % MINUTES` holds minute `m` (minutes since the Unix epoch)
    /// and its count; a slot still holding an older minute counts zero for
    /// the one asked about.
    slots: Mutex<[(i64, u32); MINUTES]>,
}

impl Default for RequestsPerMinute {
    fn default() -> Self {
        Self {
            slots: Mutex::new([(i64::MIN, 0); MINUTES]),
        }
    }
}

impl RequestsPerMinute {
    /// Counts one request sent at `at`. A request stamped before the
    /// minute its slot already holds (the clock stepped back by an hour or
    /// more) is not counted rather than mixed into a newer minute.
    pub fn record(&self, at: Millis) {
        let minute = at.0.div_euclid(MINUTE_MILLIS);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.0 < minute {
            *slot = (minute, 0);
        }
        if slot.0 == minute {
            slot.1 = slot.1.saturating_add(1);
        }
    }

    /// The last [`MINUTES`] minutes up to the one holding `now` (partly
    /// over), oldest first, a minute without requests counting zero.
    pub fn last_hour(&self, now: Millis) -> Vec<MinuteCount> {
        let current = now.0.div_euclid(MINUTE_MILLIS);
        let slots = *self.slots.lock().unwrap_or_else(|p| p.into_inner());
        (current - MINUTES as i64 + 1..=current)
            .map(|minute| {
                let (held, count) = slots[minute.rem_euclid(MINUTES as i64) as usize];
                MinuteCount {
                    minute: Millis(minute * MINUTE_MILLIS),
                    requests: if held == minute { count } else { 0 },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = MINUTE_MILLIS;

    /// Requests land in the minute they were sent in; the hour shown ends
    /// with the current minute; minutes older than an hour are forgotten
    /// even when their slot was not reused.
    #[test]
    fn counts_per_minute_over_the_last_hour() {
        let ring = RequestsPerMinute::default();
        let t0 = 1_000 * M;
        for at in [t0, t0 + 1, t0 + M - 1, t0 + M, t0 + 5 * M + 30_000] {
            ring.record(Millis(at));
        }
        let hour = ring.last_hour(Millis(t0 + 5 * M + 59_999));
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour.last().unwrap().minute, Millis(t0 + 5 * M));
        assert_eq!(hour.first().unwrap().minute, Millis(t0 - 54 * M));
        let nonzero: Vec<(i64, u32)> = hour
            .iter()
            .filter(|m| m.requests > 0)
            .map(|m| ((m.minute.0 - t0) / M, m.requests))
            .collect();
        assert_eq!(nonzero, [(0, 3), (1, 1), (5, 1)]);

        // An hour later the first minute is out of the window.
        let later = ring.last_hour(Millis(t0 + 60 * M));
        let total: u32 = later.iter().map(|m| m.requests).sum();
        assert_eq!(total, 2, "minutes 1 and 5 remain: {later:?}");
        // Its slot is reused by the same minute-of-the-hour, counting anew.
        ring.record(Millis(t0 + 60 * M));
        assert_eq!(
            ring.last_hour(Millis(t0 + 60 * M)).last().unwrap().requests,
            1
        );
        // A request stamped an hour back (clock stepped) is dropped.
        ring.record(Millis(t0 + 5));
        assert_eq!(
            ring.last_hour(Millis(t0 + 60 * M)).last().unwrap().requests,
            1
        );
    }
}
