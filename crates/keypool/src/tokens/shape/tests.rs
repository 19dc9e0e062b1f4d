#![allow(clippy::unwrap_used)]
use super::*;
use crate::tokens::Encoding;

fn exact(model: Option<&str>) -> Counter {
    Counter::Exact(Encoding::for_model(model.unwrap_or_default()))
}

fn shape(body: &str, endpoint: &str) -> PromptShape {
    // Exact counts need both tokenizers built (requests never wait for them).
    Encoding::O200k.load();
    Encoding::Cl100k.load();
    shape_of(body.as_bytes(), endpoint, exact).unwrap()
}

fn invalid(body: &str) -> ShapeError {
    shape_of(body.as_bytes(), "chat/completions", |_| Counter::Rough).unwrap_err()
}

#[test]
fn reads_chat_shapes_and_rejects_bad_json() {
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello world"},
        {"role":"user","content":[{"type":"text","text":"hello world"},{"type":"image_url","image_url":{"url":"x","detail":"low"}}]}],
        "max_tokens":7,"n":2,"stream":true}"#;
    let s = shape(body, "chat/completions");
    // Two messages of 3 framing + 1 role + 2 text tokens, one low-detail image, 3 to prime the reply.
    assert_eq!(s.prompt_tokens, 2 * (3 + 1 + 2) + IMAGE_TOKENS_LOW + 3);
    assert_eq!(s.sure_tokens, s.prompt_tokens);
    assert_eq!(s.framing_tokens, 2 * 3 + 3);
    assert_eq!((s.max_tokens, s.n, s.stream, s.include_usage), (Some(7), 2, true, None));
    assert_eq!(s.model.as_deref(), Some("gpt-4o-mini"));
    let e = shape_of(br#"{"model": "m", "messages": [}"#, "chat/completions", exact).unwrap_err();
    assert!(matches!(e, ShapeError::BadJson(_)));
    let emb = shape(r#"{"model":"text-embedding-3-small","input":["hello world","hello world"]}"#, "embeddings");
    assert_eq!((emb.prompt_tokens, emb.input_only), (4, true));
}

#[test]
fn token_ids_are_one_token_each() {
    let ids: Vec<String> = (0..100).map(|i| (i % 50 + 7).to_string()).collect();
    let flat = format!(r#"{{"model":"text-embedding-3-small","input":[{}]}}"#, ids.join(","));
    let nested = format!(r#"{{"model":"text-embedding-3-small","input":[[{0}],[{0}]]}}"#, ids.join(","));
    assert_eq!(shape(&flat, "embeddings").prompt_tokens, 100);
    assert_eq!(shape(&nested, "embeddings").prompt_tokens, 200);
    // The upstream's character estimate reads an id as a token too.
    assert_eq!(shape(&flat, "embeddings").prompt_charge(), 100);
    let prompt = format!(r#"{{"model":"gpt-3.5-turbo-instruct","prompt":[{}],"max_tokens":5}}"#, ids.join(","));
    assert_eq!(shape(&prompt, "completions").request_tokens(1024), 105);
}

#[test]
fn responses_inputs_instructions_and_tools_are_charged() {
    let plain = shape(r#"{"model":"gpt-4o","input":"hello world","max_output_tokens":9}"#, "responses");
    assert_eq!((plain.prompt_tokens, plain.max_tokens), (2, Some(9)));
    let body = r#"{"model":"gpt-4o","instructions":"hello world",
        "input":[{"role":"user","content":[{"type":"input_text","text":"hello world"},
                 {"type":"input_image","image_url":"data:x","detail":"high"}]},
                 {"type":"function_call_output","call_id":"c","output":"hello world"}],
        "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}]}"#;
    let s = shape(body, "responses");
    let tools = Encoding::O200k.count(
        r#"[{"name":"get_weather","parameters":{"properties":{"city":{"type":"string"}},"type":"object"},"type":"function"}]"#,
    );
    assert!(tools > 10, "{tools}");
    // instructions 2, message framing 3 + role 1 + text 2 + image, output 2, tools.
    assert_eq!(s.prompt_tokens, 2 + 3 + 1 + 2 + IMAGE_TOKENS + 2 + tools);
    let chat_tools = shape(
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","description":"hello world"}}]}"#,
        "chat/completions",
    );
    assert!(chat_tools.prompt_tokens > 3 + 1 + 1 + 3 + 5, "{chat_tools:?}");
}

#[test]
fn assistant_tool_calls_are_charged() {
    let s = shape(
        r#"{"model":"gpt-4o","messages":[{"role":"assistant","content":null,
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"hello world"}}]}]}"#,
        "chat/completions",
    );
    // framing 3 + role 1 + name 1 + arguments 2 + reply 3.
    assert_eq!(s.prompt_tokens, 3 + 1 + 1 + 2 + 3);
}

#[test]
fn the_character_estimate_is_charged_when_larger() {
    // 2,000 characters of repeated words: ~400 tokens, but the upstream's
    // admission estimate reads 500 (a token per 4 characters).
    let text = "hello ".repeat(333) + "hi";
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 1024});
    let s = shape(&body.to_string(), "chat/completions");
    assert!(s.prompt_tokens < 400, "{s:?}");
    assert_eq!(s.prompt_charge(), 2000 / 4 + 1 + 3 + 3, "characters (user 4 + text 2000) / 4 + framing");
    assert_eq!(s.request_tokens(16), s.prompt_charge() + 1024);
}

#[test]
fn a_count_while_the_tokenizer_builds_is_not_sure() {
    let body = format!(r#"{{"model":"text-embedding-3-small","input":"{}"}}"#, "a".repeat(1200));
    let s = shape_of(body.as_bytes(), "embeddings", |_| Counter::Unready).unwrap();
    assert_eq!((s.prompt_tokens, s.sure_tokens, s.prompt_charge()), (1200, 0, 1200));
    let ids = shape_of(br#"{"input":[1,2,3]}"#, "embeddings", |_| Counter::Unready).unwrap();
    assert_eq!(ids.sure_tokens, 3);
}

#[test]
fn impossible_numbers_name_their_field() {
    for (body, param) in [
        (r#"{"max_tokens":4294967296}"#, "max_tokens"),
        (r#"{"max_tokens":16.5}"#, "max_tokens"),
        (r#"{"max_tokens":16.0}"#, "max_tokens"),
        (r#"{"max_completion_tokens":"100"}"#, "max_completion_tokens"),
        (r#"{"max_output_tokens":1e20}"#, "max_output_tokens"),
        (r#"{"n":5000000000}"#, "n"),
        (r#"{"n":true}"#, "n"),
        (r#"{"max_tokens":-5}"#, "max_tokens"),
    ] {
        match invalid(body) {
            ShapeError::InvalidParam { param: p, .. } => assert_eq!(p, param, "{body}"),
            e => panic!("{body}: {e:?}"),
        }
    }
    // null is unset; -1 passes through to upstreams that document it.
    let s =
        shape_of(br#"{"max_tokens":null,"n":null,"max_completion_tokens":-1}"#, "chat/completions", |_| Counter::Rough)
            .unwrap();
    assert_eq!((s.max_tokens, s.n), (None, 1));
    let s = shape_of(br#"{"max_tokens":4294967295}"#, "chat/completions", |_| Counter::Rough).unwrap();
    assert_eq!(s.max_tokens, Some(u32::MAX));
}

#[test]
fn fields_of_other_shapes_are_left_to_the_upstream() {
    let s = shape(r#"{"model":"gpt-4o","messages":"hi"}"#, "chat/completions");
    assert_eq!(s.model.as_deref(), Some("gpt-4o"));
    let s = shape(r#"{"model":7,"messages":[{"role":"user","content":{"weird":true}}]}"#, "x");
    assert_eq!(s.model, None);
}

#[test]
fn lenient_fields_of_any_shape_leave_the_rest_read() {
    // Each lenient field in each shape it might wrongly take: the body is
    // still read, and the field counts as absent.
    for odd in ["7", "1.5", "true", "null", "[1,\"a\",{}]", r#"{"a":{"b":[1]}}"#, r#""s""#] {
        let body = format!(
            r#"{{"model":{odd},"stream":{odd},"stream_options":{odd},"max_tokens":5,
                "messages":[{{"role":{odd},"name":{odd},"content":"hello there"}},
                            {{"role":"user","content":[{{"type":"image_url","image_url":{odd},"detail":{odd}}}]}}]}}"#
        );
        let s = shape(&body, "chat/completions");
        assert_eq!(s.max_tokens, Some(5), "{odd}");
        assert!(s.prompt_tokens >= 2, "{odd}: the text is still counted");
        if odd != r#""s""# {
            assert_eq!(s.model, None, "{odd}");
        }
    }
    let s = shape(r#"{"model":"m","stream":true,"stream_options":{"include_usage":"yes"}}"#, "chat/completions");
    assert_eq!((s.stream, s.include_usage), (true, None));
    let s = shape(r#"{"stream_options":{"include_usage":true,"x":[1]}}"#, "chat/completions");
    assert_eq!(s.include_usage, Some(true));
}
