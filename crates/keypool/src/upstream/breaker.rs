//! The upstream's circuit breaker: when failures pile up across keys (the
//! relay refusing connections, every key answering 5xx together), the fault
//! is the upstream's, not any key's. Callers then wait for it (or get
//! upstream_unavailable) while a prober checks it, instead of burning
//! attempts and keys.

use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Breaker {
    /// The upstream's name, for the log and the metric's label.
    upstream: String,
    threshold: u32,
    failures: Mutex<u32>,
    /// true while open; waiters watch it close.
    open: watch::Sender<bool>,
}

impl Breaker {
    /// A closed breaker for the upstream named `upstream`, opening after
    /// `threshold` failures in a row.
    pub fn new(threshold: u32, upstream: &str) -> Breaker {
        Breaker {
            upstream: upstream.to_owned(),
            threshold: threshold.max(1),
            failures: Mutex::new(0),
            open: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u32> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// The upstream answered (any status but 5xx).
    pub fn success(&self) {
        *self.lock() = 0;
    }

    /// An attempt failed in the upstream's way; returns true if this opened the breaker.
    pub fn failure(&self) -> bool {
        let mut failures = self.lock();
        *failures += 1;
        if *failures >= self.threshold && !self.is_open() {
            self.open.send_replace(true);
            tracing::warn!(
                upstream = self.upstream,
                failures = *failures,
                "the upstream is failing for every key: holding requests while it is probed"
            );
            crate::metrics::upstream_breaker(&self.upstream, true);
            return true;
        }
        false
    }

    /// The prober reached the upstream again.
    pub fn close(&self) {
        *self.lock() = 0;
        if self.open.send_replace(false) {
            tracing::info!(upstream = self.upstream, "the upstream answers again: traffic resumes");
            crate::metrics::upstream_breaker(&self.upstream, false);
        }
    }

    /// Waits until the breaker closes or `until`; true if it is closed.
    pub async fn wait_closed(&self, until: Instant) -> bool {
        let mut rx = self.open.subscribe();
        let closed = tokio::time::timeout_at(until, rx.wait_for(|open| !*open)).await;
        matches!(closed, Ok(Ok(_)))
    }

    /// Waits until the breaker opens.
    pub async fn opened(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_releases_waiters_on_close() {
        let b = std::sync::Arc::new(Breaker::new(3, "default"));
        assert!(!b.failure() && !b.failure());
        b.success();
        assert!(!b.failure() && !b.failure());
        assert!(b.failure(), "third in a row opens it");
        assert!(b.is_open());
        assert!(!b.wait_closed(Instant::now() + Duration::from_secs(1)).await, "times out while open");
        let b2 = std::sync::Arc::clone(&b);
        let waiter = tokio::spawn(async move { b2.wait_closed(Instant::now() + Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        b.close();
        assert!(waiter.await.unwrap_or(false));
    }
}
