//! Durable state: upstream keys, gateway tokens and the usage totals the
//! running server adds to in the background. SQLite today; the migrations live
//! in `migrations/sqlite/` so a PostgreSQL backend can mirror them file by file.

mod models;
mod owner_only;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

pub use models::{KeyRecord, NewKey, TokenRecord, UsageDelta};

/// Errors from the store. The store is the gateway's own part, so every
/// failure here is the gateway's (never the caller's or the upstream's).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: only sqlite:// URLs are supported so far")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: i64 },
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
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        // WAL lets the CLI write while a server reads; the busy timeout makes a
        // concurrent writer wait instead of failing with SQLITE_BUSY.
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        owner_only::prepare(url, options.get_filename());
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
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
                               expires_at, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
                    prompt_tokens, completion_tokens, created_at, last_used_at
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

    /// Stores a new token's hash; returns its id.
    pub async fn create_token(&self, name: &str, hash: &str, prefix: &str) -> Result<i64, StoreError> {
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
