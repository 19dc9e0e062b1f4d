//! Gateway tokens: their hashes, their tenant settings, and what they spent.

use sqlx::Row;

use super::row::{i64_of, u64_of};
use super::{now_unix, on_pool, Db, Store, StoreError, TokenRecord};
use crate::tenants::TokenSettings;

/// A stored list (JSON array of strings), or NULL for none.
fn list_text<T: ToString>(list: Option<&Vec<T>>) -> Option<String> {
    list.map(|l| serde_json::Value::from(l.iter().map(ToString::to_string).collect::<Vec<String>>()).to_string())
}

/// A token's settings as the `tokens` columns store them, in the order
/// `models, networks, rpm, tpm, rpd, max_inflight, budget_micros,
/// budget_period, expires_at, priority, enabled` (see [`bind_settings`]).
struct SettingsRow {
    models: Option<String>,
    networks: Option<String>,
    counts: [Option<i64>; 5],
    budget_period: &'static str,
    expires_at: Option<i64>,
    priority: i64,
    enabled: bool,
}

impl SettingsRow {
    fn of(s: &TokenSettings) -> SettingsRow {
        let count = |v: Option<u64>| v.map(i64_of);
        SettingsRow {
            models: list_text(s.models.as_ref()),
            networks: list_text(s.networks.as_ref().map(|n| n.iter().map(|c| c.0).collect::<Vec<_>>()).as_ref()),
            counts: [count(s.rpm), count(s.tpm), count(s.rpd), count(s.max_inflight), count(s.budget_micros)],
            budget_period: s.budget_period.as_str(),
            expires_at: s.expires_at,
            priority: s.priority,
            enabled: s.enabled,
        }
    }
}

/// Binds a [`SettingsRow`]'s 11 values to `$query`, in its column order
/// (a macro: the query's type differs per backend).
macro_rules! bind_settings {
    ($query:expr, $row:expr) => {{
        let [rpm, tpm, rpd, max_inflight, budget] = $row.counts;
        $query
            .bind($row.models.clone())
            .bind($row.networks.clone())
            .bind(rpm)
            .bind(tpm)
            .bind(rpd)
            .bind(max_inflight)
            .bind(budget)
            .bind($row.budget_period)
            .bind($row.expires_at)
            .bind($row.priority)
            .bind($row.enabled)
    }};
}

impl Store {
    /// Stores a new token's hash with no limits; returns its id. A name in
    /// use (revoked or not) is refused with [`StoreError::TokenNameTaken`].
    pub async fn create_token(&self, name: &str, hash: &str, prefix: &str) -> Result<i64, StoreError> {
        self.create_token_with(name, hash, prefix, &TokenSettings::default()).await
    }

    /// [`Store::create_token`] with its tenant settings.
    pub async fn create_token_with(
        &self,
        name: &str,
        hash: &str,
        prefix: &str,
        settings: &TokenSettings,
    ) -> Result<i64, StoreError> {
        let row = SettingsRow::of(settings);
        on_pool!(self, |pool| {
            let taken = sqlx::query("SELECT 1 FROM tokens WHERE name = $1").bind(name).fetch_optional(pool).await?;
            if taken.is_some() {
                return Err(StoreError::TokenNameTaken(name.to_owned()));
            }
            // One statement: a token is never stored without its limits.
            let query = sqlx::query(
                "INSERT INTO tokens (name, hash, prefix, created_at, models, networks, rpm, tpm, rpd, max_inflight,
                    budget_micros, budget_period, expires_at, priority, enabled)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
            )
            .bind(name)
            .bind(hash)
            .bind(prefix)
            .bind(now_unix());
            let row = bind_settings!(query, row).fetch_one(pool).await?;
            Ok(row.try_get(0)?)
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM tokens ORDER BY id").fetch_all(pool).await?;
            rows.iter().map(TokenRecord::from_row).collect()
        })
    }

    /// One token, or [`StoreError::NotFound`].
    pub async fn token(&self, id: i64) -> Result<TokenRecord, StoreError> {
        let row = on_pool!(self, |pool| {
            let row = sqlx::query("SELECT * FROM tokens WHERE id = $1").bind(id).fetch_optional(pool).await?;
            row.as_ref().map(TokenRecord::from_row).transpose()
        })?;
        row.ok_or(StoreError::NotFound { what: "token", id })
    }

    pub async fn revoke_token(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now_unix())
                .bind(id)
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "token", id });
            }
            Ok(())
        })
    }

    /// Writes every tenant setting of token `id` (its name and secret stay).
    pub async fn set_token_settings(&self, id: i64, s: &TokenSettings) -> Result<(), StoreError> {
        let row = SettingsRow::of(s);
        on_pool!(self, |pool| {
            let query = sqlx::query(
                "UPDATE tokens SET models = $1, networks = $2, rpm = $3, tpm = $4, rpd = $5, max_inflight = $6,
                    budget_micros = $7, budget_period = $8, expires_at = $9, priority = $10, enabled = $11
                 WHERE id = $12",
            );
            let done = bind_settings!(query, row).bind(id).execute(pool).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "token", id });
            }
            Ok(())
        })
    }

    /// Gives a live token a new secret (its hash and prefix), keeping its
    /// settings and totals; the old secret is refused from then on. A
    /// revoked token stays revoked: [`StoreError::NotFound`] for it.
    pub async fn regenerate_token(&self, id: i64, hash: &str, prefix: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE tokens SET hash = $1, prefix = $2 WHERE id = $3 AND revoked_at IS NULL")
                .bind(hash)
                .bind(prefix)
                .bind(id)
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "live token", id });
            }
            Ok(())
        })
    }

    /// What token `id` spent (micro-USD) in the days beginning at or after
    /// `since` (Unix seconds, a day's start in the configured time zone),
    /// from the daily statistics: they lag the log by up to a second (5 s
    /// while hundreds of tokens are busy, `records::writer::ROLLUP_EVERY_MANY`).
    pub async fn token_spent_since(&self, id: i64, since: i64) -> Result<u64, StoreError> {
        self.token_spent_between(id, since, i64::MAX).await
    }

    /// [`Store::token_spent_since`] for the days beginning in [`from`, `until`).
    pub async fn token_spent_between(&self, id: i64, from: i64, until: i64) -> Result<u64, StoreError> {
        let subject = id.to_string();
        on_pool!(self, |pool| {
            let spent: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(SUM(cost_micros) AS BIGINT) FROM rollups
                 WHERE dimension = 'token' AND span = 'day' AND subject = $1 AND bucket >= $2 AND bucket < $3",
            )
            .bind(&subject)
            .bind(from)
            .bind(until)
            .fetch_one(pool)
            .await?;
            Ok(u64_of(spent.unwrap_or(0)))
        })
    }
}
