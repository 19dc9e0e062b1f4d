//! `/admin/api/tokens`: gateway tokens. A token's value is shown once, in
//! the answer that creates it; only its hash and first characters are kept.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Body, Id};
use super::{AdminError, AdminState, Caller};
use crate::server::hash_token;
use crate::store::TokenRecord;

/// A gateway token as operators see it: never its value or hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenItem {
    pub id: i64,
    pub name: String,
    /// The token's first characters (`kp-1a2b`), to recognise it.
    pub prefix: String,
    /// active or revoked.
    pub status: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; null while active.
    pub revoked_at: Option<i64>,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Micro-USD.
    pub spent_micros: u64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
}

impl From<&TokenRecord> for TokenItem {
    fn from(t: &TokenRecord) -> TokenItem {
        TokenItem {
            id: t.id,
            name: t.name.clone(),
            prefix: t.prefix.clone(),
            status: if t.revoked_at.is_some() { "revoked" } else { "active" }.to_owned(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            requests: t.usage.requests,
            successes: t.usage.successes,
            failures: t.usage.failures,
            prompt_tokens: t.usage.prompt_tokens,
            completion_tokens: t.usage.completion_tokens,
            spent_micros: t.usage.spent_micros,
            last_used_at: t.usage.last_used_at,
        }
    }
}

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A unique name: who or what uses the token (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200, pattern = "^[^\\x00]*\\S[^\\x00]*$")]
    pub name: String,
}

/// A created token: the only answer that ever holds its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token to give its user (`kp-…`); shown only this once.
    pub token: String,
    #[serde(flatten)]
    pub item: TokenItem,
}

async fn item(state: &AdminState, id: i64) -> Result<TokenItem, AdminError> {
    let tokens = state.store.list_tokens().await?;
    tokens.iter().find(|t| t.id == id).map(TokenItem::from).ok_or(AdminError::NotFound { what: "token", id })
}

/// List the gateway tokens (never their values).
#[utoipa::path(get, path = "/admin/api/tokens", tag = "tokens",
    responses((status = 200, description = "Every token, by id", body = [TokenItem]), super::openapi::Unauthorized))]
pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<Vec<TokenItem>>, AdminError> {
    state.run(|s| async move { Ok(Json(s.store.list_tokens().await?.iter().map(TokenItem::from).collect())) }).await
}

/// Create a token: its value is in this answer only.
#[utoipa::path(post, path = "/admin/api/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::Conflict))]
pub async fn create(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Body(body): Body<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), AdminError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AdminError::field("name", "a token needs a name of 1 to 200 characters (who or what uses it)"));
    }
    if name.contains('\0') {
        return Err(AdminError::field("name", "must not contain a NUL character"));
    }
    state
        .run(move |s| async move {
            let (token, prefix) = crate::cli::tokens::new_token();
            let id = s.store.create_token(&name, &hash_token(&token), &prefix).await?;
            s.audit(&who, "tokens.create", Some(id), serde_json::json!({ "name": name })).await?;
            s.resync().await?;
            Ok((StatusCode::CREATED, Json(CreatedToken { token, item: item(&s, id).await? })))
        })
        .await
}

/// Revoke a token: refused from this answer on.
#[utoipa::path(post, path = "/admin/api/tokens/{id}/revoke", tag = "tokens",
    params(("id" = i64, Path, description = "The token's id")),
    responses((status = 200, body = TokenItem), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::NotFound))]
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Id(id): Id,
) -> Result<Json<TokenItem>, AdminError> {
    state
        .run(move |s| async move {
            s.store.revoke_token(id).await?;
            s.audit(&who, "tokens.revoke", Some(id), serde_json::json!({})).await?;
            s.resync().await?;
            Ok(Json(item(&s, id).await?))
        })
        .await
}
