#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::BTreeMap;

use secrecy::SecretString;

use super::*;
use crate::store::now_unix as unix_now;

pub(super) fn record(id: i64, rpm: Option<u32>, tpm: Option<u32>, requests: u64) -> KeyRecord {
    KeyRecord { rpm, tpm, requests, ..KeyRecord::new(id, SecretString::from(format!("sk-test-{id}"))) }
}

fn ok() -> Outcome {
    Outcome { success: true, ..Outcome::default() }
}

fn one() -> Demand {
    Demand { tokens: 1, unsure_tokens: 0, overlap: 0, cost_micros: 0 }
}

fn sched(strategy: Strategy, max_wait: Duration) -> Arc<Scheduler> {
    Scheduler::new(SchedulerConfig { strategy, max_wait, ..SchedulerConfig::default() })
}

fn sent(mut lease: KeyLease) -> KeyLease {
    lease.mark_sent();
    lease
}

#[tokio::test(start_paused = true)]
async fn spreads_evenly_and_never_exceeds_rpm() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, Some(10), None, 0), record(2, Some(10), None, 0), record(3, Some(10), None, 0)]);
    let mut served = BTreeMap::<i64, u32>::new();
    for _ in 0..30 {
        let lease = sent(s.try_lease(one()).unwrap());
        *served.entry(lease.key_id()).or_default() += 1;
        lease.finish(ok());
    }
    assert_eq!(served.values().copied().collect::<Vec<_>>(), vec![10, 10, 10]);
    match s.try_lease(one()) {
        Err(NoKey::Busy { retry_after, .. }) => assert_eq!(retry_after, window::WINDOW),
        other => panic!("expected Busy, got {other:?}"),
    }
    tokio::time::advance(window::WINDOW).await;
    assert!(s.try_lease(one()).is_ok(), "the window frees the keys after a minute");
}

#[tokio::test(start_paused = true)]
async fn least_used_prefers_the_smallest_lifetime_count_then_the_soonest_expiry() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 50), record(2, None, None, 3)]);
    assert_eq!(s.try_lease(one()).unwrap().key_id(), 2);

    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    let far = unix_now() + 86_400 * 30;
    let mut a = record(1, None, None, 0);
    a.expires_at = Some(far + 1000);
    let mut b = record(2, None, None, 0);
    b.expires_at = Some(far);
    let c = record(3, None, None, 0);
    s.sync_keys(&[a, b, c]);
    assert_eq!(s.try_lease(one()).unwrap().key_id(), 2, "the key expiring soonest goes first among equals");
}

#[tokio::test(start_paused = true)]
async fn an_expired_key_is_not_used() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    let mut a = record(1, None, None, 0);
    a.expires_at = Some(unix_now() - 10);
    s.sync_keys(&[a]);
    // Keys exist: the reason says which state keeps them out, never "add a key".
    let Err(NoKey::Unusable(counts)) = s.try_lease(one()) else { panic!("unusable") };
    assert_eq!((counts.expired, counts.total()), (1, 1));
    assert_eq!(s.snapshot()[0].status, "expired");
}

#[tokio::test(start_paused = true)]
async fn dropping_an_unsent_lease_gives_it_back_and_a_sent_one_counts() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, Some(1), None, 0)]);
    let lease = s.try_lease(one()).unwrap();
    assert!(matches!(s.try_lease(one()), Err(NoKey::Busy { .. })));
    drop(lease);
    let lease = sent(s.try_lease(one()).expect("an unsent lease leaves no trace"));
    drop(lease);
    assert!(matches!(s.try_lease(one()), Err(NoKey::Busy { .. })), "a sent request counts for the minute");
    let v = &s.snapshot()[0];
    assert_eq!((v.failures, v.inflight, v.requests), (0, 0, 1), "a dropped lease is a cancellation, not a key failure");
}

#[tokio::test(start_paused = true)]
async fn tokens_reserve_and_the_admission_charge_stays() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, Some(1000), 0)]);
    let lease = sent(s.try_lease(Demand { tokens: 900, unsure_tokens: 0, overlap: 0, cost_micros: 0 }).unwrap());
    assert!(matches!(
        s.try_lease(Demand { tokens: 200, unsure_tokens: 0, overlap: 0, cost_micros: 0 }),
        Err(NoKey::Busy { .. })
    ));
    let usage = keypool_sse::Usage {
        prompt_tokens: 50,
        completion_tokens: 50,
        total_tokens: 100,
        ..keypool_sse::Usage::default()
    };
    lease.finish(Outcome { success: true, usage: Some(usage), ..Outcome::default() });
    // The upstream keeps what it charged at admission for its window (issue 13).
    assert!(matches!(
        s.try_lease(Demand { tokens: 800, unsure_tokens: 0, overlap: 0, cost_micros: 0 }),
        Err(NoKey::Busy { .. })
    ));
    assert!(s.try_lease(Demand { tokens: 100, unsure_tokens: 0, overlap: 0, cost_micros: 0 }).is_ok());
    assert_eq!(
        s.try_lease(Demand { tokens: 5000, unsure_tokens: 0, overlap: 0, cost_micros: 0 }).unwrap_err(),
        NoKey::TooLarge { needed: 5000 }
    );
}

/// A request the upstream refused at the door (larger than the key's whole
/// limit, a refused route, a model the key lacks) was charged no tokens: one
/// oversized request tried on every key must not hold each key's budget for
/// a minute.
#[tokio::test(start_paused = true)]
async fn a_request_refused_at_the_door_is_charged_no_tokens() {
    for verdict in [Verdict::TooLarge { limit: 1000 }, Verdict::Refused, Verdict::ModelMissing] {
        let s = sched(Strategy::LeastUsed, Duration::ZERO);
        s.sync_keys(&[record(1, None, Some(1000), 0)]);
        let demand = Demand { tokens: 900, unsure_tokens: 0, overlap: 0, cost_micros: 0 };
        sent(s.try_lease(demand).unwrap()).finish(Outcome { verdict, ..Outcome::default() });
        assert!(s.try_lease(demand).is_ok(), "{verdict:?} left the key's tokens charged");
    }
    // An admitted request keeps its charge (the control).
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, Some(1000), 0)]);
    let demand = Demand { tokens: 900, unsure_tokens: 0, overlap: 0, cost_micros: 0 };
    sent(s.try_lease(demand).unwrap()).finish(Outcome { verdict: Verdict::UpstreamError, ..Outcome::default() });
    assert!(matches!(s.try_lease(demand), Err(NoKey::Busy { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_cooling_key_is_used_again_right_after_its_reset() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(60));
    s.sync_keys(&[record(1, None, None, 0)]);
    let limited = Outcome {
        verdict: Verdict::RateLimited {
            reset: crate::scheduler::Reset::new(Duration::from_secs(20), crate::scheduler::Hit::Unknown),
        },
        ..Outcome::default()
    };
    sent(s.try_lease(one()).unwrap()).finish(limited);
    assert_eq!(s.snapshot()[0].status, "cooling");
    let start = Instant::now();
    let lease = s.acquire(one()).await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_secs(20), "woken exactly at the reset");
    assert_eq!(lease.key_id(), 1);
    assert_eq!(s.snapshot()[0].status, "active");
}

#[tokio::test(start_paused = true)]
async fn a_reset_too_long_for_the_clock_cools_a_day_without_a_panic() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(60));
    s.sync_keys(&[record(1, None, None, 0)]);
    let reset = crate::scheduler::Reset::new(Duration::MAX, crate::scheduler::Hit::Unknown);
    sent(s.try_lease(one()).unwrap()).finish(Outcome { verdict: Verdict::RateLimited { reset }, ..Outcome::default() });
    assert_eq!(s.snapshot()[0].status, "cooling");
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert!(s.try_lease(one()).is_ok(), "back after a day at most");
}

#[tokio::test(start_paused = true)]
async fn an_excluded_key_is_never_given_while_another_can_serve() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(300));
    s.sync_keys(&[record(1, Some(1), None, 0), record(2, None, None, 0)]);
    // Key 1 is busy; key 2 is free but excluded: the request waits for key 1.
    let busy = sent(s.acquire_avoiding(one(), &[], &[2]).await.unwrap());
    assert_eq!(busy.key_id(), 1);
    let waiting = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.acquire_avoiding(one(), &[], &[2]).await.map(|l| l.key_id()) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiting.is_finished(), "not given the excluded key");
    busy.finish(ok());
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(waiting.await.unwrap(), Ok(1));
    // With no other key able to serve at all, an excluded key beats none.
    let lease = s.acquire_avoiding(one(), &[], &[1, 2]).await.unwrap();
    assert!([1, 2].contains(&lease.key_id()));
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(300));
    s.sync_keys(&[record(1, Some(1), None, 0)]);
    sent(s.try_lease(one()).unwrap()).finish(ok());
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (s, order) = (Arc::clone(&s), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let lease = s.acquire(one()).await.unwrap();
            order.lock().unwrap().push((i, Instant::now()));
            sent(lease).finish(ok());
        }));
        // Arrive in a known order.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2]);
    // One a minute: each waited for the previous one's minute to pass.
    assert!(order.windows(2).all(|w| w[1].1 - w[0].1 >= window::WINDOW));
}

#[tokio::test(start_paused = true)]
async fn max_wait_is_honoured_with_a_retry_after() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(5));
    s.sync_keys(&[record(1, Some(1), None, 0)]);
    sent(s.try_lease(one()).unwrap()).finish(ok());
    let start = Instant::now();
    match s.acquire(one()).await {
        Err(NoKey::Busy { waited, retry_after }) => {
            assert_eq!(waited, Duration::from_secs(5));
            assert_eq!(Instant::now() - start, Duration::from_secs(5));
            assert_eq!(retry_after, Duration::from_secs(55));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.queue_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let s = Scheduler::new(SchedulerConfig {
        max_queue: 1,
        max_wait: Duration::from_secs(30),
        ..SchedulerConfig::default()
    });
    s.sync_keys(&[record(1, Some(1), None, 0)]);
    sent(s.try_lease(one()).unwrap()).finish(ok());
    let s2 = Arc::clone(&s);
    let first = tokio::spawn(async move { s2.acquire(one()).await.map(|l| l.key_id()) });
    tokio::task::yield_now().await;
    assert_eq!(s.queue_len(), 1);
    let refused = s.acquire(one()).await;
    assert!(matches!(refused, Err(NoKey::Busy { waited, .. }) if waited.is_zero()));
    first.abort();
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_leaves_the_queue_at_once() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(120));
    s.sync_keys(&[record(1, Some(1), None, 0)]);
    sent(s.try_lease(one()).unwrap()).finish(ok());
    let s2 = Arc::clone(&s);
    let gone = tokio::spawn(async move { s2.acquire(one()).await.map(|l| l.key_id()) });
    let s3 = Arc::clone(&s);
    let stays = tokio::spawn(async move { s3.acquire(one()).await.map(|l| l.key_id()) });
    tokio::task::yield_now().await;
    assert_eq!(s.queue_len(), 2);
    gone.abort();
    let _ = gone.await;
    assert_eq!(s.queue_len(), 1, "the aborted waiter left without waiting for a key");
    // The one that stayed is next in line: served when the minute passes.
    assert_eq!(stays.await.unwrap().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_served_by_a_completion_event() {
    let s = Scheduler::new(SchedulerConfig {
        defaults: DefaultLimits { max_inflight: Some(1), ..DefaultLimits::default() },
        max_wait: Duration::from_secs(30),
        ..SchedulerConfig::default()
    });
    s.sync_keys(&[record(1, None, None, 0)]);
    let held = sent(s.try_lease(one()).unwrap());
    let s2 = Arc::clone(&s);
    let waiter = tokio::spawn(async move { s2.acquire(one()).await.map(|l| l.key_id()) });
    tokio::task::yield_now().await;
    let start = Instant::now();
    tokio::time::advance(Duration::from_millis(3)).await;
    held.finish(ok());
    assert_eq!(waiter.await.unwrap().unwrap(), 1);
    assert_eq!(Instant::now() - start, Duration::from_millis(3), "served at the completion, not on a poll");
}

#[tokio::test(start_paused = true)]
async fn unknown_limits_mean_one_in_flight_until_the_first_answer() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0)]);
    let lease = sent(s.try_lease(one()).unwrap());
    assert!(matches!(s.try_lease(one()), Err(NoKey::Busy { .. })), "cautious until the first answer");
    // An answer without rate-limit headers: the upstream announces none.
    lease.observe(&RateInfo::default(), true);
    lease.finish(ok());
    let a = s.try_lease(one()).unwrap();
    let b = s.try_lease(one()).unwrap();
    drop((a, b));
}

#[tokio::test(start_paused = true)]
async fn limits_are_learned_from_headers_and_corrected_by_remaining() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0)]);
    let lease = sent(s.try_lease(one()).unwrap());
    // The upstream says: 3 a minute, and only 1 left (someone else used one).
    let info = RateInfo {
        limit_requests: Some(3),
        remaining_requests: Some(1),
        reset_requests: Some(Duration::from_secs(40)),
        ..RateInfo::default()
    };
    lease.observe(&info, true);
    lease.finish(ok());
    assert_eq!(s.snapshot()[0].rpm, Some(3));
    // Ours: 1 sent. Upstream: 2 used. So one more fits now, then none.
    let l = sent(s.try_lease(one()).unwrap());
    l.finish(ok());
    assert!(matches!(s.try_lease(one()), Err(NoKey::Busy { .. })));
    // After the upstream's reset the extra use is gone; ours still counts until a minute passes.
    tokio::time::advance(Duration::from_secs(40)).await;
    assert!(s.try_lease(one()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn invalid_and_exhausted_keys_leave_rotation() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 5), record(3, None, None, 9)]);
    let bad = sent(s.try_lease(one()).unwrap());
    assert_eq!(bad.key_id(), 1);
    bad.finish(Outcome { verdict: Verdict::Invalid, ..Outcome::default() });
    let broke = sent(s.try_lease(one()).unwrap());
    assert_eq!(broke.key_id(), 2);
    broke.finish(Outcome { verdict: Verdict::Exhausted, ..Outcome::default() });
    for _ in 0..5 {
        assert_eq!(s.try_lease(one()).unwrap().key_id(), 3);
    }
    let statuses: Vec<_> = s.snapshot().iter().map(|v| v.status).collect();
    assert_eq!(statuses, vec!["invalid", "exhausted", "active"]);
}

#[tokio::test(start_paused = true)]
async fn a_key_that_spent_its_day_cools_until_the_day_resets() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    let mut a = record(1, None, None, 0);
    a.rpd = Some(2);
    s.sync_keys(&[a]);
    for _ in 0..2 {
        sent(s.try_lease(one()).unwrap()).finish(ok());
    }
    assert_eq!(s.snapshot()[0].status, "cooling");
    let Err(NoKey::Busy { retry_after, .. }) = s.try_lease(one()) else { panic!("the day is spent") };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(86_400));
    tokio::time::advance(retry_after).await;
    assert!(s.try_lease(one()).is_ok(), "a new day, a new allowance");
}

#[tokio::test(start_paused = true)]
async fn round_robin_weighted_and_least_inflight_orders() {
    let s = sched(Strategy::RoundRobin, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 100), record(3, None, None, 0)]);
    for r in [&RateInfo::default()] {
        // Answer once per key so they leave the cautious one-at-a-time mode.
        for _ in 0..3 {
            let l = sent(s.try_lease(one()).unwrap());
            l.observe(r, true);
            l.finish(ok());
        }
    }
    let picks: Vec<i64> = (0..6).map(|_| s.try_lease(one()).unwrap().key_id()).collect();
    // Never-used keys first (key 2's lifetime count breaks the tie last), then in turn.
    assert_eq!(picks, vec![1, 3, 2, 1, 3, 2]);

    let s = sched(Strategy::Weighted, Duration::ZERO);
    let mut heavy = record(1, None, None, 0);
    heavy.weight = Some(3);
    s.sync_keys(&[heavy, record(2, None, None, 0)]);
    let mut count = BTreeMap::<i64, u32>::new();
    for _ in 0..400 {
        let l = sent(s.try_lease(one()).unwrap());
        l.observe(&RateInfo::default(), true);
        *count.entry(l.key_id()).or_default() += 1;
        l.finish(ok());
    }
    assert!(count[&1].abs_diff(300) <= 2 && count[&2].abs_diff(100) <= 2, "{count:?}");

    let s = sched(Strategy::LeastInflight, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 0)]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let l = sent(s.try_lease(one()).unwrap());
        l.observe(&RateInfo::default(), true);
        held.push(l);
    }
    let mut ids: Vec<i64> = held.iter().map(KeyLease::key_id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2], "in-flight requests spread across keys");
}

#[tokio::test(start_paused = true)]
async fn sync_adds_updates_and_removes_keys_keeping_live_counts() {
    let s = sched(Strategy::LeastUsed, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 0)]);
    sent(s.try_lease(one()).unwrap()).finish(ok());
    let mut disabled = record(1, Some(5), None, 0);
    disabled.enabled = false;
    s.sync_keys(&[disabled]);
    let view = s.snapshot();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].status, "disabled");
    assert_eq!(view[0].rpm, Some(5));
    let Err(NoKey::Unusable(counts)) = s.try_lease(one()) else { panic!("unusable") };
    assert_eq!(counts.disabled, 1);
}

#[tokio::test(start_paused = true)]
async fn balance_even_spends_budgets_evenly_and_never_overruns() {
    let s = sched(Strategy::BalanceEven, Duration::ZERO);
    let budgets = [1_000_000u64, 2_000_000, 3_000_000];
    let records: Vec<KeyRecord> = budgets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = record(i as i64 + 1, None, None, 0);
            r.budget_micros = Some(*b);
            r
        })
        .collect();
    s.sync_keys(&records);
    let demand = Demand { tokens: 10, unsure_tokens: 0, overlap: 0, cost_micros: 10_000 };
    let mut answered = 0;
    loop {
        match s.try_lease(demand) {
            Ok(l) => {
                let l = sent(l);
                l.observe(&RateInfo::default(), true);
                // The real cost is a bit under the estimate, as with max_tokens as the bound.
                l.finish(Outcome { success: true, cost_micros: Some(9_000), ..Outcome::default() });
                answered += 1;
            }
            Err(NoKey::BudgetSpent) => break,
            Err(e) => panic!("no other error before the pool is spent: {e:?} after {answered}"),
        }
    }
    for (v, b) in s.snapshot().iter().zip(budgets) {
        let b = b as f64;
        assert!(v.spent_micros as f64 <= b, "never overruns");
        assert!(v.spent_micros as f64 >= 0.95 * b, "within 5% of its budget: {} of {b}", v.spent_micros);
    }
}

#[tokio::test(start_paused = true)]
async fn unhealthy_keys_are_probed_on_backing_off_intervals_and_return_when_healthy() {
    let s = Scheduler::new(SchedulerConfig {
        probe_invalid: Duration::from_secs(60),
        probe_exhausted: Duration::from_secs(6 * 3600),
        ..SchedulerConfig::default()
    });
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 0), record(3, None, None, 0)]);
    sent(s.try_lease(one()).unwrap()).finish(Outcome { verdict: Verdict::Invalid, ..Outcome::default() });
    sent(s.try_lease(one()).unwrap()).finish(Outcome { verdict: Verdict::Exhausted, ..Outcome::default() });
    assert!(s.due_probes().is_empty(), "not probed before the first interval");
    assert_eq!(s.next_probe_at(), Some(Instant::now() + Duration::from_secs(60)));
    tokio::time::advance(Duration::from_secs(60)).await;
    let due: Vec<i64> = s.due_probes().iter().map(|(id, _)| *id).collect();
    assert_eq!(due, vec![1], "the invalid key first; the exhausted one waits hours");
    // Still refused: the next probe is twice as far.
    s.probe_result(1, Probed::Invalid);
    assert_eq!(s.next_probe_at(), Some(Instant::now() + Duration::from_secs(120)));
    tokio::time::advance(Duration::from_secs(120)).await;
    s.probe_result(1, Probed::Healthy);
    assert_eq!(s.snapshot()[0].status, "active");
    tokio::time::advance(Duration::from_secs(6 * 3600)).await;
    assert_eq!(s.due_probes().iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2]);
    s.probe_result(2, Probed::Healthy);
    assert!(s.snapshot().iter().all(|v| v.status == "active"));
}

#[tokio::test(start_paused = true)]
async fn connect_failures_never_blame_the_key() {
    let s = Scheduler::new(SchedulerConfig::default());
    s.sync_keys(&[record(1, None, None, 0)]);
    let connect_failed = || Outcome { verdict: Verdict::ConnectFailed, ..Outcome::default() };
    for _ in 0..5 {
        sent(s.try_lease(one()).unwrap()).finish(connect_failed());
    }
    // The connection goes to the upstream: its breaker answers for it, and
    // the only key stays usable (so a caller's attempts are counted truly).
    assert_eq!(s.snapshot()[0].status, "active");
    assert_eq!(s.snapshot()[0].failures, 0, "not the key's failures");
    assert!(s.try_lease(one()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_cannot_tell_puts_the_key_on_one_trial_request() {
    let s = Scheduler::new(SchedulerConfig { probe_invalid: Duration::from_secs(60), ..SchedulerConfig::default() });
    // With a known limit, so only the trial keeps it to one request at a time.
    s.sync_keys(&[record(1, Some(100), None, 0)]);
    let invalid = || Outcome { verdict: Verdict::Invalid, ..Outcome::default() };
    sent(s.try_lease(one()).unwrap()).finish(invalid());
    tokio::time::advance(Duration::from_secs(60)).await;
    // A 404 from a relay without /models says nothing: back on trial.
    s.probe_result(1, Probed::Unknown);
    assert_eq!(s.snapshot()[0].status, "active");
    let trial = s.try_lease(one()).unwrap();
    assert!(matches!(s.try_lease(one()), Err(NoKey::Busy { .. })), "one request at a time while on trial");
    // Refused again on its trial request: invalid, and the next probe twice as far.
    sent(trial).finish(invalid());
    assert_eq!(s.snapshot()[0].status, "invalid");
    assert_eq!(s.next_probe_at(), Some(Instant::now() + Duration::from_secs(120)));
    tokio::time::advance(Duration::from_secs(120)).await;
    s.probe_result(1, Probed::Unknown);
    sent(s.try_lease(one()).unwrap()).finish(Outcome { success: true, ..Outcome::default() });
    assert_eq!(s.snapshot()[0].status, "active");
    let (a, b) = (s.try_lease(one()).unwrap(), s.try_lease(one()));
    assert!(b.is_ok(), "served well: off trial, no longer one at a time");
    drop((a, b));
}

#[tokio::test(start_paused = true)]
async fn probes_prove_exhaustion_and_an_unreachable_upstream_proves_nothing() {
    let s = Scheduler::new(SchedulerConfig { probe_invalid: Duration::from_secs(60), ..SchedulerConfig::default() });
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 0)]);
    for _ in 0..2 {
        sent(s.try_lease(one()).unwrap()).finish(Outcome { verdict: Verdict::Invalid, ..Outcome::default() });
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    s.probe_result(1, Probed::Exhausted);
    s.probe_result(2, Probed::Unreachable);
    let states: Vec<_> = s.snapshot().iter().map(|v| v.status).collect();
    assert_eq!(states, ["exhausted", "invalid"]);
    assert_eq!(s.next_probe_at(), Some(Instant::now() + Duration::from_secs(60)), "unreachable: same interval");
    let counts = s.census();
    assert_eq!((counts.exhausted, counts.invalid, counts.usable()), (1, 1, 0));
    let Err(NoKey::Unusable(c)) = s.try_lease(one()) else { panic!("no key can serve") };
    assert!(c.describe().contains("1 invalid") && c.describe().contains("1 exhausted"), "{}", c.describe());
}

#[tokio::test(start_paused = true)]
async fn a_balance_at_zero_serves_nothing_not_even_an_unpriced_request() {
    let s = sched(Strategy::BalanceEven, Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 0)]);
    assert!(s.set_balance(1, 0));
    assert!(s.set_balance(2, 5_000));
    for _ in 0..5 {
        // cost_micros 0: a model without a price.
        let lease = sent(s.try_lease(one()).unwrap());
        assert_eq!(lease.key_id(), 2, "the key with money serves");
        lease.finish(ok());
    }
    assert_eq!(s.snapshot()[0].status, "spent");
    assert_eq!(s.snapshot()[0].balance_micros, Some(0));
    // Money again (a top-up, read later): it serves again.
    assert!(s.set_balance(1, 1_000_000));
    assert_eq!(s.snapshot()[0].status, "active");
    assert!(!s.set_balance(9, 1), "an unknown key");
}

/// A scheduler for an upstream that counts requests over 10 s and 1 s
/// spans and derives RPM from TPM, as routing sets one up for Azure.
fn azure_like(max_wait: Duration) -> Arc<Scheduler> {
    const SPANS: &[Duration] = &[Duration::from_secs(10), Duration::from_secs(1)];
    Scheduler::new(SchedulerConfig {
        defaults: DefaultLimits { requests_per: SPANS, rpm_per_thousand_tpm: Some(6), ..DefaultLimits::default() },
        max_wait,
        ..SchedulerConfig::default()
    })
}

#[tokio::test(start_paused = true)]
async fn requests_counted_over_short_spans_are_paced_within_them() {
    // 5,000 TPM is 30 RPM by Azure's rule: 5 per 10 s, and 1 per second.
    let s = azure_like(Duration::ZERO);
    s.sync_keys(&[record(1, None, Some(5_000), 0)]);
    let start = Instant::now();
    let mut sent_at = Vec::new();
    while sent_at.len() < 10 {
        match s.try_lease(one()) {
            Ok(lease) => {
                sent(lease).finish(ok());
                sent_at.push(Instant::now() - start);
            }
            Err(_) => tokio::time::advance(Duration::from_millis(100)).await,
        }
    }
    let secs: Vec<u64> = sent_at.iter().map(|d| d.as_secs()).collect();
    // One a second up to five, then nothing until the first leaves its 10 s span.
    assert_eq!(secs, vec![0, 1, 2, 3, 4, 10, 11, 12, 13, 14]);
    let view = &s.snapshot()[0];
    assert_eq!((view.rpm, view.tpm), (Some(30), Some(5_000)));
}

#[tokio::test(start_paused = true)]
async fn a_span_limit_told_only_by_remaining_is_learned_from_the_first_answer() {
    let s = azure_like(Duration::ZERO);
    s.sync_keys(&[record(1, None, None, 0)]);
    let first = sent(s.try_lease(one()).unwrap());
    // Azure tells only what is left of the span: 4 after this one.
    first
        .observe(&RateInfo { remaining_requests: Some(4), remaining_tokens: Some(9_999), ..RateInfo::default() }, true);
    first.finish(ok());
    let view = &s.snapshot()[0];
    assert_eq!(view.rpm, Some(30), "5 per 10 s is 30 RPM");
    assert_eq!(view.tpm, Some(10_000), "left plus what this one reserved");
    // A later answer, with others counted, changes neither.
    tokio::time::advance(Duration::from_secs(1)).await;
    let a = sent(s.try_lease(one()).unwrap());
    a.observe(&RateInfo { remaining_requests: Some(3), ..RateInfo::default() }, true);
    a.finish(ok());
    assert_eq!(s.snapshot()[0].rpm, Some(30));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_within_the_span_lowers_what_it_allows() {
    let s = azure_like(Duration::ZERO);
    s.sync_keys(&[record(1, Some(60), None, 0)]);
    // 60 RPM: 10 per 10 s, 1 per second. At 0 s and 1 s served; at 2 s
    // refused for a second: the upstream allows fewer per span than assumed.
    for i in 0..3 {
        let lease = sent(s.try_lease(one()).unwrap());
        if i < 2 {
            lease.finish(ok());
        } else {
            let reset = Reset::new(Duration::from_secs(1), Hit::Requests);
            lease.finish(Outcome { verdict: Verdict::RateLimited { reset }, ..Outcome::default() });
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // The 10 s span now allows 5 (half the share at most comes off; what
    // was counted before, 2, is less), where it allowed 10.
    for _ in 0..2 {
        sent(s.try_lease(one()).unwrap()).finish(ok());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(s.try_lease(one()).is_err(), "at 5 s, five in the span: lowered to five");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(s.try_lease(one()).is_ok(), "at 10 s the first left the span");
}

/// Issue 17's fairness: one tenant floods (200 requests at once), another
/// sends one a second, over a key that allows 4 in flight. Every request of
/// the second is served within `max_wait`, and its median wait is at most
/// twice one request's service time (in arrival order it would wait behind
/// the whole flood: 50 s).
#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_does_not_starve_another() {
    const SERVICE: Duration = Duration::from_secs(1);
    let max_wait = Duration::from_secs(300);
    let s = sched(Strategy::LeastUsed, max_wait);
    // An RPM far above the load: a key with known limits is not held to one request at a time.
    let mut key = record(1, Some(1_000_000), None, 0);
    key.max_inflight = Some(4);
    s.sync_keys(&[key]);
    let serve = |s: Arc<Scheduler>, who: Who| async move {
        let asked = Instant::now();
        let lease = sent(s.acquire_waited(one(), &[], &[], asked, who).await?);
        let waited = asked.elapsed();
        tokio::time::sleep(SERVICE).await;
        lease.finish(ok());
        Ok::<Duration, NoKey>(waited)
    };
    let flood: Vec<_> = (0..200).map(|_| tokio::spawn(serve(Arc::clone(&s), Who { tenant: 1, priority: 0 }))).collect();
    tokio::task::yield_now().await;
    let mut steady = Vec::new();
    for _ in 0..20 {
        steady.push(tokio::spawn(serve(Arc::clone(&s), Who { tenant: 2, priority: 0 })));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut waits = Vec::new();
    for h in steady {
        let waited = h.await.unwrap().expect("served within max_wait");
        assert!(waited <= max_wait);
        waits.push(waited);
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(median <= 2 * SERVICE, "median wait {median:?}, waits {waits:?}");
    // The flood is served too, in its own order, as room allows.
    for h in flood {
        h.await.unwrap().expect("the flood is served within max_wait");
    }
}

/// A higher priority is offered room first; within one, tenants take turns.
#[tokio::test(start_paused = true)]
async fn room_goes_by_priority_then_round_robin_over_tenants() {
    let s = sched(Strategy::LeastUsed, Duration::from_secs(60));
    let mut key = record(1, None, None, 0);
    key.max_inflight = Some(1);
    s.sync_keys(&[key]);
    let held = s.try_lease(one()).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for (name, tenant, priority) in
        [("a1", 1, 0), ("a2", 1, 0), ("a3", 1, 0), ("b1", 2, 0), ("b2", 2, 0), ("vip", 3, 5)]
    {
        let (s, order) = (Arc::clone(&s), Arc::clone(&order));
        waiting.push(tokio::spawn(async move {
            let lease = s.acquire_waited(one(), &[], &[], Instant::now(), Who { tenant, priority }).await.unwrap();
            order.lock().unwrap().push(name);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(lease);
        }));
        tokio::task::yield_now().await;
    }
    drop(held);
    for w in waiting {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["vip", "a1", "b1", "a2", "b2", "a3"]);
}

/// Ageing: a request too large for the room that small ones keep taking
/// gets it once it has waited half of `max_wait`, instead of timing out.
#[tokio::test(start_paused = true)]
async fn a_large_request_is_not_overtaken_forever_by_small_ones() {
    let max_wait = Duration::from_secs(120);
    let s = sched(Strategy::LeastUsed, max_wait);
    s.sync_keys(&[record(1, None, Some(1000), 0)]);
    let demand = |tokens| Demand { tokens, unsure_tokens: 0, overlap: 0, cost_micros: 0 };
    // Small requests of 100 tokens every 6 s keep the minute's 1,000 tokens in use.
    let small = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            for _ in 0..40 {
                let got = s.acquire_waited(demand(100), &[], &[], Instant::now(), Who { tenant: 1, priority: 0 }).await;
                if let Ok(lease) = got {
                    sent(lease).finish(ok());
                }
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(61)).await;
    let asked = Instant::now();
    let large = s.acquire_waited(demand(900), &[], &[], asked, Who { tenant: 2, priority: 0 }).await;
    let waited = asked.elapsed();
    assert!(large.is_ok(), "the large request was starved: {large:?} after {waited:?}");
    assert!(waited >= max_wait / 2 && waited < max_wait, "served once aged: {waited:?}");
    small.abort();
}
