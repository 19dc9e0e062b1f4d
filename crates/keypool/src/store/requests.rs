//! The request log's table: batched inserts from the record writer, and
//! the reads behind `requests show` and the admin API.

use std::borrow::Cow;

use sqlx::QueryBuilder;

use super::row::{i64_of, u64_of, Columns};
use super::{on_pool, Db, Store, StoreError};
use crate::records::{Attempt, RequestRecord};

/// Columns bound per record in an insert.
const COLUMNS: usize = 26;
/// Records per INSERT statement: under SQLite's 32,766 and PostgreSQL's
/// 65,535 bound parameters.
const PER_STATEMENT: usize = 32_766 / COLUMNS;

const INSERT: &str = "INSERT INTO requests (request_id, started_at, token_id, client_addr, user_agent, end_user,
    method, path, model, stream, status, error_type, key_id, attempts, attempt_log, queue_wait_us, ttfb_us,
    duration_us, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_estimated,
    cost_micros, cancelled, upstream_request_id) ";

impl RequestRecord {
    fn from_row(row: &impl Columns) -> Result<RequestRecord, StoreError> {
        let opt = |v: Option<i64>| v.map(u64_of);
        let log: String = row.col("attempt_log")?;
        let attempts: Vec<Attempt> = serde_json::from_str(&log).unwrap_or_default();
        Ok(RequestRecord {
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
            status: u16::try_from(row.col::<i64>("status")?).unwrap_or(0),
            error_type: row.col::<Option<String>>("error_type")?.map(Cow::Owned),
            key_id: row.col("key_id")?,
            attempts,
            queue_wait_us: u64_of(row.col("queue_wait_us")?),
            ttfb_us: opt(row.col("ttfb_us")?),
            duration_us: u64_of(row.col("duration_us")?),
            prompt_tokens: opt(row.col("prompt_tokens")?),
            completion_tokens: opt(row.col("completion_tokens")?),
            cached_tokens: opt(row.col("cached_tokens")?),
            reasoning_tokens: opt(row.col("reasoning_tokens")?),
            usage_estimated: row.col("usage_estimated")?,
            cost_micros: opt(row.col("cost_micros")?),
            cancelled: row.col("cancelled")?,
            upstream_request_id: row.col("upstream_request_id")?,
        })
    }
}

impl Store {
    /// Appends request records in one transaction (the record writer's batches).
    pub async fn insert_requests(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            for chunk in records.chunks(PER_STATEMENT) {
                let mut insert = QueryBuilder::new(INSERT);
                insert.push_values(chunk, |mut row, r| {
                    let log = serde_json::to_string(&r.attempts).unwrap_or_else(|_| "[]".into());
                    row.push_bind(r.request_id.as_str())
                        .push_bind(r.started_at)
                        .push_bind(r.token_id)
                        .push_bind(r.client_addr.as_deref())
                        .push_bind(r.user_agent.as_deref())
                        .push_bind(r.end_user.as_deref())
                        .push_bind(r.method.as_str())
                        .push_bind(r.path.as_str())
                        .push_bind(r.model.as_deref())
                        .push_bind(r.stream)
                        .push_bind(i64::from(r.status))
                        .push_bind(r.error_type.as_deref())
                        .push_bind(r.key_id)
                        .push_bind(i64_of(r.attempts.len() as u64))
                        .push_bind(log)
                        .push_bind(i64_of(r.queue_wait_us))
                        .push_bind(r.ttfb_us.map(i64_of))
                        .push_bind(i64_of(r.duration_us))
                        .push_bind(r.prompt_tokens.map(i64_of))
                        .push_bind(r.completion_tokens.map(i64_of))
                        .push_bind(r.cached_tokens.map(i64_of))
                        .push_bind(r.reasoning_tokens.map(i64_of))
                        .push_bind(r.usage_estimated)
                        .push_bind(r.cost_micros.map(i64_of))
                        .push_bind(r.cancelled)
                        .push_bind(r.upstream_request_id.as_deref());
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// How many requests the log holds.
    pub async fn count_requests(&self) -> Result<u64, StoreError> {
        on_pool!(self, |pool| {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests").fetch_one(pool).await?;
            Ok(u64_of(n))
        })
    }

    /// The newest `limit` records, newest first.
    pub async fn recent_requests(&self, limit: u32) -> Result<Vec<RequestRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM requests ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(RequestRecord::from_row).collect()
        })
    }

    /// The records with this request id (one, unless callers reused an
    /// `X-Client-Request-Id`), oldest first.
    pub async fn requests_by_id(&self, request_id: &str) -> Result<Vec<RequestRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM requests WHERE request_id = $1 ORDER BY id")
                .bind(request_id)
                .fetch_all(pool)
                .await?;
            rows.iter().map(RequestRecord::from_row).collect()
        })
    }
}
