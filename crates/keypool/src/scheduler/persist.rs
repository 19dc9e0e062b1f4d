//! What the scheduler learned about its keys, in wall-clock time, for the
//! store: a key found invalid or exhausted, cooling after a 429, the limits
//! the upstream announced and what was sent within the last minute. The
//! server writes it in the background and restores it at start, so a restart
//! neither sends a known-dead key a request nor over-sends a key used in the
//! last minute. Usage is saved as one amount that counts until its newest
//! part leaves the window: never looser than the upstream's own count.

use tokio::time::{Duration, Instant};

use super::key::{Announce, Health, Slot};
use super::limits::Dim;
use super::record::transition;
use super::window::WINDOW;
use super::Scheduler;
use crate::store::{now_unix_ms, SavedDim, SavedHealth, SavedKeyState};

const DAY_MS: i64 = 86_400_000;

/// The scheduler's clock and the wall clock, read at the same moment.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    now: Instant,
    wall_ms: i64,
}

impl Clocks {
    fn read() -> Clocks {
        Clocks { now: Instant::now(), wall_ms: now_unix_ms() }
    }

    fn to_wall(self, t: Instant) -> i64 {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if t >= self.now {
            self.wall_ms.saturating_add(ms(t - self.now))
        } else {
            self.wall_ms.saturating_sub(ms(self.now - t))
        }
    }

    /// The instant of a saved time, or `None` when it has passed.
    fn to_instant(self, ms: i64) -> Option<Instant> {
        (ms > self.wall_ms).then(|| self.now + Duration::from_millis(u64::try_from(ms - self.wall_ms).unwrap_or(0)))
    }

    fn day(self) -> i64 {
        self.wall_ms.div_euclid(DAY_MS)
    }
}

/// Why a key that is not active is out, in the operator's words.
pub(super) fn reason_of(health: Health) -> Option<String> {
    match health {
        Health::Active => None,
        Health::Invalid => Some("the upstream refused the key (401/403); it is probed now and then".into()),
        Health::Exhausted => Some("the upstream says its balance is spent (insufficient_quota)".into()),
    }
}

/// One dimension: what keypool counts against it (`own`, the newest part of
/// it leaving the window at `own_until`) plus what the upstream said beyond that.
fn save_dim(dim: &Dim, own: u64, own_until: Option<Instant>, c: Clocks) -> SavedDim {
    let until = [own_until.filter(|_| own > 0), dim.phantom_until(c.now)].into_iter().flatten().max();
    SavedDim {
        learned: dim.learned,
        used: if until.is_some() { own.saturating_add(dim.phantom(c.now)) } else { 0 },
        used_until: until.map(|t| c.to_wall(t)),
    }
}

fn save_slot(slot: &mut Slot, c: Clocks) -> SavedKeyState {
    slot.window.prune(c.now);
    // In flight now: counted when it finishes, so for up to a window from now.
    let own_until = match slot.window.last_expiry() {
        _ if slot.inflight > 0 => Some(c.now + WINDOW),
        last => last,
    };
    let unhealthy = slot.health != Health::Active;
    SavedKeyState {
        key_id: slot.id,
        health: match slot.health {
            Health::Active => SavedHealth::Active,
            Health::Invalid => SavedHealth::Invalid,
            Health::Exhausted => SavedHealth::Exhausted,
        },
        reason: reason_of(slot.health),
        cooling_until: slot.cooling_until.filter(|t| *t > c.now).map(|t| c.to_wall(t)),
        next_probe_at: slot.next_probe.filter(|_| unhealthy).map(|t| c.to_wall(t)),
        probe_every_ms: unhealthy.then(|| u64::try_from(slot.probe_every.as_millis()).unwrap_or(u64::MAX)),
        rpm: save_dim(&slot.rpm, slot.own_requests(), own_until, c),
        tpm: save_dim(&slot.tpm, slot.window.tokens().saturating_add(slot.reserved_tokens), own_until, c),
        day: c.day(),
        day_count: slot.day_count,
    }
}

impl Scheduler {
    /// Every key's learned state in wall-clock time, for the store's writer.
    pub fn export_state(&self) -> Vec<SavedKeyState> {
        let c = Clocks::read();
        let mut inner = self.lock();
        let mut out: Vec<SavedKeyState> = inner.keys.values_mut().map(|s| save_slot(s, c)).collect();
        out.sort_by_key(|s| s.key_id);
        out
    }

    /// Takes back state saved by an earlier run for keys it knows (call after
    /// [`Scheduler::sync_keys`] at start). Returns how many keys it restored
    /// as not active (invalid, exhausted or cooling).
    pub fn restore_state(&self, saved: &[SavedKeyState]) -> usize {
        let c = Clocks::read();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let mut held_back = 0;
        for s in saved {
            let Some(slot) = inner.keys.get_mut(&s.key_id) else { continue };
            let (health, every) = match s.health {
                SavedHealth::Active => (Health::Active, Duration::ZERO),
                SavedHealth::Invalid => (Health::Invalid, self.config.probe_invalid),
                SavedHealth::Exhausted => (Health::Exhausted, self.config.probe_exhausted),
            };
            if health != Health::Active {
                slot.health = health;
                slot.probe_every = s.probe_every_ms.map_or(every, Duration::from_millis).max(every);
                // A probe that fell due while the server was down is due now.
                slot.next_probe = Some(s.next_probe_at.and_then(|t| c.to_instant(t)).unwrap_or(c.now));
                let to = if health == Health::Invalid { "invalid" } else { "exhausted" };
                transition(slot, to, "as saved before the restart");
                held_back += 1;
            }
            if let Some(until) = s.cooling_until.and_then(|t| c.to_instant(t)) {
                slot.cooling_until = Some(slot.cooling_until.map_or(until, |t| t.max(until)));
                if health == Health::Active {
                    transition(slot, "cooling", "as saved before the restart");
                    held_back += 1;
                }
            }
            for (dim, saved) in [(&mut slot.rpm, s.rpm), (&mut slot.tpm, s.tpm)] {
                if saved.learned.is_some() {
                    dim.learned = saved.learned;
                }
                if let Some(until) = saved.used_until.and_then(|t| c.to_instant(t)).filter(|_| saved.used > 0) {
                    dim.hold(saved.used, until);
                }
            }
            if s.rpm.learned.is_some() || s.tpm.learned.is_some() {
                slot.announce = Announce::Headers;
            }
            if s.day == c.day() {
                slot.day_count = slot.day_count.max(s.day_count);
            }
            let id = slot.id;
            inner.slot_placement(id, c.now, strategy);
        }
        if inner.keys.values().any(|s| s.tpm.limit().is_some()) {
            self.counts_tokens.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        inner.recheck = true;
        inner.dispatch(c.now, strategy);
        drop(inner);
        self.wake.notify_one();
        held_back
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::scheduler::tests::record;
    use crate::scheduler::{Demand, Outcome, SchedulerConfig, Verdict};

    fn scheduler() -> Arc<Scheduler> {
        let s = Scheduler::new(SchedulerConfig { max_wait: Duration::ZERO, ..SchedulerConfig::default() });
        s.sync_keys(&[record(1, Some(2), None, 0), record(2, None, None, 0), record(3, None, None, 0)]);
        s
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_scheduler_keeps_dead_keys_out_and_counts_the_last_minute() {
        let before = scheduler();
        let demand = Demand::default();
        // Key 1 (2 rpm) sends once; key 2 is refused; key 3 is rate-limited.
        let pick = |id: i64| loop {
            let l = before.try_lease(demand).unwrap();
            if l.key_id() == id {
                break l;
            }
            let mut l = l;
            l.mark_sent();
            l.finish(Outcome { success: true, ..Outcome::default() });
        };
        let mut l = pick(1);
        l.mark_sent();
        l.finish(Outcome { success: true, ..Outcome::default() });
        let mut l = pick(2);
        l.mark_sent();
        l.finish(Outcome { verdict: Verdict::Invalid, ..Outcome::default() });
        let mut l = pick(3);
        l.mark_sent();
        l.finish(Outcome {
            verdict: Verdict::RateLimited {
                reset: crate::scheduler::Reset::new(Duration::from_secs(30), crate::scheduler::Hit::Unknown),
            },
            ..Outcome::default()
        });
        let saved = before.export_state();
        assert_eq!(saved[1].health, SavedHealth::Invalid);
        assert!(saved[1].reason.as_deref().is_some_and(|r| r.contains("401")));
        assert!(saved[2].cooling_until.is_some());
        assert!(saved[0].rpm.used >= 1 && saved[0].rpm.used_until.is_some(), "{saved:?}");

        let after = scheduler();
        assert_eq!(after.restore_state(&saved), 2);
        let statuses: Vec<_> = after.snapshot().iter().map(|v| v.status).collect();
        assert_eq!(statuses, ["active", "invalid", "cooling"]);
        // Key 1 used its 2 requests a minute before the restart: none left now.
        let used = saved[0].rpm.used;
        for _ in used..2 {
            let mut l = after.try_lease(demand).unwrap();
            l.mark_sent();
            l.finish(Outcome { success: true, ..Outcome::default() });
        }
        assert!(after.try_lease(demand).is_err(), "key 1 is at its limit, 2 and 3 are out");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(after.snapshot()[0].remaining_requests, Some(2), "room again after the minute");
    }
}
