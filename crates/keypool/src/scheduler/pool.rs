//! The pool's rate limits as a caller sees them: what the keys that can
//! serve have left, summed, for the `x-ratelimit-*` headers keypool answers
//! with in place of one key's.
//!
//! Summing every key on every request would make a request's cost grow with
//! the pool (1,000+ keys), so the sums are kept as a view refreshed at most
//! every [`REFRESH`]: one pass over the keys under the scheduler's lock per
//! refresh, however many requests read it. A view is at most that old.

use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

use super::key::Slot;
use super::Scheduler;

/// Longest a pool view is served before it is computed again.
pub const REFRESH: Duration = Duration::from_millis(200);

/// One dimension (requests or tokens per minute) summed over the keys that
/// can serve and have a known limit in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLimit {
    /// The sum of those keys' limits (RPM or TPM).
    pub limit: u64,
    /// The sum of what each has left now.
    pub remaining: u64,
    /// The longest of their times until their budget is whole again.
    pub reset: Duration,
}

/// One key's share of the pool view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KeyShare {
    id: i64,
    pub(super) requests: Option<PoolLimit>,
    pub(super) tokens: Option<PoolLimit>,
}

/// The pool's limits at one instant.
///
/// Counted: keys that can serve now or after a wait (status `active` or
/// `cooling`: enabled, not invalid, exhausted, expired or over budget), as
/// [`Scheduler::snapshot`] reports them, with the same `remaining_*` figures.
/// A key with no configured or learned limit in a dimension is left out of
/// that dimension (what it has left is unknown); when no key has one, the
/// dimension is `None` and its headers are omitted.
#[derive(Debug, Clone, Default)]
pub struct PoolRates {
    pub requests: Option<PoolLimit>,
    pub tokens: Option<PoolLimit>,
    /// Each counted key's share, by id (to leave out keys set aside for a model).
    shares: Vec<KeyShare>,
}

impl PoolRates {
    /// A view of these totals alone (no keys to leave out).
    pub fn totals(requests: Option<PoolLimit>, tokens: Option<PoolLimit>) -> PoolRates {
        PoolRates { requests, tokens, shares: Vec::new() }
    }

    /// The view without the keys in `without` (keys set aside for the
    /// request's model): O(len(without) × log n).
    pub fn without(&self, without: &[i64]) -> PoolRates {
        let mut out = PoolRates { requests: self.requests, tokens: self.tokens, shares: Vec::new() };
        for id in without {
            let Ok(i) = self.shares.binary_search_by_key(id, |s| s.id) else { continue };
            let share = self.shares[i];
            out.requests = subtract(out.requests, share.requests);
            out.tokens = subtract(out.tokens, share.tokens);
        }
        out
    }
}

/// `total` less one key's share; the reset stays the longest seen (a
/// view cannot tell the second longest).
fn subtract(total: Option<PoolLimit>, share: Option<PoolLimit>) -> Option<PoolLimit> {
    let (Some(t), Some(s)) = (total, share) else { return total };
    Some(PoolLimit {
        limit: t.limit.saturating_sub(s.limit),
        remaining: t.remaining.saturating_sub(s.remaining),
        reset: t.reset,
    })
}

fn add(total: &mut Option<PoolLimit>, share: Option<PoolLimit>) {
    let Some(s) = share else { return };
    let t = total.get_or_insert_with(PoolLimit::default);
    t.limit = t.limit.saturating_add(s.limit);
    t.remaining = t.remaining.saturating_add(s.remaining);
    t.reset = t.reset.max(s.reset);
}

/// The cached view and when it was computed.
#[derive(Debug, Default)]
pub(super) struct PoolCache {
    view: Mutex<Option<(Instant, Arc<PoolRates>)>>,
}

impl Slot {
    /// Whether this key counts in the pool's sums (the headers' view and the
    /// overview's capacity alike): it can serve now or after a wait.
    pub(super) fn counts_in_pool(&self, now: Instant) -> bool {
        matches!(self.status(now), "active" | "cooling")
    }

    /// This key's requests and tokens left (window pruned by the caller).
    pub(super) fn share(&self, now: Instant) -> KeyShare {
        let last_sent = self.window.last_expiry().map(|t| t.saturating_duration_since(now));
        let cooling = self.cooling_until.map(|t| t.saturating_duration_since(now));
        let requests = self.rpm.limit().map(|limit| {
            let used = self.used_requests(now);
            // Whole again when the newest request leaves the minute and
            // what the upstream counted beyond keypool's own stops counting
            // (requests in flight count as used; their reset is not known
            // before they finish).
            let phantom = self.rpm.phantom_until(now).map(|t| t - now);
            let reset = if used == 0 { None } else { last_sent.max(phantom) };
            PoolLimit { limit, remaining: limit.saturating_sub(used), reset: reset.max(cooling).unwrap_or_default() }
        });
        let tokens = self.tpm.limit().map(|limit| {
            let used = self.used_tokens(now);
            let phantom = self.tpm.phantom_until(now).map(|t| t - now);
            let refill = if self.bucket.trusted() {
                // A bucket refills continuously: its whole deficit, at the limit per minute.
                let deficit = self.bucket.deficit(now, limit);
                self.bucket.refilled(now, limit, deficit).map(|t| t.saturating_duration_since(now))
            } else {
                last_sent
            };
            let reset = if used == 0 { None } else { refill.max(phantom) };
            PoolLimit { limit, remaining: limit.saturating_sub(used), reset: reset.max(cooling).unwrap_or_default() }
        });
        KeyShare { id: self.id, requests, tokens }
    }
}

impl Scheduler {
    /// The pool's limits as of at most [`REFRESH`] ago (see [`PoolRates`]).
    /// Cheap on the request path: a lock and an `Arc` clone, except once per
    /// refresh, when one pass over the keys computes it again.
    pub fn pool_rates(&self) -> Arc<PoolRates> {
        let now = Instant::now();
        let mut cached = self.pool.view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, view)) = cached.as_ref() {
            if now.saturating_duration_since(*at) < REFRESH {
                return Arc::clone(view);
            }
        }
        let view = Arc::new(self.compute_pool_rates(now));
        *cached = Some((now, Arc::clone(&view)));
        view
    }

    fn compute_pool_rates(&self, now: Instant) -> PoolRates {
        let mut inner = self.lock();
        let mut out = PoolRates { shares: Vec::with_capacity(inner.keys.len()), ..PoolRates::default() };
        for slot in inner.keys.values_mut() {
            if !slot.counts_in_pool(now) {
                continue;
            }
            slot.window.prune(now);
            let share = slot.share(now);
            add(&mut out.requests, share.requests);
            add(&mut out.tokens, share.tokens);
            out.shares.push(share);
        }
        drop(inner);
        out.shares.sort_unstable_by_key(|s| s.id);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::scheduler::tests::record;
    use crate::scheduler::{Demand, Outcome, SchedulerConfig, Verdict};

    /// Keys 1 (10 RPM, 1,000 TPM), 2 (20 RPM) and 3 (5 RPM); `requests`
    /// sent and finished, then key 3 judged invalid.
    fn three_keys_one_invalid(requests: usize) -> Arc<Scheduler> {
        let s = Scheduler::new(SchedulerConfig::default());
        s.sync_keys(&[record(1, Some(10), Some(1000), 0), record(2, Some(20), None, 0), record(3, Some(5), None, 0)]);
        let demand = Demand { tokens: 100, ..Demand::default() };
        for _ in 0..requests {
            let mut lease = s.try_lease(demand).unwrap();
            lease.mark_sent();
            lease.finish(Outcome { success: true, ..Outcome::default() });
        }
        s.judge(3, Verdict::Invalid);
        s
    }

    #[tokio::test(start_paused = true)]
    async fn the_overviews_capacity_is_the_headers_view() {
        let s = three_keys_one_invalid(4);
        tokio::time::advance(Duration::from_secs(5)).await;
        let view = s.pool_rates();
        let cap = s.pool_figures().capacity.unwrap();
        let (r, t) = (view.requests.unwrap(), view.tokens.unwrap());
        assert_eq!((cap.requests_limit, cap.requests_remaining), (Some(r.limit), Some(r.remaining)));
        assert_eq!((cap.tokens_limit, cap.tokens_remaining), (Some(t.limit), Some(t.remaining)));
        assert_eq!(cap.requests_limit, Some(30), "the invalid key is in neither");
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_sums_the_keys_that_can_serve_as_the_snapshot_reports_them() {
        let s = three_keys_one_invalid(3);
        tokio::time::advance(Duration::from_secs(10)).await;
        let view = s.pool_rates();
        let snap = s.snapshot();
        let live = snap.iter().filter(|v| matches!(v.status, "active" | "cooling"));
        let remaining: u64 = live.clone().filter_map(|v| v.remaining_requests).sum();
        let r = view.requests.unwrap();
        assert_eq!((r.limit, r.remaining), (30, remaining), "key 3 is invalid: left out");
        assert_eq!(r.remaining, 28, "one request on each key; key 3's is left out");
        assert_eq!(r.reset, Duration::from_secs(50), "the newest request leaves the minute in 50 s");
        let t = view.tokens.unwrap();
        assert_eq!(t.limit, 1000, "only key 1 has a token limit");
        // Key 2 set aside for the model: its share goes.
        let r2 = view.without(&[2]).requests.unwrap();
        assert_eq!((r2.limit, r2.remaining), (10, remaining - snap[1].remaining_requests.unwrap()));
        // Served from the cache within REFRESH, computed again after it.
        let lease = s.try_lease(Demand { tokens: 100, ..Demand::default() }).unwrap();
        assert!(Arc::ptr_eq(&view, &s.pool_rates()));
        tokio::time::advance(REFRESH).await;
        assert_eq!(s.pool_rates().requests.unwrap().remaining, 27, "the request in flight counts");
        drop(lease);
        // No key with a known limit: no figures.
        let s = Scheduler::new(SchedulerConfig::default());
        s.sync_keys(&[record(1, None, None, 0)]);
        assert!(s.pool_rates().requests.is_none() && s.pool_rates().tokens.is_none());
    }
}
