//! Cheap byte-level probes into JSON text, so that most stream chunks never
//! need a real JSON parse.
//!
//! The probes rely on one property of JSON: inside a string every `"` is
//! escaped as `\"`. So a literal `"usage"` preceded (ignoring whitespace) by
//! `{` or `,` and followed by `:` can only be an object key — never text from
//! the model's answer, which the caller controls and could otherwise use to
//! spoof usage.

use crate::usage::TextCount;

/// JSON insignificant whitespace.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `bytes` without leading JSON whitespace.
pub(crate) fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_ws(b)).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// `bytes` without leading or trailing JSON whitespace.
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let end = bytes.iter().rposition(|&b| !is_ws(b)).map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

/// Offset of the first occurrence of `needle` in `haystack`.
///
/// Payloads are a few hundred bytes and needles under ten, so a plain scan
/// anchored on the first byte is plenty and needs no extra dependency.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(off) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + off;
        let tail = haystack.get(at + 1..)?;
        if tail.starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The text starting at the value of object key `quoted_key` (given with its
/// quotes, e.g. `"usage"`), leading whitespace removed, or `None` when no
/// such key appears.
///
/// The key may be at any nesting depth; OpenAI chunks only use these names at
/// the top level, and a deeper match merely costs a parse that finds nothing.
pub(crate) fn key_value<'a>(payload: &'a [u8], quoted_key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    each_value(payload, quoted_key, |v| {
        found = Some(v);
        true
    });
    found
}

/// Calls `stop` with the value text of each occurrence of object key
/// `quoted_key`, in order, until it returns true; returns whether it did.
fn each_value<'a>(payload: &'a [u8], quoted_key: &[u8], mut stop: impl FnMut(&'a [u8]) -> bool) -> bool {
    let mut from = 0;
    while let Some(off) = payload.get(from..).and_then(|rest| find(rest, quoted_key)) {
        let start = from + off;
        from = start + 1;
        let before = payload.get(..start).unwrap_or_default();
        let opens_key = before.iter().rev().find(|&&b| !is_ws(b)).is_some_and(|&b| b == b'{' || b == b',');
        if !opens_key {
            continue;
        }
        let after = trim_start(payload.get(start + quoted_key.len()..).unwrap_or_default());
        if let Some((b':', value)) = after.split_first() {
            if stop(trim_start(value)) {
                return true;
            }
        }
    }
    false
}

/// Whether some occurrence of object key `quoted_key` has a string value
/// for which `pred` holds; `pred` sees the raw string body (between the
/// quotes, escapes not decoded).
pub(crate) fn has_string_value(payload: &[u8], quoted_key: &[u8], mut pred: impl FnMut(&[u8]) -> bool) -> bool {
    each_value(payload, quoted_key, |v| string_body(v).is_some_and(&mut pred))
}

/// The raw body of the JSON string that `value` starts with (between its
/// quotes, escapes left as they are), or `None` if it is not a whole string.
fn string_body(value: &[u8]) -> Option<&[u8]> {
    let rest = value.strip_prefix(b"\"")?;
    let mut escaped = false;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return rest.get(..i),
            _ => {}
        }
    }
    None
}

/// Adds the characters of every string value whose object key is one of
/// `keys` (given without quotes) to `count`, in one pass over `payload`.
///
/// An escape (`\n`, `\u00e9`) counts as one character; a UTF-8 sequence as
/// one non-ASCII character. Nothing is decoded or allocated. Text the model
/// wrote can never look like a key here, since its quotes are escaped.
pub(crate) fn count_text(payload: &[u8], keys: &[&[u8]], count: &mut TextCount) {
    // The last string seen was a key from `keys`, and its `:` followed.
    let mut wanted_key = false;
    let mut after_colon = false;
    let mut i = 0;
    while let Some(&b) = payload.get(i) {
        match b {
            b'"' => {
                let body = payload.get(i..).and_then(string_body).unwrap_or_default();
                let end = i + body.len() + 2;
                if wanted_key && after_colon {
                    add_chars(body, count);
                    wanted_key = false;
                    after_colon = false;
                } else {
                    let next = trim_start(payload.get(end..).unwrap_or_default()).first();
                    wanted_key = next == Some(&b':') && keys.contains(&body);
                    after_colon = false;
                }
                i = end;
                continue;
            }
            b':' if wanted_key => after_colon = true,
            _ if is_ws(b) => {}
            _ => {
                wanted_key = false;
                after_colon = false;
            }
        }
        i += 1;
    }
}

/// Counts the characters of a raw JSON string body.
fn add_chars(body: &[u8], count: &mut TextCount) {
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if b == b'\\' {
            // `\uXXXX` is one character, any other escape two bytes for one.
            let len = if body.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            count.ascii += 1;
            i += len;
        } else if b < 0x80 {
            count.ascii += 1;
            i += 1;
        } else {
            if b & 0xC0 != 0x80 {
                count.other += 1;
            }
            i += 1;
        }
    }
}

/// Whether key `quoted_key` is present with an object (not `null`) value.
pub(crate) fn has_object(payload: &[u8], quoted_key: &[u8]) -> bool {
    key_value(payload, quoted_key).is_some_and(|v| v.first() == Some(&b'{'))
}

/// What a `"choices"` array looks like, judged from its first element only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Choices {
    /// No `"choices"` key, or not an array.
    Absent,
    /// `"choices": []` — the shape of the usage-only chunk.
    Empty,
    /// `"choices": [{...` — a chunk that carries a completion delta.
    NonEmpty,
}

/// Classifies the `"choices"` value of a chunk without parsing it.
pub(crate) fn choices(payload: &[u8]) -> Choices {
    let Some(value) = key_value(payload, b"\"choices\"") else {
        return Choices::Absent;
    };
    let Some((b'[', inner)) = value.split_first() else {
        return Choices::Absent;
    };
    match trim_start(inner).first() {
        Some(b']') => Choices::Empty,
        Some(b'{') => Choices::NonEmpty,
        _ => Choices::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_finds_keys_with_whitespace() {
        assert_eq!(key_value(br#"{"usage":{"a":1}}"#, b"\"usage\""), Some(&br#"{"a":1}}"#[..]));
        assert_eq!(key_value(br#"{ "x":1 , "usage" :  null}"#, b"\"usage\""), Some(&b"null}"[..]));
        assert_eq!(key_value(br#"{"x":1}"#, b"\"usage\""), None);
    }

    #[test]
    fn key_value_ignores_text_inside_strings() {
        // Model output quoting the key: escaped quotes never match.
        let p = br#"{"choices":[{"delta":{"content":"{\"usage\":{\"total_tokens\":9}}"}}],"usage":null}"#;
        assert_eq!(key_value(p, b"\"usage\""), Some(&b"null}"[..]));
        assert!(!has_object(p, b"\"usage\""));
        // A string value that is exactly "usage" is not a key.
        assert_eq!(key_value(br#"{"a":"usage","b":[ "usage" ]}"#, b"\"usage\""), None);
    }

    #[test]
    fn choices_shapes() {
        assert_eq!(choices(br#"{"choices":[{"index":0}]}"#), Choices::NonEmpty);
        assert_eq!(choices(br#"{"choices": [ ]}"#), Choices::Empty);
        assert_eq!(choices(br#"{"choices":null}"#), Choices::Absent);
        assert_eq!(choices(br#"{"id":"x"}"#), Choices::Absent);
    }

    #[test]
    fn trimming() {
        assert_eq!(trim(b" \t[DONE] \r"), b"[DONE]");
        assert_eq!(trim(b"   "), b"");
        assert_eq!(trim_start(b""), b"");
    }
}
