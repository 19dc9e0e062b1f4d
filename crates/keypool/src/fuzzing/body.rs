//! A caller's request body: what inspection reads from it (the token
//! estimate, a form's model) and the edits the gateway makes to it.

use serde_json::Value;

use crate::server::form::{boundary, model_field, Found, PEEK_BYTES};
use crate::server::inspect::{with_include_usage, with_model};
use crate::tokens::shape::{shape_of, ShapeError};
use crate::tokens::{Counter, Encoding, PromptShape};

/// A request written as text: the first line is the endpoint under `/v1/`
/// (`chat/completions`), or a `multipart/form-data; boundary=...` content
/// type for a form; the rest is the body.
///
/// Checks, for a JSON body: the estimate reads the same fields whatever
/// counts the text (the model's tokenizer, the rough rule, or the stand-in
/// used while the tokenizer is built), the stand-in never counts below the
/// tokenizer, the sure part never exceeds the whole, only valid JSON is
/// accepted; the tokenizer's count of the text never falls below
/// tiktoken's; and the gateway's edits (`stream_options.include_usage`, an
/// alias's model) give valid JSON that differs from the original only where
/// they meant to. For a form: a decision on the model made from the form's
/// first bytes is the one the whole form gives (the gateway decides early).
pub fn request_body(data: &[u8]) {
    Encoding::O200k.load();
    Encoding::Cl100k.load();
    let (line, body) = super::first_line(data);
    let line = String::from_utf8_lossy(line);
    match boundary(&line) {
        Some(b) => form(body, b),
        None => json(body, &line),
    }
    count(&String::from_utf8_lossy(body));
}

fn json(body: &[u8], endpoint: &str) {
    let exact = shape_of(body, endpoint, |m| Counter::Exact(Encoding::for_model(m.unwrap_or_default())));
    let rough = shape_of(body, endpoint, |_| Counter::Rough);
    let unready = shape_of(body, endpoint, |_| Counter::Unready);
    match (exact, rough, unready) {
        (Ok(exact), Ok(rough), Ok(unready)) => {
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
                "a body that is not JSON was accepted"
            );
            assert_eq!(exact.sure_tokens, exact.prompt_tokens, "a built tokenizer's count is all sure");
            assert!(unready.prompt_tokens >= exact.prompt_tokens, "the stand-in counted below the tokenizer");
            for shape in [&exact, &rough, &unready] {
                check_shape(shape);
                assert_eq!(without_counts(shape), without_counts(&exact), "fields read differ by counter");
            }
        }
        (Err(a), Err(b), Err(c)) => {
            assert!(a == b && b == c, "the counter changed the error: {a:?} / {b:?} / {c:?}");
            if let ShapeError::InvalidParam { .. } = a {
                assert!(serde_json::from_slice::<Value>(body).is_ok(), "an invalid parameter in invalid JSON");
            }
        }
        (a, b, c) => panic!("the counter changed whether the body is accepted: {a:?} / {b:?} / {c:?}"),
    }
    edits(body);
}

/// What holds for any estimate.
fn check_shape(shape: &PromptShape) {
    assert!(shape.sure_tokens <= shape.prompt_tokens, "more sure tokens than tokens");
    assert!(shape.framing_tokens <= shape.sure_tokens, "framing is counted exactly");
    assert!(shape.prompt_charge() >= shape.prompt_tokens, "the charge is below the count");
    let budget = shape.completion_budget(4096);
    if shape.input_only {
        assert_eq!(budget, 0, "an input-only endpoint reserved completion tokens");
    }
    assert_eq!(shape.request_tokens(4096), shape.prompt_charge() + budget);
}

/// The shape with the counts that depend on the counter zeroed.
fn without_counts(shape: &PromptShape) -> PromptShape {
    PromptShape { prompt_tokens: 0, sure_tokens: 0, ..shape.clone() }
}

/// `with_include_usage` and `with_model`: valid JSON objects, equal to the
/// original but for the field they set.
fn edits(body: &[u8]) {
    let original = serde_json::from_slice::<Value>(body).ok();
    let object = original.as_ref().and_then(Value::as_object);
    match with_include_usage(body) {
        Some(edited) => {
            let Some(object) = object else { panic!("include_usage added to a body that is not an object") };
            let edited: Value = match serde_json::from_slice(&edited) {
                Ok(v) => v,
                Err(e) => panic!("include_usage made invalid JSON: {e}"),
            };
            let mut want = object.clone();
            let mut options = want.get("stream_options").and_then(Value::as_object).cloned().unwrap_or_default();
            options.insert("include_usage".into(), Value::Bool(true));
            want.insert("stream_options".into(), Value::Object(options));
            assert_eq!(edited, Value::Object(want), "include_usage changed more than stream_options");
        }
        None => assert!(
            object.is_none_or(|o| o.get("stream_options").is_some_and(|v| !v.is_object())),
            "include_usage not added to an object"
        ),
    }
    const ALIAS: &str = "fuzz-target-model";
    match with_model(body, ALIAS) {
        Some(edited) => {
            let Some(object) = object else { panic!("a model set in a body that is not an object") };
            let edited: Value = match serde_json::from_slice(&edited) {
                Ok(v) => v,
                Err(e) => panic!("with_model made invalid JSON: {e}"),
            };
            let mut want = object.clone();
            want.insert("model".into(), Value::String(ALIAS.into()));
            assert_eq!(edited, Value::Object(want), "with_model changed more than the model");
        }
        None => assert!(object.is_none(), "the model not set in an object"),
    }
}

/// A form's model: a decision taken on a prefix (anything but `NeedMore`)
/// is the one the whole form gives.
fn form(body: &[u8], boundary: &str) {
    let whole = model_field(body, boundary);
    if let Found::Model(m) = &whole {
        assert!(!m.is_empty() && m.len() <= 256 && m.trim() == m, "model {m:?} not trimmed or out of bounds");
    }
    let step = (body.len() / 64).max(1);
    for cut in (0..body.len()).step_by(step) {
        let Some(prefix) = body.get(..cut) else { continue };
        if prefix.len() >= PEEK_BYTES {
            break;
        }
        match model_field(prefix, boundary) {
            Found::NeedMore => {}
            early => assert_eq!(early, whole, "the first {cut} bytes decided otherwise than the whole form"),
        }
    }
}

/// The tokenizers never count below tiktoken (the reservation must cover
/// what the upstream charges), and never above one token per byte. Longer
/// texts are left out: tiktoken panics when its pattern's backtracking
/// limit is hit (ours counts on, by bytes), and fuzz inputs stay short.
fn count(text: &str) {
    if text.len() > 4096 {
        return;
    }
    let theirs = [
        (Encoding::O200k, tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len() as u64),
        (Encoding::Cl100k, tiktoken_rs::cl100k_base_singleton().encode_ordinary(text).len() as u64),
    ];
    for (encoding, theirs) in theirs {
        let ours = encoding.count(text);
        assert!(ours >= theirs, "{encoding:?} counted {ours} tokens, tiktoken {theirs}");
        assert!(ours <= text.len() as u64, "{encoding:?} counted {ours} tokens in {} bytes", text.len());
    }
}
