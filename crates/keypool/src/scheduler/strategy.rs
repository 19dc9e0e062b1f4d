//! How keys with room are ordered: each strategy turns a key's state into a
//! sort key, and the scheduler's index keeps keys sorted by it, so choosing
//! is taking the first key that fits (O(log n)).

use serde::{Deserialize, Serialize};

/// Chosen per pool in config (`strategy = "least_used"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The key with the fewest requests so far (the origin's rule): spends keys evenly.
    #[default]
    LeastUsed,
    /// Each key in turn.
    RoundRobin,
    /// In proportion to each key's `weight` (stride scheduling).
    Weighted,
    /// The key with the fewest requests in flight: lowest latency under load.
    LeastInflight,
    /// The key with the largest share of its USD budget left, so trial
    /// balances run down together; a key is never sent a request whose
    /// estimated cost would overrun its budget.
    BalanceEven,
}

/// Sort key: (primary, expiry, secondary, id); smaller is chosen first.
/// Expiry breaks ties so that among equals the key that expires soonest is used first.
pub type Score = (u64, i64, u64, i64);

/// Virtual-time step of a weight-1 key under `Weighted`.
pub const STRIDE: u64 = 1 << 20;

/// The numbers a strategy looks at.
pub struct Inputs {
    pub id: i64,
    pub requests_total: u64,
    pub inflight: u64,
    pub rr_seq: u64,
    pub vtime: u64,
    pub spent_micros: u64,
    pub reserved_micros: u64,
    pub budget_micros: Option<u64>,
    pub expires_unix: Option<i64>,
}

impl Strategy {
    pub fn score(self, k: &Inputs) -> Score {
        let expiry = k.expires_unix.unwrap_or(i64::MAX);
        let used = k.requests_total + k.inflight;
        match self {
            Strategy::LeastUsed => (used, expiry, k.inflight, k.id),
            Strategy::RoundRobin => (k.rr_seq, expiry, used, k.id),
            Strategy::Weighted => (k.vtime, expiry, used, k.id),
            Strategy::LeastInflight => (k.inflight, expiry, used, k.id),
            Strategy::BalanceEven => {
                let spent_ppm = match k.budget_micros {
                    Some(b) if b > 0 => {
                        let spent = u128::from(k.spent_micros + k.reserved_micros);
                        u64::try_from(spent * 1_000_000 / u128::from(b)).unwrap_or(u64::MAX)
                    }
                    // Keys without a budget go last: the others' balances are what must run down evenly.
                    _ => u64::MAX,
                };
                (spent_ppm, expiry, used, k.id)
            }
        }
    }
}
