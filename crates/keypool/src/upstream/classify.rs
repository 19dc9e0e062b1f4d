//! Whose fault an upstream answer is, decided once per answer: the key's
//! (wrong, revoked, out of money, rate limited), the key × model's (a model
//! this key's project cannot see), the request's (the caller's account
//! headers, a request larger than any limit, a malformed body), or the
//! upstream's (5xx, or a refusal that names no key: a firewall's HTML page,
//! a region block). The proxy and the scheduler consume the result; the
//! table it follows is in shared/openai-semantics.md, and the providers'
//! forms are listed beside each rule below.

use http::{HeaderMap, StatusCode};
use std::time::Duration;

use super::comeback::{generic_reset, reset_value, retry_header, wait_in_text};
use super::wording::{
    KEY_CODES, KEY_WORDS, MODEL_WORDS, NO_MONEY_CODES, NO_MONEY_WORDS, REQUEST_CODES, REQUEST_WORDS, UPSTREAM_CODES,
    UPSTREAM_WORDS,
};
use crate::scheduler::{Hit, RateInfo, Reset, Verdict};

/// Whose fault a failed answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Nothing failed.
    Nobody,
    /// The key itself: invalid, out of money, or at its rate limit.
    Key,
    /// Only this key for this model (404 `model_not_found`, no access to the model).
    KeyModel,
    /// The caller's request; no key is blamed.
    Request,
    /// The upstream (or what stands in front of it); no key is blamed.
    Upstream,
}

/// What one upstream answer says: the verdict on the key, and the
/// upstream's own words for the caller when it is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub verdict: Verdict,
    /// `error.message` (or an HTML page's `<title>`, or a text's first line), at most 300 characters.
    pub message: String,
    /// A [`Verdict::Refused`] that may still be the key's (a JSON or text
    /// 401/403 naming no key): the key goes on trial once another key is
    /// served. False for an HTML page or a region block, never the key's.
    pub maybe_key: bool,
}

impl Classified {
    /// Whose fault it is.
    pub fn blame(&self) -> Blame {
        match self.verdict {
            Verdict::Fine | Verdict::Cancelled => Blame::Nobody,
            Verdict::RateLimited { .. } | Verdict::Invalid | Verdict::Exhausted => Blame::Key,
            Verdict::ModelMissing => Blame::KeyModel,
            Verdict::CallerError | Verdict::TooLarge { .. } => Blame::Request,
            Verdict::Refused | Verdict::UpstreamError | Verdict::ConnectFailed => Blame::Upstream,
        }
    }

    /// Whether another attempt (on another key, or after a back-off) may get
    /// a different answer; false means the answer goes back to the caller.
    pub fn retry(&self) -> bool {
        !matches!(self.verdict, Verdict::Fine | Verdict::Cancelled | Verdict::CallerError)
    }
}

/// The parts of an error body that say whose fault it is. Providers nest
/// them differently: OpenAI `{"error":{...}}`, Google `[{"error":{...}}]`,
/// DashScope and SiliconFlow at the top level (`{"code":"Arrearage","message":...}`),
/// some relays `{"error":"text"}`.
#[derive(Debug, Default)]
struct Said {
    code: String,
    kind: String,
    message: String,
    /// The whole body, lowercased, for hints outside the error object (`retryDelay`).
    raw: String,
    /// The body is an HTML page (a CDN's or a firewall's, never the upstream API's own).
    html: bool,
}

fn said(body: &[u8]) -> Said {
    let text = String::from_utf8_lossy(body);
    let raw = text.to_ascii_lowercase();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        let start = raw.trim_start();
        let html = start.starts_with("<!doctype html") || start.starts_with("<html") || raw.contains("<title>");
        return Said { message: plain_text_message(&text), raw, html, ..Said::default() };
    };
    let root = value.as_array().and_then(|a| a.first()).unwrap_or(&value);
    let err = match root.get("error") {
        Some(e) if e.is_object() => e,
        Some(serde_json::Value::String(m)) => {
            return Said { message: clip(m), raw, ..Said::default() };
        }
        _ => root,
    };
    let field = |name: &str| match err.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let code = field("code");
    let kind = [field("type"), field("status")].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
    let (code, kind) = (code.to_ascii_lowercase(), kind.to_ascii_lowercase());
    Said { code, kind, message: clip(&field("message")), raw, html: false }
}

/// What a non-JSON body says: an HTML page's `<title>`, else its first non-empty line.
fn plain_text_message(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if let (Some(open), Some(close)) = (lower.find("<title>"), lower.find("</title>")) {
        let title = text.get(open + "<title>".len()..close).unwrap_or_default().trim();
        if !title.is_empty() {
            return clip(title);
        }
    }
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    clip(line)
}

fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn any_in(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

/// Judges an answer (status, headers, and its body when it is an error; a
/// small one, read whole), as if the caller's account headers were sent.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Classified {
    classify_sent(status, headers, body, true)
}

/// [`classify`], knowing whether the caller's `OpenAI-Organization` /
/// `OpenAI-Project` went upstream (`server.forward_account_headers`): when
/// they did not, a `mismatched_organization` is about the key's own
/// account settings, so the key is set aside as invalid.
pub fn classify_sent(status: StatusCode, headers: &HeaderMap, body: &[u8], caller_account_sent: bool) -> Classified {
    let s = status.as_u16();
    if s < 400 {
        return Classified { verdict: Verdict::Fine, message: String::new(), maybe_key: false };
    }
    let said = said(body);
    let message = said.message.clone();
    let verdict = judge(s, headers, &said, caller_account_sent);
    let maybe_key = verdict == Verdict::Refused && !said.html && !upstream_refusal(&said);
    Classified { verdict, message, maybe_key }
}

/// A refusal the upstream words as its own, whatever key was sent (OpenAI's
/// region block).
fn upstream_refusal(said: &Said) -> bool {
    UPSTREAM_CODES.contains(&said.code.as_str()) || any_in(&said.message.to_lowercase(), UPSTREAM_WORDS)
}

fn judge(status: u16, headers: &HeaderMap, said: &Said, caller_account_sent: bool) -> Verdict {
    let code = |list: &[&str]| list.contains(&said.code.as_str()) || list.contains(&said.kind.as_str());
    let words = said.message.to_lowercase();
    if status >= 500 {
        return Verdict::UpstreamError;
    }
    if code(REQUEST_CODES) || any_in(&words, REQUEST_WORDS) {
        // Without the caller's headers, the account that mismatches is the key's own.
        return if caller_account_sent { Verdict::CallerError } else { Verdict::Invalid };
    }
    if said.code == "model_not_found" || any_in(&words, MODEL_WORDS) {
        return if matches!(status, 401 | 403 | 404) { Verdict::ModelMissing } else { Verdict::CallerError };
    }
    if status == 429 {
        if let Some(limit) = larger_than_limit(&words) {
            return Verdict::TooLarge { limit };
        }
    }
    // A retry hint says the limit is a rate, not a balance (Google words its
    // per-minute limits as "You exceeded your current quota").
    let hinted = status == 429 && (retry_header(headers).is_some() || wait_in_text(&said.raw).is_some());
    if status == 402 || code(NO_MONEY_CODES) || (!hinted && any_in(&words, NO_MONEY_WORDS)) {
        return Verdict::Exhausted;
    }
    if code(KEY_CODES) || any_in(&words, KEY_WORDS) {
        return Verdict::Invalid;
    }
    match status {
        429 => Verdict::RateLimited { reset: Reset::new(reset_of_429(headers, &said.kind, &said.raw), hit(said)) },
        // A refusal that names no key (a firewall's page, a region block): the
        // upstream's; the proxy tries the other keys and blames none of them.
        401 | 403 => Verdict::Refused,
        _ => Verdict::CallerError,
    }
}

/// OpenAI's 429 for a request larger than the key's whole limit: "Request too
/// large for gpt-4 ... on tokens per min (TPM): Limit 10000, Requested 30000."
/// Returns the limit when what was requested exceeds it.
fn larger_than_limit(message: &str) -> Option<u64> {
    // The first place the label is followed by a number ("rate limit reached" is not one).
    let number_after = |label: &str| -> Option<u64> {
        message.match_indices(label).find_map(|(at, _)| {
            let rest = message[at + label.len()..].trim_start_matches([' ', ':']);
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    };
    let (limit, requested) = (number_after("limit")?, number_after("requested")?);
    (requested > limit || message.contains("request too large")).then_some(limit)
}

/// Which limit a 429 was about: OpenAI's `error.type` (`"tokens"`,
/// `"requests"`), else its message ("on tokens per min (TPM)", "on requests
/// per min (RPM)").
fn hit(said: &Said) -> Hit {
    let words = said.message.to_ascii_lowercase();
    // Azure OpenAI says "exceeded token rate limit" or "exceeded call rate limit".
    if said.kind == "tokens"
        || words.contains("(tpm)")
        || words.contains("tokens per min")
        || words.contains("token rate limit")
    {
        Hit::Tokens
    } else if said.kind == "requests"
        || words.contains("(rpm)")
        || words.contains("requests per min")
        || words.contains("call rate limit")
    {
        Hit::Requests
    } else {
        Hit::Unknown
    }
}

/// How long a 429 says to wait: an explicit Retry-After first, then the
/// "Please try again in 20s" of the message, then the reset header of the
/// limit that was hit, then a generic reset header; one second when none is
/// known. Every form is clamped alike to `0..=MAX_WAIT` (a day) where it is
/// read (see [`super::comeback`]).
fn reset_of_429(headers: &HeaderMap, kind: &str, raw: &str) -> Duration {
    let header = if kind == "tokens" { "x-ratelimit-reset-tokens" } else { "x-ratelimit-reset-requests" };
    retry_header(headers)
        .or_else(|| wait_in_text(raw))
        .or_else(|| headers.get(header).and_then(|v| v.to_str().ok()).and_then(reset_value))
        .or_else(|| generic_reset(headers))
        .unwrap_or(Duration::from_secs(1))
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
        // Go durations (OpenAI, Groq), or seconds and Unix times (others).
        let dur = |slot: &mut Option<Duration>| {
            if slot.is_none() {
                *slot = reset_value(value);
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

    fn verdict(status: u16, h: &HeaderMap, body: &[u8]) -> Verdict {
        classify(StatusCode::from_u16(status).unwrap(), h, body).verdict
    }

    #[test]
    fn errors_say_what_happened_to_the_key() {
        let none = HeaderMap::new();
        assert_eq!(verdict(400, &none, b"{}"), Verdict::CallerError);
        assert_eq!(verdict(503, &none, b"{}"), Verdict::UpstreamError);
        let invalid = br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(verdict(401, &none, invalid), Verdict::Invalid);
        let deactivated = br#"{"error":{"message":"This key is associated with a deactivated account.","type":"invalid_request_error","code":"account_deactivated"}}"#;
        assert_eq!(verdict(401, &none, deactivated), Verdict::Invalid);
        let deepseek = br#"{"error":{"message":"Authentication Fails, Your api key: ****abcd is invalid","type":"authentication_error","param":null,"code":"invalid_request_error"}}"#;
        assert_eq!(verdict(401, &none, deepseek), Verdict::Invalid);
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(verdict(429, &none, quota), Verdict::Exhausted);
        let limited = br#"{"error":{"message":"Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit ...","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            verdict(429, &none, limited),
            Verdict::RateLimited { reset: Reset::new(Duration::from_secs(20), Hit::Requests) }
        );
        let h = headers(&[("x-ratelimit-reset-tokens", "859ms"), ("x-ratelimit-reset-requests", "6m0s")]);
        let tokens = br#"{"error":{"message":"Rate limit reached","type":"tokens","code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            verdict(429, &h, tokens),
            Verdict::RateLimited { reset: Reset::new(Duration::from_millis(859), Hit::Tokens) }
        );
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            verdict(429, &h, b"garbage"),
            Verdict::RateLimited { reset: Reset::new(Duration::from_secs(7), Hit::Unknown) }
        );
    }

    fn reset(status: u16, h: &HeaderMap, body: &[u8]) -> Reset {
        match verdict(status, h, body) {
            Verdict::RateLimited { reset } => reset,
            v => panic!("not a rate limit: {v:?}"),
        }
    }

    #[test]
    fn every_come_back_form_is_capped_at_a_day() {
        let day = Duration::from_secs(86_400);
        for date in ["Fri, 31 Dec 9999 23:59:59 GMT", "Wed, 06 Nov 2999 08:49:37 GMT"] {
            assert_eq!(reset(429, &headers(&[("retry-after", date)]), b"{}").after, day, "{date}");
        }
        let huge = format!("Sun, 06 Nov {} 08:49:37 GMT", "9".repeat(14));
        assert_eq!(reset(429, &headers(&[("retry-after", huge.as_str())]), b"{}").after, Duration::from_secs(1));
        let past = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(reset(429, &past, b"{}").after, Duration::ZERO);
        assert_eq!(reset(429, &headers(&[("retry-after", "soon-ish")]), b"{}").after, Duration::from_secs(1));
        // A message hint obeys the same cap as a header (one rule).
        let words = br#"{"error":{"message":"Please try again in 30h."}}"#;
        assert_eq!(reset(429, &HeaderMap::new(), words).after, day);
        assert_eq!(reset(429, &headers(&[("x-ratelimit-reset-requests", "99999h")]), b"{}").after, day);
        // The old 429 tests of headers alone (no `cooldown_from` twin any more).
        assert_eq!(reset(429, &headers(&[("retry-after", "NaN")]), b"{}").after, Duration::from_secs(1));
        assert_eq!(reset(429, &headers(&[("retry-after-ms", "1e300")]), b"{}").after, day);
        let both = headers(&[("retry-after", "3"), ("retry-after-ms", "1500")]);
        assert_eq!(reset(429, &both, b"{}").after, Duration::from_millis(1500));
        assert_eq!(reset(429, &HeaderMap::new(), b"{}").after, Duration::from_secs(1));
    }

    #[test]
    fn a_429_says_which_limit_it_hit() {
        let none = HeaderMap::new();
        let tpm = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000.","code":"rate_limit_exceeded"}}"#;
        assert_eq!(reset(429, &none, tpm).hit, Hit::Tokens);
        let rpm =
            br#"{"error":{"message":"Rate limit reached on requests per min (RPM): Limit 3, Used 3, Requested 1."}}"#;
        assert_eq!(reset(429, &none, rpm).hit, Hit::Requests);
        assert_eq!(reset(429, &none, br#"{"error":{"message":"x","type":"tokens"}}"#).hit, Hit::Tokens);
        assert_eq!(reset(429, &none, b"Too Many Requests").hit, Hit::Unknown);
        // Azure OpenAI's wording (its code is the status, as a string).
        let azure = |what: &str| {
            format!(
                r#"{{"error":{{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded {what} rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}}}"#
            )
        };
        assert_eq!(reset(429, &none, azure("token").as_bytes()).hit, Hit::Tokens);
        assert_eq!(reset(429, &none, azure("call").as_bytes()).hit, Hit::Requests);
        assert_eq!(reset(429, &none, azure("call").as_bytes()).after, Duration::from_secs(6));
    }

    #[test]
    fn every_way_of_saying_no_money_left_exhausts_the_key() {
        let none = HeaderMap::new();
        let cases: &[(u16, &str)] = &[
            (
                429,
                r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            ),
            (
                400,
                r#"{"error":{"message":"Billing hard limit has been reached","type":"invalid_request_error","code":"billing_hard_limit_reached"}}"#,
            ),
            (
                429,
                r#"{"error":{"message":"Your account is not active, please check your billing details on our website.","type":"billing_not_active","code":"billing_not_active"}}"#,
            ),
            (
                402,
                r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
            ),
            (
                429,
                r#"{"error":{"message":"Your account org-x is suspended, please check your plan and billing details","type":"exceeded_current_quota_error"}}"#,
            ),
            (
                400,
                r#"{"error":{"code":"Arrearage","param":null,"message":"Access denied, please make sure your account is in good standing.","type":"Arrearage"}}"#,
            ),
            (
                400,
                r#"{"code":"Arrearage","message":"Access denied, please make sure your account is in good standing.","request_id":"x"}"#,
            ),
            (
                402,
                r#"{"error":{"message":"Insufficient credits. Add more using https://openrouter.ai/settings/credits","code":402}}"#,
            ),
            (403, r#"{"code":30001,"message":"Sorry, your account balance is insufficient","data":null}"#),
            (403, r#"{"code":"INSUFFICIENT_BALANCE","message":"Insufficient account balance"}"#),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the API."}}"#,
            ),
            (429, r#"{"error":{"code":"1113","message":"您的账户已欠费，请充值后重试。"}}"#),
        ];
        for (status, body) in cases {
            assert_eq!(verdict(*status, &none, body.as_bytes()), Verdict::Exhausted, "{status} {body}");
        }
        // Google words a per-minute limit as a spent quota, with a retry delay: that is a rate limit.
        let google = br#"[{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"23s"}]}}]"#;
        assert_eq!(
            verdict(429, &none, google),
            Verdict::RateLimited { reset: Reset::new(Duration::from_secs(23), Hit::Unknown) }
        );
    }

    #[test]
    fn refusals_of_the_request_or_of_the_upstream_blame_no_key() {
        let none = HeaderMap::new();
        let org = br#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
        let c = classify(StatusCode::UNAUTHORIZED, &none, org);
        assert_eq!((c.verdict, c.blame(), c.retry()), (Verdict::CallerError, Blame::Request, false));
        let project = br#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","code":"mismatched_project"}}"#;
        assert_eq!(verdict(401, &none, project), Verdict::CallerError);
        let region = br#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#;
        let c = classify(StatusCode::FORBIDDEN, &none, region);
        assert_eq!((c.verdict, c.blame(), c.maybe_key), (Verdict::Refused, Blame::Upstream, false));
        assert_eq!(c.message, "Country, region, or territory not supported");
        let html = b"<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body><center><h1>403 Forbidden</h1></center></body></html>";
        let c = classify(StatusCode::FORBIDDEN, &none, html);
        assert_eq!((c.verdict, c.message.as_str(), c.maybe_key), (Verdict::Refused, "403 Forbidden", false));
        assert_eq!(
            classify(StatusCode::FORBIDDEN, &none, b"\n  Access denied by policy\nref 42").message,
            "Access denied by policy"
        );
        let model = br#"{"error":{"message":"The model `gpt-5` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
        let c = classify(StatusCode::NOT_FOUND, &none, model);
        assert_eq!((c.verdict, c.blame(), c.retry()), (Verdict::ModelMissing, Blame::KeyModel, true));
        let access = br#"{"error":{"message":"Project `proj_x` does not have access to model `o1`","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert_eq!(verdict(403, &none, access), Verdict::ModelMissing);
        assert_eq!(
            verdict(404, &none, b"{\"error\":{\"message\":\"Invalid URL (POST /v1/x)\"}}"),
            Verdict::CallerError
        );
    }

    #[test]
    fn only_a_refusal_that_may_be_the_keys_puts_it_on_trial() {
        let none = HeaderMap::new();
        let bare = classify(StatusCode::UNAUTHORIZED, &none, br#"{"error":{"message":"Unauthorized","type":"error"}}"#);
        assert_eq!((bare.verdict, bare.maybe_key), (Verdict::Refused, true));
        assert!(classify(StatusCode::FORBIDDEN, &none, b"Forbidden").maybe_key);
        let page =
            b"<!DOCTYPE html>\n<html><head><meta charset=utf-8></head><body>Access denied | cloudflare</body></html>";
        assert!(!classify(StatusCode::FORBIDDEN, &none, page).maybe_key, "an HTML page is never the key's");
        let region = br#"{"error":{"message":"Country, region, or territory not supported"}}"#;
        assert!(!classify(StatusCode::FORBIDDEN, &none, region).maybe_key, "nor a region block");
        assert!(!classify(StatusCode::UNAUTHORIZED, &none, br#"{"error":{"code":"invalid_api_key"}}"#).maybe_key);
    }

    #[test]
    fn an_account_mismatch_is_the_keys_when_the_callers_headers_stayed_home() {
        let none = HeaderMap::new();
        let org = br#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
        let project = br#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","code":"mismatched_project"}}"#;
        for body in [&org[..], &project[..]] {
            let kept = classify_sent(StatusCode::UNAUTHORIZED, &none, body, false);
            assert_eq!((kept.verdict, kept.blame(), kept.retry()), (Verdict::Invalid, Blame::Key, true));
            let sent = classify_sent(StatusCode::UNAUTHORIZED, &none, body, true);
            assert_eq!((sent.verdict, sent.blame()), (Verdict::CallerError, Blame::Request));
        }
    }

    #[test]
    fn a_request_larger_than_the_whole_limit_is_the_requests_fault() {
        let none = HeaderMap::new();
        let big = br#"{"error":{"message":"Request too large for gpt-4 in organization org-x on tokens per min (TPM): Limit 10000, Requested 30000. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        let c = classify(StatusCode::TOO_MANY_REQUESTS, &none, big);
        assert_eq!((c.verdict, c.blame()), (Verdict::TooLarge { limit: 10_000 }, Blame::Request));
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
        let h = headers(&[("x-ratelimit-reset-requests", "12"), ("x-ratelimit-reset-tokens", "0.5")]);
        let info = rate_info(&h);
        assert_eq!(
            (info.reset_requests, info.reset_tokens),
            (Some(Duration::from_secs(12)), Some(Duration::from_millis(500)))
        );
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
