//! An upstream's answer: its rate-limit and retry headers, and how the
//! answer is classified.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::scheduler::Verdict;
use crate::upstream::comeback::{generic_reset, reset_value, retry_header, until_date, wait_in_text};
use crate::upstream::headers::MAX_WAIT;
use crate::upstream::{classify_sent, copy_response_headers, is_hop_by_hop, parse_go_duration, rate_info};

/// An upstream answer written as text: a status line (`429`; anything else
/// reads as 429), then `name: value` header lines, a blank line, and the
/// body. Header lines that HTTP would refuse are skipped.
///
/// Checks: every wait read from a header or the body (`Retry-After`,
/// `retry-after-ms`, `x-ratelimit-reset-*`, Go durations, HTTP dates, "try
/// again in 20s") is at most a day; the classification is total and
/// consistent (below 400 is fine, 5xx is the upstream's, a rate limit's
/// reset is at most a day, the message at most 300 characters); and the
/// headers copied to the caller never include a hop-by-hop one.
pub fn ratelimit_headers(data: &[u8]) {
    let (status, headers, body) = answer(data);
    let within = |what: &str, d: Option<Duration>| {
        if let Some(d) = d {
            assert!(d <= MAX_WAIT, "{what}: a wait of {d:?}, over the cap");
        }
    };
    let info = rate_info(&headers);
    within("x-ratelimit-reset-requests", info.reset_requests);
    within("x-ratelimit-reset-tokens", info.reset_tokens);
    within("retry headers", retry_header(&headers));
    within("generic reset headers", generic_reset(&headers));
    let now = SystemTime::now();
    for value in headers.values().filter_map(|v| v.to_str().ok()) {
        within("a Go duration", parse_go_duration(value));
        within("a reset value", reset_value(value));
        within("an HTTP date", until_date(value, now));
    }
    let text = String::from_utf8_lossy(body);
    within("a wait in the body", wait_in_text(&text));
    within("the body as a Go duration", parse_go_duration(&text));
    within("the body as a reset value", reset_value(&text));

    for caller_account_sent in [true, false] {
        let classified = classify_sent(status, &headers, body, caller_account_sent);
        let verdict = &classified.verdict;
        if status.as_u16() < 400 {
            assert_eq!(*verdict, Verdict::Fine, "a {status} answer is not a failure");
        } else if status.as_u16() >= 500 {
            assert_eq!(*verdict, Verdict::UpstreamError, "a {status} answer is the upstream's");
        }
        match verdict {
            Verdict::RateLimited { reset } => {
                assert_eq!(status.as_u16(), 429);
                assert!(reset.after <= MAX_WAIT, "a rate limit's reset of {:?}, over the cap", reset.after);
            }
            Verdict::TooLarge { .. } => assert_eq!(status.as_u16(), 429),
            _ => {}
        }
        assert!(classified.message.chars().count() <= 301, "a message of {} characters", classified.message.len());
        // Blame and retry are decided for every verdict.
        let _ = (classified.blame(), classified.retry());
    }

    let mut copied = HeaderMap::new();
    copy_response_headers(&headers, &mut copied);
    for name in copied.keys() {
        assert!(!is_hop_by_hop(name), "hop-by-hop header {name} copied to the caller");
        assert!(headers.contains_key(name), "header {name} appeared from nowhere");
    }
}

/// Reads the text layout described at [`ratelimit_headers`].
fn answer(data: &[u8]) -> (StatusCode, HeaderMap, &[u8]) {
    let (line, mut rest) = super::first_line(data);
    let status = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let mut headers = HeaderMap::new();
    while !rest.is_empty() {
        let (line, after) = super::first_line(rest);
        rest = after;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.trim_ascii()), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    (status, headers, rest)
}
