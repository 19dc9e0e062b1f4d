//! keypool's own telemetry: the log's set-up (text or JSON, written off the
//! request path) and, with the `otlp` feature, one OpenTelemetry span per
//! request exported over OTLP/HTTP.
//!
//! Zero cost when no `telemetry.otlp_endpoint` is set: [`request_span`] then
//! reads one unset `OnceLock` and returns.

#[cfg(feature = "otlp")]
mod otlp;

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};
use crate::records::RequestRecord;

/// Lines waiting for stderr at most; past it new lines are dropped (counted
/// by tracing-appender) rather than making a request wait on the disk.
const LOG_BUFFER_LINES: usize = 128_000;

/// Keeps the log's writer thread: dropping it writes the lines still
/// buffered. Hold it for the process's life.
#[must_use = "dropping the guard stops the log's writer"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Installs the process's log: `filter` in `RUST_LOG` syntax (`RUST_LOG`
/// wins when set), in `format`, to stderr through a non-blocking, lossy
/// writer. Colour codes only when stderr is a terminal and `NO_COLOR` is
/// unset. Fails when a log was already installed.
pub fn init_log(filter: &str, format: LogFormat) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(true).buffered_lines_limit(LOG_BUFFER_LINES).finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            registry.with(tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi)).try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
    }
    .map_err(|e| anyhow::anyhow!("could not install the log: {e}"))?;
    Ok(LogGuard(guard))
}

/// The trace exporter, when one is configured: [`Traces::shutdown`] sends
/// the spans still batched.
pub struct Traces {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Traces {
    /// Starts exporting request spans when `config.otlp_endpoint` is set;
    /// nothing otherwise. Call once, from within the Tokio runtime (exports
    /// run on it). Fails when the exporter cannot be built.
    pub fn start(config: &TelemetryConfig) -> anyhow::Result<Traces> {
        #[cfg(feature = "otlp")]
        {
            Ok(Traces { provider: otlp::start(config)? })
        }
        #[cfg(not(feature = "otlp"))]
        {
            if config.otlp_endpoint.is_some() {
                anyhow::bail!("telemetry.otlp_endpoint is set, but this keypool was built without the `otlp` feature");
            }
            Ok(Traces {})
        }
    }

    /// Sends the spans still batched (waiting 2 s at most: a collector out
    /// of reach must not hold up the stop) and stops exporting.
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            otlp::shutdown(provider).await;
        }
    }
}

/// Exports the finished request `r` as one span (kind server), when traces
/// are exported; its end is now, its start `r.duration_us` before.
pub fn request_span(r: &RequestRecord) {
    #[cfg(feature = "otlp")]
    otlp::request_span(r);
    #[cfg(not(feature = "otlp"))]
    let _ = r;
}
