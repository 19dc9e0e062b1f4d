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
use crate::cli::keys::{parse_expiry, usd_to_micros};
use crate::server::hash_token;
use crate::store::TokenRecord;
use crate::tenants::{models_from, networks_from, BudgetPeriod, TokenSettings};

/// A gateway token as operators see it: never its value or hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenItem {
    pub id: i64,
    pub name: String,
    /// The token's first characters (`kp-1a2b`), to recognise it.
    pub prefix: String,
    /// active, disabled, expired or revoked.
    pub status: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; null while active.
    pub revoked_at: Option<i64>,
    /// Model globs the token may use; null: every model.
    pub models: Option<Vec<String>>,
    /// Networks (CIDRs) the token may be used from; null: anywhere.
    pub networks: Option<Vec<String>>,
    /// Requests per minute; null: no limit.
    pub rpm: Option<u64>,
    /// Tokens per minute; null: no limit.
    pub tpm: Option<u64>,
    /// Requests per day (days begin in `time_zone`); null: no limit.
    pub rpd: Option<u64>,
    /// Most requests in flight at once; null: no cap.
    pub max_inflight: Option<u64>,
    /// Spend allowed per `budget_period`, micro-USD; null: no budget.
    pub budget_micros: Option<u64>,
    pub budget_period: BudgetPeriod,
    /// Spent in the current budget period, micro-USD (from the statistics,
    /// which lag the requests by up to 2 s, 6 s while hundreds of tokens
    /// are busy); null without a budget.
    pub budget_spent_micros: Option<u64>,
    /// Unix seconds; null: never.
    pub expires_at: Option<i64>,
    /// Place in the wait queue: higher is served first.
    pub priority: i64,
    pub enabled: bool,
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

impl TokenItem {
    fn of(t: &TokenRecord, budget_spent_micros: Option<u64>) -> TokenItem {
        let s = &t.settings;
        TokenItem {
            id: t.id,
            name: t.name.clone(),
            prefix: t.prefix.clone(),
            status: crate::cli::tokens::status(t).to_owned(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            models: s.models.clone(),
            networks: s.networks.as_ref().map(|n| n.iter().map(|c| c.0.to_string()).collect()),
            rpm: s.rpm,
            tpm: s.tpm,
            rpd: s.rpd,
            max_inflight: s.max_inflight,
            budget_micros: s.budget_micros,
            budget_period: s.budget_period,
            budget_spent_micros,
            expires_at: s.expires_at,
            priority: s.priority,
            enabled: s.enabled,
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

/// A field that is present (`null` included) is `Some`.
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Declares a body with a token's settings (and the fields given first):
/// absent fields stay as they are, `null` clears one.
macro_rules! with_token_settings {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
            /// Model globs the token may use (`gpt-4o*`), at least one; null: every model.
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<Vec<String>>, min_items = 1)]
            pub models: Option<Option<Vec<String>>>,
            /// Networks the token may be used from: CIDRs or addresses, at least one; null: anywhere.
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<Vec<String>>, min_items = 1)]
            pub networks: Option<Option<Vec<String>>>,
            /// Requests per minute (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u64>, minimum = 1)]
            pub rpm: Option<Option<u64>>,
            /// Tokens per minute (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u64>, minimum = 1)]
            pub tpm: Option<Option<u64>>,
            /// Requests per day (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u64>, minimum = 1)]
            pub rpd: Option<Option<u64>>,
            /// Most requests in flight at once (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u64>, minimum = 1)]
            pub max_inflight: Option<Option<u64>>,
            /// Budget in USD per `budget_period` (≥ 0).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<f64>, minimum = 0)]
            pub budget_usd: Option<Option<f64>>,
            /// What the budget covers: total, daily or monthly.
            #[serde(default)]
            pub budget_period: Option<BudgetPeriod>,
            /// When the token stops working: a duration from now (`30d`), `YYYY-MM-DD` or RFC 3339, in the future.
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<String>, example = "30d", pattern = "^(\\d{4}-\\d{2}-\\d{2}([Tt ].+)?|[1-9]\\d{0,4}(d|h|w))?$")]
            pub expires: Option<Option<String>>,
            /// Place in the wait queue: higher is served first.
            #[serde(default)]
            pub priority: Option<i64>,
            /// A disabled token is refused (401).
            #[serde(default)]
            pub enabled: Option<bool>,
        }

        impl $name {
            /// `s` with this body's settings applied, each checked as the CLI checks it.
            pub fn apply(&self, mut s: TokenSettings) -> Result<TokenSettings, AdminError> {
                // An empty list must not open the token to everything: only null clears one.
                match &self.models {
                    Some(Some(models)) => {
                        let list = models_from(models.clone()).map_err(|why| AdminError::field("models", why))?;
                        s.models = Some(list.ok_or_else(|| {
                            AdminError::field("models", "is empty; null allows every model")
                        })?);
                    }
                    Some(None) => s.models = None,
                    None => {}
                }
                match &self.networks {
                    Some(Some(networks)) => {
                        let list = networks_from(networks).map_err(|why| AdminError::field("networks", why))?;
                        s.networks = Some(list.ok_or_else(|| {
                            AdminError::field("networks", "is empty; null allows anywhere")
                        })?);
                    }
                    Some(None) => s.networks = None,
                    None => {}
                }
                let limit = |name: &str, field: &mut Option<u64>, v: Option<Option<u64>>| -> Result<(), AdminError> {
                    match v {
                        Some(Some(0)) => Err(AdminError::field(name, "must be at least 1 (null: no limit)")),
                        Some(v) => {
                            *field = v;
                            Ok(())
                        }
                        None => Ok(()),
                    }
                };
                limit("rpm", &mut s.rpm, self.rpm)?;
                limit("tpm", &mut s.tpm, self.tpm)?;
                limit("rpd", &mut s.rpd, self.rpd)?;
                limit("max_inflight", &mut s.max_inflight, self.max_inflight)?;
                match self.budget_usd {
                    Some(Some(usd)) => {
                        s.budget_micros = Some(usd_to_micros(usd).map_err(|why| AdminError::field("budget_usd", why))?)
                    }
                    Some(None) => s.budget_micros = None,
                    None => {}
                }
                if let Some(p) = self.budget_period {
                    s.budget_period = p;
                }
                match &self.expires {
                    Some(Some(e)) if !e.is_empty() => {
                        s.expires_at = Some(parse_expiry(e).map_err(|why| AdminError::field("expires", why))?)
                    }
                    Some(_) => s.expires_at = None,
                    None => {}
                }
                if let Some(p) = self.priority {
                    s.priority = p;
                }
                if let Some(e) = self.enabled {
                    s.enabled = e;
                }
                Ok(s)
            }
        }
    };
}

with_token_settings!(
    /// A token to create, with its settings.
    NewToken {
        /// A unique name: who or what uses the token (1 to 200 characters).
        #[schema(min_length = 1, max_length = 200, pattern = "^[^\\x00]*\\S[^\\x00]*$")]
        name: String,
    }
);

with_token_settings!(
    /// Settings to change: only those given; `null` clears one.
    TokenChange {}
);

/// A created token: the only answer that ever holds its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token to give its user (`kp-…`); shown only this once.
    pub token: String,
    #[serde(flatten)]
    pub item: TokenItem,
}

/// A stored token as the API shows it, with what it spent in its budget's period.
async fn shown(state: &AdminState, t: &TokenRecord) -> Result<TokenItem, AdminError> {
    let spent = match t.settings.budget_micros {
        Some(_) => Some(
            crate::cli::tokens::spent_in_period(&state.store, t, &state.time_zone())
                .await
                .map_err(|_| AdminError::Internal("could not read the token's spend"))?,
        ),
        None => None,
    };
    Ok(TokenItem::of(t, spent))
}

async fn item(state: &AdminState, id: i64) -> Result<TokenItem, AdminError> {
    let t = state.store.token(id).await?;
    shown(state, &t).await
}

/// List the gateway tokens (never their values).
#[utoipa::path(get, path = "/admin/api/tokens", tag = "tokens",
    responses((status = 200, description = "Every token, by id", body = [TokenItem]), super::openapi::Unauthorized))]
pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<Vec<TokenItem>>, AdminError> {
    state
        .run(|s| async move {
            let mut items = Vec::new();
            for t in s.store.list_tokens().await? {
                items.push(shown(&s, &t).await?);
            }
            Ok(Json(items))
        })
        .await
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
    let settings = body.apply(TokenSettings::default())?;
    state
        .run(move |s| async move {
            let (token, prefix) = crate::cli::tokens::new_token();
            let id = s.store.create_token_with(&name, &hash_token(&token), &prefix, &settings).await?;
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

/// Change a token's settings: only the fields given; `null` clears one.
#[utoipa::path(patch, path = "/admin/api/tokens/{id}", tag = "tokens", request_body = TokenChange,
    params(("id" = i64, Path, description = "The token's id")),
    responses((status = 200, body = TokenItem), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::NotFound))]
pub async fn edit(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Id(id): Id,
    Body(body): Body<TokenChange>,
) -> Result<Json<TokenItem>, AdminError> {
    state
        .run(move |s| async move {
            let t = s.store.token(id).await?;
            if t.revoked_at.is_some() {
                return Err(AdminError::NotFound { what: "live token", id });
            }
            let settings = body.apply(t.settings.clone())?;
            if settings != t.settings {
                s.store.set_token_settings(id, &settings).await?;
                s.audit(&who, "tokens.edit", Some(id), serde_json::json!({})).await?;
                s.resync().await?;
            }
            Ok(Json(item(&s, id).await?))
        })
        .await
}

/// Give a token a new secret, keeping its name, settings and usage: the
/// new value is in this answer only, and the old one is refused from then on.
#[utoipa::path(post, path = "/admin/api/tokens/{id}/regenerate", tag = "tokens",
    params(("id" = i64, Path, description = "The token's id")),
    responses((status = 200, body = CreatedToken), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::NotFound))]
pub async fn regenerate(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Id(id): Id,
) -> Result<Json<CreatedToken>, AdminError> {
    state
        .run(move |s| async move {
            let (token, prefix) = crate::cli::tokens::new_token();
            s.store.regenerate_token(id, &hash_token(&token), &prefix).await?;
            s.audit(&who, "tokens.regenerate", Some(id), serde_json::json!({})).await?;
            s.resync().await?;
            Ok(Json(CreatedToken { token, item: item(&s, id).await? }))
        })
        .await
}
