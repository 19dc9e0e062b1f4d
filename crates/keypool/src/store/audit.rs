//! The admin audit log (`admin_audit`, migration 0008): one row per change
//! made through the admin API, newest first when read.

use super::row::Columns;
use super::{on_pool, Db, Store, StoreError};

/// One admin change. `details` is a JSON object of the fields set (never
/// key material or tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The row's id (0 before it is written).
    pub id: i64,
    /// When, in Unix milliseconds.
    pub at: i64,
    /// Who: the admin token's fingerprint (`admin:1a2b3c4d`).
    pub actor: String,
    pub client_addr: Option<String>,
    /// What: `keys.add`, `keys.edit`, `tokens.revoke`, …
    pub action: String,
    /// The key's or token's id.
    pub target_id: Option<i64>,
    /// The fields set, as a JSON object's text.
    pub details: String,
}

impl AuditEntry {
    fn from_row(row: &impl Columns) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            id: row.col("id")?,
            at: row.col("at")?,
            actor: row.col("actor")?,
            client_addr: row.col("client_addr")?,
            action: row.col("action")?,
            target_id: row.col("target_id")?,
            details: row.col("details")?,
        })
    }
}

impl Store {
    /// Appends `entry` (its `id` is ignored); returns the new row's id.
    pub async fn add_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        on_pool!(self, |pool| {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO admin_audit (at, actor, client_addr, action, target_id, details)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.client_addr)
            .bind(&entry.action)
            .bind(entry.target_id)
            .bind(&entry.details)
            .fetch_one(pool)
            .await?;
            Ok(id)
        })
    }

    /// Up to `limit` entries older than the entry `before` (an id; `None`:
    /// from the newest), newest first.
    pub async fn list_audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM admin_audit WHERE id < $1 ORDER BY id DESC LIMIT $2")
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(AuditEntry::from_row).collect()
        })
    }
}
