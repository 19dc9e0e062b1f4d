//! `/admin/api/requests`: the request log, filtered and paged newest first,
//! one request with its attempts, and the log exported as CSV or JSON Lines.
//!
//! Times in the query (`from`, `to`) are Unix seconds, `from` inclusive and
//! `to` exclusive; times in answers are Unix milliseconds (`…_ms`),
//! durations microseconds (`…_us`), money micro-USD.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{Id, Query};
use super::{AdminError, AdminState};
use crate::store::{LogCursor, LogFilter, LoggedRequest};

/// Most requests in one page.
pub const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;
/// Rows read per store query while exporting.
const EXPORT_PAGE: u32 = 500;

/// One request of the log. Keys and tokens by id only.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestItem {
    /// The log row's id (what `/admin/api/requests/{id}` takes).
    pub id: i64,
    /// keypool's request id (`x-keypool-request-id`).
    pub request_id: String,
    /// When the request arrived (Unix ms).
    pub started_at_ms: i64,
    pub token_id: Option<i64>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// The body's `user` field.
    pub end_user: Option<String>,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    /// The status the caller got (0: none, the caller left first).
    pub status: i64,
    /// Why it failed, in keypool's words; null on success.
    pub error_type: Option<String>,
    /// The key of the last attempt.
    pub key_id: Option<i64>,
    /// Sends to the upstream.
    pub attempts: i64,
    pub queue_wait_us: i64,
    pub ttfb_us: Option<i64>,
    pub duration_us: i64,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    /// No usage was reported; the counts are keypool's estimate.
    pub usage_estimated: bool,
    pub cost_micros: Option<i64>,
    /// The caller went away first.
    pub cancelled: bool,
    /// The upstream's own `x-request-id`.
    pub upstream_request_id: Option<String>,
}

/// [`RequestItem`]'s fields, in order: the CSV export's header.
const CSV_HEADER: [&str; 26] = [
    "id",
    "request_id",
    "started_at_ms",
    "token_id",
    "client_addr",
    "user_agent",
    "end_user",
    "method",
    "path",
    "model",
    "stream",
    "status",
    "error_type",
    "key_id",
    "attempts",
    "queue_wait_us",
    "ttfb_us",
    "duration_us",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_micros",
    "cancelled",
    "upstream_request_id",
];

impl From<&LoggedRequest> for RequestItem {
    fn from(r: &LoggedRequest) -> RequestItem {
        RequestItem {
            id: r.id,
            request_id: r.request_id.clone(),
            started_at_ms: r.started_at,
            token_id: r.token_id,
            client_addr: r.client_addr.clone(),
            user_agent: r.user_agent.clone(),
            end_user: r.end_user.clone(),
            method: r.method.clone(),
            path: r.path.clone(),
            model: r.model.clone(),
            stream: r.stream,
            status: r.status,
            error_type: r.error_type.clone(),
            key_id: r.key_id,
            attempts: r.attempts,
            queue_wait_us: r.queue_wait_us,
            ttfb_us: r.ttfb_us,
            duration_us: r.duration_us,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: r.cached_tokens,
            reasoning_tokens: r.reasoning_tokens,
            usage_estimated: r.usage_estimated,
            cost_micros: r.cost_micros,
            cancelled: r.cancelled,
            upstream_request_id: r.upstream_request_id.clone(),
        }
    }
}

/// One send to the upstream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptItem {
    pub key_id: i64,
    /// The upstream's status; 0 when none came.
    pub status: u16,
    /// `ok`, or why it failed (`rate_limited`, `invalid_key`, `timeout`, …).
    pub reason: String,
    pub duration_us: u64,
}

/// One request with each of its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub request: RequestItem,
    pub attempt_log: Vec<AttemptItem>,
}

/// A page of the request log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestPage {
    pub data: Vec<RequestItem>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The request log's filters (every one given must match).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query (see `filter`); this documents them.
pub struct Filters {
    /// Requests that arrived at or after this time (Unix seconds).
    #[param(minimum = 0, maximum = 9_000_000_000_000i64)]
    from: Option<i64>,
    /// Requests that arrived before this time (Unix seconds).
    #[param(minimum = 0, maximum = 9_000_000_000_000i64)]
    to: Option<i64>,
    key_id: Option<i64>,
    token_id: Option<i64>,
    model: Option<String>,
    /// The status the caller got.
    #[param(minimum = 0, maximum = 999)]
    status: Option<i64>,
    error_type: Option<String>,
    /// keypool's request id (`x-keypool-request-id`).
    request_id: Option<String>,
}

/// Paging.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Paging {
    /// Requests per page (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The export's format.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ExportFormat {
    /// `csv` or `jsonl` (JSON Lines).
    #[param(pattern = "^(csv|jsonl)$")]
    format: String,
}

const MAX_SECONDS: i64 = 9_000_000_000_000;

/// Reads the filters out of `q`, naming the one that is wrong.
fn filter(q: &mut Query) -> Result<LogFilter, AdminError> {
    let from = q.int("from", 0, MAX_SECONDS)?;
    let to = q.int("to", 0, MAX_SECONDS)?;
    let filter = LogFilter {
        from_ms: from.map(|s| s.saturating_mul(1000)),
        to_ms: to.map(|s| s.saturating_mul(1000)),
        key_id: q.int("key_id", i64::MIN, i64::MAX)?,
        token_id: q.int("token_id", i64::MIN, i64::MAX)?,
        model: q.text("model")?,
        status: q.int("status", 0, 999)?,
        error_type: q.text("error_type")?,
        request_id: q.text("request_id")?,
    };
    Ok(filter)
}

fn encode_cursor(c: LogCursor) -> String {
    hex::encode(format!("{}:{}", c.started_at, c.id))
}

fn decode_cursor(text: &str) -> Result<LogCursor, AdminError> {
    let bad = || AdminError::field("cursor", "not a cursor this API gave (pass `next_cursor` as it is)");
    let raw = hex::decode(text).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok(LogCursor { started_at: at.parse().map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
}

/// The request log, newest first, a page at a time.
#[utoipa::path(get, path = "/admin/api/requests", tag = "requests", params(Filters, Paging),
    responses((status = 200, body = RequestPage), super::openapi::BadRequest, super::openapi::Unauthorized))]
pub async fn list(State(state): State<Arc<AdminState>>, mut q: Query) -> Result<Json<RequestPage>, AdminError> {
    let filter = filter(&mut q)?;
    let limit = q.int("limit", 1, MAX_PAGE)?.unwrap_or(DEFAULT_PAGE);
    let cursor = q.text("cursor")?.map(|c| decode_cursor(&c)).transpose()?;
    q.finish()?;
    let limit = u32::try_from(limit).unwrap_or(1);
    state
        .run(move |s| async move {
            // One more than asked tells whether there is a next page.
            let mut rows = s.store.request_page(&filter, cursor, limit + 1).await?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next_cursor = match rows.last() {
                Some(last) if more => Some(encode_cursor(LogCursor { started_at: last.started_at, id: last.id })),
                _ => None,
            };
            Ok(Json(RequestPage { data: rows.iter().map(RequestItem::from).collect(), next_cursor }))
        })
        .await
}

/// One request with its attempts.
#[utoipa::path(get, path = "/admin/api/requests/{id}", tag = "requests",
    params(("id" = i64, Path, description = "The log row's id (`id` in the list)")),
    responses((status = 200, body = RequestDetail), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::NotFound))]
pub async fn one(State(state): State<Arc<AdminState>>, Id(id): Id) -> Result<Json<RequestDetail>, AdminError> {
    state
        .run(move |s| async move {
            let row = s.store.logged_request(id).await?.ok_or(AdminError::NotFound { what: "request", id })?;
            let attempt_log = serde_json::from_str(&row.attempt_log).unwrap_or_default();
            Ok(Json(RequestDetail { request: RequestItem::from(&row), attempt_log }))
        })
        .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

/// Writes rows in the export's format.
struct Encoder {
    format: Format,
    /// The CSV header is still to be written (it is, even when no row
    /// follows, so an empty range is a valid file).
    header: bool,
}

impl Encoder {
    fn new(format: Format) -> Encoder {
        Encoder { format, header: format == Format::Csv }
    }

    fn rows(&mut self, rows: &[LoggedRequest]) -> Vec<u8> {
        match self.format {
            Format::Csv => {
                let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
                if std::mem::take(&mut self.header) {
                    let _ = csv.write_record(CSV_HEADER);
                }
                for r in rows {
                    if let Err(e) = csv.serialize(RequestItem::from(r)) {
                        tracing::warn!(error = %e, "could not write a request as CSV");
                    }
                }
                csv.into_inner().unwrap_or_default()
            }
            Format::Jsonl => {
                let mut out = Vec::new();
                for r in rows {
                    if serde_json::to_writer(&mut out, &RequestItem::from(r)).is_ok() {
                        out.push(b'\n');
                    }
                }
                out
            }
        }
    }
}

/// The request log as a file, newest first: CSV (with a header row) or
/// JSON Lines (one request per line). Streamed a page at a time, so a long
/// range does not sit in memory.
#[utoipa::path(get, path = "/admin/api/requests/export", tag = "requests", params(ExportFormat, Filters),
    responses(
        (status = 200, description = "The requests, as an attachment",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        super::openapi::BadRequest, super::openapi::Unauthorized))]
pub async fn export(State(state): State<Arc<AdminState>>, mut q: Query) -> Result<Response, AdminError> {
    let format = match q.text("format")?.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl") => Format::Jsonl,
        Some(other) => return Err(AdminError::field("format", format!("{other:?}: expected csv or jsonl"))),
        None => return Err(AdminError::field("format", "required: csv or jsonl")),
    };
    let filter = filter(&mut q)?;
    q.finish()?;
    let (content_type, ext) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    let span = |ms: Option<i64>| ms.map_or_else(|| "all".to_owned(), |ms| (ms / 1000).to_string());
    let filename = format!("keypool-requests-{}-{}.{ext}", span(filter.from_ms), span(filter.to_ms));
    let pages = futures_util::stream::unfold(
        (Some(None::<LogCursor>), Encoder::new(format), true),
        move |(cursor, mut encoder, first)| {
            let (state, filter) = (Arc::clone(&state), filter.clone());
            async move {
                let cursor = cursor?;
                let page = state
                    .run(move |s| async move { Ok(s.store.request_page(&filter, cursor, EXPORT_PAGE).await?) })
                    .await;
                let rows = match page {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "the request export stopped");
                        let err: Result<bytes::Bytes, std::io::Error> = Err(std::io::Error::other(e.to_string()));
                        return Some((err, (None, encoder, false)));
                    }
                };
                let next = match rows.last() {
                    Some(last) if rows.len() == EXPORT_PAGE as usize => {
                        Some(Some(LogCursor { started_at: last.started_at, id: last.id }))
                    }
                    _ => None,
                };
                if rows.is_empty() && !first {
                    return None;
                }
                let bytes = bytes::Bytes::from(encoder.rows(&rows));
                Some((Ok(bytes), (next, encoder, false)))
            }
        },
    );
    let disposition = format!("attachment; filename=\"{filename}\"");
    Ok((
        [(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_header_names_every_field_in_order() {
        let item = RequestItem::from(&LoggedRequest {
            id: 1,
            request_id: "r".into(),
            started_at: 0,
            token_id: None,
            client_addr: None,
            user_agent: None,
            end_user: None,
            method: "POST".into(),
            path: "/v1/x".into(),
            model: None,
            stream: false,
            status: 200,
            error_type: None,
            key_id: None,
            attempts: 1,
            attempt_log: "[]".into(),
            queue_wait_us: 0,
            ttfb_us: None,
            duration_us: 0,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            reasoning_tokens: None,
            usage_estimated: false,
            cost_micros: None,
            cancelled: false,
            upstream_request_id: None,
        });
        // csv names a struct's fields, in order, in the header it writes.
        let mut csv = csv::Writer::from_writer(Vec::new());
        csv.serialize(item).unwrap_or_default();
        let text = String::from_utf8(csv.into_inner().unwrap_or_default()).unwrap_or_default();
        assert_eq!(text.lines().next(), Some(CSV_HEADER.join(",").as_str()));
    }

    #[test]
    fn a_cursor_reads_back_as_it_was_given() {
        let c = LogCursor { started_at: 1_700_000_000_123, id: 42 };
        assert_eq!(decode_cursor(&encode_cursor(c)).ok(), Some(c));
        assert!(decode_cursor("zz").is_err());
    }
}
