//! What the upstream client trusts, and what a failed connection is told
//! as: an unknown certificate issuer or a name that does not resolve says
//! so, in the caller's error and the log, with what to do about it.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, RootCertStore};

use super::UpstreamError;

/// Extra CA certificates to trust besides the built-in (Mozilla) roots:
/// those in the file `SSL_CERT_FILE` names (as OpenSSL, curl and Python
/// read it) and in `ca_file`. Errors name the file.
pub fn extra_roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    let mut roots = Vec::new();
    for (path, setting) in [(from_env.as_deref().map(Path::new), "SSL_CERT_FILE"), (ca_file, "ca_file")] {
        let Some(path) = path else { continue };
        let read = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| UpstreamError::Client(format!("{setting} {}: {e}", path.display())))?;
        if read.is_empty() {
            return Err(UpstreamError::Client(format!("{setting} {}: no PEM certificate in it", path.display())));
        }
        roots.extend(read);
    }
    Ok(roots)
}

/// The built-in roots plus `extra`.
pub fn root_store(extra: &[CertificateDer<'static>]) -> Result<RootCertStore, UpstreamError> {
    let mut store = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for cert in extra {
        store
            .add(cert.clone())
            .map_err(|e| UpstreamError::Client(format!("a trusted CA certificate cannot be used: {e}")))?;
    }
    Ok(store)
}

/// What a TLS failure means for the operator, without the host's name (the
/// upstream's address may be a relay's secret).
pub fn explain_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "the upstream's TLS certificate is signed by an unknown issuer \
                (to trust a private CA, set `ca_file` or SSL_CERT_FILE)"
                .into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the upstream's TLS certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the upstream's TLS certificate is not valid yet (check this machine's clock)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the upstream's TLS certificate is not valid for its host name".into()
            }
            CertificateError::Revoked => "the upstream's TLS certificate is revoked".into(),
            _ => "the upstream's TLS certificate was refused".into(),
        },
        rustls::Error::AlertReceived(alert) => format!("the upstream refused the TLS handshake ({alert:?})"),
        other => format!("the TLS handshake with the upstream failed ({other})"),
    }
}

/// The rustls error in `cause`, directly or inside I/O errors (tokio-rustls
/// wraps it in one, and hyper-rustls may wrap that in another; an I/O
/// error's `source` skips what it wraps, so `get_ref` is followed).
pub fn tls_error<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = cause;
    for _ in 0..8 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
    None
}

/// Whether `cause` is a failed name lookup: hyper-util's connector reports
/// it as "dns error", the resolver as "failed to lookup address".
pub fn is_dns_failure(cause: &(dyn std::error::Error + 'static)) -> bool {
    let text = cause.to_string();
    text == "dns error" || text.starts_with("failed to lookup address")
}
