//! The connection to the upstream API: one pooled HTTP client, the base URL
//! (which may be a relay with its own path prefix) and what is passed on.

mod breaker;
mod classify;
mod headers;

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

pub use breaker::Breaker;
pub use classify::{classify, rate_info};
pub use headers::{cooldown_from, copy_response_headers, is_hop_by_hop, parse_go_duration};

/// Failures talking to the upstream. All of them are the upstream's (or the
/// network's), never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not build the upstream client: {0}")]
    Client(String),
    #[error("key {0} contains characters that cannot be sent in a header")]
    UnusableKey(i64),
    #[error("could not reach the upstream: {0}")]
    Connect(reqwest::Error),
    #[error("the upstream request failed: {0}")]
    Request(reqwest::Error),
}

/// Body sent upstream: either already in memory (inspected JSON) or streamed
/// from the caller as it arrives (uploads).
pub enum OutBody {
    Bytes(bytes::Bytes),
    Stream(reqwest::Body),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    base: Url,
}

impl Upstream {
    pub fn new(base: &str, proxy: Option<&str>, connect_timeout: Duration) -> Result<Upstream, UpstreamError> {
        let mut base = Url::parse(base).map_err(|e| UpstreamError::Client(format!("base URL {base:?}: {e}")))?;
        // A base without a trailing slash would have its last segment replaced by `join`.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            // keypool forwards redirects to the caller rather than following them with a key attached.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(proxy) = proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy).map_err(|e| UpstreamError::Client(e.to_string()))?);
        }
        Ok(Upstream { client: builder.build().map_err(|e| UpstreamError::Client(e.to_string()))?, base })
    }

    /// The upstream URL for a caller's path below `/v1/` and its raw query;
    /// None when dot segments would take it outside the base (a relay's
    /// prefix must not be escaped with a key attached).
    pub fn url_for(&self, rest: &str, query: Option<&str>) -> Option<Url> {
        let mut url = self.base.clone();
        let path = format!("{}{}", self.base.path(), rest.trim_start_matches('/'));
        url.set_path(&path);
        url.set_query(query);
        url.path().starts_with(self.base.path()).then_some(url)
    }

    /// Whether the upstream answers at all: any HTTP answer to an
    /// unauthenticated `GET models` (even 401) means it is reachable, and
    /// costs no key anything.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let Some(url) = self.url_for("models", None) else { return false };
        matches!(tokio::time::timeout(timeout, self.client.get(url).send()).await, Ok(Ok(_)))
    }

    /// Probes a key with the cheapest call there is (`GET models`): Some(true)
    /// if it answers 2xx, Some(false) if refused, None if the upstream could
    /// not be asked (which says nothing about the key).
    pub async fn probe_key(&self, key: &SecretString, timeout: Duration) -> Option<bool> {
        let url = self.url_for("models", None)?;
        let mut auth = HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).ok()?;
        auth.set_sensitive(true);
        let sent = self.client.get(url).header(http::header::AUTHORIZATION, auth).send();
        match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(r)) if r.status().is_success() => Some(true),
            Ok(Ok(r)) if r.status().is_server_error() => None,
            Ok(Ok(_)) => Some(false),
            _ => None,
        }
    }

    /// Sends one request with `key`. Caller headers are passed on except
    /// hop-by-hop ones, Host, and the caller's credentials.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        caller_headers: &HeaderMap,
        key_id: i64,
        key: &SecretString,
        body: OutBody,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = HeaderMap::with_capacity(caller_headers.len() + 1);
        for (name, value) in caller_headers {
            if !headers::is_dropped_request_header(name, caller_headers) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut auth = HeaderValue::try_from(format!("Bearer {}", key.expose_secret()))
            .map_err(|_| UpstreamError::UnusableKey(key_id))?;
        auth.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, auth);
        let body = match body {
            OutBody::Bytes(b) => reqwest::Body::from(b),
            OutBody::Stream(s) => {
                // Keep the caller's length (already checked against the limit):
                // some relays refuse or buffer chunked uploads.
                if let Some(len) = caller_headers.get(http::header::CONTENT_LENGTH) {
                    headers.insert(http::header::CONTENT_LENGTH, len.clone());
                }
                s
            }
        };
        // The URL may be a relay's secret address: keep it out of errors callers see.
        self.client.request(method, url).headers(headers).body(body).send().await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect(e.without_url())
            } else {
                UpstreamError::Request(e.without_url())
            }
        })
    }
}

#[cfg(test)]
mod tests;
