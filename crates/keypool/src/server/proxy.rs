//! The pass-through handler for everything under `/v1/`: inspect, lease a
//! key, send, and retry on another key while nothing has reached the caller.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, BodyExt};
use keypool_sse::{BodyKind, UsageStripper, UsageTap};
use tokio::time::Instant;

use super::error::ApiError;
use super::inspect::{inspect, with_include_usage};
use super::metered::Metered;
use super::AppState;
use crate::config::AuthMode;
use crate::scheduler::{Demand, KeyLease, NoKey, Outcome, Verdict};
use crate::tokens::PromptShape;
use crate::upstream::{classify, copy_response_headers, rate_info, Answer, BodyError, OutBody, UpstreamError};

/// Largest error body read to learn what it says about the key.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// Endpoints that stream with OpenAI's `stream_options.include_usage`.
fn reports_stream_usage(rest: &str) -> bool {
    matches!(rest.trim_end_matches('/'), "chat/completions" | "completions")
}

/// Why one attempt did not produce an answer for the caller.
enum Failed {
    /// No connection, a reset, or no answer before the first-byte timeout;
    /// `why` says what failed (an unknown certificate issuer, a name that
    /// does not resolve), without the upstream's address.
    Network { timed_out: bool, why: Option<String> },
    /// An error status the policy retries (429, 401/403, 5xx).
    Status { status: StatusCode, verdict: Verdict },
}

impl Failed {
    fn reason(&self) -> &'static str {
        match self {
            Failed::Network { timed_out: true, .. } => "timeout",
            Failed::Network { timed_out: false, .. } => "network",
            Failed::Status { verdict: Verdict::RateLimited { .. }, .. } => "rate_limited",
            Failed::Status { verdict: Verdict::Invalid, .. } => "invalid_key",
            Failed::Status { verdict: Verdict::Exhausted, .. } => "exhausted_key",
            Failed::Status { .. } => "server_error",
        }
    }

    /// Failures of one key are retried at once on another; failures of the
    /// upstream wait a back-off first.
    fn needs_backoff(&self) -> bool {
        match self {
            Failed::Network { .. } => true,
            Failed::Status { verdict, .. } => *verdict == Verdict::UpstreamError,
        }
    }

    fn into_error(self, attempts: u32) -> ApiError {
        match self {
            Failed::Network { timed_out, why } => ApiError::UpstreamFailed {
                attempts,
                status: if timed_out { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY },
                detail: match (timed_out, why) {
                    (true, _) => "no answer within the first-byte timeout".into(),
                    (false, Some(why)) => format!("the connection failed: {why}"),
                    (false, None) => "the connection failed".into(),
                },
            },
            Failed::Status { status, verdict } => ApiError::UpstreamFailed {
                attempts,
                status: match verdict {
                    Verdict::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::BAD_GATEWAY,
                },
                detail: format!("the upstream answered {status}"),
            },
        }
    }
}

pub async fn proxy(State(app): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    if app.config.auth == AuthMode::Token {
        app.tokens.check(req.headers())?;
    }
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().strip_prefix("/v1").unwrap_or_default().trim_start_matches('/').to_owned();
    let url =
        app.upstream.url_for(&rest, parts.uri.query()).ok_or_else(|| ApiError::BadPath(parts.uri.path().to_owned()))?;
    let exact = app.scheduler.counts_tokens() || !app.config.prices.is_empty();
    let inspected = inspect(&parts, body, &rest, app.config.max_body_bytes, exact).await?;
    let shape = inspected.shape;
    let price = shape.as_ref().and_then(|s| s.model.as_deref()).and_then(|m| app.config.price_of(m));
    let demand = app.demand(shape.as_ref(), price);
    // A stream whose caller did not ask for usage: ask for it anyway (keypool
    // needs it to account tokens and spend), and hide it from the caller.
    let mut body = Some(inspected.body);
    let mut strip_usage = false;
    if let (Some(s), Some(OutBody::Bytes(bytes))) = (&shape, &body) {
        if s.stream && s.include_usage != Some(true) && reports_stream_usage(&rest) {
            if let Some(edited) = with_include_usage(bytes) {
                body = Some(OutBody::Bytes(edited));
                strip_usage = true;
            }
        }
    }
    // Only a body held in memory can be sent again; an upload streams once.
    let replay = match &body {
        Some(OutBody::Bytes(b)) => Some(b.clone()),
        _ => None,
    };
    let policy = &app.config.retry;
    let timeouts = &app.config.timeouts;
    let deadline = started + policy.deadline;
    let mut avoid: Vec<i64> = Vec::new();
    let mut attempts = 0u32;
    loop {
        if app.breaker.is_open() {
            let until = deadline.min(Instant::now() + app.config.pool.max_wait);
            if !app.breaker.wait_closed(until).await {
                return Err(ApiError::UpstreamDown { attempts });
            }
        }
        let mut lease = app.scheduler.acquire_avoiding(demand, &avoid).await.inspect_err(|e| {
            crate::metrics::request_refused(match e {
                NoKey::Busy { .. } => "busy",
                NoKey::BudgetSpent => "budget",
                _ => "no_key",
            });
        })?;
        attempts += 1;
        let key_id = lease.key_id();
        let out = match (&replay, body.take()) {
            (Some(bytes), _) => OutBody::Bytes(bytes.clone()),
            (None, Some(b)) => b,
            (None, None) => return Err(ApiError::Internal("a streamed body cannot be sent twice")),
        };
        lease.mark_sent();
        let sending = app.upstream.send(parts.method.clone(), url.clone(), &parts.headers, key_id, lease.secret(), out);
        let failed = match tokio::time::timeout(timeouts.first_byte, sending).await {
            Err(_) => {
                tracing::warn!(key_id, attempt = attempts, "no answer within the first-byte timeout");
                lease.finish(Outcome { verdict: Verdict::UpstreamError, ..Outcome::default() });
                app.note_upstream_failure();
                Failed::Network { timed_out: true, why: None }
            }
            Ok(Err(_)) if inspected.overflow.happened() => {
                // The upload never completed, so the upstream did not count it.
                lease.give_back();
                inspected.overflow.drain_rest().await;
                return Err(ApiError::BodyTooLarge { limit: app.config.max_body_bytes });
            }
            Ok(Err(_)) if parts.extensions.get::<super::CallerPace>().is_some_and(super::CallerPace::too_slow) => {
                // The caller's upload was cut off as too slow: its error, not the upstream's.
                lease.give_back();
                let s = &app.config.server;
                return Err(ApiError::CallerTooSlow { rate: s.min_body_rate, window: s.min_body_rate_window });
            }
            Ok(Err(e)) => {
                tracing::warn!(key_id, attempt = attempts, error = %e, "upstream request failed");
                // A connection that fails (name, TLS, refused) is the
                // upstream's or the network's, never the key's.
                lease.finish(Outcome { verdict: Verdict::UpstreamError, ..Outcome::default() });
                app.note_upstream_failure();
                let why = match e {
                    UpstreamError::Connect(why) | UpstreamError::Request(why) => Some(why),
                    _ => None,
                };
                Failed::Network { timed_out: false, why }
            }
            Ok(Ok(upstream)) => match answer(&app, upstream, lease, price, strip_usage, started).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            },
        };
        avoid.push(key_id);
        let out_of_time = Instant::now() >= deadline;
        if attempts > policy.max_retries || replay.is_none() || out_of_time {
            return Err(failed.into_error(attempts));
        }
        crate::metrics::retry(failed.reason());
        tracing::info!(key_id, attempt = attempts, reason = failed.reason(), "retrying on another key");
        if failed.needs_backoff() {
            let pause = full_jitter(policy.backoff_base, policy.backoff_cap, attempts);
            tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        }
    }
}

/// An answer arrived: stream it to the caller, pass a caller's error through
/// unchanged, or report a failure the policy retries.
async fn answer(
    app: &AppState,
    upstream: Answer,
    lease: KeyLease,
    price: Option<crate::config::Price>,
    strip_usage: bool,
    started: Instant,
) -> Result<Response, Failed> {
    let status = upstream.status();
    lease.observe(&rate_info(upstream.headers()), status.is_success());
    tracing::debug!(key_id = lease.key_id(), %status, "upstream answered");
    let mut headers = HeaderMap::with_capacity(upstream.headers().len());
    copy_response_headers(upstream.headers(), &mut headers);
    if status.is_server_error() {
        app.note_upstream_failure();
    } else {
        app.breaker.success();
    }
    let content_type = upstream.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);

    if !status.is_success() {
        // Error bodies are small: read them to learn what they say about the key.
        let (head, mut rest) = upstream.into_parts();
        let mut prefix = Vec::new();
        let mut complete = true;
        loop {
            match rest.frame().await {
                Some(Ok(frame)) => {
                    // Trailers, if any, say nothing about the key.
                    let Ok(chunk) = frame.into_data() else { continue };
                    prefix.extend_from_slice(&chunk);
                    if prefix.len() > ERROR_BODY_CAP {
                        complete = false;
                        break;
                    }
                }
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(key_id = lease.key_id(), error = %e, "upstream error body failed part-way");
                    break;
                }
            }
        }
        let verdict = classify(status, &head.headers, &prefix);
        lease.finish(Outcome { success: false, usage: None, cost_micros: None, verdict });
        if matches!(
            verdict,
            Verdict::RateLimited { .. } | Verdict::Invalid | Verdict::Exhausted | Verdict::UpstreamError
        ) {
            return Err(Failed::Status { status, verdict });
        }
        // The caller's own error (or a redirect): unchanged, on the first attempt.
        let read = futures_util::stream::once(async move { Ok::<_, BodyError>(Bytes::from(prefix)) });
        let body =
            if complete { Body::from_stream(read) } else { Body::from_stream(read.chain(BodyDataStream::new(rest))) };
        return Ok(respond(status, headers, body));
    }

    let kind = BodyKind::from_content_type(content_type.as_deref());
    let timeouts = &app.config.timeouts;
    let metered = Metered::new(
        BodyDataStream::new(upstream.into_body()).boxed(),
        UsageTap::new(kind),
        strip_usage.then(UsageStripper::new),
        lease,
        price,
        kind == BodyKind::Sse,
        timeouts.idle,
        started + timeouts.total,
    );
    Ok(respond(status, headers, Body::from_stream(metered)))
}

fn respond(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A random pause in [0, min(cap, base × 2^(attempt-1))]: "full jitter", so
/// retries from many callers spread out instead of arriving together.
fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(cap);
    ceiling.mul_f64(rand::random::<f64>())
}

impl AppState {
    /// What a request needs from a key: tokens as the upstream counts them,
    /// and the cost at the model's configured price.
    pub fn demand(&self, shape: Option<&PromptShape>, price: Option<crate::config::Price>) -> Demand {
        let Some(shape) = shape else { return Demand::default() };
        let completion = shape.completion_budget(self.config.limits.default_max_tokens);
        let cost_micros = price.map_or(0, |p| micros(shape.prompt_tokens, completion, p));
        Demand { tokens: shape.prompt_tokens.saturating_add(completion), cost_micros }
    }

    /// Counts a failure of the upstream's kind; if it opens the breaker, what
    /// keys suffered is forgiven (it was not theirs).
    fn note_upstream_failure(&self) {
        if self.breaker.failure() {
            self.scheduler.forgive_connect_failures();
        }
    }
}

/// Cost in micro-USD: a price per million tokens is micro-USD per token.
pub fn micros(prompt: u64, completion: u64, price: crate::config::Price) -> u64 {
    (prompt as f64 * price.input + completion as f64 * price.output).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_its_ceiling() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..30 {
            let d = full_jitter(base, cap, attempt);
            assert!(d <= base.saturating_mul(1 << (attempt - 1).min(20)).min(cap), "{attempt}: {d:?}");
        }
    }
}
