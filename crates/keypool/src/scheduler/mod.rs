//! Which upstream key serves a request: per-key limits, in-flight
//! reservations and usage counts, all in memory. Pure logic, no I/O; the
//! server asks for a [`KeyLease`] and the lease gives its reservation back
//! when it is finished or dropped.

mod lease;
mod window;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use secrecy::SecretString;
use tokio::time::{Duration, Instant};

use crate::store::{KeyRecord, UsageDelta};
pub use lease::{KeyLease, Outcome};
use window::Window;

/// Limits that apply to keys which carry none of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

/// Why no key could be leased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoKey {
    #[error("no upstream keys are configured")]
    NoKeys,
    #[error("every upstream key is at its limit")]
    AllBusy { retry_after: Duration },
    #[error("the request needs {needed} tokens, more than any key's per-minute token limit")]
    TooLarge { needed: u64 },
}

/// The scheduler: owns every key's live state.
#[derive(Debug)]
pub struct Scheduler {
    inner: Mutex<Inner>,
    defaults: DefaultLimits,
}

#[derive(Debug, Default)]
struct Inner {
    keys: BTreeMap<i64, Slot>,
}

/// One key's live state.
#[derive(Debug)]
struct Slot {
    label: Option<String>,
    secret: Arc<SecretString>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    enabled: bool,
    /// Requests leased and not yet finished; they count against the limits.
    inflight: u64,
    /// Tokens reserved by in-flight requests.
    reserved_tokens: u64,
    /// What finished within the last minute.
    window: Window,
    /// Set after the upstream answered 429: no lease until then.
    cooling_until: Option<Instant>,
    /// Lifetime requests (the stored total plus what this process added):
    /// the "least used" rule spends keys evenly across restarts.
    requests_total: u64,
    successes_total: u64,
    failures_total: u64,
    /// Counted since the last flush to the store.
    unflushed: UsageDelta,
}

/// A key as operators see it: no secret, live numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub id: i64,
    pub label: Option<String>,
    pub enabled: bool,
    pub cooling: bool,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub inflight: u64,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// Requests left this minute; None when the key has no request limit.
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Until the oldest request of the current minute stops counting.
    pub reset_in: Option<Duration>,
}

impl Slot {
    fn from_record(r: &KeyRecord) -> Slot {
        Slot {
            label: r.label.clone(),
            secret: Arc::new(r.secret.clone()),
            rpm: r.rpm,
            tpm: r.tpm,
            enabled: r.enabled,
            inflight: 0,
            reserved_tokens: 0,
            window: Window::default(),
            cooling_until: None,
            requests_total: r.requests,
            successes_total: r.successes,
            failures_total: r.failures,
            unflushed: UsageDelta {
                key_id: r.id,
                ..UsageDelta::default()
            },
        }
    }

    fn used_requests(&self) -> u64 {
        self.window.requests() + self.inflight
    }

    fn used_tokens(&self) -> u64 {
        self.window.tokens() + self.reserved_tokens
    }

    /// Whether a request costing `tokens` fits now (window already pruned).
    fn has_room(&self, now: Instant, tokens: u64, d: DefaultLimits) -> bool {
        if !self.enabled || self.cooling_until.is_some_and(|t| t > now) {
            return false;
        }
        let rpm_ok = self
            .rpm
            .or(d.rpm)
            .is_none_or(|l| self.used_requests() < u64::from(l));
        let tpm_ok = self
            .tpm
            .or(d.tpm)
            .is_none_or(|l| self.used_tokens() + tokens <= u64::from(l));
        rpm_ok && tpm_ok
    }

    /// The earliest instant this key could have room for `tokens`, if any is known.
    fn next_room(&self, now: Instant, tokens: u64, d: DefaultLimits) -> Option<Instant> {
        if !self.enabled {
            return None;
        }
        let mut at = now;
        if let Some(until) = self.cooling_until.filter(|t| *t > now) {
            at = at.max(until);
        }
        if let Some(limit) = self.rpm.or(d.rpm) {
            if self.used_requests() >= u64::from(limit) {
                // In-flight requests only free room once they finish and age out.
                at = at.max(self.window.next_expiry().unwrap_or(now + window::WINDOW));
            }
        }
        if let Some(limit) = self.tpm.or(d.tpm) {
            let target = u64::from(limit).saturating_sub(tokens + self.reserved_tokens);
            if let Some(t) = self.window.instant_tokens_fall_to(target) {
                at = at.max(t);
            }
        }
        Some(at)
    }
}

impl Scheduler {
    pub fn new(defaults: DefaultLimits) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            inner: Mutex::new(Inner::default()),
            defaults,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counters, never broken
        // invariants that matter more than serving: keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the live set of keys match the store: new keys join, changed
    /// ones take their new settings (keeping their live counts), removed ones go.
    pub fn sync_keys(&self, records: &[KeyRecord]) {
        let mut inner = self.lock();
        inner
            .keys
            .retain(|id, _| records.iter().any(|r| r.id == *id));
        for r in records {
            match inner.keys.get_mut(&r.id) {
                Some(slot) => {
                    slot.label = r.label.clone();
                    slot.rpm = r.rpm;
                    slot.tpm = r.tpm;
                    slot.enabled = r.enabled;
                    slot.secret = Arc::new(r.secret.clone());
                }
                None => {
                    inner.keys.insert(r.id, Slot::from_record(r));
                }
            }
        }
    }

    /// Number of keys that could ever serve (enabled).
    pub fn usable_keys(&self) -> usize {
        self.lock().keys.values().filter(|s| s.enabled).count()
    }

    /// Leases the least-used key that has room for a request of `tokens`.
    ///
    /// Linear in the number of keys; the scheduler issue replaces this with an
    /// ordered index.
    pub fn lease(self: &Arc<Self>, tokens: u64) -> Result<KeyLease, NoKey> {
        let now = Instant::now();
        let d = self.defaults;
        let mut inner = self.lock();
        let mut best: Option<(u64, i64)> = None;
        let mut any_enabled = false;
        let mut fits_some_key = false;
        for (&id, slot) in inner.keys.iter_mut() {
            slot.window.prune(now);
            any_enabled |= slot.enabled;
            fits_some_key |=
                slot.enabled && slot.tpm.or(d.tpm).is_none_or(|l| tokens <= u64::from(l));
            if slot.has_room(now, tokens, d) {
                let used = slot.requests_total + slot.inflight;
                if best.is_none_or(|(b, _)| used < b) {
                    best = Some((used, id));
                }
            }
        }
        if !any_enabled {
            return Err(NoKey::NoKeys);
        }
        if !fits_some_key {
            return Err(NoKey::TooLarge { needed: tokens });
        }
        let Some((_, id)) = best else {
            let soonest = inner
                .keys
                .values()
                .filter_map(|s| s.next_room(now, tokens, d))
                .min()
                .unwrap_or(now + Duration::from_secs(1));
            return Err(NoKey::AllBusy {
                retry_after: soonest.saturating_duration_since(now),
            });
        };
        let Some(slot) = inner.keys.get_mut(&id) else {
            return Err(NoKey::NoKeys);
        };
        slot.inflight += 1;
        slot.reserved_tokens += tokens;
        Ok(KeyLease::new(
            Arc::clone(self),
            id,
            slot.label.clone(),
            Arc::clone(&slot.secret),
            tokens,
        ))
    }

    /// Gives a lease's reservation back and records what it used.
    fn finish(&self, id: i64, reserved: u64, outcome: Outcome) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else {
            return;
        };
        slot.inflight = slot.inflight.saturating_sub(1);
        slot.reserved_tokens = slot.reserved_tokens.saturating_sub(reserved);
        let tokens = outcome.usage.map_or(reserved, |u| {
            u.total_tokens.max(u.prompt_tokens + u.completion_tokens)
        });
        slot.window.record(now, tokens);
        slot.requests_total += 1;
        slot.unflushed.requests += 1;
        if outcome.success {
            slot.successes_total += 1;
            slot.unflushed.successes += 1;
        } else {
            slot.failures_total += 1;
            slot.unflushed.failures += 1;
        }
        if let Some(u) = outcome.usage {
            slot.unflushed.prompt_tokens += u.prompt_tokens;
            slot.unflushed.completion_tokens += u.completion_tokens;
        }
        slot.unflushed.last_used_at = Some(unix_now());
        if let Some(cool) = outcome.cool_for {
            let until = now + cool;
            slot.cooling_until = Some(slot.cooling_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Takes the usage counted since the last call, for the store.
    pub fn take_unflushed(&self) -> Vec<UsageDelta> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for slot in inner.keys.values_mut() {
            if slot.unflushed.requests > 0 {
                let key_id = slot.unflushed.key_id;
                out.push(std::mem::replace(
                    &mut slot.unflushed,
                    UsageDelta {
                        key_id,
                        ..UsageDelta::default()
                    },
                ));
            }
        }
        out
    }

    /// Puts back deltas whose write failed, so no usage is lost.
    pub fn restore_unflushed(&self, deltas: &[UsageDelta]) {
        let mut inner = self.lock();
        for d in deltas {
            if let Some(slot) = inner.keys.get_mut(&d.key_id) {
                let u = &mut slot.unflushed;
                u.requests += d.requests;
                u.successes += d.successes;
                u.failures += d.failures;
                u.prompt_tokens += d.prompt_tokens;
                u.completion_tokens += d.completion_tokens;
                u.last_used_at = u.last_used_at.or(d.last_used_at);
            }
        }
    }

    /// Every key's live state, for the demo table and (later) the admin API.
    pub fn snapshot(&self) -> Vec<KeyView> {
        let now = Instant::now();
        let d = self.defaults;
        let mut inner = self.lock();
        inner
            .keys
            .iter_mut()
            .map(|(&id, s)| {
                s.window.prune(now);
                KeyView {
                    id,
                    label: s.label.clone(),
                    enabled: s.enabled,
                    cooling: s.cooling_until.is_some_and(|t| t > now),
                    requests: s.requests_total,
                    successes: s.successes_total,
                    failures: s.failures_total,
                    inflight: s.inflight,
                    rpm: s.rpm.or(d.rpm),
                    tpm: s.tpm.or(d.tpm),
                    remaining_requests: s
                        .rpm
                        .or(d.rpm)
                        .map(|l| u64::from(l).saturating_sub(s.used_requests())),
                    remaining_tokens: s
                        .tpm
                        .or(d.tpm)
                        .map(|l| u64::from(l).saturating_sub(s.used_tokens())),
                    reset_in: s
                        .window
                        .next_expiry()
                        .map(|t| t.saturating_duration_since(now)),
                }
            })
            .collect()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
