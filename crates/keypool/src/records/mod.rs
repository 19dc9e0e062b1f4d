//! What each caller request did, kept: the request log. A request's
//! context ([`crate::server::RequestContext`]) ends exactly once and becomes
//! a [`RequestRecord`]; the [`Recorder`] hands it to the batched
//! [`writer`] without waiting, and the writer stores it off the request path.

pub mod body;
pub mod retention;
pub mod rollup;
mod writer;

pub use writer::{spawn, Recorder, RecordsConfig, WriterHandle};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub use crate::scheduler::Counted;

/// One caller request, as stored in the `requests` table. Times are Unix
/// milliseconds, durations microseconds, money micro-USD. It names keys and
/// gateway tokens by id only: no key or token is ever in a record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// keypool's request id, returned as `x-keypool-request-id` (the
    /// caller's `X-Client-Request-Id` when it sent a valid one).
    pub request_id: String,
    /// When the request arrived (Unix ms).
    pub started_at: i64,
    /// The gateway token's id; `None` when auth is off or the token was refused.
    pub token_id: Option<i64>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// The body's `user` field (OpenAI's end-user id).
    pub end_user: Option<String>,
    pub method: String,
    /// The path the caller asked for, without its query.
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    /// The status the caller got; 0 when the caller went away before any.
    pub status: u16,
    /// Why it failed, in keypool's words (see [`error_type`]); `None` on success.
    pub error_type: Option<Cow<'static, str>>,
    /// The key of the last attempt.
    pub key_id: Option<i64>,
    pub attempts: Vec<Attempt>,
    /// Time spent waiting for a key with room (all attempts), µs.
    pub queue_wait_us: u64,
    /// From arrival to the upstream's answer head (the attempt that answered), µs.
    pub ttfb_us: Option<u64>,
    /// From arrival to the end of the answer (or the caller leaving), µs.
    pub duration_us: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Of `prompt_tokens`, served from the provider's prompt cache.
    pub cached_tokens: Option<u64>,
    /// Of `completion_tokens`, spent on hidden reasoning.
    pub reasoning_tokens: Option<u64>,
    /// The upstream reported no usage; the counts are keypool's estimate.
    pub usage_estimated: bool,
    pub cost_micros: Option<u64>,
    /// The caller went away before the answer was complete.
    pub cancelled: bool,
    /// The upstream's own `x-request-id`, as its SDKs show it.
    pub upstream_request_id: Option<String>,
    /// The caller's request body, cut to `records.body_max_bytes`; only
    /// with `records.bodies` on.
    pub request_body: Option<String>,
    /// The answer's body (a streamed one as its assembled text), cut the
    /// same way; only with `records.bodies` on.
    pub response_body: Option<String>,
    /// The id of the object the request created (a file, a batch, a stored
    /// response), kept in the store's `objects` with the key that served
    /// it (`routing::affinity`); not part of the log's row.
    #[serde(skip)]
    pub created_object: Option<String>,
}

/// One send to the upstream with one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub key_id: i64,
    /// The upstream's status; 0 when none came (a timeout, a failed connection).
    pub status: u16,
    /// `ok`, or why it failed (`rate_limited`, `invalid_key`, `timeout`, …).
    pub reason: Cow<'static, str>,
    /// From the send to the answer head (or the failure), µs.
    pub duration_us: u64,
    /// What it counts for in the key's totals (the scheduler's rule).
    #[serde(default)]
    pub counted: Counted,
}

/// `error_type`s of requests whose failure was not one of keypool's own
/// errors (those carry their OpenAI `code`) nor a failed attempt (its reason).
pub mod error_type {
    /// The answer broke off after part of it had reached the caller.
    pub const STREAM_INTERRUPTED: &str = "stream_interrupted";
    /// The caller went away before the answer was complete.
    pub const CANCELLED: &str = "cancelled";
    /// The upstream's own 4xx for the caller's request, passed through.
    pub const CALLER_ERROR: &str = "caller_error";
    /// An upstream answer that failed, with no more specific word for it.
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    /// The gateway stopped: the request was cut at the end of the grace.
    pub const SHUTTING_DOWN: &str = "gateway_shutting_down";
}
