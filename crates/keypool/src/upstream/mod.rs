//! The connection to the upstream API: one pooled HTTP client, the base URL
//! (which may be a relay with its own path prefix) and what is passed on.

mod breaker;
mod classify;
mod headers;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
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
    Connect(String),
    #[error("the upstream request failed: {0}")]
    Request(String),
}

/// Why a body (sent or received) stopped part-way.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// An upload read from the caller as it arrives.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// Body sent upstream: either already in memory (inspected JSON) or streamed
/// from the caller as it arrives (uploads).
pub enum OutBody {
    Bytes(Bytes),
    Stream(ByteStream),
}

/// The upstream's answer, whichever client carried it; its body streams.
pub type Answer = http::Response<UnsyncBoxBody<Bytes, BodyError>>;

type SendBody = UnsyncBoxBody<Bytes, BodyError>;

/// Most bytes read from an upstream connection at a time.
const UPSTREAM_READ_BUF: usize = 4096;

/// How requests reach the upstream.
///
/// Directly, hyper's pooled client: callgrind counted ~122k instructions per
/// proxied request with reqwest on this path, ~38k of them in reqwest's own
/// layers around hyper's client (URL parsing and conversion, its redirect and
/// retry services, boxing), so the direct path uses hyper's client without
/// them. Through an outbound proxy, reqwest: it brings what hyper's client
/// lacks there (CONNECT tunnels, SOCKS, absolute-form requests, proxy
/// credentials), and a proxy's own hop costs far more than those layers.
#[derive(Clone)]
enum Transport {
    Direct(Box<Client<HttpsConnector<HttpConnector>, SendBody>>),
    Proxied(reqwest::Client),
}

#[derive(Clone)]
pub struct Upstream {
    transport: Transport,
    base: Url,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let via = match self.transport {
            Transport::Direct(_) => "direct",
            Transport::Proxied(_) => "proxy",
        };
        f.debug_struct("Upstream").field("via", &via).finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(base: &str, proxy: Option<&str>, connect_timeout: Duration) -> Result<Upstream, UpstreamError> {
        let mut base = Url::parse(base).map_err(|e| UpstreamError::Client(format!("base URL {base:?}: {e}")))?;
        // A base without a trailing slash would have its last segment replaced by `join`.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let idle = Duration::from_secs(90);
        let transport = match proxy {
            None => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(connect_timeout));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                Transport::Direct(Box::new(
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(idle)
                        .pool_timer(TokioTimer::new())
                        // Reads of one page at most: an open stream's upstream connection
                        // then holds a 4 KB buffer, not hyper's adaptive 8 KB and up
                        // (10,000 open streams: 268 MB instead of 291 MB resident, 2-core
                        // VM). Answers are mostly small SSE events or JSON under 4 KB;
                        // a large one costs a few more reads.
                        .http1_read_buf_exact_size(UPSTREAM_READ_BUF)
                        .build(https),
                ))
            }
            Some(proxy) => {
                let client = reqwest::Client::builder()
                    .connect_timeout(connect_timeout)
                    .pool_idle_timeout(idle)
                    .tcp_nodelay(true)
                    // keypool forwards redirects to the caller rather than following them with a key attached.
                    .redirect(reqwest::redirect::Policy::none())
                    .proxy(reqwest::Proxy::all(proxy).map_err(|e| UpstreamError::Client(e.to_string()))?)
                    .build()
                    .map_err(|e| UpstreamError::Client(e.to_string()))?;
                Transport::Proxied(client)
            }
        };
        Ok(Upstream { transport, base })
    }

    /// The upstream URL for a caller's path below `/v1/` and its raw query;
    /// None when dot segments would take it outside the base (a relay's
    /// prefix must not be escaped with a key attached).
    pub fn url_for(&self, rest: &str, query: Option<&str>) -> Option<Uri> {
        let rest = rest.trim_start_matches('/');
        if has_dot_segment(rest) {
            // Resolved as a browser would, then checked to stay under the base.
            let mut url = self.base.clone();
            url.set_path(&format!("{}{rest}", self.base.path()));
            url.set_query(query);
            return if url.path().starts_with(self.base.path()) { Uri::try_from(url.as_str()).ok() } else { None };
        }
        // The usual case: the caller's path (already a valid URI path) appended.
        let mut url = String::with_capacity(self.base.as_str().len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        url.push_str(self.base.as_str());
        url.push_str(rest);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Uri::try_from(url).ok()
    }

    /// Whether the upstream answers at all: any HTTP answer to an
    /// unauthenticated `GET models` (even 401) means it is reachable, and
    /// costs no key anything.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let Some(url) = self.url_for("models", None) else { return false };
        let asked = self.request(Method::GET, url, HeaderMap::new(), OutBody::Bytes(Bytes::new()));
        matches!(tokio::time::timeout(timeout, asked).await, Ok(Ok(_)))
    }

    /// Probes a key with the cheapest call there is (`GET models`): Some(true)
    /// if it answers 2xx, Some(false) if refused, None if the upstream could
    /// not be asked (which says nothing about the key).
    pub async fn probe_key(&self, key: &SecretString, timeout: Duration) -> Option<bool> {
        let url = self.url_for("models", None)?;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, bearer(key)?);
        let asked = self.request(Method::GET, url, headers, OutBody::Bytes(Bytes::new()));
        match tokio::time::timeout(timeout, asked).await {
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
        url: Uri,
        caller_headers: &HeaderMap,
        key_id: i64,
        key: &SecretString,
        body: OutBody,
    ) -> Result<Answer, UpstreamError> {
        let mut headers = HeaderMap::with_capacity(caller_headers.len() + 1);
        for (name, value) in caller_headers {
            if !headers::is_dropped_request_header(name, caller_headers) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(http::header::AUTHORIZATION, bearer(key).ok_or(UpstreamError::UnusableKey(key_id))?);
        if let OutBody::Stream(_) = body {
            // Keep the caller's length (already checked against the limit):
            // some relays refuse or buffer chunked uploads.
            if let Some(len) = caller_headers.get(http::header::CONTENT_LENGTH) {
                headers.insert(http::header::CONTENT_LENGTH, len.clone());
            }
        }
        self.request(method, url, headers, body).await
    }

    async fn request(
        &self,
        method: Method,
        url: Uri,
        headers: HeaderMap,
        body: OutBody,
    ) -> Result<Answer, UpstreamError> {
        match &self.transport {
            Transport::Direct(client) => {
                let body = match body {
                    OutBody::Bytes(b) if b.is_empty() && method == Method::GET => {
                        Empty::new().map_err(|never| match never {}).boxed_unsync()
                    }
                    OutBody::Bytes(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
                    OutBody::Stream(s) => StreamBody::new(s.map_ok(Frame::data)).boxed_unsync(),
                };
                let mut request = http::Request::new(body);
                *request.method_mut() = method;
                *request.uri_mut() = url;
                *request.headers_mut() = headers;
                // hyper's errors name neither the URL (which may be a relay's
                // secret address) nor the key.
                let answer = client.request(request).await.map_err(|e| {
                    if e.is_connect() {
                        UpstreamError::Connect(chain(&e))
                    } else {
                        UpstreamError::Request(chain(&e))
                    }
                })?;
                Ok(answer.map(|b| b.map_err(BodyError::from).boxed_unsync()))
            }
            Transport::Proxied(client) => {
                let url = Url::parse(&url.to_string()).map_err(|e| UpstreamError::Request(e.to_string()))?;
                let body = match body {
                    OutBody::Bytes(b) => reqwest::Body::from(b),
                    OutBody::Stream(s) => reqwest::Body::wrap_stream(s),
                };
                // The URL is kept out of errors: it may be a relay's secret address.
                let answer = client.request(method, url).headers(headers).body(body).send().await.map_err(|e| {
                    if e.is_connect() {
                        UpstreamError::Connect(chain(&e.without_url()))
                    } else {
                        UpstreamError::Request(chain(&e.without_url()))
                    }
                })?;
                let answer: http::Response<reqwest::Body> = answer.into();
                Ok(answer.map(|b| b.map_err(|e| BodyError::from(e.without_url())).boxed_unsync()))
            }
        }
    }
}

/// `Bearer <key>`, marked sensitive; None if the key cannot be a header value.
fn bearer(key: &SecretString) -> Option<HeaderValue> {
    let mut auth = HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).ok()?;
    auth.set_sensitive(true);
    Some(auth)
}

/// An error and its causes on one line ("client error (Connect): tcp connect
/// error: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut said = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        source = cause.source();
    }
    said
}

/// Whether a path has `.` or `..` segments, written plainly or percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    (path.contains('.') || path.contains('%'))
        && path.split('/').any(|segment| {
            let plain = segment.to_ascii_lowercase().replace("%2e", ".");
            plain == "." || plain == ".."
        })
}

#[cfg(test)]
mod tests;
