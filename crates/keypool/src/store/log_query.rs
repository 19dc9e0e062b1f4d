//! The request log read back for the admin API: filtered, newest first, a
//! page at a time by keyset pagination on `(started_at, id)`, so a page is
//! stable while new rows arrive and deep pages cost what the first does.
//!
//! The query is built so each filter can use migration 0004's indexes:
//! `(started_at)`, `(key_id, started_at)`, `(token_id, started_at)`,
//! `(model, started_at)`: equality on the filter's column, a range on
//! `started_at`, `ORDER BY started_at DESC, id DESC LIMIT n`.

use super::row::Columns;
use super::{on_pool, Db, Store, StoreError};

/// Which requests to read; every field set must match. Times are Unix
/// milliseconds, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub key_id: Option<i64>,
    pub token_id: Option<i64>,
    pub model: Option<String>,
    /// The status the caller got.
    pub status: Option<i64>,
    pub error_type: Option<String>,
    /// keypool's request id (`x-keypool-request-id`).
    pub request_id: Option<String>,
}

/// Where a page starts: strictly older than this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    pub started_at: i64,
    pub id: i64,
}

/// One row of the request log as stored (times Unix ms, durations µs,
/// money micro-USD); `attempt_log` is the JSON text of its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The row's id: unique, unlike `request_id` (a caller may reuse its own).
    pub id: i64,
    pub request_id: String,
    pub started_at: i64,
    pub token_id: Option<i64>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub end_user: Option<String>,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    pub status: i64,
    pub error_type: Option<String>,
    pub key_id: Option<i64>,
    pub attempts: i64,
    pub attempt_log: String,
    pub queue_wait_us: i64,
    pub ttfb_us: Option<i64>,
    pub duration_us: i64,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub usage_estimated: bool,
    pub cost_micros: Option<i64>,
    pub cancelled: bool,
    pub upstream_request_id: Option<String>,
}

impl LoggedRequest {
    fn from_row(row: &impl Columns) -> Result<LoggedRequest, StoreError> {
        Ok(LoggedRequest {
            id: row.col("id")?,
            request_id: row.col("request_id")?,
            started_at: row.col("started_at")?,
            token_id: row.col("token_id")?,
            client_addr: row.col("client_addr")?,
            user_agent: row.col("user_agent")?,
            end_user: row.col("end_user")?,
            method: row.col("method")?,
            path: row.col("path")?,
            model: row.col("model")?,
            stream: row.col("stream")?,
            status: row.col("status")?,
            error_type: row.col("error_type")?,
            key_id: row.col("key_id")?,
            attempts: row.col("attempts")?,
            attempt_log: row.col("attempt_log")?,
            queue_wait_us: row.col("queue_wait_us")?,
            ttfb_us: row.col("ttfb_us")?,
            duration_us: row.col("duration_us")?,
            prompt_tokens: row.col("prompt_tokens")?,
            completion_tokens: row.col("completion_tokens")?,
            cached_tokens: row.col("cached_tokens")?,
            reasoning_tokens: row.col("reasoning_tokens")?,
            usage_estimated: row.col("usage_estimated")?,
            cost_micros: row.col("cost_micros")?,
            cancelled: row.col("cancelled")?,
            upstream_request_id: row.col("upstream_request_id")?,
        })
    }
}

/// A value bound to the page query.
enum Arg {
    Int(i64),
    Text(String),
}

/// The page query's text and its arguments, in placeholder order.
fn page_sql(filter: &LogFilter, cursor: Option<LogCursor>, limit: u32) -> (String, Vec<Arg>) {
    let mut sql = String::from("SELECT * FROM requests WHERE 1 = 1");
    let mut args = Vec::new();
    let mut cond = |sql: &mut String, text: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&text.replace('?', &format!("${}", args.len())));
    };
    let int_eqs = [("key_id", filter.key_id), ("token_id", filter.token_id), ("status", filter.status)];
    for (column, value) in int_eqs {
        if let Some(v) = value {
            cond(&mut sql, &format!(" AND {column} = ?"), Arg::Int(v));
        }
    }
    let text_eqs = [("model", &filter.model), ("error_type", &filter.error_type), ("request_id", &filter.request_id)];
    for (column, value) in text_eqs {
        if let Some(v) = value {
            cond(&mut sql, &format!(" AND {column} = ?"), Arg::Text(v.clone()));
        }
    }
    if let Some(from) = filter.from_ms {
        cond(&mut sql, " AND started_at >= ?", Arg::Int(from));
    }
    if let Some(to) = filter.to_ms {
        cond(&mut sql, " AND started_at < ?", Arg::Int(to));
    }
    if let Some(c) = cursor {
        // The plain bound lets an index on (…, started_at) stop early; the
        // row comparison breaks ties on the same millisecond by id.
        cond(&mut sql, " AND started_at <= ?", Arg::Int(c.started_at));
        let n = args.len();
        args.push(Arg::Int(c.id));
        sql.push_str(&format!(" AND (started_at, id) < (${n}, ${})", n + 1));
    }
    args.push(Arg::Int(i64::from(limit)));
    sql.push_str(&format!(" ORDER BY started_at DESC, id DESC LIMIT ${}", args.len()));
    (sql, args)
}

impl Store {
    /// Up to `limit` requests matching `filter`, older than `cursor` (from
    /// the newest when `None`), newest first.
    pub async fn request_page(
        &self,
        filter: &LogFilter,
        cursor: Option<LogCursor>,
        limit: u32,
    ) -> Result<Vec<LoggedRequest>, StoreError> {
        let (sql, args) = page_sql(filter, cursor, limit);
        on_pool!(self, |pool| {
            let mut query = sqlx::query(&sql);
            for arg in args {
                query = match arg {
                    Arg::Int(v) => query.bind(v),
                    Arg::Text(v) => query.bind(v),
                };
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(LoggedRequest::from_row).collect()
        })
    }

    /// The request log's row `id`, if there is one.
    pub async fn logged_request(&self, id: i64) -> Result<Option<LoggedRequest>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT * FROM requests WHERE id = $1").bind(id).fetch_optional(pool).await?;
            row.as_ref().map(LoggedRequest::from_row).transpose()
        })
    }

    /// Zeroes key `id`'s lifetime totals (requests, successes, failures,
    /// tokens, spend). [`StoreError::NotFound`] when there is no such key.
    pub async fn reset_key_totals(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "UPDATE keys SET requests = 0, successes = 0, failures = 0, prompt_tokens = 0,
                    completion_tokens = 0, spent_micros = 0 WHERE id = $1",
            )
            .bind(id)
            .execute(pool)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "key", id });
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_query_numbers_its_placeholders_in_binding_order() {
        let filter = LogFilter { key_id: Some(3), model: Some("m".into()), from_ms: Some(10), ..LogFilter::default() };
        let (sql, args) = page_sql(&filter, Some(LogCursor { started_at: 50, id: 7 }), 20);
        assert_eq!(
            sql,
            "SELECT * FROM requests WHERE 1 = 1 AND key_id = $1 AND model = $2 AND started_at >= $3 \
             AND started_at <= $4 AND (started_at, id) < ($4, $5) ORDER BY started_at DESC, id DESC LIMIT $6"
        );
        assert_eq!(args.len(), 6);
    }
}
