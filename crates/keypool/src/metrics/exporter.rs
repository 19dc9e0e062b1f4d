//! The Prometheus exporter: installed once per process by `keypool serve`,
//! rendered by our own route ([`router`]: `/metrics` behind the admin token
//! on the main listener, and without auth on `metrics_listen`), with the
//! scrape-time gauges appended.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::labels::ModelLabels;
use super::{BUILD_INFO, QUEUE_WAIT, REQUEST_DURATION, TTFB};
use crate::admin::Gate;
use crate::config::Config;
use crate::records::Recorder;

/// The installed recorder's handle and the model labels of its config.
#[derive(Debug)]
pub struct Installed {
    handle: PrometheusHandle,
    pub(super) labels: ModelLabels,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Upper bounds of the request duration and first-byte buckets, seconds
/// (an answer may take up to `timeouts.first_byte`, 11 min by default).
const DURATION_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 660.0];
/// Upper bounds of the queue-wait buckets, seconds (`pool.max_wait` is 30 s by default).
const QUEUE_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the exporter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("could not build the Prometheus exporter: {0}")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    #[error("another metrics recorder is already installed in this process")]
    Taken,
}

/// Installs the Prometheus recorder as the process's global one (the
/// `metrics` facade has one), with `config`'s model labels, and starts
/// its upkeep on the current tokio runtime. At most once per process: a
/// later call keeps the first one and returns `Ok`.
pub fn install(config: &Config) -> Result<(), InstallError> {
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TTFB.into()), &DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), &QUEUE_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| InstallError::Taken)?;
    if INSTALLED.set(Installed { handle: handle.clone(), labels: ModelLabels::new(config) }).is_err() {
        return Ok(());
    }
    super::describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Counters without labels show 0 before their first event.
    for name in [super::UPSTREAM_429, super::CANCELLED, super::RECORDS_WRITTEN, super::RECORD_WRITE_ERRORS] {
        metrics::counter!(name).absolute(0);
    }
    metrics::counter!(super::RECORDS_DROPPED, "reason" => "buffer_full").absolute(0);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            handle.run_upkeep();
        }
    });
    Ok(())
}

/// The installed exporter; `None` until [`install`] (metrics off).
pub fn installed() -> Option<&'static Installed> {
    INSTALLED.get()
}

/// What a scrape reads besides the recorder: the scheduler's keys and queue,
/// and the record writer's backlog.
#[derive(Clone)]
pub struct Scrape {
    pub pools: Arc<crate::routing::Pools>,
    pub recorder: Recorder,
}

/// The Prometheus text of every metric: the recorder's, then the gauges
/// read now (queue depth, records waiting, per key). `None` when no exporter
/// is installed.
pub fn render(scrape: &Scrape) -> Option<String> {
    let installed = installed()?;
    let mut out = installed.handle.render();
    super::keys::write_gauges(&mut out, &scrape.pools, &scrape.recorder);
    Some(out)
}

/// The `/metrics` route. With `gate` (the main listener: the admin API's
/// tokens in force and sign-in limit), callers must send it as `Authorization: Bearer …`, as
/// for the admin API (401 otherwise); without (`metrics_listen`), anyone
/// who reaches the address may read it.
pub fn router(scrape: Scrape, gate: Option<Arc<Gate>>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |req: axum::extract::Request| {
            let (scrape, gate) = (scrape.clone(), gate.clone());
            async move {
                if let Some(gate) = gate.as_deref() {
                    // Any admin token, read-only ones too: a scrape changes nothing.
                    if let Err(e) = gate.admit(req.headers(), crate::admin::peer_of(&req)) {
                        return e.into_response();
                    }
                }
                // Rendering 10,000 keys takes ~10 ms (docs/benchmarks.md):
                // off the worker's thread, so the connections it serves
                // (streams too) do not wait for a scrape.
                match tokio::task::spawn_blocking(move || answer(&scrape)).await {
                    Ok(response) => response,
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the metrics render failed\n").into_response(),
                }
            }
        }),
    )
}

/// The `/metrics` answer once the caller may read it (see [`router`]); 404
/// when metrics are off in this process (no exporter installed).
pub fn answer(scrape: &Scrape) -> Response {
    match render(scrape) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off in this process\n").into_response(),
    }
}
