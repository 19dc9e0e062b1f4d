//! One OpenTelemetry span per request, exported over OTLP/HTTP (JSON) by a
//! batch processor on its own thread, so the request path only hands the
//! finished span over (a bounded queue; when full, spans are dropped).
//!
//! The span is made when the request ends, from its record, with the
//! request's own start and end times: nothing is kept open across the
//! request, and nothing at all is done when no endpoint is configured.
//! Attribute names follow OpenTelemetry's HTTP and GenAI semantic
//! conventions where they have one (`http.request.method`,
//! `http.response.status_code`, `error.type`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`), `keypool.*` otherwise.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;
use crate::records::RequestRecord;

/// The tracer of the configured exporter; unset when none is.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the last export may hold up the process's stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn start(config: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(url) = config.traces_url() else { return Ok(None) };
    let client = RuntimeClient::new()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: could not build the OTLP exporter: {e}"))?;
    let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("keypool");
    if TRACER.set(tracer).is_err() {
        anyhow::bail!("telemetry: traces were already started in this process");
    }
    tracing::info!(endpoint = %shown(&url), "exporting request traces over OTLP/HTTP");
    Ok(Some(provider))
}

/// The path as a span name takes it, a route template of bounded
/// cardinality (OpenTelemetry's HTTP conventions name a server span
/// `{method} {http.route}`): a segment that is not a plain resource word
/// (lowercase letters and `_`, at most 24) is an object's id or a model's
/// name and becomes `{id}`, so `/v1/files/file-abc123/content` is
/// `/v1/files/{id}/content`; past 6 segments the rest is `/…`. The raw path
/// stays in the `url.path` attribute.
fn route(path: &str) -> String {
    let mut out = String::with_capacity(path.len().min(64));
    for (i, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if i == 6 {
            out.push_str("/…");
            break;
        }
        out.push('/');
        let word = segment.len() <= 24 && segment.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        out.push_str(if word || i == 0 && segment == "v1" { segment } else { "{id}" });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The endpoint as logged: scheme, host, port and path, without a user,
/// password, query or fragment (any of which may carry a collector's token).
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}{}", u.scheme(), u.host_str().unwrap_or_default(), u.path())
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

pub(super) async fn shutdown(provider: SdkTracerProvider) {
    // Blocks until the batch thread has exported (or gave up): not on a
    // runtime worker, which the export itself runs on.
    let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the last request traces could not be exported"),
        Err(e) => tracing::warn!(error = %e, "the trace exporter's stop failed"),
    }
}

pub(super) fn request_span(r: &RequestRecord) {
    let Some(tracer) = TRACER.get() else { return };
    let end = SystemTime::now();
    let start = end.checked_sub(Duration::from_micros(r.duration_us)).unwrap_or(end);
    let route = route(&r.path);
    let mut attributes = vec![
        KeyValue::new("keypool.request_id", r.request_id.clone()),
        KeyValue::new("http.request.method", r.method.clone()),
        KeyValue::new("url.path", r.path.clone()),
        KeyValue::new("http.route", route.clone()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("keypool.attempts", r.attempts.len() as i64),
        KeyValue::new("keypool.stream", r.stream),
        KeyValue::new("keypool.queue_wait_ms", r.queue_wait_us as f64 / 1000.0),
    ];
    let mut add = |key: &'static str, value: Option<opentelemetry::Value>| {
        if let Some(v) = value {
            attributes.push(KeyValue::new(key, v));
        }
    };
    add("client.address", r.client_addr.clone().map(Into::into));
    add("gen_ai.request.model", r.model.clone().map(Into::into));
    add("keypool.key_id", r.key_id.map(Into::into));
    add("keypool.token_id", r.token_id.map(Into::into));
    add("gen_ai.usage.input_tokens", r.prompt_tokens.map(|t| i64::try_from(t).unwrap_or(i64::MAX).into()));
    add("gen_ai.usage.output_tokens", r.completion_tokens.map(|t| i64::try_from(t).unwrap_or(i64::MAX).into()));
    add("keypool.ttfb_ms", r.ttfb_us.map(|us| (us as f64 / 1000.0).into()));
    add("error.type", r.error_type.as_ref().map(|e| e.to_string().into()));
    add("gen_ai.response.id", r.upstream_request_id.clone().map(Into::into));
    let mut span = tracer
        .span_builder(format!("{} {route}", r.method))
        .with_kind(SpanKind::Server)
        .with_start_time(start)
        .with_attributes(attributes)
        .start(tracer);
    // A server span is an error for a 5xx only (HTTP semantic conventions).
    if r.status >= 500 || r.status == 0 {
        span.set_status(Status::error(r.error_type.as_deref().unwrap_or("error").to_owned()));
    }
    span.end_with_timestamp(end);
}

/// The exporter's HTTP client: keypool's reqwest, run on the Tokio runtime
/// that started the exporter. The batch processor's thread waits for the
/// answer; the runtime's threads do the I/O.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RuntimeClient {
    fn new() -> anyhow::Result<RuntimeClient> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("telemetry: traces must be started within the Tokio runtime"))?;
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry: could not build the OTLP HTTP client: {e}"))?;
        Ok(RuntimeClient { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let answer = client.execute(request).await?;
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                response = response.header(name.as_str(), value.as_bytes());
            }
            let body = answer.bytes().await?;
            Ok::<_, HttpError>(response.body(body)?)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn span_names_are_route_templates() {
        use super::route;
        assert_eq!(route("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(route("/v1/files/file-abc123/content"), "/v1/files/{id}/content");
        assert_eq!(route("/v1/models/gpt-4o"), "/v1/models/{id}");
        assert_eq!(route("/v1/vector_stores/vs_9x/files"), "/v1/vector_stores/{id}/files");
        assert_eq!(route("/v1/a/b/c/d/e/f/g"), "/v1/a/b/c/d/e/…");
        assert_eq!(route("/v1/Files"), "/v1/{id}");
        assert_eq!(route(""), "/");
    }

    #[test]
    fn the_logged_endpoint_keeps_no_secret() {
        let url = "https://user:pw@otel.example.com:4318/v1/traces?api-key=s3cret#x";
        assert_eq!(shown(url), "https://otel.example.com:4318/v1/traces");
        assert_eq!(shown("http://127.0.0.1:4318/v1/traces"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(shown("not a url"), "(not a URL)");
    }
}
