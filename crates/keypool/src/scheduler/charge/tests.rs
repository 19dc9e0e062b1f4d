#![allow(clippy::unwrap_used)]
use super::*;

/// An answer under the sum rule whose larger-part count says nothing new.
fn seen(upstream: u64, ours: u64) -> Seen {
    Seen { upstream, ours, ours_max: ours, settled: true }
}

/// An answer where keypool counted `ours` by the sum and `ours_max` by the larger part.
fn both(upstream: u64, ours: u64, ours_max: u64, settled: bool) -> Seen {
    Seen { upstream, ours, ours_max, settled }
}

#[test]
fn the_larger_part_rule_is_learned_only_from_settled_answers() {
    // The upstream counts 1,000 where the sum says 1,800 and the larger part 1,000.
    let mut m = ChargeModel::default();
    for _ in 0..SAMPLES {
        m.sample(both(1000, 1800, 1000, false), 10_000);
    }
    assert_eq!(m.rule(), Rule::Sum, "an unknown refill also makes the sum look too high");
    for _ in 0..MIN_SAMPLES {
        m.sample(both(1000, 1800, 1000, true), 10_000);
    }
    assert_eq!(m.rule(), Rule::Max);
    assert_eq!(m.scale(), UNIT, "a sum above the upstream's count never lowers the scale");
}

#[test]
fn a_sum_upstream_never_looks_like_the_larger_part() {
    // The upstream counts the sum; in-flight noise makes ours a little higher.
    let mut m = ChargeModel::default();
    for i in 0..SAMPLES as u64 {
        m.sample(both(1700 + i, 1800, 1000, true), 10_000);
    }
    assert_eq!(m.rule(), Rule::Sum);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_puts_the_sum_back_for_long() {
    let mut m = ChargeModel::default();
    for _ in 0..MIN_SAMPLES {
        m.sample(both(1000, 1800, 1000, true), 10_000);
    }
    assert_eq!(m.rule(), Rule::Max);
    assert!(m.refuse());
    assert_eq!(m.rule(), Rule::Sum);
    assert!(!m.refuse(), "under the sum a refusal changes no rule");
    for _ in 0..SAMPLES {
        m.sample(both(1000, 1800, 1000, true), 10_000);
    }
    assert_eq!(m.rule(), Rule::Sum, "held after a refusal");
    tokio::time::advance(MAX_REFUTED_FOR).await;
    for _ in 0..MIN_SAMPLES {
        m.sample(both(1000, 1800, 1000, true), 10_000);
    }
    assert_eq!(m.rule(), Rule::Max, "learned again once the hold has passed");
}

#[test]
fn one_answer_teaches_nothing_many_do() {
    let mut m = ChargeModel::default();
    // The upstream counts 1.5× keypool's estimate.
    for _ in 0..MIN_SAMPLES - 1 {
        assert_eq!(m.sample(seen(1500, 1000), 10_000), UNIT);
    }
    assert_eq!(m.sample(seen(1500, 1000), 10_000), 1500);
    // keypool now counts with the scale: the same upstream gives the same ratio.
    assert_eq!(m.sample(seen(1500, 1500), 10_000), 1500);
    assert_eq!(scaled(1000, m.scale()), 1500);
}

#[test]
fn outliers_and_refill_do_not_move_it() {
    let mut m = ChargeModel::default();
    for i in 0..SAMPLES {
        // A bucket that refilled (less than ours), and now and then another
        // client's burst (far more).
        let used = if i % 5 == 0 { 9000 } else { 700 };
        m.sample(seen(used, 1000), 10_000);
    }
    assert_eq!(m.scale(), UNIT);
    // Too little of the limit used to read anything.
    let mut m = ChargeModel::default();
    for _ in 0..SAMPLES {
        m.sample(seen(900, 300), 10_000);
    }
    assert_eq!(m.scale(), UNIT);
    // Never past the cap.
    let mut m = ChargeModel::default();
    for _ in 0..SAMPLES {
        m.sample(seen(10_000, 1000), 10_000);
    }
    assert_eq!(m.scale(), MAX_SCALE);
}

mod scheduler {
    use secrecy::SecretString;
    use tokio::time::Duration;

    use crate::scheduler::{
        charge, Demand, Hit, KeyLease, NoKey, Outcome, RateInfo, Reset, Scheduler, SchedulerConfig, Verdict,
    };
    use crate::store::KeyRecord;

    fn pool(tpm: Option<u32>) -> std::sync::Arc<Scheduler> {
        let s = Scheduler::new(SchedulerConfig { max_wait: Duration::ZERO, ..SchedulerConfig::default() });
        s.sync_keys(&[KeyRecord { tpm, ..KeyRecord::new(1, SecretString::from("sk-test-1")) }]);
        s
    }

    fn demand(tokens: u64) -> Demand {
        Demand { tokens, unsure_tokens: 0, overlap: 0, cost_micros: 0 }
    }

    fn lease(s: &std::sync::Arc<Scheduler>, d: Demand) -> KeyLease {
        let mut lease = s.try_lease(d).unwrap();
        lease.mark_sent();
        lease
    }

    fn headers(limit: u64, remaining: u64) -> RateInfo {
        RateInfo {
            limit_tokens: Some(limit),
            remaining_tokens: Some(remaining),
            reset_tokens: Some(Duration::from_secs(40)),
            limit_requests: Some(100),
            remaining_requests: Some(90),
            reset_requests: Some(Duration::from_secs(1)),
        }
    }

    fn limited(hit: Hit) -> Verdict {
        Verdict::RateLimited { reset: Reset::new(Duration::from_secs(1), hit) }
    }

    fn used(tokens: u64) -> Outcome {
        let usage = keypool_sse::Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            total_tokens: tokens,
            ..Default::default()
        };
        Outcome { success: true, usage: Some(usage), ..Outcome::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn an_admission_charge_stays_whatever_the_usage() {
        let s = pool(Some(1000));
        lease(&s, demand(600)).finish(used(50));
        // The upstream keeps the 600 it charged at admission for its window.
        assert!(matches!(s.try_lease(demand(500)), Err(NoKey::Busy { .. })));
        assert!(s.try_lease(demand(400)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_under_count_is_corrected_once() {
        // The key's limit is learned (300), not configured, and keypool
        // counted the first request as nothing.
        let s = pool(None);
        let first = lease(&s, demand(0));
        first.observe(&headers(300, 200), true);
        first.finish(used(100));
        for remaining in [100, 0] {
            let l = lease(&s, demand(100));
            l.observe(&headers(300, remaining), true);
            l.finish(used(100));
        }
        assert_eq!(s.snapshot()[0].remaining_tokens, Some(0));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.snapshot()[0].remaining_tokens, Some(300));
    }

    #[tokio::test(start_paused = true)]
    async fn an_uncertain_estimate_delays_but_never_refuses() {
        let s = pool(Some(1000));
        // 1,200 tokens counted one a byte while the tokenizer is built; only 300 are sure.
        let rough = Demand { tokens: 1200, unsure_tokens: 900, overlap: 0, cost_micros: 0 };
        let l = lease(&s, rough);
        // It takes the whole key while it runs …
        assert!(matches!(s.try_lease(demand(1)), Err(NoKey::Busy { .. })));
        l.finish(used(300));
        assert!(matches!(s.try_lease(rough), Err(NoKey::Busy { .. })), "the charge stays in the window");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(s.try_lease(rough).is_ok());
        // A sure count over every key's limit is refused.
        assert_eq!(s.try_lease(demand(1200)).unwrap_err(), NoKey::TooLarge { needed: 1200 });
        let sure_part = Demand { tokens: 1500, unsure_tokens: 200, overlap: 0, cost_micros: 0 };
        assert_eq!(s.try_lease(sure_part).unwrap_err(), NoKey::TooLarge { needed: 1300 });
    }

    /// Headers of a token bucket of `limit` with `remaining` left: its reset
    /// is the time to refill what is missing.
    fn bucket_headers(limit: u64, remaining: u64) -> RateInfo {
        let reset = Duration::from_millis((limit - remaining) * 60_000 / limit);
        RateInfo { reset_tokens: Some(reset), ..headers(limit, remaining) }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_shown_to_refill_gets_its_charges_back_gradually() {
        let s = pool(Some(1000));
        // Four answers, a second apart, from a bucket refilling 16 a second.
        for remaining in [900, 816, 732, 648] {
            let l = lease(&s, demand(100));
            l.observe(&bucket_headers(1000, remaining), true);
            l.finish(used(100));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // 400 charged, the last 1 s ago: 352 missing then, 16 refilled since.
        let before = s.snapshot()[0].remaining_tokens.unwrap();
        assert_eq!(before, 664);
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(s.snapshot()[0].remaining_tokens, Some(864), "a window would still hold all 400");
        // A refusal about tokens while the bucket had room refutes it: the
        // window counts again (all of the last minute's charges).
        let l = lease(&s, demand(100));
        l.finish(Outcome { verdict: limited(Hit::Tokens), ..Outcome::default() });
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.snapshot()[0].remaining_tokens, Some(600));
        assert_eq!(s.snapshot()[0].tpm, Some(1000), "refuting the bucket lowers no limit");
    }

    #[tokio::test(start_paused = true)]
    async fn usage_beyond_keypools_own_does_not_hold_a_refilling_key_for_its_whole_reset() {
        let s = Scheduler::new(SchedulerConfig { max_wait: Duration::from_secs(30), ..SchedulerConfig::default() });
        s.sync_keys(&[KeyRecord { tpm: Some(1000), ..KeyRecord::new(1, SecretString::from("sk-test-1")) }]);
        for remaining in [900, 816, 732, 648] {
            let l = lease(&s, demand(100));
            l.observe(&bucket_headers(1000, remaining), true);
            l.finish(used(100));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // The key is filled; its last answer shows 10 tokens more than keypool
        // counted, which the upstream says refill in 50 s.
        let l = lease(&s, demand(600));
        l.observe(&RateInfo { reset_tokens: Some(Duration::from_secs(50)), ..headers(1000, 0) }, true);
        l.finish(used(600));
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let s = std::sync::Arc::clone(&s);
            async move { s.acquire(demand(50)).await.map(|_| tokio::time::Instant::now()) }
        });
        let granted = waiter.await.unwrap().unwrap();
        assert!(
            granted - started < Duration::from_secs(10),
            "refill frees 50 tokens in seconds: {:?}",
            granted - started
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_larger_part_rule_is_learned_from_answers_and_refused_back() {
        let s = pool(Some(10_000));
        // Each request: 1,800 by the sum, 1,000 by the larger part; the
        // upstream counts the larger part (a window: resets unrelated to use).
        let d = Demand { tokens: 1800, unsure_tokens: 0, overlap: 800, cost_micros: 0 };
        assert_eq!(s.charge_rule(), charge::Rule::Sum);
        let window = |remaining| RateInfo { reset_tokens: Some(Duration::from_secs(59)), ..headers(10_000, remaining) };
        for i in 0..12u64 {
            let l = lease(&s, d);
            // A window charging the larger part: 1,000 for each request of the last minute.
            l.observe(&window(10_000 - 1000 * (i + 1).min(5)), true);
            l.finish(used(1000));
            tokio::time::advance(Duration::from_secs(13)).await;
        }
        assert_eq!(s.charge_rule(), charge::Rule::Max);
        lease(&s, demand(100)).finish(Outcome { verdict: limited(Hit::Tokens), ..Outcome::default() });
        assert_eq!(s.charge_rule(), charge::Rule::Sum, "a refusal about tokens puts the sum back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_with_room_lowers_the_token_limit() {
        let s = pool(Some(1000));
        lease(&s, demand(950)).finish(used(950));
        let l = lease(&s, demand(30));
        l.observe(&headers(1000, 0), false);
        l.finish(Outcome { verdict: limited(Hit::Unknown), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(900), "by a tenth at least");
        // To what keypool had counted when the upstream refused.
        let s = pool(Some(2000));
        lease(&s, demand(700)).finish(used(700));
        lease(&s, demand(100)).finish(used(100));
        let l = lease(&s, demand(300));
        l.observe(&RateInfo { limit_tokens: None, ..headers(2000, 0) }, false);
        l.finish(Outcome { verdict: limited(Hit::Unknown), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(1000), "800 seen, but never below half");
        let s = pool(Some(1000));
        lease(&s, demand(700)).finish(used(700));
        let l = lease(&s, demand(200));
        l.observe(&headers(1000, 100), false);
        l.finish(Outcome { verdict: limited(Hit::Tokens), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(700));
        // A refusal about requests does not, nor one that does not say
        // after headers that showed tokens left, or no headers at all.
        let s = pool(Some(1000));
        let l = lease(&s, demand(100));
        l.observe(&headers(1000, 900), false);
        l.finish(Outcome { verdict: limited(Hit::Unknown), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(1000), "tokens were left: not about tokens");
        let s = pool(Some(1000));
        lease(&s, demand(950)).finish(used(950));
        lease(&s, demand(30)).finish(Outcome { verdict: limited(Hit::Unknown), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(1000), "a bare 429 says nothing about tokens");
        let s = pool(Some(1000));
        lease(&s, demand(950)).finish(used(950));
        lease(&s, demand(30)).finish(Outcome { verdict: limited(Hit::Requests), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(1000), "a requests 429");
        let s = pool(Some(1000));
        let l = lease(&s, demand(100));
        l.observe(&RateInfo { remaining_requests: Some(0), ..headers(1000, 900) }, false);
        l.finish(Outcome { verdict: limited(Hit::Unknown), ..Outcome::default() });
        assert_eq!(s.snapshot()[0].tpm, Some(1000));
        // It comes back once no such refusal has come for a while.
        let s = pool(Some(1000));
        for _ in 0..10 {
            let l = lease(&s, demand(1));
            let short = Some(Duration::from_millis(1));
            l.observe(&RateInfo { reset_tokens: short, reset_requests: short, ..headers(1000, 0) }, false);
            l.finish(Outcome {
                verdict: Verdict::RateLimited { reset: Reset::new(Duration::from_millis(1), Hit::Unknown) },
                ..Outcome::default()
            });
            tokio::time::advance(Duration::from_millis(2)).await;
        }
        assert_eq!(s.snapshot()[0].tpm, Some(500), "never below half");
        // A lowered limit is a guess: a request over it but within the
        // announced one waits for an empty key, and is not refused.
        tokio::time::advance(Duration::from_secs(61)).await;
        let big = lease(&s, demand(800));
        assert_eq!(s.snapshot()[0].remaining_tokens, Some(0));
        big.give_back();
        tokio::time::advance(crate::scheduler::limits::LOWERED_FOR).await;
        let l = lease(&s, demand(1));
        l.observe(&headers(1000, 990), true);
        l.finish(used(1));
        assert_eq!(s.snapshot()[0].tpm, Some(1000));
    }
}
