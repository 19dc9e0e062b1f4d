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
    /// A waiter that has waited this long holds the room that frees up
    /// (see `holds_room`): half of `max_wait`.
    pub(super) age: Duration,
    /// Set by the last dispatch when an aged waiter holds the room that
    /// frees up (a new request does not take it either): the holder's
    /// demand, so the queue wakes when room for it comes, not for the
    /// smaller ones it holds up.
    pub(super) held: Option<Demand>,
    /// When each tenant's waiter was last served from the queue (a count
    /// of grants): the one served longest ago goes first among equals.
    pub(super) last_served: rustc_hash::FxHashMap<i64, u64>,
    pub(super) grants: u64,
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) demand: Demand,
    /// Whose request it is, for the fair order.
    pub(super) who: super::Who,
    /// When it began waiting here (for ageing).
    pub(super) since: Instant,
    /// Keys this waiter must not be given (a retry's keys only another key
    /// can help); emptied when no other usable key is left.
    pub(super) exclude: Vec<i64>,
    pub(super) tx: oneshot::Sender<Result<Grant, NoKey>>,
}

/// Tenants whose last turn is remembered at most (past it the memory
/// starts over).
const LAST_SERVED_CAP: usize = 65_536;

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
        if self.held.is_some() {
            // An aged waiter keeps the room that frees up: a newcomer waits behind it.
            return (None, exclude);
        }
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

    /// Serves waiting requests, each with the best key that has room for
    /// it, in the fair order ([`Inner::fair_order`]; arrival order when one
    /// tenant waits); a request no key can fit now keeps its place while
    /// later, smaller ones that fit are served, until it has waited half of
    /// `max_wait` (ageing, [`Inner::holds_room`]). Hopeless requests are
    /// failed. Takes the queue out once, so a pass is O(n log n).
    pub(super) fn dispatch(&mut self, now: Instant, strategy: Strategy) {
        let age = self.age;
        self.held = None;
        if self.queue.is_empty() {
            self.recheck = false;
            return;
        }
        self.refresh(now, strategy);
        let recheck = std::mem::take(&mut self.recheck);
        let mut queue = std::mem::take(&mut self.queue);
        let fair = self.fair_order(&mut queue);
        let mut kept: VecDeque<Waiter> = VecDeque::with_capacity(queue.len());
        for waiter in queue {
            if self.held.is_some() {
                kept.push_back(waiter);
                continue;
            }
            if let Some(waiter) = self.try_serve(waiter, now, strategy, recheck) {
                self.holds_room(&waiter, now, age);
                kept.push_back(waiter);
            }
        }
        if fair {
            // Back in arrival order: ranks and turns are recomputed each pass.
            kept.make_contiguous().sort_unstable_by_key(|w| w.id);
        }
        // Waiters that arrived during the pass (none: the lock is held) would follow.
        kept.append(&mut self.queue);
        self.queue = kept;
    }

    /// Puts `queue` in the order waiters are offered room in when several
    /// tenants (or priorities) wait, and says whether it did: higher
    /// priority first; within a priority, round robin over tenants (each
    /// tenant's first waiter, then each one's second, …), and among tenants
    /// at the same turn the one served from the queue longest ago first,
    /// arrival order breaking ties. So one tenant's flood of requests waits
    /// behind its own earlier ones, not in front of another tenant's single
    /// request. With one tenant at one priority the queue stays in arrival
    /// order (false).
    fn fair_order(&self, queue: &mut VecDeque<Waiter>) -> bool {
        let Some(first) = queue.front().map(|w| w.who) else { return false };
        if queue.iter().all(|w| w.who == first) {
            return false;
        }
        let mut rank: rustc_hash::FxHashMap<i64, u32> = rustc_hash::FxHashMap::default();
        let mut keys: rustc_hash::FxHashMap<u64, (std::cmp::Reverse<i64>, u32, u64)> = rustc_hash::FxHashMap::default();
        for w in queue.iter() {
            let r = rank.entry(w.who.tenant).or_default();
            let served = self.last_served.get(&w.who.tenant).copied().unwrap_or(0);
            keys.insert(w.id, (std::cmp::Reverse(w.who.priority), *r, served));
            *r += 1;
        }
        queue.make_contiguous().sort_unstable_by_key(|w| (keys.get(&w.id).copied(), w.id));
        true
    }

    /// Whether `waiter`, which was not served, has waited `age` or more and
    /// can be served before its own deadline (a key could fit it, and time
    /// alone brings room by then, or a finishing request may): then no
    /// waiter after it in this pass is served, nor a new request, so the
    /// room that frees up collects for it instead of going to smaller
    /// requests behind it forever (ageing). Sets `held` when so.
    fn holds_room(&mut self, waiter: &Waiter, now: Instant, age: Duration) -> bool {
        if now.saturating_duration_since(waiter.since) < age || self.feasible(now, waiter.demand).is_err() {
            return false;
        }
        let deadline = waiter.since + age * 2;
        let day_end = self.day_end;
        let Inner { index, keys, .. } = self;
        // Room by time alone only after its deadline: holding would only hold up the others.
        let too_late = index
            .ready()
            .filter_map(|id| keys.get(&id).and_then(|slot| slot.room_at(now, waiter.demand, day_end)))
            .min()
            .is_some_and(|at| at > deadline);
        if too_late {
            return false;
        }
        self.held = Some(waiter.demand);
        true
    }

    /// Offers `waiter` a key: `None` when it left the queue (served, told it
    /// never can be, or gone), else the waiter, still waiting.
    fn try_serve(&mut self, mut waiter: Waiter, now: Instant, strategy: Strategy, recheck: bool) -> Option<Waiter> {
        let demand = waiter.demand;
        if waiter.tx.is_closed() {
            return None;
        }
        if recheck && !waiter.exclude.is_empty() && !self.usable_outside(now, &waiter.exclude) {
            // Only excluded keys are left: they are better than none.
            waiter.exclude.clear();
        }
        if self.index.ready_len() > 0 {
            let exclude = std::mem::take(&mut waiter.exclude);
            let picked = self.pick_where(now, demand, |id| !exclude.contains(&id));
            waiter.exclude = exclude;
            if let Some(id) = picked {
                self.grants += 1;
                if self.last_served.len() >= LAST_SERVED_CAP && !self.last_served.contains_key(&waiter.who.tenant) {
                    // Only an order among equals: forgetting it costs a turn at most.
                    self.last_served.clear();
                }
                self.last_served.insert(waiter.who.tenant, self.grants);
                if let Some(grant) = self.reserve(id, demand, now, strategy) {
                    if let Err(Ok(grant)) = waiter.tx.send(Ok(grant)) {
                        // The caller left between our look and the send.
                        self.unreserve(&grant, now, strategy);
                    }
                }
                return None;
            }
        }
        if recheck {
            if let Err(reason) = self.feasible(now, demand) {
                let _ = waiter.tx.send(Err(reason));
                return None;
            }
        }
        Some(waiter)
    }

    /// The next instant time alone can let a waiting request through.
    pub(super) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        // Any waiter may be served out of turn when it fits, so wake for the
        // smallest need in line: room for it comes no later than for any
        // other. While an aged waiter holds the room, for its need alone.
        let smallest = self.queue.iter().map(|w| w.demand).reduce(|a, b| Demand {
            tokens: a.tokens.min(b.tokens),
            unsure_tokens: 0,
            overlap: 0,
            cost_micros: a.cost_micros.min(b.cost_micros),
        })?;
        let demand = self.held.unwrap_or(smallest);
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
