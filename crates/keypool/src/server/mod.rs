//! The HTTP edge: routes, gateway-token auth, request inspection, and the
//! conversion of every error into OpenAI's JSON shape (in `error`).

mod accept;
mod auth;
mod error;
mod inspect;
mod metered;
mod pace;
mod proxy;
mod service;
mod stalled;
mod unread;
mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{any, get};
use axum::{Json, Router};

pub use auth::{generate_token, hash_token, TokenSet, TOKEN_PREFIX};
pub use error::{ApiError, Fault};
pub use pace::CallerPace;
pub use workers::{serve, worker_count, Edge};

use crate::config::Config;
use crate::scheduler::Scheduler;
use crate::upstream::{Breaker, Upstream};

/// What request handlers share. Built once at start.
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    pub tokens: Arc<TokenSet>,
    pub upstream: Upstream,
    pub breaker: Arc<Breaker>,
    pub config: Config,
}

/// The router. Layers, outermost first: none yet beyond axum's own; the body
/// limit is enforced by inspection (so uploads can stream), which is why
/// axum's default limit is switched off.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/{*rest}", any(proxy::proxy))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "keys": app.scheduler.usable_keys() }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_owned())
}
