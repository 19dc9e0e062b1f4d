//! `POST /files`, `GET /files/{id}` and `GET /files/{id}/content`: files
//! kept per key, as OpenAI keeps them per project, so a gateway that reads a
//! file back with another key gets OpenAI's 404.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::conn::ConnKill;
use crate::errors;
use crate::state::{lock, Shared};

/// Whether object `id` was created with `key`.
pub fn owned_by(sh: &Shared, id: &str, key: Option<&str>) -> bool {
    key.is_some_and(|k| lock(&sh.objects).get(id).is_some_and(|owner| owner == k))
}

fn file_json(id: &str, bytes: usize) -> serde_json::Value {
    json!({"id": id, "object": "file", "bytes": bytes, "created_at": 1_715_367_049u64, "filename": "upload.jsonl", "purpose": "batch"})
}

fn no_such_file(id: &str) -> Response {
    let msg = format!("No such File object: {id}");
    errors::error_response(StatusCode::NOT_FOUND, &msg, "invalid_request_error", Some("id"), None)
}

/// Takes any body (multipart or not) as the file's content.
pub async fn upload(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let adm = match sh.gate(&headers, &conn, "", 0).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let id = format!("file-{}", adm.request_id.trim_start_matches("req_"));
    if let Some(key) = &adm.key {
        lock(&sh.objects).insert(id.clone(), key.clone());
    }
    sh.respond(&adm, axum::Json(file_json(&id, raw.len())).into_response())
}

pub async fn retrieve(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let adm = match sh.gate(&headers, &conn, "", 0).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let resp = if owned_by(&sh, &id, adm.key.as_deref()) {
        axum::Json(file_json(&id, 0)).into_response()
    } else {
        no_such_file(&id)
    };
    sh.respond(&adm, resp)
}

pub async fn content(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let adm = match sh.gate(&headers, &conn, "", 0).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let resp = if owned_by(&sh, &id, adm.key.as_deref()) {
        (StatusCode::OK, format!("the content of {id}")).into_response()
    } else {
        no_such_file(&id)
    };
    sh.respond(&adm, resp)
}

/// OpenRouter's `GET /api/v1/key`: the key's credit in USD. Not counted as
/// a request (providers do not rate-limit it).
pub async fn key_balance(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some((limit, left)) = key.as_deref().and_then(|k| sh.balance_of(k)) else {
        return errors::invalid_key(key.as_deref());
    };
    let usd = |micros: f64| micros / 1e6;
    let body = json!({"data": {
        "label": "sim",
        "limit": usd(limit as f64),
        "usage": usd(limit as f64 - left as f64),
        "limit_remaining": usd(left.max(0) as f64),
        "is_free_tier": false,
    }});
    axum::Json(body).into_response()
}
