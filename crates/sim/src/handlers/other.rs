//! Embeddings, models, speech and the echo route.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, OriginalUri, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::conn::ConnKill;
use crate::errors;
use crate::handlers::chat::model_of;
use crate::state::Shared;
use crate::tokens;

/// A fixed model list; ids cover chat, legacy, embeddings and speech so gateway tests can
/// route by model without configuring anything.
const MODELS: [&str; 6] =
    ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small", "tts-1"];
const MODELS_CREATED: u64 = 1_715_367_049;

pub async fn embeddings(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&raw).ok().filter(Value::is_object);
    let model = model_of(parsed.as_ref());
    let cost = parsed.as_ref().map_or(1, tokens::prompt_tokens);
    let adm = match sh.gate(&headers, &conn, &model, cost).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let Some(body) = parsed else {
        return sh.respond(&adm, errors::bad_json());
    };
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string)).collect()
        }
        _ => return sh.respond(&adm, errors::missing_param("input")),
    };
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = tokens::embedding(text);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(tokens::base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt_tokens = tokens::prompt_tokens(&body);
    sh.bump(adm.key.as_deref(), |s| s.prompt_tokens += prompt_tokens);
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    sh.respond(&adm, axum::Json(answer).into_response())
}

fn model_json(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "system"})
}

pub async fn models(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
) -> Response {
    let adm = match sh.gate(&headers, &conn, "", 0).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let data: Vec<Value> = if sh.models.is_empty() {
        MODELS.iter().map(|m| model_json(m)).collect()
    } else {
        sh.models.iter().map(|m| model_json(m)).collect()
    };
    sh.respond(&adm, axum::Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn model(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let adm = match sh.gate(&headers, &conn, &id, 0).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let resp = if MODELS.contains(&id.as_str()) || sh.models.contains(&id) {
        axum::Json(model_json(&id)).into_response()
    } else {
        let msg = format!("The model '{id}' does not exist or you do not have access to it.");
        errors::error_response(StatusCode::NOT_FOUND, &msg, "invalid_request_error", None, Some("model_not_found"))
    };
    sh.respond(&adm, resp)
}

/// 64 KiB of bytes: big enough that a gateway which buffers or mangles binary answers shows it.
pub async fn speech(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&raw).ok().filter(Value::is_object);
    let model = parsed.as_ref().and_then(|v| v.get("model")).and_then(Value::as_str).unwrap_or("tts-1").to_string();
    let cost = parsed.as_ref().map_or(1, tokens::prompt_tokens);
    let adm = match sh.gate(&headers, &conn, &model, cost).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if parsed.is_none() {
        return sh.respond(&adm, errors::bad_json());
    }
    let audio: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
    let mut resp = Body::from(audio).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    sh.respond(&adm, resp)
}

/// `POST /audio/transcriptions` and `/audio/translations`: a multipart
/// form whose `model` field is checked like a JSON body's model; answers
/// `{"text": …}` naming the model heard and the form's size.
pub async fn transcription(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let model = form_field(&raw, "model").unwrap_or_default();
    let adm = match sh.gate(&headers, &conn, &model, 1).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if model.is_empty() {
        let resp = errors::error_response(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            Some("model"),
            None,
        );
        return sh.respond(&adm, resp);
    }
    let text = format!("heard by {model}: {} bytes", raw.len());
    sh.respond(&adm, axum::Json(serde_json::json!({"text": text})).into_response())
}

/// A plain field of a multipart form, found by its `name="…"` header (the
/// simulator's forms come from tests; no general parser is needed).
fn form_field(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let at = text.find(&format!("name=\"{name}\"\r\n"))?;
    let rest = &text[at..];
    let start = rest.find("\r\n\r\n")? + 4;
    let end = rest[start..].find("\r\n")?;
    Some(rest[start..start + end].trim().to_owned())
}

/// Reflects what arrived, so gateway tests can check path joining, query pass-through and
/// header filtering. The body is only counted, chunk by chunk, so huge uploads cost no memory.
pub async fn echo(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let adm = match sh.gate(&headers, &conn, "echo", 0).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let mut body_len: u64 = 0;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(c) => body_len += c.len() as u64,
            Err(e) => {
                let msg = format!("Error reading the request body: {e}");
                return sh.respond(
                    &adm,
                    errors::error_response(StatusCode::BAD_REQUEST, &msg, "invalid_request_error", None, None),
                );
            }
        }
    }
    let mut map = Map::new();
    for (name, value) in &headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                map.insert(name.as_str().to_string(), Value::String(v));
            }
        }
    }
    let answer = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": map,
        "body_len": body_len,
    });
    sh.respond(&adm, axum::Json(answer).into_response())
}
