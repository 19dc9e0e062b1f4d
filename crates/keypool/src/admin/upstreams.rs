//! `/admin/api/upstreams`: the upstreams keypool sends requests to
//! (`[[upstreams]]`, or the single `upstream` named `default`), each with
//! its models and routing, whether it is answering (its breaker), its keys
//! by state, its latest failure and its last hour from the minute rollups;
//! and a test button that sends one of them one minimal request with one
//! of its usable keys, as `keypool keys test` does.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::overview::error_counts;
use super::stats::ErrorCounts;
use super::{AdminError, AdminState};
use crate::config::mask_url_password;
use crate::records::rollup::{Dimension, Span};
use crate::routing::Pool;
use crate::store::now_unix_ms;

/// Longest the test waits for the upstream's answer.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// An upstream and how it is doing.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamItem {
    /// Its name (`default` for the single `upstream` setting).
    pub name: String,
    /// `openai`, `openai_compatible` or `azure`.
    pub kind: String,
    /// The provider named in its settings, if any (`deepseek`, …).
    pub provider: Option<String>,
    /// Its base URL, a password in it masked (`***`).
    pub base_url: String,
    /// The model names and globs it serves.
    pub models: Vec<String>,
    /// Higher is tried first.
    pub priority: i32,
    /// Its share among upstreams of equal priority.
    pub weight: u32,
    /// Whether it is the default upstream (requests without a model; keys
    /// added without `--upstream`).
    pub default: bool,
    /// Whether requests go through an outbound proxy.
    pub proxied: bool,
    /// Its keys by state.
    #[schema(value_type = Object)]
    pub keys: crate::scheduler::KeyCounts,
    /// False while its breaker is open (failing for every key; requests
    /// are held while it is probed).
    pub answering: bool,
    /// Its latest failure in keypool's words (no key material), null when none is known.
    pub last_error: Option<String>,
    /// When that was (Unix ms), when known.
    pub last_error_at_ms: Option<i64>,
    /// Attempts sent to it in the last 60 minutes (the current one included).
    pub requests_last_hour: u64,
    /// Of those, the failed ones by kind.
    pub errors_last_hour: ErrorCounts,
}

/// Every upstream.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamList {
    pub data: Vec<UpstreamItem>,
}

/// What the test found.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamTest {
    /// The upstream answered 2xx.
    pub ok: bool,
    /// Its HTTP status; null when it did not answer (or no key could be used).
    pub status: Option<u16>,
    /// What happened, in words (the upstream's error code and message,
    /// keys masked).
    pub message: String,
    /// From sending to the whole answer, ms.
    pub duration_ms: f64,
    /// The key the test used; null when no key could serve.
    pub key_id: Option<i64>,
    /// What was sent: `GET /models`, or a one-token chat on `health.probe_model`.
    pub request: String,
}

/// An upstream's latest failure: its breaker open, else the newest
/// upstream error or failed connection any of its keys saw.
fn last_error(pool: &Pool) -> (Option<String>, Option<i64>) {
    if pool.breaker.is_open() {
        return (Some("the upstream is failing for every key: requests are held while it is probed".into()), None);
    }
    pool.scheduler
        .snapshot()
        .into_iter()
        .filter_map(|v| match (v.last_error, v.last_error_at_ms) {
            (Some(word @ ("upstream_error" | "connect_failed")), Some(at)) => Some((word, at, v.id)),
            _ => None,
        })
        .max_by_key(|&(_, at, _)| at)
        .map_or((None, None), |(word, at, id)| {
            let what = if word == "connect_failed" { "could not connect" } else { "answered with a server error" };
            (Some(format!("{what} ({word}, key {id})")), Some(at))
        })
}

/// Every upstream with its health and its last hour.
#[utoipa::path(get, path = "/admin/api/upstreams", tag = "upstreams",
    responses((status = 200, body = UpstreamList), super::openapi::Unauthorized))]
pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<UpstreamList>, AdminError> {
    let now = now_unix_ms().div_euclid(1000);
    let from = now.div_euclid(60) * 60 - 59 * 60;
    let by_key = state
        .run(move |s| async move { Ok(s.store.stats_by_subject(Dimension::Key, Span::Minute, from, now + 1).await?) })
        .await?;
    let proxy_in_env = crate::upstream::proxy_configured_in_env();
    let set = state.pools.load();
    let data = set
        .all()
        .iter()
        .enumerate()
        .map(|(i, pool)| {
            let u = &pool.upstream;
            let mut hour = crate::records::rollup::Rollup::default();
            for row in &by_key {
                if row.subject.parse::<i64>().is_ok_and(|id| pool.scheduler.has_key(id)) {
                    hour.add(&row.figures);
                }
            }
            let (last_error, last_error_at_ms) = last_error(pool);
            UpstreamItem {
                name: u.name.clone(),
                kind: u.kind.as_str().to_owned(),
                provider: u.provider.clone(),
                base_url: mask_url_password(&u.base_url),
                models: u.models.clone(),
                priority: u.priority,
                weight: u.weight,
                default: i == 0,
                proxied: u.proxy.is_some() || proxy_in_env,
                keys: pool.scheduler.census(),
                answering: !pool.breaker.is_open(),
                last_error,
                last_error_at_ms,
                requests_last_hour: hour.requests,
                errors_last_hour: error_counts(&hour.errors),
            }
        })
        .collect();
    Ok(Json(UpstreamList { data }))
}

/// Sends the upstream one minimal request (`GET /models`, or a one-token
/// chat on `health.probe_model`) with one usable key and reports its
/// answer. A test the upstream fails is still a 200 (`ok` false).
#[utoipa::path(post, path = "/admin/api/upstreams/{name}/test", tag = "upstreams",
    params(("name" = String, Path, description = "The upstream's name")),
    responses((status = 200, body = UpstreamTest), super::openapi::Unauthorized, super::openapi::NotFound))]
pub async fn test(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<UpstreamTest>, AdminError> {
    let set = state.pools.load();
    let Some((_, pool)) = set.by_name(&name) else {
        return Err(AdminError::UnknownUpstream(name));
    };
    let upstream = pool.upstream.clone();
    // Its active keys first, then cooling ones (a probe costs no quota with `GET /models`).
    let mut usable: Vec<(i64, &'static str)> = pool
        .scheduler
        .snapshot()
        .into_iter()
        .filter(|v| matches!(v.status, "active" | "cooling"))
        .map(|v| (v.id, v.status))
        .collect();
    usable.sort_by_key(|&(id, status)| (status != "active", id));
    let model = state.config.health.probe_model.clone().filter(|m| !m.trim().is_empty());
    let request = model.as_deref().map_or("GET /models".to_owned(), |m| format!("a one-token chat on {m}"));
    state
        .run(move |s| async move {
            let keys = s.store.list_keys().await?;
            let Some(key) = usable.iter().find_map(|(id, _)| keys.iter().find(|k| k.id == *id)) else {
                return Ok(Json(UpstreamTest {
                    ok: false,
                    status: None,
                    message: "no key can serve, so none can test the upstream: add or enable one".into(),
                    duration_ms: 0.0,
                    key_id: None,
                    request,
                }));
            };
            let upstream = crate::upstream::Upstream::for_pool(&upstream, &s.config)
                .map_err(|_| AdminError::Internal("the upstream client could not be built"))?;
            let report = crate::cli::keytest::test_one(&upstream, key, model.as_deref(), TEST_TIMEOUT).await;
            let ok = report.error.is_none() && report.status.is_some_and(|s| (200..300).contains(&s));
            let message = match (&report.status, &report.error) {
                (Some(status), None) => format!("answered {status}"),
                (_, Some((code, message))) => format!("{code}: {message}"),
                (None, None) => "no answer".into(),
            };
            Ok(Json(UpstreamTest {
                ok,
                status: report.status,
                message,
                duration_ms: report.latency.as_secs_f64() * 1000.0,
                key_id: Some(key.id),
                request,
            }))
        })
        .await
}
