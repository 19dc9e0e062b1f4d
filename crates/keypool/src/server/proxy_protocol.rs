//! The PROXY protocol (`server.proxy_protocol`): a load balancer that
//! passes TCP through (HAProxy, AWS NLB, ...) sends the client's address in
//! a header before anything else, v1 (text) or v2 (binary), and before TLS.
//! It is believed only from a peer in `telemetry.trusted_proxies`; the
//! address it carries is then the connection's caller for everything
//! downstream (the token's networks, the request log, per-address limits).
//!
//! The header is read without taking a byte past it (peeked first, then
//! read to its end), so what follows reaches TLS or hyper untouched, and
//! with bounds on its size ([`MAX_HEADER`]) and, by the caller, on its time.
//! Parsed by the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Cidr;

/// Largest header accepted, TLVs included. A v1 header is at most 107
/// bytes; a v2 one with IPv6 addresses 52, and load balancers add a few
/// TLVs (a TLS server name, an endpoint id) to that.
pub const MAX_HEADER: usize = 4096;

/// What starts a v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What starts a v1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, its CRLF included.
const V1_MAX: usize = 107;

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection closed before its PROXY header ended")]
    Closed,
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("the PROXY header is longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("the PROXY header is malformed: {0}")]
    Malformed(String),
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Who may send a PROXY header, and the bounded warnings about the others.
#[derive(Debug)]
pub struct ProxyProtocol {
    trusted: Vec<Cidr>,
    refusals: Refusals,
}

impl ProxyProtocol {
    pub fn new(trusted: Vec<Cidr>) -> ProxyProtocol {
        ProxyProtocol { trusted, refusals: Refusals::new() }
    }

    /// The caller of a connection from `peer`: the source address its
    /// header carries, or `peer` itself for a LOCAL command (a proxy's own
    /// health check) or an address that is not IP. `None` when the
    /// connection must be closed: `peer` is not a trusted proxy, or the
    /// header is missing or malformed (each said at warn, at most once a
    /// minute, with how many were not said).
    pub async fn caller(&self, stream: &mut TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
        if !self.trusted.iter().any(|c| c.contains(peer.ip())) {
            self.refusals.note(|suppressed| {
                tracing::warn!(
                    peer = %peer.ip(),
                    suppressed,
                    "a connection from a peer outside telemetry.trusted_proxies was closed \
                     (server.proxy_protocol is on: only trusted proxies may connect)"
                );
            });
            return None;
        }
        let header = match read_header(stream).await.and_then(|h| source(&h)) {
            Ok(header) => header,
            Err(e) => {
                self.refusals.note(|suppressed| {
                    tracing::warn!(peer = %peer.ip(), error = %e, suppressed, "a connection without a usable PROXY header was closed");
                });
                return None;
            }
        };
        Some(header.unwrap_or(peer))
    }
}

/// Reads one PROXY header off `stream`, and not a byte more.
async fn read_header(stream: &mut TcpStream) -> Result<Vec<u8>, HeaderError> {
    let mut got = Vec::new();
    let mut window = vec![0u8; 256];
    loop {
        let n = stream.peek(&mut window).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let before = got.len();
        got.extend_from_slice(&window[..n]);
        let (take, whole) = match header_len(&got)? {
            Some(total) if total > MAX_HEADER => return Err(HeaderError::TooLong),
            Some(total) if total <= got.len() => (total - before, true),
            // Not all here yet: take what is, so the next peek waits for more.
            _ => (n, false),
        };
        got.truncate(before + take);
        stream.read_exact(&mut window[..take]).await?;
        if whole {
            return Ok(got);
        }
    }
}

/// The length of the header `bytes` begin with, once it can be told;
/// `None` while too few bytes have come.
fn header_len(bytes: &[u8]) -> Result<Option<usize>, HeaderError> {
    if bytes.starts_with(V2_SIGNATURE) {
        return Ok(bytes.get(14..16).map(|len| 16 + usize::from(u16::from_be_bytes([len[0], len[1]]))));
    }
    if bytes.starts_with(V1_PREFIX) {
        return match memchr::memmem::find(bytes, b"\r\n") {
            Some(at) => Ok(Some(at + 2)),
            None if bytes.len() >= V1_MAX => Err(HeaderError::TooLong),
            None => Ok(None),
        };
    }
    if V2_SIGNATURE.starts_with(bytes) || V1_PREFIX.starts_with(bytes) {
        return Ok(None);
    }
    Err(HeaderError::Missing)
}

/// The client's address in a whole header; `None` when it names none (LOCAL,
/// UNKNOWN, a UNIX socket).
fn source(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let malformed = |e: &dyn std::fmt::Display| HeaderError::Malformed(e.to_string());
    if header.starts_with(V2_SIGNATURE) {
        let parsed = ppp::v2::Header::try_from(header).map_err(|e| malformed(&e))?;
        if parsed.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
            ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        });
    }
    let parsed = ppp::v1::Header::try_from(header).map_err(|e| malformed(&e))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// How often a refused connection is said at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Refused connections: the first of each minute is said, the rest counted
/// (a scan of the port must not flood the log). Shared by every worker.
#[derive(Debug)]
struct Refusals {
    start: Instant,
    /// Milliseconds after `start` when one was last said (`u64::MAX`: never).
    said_at: AtomicU64,
    /// Refused since then, not said.
    suppressed: AtomicU64,
}

impl Refusals {
    fn new() -> Refusals {
        Refusals { start: Instant::now(), said_at: AtomicU64::new(u64::MAX), suppressed: AtomicU64::new(0) }
    }

    /// Counts a refusal; calls `say` with the number not said since the last
    /// time it was, when a minute has passed since then.
    fn note(&self, say: impl FnOnce(u64)) {
        let now = self.start.elapsed().as_millis().min(u128::from(u64::MAX - 1)) as u64;
        let last = self.said_at.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= REFUSAL_LOG_EVERY.as_millis() as u64;
        if due && self.said_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            say(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("a connection was refused by the PROXY protocol check");
        }
    }
}

#[cfg(test)]
mod tests;
