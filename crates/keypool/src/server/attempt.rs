//! One attempt's failure and what the caller gets when it is the last one:
//! whose fault it was decides whether another key is tried, and the final
//! answer quotes the upstream's words (scrubbed of the key) with the number
//! of attempts.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::error::ApiError;
use crate::scheduler::{KeyLease, Verdict};
use crate::upstream::{classify_sent, Classified};

/// Why one attempt did not produce an answer for the caller.
pub(super) enum Failed {
    /// No connection, a reset, or no answer before the first-byte timeout;
    /// `why` says what failed (an unknown certificate issuer, a name that
    /// does not resolve), without the upstream's address.
    Network { timed_out: bool, why: Option<String> },
    /// An error answer another attempt may turn around.
    Status { status: StatusCode, classified: Classified, headers: HeaderMap, body: Bytes },
    /// The upstream refused the `stream_options` keypool added: the key is
    /// kept to send the caller's own body.
    StreamOptions(KeyLease),
}

impl Failed {
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Failed::Network { timed_out: true, .. } => "timeout",
            Failed::Network { timed_out: false, .. } => "network",
            Failed::StreamOptions(_) => "stream_options_refused",
            Failed::Status { classified, .. } => match classified.verdict {
                Verdict::RateLimited { .. } => "rate_limited",
                Verdict::Invalid => "invalid_key",
                Verdict::Exhausted => "exhausted_key",
                Verdict::ModelMissing => "model_not_found",
                Verdict::Refused => "refused",
                Verdict::TooLarge { .. } => "larger_than_limit",
                _ => "server_error",
            },
        }
    }

    /// The upstream's status; 0 when no answer came.
    pub(super) fn status(&self) -> u16 {
        match self {
            Failed::Status { status, .. } => status.as_u16(),
            Failed::StreamOptions(_) => 400,
            Failed::Network { .. } => 0,
        }
    }

    /// Failures of one key are retried at once on another; failures of the
    /// upstream wait a back-off first.
    pub(super) fn needs_backoff(&self) -> bool {
        match self {
            Failed::Network { .. } => true,
            Failed::Status { classified, .. } => classified.verdict == Verdict::UpstreamError,
            Failed::StreamOptions(_) => false,
        }
    }

    /// Whether the upstream itself failed (no connection, no answer in
    /// time, a 5xx): another upstream should be tried first.
    pub(super) fn upstream_failing(&self) -> bool {
        self.needs_backoff()
    }

    /// Whether only another key can change the answer (retrying the same key is pointless).
    pub(super) fn needs_other_key(&self) -> bool {
        match self {
            Failed::Network { .. } | Failed::StreamOptions(_) => false,
            Failed::Status { classified, .. } => classified.verdict != Verdict::UpstreamError,
        }
    }

    /// Whether the key itself was at fault (invalid, exhausted, rate limited).
    pub(super) fn blames_key(&self) -> bool {
        matches!(self, Failed::Status { classified, .. } if classified.blame() == crate::upstream::Blame::Key)
    }

    /// What the caller gets when this was the last attempt.
    pub(super) fn into_response(self, attempts: u32, keys: usize) -> Response {
        match self {
            Failed::Network { timed_out, why } => ApiError::UpstreamFailed {
                attempts,
                keys,
                status: if timed_out { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY },
                detail: match (timed_out, why) {
                    (true, _) => "no answer within the first-byte timeout".into(),
                    (false, Some(why)) => format!("the connection failed: {why}"),
                    (false, None) => "the connection failed".into(),
                },
                retry_after: None,
            }
            .into_response(),
            Failed::StreamOptions(_) => ApiError::Internal("stream_options refused twice").into_response(),
            Failed::Status { status, classified, headers, body } => match classified.verdict {
                // The upstream's own answer, unchanged: no other key had the model.
                Verdict::ModelMissing => passthrough(status, headers, body),
                Verdict::Refused => {
                    ApiError::UpstreamRefused { status, message: classified.message, attempts, keys }.into_response()
                }
                Verdict::TooLarge { limit } => {
                    ApiError::LargerThanEveryKey { limit, message: classified.message }.into_response()
                }
                verdict => ApiError::UpstreamFailed {
                    attempts,
                    keys,
                    status: match verdict {
                        Verdict::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                        _ => StatusCode::BAD_GATEWAY,
                    },
                    detail: if classified.message.is_empty() {
                        format!("the upstream answered {status}")
                    } else {
                        format!("the upstream answered {status}: \"{}\"", classified.message)
                    },
                    retry_after: match verdict {
                        Verdict::RateLimited { reset } => Some(reset.after),
                        _ => None,
                    },
                }
                .into_response(),
            },
        }
    }
}

/// Largest caller's error body read again to learn whose account mismatched.
const MISMATCH_BODY_CAP: usize = 1024 * 1024;

/// A caller's error as the proxy passes it back, judged again knowing
/// whether the caller's account headers went upstream: a 401/403
/// `mismatched_organization`/`_project` the caller did not send is about the
/// key's own organization/project (see [`classify_sent`]), so it is the
/// key's failure (`Err`) and another key is tried. Any other answer comes
/// back unchanged.
pub(super) async fn key_account_mismatch(response: Response, caller_account_sent: bool) -> Result<Response, Failed> {
    let status = response.status();
    if caller_account_sent || !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MISMATCH_BODY_CAP).await else {
        return Err(Failed::Network { timed_out: false, why: Some("the upstream's error body failed".into()) });
    };
    let classified = classify_sent(status, &parts.headers, &body, false);
    if classified.verdict == Verdict::Invalid {
        return Err(Failed::Status { status, classified, headers: parts.headers, body });
    }
    Ok(Response::from_parts(parts, axum::body::Body::from(body)))
}

/// An upstream answer as it came (already scrubbed of the key).
pub(super) fn passthrough(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `text` with every occurrence of `secret` masked as OpenAI masks keys
/// (first 3 and last 4 characters), so an upstream that quotes the key it
/// was sent cannot show it to the caller or a log.
pub(super) fn scrub(text: &[u8], secret: &str) -> Option<Vec<u8>> {
    let needle = secret.as_bytes();
    if needle.len() < 8 || text.len() < needle.len() {
        return None;
    }
    let first = text.windows(needle.len()).position(|w| w == needle)?;
    let mask = crate::config::mask_key(secret);
    let mut out = Vec::with_capacity(text.len());
    out.extend_from_slice(&text[..first]);
    let mut rest = &text[first..];
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(mask.as_bytes());
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// A random pause in [0, min(cap, base × 2^(attempt-1))]: "full jitter", so
/// retries from many callers spread out instead of arriving together.
pub(super) fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(cap);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn full_jitter_stays_under_its_ceiling() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..30 {
            let d = full_jitter(base, cap, attempt);
            assert!(d <= base.saturating_mul(1 << (attempt - 1).min(20)).min(cap), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn a_quoted_key_is_masked_everywhere() {
        let key = "sk-proj-abcdefghijklmnop";
        let body = format!(r#"{{"error":{{"message":"Key {key} is not allowed ({key})"}}}}"#);
        let out = String::from_utf8(scrub(body.as_bytes(), key).unwrap()).unwrap();
        assert!(!out.contains(key), "{out}");
        assert!(out.contains("sk-…mnop"), "{out}");
        assert_eq!(scrub(b"nothing here", key), None);
    }
}
