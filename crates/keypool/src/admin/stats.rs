//! `/admin/api/stats`: requests, errors, tokens, spend and latency per key,
//! token or model, summed over a time range or bucket by bucket, read from
//! the rollups (never the request log).
//!
//! Times in the query (`from`, `to`) are Unix seconds as for
//! `/admin/api/requests`: the rollup buckets that *start* in [`from`, `to`)
//! are counted, whole. Hours and days begin in the configured `time_zone`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::error::Query;
use super::{AdminError, AdminState};
use crate::records::rollup::{Dimension, Rollup, Span, LATENCY_BOUNDS_US};
use crate::store::now_unix;

const MAX_SECONDS: i64 = 9_000_000_000_000;
const MINUTE_MAX_RANGE: i64 = 2 * 86_400;
const HOUR_MAX_RANGE: i64 = 92 * 86_400;

/// Failed requests by kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorCounts {
    /// The caller's own request (4xx other than 429).
    pub caller: u64,
    /// 429: a key's rate limit, or no key with room in time.
    pub rate_limited: u64,
    /// A key refused as invalid or out of balance.
    pub key: u64,
    /// No answer in time.
    pub timeout: u64,
    /// The upstream failed (5xx, a broken connection or stream).
    pub upstream: u64,
    /// keypool's own: no key could serve, or it was stopping.
    pub gateway: u64,
    /// The caller went away first (counted neither success nor failure).
    pub cancelled: u64,
}

/// The figures of a subject or a bucket, and what a dashboard derives
/// from them. Per key, each attempt sent counts as a request of its key
/// (usage, spend and latency count for the key that answered); per token
/// and per model, each caller request counts once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Figures {
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub errors: ErrorCounts,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Spend, micro-USD.
    pub cost_micros: u64,
    /// Requests that got an answer head (the count behind `ttfb_us_sum`).
    pub answered: u64,
    /// Sum of durations, µs.
    pub duration_us_sum: u64,
    /// Sum of times to first byte of the answered requests, µs.
    pub ttfb_us_sum: u64,
    /// Sum of queue waits, µs.
    pub queue_wait_us_sum: u64,
    /// Requests by duration: at most 50 ms, 100 ms, 250 ms, 500 ms, 1 s,
    /// 2.5 s, 5 s, 10 s, 30 s, and slower (`latency_bounds_ms`).
    #[schema(min_items = 10, max_items = 10)]
    pub latency_histogram: [u64; 10],
    /// successes / requests (0 to 1); null with no requests.
    pub success_rate: Option<f64>,
    /// Average duration, ms; null with no requests.
    pub avg_latency_ms: Option<f64>,
    /// Average time to first byte of the answered requests, ms; null when none was answered.
    pub avg_ttfb_ms: Option<f64>,
    /// Average queue wait, ms; null with no requests.
    pub avg_queue_wait_ms: Option<f64>,
    /// Median duration, ms, as the upper bound of the histogram bucket it
    /// falls in (not an exact figure); null with no requests or when it is
    /// over 30 s (the open last bucket).
    pub p50_ms: Option<u64>,
    /// 95th percentile duration, ms: a bucket bound, as `p50_ms`.
    pub p95_ms: Option<u64>,
    /// 99th percentile duration, ms: a bucket bound, as `p50_ms`.
    pub p99_ms: Option<u64>,
}

fn ratio(a: u64, b: u64, scale: f64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64 / scale)
}

impl From<&Rollup> for Figures {
    fn from(r: &Rollup) -> Figures {
        let e = r.errors;
        let q = |p| r.latency_quantile_us(p).map(|us| us / 1000);
        Figures {
            requests: r.requests,
            successes: r.successes,
            failures: r.failures,
            errors: super::overview::error_counts(&e),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_micros: r.cost_micros,
            answered: r.answered,
            duration_us_sum: r.duration_us_sum,
            ttfb_us_sum: r.ttfb_us_sum,
            queue_wait_us_sum: r.queue_wait_us_sum,
            latency_histogram: r.latency,
            success_rate: ratio(r.successes, r.requests, 1.0),
            avg_latency_ms: ratio(r.duration_us_sum, r.requests, 1000.0),
            avg_ttfb_ms: ratio(r.ttfb_us_sum, r.answered, 1000.0),
            avg_queue_wait_ms: ratio(r.queue_wait_us_sum, r.requests, 1000.0),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// What the figures are grouped by.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Key,
    Token,
    Model,
}

/// How long a bucket is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BucketSpan {
    Minute,
    Hour,
    Day,
}

/// One subject's figures over the range.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectRow {
    /// The key's or token's id, or the model; "" for requests without a
    /// token or a model.
    pub subject: String,
    /// The key's label or the token's name, when known.
    pub name: Option<String>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Per subject, largest request count first, with the totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsAnswer {
    pub by: By,
    pub span: BucketSpan,
    /// The range's start as used (Unix seconds, inclusive).
    pub from: i64,
    /// The range's end as used (Unix seconds, exclusive).
    pub to: i64,
    /// The histogram's bucket upper bounds, ms (the last bucket is open).
    pub latency_bounds_ms: Vec<u64>,
    pub data: Vec<SubjectRow>,
    /// Every row added up (per key: every attempt sent).
    pub total: Figures,
}

/// One bucket's figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketRow {
    /// The bucket's start (Unix seconds).
    pub bucket: i64,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Bucket by bucket, oldest first: buckets without requests are absent
/// (a chart draws them as zero).
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesAnswer {
    pub by: By,
    pub span: BucketSpan,
    /// The subject asked for; null: every subject summed.
    pub subject: Option<String>,
    /// The subject's label or name, when known.
    pub name: Option<String>,
    /// The range's start as used (Unix seconds, inclusive).
    pub from: i64,
    /// The range's end as used (Unix seconds, exclusive).
    pub to: i64,
    /// The histogram's bucket upper bounds, ms (the last bucket is open).
    pub latency_bounds_ms: Vec<u64>,
    pub data: Vec<BucketRow>,
    /// Every bucket added up.
    pub total: Figures,
}

/// The range and grouping.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query (see `range`); this documents them.
pub struct StatsParams {
    /// `key` (default), `token` or `model`.
    #[param(pattern = "^(key|token|model)$")]
    by: Option<String>,
    /// The buckets read: `minute`, `hour` (default) or `day`. A minute span
    /// covers at most 2 days, an hour span at most 92 days.
    #[param(pattern = "^(minute|hour|day)$")]
    span: Option<String>,
    /// Buckets that start at or after this time (Unix seconds); default:
    /// `to` less an hour (minute span), a day (hour span) or 30 days (day span).
    #[param(minimum = 0, maximum = 9_000_000_000_000i64)]
    from: Option<i64>,
    /// Buckets that start before this time (Unix seconds); default: now
    /// (the current bucket included).
    #[param(minimum = 0, maximum = 9_000_000_000_000i64)]
    to: Option<i64>,
}

/// The series' subject.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SeriesSubject {
    /// One key's or token's id, or one model ("" for none); absent: every
    /// subject summed.
    subject: Option<String>,
}

struct Range {
    by: By,
    span: BucketSpan,
    from: i64,
    to: i64,
}

impl Range {
    fn dimension(&self) -> Dimension {
        match self.by {
            By::Key => Dimension::Key,
            By::Token => Dimension::Token,
            By::Model => Dimension::Model,
        }
    }

    fn span(&self) -> Span {
        match self.span {
            BucketSpan::Minute => Span::Minute,
            BucketSpan::Hour => Span::Hour,
            BucketSpan::Day => Span::Day,
        }
    }
}

/// Reads `by`, `span`, `from` and `to`, naming the one that is wrong.
fn range(q: &mut Query) -> Result<Range, AdminError> {
    let by = match q.text("by")?.as_deref() {
        None | Some("key") => By::Key,
        Some("token") => By::Token,
        Some("model") => By::Model,
        Some(other) => return Err(AdminError::field("by", format!("{other:?}: expected key, token or model"))),
    };
    let (span, default_len, max_len) = match q.text("span")?.as_deref() {
        Some("minute") => (BucketSpan::Minute, 3_600, Some(MINUTE_MAX_RANGE)),
        None | Some("hour") => (BucketSpan::Hour, 86_400, Some(HOUR_MAX_RANGE)),
        Some("day") => (BucketSpan::Day, 30 * 86_400, None),
        Some(other) => return Err(AdminError::field("span", format!("{other:?}: expected minute, hour or day"))),
    };
    let from = q.int("from", 0, MAX_SECONDS)?;
    let given_to = q.int("to", 0, MAX_SECONDS)?;
    // Exclusive: one past now, so the current bucket is in.
    let to = given_to.unwrap_or_else(|| now_unix().saturating_add(1));
    let from = from.unwrap_or_else(|| to.saturating_sub(default_len).max(0));
    if to <= from {
        let param = if given_to.is_some() { "to" } else { "from" };
        return Err(AdminError::field(param, format!("the range is empty: from {from} is not before to {to}")));
    }
    if let Some(max) = max_len {
        if to - from > max {
            let what = if max == MINUTE_MAX_RANGE {
                "a minute span covers at most 2 days"
            } else {
                "an hour span covers at most 92 days"
            };
            return Err(AdminError::field("from", format!("{what}; narrow from/to or use a longer span")));
        }
    }
    Ok(Range { by, span, from, to })
}

fn bounds_ms() -> Vec<u64> {
    LATENCY_BOUNDS_US.iter().map(|us| us / 1000).collect()
}

/// Labels of keys and names of tokens, by id as the rollups name them.
async fn names(state: &AdminState, by: By) -> Result<HashMap<String, String>, AdminError> {
    Ok(match by {
        // Labels only: no key is opened.
        By::Key => state.store.key_labels().await?.into_iter().map(|(id, label)| (id.to_string(), label)).collect(),
        By::Token => state.store.list_tokens().await?.into_iter().map(|t| (t.id.to_string(), t.name)).collect(),
        By::Model => HashMap::new(),
    })
}

/// Per key, token or model: the figures summed over the range, largest
/// request count first, with the totals.
#[utoipa::path(get, path = "/admin/api/stats", tag = "stats", params(StatsParams),
    responses((status = 200, body = StatsAnswer), super::openapi::BadRequest, super::openapi::Unauthorized))]
pub async fn by_subject(State(state): State<Arc<AdminState>>, mut q: Query) -> Result<Json<StatsAnswer>, AdminError> {
    let range = range(&mut q)?;
    q.finish()?;
    state
        .run(move |s| async move {
            let rows = s.store.stats_by_subject(range.dimension(), range.span(), range.from, range.to).await?;
            let names = names(&s, range.by).await?;
            let mut total = Rollup::default();
            let data = rows
                .iter()
                .map(|r| {
                    total.add(&r.figures);
                    SubjectRow {
                        subject: r.subject.clone(),
                        name: names.get(&r.subject).cloned(),
                        figures: Figures::from(&r.figures),
                    }
                })
                .collect();
            Ok(Json(StatsAnswer {
                by: range.by,
                span: range.span,
                from: range.from,
                to: range.to,
                latency_bounds_ms: bounds_ms(),
                data,
                total: Figures::from(&total),
            }))
        })
        .await
}

/// Bucket by bucket, oldest first, for charts: one subject's figures, or
/// every subject's summed.
#[utoipa::path(get, path = "/admin/api/stats/series", tag = "stats", params(StatsParams, SeriesSubject),
    responses((status = 200, body = SeriesAnswer), super::openapi::BadRequest, super::openapi::Unauthorized))]
pub async fn series(State(state): State<Arc<AdminState>>, mut q: Query) -> Result<Json<SeriesAnswer>, AdminError> {
    let range = range(&mut q)?;
    let subject = q.text("subject")?;
    q.finish()?;
    if let Some(s) = &subject {
        let id_ok = s.parse::<i64>().is_ok();
        match range.by {
            By::Key if !id_ok => {
                return Err(AdminError::field("subject", format!("{s:?} is not a key id (by=key)")));
            }
            By::Token if !id_ok && !s.is_empty() => {
                return Err(AdminError::field("subject", format!("{s:?} is not a token id (by=token; \"\" for none)")));
            }
            _ if s.chars().count() > 1000 => return Err(AdminError::field("subject", "longer than 1000 characters")),
            _ => {}
        }
    }
    state
        .run(move |s| async move {
            let rows = s
                .store
                .stats_by_bucket(range.dimension(), range.span(), subject.as_deref(), range.from, range.to)
                .await?;
            let name = match &subject {
                Some(subject) => names(&s, range.by).await?.remove(subject),
                None => None,
            };
            let mut total = Rollup::default();
            let data = rows
                .iter()
                .map(|r| {
                    total.add(&r.figures);
                    BucketRow { bucket: r.bucket, figures: Figures::from(&r.figures) }
                })
                .collect();
            Ok(Json(SeriesAnswer {
                by: range.by,
                span: range.span,
                subject,
                name,
                from: range.from,
                to: range.to,
                latency_bounds_ms: bounds_ms(),
                data,
                total: Figures::from(&total),
            }))
        })
        .await
}
