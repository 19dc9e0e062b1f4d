//! Deterministic stand-ins for what a model would do: token estimates, answer text,
//! embedding vectors. Determinism lets tests assert exact usage numbers.

use serde_json::Value;

use crate::config::ChargeRule;

/// Answer used when the request sets no `max_tokens`, as OpenAI's legacy default.
pub const DEFAULT_MAX_TOKENS: u64 = 16;
const ANSWER: [&str; 5] = ["This", "is", "a", "simulated", "answer."];

/// ~4 characters per token, rounded up, at least 1: cheap and close enough for limits.
pub fn text_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

/// Characters of a chat message `content`: a string, or an array of parts with `text`.
fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => s.chars().count(),
                other => other.get("text").and_then(Value::as_str).map_or(0, |s| s.chars().count()),
            })
            .sum(),
        _ => 0,
    }
}

/// Characters of an `input`/`prompt`: a string or an array of strings. Token-id arrays
/// count one token (4 characters) per element.
fn input_chars(input: &Value) -> usize {
    match input {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.chars().count(),
                Value::Number(_) => 4,
                Value::Array(ids) => ids.len() * 4,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Estimated prompt tokens: chat messages cost their text plus 3 each for framing;
/// legacy prompts, embedding inputs and speech text cost their text.
pub fn prompt_tokens(body: &Value) -> u64 {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let chars: usize = messages.iter().map(|m| m.get("content").map_or(0, content_chars)).sum();
        return text_tokens(chars) + 3 * messages.len() as u64;
    }
    let input = body.get("prompt").or_else(|| body.get("input"));
    text_tokens(input.map_or(0, input_chars))
}

/// `max_completion_tokens` (new name), `max_tokens` or the Responses API's
/// `max_output_tokens`, else the default.
pub fn max_tokens(body: &Value) -> u64 {
    ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS)
}

/// `n`, at least 1.
pub fn choices(body: &Value) -> u64 {
    body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1)
}

/// [`request_cost_by`] under the default rule (the sum). Kept for handlers that do not
/// read [`crate::state::Shared::charge`]; new ones should.
#[allow(dead_code)]
pub fn request_cost(body: &Value) -> u64 {
    request_cost_by(body, ChargeRule::Sum)
}

/// What the limiter charges at admission, decided up front as OpenAI does: the prompt
/// estimate and the most the answer may use (`max_tokens` × `n`), summed or the larger.
pub fn request_cost_by(body: &Value, rule: ChargeRule) -> u64 {
    let (prompt, completion) = (prompt_tokens(body), max_tokens(body).saturating_mul(choices(body)));
    match rule {
        ChargeRule::Sum => prompt.saturating_add(completion),
        ChargeRule::Max => prompt.max(completion),
    }
}

/// The answer's words: one "token" each, at most 16 and at least 1.
pub fn answer_words(max_tokens: u64) -> Vec<&'static str> {
    let n = max_tokens.clamp(1, DEFAULT_MAX_TOKENS) as usize;
    ANSWER.iter().copied().cycle().take(n).collect()
}

/// 8 deterministic values in [-1, 1] derived from the text (FNV-1a hash), so equal inputs
/// embed equally and different inputs usually differ.
pub fn embedding(text: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..8u64)
        .map(|i| {
            let x = h.rotate_left((i * 8) as u32) & 0xffff;
            (x as f32 / 32767.5) - 1.0
        })
        .collect()
}

/// Standard base64 with padding. Written by hand because the workspace has no base64
/// crate and the official Python SDK asks for `encoding_format: "base64"` by default.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn token_estimates() {
        let chat = json!({"messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 10, "n": 2});
        assert_eq!(prompt_tokens(&chat), 3 + 3);
        assert_eq!(request_cost_by(&chat, ChargeRule::Sum), 6 + 20);
        let emb = json!({"input": ["abcde", "xyz"]});
        assert_eq!(prompt_tokens(&emb), 2);
        assert_eq!(request_cost_by(&json!({"messages": []}), ChargeRule::Sum), 1 + 16);
        assert_eq!(request_cost_by(&chat, ChargeRule::Max), 20);
        assert_eq!(request_cost_by(&json!({"input": "x", "max_output_tokens": 7}), ChargeRule::Sum), 1 + 7);
        assert_eq!(answer_words(3), vec!["This", "is", "a"]);
        assert_eq!(answer_words(100).len(), 16);
        assert_eq!(embedding("a"), embedding("a"));
        assert_ne!(embedding("a"), embedding("b"));
    }
}
