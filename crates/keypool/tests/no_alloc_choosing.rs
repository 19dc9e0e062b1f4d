//! Regression guard for the scheduling hot path: once the pool is warm,
//! choosing a key among 10,000 (choose, reserve, give back) allocates
//! nothing, and where keys move in the ordered index (round robin, finished
//! leases) only the index's nodes are allocated. Counting allocations cannot
//! flake the way a timing assertion would. (allocation-counter's global allocator
//! counts per thread, so other tests' threads do not disturb the count.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keypool::scheduler::{Demand, Outcome, RateInfo, Scheduler, SchedulerConfig, Strategy};
use keypool::store::KeyRecord;
use secrecy::SecretString;

const KEYS: i64 = 10_000;
const DEMAND: Demand = Demand { tokens: 100, unsure_tokens: 0, overlap: 0, cost_micros: 0 };

fn record(id: i64) -> KeyRecord {
    // Far more requests a minute than the test makes, so no key runs out.
    KeyRecord {
        rpm: Some(u32::MAX),
        tpm: Some(u32::MAX),
        budget_micros: Some(u64::MAX / 2),
        ..KeyRecord::new(id, SecretString::from(format!("sk-guard-{id}")))
    }
}

/// A scheduler whose every key has been leased and answered once, so none is
/// in the cautious one-request-at-a-time mode of a key never heard from.
fn warm_scheduler(strategy: Strategy) -> Arc<Scheduler> {
    let s = Scheduler::new(SchedulerConfig { strategy, ..SchedulerConfig::default() });
    let records: Vec<KeyRecord> = (1..=KEYS).map(record).collect();
    s.sync_keys(&records);
    let leases: Vec<_> = (0..KEYS).map(|_| s.try_lease(DEMAND).expect("a key with room")).collect();
    for lease in &leases {
        lease.observe(&RateInfo::default(), true);
    }
    drop(leases);
    s
}

fn finish_one(s: &Arc<Scheduler>) {
    let mut lease = s.try_lease(DEMAND).expect("a key with room");
    lease.mark_sent();
    lease.finish(Outcome { success: true, cost_micros: Some(3), ..Outcome::default() });
}

const OPS: u64 = 2_000;

#[tokio::test(flavor = "current_thread")]
async fn choosing_a_key_among_ten_thousand_allocates_nothing() {
    // A lease dropped unsent gives its reservation back, and the key goes
    // back where it was in the ordered index: nothing moves, nothing allocates.
    for strategy in [Strategy::LeastUsed, Strategy::BalanceEven] {
        let s = warm_scheduler(strategy);
        let info = allocation_counter::measure(|| {
            for _ in 0..OPS {
                let lease = s.try_lease(DEMAND).expect("a key with room");
                std::hint::black_box(lease.key_id());
            }
        });
        assert_eq!(info.count_total, 0, "{strategy:?}: allocations while choosing: {info:?}");
    }
}

/// Where a key does move in the ordered index (round robin sends it to the
/// back; a finished request changes its usage), the index is a B-tree, whose
/// nodes split and merge as keys move: about one node allocation per three
/// moves, measured. Anything allocated per operation (a `Vec`, a `String`,
/// a boxed future) would make it one or more per operation.
#[tokio::test(flavor = "current_thread")]
async fn keys_that_move_allocate_only_index_nodes() {
    let s = warm_scheduler(Strategy::RoundRobin);
    let info = allocation_counter::measure(|| {
        for _ in 0..OPS {
            let lease = s.try_lease(DEMAND).expect("a key with room");
            std::hint::black_box(lease.key_id());
        }
    });
    assert!(info.count_total * 2 <= OPS, "round robin: allocations while choosing: {info:?}");
    assert_eq!(info.bytes_current, 0, "round robin: memory kept after choosing: {info:?}");

    let s = warm_scheduler(Strategy::LeastUsed);
    // Warm-up: every key's window reaches its working size.
    for _ in 0..2 * KEYS {
        finish_one(&s);
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..OPS {
            finish_one(&s);
        }
    });
    assert!(info.count_total * 2 <= OPS, "allocations while finishing leases: {info:?}");
}
