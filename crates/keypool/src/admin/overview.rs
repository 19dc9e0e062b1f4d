//! `/admin/api/overview`: the dashboard's first screen in one answer: keys
//! by state, requests in flight and waiting, the capacity left this window
//! (from the scheduler, in memory), the last minutes' figures and the spend
//! per day (from the rollups: a few primary-key range reads, never the
//! request log, so it stays fast with millions of logged requests).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::stats::ErrorCounts;
use super::{AdminError, AdminState};
use crate::records::rollup::{Dimension, Errors, Rollup, Span};
use crate::scheduler::KeyCounts;
use crate::store::{now_unix_ms, Store, StoreError};

/// Full minutes before the current one that `recent` covers.
const RECENT_FULL_MINUTES: i64 = 5;
/// Days `spend_per_day` covers, today included.
const SPEND_DAYS: usize = 30;

/// Keys by state, as `/healthz` counts them.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeysSummary {
    /// Keys in the pool (every state).
    pub total: usize,
    /// Keys that can serve now or after a wait (active or cooling).
    pub usable: usize,
    pub states: KeyStates,
}

/// How many keys are in each state.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyStates {
    pub active: usize,
    pub cooling: usize,
    pub invalid: usize,
    pub exhausted: usize,
    pub expired: usize,
    pub spent: usize,
    pub disabled: usize,
}

impl From<&KeyCounts> for KeyStates {
    fn from(c: &KeyCounts) -> KeyStates {
        KeyStates {
            active: c.active,
            cooling: c.cooling,
            invalid: c.invalid,
            exhausted: c.exhausted,
            expired: c.expired,
            spent: c.spent,
            disabled: c.disabled,
        }
    }
}

/// Per-minute limits summed over the enabled keys that can serve, and what
/// is left of them in the current window. A field is null when none of
/// those keys has a known limit of its kind (configured or learned).
#[derive(Debug, Serialize, ToSchema)]
pub struct CapacityView {
    /// Requests per minute.
    pub requests_limit: Option<u64>,
    /// Requests left in the current window.
    pub requests_remaining: Option<u64>,
    /// Tokens per minute.
    pub tokens_limit: Option<u64>,
    /// Tokens left in the current window.
    pub tokens_remaining: Option<u64>,
}

/// The last minutes, from the minute rollups (each caller request once).
#[derive(Debug, Serialize, ToSchema)]
pub struct Recent {
    /// Seconds covered: the last 5 full minutes and the current one so far (300 to 360).
    pub seconds: u64,
    /// The first minute covered (Unix seconds).
    pub from: i64,
    pub requests_per_second: f64,
    /// Prompt and completion tokens per minute.
    pub tokens_per_minute: f64,
    /// Median duration, ms: the upper bound of its histogram bucket (see
    /// `/admin/api/stats`); null with no requests or over 30 s.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile duration, ms, as `latency_p50_ms`.
    pub latency_p99_ms: Option<f64>,
    /// Average time to the first byte of the answered requests, ms; null when none was answered.
    pub ttfb_avg_ms: Option<f64>,
    /// Average wait for a key, ms; null with no requests.
    pub queue_wait_avg_ms: Option<f64>,
    pub errors: ErrorCounts,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    /// Spend, micro-USD.
    pub cost_micros: u64,
}

/// One day's spend.
#[derive(Debug, Serialize, ToSchema)]
pub struct DaySpend {
    /// The day in the configured time zone, `YYYY-MM-DD`.
    pub day: String,
    /// Micro-USD.
    pub cost_micros: u64,
    pub requests: u64,
}

/// The dashboard's overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// The server's clock, Unix ms.
    pub now: i64,
    /// The configured IANA time zone (`time_zone`): days begin in it.
    pub time_zone: String,
    pub keys: KeysSummary,
    /// Requests holding a key now.
    pub in_flight: u64,
    /// Requests waiting for a key now.
    pub queue_depth: u64,
    /// Null when no key that can serve has a known limit.
    pub capacity: Option<CapacityView>,
    pub recent: Recent,
    /// The last 30 days in `time_zone`, oldest first, today last (days
    /// without requests are there with 0).
    pub spend_per_day: Vec<DaySpend>,
}

pub(super) fn error_counts(e: &Errors) -> ErrorCounts {
    ErrorCounts {
        caller: e.caller,
        rate_limited: e.rate_limited,
        key: e.key,
        timeout: e.timeout,
        upstream: e.upstream,
        gateway: e.gateway,
        cancelled: e.cancelled,
    }
}

fn per(a: u64, b: u64, scale: f64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64 / scale)
}

/// Every subject's figures of `dimension` in the `span` buckets that start
/// in [`from`, `to`), added up.
pub(super) async fn summed(
    store: &Store,
    dimension: Dimension,
    span: Span,
    from: i64,
    to: i64,
) -> Result<Rollup, StoreError> {
    let mut total = Rollup::default();
    for row in store.stats_by_bucket(dimension, span, None, from, to).await? {
        total.add(&row.figures);
    }
    Ok(total)
}

async fn recent(store: &Store, now_ms: i64) -> Result<Recent, StoreError> {
    let now = now_ms.div_euclid(1000);
    let from = now.div_euclid(60) * 60 - RECENT_FULL_MINUTES * 60;
    let r = summed(store, Dimension::Model, Span::Minute, from, now + 1).await?;
    let seconds = u64::try_from(now - from).unwrap_or(1).max(1);
    let ms = |us: Option<u64>| us.map(|us| us as f64 / 1000.0);
    Ok(Recent {
        seconds,
        from,
        requests_per_second: r.requests as f64 / seconds as f64,
        tokens_per_minute: r.prompt_tokens.saturating_add(r.completion_tokens) as f64 * 60.0 / seconds as f64,
        latency_p50_ms: ms(r.latency_quantile_us(0.5)),
        latency_p99_ms: ms(r.latency_quantile_us(0.99)),
        ttfb_avg_ms: per(r.ttfb_us_sum, r.answered, 1000.0),
        queue_wait_avg_ms: per(r.queue_wait_us_sum, r.requests, 1000.0),
        errors: error_counts(&r.errors),
        requests: r.requests,
        successes: r.successes,
        failures: r.failures,
        cost_micros: r.cost_micros,
    })
}

/// The starts (Unix seconds) and dates of the last [`SPEND_DAYS`] days in
/// `tz`, oldest first.
fn last_days(tz: &jiff::tz::TimeZone, now_ms: i64) -> Vec<(i64, String)> {
    let Ok(now) = jiff::Timestamp::from_millisecond(now_ms) else { return Vec::new() };
    let mut days = Vec::with_capacity(SPEND_DAYS);
    let mut day = now.to_zoned(tz.clone()).start_of_day().ok();
    while let Some(start) = day.filter(|_| days.len() < SPEND_DAYS) {
        days.push((start.timestamp().as_second(), start.date().to_string()));
        day = start.yesterday().ok().and_then(|y| y.start_of_day().ok());
    }
    days.reverse();
    days
}

async fn spend_per_day(store: &Store, tz: &jiff::tz::TimeZone, now_ms: i64) -> Result<Vec<DaySpend>, StoreError> {
    let days = last_days(tz, now_ms);
    let Some(&(from, _)) = days.first() else { return Ok(Vec::new()) };
    let rows = store.stats_by_bucket(Dimension::Model, Span::Day, None, from, now_ms.div_euclid(1000) + 1).await?;
    // Each row goes to the day holding its bucket's start (rows written
    // under another time_zone start at other hours).
    let ends: Vec<i64> = days.iter().skip(1).map(|(start, _)| *start).chain([i64::MAX]).collect();
    Ok(days
        .into_iter()
        .zip(ends)
        .map(|((start, day), end)| {
            let mut spend = DaySpend { day, cost_micros: 0, requests: 0 };
            for r in rows.iter().filter(|r| start <= r.bucket && r.bucket < end) {
                spend.cost_micros = spend.cost_micros.saturating_add(r.figures.cost_micros);
                spend.requests = spend.requests.saturating_add(r.figures.requests);
            }
            spend
        })
        .collect())
}

/// Keys by state, in flight, waiting, capacity left, the last minutes'
/// figures and the spend per day.
#[utoipa::path(get, path = "/admin/api/overview", tag = "overview",
    responses((status = 200, body = Overview), super::openapi::Unauthorized))]
pub async fn overview(State(state): State<Arc<AdminState>>) -> Result<Json<Overview>, AdminError> {
    let now = now_unix_ms();
    let counts = state.pools.census();
    let pool = state.pools.pool_figures();
    let (recent, spend) = state
        .run(move |s| async move {
            let tz = s.time_zone();
            Ok((recent(&s.store, now).await?, spend_per_day(&s.store, &tz, now).await?))
        })
        .await?;
    Ok(Json(Overview {
        now,
        time_zone: state.config.time_zone.clone(),
        keys: KeysSummary { total: counts.total(), usable: counts.usable(), states: KeyStates::from(&counts) },
        in_flight: pool.in_flight,
        queue_depth: pool.queue_depth,
        capacity: pool.capacity.map(|c| CapacityView {
            requests_limit: c.requests_limit,
            requests_remaining: c.requests_remaining,
            tokens_limit: c.tokens_limit,
            tokens_remaining: c.tokens_remaining,
        }),
        recent,
        spend_per_day: spend,
    }))
}
