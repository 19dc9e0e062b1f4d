//! Read-only figures of the whole pool for the admin API's overview and key
//! list: requests in flight and waiting, the capacity left in the current
//! window over the keys that can serve, and when each key's window frees.
//! One pass over the keys under the lock; nothing here changes state.

use tokio::time::{Duration, Instant};

use super::key::Slot;
use super::Scheduler;

/// The pool right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolFigures {
    /// Requests holding a key (leased, not finished), over every key.
    pub in_flight: u64,
    /// Requests waiting in line for a key.
    pub queue_depth: u64,
    /// Over keys that can serve (enabled, valid, not expired or over
    /// budget; cooling ones count, with what they have left); `None` when
    /// none of them has a known request or token limit.
    pub capacity: Option<Capacity>,
}

/// Per-minute limits summed over the keys that can serve, and what is left
/// of them in the current window. A dimension is `None` when no such key
/// has a known limit for it; keys without one add nothing to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Requests per minute.
    pub requests_limit: Option<u64>,
    pub requests_remaining: Option<u64>,
    /// Tokens per minute.
    pub tokens_limit: Option<u64>,
    pub tokens_remaining: Option<u64>,
}

impl PoolFigures {
    /// Adds another upstream's figures to these.
    pub fn merge(&mut self, other: &PoolFigures) {
        self.in_flight = self.in_flight.saturating_add(other.in_flight);
        self.queue_depth = self.queue_depth.saturating_add(other.queue_depth);
        self.capacity = match (self.capacity, other.capacity) {
            (Some(a), Some(b)) => Some(Capacity {
                requests_limit: add(a.requests_limit, b.requests_limit),
                requests_remaining: add(a.requests_remaining, b.requests_remaining),
                tokens_limit: add(a.tokens_limit, b.tokens_limit),
                tokens_remaining: add(a.tokens_remaining, b.tokens_remaining),
            }),
            (a, b) => a.or(b),
        };
    }
}

/// When a key's current window has freed entirely, as a wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowResets {
    pub key_id: i64,
    /// When every request counted now has stopped counting (Unix ms);
    /// `None` when none counts (in-flight ones free when they finish).
    pub requests_at_ms: Option<i64>,
    /// When every token counted now has stopped counting (Unix ms); `None`
    /// when none counts.
    pub tokens_at_ms: Option<i64>,
}

fn add(sum: Option<u64>, v: Option<u64>) -> Option<u64> {
    match (sum, v) {
        (s, None) => s,
        (None, Some(v)) => Some(v),
        (Some(s), Some(v)) => Some(s.saturating_add(v)),
    }
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn resets(s: &Slot, now: Instant, wall_ms: i64) -> WindowResets {
    let to_ms = |t: Instant| wall_ms.saturating_add(t.saturating_duration_since(now).as_millis() as i64);
    let requests = later(s.window.last_expiry(), s.rpm.phantom_until(now)).filter(|t| *t > now);
    let sent_tokens = match s.tpm.limit().filter(|l| *l > 0 && s.bucket.trusted()) {
        // Refilling continuously: the deficit drains at the limit per minute.
        Some(limit) => match s.bucket.deficit(now, limit) {
            0 => None,
            deficit => {
                let ms = u64::try_from(u128::from(deficit) * 60_000 / u128::from(limit)).unwrap_or(60_000);
                now.checked_add(Duration::from_millis(ms))
            }
        },
        None => s.window.last_expiry().filter(|_| s.window.tokens() > 0),
    };
    let tokens = later(sent_tokens, s.tpm.phantom_until(now)).filter(|t| *t > now);
    WindowResets { key_id: s.id, requests_at_ms: requests.map(to_ms), tokens_at_ms: tokens.map(to_ms) }
}

impl Scheduler {
    /// In flight, waiting, and the capacity left (see [`PoolFigures`]).
    pub fn pool_figures(&self) -> PoolFigures {
        let now = Instant::now();
        let mut inner = self.lock();
        let queue_depth = inner.queue.len() as u64;
        let mut in_flight = 0u64;
        let mut cap = Capacity::default();
        for s in inner.keys.values_mut() {
            in_flight = in_flight.saturating_add(s.inflight);
            s.window.prune(now);
            // The same keys and figures as the `x-ratelimit-*` headers' view
            // (pool.rs), so the dashboard and the headers agree.
            if !s.counts_in_pool(now) {
                continue;
            }
            let share = s.share(now);
            cap.requests_limit = add(cap.requests_limit, share.requests.map(|p| p.limit));
            cap.requests_remaining = add(cap.requests_remaining, share.requests.map(|p| p.remaining));
            cap.tokens_limit = add(cap.tokens_limit, share.tokens.map(|p| p.limit));
            cap.tokens_remaining = add(cap.tokens_remaining, share.tokens.map(|p| p.remaining));
        }
        let known = cap.requests_limit.is_some() || cap.tokens_limit.is_some();
        PoolFigures { in_flight, queue_depth, capacity: known.then_some(cap) }
    }

    /// Every key's window resets, by key id (see [`WindowResets`]).
    pub fn window_resets(&self) -> Vec<WindowResets> {
        let now = Instant::now();
        let wall_ms = crate::store::now_unix_ms();
        let mut inner = self.lock();
        let mut all: Vec<WindowResets> = inner
            .keys
            .values_mut()
            .map(|s| {
                s.window.prune(now);
                resets(s, now, wall_ms)
            })
            .collect();
        all.sort_by_key(|r| r.key_id);
        all
    }
}
