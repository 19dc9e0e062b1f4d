//! The `[server]` section: how keypool treats the connections of its callers
//! (slow, silent and stalled ones), whether it speaks TLS and the PROXY
//! protocol, how it stops, and which caller headers it forwards.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Cidr, ConfigError};

/// Settings of the caller-facing edge. Every duration is a humantime string
/// in the file (`"30s"`, `"2m"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Longest a caller may take to send a request's head (request line and
    /// headers), counted from its first byte; a new connection that sends
    /// nothing is closed after it too. A kept-alive connection waiting for
    /// its next request is governed by `keep_alive_timeout` instead, so a
    /// load balancer's idle connections are not closed under it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest a connection may stay open with no request in flight (HTTP/1.1
    /// keep-alive and HTTP/2 alike).
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Longest a write to a caller may make no progress: a caller that stops
    /// reading a stream is disconnected after it, which gives its key back.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Slowest upload accepted, in bytes per second, averaged over
    /// `min_body_rate_window` while keypool waits for the body; a slower
    /// caller gets 408 (its own error; no key or upstream is blamed). 0 turns
    /// the check off.
    pub min_body_rate: u64,
    /// The window `min_body_rate` is measured over; also the longest a body
    /// may stay silent.
    #[serde(with = "humantime_serde")]
    pub min_body_rate_window: Duration,
    /// How often an HTTP/2 connection is pinged to find a caller that is gone.
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    /// How long an HTTP/2 ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
    /// Most caller connections open at once (0: no cap). Past it, new
    /// connections wait in the listen backlog and a warning is logged. Keep it
    /// under the process's file-descriptor limit (`ulimit -n`), which also
    /// counts upstream connections and the database.
    pub max_connections: usize,
    /// On SIGTERM, how long requests in flight may still finish; open streams
    /// are then ended with an error event. 25 s fits inside Kubernetes' default
    /// 30 s termination grace.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Forward the caller's `OpenAI-Organization` and `OpenAI-Project`
    /// headers. Off by default: account headers belong to the key, and an
    /// upstream refuses a key with another account's (401
    /// `mismatched_organization`).
    pub forward_account_headers: bool,
    /// The listener's certificate chain (PEM, leaf first). With `tls_key`,
    /// the listener speaks TLS only (HTTP/2 or HTTP/1.1 by ALPN); both are
    /// read again when they change on disk. Unset (the default): plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, RSA or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Every connection must begin with a PROXY protocol header (v1 or v2),
    /// accepted only from a peer in `telemetry.trusted_proxies`; the address
    /// it carries is then the connection's caller. Others are closed.
    pub proxy_protocol: bool,
    /// Longest request target (path and query) accepted, in bytes; a longer
    /// one is answered 414.
    pub max_uri_bytes: usize,
    /// Most bytes of header names and values a request may carry; more (or
    /// more than 100 fields) is answered 431. On HTTP/2 it is also the
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` announced (which counts 32 bytes
    /// more per field).
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(60),
            min_body_rate: 1024,
            min_body_rate_window: Duration::from_secs(15),
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(25),
            forward_account_headers: false,
            tls_cert: None,
            tls_key: None,
            proxy_protocol: false,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
        }
    }
}

impl ServerConfig {
    /// The name of the first duration that is zero (none may be).
    pub(super) fn zero_duration(&self) -> Option<&'static str> {
        [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.keep_alive_timeout", self.keep_alive_timeout),
            ("server.write_timeout", self.write_timeout),
            ("server.min_body_rate_window", self.min_body_rate_window),
            ("server.http2_keep_alive_interval", self.http2_keep_alive_interval),
            ("server.http2_keep_alive_timeout", self.http2_keep_alive_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero())
        .map(|(name, _)| name)
    }

    /// The scheme callers reach the listener with: `https` with TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Refuses a certificate without its key (or the reverse), and the PROXY
    /// protocol with no proxy to accept it from. The files themselves are
    /// read when the listener starts.
    pub(super) fn validate_front(&self, trusted_proxies: &[Cidr]) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    setting: "server.tls_key",
                    reason: "must be set with server.tls_cert (the certificate's private key, PEM)".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "server.tls_cert",
                    reason: "must be set with server.tls_key (the certificate chain, PEM)".into(),
                })
            }
            _ => {}
        }
        if self.proxy_protocol && trusted_proxies.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "server.proxy_protocol",
                reason: "needs telemetry.trusted_proxies: the PROXY header is accepted only from those peers, \
                         so every connection would be closed"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_zero_duration_is_refused_by_name() {
        let config = Config {
            server: ServerConfig { write_timeout: Duration::ZERO, ..ServerConfig::default() },
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("server.write_timeout"), "{err}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_by_name() {
        let half = |cert: bool| Config {
            server: ServerConfig {
                tls_cert: cert.then(|| "cert.pem".into()),
                tls_key: (!cert).then(|| "key.pem".into()),
                ..ServerConfig::default()
            },
            ..Config::default()
        };
        let err = half(true).validate().unwrap_err().to_string();
        assert!(err.contains("server.tls_key"), "{err}");
        let err = half(false).validate().unwrap_err().to_string();
        assert!(err.contains("server.tls_cert"), "{err}");
    }

    #[test]
    fn the_proxy_protocol_needs_trusted_proxies() {
        let mut config =
            Config { server: ServerConfig { proxy_protocol: true, ..ServerConfig::default() }, ..Config::default() };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("server.proxy_protocol") && err.contains("trusted_proxies"), "{err}");
        config.telemetry.trusted_proxies = vec![Cidr::try_from("127.0.0.1".to_owned()).unwrap()];
        config.validate().unwrap();
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keypool.example.toml");
        let config = Config::load(Some(&path), &crate::config::Overrides::default()).unwrap();
        assert_eq!(config.server, ServerConfig::default());
    }
}
