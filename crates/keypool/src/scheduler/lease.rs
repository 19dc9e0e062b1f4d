//! The guard a request holds while it uses a key.

use std::sync::Arc;

use keypool_sse::Usage;
use secrecy::SecretString;
use tokio::time::Duration;

use super::limits::RateInfo;
use super::{Demand, Scheduler};
use crate::upstream::Account;

/// What an attempt's result says about the key itself (whose fault it was).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verdict {
    /// The key worked.
    #[default]
    Fine,
    /// The caller's own error (400, 404, 413, 422): the key did its job and is not charged a failure.
    CallerError,
    /// The upstream failed (5xx, a reset, a timeout): not the key's fault.
    UpstreamError,
    /// The upstream could not be reached with this key; after several in a
    /// row the key rests for growing intervals (a circuit breaker).
    ConnectFailed,
    /// The caller went away before the answer was complete.
    Cancelled,
    /// 429 `rate_limit_exceeded`: rest until the reset.
    RateLimited { reset: Reset },
    /// 401/403 with a key-specific code (`invalid_api_key`, `account_deactivated`, ...): the key is wrong or revoked.
    Invalid,
    /// The balance is spent (`insufficient_quota` and the providers' other forms, see `upstream::classify`).
    Exhausted,
    /// This key cannot use the requested model (404 `model_not_found`, no
    /// access): only this key × model is set aside, the key is not charged a failure.
    ModelMissing,
    /// A refusal that names no key (a firewall's HTML 403, a region block):
    /// the upstream's; no key is blamed.
    Refused,
    /// The request alone is larger than this key's whole limit (429 "Request
    /// too large ... Limit 10000, Requested 30000"): the request's fault; the key does not cool.
    TooLarge { limit: u64 },
}

/// What one attempt counts for in its key's totals (requests, successes,
/// failures), as the scheduler decided when the attempt ended; the request
/// log keeps it with the attempt, and the key's stored totals are summed
/// from the log (`store::requests`), so they always agree with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counted {
    /// Never reached the upstream (given back, or resent on the same
    /// reservation): not a request of the key.
    NotSent,
    /// A request of the key, neither a success nor the key's failure (the
    /// caller's error, the caller leaving, a refusal that names no key).
    #[default]
    Neither,
    Success,
    /// The key's failure (or the upstream's while using it).
    Failure,
}

impl Counted {
    /// The one rule: how a sent attempt's result counts for its key.
    pub fn of(verdict: Verdict, success: bool) -> Counted {
        match verdict {
            Verdict::Fine if success => Counted::Success,
            // Neither the caller's own mistakes, a caller leaving, nor a
            // refusal that names no key count against the key.
            Verdict::CallerError
            | Verdict::Cancelled
            | Verdict::ModelMissing
            | Verdict::Refused
            | Verdict::TooLarge { .. }
            | Verdict::ConnectFailed => Counted::Neither,
            _ => Counted::Failure,
        }
    }
}

/// What a finished attempt was charged to its key: how it counts, and
/// the spend (micro-USD) added to the key's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    pub counted: Counted,
    pub cost_micros: u64,
}

impl Charged {
    /// An attempt that never reached the upstream.
    pub const NOT_SENT: Charged = Charged { counted: Counted::NotSent, cost_micros: 0 };
}

/// The spend an attempt adds to its key: its priced usage, or on a success
/// whose usage is unknown the estimate (an upper bound of what it may have
/// cost); nothing for a failure without usage.
pub(super) fn charged_cost(outcome: &Outcome, demand: super::Demand) -> u64 {
    outcome.cost_micros.unwrap_or(if outcome.success { demand.cost_micros } else { 0 })
}

/// Which of a key's limits a 429 was about: OpenAI's `error.type`
/// (`"tokens"`, `"requests"`) or the message's "(TPM)"/"(RPM)".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    Requests,
    Tokens,
    /// The answer did not say.
    Unknown,
}

/// What a 429 says: how long the key rests, and which limit it hit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub after: Duration,
    pub hit: Hit,
}

impl Reset {
    pub fn new(after: Duration, hit: Hit) -> Reset {
        Reset { after, hit }
    }
}

/// As operators read it in a transition: `20s (tokens)`.
impl std::fmt::Debug for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.hit {
            Hit::Requests => write!(f, "{:?} (requests)", self.after),
            Hit::Tokens => write!(f, "{:?} (tokens)", self.after),
            Hit::Unknown => write!(f, "{:?}", self.after),
        }
    }
}

/// How a leased request ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// The upstream answered 2xx and the body was delivered in full.
    pub success: bool,
    /// What the upstream reported; when absent the reservation is counted.
    pub usage: Option<Usage>,
    /// What the request cost, from its usage; when absent the estimate is counted.
    pub cost_micros: Option<u64>,
    pub verdict: Verdict,
}

/// Handed from the scheduler to a waiting request: a reservation not yet
/// wrapped in a [`KeyLease`] (which needs no lock to be created or dropped).
#[derive(Debug)]
pub(super) struct Grant {
    pub key_id: i64,
    pub secret: Arc<SecretString>,
    /// The key's account headers, sent with its secret.
    pub account: Arc<Account>,
    pub demand: Demand,
}

/// A reservation of one request (its estimated tokens and cost) on one key.
/// Finishing it records the outcome. Dropped before the request was sent, it
/// simply gives the reservation back; dropped after (the caller went away, a
/// body failed), it records a failure, so a reservation is never leaked.
#[derive(Debug)]
pub struct KeyLease {
    scheduler: Arc<Scheduler>,
    grant: Grant,
    sent: bool,
    finished: bool,
    /// The answer's headers came back (counted once, when they did).
    headed: std::sync::atomic::AtomicBool,
}

impl KeyLease {
    pub(super) fn new(scheduler: Arc<Scheduler>, grant: Grant) -> KeyLease {
        KeyLease { scheduler, grant, sent: false, finished: false, headed: std::sync::atomic::AtomicBool::new(false) }
    }

    pub fn key_id(&self) -> i64 {
        self.grant.key_id
    }

    pub fn secret(&self) -> &SecretString {
        &self.grant.secret
    }

    /// The `OpenAI-Organization`/`OpenAI-Project` headers to send with the key.
    pub fn account(&self) -> &Account {
        &self.grant.account
    }

    /// Marks the request as on its way: from now on it counts as sent.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// Takes in the answer's rate-limit headers as soon as they arrive.
    pub fn observe(&self, info: &RateInfo, success: bool) {
        let first = !self.headed.swap(true, std::sync::atomic::Ordering::Relaxed);
        self.scheduler.observe(self.grant.key_id, info, success, first, self.grant.demand.floor());
    }

    fn headed(&self) -> bool {
        self.headed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Gives the reservation back as if the request had never been sent
    /// (it provably did not reach the upstream).
    pub fn give_back(mut self) {
        self.sent = false;
    }

    /// Records how the attempt ended; returns what it counts for in the
    /// key's totals, for the request's record.
    pub fn finish(mut self, outcome: Outcome) -> Charged {
        self.finished = true;
        self.scheduler.finish(&self.grant, self.sent, self.headed(), outcome);
        if self.sent {
            Charged {
                counted: Counted::of(outcome.verdict, outcome.success),
                cost_micros: charged_cost(&outcome, self.grant.demand),
            }
        } else {
            Charged::NOT_SENT
        }
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped unfinished after sending: the caller went away (or the
            // handler was cancelled) before the answer was complete.
            let outcome = Outcome { verdict: Verdict::Cancelled, ..Outcome::default() };
            self.scheduler.finish(&self.grant, self.sent, self.headed(), outcome);
        }
    }
}
