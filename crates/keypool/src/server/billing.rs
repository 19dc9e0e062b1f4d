//! `GET /v1/dashboard/billing/subscription` and `/v1/dashboard/billing/usage`
//! for the calling token: the shapes of OpenAI's former billing endpoints,
//! answered per token as one-api answers them, which chat front-ends
//! (NextChat, LobeChat) read to show a balance. Never sent upstream.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::tenants::{period_bounds, BudgetPeriod, Tenant};

/// The limit shown for a token without a budget (one-api shows the same).
const NO_LIMIT_USD: f64 = 100_000_000.0;

/// Whether `rest` (the path after `/v1/`) is a billing endpoint keypool answers.
pub fn answered_here(rest: &str) -> bool {
    matches!(rest.trim_end_matches('/'), "dashboard/billing/subscription" | "dashboard/billing/usage")
}

/// The answer for `tenant` (the caller's token; without one there is no
/// one to answer for: 404).
///
/// `subscription`: `{"object":"billing_subscription","has_payment_method":true,
/// "soft_limit_usd","hard_limit_usd","system_hard_limit_usd","access_until"}`,
/// the limits being the token's budget in USD and `access_until` its expiry
/// (Unix seconds, 0 for never).
///
/// `usage`: `{"object":"list","total_usage"}` in cents (USD × 100): what the
/// token spent from `start_date` (inclusive) to `end_date` (exclusive), both
/// `YYYY-MM-DD` days in the configured time zone; without them, in its
/// current budget period (its whole life without a budget). Read from the
/// daily statistics (the whole life: from the token's totals), which lag
/// the requests by up to `records.flush_interval` plus a second (2 s), or
/// plus 5 s while hundreds of tokens are busy (`records::writer::ROLLUP_EVERY_MANY`).
///
/// # Errors
/// 400 naming `start_date` or `end_date` when one is not a date; 404 without a token.
pub async fn answer(
    app: &AppState,
    rest: &str,
    query: Option<&str>,
    tenant: Option<&Arc<Tenant>>,
) -> Result<Response, ApiError> {
    let Some(tenant) = tenant else {
        return Err(ApiError::UnknownPath(format!("/v1/{rest} (it answers for a gateway token; none was sent)")));
    };
    let s = tenant.settings();
    if rest.trim_end_matches('/').ends_with("subscription") {
        let limit = s.budget_micros.map_or(NO_LIMIT_USD, |b| b as f64 / 1e6);
        return Ok(axum::Json(serde_json::json!({
            "object": "billing_subscription",
            "has_payment_method": true,
            "soft_limit_usd": limit,
            "hard_limit_usd": limit,
            "system_hard_limit_usd": limit,
            "access_until": s.expires_at.unwrap_or(0),
        }))
        .into_response());
    }
    let tz = jiff::tz::TimeZone::get(&app.config.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let day = |name: &'static str| -> Result<Option<i64>, ApiError> {
        let Some(v) = query_value(query, name) else { return Ok(None) };
        let bad = ApiError::InvalidParameter { param: name, reason: "must be a date, YYYY-MM-DD" };
        let date: jiff::civil::Date = v.parse().map_err(|_| bad)?;
        let start = date
            .to_zoned(tz.clone())
            .map_err(|_| ApiError::InvalidParameter { param: name, reason: "is out of range" })?;
        Ok(Some(start.timestamp().as_second()))
    };
    let (from, until) = (day("start_date")?, day("end_date")?);
    let (id, store) = (tenant.id(), app.store.clone());
    let period = if s.budget_micros.is_some() { s.budget_period } else { BudgetPeriod::Total };
    let (from, until) = match (from, until) {
        (None, None) => period_bounds(period, &tz, crate::store::now_unix()),
        (from, until) => (from.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX)),
    };
    let read = app.main.spawn(async move {
        if (from, until) == (i64::MIN, i64::MAX) {
            store.token(id).await.map(|t| t.usage.spent_micros)
        } else {
            store.token_spent_between(id, from, until).await
        }
    });
    let spent = match read.await {
        Ok(Ok(spent)) => spent,
        _ => return Err(ApiError::Internal("could not read the token's spend")),
    };
    Ok(axum::Json(serde_json::json!({ "object": "list", "total_usage": spent as f64 / 10_000.0 })).into_response())
}

/// The value of `name` in a query string (the first; as sent: a date
/// needs no percent-decoding, and one encoded anyway is refused as no date).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}
