//! Request inspection: read what the scheduler needs (the token estimate)
//! from a request body, and decide whether the body is buffered (JSON, which
//! must be valid) or streamed through untouched (uploads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, BodyDataStream};
use axum::http::{header, request::Parts, Method, Version};
use bytes::Bytes;
use futures_util::StreamExt;

use super::error::ApiError;
use crate::tokens::shape::ShapeError;
use crate::tokens::{self, Counter, Encoding, PromptShape};
use crate::upstream::{BodyError, OutBody};

/// What inspection learned, and the body to send on.
pub struct Inspected {
    pub body: OutBody,
    /// Present for JSON bodies; drives the token estimate.
    pub shape: Option<PromptShape>,
    /// Set when a streamed body went over the limit part-way (no Content-Length).
    pub overflow: Arc<Overflow>,
    /// The `model` field of a multipart form, when it was looked for and
    /// found in the form's first bytes (see `form`).
    pub form_model: Option<String>,
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
/// `form_model`: look for the `model` field of a multipart form (it routes
/// the request when there are several upstreams).
pub async fn inspect(
    parts: &Parts,
    body: Body,
    rest: &str,
    limit: u64,
    exact: bool,
    form_model: bool,
) -> Result<Inspected, ApiError> {
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
        return Ok(Inspected { body: OutBody::Bytes(Bytes::new()), shape: None, overflow, form_model: None });
    }
    if !is_json_candidate(&parts.method, content_type, rest) {
        let mut data = body.into_data_stream();
        let (mut head, mut model) = (Vec::new(), None);
        if let Some(boundary) = super::form::boundary(content_type).filter(|_| form_model) {
            model = peek_form_model(&mut data, boundary, limit, &mut head).await?;
        }
        let body = streamed(head, data, limit, Arc::clone(&overflow));
        return Ok(Inspected { body, shape: None, overflow, form_model: model });
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
    Ok(Inspected { body: OutBody::Bytes(bytes), shape, overflow, form_model: None })
}

/// Bodies above this size are parsed and counted on the blocking pool: at
/// 30-100 µs per KB of prompt (docs/benchmarks.md) they would otherwise hold
/// their worker thread, and every connection it serves, for milliseconds.
const INLINE_SHAPE_BYTES: usize = 16 * 1024;

/// JSON is expected for bodies that say so, and for POSTs to OpenAI's JSON
/// endpoints whatever their content type: a body is counted by what the
/// endpoint is, so a chat body labelled `multipart/form-data` (or sent with
/// curl's `-d`, form encoding) is still read and charged.
fn is_json_candidate(method: &Method, content_type: &str, rest: &str) -> bool {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return false;
    }
    let known_json = matches!(
        rest.trim_end_matches('/'),
        "chat/completions" | "completions" | "embeddings" | "moderations" | "responses" | "images/generations"
    );
    known_json || content_type.to_ascii_lowercase().contains("json")
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

/// Longest a form's first bytes are waited for to find its model.
const PEEK_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a form's first chunks into `head` until its `model` field is
/// found, or known to be absent, or [`super::form::PEEK_BYTES`] are read;
/// the chunks are sent on first (see [`streamed`]). A body past `limit`
/// already is refused as [`collect`] refuses it.
async fn peek_form_model(
    data: &mut BodyDataStream,
    boundary: &str,
    limit: u64,
    head: &mut Vec<Bytes>,
) -> Result<Option<String>, ApiError> {
    use super::form::{model_field, Found, PEEK_BYTES, SCAN_EVERY};
    let mut joined = bytes::BytesMut::new();
    let mut scanned = 0;
    // A caller that sends its form slowly is not waited for here: past the
    // deadline the request goes on without a model, its body still streaming.
    let deadline = tokio::time::Instant::now() + PEEK_TIME;
    let mut ended = false;
    while joined.len() < PEEK_BYTES && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(chunk)) => {
                let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
                if (joined.len() + chunk.len()) as u64 > limit {
                    drain(data).await;
                    return Err(ApiError::BodyTooLarge { limit });
                }
                joined.extend_from_slice(&chunk);
                head.push(chunk);
            }
            Ok(None) => ended = true,
            Err(_) => break,
        }
        if ended || joined.len() - scanned >= SCAN_EVERY {
            scanned = joined.len();
            match model_field(&joined, boundary) {
                Found::Model(m) => return Ok(Some(m)),
                Found::Absent => return Ok(None),
                Found::NeedMore if ended => return Ok(None),
                Found::NeedMore => {}
            }
        }
    }
    Ok(match model_field(&joined, boundary) {
        Found::Model(m) => Some(m),
        Found::Absent | Found::NeedMore => None,
    })
}

/// Streams an upload through (`head`, chunks already read, first), stopping
/// it if it grows past the limit (the rest is left in `overflow` for the
/// handler to drain once the upstream attempt has failed, not read here
/// while the upstream waits).
/// A form read from already (the caller was told `100 Continue` and is
/// sending): dropped before its end, as by a refusal before any key was
/// chosen, the rest is read on and thrown away in the background, bounded
/// as [`drain`] is, so the caller gets its answer rather than a reset.
struct Lingering {
    data: Option<BodyDataStream>,
    linger: bool,
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let (true, Some(data)) = (self.linger, self.data.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(drain(data));
            }
        }
    }
}

fn streamed(head: Vec<Bytes>, data: BodyDataStream, limit: u64, overflow: Arc<Overflow>) -> OutBody {
    let seen: u64 = head.iter().map(|c| c.len() as u64).sum();
    let linger = !head.is_empty();
    let head = futures_util::stream::iter(head.into_iter().map(Ok::<Bytes, BodyError>));
    let state = (Lingering { data: Some(data), linger }, seen);
    let rest = futures_util::stream::unfold(Some(state), move |state| {
        let overflow = Arc::clone(&overflow);
        async move {
            let (mut rest, mut seen) = state?;
            let next = rest.data.as_mut()?.next().await;
            let Some(next) = next else {
                rest.data = None; // read to its end: nothing to linger over
                return None;
            };
            let chunk = match next {
                Ok(chunk) => chunk,
                Err(e) => {
                    rest.data = None;
                    return Some((Err(BodyError::from(e)), None));
                }
            };
            seen += chunk.len() as u64;
            if seen > limit {
                if let Some(data) = rest.data.take() {
                    overflow.record(data);
                }
                return Some((Err(BodyError::from("request body over the configured limit")), None));
            }
            Some((Ok(chunk), Some((rest, seen))))
        }
    });
    OutBody::Stream(Box::pin(head.chain(rest)))
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

/// Reads a JSON body into what the estimate needs; `exact`: with the
/// model's tokenizer.
fn shape_of(bytes: &[u8], rest: &str, exact: bool) -> Result<PromptShape, ApiError> {
    let counter = |model: Option<&str>| {
        if exact {
            Counter::Exact(Encoding::for_model(model.unwrap_or_default()))
        } else {
            Counter::Rough
        }
    };
    tokens::shape::shape_of(bytes, rest, counter).map_err(|e| match e {
        ShapeError::BadJson(detail) => ApiError::BadJson(detail),
        ShapeError::InvalidParam { param, reason } => ApiError::InvalidParameter { param, reason },
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

/// The body with its `model` replaced by `model` (an alias's target).
/// None when the body is not a JSON object.
pub fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.as_object_mut()?.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bad_json_and_impossible_numbers_are_the_callers() {
        let e = shape_of(br#"{"model": "m", "messages": [}"#, "chat/completions", false).unwrap_err();
        assert!(matches!(e, ApiError::BadJson(_)));
        let e = shape_of(br#"{"model": "m", "max_tokens": 4294967296}"#, "chat/completions", false).unwrap_err();
        assert!(matches!(e, ApiError::InvalidParameter { param: "max_tokens", .. }), "{e:?}");
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
        // Counted by what the endpoint is, not by the caller's label.
        assert!(is_json_candidate(&Method::POST, "multipart/form-data; boundary=x", "chat/completions"));
        assert!(is_json_candidate(&Method::POST, "application/octet-stream", "embeddings"));
    }
}
