//! `/admin/api/audit`: who changed what through the admin API, and when.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::error::Query;
use super::{AdminError, AdminState};
use crate::store::AuditEntry;

/// One admin change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditItem {
    pub id: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Who: the admin token's fingerprint (`admin:1a2b3c4d`).
    pub actor: String,
    /// The client's address.
    pub client_addr: Option<String>,
    /// What: `keys.add`, `keys.import`, `keys.edit`, `keys.enable`,
    /// `keys.disable`, `keys.delete`, `keys.reset`, `tokens.create`, `tokens.revoke`.
    pub action: String,
    /// The key's or token's id.
    pub target_id: Option<i64>,
    /// The settings set (never a key or a token).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<AuditEntry> for AuditItem {
    fn from(e: AuditEntry) -> AuditItem {
        AuditItem {
            id: e.id,
            at_ms: e.at,
            actor: e.actor,
            client_addr: e.client_addr,
            action: e.action,
            target_id: e.target_id,
            details: serde_json::from_str(&e.details).unwrap_or_else(|_| serde_json::json!({})),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub data: Vec<AuditItem>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Paging.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Read by name from the query; this documents them.
pub struct AuditPaging {
    /// Entries per page (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/admin/api/audit", tag = "audit", params(AuditPaging),
    responses((status = 200, body = AuditPage), super::openapi::BadRequest, super::openapi::Unauthorized))]
pub async fn list(State(state): State<Arc<AdminState>>, mut q: Query) -> Result<Json<AuditPage>, AdminError> {
    let limit = q.int("limit", 1, 1000)?.unwrap_or(100);
    let before = match q.text("cursor")? {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| AdminError::field("cursor", "not a cursor this API gave (pass `next_cursor` as it is)"))?,
        ),
        None => None,
    };
    q.finish()?;
    let limit = u32::try_from(limit).unwrap_or(1);
    state
        .run(move |s| async move {
            let mut rows = s.store.list_audit(before, limit + 1).await?;
            let more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            let next_cursor = rows.last().filter(|_| more).map(|e| e.id.to_string());
            Ok(Json(AuditPage { data: rows.into_iter().map(AuditItem::from).collect(), next_cursor }))
        })
        .await
}
