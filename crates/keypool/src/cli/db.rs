//! `keypool db migrate --to postgres://…`: copies a SQLite database into a
//! PostgreSQL one, for a team that outgrows one file.
//!
//! The copy is by column name, table by table, with each value converted to
//! the target column's type (SQLite keeps booleans as integers), so it
//! follows the migrations without a list of columns to keep in step: any
//! table both databases have is copied whole. Ids are kept (the request log
//! and the totals name keys and tokens by id; an encrypted key is bound to
//! its id), and PostgreSQL's id sequences are moved past them.

use std::collections::BTreeMap;

use clap::Subcommand;
use futures_util::TryStreamExt;
use sqlx::{Column, PgPool, Row, SqlitePool, TypeInfo, ValueRef};

use crate::config::mask_url_password as mask_url;
use crate::store::{Backend, Create, Store};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy this (SQLite) database into an empty PostgreSQL database: keys,
    /// tokens, totals, key state, the request log and the statistics. Stop
    /// the gateway first; afterwards point database_url at the new one.
    Migrate {
        /// The PostgreSQL database to copy into (it must exist; keypool's
        /// tables are created there and must hold no keys, tokens or records).
        #[arg(long)]
        to: String,
    },
}

/// Rows sent in one INSERT (PostgreSQL takes at most 65,535 parameters).
const PARAMETERS: usize = 60_000;
/// Tables other tables refer to by foreign key: copied before the rest.
const PARENTS: [&str; 2] = ["keys", "tokens"];
/// Tables never copied: the migrations' own bookkeeping is the target's,
/// and SQLite's map of the log by token (migrations 0015, 0017) is SQLite's own:
/// PostgreSQL indexes the log by token instead.
const SKIPPED: [&str; 3] = ["_sqlx_migrations", "requests_by_token", "requests_by_token_mark"];

pub async fn run(cmd: &DbCommand, source_url: &str) -> anyhow::Result<()> {
    let DbCommand::Migrate { to } = cmd;
    if Backend::of(source_url) != Some(Backend::Sqlite) {
        anyhow::bail!("database_url is {}: `db migrate` copies from a SQLite database", mask_url(source_url));
    }
    if Backend::of(to) != Some(Backend::Postgres) {
        anyhow::bail!("--to must be a postgres:// URL (e.g. postgres://keypool:PASSWORD@db.internal/keypool)");
    }
    // Opening each runs its migrations: both have today's tables.
    let source = Store::open(source_url, Create::Never).await?;
    let target = Store::open(to, Create::IfMissing).await?;
    let (Some(from), Some(into)) = (source.sqlite_pool(), target.postgres_pool()) else {
        anyhow::bail!("could not open both databases");
    };
    for table in ["keys", "tokens", "requests"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(into).await?;
        if n > 0 {
            anyhow::bail!(
                "{} already holds {n} row(s) in `{table}`: `db migrate` copies into an empty database only",
                mask_url(to)
            );
        }
    }
    let copied = copy_all(from, into).await;
    source.close().await;
    target.close().await;
    for (table, rows) in copied? {
        eprintln!("{table}: {rows} row(s) copied");
    }
    eprintln!("done: set database_url = \"{}\" and start keypool", mask_url(to));
    Ok(())
}

/// Copies every table both databases have, in one PostgreSQL transaction
/// (a failed copy leaves the target as it was); returns the rows per table.
async fn copy_all(from: &SqlitePool, into: &PgPool) -> anyhow::Result<BTreeMap<String, u64>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(from)
    .await?;
    // Tables others refer to first (key_state names keys by a foreign key).
    let mut tables: Vec<String> = tables.into_iter().filter(|t| !SKIPPED.contains(&t.as_str())).collect();
    tables.sort_by_key(|t| (!PARENTS.contains(&t.as_str()), t.clone()));
    let mut tx = into.begin().await?;
    let mut copied = BTreeMap::new();
    for table in &tables {
        let target = target_columns(&mut tx, table).await?;
        if target.is_empty() {
            eprintln!("{table}: not in the PostgreSQL database's tables; skipped");
            continue;
        }
        // The target's rows made by its migrations (the revision counter) give way.
        sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await?;
        let rows = copy_table(from, &mut tx, table, &target).await?;
        copied.insert(table.clone(), rows);
    }
    // New rows continue after the copied ids.
    for table in copied.keys() {
        let has_identity: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
               AND table_name = $1 AND column_name = 'id' AND is_identity = 'YES')",
        )
        .bind(table)
        .fetch_one(&mut *tx)
        .await?;
        if has_identity {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(copied)
}

/// The target table's columns and their types (`bigint`, `text`, `boolean`, …).
async fn target_columns(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut **tx)
    .await?)
}

/// One value, read from SQLite as the target column wants it.
enum Value {
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
}

async fn copy_table(
    from: &SqlitePool,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &str,
    target: &[(String, String)],
) -> anyhow::Result<u64> {
    let select = format!("SELECT * FROM {table}");
    let mut rows = sqlx::query(&select).fetch(from);
    let mut columns: Option<Vec<(usize, String, String)>> = None;
    let mut pending: Vec<Vec<Value>> = Vec::new();
    let mut copied = 0;
    while let Some(row) = rows.try_next().await? {
        // The columns both have, matched by name, in the source row's order.
        let cols = columns.get_or_insert_with(|| {
            row.columns()
                .iter()
                .filter_map(|c| {
                    target.iter().find(|(name, _)| name == c.name()).map(|(n, t)| (c.ordinal(), n.clone(), t.clone()))
                })
                .collect()
        });
        let mut values = Vec::with_capacity(cols.len());
        for (i, name, kind) in cols.iter() {
            values.push(read(&row, *i, kind).map_err(|e| anyhow::anyhow!("{table}.{name}: {e}"))?);
        }
        pending.push(values);
        if pending.len() * cols.len().max(1) >= PARAMETERS {
            copied += insert(tx, table, cols, &mut pending).await?;
        }
    }
    if let Some(cols) = &columns {
        copied += insert(tx, table, cols, &mut pending).await?;
    }
    Ok(copied)
}

fn read(row: &sqlx::sqlite::SqliteRow, i: usize, kind: &str) -> anyhow::Result<Value> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(match kind {
            "bigint" | "integer" | "smallint" => Value::Int(None),
            "double precision" | "real" | "numeric" => Value::Float(None),
            "boolean" => Value::Bool(None),
            _ => Value::Text(None),
        });
    }
    let stored = raw.type_info().name().to_ascii_uppercase();
    Ok(match kind {
        "bigint" | "integer" | "smallint" => Value::Int(Some(row.try_get::<i64, _>(i)?)),
        "double precision" | "real" | "numeric" => Value::Float(Some(row.try_get::<f64, _>(i)?)),
        "boolean" => Value::Bool(Some(row.try_get::<i64, _>(i)? != 0)),
        // A number kept in a text column (SQLite's dynamic typing) is copied as its text.
        _ if stored == "INTEGER" => Value::Text(Some(row.try_get::<i64, _>(i)?.to_string())),
        _ => Value::Text(Some(row.try_get::<String, _>(i)?)),
    })
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &str,
    cols: &[(usize, String, String)],
    pending: &mut Vec<Vec<Value>>,
) -> anyhow::Result<u64> {
    if pending.is_empty() || cols.is_empty() {
        pending.clear();
        return Ok(0);
    }
    let names: Vec<&str> = cols.iter().map(|(_, n, _)| n.as_str()).collect();
    let mut sql = format!("INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ", names.join(", "));
    let mut n = 0;
    for (r, _) in pending.iter().enumerate() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols.len() {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
    }
    let mut q = sqlx::query(&sql);
    for row in pending.drain(..) {
        for v in row {
            q = match v {
                Value::Int(v) => q.bind(v),
                Value::Float(v) => q.bind(v),
                Value::Bool(v) => q.bind(v),
                Value::Text(v) => q.bind(v),
            };
        }
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}
