#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests over random interleavings of arrivals, completions, header
//! updates and clock advances, checked against an oracle "upstream" that
//! enforces each key's limits both as a token bucket (capacity L, refilling
//! at L per minute) and as a rolling 60 s window of send times.
//!
//! Properties:
//! - `never_oversends_and_never_idles_a_waiter`: every send is admitted by
//!   both oracles for requests, and for tokens by the key's own model
//!   (beyond the estimate errors of the requests in flight); after every
//!   step no waiting request could be served by some key, and the queue
//!   holds exactly the requests still waiting.
//! - `try_lease_respects_rpm_and_refuses_only_when_full`: with leases
//!   finished at once, no key serves more than its rpm in any 60 s span, and
//!   a refusal means every key served its rpm within the last minute.

use std::collections::BTreeMap;

use keypool_sse::Usage;
use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, ProptestConfig, TestCaseError};
use proptest::strategy::Strategy as _;
use tokio::task::JoinHandle;

use super::tests::record;
use super::*;

/// One minute in milliseconds: the oracle's unit of time is the millisecond.
const MIN: u64 = 60_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        proptest::strategy::Just(Strategy::LeastUsed),
        proptest::strategy::Just(Strategy::RoundRobin),
        proptest::strategy::Just(Strategy::Weighted),
        proptest::strategy::Just(Strategy::LeastInflight),
        proptest::strategy::Just(Strategy::BalanceEven),
    ]
}

/// How the upstream counts, and so which oracle checks tokens and answers
/// with `x-ratelimit-*` headers (requests are checked by both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Bucket,
    Window,
}

#[derive(Debug, Clone)]
struct KeySpec {
    /// The upstream's request limit per minute.
    rpm: u64,
    /// The upstream's token limit per minute.
    tpm: Option<u64>,
    /// Configured in keypool; otherwise only learned from headers.
    configured: bool,
    model: Model,
    /// A bucket key whose bucket keypool already trusts (as after enough
    /// answers showed it), so its bucket count is what admits requests.
    trusted: bool,
}

fn key_spec() -> impl proptest::strategy::Strategy<Value = KeySpec> {
    (1u64..=5, prop::option::of(60u64..=300), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(rpm, tpm, configured, b, trusted)| {
            let model = if b { Model::Bucket } else { Model::Window };
            KeySpec { rpm, tpm, configured, model, trusted: trusted && b }
        },
    )
}

#[derive(Debug, Clone)]
enum Op {
    /// A request arrives: `try_lease`, or `acquire` in a task when `wait`.
    /// Its real usage is its estimate minus `delta` (plus `delta` when the
    /// case allows overuse); unreported (`!usage_known`) it equals the estimate.
    Arrive { tokens: u64, delta: u64, usage_known: bool, wait: bool },
    /// A lease taken and dropped before it was sent.
    Abandon { tokens: u64 },
    /// An in-flight request finishes (learned keys always answer with headers).
    Finish { pick: usize, success: bool, header: bool },
    /// An in-flight request's headers arrive before it finishes.
    Observe { pick: usize },
    /// A waiting caller goes away.
    Cancel { pick: usize },
    /// The clock moves on (timers fire at their instants on the way).
    Advance { ms: u64 },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        5 => (1u64..=60, 0u64..=30, any::<bool>(), any::<bool>())
            .prop_map(|(tokens, delta, usage_known, wait)| Op::Arrive { tokens, delta, usage_known, wait }),
        1 => (1u64..=60).prop_map(|tokens| Op::Abandon { tokens }),
        4 => (0usize..16, any::<bool>(), any::<bool>())
            .prop_map(|(pick, success, header)| Op::Finish { pick, success, header }),
        1 => (0usize..16).prop_map(|pick| Op::Observe { pick }),
        1 => (0usize..16).prop_map(|pick| Op::Cancel { pick }),
        2 => (0u64..=2_000).prop_map(|ms| Op::Advance { ms }),
        2 => (0u64..=30_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// One key as the upstream sees it.
#[derive(Debug)]
struct Upstream {
    spec: KeySpec,
    /// Bucket levels scaled by `MIN` (so refill is an integer per ms).
    req_level: i128,
    tok_level: i128,
    at: u64,
    /// (sent at ms, real tokens) of every send.
    log: Vec<(u64, u64)>,
}

impl Upstream {
    fn new(spec: KeySpec) -> Upstream {
        let tok_level = i128::from(spec.tpm.unwrap_or(0) * MIN);
        Upstream { req_level: i128::from(spec.rpm * MIN), tok_level, spec, at: 0, log: Vec::new() }
    }

    fn refill(&mut self, now: u64) {
        let dt = i128::from(now - self.at);
        self.req_level = (self.req_level + dt * i128::from(self.spec.rpm)).min(i128::from(self.spec.rpm * MIN));
        if let Some(tpm) = self.spec.tpm {
            self.tok_level = (self.tok_level + dt * i128::from(tpm)).min(i128::from(tpm * MIN));
        }
        self.at = now;
    }

    /// Sends and their tokens within (now - 60 s, now].
    fn window(&self, now: u64) -> (u64, u64) {
        let live = self.log.iter().filter(|(t, _)| t + MIN > now);
        live.fold((0, 0), |(n, tok), (_, x)| (n + 1, tok + x))
    }

    /// The headers of an answer given at `now`.
    fn headers(&mut self, now: u64) -> RateInfo {
        self.refill(now);
        let ms = Duration::from_millis;
        let (remaining_requests, reset_requests, remaining_tokens, reset_tokens) = match self.spec.model {
            Model::Bucket => {
                let rpm = i128::from(self.spec.rpm);
                let rem_r = (self.req_level.max(0) / i128::from(MIN)) as u64;
                let reset_r = ms(((rpm * i128::from(MIN) - self.req_level) + rpm - 1).max(0) as u64 / self.spec.rpm);
                let (rem_t, reset_t) = match self.spec.tpm {
                    Some(tpm) => {
                        let t = i128::from(tpm);
                        let rem = (self.tok_level.max(0) / i128::from(MIN)) as u64;
                        let reset = ms(((t * i128::from(MIN) - self.tok_level) + t - 1).max(0) as u64 / tpm);
                        (Some(rem), Some(reset))
                    }
                    None => (None, None),
                };
                (Some(rem_r), Some(reset_r), rem_t, reset_t)
            }
            Model::Window => {
                let (n, tok) = self.window(now);
                let last = self.log.iter().rev().find(|(t, _)| t + MIN > now).map(|(t, _)| t + MIN - now);
                let reset = ms(last.unwrap_or(0));
                let rem_t = self.spec.tpm.map(|tpm| tpm.saturating_sub(tok));
                (Some(self.spec.rpm.saturating_sub(n)), Some(reset), rem_t, self.spec.tpm.map(|_| reset))
            }
        };
        RateInfo {
            limit_requests: Some(self.spec.rpm),
            remaining_requests,
            reset_requests,
            limit_tokens: self.spec.tpm,
            remaining_tokens,
            reset_tokens,
        }
    }
}

/// What the test knows of a request before it is sent.
#[derive(Debug, Clone, Copy)]
struct Request {
    estimate: u64,
    actual: u64,
    usage_known: bool,
}

#[derive(Debug)]
struct InFlight {
    lease: KeyLease,
    req: Request,
}

#[derive(Debug)]
struct World {
    t0: Instant,
    overuse: bool,
    ups: BTreeMap<i64, Upstream>,
    inflight: Vec<InFlight>,
    /// `acquire` tasks that have neither got a lease nor given up.
    pending: usize,
    violations: Vec<String>,
}

impl World {
    fn ms(&self, at: Instant) -> u64 {
        (at - self.t0).as_millis() as u64
    }

    /// A lease was granted at `now`: send at once, and charge the upstream.
    fn on_grant(&mut self, mut lease: KeyLease, req: Request, now: Instant) {
        lease.mark_sent();
        let t = self.ms(now);
        let key = lease.key_id();
        let slack: u64 = self
            .inflight
            .iter()
            .filter(|f| f.lease.key_id() == key)
            .map(|f| f.req)
            .chain(std::iter::once(req))
            .map(|r| r.actual.saturating_sub(r.estimate))
            .sum();
        let overuse = self.overuse;
        let up = self.ups.get_mut(&key).unwrap();
        up.refill(t);
        let (n, tok) = up.window(t);
        let mut bad = Vec::new();
        if up.req_level < i128::from(MIN) {
            bad.push(format!("bucket held {}/{MIN} of a request", up.req_level));
        }
        if n + 1 > up.spec.rpm {
            bad.push(format!("{} requests within the last minute, limit {}", n + 1, up.spec.rpm));
        }
        if let Some(tpm) = up.spec.tpm {
            // keypool counts a rolling window until a key's answers show a
            // bucket; then it counts the bucket, which only a bucket allows.
            if up.spec.model == Model::Window && tok + req.actual > tpm + slack {
                bad.push(format!("{} tokens within the last minute, limit {tpm} (+{slack} slack)", tok + req.actual));
            }
            if !overuse && up.tok_level < i128::from(req.actual * MIN) {
                bad.push(format!("token bucket held {}/{MIN}, needed {}", up.tok_level, req.actual));
            }
        }
        for b in bad {
            self.violations.push(format!("t={t}ms key {key} ({:?}): {b}", up.spec));
        }
        up.req_level -= i128::from(MIN);
        up.tok_level -= i128::from(req.actual * MIN);
        up.log.push((t, req.actual));
        self.inflight.push(InFlight { lease, req });
    }
}

/// Lets spawned waiters and the refill timer run at the current instant.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// A key with room (by the scheduler's own rules, its window pruned) for
/// `demand` at `now`, if any.
fn key_with_room(s: &Scheduler, demand: Demand) -> Option<i64> {
    let now = Instant::now();
    let mut inner = s.lock();
    for slot in inner.keys.values_mut() {
        slot.window.prune(now);
    }
    inner.keys.values().find(|slot| slot.has_room(now, demand)).map(|slot| slot.id)
}

/// Waiting requests that some key has room for.
fn idle_waiters(s: &Scheduler) -> Vec<(u64, Demand, i64)> {
    let now = Instant::now();
    let mut inner = s.lock();
    for slot in inner.keys.values_mut() {
        slot.window.prune(now);
    }
    let mut out = Vec::new();
    for w in inner.queue.iter().filter(|w| !w.tx.is_closed()) {
        if let Some(slot) = inner.keys.values().find(|slot| slot.has_room(now, w.demand)) {
            out.push((w.id, w.demand, slot.id));
        }
    }
    out
}

fn demand(tokens: u64) -> Demand {
    Demand { tokens, unsure_tokens: 0, overlap: 0, cost_micros: 0 }
}

async fn run_interleaving(
    specs: Vec<KeySpec>,
    ops: Vec<Op>,
    overuse: bool,
    strategy: Strategy,
) -> Result<(), TestCaseError> {
    let s = Scheduler::new(SchedulerConfig {
        strategy,
        max_wait: Duration::from_secs(4 * 3600),
        ..SchedulerConfig::default()
    });
    let records: Vec<KeyRecord> = specs
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let id = i as i64 + 1;
            if k.configured {
                record(id, Some(k.rpm as u32), k.tpm.map(|t| t as u32), 0)
            } else {
                record(id, None, None, 0)
            }
        })
        .collect();
    s.sync_keys(&records);
    {
        let mut inner = s.lock();
        for (i, k) in specs.iter().enumerate() {
            if k.trusted {
                inner.keys.get_mut(&(i as i64 + 1)).unwrap().bucket.trust();
            }
        }
    }
    let world = Arc::new(Mutex::new(World {
        t0: Instant::now(),
        overuse,
        ups: specs.into_iter().enumerate().map(|(i, k)| (i as i64 + 1, Upstream::new(k))).collect(),
        inflight: Vec::new(),
        pending: 0,
        violations: Vec::new(),
    }));
    let mut waiters: Vec<JoinHandle<()>> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Arrive { tokens, delta, usage_known, wait } => {
                let actual = match (usage_known, overuse) {
                    (false, _) => tokens,
                    (true, true) => tokens + delta,
                    (true, false) => tokens.saturating_sub(delta),
                };
                let req = Request { estimate: tokens, actual, usage_known };
                if wait {
                    world.lock().unwrap().pending += 1;
                    let (s2, w2) = (Arc::clone(&s), Arc::clone(&world));
                    waiters.push(tokio::spawn(async move {
                        let got = s2.acquire(demand(tokens)).await;
                        let now = Instant::now();
                        let mut w = w2.lock().unwrap();
                        w.pending -= 1;
                        match got {
                            Ok(lease) => w.on_grant(lease, req, now),
                            Err(NoKey::TooLarge { .. }) => {}
                            Err(e) => w.violations.push(format!("acquire({tokens}) failed: {e:?}")),
                        }
                    }));
                } else {
                    match s.try_lease(demand(tokens)) {
                        Ok(lease) => world.lock().unwrap().on_grant(lease, req, Instant::now()),
                        Err(NoKey::Busy { .. }) => {
                            let room = key_with_room(&s, demand(tokens));
                            prop_assert!(
                                room.is_none(),
                                "step {step}: try_lease({tokens}) refused while key {room:?} had room"
                            );
                        }
                        Err(NoKey::TooLarge { .. }) => {}
                        Err(e) => prop_assert!(false, "step {step}: try_lease failed: {e:?}"),
                    }
                }
            }
            Op::Abandon { tokens } => {
                if let Ok(lease) = s.try_lease(demand(tokens)) {
                    drop(lease);
                }
            }
            Op::Finish { pick, success, header } => {
                let taken = {
                    let mut w = world.lock().unwrap();
                    if w.inflight.is_empty() {
                        None
                    } else {
                        let i = pick % w.inflight.len();
                        let key = w.inflight[i].lease.key_id();
                        let now = w.ms(Instant::now());
                        let up = w.ups.get_mut(&key).unwrap();
                        if header || !up.spec.configured {
                            let info = up.headers(now);
                            // Still in flight while its headers are read: a
                            // waiter granted now counts its estimate error as slack.
                            w.inflight[i].lease.observe(&info, success);
                        }
                        Some(w.inflight.remove(i))
                    }
                };
                if let Some(f) = taken {
                    let usage = f.req.usage_known.then_some(Usage {
                        prompt_tokens: f.req.actual,
                        completion_tokens: 0,
                        total_tokens: f.req.actual,
                        ..Usage::default()
                    });
                    f.lease.finish(Outcome { success, usage, ..Outcome::default() });
                }
            }
            Op::Observe { pick } => {
                let mut w = world.lock().unwrap();
                if !w.inflight.is_empty() {
                    let i = pick % w.inflight.len();
                    let key = w.inflight[i].lease.key_id();
                    let now = w.ms(Instant::now());
                    let info = w.ups.get_mut(&key).unwrap().headers(now);
                    w.inflight[i].lease.observe(&info, true);
                }
            }
            Op::Cancel { pick } => {
                let live: Vec<usize> = (0..waiters.len()).filter(|&i| !waiters[i].is_finished()).collect();
                if !live.is_empty() {
                    let h = waiters.swap_remove(live[pick % live.len()]);
                    h.abort();
                    if h.await.is_err() {
                        world.lock().unwrap().pending -= 1;
                    }
                }
            }
            Op::Advance { ms } => {
                // Step from one refill-timer instant to the next, as the
                // paused clock's auto-advance would, but refuse to hang if
                // the timer wants to run again at an instant already passed.
                let target = Instant::now() + Duration::from_millis(ms);
                loop {
                    let now = Instant::now();
                    let next = s.lock().next_wake(now);
                    if let Some(at) = next {
                        prop_assert!(
                            at > now,
                            "step {step} ({op:?}): the refill timer would spin: next wake {:?} <= now, queue {}\n{:#?}",
                            now - at,
                            s.queue_len(),
                            s.snapshot()
                        );
                    }
                    let to = next.map_or(target, |at| at.min(target));
                    tokio::time::advance(to - now).await;
                    settle().await;
                    if to >= target {
                        break;
                    }
                }
            }
        }
        settle().await;

        let (violations, pending, now) = {
            let w = world.lock().unwrap();
            (w.violations.clone(), w.pending, w.ms(Instant::now()))
        };
        prop_assert!(violations.is_empty(), "step {step} ({op:?}) at {now}ms: {violations:#?}");
        prop_assert_eq!(s.queue_len(), pending, "step {} ({:?}): queue vs waiting callers", step, op);
        let idle = idle_waiters(&s);
        prop_assert!(
            idle.is_empty(),
            "step {step} ({op:?}) at {now}ms: waiting (id, demand, key with room): {idle:?}\n{:#?}",
            s.snapshot()
        );
    }
    for h in waiters {
        h.abort();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn never_oversends_and_never_idles_a_waiter(
        specs in prop::collection::vec(key_spec(), 1..=4),
        ops in prop::collection::vec(op(), 1..=60),
        overuse in any::<bool>(),
        strategy in strategy(),
    ) {
        runtime().block_on(run_interleaving(specs, ops, overuse, strategy))?;
    }

    #[test]
    fn try_lease_respects_rpm_and_refuses_only_when_full(
        rpms in prop::collection::vec(1u32..=5, 1..=4),
        ops in prop::collection::vec(prop_oneof![3 => proptest::strategy::Just(None), 2 => (0u64..=30_000).prop_map(Some)], 1..=80),
        strategy in strategy(),
    ) {
        runtime().block_on(async move {
            let s = Scheduler::new(SchedulerConfig { strategy, max_wait: Duration::ZERO, ..SchedulerConfig::default() });
            let records: Vec<KeyRecord> =
                rpms.iter().enumerate().map(|(i, r)| record(i as i64 + 1, Some(*r), None, 0)).collect();
            s.sync_keys(&records);
            let t0 = Instant::now();
            let mut sends: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
            for op in ops {
                match op {
                    Some(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                    None => {
                        let now = (Instant::now() - t0).as_millis() as u64;
                        match s.try_lease(demand(1)) {
                            Ok(mut lease) => {
                                lease.mark_sent();
                                sends.entry(lease.key_id()).or_default().push(now);
                                lease.finish(Outcome { success: true, ..Outcome::default() });
                            }
                            Err(NoKey::Busy { .. }) => {
                                for (i, rpm) in rpms.iter().enumerate() {
                                    let recent = sends
                                        .get(&(i as i64 + 1))
                                        .map_or(0, |v| v.iter().filter(|t| *t + MIN > now).count());
                                    prop_assert_eq!(recent, *rpm as usize, "refused at {}ms while key {} had room", now, i + 1);
                                }
                            }
                            Err(e) => prop_assert!(false, "unexpected {e:?}"),
                        }
                    }
                }
            }
            for (key, times) in &sends {
                let rpm = u64::from(rpms[*key as usize - 1]);
                for (i, t) in times.iter().enumerate() {
                    let span = times[i..].iter().take_while(|u| **u < t + MIN).count() as u64;
                    prop_assert!(span <= rpm, "key {key}: {span} sends in the minute from {t}ms, rpm {rpm}: {times:?}");
                }
            }
            Ok(())
        })?;
    }
}
