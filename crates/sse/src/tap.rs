//! The usage tap: learns the upstream's reported `usage` from a response
//! body as it streams past, without altering or retaining the body.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::framer::SseFramer;
use crate::scan::{self, Choices};
use crate::usage::{self, RawUsage, TextCount, Usage};
use crate::MAX_BUFFERED_BYTES;

/// The only parts of an answer the tap cares about; serde skips the rest
/// without building it. A Responses API stream reports usage inside the
/// `response` object of its terminal event.
#[derive(Deserialize)]
struct UsageProbe {
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    response: Option<ResponseProbe>,
}

#[derive(Deserialize)]
struct ResponseProbe {
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<Usage>,
}

impl UsageProbe {
    fn usage(&self) -> Option<Usage> {
        self.usage.or_else(|| self.response.as_ref().and_then(|r| r.usage))
    }
}

/// A `usage` that is not a token report (`null`, a number, billed by
/// duration) is `None` rather than a reason to throw away the rest of the
/// answer.
fn lenient_usage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Usage>, D::Error> {
    Ok(usage::object::<RawUsage, D>(d)?.and_then(|raw| Usage::try_from(raw).ok()))
}

/// What kind of body the tap is looking at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/event-stream`: a streamed completion.
    Sse,
    /// `application/json`: a whole answer, usage in its top-level object.
    Json,
    /// Anything else (audio, images, ...): carries no usage to learn.
    Other,
}

impl BodyKind {
    /// Classifies by media type, ignoring parameters (`; charset=utf-8`) and
    /// case, as HTTP media types are case-insensitive. A missing header gives
    /// [`BodyKind::Other`]: guessing could make the tap buffer a binary body.
    pub fn from_content_type(ct: Option<&str>) -> BodyKind {
        let Some(ct) = ct else {
            return BodyKind::Other;
        };
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("text/event-stream") {
            BodyKind::Sse
        } else if essence.eq_ignore_ascii_case("application/json") {
            BodyKind::Json
        } else {
            BodyKind::Other
        }
    }
}

/// How an event stream says it is over, per protocol.
///
/// Sources: OpenAI's API reference (chat and completions streams end with
/// `data: [DONE]`; a Responses stream ends with `response.completed`,
/// `response.incomplete` or `response.failed`, or an `error` event) and the
/// OpenAI-compatible servers that close a chat stream right after the chunk
/// with its `finish_reason`, without `[DONE]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamProtocol {
    /// Chat and legacy completions: `[DONE]`, or a `finish_reason`.
    Chat,
    /// The Responses API: a terminal event, `[DONE]` after it optional.
    Responses,
    /// Any other event stream: it ends when the upstream closes cleanly.
    #[default]
    Other,
}

impl StreamProtocol {
    /// The protocol of an endpoint, from its path under the API base
    /// (`chat/completions`, `responses`, or Azure's
    /// `openai/deployments/{name}/chat/completions`).
    pub fn for_path(path: &str) -> StreamProtocol {
        let path = path.trim_end_matches('/');
        if path.ends_with("completions") {
            StreamProtocol::Chat
        } else if path == "responses" || path.ends_with("/responses") {
            StreamProtocol::Responses
        } else {
            StreamProtocol::Other
        }
    }
}

/// The Responses API event that ended a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminal {
    /// `response.completed`.
    Completed,
    /// `response.incomplete` (for example `max_output_tokens` reached): the
    /// answer so far is delivered and billed.
    Incomplete,
    /// `response.failed`: the upstream could not finish; still billed.
    Failed,
    /// An `error` event.
    Error,
}

/// What the tap learned from a body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOutcome {
    /// The upstream's usage report, if one was seen and understood.
    pub usage: Option<Usage>,
    /// SSE chunks carrying at least one choice — the gateway's fallback
    /// measure of output when the upstream reported no usage.
    pub completion_chunks: u64,
    /// A `data: [DONE]` event was seen.
    pub saw_done: bool,
    /// The upstream reported an error (an SSE `{"error": ...}` event, an
    /// `error` or `response.failed` event, or a JSON body with a non-null
    /// top-level `error`).
    pub saw_error: bool,
    /// A chat or completions choice carried a non-null `finish_reason`.
    pub saw_finish: bool,
    /// The Responses API terminal event, if one was seen.
    pub terminal: Option<Terminal>,
    /// The protocol the events themselves speak: [`StreamProtocol::Chat`]
    /// once a chunk with `choices` was seen, [`StreamProtocol::Responses`]
    /// once an event of type `response.*` was.
    pub seen: StreamProtocol,
    /// Generated text in the stream (chat `content`, tool-call `arguments`,
    /// completions `text`, Responses `delta`s), for
    /// [`TapOutcome::usage_or_estimate`].
    pub text: TextCount,
}

impl TapOutcome {
    /// Whether the stream reached the end its protocol defines; `expected`
    /// is the endpoint's protocol, and for [`StreamProtocol::Other`] the one
    /// the events spoke is used.
    pub fn ended(&self, expected: StreamProtocol) -> bool {
        let protocol = if expected == StreamProtocol::Other { self.seen } else { expected };
        match protocol {
            StreamProtocol::Chat => self.saw_done || self.saw_finish,
            StreamProtocol::Responses => self.saw_done || self.terminal.is_some(),
            StreamProtocol::Other => true,
        }
    }

    /// Whether the stream had reached its protocol's end before it broke (a
    /// reset, an error, silence past the idle timeout). Stricter than
    /// [`TapOutcome::ended`]: a chat `finish_reason` without `[DONE]`, and an
    /// endpoint whose only end is the upstream's clean close, are complete
    /// only when the upstream closes cleanly, never when the stream breaks.
    pub fn ended_before_break(&self, expected: StreamProtocol) -> bool {
        let protocol = if expected == StreamProtocol::Other { self.seen } else { expected };
        match protocol {
            StreamProtocol::Chat => self.saw_done,
            StreamProtocol::Responses => self.saw_done || self.terminal.is_some(),
            StreamProtocol::Other => false,
        }
    }

    /// The upstream's usage; failing that, when text was streamed, an
    /// estimate from it (see [`Usage::estimate`]) with `prompt_tokens` as the
    /// gateway estimated the request.
    pub fn usage_or_estimate(&self, prompt_tokens: u64) -> Option<Usage> {
        self.usage.or_else(|| (!self.text.is_empty()).then(|| Usage::estimate(prompt_tokens, self.text)))
    }
}

/// Keys whose string values are generated text in a chat or completions
/// chunk (DeepSeek-style `reasoning_content` is billed as output too).
const CHOICE_TEXT_KEYS: &[&[u8]] = &[b"content", b"text", b"arguments", b"reasoning_content", b"refusal"];
/// The key of a Responses API `*.delta` event's text.
const DELTA_KEYS: &[&[u8]] = &[b"delta"];

/// Per-event state for SSE, kept apart from the framer so the framer's
/// callback can update it while the framer itself is borrowed.
#[derive(Debug, Default)]
struct SseState {
    outcome: TapOutcome,
}

impl SseState {
    fn on_data(&mut self, data: &[u8]) {
        let payload = scan::trim(data);
        if payload.is_empty() {
            return;
        }
        if payload == b"[DONE]" {
            self.outcome.saw_done = true;
            return;
        }
        match scan::choices(payload) {
            Choices::NonEmpty => {
                self.outcome.seen = StreamProtocol::Chat;
                self.outcome.completion_chunks += 1;
                scan::count_text(payload, CHOICE_TEXT_KEYS, &mut self.outcome.text);
                if scan::key_value(payload, b"\"finish_reason\"").is_some_and(|v| v.first() == Some(&b'"')) {
                    self.outcome.saw_finish = true;
                }
            }
            Choices::Empty => self.outcome.seen = StreamProtocol::Chat,
            // Chat chunks always have `choices`; only other events pay for this.
            Choices::Absent => self.on_typed_event(payload),
        }
        if scan::key_value(payload, b"\"error\"").is_some_and(|v| !v.starts_with(b"null")) {
            self.outcome.saw_error = true;
        }
        // Parse only when a usage object is really there: with include_usage
        // every other chunk says `"usage": null`, and parsing those would cost
        // a full JSON pass per chunk for nothing.
        if scan::has_object(payload, b"\"usage\"") {
            if let Some(usage) = serde_json::from_slice::<UsageProbe>(payload).ok().and_then(|p| p.usage()) {
                self.outcome.usage = Some(usage);
            }
        }
    }

    /// An event with a `type` (the Responses API and other typed streams).
    fn on_typed_event(&mut self, payload: &[u8]) {
        let mut terminal = None;
        let mut responses = false;
        scan::has_string_value(payload, b"\"type\"", |t| {
            terminal = match t {
                b"response.completed" => Some(Terminal::Completed),
                b"response.incomplete" => Some(Terminal::Incomplete),
                b"response.failed" => Some(Terminal::Failed),
                b"error" => Some(Terminal::Error),
                _ => None,
            };
            responses = t.starts_with(b"response.");
            // The event's own type is the first that names an event.
            terminal.is_some() || responses
        });
        if responses {
            self.outcome.seen = StreamProtocol::Responses;
        }
        if let Some(t) = terminal {
            self.outcome.terminal = Some(t);
            if matches!(t, Terminal::Failed | Terminal::Error) {
                self.outcome.saw_error = true;
            }
        } else if responses {
            scan::count_text(payload, DELTA_KEYS, &mut self.outcome.text);
        }
    }
}

/// How the tap is watching, per [`BodyKind`].
#[derive(Debug)]
enum Mode {
    Sse { framer: SseFramer, state: SseState },
    Json { body: Vec<u8>, overflowed: bool, parsed: Option<TapOutcome> },
    Other,
}

/// Watches a response body for the upstream's usage report.
#[derive(Debug)]
pub struct UsageTap {
    mode: Mode,
    /// Cap on buffered bytes (line for SSE, whole body for JSON).
    max_buffered: usize,
}

impl UsageTap {
    /// A tap for a body of the given kind.
    pub fn new(kind: BodyKind) -> Self {
        Self::with_max_buffered(kind, MAX_BUFFERED_BYTES)
    }

    /// A tap with a custom buffering cap, so tests can reach the overflow
    /// path cheaply.
    pub(crate) fn with_max_buffered(kind: BodyKind, max_buffered: usize) -> Self {
        let mode = match kind {
            BodyKind::Sse => Mode::Sse { framer: SseFramer::with_max_line(max_buffered), state: SseState::default() },
            BodyKind::Json => Mode::Json { body: Vec::new(), overflowed: false, parsed: None },
            BodyKind::Other => Mode::Other,
        };
        Self { mode, max_buffered }
    }

    /// Looks at the next chunk of the body, exactly as forwarded.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Sse { framer, state } => framer.feed(chunk, |data| state.on_data(data)),
            Mode::Json { body, overflowed, parsed } => {
                if *overflowed || parsed.is_some() {
                    return;
                }
                if body.len() + chunk.len() > self.max_buffered {
                    // Give up on usage and release the memory at once.
                    *overflowed = true;
                    *body = Vec::new();
                } else {
                    body.extend_from_slice(chunk);
                }
            }
            Mode::Other => {}
        }
    }

    /// Usage seen so far (for SSE: the last event's usage object that was
    /// non-null; for JSON: parsed at finish).
    ///
    /// Calling it again is cheap and gives the same answer; a JSON body is
    /// parsed once, then its buffer is freed and later chunks are ignored.
    pub fn finish(&mut self) -> TapOutcome {
        match &mut self.mode {
            Mode::Sse { state, .. } => state.outcome,
            Mode::Json { body, overflowed, parsed } => {
                if let Some(outcome) = parsed {
                    return *outcome;
                }
                let outcome = if *overflowed {
                    TapOutcome::default()
                } else {
                    match serde_json::from_slice::<UsageProbe>(body) {
                        Ok(probe) => TapOutcome {
                            usage: probe.usage(),
                            saw_error: probe.error.is_some(),
                            ..TapOutcome::default()
                        },
                        Err(_) => TapOutcome::default(),
                    }
                };
                *body = Vec::new();
                *parsed = Some(outcome);
                outcome
            }
            Mode::Other => TapOutcome::default(),
        }
    }

    /// true once a `data: [DONE]` event has been seen (SSE)
    pub fn saw_done(&self) -> bool {
        match &self.mode {
            Mode::Sse { state, .. } => state.outcome.saw_done,
            Mode::Json { .. } | Mode::Other => false,
        }
    }
}

/// Whether this SSE data payload is the usage-only chunk (`"choices": []`
/// with a non-null `usage`).
///
/// When the gateway itself added `stream_options.include_usage` to learn
/// usage, the caller did not ask for this chunk, and the gateway may drop it
/// to keep the stream as the caller expects. A byte check suffices: the
/// gateway only needs to recognise the shape, not read the numbers.
pub fn strip_usage_event(data: &[u8]) -> bool {
    let payload = scan::trim(data);
    scan::choices(payload) == Choices::Empty && scan::has_object(payload, b"\"usage\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(content: &str) -> String {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}],"usage":null}}"#
        )
    }

    const USAGE_CHUNK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0}}}"#;

    /// A realistic include_usage stream with keep-alive comments, `event:`
    /// and `id:` lines, and CRLF line endings.
    fn realistic_stream() -> Vec<u8> {
        let mut s = String::new();
        s.push_str(": keep-alive\r\n\r\n");
        s.push_str("event: message\r\n");
        s.push_str(&format!("data: {}\r\n\r\n", chunk("")));
        s.push_str(&format!("id: 2\r\ndata: {}\r\n\r\n", chunk("Hello")));
        s.push_str(": keep-alive\r\n\r\n");
        // Model text that quotes the key must not be mistaken for usage.
        s.push_str(&format!("data: {}\r\n\r\n", chunk(r#" \"usage\":{\"total_tokens\":999}"#)));
        s.push_str(&format!("data:{}\r\n\r\n", USAGE_CHUNK));
        s.push_str("data: [DONE]\r\n\r\n");
        s.into_bytes()
    }

    fn expected_realistic() -> TapOutcome {
        TapOutcome {
            usage: Some(usage(12, 3, 15)),
            completion_chunks: 3,
            saw_done: true,
            seen: StreamProtocol::Chat,
            // "Hello" and the 29 characters of the quoting chunk.
            text: TextCount { ascii: 34, other: 0 },
            ..TapOutcome::default()
        }
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64, total_tokens: u64) -> Usage {
        Usage { prompt_tokens, completion_tokens, total_tokens, ..Usage::default() }
    }

    fn tap_pieces(kind: BodyKind, pieces: &[&[u8]]) -> TapOutcome {
        let mut tap = UsageTap::new(kind);
        for piece in pieces {
            tap.feed(piece);
        }
        tap.finish()
    }

    #[test]
    fn sse_realistic_stream_whole() {
        assert_eq!(tap_pieces(BodyKind::Sse, &[&realistic_stream()]), expected_realistic());
    }

    #[test]
    fn sse_every_single_split_point_gives_same_result() {
        let input = realistic_stream();
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(tap_pieces(BodyKind::Sse, &[a, b]), expected_realistic(), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(tap_pieces(BodyKind::Sse, &bytes), expected_realistic());
    }

    proptest! {
        #[test]
        fn sse_random_splits_give_same_result(
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
            lf_only in any::<bool>(),
        ) {
            let mut input = realistic_stream();
            if lf_only {
                input.retain(|&b| b != b'\r');
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                pieces.push(&input[prev..p]);
                prev = p;
            }
            pieces.push(&input[prev..]);
            prop_assert_eq!(tap_pieces(BodyKind::Sse, &pieces), expected_realistic());
        }
    }

    #[test]
    fn sse_stream_without_usage_gives_none_and_counts_chunks() {
        let mut body = String::new();
        for word in ["", "Hi", " there", "!"] {
            body.push_str(&format!("data: {}\n\n", chunk(word)));
        }
        body.push_str("data: [DONE]\n\n");
        let out = tap_pieces(BodyKind::Sse, &[body.as_bytes()]);
        let text = TextCount { ascii: 9, other: 0 };
        let want = TapOutcome {
            completion_chunks: 4,
            saw_done: true,
            seen: StreamProtocol::Chat,
            text,
            ..TapOutcome::default()
        };
        assert_eq!(out, want);
        assert_eq!(out.usage_or_estimate(7), Some(Usage::estimate(7, text)));
    }

    #[test]
    fn sse_done_detection() {
        let mut tap = UsageTap::new(BodyKind::Sse);
        tap.feed(format!("data: {}\n\n", chunk("x")).as_bytes());
        assert!(!tap.saw_done());
        tap.feed(b"data: [DO");
        assert!(!tap.saw_done());
        tap.feed(b"NE]\n");
        assert!(tap.saw_done());
        assert!(tap.finish().saw_done);
    }

    #[test]
    fn sse_truncated_stream_has_no_done() {
        let input = realistic_stream();
        let cut = input.len() - b"data: [DONE]\r\n\r\n".len();
        let out = tap_pieces(BodyKind::Sse, &[input.get(..cut).unwrap_or_default()]);
        assert!(!out.saw_done);
        assert_eq!(out.usage, expected_realistic().usage);
    }

    #[test]
    fn sse_error_event() {
        let body = format!(
            "data: {}\n\ndata: {{\"error\": {{\"message\": \"overloaded\", \"type\": \"server_error\", \"param\": null, \"code\": null}}}}\n\n",
            chunk("partial")
        );
        let out = tap_pieces(BodyKind::Sse, &[body.as_bytes()]);
        assert!(out.saw_error);
        assert!(!out.saw_done);
        assert_eq!(out.completion_chunks, 1);
        assert_eq!(out.usage, None);
    }

    #[test]
    fn sse_error_null_is_not_an_error() {
        let out = tap_pieces(
            BodyKind::Sse,
            &[br#"data: {"choices":[{"index":0}],"error":null}
"#],
        );
        assert!(!out.saw_error);
        assert_eq!(out.completion_chunks, 1);
    }

    #[test]
    fn sse_last_non_null_usage_wins() {
        let body = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1}}\n\
                    data: {\"choices\":[],\"usage\":null}\n\
                    data: {\"choices\":[], \"usage\" : {\"prompt_tokens\":2,\"completion_tokens\":5,\"total_tokens\":7}}\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"bad\"}}\n";
        let out = tap_pieces(BodyKind::Sse, &[body.as_bytes()]);
        assert_eq!(out.usage, Some(usage(2, 5, 7)));
        assert_eq!(out.completion_chunks, 0);
    }

    #[test]
    fn sse_oversize_line_is_skipped_without_panic() {
        let mut tap = UsageTap::new(BodyKind::Sse);
        tap.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
        let filler = vec![b'a'; 64 * 1024];
        for _ in 0..(MAX_BUFFERED_BYTES / filler.len() + 2) {
            tap.feed(&filler);
        }
        tap.feed(b"\"}}],\"usage\":null}\n\n");
        tap.feed(format!("data: {USAGE_CHUNK}\n\ndata: [DONE]\n\n").as_bytes());
        let out = tap.finish();
        assert_eq!(out.usage, expected_realistic().usage);
        assert_eq!(out.completion_chunks, 0, "the oversize chunk is not seen at all");
        assert!(out.saw_done);
    }

    #[test]
    fn sse_oversize_usage_line_gives_up_on_usage() {
        let line = format!("data: {USAGE_CHUNK}\n");
        let mut tap = UsageTap::with_max_buffered(BodyKind::Sse, 32);
        for piece in line.as_bytes().chunks(5) {
            tap.feed(piece);
        }
        tap.feed(b"data: [DONE]\n");
        assert_eq!(tap.finish(), TapOutcome { saw_done: true, ..TapOutcome::default() });
    }

    #[test]
    fn json_body_usage() {
        let body = br#"{"id":"chatcmpl-9","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"usage\": {}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            let out = tap_pieces(BodyKind::Json, &[a, b]);
            assert_eq!(out, TapOutcome { usage: Some(usage(9, 2, 11)), ..TapOutcome::default() });
        }
    }

    #[test]
    fn json_embeddings_usage_defaults_missing_fields() {
        let body = br#"{"object":"list","data":[],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let out = tap_pieces(BodyKind::Json, &[body]);
        assert_eq!(out.usage, Some(usage(8, 0, 8)));
    }

    #[test]
    fn json_error_body_and_garbage() {
        let err = br#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"x"}}"#;
        assert_eq!(tap_pieces(BodyKind::Json, &[err]), TapOutcome { saw_error: true, ..TapOutcome::default() });
        assert_eq!(tap_pieces(BodyKind::Json, &[b"{\"usage\": {\"prompt"]), TapOutcome::default());
        assert_eq!(tap_pieces(BodyKind::Json, &[b""]), TapOutcome::default());
    }

    #[test]
    fn a_usage_of_an_odd_shape_loses_nothing_else() {
        // Not an object: no usage, but the error is still seen.
        for odd in ["[1,2]", "7", "\"n/a\"", "true", "null", r#"{"type":"duration","seconds":9}"#] {
            let body = format!(r#"{{"usage":{odd},"error":{{"message":"m"}}}}"#);
            let out = tap_pieces(BodyKind::Json, &[body.as_bytes()]);
            assert_eq!(out, TapOutcome { saw_error: true, ..TapOutcome::default() }, "{odd}");
        }
        // Counts of the wrong type are absent; the rest is read.
        let body = br#"{"usage":{"prompt_tokens":"9","completion_tokens":2.0,"total_tokens":{"a":[1]},"prompt_tokens_details":5}}"#;
        assert_eq!(tap_pieces(BodyKind::Json, &[body]).usage, Some(usage(0, 2, 2)));
        let body = br#"{"response":{"usage":{"input_tokens":-3,"output_tokens":4,"output_tokens_details":[1]}}}"#;
        assert_eq!(tap_pieces(BodyKind::Json, &[body]).usage, Some(usage(0, 4, 4)));
    }

    #[test]
    fn json_oversize_body_gives_up() {
        let body = br#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let mut tap = UsageTap::with_max_buffered(BodyKind::Json, 40);
        for piece in body.chunks(9) {
            tap.feed(piece);
        }
        assert_eq!(tap.finish(), TapOutcome::default());
        let mut big = UsageTap::new(BodyKind::Json);
        big.feed(&vec![b' '; MAX_BUFFERED_BYTES]);
        big.feed(body);
        assert_eq!(big.finish(), TapOutcome::default());
    }

    #[test]
    fn finish_is_repeatable() {
        let mut tap = UsageTap::new(BodyKind::Json);
        tap.feed(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#);
        let first = tap.finish();
        assert!(first.usage.is_some());
        assert_eq!(tap.finish(), first);
        let mut sse = UsageTap::new(BodyKind::Sse);
        sse.feed(&realistic_stream());
        assert_eq!(sse.finish(), sse.finish());
    }

    #[test]
    fn other_body_is_ignored() {
        let mut tap = UsageTap::new(BodyKind::Other);
        tap.feed(format!("data: {USAGE_CHUNK}\n\ndata: [DONE]\n\n").as_bytes());
        assert!(!tap.saw_done());
        assert_eq!(tap.finish(), TapOutcome::default());
    }

    #[test]
    fn body_kind_from_content_type() {
        assert_eq!(BodyKind::from_content_type(Some("text/event-stream")), BodyKind::Sse);
        assert_eq!(BodyKind::from_content_type(Some("text/event-stream; charset=utf-8")), BodyKind::Sse);
        assert_eq!(BodyKind::from_content_type(Some("Application/JSON ; charset=utf-8")), BodyKind::Json);
        assert_eq!(BodyKind::from_content_type(Some("application/json")), BodyKind::Json);
        assert_eq!(BodyKind::from_content_type(Some("audio/mpeg")), BodyKind::Other);
        assert_eq!(BodyKind::from_content_type(Some("text/plain")), BodyKind::Other);
        assert_eq!(BodyKind::from_content_type(None), BodyKind::Other);
    }

    #[test]
    fn strip_usage_event_predicate() {
        assert!(strip_usage_event(USAGE_CHUNK.as_bytes()));
        assert!(strip_usage_event(br#" {"choices": [ ], "usage": {"total_tokens":1}} "#));
        assert!(!strip_usage_event(chunk("hi").as_bytes()));
        assert!(!strip_usage_event(br#"{"choices":[],"usage":null}"#));
        assert!(!strip_usage_event(br#"{"choices":[{"index":0}],"usage":{"total_tokens":1}}"#));
        assert!(!strip_usage_event(b"[DONE]"));
        assert!(!strip_usage_event(b""));
    }
}

#[cfg(test)]
mod ends_tests;
