//! The scheduler's state under its one lock: keys, their index, and the wait
//! queue, with the operations that keep them consistent. Everything here runs
//! with the lock held and never awaits.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::index::Index;
use super::key::{Placement, Slot};
use super::lease::Grant;
use super::record::transition;
use super::{strategy, Demand, NoKey, Strategy};

pub(super) fn slot_has_tpm(inner: &Inner, id: i64) -> bool {
    inner.keys.get(&id).is_some_and(|s| s.tpm.limit().is_some())
}

#[derive(Debug)]
pub(super) struct Inner {
    /// By key id. Ids are the store's, never a caller's, so the fast
    /// non-keyed hash (several lookups a request) is safe here.
    pub(super) keys: rustc_hash::FxHashMap<i64, Slot>,
    pub(super) index: Index,
    pub(super) queue: VecDeque<Waiter>,
    pub(super) next_waiter: u64,
    pub(super) rr_seq: u64,
    /// Virtual time of the `weighted` strategy; new keys start here.
    pub(super) vclock: u64,
    /// When the current day's request counts (`rpd`) reset.
    pub(super) day_end: Instant,
    /// Set when something changed that can make a waiting request hopeless
    /// (keys removed, disabled, invalid, out of budget).
    pub(super) recheck: bool,
    /// How the upstream charges tokens, learned from its headers.
    pub(super) charge: super::charge::ChargeModel,
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) demand: Demand,
    /// Keys this waiter must not be given (a retry's keys only another key
    /// can help); emptied when no other usable key is left.
    pub(super) exclude: Vec<i64>,
    pub(super) tx: oneshot::Sender<Result<Grant, NoKey>>,
}

/// Time until the next 00:00 UTC, when daily limits reset.
pub(super) fn until_utc_midnight() -> Duration {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Duration::from_secs(86_400 - secs % 86_400)
}

impl Inner {
    pub(super) fn slot_placement(&mut self, id: i64, now: Instant, strategy: Strategy) {
        let day_end = self.day_end;
        let Some(slot) = self.keys.get_mut(&id) else { return };
        slot.window.prune(now);
        if slot.cooling_until.is_some_and(|t| t <= now) {
            slot.cooling_until = None;
            transition(slot, "active", "rate-limit reset reached");
        }
        let new = slot.placement(now, strategy, day_end);
        let old = std::mem::replace(&mut slot.placement, new);
        self.index.place(id, old, new);
    }

    /// Day rollover and keys whose parking instant has come.
    pub(super) fn refresh(&mut self, now: Instant, strategy: Strategy) {
        if now >= self.day_end {
            while self.day_end <= now {
                self.day_end += Duration::from_secs(86_400);
            }
            let ids: Vec<i64> = self.keys.keys().copied().collect();
            for id in ids {
                if let Some(slot) = self.keys.get_mut(&id) {
                    slot.day_count = 0;
                }
                self.slot_placement(id, now, strategy);
            }
        }
        loop {
            let due = self.index.due(now).next();
            let Some((at, id)) = due else { break };
            if self.keys.contains_key(&id) {
                // Re-placed keys are ready, parked later, blocked or off: never due again now.
                self.slot_placement(id, now, strategy);
            } else {
                self.index.place(id, Placement::Parked(at), Placement::Off);
            }
        }
    }

    /// The best key with room for `demand`, in strategy order.
    pub(super) fn pick(&mut self, now: Instant, demand: Demand) -> Option<i64> {
        self.pick_where(now, demand, |_| true)
    }

    /// Like `pick`, preferring keys not in `avoid` (those a retry already
    /// failed on) and falling back to them when no other key has room.
    pub(super) fn pick_avoiding(&mut self, now: Instant, demand: Demand, avoid: &[i64]) -> Option<i64> {
        if avoid.is_empty() {
            return self.pick(now, demand);
        }
        self.pick_where(now, demand, |id| !avoid.contains(&id)).or_else(|| self.pick(now, demand))
    }

    /// Whether a key outside `exclude` can serve at all (apart from limits
    /// and cooling): if none can, excluding is pointless.
    pub(super) fn usable_outside(&self, now: Instant, exclude: &[i64]) -> bool {
        self.keys.values().any(|s| !exclude.contains(&s.id) && s.usable(now))
    }

    /// The key to lease now for a retry: one in neither `avoid` nor
    /// `exclude` when one has room, else one in `avoid`; never one in
    /// `exclude` while a key outside it can serve at all. Returns the key
    /// and the `exclude` in force (empty when no key outside it can serve).
    #[inline]
    pub(super) fn pick_now<'e>(
        &mut self,
        now: Instant,
        demand: Demand,
        avoid: &[i64],
        exclude: &'e [i64],
    ) -> (Option<i64>, &'e [i64]) {
        let exclude = if self.usable_outside(now, exclude) { exclude } else { &[][..] };
        let picked = if exclude.is_empty() {
            self.pick_avoiding(now, demand, avoid)
        } else {
            self.pick_where(now, demand, |id| !exclude.contains(&id) && !avoid.contains(&id))
                .or_else(|| self.pick_where(now, demand, |id| !exclude.contains(&id)))
        };
        (picked, exclude)
    }

    /// The first ready key, in strategy order, that passes `allow` and has
    /// room. A ready key's window may hold entries that expired since it was
    /// placed: they are pruned as the key is looked at, so stale entries never
    /// make a key look fuller than it is.
    pub(super) fn pick_where(&mut self, now: Instant, demand: Demand, allow: impl Fn(i64) -> bool) -> Option<i64> {
        let Inner { index, keys, .. } = self;
        index.ready().filter(|id| allow(*id)).find(|id| {
            keys.get_mut(id).is_some_and(|s| {
                s.window.prune(now);
                s.has_room(now, demand)
            })
        })
    }

    /// Reserves `demand` on key `id`; the grant holds what this key takes
    /// (see [`Slot::need`]).
    pub(super) fn reserve(&mut self, id: i64, demand: Demand, now: Instant, strategy: Strategy) -> Option<Grant> {
        self.rr_seq += 1;
        let (rr_seq, vclock) = (self.rr_seq, self.vclock);
        let slot = self.keys.get_mut(&id)?;
        let need = slot.need(demand);
        let demand = Demand {
            tokens: need,
            unsure_tokens: demand.unsure_tokens.min(need),
            overlap: demand.overlap.min(need),
            ..demand
        };
        slot.inflight += 1;
        if let Some(spans) = slot.spans.as_mut() {
            spans.reserved(now);
        }
        slot.reserved_tokens = slot.reserved_tokens.saturating_add(demand.tokens);
        slot.reserved_overlap = slot.reserved_overlap.saturating_add(demand.overlap);
        slot.reserved_micros = slot.reserved_micros.saturating_add(demand.cost_micros);
        slot.rr_seq = rr_seq;
        slot.vtime = slot.vtime.max(vclock) + strategy::STRIDE / slot.weight;
        self.vclock = vclock.max(slot.vtime - strategy::STRIDE / slot.weight);
        let grant = Grant { key_id: id, secret: Arc::clone(&slot.secret), account: Arc::clone(&slot.account), demand };
        self.slot_placement(id, now, strategy);
        Some(grant)
    }

    pub(super) fn unreserve(&mut self, grant: &Grant, now: Instant, strategy: Strategy) {
        if let Some(slot) = self.keys.get_mut(&grant.key_id) {
            slot.release(grant.demand);
            if let Some(spans) = slot.spans.as_mut() {
                spans.answered(now, false);
            }
        }
        self.slot_placement(grant.key_id, now, strategy);
    }

    /// Whether any key could ever serve `demand`; the reason if none can.
    pub(super) fn feasible(&self, now: Instant, demand: Demand) -> Result<(), NoKey> {
        let mut usable = self.keys.values().filter(|s| s.usable(now)).peekable();
        if usable.peek().is_none() {
            return Err(self.none_usable(now));
        }
        let fitting: Vec<&Slot> = usable.filter(|s| s.fits_tpm(demand)).collect();
        if fitting.is_empty() {
            return Err(NoKey::TooLarge { needed: demand.floor() });
        }
        if !fitting.iter().any(|s| s.affordable(demand.cost_micros)) {
            return Err(NoKey::BudgetSpent);
        }
        Ok(())
    }

    /// Serves waiting requests in arrival order, each with the best key that
    /// has room for it; a request no key can fit now keeps its place while
    /// later, smaller ones that fit are served (so none waits while a key
    /// has room for it). Hopeless requests are failed.
    pub(super) fn dispatch(&mut self, now: Instant, strategy: Strategy) {
        if self.queue.is_empty() {
            self.recheck = false;
            return;
        }
        self.refresh(now, strategy);
        let recheck = std::mem::take(&mut self.recheck);
        let mut i = 0;
        while i < self.queue.len() {
            let demand = self.queue[i].demand;
            if self.queue[i].tx.is_closed() {
                self.queue.remove(i);
                continue;
            }
            if recheck && !self.queue[i].exclude.is_empty() && !self.usable_outside(now, &self.queue[i].exclude) {
                // Only excluded keys are left: they are better than none.
                self.queue[i].exclude.clear();
            }
            if self.index.ready_len() > 0 {
                let exclude = std::mem::take(&mut self.queue[i].exclude);
                let picked = self.pick_where(now, demand, |id| !exclude.contains(&id));
                self.queue[i].exclude = exclude;
                if let Some(id) = picked {
                    let Some(waiter) = self.queue.remove(i) else { break };
                    if let Some(grant) = self.reserve(id, demand, now, strategy) {
                        if let Err(Ok(grant)) = waiter.tx.send(Ok(grant)) {
                            // The caller left between our look and the send.
                            self.unreserve(&grant, now, strategy);
                        }
                    }
                    continue;
                }
            }
            if recheck {
                if let Err(reason) = self.feasible(now, demand) {
                    if let Some(waiter) = self.queue.remove(i) {
                        let _ = waiter.tx.send(Err(reason));
                    }
                    continue;
                }
            }
            i += 1;
        }
    }

    /// The next instant time alone can let a waiting request through.
    pub(super) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        // Any waiter may be served out of turn when it fits, so wake for the
        // smallest need in line: room for it comes no later than for any other.
        let demand = self.queue.iter().map(|w| w.demand).reduce(|a, b| Demand {
            tokens: a.tokens.min(b.tokens),
            unsure_tokens: 0,
            overlap: 0,
            cost_micros: a.cost_micros.min(b.cost_micros),
        })?;
        let day_end = self.day_end;
        let Inner { index, keys, .. } = self;
        let ready = index
            .ready()
            .filter_map(|id| {
                let slot = keys.get_mut(&id)?;
                slot.window.prune(now);
                slot.room_at(now, demand, day_end)
            })
            .min();
        // The queue was just dispatched at `now`: only a later instant can help
        // (and waking at `now` again would spin).
        [ready, index.next_unpark()].into_iter().flatten().filter(|t| *t > now).min()
    }

    pub(super) fn remove_waiter(&mut self, id: u64) {
        if let Some(pos) = self.queue.iter().position(|w| w.id == id) {
            self.queue.remove(pos);
        }
    }
}

/// How long a refused caller should wait before trying again.
pub(super) fn retry_after(inner: &Inner, now: Instant, demand: Demand) -> Duration {
    let day_end = inner.day_end;
    inner
        .keys
        .values()
        .filter_map(|s| s.room_at(now, demand, day_end))
        .min()
        .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now).max(Duration::from_secs(1)))
}
