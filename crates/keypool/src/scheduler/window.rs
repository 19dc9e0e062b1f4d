//! A rolling 60-second record of what keypool itself sent with one key.
//!
//! Entries are stamped when an answer *finishes*, not when the request left:
//! the upstream counted the request at some instant in between, so expiring
//! our entry 60 s after the finish is never earlier than the upstream's own.
//! A rolling count of what was sent is never looser than a token bucket of
//! the same size, nor than a fixed calendar minute, so the same model is safe
//! for every kind of upstream. Finishes arrive in time order, so the deque
//! stays sorted and pruning is popping from the front.

use std::collections::VecDeque;

use tokio::time::{Duration, Instant};

/// The span every per-minute limit is counted over.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Window {
    /// (finished at, tokens, of them what the larger-part rule would not charge).
    entries: VecDeque<(Instant, u64, u64)>,
    tokens: u64,
    overlap: u64,
}

impl Window {
    pub fn record(&mut self, at: Instant, tokens: u64, overlap: u64) {
        // Finishes are recorded in order; keep the deque sorted even if an
        // instant repeats.
        let at = self.entries.back().map_or(at, |&(last, ..)| at.max(last));
        self.entries.push_back((at, tokens, overlap));
        self.tokens = self.tokens.saturating_add(tokens);
        self.overlap = self.overlap.saturating_add(overlap);
    }

    /// Drops entries older than the window.
    pub fn prune(&mut self, now: Instant) {
        while let Some(&(at, tokens, overlap)) = self.entries.front() {
            if at + WINDOW > now {
                break;
            }
            self.entries.pop_front();
            self.tokens = self.tokens.saturating_sub(tokens);
            self.overlap = self.overlap.saturating_sub(overlap);
        }
    }

    pub fn requests(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Of `tokens`, what the larger-part rule would not have charged.
    pub fn overlap(&self) -> u64 {
        self.overlap
    }

    pub fn entries(&self) -> impl Iterator<Item = (Instant, u64)> + '_ {
        self.entries.iter().map(|&(at, tokens, _)| (at, tokens))
    }

    /// When the newest entry leaves the window.
    pub fn last_expiry(&self) -> Option<Instant> {
        self.entries.back().map(|&(at, ..)| at + WINDOW)
    }

    /// Tokens of the entry recorded last.
    pub fn newest(&self) -> Option<u64> {
        self.entries.back().map(|&(_, tokens, _)| tokens)
    }

    /// When the oldest entry leaves the window.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.front().map(|&(at, ..)| at + WINDOW)
    }
}
