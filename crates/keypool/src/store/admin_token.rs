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
