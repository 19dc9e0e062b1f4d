//! Durable state: upstream keys, gateway tokens and the usage totals the
//! running server adds to in the background. SQLite today; the migrations live
//! in `migrations/sqlite/` so a PostgreSQL backend can mirror them file by file.

mod models;
mod owner_only;
mod state;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

pub use models::{KeyChange, KeyRecord, NewKey, TokenRecord, UsageDelta};
pub use state::{now_unix_ms, SavedDim, SavedHealth, SavedKeyState};

/// Errors from the store. The store is the gateway's own part, so every
/// failure here is the gateway's (never the caller's or the upstream's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: only sqlite:// URLs are supported so far")]
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

/// The file a `sqlite:` URL names, for messages (the URL itself otherwise).
pub fn database_path(url: &str) -> String {
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
    pool: SqlitePool,
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

    /// Opens and migrates the database at `url`; errors name its file.
    pub async fn open(url: &str, create: Create) -> Result<Store, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
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
        let options = options
            .create_if_missing(create == Create::IfMissing)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        owner_only::prepare(url, options.get_filename());
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(|e| failed(&e))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| failed(&e))?;
        Ok(Store { pool })
    }

    /// The counter the migrations' triggers bump on every operator change.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM revision WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }

    pub async fn add_key(&self, key: &NewKey) -> Result<AddOutcome, StoreError> {
        // Look first: a conflicting INSERT would still consume an AUTOINCREMENT id.
        if let Some(id) = self.key_id_of(&key.secret).await? {
            return Ok(AddOutcome::Duplicate(id));
        }
        let inserted = sqlx::query(
            "INSERT INTO keys (secret, label, rpm, tpm, rpd, max_inflight, weight, budget_micros,
                               expires_at, organization, project, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(row) => Ok(AddOutcome::Added(row.try_get(0)?)),
            // Another writer added it between the look and the insert.
            None => Ok(AddOutcome::Duplicate(self.key_id_of(&key.secret).await?.unwrap_or_default())),
        }
    }

    async fn key_id_of(&self, secret: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT id FROM keys WHERE secret = ?").bind(secret).fetch_optional(&self.pool).await?;
        row.map(|r| r.try_get(0)).transpose().map_err(StoreError::from)
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, secret, label, rpm, tpm, rpd, max_inflight, weight, budget_micros,
                    spent_micros, expires_at, enabled, requests, successes, failures,
                    prompt_tokens, completion_tokens, created_at, last_used_at, organization, project
             FROM keys ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(KeyRecord::from_row).collect()
    }

    pub async fn set_key_enabled(&self, id: i64, enabled: bool) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE keys SET enabled = ? WHERE id = ?").bind(enabled).bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "key", id });
        }
        Ok(())
    }

    /// Changes the settings `change` names (others stay as they are).
    pub async fn edit_key(&self, id: i64, change: &KeyChange) -> Result<(), StoreError> {
        let budget = change.budget_micros.map(|b| b.and_then(|b| i64::try_from(b).ok()));
        let done = sqlx::query(
            "UPDATE keys SET
                label = CASE WHEN ? THEN ? ELSE label END,
                rpm = CASE WHEN ? THEN ? ELSE rpm END,
                tpm = CASE WHEN ? THEN ? ELSE tpm END,
                rpd = CASE WHEN ? THEN ? ELSE rpd END,
                max_inflight = CASE WHEN ? THEN ? ELSE max_inflight END,
                weight = CASE WHEN ? THEN ? ELSE weight END,
                budget_micros = CASE WHEN ? THEN ? ELSE budget_micros END,
                expires_at = CASE WHEN ? THEN ? ELSE expires_at END,
                organization = CASE WHEN ? THEN ? ELSE organization END,
                project = CASE WHEN ? THEN ? ELSE project END
             WHERE id = ?",
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
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "key", id });
        }
        Ok(())
    }

    pub async fn remove_key(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM keys WHERE id = ?").bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "key", id });
        }
        Ok(())
    }

    /// Adds usage the server counted in memory to the keys' totals, in one transaction.
    pub async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deltas {
            sqlx::query(
                "UPDATE keys SET requests = requests + ?, successes = successes + ?,
                    failures = failures + ?, prompt_tokens = prompt_tokens + ?,
                    completion_tokens = completion_tokens + ?,
                    spent_micros = spent_micros + ?,
                    last_used_at = COALESCE(?, last_used_at)
                 WHERE id = ?",
            )
            .bind(d.requests as i64)
            .bind(d.successes as i64)
            .bind(d.failures as i64)
            .bind(d.prompt_tokens as i64)
            .bind(d.completion_tokens as i64)
            .bind(d.spent_micros as i64)
            .bind(d.last_used_at)
            .bind(d.key_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a new token's hash; returns its id. A name in use (revoked or
    /// not) is refused with [`StoreError::TokenNameTaken`].
    pub async fn create_token(&self, name: &str, hash: &str, prefix: &str) -> Result<i64, StoreError> {
        let taken = sqlx::query("SELECT 1 FROM tokens WHERE name = ?").bind(name).fetch_optional(&self.pool).await?;
        if taken.is_some() {
            return Err(StoreError::TokenNameTaken(name.to_owned()));
        }
        let row = sqlx::query("INSERT INTO tokens (name, hash, prefix, created_at) VALUES (?, ?, ?, ?) RETURNING id")
            .bind(name)
            .bind(hash)
            .bind(prefix)
            .bind(now_unix())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, hash, prefix, created_at, revoked_at FROM tokens ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(TokenRecord::from_row).collect()
    }

    pub async fn revoke_token(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "token", id });
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests;
