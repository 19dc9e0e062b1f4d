//! How streams end, per protocol, and the usage of every answer shape.

use super::*;

fn tap_all(kind: BodyKind, body: &[u8]) -> TapOutcome {
    let mut tap = UsageTap::new(kind);
    tap.feed(body);
    tap.finish()
}

/// Every split into two pieces gives the same outcome as the whole.
fn split_invariant(body: &[u8]) -> TapOutcome {
    let whole = tap_all(BodyKind::Sse, body);
    for cut in 0..=body.len() {
        let (a, b) = body.split_at(cut);
        let mut tap = UsageTap::new(BodyKind::Sse);
        tap.feed(a);
        tap.feed(b);
        assert_eq!(tap.finish(), whole, "cut at {cut}");
    }
    whole
}

const COMPLETED: &str = r#"{"type":"response.completed","sequence_number":5,"response":{"id":"resp_1","object":"response","status":"completed","error":null,"incomplete_details":null,"output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there","annotations":[]}]}],"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":8},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":19}}}"#;

/// A Responses stream as OpenAI sends it: `event:` and `data:` lines.
fn responses_stream(terminal: &str) -> String {
    let mut s = String::new();
    s.push_str("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"error\":null,\"usage\":null}}\n\n");
    for (i, piece) in ["Hi", " there"].iter().enumerate() {
        s.push_str(&format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"{piece}\"}}\n\n",
            i + 1
        ));
    }
    s.push_str("event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"sequence_number\":3,\"text\":\"Hi there\"}\n\n");
    let name = terminal.split("\"type\":\"").nth(1).and_then(|t| t.split('"').next()).unwrap_or_default();
    s.push_str(&format!("event: {name}\ndata: {terminal}\n\n"));
    s
}

fn responses_usage() -> Usage {
    Usage {
        prompt_tokens: 12,
        completion_tokens: 7,
        total_tokens: 19,
        cached_tokens: 8,
        reasoning_tokens: 3,
        estimated: false,
    }
}

#[test]
fn a_responses_stream_ends_with_its_terminal_event_and_reports_its_usage() {
    let out = split_invariant(responses_stream(COMPLETED).as_bytes());
    assert_eq!(out.terminal, Some(Terminal::Completed));
    assert_eq!(out.seen, StreamProtocol::Responses);
    assert!(out.ended(StreamProtocol::Responses) && out.ended(StreamProtocol::Other));
    assert!(!out.saw_done && !out.saw_error);
    assert_eq!(out.usage, Some(responses_usage()));
    // Only the deltas count as streamed text, not the `.done` repeat.
    assert_eq!(out.text, TextCount { ascii: 8, other: 0 });
    // A `[DONE]` after it changes nothing but the flag.
    let with_done = tap_all(BodyKind::Sse, format!("{}data: [DONE]\n\n", responses_stream(COMPLETED)).as_bytes());
    assert_eq!(with_done, TapOutcome { saw_done: true, ..out });
}

#[test]
fn incomplete_and_failed_responses_end_the_stream_and_are_billed() {
    let incomplete = COMPLETED
        .replace("response.completed", "response.incomplete")
        .replace(r#""status":"completed","error""#, r#""status":"incomplete","error""#)
        .replace(r#""incomplete_details":null"#, r#""incomplete_details":{"reason":"max_output_tokens"}"#);
    let out = split_invariant(responses_stream(&incomplete).as_bytes());
    assert_eq!((out.terminal, out.saw_error, out.usage), (Some(Terminal::Incomplete), false, Some(responses_usage())));
    assert!(out.ended(StreamProtocol::Responses));

    let failed = COMPLETED.replace("response.completed", "response.failed").replace(
        r#""error":null"#,
        r#""error":{"code":"server_error","message":"The model failed to generate a response."}"#,
    );
    let out = split_invariant(responses_stream(&failed).as_bytes());
    assert_eq!((out.terminal, out.saw_error, out.usage), (Some(Terminal::Failed), true, Some(responses_usage())));
    assert!(out.ended(StreamProtocol::Responses));
}

#[test]
fn an_error_event_ends_a_responses_stream() {
    let body = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
                event: error\ndata: {\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":1}\n\n";
    let out = split_invariant(body.as_bytes());
    assert_eq!((out.terminal, out.saw_error), (Some(Terminal::Error), true));
    assert!(out.ended(StreamProtocol::Responses));
}

#[test]
fn a_responses_stream_cut_before_its_terminal_event_has_not_ended() {
    let full = responses_stream(COMPLETED);
    let cut = full.find("event: response.completed").unwrap_or_default();
    let out = tap_all(BodyKind::Sse, full.get(..cut).unwrap_or_default().as_bytes());
    assert_eq!((out.terminal, out.usage), (None, None));
    assert!(!out.ended(StreamProtocol::Responses));
    assert!(!out.ended(StreamProtocol::Other), "the events spoke the Responses protocol");
    // Usage is estimated from the text that did stream.
    let est = out.usage_or_estimate(12);
    assert_eq!(est.map(|u| (u.prompt_tokens, u.completion_tokens, u.estimated)), Some((12, 3, true)));
}

#[test]
fn model_text_cannot_fake_a_terminal_event() {
    let body = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"{\\\"type\\\":\\\"response.completed\\\",\\\"usage\\\":{\\\"input_tokens\\\":1}}\"}\n\n";
    let out = tap_all(BodyKind::Sse, body.as_bytes());
    assert_eq!((out.terminal, out.usage), (None, None));
    assert_eq!(out.seen, StreamProtocol::Responses);
}

fn chat_chunk(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

#[test]
fn a_compatible_chat_stream_ends_at_its_finish_reason() {
    let mut body = chat_chunk(r#"{"role":"assistant","content":""}"#, "null");
    body.push_str(&chat_chunk(r#"{"content":"Hello"}"#, "null"));
    let open = tap_all(BodyKind::Sse, body.as_bytes());
    assert!(!open.ended(StreamProtocol::Chat) && !open.ended(StreamProtocol::Other));
    body.push_str(&chat_chunk("{}", "\"stop\""));
    let out = split_invariant(body.as_bytes());
    assert!(out.saw_finish && !out.saw_done);
    assert!(out.ended(StreamProtocol::Chat));
    assert!(!tap_all(BodyKind::Sse, b"").ended(StreamProtocol::Chat), "nothing at all is no end");
}

#[test]
fn other_event_streams_end_when_the_upstream_closes() {
    let body = "event: transcript.text.delta\ndata: {\"type\":\"transcript.text.delta\",\"delta\":\"Hi\"}\n\n";
    let out = tap_all(BodyKind::Sse, body.as_bytes());
    assert_eq!(out.seen, StreamProtocol::Other);
    assert!(out.ended(StreamProtocol::Other));
}

#[test]
fn streamed_text_is_counted_from_every_place_a_model_writes() {
    let mut body = chat_chunk(r#"{"content":"a\nb\u00e9"}"#, "null");
    body.push_str(&chat_chunk(r#"{"reasoning_content":"why"}"#, "null"));
    body.push_str(&chat_chunk(
        r#"{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]}"#,
        "null",
    ));
    body.push_str(&chat_chunk(r#"{"content":"你好"}"#, "null"));
    body.push_str("data: {\"id\":\"cmpl\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"ok\",\"finish_reason\":null}]}\n\n");
    let out = split_invariant(body.as_bytes());
    // a \n b é | why | {"x":1} | 你好 | ok  (names, ids and roles are not text)
    assert_eq!(out.text, TextCount { ascii: 4 + 3 + 7 + 2, other: 2 });
    let est = out.usage_or_estimate(0).map(|u| u.completion_tokens);
    assert_eq!(est, Some(16_u64.div_ceil(3) + 2));
}

#[test]
fn non_streamed_answers_of_every_shape_report_usage() {
    let responses = format!(
        r#"{{"id":"resp_1","object":"response","status":"completed","error":null,"output":[],"usage":{}}}"#,
        r#"{"input_tokens":12,"input_tokens_details":{"cached_tokens":8},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":19}"#
    );
    assert_eq!(tap_all(BodyKind::Json, responses.as_bytes()).usage, Some(responses_usage()));
    let image = br#"{"created":1,"data":[{"b64_json":"xx"}],"usage":{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40}}}"#;
    assert_eq!(tap_all(BodyKind::Json, image).usage.map(|u| u.total_tokens), Some(100));
    let transcription = br#"{"text":"hi","usage":{"type":"duration","seconds":3}}"#;
    assert_eq!(tap_all(BodyKind::Json, transcription), TapOutcome::default());
    let chat = br#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":1}}}"#;
    let u = tap_all(BodyKind::Json, chat).usage;
    assert_eq!(u.map(|u| (u.cached_tokens, u.reasoning_tokens)), Some((4, 1)));
}

#[test]
fn protocols_by_path() {
    assert_eq!(StreamProtocol::for_path("chat/completions"), StreamProtocol::Chat);
    assert_eq!(StreamProtocol::for_path("completions/"), StreamProtocol::Chat);
    assert_eq!(StreamProtocol::for_path("openai/deployments/gpt4/chat/completions"), StreamProtocol::Chat);
    assert_eq!(StreamProtocol::for_path("responses"), StreamProtocol::Responses);
    assert_eq!(StreamProtocol::for_path("audio/transcriptions"), StreamProtocol::Other);
}

#[test]
fn only_an_end_marker_seen_before_a_break_ends_a_broken_stream() {
    let finished =
        tap_all(BodyKind::Sse, b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    assert!(finished.ended(StreamProtocol::Chat), "a clean close after finish_reason ends it");
    assert!(!finished.ended_before_break(StreamProtocol::Chat), "a break after finish_reason does not");
    let done = tap_all(BodyKind::Sse, b"data: {\"choices\":[{\"index\":0,\"delta\":{}}]}\n\ndata: [DONE]\n\n");
    assert!(done.ended_before_break(StreamProtocol::Chat));
    assert!(!tap_all(BodyKind::Sse, b"data: {\"x\":1}\n\n").ended_before_break(StreamProtocol::Other));
}
