//! The `model` field of a `multipart/form-data` upload (audio
//! transcriptions and translations, image edits), read from the form's
//! first bytes so that the request is routed by its model while the body
//! still streams through untouched.
//!
//! Written by hand: the multipart crates (multer, and axum's extractor over
//! it) consume the body to hand out its parts, while keypool forwards the
//! bytes as they came and needs one small field from the start of the form.
//! The form's grammar is RFC 7578 over RFC 2046 §5.1.1: parts separated by
//! `--boundary` lines, each with its own headers, the last closed by
//! `--boundary--`.

use memchr::memmem;

/// How much of a form is read, at most, to find its model (held while the
/// request waits for a key). The official Python SDK sends plain fields
/// before files, so the model comes first; a form that puts a larger file
/// before it is routed without a model.
pub const PEEK_BYTES: usize = 64 * 1024;

/// The form is searched again only once this much more has arrived (or it
/// ended): a form sent a byte at a time costs a few dozen searches, not one
/// per byte.
pub const SCAN_EVERY: usize = 4 * 1024;

/// Longest model name taken from a form.
const MAX_MODEL: usize = 256;

/// What the first bytes of a form say about its model.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The `model` field's value.
    Model(String),
    /// The form has no usable `model` field (ended, or malformed).
    Absent,
    /// Not decided within these bytes.
    NeedMore,
}

/// The boundary of a `multipart/form-data` content type (its `boundary`
/// parameter, quoted or not); None for any other type.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        // RFC 2046: 1 to 70 characters.
        (!value.is_empty() && value.len() <= 70).then_some(value)
    })
}

/// Looks for the `model` field in `head`, the first bytes of a form whose
/// boundary is `boundary`.
pub fn model_field(head: &[u8], boundary: &str) -> Found {
    let delimiter = format!("--{boundary}");
    let next_part = format!("\r\n--{boundary}");
    // The first delimiter opens the form or a line (a preamble may come first).
    let Some(first) =
        memmem::find_iter(head, delimiter.as_bytes()).find(|&at| at == 0 || head[..at].ends_with(b"\r\n"))
    else {
        return if head.len() >= PEEK_BYTES { Found::Absent } else { Found::NeedMore };
    };
    let mut at = first + delimiter.len();
    loop {
        let rest = &head[at..];
        if rest.len() < 2 {
            return Found::NeedMore;
        }
        if rest.starts_with(b"--") {
            return Found::Absent;
        }
        let Some(headers_end) = memmem::find(rest, b"\r\n\r\n") else { return Found::NeedMore };
        let headers = &rest[..headers_end];
        let body_start = headers_end + 4;
        let is_model = field_name(headers).is_some_and(|(name, file)| name == "model" && !file);
        let Some(body_len) = memmem::find(&rest[body_start..], next_part.as_bytes()) else {
            return Found::NeedMore;
        };
        if is_model {
            let value = &rest[body_start..body_start + body_len];
            return match std::str::from_utf8(value).map(str::trim) {
                Ok(v) if !v.is_empty() && v.len() <= MAX_MODEL => Found::Model(v.to_owned()),
                _ => Found::Absent,
            };
        }
        at += body_start + body_len + next_part.len();
    }
}

/// The `name` parameter of a part's `Content-Disposition: form-data`, and
/// whether it names a file (`filename`).
fn field_name(headers: &[u8]) -> Option<(String, bool)> {
    let text = std::str::from_utf8(headers).ok()?;
    let line = text
        .split("\r\n")
        .find(|l| l.split_once(':').is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition")))?;
    let (_, value) = line.split_once(':')?;
    let params = || value.split(';').skip(1).filter_map(|p| p.split_once('='));
    let file = params().any(|(name, _)| name.trim().eq_ignore_ascii_case("filename") || name.trim() == "filename*");
    let name = params().find_map(|(name, value)| {
        if !name.trim().eq_ignore_ascii_case("name") {
            return None;
        }
        let value = value.trim();
        Some(value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value).to_owned())
    })?;
    Some((name, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file, body) in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/mpeg\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(format!("content-disposition: form-data; name={name}\r\n\r\n").as_bytes()),
            }
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Some("XyZ"));
        assert_eq!(boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b\""), Some("a b"));
        assert_eq!(boundary("application/json; boundary=x"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))), None);
    }

    #[test]
    fn the_model_is_found_before_or_after_a_file() {
        let first = form(&[("model", None, b"whisper-1"), ("file", Some("a.mp3"), b"\x00\x01--XyZ-ish")]);
        assert_eq!(model_field(&first, "XyZ"), Found::Model("whisper-1".into()));
        let after = form(&[
            ("file", Some("a.mp3"), &[7u8; 5000]),
            ("language", None, b"en"),
            ("model", None, b" gpt-4o-transcribe "),
        ]);
        assert_eq!(model_field(&after, "XyZ"), Found::Model("gpt-4o-transcribe".into()));
        // A file named "model" is not the field.
        let named = form(&[("model", Some("model.bin"), b"weights")]);
        assert_eq!(model_field(&named, "XyZ"), Found::Absent);
        // "filename" elsewhere in the part's headers does not make it a file.
        let typed = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; x-filename=1\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
        assert_eq!(model_field(typed, "XyZ"), Found::Model("whisper-1".into()));
        // A delimiter inside a preamble line is not the form's first.
        let preamble =
            b"junk --XyZ\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nm1\r\n--XyZ--\r\n";
        assert_eq!(model_field(preamble, "XyZ"), Found::Model("m1".into()));
        assert_eq!(model_field(&form(&[("prompt", None, b"hi")]), "XyZ"), Found::Absent);
    }

    #[test]
    fn a_form_cut_short_asks_for_more_and_garbage_never_panics() {
        let whole = form(&[("file", Some("a.mp3"), &[1u8; 300]), ("model", None, b"whisper-1")]);
        for cut in 0..whole.len() - 12 {
            let found = model_field(&whole[..cut], "XyZ");
            assert!(matches!(found, Found::NeedMore | Found::Model(_)), "cut at {cut}: {found:?}");
            if let Found::Model(m) = found {
                assert_eq!(m, "whisper-1", "cut at {cut}");
            }
        }
        for junk in
            [&b"--XyZ"[..], b"--XyZ\r\n\r\n", b"--XyZ\r\nname=\"model\"\r\n\r\n\xff\xfe\r\n--XyZ", b"\r\n\r\n--"]
        {
            let _ = model_field(junk, "XyZ");
        }
        let too_long = form(&[("model", None, "m".repeat(300).as_bytes())]);
        assert_eq!(model_field(&too_long, "XyZ"), Found::Absent);
    }
}
