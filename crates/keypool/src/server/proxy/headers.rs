//! The headers keypool adds to each proxied answer (plain, or a stream's
//! head), so a caller can see what its request did:
//!
//! - `x-keypool-key`: the numeric id of the key that answered (the last
//!   attempt's); never the key. Off with `headers.key_id = false`.
//! - `x-keypool-attempts`: the attempts sent upstream.
//! - `x-keypool-queue-ms`: the time waited for a key, in ms with µs decimals.
//! - `Server-Timing: keypool;dur=…, queue;dur=…, upstream;dur=…` (ms, µs
//!   decimals; see [`server_timing`] for what each entry measures).
//! - `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: the pool's, in
//!   place of the upstream's per-key ones (see
//!   [`crate::scheduler::PoolRates`]); the upstream's are kept with
//!   `headers.upstream_ratelimit = true`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeadersConfig;
use crate::scheduler::{PoolLimit, PoolRates};
use crate::server::context::HeadFacts;

pub const KEY_HEADER: &str = "x-keypool-key";
pub const ATTEMPTS_HEADER: &str = "x-keypool-attempts";
pub const QUEUE_MS_HEADER: &str = "x-keypool-queue-ms";

/// The six `x-ratelimit-*` headers, requests then tokens: limit, remaining, reset.
const RATELIMIT: [[&str; 3]; 2] = [
    ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"],
    ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"],
];

/// µs as milliseconds with three decimals: `12408` → `12.408`.
fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// The `Server-Timing` value. `keypool` is the time keypool itself spent
/// before the answer's head: from the request's arrival to the head, minus
/// the time waiting for a key (`queue`) and the upstream attempts' durations
/// (`upstream`, each from its send to its answer's head or its failure).
/// So it holds reading and inspecting the body, choosing keys, back-off
/// between retries and reading an upstream error's body.
pub fn server_timing(f: &HeadFacts) -> String {
    let own = f.elapsed_us.saturating_sub(f.queue_us).saturating_sub(f.upstream_us);
    format!("keypool;dur={}, queue;dur={}, upstream;dur={}", ms(own), ms(f.queue_us), ms(f.upstream_us))
}

/// Adds keypool's headers to an answer's `headers`: the facts of the
/// request, and (unless the upstream's are kept) the pool's rate limits
/// from `pool` in place of any upstream `x-ratelimit-*`.
pub fn decorate(headers: &mut HeaderMap, settings: &HeadersConfig, facts: &HeadFacts, pool: Option<&PoolRates>) {
    if settings.key_id {
        if let Some(id) = facts.key_id {
            headers.insert(KEY_HEADER, HeaderValue::from(id));
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(facts.attempts));
    if let Ok(v) = HeaderValue::from_str(&ms(facts.queue_us)) {
        headers.insert(QUEUE_MS_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&server_timing(facts)) {
        headers.append(axum::http::header::HeaderName::from_static("server-timing"), v);
    }
    if settings.upstream_ratelimit {
        return;
    }
    for names in RATELIMIT {
        for name in names {
            headers.remove(name);
        }
    }
    let Some(pool) = pool else { return };
    for (names, dim) in RATELIMIT.iter().zip([pool.requests, pool.tokens]) {
        if let Some(PoolLimit { limit, remaining, reset }) = dim {
            headers.insert(HeaderName::from_static(names[0]), HeaderValue::from(limit));
            headers.insert(HeaderName::from_static(names[1]), HeaderValue::from(remaining));
            if let Ok(v) = HeaderValue::from_str(&keypool_sim::format_go_duration(ceil_millis(reset))) {
                headers.insert(HeaderName::from_static(names[2]), v);
            }
        }
    }
}

/// Rounds up to whole ms, as OpenAI writes resets: a caller that waits for
/// it never comes back early.
fn ceil_millis(d: std::time::Duration) -> std::time::Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timing_is_in_ms_with_microsecond_decimals() {
        let f = HeadFacts { key_id: Some(3), attempts: 2, queue_us: 5, upstream_us: 12_408, elapsed_us: 12_496 };
        assert_eq!(server_timing(&f), "keypool;dur=0.083, queue;dur=0.005, upstream;dur=12.408");
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("7"));
        let settings = HeadersConfig { key_id: false, upstream_ratelimit: false };
        let requests = PoolLimit { limit: 60, remaining: 50, reset: std::time::Duration::from_micros(1_500_001) };
        let pool = PoolRates::totals(Some(requests), None);
        decorate(&mut h, &settings, &f, Some(&pool));
        assert!(h.get(KEY_HEADER).is_none());
        assert_eq!(h[ATTEMPTS_HEADER], "2");
        assert_eq!(h[QUEUE_MS_HEADER], "0.005");
        assert_eq!(h["x-ratelimit-remaining-requests"], "50");
        assert_eq!(h["x-ratelimit-reset-requests"], "1.501s");
        assert!(h.get("x-ratelimit-limit-tokens").is_none(), "no key has a known token limit");
    }
}
