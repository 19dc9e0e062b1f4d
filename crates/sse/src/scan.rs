//! Cheap byte-level probes into JSON text, so that most stream chunks never
//! need a real JSON parse.
//!
//! The probes rely on one property of JSON: inside a string every `"` is
//! escaped as `\"`. So a literal `"usage"` preceded (ignoring whitespace) by
//! `{` or `,` and followed by `:` can only be an object key — never text from
//! the model's answer, which the caller controls and could otherwise use to
//! spoof usage.

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
    let mut from = 0;
    while let Some(off) = find(payload.get(from..)?, quoted_key) {
        let start = from + off;
        from = start + 1;
        let before = payload.get(..start).unwrap_or_default();
        let opens_key = before.iter().rev().find(|&&b| !is_ws(b)).is_some_and(|&b| b == b'{' || b == b',');
        if !opens_key {
            continue;
        }
        let after = trim_start(payload.get(start + quoted_key.len()..).unwrap_or_default());
        if let Some((b':', value)) = after.split_first() {
            return Some(trim_start(value));
        }
    }
    None
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
