//! Metric names and label sets, in one place. Recorded through the `metrics`
//! facade; until an exporter is installed (the dashboard issue) they cost a
//! relaxed load. Labels have bounded cardinality: a key's id, never error text.

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

pub fn upstream_breaker(open: bool) {
    metrics::gauge!(UPSTREAM_DOWN).set(if open { 1.0 } else { 0.0 });
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
