//! The batched writer: records leave the request path through a bounded
//! channel and reach the store in batches (every `batch` records or
//! `flush_interval`, whichever comes first), in one transaction each.
//!
//! The statistics of the records (rollups) and each gateway token's totals
//! are summed in memory and added with a batch at most every
//! [`ROLLUP_EVERY`] (every [`ROLLUP_EVERY_MANY`] while they are more than
//! [`MANY_ROWS`] rows): a busy key has one row per minute, so one upsert then
//! stands for many records (and the parallel parts of a PostgreSQL batch
//! do not queue on the same rows), and a thousand tenants' rows are written
//! every few seconds rather than with every batch. They lag the log by at most
//! that, never lead it; a crash loses at most that much of them (the day
//! rows that period budgets are read back from already could), never any
//! key's totals (written with their records).
//!
//! A record dropped (the buffer full, the database refusing it, the stop's
//! deadline passed) takes its request's share of the key and token totals
//! with it: the totals are what the log holds. The live scheduler counted
//! it all the same (budgets hold until a restart); the drop is counted in
//! `keypool_records_dropped_total` and logged.
//!
//! While the store is slow or down, the writer keeps retrying the batch in
//! hand and records wait in the channel; only when it is full is a record
//! dropped, and every drop is counted (`keypool_records_dropped_total`) and
//! logged. A request never waits on the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rollup::{Buckets, MinuteSums, Sums};
use super::RequestRecord;
use crate::store::{Backend, Store, StoreError};

/// How records are buffered and batched (`[records]` in the config).
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    /// Keep each request's row (the request log); off, the writer still
    /// adds every request to the key and token totals and the rollups.
    pub log: bool,
    /// Keep request and answer bodies, cut to this many bytes.
    pub bodies: Option<usize>,
    /// Where the rollups' hours and days begin (`time_zone`).
    pub buckets: std::sync::Arc<Buckets>,
    /// Records waiting for the store at most; past it they are dropped and counted.
    pub buffer: usize,
    /// Records written in one transaction at most.
    pub batch: usize,
    /// A batch is written at the latest this long after its first record.
    pub flush_interval: Duration,
}

impl Default for RecordsConfig {
    fn default() -> RecordsConfig {
        RecordsConfig {
            log: true,
            bodies: None,
            buckets: std::sync::Arc::new(Buckets::utc()),
            buffer: 100_000,
            batch: 10_000,
            // A second: with a thousand tenants, each batch dirtied a page
            // of the log's per-token index per token in it (on SQLite, a
            // map of the log written with each batch from migration 0015,
            // with the statistics from 0017), and five batches a second
            // cost the gateway 19 µs of CPU a record more than one
            // (docs/benchmarks.md, issue 17).
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// Hands finished records to the writer without waiting. Cheap to clone;
/// [`Recorder::off`] records nothing.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    tx: Option<mpsc::Sender<RequestRecord>>,
    /// Keep bodies, cut to this many bytes.
    bodies: Option<usize>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Taken into the buffer.
    accepted: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    /// When the last "records dropped" warning was logged (ms since `origin`).
    warned_at: AtomicU64,
    origin: std::sync::OnceLock<std::time::Instant>,
}

/// Drops are logged at most this often (each is counted in the metric).
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Counts {
    fn written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::records_written(n);
    }

    fn dropped(&self, reason: &'static str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::records_dropped(reason, 1);
        let origin = *self.origin.get_or_init(std::time::Instant::now);
        let now = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due && self.warned_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let why = match reason {
                "buffer_full" => "the record buffer is full (the database is slow or unreachable)",
                _ => "the record writer has stopped",
            };
            tracing::warn!(dropped_total = total, reason, "request records dropped: {why}");
        }
    }
}

impl Recorder {
    /// A recorder that keeps nothing (records are off, or no store).
    pub fn off() -> Recorder {
        Recorder::default()
    }

    /// Whether records are kept at all.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record for the writer; never waits. A full buffer or a
    /// stopped writer drops it, counted and logged.
    pub fn record(&self, record: RequestRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {
                self.counts.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => self.counts.dropped("buffer_full"),
            Err(TrySendError::Closed(_)) => self.counts.dropped("stopped"),
        }
    }

    /// Records handed over and not yet taken by the writer (its queue's
    /// length; `keypool_records_waiting`).
    pub fn waiting(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.max_capacity().saturating_sub(tx.capacity()))
    }

    /// The most of each body to keep, when records keep bodies.
    pub fn bodies(&self) -> Option<usize> {
        self.bodies
    }

    /// Records written to the store so far.
    pub fn written(&self) -> u64 {
        self.counts.written.load(Ordering::Relaxed)
    }

    /// Records dropped so far (also in `keypool_records_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }
}

/// The running writer, to stop and join it.
#[derive(Debug)]
pub struct WriterHandle {
    stop: Arc<Stop>,
    join: JoinHandle<()>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Stop {
    token: CancellationToken,
    /// The last write attempt ends by then.
    until: std::sync::Mutex<Option<Instant>>,
}

impl WriterHandle {
    /// Stops taking records, writes every record already queued (retrying
    /// a failing store until `until`) and returns when done; records still
    /// unwritten then are counted as dropped and logged. Once `hurry` is
    /// cancelled (a second signal), the last attempt ends within
    /// [`HURRIED`].
    pub async fn stop(self, until: Instant, hurry: CancellationToken) {
        self.stop.set_until(until);
        self.stop.token.cancel();
        let mut join = self.join;
        // The writer watches its deadline; this bounds a write that would
        // not end (a connection hung at the socket) all the same.
        let joined = tokio::select! {
            joined = &mut join => Some(joined),
            _ = tokio::time::sleep_until(until + OVERRUN) => None,
            _ = hurry.cancelled() => {
                let soon = Instant::now() + HURRIED;
                self.stop.set_until(soon);
                tokio::time::timeout_at(soon + OVERRUN, &mut join).await.ok()
            }
        };
        match joined {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::error!(error = %e, "the record writer failed"),
            None => {
                join.abort();
                let c = &self.counts;
                let accepted = c.accepted.load(Ordering::Relaxed);
                let settled = c.written.load(Ordering::Relaxed) + c.dropped.load(Ordering::Relaxed);
                let lost = accepted.saturating_sub(settled);
                c.dropped.fetch_add(lost, Ordering::Relaxed);
                crate::metrics::records_dropped("stopped", lost);
                tracing::error!(records = lost, "the record writer did not finish in time; its records are lost");
            }
        }
    }
}

/// After a second signal, the writer's last write ends within this (the
/// whole stop then has [`crate::shutdown::HURRY`], the usage totals too).
const HURRIED: Duration = Duration::from_millis(800);
/// How far past its deadline a stopping writer is waited for.
const OVERRUN: Duration = Duration::from_millis(100);

impl Stop {
    /// Moves the deadline of the last write forward (never back).
    fn set_until(&self, until: Instant) {
        let mut at = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *at = Some(at.map_or(until, |t| t.min(until)));
    }
}

/// Starts the writer on `store`. Returns the recorder requests use and the
/// handle that stops the writer.
pub fn spawn(store: Store, config: RecordsConfig) -> (Recorder, WriterHandle) {
    let (tx, rx) = mpsc::channel(config.buffer.max(1));
    let bodies = config.bodies.filter(|_| config.log);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(Stop::default());
    let writer =
        Writer { store, config, rollups: Default::default(), rx, counts: Arc::clone(&counts), stop: Arc::clone(&stop) };
    let join = tokio::spawn(writer.run());
    let recorder = Recorder { tx: Some(tx), bodies, counts: Arc::clone(&counts) };
    (recorder, WriterHandle { stop, join, counts })
}

struct Writer {
    store: Store,
    config: RecordsConfig,
    /// Statistics of records already written, waiting for their turn.
    rollups: std::sync::Mutex<Pending>,
    rx: mpsc::Receiver<RequestRecord>,
    counts: Arc<Counts>,
    stop: Arc<Stop>,
}

/// Statistics (rollups and token totals) are added to the store at most this often.
pub const ROLLUP_EVERY: Duration = Duration::from_secs(1);
/// ... or this often while more than [`MANY_ROWS`] rows are summed
/// (hundreds of tenants active at once): each row is an upsert of 33
/// columns, and a thousand tenants' rows every second cost the gateway
/// about 1 µs of CPU a request more than one tenant's at 20,000 requests a
/// second; every 5 s, about half as much (docs/benchmarks.md, issue 17).
/// They lag the log by up to this much then.
pub const ROLLUP_EVERY_MANY: Duration = Duration::from_secs(5);
/// Rows summed (rollup rows and token totals) above which statistics wait
/// [`ROLLUP_EVERY_MANY`]: a handful of keys and models and up to about 250
/// tokens active in a second stay under it. Counted as
/// [`MinuteSums::rows`] counts them: each minute's row three times (its
/// minute, hour and day), an upper bound when minutes share an hour.
pub const MANY_ROWS: usize = 1_000;

/// Statistics summed in memory since they were last written, per minute
/// ([`MinuteSums`]: spread to hours and days when written).
#[derive(Debug, Default)]
struct Pending {
    rows: MinuteSums,
    /// When they were last written (or first summed).
    since: Option<Instant>,
    /// The writer is stopping: every batch takes the rows along, so a stop
    /// that runs out of time keeps the sums of the records it wrote.
    stopping: bool,
}

impl Pending {
    /// How long the rows wait: [`ROLLUP_EVERY`], or [`ROLLUP_EVERY_MANY`]
    /// when they are many.
    fn every(&self) -> Duration {
        if self.rows.rows() > MANY_ROWS {
            ROLLUP_EVERY_MANY
        } else {
            ROLLUP_EVERY
        }
    }

    /// Takes the rows when they have waited [`Pending::every`] (or at a stop).
    fn take_if_due(&mut self, now: Instant) -> Option<MinuteSums> {
        let since = *self.since.get_or_insert(now);
        (self.stopping || now >= since + self.every()).then(|| {
            self.since = Some(now);
            std::mem::take(&mut self.rows)
        })
    }

    fn take_now(&mut self) -> Option<MinuteSums> {
        self.since = Some(Instant::now());
        (!self.rows.is_empty()).then(|| std::mem::take(&mut self.rows))
    }

    /// Rows whose write failed come back, added to what was summed meanwhile.
    fn put_back(&mut self, rows: MinuteSums) {
        self.rows.add(rows);
    }

    /// When the rows must be written even if no record comes.
    fn due(&self) -> Option<Instant> {
        (!self.rows.is_empty()).then(|| self.since.map_or_else(Instant::now, |s| s + self.every()))
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Parts a PostgreSQL batch is written in at once, each at least
/// [`MIN_PART`] records (docs/benchmarks.md has what it gains).
const PARALLEL_PARTS: usize = 2;
const MIN_PART: usize = 1_000;

/// First pause after a failed write; it doubles up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How often a write at stop looks whether its deadline has passed (and
/// its pause between tries).
const DEADLINE_CHECK: Duration = Duration::from_millis(50);

impl Writer {
    async fn run(mut self) {
        let batch_max = self.config.batch.max(1);
        // Grows to `batch_max` as batches fill (never allocated whole up front).
        let mut batch: Vec<RequestRecord> = Vec::with_capacity(batch_max.min(1024));
        while !self.stop.token.is_cancelled() {
            if batch.is_empty() {
                let rollups_due = self.lock_rollups().due();
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, batch_max) => if n == 0 { break },
                    _ = self.stop.token.cancelled() => break,
                    // Quiet: the statistics summed so far go out on their own.
                    _ = sleep_until_some(rollups_due) => {
                        if let Err(e) = self.write_rollups().await {
                            crate::metrics::record_write_error();
                            tracing::warn!(error = %e, "could not write request statistics; retrying");
                        }
                        continue;
                    }
                }
                // Wait for a fuller batch, but no longer than the interval.
                let due = Instant::now() + self.config.flush_interval;
                while batch.len() < batch_max {
                    let room = batch_max - batch.len();
                    tokio::select! {
                        n = self.rx.recv_many(&mut batch, room) => if n == 0 { break },
                        _ = tokio::time::sleep_until(due) => break,
                        _ = self.stop.token.cancelled() => break,
                    }
                }
            }
            self.write(&mut batch).await;
        }
        // Stopping: nothing new comes in; what is queued is written, each
        // batch with the statistics summed so far.
        self.rx.close();
        self.lock_rollups().stopping = true;
        loop {
            while batch.len() < batch_max {
                let Ok(record) = self.rx.try_recv() else { break };
                batch.push(record);
            }
            if batch.is_empty() {
                break;
            }
            if !self.write_until_stopped(&mut batch).await {
                let left = batch.len() + self.rx.len();
                self.counts.dropped.fetch_add(left as u64, Ordering::Relaxed);
                crate::metrics::records_dropped("stopped", left as u64);
                tracing::error!(records = left, "request records not written before the stop's deadline; lost");
                return;
            }
        }
        // Last, the statistics still summed in memory.
        while let Err(e) = self.write_rollups().await {
            crate::metrics::record_write_error();
            if Instant::now() + DEADLINE_CHECK >= self.deadline() {
                tracing::error!(error = %e, "request statistics not written before the stop's deadline; lost");
                return;
            }
            tokio::time::sleep(DEADLINE_CHECK).await;
        }
    }

    /// One try at the batch; it is empty afterwards unless the store failed
    /// in a way that may pass (the records not yet written stay). A record
    /// the database refuses (a value it cannot store) must not hold up the
    /// rest: after such a failure the batch is written record by record,
    /// and each refused one is dropped, counted and logged.
    async fn attempt(&self, batch: &mut Vec<RequestRecord>) -> Result<(), StoreError> {
        // PostgreSQL takes a large batch in parts on several connections at
        // once (its index upkeep is the bottleneck, one core per
        // connection); SQLite has one writer at a time.
        let parts = match self.store.backend() {
            Backend::Postgres if batch.len() >= 2 * MIN_PART => PARALLEL_PARTS,
            _ => 1,
        };
        let size = batch.len().div_ceil(parts).max(1);
        let results = futures_util::future::join_all(batch.chunks(size).map(|c| self.write_part(c))).await;
        let mut failed = Vec::new();
        let mut error = None;
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(()) => self.counts.written(batch.len().min((i + 1) * size) - i * size),
                Err(e) => {
                    failed.push(i);
                    // A refusal of the data says more than a lost connection.
                    if error.as_ref().is_none_or(|e: &StoreError| !e.is_permanent()) {
                        error = Some(e);
                    }
                }
            }
        }
        let Some(e) = error else {
            batch.clear();
            return Ok(());
        };
        // Each part is its own transaction: only the failed ones are kept.
        let mut at = 0;
        batch.retain(|_| {
            let keep = failed.contains(&(at / size));
            at += 1;
            keep
        });
        if !e.is_permanent() {
            return Err(e);
        }
        tracing::warn!(error = %e, "the database refused a batch of request records; writing them one by one");
        let mut done = 0;
        let result = loop {
            let Some(record) = batch.get(done) else { break Ok(()) };
            match self.write_part(std::slice::from_ref(record)).await {
                Ok(()) => self.counts.written(1),
                Err(e) if e.is_permanent() => {
                    tracing::warn!(error = %e, request_id = %record.request_id, "the database refused a request record; dropped");
                    self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::records_dropped("refused", 1);
                }
                Err(e) => break Err(e),
            }
            done += 1;
        };
        batch.drain(..done);
        result
    }

    /// One transaction: `records`, and what they add to the totals and rollups.
    async fn write_part(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        let mine = MinuteSums::of(records);
        // Due: this part carries everything summed so far, and its own.
        let taken = self.lock_rollups().take_if_due(Instant::now());
        let (result, unwritten) = match &taken {
            Some(earlier) => {
                let mut all = earlier.clone();
                all.add(mine);
                (self.store.write_batch(records, self.config.log, &all.spread(&self.config.buckets)).await, None)
            }
            None => (self.store.write_batch(records, self.config.log, &Sums::default()).await, Some(mine)),
        };
        let mut pending = self.lock_rollups();
        match (result.is_ok(), taken, unwritten) {
            (false, Some(earlier), _) => pending.put_back(earlier),
            (true, None, Some(mine)) => pending.rows.add(mine),
            // Written, or to be written again with these records (whose
            // statistics are summed again then): only what was taken returns.
            _ => {}
        }
        result
    }

    /// Writes the statistics still summed in memory (at a stop, or when no
    /// record came for [`ROLLUP_EVERY`]); kept for another try on failure.
    async fn write_rollups(&self) -> Result<(), StoreError> {
        let Some(rows) = self.lock_rollups().take_now() else { return Ok(()) };
        let result = self.store.write_batch(&[], false, &rows.spread(&self.config.buckets)).await;
        if result.is_err() {
            self.lock_rollups().put_back(rows);
        }
        result
    }

    fn lock_rollups(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.rollups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the batch, retrying with a growing pause while the store
    /// fails. Returns when written, or when a stop came first (the batch is
    /// kept for the last write).
    async fn write(&self, batch: &mut Vec<RequestRecord>) {
        let mut pause = BACKOFF_BASE;
        loop {
            match self.attempt(batch).await {
                Ok(()) => return,
                Err(e) => {
                    crate::metrics::record_write_error();
                    tracing::warn!(error = %e, records = batch.len(), queued = self.rx.len(), "could not write request records; retrying");
                }
            }
            // Records keep queueing meanwhile; a stop ends the pause.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.token.cancelled() => return,
            }
            pause = (pause * 2).min(BACKOFF_CAP);
        }
    }

    /// Retries until the stop's deadline (which a second signal brings
    /// forward), watching it during each write and each pause; `true` when
    /// written.
    async fn write_until_stopped(&self, batch: &mut Vec<RequestRecord>) -> bool {
        loop {
            let done = {
                let attempt = self.attempt(batch);
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        done = &mut attempt => break done,
                        _ = tokio::time::sleep(DEADLINE_CHECK) => if Instant::now() >= self.deadline() { return false },
                    }
                }
            };
            match done {
                Ok(()) => return true,
                Err(e) => {
                    crate::metrics::record_write_error();
                    tracing::warn!(error = %e, records = batch.len(), "could not write request records at stop; retrying");
                }
            }
            if Instant::now() + DEADLINE_CHECK >= self.deadline() {
                return false;
            }
            tokio::time::sleep(DEADLINE_CHECK).await;
        }
    }

    fn deadline(&self) -> Instant {
        let at = *self.stop.until.lock().unwrap_or_else(|p| p.into_inner());
        at.unwrap_or_else(Instant::now)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::TokenUsage;

    fn pending_with_tokens(n: i64) -> Pending {
        let mut p = Pending::default();
        p.rows.tokens = (1..=n).map(|id| (id, TokenUsage { requests: 1, ..TokenUsage::default() })).collect();
        p
    }

    #[test]
    fn few_rows_are_due_after_a_second_many_after_five() {
        let t0 = Instant::now();
        let mut few = pending_with_tokens(3);
        assert!(few.take_if_due(t0).is_none(), "the first look only starts the clock");
        assert_eq!(few.due(), Some(t0 + ROLLUP_EVERY));
        assert!(few.take_if_due(t0 + ROLLUP_EVERY - Duration::from_millis(1)).is_none());
        assert_eq!(few.take_if_due(t0 + ROLLUP_EVERY).map(|s| s.rows()), Some(3));

        let many_rows = i64::try_from(MANY_ROWS).unwrap() + 1;
        let mut many = pending_with_tokens(many_rows);
        assert!(many.take_if_due(t0).is_none());
        assert_eq!(many.due(), Some(t0 + ROLLUP_EVERY_MANY));
        assert!(many.take_if_due(t0 + ROLLUP_EVERY).is_none(), "many rows wait longer than a second");
        assert!(many.take_if_due(t0 + ROLLUP_EVERY_MANY - Duration::from_millis(1)).is_none());
        let taken = many.take_if_due(t0 + ROLLUP_EVERY_MANY).unwrap();
        assert_eq!(taken.rows(), MANY_ROWS + 1);
        assert!(many.rows.is_empty() && many.due().is_none(), "nothing left to write");

        // A stop takes them at once, however many.
        let mut stopping = pending_with_tokens(many_rows);
        stopping.stopping = true;
        assert!(stopping.take_if_due(t0).is_some());
    }
}
