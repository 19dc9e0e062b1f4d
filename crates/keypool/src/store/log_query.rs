//! The request log read back for the admin API: filtered, newest first, a
//! page at a time by keyset pagination on `(started_at, id)`, so a page is
//! stable while new rows arrive and deep pages cost what the first does.
//!
//! The query is built so each filter can use migration 0004's indexes:
//! `(started_at)`, `(key_id, started_at)`, `(token_id, started_at)`,
//! `(model, started_at)`: equality on the filter's column, a range on
//! `started_at`, `ORDER BY started_at DESC, id DESC LIMIT n`.
//!
//! SQLite has no per-token index since migration 0015: a token's page is
//! read from the log's tail not mapped yet (migration 0017), then through
//! `requests_by_token`, its ranges (or lists) of ids mapping by mapping,
//! newest first, until no older run can hold a row the page still needs
//! ([`token_page_sqlite`]). PostgreSQL keeps the index.

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

/// The conditions of `filter` and `cursor` on the columns of `requests`
/// (as `{table}column`), `AND` each, with `$n` placeholders numbered after
/// `args`' and their values pushed there; without the token's when
/// `with_token` is false.
fn conditions(
    filter: &LogFilter,
    cursor: Option<LogCursor>,
    table: &str,
    with_token: bool,
    args: &mut Vec<Arg>,
) -> String {
    let mut sql = String::new();
    let mut cond = |sql: &mut String, text: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&text.replace('?', &format!("${}", args.len())));
    };
    let token = filter.token_id.filter(|_| with_token);
    let int_eqs = [("key_id", filter.key_id), ("token_id", token), ("status", filter.status)];
    for (column, value) in int_eqs {
        if let Some(v) = value {
            cond(&mut sql, &format!(" AND {table}{column} = ?"), Arg::Int(v));
        }
    }
    let text_eqs = [("model", &filter.model), ("error_type", &filter.error_type), ("request_id", &filter.request_id)];
    for (column, value) in text_eqs {
        if let Some(v) = value {
            cond(&mut sql, &format!(" AND {table}{column} = ?"), Arg::Text(v.clone()));
        }
    }
    if let Some(from) = filter.from_ms {
        cond(&mut sql, &format!(" AND {table}started_at >= ?"), Arg::Int(from));
    }
    if let Some(to) = filter.to_ms {
        cond(&mut sql, &format!(" AND {table}started_at < ?"), Arg::Int(to));
    }
    if let Some(c) = cursor {
        // The plain bound lets an index on (…, started_at) stop early; the
        // row comparison breaks ties on the same millisecond by id.
        cond(&mut sql, &format!(" AND {table}started_at <= ?"), Arg::Int(c.started_at));
        let n = args.len();
        args.push(Arg::Int(c.id));
        sql.push_str(&format!(" AND ({table}started_at, {table}id) < (${n}, ${})", n + 1));
    }
    sql
}

/// The page query's text and its arguments, in placeholder order.
fn page_sql(filter: &LogFilter, cursor: Option<LogCursor>, limit: u32) -> (String, Vec<Arg>) {
    let mut args = Vec::new();
    let mut sql = format!("SELECT * FROM requests WHERE 1 = 1{}", conditions(filter, cursor, "", true, &mut args));
    args.push(Arg::Int(i64::from(limit)));
    sql.push_str(&format!(" ORDER BY started_at DESC, id DESC LIMIT ${}", args.len()));
    (sql, args)
}

/// The runs of `requests_by_token` read a chunk at a time: two first
/// (a first page rarely needs more when its token is busy), then twice as
/// many each time, up to this.
const RUNS_AT_ONCE: u16 = 128;

/// One row of `requests_by_token` (migrations 0015, 0016).
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct MapRun {
    last_id: i64,
    bound_ms: i64,
}

/// The query for a token's rows in the runs `last_id` from `$2` to `$3`
/// (`$1` the token), with `filter`'s other conditions and `cursor`'s.
fn runs_page_sql(filter: &LogFilter, cursor: Option<LogCursor>, limit: u32) -> (String, Vec<Arg>) {
    // Placeholders $1–$3 are bound by the caller, for each chunk of runs.
    let mut args = vec![Arg::Int(0), Arg::Int(0), Arg::Int(0)];
    let mut skip = String::new();
    // A run whose rows all started at or after the page's upper end holds
    // nothing for it.
    if let Some(to) = filter.to_ms {
        args.push(Arg::Int(to));
        skip.push_str(&format!(" AND b.oldest_ms < ${}", args.len()));
    }
    if let Some(c) = cursor {
        args.push(Arg::Int(c.started_at));
        skip.push_str(&format!(" AND b.oldest_ms <= ${}", args.len()));
    }
    let rows = conditions(filter, cursor, "r.", false, &mut args);
    args.push(Arg::Int(i64::from(limit)));
    // CROSS JOIN: SQLite keeps the runs as the outer loop, then a run's
    // range of the table's ids (others' rows skipped), or, for a sparse
    // run, the ids it lists (migration 0016), each found by its rowid.
    let sql = format!(
        "SELECT r.* FROM requests_by_token AS b CROSS JOIN requests AS r
          WHERE b.token_id = $1 AND b.last_id BETWEEN $2 AND $3{skip} AND b.ids IS NULL
            AND r.id BETWEEN b.first_id AND b.last_id AND r.token_id = $1{rows}
         UNION ALL
         SELECT r.* FROM requests_by_token AS b CROSS JOIN json_each(b.ids) AS j CROSS JOIN requests AS r
          WHERE b.token_id = $1 AND b.last_id BETWEEN $2 AND $3{skip} AND b.ids IS NOT NULL
            AND r.id = b.first_id + j.value AND r.token_id = $1{rows}
          ORDER BY started_at DESC, id DESC LIMIT ${}",
        args.len()
    );
    (sql, args)
}

/// The query for a token's rows (`$1`) after the map's mark (`$2`), with
/// `filter`'s other conditions and `cursor`'s. `NOT INDEXED`: the rows are
/// found by their ids' range (at most a few seconds of the log), never by
/// walking an index on `started_at` back through the whole log.
fn tail_page_sql(filter: &LogFilter, cursor: Option<LogCursor>, limit: u32) -> (String, Vec<Arg>) {
    let mut args = vec![Arg::Int(0), Arg::Int(0)];
    let rows = conditions(filter, cursor, "r.", false, &mut args);
    args.push(Arg::Int(i64::from(limit)));
    let sql = format!(
        "SELECT r.* FROM requests AS r NOT INDEXED WHERE r.id > $2 AND r.token_id = $1{rows}
          ORDER BY started_at DESC, id DESC LIMIT ${}",
        args.len()
    );
    (sql, args)
}

/// Binds `args` in order.
fn bind_all<'q, DB: sqlx::Database>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.as_str()),
        };
    }
    query
}

/// Whether `a` comes before `b` in the log's order, newest first.
fn newer(a: &LoggedRequest, b: &LoggedRequest) -> bool {
    (a.started_at, a.id) > (b.started_at, b.id)
}

/// SQLite: [`Store::request_page`] for one token, through
/// `requests_by_token` (migration 0015). Reads the token's rows after the
/// map's mark (migration 0017) from the log's tail, then its runs newest
/// first, a chunk at a time ([`RUNS_AT_ONCE`]), each chunk's rows in one query, and
/// keeps the best `limit` rows, all in one read transaction (the mark and
/// the map as of one moment). A run's `bound_ms` bounds the start of every
/// row of the token in it and in every older run, so the search ends at the
/// first run whose bound is below the page's oldest row once the page is
/// full (or below `from_ms`): nothing further back can enter the page.
async fn token_page_sqlite(
    pool: &sqlx::SqlitePool,
    token: i64,
    filter: &LogFilter,
    cursor: Option<LogCursor>,
    limit: u32,
) -> Result<Vec<LoggedRequest>, StoreError> {
    let (sql, mut args) = runs_page_sql(filter, cursor, limit);
    let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut page: Vec<LoggedRequest> = Vec::new();
    if wanted == 0 {
        return Ok(page);
    }
    let mut conn = pool.begin().await?;
    let mark: Option<i64> =
        sqlx::query_scalar("SELECT last_id FROM requests_by_token_mark").fetch_optional(&mut *conn).await?;
    let mark = mark.unwrap_or(0);
    let (tail_sql, mut tail_args) = tail_page_sql(filter, cursor, limit);
    (tail_args[0], tail_args[1]) = (Arg::Int(token), Arg::Int(mark));
    let rows = bind_all(sqlx::query(&tail_sql), &tail_args).fetch_all(&mut *conn).await?;
    page = rows.iter().map(LoggedRequest::from_row).collect::<Result<Vec<_>, _>>()?;
    // Only runs with a smaller last_id than this are left to read: the map
    // holds no row past the mark.
    let mut below = mark.saturating_add(1);
    let mut chunk: u16 = 2;
    loop {
        // Runs whose rows all started at or after the page's upper end
        // (`to_ms`, the cursor) are passed over inside SQLite: a deep page
        // costs a step of the map's B-tree for each newer run, not a
        // statement for each chunk of them.
        let runs: Vec<MapRun> = sqlx::query_as(
            "SELECT last_id, bound_ms FROM requests_by_token
              WHERE token_id = $1 AND last_id < $2 AND oldest_ms < $3 AND oldest_ms <= $4
              ORDER BY last_id DESC LIMIT $5",
        )
        .bind(token)
        .bind(below)
        .bind(filter.to_ms.unwrap_or(i64::MAX))
        .bind(cursor.map_or(i64::MAX, |c| c.started_at))
        .bind(i64::from(chunk))
        .fetch_all(&mut *conn)
        .await?;
        let Some(oldest) = runs.last() else { break };
        below = oldest.last_id;
        // A run can hold a row for the page only if a row of its could
        // start after the page's last one (when the page is full; an equal
        // start loses on id, as every older run's ids are smaller) and no
        // earlier than `from_ms`.
        let floor = page.last().filter(|_| page.len() >= wanted).map(|r| r.started_at);
        let useful =
            |run: &MapRun| floor.is_none_or(|f| run.bound_ms > f) && filter.from_ms.is_none_or(|f| run.bound_ms >= f);
        let cut = runs.iter().position(|run| !useful(run));
        let read = &runs[..cut.unwrap_or(runs.len())];
        if let (Some(newest), Some(oldest)) = (read.first(), read.last()) {
            args[0] = Arg::Int(token);
            args[1] = Arg::Int(oldest.last_id);
            args[2] = Arg::Int(newest.last_id);
            let rows = bind_all(sqlx::query(&sql), &args).fetch_all(&mut *conn).await?;
            let found = rows.iter().map(LoggedRequest::from_row).collect::<Result<Vec<_>, _>>()?;
            page = merge(page, found, wanted);
        }
        if cut.is_some() || runs.len() < usize::from(chunk) {
            break;
        }
        chunk = chunk.saturating_mul(2).min(RUNS_AT_ONCE);
    }
    conn.commit().await?;
    Ok(page)
}

/// The first `limit` of two lists each newest first, newest first.
fn merge(a: Vec<LoggedRequest>, b: Vec<LoggedRequest>, limit: usize) -> Vec<LoggedRequest> {
    let mut out = Vec::with_capacity(limit.min(a.len() + b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if newer(y, x) => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        };
        let Some(row) = next else { break };
        out.push(row);
    }
    out
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
        // A request id picks its few rows through its own index, token or not.
        if let (Db::Sqlite(pool), Some(token), None) = (&self.db, filter.token_id, &filter.request_id) {
            return token_page_sqlite(pool, token, filter, cursor, limit).await;
        }
        let (sql, args) = page_sql(filter, cursor, limit);
        on_pool!(self, |pool| {
            let rows = bind_all(sqlx::query(&sql), &args).fetch_all(pool).await?;
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
