//! Retention: records and statistics past their age are deleted in the
//! background, a small batch at a time (so the record writer is never held
//! up for long), and SQLite gives the space back (incremental vacuum).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rollup::Span;
use crate::store::{now_unix_ms, Store, StoreError};

/// How old records and statistics may get ("zero": kept forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub records: Duration,
    pub rollups: Duration,
    pub minute_rollups: Duration,
}

/// Rows deleted per statement: small enough that a batch of records
/// waiting for the database lock waits milliseconds, not seconds.
const BATCH: u32 = 5_000;
/// Pause between two deleting statements, for the writer's turn.
const BREATHE: Duration = Duration::from_millis(20);
/// How often retention looks for old rows (first a minute after start).
const EVERY: Duration = Duration::from_secs(600);
const FIRST: Duration = Duration::from_secs(60);
/// Free pages given back per incremental vacuum step (SQLite, 4 KiB pages).
const VACUUM_PAGES: u32 = 2_000;
/// Vacuum steps in one pass at most (8 GB of 4 KiB pages).
const MAX_VACUUM_STEPS: u32 = 1_000;

/// Runs until `stop`: prunes every [`EVERY`].
pub async fn run(store: Store, retention: Retention, stop: CancellationToken) {
    let mut due = tokio::time::Instant::now() + FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.cancelled() => return,
        }
        match prune(&store, retention, now_unix_ms(), &stop).await {
            Ok(gone) if gone.any() => tracing::info!(
                records = gone.records,
                rollups = gone.rollups,
                "deleted records and statistics past their retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not delete old records; will try again"),
        }
        due = tokio::time::Instant::now() + EVERY;
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub records: u64,
    pub rollups: u64,
}

impl Pruned {
    fn any(&self) -> bool {
        self.records + self.rollups > 0
    }
}

/// Deletes what is older than `retention` as of `now_ms` (Unix ms), in
/// batches, then reclaims the space; stops early on `stop`.
pub async fn prune(
    store: &Store,
    retention: Retention,
    now_ms: i64,
    stop: &CancellationToken,
) -> Result<Pruned, StoreError> {
    let mut gone = Pruned::default();
    let before = |age: Duration| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    if !retention.records.is_zero() {
        let cutoff = before(retention.records);
        loop {
            let n = store.prune_requests(cutoff, BATCH).await?;
            gone.records += n;
            if n < u64::from(BATCH) || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(BREATHE).await;
        }
    }
    for (span, age) in
        [(Span::Minute, retention.minute_rollups), (Span::Hour, retention.rollups), (Span::Day, retention.rollups)]
    {
        if age.is_zero() {
            continue;
        }
        let cutoff = before(age).div_euclid(1000);
        loop {
            let n = store.prune_rollups(span, cutoff, BATCH).await?;
            gone.rollups += n;
            if n < u64::from(BATCH) || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(BREATHE).await;
        }
    }
    if gone.any() {
        // A step at a time, so the writer is not locked out for a whole
        // vacuum; bounded, so a pass always ends (the rest waits for the next).
        for _ in 0..MAX_VACUUM_STEPS {
            if !store.reclaim_space(VACUUM_PAGES).await? || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(BREATHE).await;
        }
    }
    Ok(gone)
}
