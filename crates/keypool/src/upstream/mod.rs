//! The connection to the upstream API: one pooled HTTP client, the base URL
//! (which may be a relay with its own path prefix) and what is passed on.

mod account;
mod breaker;
mod classify;
pub(crate) mod comeback;
pub(crate) mod headers;
mod probe;
pub mod providers;
mod quirks;
mod tls;
mod wording;

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

pub use account::Account;
pub use breaker::Breaker;
pub use classify::{classify, classify_sent, rate_info, Blame, Classified};
pub use headers::{copy_response_headers, is_account_header, is_hop_by_hop, parse_go_duration};
pub use probe::ProbeRequest;
pub use quirks::{refuses_stream_options, Quirks};

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

/// A body going either way, whichever client carries it; it streams.
pub type BoxedBody = UnsyncBoxBody<Bytes, BodyError>;

/// The upstream's answer.
pub type Answer = http::Response<BoxedBody>;

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
    Direct(Box<Client<Connector, BoxedBody>>),
    Proxied(reqwest::Client),
}

#[derive(Clone)]
pub struct Upstream {
    transport: Transport,
    base: Url,
    /// Whether the caller's `OpenAI-Organization`/`OpenAI-Project` go upstream.
    forward_account_headers: bool,
    /// The upstream's own extra headers (`headers`), sent with every request.
    extra: HeaderMap,
    /// Azure OpenAI's way of addressing and authenticating (kind `azure`).
    azure: Option<std::sync::Arc<Azure>>,
}

/// How an Azure OpenAI resource is addressed.
#[derive(Debug)]
struct Azure {
    /// With it, deployment paths; without it, the v1 API (deployment as model).
    api_version: Option<String>,
    deployments: std::collections::BTreeMap<String, String>,
}

/// The operations Azure OpenAI serves under a deployment's path
/// (`/openai/deployments/{deployment}/…`, Azure OpenAI's REST reference);
/// every other path (files, batches, responses, models) is under `/openai/`.
const AZURE_DEPLOYMENT_PATHS: &[&str] = &[
    "chat/completions",
    "completions",
    "embeddings",
    "audio/transcriptions",
    "audio/translations",
    "audio/speech",
    "images/generations",
    "images/edits",
];

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
    /// A client for `base` (through `proxy` if any) that trusts the built-in
    /// roots and the CAs in `SSL_CERT_FILE`.
    pub fn new(base: &str, proxy: Option<&str>, connect_timeout: Duration) -> Result<Upstream, UpstreamError> {
        Upstream::build(base, proxy, connect_timeout, None)
    }

    fn build(
        base: &str,
        proxy: Option<&str>,
        connect_timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Upstream, UpstreamError> {
        let extra_roots = tls::extra_roots(ca_file)?;
        let mut base = Url::parse(base).map_err(|e| UpstreamError::Client(format!("base URL {base:?}: {e}")))?;
        // A base without a trailing slash would have its last segment replaced by `join`.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // The caller's query replaces the base's, and a fragment is never sent.
        base.set_query(None);
        base.set_fragment(None);
        let idle = Duration::from_secs(90);
        let env_proxy = proxy_in_env(|name| std::env::var_os(name));
        let transport = if proxy.is_none() && !env_proxy {
            Transport::Direct(Box::new(direct_client(connect_timeout, idle, &extra_roots)?))
        } else {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .pool_idle_timeout(idle)
                .tcp_nodelay(true)
                // keypool forwards redirects to the caller rather than following them with a key attached.
                .redirect(reqwest::redirect::Policy::none());
            for cert in &extra_roots {
                let cert = reqwest::Certificate::from_der(cert).map_err(|e| UpstreamError::Client(e.to_string()))?;
                builder = builder.add_root_certificate(cert);
            }
            // Without `proxy`, reqwest reads HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY itself.
            if let Some(proxy) = proxy {
                builder = builder.proxy(reqwest::Proxy::all(proxy).map_err(|e| UpstreamError::Client(e.to_string()))?);
            }
            Transport::Proxied(builder.build().map_err(|e| UpstreamError::Client(e.to_string()))?)
        };
        Ok(Upstream { transport, base, forward_account_headers: false, extra: HeaderMap::new(), azure: None })
    }

    /// The client for `config`'s default upstream (see [`Upstream::for_upstream`]).
    pub fn from_config(config: &crate::config::Config) -> Result<Upstream, UpstreamError> {
        let first = config.upstream_list().into_iter().next();
        let first = first.ok_or_else(|| UpstreamError::Client("no upstream is configured".into()))?;
        Upstream::for_upstream(&first, config)
    }

    /// The client for one upstream: its base URL, proxy (else the global
    /// `proxy`), extra trusted CAs (else the global `ca_file`), extra
    /// headers, the global connect timeout, and which caller headers go
    /// upstream.
    pub fn for_upstream(
        u: &crate::config::UpstreamConfig,
        config: &crate::config::Config,
    ) -> Result<Upstream, UpstreamError> {
        let proxy = u.proxy.as_deref().or(config.proxy.as_deref());
        let ca_file = u.ca_file.as_deref().or(config.ca_file.as_deref());
        let connect = config.timeouts.connect;
        let mut upstream = Upstream::build(&u.base_url, proxy, connect, ca_file)?;
        upstream.forward_account_headers = config.server.forward_account_headers;
        for (name, value) in &u.headers {
            let name = http::HeaderName::try_from(name.as_str()).map_err(|e| UpstreamError::Client(e.to_string()))?;
            let mut value =
                HeaderValue::try_from(value.0.as_str()).map_err(|e| UpstreamError::Client(e.to_string()))?;
            value.set_sensitive(true);
            upstream.extra.insert(name, value);
        }
        if u.kind == crate::config::UpstreamKind::Azure {
            upstream.azure = Some(std::sync::Arc::new(Azure {
                api_version: u.api_version.clone(),
                deployments: u.deployments.clone(),
            }));
        }
        Ok(upstream)
    }

    /// The client for an upstream whose `proxy` and `ca_file` are already
    /// resolved (a pool's, see `routing::PoolSet::build`): unset means none,
    /// with no fall-back to the global settings (a reload may have removed them).
    pub fn for_pool(
        u: &crate::config::UpstreamConfig,
        config: &crate::config::Config,
    ) -> Result<Upstream, UpstreamError> {
        let resolved = crate::config::Config { proxy: None, ca_file: None, ..config.clone() };
        Upstream::for_upstream(u, &resolved)
    }

    /// The upstream URL for a caller's path below `/v1/` and its raw query;
    /// None when dot segments would take it outside the base (a relay's
    /// prefix must not be escaped with a key attached).
    pub fn url_for(&self, rest: &str, query: Option<&str>) -> Option<Uri> {
        let rest = rest.trim_start_matches('/');
        if !plain_path(rest) || query.is_some_and(|q| !q.bytes().all(url_safe)) || has_dot_segment(rest) {
            // Resolved as a browser would (`\` as `/`, dot segments applied,
            // other bytes percent-encoded), then checked to stay under the base.
            let mut url = self.base.clone();
            url.set_path(&format!("{}{rest}", self.base.path()));
            url.set_query(query);
            return if url.path().starts_with(self.base.path()) { Uri::try_from(url.as_str()).ok() } else { None };
        }
        // The usual case: a path of plain URL characters without dot segments, appended.
        let mut url = String::with_capacity(self.base.as_str().len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        url.push_str(self.base.as_str());
        url.push_str(rest);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        Uri::try_from(url).ok()
    }

    /// The upstream URL for a caller's path below `/v1/`, its raw query and
    /// the model it is served as: for Azure with an `api_version`, the
    /// deployment's path (or `/openai/…`) with `api-version` added; else as
    /// [`Upstream::url_for`]. None as there, and for a model that cannot be
    /// a deployment's name (see [`Upstream::model_fits_url`]).
    pub fn url_to(&self, rest: &str, query: Option<&str>, model: Option<&str>) -> Option<Uri> {
        let Some(version) = self.azure.as_ref().and_then(|a| a.api_version.as_deref()) else {
            return self.url_for(rest, query);
        };
        let rest = rest.trim_start_matches('/');
        let path = match model.filter(|_| AZURE_DEPLOYMENT_PATHS.contains(&rest.trim_end_matches('/'))) {
            // The caller's model may become the path: only a plain name does.
            Some(model) => {
                let deployment = self.deployment(model);
                if !is_deployment_name(deployment) {
                    return None;
                }
                format!("openai/deployments/{deployment}/{rest}")
            }
            None => format!("openai/{rest}"),
        };
        let asked = query.filter(|q| !q.is_empty());
        let names_version = |p: &str| p.get(..12).is_some_and(|n| n.eq_ignore_ascii_case("api-version="));
        let query = match asked {
            Some(q) if q.split('&').any(names_version) => q.to_owned(),
            Some(q) => format!("{q}&api-version={version}"),
            None => format!("api-version={version}"),
        };
        self.url_for(&path, Some(&query))
    }

    /// Whether `model` can go into this upstream's URLs: always, except for
    /// Azure deployment paths, which take only plain deployment names.
    pub fn model_fits_url(&self, model: &str) -> bool {
        self.azure.as_ref().is_none_or(|a| a.api_version.is_none()) || is_deployment_name(self.deployment(model))
    }

    /// Whether a request to `rest` must name a model here: an Azure
    /// deployment's operation, whose path the model chooses.
    pub fn needs_model(&self, rest: &str) -> bool {
        self.azure.as_ref().is_some_and(|a| a.api_version.is_some())
            && AZURE_DEPLOYMENT_PATHS.contains(&rest.trim_matches('/'))
    }

    /// For Azure's v1 API (no `api_version`): the deployment to write into
    /// the body as its model, when it differs from `model`.
    pub fn body_model<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        let azure = self.azure.as_ref().filter(|a| a.api_version.is_none())?;
        let deployment = crate::config::deployment_for(&azure.deployments, model);
        (deployment != model).then_some(deployment)
    }

    fn deployment<'a>(&'a self, model: &'a str) -> &'a str {
        match &self.azure {
            Some(a) => crate::config::deployment_for(&a.deployments, model),
            None => model,
        }
    }

    /// The header carrying `key`: `Authorization: Bearer`, or Azure's
    /// `api-key`; marked sensitive. None if the key cannot be a header value.
    fn key_header(&self, key: &SecretString) -> Option<(http::HeaderName, HeaderValue)> {
        if self.azure.is_some() {
            let mut value = HeaderValue::try_from(key.expose_secret()).ok()?;
            value.set_sensitive(true);
            return Some((http::HeaderName::from_static("api-key"), value));
        }
        Some((http::header::AUTHORIZATION, bearer(key)?))
    }

    /// Key `id`'s balance as the provider tells it (`api`), within
    /// `timeout`; None when it cannot be read.
    pub async fn balance(
        &self,
        api: &dyn providers::BalanceApi,
        id: i64,
        key: &SecretString,
        account: &Account,
        timeout: Duration,
    ) -> Option<providers::Balance> {
        // Relative to the base; `..` (a provider that keeps it at its root)
        // only from a version path (`/v1/`), never out of a relay's prefix.
        if api.path().starts_with("../") && !self.base_is_version() {
            return None;
        }
        let url = self.base.join(api.path()).ok()?;
        let url = Uri::try_from(url.as_str()).ok()?;
        let none = HeaderMap::new();
        let asked = self.send(Method::GET, url, &none, id, key, account, OutBody::Bytes(Bytes::new()));
        let until = tokio::time::Instant::now() + timeout;
        let answer = tokio::time::timeout_at(until, asked).await.ok()?.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let mut body = answer.into_body();
        let mut bytes = Vec::new();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, body.frame()).await {
            if let Ok(chunk) = frame.into_data() {
                bytes.extend_from_slice(&chunk);
            }
            if bytes.len() > 256 * 1024 {
                return None;
            }
        }
        api.parse(&bytes)
    }

    /// Whether the base URL is a host's root plus a version (`/v1/`), with no
    /// relay prefix before it.
    fn base_is_version(&self) -> bool {
        let segments: Vec<&str> = self.base.path().split('/').filter(|s| !s.is_empty()).collect();
        matches!(segments.as_slice(), [v] if v.len() >= 2 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit()))
    }

    /// Whether the upstream answers at all: any HTTP answer to an
    /// unauthenticated `GET models` (even 401) means it is reachable, and
    /// costs no key anything.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let Some(url) = self.url_to("models", None, None) else { return false };
        let asked = self.request(Method::GET, url, HeaderMap::new(), OutBody::Bytes(Bytes::new()));
        matches!(tokio::time::timeout(timeout, asked).await, Ok(Ok(_)))
    }

    /// Sends one request with `key` and its `account` headers. Caller headers
    /// are passed on except hop-by-hop ones, Host, any that may carry a
    /// credential, and (unless configured) the caller's account headers.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        method: Method,
        url: Uri,
        caller_headers: &HeaderMap,
        key_id: i64,
        key: &SecretString,
        account: &Account,
        body: OutBody,
    ) -> Result<Answer, UpstreamError> {
        let mut headers = HeaderMap::with_capacity(caller_headers.len() + 1);
        let listed = headers::Listed::of(caller_headers);
        for (name, value) in caller_headers {
            if !headers::is_dropped_request_header(name, &listed, self.forward_account_headers) {
                headers.append(name.clone(), value.clone());
            }
        }
        let (name, value) = self.key_header(key).ok_or(UpstreamError::UnusableKey(key_id))?;
        headers.insert(name, value);
        account.apply(&mut headers);
        if !headers.contains_key(http::header::ACCEPT) {
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        if let OutBody::Stream(_) = body {
            // Keep the caller's length (already checked against the limit):
            // some relays refuse or buffer chunked uploads.
            if let Some(len) = caller_headers.get(http::header::CONTENT_LENGTH) {
                headers.insert(http::header::CONTENT_LENGTH, len.clone());
            }
        }
        self.request(method, url, headers, body).await
    }

    /// Sends one request as it is, plus the upstream's own `headers` (a
    /// relay's token), which every request to it carries: calls, probes,
    /// reachability checks and balance reads alike.
    async fn request(
        &self,
        method: Method,
        url: Uri,
        mut headers: HeaderMap,
        body: OutBody,
    ) -> Result<Answer, UpstreamError> {
        for (name, value) in &self.extra {
            headers.insert(name.clone(), value.clone());
        }
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
                // Described without the URL (it may be a relay's secret address).
                let answer = client.request(request).await.map_err(|e| {
                    if e.is_connect() {
                        UpstreamError::Connect(describe(&e))
                    } else {
                        UpstreamError::Request(describe(&e))
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
                        UpstreamError::Connect(describe(&e.without_url()))
                    } else {
                        UpstreamError::Request(describe(&e.without_url()))
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

/// What failed, for the caller and the log: the client's own message and,
/// when the network said why, an unknown certificate issuer or a name that
/// does not resolve in words, else the kind of I/O error ("connection
/// refused", "timed out"). Deeper causes are left out: TLS errors name the
/// host, and the upstream's address may be a relay's secret.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(tls) = tls::tls_error(cause) {
            return format!("{e}: {}", tls::explain_tls(tls));
        }
        if tls::is_dns_failure(cause) {
            return format!("{e}: the upstream's host name could not be resolved (DNS)");
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return format!("{e}: {}", io.kind());
        }
        if cause.is::<ConnectTimeout>() {
            return format!("{e}: {cause}");
        }
        source = cause.source();
    }
    e.to_string()
}

/// Whether `name` can be an Azure deployment's path segment as it is:
/// letters, digits, `-`, `_`, `.` (Azure's own rule for deployment names),
/// and not dots alone. Percent-encoding is no way out: URL parsers take
/// `%2e%2e` for `..`.
fn is_deployment_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.bytes().all(|b| b == b'.')
}

/// Bytes that may stand in a URL path or query as they are.
fn url_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/?".contains(&b)
}

/// A path of plain URL characters: nothing a URL parser would rewrite
/// (`\` read as `/`, bytes to percent-encode).
fn plain_path(path: &str) -> bool {
    path.bytes().all(|b| url_safe(b) && b != b'?')
}

/// Whether a path has `.` or `..` segments, written plainly or percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    (path.contains('.') || path.contains('%'))
        && path.split('/').any(|segment| {
            let plain = segment.to_ascii_lowercase().replace("%2e", ".");
            plain == "." || plain == ".."
        })
}

/// Whether `HTTPS_PROXY` or the like is set in keypool's environment (then
/// upstreams without a `proxy` of their own go through it).
pub fn proxy_configured_in_env() -> bool {
    proxy_in_env(|name| std::env::var_os(name))
}

/// Whether the environment names an outbound proxy (as curl and reqwest read it).
fn proxy_in_env(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

/// hyper's pooled client over TCP (and TLS for https, HTTP/2 when the server
/// offers it), with the keep-alive probes and timeouts reqwest used to set.
fn direct_client(
    connect_timeout: Duration,
    idle: Duration,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Client<Connector, BoxedBody>, UpstreamError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    // Dead pooled connections (a NAT that forgot them) are found by the
    // kernel instead of hanging a request until its first-byte timeout.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    // The crypto provider is named rather than taken from the process default,
    // which would be ambiguous (a start-up panic) if a dependency ever enabled a second one.
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Client(format!("TLS setup: {e}")))?
            .with_root_certificates(tls::root_store(extra_roots)?)
            .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .pool_timer(TokioTimer::new())
        .build(Connector { inner: https, timeout: connect_timeout }))
}

/// The connection to the upstream, name lookup, TCP and TLS handshake
/// together, within the connect timeout (hyper's connector times only each
/// TCP attempt). A connector that fails is a connect error to the client.
#[derive(Clone)]
struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("no connection within {0:?}")]
struct ConnectTimeout(Duration);

impl tower_service::Service<Uri> for Connector {
    type Response = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;
    type Error = BodyError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BodyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BodyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as BodyError),
            }
        })
    }
}

#[cfg(test)]
mod tests;
