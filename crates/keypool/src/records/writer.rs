//! The batched writer: records leave the request path through a bounded
//! channel and reach the store in batches (every `batch` records or
//! `flush_interval`, whichever comes first), in one transaction each.
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

use super::RequestRecord;
use crate::store::Store;

/// How records are buffered and batched (`[records]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsConfig {
    /// Records waiting for the store at most; past it they are dropped and counted.
    pub buffer: usize,
    /// Records written in one transaction at most.
    pub batch: usize,
    /// A batch is written at the latest this long after its first record.
    pub flush_interval: Duration,
}

impl Default for RecordsConfig {
    fn default() -> RecordsConfig {
        RecordsConfig { buffer: 100_000, batch: 1_000, flush_interval: Duration::from_millis(200) }
    }
}

/// Hands finished records to the writer without waiting. Cheap to clone;
/// [`Recorder::off`] records nothing.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    tx: Option<mpsc::Sender<RequestRecord>>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    written: AtomicU64,
    dropped: AtomicU64,
    /// When the last "records dropped" warning was logged (ms since `origin`).
    warned_at: AtomicU64,
    origin: std::sync::OnceLock<std::time::Instant>,
}

/// Drops are logged at most this often (each is counted in the metric).
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Counts {
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
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.counts.dropped("buffer_full"),
            Err(TrySendError::Closed(_)) => self.counts.dropped("stopped"),
        }
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
    /// [`HURRY`] at most.
    ///
    /// [`HURRY`]: crate::shutdown::HURRY
    pub async fn stop(self, until: Instant, hurry: CancellationToken) {
        self.stop.set_until(until);
        self.stop.token.cancel();
        let mut join = self.join;
        let joined = tokio::select! {
            joined = &mut join => joined,
            _ = hurry.cancelled() => {
                self.stop.set_until(Instant::now() + crate::shutdown::HURRY);
                join.await
            }
        };
        if let Err(e) = joined {
            tracing::error!(error = %e, "the record writer failed");
        }
    }
}

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
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(Stop::default());
    let writer = Writer { store, config, rx, counts: Arc::clone(&counts), stop: Arc::clone(&stop) };
    let join = tokio::spawn(writer.run());
    (Recorder { tx: Some(tx), counts }, WriterHandle { stop, join })
}

struct Writer {
    store: Store,
    config: RecordsConfig,
    rx: mpsc::Receiver<RequestRecord>,
    counts: Arc<Counts>,
    stop: Arc<Stop>,
}

/// First pause after a failed write; it doubles up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How often a write at stop looks whether its deadline has passed.
const DEADLINE_CHECK: Duration = Duration::from_millis(50);

impl Writer {
    async fn run(mut self) {
        let batch_max = self.config.batch.max(1);
        let mut batch: Vec<RequestRecord> = Vec::with_capacity(batch_max);
        while !self.stop.token.is_cancelled() {
            if batch.is_empty() {
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, batch_max) => if n == 0 { break },
                    _ = self.stop.token.cancelled() => break,
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
            if self.write(&batch).await {
                batch.clear();
            }
        }
        // Stopping: nothing new comes in; what is queued is written.
        self.rx.close();
        loop {
            while batch.len() < batch_max {
                let Ok(record) = self.rx.try_recv() else { break };
                batch.push(record);
            }
            if batch.is_empty() {
                return;
            }
            if !self.write_until_stopped(&batch).await {
                let left = batch.len() + self.rx.len();
                self.counts.dropped.fetch_add(left as u64, Ordering::Relaxed);
                crate::metrics::records_dropped("stopped", left as u64);
                tracing::error!(records = left, "request records not written before the stop's deadline; lost");
                return;
            }
            batch.clear();
        }
    }

    /// Writes the batch, retrying with a growing pause while the store
    /// fails; `false` when a stop came first (the batch is kept).
    async fn write(&self, batch: &[RequestRecord]) -> bool {
        let mut pause = BACKOFF_BASE;
        loop {
            match self.store.insert_requests(batch).await {
                Ok(()) => {
                    self.counts.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    crate::metrics::records_written(batch.len());
                    return true;
                }
                Err(e) => {
                    crate::metrics::record_write_error();
                    tracing::warn!(error = %e, records = batch.len(), queued = self.rx.len(), "could not write request records; retrying");
                }
            }
            // Records keep queueing meanwhile; a stop ends the pause.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.token.cancelled() => return false,
            }
            pause = (pause * 2).min(BACKOFF_CAP);
        }
    }

    /// Retries until the stop's deadline (which a second signal brings
    /// forward); `true` when written.
    async fn write_until_stopped(&self, batch: &[RequestRecord]) -> bool {
        let mut pause = BACKOFF_BASE;
        loop {
            let insert = self.store.insert_requests(batch);
            tokio::pin!(insert);
            let done = loop {
                tokio::select! {
                    done = &mut insert => break done,
                    _ = tokio::time::sleep(DEADLINE_CHECK) => if Instant::now() >= self.deadline() { return false },
                }
            };
            match done {
                Ok(()) => {
                    self.counts.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    crate::metrics::records_written(batch.len());
                    return true;
                }
                Err(e) => {
                    crate::metrics::record_write_error();
                    tracing::warn!(error = %e, records = batch.len(), "could not write request records at stop; retrying");
                }
            }
            if Instant::now() + pause >= self.deadline() {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF_CAP);
        }
    }

    fn deadline(&self) -> Instant {
        let at = *self.stop.until.lock().unwrap_or_else(|p| p.into_inner());
        at.unwrap_or_else(Instant::now)
    }
}
