//! What stands between an accepted socket and HTTP when it is configured:
//! the PROXY header (read first, as a load balancer sends it before TLS),
//! then the TLS handshake. Both must be over within
//! `server.header_read_timeout` of the accept, like a request head; a
//! connection without either never comes here (workers::serve_handed_over).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::proxy_protocol::ProxyProtocol;
use super::tls::{Tls, TlsError, TlsFiles};
use super::workers::{Edge, SILENT_GRACE};

/// A caller's stream, and the socket under it (peeked at to tell HTTP/2
/// with prior knowledge from HTTP/1.1 on a plain connection).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn socket(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Socket for TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The listener's front: TLS, the PROXY protocol, or both.
pub struct Front {
    tls: Option<Tls>,
    proxy: Option<ProxyProtocol>,
}

/// A connection through the front, ready for HTTP. Not boxed: it is moved
/// at once into the connection's task, which holds the TLS state inline
/// anyway (a box would be one more allocation per TLS connection).
#[allow(clippy::large_enum_variant)]
pub enum Opened {
    Plain(TcpStream),
    Tls(TlsStream<TcpStream>),
}

impl Front {
    /// The front `edge` asks for, `None` when it asks for neither (plain
    /// HTTP, the connection's peer its caller). The TLS files are read and
    /// checked here (an error names the setting), then followed until `stop`.
    pub fn start(edge: &Edge, stop: &CancellationToken) -> Result<Option<Front>, TlsError> {
        let tls = match (&edge.config.tls_cert, &edge.config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(Tls::start(TlsFiles { cert: cert.clone(), key: key.clone() }, stop.clone())?)
            }
            _ => None,
        };
        let proxy = edge.config.proxy_protocol.then(|| ProxyProtocol::new(edge.trusted_proxies.clone()));
        Ok((tls.is_some() || proxy.is_some()).then_some(Front { tls, proxy }))
    }

    /// The connection from `peer` with its PROXY header read and its TLS
    /// established, and its caller; `None` when it was closed instead (not
    /// within `within`, or within [`SILENT_GRACE`] once `closing`).
    pub async fn open(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        within: Duration,
        closing: &CancellationToken,
    ) -> Option<(Opened, SocketAddr)> {
        let deadline = Instant::now() + within;
        let caller = match &self.proxy {
            None => peer,
            Some(proxy) => bounded(proxy.caller(&mut stream, peer), deadline, closing, "its PROXY header").await??,
        };
        let Some(tls) = &self.tls else { return Some((Opened::Plain(stream), caller)) };
        match bounded(tls.acceptor.accept(stream), deadline, closing, "its TLS handshake").await? {
            Ok(stream) => Some((Opened::Tls(stream), caller)),
            Err(e) => {
                tracing::debug!(error = %e, client = %caller.ip(), "a TLS handshake failed; connection closed");
                None
            }
        }
    }
}

/// `step`'s outcome, or `None` when it did not end by `deadline` (or within
/// [`SILENT_GRACE`] of `closing`).
async fn bounded<F: Future>(
    step: F,
    deadline: Instant,
    closing: &CancellationToken,
    what: &'static str,
) -> Option<F::Output> {
    let mut step = std::pin::pin!(step);
    tokio::select! {
        biased;
        done = step.as_mut() => Some(done),
        _ = tokio::time::sleep_until(deadline) => {
            tracing::debug!("a connection did not send {what} within server.header_read_timeout; closed");
            None
        }
        _ = closing.cancelled() => tokio::time::timeout(SILENT_GRACE, step).await.ok(),
    }
}
