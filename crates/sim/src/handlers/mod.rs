//! Routing: the OpenAI routes under the prefix, the unauthenticated control plane at
//! `/_sim`, and an OpenAI-shaped 404 for everything else.

pub mod chat;
mod files;
mod other;
mod responses;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};

use crate::config::{Faults, SimKey};
use crate::state::{lock, Shared};

/// Gateways are tested with large uploads (audio, long prompts); axum's 2 MB default
/// would turn those into 413s that no real upstream sends.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub fn router(sh: Arc<Shared>) -> Router {
    let api: Router<Arc<Shared>> = Router::new()
        .route("/chat/completions", post(chat::chat))
        .route("/completions", post(chat::completions))
        .route("/responses", post(responses::responses))
        .route("/embeddings", post(other::embeddings))
        .route("/models", get(other::models))
        .route("/models/{id}", get(other::model))
        .route("/audio/speech", post(other::speech))
        .route("/audio/transcriptions", post(other::transcription))
        .route("/audio/translations", post(other::transcription))
        .route("/key", get(files::key_balance))
        .route("/files", post(files::upload))
        .route("/files/{id}", get(files::retrieve))
        .route("/files/{id}/content", get(files::content))
        .route("/echo", any(other::echo))
        .route("/echo/{*rest}", any(other::echo));
    let control: Router<Arc<Shared>> = Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/keys", post(add_key))
        .route("/_sim/faults", post(set_faults));
    if sh.azure {
        // Azure OpenAI's paths: per deployment and per resource (both with
        // `api-version`), and the v1 API (without).
        let versioned = Router::new()
            .nest("/openai/deployments/{deployment}", api.clone())
            .nest("/openai", api.clone())
            .layer(axum::middleware::from_fn_with_state(sh.clone(), azure_path));
        let app = control.merge(versioned).nest("/openai/v1", api);
        return app.fallback(azure_not_found).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(sh);
    }
    // axum refuses to nest at the root, so an empty prefix merges instead.
    let app = if sh.prefix.is_empty() { control.merge(api) } else { control.nest(&sh.prefix, api) };
    app.fallback(not_found).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(sh)
}

async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> Response {
    let msg = format!("Invalid URL ({} {})", method, uri.path());
    crate::errors::error_response(StatusCode::NOT_FOUND, &msg, "invalid_request_error", None, None)
}

/// Azure's versioned paths: 404 without `api-version` (as Azure answers),
/// and each request counted by the deployment its path names.
async fn azure_path(
    State(sh): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let versioned =
        request.uri().query().is_some_and(|q| q.split('&').any(|p| p.len() > 12 && p.starts_with("api-version=")));
    if !versioned {
        return azure_not_found().await;
    }
    // Inside a nested router the path is cut; the original names the deployment.
    let path = match request.extensions().get::<OriginalUri>() {
        Some(original) => original.path(),
        None => request.uri().path(),
    };
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let deployment = rest.split('/').next().unwrap_or_default().to_owned();
        *lock(&sh.stats).deployments.entry(deployment).or_default() += 1;
    }
    next.run(request).await
}

async fn azure_not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "404", "message": "Resource not found"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    let snapshot = lock(&sh.stats).clone();
    Json(snapshot).into_response()
}

async fn add_key(State(sh): State<Arc<Shared>>, Json(key): Json<SimKey>) -> StatusCode {
    sh.add_key(&key);
    StatusCode::NO_CONTENT
}

async fn set_faults(State(sh): State<Arc<Shared>>, Json(faults): Json<Faults>) -> StatusCode {
    *lock(&sh.faults) = faults;
    StatusCode::NO_CONTENT
}
