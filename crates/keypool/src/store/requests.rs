//! The request log's table: batched inserts from the record writer, and
//! the reads behind `requests show` and the admin API.

use std::borrow::Cow;

use super::row::{i64_of, u64_of, Columns};
use super::{on_pool, Db, Store, StoreError, TokenUsage};
use crate::records::rollup::{Buckets, Sums};
use crate::records::{Attempt, Counted, RequestRecord};

/// Columns bound per record in an insert.
const COLUMNS: usize = 28;

/// SQLite's multi-row statements: a few fixed sizes of `VALUES`, largest
/// first, down to one row, so any batch is written with statements that
/// are prepared once per connection. (One text per batch size had SQLite
/// parse a statement of thousands of parameters for nearly every batch:
/// 75k instructions a record under callgrind, docs/benchmarks.md.) At most
/// 256 rows × 28 columns: well under SQLite's 32,766 parameters.
fn sized_statements(columns: usize, text: impl Fn(&str) -> String) -> Vec<(usize, String)> {
    let row = format!("({})", vec!["?"; columns].join(", "));
    [256, 16, 1].into_iter().map(|rows| (rows, text(&vec![row.as_str(); rows].join(", ")))).collect()
}

/// The log's inserts ([`sized_statements`]).
fn sqlite_inserts() -> &'static [(usize, String)] {
    static INSERTS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    INSERTS.get_or_init(|| sized_statements(COLUMNS, |values| format!("{SQLITE_INSERT}VALUES {values}")))
}

/// One created object and its key; nothing when the key was deleted in
/// the meantime (the row would name no key), or the id is known already.
const INSERT_OBJECT: &str = "INSERT INTO objects (id, key_id, created_at)
     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM keys WHERE id = $2)
     ON CONFLICT (id) DO NOTHING";

/// The objects `records` created: id, key, when (Unix ms).
fn created_objects(records: &[RequestRecord]) -> impl Iterator<Item = (&str, i64, i64)> {
    records.iter().filter_map(|r| Some((r.created_object.as_deref()?, r.key_id?, r.started_at)))
}

/// SQLite's insert head. `OR FAIL`: a multi-row statement that may abort
/// halfway keeps a copy of every page it changes (SQLite's statement
/// journal) to undo itself; a failure here undoes the whole transaction
/// anyway, so nothing needs undoing by the statement. With a thousand
/// tenants each 256-row insert changed a page of the per-token index per
/// row (since replaced by `requests_by_token`, migration 0015): without the
/// copies, a replay of the writer ran 6.8% fewer instructions
/// (docs/benchmarks.md, issue 17). The error is returned all the same.
const SQLITE_INSERT: &str = "INSERT OR FAIL INTO requests (request_id, started_at, token_id, client_addr, user_agent,
    end_user, method, path, model, stream, status, error_type, key_id, attempts, attempt_log, queue_wait_us, ttfb_us,
    duration_us, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_estimated,
    cost_micros, cancelled, upstream_request_id, request_body, response_body) ";

/// The PostgreSQL insert: one array per column, in [`SQLITE_INSERT`]'s order.
const UNNEST: &str = "INSERT INTO requests (request_id, started_at, token_id, client_addr, user_agent, end_user,
    method, path, model, stream, status, error_type, key_id, attempts, attempt_log, queue_wait_us, ttfb_us,
    duration_us, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_estimated,
    cost_micros, cancelled, upstream_request_id, request_body, response_body)
 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::boolean[], $11::bigint[], $12::text[], $13::bigint[], $14::bigint[],
    $15::text[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[],
    $22::bigint[], $23::boolean[], $24::bigint[], $25::boolean[], $26::text[],
    $27::text[], $28::text[])";

/// What a batch adds to each key's totals, by key id (in id order): every
/// attempt sent counts as a request of its key, a success or a failure as
/// the scheduler decided ([`Counted`]); the usage and spend count for the
/// key that answered (the last attempt sent).
fn key_totals(records: &[RequestRecord]) -> std::collections::BTreeMap<i64, TokenUsage> {
    let mut totals = std::collections::BTreeMap::<i64, TokenUsage>::new();
    for r in records {
        let second = r.started_at.div_euclid(1000);
        let last = r.attempts.iter().rposition(|a| a.counted != Counted::NotSent);
        for (i, a) in r.attempts.iter().enumerate() {
            if a.counted == Counted::NotSent {
                continue;
            }
            let t = totals.entry(a.key_id).or_default();
            t.requests += 1;
            match a.counted {
                Counted::Success => t.successes += 1,
                Counted::Failure => t.failures += 1,
                Counted::Neither | Counted::NotSent => {}
            }
            if Some(i) == last {
                t.prompt_tokens = t.prompt_tokens.saturating_add(r.prompt_tokens.unwrap_or(0));
                t.completion_tokens = t.completion_tokens.saturating_add(r.completion_tokens.unwrap_or(0));
                t.spent_micros = t.spent_micros.saturating_add(r.cost_micros.unwrap_or(0));
            }
            t.last_used_at = Some(t.last_used_at.map_or(second, |s| s.max(second)));
        }
    }
    totals
}

/// Whose totals a [`TokenUsage`] adds to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Totals {
    Keys,
    Tokens,
}

/// Adds `d` to the totals of row `id` of the `keys` or `tokens` table (a
/// row deleted meanwhile is skipped).
pub(super) fn add_usage_to<DB: sqlx::Database>(
    table: Totals,
    id: i64,
    d: &TokenUsage,
) -> sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments<'static>>
where
    i64: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
{
    // Each total stops at the largest BIGINT rather than overflowing (an
    // error on PostgreSQL, a REAL on SQLite): a garbage usage figure from an
    // upstream must not block the records.
    macro_rules! sets {
        () => {
            " SET
            requests = CASE WHEN requests > 9223372036854775807 - $1 THEN 9223372036854775807 ELSE requests + $1 END,
            successes = CASE WHEN successes > 9223372036854775807 - $2 THEN 9223372036854775807 ELSE successes + $2 END,
            failures = CASE WHEN failures > 9223372036854775807 - $3 THEN 9223372036854775807 ELSE failures + $3 END,
            prompt_tokens = CASE WHEN prompt_tokens > 9223372036854775807 - $4
                THEN 9223372036854775807 ELSE prompt_tokens + $4 END,
            completion_tokens = CASE WHEN completion_tokens > 9223372036854775807 - $5
                THEN 9223372036854775807 ELSE completion_tokens + $5 END,
            spent_micros = CASE WHEN spent_micros > 9223372036854775807 - $6
                THEN 9223372036854775807 ELSE spent_micros + $6 END,
            last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $7 THEN $7 ELSE last_used_at END
         WHERE id = $8"
        };
    }
    let sql = match table {
        Totals::Keys => concat!("UPDATE keys", sets!()),
        Totals::Tokens => concat!("UPDATE tokens", sets!()),
    };
    bind_usage(sqlx::query(sql), d).bind(id)
}

/// Binds `d`'s figures in [`USAGE_COLUMNS`]' order, then its last use.
fn bind_usage<'q, DB: sqlx::Database>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    d: &TokenUsage,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(i64_of(d.requests))
        .bind(i64_of(d.successes))
        .bind(i64_of(d.failures))
        .bind(i64_of(d.prompt_tokens))
        .bind(i64_of(d.completion_tokens))
        .bind(i64_of(d.spent_micros))
        .bind(d.last_used_at)
}

/// The totals' counting columns, in the order [`bind_usage`] binds them.
const USAGE_COLUMNS: [&str; 6] =
    ["requests", "successes", "failures", "prompt_tokens", "completion_tokens", "spent_micros"];

/// `SET` of every total of row `t` plus delta `d`, each stopping at the
/// largest BIGINT, and the later last use (for `UPDATE … FROM d`).
fn usage_sets() -> String {
    let add = |c: &str| {
        format!("{c} = CASE WHEN t.{c} > 9223372036854775807 - d.{c} THEN 9223372036854775807 ELSE t.{c} + d.{c} END")
    };
    let sets: Vec<String> = USAGE_COLUMNS.map(add).into();
    format!(
        "{}, last_used_at = CASE WHEN t.last_used_at IS NULL OR t.last_used_at < d.last_used_at
            THEN d.last_used_at ELSE t.last_used_at END",
        sets.join(", ")
    )
}

/// SQLite's totals updates: fixed sizes of a multi-row `VALUES` joined to
/// the table (`UPDATE … FROM`, SQLite 3.33+), largest first, per table.
/// A few statements per batch (1,000 tokens: 3 of 256, 14 of 16, 8 of 1)
/// rather than one per key or token: each statement is a round trip to
/// sqlx's SQLite thread (docs/benchmarks.md, issue 17). `OR FAIL`, as for
/// [`SQLITE_INSERT`]: no statement journal for a transaction that is
/// undone whole on any error.
fn sqlite_usage_updates(table: Totals) -> &'static [(usize, String)] {
    static KEYS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    static TOKENS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    let (cell, name) = match table {
        Totals::Keys => (&KEYS, "keys"),
        Totals::Tokens => (&TOKENS, "tokens"),
    };
    cell.get_or_init(|| {
        sized_statements(8, |values| {
            format!(
                "WITH d(id, requests, successes, failures, prompt_tokens, completion_tokens, spent_micros,
                        last_used_at) AS (VALUES {values})
                 UPDATE OR FAIL {name} AS t SET {} FROM d WHERE t.id = d.id",
                usage_sets()
            )
        })
    })
}

/// SQLite: adds `totals` to their rows (a row deleted meanwhile is
/// skipped), each total stopping at the largest BIGINT as in [`add_usage_to`].
async fn add_usage_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    table: Totals,
    totals: &std::collections::BTreeMap<i64, TokenUsage>,
) -> Result<(), StoreError> {
    let all: Vec<(&i64, &TokenUsage)> = totals.iter().collect();
    let mut rest = all.as_slice();
    for (rows, sql) in sqlite_usage_updates(table) {
        while rest.len() >= *rows {
            let (chunk, tail) = rest.split_at(*rows);
            let mut q = sqlx::query(sql.as_str());
            for (id, d) in chunk {
                q = bind_usage(q.bind(**id), d);
            }
            q.execute(&mut **tx).await?;
            rest = tail;
        }
    }
    Ok(())
}

/// PostgreSQL: adds `totals` to their rows in one statement (one round
/// trip for a batch's thousand keys rather than a thousand), rows locked in
/// id order first, so the parts of a batch written at once, or two
/// gateways, cannot deadlock on them. Each total stops at the largest
/// BIGINT, as in [`add_usage_to`].
async fn add_usage_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: Totals,
    totals: &std::collections::BTreeMap<i64, TokenUsage>,
) -> Result<(), StoreError> {
    if totals.is_empty() {
        return Ok(());
    }
    let name = match table {
        Totals::Keys => "keys",
        Totals::Tokens => "tokens",
    };
    let ids: Vec<i64> = totals.keys().copied().collect();
    sqlx::query(&format!("SELECT id FROM {name} WHERE id = ANY($1) ORDER BY id FOR UPDATE"))
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
    let sql = format!(
        "UPDATE {name} AS t SET {}
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::bigint[], $8::bigint[])
              AS d(id, requests, successes, failures, prompt_tokens, completion_tokens, spent_micros, last_used_at)
         WHERE t.id = d.id",
        usage_sets()
    );
    let col = |f: fn(&TokenUsage) -> u64| totals.values().map(|d| i64_of(f(d))).collect::<Vec<i64>>();
    sqlx::query(&sql)
        .bind(ids)
        .bind(col(|d| d.requests))
        .bind(col(|d| d.successes))
        .bind(col(|d| d.failures))
        .bind(col(|d| d.prompt_tokens))
        .bind(col(|d| d.completion_tokens))
        .bind(col(|d| d.spent_micros))
        .bind(totals.values().map(|d| d.last_used_at).collect::<Vec<Option<i64>>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A record's attempts as the `attempt_log` column keeps them (JSON).
fn attempt_log(r: &RequestRecord) -> String {
    serde_json::to_string(&r.attempts).unwrap_or_else(|_| "[]".into())
}

/// What a batch added to the log (SQLite): its rows with a token, as
/// (token, id, start), in id order.
#[derive(Debug)]
struct Written {
    /// The log's largest id before the batch (0 when empty).
    base: i64,
    /// The batch's largest id.
    last: i64,
    /// Whether the batch's ids were `base + 1 ..= last` (SQLite gives a new
    /// row the largest id plus one, until that would pass the largest
    /// integer).
    follows: bool,
    rows: Vec<(i64, i64, i64)>,
}

/// SQLite: the rows of the log after the map's mark (migration 0017) that
/// this process wrote, kept so the map is brought up to date without
/// reading them back. `rows` are the rows with a token and an id in
/// `(from, to]`, as (token, id, start) in id order. They are used only
/// while the mark is still `from` in the same generation (no mapping or
/// prune of the newest rows since, by any process) and `to` is the log's
/// largest id (no other process wrote since); otherwise the rows after the
/// mark are read back from the log ([`map_sqlite`]). `from` is `None`
/// until the first mapping of this process.
#[derive(Debug, Default)]
pub(super) struct Unmapped {
    /// The mark and its generation.
    from: Option<(i64, i64)>,
    to: i64,
    rows: Vec<(i64, i64, i64)>,
}

impl Unmapped {
    /// After a transaction committed: mapped up to `mark`, or `written`
    /// left unmapped.
    fn committed(&mut self, mark: Option<(i64, i64)>, written: Option<Written>) {
        if let Some(mark) = mark {
            // The rows' room is kept for the next seconds' rows.
            self.rows.clear();
            (self.from, self.to) = (Some(mark), mark.0);
        } else if let Some(w) = written {
            if self.from.is_some() && w.follows && w.base == self.to {
                self.rows.extend(w.rows);
            } else {
                self.rows.clear();
                self.from = None;
            }
            self.to = w.last;
        }
    }
}

/// SQLite: appends `records` to the log in the order they came; returns
/// what [`map_sqlite`] needs to map them. Rows in arrival order append to
/// the log's indexes (on `started_at`, `request_id`, `(key_id,
/// started_at)`, `(model, started_at)`); sorted by token, as before
/// migration 0016, they filled them out of order, which with a thousand
/// tenants cost SQLite's thread about 2 µs a record more
/// (docs/benchmarks.md, issue 17).
async fn insert_log_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    records: &[RequestRecord],
) -> Result<Written, StoreError> {
    // A lookup at the edge of the B-tree (SQLite's min/max optimisation), not a scan.
    let max_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM requests").fetch_one(&mut **tx).await?;
    let mut rest = records;
    let mut last_id = None;
    for (rows, sql) in sqlite_inserts() {
        while rest.len() >= *rows {
            let (chunk, tail) = rest.split_at(*rows);
            let mut insert = sqlx::query(sql.as_str());
            for r in chunk {
                insert = insert
                    .bind(r.request_id.as_str())
                    .bind(r.started_at)
                    .bind(r.token_id)
                    .bind(r.client_addr.as_deref())
                    .bind(r.user_agent.as_deref())
                    .bind(r.end_user.as_deref())
                    .bind(r.method.as_str())
                    .bind(r.path.as_str())
                    .bind(r.model.as_deref())
                    .bind(r.stream)
                    .bind(i64::from(r.status))
                    .bind(r.error_type.as_deref())
                    .bind(r.key_id)
                    .bind(i64_of(r.attempts.len() as u64))
                    .bind(attempt_log(r))
                    .bind(i64_of(r.queue_wait_us))
                    .bind(r.ttfb_us.map(i64_of))
                    .bind(i64_of(r.duration_us))
                    .bind(r.prompt_tokens.map(i64_of))
                    .bind(r.completion_tokens.map(i64_of))
                    .bind(r.cached_tokens.map(i64_of))
                    .bind(r.reasoning_tokens.map(i64_of))
                    .bind(r.usage_estimated)
                    .bind(r.cost_micros.map(i64_of))
                    .bind(r.cancelled)
                    .bind(r.upstream_request_id.as_deref())
                    .bind(r.request_body.as_deref())
                    .bind(r.response_body.as_deref());
            }
            last_id = Some(insert.execute(&mut **tx).await?.last_insert_rowid());
            rest = tail;
        }
    }
    let base = max_id.unwrap_or(0);
    // The batch's rows are base + 1, base + 2, … in the order written; read
    // them back only if that ever did not hold.
    if let Some(last) = last_id.filter(|&last| base.checked_add(i64_of(records.len() as u64)) == Some(last)) {
        let rows = (base + 1..).zip(records).filter_map(|(id, r)| Some((r.token_id?, id, r.started_at))).collect();
        return Ok(Written { base, last, follows: true, rows });
    }
    let rows = rows_after(tx, base).await?;
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM requests").fetch_one(&mut **tx).await?;
    Ok(Written { base, last: last.unwrap_or(base), follows: false, rows })
}

/// SQLite: the log's rows with a token and an id above `id`, as (token,
/// id, start) in id order: read back when the rows to map are not known.
async fn rows_after(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, id: i64) -> Result<Vec<(i64, i64, i64)>, StoreError> {
    let sql = "SELECT token_id, id, started_at FROM requests WHERE id > $1 AND token_id IS NOT NULL ORDER BY id";
    Ok(sqlx::query_as(sql).bind(id).fetch_all(&mut **tx).await?)
}

/// SQLite: brings `requests_by_token` (migrations 0015 to 0017) up to the
/// log's largest id, in the caller's transaction, and returns that id (the
/// new mark) and the mark's new generation. One row per token for all the rows after the mark: the range
/// of the token's ids, and a list of them when other tokens' rows are most
/// of that range ([`runs_of`]). The rows come from `unmapped` and `written`
/// (this batch, if any) when they are all the rows after the mark, else
/// they are read back from the log (after a restart, another process's
/// write, or a prune of the newest rows).
async fn map_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    unmapped: &Unmapped,
    written: Option<&Written>,
) -> Result<(i64, i64), StoreError> {
    // Each a lookup at the edge of its B-tree, not a scan.
    let (mark, generation, top, max_started): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT last_id FROM requests_by_token_mark), (SELECT generation FROM requests_by_token_mark),
                    (SELECT MAX(id) FROM requests), (SELECT MAX(started_at) FROM requests)",
    )
    .fetch_one(&mut **tx)
    .await?;
    let (mark, generation, top) = (mark.unwrap_or(0), generation.unwrap_or(0), top.unwrap_or(0));
    let known = unmapped.from == Some((mark, generation))
        && match written {
            Some(w) => w.follows && w.base == unmapped.to,
            None => unmapped.to == top,
        };
    let runs = if known {
        let batch = written.map_or(&[][..], |w| w.rows.as_slice());
        runs_of(unmapped.rows.iter().chain(batch).copied())
    } else {
        runs_of(rows_after(tx, mark).await?.into_iter())
    };
    // The largest start of any row up to the runs' ids: rows end, and are
    // written, in another order than they start.
    let bound = max_started.unwrap_or(0);
    let mut rest = runs.as_slice();
    for (rows, sql) in sqlite_run_inserts() {
        while rest.len() >= *rows {
            let (chunk, tail) = rest.split_at(*rows);
            let mut insert = sqlx::query(sql.as_str());
            for run in chunk {
                insert = insert
                    .bind(run.token_id)
                    .bind(run.last_id)
                    .bind(run.first_id)
                    .bind(run.oldest_ms)
                    .bind(bound)
                    .bind(run.ids.as_deref());
            }
            insert.execute(&mut **tx).await?;
            rest = tail;
        }
    }
    let generation = generation.wrapping_add(1);
    sqlx::query("INSERT OR REPLACE INTO requests_by_token_mark (only, last_id, generation) VALUES (1, $1, $2)")
        .bind(top)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
    Ok((top, generation))
}

/// One token's rows in one mapping of the log, between ids `first_id` and
/// `last_id`. `ids` lists them (a JSON array of offsets from `first_id`,
/// ascending; migration 0016) when they are fewer than half the ids
/// between; else it is `None` and the range is read, others' rows skipped.
/// The earliest started at `oldest_ms` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    token_id: i64,
    first_id: i64,
    last_id: i64,
    oldest_ms: i64,
    ids: Option<String>,
}

/// The runs of the rows mapped at once, given as (token, id, start) in id order:
/// one per token, in token order (the map's key order). Only a sparse run
/// lists its ids: with one busy token a batch's thousands of ids would make
/// its row of the map tens of kilobytes, and reading a range at least half
/// the token's skips at most as many rows as it keeps.
fn runs_of(rows: impl Iterator<Item = (i64, i64, i64)>) -> Vec<Run> {
    let mut at = rustc_hash::FxHashMap::<i64, usize>::default();
    // Each run with its ids as offsets.
    let mut runs: Vec<(Run, Vec<i64>)> = Vec::new();
    for (token_id, id, started_at) in rows {
        match at.entry(token_id) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let (run, offsets) = &mut runs[*e.get()];
                offsets.push(id - run.first_id);
                run.last_id = id;
                run.oldest_ms = run.oldest_ms.min(started_at);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(runs.len());
                let run = Run { token_id, first_id: id, last_id: id, oldest_ms: started_at, ids: None };
                runs.push((run, vec![0]));
            }
        }
    }
    let mut runs: Vec<Run> = runs
        .into_iter()
        .map(|(run, offsets)| {
            let span = run.last_id - run.first_id + 1;
            if i64::try_from(offsets.len()).unwrap_or(i64::MAX).saturating_mul(2) >= span {
                run
            } else {
                let list: Vec<String> = offsets.iter().map(i64::to_string).collect();
                Run { ids: Some(format!("[{}]", list.join(","))), ..run }
            }
        })
        .collect();
    runs.sort_unstable_by_key(|r| r.token_id);
    runs
}

/// The inserts into `requests_by_token` ([`sized_statements`]).
fn sqlite_run_inserts() -> &'static [(usize, String)] {
    static INSERTS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    INSERTS.get_or_init(|| {
        sized_statements(6, |values| {
            format!(
                "INSERT OR FAIL INTO requests_by_token (token_id, last_id, first_id, oldest_ms, bound_ms, ids)
                 VALUES {values}"
            )
        })
    })
}

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
            request_body: row.col("request_body")?,
            response_body: row.col("response_body")?,
            created_object: None,
        })
    }
}

impl Store {
    /// Appends request records in one transaction, with what they add to
    /// the key and token totals and the rollups (UTC days).
    pub async fn insert_requests(&self, records: &[RequestRecord]) -> Result<(), StoreError> {
        self.write_batch(records, true, &Sums::of(records, &Buckets::utc())).await
    }

    /// The record writer's batch, in one transaction: the records (unless
    /// `log` is off), what they add to each key's totals, and `sums` (the
    /// rollups and token totals the caller summed, from these records or
    /// earlier ones: [`Sums`]). All of it or none is written, so the key
    /// totals always agree with the log, after a crash too; the token
    /// totals and rollups agree once the caller's sums are written.
    ///
    /// On SQLite, the map of the log by token is brought up to date with
    /// the statistics, when `sums` holds some ([`map_sqlite`]): the writer
    /// sums them for a second, or 5 s with many tokens, and a token's page
    /// reads the rows not yet mapped from the log's tail.
    pub async fn write_batch(&self, records: &[RequestRecord], log: bool, sums: &Sums) -> Result<(), StoreError> {
        if records.is_empty() && sums.is_empty() {
            return Ok(());
        }
        let keys = key_totals(records);
        let (tokens, rollups) = (&sums.tokens, &sums.rollups);
        match &self.db {
            Db::Sqlite(all) => {
                // IMMEDIATE: the write lock from the start, waiting out
                // another writer (the busy timeout). A transaction that
                // reads first, as the log's insert does, and writes once
                // another connection has committed fails at once instead
                // (SQLITE_BUSY_SNAPSHOT, which no timeout retries).
                let mut unmapped = self.unmapped.lock().await;
                let mut tx = self.sqlite_writes(all).begin_with("BEGIN IMMEDIATE").await?;
                let written = match log && !records.is_empty() {
                    true => Some(insert_log_sqlite(&mut tx, records).await?),
                    false => None,
                };
                let mark = match sums.is_empty() {
                    true => None,
                    false => Some(map_sqlite(&mut tx, &unmapped, written.as_ref()).await?),
                };
                add_usage_sqlite(&mut tx, Totals::Keys, &keys).await?;
                add_usage_sqlite(&mut tx, Totals::Tokens, tokens).await?;
                super::rollups::add_sqlite(&mut tx, rollups).await?;
                for (id, key_id, at) in created_objects(records) {
                    sqlx::query(INSERT_OBJECT).bind(id).bind(key_id).bind(at).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                unmapped.committed(mark, written);
            }
            // One statement for any batch: each column bound as one array
            // and unnested, so PostgreSQL parses and plans it once per
            // connection, whatever the batch size.
            Db::Postgres(pool) => {
                let text = |f: fn(&RequestRecord) -> Option<&str>| records.iter().map(f).collect::<Vec<_>>();
                let int = |f: fn(&RequestRecord) -> Option<i64>| records.iter().map(f).collect::<Vec<_>>();
                let flag = |f: fn(&RequestRecord) -> bool| records.iter().map(f).collect::<Vec<_>>();
                let mut tx = pool.begin().await?;
                if log && !records.is_empty() {
                    let attempt_logs: Vec<String> = records.iter().map(attempt_log).collect();
                    sqlx::query(UNNEST)
                        .bind(text(|r| Some(r.request_id.as_str())))
                        .bind(int(|r| Some(r.started_at)))
                        .bind(int(|r| r.token_id))
                        .bind(text(|r| r.client_addr.as_deref()))
                        .bind(text(|r| r.user_agent.as_deref()))
                        .bind(text(|r| r.end_user.as_deref()))
                        .bind(text(|r| Some(r.method.as_str())))
                        .bind(text(|r| Some(r.path.as_str())))
                        .bind(text(|r| r.model.as_deref()))
                        .bind(flag(|r| r.stream))
                        .bind(int(|r| Some(i64::from(r.status))))
                        .bind(text(|r| r.error_type.as_deref()))
                        .bind(int(|r| r.key_id))
                        .bind(int(|r| Some(i64_of(r.attempts.len() as u64))))
                        .bind(attempt_logs)
                        .bind(int(|r| Some(i64_of(r.queue_wait_us))))
                        .bind(int(|r| r.ttfb_us.map(i64_of)))
                        .bind(int(|r| Some(i64_of(r.duration_us))))
                        .bind(int(|r| r.prompt_tokens.map(i64_of)))
                        .bind(int(|r| r.completion_tokens.map(i64_of)))
                        .bind(int(|r| r.cached_tokens.map(i64_of)))
                        .bind(int(|r| r.reasoning_tokens.map(i64_of)))
                        .bind(flag(|r| r.usage_estimated))
                        .bind(int(|r| r.cost_micros.map(i64_of)))
                        .bind(flag(|r| r.cancelled))
                        .bind(text(|r| r.upstream_request_id.as_deref()))
                        .bind(text(|r| r.request_body.as_deref()))
                        .bind(text(|r| r.response_body.as_deref()))
                        .execute(&mut *tx)
                        .await?;
                }
                add_usage_postgres(&mut tx, Totals::Keys, &keys).await?;
                add_usage_postgres(&mut tx, Totals::Tokens, tokens).await?;
                super::rollups::add_postgres(&mut tx, rollups).await?;
                for (id, key_id, at) in created_objects(records) {
                    sqlx::query(INSERT_OBJECT).bind(id).bind(key_id).bind(at).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The key that created object `id` (`routing::affinity`), if known.
    pub async fn object_key(&self, id: &str) -> Result<Option<i64>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT key_id FROM objects WHERE id = $1").bind(id).fetch_optional(pool).await?;
            Ok(row.map(|r| r.col::<i64>("key_id")).transpose()?)
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
        Ok(self.recent_requests_with_ids(limit).await?.into_iter().map(|(_, r)| r).collect())
    }

    /// The newest `limit` records with their row ids, newest first.
    pub async fn recent_requests_with_ids(&self, limit: u32) -> Result<Vec<(i64, RequestRecord)>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM requests ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(|row| Ok((row.col("id")?, RequestRecord::from_row(row)?))).collect()
        })
    }

    /// Records written after the row `after` (a row id), oldest first, at most `limit`.
    pub async fn requests_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, RequestRecord)>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM requests WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(|row| Ok((row.col("id")?, RequestRecord::from_row(row)?))).collect()
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

    /// Deletes up to `limit` of the oldest records that started before
    /// `before` (Unix ms); returns how many. The oldest first, through the
    /// `started_at` index, so each call is a short transaction.
    ///
    /// On SQLite it also keeps `requests_by_token` (migrations 0015 to 0017) true to
    /// the log, in the same transaction. The call that deletes fewer than
    /// `limit` (the last of a pass) drops the runs older than every row
    /// left: one scan of the map a pass, not one a call. And when the rows
    /// with the largest ids go (the log idle past its retention), the runs
    /// that named them are cut back to the largest id left, or dropped, and
    /// so is the map's mark:
    /// SQLite gives the next row the largest id left plus one, and no run
    /// may name an id that a later batch will use again.
    pub async fn prune_requests(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        const DELETE: &str = "DELETE FROM requests WHERE id IN
               (SELECT id FROM requests WHERE started_at < $1 ORDER BY started_at LIMIT $2)";
        let pool = match &self.db {
            Db::Postgres(pool) => {
                let done = sqlx::query(DELETE).bind(before).bind(i64::from(limit)).execute(pool).await?;
                return Ok(done.rows_affected());
            }
            Db::Sqlite(pool) => pool,
        };
        let largest = "SELECT MAX(id) FROM requests";
        let mut unmapped = self.unmapped.lock().await;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let had: Option<i64> = sqlx::query_scalar(largest).fetch_one(&mut *tx).await?;
        let deleted = sqlx::query(DELETE).bind(before).bind(i64::from(limit)).execute(&mut *tx).await?.rows_affected();
        let has: Option<i64> = sqlx::query_scalar(largest).fetch_one(&mut *tx).await?;
        if has < had {
            // Runs wholly above the largest id left name only rows that
            // are gone; a run across it keeps its surviving rows.
            let top = has.unwrap_or(0);
            sqlx::query("DELETE FROM requests_by_token WHERE first_id > $1").bind(top).execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE requests_by_token
                    SET ids = CASE WHEN ids IS NULL THEN NULL
                                   ELSE (SELECT json_group_array(value ORDER BY value) FROM json_each(ids)
                                          WHERE first_id + value <= $1) END,
                        last_id = $1
                  WHERE last_id > $1",
            )
            .bind(top)
            .execute(&mut *tx)
            .await?;
            // The rows not mapped yet past it are gone too; a new
            // generation tells every process that its unmapped rows are
            // not the log's any more, even once new rows take their ids.
            sqlx::query("UPDATE requests_by_token_mark SET last_id = MIN(last_id, $1), generation = generation + 1")
                .bind(top)
                .execute(&mut *tx)
                .await?;
        }
        if deleted < u64::from(limit) {
            // A run that reaches a surviving row stays whole: the page
            // query skips the ids that are gone.
            sqlx::query(
                "DELETE FROM requests_by_token
                  WHERE last_id < COALESCE((SELECT MIN(id) FROM requests), 9223372036854775807)",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if has < had {
            // The ids past the largest left will be given again.
            *unmapped = Unmapped::default();
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_list_their_ids_only_when_others_lie_between() {
        let rows = [(7, 11, 500), (7, 12, 400), (3, 13, 450), (7, 14, 600), (3, 15, 300), (3, 16, 900), (9, 17, 1)];
        let run = |token_id, first_id, last_id, oldest_ms, ids: Option<&str>| Run {
            token_id,
            first_id,
            last_id,
            oldest_ms,
            ids: ids.map(str::to_owned),
        };
        // Three of four ids, and one of one: ranges.
        assert_eq!(
            runs_of(rows.into_iter()),
            [run(3, 13, 16, 300, None), run(7, 11, 14, 400, None), run(9, 17, 17, 1, None)]
        );
        // One token's batch: a range, no list.
        assert_eq!(runs_of((1..=5).map(|id| (4, id, id * 10))), [run(4, 1, 5, 10, None)]);
        // Fewer than half: listed, every id including those before the first gap.
        let sparse =
            [(5, 1, 9), (5, 2, 8), (5, 3, 7), (6, 4, 1), (6, 5, 1), (6, 6, 1), (6, 7, 1), (6, 8, 1), (5, 9, 6)];
        let (five, six) = (run(5, 1, 9, 6, Some("[0,1,2,8]")), run(6, 4, 8, 1, None));
        assert_eq!(runs_of(sparse.into_iter()), [five, six]);
    }
}
