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

use std::cell::RefCell;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeadersConfig;
use crate::scheduler::{PoolLimit, PoolRates};
use crate::server::context::HeadFacts;

// Names made once, at compile time: a name given as text is parsed again
// on every insert.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-keypool-key");
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-keypool-attempts");
pub const QUEUE_MS_HEADER: HeaderName = HeaderName::from_static("x-keypool-queue-ms");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The six `x-ratelimit-*` headers, requests then tokens: limit, remaining, reset.
const RATELIMIT: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// Writes µs as milliseconds with three decimals: `12408` → `12.408`
/// (by hand: the formatting machinery cost more than the rest of a header).
fn write_ms(out: &mut String, us: u64) {
    let mut digits = [0u8; 24];
    let mut at = digits.len();
    let mut n = us;
    // At least four digits, so there is a whole part before the point.
    while n > 0 || digits.len() - at < 4 {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let (whole, frac) = digits[at..].split_at(digits.len() - at - 3);
    out.extend(whole.iter().map(|&d| char::from(d)));
    out.push('.');
    out.extend(frac.iter().map(|&d| char::from(d)));
}

/// The `Server-Timing` value. `keypool` is the time keypool itself spent
/// before the answer's head: from the request's arrival to the head, minus
/// the time waiting for a key (`queue`) and the upstream attempts' durations
/// (`upstream`, each from its send to its answer's head or its failure).
/// So it holds reading and inspecting the body, choosing keys, back-off
/// between retries and reading an upstream error's body.
pub fn server_timing(f: &HeadFacts) -> String {
    let own = f.elapsed_us.saturating_sub(f.queue_us).saturating_sub(f.upstream_us);
    let mut out = String::with_capacity(64);
    out.push_str("keypool;dur=");
    write_ms(&mut out, own);
    out.push_str(", queue;dur=");
    write_ms(&mut out, f.queue_us);
    out.push_str(", upstream;dur=");
    write_ms(&mut out, f.upstream_us);
    out
}

/// Adds keypool's headers to an answer's `headers`: the facts of the
/// request, and (unless the upstream's are kept) the pool's rate limits
/// from `pool` in place of any upstream `x-ratelimit-*`.
pub fn decorate(headers: &mut HeaderMap, settings: &HeadersConfig, facts: &HeadFacts, pool: Option<&Arc<PoolRates>>) {
    headers.reserve(10);
    if settings.key_id {
        if let Some(id) = facts.key_id {
            headers.insert(KEY_HEADER, HeaderValue::from(id));
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(facts.attempts));
    let mut queue = String::with_capacity(16);
    write_ms(&mut queue, facts.queue_us);
    if let Ok(v) = HeaderValue::try_from(queue) {
        headers.insert(QUEUE_MS_HEADER, v);
    }
    if let Ok(v) = HeaderValue::try_from(server_timing(facts)) {
        headers.append(SERVER_TIMING, v);
    }
    if settings.upstream_ratelimit {
        return;
    }
    let values = pool.map(formatted).unwrap_or_default();
    for (names, values) in RATELIMIT.into_iter().zip(values) {
        for (name, value) in names.into_iter().zip(values) {
            match value {
                // Inserting replaces the upstream's value.
                Some(v) => headers.insert(name, v),
                None => headers.remove(name),
            };
        }
    }
}

/// A dimension's three values (limit, remaining, reset); `None` where not known.
type Values = [Option<HeaderValue>; 3];

thread_local! {
    /// The last pool view this worker read, with its values formatted: a
    /// view serves many requests, so each is formatted once (a value's
    /// clone shares its bytes).
    static FORMATTED: RefCell<Option<(Arc<PoolRates>, [Values; 2])>> = const { RefCell::new(None) };
}

/// The `x-ratelimit-*` values of `pool`, requests then tokens.
fn formatted(pool: &Arc<PoolRates>) -> [Values; 2] {
    FORMATTED.with_borrow_mut(|cached| {
        if let Some((view, values)) = cached.as_ref() {
            if Arc::ptr_eq(view, pool) {
                return values.clone();
            }
        }
        let values = [format(pool.requests), format(pool.tokens)];
        *cached = Some((Arc::clone(pool), values.clone()));
        values
    })
}

fn format(dim: Option<PoolLimit>) -> Values {
    let Some(PoolLimit { limit, remaining, reset }) = dim else { return Values::default() };
    let reset = HeaderValue::try_from(keypool_sim::format_go_duration(ceil_millis(reset))).ok();
    [Some(HeaderValue::from(limit)), Some(HeaderValue::from(remaining)), reset]
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
    fn microseconds_are_written_as_ms_with_three_decimals() {
        for (us, text) in [(0, "0.000"), (5, "0.005"), (999, "0.999"), (1000, "1.000"), (12_408, "12.408")] {
            let mut out = String::new();
            write_ms(&mut out, us);
            assert_eq!(out, text);
        }
        let mut out = String::new();
        write_ms(&mut out, u64::MAX);
        assert_eq!(out, format!("{}.{:03}", u64::MAX / 1000, u64::MAX % 1000));
    }

    #[test]
    fn timing_is_in_ms_with_microsecond_decimals() {
        let f = HeadFacts { key_id: Some(3), attempts: 2, queue_us: 5, upstream_us: 12_408, elapsed_us: 12_496 };
        assert_eq!(server_timing(&f), "keypool;dur=0.083, queue;dur=0.005, upstream;dur=12.408");
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("7"));
        let settings = HeadersConfig { key_id: false, upstream_ratelimit: false };
        let requests = PoolLimit { limit: 60, remaining: 50, reset: std::time::Duration::from_micros(1_500_001) };
        let pool = Arc::new(PoolRates::totals(Some(requests), None));
        decorate(&mut h, &settings, &f, Some(&pool));
        assert!(h.get(KEY_HEADER).is_none());
        assert_eq!(h[ATTEMPTS_HEADER], "2");
        assert_eq!(h[QUEUE_MS_HEADER], "0.005");
        assert_eq!(h["x-ratelimit-remaining-requests"], "50");
        assert_eq!(h["x-ratelimit-reset-requests"], "1.501s");
        assert!(h.get("x-ratelimit-limit-tokens").is_none(), "no key has a known token limit");
        // A new view is formatted anew; the same one again gives the same values.
        let later = PoolLimit { remaining: 49, ..requests };
        decorate(&mut h, &settings, &f, Some(&Arc::new(PoolRates::totals(Some(later), None))));
        assert_eq!(h["x-ratelimit-remaining-requests"], "49");
        decorate(&mut h, &settings, &f, Some(&pool));
        assert_eq!(h["x-ratelimit-remaining-requests"], "50");
    }
}
