//! Probes that prove something about a key, and nothing more than they prove.
//! A 2xx, or a 429 `rate_limit_exceeded` (the key authenticated to be
//! counted), proves the key is good; a no-money answer proves it exhausted;
//! a key-specific 401/403 proves it invalid. A 404 (a relay without
//! `/models`), a refusal that names no key, or any other answer says nothing:
//! the key then gets one real request on trial.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use secrecy::SecretString;
use std::time::Duration;

use super::{classify, OutBody, Upstream};
use crate::scheduler::{Probed, Verdict};

/// Most of a probe's answer read to judge it.
const PROBE_BODY_CAP: usize = 16 * 1024;

/// What a probe asks: `GET models` (free), or a one-token chat on a named
/// model (for relays without `/models`; costs about one token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeRequest {
    Models,
    Chat { model: String },
}

impl ProbeRequest {
    /// The probe configured by `health.probe_model` (none: `GET models`).
    pub fn from_model(model: Option<&str>) -> ProbeRequest {
        match model {
            Some(m) if !m.trim().is_empty() => ProbeRequest::Chat { model: m.trim().to_owned() },
            _ => ProbeRequest::Models,
        }
    }
}

impl Upstream {
    /// Probes a key; see the module's doc for what each answer proves.
    /// [`Probed::Unreachable`] when the upstream could not be asked (or
    /// answered 5xx), which says nothing about the key.
    pub async fn probe_key(&self, key: &SecretString, how: &ProbeRequest, timeout: Duration) -> Probed {
        let (method, path, body) = match how {
            ProbeRequest::Models => (Method::GET, "models", Bytes::new()),
            ProbeRequest::Chat { model } => {
                let body = serde_json::json!({
                    "model": self.body_model(model).unwrap_or(model),
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1,
                });
                (Method::POST, "chat/completions", Bytes::from(body.to_string()))
            }
        };
        let model = match how {
            ProbeRequest::Chat { model } => Some(model.as_str()),
            ProbeRequest::Models => None,
        };
        let (Some(url), Some((name, value))) = (self.url_to(path, None, model), self.key_header(key)) else {
            return Probed::Unreachable;
        };
        let mut headers = HeaderMap::new();
        headers.insert(name, value);
        if method == Method::POST {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let asked = async {
            let answer = self.request(method, url, headers, OutBody::Bytes(body)).await.ok()?;
            let status = answer.status();
            let (head, mut rest) = answer.into_parts();
            let mut read = Vec::new();
            while read.len() < PROBE_BODY_CAP {
                match rest.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            read.extend_from_slice(&data);
                        }
                    }
                    _ => break,
                }
            }
            Some((status, head.headers, read))
        };
        let Ok(Some((status, headers, body))) = tokio::time::timeout(timeout, asked).await else {
            return Probed::Unreachable;
        };
        if status.is_success() {
            return Probed::Healthy;
        }
        match classify(status, &headers, &body).verdict {
            // Counted against a limit, or told the model is not this key's: it authenticated.
            Verdict::RateLimited { .. } | Verdict::TooLarge { .. } | Verdict::ModelMissing => Probed::Healthy,
            Verdict::Invalid => Probed::Invalid,
            Verdict::Exhausted => Probed::Exhausted,
            Verdict::UpstreamError | Verdict::ConnectFailed => Probed::Unreachable,
            Verdict::Fine | Verdict::Cancelled | Verdict::CallerError | Verdict::Refused => Probed::Unknown,
        }
    }
}
