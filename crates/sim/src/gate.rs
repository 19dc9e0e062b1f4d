//! The per-request pipeline every OpenAI route goes through, in the order the brief fixes:
//! count, status override, faults (reset, hang, 500), key state, rate limit. Keeping it in
//! one place makes that order (which tests depend on) easy to check.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::config::KeyState;
use crate::conn::ConnKill;
use crate::errors;
use crate::godur::{ceil_millis, format_go_duration};
use crate::limits::{Dimension, Refusal};
use crate::state::{lock, Shared};
use crate::stats::KeyStats;

/// A request that passed the gate; handlers answer through [`Admitted::respond`].
pub struct Admitted {
    pub key: Option<String>,
    pub request_id: String,
}

/// The key a request presents: `Authorization: Bearer` or Azure's `api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let auth = auth.trim();
        if auth.len() > 7 && auth[..7].eq_ignore_ascii_case("bearer ") {
            return Some(auth[7..].trim().to_string());
        }
    }
    headers.get("api-key").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}

impl Shared {
    /// Changes `key`'s counters; tokens it adds are charged to its balance.
    pub fn bump(&self, key: Option<&str>, f: impl FnOnce(&mut KeyStats)) {
        let (prompt, completion) = {
            let mut stats = lock(&self.stats);
            let before = key.and_then(|k| stats.keys.get(k)).map_or((0, 0), |s| (s.prompt_tokens, s.completion_tokens));
            stats.bump(key, f);
            let after = key.and_then(|k| stats.keys.get(k)).map_or((0, 0), |s| (s.prompt_tokens, s.completion_tokens));
            (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1))
        };
        if prompt + completion > 0 {
            if let Some(k) = key {
                let cost = (prompt as f64 * self.price.0 + completion as f64 * self.price.1).round() as i64;
                if let Some(balance) = lock(&self.keys).get_mut(k).and_then(|e| e.balance.as_mut()) {
                    *balance -= cost;
                }
            }
        }
    }

    /// `key`'s credit as OpenRouter's `GET /key` tells it; None when the key
    /// is unknown or has no balance.
    pub fn balance_of(&self, key: &str) -> Option<(u64, i64)> {
        let keys = lock(&self.keys);
        let e = keys.get(key)?;
        Some((e.limit?, e.balance?))
    }

    /// Runs the pipeline; `Err` is the final answer (already carrying headers).
    pub async fn gate(
        &self,
        headers: &HeaderMap,
        conn: &ConnKill,
        model: &str,
        cost: u64,
    ) -> Result<Admitted, Response> {
        // Azure takes its key only in `api-key` (a bearer token there is Entra ID's).
        let key = if self.azure {
            headers.get("api-key").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
        } else {
            presented_key(headers)
        };
        let k = key.as_deref();
        {
            let mut stats = lock(&self.stats);
            stats.total_requests += 1;
            stats.bump(k, |s| s.requests += 1);
        }
        let request_id = self.request_id();
        let outcome = self.decide(k, conn, model, cost).await;
        let latency = *lock(&self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let adm = Admitted { key, request_id };
        match outcome {
            Ok(()) => Ok(adm),
            Err(resp) => Err(self.decorate(&adm, resp)),
        }
    }

    async fn decide(&self, k: Option<&str>, conn: &ConnKill, model: &str, cost: u64) -> Result<(), Response> {
        let faults = lock(&self.faults).clone();
        if let Some((status, body)) = &faults.status_override {
            self.bump(k, |s| match status {
                200..=299 => s.ok += 1,
                401 => s.unauthorized += 1,
                500..=599 => s.server_errors += 1,
                _ => {}
            });
            return Err(errors::raw(*status, body));
        }
        if roll(faults.reset_rate) {
            self.bump(k, |s| s.resets += 1);
            conn.kill();
            return Err(errors::server_error());
        }
        if roll(faults.hang_rate) {
            self.bump(k, |s| s.hangs += 1);
            tokio::time::sleep(faults.hang_for).await;
        }
        if roll(faults.error_500_rate) {
            self.bump(k, |s| s.server_errors += 1);
            return Err(errors::server_error());
        }
        let Some(key) = k else {
            return Err(if self.azure { errors::azure_denied() } else { errors::invalid_key(None) });
        };
        // "" and "echo": routes that name no model.
        if !(model.is_empty() || model == "echo" || self.models.is_empty() || self.models.iter().any(|m| m == model)) {
            self.bump(k, |s| s.model_not_found += 1);
            let msg = format!("The model `{model}` does not exist or you do not have access to it.");
            return Err(errors::error_response(
                axum::http::StatusCode::NOT_FOUND,
                &msg,
                "invalid_request_error",
                None,
                Some("model_not_found"),
            ));
        }
        let broke = lock(&self.keys).get(key).and_then(|e| e.balance).is_some_and(|b| b <= 0);
        if broke {
            self.bump(k, |s| s.insufficient_quota += 1);
            // OpenRouter's words and status for a key out of credit.
            return Err(errors::error_response(
                axum::http::StatusCode::PAYMENT_REQUIRED,
                "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
                "invalid_request_error",
                None,
                Some("insufficient_credits"),
            ));
        }
        let verdict = {
            let mut keys = lock(&self.keys);
            match keys.get_mut(key) {
                None if self.accept_any_key => Ok(()),
                None | Some(crate::state::KeyEntry { state: KeyState::Invalid, .. }) => Err(None),
                Some(crate::state::KeyEntry { state: KeyState::InsufficientQuota, .. }) => Err(Some(None)),
                Some(e) => e.limiter.try_admit(Instant::now(), cost).map_err(|r| Some(Some(r))),
            }
        };
        match verdict {
            Ok(()) => Ok(()),
            Err(None) => {
                self.bump(k, |s| s.unauthorized += 1);
                Err(if self.azure { errors::azure_denied() } else { errors::invalid_key(Some(key)) })
            }
            Err(Some(None)) => {
                self.bump(k, |s| s.insufficient_quota += 1);
                Err(errors::insufficient_quota())
            }
            Err(Some(Some(refusal))) => {
                self.bump(k, |s| s.rate_limited += 1);
                Err(if self.azure { azure_rate_limited(&refusal) } else { rate_limited(model, &refusal) })
            }
        }
    }

    /// Adds `x-request-id` and, for keys with limits, the `x-ratelimit-*` headers as they
    /// stand now (after this request was charged).
    pub fn decorate(&self, adm: &Admitted, mut resp: Response) -> Response {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&adm.request_id) {
            h.insert("x-request-id", v);
        }
        if !self.send_rate_limit_headers {
            return resp;
        }
        let Some(key) = adm.key.as_deref() else {
            return resp;
        };
        let snap = match lock(&self.keys).get_mut(key) {
            Some(e) if e.limiter.has_limits() => e.limiter.snapshot(Instant::now()),
            _ => return resp,
        };
        for (suffix, dim) in [("requests", snap.requests), ("tokens", snap.tokens)] {
            let Some(d) = dim else { continue };
            if self.azure {
                // Azure tells only what is left (of the 10 s span for requests).
                if let (Ok(n), Ok(v)) = (
                    HeaderName::try_from(format!("x-ratelimit-remaining-{suffix}")),
                    HeaderValue::from_str(&d.remaining.to_string()),
                ) {
                    h.insert(n, v);
                }
                continue;
            }
            let reset = format_go_duration(ceil_millis(d.reset));
            for (name, value) in
                [("limit", d.limit.to_string()), ("remaining", d.remaining.to_string()), ("reset", reset)]
            {
                if let (Ok(n), Ok(v)) =
                    (HeaderName::try_from(format!("x-ratelimit-{name}-{suffix}")), HeaderValue::from_str(&value))
                {
                    h.insert(n, v);
                }
            }
        }
        resp
    }

    /// The final step of a handler: headers plus the `ok` counter for 2xx answers.
    pub fn respond(&self, adm: &Admitted, resp: Response) -> Response {
        if resp.status().is_success() {
            self.bump(adm.key.as_deref(), |s| s.ok += 1);
        }
        self.decorate(adm, resp)
    }
}

/// Azure OpenAI's 429: its code is the status as a string, its message says
/// which rate ("call" or "token") and when to retry, and it sends both
/// `retry-after` (seconds) and `retry-after-ms`.
fn azure_rate_limited(r: &Refusal) -> Response {
    let what = match r.dimension {
        Dimension::Requests => "call",
        Dimension::Tokens => "token",
    };
    let secs = r.retry_after.as_millis().div_ceil(1000).max(1);
    let message = format!(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded {what} rate limit of your current OpenAI S0 pricing tier. Please retry after {secs} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
    );
    let body = serde_json::json!({"error": {"code": "429", "message": message}});
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let ms = r.retry_after.as_millis().max(1);
    for (name, value) in [("retry-after", secs.to_string()), ("retry-after-ms", ms.to_string())] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// 429 `rate_limit_exceeded` with OpenAI's message and a `retry-after` in whole seconds.
fn rate_limited(model: &str, r: &Refusal) -> Response {
    let (kind, unit) = match r.dimension {
        Dimension::Requests => ("requests", "requests per min (RPM)"),
        Dimension::Tokens => ("tokens", "tokens per min (TPM)"),
    };
    let wait = ceil_millis(r.retry_after);
    let message = format!(
        "Rate limit reached for {model} in organization org-sim on {unit}: Limit {}, Used {}, Requested {}. Please try again in {}. Visit https://platform.openai.com/account/rate-limits to learn more.",
        r.limit,
        r.used,
        r.requested,
        format_go_duration(wait)
    );
    let mut resp =
        errors::error_response(StatusCode::TOO_MANY_REQUESTS, &message, kind, None, Some("rate_limit_exceeded"));
    let secs = wait.as_millis().div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}
