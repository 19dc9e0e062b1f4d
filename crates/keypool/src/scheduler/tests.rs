#![allow(clippy::unwrap_used)]
use super::*;

fn record(id: i64, rpm: Option<u32>, tpm: Option<u32>, requests: u64) -> KeyRecord {
    KeyRecord {
        id,
        secret: SecretString::from(format!("sk-test-{id}")),
        label: None,
        rpm,
        tpm,
        enabled: true,
        requests,
        successes: 0,
        failures: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        created_at: 0,
        last_used_at: None,
    }
}

fn ok() -> Outcome {
    Outcome {
        success: true,
        ..Outcome::default()
    }
}

#[tokio::test(start_paused = true)]
async fn spreads_evenly_and_never_exceeds_rpm() {
    let s = Scheduler::new(DefaultLimits::default());
    s.sync_keys(&[
        record(1, Some(10), None, 0),
        record(2, Some(10), None, 0),
        record(3, Some(10), None, 0),
    ]);
    let mut served = BTreeMap::<i64, u32>::new();
    for _ in 0..30 {
        let lease = s.lease(1).unwrap();
        *served.entry(lease.key_id()).or_default() += 1;
        lease.finish(ok());
    }
    assert_eq!(
        served.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
    match s.lease(1) {
        Err(NoKey::AllBusy { retry_after }) => assert!(retry_after <= Duration::from_secs(60)),
        other => panic!("expected AllBusy, got {other:?}"),
    }
    tokio::time::advance(window::WINDOW).await;
    assert!(
        s.lease(1).is_ok(),
        "the window must free the key after a minute"
    );
}

#[tokio::test(start_paused = true)]
async fn least_used_prefers_the_key_with_the_smallest_lifetime_count() {
    let s = Scheduler::new(DefaultLimits::default());
    s.sync_keys(&[record(1, None, None, 50), record(2, None, None, 3)]);
    let lease = s.lease(1).unwrap();
    assert_eq!(lease.key_id(), 2);
}

#[tokio::test(start_paused = true)]
async fn in_flight_requests_count_and_dropped_leases_release() {
    let s = Scheduler::new(DefaultLimits {
        rpm: Some(1),
        tpm: None,
    });
    s.sync_keys(&[record(1, None, None, 0)]);
    let lease = s.lease(1).unwrap();
    assert!(matches!(s.lease(1), Err(NoKey::AllBusy { .. })));
    drop(lease);
    // Dropped unfinished: it still counts as sent within the minute.
    assert!(matches!(s.lease(1), Err(NoKey::AllBusy { .. })));
    assert_eq!(s.snapshot()[0].failures, 1);
    assert_eq!(s.snapshot()[0].inflight, 0);
}

#[tokio::test(start_paused = true)]
async fn tokens_reserve_then_reconcile_with_usage() {
    let s = Scheduler::new(DefaultLimits::default());
    s.sync_keys(&[record(1, None, Some(1000), 0)]);
    let lease = s.lease(900).unwrap();
    assert!(matches!(s.lease(200), Err(NoKey::AllBusy { .. })));
    let usage = keypool_sse::Usage {
        prompt_tokens: 50,
        completion_tokens: 50,
        total_tokens: 100,
    };
    lease.finish(Outcome {
        success: true,
        usage: Some(usage),
        cool_for: None,
    });
    assert!(s.lease(800).is_ok());
    assert_eq!(s.lease(5000).unwrap_err(), NoKey::TooLarge { needed: 5000 });
}

#[tokio::test(start_paused = true)]
async fn a_cooling_key_returns_right_after_its_reset() {
    let s = Scheduler::new(DefaultLimits::default());
    s.sync_keys(&[record(1, None, None, 0)]);
    s.lease(1).unwrap().finish(Outcome {
        success: false,
        usage: None,
        cool_for: Some(Duration::from_secs(20)),
    });
    match s.lease(1) {
        Err(NoKey::AllBusy { retry_after }) => assert_eq!(retry_after, Duration::from_secs(20)),
        other => panic!("{other:?}"),
    }
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(s.lease(1).is_ok());
}

#[tokio::test(start_paused = true)]
async fn sync_adds_updates_and_removes_keys_keeping_live_counts() {
    let s = Scheduler::new(DefaultLimits::default());
    s.sync_keys(&[record(1, None, None, 0), record(2, None, None, 0)]);
    s.lease(1).unwrap().finish(ok());
    let mut disabled = record(1, Some(5), None, 0);
    disabled.enabled = false;
    s.sync_keys(&[disabled]);
    let view = s.snapshot();
    assert_eq!(view.len(), 1);
    assert!(!view[0].enabled);
    assert_eq!(view[0].rpm, Some(5));
    assert_eq!(s.lease(1).unwrap_err(), NoKey::NoKeys);
    let deltas = s.take_unflushed();
    assert!(deltas.len() <= 1);
    assert!(s.take_unflushed().is_empty());
}
