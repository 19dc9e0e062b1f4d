//! The admin API's door: a bearer token compared in constant time against
//! every admin token in force, wrong tokens counted per client address
//! ([`SignInLimit`]), and read-only tokens kept to reading.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::sign_in::SignInLimit;
use super::token::{Access, Role};
use super::{AdminError, AdminState, LiveToken};
use crate::config::Cidr;

/// Who may pass: the admin tokens in force, and how many wrong ones an
/// address may send. Shared by the admin API and `/metrics` on the main
/// listener.
#[derive(Debug)]
pub struct Gate {
    pub tokens: Arc<LiveToken>,
    limit: SignInLimit,
    /// `telemetry.trusted_proxies`: the address counted is the client
    /// behind them ([`crate::server::client::real_client`]).
    trusted: Vec<Cidr>,
}

impl Gate {
    /// A gate over `tokens` allowing `attempts_per_minute` wrong tokens per
    /// address (0: no limit).
    pub fn new(tokens: Arc<LiveToken>, attempts_per_minute: u32, trusted: Vec<Cidr>) -> Gate {
        Gate { tokens, limit: SignInLimit::new(attempts_per_minute), trusted }
    }

    /// Who sends `headers` over a connection from `peer`.
    ///
    /// # Errors
    /// [`AdminError::TooManySignIns`] while the client's address has used
    /// up its wrong tokens (even with a right one: the guesser may have just
    /// found it); [`AdminError::MissingToken`] without a bearer token;
    /// [`AdminError::InvalidToken`] with one not in force (counted).
    pub fn admit(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<Access, AdminError> {
        let client = crate::server::client::real_client(peer.map(|p| p.ip()), headers, &self.trusted);
        if let Some(wait) = client.and_then(|ip| self.limit.refused(ip)) {
            return Err(AdminError::TooManySignIns { retry_after: wait });
        }
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::server::bearer_token);
        let Some(presented) = presented else { return Err(AdminError::MissingToken) };
        match self.tokens.access(presented) {
            Some(access) => Ok(access),
            None => {
                if let Some(ip) = client {
                    if self.limit.failed(ip) {
                        self.locked_out(ip);
                    }
                }
                Err(AdminError::InvalidToken)
            }
        }
    }
}

impl Gate {
    /// Says that `ip` is refused for the rest of its minute. A private or
    /// loopback address with no trusted proxies is most likely a proxy in
    /// front that was not declared: every client then shares its address,
    /// and one of them guessing locks all of them out.
    fn locked_out(&self, ip: std::net::IpAddr) {
        let shared = self.trusted.is_empty()
            && match ip {
                std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
                std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local(),
            };
        if shared {
            tracing::warn!(
                client = %ip,
                "too many wrong admin tokens: this address is refused for a minute (admin.sign_in_attempts_per_minute). \
                 If it is a proxy in front of keypool, list it in telemetry.trusted_proxies, or all its clients share \
                 this lockout"
            );
        } else {
            tracing::warn!(
                client = %ip,
                "too many wrong admin tokens: this address is refused for a minute (admin.sign_in_attempts_per_minute)"
            );
        }
    }
}

/// The connection's peer address, when the server recorded it.
pub fn peer_of(req: &Request) -> Option<SocketAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Lets the request through with its [`Access`] in its extensions when it
/// carries an admin token allowed to do what it asks; the error otherwise
/// (a read-only token asking to change something: 403 `read_only_token`).
pub async fn require_token(State(state): State<Arc<AdminState>>, mut req: Request, next: Next) -> Response {
    let access = match state.gate.admit(req.headers(), peer_of(&req)) {
        Ok(access) => access,
        Err(e) => return e.into_response(),
    };
    if access.role == Role::Viewer && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return AdminError::ReadOnly.into_response();
    }
    req.extensions_mut().insert(access);
    next.run(req).await
}
