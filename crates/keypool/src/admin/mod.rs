//! The admin REST API under `/admin/api/`: keys with their live state,
//! gateway tokens, the request log and its export, statistics per key,
//! token and model from the rollups, and the audit log of admin changes;
//! JSON, behind `Authorization: Bearer <admin_token>`, and described by an
//! OpenAPI 3.1 document generated from these handlers
//! (`/admin/api/openapi.json`, committed as `docs/admin-openapi.json`).
//!
//! Always on. The token is the `admin_token` setting when set; else the
//! one stored (as a SHA-256 digest) in the database: the first
//! `keypool serve` generates and prints it, `keypool admin token` sets a
//! new one, and running servers take it up within a sync interval
//! ([`token`]).
//!
//! Runtimes: the gateway serves connections on current-thread worker
//! runtimes while the store's pool lives on the main runtime. A pooled
//! PostgreSQL connection's socket belongs to the runtime that opened it, and
//! sqlx spawns its pool's upkeep on the current runtime, so store work from
//! a worker would tie connections to that worker's life. Every handler's
//! work therefore runs on the main runtime ([`AdminState::run`]).

mod audit;
mod auth;
mod error;
mod keys;
mod openapi;
mod overview;
mod requests;
mod session;
mod sign_in;
mod stats;
pub mod token;
mod tokens;
mod upstreams;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Notify};

pub use error::AdminError;
pub use openapi::document;

use crate::config::Config;
use crate::routing::Pools;
use crate::store::{AuditEntry, Store};
pub use auth::{peer_of, Gate};
pub use token::{Access, LiveToken, Role};

/// Asks the sync task (app.rs) to reload keys and tokens now, and tells
/// which store revision it has applied, so an admin change is live when
/// its answer leaves.
#[derive(Debug)]
pub struct Resync {
    kick: Notify,
    applied: watch::Sender<i64>,
}

impl Default for Resync {
    fn default() -> Resync {
        Resync { kick: Notify::new(), applied: watch::Sender::new(i64::MIN) }
    }
}

impl Resync {
    /// Resolves when a reload is asked for.
    pub async fn asked(&self) {
        self.kick.notified().await
    }

    /// Says the in-memory state now matches store revision `revision`.
    pub fn applied(&self, revision: i64) {
        self.applied.send_replace(revision);
    }
}

/// Longest an admin change waits for the running server to pick it up.
const RESYNC_WAIT: Duration = Duration::from_secs(5);

/// What the admin handlers share.
pub struct AdminState {
    pub store: Store,
    /// Every upstream's key pool and breaker.
    pub pools: Arc<Pools>,
    /// The admin tokens in force and the sign-in limit.
    pub gate: Arc<Gate>,
    pub resync: Arc<Resync>,
    /// The main runtime, where store work runs (see the module doc).
    pub main: tokio::runtime::Handle,
    /// The settings the overview and upstream routes read (`time_zone`,
    /// `upstream`, `proxy`, `timeouts`, `health.probe_model`).
    pub config: Arc<Config>,
}

impl AdminState {
    /// The names of the upstreams in force (a reload may have changed them).
    pub fn upstream_names(&self) -> Vec<String> {
        self.pools.load().all().iter().map(|p| p.name().to_owned()).collect()
    }

    /// The configured time zone (validated at load; UTC if it cannot be found).
    pub(crate) fn time_zone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.config.time_zone).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    /// Runs `work` on the main runtime and waits for it.
    async fn run<T, Fut>(self: &Arc<Self>, work: impl FnOnce(Arc<AdminState>) -> Fut) -> Result<T, AdminError>
    where
        Fut: Future<Output = Result<T, AdminError>> + Send + 'static,
        T: Send + 'static,
    {
        self.main.spawn(work(Arc::clone(self))).await.map_err(|_| AdminError::Internal("the admin task failed"))?
    }

    /// Makes the running server load the store's current keys and tokens,
    /// and waits (up to [`RESYNC_WAIT`]) until it has.
    async fn resync(&self) -> Result<(), AdminError> {
        let revision = self.store.revision().await?;
        let mut applied = self.resync.applied.subscribe();
        self.resync.kick.notify_one();
        let caught_up = tokio::time::timeout(RESYNC_WAIT, applied.wait_for(|r| *r >= revision)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            tracing::warn!("an admin change was not picked up within {RESYNC_WAIT:?}; it will be at the next sync");
        }
        Ok(())
    }

    /// Writes who changed what to the audit log.
    async fn audit(
        &self,
        who: &Caller,
        action: &str,
        target_id: Option<i64>,
        details: serde_json::Value,
    ) -> Result<(), AdminError> {
        let entry = AuditEntry {
            id: 0,
            at: crate::store::now_unix_ms(),
            actor: who.actor.clone(),
            client_addr: who.addr.map(|a| a.ip().to_string()),
            action: action.to_owned(),
            target_id,
            details: details.to_string(),
        };
        self.store.add_audit(&entry).await?;
        Ok(())
    }
}

/// Who made an admin request: the client's address and the admin token's
/// fingerprint (the audit log's actor).
#[derive(Debug, Clone)]
pub struct Caller {
    addr: Option<SocketAddr>,
    actor: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Caller, Self::Rejection> {
        let addr = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
        // Set by the admin token check every admin route is behind.
        let actor = parts.extensions.get::<Access>().map_or_else(|| "admin".to_owned(), |a| a.actor.clone());
        Ok(Caller { addr, actor })
    }
}

/// The admin routes, nested under `/admin/api`, every one behind the admin
/// token (the OpenAPI document too: with no token the surface is not even
/// listed; the same document is committed in docs/ for tools).
///
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi::serve))
        .route("/session", get(session::session))
        .route("/overview", get(overview::overview))
        .route("/upstreams", get(upstreams::list))
        .route("/upstreams/{name}/test", post(upstreams::test))
        .route("/keys", get(keys::list).post(keys::add))
        .route("/keys/import", post(keys::import))
        .route("/keys/{id}", get(keys::one).patch(keys::edit).delete(keys::remove))
        .route("/keys/{id}/enable", post(keys::enable))
        .route("/keys/{id}/disable", post(keys::disable))
        .route("/keys/{id}/reset", post(keys::reset))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::patch(tokens::edit))
        .route("/tokens/{id}/revoke", post(tokens::revoke))
        .route("/tokens/{id}/regenerate", post(tokens::regenerate))
        .route("/requests", get(requests::list))
        .route("/requests/export", get(requests::export))
        .route("/requests/{id}", get(requests::one))
        .route("/stats", get(stats::by_subject))
        .route("/stats/series", get(stats::series))
        .route("/audit", get(audit::list))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method);
    let mut api = Router::new()
        .nest("/admin/api", api)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), auth::require_token));
    // Outside the token check: a browser's preflight carries no token.
    if let Some(cors) = crate::server::cors::layer(&state.config.cors.admin_origins) {
        api = api.layer(cors);
    }
    api.merge(web::router()).with_state(state)
}

async fn unknown_path(uri: axum::http::Uri) -> AdminError {
    AdminError::UnknownPath(uri.path().to_owned())
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> AdminError {
    AdminError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}
