//! What an upstream answer says about the key that was used, following the
//! error table in shared/openai-semantics.md: refused (401/403), out of
//! balance (`insufficient_quota`), or rate limited until a reset.

use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::time::Duration;

use super::headers::{cooldown_from, parse_go_duration};
use crate::scheduler::{RateInfo, Verdict};

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorFields,
}

#[derive(Deserialize, Default)]
struct ErrorFields {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// Judges an error answer (status, headers, and its body, which is small).
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
    match status.as_u16() {
        401 | 403 => Verdict::Invalid,
        429 => {
            let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
            let e = parsed.error;
            let code = e.code.as_ref().and_then(|c| c.as_str()).unwrap_or_default();
            if code == "insufficient_quota" || e.kind.as_deref() == Some("insufficient_quota") {
                return Verdict::Exhausted;
            }
            Verdict::RateLimited { reset: reset_of_429(headers, e.kind.as_deref(), e.message.as_deref()) }
        }
        400..=499 => Verdict::CallerError,
        500..=599 => Verdict::UpstreamError,
        _ => Verdict::Fine,
    }
}

/// How long a 429 says to wait: an explicit Retry-After first, then the
/// "Please try again in 20s" of OpenAI's message, then the reset header of
/// the limit that was hit.
fn reset_of_429(headers: &HeaderMap, kind: Option<&str>, message: Option<&str>) -> Duration {
    if headers.contains_key("retry-after-ms") || headers.contains_key("retry-after") {
        return cooldown_from(headers);
    }
    if let Some(d) = message.and_then(try_again_in) {
        return d;
    }
    let header = if kind == Some("tokens") { "x-ratelimit-reset-tokens" } else { "x-ratelimit-reset-requests" };
    headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_go_duration)
        .map_or_else(|| cooldown_from(headers), |d| d.min(Duration::from_secs(3600)))
}

fn try_again_in(message: &str) -> Option<Duration> {
    let rest = message.split("try again in ").nth(1)?;
    let word = rest.split(|c: char| c.is_whitespace() || c == ',').next()?.trim_end_matches('.');
    parse_go_duration(word).map(|d| d.min(Duration::from_secs(3600)))
}

/// The `x-ratelimit-*` headers of an answer (the first readable value of each).
///
/// One pass over the answer's headers matching names by prefix, rather than
/// six look-ups by name: each look-up hashes its name, and every answer goes
/// through here.
pub fn rate_info(headers: &HeaderMap) -> RateInfo {
    let mut info = RateInfo::default();
    for (name, value) in headers {
        let Some(which) = name.as_str().strip_prefix("x-ratelimit-") else { continue };
        let Ok(value) = value.to_str() else { continue };
        let num = |slot: &mut Option<u64>| {
            if slot.is_none() {
                *slot = value.trim().parse::<u64>().ok();
            }
        };
        let dur = |slot: &mut Option<Duration>| {
            if slot.is_none() {
                *slot = parse_go_duration(value);
            }
        };
        match which {
            "limit-requests" => num(&mut info.limit_requests),
            "remaining-requests" => num(&mut info.remaining_requests),
            "reset-requests" => dur(&mut info.reset_requests),
            "limit-tokens" => num(&mut info.limit_tokens),
            "remaining-tokens" => num(&mut info.remaining_tokens),
            "reset-tokens" => dur(&mut info.reset_tokens),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn errors_say_what_happened_to_the_key() {
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::UNAUTHORIZED, &none, b""), Verdict::Invalid);
        assert_eq!(classify(StatusCode::BAD_REQUEST, &none, b"{}"), Verdict::CallerError);
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &none, b"{}"), Verdict::UpstreamError);
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, &none, quota), Verdict::Exhausted);
        let limited = br#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit ...","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &none, limited),
            Verdict::RateLimited { reset: Duration::from_secs(20) }
        );
        let h = headers(&[("x-ratelimit-reset-tokens", "859ms"), ("x-ratelimit-reset-requests", "6m0s")]);
        let tokens = br#"{"error":{"message":"Rate limit reached","type":"tokens","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, tokens),
            Verdict::RateLimited { reset: Duration::from_millis(859) }
        );
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, b"garbage"),
            Verdict::RateLimited { reset: Duration::from_secs(7) }
        );
    }

    #[test]
    fn rate_headers_parse() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "3"),
            ("x-ratelimit-remaining-requests", "2"),
            ("x-ratelimit-reset-requests", "20s"),
            ("x-ratelimit-limit-tokens", "40000"),
            ("x-ratelimit-remaining-tokens", "39427"),
            ("x-ratelimit-reset-tokens", "859ms"),
        ]);
        let info = rate_info(&h);
        assert_eq!(
            info,
            RateInfo {
                limit_requests: Some(3),
                remaining_requests: Some(2),
                reset_requests: Some(Duration::from_secs(20)),
                limit_tokens: Some(40000),
                remaining_tokens: Some(39427),
                reset_tokens: Some(Duration::from_millis(859)),
            }
        );
        assert!(rate_info(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn rate_headers_take_the_first_readable_value_and_ignore_the_rest() {
        let mut h = headers(&[("content-type", "application/json"), ("x-ratelimit-limit-requests-day", "9")]);
        h.append("x-ratelimit-limit-requests", "junk".parse().unwrap());
        h.append("x-ratelimit-limit-requests", " 60 ".parse().unwrap());
        h.append("x-ratelimit-limit-requests", "70".parse().unwrap());
        h.append("x-ratelimit-reset-tokens", "1s".parse().unwrap());
        h.append("x-ratelimit-reset-tokens", "2s".parse().unwrap());
        let info = rate_info(&h);
        assert_eq!(info.limit_requests, Some(60));
        assert_eq!(info.reset_tokens, Some(Duration::from_secs(1)));
        assert_eq!((info.remaining_requests, info.limit_tokens, info.reset_requests), (None, None, None));
    }
}
