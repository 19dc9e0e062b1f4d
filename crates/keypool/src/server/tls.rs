//! TLS on the listener (`server.tls_cert` and `server.tls_key`): rustls with
//! the same crypto provider (ring) as the upstream clients, HTTP/2 and
//! HTTP/1.1 offered by ALPN, and the certificate read again when its files
//! change, for new handshakes only (connections already open keep theirs).
//!
//! The files are polled (every [`POLL`]) for the same reason the config file
//! is (crate::reload): certificate managers and Kubernetes Secrets replace
//! files by renames and symlink swaps that a look at the path sees and a
//! watch on the old inode misses. A pair is put in force once both files
//! read the same on two looks in a row, so a look between the writes of the
//! certificate and of its key is not taken for a change; a pair that does
//! not load (unreadable, not PEM, or a key that is not the certificate's)
//! is logged and the one in force kept. The delay measured from a write to
//! new handshakes seeing it is in the README (The edge).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Why a certificate and key could not be put in force; names the setting
/// whose file is at fault. Never quotes the files' contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: could not read {}: {source}", path.display())]
    Read { setting: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{setting}: {} holds no usable PEM {what}: {reason}", path.display())]
    Pem { setting: &'static str, path: PathBuf, what: &'static str, reason: String },
    #[error("server.tls_key: {} cannot serve {}: {reason}", key.display(), cert.display())]
    Pair { cert: PathBuf, key: PathBuf, reason: String },
}

/// Where the certificate chain and its key are read from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files' bytes as last read, to tell a change.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl TlsFiles {
    /// Both files' bytes (small files, read whole).
    fn read(&self) -> Result<Contents, TlsError> {
        let read = |setting: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { setting, path: path.to_owned(), source })
        };
        Ok(Contents { cert: read("server.tls_cert", &self.cert)?, key: read("server.tls_key", &self.key)? })
    }

    /// The certificate and key in `contents`, checked to belong together.
    fn load(&self, contents: &Contents) -> Result<CertifiedKey, TlsError> {
        let pem =
            |setting, path: &Path, what, reason: String| TlsError::Pem { setting, path: path.to_owned(), what, reason };
        let chain = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("server.tls_cert", &self.cert, "certificate", e.to_string()))?;
        if chain.is_empty() {
            return Err(pem("server.tls_cert", &self.cert, "certificate", "no CERTIFICATE section".into()));
        }
        // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) sections alike.
        let key = PrivateKeyDer::from_pem_slice(&contents.key)
            .map_err(|e| pem("server.tls_key", &self.key, "private key", e.to_string()))?;
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: e.to_string(),
        })
    }
}

/// The crypto provider of every TLS config keypool builds (the upstream
/// clients' too): ring, as the workspace's features select.
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate in force, swapped whole by a reload.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The listener's TLS: what handshakes, and the certificate it shows.
pub struct Tls {
    pub acceptor: TlsAcceptor,
}

/// The ALPN name of HTTP/2.
pub const H2: &[u8] = b"h2";

impl Tls {
    /// Reads and checks `files` (an error names the setting at fault), and
    /// starts following them until `stop`.
    pub fn start(files: TlsFiles, stop: CancellationToken) -> Result<Tls, TlsError> {
        let contents = files.read()?;
        let key = files.load(&contents)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(key)));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair { cert: files.cert.clone(), key: files.key.clone(), reason: e.to_string() })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![H2.to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(follow(files, Arc::clone(&current), contents, stop));
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)) })
    }
}

/// Puts each changed pair in force (see the module docs) until `stop`.
async fn follow(files: TlsFiles, current: Arc<Current>, mut seen: Contents, stop: CancellationToken) {
    let mut pending: Option<Contents> = None;
    // Whether the files could not be read at the last look (said once).
    let mut unreadable = false;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reading = files.clone();
        let now = match tokio::task::spawn_blocking(move || reading.read()).await {
            Ok(Ok(now)) => now,
            Err(e) => {
                tracing::warn!(error = %e, "the look at the TLS files failed");
                continue;
            }
            // Gone for a moment (a swap under way) or for good: said once.
            Ok(Err(e)) => {
                if !unreadable {
                    tracing::warn!(error = %e, "the TLS files cannot be read; the certificate in force stays");
                }
                unreadable = true;
                continue;
            }
        };
        unreadable = false;
        if now == seen {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        seen = now;
        pending = None;
        match files.load(&seen) {
            Ok(key) => {
                current.0.store(Arc::new(key));
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded: new connections use it");
            }
            Err(e) => tracing::error!(
                error = %e,
                "the changed TLS certificate is refused; the one in force stays (fix the files and save them again)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn load(cert: &str, key: &str) -> Result<CertifiedKey, TlsError> {
        let files = TlsFiles { cert: fixture(cert), key: fixture(key) };
        files.load(&files.read()?)
    }

    #[test]
    fn keys_in_pkcs8_pkcs1_and_sec1_form_load() {
        load("server.pem", "server.key").unwrap();
        load("server.pem", "server-pkcs1.key").unwrap();
        load("ec.pem", "ec-sec1.key").unwrap();
    }

    #[test]
    fn a_bad_pair_names_the_setting_at_fault() {
        let err = load("server.pem", "ec-sec1.key").unwrap_err().to_string();
        assert!(err.starts_with("server.tls_key:") && err.contains("ec-sec1.key"), "{err}");
        let err = load("server.key", "server.key").unwrap_err().to_string();
        assert!(err.starts_with("server.tls_cert:") && err.contains("certificate"), "{err}");
        let err = load("server.pem", "server.pem").unwrap_err().to_string();
        assert!(err.starts_with("server.tls_key:") && err.contains("private key"), "{err}");
        let err = load("server.pem", "missing.key").unwrap_err().to_string();
        assert!(err.starts_with("server.tls_key:") && err.contains("missing.key"), "{err}");
        let err = load("missing.pem", "server.key").unwrap_err().to_string();
        assert!(err.starts_with("server.tls_cert:"), "{err}");
    }

    #[test]
    fn no_error_quotes_the_key() {
        let key = std::fs::read_to_string(fixture("server.key")).unwrap();
        let body: String = key.lines().nth(1).unwrap().to_owned();
        for (cert, k) in [("server.pem", "ec-sec1.key"), ("server.key", "server.key"), ("ec.pem", "server.key")] {
            let err = load(cert, k).unwrap_err().to_string();
            assert!(!err.contains(&body[..20]), "{err}");
        }
    }
}
