//! Counters the gateway's tests read to check what really reached the upstream
//! (e.g. "the invalid key was tried once, then never again").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Snapshot of all counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub keys: BTreeMap<String, KeyStats>,
    pub total_requests: u64,
    /// Azure mode: requests by the deployment named in their path.
    #[serde(default)]
    pub deployments: BTreeMap<String, u64>,
}

/// Counters for one presented key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyStats {
    /// Every request that presented this key.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 429 `rate_limit_exceeded` sent.
    pub rate_limited: u64,
    /// 401 sent.
    pub unauthorized: u64,
    pub insufficient_quota: u64,
    /// 404 `model_not_found` sent (a model outside `SimConfig::models`).
    #[serde(default)]
    pub model_not_found: u64,
    /// Injected 500s (and injected mid-stream errors).
    pub server_errors: u64,
    pub resets: u64,
    pub hangs: u64,
    /// Client went away before its stream finished.
    pub streams_cancelled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Stats {
    /// Applies `f` to the counters of `key`; requests without a key only count in the total.
    pub fn bump(&mut self, key: Option<&str>, f: impl FnOnce(&mut KeyStats)) {
        if let Some(k) = key {
            f(self.keys.entry(k.to_string()).or_default());
        }
    }
}
