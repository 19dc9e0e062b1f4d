//! Metric names and label sets, in one place. Recorded through the `metrics`
//! facade; until an exporter is installed (the dashboard issue) they cost a
//! relaxed load. Labels have bounded cardinality: a key's id, never error text.

/// Key state changes, labelled by key id and the state entered.
pub const KEY_TRANSITIONS: &str = "keypool_key_transitions_total";
/// Requests refused because every key was at its limit, by reason.
pub const REQUESTS_REFUSED: &str = "keypool_requests_refused_total";

pub fn key_transition(key_id: i64, to: &'static str) {
    metrics::counter!(KEY_TRANSITIONS, "key_id" => key_id.to_string(), "to" => to).increment(1);
}

pub fn request_refused(reason: &'static str) {
    metrics::counter!(REQUESTS_REFUSED, "reason" => reason).increment(1);
}
