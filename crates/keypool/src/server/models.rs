//! `GET /v1/models` when keypool has more to say than one upstream: with
//! several upstreams or model aliases, the list is the union of the names
//! the config gives (exact `models` entries and aliases) and each
//! upstream's own list (fetched with one of its keys, cached), each
//! upstream's entries filtered by its globs, the first of a name kept.
//! With one upstream and no aliases the upstream's answer passes through.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::time::Instant;

use super::{AppState, Clients};
use crate::routing::{Pool, PoolSet};
use crate::scheduler::{Demand, Outcome, Verdict};
use crate::tenants::TokenSettings;
use crate::upstream::{OutBody, Upstream};

/// How long an upstream's own list is kept before it is fetched again.
pub const MODELS_TTL: Duration = Duration::from_secs(600);
/// Largest model list read from an upstream (OpenRouter's is a few hundred KiB).
const LIST_CAP: usize = 8 << 20;

/// Whether `GET /v1/models` is answered by keypool rather than passed on.
pub fn answered_here(set: &PoolSet) -> bool {
    set.all().len() > 1 || set.aliases().next().is_some()
}

/// The union list, as OpenAI shapes it: `{"object":"list","data":[…]}`;
/// with `scope`, only the models the caller's token may use (an alias
/// when it or one of its targets is allowed).
pub async fn list(app: &AppState, set: &PoolSet, clients: &Clients, scope: Option<&TokenSettings>) -> Response {
    let mut own = Vec::with_capacity(set.all().len());
    for (index, pool) in set.all().iter().enumerate() {
        own.push(own_list(app, clients.get(index), pool).await);
    }
    let mut list = union(set, &own);
    if let (Some(scope), Some(data)) = (scope, list.get_mut("data").and_then(Value::as_array_mut)) {
        data.retain(|item| {
            let Some(id) = item.get("id").and_then(Value::as_str) else { return false };
            let plan = set.plan(Some(id));
            let targets: Vec<&str> =
                plan.iter().flat_map(|p| p.candidates()).filter_map(|c| c.model.as_deref()).collect();
            scope.allows_model(id, &targets)
        });
    }
    axum::Json(list).into_response()
}

/// Aliases first, then each upstream's own entries its globs let through
/// and the exact names its `models` gives; the first of a name is kept.
fn union(set: &PoolSet, own: &[Arc<Vec<Value>>]) -> Value {
    let mut data: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |item: Value| {
        let id = item.get("id").and_then(Value::as_str).map(str::to_owned);
        if id.is_some_and(|id| seen.insert(id)) {
            data.push(item);
        }
    };
    for alias in set.aliases() {
        push(entry(alias, "keypool"));
    }
    for (pool, own) in set.all().iter().zip(own) {
        for item in own.iter() {
            if item.get("id").and_then(Value::as_str).is_some_and(|id| pool.upstream.serves(id)) {
                push(item.clone());
            }
        }
        // Exact names the config gives, even when the upstream's list lacks them.
        for name in pool.upstream.models.iter().filter(|m| !m.contains(['*', '?'])) {
            push(entry(name, pool.name()));
        }
    }
    serde_json::json!({ "object": "list", "data": data })
}

fn entry(id: &str, owner: &str) -> Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": owner })
}

/// The upstream's own list: cached, else fetched now with one of its keys
/// that has room (empty when none has, or the upstream cannot tell).
async fn own_list(app: &AppState, client: &Upstream, pool: &Pool) -> Arc<Vec<Value>> {
    if let Some(list) = pool.cached_models(MODELS_TTL) {
        return list;
    }
    let fetched = fetch(app, client, pool).await;
    match fetched {
        Some(list) => pool.cache_models(list),
        // Not cached: the next request asks again.
        None => pool.cached_models(Duration::MAX).unwrap_or_default(),
    }
}

async fn fetch(app: &AppState, client: &Upstream, pool: &Pool) -> Option<Vec<Value>> {
    let lease = pool.scheduler.try_lease(Demand::default()).ok()?;
    let url = client.url_to("models", None, None)?;
    let mut lease = lease;
    lease.mark_sent();
    let no_headers = HeaderMap::new();
    let asked = client.send(
        Method::GET,
        url,
        &no_headers,
        lease.key_id(),
        lease.secret(),
        lease.account(),
        OutBody::Bytes(Bytes::new()),
    );
    let timeout = app.config.timeouts.first_byte;
    let until = Instant::now() + timeout;
    let answer = match tokio::time::timeout_at(until, asked).await {
        Ok(Ok(answer)) => answer,
        _ => {
            lease.finish(Outcome { verdict: Verdict::UpstreamError, ..Outcome::default() });
            tracing::info!(upstream = pool.name(), "could not fetch the upstream's model list");
            return None;
        }
    };
    let ok = answer.status().is_success();
    let mut body = answer.into_body();
    let mut bytes = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, body.frame()).await {
        if let Ok(chunk) = frame.into_data() {
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() > LIST_CAP {
            bytes.clear();
            break;
        }
    }
    // A list is not a generation: the key is charged no failure either way.
    lease.finish(Outcome { success: ok, verdict: Verdict::Fine, ..Outcome::default() });
    if !ok {
        tracing::info!(upstream = pool.name(), "the upstream did not list its models");
        return None;
    }
    let parsed: Value = serde_json::from_slice(&bytes).ok()?;
    let items = parsed.get("data")?.as_array()?;
    Some(items.iter().filter(|i| i.get("id").is_some_and(Value::is_string)).cloned().collect())
}
