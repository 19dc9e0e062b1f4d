//! State shared by all handlers and by the [`crate::Simulator`] handle.
//!
//! Plain `std::sync::Mutex`es: every critical section is a few map operations and none is
//! held across an `.await`, so an async mutex would only add cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Faults, KeyState, SimConfig, SimKey, StreamEnds};
use crate::limits::Limiter;
use crate::stats::Stats;

pub struct KeyEntry {
    pub state: KeyState,
    pub limiter: Limiter,
    /// Credit left (micro-USD, may go below zero by the last answer's cost).
    pub balance: Option<i64>,
    /// The credit the key started with (OpenRouter's `limit`).
    pub limit: Option<u64>,
}

impl KeyEntry {
    pub fn new(k: &SimKey, azure: bool) -> Self {
        let mode = if azure { crate::config::LimitMode::Azure } else { k.mode };
        KeyEntry {
            state: k.state,
            limiter: Limiter::new(k.rpm, k.tpm, mode, Instant::now()),
            balance: k.balance_micros.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            limit: k.balance_micros,
        }
    }
}

pub struct Shared {
    /// Normalised prefix: starts with `/`, no trailing `/`; empty means "at the root".
    pub prefix: String,
    pub accept_any_key: bool,
    /// The models served (empty: all).
    pub models: Vec<String>,
    /// USD per million prompt and completion tokens (for balances).
    pub price: (f64, f64),
    pub stream_chunks: usize,
    pub chunk_interval: Duration,
    pub send_rate_limit_headers: bool,
    /// How requests are charged against TPM.
    pub charge: crate::config::ChargeRule,
    pub stream_ends: StreamEnds,
    /// Azure OpenAI's shape (see `SimConfig::azure`).
    pub azure: bool,
    pub latency: Mutex<Duration>,
    pub faults: Mutex<Faults>,
    pub keys: Mutex<HashMap<String, KeyEntry>>,
    pub stats: Mutex<Stats>,
    /// Files and stored responses by id, with the key that created them:
    /// as on OpenAI, only that key (its project) can reach them.
    pub objects: Mutex<HashMap<String, String>>,
    next_id: AtomicU64,
}

/// A poisoned lock only means another handler panicked mid-update of counters; the data is
/// still usable, and a test simulator should keep serving.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/v1` when empty; `/` means the root (no prefix).
pub fn normalize_prefix(p: &str) -> String {
    if p.is_empty() {
        return "/v1".to_string();
    }
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

impl Shared {
    pub fn new(cfg: &SimConfig) -> Self {
        let keys = cfg.keys.iter().map(|k| (k.key.clone(), KeyEntry::new(k, cfg.azure))).collect();
        Shared {
            prefix: normalize_prefix(&cfg.path_prefix),
            accept_any_key: cfg.accept_any_key,
            models: cfg.models.clone(),
            price: cfg.price,
            stream_chunks: if cfg.stream_chunks == 0 { 5 } else { cfg.stream_chunks },
            chunk_interval: cfg.chunk_interval,
            send_rate_limit_headers: cfg.send_rate_limit_headers,
            charge: cfg.charge,
            stream_ends: cfg.stream_ends.clone(),
            azure: cfg.azure,
            latency: Mutex::new(cfg.latency),
            faults: Mutex::new(cfg.faults.clone()),
            keys: Mutex::new(keys),
            stats: Mutex::new(Stats::default()),
            objects: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Replaces a key, limiter included: a re-added key starts with a full budget.
    pub fn add_key(&self, k: &SimKey) {
        lock(&self.keys).insert(k.key.clone(), KeyEntry::new(k, self.azure));
    }

    /// Changes only the account state, keeping the limiter; an unknown key is added without
    /// limits so tests can revoke keys that `accept_any_key` let in.
    pub fn set_key_state(&self, key: &str, state: KeyState) {
        let mut keys = lock(&self.keys);
        match keys.get_mut(key) {
            Some(e) => e.state = state,
            None => {
                keys.insert(key.to_string(), KeyEntry::new(&SimKey::new(key).state(state), self.azure));
            }
        }
    }

    pub fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("req_sim{n:026x}")
    }
}
