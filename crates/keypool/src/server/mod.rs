//! The HTTP edge: routes, gateway-token auth, request inspection, and the
//! conversion of every error into OpenAI's JSON shape (in `error`).

mod accept;
mod attempt;
mod auth;
mod billing;
mod charge;
pub mod client;
mod context;
pub mod cors;
mod error;
pub(crate) mod form;
mod framing;
mod front;
pub(crate) mod inspect;
mod metered;
mod models;
mod pace;
mod proxy;
mod proxy_protocol;
mod service;
mod signal;
mod stalled;
mod tls;
mod unread;
mod upload;
mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{any, get};
use axum::{Json, Router};

pub use auth::{
    bearer_token, generate_token, hash_token, limit_refusal_log, log_refusal, LiveToken, TokenId, TokenSet,
    TOKEN_PREFIX,
};
pub use context::{RequestContext, CLIENT_REQUEST_ID_HEADER, REQUEST_ID_HEADER};
pub use error::{ApiError, Fault};
pub use pace::CallerPace;
pub use signal::GraceEnd;
pub use workers::{serve, worker_count, Edge};

use crate::config::Config;
use crate::routing::{PoolSet, Pools};
use crate::upstream::Upstream;

/// What request handlers share. Built once at start.
pub struct AppState {
    /// Every upstream's keys, breaker and quirks (shared by every worker).
    pub pools: Arc<Pools>,
    pub tokens: Arc<TokenSet>,
    /// This worker's client for each upstream of the set in force, built
    /// again when a reload puts a new set in force.
    pub clients: std::sync::Mutex<Arc<Clients>>,
    pub config: Config,
    /// Model prices already resolved (this worker's; see `PriceCache`).
    pub prices: crate::config::models::PriceCache,
    /// Where each request's record goes when it ends.
    pub recorder: crate::records::Recorder,
    /// Which key created each file, batch and stored response.
    pub affinity: Arc<crate::routing::Affinity>,
    /// The store (the billing endpoints read it), and the main runtime its
    /// connections live on, where it is read.
    pub store: crate::store::Store,
    pub main: tokio::runtime::Handle,
}

/// A worker's clients for one set of upstreams, in the set's order: each
/// worker has its own, so pooled upstream connections stay on its thread.
pub struct Clients {
    generation: u64,
    list: Vec<Upstream>,
}

impl Clients {
    /// A client for each upstream of `set` ([`Upstream::for_upstream`]).
    pub fn build(set: &PoolSet, config: &Config) -> Result<Clients, crate::upstream::UpstreamError> {
        let list = set.all().iter().map(|p| Upstream::for_pool(&p.upstream, config)).collect::<Result<_, _>>()?;
        Ok(Clients { generation: set.generation(), list })
    }

    /// The clients, in the set's order.
    pub fn into_list(self) -> Vec<Upstream> {
        self.list
    }

    /// The client for the upstream at `index` (the default's when out of
    /// range: both come from the same set).
    pub fn get(&self, index: usize) -> &Upstream {
        &self.list[index.min(self.list.len().saturating_sub(1))]
    }
}

impl AppState {
    /// This worker's clients for `set`: built once per set (at the first
    /// request after a reload).
    pub fn clients_for(&self, set: &PoolSet) -> Result<Arc<Clients>, ApiError> {
        let held = Arc::clone(&self.clients.lock().unwrap_or_else(|p| p.into_inner()));
        if held.generation == set.generation() {
            return Ok(held);
        }
        // Built outside the lock; kept only when it is for a newer set (a
        // request still on an older set gets clients of its own).
        let built = Arc::new(Clients::build(set, &self.config).map_err(|e| {
            tracing::error!(error = %e, "could not build the upstream clients of the new configuration");
            ApiError::Internal("the upstream clients could not be built")
        })?);
        let mut slot = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if slot.generation < built.generation {
            *slot = Arc::clone(&built);
        }
        Ok(built)
    }
}

/// The router. Layers, outermost first: CORS on `/v1/*` when `[cors]
/// origins` are configured (absent otherwise); the body limit is enforced
/// by inspection (so uploads can stream), which is why axum's default limit
/// is switched off.
pub fn router(state: Arc<AppState>) -> Router {
    let mut v1 = Router::new().route("/v1/{*rest}", any(proxy::proxy));
    if let Some(cors) = cors::layer(&state.config.cors.origins) {
        v1 = v1.layer(cors);
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(v1)
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Liveness: 200 while the process serves, with keys counted by state
/// (`keys` is the number that can serve, now or after a cool-down).
async fn healthz(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let counts = app.pools.census();
    Json(serde_json::json!({ "status": "ok", "keys": counts.usable(), "states": counts }))
}

/// Readiness: 503 when no key can serve (none configured, or all invalid,
/// exhausted, disabled, expired or over budget) or the upstream is down, so
/// a monitor or load balancer that reads only the status notices.
async fn readyz(State(app): State<Arc<AppState>>) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let counts = app.pools.census();
    // Down when every upstream is failing for every key.
    let upstream_down = app.pools.load().all().iter().all(|p| p.breaker.is_open());
    let ready = counts.usable() > 0 && !upstream_down;
    let status = if ready { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let reason = if counts.total() == 0 {
        "no upstream keys are configured".to_owned()
    } else if counts.usable() == 0 {
        format!("no key can serve: {}", counts.describe())
    } else if upstream_down {
        "the upstream is failing for every key".to_owned()
    } else {
        String::new()
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "reason": reason,
        "states": counts,
        "upstream_down": upstream_down,
    });
    (status, Json(body))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_owned())
}
