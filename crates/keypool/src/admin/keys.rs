//! `/admin/api/keys`: the pool's keys with their live state, and every
//! change an operator makes to them. Validation is the CLI's (`keys add`,
//! `keys edit`): the same functions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::error::{Body, Id};
use super::{AdminError, AdminState, Caller};
use crate::cli::keys::{parse_expiry, parse_header_text, usd_to_micros};
use crate::cli::list::state_of;
use crate::cli::paste::{self, check_key};
use crate::config::mask_key;
use crate::store::{now_unix_ms, AddOutcome, KeyChange, NewKey, SavedKeyState};

/// A key as operators see it: settings, lifetime totals and live state.
/// Never its value: `key` is masked (`sk-…wxyz`).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyItem {
    pub id: i64,
    /// The key masked: its first 3 and last 4 characters.
    pub key: String,
    pub label: Option<String>,
    pub enabled: bool,
    /// active, cooling, exhausted, invalid, disabled, expired or spent.
    pub status: String,
    /// Why the key is not active, in words.
    pub reason: Option<String>,
    /// When a cooling key takes requests again (Unix ms).
    pub cooling_until_ms: Option<i64>,
    /// Requests left in the current minute; null when the key has no known request limit.
    pub remaining_requests: Option<u64>,
    /// Tokens left in the current minute; null when the key has no known token limit.
    pub remaining_tokens: Option<u64>,
    /// Seconds until the oldest request of the current minute stops counting.
    pub reset_in_secs: Option<f64>,
    /// When every request counted against the key's request limit now has
    /// stopped counting (Unix ms; the window has freed); null when none counts.
    pub reset_requests_at_ms: Option<i64>,
    /// When every token counted against the key's token limit now has
    /// stopped counting (Unix ms); null when none counts.
    pub reset_tokens_at_ms: Option<i64>,
    /// Requests on this key right now.
    pub inflight: u64,
    /// The same as `inflight` (the dashboard's name).
    pub in_flight: u64,
    /// The last answer that went wrong for the key (`rate_limited`, `invalid_key`, …).
    pub last_error: Option<String>,
    /// When that was (Unix ms).
    pub last_error_at_ms: Option<i64>,
    /// Configured requests per minute (null: none of its own).
    pub rpm: Option<u32>,
    /// Configured tokens per minute.
    pub tpm: Option<u32>,
    /// Configured requests per day.
    pub rpd: Option<u32>,
    pub max_inflight: Option<u32>,
    /// Share of traffic under the `weighted` strategy (null: 1).
    pub weight: Option<u32>,
    /// The limits in force: configured, a default, or learned from the upstream.
    pub effective_rpm: Option<u64>,
    pub effective_tpm: Option<u64>,
    /// Spend allowed, micro-USD.
    pub budget_micros: Option<u64>,
    /// Spent so far, micro-USD.
    pub spent_micros: u64,
    /// Credit left as the provider last told it (micro-USD; providers with
    /// a balance API only, see docs/upstreams.md); null when not read.
    pub balance_micros: Option<u64>,
    /// When that was read (Unix ms).
    pub balance_read_at_ms: Option<i64>,
    /// When the key stops being used (Unix seconds).
    pub expires_at: Option<i64>,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// The upstream the key belongs to (its name; the default one when it names none).
    pub upstream: String,
    /// Whether that upstream is configured: a key whose upstream is gone serves nowhere.
    pub upstream_configured: bool,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// The same in Unix ms.
    pub last_used_at_ms: Option<i64>,
}

/// Declares a request body with a key's settings (absent: unchanged, or
/// none on add; `null` or an empty text: cleared) plus `$extra` fields,
/// unknown fields refused, and its `change()`.
macro_rules! with_settings {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $extra:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $extra: $ty,)*
            /// A name to recognise the key by (no NUL character).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<String>, pattern = "^[^\\x00]*$")]
            pub label: Option<Option<String>>,
            /// Requests per minute (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u32>, minimum = 1)]
            pub rpm: Option<Option<u32>>,
            /// Tokens per minute (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u32>, minimum = 1)]
            pub tpm: Option<Option<u32>>,
            /// Requests per day (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u32>, minimum = 1)]
            pub rpd: Option<Option<u32>>,
            /// Most requests in flight at once (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u32>, minimum = 1)]
            pub max_inflight: Option<Option<u32>>,
            /// Share of traffic under the `weighted` strategy (≥ 1).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<u32>, minimum = 1)]
            pub weight: Option<Option<u32>>,
            /// Balance the key may spend, in USD (≥ 0).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<f64>, minimum = 0)]
            pub budget_usd: Option<Option<f64>>,
            /// When the key stops working: a duration from now (`30d`), `YYYY-MM-DD` or RFC 3339, in the future.
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<String>, example = "2030-01-31", pattern = "^(\\d{4}-\\d{2}-\\d{2}([Tt ].+)?|[1-9]\\d{0,4}(d|h|w))?$")]
            pub expires: Option<Option<String>>,
            /// Sent upstream as `OpenAI-Organization` (printable ASCII, no spaces).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<String>, pattern = "^[!-~]*$")]
            pub organization: Option<Option<String>>,
            /// Sent upstream as `OpenAI-Project` (printable ASCII, no spaces).
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<String>, pattern = "^[!-~]*$")]
            pub project: Option<Option<String>>,
            /// The upstream the key belongs to (a configured name); `null`
            /// or empty: the default upstream.
            #[serde(default, deserialize_with = "present")]
            #[schema(value_type = Option<String>)]
            pub upstream: Option<Option<String>>,
        }

        impl $name {
            /// The settings part, checked as the CLI checks them.
            pub fn change(&self, upstreams: &[String]) -> Result<KeyChange, AdminError> {
                Settings {
                    upstream: &self.upstream,
                    upstreams,
                    label: &self.label,
                    rpm: self.rpm,
                    tpm: self.tpm,
                    rpd: self.rpd,
                    max_inflight: self.max_inflight,
                    weight: self.weight,
                    budget_usd: self.budget_usd,
                    expires: &self.expires,
                    organization: &self.organization,
                    project: &self.project,
                }
                .change()
            }
        }
    };
}

with_settings!(
    /// A key to add, with its settings.
    NewKeyBody {
        /// The key: any non-empty printable ASCII without spaces.
        #[schema(pattern = "^[!-~]+$")]
        key: String,
    }
);

with_settings!(
    /// Keys to add in bulk, each with these settings.
    ImportBody {
        /// Keys as pasted: one a line, or separated by commas or spaces;
        /// quotes, blank lines and `#` comments are skipped.
        text: String,
    }
);

with_settings!(
    /// Settings to change: only those given; `null` or an empty text clears one.
    KeySettings {}
);

/// A body's settings, borrowed for checking.
struct Settings<'a> {
    label: &'a Option<Option<String>>,
    rpm: Option<Option<u32>>,
    tpm: Option<Option<u32>>,
    rpd: Option<Option<u32>>,
    max_inflight: Option<Option<u32>>,
    weight: Option<Option<u32>>,
    budget_usd: Option<Option<f64>>,
    expires: &'a Option<Option<String>>,
    organization: &'a Option<Option<String>>,
    project: &'a Option<Option<String>>,
    upstream: &'a Option<Option<String>>,
    /// The names of the upstreams in force.
    upstreams: &'a [String],
}

/// A field that is present (`null` included) is `Some`.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl Settings<'_> {
    /// Checks every value as the CLI does, naming the field that fails.
    fn change(&self) -> Result<KeyChange, AdminError> {
        let limit = |name: &str, v: Option<Option<u32>>| -> Result<Option<Option<u32>>, AdminError> {
            match v {
                Some(Some(0)) => Err(AdminError::field(name, "must be at least 1 (null or absent: no limit)")),
                other => Ok(other),
            }
        };
        let header = |name: &str, v: &Option<Option<String>>| -> Result<Option<Option<String>>, AdminError> {
            match v {
                Some(Some(s)) if !s.is_empty() => {
                    parse_header_text(s).map(|s| Some(Some(s))).map_err(|why| AdminError::field(name, why))
                }
                Some(_) => Ok(Some(None)),
                None => Ok(None),
            }
        };
        let budget = match self.budget_usd {
            Some(Some(usd)) => Some(Some(usd_to_micros(usd).map_err(|why| AdminError::field("budget_usd", why))?)),
            Some(None) => Some(None),
            None => None,
        };
        let expires = match self.expires {
            Some(Some(s)) if !s.is_empty() => {
                Some(Some(parse_expiry(s).map_err(|why| AdminError::field("expires", why))?))
            }
            Some(_) => Some(None),
            None => None,
        };
        if matches!(self.label, Some(Some(l)) if l.contains('\0')) {
            return Err(AdminError::field("label", "must not contain a NUL character"));
        }
        let upstream = self.upstream.as_ref().map(|u| u.clone().filter(|s| !s.is_empty()));
        if let Some(Some(name)) = &upstream {
            if !self.upstreams.contains(name) {
                return Err(AdminError::field(
                    "upstream",
                    format!("{name:?} is not a configured upstream (configured: {})", self.upstreams.join(", ")),
                ));
            }
        }
        Ok(KeyChange {
            label: self.label.as_ref().map(|l| l.clone().filter(|s| !s.trim().is_empty())),
            rpm: limit("rpm", self.rpm)?,
            tpm: limit("tpm", self.tpm)?,
            rpd: limit("rpd", self.rpd)?,
            max_inflight: limit("max_inflight", self.max_inflight)?,
            weight: limit("weight", self.weight)?,
            budget_micros: budget,
            expires_at: expires,
            organization: header("organization", self.organization)?,
            project: header("project", self.project)?,
            upstream,
        })
    }
}

/// A new key with `change`'s settings (cleared ones as none).
fn new_key(secret: String, change: &KeyChange) -> NewKey {
    NewKey {
        secret,
        label: change.label.clone().flatten(),
        rpm: change.rpm.flatten(),
        tpm: change.tpm.flatten(),
        rpd: change.rpd.flatten(),
        max_inflight: change.max_inflight.flatten(),
        weight: change.weight.flatten(),
        budget_micros: change.budget_micros.flatten(),
        expires_at: change.expires_at.flatten(),
        organization: change.organization.clone().flatten(),
        project: change.project.clone().flatten(),
        upstream: change.upstream.clone().flatten(),
    }
}

/// The names of the settings a change sets, and their values (for the
/// audit log: settings only, never the key).
fn changed_fields(change: &KeyChange) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut put = |name: &str, v: Option<serde_json::Value>| {
        if let Some(v) = v {
            out.insert(name.to_owned(), v);
        }
    };
    put("label", change.label.as_ref().map(|v| serde_json::json!(v)));
    put("rpm", change.rpm.map(|v| serde_json::json!(v)));
    put("tpm", change.tpm.map(|v| serde_json::json!(v)));
    put("rpd", change.rpd.map(|v| serde_json::json!(v)));
    put("max_inflight", change.max_inflight.map(|v| serde_json::json!(v)));
    put("weight", change.weight.map(|v| serde_json::json!(v)));
    put("budget_micros", change.budget_micros.map(|v| serde_json::json!(v)));
    put("expires_at", change.expires_at.map(|v| serde_json::json!(v)));
    put("organization", change.organization.as_ref().map(|v| serde_json::json!(v)));
    put("project", change.project.as_ref().map(|v| serde_json::json!(v)));
    put("upstream", change.upstream.as_ref().map(|v| serde_json::json!(v)));
    serde_json::Value::Object(out)
}

/// Every key with its live state: the store's settings and totals, the
/// scheduler's live numbers (the saved state for a key it has not loaded).
async fn items(state: &AdminState) -> Result<Vec<KeyItem>, AdminError> {
    let keys = state.store.list_keys().await?;
    let saved: HashMap<i64, SavedKeyState> =
        state.store.load_key_states().await?.into_iter().map(|s| (s.key_id, s)).collect();
    let live: HashMap<i64, crate::scheduler::KeyView> = state.pools.snapshot().into_iter().map(|v| (v.id, v)).collect();
    let resets: HashMap<i64, crate::scheduler::WindowResets> =
        state.pools.window_resets().into_iter().map(|r| (r.key_id, r)).collect();
    let now = now_unix_ms();
    let set = state.pools.load();
    Ok(keys
        .iter()
        .map(|k| {
            let stored = state_of(k, saved.get(&k.id), now);
            let view = live.get(&k.id);
            let reset = resets.get(&k.id);
            let status = view.map_or(stored.status, |v| v.status);
            // The live reason when the scheduler has one, else the saved one
            // when it speaks of the same state.
            let reason = view
                .and_then(|v| v.reason.clone())
                .or_else(|| (status == stored.status).then(|| stored.reason.clone()).flatten());
            KeyItem {
                id: k.id,
                key: mask_key(k.secret.expose_secret()),
                label: k.label.clone(),
                enabled: k.enabled,
                status: status.to_owned(),
                reason,
                cooling_until_ms: view.map_or(stored.until_ms, |v| v.cooling_until_ms),
                remaining_requests: view.and_then(|v| v.remaining_requests),
                remaining_tokens: view.and_then(|v| v.remaining_tokens),
                reset_in_secs: view.and_then(|v| v.reset_in).map(|d| d.as_secs_f64()),
                reset_requests_at_ms: reset.and_then(|r| r.requests_at_ms),
                reset_tokens_at_ms: reset.and_then(|r| r.tokens_at_ms),
                inflight: view.map_or(0, |v| v.inflight),
                in_flight: view.map_or(0, |v| v.inflight),
                last_error: view.and_then(|v| v.last_error).map(str::to_owned),
                last_error_at_ms: view.and_then(|v| v.last_error_at_ms),
                rpm: k.rpm,
                tpm: k.tpm,
                rpd: k.rpd,
                max_inflight: k.max_inflight,
                weight: k.weight,
                effective_rpm: view.and_then(|v| v.rpm),
                effective_tpm: view.and_then(|v| v.tpm),
                budget_micros: k.budget_micros,
                // The live figure includes spend not yet written.
                spent_micros: view.map_or(k.spent_micros, |v| v.spent_micros.max(k.spent_micros)),
                balance_micros: view.and_then(|v| v.balance_micros),
                balance_read_at_ms: view.and_then(|v| v.balance_read_at_ms),
                expires_at: k.expires_at,
                organization: k.organization.clone(),
                project: k.project.clone(),
                upstream: k.upstream.clone().unwrap_or_else(|| set.default_pool().name().to_owned()),
                upstream_configured: k.upstream.as_deref().is_none_or(|u| set.by_name(u).is_some()),
                requests: view.map_or(k.requests, |v| v.requests.max(k.requests)),
                successes: view.map_or(k.successes, |v| v.successes.max(k.successes)),
                failures: view.map_or(k.failures, |v| v.failures.max(k.failures)),
                prompt_tokens: k.prompt_tokens,
                completion_tokens: k.completion_tokens,
                created_at: k.created_at,
                last_used_at: k.last_used_at,
                last_used_at_ms: k.last_used_at.map(|s| s.saturating_mul(1000)),
            }
        })
        .collect())
}

async fn item(state: &AdminState, id: i64) -> Result<KeyItem, AdminError> {
    items(state).await?.into_iter().find(|k| k.id == id).ok_or(AdminError::NotFound { what: "key", id })
}

/// List the keys with their live state.
#[utoipa::path(get, path = "/admin/api/keys", tag = "keys",
    responses((status = 200, description = "Every key, by id", body = [KeyItem]), super::openapi::Unauthorized))]
pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Json<Vec<KeyItem>>, AdminError> {
    state.run(|s| async move { items(&s).await.map(Json) }).await
}

/// One key with its live state.
#[utoipa::path(get, path = "/admin/api/keys/{id}", tag = "keys", params(("id" = i64, Path, description = "The key's id")),
    responses((status = 200, body = KeyItem), super::openapi::BadRequest, super::openapi::Unauthorized, super::openapi::NotFound))]
pub async fn one(State(state): State<Arc<AdminState>>, Id(id): Id) -> Result<Json<KeyItem>, AdminError> {
    state.run(move |s| async move { item(&s, id).await.map(Json) }).await
}

/// Add a key; it serves as soon as the answer arrives.
#[utoipa::path(post, path = "/admin/api/keys", tag = "keys", request_body = NewKeyBody,
    responses((status = 201, description = "Added", body = KeyItem), super::openapi::BadRequest,
        super::openapi::Unauthorized, super::openapi::Conflict))]
pub async fn add(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Body(body): Body<NewKeyBody>,
) -> Result<(StatusCode, Json<KeyItem>), AdminError> {
    check_key(&body.key).map_err(|why| AdminError::field("key", why))?;
    let change = body.change(&state.upstream_names())?;
    state
        .run(move |s| async move {
            let id = match s.store.add_key(&new_key(body.key, &change)).await? {
                AddOutcome::Added(id) => id,
                AddOutcome::Duplicate(id) => return Err(AdminError::DuplicateKey { id }),
            };
            s.audit(&who, "keys.add", Some(id), changed_fields(&change)).await?;
            s.resync().await?;
            Ok((StatusCode::CREATED, Json(item(&s, id).await?)))
        })
        .await
}

/// What a bulk import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// Ids of the keys added.
    pub added: Vec<i64>,
    /// Ids of keys already in the pool (skipped).
    pub duplicates: Vec<i64>,
    /// Pieces that are no key (not added).
    pub invalid: Vec<InvalidPiece>,
}

/// A piece of the pasted text that cannot be a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidPiece {
    /// Its line, from 1.
    pub line: usize,
    /// The piece, masked.
    pub piece: String,
    pub reason: String,
}

/// Add keys in bulk from pasted text (duplicates skipped, invalid pieces reported).
#[utoipa::path(post, path = "/admin/api/keys/import", tag = "keys", request_body = ImportBody,
    responses((status = 200, body = ImportResult), super::openapi::BadRequest, super::openapi::Unauthorized))]
pub async fn import(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Body(body): Body<ImportBody>,
) -> Result<Json<ImportResult>, AdminError> {
    let change = body.change(&state.upstream_names())?;
    let pasted = paste::parse(&body.text);
    state
        .run(move |s| async move {
            let mut result = ImportResult {
                added: Vec::new(),
                duplicates: Vec::new(),
                invalid: pasted
                    .invalid
                    .into_iter()
                    .map(|(line, piece, why)| InvalidPiece { line, piece, reason: why.to_owned() })
                    .collect(),
            };
            for (_, secret) in pasted.keys {
                match s.store.add_key(&new_key(secret, &change)).await? {
                    AddOutcome::Added(id) => result.added.push(id),
                    AddOutcome::Duplicate(id) => result.duplicates.push(id),
                }
            }
            let mut details = changed_fields(&change);
            if let Some(map) = details.as_object_mut() {
                map.insert("added".into(), serde_json::json!(result.added));
                map.insert("duplicates".into(), serde_json::json!(result.duplicates.len()));
                map.insert("invalid".into(), serde_json::json!(result.invalid.len()));
            }
            s.audit(&who, "keys.import", None, details).await?;
            s.resync().await?;
            Ok(Json(result))
        })
        .await
}

/// Change a key's settings (only those given; `null` or an empty text clears one).
#[utoipa::path(patch, path = "/admin/api/keys/{id}", tag = "keys", params(("id" = i64, Path, description = "The key's id")),
    request_body = KeySettings,
    responses((status = 200, body = KeyItem), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::NotFound))]
pub async fn edit(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Id(id): Id,
    Body(body): Body<KeySettings>,
) -> Result<Json<KeyItem>, AdminError> {
    let change = body.change(&state.upstream_names())?;
    state
        .run(move |s| async move {
            if !change.is_empty() {
                s.store.edit_key(id, &change).await?;
                s.audit(&who, "keys.edit", Some(id), changed_fields(&change)).await?;
                s.resync().await?;
            }
            Ok(Json(item(&s, id).await?))
        })
        .await
}

/// Enables or disables key `id`, and says so in the audit log.
async fn set_enabled(state: Arc<AdminState>, who: Caller, id: i64, enabled: bool) -> Result<Json<KeyItem>, AdminError> {
    state
        .run(move |s| async move {
            s.store.set_key_enabled(id, enabled).await?;
            let action = if enabled { "keys.enable" } else { "keys.disable" };
            s.audit(&who, action, Some(id), serde_json::json!({})).await?;
            s.resync().await?;
            Ok(Json(item(&s, id).await?))
        })
        .await
}

/// Put a disabled key back into rotation.
#[utoipa::path(post, path = "/admin/api/keys/{id}/enable", tag = "keys", params(("id" = i64, Path, description = "The key's id")),
    responses((status = 200, body = KeyItem), super::openapi::BadRequest, super::openapi::Unauthorized, super::openapi::NotFound))]
pub async fn enable(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Id(id): Id,
) -> Result<Json<KeyItem>, AdminError> {
    set_enabled(state, who, id, true).await
}

/// Take a key out of rotation (kept, with its totals).
#[utoipa::path(post, path = "/admin/api/keys/{id}/disable", tag = "keys", params(("id" = i64, Path, description = "The key's id")),
    responses((status = 200, body = KeyItem), super::openapi::BadRequest, super::openapi::Unauthorized, super::openapi::NotFound))]
pub async fn disable(
    State(state): State<Arc<AdminState>>,
    who: Caller,
    Id(id): Id,
) -> Result<Json<KeyItem>, AdminError> {
    set_enabled(state, who, id, false).await
}

/// Zero a key's lifetime totals: requests, successes, failures, tokens and spend.
#[utoipa::path(post, path = "/admin/api/keys/{id}/reset", tag = "keys", params(("id" = i64, Path, description = "The key's id")),
    responses((status = 200, body = KeyItem), super::openapi::BadRequest, super::openapi::Unauthorized, super::openapi::NotFound))]
pub async fn reset(State(state): State<Arc<AdminState>>, who: Caller, Id(id): Id) -> Result<Json<KeyItem>, AdminError> {
    state
        .run(move |s| async move {
            s.store.reset_key_totals(id).await?;
            s.pools.reset_totals(id);
            s.audit(&who, "keys.reset", Some(id), serde_json::json!({})).await?;
            Ok(Json(item(&s, id).await?))
        })
        .await
}

/// Delete a key (its request records stay, naming its id).
#[utoipa::path(delete, path = "/admin/api/keys/{id}", tag = "keys", params(("id" = i64, Path, description = "The key's id")),
    responses((status = 204, description = "Deleted"), super::openapi::BadRequest, super::openapi::Unauthorized,
        super::openapi::NotFound))]
pub async fn remove(State(state): State<Arc<AdminState>>, who: Caller, Id(id): Id) -> Result<StatusCode, AdminError> {
    state
        .run(move |s| async move {
            s.store.remove_key(id).await?;
            s.audit(&who, "keys.delete", Some(id), serde_json::json!({})).await?;
            s.resync().await?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
