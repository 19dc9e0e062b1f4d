//! Which headers cross the gateway, and how long an upstream may ask to wait.

use http::header::{self, HeaderName};
use http::HeaderMap;
use std::time::Duration;

/// Connection-level headers (RFC 9110 §7.6.1) that describe one hop, not the message.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Caller headers that never go upstream: hop-by-hop ones (including any the
/// caller listed in `Connection`), Host (the upstream's is derived from its
/// URL), every header that can carry a credential (the caller's gateway
/// token must never reach the upstream; the key replaces it), the caller's
/// account headers unless `forward_account` (they belong to the key), and
/// Accept-Encoding (keypool reads usage from the answer, so it asks for it
/// uncompressed).
pub(super) fn is_dropped_request_header(name: &HeaderName, listed: &Listed<'_>, forward_account: bool) -> bool {
    is_hop_by_hop(name)
        || listed.lists(name)
        || matches!(*name, header::HOST | header::ACCEPT_ENCODING | header::CONTENT_LENGTH)
        || may_carry_credential(name)
        || (!forward_account && is_account_header(name))
}

/// `OpenAI-Organization` and `OpenAI-Project`: which account a request is
/// billed to, which OpenAI checks against the key (401
/// `mismatched_organization` when they disagree).
pub fn is_account_header(name: &HeaderName) -> bool {
    matches!(name.as_str(), "openai-organization" | "openai-project")
}

/// Whether a header can carry a secret: the standard ones (`Authorization`,
/// `Proxy-Authorization`, `Cookie`), the key headers providers read (Azure's
/// `api-key`, Anthropic's `x-api-key`, Google's `x-goog-api-key`), and any
/// other whose name says it holds a key, token, secret or session
/// (`x-auth-token`, `x-access-token`, `x-amz-security-token`, ...). Names are
/// matched by their parts, so `idempotency-key`, which the official SDKs
/// send, still passes.
pub fn may_carry_credential(name: &HeaderName) -> bool {
    // The standard headers every SDK sends: told by one comparison each
    // (standard names compare as an enum), not by the scan of parts below.
    if matches!(
        *name,
        header::CONTENT_TYPE
            | header::CONTENT_LENGTH
            | header::ACCEPT
            | header::ACCEPT_ENCODING
            | header::ACCEPT_LANGUAGE
            | header::USER_AGENT
            | header::HOST
            | header::CACHE_CONTROL
    ) {
        return false;
    }
    let name = name.as_str();
    if matches!(name, "authorization" | "proxy-authorization" | "cookie" | "cookie2") {
        return true;
    }
    // One pass over the name's parts into a set of flags, without
    // allocating: every caller header of every request comes through here.
    const SECRET: u16 = 1; // auth, authorization, token, secret, password, credential(s), session, apikey, cookie
    const KEY: u16 = 2;
    const KEY_KIND: u16 = 4; // api, access, private, subscription (a key of that kind)
    const SECRET_WORD: u16 = 8; // "secret" also makes a "key" secret
    let mut seen = 0u16;
    for part in name.split(['-', '_']) {
        seen |= match part {
            "secret" => SECRET | SECRET_WORD,
            "auth" | "authorization" | "token" | "password" | "credential" | "credentials" | "session" | "apikey"
            | "cookie" => SECRET,
            "key" => KEY,
            "api" | "access" | "private" | "subscription" => KEY_KIND,
            _ => 0,
        };
    }
    seen & SECRET != 0 || (seen & KEY != 0 && seen & (KEY_KIND | SECRET_WORD) != 0) || name.ends_with("-api-key")
}

/// The names a message's `Connection` header lists (hop-by-hop for that
/// message, RFC 9110 §7.6.1), looked up once per message rather than once
/// per header: most messages have none.
pub struct Listed<'a>(Option<http::header::GetAll<'a, http::HeaderValue>>);

impl<'a> Listed<'a> {
    pub fn of(all: &'a HeaderMap) -> Listed<'a> {
        let connection = all.get_all(header::CONNECTION);
        Listed(connection.iter().next().is_some().then_some(connection))
    }

    fn lists(&self, name: &HeaderName) -> bool {
        self.0.as_ref().is_some_and(|connection| {
            connection
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        })
    }
}

/// The upstream's answer headers as the caller should see them.
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let listed = Listed::of(from);
    for (name, value) in from {
        if !is_hop_by_hop(name) && !listed.lists(name) && *name != header::CONTENT_LENGTH {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The longest wait any upstream is trusted to ask for, in every form (a
/// header, a date, a message; a daily limit's reset is the longest real one).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// A number of seconds from an upstream header, clamped to `0..=MAX_WAIT`;
/// None for NaN (a header is input: it must not be able to panic us).
pub(super) fn seconds(v: f64) -> Option<Duration> {
    if v.is_nan() {
        return None;
    }
    Some(Duration::try_from_secs_f64(v.clamp(0.0, MAX_WAIT.as_secs_f64())).unwrap_or(MAX_WAIT))
}

/// Parses Go-style durations as OpenAI sends them: `1s`, `859ms`, `6m0s`, `1h2m3.5s`,
/// clamped to a day.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}
