//! The pass-through handler for everything under `/v1/`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use keypool_sse::{BodyKind, UsageStripper, UsageTap};

use super::error::ApiError;
use super::inspect::{inspect, with_include_usage};
use super::metered::Metered;
use super::AppState;
use crate::config::AuthMode;
use crate::scheduler::{Demand, Outcome};
use crate::tokens::PromptShape;
use crate::upstream::{classify, copy_response_headers, rate_info, OutBody};

/// Largest error body read to learn what it says about the key.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// Endpoints that stream with OpenAI's `stream_options.include_usage`.
fn reports_stream_usage(rest: &str) -> bool {
    matches!(rest.trim_end_matches('/'), "chat/completions" | "completions")
}

pub async fn proxy(State(app): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    if app.config.auth == AuthMode::Token {
        app.tokens.check(req.headers())?;
    }
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().strip_prefix("/v1").unwrap_or_default().trim_start_matches('/').to_owned();
    let url =
        app.upstream.url_for(&rest, parts.uri.query()).ok_or_else(|| ApiError::BadPath(parts.uri.path().to_owned()))?;
    let inspected = inspect(&parts, body, &rest, app.config.max_body_bytes).await?;
    let shape = inspected.shape;
    let demand = app.demand(shape.as_ref());
    // A stream whose caller did not ask for usage: ask for it anyway (keypool
    // needs it to account tokens and spend), and hide it from the caller.
    let mut body = inspected.body;
    let mut strip_usage = false;
    if let (Some(s), OutBody::Bytes(bytes)) = (&shape, &body) {
        if s.stream && s.include_usage != Some(true) && reports_stream_usage(&rest) {
            if let Some(edited) = with_include_usage(bytes) {
                body = OutBody::Bytes(edited);
                strip_usage = true;
            }
        }
    }
    let mut lease = app.scheduler.acquire(demand).await.inspect_err(|e| {
        crate::metrics::request_refused(match e {
            crate::scheduler::NoKey::Busy { .. } => "busy",
            crate::scheduler::NoKey::BudgetSpent => "budget",
            _ => "no_key",
        });
    })?;
    lease.mark_sent();
    let sent = app.upstream.send(parts.method.clone(), url, &parts.headers, lease.key_id(), lease.secret(), body).await;
    let mut upstream = match sent {
        Ok(r) => r,
        Err(_) if inspected.overflowed.load(Ordering::Relaxed) => {
            // The upload never completed, so the upstream did not count it.
            return Err(ApiError::BodyTooLarge { limit: app.config.max_body_bytes });
        }
        Err(e) => {
            tracing::warn!(key_id = lease.key_id(), error = %e, "upstream request failed");
            lease.finish(Outcome::default());
            return Err(e.into());
        }
    };
    let status = upstream.status();
    lease.observe(&rate_info(upstream.headers()), status.is_success());
    tracing::debug!(key_id = lease.key_id(), %status, path = %parts.uri.path(), "upstream answered");
    let mut headers = HeaderMap::with_capacity(upstream.headers().len());
    copy_response_headers(upstream.headers(), &mut headers);
    let content_type = upstream.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);

    if !status.is_success() {
        // Error bodies are small: read them to learn what they say about the key.
        let mut prefix = Vec::new();
        let mut complete = true;
        loop {
            match upstream.chunk().await {
                Ok(Some(chunk)) => {
                    prefix.extend_from_slice(&chunk);
                    if prefix.len() > ERROR_BODY_CAP {
                        complete = false;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(key_id = lease.key_id(), error = %e, "upstream error body failed part-way");
                    break;
                }
            }
        }
        let verdict = classify(status, upstream.headers(), &prefix);
        lease.finish(Outcome { success: false, usage: None, cost_micros: None, verdict });
        let head = futures_util::stream::once(async move { Ok::<_, reqwest::Error>(Bytes::from(prefix)) });
        let body =
            if complete { Body::from_stream(head) } else { Body::from_stream(head.chain(upstream.bytes_stream())) };
        return Ok(respond(status, headers, body));
    }

    let price = shape.as_ref().and_then(|s| s.model.as_deref()).and_then(|m| app.config.price_of(m));
    let metered = Metered::new(
        upstream.bytes_stream().boxed(),
        UsageTap::new(BodyKind::from_content_type(content_type.as_deref())),
        strip_usage.then(UsageStripper::new),
        lease,
        price,
    );
    Ok(respond(status, headers, Body::from_stream(metered)))
}

fn respond(status: axum::http::StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

impl AppState {
    /// What a request needs from a key: tokens as the upstream counts them,
    /// and the cost at the model's configured price.
    pub fn demand(&self, shape: Option<&PromptShape>) -> Demand {
        let Some(shape) = shape else { return Demand::default() };
        let default_max = self.config.limits.default_max_tokens;
        let completion = shape.completion_budget(default_max);
        let cost_micros = shape
            .model
            .as_deref()
            .and_then(|m| self.config.price_of(m))
            .map_or(0, |p| micros(shape.prompt_tokens, completion, p));
        Demand { tokens: shape.prompt_tokens + completion, cost_micros }
    }
}

/// Cost in micro-USD: a price per million tokens is micro-USD per token.
pub fn micros(prompt: u64, completion: u64, price: crate::config::Price) -> u64 {
    (prompt as f64 * price.input + completion as f64 * price.output).ceil() as u64
}
