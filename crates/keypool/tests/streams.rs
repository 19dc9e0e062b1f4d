//! How streams end and what they are charged, through the gateway, against
//! the simulator: a stream that ended as its protocol says passes byte for
//! byte with nothing appended; one that broke gets the error event; the
//! Responses API's usage is read, streamed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{key, spawn, TestApp};
use keypool::config::Price;
use keypool_sim::{ResponsesTerminal, SimConfig, SimKey, StreamEnds};
use serde_json::{json, Value};

const KEY: &str = "sk-streams-aaaaaaaaaa";

/// Input 1 and output 2 micro-USD per token, so spend shows the usage.
const PRICE: Price = Price { input: 1.0, output: 2.0 };

async fn app_with(ends: StreamEnds) -> TestApp {
    let sim = SimConfig { keys: vec![SimKey::new(KEY)], stream_chunks: 5, stream_ends: ends, ..SimConfig::default() };
    spawn(sim, vec![key(KEY, None)], |c| {
        c.prices.insert("gpt-4o-mini".into(), PRICE);
    })
    .await
}

/// "hello there" is 3 prompt tokens to the simulator; 5 words come back.
fn responses_body(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "input": "hello there", "max_output_tokens": 5, "stream": stream})
}

const PROMPT: u64 = 3;
const OUTPUT: u64 = 5;

/// Posts `body` to `path`, through the gateway or straight to the simulator.
async fn fetch(app: &TestApp, path: &str, body: &Value, direct: bool) -> String {
    let resp = if direct {
        app.client.post(format!("{}/{path}", app.sim.base_url())).bearer_auth(KEY).json(body).send().await.unwrap()
    } else {
        app.post(path).json(body).send().await.unwrap()
    };
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The stream with what differs between two answers blanked: ids made of
/// the simulator's request id, and timestamps.
fn normalized(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.find("sim") {
        out.push_str(&rest[..at + 3]);
        rest = rest[at + 3..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    let mut result = String::new();
    for piece in out.split_inclusive([',', '{']) {
        match piece.strip_prefix("\"created_at\":").or_else(|| piece.strip_prefix("\"created\":")) {
            Some(_) => result.push_str("\"created\":0,"),
            None => result.push_str(piece),
        }
    }
    result
}

/// The key's record once the lease has finished.
async fn key_view(app: &TestApp, requests: u64) -> keypool::scheduler::KeyView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = app.gateway.scheduler().snapshot().remove(0);
        if view.requests >= requests && view.inflight == 0 || tokio::time::Instant::now() > deadline {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The key's stored token totals once the writer has flushed them.
async fn stored_tokens(app: &TestApp) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let k = app.store.list_keys().await.unwrap().remove(0);
        if k.requests > 0 || tokio::time::Instant::now() > deadline {
            return (k.prompt_tokens, k.completion_tokens);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream that ended properly: the gateway's bytes are the upstream's.
async fn passes_unchanged(app: &TestApp, path: &str, body: &Value) -> String {
    let through = fetch(app, path, body, false).await;
    let direct = fetch(app, path, body, true).await;
    assert_eq!(normalized(&through), normalized(&direct), "nothing added, removed or changed");
    assert!(!through.contains("stream_interrupted"), "{through}");
    through
}

async fn assert_charged_success(app: &TestApp) {
    let view = key_view(app, 1).await;
    assert_eq!((view.requests, view.successes, view.failures), (1, 1, 0), "{view:?}");
    assert_eq!(view.spent_micros, PROMPT + 2 * OUTPUT, "usage from the terminal event");
    assert_eq!(stored_tokens(app).await, (PROMPT, OUTPUT));
}

#[tokio::test]
async fn a_complete_responses_stream_passes_byte_for_byte_and_is_charged_a_success() {
    let app = app_with(StreamEnds::default()).await;
    let text = passes_unchanged(&app, "responses", &responses_body(true)).await;
    assert!(text.starts_with("event: response.created\ndata: {\"type\":\"response.created\""), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: response.completed\ndata: "), "ends with its terminal event: {last}");
    assert!(text.ends_with("}\n\n") && !text.contains("[DONE]"), "{text}");
    assert_charged_success(&app).await;
}

#[tokio::test]
async fn incomplete_and_failed_responses_streams_end_there_and_are_billed() {
    for (terminal, event) in
        [(ResponsesTerminal::Incomplete, "response.incomplete"), (ResponsesTerminal::Failed, "response.failed")]
    {
        let app = app_with(StreamEnds { responses_terminal: terminal, ..StreamEnds::default() }).await;
        let text = passes_unchanged(&app, "responses", &responses_body(true)).await;
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with(&format!("event: {event}\ndata: ")), "{last}");
        // The upstream billed it; the key did its job.
        assert_charged_success(&app).await;
    }
}

#[tokio::test]
async fn a_responses_error_event_ends_the_stream_with_nothing_appended() {
    let app = app_with(StreamEnds { responses_terminal: ResponsesTerminal::Error, ..StreamEnds::default() }).await;
    let text = passes_unchanged(&app, "responses", &responses_body(true)).await;
    assert!(text.trim_end().rsplit("\n\n").next().unwrap().starts_with("event: error\ndata: {\"type\":\"error\""));
    let view = key_view(&app, 1).await;
    assert_eq!((view.requests, view.successes), (1, 0), "the upstream failed: {view:?}");
}

#[tokio::test]
async fn a_done_after_the_terminal_event_passes_once() {
    let app = app_with(StreamEnds { responses_done: true, ..StreamEnds::default() }).await;
    let text = passes_unchanged(&app, "responses", &responses_body(true)).await;
    assert!(text.ends_with("}\n\ndata: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("[DONE]").count(), 1);
    assert_charged_success(&app).await;
}

#[tokio::test]
async fn non_streamed_responses_record_their_usage_and_cost() {
    let app = app_with(StreamEnds::default()).await;
    let body: Value = serde_json::from_str(&fetch(&app, "responses", &responses_body(false), false).await).unwrap();
    assert_eq!((body["object"].as_str(), body["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(body["usage"]["input_tokens"], PROMPT);
    assert_charged_success(&app).await;
}

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": true})
}

#[tokio::test]
async fn a_compatible_chat_stream_without_done_after_its_finish_reason_is_complete() {
    let app = app_with(StreamEnds { chat_without_done: true, ..StreamEnds::default() }).await;
    // keypool asks for the usage chunk and hides it, so the caller's stream
    // ends with the finish_reason chunk, as the upstream's would.
    let text = fetch(&app, "chat/completions", &chat_body(), false).await;
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(!text.contains("[DONE]") && !text.contains("stream_interrupted"), "{text}");
    let view = key_view(&app, 1).await;
    assert_eq!((view.requests, view.successes, view.failures), (1, 1, 0), "{view:?}");
    // "hi" is 1 token plus 3 of framing; 5 words come back.
    assert_eq!(view.spent_micros, 4 + 2 * 5);
}

#[tokio::test]
async fn a_chat_stream_cut_before_its_end_still_gets_the_error_event() {
    // The role chunk and two content chunks, then a clean close.
    let app = app_with(StreamEnds { cut_after_events: Some(3), ..StreamEnds::default() }).await;
    let text = fetch(&app, "chat/completions", &chat_body(), false).await;
    assert!(text.contains("\"code\":\"stream_interrupted\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let view = key_view(&app, 1).await;
    assert_eq!((view.successes, view.failures), (0, 1), "{view:?}");
}

#[tokio::test]
async fn a_responses_stream_cut_before_its_end_gets_the_error_event_and_an_estimate() {
    // created, in_progress, item added, part added, two deltas: "This", " is".
    let app = app_with(StreamEnds { cut_after_events: Some(6), ..StreamEnds::default() }).await;
    let text = fetch(&app, "responses", &responses_body(true), false).await;
    let tail = text.rsplit("\"delta\":\" is\"").next().unwrap();
    assert!(tail.contains("\"code\":\"stream_interrupted\""), "the error event follows: {tail}");
    let view = key_view(&app, 1).await;
    assert_eq!((view.successes, view.failures), (0, 1), "{view:?}");
    // No usage was reported: 7 streamed characters are estimated as 3
    // output tokens (at 2 micro-USD each), on top of the prompt estimate.
    assert!(view.spent_micros >= 6, "estimated, not lost: {view:?}");
}

/// An upstream on 127.0.0.1 that answers every request 200 with `events`
/// as an event stream and then, if `hold`, keeps the connection open and
/// silent instead of closing it.
async fn raw_upstream(events: &'static str, hold: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{events}");
                let _ = socket.write_all(answer.as_bytes()).await;
                if hold {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

async fn app_over(upstream: String) -> TestApp {
    spawn(SimConfig::default(), vec![key(KEY, None)], move |c| {
        c.upstream = upstream;
        c.timeouts.idle = Duration::from_millis(300);
        c.prices.insert("gpt-4o-mini".into(), PRICE);
    })
    .await
}

const COMPLETED_THEN_SILENCE: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"status\":\"in_progress\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1,\"total_tokens\":4}}}\n\n";

#[tokio::test]
async fn silence_after_the_terminal_event_does_not_break_the_stream() {
    let app = app_over(raw_upstream(COMPLETED_THEN_SILENCE, true).await).await;
    let text = fetch(&app, "responses", &responses_body(true), false).await;
    assert_eq!(text, COMPLETED_THEN_SILENCE, "ended at the idle timeout with nothing appended");
    let view = key_view(&app, 1).await;
    assert_eq!((view.successes, view.failures, view.spent_micros), (1, 0, 3 + 2), "{view:?}");
}

/// A compatible server that ignores `stream_options` and ends without
/// `[DONE]`: 12 characters of content, no usage.
const CHAT_WITHOUT_USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello, \"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"world\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

#[tokio::test]
async fn a_stream_without_usage_is_charged_an_estimate_from_its_text() {
    let app = app_over(raw_upstream(CHAT_WITHOUT_USAGE, false).await).await;
    let text = fetch(&app, "chat/completions", &chat_body(), false).await;
    assert_eq!(text, CHAT_WITHOUT_USAGE, "complete at its finish_reason: nothing appended");
    let view = key_view(&app, 1).await;
    assert_eq!((view.successes, view.failures), (1, 0), "{view:?}");
    // 12 characters are estimated as 4 output tokens at 2 micro-USD, on top
    // of keypool's own estimate of the prompt at 1.
    assert!(view.spent_micros >= 8, "{view:?}");
    let (prompt, completion) = stored_tokens(&app).await;
    assert_eq!(completion, 4, "estimated output tokens recorded (prompt {prompt})");
}

/// Speech streamed as events (`stream_format: "sse"`): no `[DONE]` in this
/// protocol; the upstream's clean close is the end.
const SPEECH_EVENTS: &str = "data: {\"type\":\"speech.audio.delta\",\"audio\":\"AAAA\"}\n\n\
data: {\"type\":\"speech.audio.done\",\"usage\":{\"input_tokens\":4,\"output_tokens\":9,\"total_tokens\":13}}\n\n";

#[tokio::test]
async fn other_event_streams_end_when_the_upstream_closes_cleanly() {
    let app = app_over(raw_upstream(SPEECH_EVENTS, false).await).await;
    let body = json!({"model": "gpt-4o-mini", "input": "Hello", "voice": "alloy", "stream_format": "sse"});
    let text = fetch(&app, "audio/speech", &body, false).await;
    assert_eq!(text, SPEECH_EVENTS, "nothing appended");
    let view = key_view(&app, 1).await;
    assert_eq!((view.successes, view.failures, view.spent_micros), (1, 0, 4 + 2 * 9), "{view:?}");
}

#[tokio::test]
async fn the_official_python_sdk_reads_responses_through_keypool() {
    let Some(python) = common::sdk_python() else { return };
    let app = app_with(StreamEnds::default()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/responses_check.py");
    let (ok, stdout, stderr) = common::run_sdk(&python, &[script], &app).await;
    assert!(ok, "SDK check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("responses, responses stream ok"), "{stdout}");
    let view = key_view(&app, 2).await;
    assert_eq!((view.requests, view.successes, view.failures), (2, 2, 0), "{view:?}");
}
