//! Which upstream key serves a request, and when: per-key limits (configured
//! or learned from the upstream's headers), in-flight reservations, a fair
//! wait queue, and the strategies that order keys. Pure logic over the
//! tokio clock, no I/O: the server asks for a [`KeyLease`] and the lease
//! gives its reservation back when it is finished or dropped.
//!
//! Locking: one mutex guards all key state; it is never held across an
//! await, and every operation under it is O(log n) in the number of keys
//! except the slow paths taken when nothing fits.

mod bucket;
mod census;
pub mod charge;
mod index;
mod inner;
mod key;
mod lease;
mod limits;
mod overview;
mod period;
mod persist;
mod pool;
mod record;
mod strategy;
mod window;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{oneshot, Notify};
use tokio::time::{Duration, Instant};

use crate::store::KeyRecord;
pub use census::KeyCounts;
use index::Index;
use inner::{retry_after, slot_has_tpm, until_utc_midnight, Inner, Waiter};
use key::{Health, Placement, Slot};
use lease::Grant;
pub use lease::{Charged, Counted, Hit, KeyLease, Outcome, Reset, Verdict};
pub use limits::RateInfo;
pub use overview::{Capacity, PoolFigures, WindowResets};
pub use pool::{PoolLimit, PoolRates};
use record::{apply_verdict, record_sent, transition};
pub use strategy::Strategy;

/// Limits that apply to keys which carry none of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub rpd: Option<u32>,
    pub max_inflight: Option<u32>,
    /// Spans shorter than a minute the upstream counts a key's requests
    /// over (Azure: 10 s and 1 s), the one its `x-ratelimit-*-requests`
    /// headers speak of first; in each the key may send its RPM's share of
    /// the span, at least one (see `period`). Empty: per minute only.
    pub requests_per: &'static [Duration],
    /// RPM per 1,000 TPM for a key that has a TPM but no RPM of its own
    /// (Azure derives a deployment's RPM so: 6 per 1,000 TPM).
    pub rpm_per_thousand_tpm: Option<u32>,
}

/// How the pool is scheduled.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub defaults: DefaultLimits,
    pub strategy: Strategy,
    /// Longest a request waits for a key with room before it gets a 429.
    pub max_wait: Duration,
    /// Most requests waiting at once; past it, new ones get a 429 at once.
    pub max_queue: usize,
    /// First probe of an invalid key; the interval doubles up to an hour.
    pub probe_invalid: Duration,
    /// Interval between probes of an exhausted key (balances rarely come back).
    pub probe_exhausted: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            defaults: DefaultLimits::default(),
            strategy: Strategy::default(),
            max_wait: Duration::from_secs(30),
            max_queue: 1024,
            probe_invalid: Duration::from_secs(60),
            probe_exhausted: Duration::from_secs(6 * 3600),
        }
    }
}

/// What a request needs from a key: its estimated tokens (as the upstream's
/// TPM counts them) and its estimated cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// The upstream's admission charge, estimated never below it.
    pub tokens: u64,
    /// How much of `tokens` may be over-estimate (a prompt counted before the
    /// tokenizer was built, the character estimate above the tokenizer's
    /// count): only `tokens - unsure_tokens` is certain, so only that can
    /// make a request too large for every key. 0: all of it is certain.
    pub unsure_tokens: u64,
    /// How much of `tokens` an upstream charging the larger of the prompt
    /// and the completion budget (not their sum) would not charge: the
    /// smaller of the two. 0 once that rule is in use.
    pub overlap: u64,
    pub cost_micros: u64,
}

impl Demand {
    /// Tokens the request certainly needs.
    pub fn floor(&self) -> u64 {
        self.tokens.saturating_sub(self.unsure_tokens)
    }
}

/// Whose request waits in the queue: its tenant (a gateway token's id; 0
/// for requests without one) and that tenant's priority. The queue offers
/// room by priority (higher first), then round robin over tenants, so one
/// tenant's flood does not hold up another's requests; a request that has
/// waited half of `max_wait` keeps the room that frees up until it fits, so
/// smaller requests cannot overtake a large one forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Who {
    pub tenant: i64,
    pub priority: i64,
}

/// What a probe proved about a key (see `upstream::probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// Answered 2xx, or counted it against a limit: the key authenticates.
    Healthy,
    /// Refused with a key-specific code.
    Invalid,
    /// Said the balance is spent.
    Exhausted,
    /// Answered in a way that says nothing about the key (404, a refusal naming no key).
    Unknown,
    /// Could not be asked (no connection, a timeout, 5xx).
    Unreachable,
}

/// Why no key was leased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoKey {
    #[error("no upstream keys are configured")]
    NoKeys,
    /// Keys exist, but none can serve: how many are in which state.
    #[error("no key can serve: {}", .0.describe())]
    Unusable(KeyCounts),
    #[error("the request needs {needed} tokens, more than any key's per-minute token limit")]
    TooLarge { needed: u64 },
    #[error("every key's budget is spent")]
    BudgetSpent,
    #[error("every key is at its limit")]
    Busy { waited: Duration, retry_after: Duration },
}

/// The scheduler: owns every key's live state and the wait queue.
#[derive(Debug)]
pub struct Scheduler {
    inner: Mutex<Inner>,
    config: SchedulerConfig,
    /// Tells the refill timer that the next instant to wake may have changed.
    wake: Arc<Notify>,
    /// Some key has a tokens-per-minute limit (configured or learned), so
    /// prompts must be counted with the real tokenizer.
    counts_tokens: std::sync::atomic::AtomicBool,
    /// The learned scale of the upstream's charge over keypool's estimate,
    /// in thousandths (see [`charge`]); read on every request without the lock.
    charge_scale: std::sync::atomic::AtomicU64,
    /// Whether the upstream was shown to charge the larger of the prompt and
    /// the completion budget rather than their sum (see [`charge`]).
    charge_max: std::sync::atomic::AtomicBool,
    /// Key × model pairs set aside until an instant (the key cannot use that model).
    model_aside: Mutex<HashMap<(i64, String), Instant>>,
    /// The pool's limits as callers see them, computed at most every 200 ms.
    pool: pool::PoolCache,
}

/// How long a key stays set aside for a model it could not use: projects
/// gain models rarely, and a set-aside key still serves every other model.
pub const MODEL_SET_ASIDE: Duration = Duration::from_secs(600);

/// Removes a waiting request from the queue however its wait ends: served,
/// timed out, or dropped because the caller went away. A key granted in the
/// instant between is given back.
struct WaitGuard {
    scheduler: Arc<Scheduler>,
    id: u64,
    rx: oneshot::Receiver<Result<Grant, NoKey>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let strategy = self.scheduler.config.strategy;
        let mut inner = self.scheduler.lock();
        inner.remove_waiter(self.id);
        if let Ok(Ok(grant)) = self.rx.try_recv() {
            inner.unreserve(&grant, now, strategy);
            inner.dispatch(now, strategy);
            self.scheduler.wake_if_waiting(inner);
        } else if inner.held.is_some() {
            // It may have been the one holding the room: the others look again.
            inner.dispatch(now, strategy);
            self.scheduler.wake_if_waiting(inner);
        }
    }
}

impl Scheduler {
    /// A scheduler with no keys. Inside a tokio runtime it starts the timer
    /// that wakes waiting requests when a key's limit refills.
    pub fn new(config: SchedulerConfig) -> Arc<Scheduler> {
        let scheduler = Arc::new(Scheduler {
            inner: Mutex::new(Inner {
                keys: rustc_hash::FxHashMap::default(),
                index: Index::default(),
                queue: VecDeque::new(),
                next_waiter: 0,
                rr_seq: 0,
                vclock: 0,
                day_end: Instant::now() + until_utc_midnight(),
                recheck: false,
                charge: charge::ChargeModel::default(),
                age: config.max_wait / 2,
                held: None,
                last_served: rustc_hash::FxHashMap::default(),
                grants: 0,
            }),
            config,
            wake: Arc::new(Notify::new()),
            counts_tokens: std::sync::atomic::AtomicBool::new(false),
            charge_scale: std::sync::atomic::AtomicU64::new(charge::UNIT),
            charge_max: std::sync::atomic::AtomicBool::new(false),
            model_aside: Mutex::new(HashMap::new()),
            pool: pool::PoolCache::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(refill_timer(Arc::downgrade(&scheduler), Arc::clone(&scheduler.wake)));
        }
        scheduler
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counters, never broken
        // invariants that matter more than serving: keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the live set of keys match the store: new keys join, changed
    /// ones take their new settings (keeping their live counts), removed ones go.
    pub fn sync_keys(&self, records: &[KeyRecord]) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let d = self.config.defaults;
        let mut inner = self.lock();
        let gone: Vec<i64> = inner.keys.keys().filter(|id| !records.iter().any(|r| r.id == **id)).copied().collect();
        for id in gone {
            if let Some(slot) = inner.keys.remove(&id) {
                inner.index.place(id, slot.placement, Placement::Off);
                transition(&slot, "removed", "deleted by an operator");
            }
        }
        for r in records {
            let vclock = inner.vclock;
            match inner.keys.get_mut(&r.id) {
                Some(slot) => {
                    let was = slot.enabled;
                    slot.apply(r, &d, now);
                    if was != slot.enabled {
                        let to = if slot.enabled { "active" } else { "disabled" };
                        transition(slot, to, "changed by an operator");
                    }
                }
                None => {
                    inner.keys.insert(r.id, Slot::new(r, &d, vclock, now));
                }
            }
            inner.slot_placement(r.id, now, strategy);
        }
        if inner.keys.values().any(|s| s.tpm.limit().is_some()) {
            self.counts_tokens.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        inner.recheck = true;
        inner.dispatch(now, strategy);
        drop(inner);
        self.wake.notify_one();
    }

    /// Whether prompts must be counted exactly: some key has a TPM limit.
    pub fn counts_tokens(&self) -> bool {
        self.counts_tokens.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The learned scale of the upstream's token charge over keypool's
    /// estimate, in thousandths of [`charge::UNIT`].
    pub fn charge_scale(&self) -> u64 {
        self.charge_scale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the upstream adds a request's parts into its charge, as learned.
    pub fn charge_rule(&self) -> charge::Rule {
        if self.charge_max.load(std::sync::atomic::Ordering::Relaxed) {
            charge::Rule::Max
        } else {
            charge::Rule::Sum
        }
    }

    /// Keys counted by state (for `/healthz`, `/readyz` and error messages).
    pub fn census(&self) -> KeyCounts {
        self.lock().census(Instant::now())
    }

    /// Applies what an answer proved about key `id` outside any lease (a key
    /// refused while another key was served: the refusal was the key's).
    pub fn judge(&self, id: i64, verdict: Verdict) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else { return };
        apply_verdict(slot, verdict, now, &self.config);
        inner.recheck = true;
        inner.slot_placement(id, now, strategy);
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
    }

    /// Key `id` was refused with no key-specific code while another key was
    /// served: perhaps its own fault, perhaps a passing refusal (a CDN, a
    /// region block on some requests). The first time it goes on trial (one
    /// request at a time until an answer judges it); suspected again before
    /// it served anything, it is invalid.
    pub fn suspect(&self, id: i64) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else { return };
        if std::mem::take(&mut slot.suspected) {
            apply_verdict(slot, Verdict::Invalid, now, &self.config);
            inner.recheck = true;
        } else if slot.health == Health::Active {
            slot.suspected = true;
            slot.on_trial = true;
        }
        inner.slot_placement(id, now, strategy);
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
    }

    /// Sets key `id` aside for `model` only (404 `model_not_found`, no access)
    /// for [`MODEL_SET_ASIDE`]; other models still use the key.
    pub fn set_aside_for_model(&self, id: i64, model: &str) {
        let until = Instant::now() + MODEL_SET_ASIDE;
        let mut aside = self.model_aside.lock().unwrap_or_else(|p| p.into_inner());
        aside.retain(|_, t| *t > Instant::now());
        aside.insert((id, model.to_owned()), until);
        tracing::info!(key_id = id, model, "key set aside for this model: the upstream says it cannot use it");
    }

    /// Keys set aside for `model` now.
    pub fn set_aside_keys(&self, model: &str) -> Vec<i64> {
        let aside = self.model_aside.lock().unwrap_or_else(|p| p.into_inner());
        if aside.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        aside.iter().filter(|((_, m), t)| m == model && **t > now).map(|((id, _), _)| *id).collect()
    }

    /// Whether key `id` is loaded here.
    pub fn has_key(&self, id: i64) -> bool {
        self.lock().keys.contains_key(&id)
    }

    /// Ids of the keys loaded here.
    pub fn key_ids(&self) -> Vec<i64> {
        self.lock().keys.keys().copied().collect()
    }

    /// Number of keys that can serve at all.
    pub fn usable_keys(&self) -> usize {
        let now = Instant::now();
        self.lock().keys.values().filter(|s| s.usable(now)).count()
    }

    /// Requests waiting for a key.
    pub fn queue_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// A key for `demand` now, or the reason there is none (never waits).
    pub fn try_lease(self: &Arc<Self>, demand: Demand) -> Result<KeyLease, NoKey> {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        inner.refresh(now, strategy);
        inner.dispatch(now, strategy);
        if let Some(id) = inner.pick(now, demand) {
            if let Some(grant) = inner.reserve(id, demand, now, strategy) {
                drop(inner);
                return Ok(KeyLease::new(Arc::clone(self), grant));
            }
        }
        inner.feasible(now, demand)?;
        let retry_after = retry_after(&inner, now, demand);
        Err(NoKey::Busy { waited: Duration::ZERO, retry_after })
    }

    /// [`Scheduler::acquire_avoiding`] without the wait: a key with room now
    /// (by the same rules for `avoid` and `exclude`), else `Busy` (or why no
    /// key ever could). For choosing among upstreams before waiting on any.
    pub fn try_lease_avoiding(
        self: &Arc<Self>,
        demand: Demand,
        avoid: &[i64],
        exclude: &[i64],
    ) -> Result<KeyLease, NoKey> {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        inner.refresh(now, strategy);
        inner.dispatch(now, strategy);
        let (picked, _) = inner.pick_now(now, demand, avoid, exclude);
        if let Some(grant) = picked.and_then(|id| inner.reserve(id, demand, now, strategy)) {
            drop(inner);
            return Ok(KeyLease::new(Arc::clone(self), grant));
        }
        inner.feasible(now, demand)?;
        let retry_after = retry_after(&inner, now, demand);
        Err(NoKey::Busy { waited: Duration::ZERO, retry_after })
    }

    /// A key for `demand`: at once if one has room, else after waiting in
    /// line (first come, first served) up to `max_wait`. Dropping the future
    /// leaves the line at once.
    pub async fn acquire(self: &Arc<Self>, demand: Demand) -> Result<KeyLease, NoKey> {
        self.acquire_avoiding(demand, &[], &[]).await
    }

    /// [`Scheduler::acquire`] for a retry: a key in neither list when one
    /// has room; a key in `avoid` (tried last) before waiting; never a key in
    /// `exclude` (only another key can help: the request waits for one)
    /// while any other key can serve at all.
    pub async fn acquire_avoiding(
        self: &Arc<Self>,
        demand: Demand,
        avoid: &[i64],
        exclude: &[i64],
    ) -> Result<KeyLease, NoKey> {
        self.acquire_waited(demand, avoid, exclude, Instant::now(), Who::default()).await
    }

    /// [`Scheduler::acquire_avoiding`] for `who`'s request, which began
    /// waiting at `since` (for its tenant's own limits): `max_wait` counts
    /// from then, so the request waits no longer in all. While it waits,
    /// the queue serves tenants fairly (see [`Who`]).
    pub async fn acquire_waited(
        self: &Arc<Self>,
        demand: Demand,
        avoid: &[i64],
        exclude: &[i64],
        since: Instant,
        who: Who,
    ) -> Result<KeyLease, NoKey> {
        let started = Instant::now();
        let deadline = since + self.config.max_wait;
        let strategy = self.config.strategy;
        let (id, rx) = {
            let mut inner = self.lock();
            inner.refresh(started, strategy);
            inner.dispatch(started, strategy);
            let (picked, exclude) = inner.pick_now(started, demand, avoid, exclude);
            if let Some(id) = picked {
                if let Some(grant) = inner.reserve(id, demand, started, strategy) {
                    drop(inner);
                    return Ok(KeyLease::new(Arc::clone(self), grant));
                }
            }
            inner.feasible(started, demand)?;
            if deadline <= started || inner.queue.len() >= self.config.max_queue {
                let retry_after = retry_after(&inner, started, demand);
                return Err(NoKey::Busy { waited: started - since, retry_after });
            }
            let (tx, rx) = oneshot::channel();
            inner.next_waiter += 1;
            let id = inner.next_waiter;
            inner.queue.push_back(Waiter { id, demand, who, since: started, exclude: exclude.to_vec(), tx });
            (id, rx)
        };
        self.wake.notify_one();
        let mut guard = WaitGuard { scheduler: Arc::clone(self), id, rx };
        match tokio::time::timeout_at(deadline, &mut guard.rx).await {
            Ok(Ok(Ok(grant))) => Ok(KeyLease::new(Arc::clone(self), grant)),
            Ok(Ok(Err(reason))) => Err(reason),
            Ok(Err(_)) => Err(NoKey::NoKeys),
            Err(_) => {
                // Granted in the last instant? Then use it rather than fail.
                if let Ok(Ok(grant)) = guard.rx.try_recv() {
                    return Ok(KeyLease::new(Arc::clone(self), grant));
                }
                let now = Instant::now();
                let inner = self.lock();
                let retry_after = retry_after(&inner, now, demand);
                Err(NoKey::Busy { waited: now - since, retry_after })
            }
        }
    }

    /// Longest a request waits for a key with room.
    pub fn max_wait(&self) -> Duration {
        self.config.max_wait
    }

    /// Takes in an answer's rate-limit headers for key `id`; `first`: the
    /// first headers of this request, which needed `certain` tokens.
    fn observe(&self, id: i64, info: &RateInfo, success: bool, first: bool, certain: u64) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else { return };
        let seen = slot.observe(info, success, certain, now);
        if let Some(spans) = slot.spans.as_mut().filter(|_| first) {
            spans.answered(now, true);
        }
        // A refusal's headers say the budget is empty, which its own
        // handling (cooling, a lowered limit) already takes in.
        if let (true, Some(seen), Some(limit)) = (success, seen, slot.tpm.base()) {
            let scale = inner.charge.sample(seen, limit);
            self.charge_scale.store(scale, std::sync::atomic::Ordering::Relaxed);
            self.charge_max.store(inner.charge.rule() == charge::Rule::Max, std::sync::atomic::Ordering::Relaxed);
        }
        inner.slot_placement(id, now, strategy);
        if slot_has_tpm(&inner, id) {
            self.counts_tokens.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Learning that a key announces no limits can give it room at once.
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
    }

    /// Gives a lease's reservation back and records what it used.
    fn finish(&self, grant: &Grant, sent: bool, headed: bool, outcome: Outcome) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        if let Some(slot) = inner.keys.get_mut(&grant.key_id) {
            slot.release(grant.demand);
            // Ended without headers: counted from now (it may have arrived just before).
            if let Some(spans) = slot.spans.as_mut().filter(|_| !headed) {
                spans.answered(now, sent);
            }
            if sent {
                record_sent(slot, grant.demand, &outcome, now, &self.config);
            }
            if outcome.success {
                slot.suspected = false;
            }
        }
        // Refused tokens under the larger-part rule: the sum holds again.
        if let Verdict::RateLimited { reset } = outcome.verdict {
            if reset.hit != Hit::Requests && inner.charge.refuse() {
                self.charge_max.store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if matches!(outcome.verdict, Verdict::Invalid | Verdict::Exhausted) || outcome.cost_micros.is_some() {
            inner.recheck = true;
        }
        inner.slot_placement(grant.key_id, now, strategy);
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
    }

    /// Invalid and exhausted keys whose probe is due: (id, secret).
    pub fn due_probes(&self) -> Vec<(i64, Arc<secrecy::SecretString>)> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .keys
            .values()
            .filter(|s| s.enabled && s.health != Health::Active && s.next_probe.is_some_and(|t| t <= now))
            .map(|s| (s.id, Arc::clone(&s.secret)))
            .collect()
    }

    /// Every enabled key with what it is sent with (for balance reads).
    pub fn enabled_keys(&self) -> Vec<(i64, Arc<secrecy::SecretString>, Arc<crate::upstream::Account>)> {
        let inner = self.lock();
        let mut keys: Vec<_> = inner
            .keys
            .values()
            .filter(|s| s.enabled)
            .map(|s| (s.id, Arc::clone(&s.secret), Arc::clone(&s.account)))
            .collect();
        keys.sort_by_key(|k| k.0);
        keys
    }

    /// When the next probe is due, if any key needs one.
    pub fn next_probe_at(&self) -> Option<Instant> {
        let inner = self.lock();
        inner.keys.values().filter(|s| s.enabled && s.health != Health::Active).filter_map(|s| s.next_probe).min()
    }

    /// A probe's result: a key proved good returns to rotation; one proved
    /// invalid or exhausted is probed again later (invalid keys ever more
    /// rarely); one the probe could not judge gets one real request on
    /// trial; an unreachable upstream says nothing, and the probe is repeated.
    pub fn probe_result(&self, id: i64, probed: Probed) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else { return };
        if slot.health == Health::Active {
            return;
        }
        match probed {
            Probed::Healthy | Probed::Unknown => {
                slot.health = Health::Active;
                slot.on_trial = probed == Probed::Unknown;
                if !slot.on_trial {
                    slot.next_probe = None;
                }
                let why = if slot.on_trial {
                    "a probe could not tell; one real request on trial"
                } else {
                    "a probe answered well"
                };
                transition(slot, "active", why);
                inner.recheck = true;
                inner.slot_placement(id, now, strategy);
                inner.dispatch(now, strategy);
                self.wake_if_waiting(inner);
                return;
            }
            Probed::Invalid if slot.health != Health::Invalid => {
                apply_verdict(slot, Verdict::Invalid, now, &self.config);
                return;
            }
            Probed::Exhausted if slot.health != Health::Exhausted => {
                apply_verdict(slot, Verdict::Exhausted, now, &self.config);
                return;
            }
            Probed::Invalid | Probed::Exhausted | Probed::Unreachable => {}
        }
        if slot.health == Health::Invalid && probed != Probed::Unreachable {
            slot.probe_every = (slot.probe_every * 2).min(Duration::from_secs(3600)).max(self.config.probe_invalid);
        }
        slot.next_probe = Some(now + slot.probe_every);
    }

    /// The upstream itself failed (every key at once): what keys suffered
    /// meanwhile is not theirs to carry.
    pub fn forgive_connect_failures(&self) {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let ids: Vec<i64> = inner.keys.keys().copied().collect();
        for id in ids {
            // Connect failures never rest a key (see `record::apply_verdict`),
            // so a cooling key here cools for its rate limit: keep it.
            if let Some(slot) = inner.keys.get_mut(&id) {
                slot.connect_failures = 0;
            }
            inner.slot_placement(id, now, strategy);
        }
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
    }

    /// Tells the refill timer to look again when requests are waiting: a
    /// change to a key may have moved the next instant one of them fits.
    fn wake_if_waiting(&self, inner: MutexGuard<'_, Inner>) {
        let waiting = !inner.queue.is_empty();
        drop(inner);
        if waiting {
            self.wake.notify_one();
        }
    }

    /// Runs the queue at `now` and says when to run it next (the refill timer).
    fn tick(&self) -> Option<Instant> {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        inner.dispatch(now, strategy);
        inner.next_wake(now)
    }

    /// Takes the provider's balance for key `id` (micro-USD left, see
    /// `upstream::providers`); a key at zero gets no request from now on.
    /// False when the key is not loaded here.
    pub fn set_balance(&self, id: i64, micros: u64) -> bool {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else { return false };
        let had_money = slot.budget_micros.is_none_or(|b| slot.spent_micros < b);
        slot.set_balance(micros, crate::store::now_unix_ms());
        if had_money && slot.budget_micros.is_some_and(|b| slot.spent_micros >= b) {
            transition(slot, "spent", "the provider says its balance is used up");
        }
        inner.slot_placement(id, now, strategy);
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
        true
    }

    /// Zeroes key `id`'s live totals (requests, successes, failures, spend)
    /// after the store's were reset; usage counted but not yet written
    /// still reaches the store. False when the key is not loaded.
    pub fn reset_totals(&self, id: i64) -> bool {
        let now = Instant::now();
        let strategy = self.config.strategy;
        let mut inner = self.lock();
        let Some(slot) = inner.keys.get_mut(&id) else { return false };
        slot.requests_total = 0;
        slot.successes_total = 0;
        slot.failures_total = 0;
        slot.spent_micros = 0;
        // A key whose budget was spent may serve again.
        inner.slot_placement(id, now, strategy);
        inner.dispatch(now, strategy);
        self.wake_if_waiting(inner);
        true
    }

    /// Every key's live state, for the demo table and (later) the admin API.
    pub fn snapshot(&self) -> Vec<KeyView> {
        let now = Instant::now();
        let wall_ms = crate::store::now_unix_ms();
        let mut inner = self.lock();
        let mut views: Vec<KeyView> = inner
            .keys
            .values_mut()
            .map(|s| {
                s.window.prune(now);
                KeyView {
                    id: s.id,
                    label: s.label.clone(),
                    status: s.status(now),
                    requests: s.requests_total,
                    successes: s.successes_total,
                    failures: s.failures_total,
                    inflight: s.inflight,
                    rpm: s.rpm.limit(),
                    tpm: s.tpm.limit(),
                    remaining_requests: s.rpm.limit().map(|l| l.saturating_sub(s.used_requests(now))),
                    remaining_tokens: s.tpm.limit().map(|l| l.saturating_sub(s.used_tokens(now))),
                    reset_in: s.window.next_expiry().map(|t| t.saturating_duration_since(now)),
                    spent_micros: s.spent_micros,
                    budget_micros: s.budget_micros,
                    balance_micros: s.balance.map(|(m, _)| m),
                    balance_read_at_ms: s.balance.map(|(_, at)| at),
                    cooling_until_ms: s
                        .cooling_until
                        .filter(|t| *t > now)
                        .map(|t| wall_ms.saturating_add(t.duration_since(now).as_millis() as i64)),
                    reason: persist::reason_of(s.health),
                    last_error: s.last_error.map(|(word, _)| word),
                    last_error_at_ms: s.last_error.map(|(_, at)| at),
                }
            })
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }
}

/// Wakes the queue at the instants keys regain room. Holds only a weak
/// reference, and ends when the scheduler is dropped.
async fn refill_timer(scheduler: Weak<Scheduler>, wake: Arc<Notify>) {
    loop {
        let next = match scheduler.upgrade() {
            Some(s) => s.tick(),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// A key as operators see it: no secret, live numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub id: i64,
    pub label: Option<String>,
    /// active, cooling, exhausted, invalid, disabled or expired.
    pub status: &'static str,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub inflight: u64,
    /// Effective limits: configured, else learned from the upstream.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Requests left this minute; None when the key has no known request limit.
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Until the oldest request of the current minute stops counting.
    pub reset_in: Option<Duration>,
    pub spent_micros: u64,
    /// The budget in force (the operator's, or the provider's balance's when smaller).
    pub budget_micros: Option<u64>,
    /// The provider's last balance reading, micro-USD, and when (Unix ms).
    pub balance_micros: Option<u64>,
    pub balance_read_at_ms: Option<i64>,
    /// Why an invalid or exhausted key is out, in words.
    pub reason: Option<String>,
    /// When a cooling key takes requests again (Unix ms); `None` when not cooling.
    pub cooling_until_ms: Option<i64>,
    /// The last answer that went wrong for the key (`rate_limited`,
    /// `invalid_key`, `insufficient_quota`, `upstream_error`, …), and when (Unix ms).
    pub last_error: Option<&'static str>,
    pub last_error_at_ms: Option<i64>,
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
