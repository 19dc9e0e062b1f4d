//! An OpenAI API simulator for keypool's tests, demo and benchmarks.
//!
//! It speaks the subset of the OpenAI HTTP API a key-pooling gateway depends on (see
//! `shared/openai-semantics.md`): per-key RPM/TPM limits with OpenAI's headers and 429
//! bodies, revoked and exhausted keys, SSE streams paced over time (chat, completions and
//! the Responses API, ending in each way [`StreamEnds`] can choose), injected faults, and
//! counters that let tests verify what actually reached the upstream.

mod config;
mod conn;
mod errors;
mod gate;
mod godur;
mod handlers;
mod limits;
mod state;
mod stats;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::{ChargeRule, Faults, KeyState, LimitMode, ResponsesTerminal, SimConfig, SimKey, StreamEnds};
pub use godur::format_go_duration;
pub use stats::{KeyStats, Stats};

use conn::{ConnKill, KillableListener};
use state::{lock, Shared};

/// A running simulator. Dropping it (or [`Simulator::shutdown`]) stops accepting
/// connections; in-flight answers finish.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Simulator {
    /// Binds 127.0.0.1:0 (or `cfg.listen` if set) and serves in a spawned tokio task.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        let listen = cfg.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&cfg));
        let app = handlers::router(shared.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<ConnKill>();
            let served = axum::serve(KillableListener(listener), service)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!("simulator stopped: {e}");
            }
        });
        Ok(Simulator { addr, shared, cancel })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// e.g. `http://127.0.0.1:PORT/v1`; in Azure mode the resource's root
    /// (`http://127.0.0.1:PORT`, its v1 API under `/openai/v1`).
    pub fn base_url(&self) -> String {
        if self.shared.azure {
            return format!("http://{}", self.addr);
        }
        format!("http://{}{}", self.addr, self.shared.prefix)
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Counters of one key; zeros if it was never presented.
    pub fn key_stats(&self, key: &str) -> KeyStats {
        lock(&self.shared.stats).keys.get(key).cloned().unwrap_or_default()
    }

    /// Adds or replaces a key (a replaced key starts with a full budget).
    /// `key`'s credit left in micro-USD (below zero by the last answer's
    /// cost at most); None when it has no balance.
    pub fn balance(&self, key: &str) -> Option<i64> {
        self.shared.balance_of(key).map(|(_, left)| left)
    }

    pub fn add_key(&self, key: SimKey) {
        self.shared.add_key(&key);
    }

    /// Changes a key's account state, keeping its limiter; unknown keys are added unlimited.
    pub fn set_key_state(&self, key: &str, state: KeyState) {
        self.shared.set_key_state(key, state);
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.shared.latency) = latency;
    }

    /// Stops accepting connections (same as dropping).
    pub fn shutdown(self) {}
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
