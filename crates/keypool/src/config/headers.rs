//! The `[headers]` section: what keypool tells a caller in its answers'
//! headers (`x-keypool-*`, `Server-Timing`, `x-ratelimit-*`).

use serde::{Deserialize, Serialize};

/// Response headers. Every proxied answer carries `x-keypool-request-id`,
/// `x-keypool-attempts`, `x-keypool-queue-ms` and `Server-Timing`; these
/// settings govern the rest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Send `x-keypool-key`: the numeric id of the key that answered (never
    /// the key itself). Off hides even which key served.
    pub key_id: bool,
    /// Pass the upstream's per-key `x-ratelimit-*` headers on unchanged.
    /// Off (the default): they are replaced by the pool's, the caller's
    /// view (the sum over the keys that can serve the model).
    pub upstream_ratelimit: bool,
}

impl Default for HeadersConfig {
    fn default() -> HeadersConfig {
        HeadersConfig { key_id: true, upstream_ratelimit: false }
    }
}
