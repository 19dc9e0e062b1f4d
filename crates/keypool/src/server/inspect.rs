//! Request inspection: read what the scheduler needs (the token estimate)
//! from a request body, and decide whether the body is buffered (JSON, which
//! must be valid) or streamed through untouched (uploads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, request::Parts, Method};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::ApiError;
use crate::tokens::PromptShape;
use crate::upstream::OutBody;

/// What inspection learned, and the body to send on.
pub struct Inspected {
    pub body: OutBody,
    /// Present for JSON bodies; drives the token estimate.
    pub shape: Option<PromptShape>,
    /// Set when a streamed body went over the limit part-way (no Content-Length).
    pub overflowed: Arc<AtomicBool>,
}

/// Reads or wraps the body of a request to `/v1/{rest}`.
pub async fn inspect(
    parts: &Parts,
    body: Body,
    rest: &str,
    limit: u64,
) -> Result<Inspected, ApiError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let overflowed = Arc::new(AtomicBool::new(false));
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json_candidate(&parts.method, content_type, rest) {
        return Ok(Inspected {
            body: streamed(body, limit, Arc::clone(&overflowed)),
            shape: None,
            overflowed,
        });
    }
    let bytes = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::BodyRead(e.to_string())
            }
        })?
        .to_bytes();
    let shape = if bytes.is_empty() {
        None
    } else {
        Some(shape_of(&bytes)?)
    };
    Ok(Inspected {
        body: OutBody::Bytes(bytes),
        shape,
        overflowed,
    })
}

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
        "chat/completions"
            | "completions"
            | "embeddings"
            | "moderations"
            | "responses"
            | "images/generations"
    );
    known_json
        && !ct.starts_with("multipart/")
        && !ct.starts_with("audio/")
        && !ct.contains("octet-stream")
}

/// Streams an upload through, stopping it if it grows past the limit.
fn streamed(body: Body, limit: u64, overflowed: Arc<AtomicBool>) -> OutBody {
    let mut seen = 0u64;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk: Bytes = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            overflowed.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(
                "request body over the configured limit",
            ));
        }
        Ok(chunk)
    });
    OutBody::Stream(reqwest::Body::wrap_stream(stream))
}

/// The fields of an OpenAI request body that the estimate reads; every other
/// field is skipped without being kept (and passed on untouched, since the
/// original bytes are what is sent).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<Text>,
    #[serde(default)]
    input: Option<Text>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Deserialize)]
struct Message {
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
    fn bytes(&self) -> usize {
        match self {
            Text::One(s) => s.len(),
            Text::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Plain(s) | Part::Typed { text: s } => s.len(),
                    Part::Other(_) => 0,
                })
                .sum(),
            Text::Other(_) => 0,
        }
    }
}

fn shape_of(bytes: &[u8]) -> Result<PromptShape, ApiError> {
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let messages = probe.messages.as_deref().unwrap_or_default();
    let text_bytes = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(Text::bytes)
        .sum::<usize>()
        + probe.prompt.as_ref().map_or(0, Text::bytes)
        + probe.input.as_ref().map_or(0, Text::bytes);
    Ok(PromptShape {
        text_bytes,
        messages: messages.len(),
        max_tokens: probe
            .max_completion_tokens
            .or(probe.max_tokens)
            .or(probe.max_output_tokens),
        n: probe.n.unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_chat_shapes_and_rejects_bad_json() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"abcd"},
            {"role":"user","content":[{"type":"text","text":"efgh"},{"type":"image_url","image_url":{"url":"x"}}]}],
            "max_tokens":7,"n":2,"tools":[{"x":1}]}"#;
        let s = shape_of(body).unwrap();
        assert_eq!(
            s,
            PromptShape {
                text_bytes: 8,
                messages: 2,
                max_tokens: Some(7),
                n: 2
            }
        );
        let e = shape_of(br#"{"model": "m", "messages": [}"#).unwrap_err();
        assert!(matches!(e, ApiError::BadJson(_)));
        let emb = shape_of(br#"{"model":"e","input":["ab","cd"]}"#).unwrap();
        assert_eq!(emb.text_bytes, 4);
        let ids = shape_of(br#"{"model":"e","input":[1,2,3]}"#).unwrap();
        assert_eq!(ids.text_bytes, 0);
    }

    #[test]
    fn uploads_are_streamed_and_json_endpoints_parsed() {
        assert!(is_json_candidate(
            &Method::POST,
            "application/json",
            "anything"
        ));
        assert!(is_json_candidate(
            &Method::POST,
            "application/x-www-form-urlencoded",
            "chat/completions"
        ));
        assert!(!is_json_candidate(
            &Method::POST,
            "multipart/form-data; boundary=x",
            "audio/transcriptions"
        ));
        assert!(!is_json_candidate(
            &Method::GET,
            "application/json",
            "models"
        ));
    }
}
