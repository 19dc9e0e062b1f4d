//! The stored admin token (`admin_token` table, migration 0010): the SHA-256
//! digest of the token used when none is configured. Never the token itself.

use super::{now_unix_ms, on_pool, Db, Store, StoreError};

impl Store {
    /// The stored admin token's SHA-256 digest (64 hex digits), if any.
    pub async fn admin_token_hash(&self) -> Result<Option<String>, StoreError> {
        on_pool!(self, |pool| {
            let hash: Option<String> =
                sqlx::query_scalar("SELECT sha256 FROM admin_token WHERE id = 1").fetch_optional(pool).await?;
            Ok(hash)
        })
    }

    /// Stores `sha256_hex` as the admin token's digest unless one is stored
    /// already; true when this call stored it (so two servers starting at
    /// once never both announce a token).
    pub async fn add_admin_token_hash(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO admin_token (id, sha256, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(sha256_hex)
            .bind(now_unix_ms())
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Replaces the stored admin token's digest with `sha256_hex` (the old
    /// token stops working at the running servers' next sync).
    pub async fn set_admin_token_hash(&self, sha256_hex: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO admin_token (id, sha256, created_at) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256, created_at = excluded.created_at",
            )
            .bind(sha256_hex)
            .bind(now_unix_ms())
            .execute(pool)
            .await?;
            Ok(())
        })
    }
}

/// One further admin token (`admin_tokens` table, migration 0014), as
/// stored: its SHA-256 digest, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRecord {
    pub id: i64,
    pub name: String,
    /// 64 lowercase hex digits.
    pub sha256: String,
    /// A viewer's token: reads everything the admin API shows, changes nothing.
    pub read_only: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; `None` while the token is accepted.
    pub revoked_at: Option<i64>,
}

impl Store {
    /// Stores a further admin token's digest; returns its id. A name in use
    /// (revoked or not) is refused with [`StoreError::AdminTokenNameTaken`].
    pub async fn add_admin_token(&self, name: &str, sha256_hex: &str, read_only: bool) -> Result<i64, StoreError> {
        on_pool!(self, |pool| {
            // One statement, so two creates with one name at once cannot
            // both pass a check and then fail on the constraint.
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO admin_tokens (name, sha256, read_only, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .bind(name)
            .bind(sha256_hex)
            .bind(read_only)
            .bind(now_unix_ms())
            .fetch_optional(pool)
            .await?;
            id.ok_or_else(|| StoreError::AdminTokenNameTaken(name.to_owned()))
        })
    }

    /// Every further admin token, revoked ones included, by id.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        on_pool!(self, |pool| {
            let rows: Vec<(i64, String, String, bool, i64, Option<i64>)> = sqlx::query_as(
                "SELECT id, name, sha256, read_only, created_at, revoked_at FROM admin_tokens ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, name, sha256, read_only, created_at, revoked_at)| AdminTokenRecord {
                    id,
                    name,
                    sha256,
                    read_only,
                    created_at,
                    revoked_at,
                })
                .collect())
        })
    }

    /// Revokes further admin token `id` (idempotent); [`StoreError::NotFound`]
    /// when there is none.
    pub async fn revoke_admin_token(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let done = sqlx::query("UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now_unix_ms())
                .bind(id)
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "admin token", id });
            }
            Ok(())
        })
    }
}
