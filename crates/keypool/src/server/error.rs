//! Every error a caller can receive, and the one place it becomes OpenAI's
//! JSON shape: `{"error":{"message","type","param","code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use crate::scheduler::{KeyCounts, NoKey};

/// Who caused an error: it decides the status family and whether a retry helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself is wrong; sending it again changes nothing.
    Caller,
    /// The upstream or the network failed; a later attempt may work.
    Upstream,
    /// keypool has no capacity or hit its own fault.
    Gateway,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "Missing gateway token. Send `Authorization: Bearer kp-...` (create one with `keypool tokens create NAME`)."
    )]
    MissingToken,
    #[error(
        "Invalid gateway token. Check the api_key you configured, or create one with `keypool tokens create NAME`."
    )]
    InvalidToken,
    #[error("This gateway token is disabled. Ask the gateway's operator to enable it.")]
    TokenDisabled,
    #[error("This gateway token expired at {}. Ask the gateway's operator for a new one.", unix_text(*.at))]
    TokenExpired { at: i64 },
    #[error("This gateway token may not be used from {client}: it is limited to other networks.")]
    ClientNotAllowed { client: String },
    #[error("This gateway token may not use the model `{model}`; it may use: {allowed}.")]
    ModelNotAllowed { model: String, allowed: String },
    #[error("This gateway token may use only some models ({allowed}), and this request names none it can be held to: send `model` (in a form, before the file); batches and assistant runs are not available to it.")]
    ModelNotNamed { allowed: String },
    #[error("This gateway token is at its limit of {limit}{}. Please try again in {}s.", waited_text(*.waited), retry_after_secs(*.retry_after))]
    TokenRateLimited { limit: &'static str, waited: Duration, retry_after: Duration },
    #[error("{}{}.", budget_text(*.left_micros, *.need_micros), .retry_after.map_or_else(|| " (it does not renew)".to_owned(), |d| format!("; it renews in {}s", retry_after_secs(d))))]
    TokenBudgetSpent { retry_after: Option<Duration>, left_micros: u64, need_micros: u64 },
    #[error(
        "This request needs about {needed} tokens, more than this gateway token's limit of {limit} tokens per minute."
    )]
    TokenRequestTooLarge { needed: u64, limit: u64 },
    #[error("We could not parse the JSON body of your request: {0}")]
    BadJson(String),
    /// A request parameter no upstream can mean (e.g. `max_tokens` at 2^32):
    /// the caller's, named in `param` so SDKs show which field.
    #[error("Invalid value for '{param}': {reason}.")]
    InvalidParameter { param: &'static str, reason: &'static str },
    #[error("Could not read the request body: {0}")]
    BodyRead(String),
    #[error("Request body exceeds the gateway's limit of {limit} bytes.")]
    BodyTooLarge { limit: u64 },
    /// An HTTP/1.1 head with both `Transfer-Encoding` and `Content-Length`
    /// (see `server::framing`): refused, and its connection closed.
    #[error(
        "The request has both Transfer-Encoding and Content-Length, so its body's end is ambiguous; send one of them."
    )]
    AmbiguousFraming,
    #[error("The request target (path and query) is longer than the gateway's limit of {limit} bytes.")]
    UriTooLong { limit: usize },
    #[error("The request's headers exceed the gateway's limit of {limit} bytes or {count} fields.")]
    HeadersTooLarge { limit: usize, count: usize },
    #[error("This request needs about {needed} tokens, more than any key's tokens-per-minute limit allows.")]
    TooManyTokens { needed: u64 },
    #[error("No upstream API keys are configured. Add one with `keypool keys add sk-...`.")]
    NoKeys,
    #[error("No upstream key can serve this request: {}{}.", .counts.describe(), attempts_text(*.attempts))]
    NoUsableKey { counts: KeyCounts, attempts: u32 },
    #[error("Every upstream key is at its rate limit{}. Please try again in {}s.", waited_text(*.waited), retry_after_secs(*.retry_after))]
    AllKeysBusy { waited: Duration, retry_after: Duration },
    #[error("Every upstream key's budget is spent.")]
    BudgetSpent,
    /// No configured upstream's `models` matches the model asked for.
    #[error("The model `{0}` does not exist or is not served here: no upstream of this gateway lists it.")]
    ModelNotServed(String),
    #[error("Unknown path {0}: keypool serves the OpenAI API under /v1/.")]
    UnknownPath(String),
    #[error("Invalid path {0}: dot segments may not leave /v1/.")]
    BadPath(String),
    #[error("The request failed upstream after {attempts} attempt(s) on {keys} key(s); last: {detail}.")]
    UpstreamFailed { attempts: u32, keys: usize, status: StatusCode, detail: String, retry_after: Option<Duration> },
    #[error("The upstream refused the request for every key tried ({attempts} attempt(s) on {keys} key(s)); no key was blamed. It said: \"{message}\"")]
    UpstreamRefused { status: StatusCode, message: String, attempts: u32, keys: usize },
    #[error("This request is larger than any key's whole limit (the upstream allows {limit} tokens per minute for it); reduce the input or max_tokens. It said: \"{message}\"")]
    LargerThanEveryKey { limit: u64, message: String },
    #[error("The upstream is unavailable: it is failing for every key, and keypool is probing it (attempts made: {attempts}). Please try again shortly.")]
    UpstreamDown { attempts: u32 },
    #[error("Internal error: {0}.")]
    Internal(&'static str),
    #[error("Your request body arrived slower than {rate} bytes/s over {window:?}; the gateway stopped waiting for it. Nothing was charged to a key.")]
    CallerTooSlow { rate: u64, window: Duration },
    #[error("The gateway is shutting down and could not finish this request in time. Please retry; another instance will answer.")]
    ShuttingDown,
}

/// Why a token's budget refused a request, in dollars.
fn budget_text(left_micros: u64, need_micros: u64) -> String {
    if left_micros == 0 {
        return "This gateway token's budget is spent".to_owned();
    }
    format!(
        "This gateway token's budget has ${:.6} left, and this request may cost up to ${:.6} (its prompt and \
         max_tokens at the model's price: a lower max_tokens costs less)",
        left_micros as f64 / 1e6,
        need_micros as f64 / 1e6
    )
}

/// A Unix second as an RFC 3339 UTC time.
fn unix_text(at: i64) -> String {
    jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

fn waited_text(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" (waited {:.1}s in line for one with room)", waited.as_secs_f64())
    }
}

fn attempts_text(attempts: u32) -> String {
    if attempts == 0 {
        String::new()
    } else {
        format!(" (attempts made: {attempts})")
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    // Round up so a caller that honours it never comes back too early.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl From<NoKey> for ApiError {
    fn from(e: NoKey) -> ApiError {
        match e {
            NoKey::NoKeys => ApiError::NoKeys,
            NoKey::Unusable(counts) => ApiError::NoUsableKey { counts, attempts: 0 },
            NoKey::Busy { waited, retry_after } => ApiError::AllKeysBusy { waited, retry_after },
            NoKey::BudgetSpent => ApiError::BudgetSpent,
            NoKey::TooLarge { needed } => ApiError::TooManyTokens { needed },
        }
    }
}

impl From<crate::tenants::Refusal> for ApiError {
    fn from(r: crate::tenants::Refusal) -> ApiError {
        use crate::tenants::Refusal;
        match r {
            Refusal::RateLimited { limit, waited, retry_after } => {
                ApiError::TokenRateLimited { limit, waited, retry_after }
            }
            Refusal::Budget { retry_after, left_micros, need_micros } => {
                ApiError::TokenBudgetSpent { retry_after, left_micros, need_micros }
            }
            Refusal::TooLarge { needed, limit } => ApiError::TokenRequestTooLarge { needed, limit },
        }
    }
}

impl ApiError {
    /// The refusal of a live token's scope, naming the caller's address.
    pub fn from_scope(r: crate::tenants::ScopeRefusal, client: Option<std::net::IpAddr>) -> ApiError {
        use crate::tenants::ScopeRefusal;
        match r {
            ScopeRefusal::Disabled => ApiError::TokenDisabled,
            ScopeRefusal::Expired { at } => ApiError::TokenExpired { at },
            ScopeRefusal::Network => ApiError::ClientNotAllowed {
                client: client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_canonical().to_string()),
            },
        }
    }
}

impl From<crate::routing::RouteError> for ApiError {
    fn from(e: crate::routing::RouteError) -> ApiError {
        match e {
            crate::routing::RouteError::NoUpstream(model) => ApiError::ModelNotServed(model),
        }
    }
}

impl ApiError {
    pub fn fault(&self) -> Fault {
        match self {
            ApiError::MissingToken
            | ApiError::InvalidToken
            | ApiError::TokenDisabled
            | ApiError::TokenExpired { .. }
            | ApiError::ClientNotAllowed { .. }
            | ApiError::ModelNotAllowed { .. }
            | ApiError::ModelNotNamed { .. }
            | ApiError::TokenRateLimited { .. }
            | ApiError::TokenBudgetSpent { .. }
            | ApiError::TokenRequestTooLarge { .. }
            | ApiError::BadJson(_)
            | ApiError::InvalidParameter { .. }
            | ApiError::BodyRead(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::AmbiguousFraming
            | ApiError::UriTooLong { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::TooManyTokens { .. }
            | ApiError::UnknownPath(_)
            | ApiError::BadPath(_)
            | ApiError::ModelNotServed(_)
            | ApiError::CallerTooSlow { .. }
            | ApiError::LargerThanEveryKey { .. } => Fault::Caller,
            ApiError::UpstreamFailed { .. } | ApiError::UpstreamDown { .. } | ApiError::UpstreamRefused { .. } => {
                Fault::Upstream
            }
            ApiError::Internal(_) | ApiError::ShuttingDown => Fault::Gateway,
            ApiError::NoKeys | ApiError::NoUsableKey { .. } | ApiError::AllKeysBusy { .. } | ApiError::BudgetSpent => {
                Fault::Gateway
            }
        }
    }

    /// Whether sending the same request again soon may succeed: said to the
    /// caller in `x-should-retry` (which the official SDKs obey), so they do
    /// not retry refusals a retry cannot fix.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::UpstreamFailed { .. } | ApiError::UpstreamDown { .. } => true,
            ApiError::AllKeysBusy { .. } | ApiError::ShuttingDown | ApiError::TokenRateLimited { .. } => true,
            // Keys that are invalid, exhausted or absent, a budget spent, an
            // upstream refusing every key: nothing changes within a retry.
            ApiError::NoKeys
            | ApiError::NoUsableKey { .. }
            | ApiError::BudgetSpent
            | ApiError::UpstreamRefused { .. } => false,
            _ => false,
        }
    }

    fn status_type_code(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken => {
                (StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key")
            }
            ApiError::TokenDisabled => (StatusCode::UNAUTHORIZED, "invalid_request_error", "token_disabled"),
            ApiError::TokenExpired { .. } => (StatusCode::UNAUTHORIZED, "invalid_request_error", "token_expired"),
            ApiError::ClientNotAllowed { .. } => {
                (StatusCode::FORBIDDEN, "invalid_request_error", "client_address_not_allowed")
            }
            ApiError::ModelNotAllowed { .. } => (StatusCode::FORBIDDEN, "invalid_request_error", "model_not_found"),
            ApiError::ModelNotNamed { .. } => (StatusCode::FORBIDDEN, "invalid_request_error", "model_required"),
            ApiError::TokenRateLimited { limit, .. } => {
                let kind = if limit.contains("token") { "tokens" } else { "requests" };
                (StatusCode::TOO_MANY_REQUESTS, kind, "rate_limit_exceeded")
            }
            ApiError::TokenBudgetSpent { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota")
            }
            ApiError::TokenRequestTooLarge { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "request_exceeds_token_limits")
            }
            ApiError::BadJson(_) | ApiError::BodyRead(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json")
            }
            ApiError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value"),
            ApiError::BodyTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "request_too_large")
            }
            ApiError::AmbiguousFraming => (StatusCode::BAD_REQUEST, "invalid_request_error", "ambiguous_framing"),
            ApiError::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "invalid_request_error", "uri_too_long"),
            ApiError::HeadersTooLarge { .. } => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "invalid_request_error", "headers_too_large")
            }
            ApiError::TooManyTokens { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "request_exceeds_key_limits")
            }
            ApiError::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_path"),
            ApiError::UnknownPath(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url"),
            ApiError::ModelNotServed(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found"),
            ApiError::NoKeys => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "no_keys_available"),
            ApiError::NoUsableKey { .. } => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "no_usable_keys"),
            ApiError::UpstreamRefused { status, .. } => (*status, "upstream_error", "upstream_refused"),
            ApiError::LargerThanEveryKey { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", "request_exceeds_key_limits")
            }
            ApiError::AllKeysBusy { .. } => (StatusCode::TOO_MANY_REQUESTS, "requests", "rate_limit_exceeded"),
            ApiError::BudgetSpent => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota"),
            ApiError::UpstreamFailed { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                (*status, "requests", "rate_limit_exceeded")
            }
            ApiError::UpstreamFailed { status, .. } => (*status, "upstream_error", "upstream_failed"),
            ApiError::UpstreamDown { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream_error", "upstream_unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
            ApiError::CallerTooSlow { .. } => {
                (StatusCode::REQUEST_TIMEOUT, "invalid_request_error", "request_body_too_slow")
            }
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "gateway_shutting_down"),
        }
    }

    /// The OpenAI `code` of this error (`no_usable_keys`, `invalid_api_key`, …):
    /// also the request record's `error_type`.
    pub fn code(&self) -> &'static str {
        self.status_type_code().2
    }

    /// The status the caller gets for this error.
    pub fn status(&self) -> StatusCode {
        self.status_type_code().0
    }

    fn json(&self) -> serde_json::Value {
        let (_, kind, code) = self.status_type_code();
        let param = match self {
            ApiError::InvalidParameter { param, .. } => Some(*param),
            ApiError::ModelNotServed(_) | ApiError::ModelNotAllowed { .. } | ApiError::ModelNotNamed { .. } => {
                Some("model")
            }
            _ => None,
        };
        serde_json::json!({
            "error": { "message": self.to_string(), "type": kind, "param": param, "code": code }
        })
    }

    /// The error as the last event of a Server-Sent Events stream that has
    /// already begun: `data: {"error":...}` then `data: [DONE]`.
    pub fn sse_event(&self) -> bytes::Bytes {
        bytes::Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", self.json()))
    }
}

/// Copies what an answer said about its request (`x-keypool-*`,
/// `Server-Timing`) onto the error answer that replaces it at the edge, so
/// an error keypool makes there still carries the request's id and timing.
pub fn carry_request_headers(from: &axum::http::HeaderMap, to: &mut axum::http::HeaderMap) {
    for (name, value) in from {
        if name.as_str().starts_with("x-keypool-") || name.as_str() == "server-timing" {
            to.insert(name.clone(), value.clone());
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.status_type_code();
        let mut response = (status, axum::Json(self.json())).into_response();
        let retry_after = match &self {
            ApiError::AllKeysBusy { retry_after, .. } | ApiError::TokenRateLimited { retry_after, .. } => {
                Some(*retry_after)
            }
            ApiError::TokenBudgetSpent { retry_after, .. } => *retry_after,
            ApiError::UpstreamFailed { retry_after, status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        };
        if let Some(v) = retry_after.and_then(|d| HeaderValue::try_from(retry_after_secs(d).max(1).to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        let should_retry = HeaderValue::from_static(if self.retryable() { "true" } else { "false" });
        response.headers_mut().insert("x-should-retry", should_retry);
        if self.fault() != Fault::Caller {
            tracing::warn!(error = %self, fault = ?self.fault(), "request failed");
        }
        response
    }
}
