//! Metric names and label sets, in one place. Recorded through the `metrics`
//! facade; until the Prometheus exporter is installed ([`install`], by
//! `keypool serve`) they cost a relaxed load. Labels have bounded
//! cardinality: a key's id, never error text or a key; a model name only
//! when configured or known (see [`labels`]).
//!
//! Submodules: [`labels`] bounds the model label, `request` observes a
//! finished request through cached handles, `keys` writes the per-key
//! gauges at scrape time, `exporter` installs the recorder and renders
//! `/metrics`.

mod exporter;
mod keys;
pub mod labels;
mod request;

pub use exporter::{answer, install, installed, render, router, InstallError, Scrape};
pub use request::request_ended;

/// Key state changes, labelled by key id and the state entered.
pub const KEY_TRANSITIONS: &str = "keypool_key_transitions_total";
/// Requests refused, by reason: `busy`, `budget`, `no_key` (no key could
/// take them), `token` (no live gateway token).
pub const REQUESTS_REFUSED: &str = "keypool_requests_refused_total";

pub fn key_transition(key_id: i64, to: &'static str) {
    metrics::counter!(KEY_TRANSITIONS, "key_id" => key_id.to_string(), "to" => to).increment(1);
}

pub fn request_refused(reason: &'static str) {
    metrics::counter!(REQUESTS_REFUSED, "reason" => reason).increment(1);
}

/// 1 while the upstream's breaker is open.
pub const UPSTREAM_DOWN: &str = "keypool_upstream_down";
/// Attempts that failed and were retried, by reason.
pub const RETRIES: &str = "keypool_retries_total";
/// Requests whose caller went away before the answer was complete.
pub const CANCELLED: &str = "keypool_requests_cancelled_total";

/// `upstream` is a configured name (bounded: the config's `[[upstreams]]`).
pub fn upstream_breaker(upstream: &str, open: bool) {
    metrics::gauge!(UPSTREAM_DOWN, "upstream" => upstream.to_owned()).set(if open { 1.0 } else { 0.0 });
}

pub fn retry(reason: &'static str) {
    metrics::counter!(RETRIES, "reason" => reason).increment(1);
}

pub fn cancelled() {
    metrics::counter!(CANCELLED).increment(1);
}

/// Generations sent again after a first-byte timeout (each may still be
/// running, and billed, upstream; `retry.first_byte_retries` bounds them).
pub const TIMEOUT_RESENDS: &str = "keypool_timeout_resends_total";

pub fn timeout_resend() {
    metrics::counter!(TIMEOUT_RESENDS).increment(1);
}

/// Request records written to the store.
pub const RECORDS_WRITTEN: &str = "keypool_records_written_total";
/// Request records lost, by reason: `buffer_full` (the store was slow or
/// down longer than the buffer lasts) or `stopped` (a request ended after
/// the writer's last flush).
pub const RECORDS_DROPPED: &str = "keypool_records_dropped_total";
/// Batch writes of request records that failed (each is retried).
pub const RECORD_WRITE_ERRORS: &str = "keypool_record_write_errors_total";

pub fn records_written(n: usize) {
    metrics::counter!(RECORDS_WRITTEN).increment(n as u64);
}

pub fn records_dropped(reason: &'static str, n: u64) {
    metrics::counter!(RECORDS_DROPPED, "reason" => reason).increment(n);
}

pub fn record_write_error() {
    metrics::counter!(RECORD_WRITE_ERRORS).increment(1);
}

/// Caller requests that ended, by `model` (see [`labels`]), `status` (the
/// HTTP status the caller got; `none` when none was sent) and `kind` (`ok`,
/// or the failure's [`ErrorKind`](crate::records::rollup::ErrorKind) class).
pub const REQUESTS: &str = "keypool_requests_total";
/// Whole request duration in seconds, by the same labels as [`REQUESTS`].
pub const REQUEST_DURATION: &str = "keypool_request_duration_seconds";
/// Seconds from the request's arrival to the upstream answer's head, by
/// `model`; only requests whose answer started.
pub const TTFB: &str = "keypool_time_to_first_byte_seconds";
/// Seconds each request waited for a key with room (0 for most).
pub const QUEUE_WAIT: &str = "keypool_queue_wait_seconds";
/// Requests waiting for a key now (read at scrape time).
pub const QUEUE_DEPTH: &str = "keypool_queue_depth";
/// Attempts the upstream answered with 429.
pub const UPSTREAM_429: &str = "keypool_upstream_429_total";
/// Request records handed to the writer and not yet taken (read at scrape time).
pub const RECORDS_WAITING: &str = "keypool_records_waiting";
/// 1, labelled with keypool's `version`.
pub const BUILD_INFO: &str = "keypool_build_info";

/// Per-key gauges, written at scrape time from the scheduler's view (see
/// `keys`), labelled `key_id` (never the key or its label): 1 for the key's
/// state and 0 for the others, labelled `state` ([`KEY_STATES`]).
pub const KEY_STATE: &str = "keypool_key_state";
/// Requests left in the key's current minute; absent when no RPM is known.
pub const KEY_REMAINING_REQUESTS: &str = "keypool_key_remaining_requests";
/// Tokens left in the key's current minute; absent when no TPM is known.
pub const KEY_REMAINING_TOKENS: &str = "keypool_key_remaining_tokens";
/// Requests in flight on the key.
pub const KEY_INFLIGHT: &str = "keypool_key_inflight";
/// What the key has spent, in USD (from micro-USD).
pub const KEY_SPEND: &str = "keypool_key_spend_usd";
/// The key's budget in USD; absent when it has none.
pub const KEY_BUDGET: &str = "keypool_key_budget_usd";
/// Every state a key can be in, as the scheduler names them.
pub const KEY_STATES: [&str; 7] = ["active", "cooling", "spent", "expired", "exhausted", "invalid", "disabled"];

/// Gives every metric the facade records its `# HELP` line (scrape-time
/// gauges write their own, in `keys`). Called once, when the recorder is installed.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(KEY_TRANSITIONS, "Key state changes, by key_id and the state entered (to).");
    describe_counter!(
        REQUESTS_REFUSED,
        "Requests refused before any upstream attempt, by reason (busy, budget, no_key, token)."
    );
    describe_gauge!(UPSTREAM_DOWN, "1 while an upstream's breaker is open (it failed for every key); by upstream.");
    describe_counter!(RETRIES, "Attempts that failed and were retried, by reason.");
    describe_counter!(CANCELLED, "Requests whose caller went away before the answer was complete.");
    describe_counter!(TIMEOUT_RESENDS, "Generations sent again after a first-byte timeout.");
    describe_counter!(RECORDS_WRITTEN, "Request records written to the store.");
    describe_counter!(
        RECORDS_DROPPED,
        "Request records lost, by reason (buffer_full: the store was too slow; stopped; refused)."
    );
    describe_counter!(RECORD_WRITE_ERRORS, "Batch writes of request records that failed (each is retried).");
    describe_counter!(
        REQUESTS,
        "Caller requests that ended, by model (configured or known; other; none), status (HTTP status, none) and kind (ok or error class)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Whole request duration in seconds, by model, status and kind."
    );
    describe_histogram!(
        TTFB,
        Unit::Seconds,
        "Seconds from a request's arrival to the upstream answer's head, by model."
    );
    describe_histogram!(QUEUE_WAIT, Unit::Seconds, "Seconds each request waited for a key with room.");
    describe_counter!(UPSTREAM_429, "Attempts the upstream answered with 429 (rate limited).");
    describe_gauge!(BUILD_INFO, "Always 1; the version label is keypool's.");
}
