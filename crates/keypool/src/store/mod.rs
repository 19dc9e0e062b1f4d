//! Durable state: upstream keys, gateway tokens and the usage totals the
//! running server adds to in the background. SQLite by default
//! (`sqlite://PATH`), PostgreSQL for a team that outgrows one file
//! (`postgres://…`). Each query is written once, in SQL both accept
//! (`$1` placeholders, `ON CONFLICT`, `RETURNING`), and run on whichever pool
//! the URL chose; the migrations live in `migrations/sqlite/` and
//! `migrations/postgres/`, file by file the same schema.

mod admin_token;
mod audit;
mod log_query;
mod models;
mod owner_only;
mod requests;
mod rollups;
mod row;
mod sealed;
mod state;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

pub use admin_token::AdminTokenRecord;
pub use audit::AuditEntry;
pub use log_query::{LogCursor, LogFilter, LoggedRequest};
pub use models::{KeyChange, KeyRecord, NewKey, TokenRecord, TokenUsage, UsageDelta};
pub use rollups::{BucketStats, SubjectStats};
pub use sealed::{Reseal, Resealed};
pub use state::{now_unix_ms, SavedDim, SavedHealth, SavedKeyState};

/// Errors from the store. The store is the gateway's own part, so every
/// failure here is the gateway's (never the caller's or the upstream's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    /// The database could not be opened or prepared; `path` names the file.
    #[error("cannot open the database {path}: {reason}")]
    Open { path: String, reason: String },
    /// No database exists at `path` and this command does not create one.
    #[error(
        "no database at {path}: `keypool serve` (or `keys add`) creates one; to use another, pass \
         --database-url sqlite://PATH, set KEYPOOL_DATABASE_URL, or set database_url in keypool.toml"
    )]
    Missing { path: String },
    /// A query failed; printed with its innermost cause only (sqlx repeats
    /// its source in its own message).
    #[error("database error: {}", innermost(.0))]
    Database(sqlx::Error),
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: i64 },
    /// A token name must be unique, so `tokens revoke` and logs are unambiguous.
    #[error("a token named {0:?} already exists (see `keypool tokens list`); choose another name")]
    TokenNameTaken(String),
    /// Admin tokens' names are unique too, so `admin tokens revoke` is unambiguous.
    #[error("an admin token named {0:?} already exists (see `keypool admin tokens list`); choose another name")]
    AdminTokenNameTaken(String),
    /// A key stored encrypted cannot be read or added to without the right
    /// master key (the message names `KEYPOOL_MASTER_KEY`).
    #[error(transparent)]
    Sealed(#[from] crate::crypt::SealError),
}

impl StoreError {
    /// Whether the database refused the data itself (a value it cannot
    /// store, a constraint), so the same write would fail again; a lost
    /// connection, a timeout or a lock may pass.
    pub fn is_permanent(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else { return false };
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            // SQLSTATE classes 22 (data exception), 23 (integrity constraint
            // violation) and 54 (program limit exceeded).
            return ["22", "23", "54"].iter().any(|class| pg.code().starts_with(class));
        }
        // SQLite's primary result codes: TOOBIG, CONSTRAINT, MISMATCH, RANGE.
        let primary = db.code().and_then(|c| c.parse::<i64>().ok()).map(|c| c & 0xff);
        matches!(primary, Some(18 | 19 | 20 | 25))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Database(e)
    }
}

/// Whether a command may create the database when none exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create it (the server, and commands that add keys or tokens).
    IfMissing,
    /// Refuse with [`StoreError::Missing`]: reading or changing nothing is no
    /// reason to leave an empty database behind.
    Never,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of `sqlite:…`, `postgres://…` or `postgresql://…`.
    pub fn of(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// What a database URL names, for messages: a `sqlite:` URL's file as an
/// absolute path, a PostgreSQL URL with its password masked.
pub fn database_path(url: &str) -> String {
    if Backend::of(url) == Some(Backend::Postgres) {
        return crate::config::mask_url_password(url);
    }
    match SqliteConnectOptions::from_str(url) {
        Ok(o) => {
            let path = o.get_filename();
            std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// The innermost message of an error chain: sqlx repeats its source in its own
/// text, so printing the chain would say the same thing three times.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Outcome of adding one key: new, or already present (duplicates are skipped, not errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    Added(i64),
    Duplicate(i64),
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// The master keys that seal and open upstream keys (none: stored in clear).
    keyring: Option<std::sync::Arc<crate::crypt::Keyring>>,
    /// SQLite: one connection of its own for the steady writes (the record
    /// writer's batches, the key state), so its page cache stays warm. A
    /// connection drops its whole cache when it finds the database changed
    /// by another, and the pool hands connections out in turn: with a
    /// thousand tenants, each batch read back the per-token index pages it
    /// was about to change (docs/benchmarks.md, issue 17). `None` for
    /// PostgreSQL and an in-memory SQLite database (no file to read back).
    /// Opened at its first use, so a CLI command that only reads opens none.
    writes: Option<SqlitePool>,
    /// SQLite: the log's rows written since its map by token was last
    /// brought up to date ([`requests::Unmapped`]); held for the whole of
    /// each write and prune, which SQLite runs one at a time anyway.
    unmapped: std::sync::Arc<tokio::sync::Mutex<requests::Unmapped>>,
}

/// The pool the URL chose.
#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$store` holds: the
/// same query text and the same code, compiled for each backend's types.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}
use on_pool;

/// [`on_pool`] for the steady writes: SQLite's own writing connection
/// ([`Store::writes`]) when there is one.
macro_rules! on_write_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            Db::Sqlite(all) => {
                let $pool = $store.sqlite_writes(all);
                $body
            }
            Db::Postgres($pool) => $body,
        }
    };
}
use on_write_pool;

/// Puts the SQLite file in incremental auto-vacuum mode, so space freed by
/// retention can be given back a step at a time ([`Store::reclaim_space`]).
/// A new file takes the mode from the connection options; a file made
/// before it needs one full VACUUM, done here while the file is small, else
/// left for the operator (a warning says how), since it rewrites the file.
async fn incremental_vacuum(pool: &SqlitePool, file: &std::path::Path) {
    const INCREMENTAL: i64 = 2;
    const VACUUM_AT_START_BELOW: u64 = 256 * 1024 * 1024;
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(pool).await.unwrap_or(INCREMENTAL);
    if mode == INCREMENTAL {
        return;
    }
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(u64::MAX);
    if size >= VACUUM_AT_START_BELOW {
        tracing::warn!(
            file = %file.display(),
            "the database cannot give space back after retention deletes; to enable it, stop keypool and run: \
             sqlite3 FILE 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;'"
        );
        return;
    }
    let Ok(mut conn) = pool.acquire().await else { return };
    let done = async {
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL").execute(&mut *conn).await?;
        sqlx::query("VACUUM").execute(&mut *conn).await
    };
    if let Err(e) = done.await {
        tracing::warn!(error = %e, "could not switch the database to incremental vacuum");
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::open(url, Create::IfMissing).await
    }

    /// Opens and migrates the database at `url`; errors name its file (or
    /// its URL, password masked).
    pub async fn open(url: &str, create: Create) -> Result<Store, StoreError> {
        match Backend::of(url) {
            Some(Backend::Sqlite) => Store::open_sqlite(url, create).await,
            Some(Backend::Postgres) => Store::open_postgres(url, create).await,
            None => Err(StoreError::UnsupportedUrl(crate::config::mask_url_password(url))),
        }
    }

    /// The SQLite pool, for `db migrate`'s copy by column (any table) and
    /// for tests that look beneath the store's queries.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.db {
            Db::Sqlite(pool) => Some(pool),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for `db migrate`.
    pub(crate) fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.db {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite(_) => None,
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// PostgreSQL: the database must exist (keypool creates its tables, in
    /// the connection's `search_path`, not the database); with
    /// [`Create::Never`] a database without keypool's tables is
    /// [`StoreError::Missing`].
    async fn open_postgres(url: &str, create: Create) -> Result<Store, StoreError> {
        use sqlx::{ConnectOptions, Connection};
        let path = database_path(url);
        let failed =
            |e: &(dyn std::error::Error + 'static)| StoreError::Open { path: path.clone(), reason: innermost(e) };
        let options = PgConnectOptions::from_str(url).map_err(|e| failed(&e))?;
        // One connection first: the pool would retry until its timeout and
        // report only that; this says why (refused, unknown database, auth).
        let mut first = options.connect().await.map_err(|e| failed(&e))?;
        if create == Create::Never {
            let ours: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&mut first)
                .await
                .map_err(|e| failed(&e))?;
            if !ours {
                let _ = first.close().await;
                return Err(StoreError::Missing { path });
            }
        }
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| failed(&e))?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| failed(&e))?;
        Ok(Store { db: Db::Postgres(pool), keyring: None, writes: None, unmapped: Default::default() })
    }

    async fn open_sqlite(url: &str, create: Create) -> Result<Store, StoreError> {
        let path = database_path(url);
        let failed =
            |e: &(dyn std::error::Error + 'static)| StoreError::Open { path: path.clone(), reason: innermost(e) };
        let options = SqliteConnectOptions::from_str(url).map_err(|e| failed(&e))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if create == Create::Never && !in_memory && !options.get_filename().exists() {
            return Err(StoreError::Missing { path });
        }
        let dir = std::path::absolute(options.get_filename()).ok().and_then(|p| p.parent().map(|d| d.to_path_buf()));
        if let Some(dir) = dir.filter(|d| !in_memory && !d.is_dir()) {
            let reason = format!("its directory {} does not exist", dir.display());
            return Err(StoreError::Open { path, reason });
        }
        // WAL lets the CLI write while a server reads; the busy timeout makes a
        // concurrent writer wait instead of failing with SQLITE_BUSY.
        // In WAL mode, `synchronous = NORMAL` syncs at checkpoints only: a
        // commit survives the process crashing (it is in the WAL), though
        // not the machine losing power, and the request log's batches are
        // not each held up by an fsync.
        // `temp_store = MEMORY`: a multi-row upsert or update keeps a
        // statement journal (to undo just that statement), which spills to
        // a temporary file past 64 KiB; the statistics' 64-row upserts did,
        // a write and a read of a file each. `wal_autocheckpoint` 10,000
        // pages (40 MiB of WAL, 1,000 by default): a page written again and
        // again between checkpoints (the log index's page of each tenant)
        // is copied back once; with a thousand tenants, checkpoints every
        // 1,000 pages were a quarter of the writer's cost (docs/benchmarks.md,
        // issue 17).
        let options = options
            .create_if_missing(create == Create::IfMissing)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
            .pragma("cache_size", "-32768")
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "10000")
            .busy_timeout(Duration::from_secs(10));
        owner_only::prepare(url, options.get_filename());
        let file = options.get_filename().to_path_buf();
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(options.clone()).await.map_err(|e| failed(&e))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| failed(&e))?;
        let mut writes = None;
        if !in_memory {
            incremental_vacuum(&pool, &file).await;
            // sqlx's idle timeout (10 min) and lifetime (30 min) still
            // apply: a connection left in a bad state by a failed
            // transaction is replaced in time, and a cache refilled twice
            // an hour costs nothing that matters.
            writes = Some(SqlitePoolOptions::new().max_connections(1).connect_lazy_with(options));
        }
        Ok(Store { db: Db::Sqlite(pool), keyring: None, writes, unmapped: Default::default() })
    }

    /// Gives up to `pages` free pages back to the file system (SQLite, in
    /// incremental auto-vacuum mode); returns whether another step would
    /// give more. A file not in that mode (one made before it, too large to
    /// switch at start) keeps its free pages for reuse: nothing to do, as
    /// for PostgreSQL, whose autovacuum reuses the space by itself.
    pub async fn reclaim_space(&self, pages: u32) -> Result<bool, StoreError> {
        const INCREMENTAL: i64 = 2;
        match &self.db {
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut *conn).await?;
                if mode != INCREMENTAL {
                    return Ok(false);
                }
                let before: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut *conn).await?;
                // The pragma returns a row per step: read them all to finish it.
                sqlx::query(&format!("PRAGMA incremental_vacuum({pages})")).fetch_all(&mut *conn).await?;
                let after: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut *conn).await?;
                Ok(after > 0 && after < before)
            }
            Db::Postgres(_) => Ok(false),
        }
    }

    /// The counter the migrations' triggers bump on every operator change.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT value FROM revision WHERE id = 1").fetch_one(pool).await?;
            Ok(row.try_get(0)?)
        })
    }

    /// Adds a key, sealed when the store holds a master key; without one,
    /// a store whose keys are sealed refuses ([`crate::crypt::SealError`]).
    pub async fn add_key(&self, key: &NewKey) -> Result<AddOutcome, StoreError> {
        if let Some(keyring) = &self.keyring {
            return self.add_sealed_key(keyring, key).await;
        }
        self.refuse_if_sealed().await?;
        on_pool!(self, |pool| {
            // Look first: a conflicting INSERT would still consume an id.
            if let Some(id) = self.key_id_of(&key.secret).await? {
                return Ok(AddOutcome::Duplicate(id));
            }
            let inserted = sqlx::query(
                "INSERT INTO keys (secret, label, rpm, tpm, rpd, max_inflight, weight, budget_micros,
                                   expires_at, organization, project, created_at, upstream)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (secret) DO NOTHING RETURNING id",
            )
            .bind(&key.secret)
            .bind(&key.label)
            .bind(key.rpm.map(i64::from))
            .bind(key.tpm.map(i64::from))
            .bind(key.rpd.map(i64::from))
            .bind(key.max_inflight.map(i64::from))
            .bind(key.weight.map(i64::from))
            .bind(key.budget_micros.and_then(|b| i64::try_from(b).ok()))
            .bind(key.expires_at)
            .bind(&key.organization)
            .bind(&key.project)
            .bind(now_unix())
            .bind(&key.upstream)
            .fetch_optional(pool)
            .await?;
            match inserted {
                Some(row) => Ok(AddOutcome::Added(row.try_get(0)?)),
                // Another writer added it between the look and the insert.
                None => Ok(AddOutcome::Duplicate(self.key_id_of(&key.secret).await?.unwrap_or_default())),
            }
        })
    }

    async fn key_id_of(&self, secret: &str) -> Result<Option<i64>, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT id FROM keys WHERE secret = $1 AND secret_version = 0")
                .bind(secret)
                .fetch_optional(pool)
                .await?;
            row.map(|r| r.try_get(0)).transpose().map_err(StoreError::from)
        })
    }

    /// Every key, opened: a sealed key needs the master key it was sealed
    /// under ([`crate::crypt::SealError`] names `KEYPOOL_MASTER_KEY`).
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT id, secret, label, rpm, tpm, rpd, max_inflight, weight, budget_micros,
                        spent_micros, expires_at, enabled, requests, successes, failures,
                        prompt_tokens, completion_tokens, created_at, last_used_at, organization, project,
                        upstream, secret_version
                 FROM keys ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| self.reveal(KeyRecord::from_row(row)?, row.try_get("secret_version")?)).collect()
        })
    }

    pub async fn set_key_enabled(&self, id: i64, enabled: bool) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done =
                sqlx::query("UPDATE keys SET enabled = $1 WHERE id = $2").bind(enabled).bind(id).execute(pool).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "key", id });
            }
            Ok(())
        })
    }

    /// Changes the settings `change` names (others stay as they are).
    pub async fn edit_key(&self, id: i64, change: &KeyChange) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let budget = change.budget_micros.map(|b| b.and_then(|b| i64::try_from(b).ok()));
            let done = sqlx::query(
                "UPDATE keys SET
                    label = CASE WHEN $1 THEN $2 ELSE label END,
                    rpm = CASE WHEN $3 THEN $4 ELSE rpm END,
                    tpm = CASE WHEN $5 THEN $6 ELSE tpm END,
                    rpd = CASE WHEN $7 THEN $8 ELSE rpd END,
                    max_inflight = CASE WHEN $9 THEN $10 ELSE max_inflight END,
                    weight = CASE WHEN $11 THEN $12 ELSE weight END,
                    budget_micros = CASE WHEN $13 THEN $14 ELSE budget_micros END,
                    expires_at = CASE WHEN $15 THEN $16 ELSE expires_at END,
                    organization = CASE WHEN $17 THEN $18 ELSE organization END,
                    project = CASE WHEN $19 THEN $20 ELSE project END,
                    upstream = CASE WHEN $21 THEN $22 ELSE upstream END
                 WHERE id = $23",
            )
            .bind(change.label.is_some())
            .bind(change.label.clone().flatten())
            .bind(change.rpm.is_some())
            .bind(change.rpm.flatten().map(i64::from))
            .bind(change.tpm.is_some())
            .bind(change.tpm.flatten().map(i64::from))
            .bind(change.rpd.is_some())
            .bind(change.rpd.flatten().map(i64::from))
            .bind(change.max_inflight.is_some())
            .bind(change.max_inflight.flatten().map(i64::from))
            .bind(change.weight.is_some())
            .bind(change.weight.flatten().map(i64::from))
            .bind(budget.is_some())
            .bind(budget.flatten())
            .bind(change.expires_at.is_some())
            .bind(change.expires_at.flatten())
            .bind(change.organization.is_some())
            .bind(change.organization.clone().flatten())
            .bind(change.project.is_some())
            .bind(change.project.clone().flatten())
            .bind(change.upstream.is_some())
            .bind(change.upstream.clone().flatten())
            .bind(id)
            .execute(pool)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "key", id });
            }
            Ok(())
        })
    }

    pub async fn remove_key(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("DELETE FROM keys WHERE id = $1").bind(id).execute(pool).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "key", id });
            }
            Ok(())
        })
    }

    /// Adds usage to the keys' totals, in one transaction, key by key in id
    /// order (so two gateways sharing a PostgreSQL database cannot deadlock
    /// on each other's rows). The record writer adds the same way, with its
    /// records ([`Store::write_batch`]).
    pub async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        let mut deltas = deltas.to_vec();
        deltas.sort_by_key(|d| d.key_id);
        on_pool!(self, |pool| {
            if deltas.is_empty() {
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            for d in &deltas {
                let usage = TokenUsage {
                    requests: d.requests,
                    successes: d.successes,
                    failures: d.failures,
                    prompt_tokens: d.prompt_tokens,
                    completion_tokens: d.completion_tokens,
                    spent_micros: d.spent_micros,
                    last_used_at: d.last_used_at,
                };
                requests::add_usage_to(requests::Totals::Keys, d.key_id, &usage).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Where SQLite's steady writes go: [`Store::writes`], else `all`.
    fn sqlite_writes<'a>(&'a self, all: &'a SqlitePool) -> &'a SqlitePool {
        self.writes.as_ref().unwrap_or(all)
    }

    pub async fn close(&self) {
        if let Some(writes) = &self.writes {
            writes.close().await;
        }
        on_pool!(self, |pool| pool.close().await)
    }
}
