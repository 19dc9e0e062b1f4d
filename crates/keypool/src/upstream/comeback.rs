//! When the upstream says to come back: every form the HTTP spec and the
//! providers use. `Retry-After` as seconds (fractional too) or as an
//! HTTP-date (RFC 9110 §10.2.3, with the obsolete RFC 850 and asctime forms
//! a recipient must also accept, §5.6.7); `retry-after-ms` (Azure, OpenAI's
//! SDKs); `x-ratelimit-reset-*` as Go durations (OpenAI, Groq), seconds, or
//! Unix times in seconds or milliseconds (OpenRouter); the IETF draft's
//! `ratelimit-reset` (seconds); and messages saying "try again in 1m30s",
//! "20.5s", "120ms" or "6 seconds" (OpenAI, Azure), or Google's `retryDelay`.

use http::HeaderMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::headers::{parse_go_duration, seconds, MAX_WAIT};

/// The wait an explicit retry header asks for (`retry-after-ms`, then
/// `Retry-After` in seconds or as a date); None when neither is readable.
pub fn retry_header(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return seconds(ms / 1000.0);
    }
    let after = text("retry-after")?;
    match after.parse::<f64>() {
        Ok(s) => seconds(s),
        Err(_) => until_date(after, SystemTime::now()),
    }
}

/// A `x-ratelimit-reset*` or `ratelimit-reset` value: a Go duration, a
/// number of seconds, or (when it can only be one) a Unix time in seconds
/// or milliseconds.
pub fn reset_value(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Some(d) = parse_go_duration(value) {
        return Some(d);
    }
    let n: f64 = value.parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    if n > 1e12 {
        seconds(n / 1000.0 - now)
    } else if n > 1e9 {
        seconds(n - now)
    } else {
        seconds(n)
    }
}

/// The generic reset headers some providers send instead of OpenAI's pair.
pub fn generic_reset(headers: &HeaderMap) -> Option<Duration> {
    ["x-ratelimit-reset", "ratelimit-reset"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()).and_then(reset_value))
}

/// "Please try again in 20s", "Try again in 6 seconds", "retry in 23.6s",
/// "retry after 120ms", or a `"retryDelay": "23s"` anywhere in the body.
pub fn wait_in_text(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    for marker in ["try again in ", "retry in ", "retry after ", "\"retrydelay\":\"", "\"retrydelay\": \""] {
        let Some(at) = lower.find(marker) else { continue };
        if let Some(d) = duration_words(&lower[at + marker.len()..]) {
            return Some(d);
        }
    }
    None
}

/// A duration at the start of `s`: a Go duration (`1m30s`, `20.5s`, `120ms`)
/// or a number and a unit word (`6 seconds`, `500 milliseconds`, `2 minutes`).
fn duration_words(s: &str) -> Option<Duration> {
    let mut words = s.split(|c: char| c.is_whitespace() || c == ',' || c == '"' || c == ')');
    let first = words.next()?.trim_end_matches('.');
    if let Some(d) = parse_go_duration(first) {
        return Some(d);
    }
    let n: f64 = first.parse().ok()?;
    let unit = words.next().unwrap_or("seconds").trim_end_matches('.');
    let scale = match unit {
        u if u.starts_with("ms") || u.starts_with("milli") => 1e-3,
        u if u.starts_with("min") || u == "m" => 60.0,
        u if u.starts_with("hour") || u == "h" => 3600.0,
        u if u.starts_with('s') => 1.0,
        _ => return None,
    };
    seconds(n * scale)
}

/// The time from `now` until an HTTP-date, clamped to `0..=MAX_WAIT` like
/// every other come-back form (zero for a date in the past).
pub fn until_date(text: &str, now: SystemTime) -> Option<Duration> {
    let at = parse_http_date(text)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)).min(MAX_WAIT))
}

/// Seconds since the Unix epoch of an HTTP-date in any of its three forms
/// (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94
/// 08:49:37 GMT`, `Sun Nov  6 08:49:37 1994`. The `httpdate` crate (hyper's
/// own) parses them; it takes years 1970 to 9999 only (and a weekday that
/// matches the date), so no upstream value
/// can overflow the arithmetic after it.
fn parse_http_date(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs())
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
    fn http_dates_in_all_three_forms() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(parse_http_date("tomorrow"), None);
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(until_date("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(7)));
        assert_eq!(until_date("Sun, 06 Nov 1994 08:49:30 GMT", now), Some(Duration::ZERO), "past dates: now");
    }

    #[test]
    fn retry_after_as_seconds_fractions_milliseconds_and_dates() {
        assert_eq!(retry_header(&headers(&[("retry-after", "7")])), Some(Duration::from_secs(7)));
        assert_eq!(retry_header(&headers(&[("retry-after", "0.25")])), Some(Duration::from_millis(250)));
        assert_eq!(retry_header(&headers(&[("retry-after-ms", "1500.5")])), Some(Duration::from_micros(1_500_500)));
        let in_30s = httpdate_in(30);
        let d = retry_header(&headers(&[("retry-after", in_30s.as_str())])).unwrap();
        assert!(d >= Duration::from_secs(28) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(retry_header(&headers(&[("retry-after", "soon")])), None);
    }

    #[test]
    fn reset_headers_as_durations_seconds_and_unix_times() {
        assert_eq!(reset_value("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(reset_value("12"), Some(Duration::from_secs(12)));
        assert_eq!(reset_value("2.5"), Some(Duration::from_millis(2500)));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let d = reset_value(&(now + 40).to_string()).unwrap();
        assert!(d > Duration::from_secs(38) && d <= Duration::from_secs(40), "{d:?}");
        let d = reset_value(&((now + 40) * 1000).to_string()).unwrap();
        assert!(d > Duration::from_secs(38) && d <= Duration::from_secs(41), "{d:?}");
        assert_eq!(generic_reset(&headers(&[("ratelimit-reset", "9")])), Some(Duration::from_secs(9)));
    }

    #[test]
    fn waits_written_in_messages() {
        let cases = [
            ("Rate limit reached ... Please try again in 1m30s. Visit", 90_000),
            ("Please try again in 20.5s.", 20_500),
            ("Please try again in 120ms.", 120),
            ("Rate limit is exceeded. Try again in 6 seconds.", 6_000),
            ("Please retry after 2 minutes", 120_000),
            (r#"{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"23s"}]}"#, 23_000),
        ];
        for (text, ms) in cases {
            assert_eq!(wait_in_text(text), Some(Duration::from_millis(ms)), "{text}");
        }
        assert_eq!(wait_in_text("You exceeded your current quota"), None);
    }

    #[test]
    fn hostile_dates_are_refused_or_clamped_never_a_panic() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let far = until_date("Fri, 31 Dec 9999 23:59:59 GMT", now);
        assert_eq!(far, Some(MAX_WAIT), "year 9999: clamped to the longest wait");
        let huge = format!("Sun, 06 Nov {} 08:49:37 GMT", "5".repeat(14));
        assert_eq!(until_date(&huge, now), None, "a 14-digit year is no date");
        assert_eq!(until_date("Sun, 06 Nov 10000 08:49:37 GMT", now), None);
        assert_eq!(until_date("Sun, 06 Nov 1969 08:49:37 GMT", now), None);
        assert_eq!(until_date("Sun, 06 Nov 18446744073709551615 08:49:37 GMT", now), None);
        assert_eq!(until_date("Sun, 99 Nov 2030 08:49:37 GMT", now), None, "garbage");
        assert_eq!(until_date("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO), "past: now");
        let h = headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]);
        assert_eq!(retry_header(&h), Some(MAX_WAIT));
        for digits in ["5e13", "50000000000000", "1e400"] {
            assert_eq!(retry_header(&headers(&[("retry-after", digits)])), Some(MAX_WAIT), "{digits}");
            assert_eq!(reset_value(digits), Some(MAX_WAIT), "{digits}");
        }
        assert_eq!(retry_header(&headers(&[("retry-after", "-5")])), Some(Duration::ZERO));
    }

    /// An IMF-fixdate `secs` from now.
    fn httpdate_in(secs: u64) -> String {
        httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
    }
}
