//! The guard a request holds while it uses a key.

use std::sync::Arc;

use keypool_sse::Usage;
use secrecy::SecretString;
use tokio::time::Duration;

use super::Scheduler;

/// How a leased request ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// The upstream answered 2xx and the body was delivered in full.
    pub success: bool,
    /// What the upstream reported; when absent the reservation is counted.
    pub usage: Option<Usage>,
    /// Keep the key out of rotation this long (the upstream said 429).
    pub cool_for: Option<Duration>,
}

/// A reservation of one request (and its estimated tokens) on one key.
/// Finishing it records the outcome; dropping it unfinished (the caller went
/// away, a body failed) records a failure, so a reservation is never leaked.
#[derive(Debug)]
pub struct KeyLease {
    scheduler: Arc<Scheduler>,
    key_id: i64,
    label: Option<String>,
    secret: Arc<SecretString>,
    reserved_tokens: u64,
    finished: bool,
}

impl KeyLease {
    pub(super) fn new(
        scheduler: Arc<Scheduler>,
        key_id: i64,
        label: Option<String>,
        secret: Arc<SecretString>,
        reserved_tokens: u64,
    ) -> KeyLease {
        KeyLease {
            scheduler,
            key_id,
            label,
            secret,
            reserved_tokens,
            finished: false,
        }
    }

    pub fn key_id(&self) -> i64 {
        self.key_id
    }

    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.scheduler
            .finish(self.key_id, self.reserved_tokens, outcome);
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        if !self.finished {
            self.scheduler
                .finish(self.key_id, self.reserved_tokens, Outcome::default());
        }
    }
}
