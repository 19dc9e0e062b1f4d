//! Keys as people paste them: one a line or several separated by commas or
//! spaces, in quotes or not, from a file saved on Windows (CRLF) or with a
//! UTF-8 byte-order mark.

/// Keys found in pasted text, and the pieces that cannot be keys.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pasted {
    /// (line number from 1, key), in order.
    pub keys: Vec<(usize, String)>,
    /// (line number, the piece masked, why it is no key).
    pub invalid: Vec<(usize, String, &'static str)>,
}

/// Splits `text` into keys. Blank lines and lines starting with `#` are skipped.
pub fn parse(text: &str) -> Pasted {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Pasted::default();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        for piece in line.split(|c: char| c == ',' || c == ';' || c.is_whitespace()) {
            let key = piece.trim_matches(|c| matches!(c, '"' | '\'' | '`'));
            if key.is_empty() {
                continue;
            }
            match check_key(key) {
                Ok(()) => out.keys.push((n + 1, key.to_owned())),
                Err(why) => out.invalid.push((n + 1, crate::config::mask_key(key), why)),
            }
        }
    }
    out
}

/// A key is anything non-empty that can be sent in an `Authorization`
/// header as one token: local servers accept keys such as `EMPTY` (vLLM) or
/// `ollama`, so no provider's format is required.
pub fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains spaces or characters that cannot be sent in a header");
    }
    Ok(())
}

/// Whether `key` looks like a hosted provider's key (OpenAI `sk-…`, Groq
/// `gsk_…`, Google `AIza…`, xAI `xai-…`, and others are long and random);
/// short words are what local servers take, or a paste gone wrong.
pub fn looks_like_provider_key(key: &str) -> bool {
    const PREFIXES: [&str; 9] = ["sk-", "sk_", "gsk_", "AIza", "xai-", "pplx-", "hf_", "nvapi-", "r8_"];
    (PREFIXES.iter().any(|p| key.starts_with(p)) && key.len() >= 20) || key.len() >= 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_people_paste() {
        let text =
            "\u{feff}sk-aaaaaaaaaaaaaaaaaaaaaa\r\n\"sk-bbbbbbbbbbbbbbbbbbbb\", 'sk-cccccccccccccccccc'\r\n\r\n# note\n\
                    EMPTY ollama\tsk-dddddddddddddddddddd\nsk-\u{e9}eeeeeeeeeeeeeeeeee\n";
        let p = parse(text);
        let keys: Vec<_> = p.keys.iter().map(|(n, k)| (*n, k.as_str())).collect();
        assert_eq!(
            keys,
            [
                (1, "sk-aaaaaaaaaaaaaaaaaaaaaa"),
                (2, "sk-bbbbbbbbbbbbbbbbbbbb"),
                (2, "sk-cccccccccccccccccc"),
                (5, "EMPTY"),
                (5, "ollama"),
                (5, "sk-dddddddddddddddddddd"),
            ]
        );
        assert_eq!(p.invalid.len(), 1);
        assert_eq!(p.invalid[0].0, 6);
    }

    #[test]
    fn local_server_keys_are_accepted_but_do_not_look_like_a_providers() {
        assert!(check_key("EMPTY").is_ok() && check_key("ollama").is_ok());
        assert!(!looks_like_provider_key("EMPTY"));
        assert!(looks_like_provider_key("sk-proj-abcdefghijklmnopqrstu"));
    }
}
