//! `GET /admin/api/session`: what the admin token sent may do, so the
//! dashboard shows a viewer no buttons that would only be refused.

use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::token::{Access, Role};

/// The admin token a request came with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// `admin` (reads and changes) or `viewer` (reads only).
    pub role: Role,
    /// The token's fingerprint (`admin:1a2b3c4d`), as the audit log names it.
    pub actor: String,
    /// The name given at `keypool admin tokens create`; null for the main token.
    pub name: Option<String>,
}

/// Who the admin token in `Authorization` is and what it may do.
#[utoipa::path(get, path = "/admin/api/session", tag = "meta",
    responses((status = 200, body = Session), super::openapi::Unauthorized))]
pub async fn session(Extension(access): Extension<Access>) -> Json<Session> {
    Json(Session { role: access.role, actor: access.actor, name: access.name })
}
