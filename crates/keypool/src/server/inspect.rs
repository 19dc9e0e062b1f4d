//! Request inspection: read what the scheduler needs (the token estimate)
//! from a request body, and decide whether the body is buffered (JSON, which
//! must be valid) or streamed through untouched (uploads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, BodyDataStream};
use axum::http::{header, request::Parts, Method, Version};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::ApiError;
use crate::tokens::{self, Counter, Encoding, PromptShape};
use crate::upstream::{BodyError, OutBody};

/// What inspection learned, and the body to send on.
pub struct Inspected {
    pub body: OutBody,
    /// Present for JSON bodies; drives the token estimate.
    pub shape: Option<PromptShape>,
    /// Set when a streamed body went over the limit part-way (no Content-Length).
    pub overflow: Arc<Overflow>,
}

/// A streamed body that went over the limit part-way, and what the caller has
/// not sent yet (read on before the 413, see [`drain`]).
#[derive(Default)]
pub struct Overflow {
    hit: AtomicBool,
    rest: std::sync::Mutex<Option<BodyDataStream>>,
}

impl Overflow {
    pub fn happened(&self) -> bool {
        self.hit.load(Ordering::Relaxed)
    }

    /// Reads on what the caller is still sending, bounded, and throws it away.
    pub async fn drain_rest(&self) {
        let rest = self.rest.lock().ok().and_then(|mut rest| rest.take());
        if let Some(rest) = rest {
            drain(rest).await;
        }
    }

    fn record(&self, rest: BodyDataStream) {
        if let Ok(mut slot) = self.rest.lock() {
            *slot = Some(rest);
        }
        self.hit.store(true, Ordering::Relaxed);
    }
}

/// Reads or wraps the body of a request to `/v1/{rest}`.
/// `exact`: count prompt tokens with the model's tokenizer (else roughly).
pub async fn inspect(parts: &Parts, body: Body, rest: &str, limit: u64, exact: bool) -> Result<Inspected, ApiError> {
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        // A caller waiting for `100 Continue` has sent nothing, and over
        // HTTP/2 the stream alone is reset: only an HTTP/1 caller already
        // sending needs to be read on.
        let expects_continue = parts.headers.get(header::EXPECT).is_some();
        if parts.version < Version::HTTP_2 && !expects_continue {
            drain(body.into_data_stream()).await;
        }
        return Err(ApiError::BodyTooLarge { limit });
    }
    let overflow = Arc::new(Overflow::default());
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if http_body::Body::size_hint(&body).exact() == Some(0) {
        // No body (a GET): nothing to stream, and it can be sent again on a retry.
        return Ok(Inspected { body: OutBody::Bytes(Bytes::new()), shape: None, overflow });
    }
    if !is_json_candidate(&parts.method, content_type, rest) {
        return Ok(Inspected { body: streamed(body, limit, Arc::clone(&overflow)), shape: None, overflow });
    }
    let bytes = collect(body, limit).await?;
    let shape = if bytes.is_empty() {
        None
    } else if bytes.len() <= INLINE_SHAPE_BYTES {
        Some(shape_of(&bytes, rest, exact)?)
    } else {
        let (body, rest) = (bytes.clone(), rest.to_owned());
        let shaped = tokio::task::spawn_blocking(move || shape_of(&body, &rest, exact)).await;
        let shaped = shaped.map_err(|e| {
            tracing::error!(error = %e, "counting a prompt's tokens failed");
            ApiError::Internal("keypool failed to count the prompt's tokens")
        })?;
        Some(shaped?)
    };
    Ok(Inspected { body: OutBody::Bytes(bytes), shape, overflow })
}

/// Bodies above this size are parsed and counted on the blocking pool: at
/// 30-100 µs per KB of prompt (docs/benchmarks.md) they would otherwise hold
/// their worker thread, and every connection it serves, for milliseconds.
const INLINE_SHAPE_BYTES: usize = 16 * 1024;

/// JSON is expected for bodies that say so, and for POSTs to OpenAI's JSON
/// endpoints whatever their content type (curl's `-d` sends form encoding).
fn is_json_candidate(method: &Method, content_type: &str, rest: &str) -> bool {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return false;
    }
    let ct = content_type.to_ascii_lowercase();
    if ct.contains("json") {
        return true;
    }
    let known_json = matches!(
        rest.trim_end_matches('/'),
        "chat/completions" | "completions" | "embeddings" | "moderations" | "responses" | "images/generations"
    );
    known_json && !ct.starts_with("multipart/") && !ct.starts_with("audio/") && !ct.contains("octet-stream")
}

/// Reads a whole body of at most `limit` bytes (one chunk, the usual case, is
/// kept without a copy).
async fn collect(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let mut data = body.into_data_stream();
    let mut first: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    let mut seen = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        seen += chunk.len() as u64;
        if seen > limit {
            drain(data).await;
            return Err(ApiError::BodyTooLarge { limit });
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(earlier) => {
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// Streams an upload through, stopping it if it grows past the limit (the
/// rest is left in `overflow` for the handler to drain once the upstream
/// attempt has failed, not read here while the upstream waits).
fn streamed(body: Body, limit: u64, overflow: Arc<Overflow>) -> OutBody {
    let stream = futures_util::stream::unfold(Some((body.into_data_stream(), 0u64)), move |state| {
        let overflow = Arc::clone(&overflow);
        async move {
            let (mut data, mut seen) = state?;
            let chunk = match data.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(BodyError::from(e)), None)),
            };
            seen += chunk.len() as u64;
            if seen > limit {
                overflow.record(data);
                return Some((Err(BodyError::from("request body over the configured limit")), None));
            }
            Some((Ok(chunk), Some((data, seen))))
        }
    });
    OutBody::Stream(Box::pin(stream))
}

/// Most of a refused body read and thrown away, and for how long. A server
/// that closes a connection with unread input makes the kernel reset it, and
/// the caller may then lose the 413 it was sent; reading on a little (as
/// nginx's lingering close does) lets it finish sending and read the answer.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain<S, E>(mut data: S)
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = data.next().await {
            let Some(rest) = left.checked_sub(chunk.len() as u64) else { return };
            left = rest;
        }
    })
    .await;
}

/// The fields of an OpenAI request body that the estimate reads; every other
/// field is skipped without being kept (and passed on untouched, since the
/// original bytes are what is sent).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Lenient<String>,
    #[serde(default)]
    messages: Lenient<Vec<Message>>,
    #[serde(default)]
    prompt: Option<Text>,
    #[serde(default)]
    input: Option<Text>,
    #[serde(default)]
    max_tokens: Lenient<u32>,
    #[serde(default)]
    max_completion_tokens: Lenient<u32>,
    #[serde(default)]
    max_output_tokens: Lenient<u32>,
    #[serde(default)]
    n: Lenient<u32>,
    #[serde(default)]
    stream: Lenient<bool>,
    #[serde(default)]
    stream_options: Lenient<StreamOptions>,
}

/// A field read only if it has the expected shape. keypool is no stricter
/// than the upstream: a field of another shape is left for the upstream to
/// judge, and the estimate falls back to its defaults.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Is(T),
    Other(IgnoredAny),
}

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient::Other(IgnoredAny)
    }
}

impl<T> Lenient<T> {
    fn get(self) -> Option<T> {
        match self {
            Lenient::Is(v) => Some(v),
            Lenient::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Lenient<bool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    content: Option<Text>,
}

/// Text in any of the forms OpenAI accepts: a string, a list of strings, a
/// list of content parts with `text`, or something else (token ids, images)
/// that is not counted here.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    One(String),
    Parts(Vec<Part>),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Part {
    Plain(String),
    Typed { text: String },
    Other(IgnoredAny),
}

impl Text {
    fn tokens(&self, enc: Counter) -> u64 {
        match self {
            Text::One(s) => enc.count(s),
            Text::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Plain(s) | Part::Typed { text: s } => enc.count(s),
                    Part::Other(_) => 0,
                })
                .sum(),
            Text::Other(_) => 0,
        }
    }
}

/// Endpoints whose answer has no completion tokens to reserve.
fn input_only(rest: &str) -> bool {
    matches!(rest.trim_end_matches('/'), "embeddings" | "moderations")
}

fn shape_of(bytes: &[u8], rest: &str, exact: bool) -> Result<PromptShape, ApiError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let model = probe.model.get();
    let enc =
        if exact { Counter::Exact(Encoding::for_model(model.as_deref().unwrap_or_default())) } else { Counter::Rough };
    let mut prompt_tokens = 0;
    if let Some(messages) = probe.messages.get() {
        for m in &messages {
            prompt_tokens += tokens::PER_MESSAGE
                + m.role.as_deref().map_or(0, |r| enc.count(r))
                + m.name.as_deref().map_or(0, |n| enc.count(n) + 1)
                + m.content.as_ref().map_or(0, |c| c.tokens(enc));
        }
        prompt_tokens += tokens::PER_REPLY;
    }
    prompt_tokens += probe.prompt.as_ref().map_or(0, |t| t.tokens(enc));
    prompt_tokens += probe.input.as_ref().map_or(0, |t| t.tokens(enc));
    Ok(PromptShape {
        model,
        prompt_tokens,
        max_tokens: probe.max_completion_tokens.get().or(probe.max_tokens.get()).or(probe.max_output_tokens.get()),
        n: probe.n.get().unwrap_or(1),
        stream: probe.stream.get().unwrap_or(false),
        include_usage: probe.stream_options.get().and_then(|o| o.include_usage.get()),
        input_only: input_only(rest),
    })
}

/// The body with `stream_options.include_usage` set, so the upstream reports
/// a stream's usage. Used only when the caller did not ask for it (its usage
/// chunk is then removed before the caller sees it). The common case, a body
/// without `stream_options`, is edited in place; otherwise it is re-encoded.
pub fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object_mut()?;
    if !object.contains_key("stream_options") {
        let end = body.iter().rposition(|b| *b == b'}')?;
        let mut out = Vec::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..end]);
        if !object.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
        out.extend_from_slice(&body[end..]);
        return Some(Bytes::from(out));
    }
    let options = object.get_mut("stream_options")?.as_object_mut()?;
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_chat_shapes_and_rejects_bad_json() {
        // Exact counts need both tokenizers built (requests never wait for them).
        Encoding::O200k.load();
        Encoding::Cl100k.load();
        let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello world"},
            {"role":"user","content":[{"type":"text","text":"hello world"},{"type":"image_url","image_url":{"url":"x"}}]}],
            "max_tokens":7,"n":2,"stream":true,"tools":[{"x":1}]}"#;
        let s = shape_of(body, "chat/completions", true).unwrap();
        // Two messages of 3 framing + 1 role + 2 text tokens, plus 3 to prime the reply.
        assert_eq!(s.prompt_tokens, 2 * (3 + 1 + 2) + 3);
        assert_eq!((s.max_tokens, s.n, s.stream, s.include_usage), (Some(7), 2, true, None));
        assert_eq!(s.model.as_deref(), Some("gpt-4o-mini"));
        let e = shape_of(br#"{"model": "m", "messages": [}"#, "chat/completions", true).unwrap_err();
        assert!(matches!(e, ApiError::BadJson(_)));
        let emb = shape_of(
            br#"{"model":"text-embedding-3-small","input":["hello world","hello world"]}"#,
            "embeddings",
            true,
        )
        .unwrap();
        assert_eq!((emb.prompt_tokens, emb.input_only), (4, true));
        let ids = shape_of(br#"{"model":"e","input":[1,2,3]}"#, "embeddings", true).unwrap();
        assert_eq!(ids.prompt_tokens, 0);
    }

    #[test]
    fn fields_of_unexpected_shape_are_left_to_the_upstream() {
        let s = shape_of(
            br#"{"model":"gpt-4o","max_tokens":16.0,"n":5000000000,"messages":"hi"}"#,
            "chat/completions",
            true,
        )
        .unwrap();
        assert_eq!((s.max_tokens, s.n, s.prompt_tokens), (None, 1, 0));
        let s = shape_of(br#"{"model":7,"messages":[{"role":"user","content":{"weird":true}}]}"#, "x", true).unwrap();
        assert_eq!(s.model, None);
    }

    #[test]
    fn include_usage_is_added_without_touching_the_rest() {
        let body = br#"{"model":"m","stream":true,"x":{"deep":[1,2]}}"#;
        let out = with_include_usage(body).unwrap();
        assert_eq!(
            &out[..],
            br#"{"model":"m","stream":true,"x":{"deep":[1,2]},"stream_options":{"include_usage":true}}"#
        );
        let out = with_include_usage(br#"{"stream":true,"stream_options":{"include_usage":false}}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(with_include_usage(b"[1]").is_none());
    }

    #[test]
    fn uploads_are_streamed_and_json_endpoints_parsed() {
        assert!(is_json_candidate(&Method::POST, "application/json", "anything"));
        assert!(is_json_candidate(&Method::POST, "application/x-www-form-urlencoded", "chat/completions"));
        assert!(!is_json_candidate(&Method::POST, "multipart/form-data; boundary=x", "audio/transcriptions"));
        assert!(!is_json_candidate(&Method::GET, "application/json", "models"));
    }
}
