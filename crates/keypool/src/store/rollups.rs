//! The `rollups` table: statistics per key, token and model by minute,
//! hour and day, added to in the record writer's transactions, read by
//! `keypool stats` and the admin API, and pruned with the request log.

use std::collections::BTreeMap;

use super::row::{i64_of, u64_of, Columns};
use super::{on_pool, Db, Store, StoreError};
use crate::records::rollup::{Dimension, Errors, Rollup, RollupKey, Span};

/// The figures' columns, in [`figures`]' order.
const FIGURES: [&str; 29] = [
    "requests",
    "successes",
    "failures",
    "errors_caller",
    "errors_rate_limited",
    "errors_key",
    "errors_timeout",
    "errors_upstream",
    "errors_gateway",
    "errors_cancelled",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_micros",
    "answered",
    "duration_us_sum",
    "ttfb_us_sum",
    "queue_wait_us_sum",
    "le_50ms",
    "le_100ms",
    "le_250ms",
    "le_500ms",
    "le_1s",
    "le_2500ms",
    "le_5s",
    "le_10s",
    "le_30s",
    "over_30s",
];

fn figure_columns() -> &'static [&'static str] {
    &FIGURES
}

/// A row's figures as stored, in [`figure_columns`]' order.
fn figures(r: &Rollup) -> [u64; 29] {
    let e = r.errors.as_array();
    let l = r.latency;
    [
        r.requests,
        r.successes,
        r.failures,
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        e[6],
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.reasoning_tokens,
        r.cost_micros,
        r.answered,
        r.duration_us_sum,
        r.ttfb_us_sum,
        r.queue_wait_us_sum,
        l[0],
        l[1],
        l[2],
        l[3],
        l[4],
        l[5],
        l[6],
        l[7],
        l[8],
        l[9],
    ]
}

fn from_figures(f: [u64; 29]) -> Rollup {
    Rollup {
        requests: f[0],
        successes: f[1],
        failures: f[2],
        errors: Errors::from_array([f[3], f[4], f[5], f[6], f[7], f[8], f[9]]),
        prompt_tokens: f[10],
        completion_tokens: f[11],
        cached_tokens: f[12],
        reasoning_tokens: f[13],
        cost_micros: f[14],
        answered: f[15],
        duration_us_sum: f[16],
        ttfb_us_sum: f[17],
        queue_wait_us_sum: f[18],
        latency: [f[19], f[20], f[21], f[22], f[23], f[24], f[25], f[26], f[27], f[28]],
    }
}

/// The figures an upstream's answer sets (usage, and the cost priced from
/// it): a garbage figure there must not overflow a row.
const FROM_UPSTREAM: [&str; 5] =
    ["prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_micros"];

/// `ON CONFLICT … DO UPDATE`: each figure added. Those an upstream sets stop
/// at the largest BIGINT rather than overflowing (an error on PostgreSQL, a
/// REAL on SQLite), so a garbage usage figure cannot block a batch; the
/// rest are counts of requests and gateway-measured µs, which cannot come
/// near it, and are added plainly (the check on all 29 was most of an
/// upsert's work: docs/benchmarks.md, issue 17).
fn on_conflict() -> String {
    let sets: Vec<String> = figure_columns()
        .iter()
        .map(|c| {
            if FROM_UPSTREAM.contains(c) {
                format!(
                    "{c} = CASE WHEN rollups.{c} > 9223372036854775807 - excluded.{c} \
                     THEN 9223372036854775807 ELSE rollups.{c} + excluded.{c} END"
                )
            } else {
                format!("{c} = rollups.{c} + excluded.{c}")
            }
        })
        .collect();
    format!(" ON CONFLICT (dimension, span, bucket, subject) DO UPDATE SET {}", sets.join(", "))
}

fn insert_head() -> String {
    format!("INSERT INTO rollups (dimension, span, bucket, subject, {}) ", figure_columns().join(", "))
}

/// SQLite's upserts: fixed sizes of multi-row VALUES, largest first (each
/// prepared once per connection, as for the request log).
fn sqlite_upserts() -> &'static [(usize, String)] {
    static UPSERTS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    UPSERTS.get_or_init(|| {
        let row = format!("({})", vec!["?"; 4 + figure_columns().len()].join(", "));
        // 64 rows × 33 columns: well under SQLite's 32,766 parameters.
        [64, 8, 1]
            .into_iter()
            .map(|rows| {
                (rows, format!("{}VALUES {}{}", insert_head(), vec![row.as_str(); rows].join(", "), on_conflict()))
            })
            .collect()
    })
}

/// PostgreSQL's upsert: one array per column, one statement for any batch.
fn postgres_upsert() -> &'static str {
    static UPSERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UPSERT.get_or_init(|| {
        let arrays: Vec<String> = (5..5 + figure_columns().len()).map(|i| format!("${i}::bigint[]")).collect();
        format!(
            "{}SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], {}){}",
            insert_head(),
            arrays.join(", "),
            on_conflict()
        )
    })
}

/// Adds `rows` inside the transaction `tx` (in key order, so two writers
/// sharing a PostgreSQL database take row locks in the same order).
pub(super) async fn add_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &BTreeMap<RollupKey, Rollup>,
) -> Result<(), StoreError> {
    let all: Vec<(&RollupKey, &Rollup)> = rows.iter().collect();
    let mut rest = all.as_slice();
    for (n, sql) in sqlite_upserts() {
        while rest.len() >= *n {
            let (chunk, tail) = rest.split_at(*n);
            let mut q = sqlx::query(sql.as_str());
            for (k, r) in chunk {
                q = q.bind(k.dimension.as_str()).bind(k.span.as_str()).bind(k.bucket).bind(k.subject.as_str());
                for f in figures(r) {
                    q = q.bind(i64_of(f));
                }
            }
            q.execute(&mut **tx).await?;
            rest = tail;
        }
    }
    Ok(())
}

pub(super) async fn add_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &BTreeMap<RollupKey, Rollup>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::query(postgres_upsert())
        .bind(rows.keys().map(|k| k.dimension.as_str()).collect::<Vec<_>>())
        .bind(rows.keys().map(|k| k.span.as_str()).collect::<Vec<_>>())
        .bind(rows.keys().map(|k| k.bucket).collect::<Vec<_>>())
        .bind(rows.keys().map(|k| k.subject.as_str()).collect::<Vec<_>>());
    let columns: Vec<[u64; 29]> = rows.values().map(figures).collect();
    for i in 0..figure_columns().len() {
        q = q.bind(columns.iter().map(|f| i64_of(f[i])).collect::<Vec<i64>>());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// One subject's figures, summed over a time range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubjectStats {
    /// The key's or token's id, or the model ('' for none).
    pub subject: String,
    #[serde(flatten)]
    pub figures: Rollup,
}

/// One bucket's figures, summed over subjects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BucketStats {
    /// The bucket's start, Unix seconds.
    pub bucket: i64,
    #[serde(flatten)]
    pub figures: Rollup,
}

/// `SUM(col)` of every figure, in [`figure_columns`]' order.
fn sums() -> String {
    figure_columns().iter().map(|c| format!("SUM({c}) AS {c}")).collect::<Vec<_>>().join(", ")
}

fn figures_of(row: &impl Columns) -> Result<Rollup, StoreError> {
    let mut f = [0u64; 29];
    for (i, c) in figure_columns().iter().enumerate() {
        // SUM over BIGINT is NUMERIC on PostgreSQL: cast in the query.
        f[i] = u64_of(row.col::<Option<i64>>(c)?.unwrap_or(0));
    }
    Ok(from_figures(f))
}

/// SUM as a BIGINT on both backends (PostgreSQL widens it to NUMERIC).
fn sum_expr(backend_pg: bool) -> String {
    if backend_pg {
        figure_columns().iter().map(|c| format!("SUM({c})::bigint AS {c}")).collect::<Vec<_>>().join(", ")
    } else {
        sums()
    }
}

impl Store {
    /// Each key's id and label (keys without one left out), without
    /// reading any key's secret.
    pub async fn key_labels(&self) -> Result<Vec<(i64, String)>, StoreError> {
        on_pool!(self, |pool| {
            let rows =
                sqlx::query("SELECT id, label FROM keys WHERE label IS NOT NULL ORDER BY id").fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.col("id")?, r.col("label")?))).collect()
        })
    }

    /// Per subject of `dimension`, the figures of the `span` buckets that
    /// start in [`from`, `to`) (Unix seconds), largest request count first.
    /// Reads the rollups only (an index range on their primary key).
    pub async fn stats_by_subject(
        &self,
        dimension: Dimension,
        span: Span,
        from: i64,
        to: i64,
    ) -> Result<Vec<SubjectStats>, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let sql = format!(
            "SELECT subject, {} FROM rollups WHERE dimension = $1 AND span = $2 AND bucket >= $3 AND bucket < $4
             GROUP BY subject ORDER BY requests DESC, subject",
            sum_expr(pg)
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(dimension.as_str())
                .bind(span.as_str())
                .bind(from)
                .bind(to)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| Ok(SubjectStats { subject: r.col("subject")?, figures: figures_of(r)? })).collect()
        })
    }

    /// Bucket by bucket, the figures of `dimension` (one subject's, or all
    /// subjects' summed when `subject` is `None`) in [`from`, `to`), oldest first.
    pub async fn stats_by_bucket(
        &self,
        dimension: Dimension,
        span: Span,
        subject: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<BucketStats>, StoreError> {
        let pg = matches!(self.db, Db::Postgres(_));
        let sql = format!(
            "SELECT bucket, {} FROM rollups WHERE dimension = $1 AND span = $2 AND bucket >= $3 AND bucket < $4
               AND ($5 IS NULL OR subject = $5)
             GROUP BY bucket ORDER BY bucket",
            sum_expr(pg)
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(dimension.as_str())
                .bind(span.as_str())
                .bind(from)
                .bind(to)
                .bind(subject)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| Ok(BucketStats { bucket: r.col("bucket")?, figures: figures_of(r)? })).collect()
        })
    }

    /// Deletes up to `limit` `span` rollup rows (all dimensions) whose
    /// bucket starts before `before` (Unix seconds); returns how many.
    pub async fn prune_rollups(&self, span: Span, before: i64, limit: u32) -> Result<u64, StoreError> {
        let mut gone = 0;
        for d in Dimension::ALL {
            let sql = match self.db {
                // SQLite: the table has no rowid; its key picks the rows.
                Db::Sqlite(_) => {
                    "DELETE FROM rollups WHERE (dimension, span, bucket, subject) IN
                       (SELECT dimension, span, bucket, subject FROM rollups
                        WHERE dimension = $1 AND span = $2 AND bucket < $3 LIMIT $4)"
                }
                Db::Postgres(_) => {
                    "DELETE FROM rollups WHERE ctid IN
                       (SELECT ctid FROM rollups WHERE dimension = $1 AND span = $2 AND bucket < $3 LIMIT $4)"
                }
            };
            gone += on_pool!(self, |pool| {
                sqlx::query(sql)
                    .bind(d.as_str())
                    .bind(span.as_str())
                    .bind(before)
                    .bind(i64::from(limit))
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
            if gone >= u64::from(limit) {
                break;
            }
        }
        Ok(gone)
    }
}
