//! `keypool keys list`: each key's settings, totals and its state as the
//! running server last saved it (active, cooling until, invalid and why,
//! exhausted, expired, spent, disabled).

use std::collections::HashMap;

use secrecy::ExposeSecret;

use crate::config::mask_key;
use crate::store::{now_unix_ms, KeyRecord, SavedHealth, SavedKeyState, Store};

/// A key's state for the operator: a word, and when or why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub status: &'static str,
    /// Unix milliseconds a cooling key takes requests again.
    pub until_ms: Option<i64>,
    pub reason: Option<String>,
}

const DAY_MS: i64 = 86_400_000;

/// What `key` is now, from its settings and what the server saved.
pub fn state_of(key: &KeyRecord, saved: Option<&SavedKeyState>, now_ms: i64) -> State {
    let state = |status, until_ms, reason: Option<String>| State { status, until_ms, reason };
    if !key.enabled {
        return state("disabled", None, Some("disabled by an operator (`keypool keys enable` undoes it)".into()));
    }
    match saved.map(|s| s.health) {
        Some(SavedHealth::Invalid) => return state("invalid", None, saved.and_then(|s| s.reason.clone())),
        Some(SavedHealth::Exhausted) => return state("exhausted", None, saved.and_then(|s| s.reason.clone())),
        _ => {}
    }
    if key.expires_at.is_some_and(|t| t.saturating_mul(1000) <= now_ms) {
        return state("expired", None, Some("its expiry date has passed".into()));
    }
    if key.budget_micros.is_some_and(|b| key.spent_micros >= b) {
        return state("spent", None, Some("its budget is used up".into()));
    }
    if let Some(until) = saved.and_then(|s| s.cooling_until).filter(|t| *t > now_ms) {
        return state("cooling", Some(until), Some("the upstream rate-limited it, or it failed to connect".into()));
    }
    let today = now_ms.div_euclid(DAY_MS);
    if let (Some(rpd), Some(s)) = (key.rpd, saved) {
        if s.day == today && s.day_count >= u64::from(rpd) {
            return state("cooling", Some((today + 1) * DAY_MS), Some("its daily request limit is reached".into()));
        }
    }
    state("active", None, None)
}

/// A Unix-milliseconds instant as an RFC 3339 UTC time, to the second.
fn rfc3339(ms: i64) -> String {
    let secs = u64::try_from(ms.div_euclid(1000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// Keys as last saved; a key naming no upstream belongs to `default_upstream`.
pub async fn list(store: &Store, json: bool, default_upstream: &str) -> anyhow::Result<()> {
    let keys = store.list_keys().await?;
    let saved: HashMap<i64, SavedKeyState> =
        store.load_key_states().await?.into_iter().map(|s| (s.key_id, s)).collect();
    let now = now_unix_ms();
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                let s = saved.get(&k.id);
                let st = state_of(k, s, now);
                let learned = |d: fn(&SavedKeyState) -> Option<u64>| s.and_then(d);
                serde_json::json!({
                    "id": k.id, "key": mask_key(k.secret.expose_secret()), "label": k.label,
                    "upstream": k.upstream.as_deref().unwrap_or(default_upstream),
                    "status": st.status, "reason": st.reason, "until": st.until_ms.map(rfc3339),
                    "rpm": k.rpm, "tpm": k.tpm, "requests": k.requests, "successes": k.successes,
                    "failures": k.failures, "prompt_tokens": k.prompt_tokens,
                    "completion_tokens": k.completion_tokens, "last_used_at": k.last_used_at,
                    "rpd": k.rpd, "max_inflight": k.max_inflight, "weight": k.weight,
                    "budget_usd": k.budget_micros.map(|b| b as f64 / 1e6),
                    "spent_usd": k.spent_micros as f64 / 1e6, "expires_at": k.expires_at,
                    "organization": k.organization, "project": k.project,
                    "learned_rpm": learned(|s| s.rpm.learned), "learned_tpm": learned(|s| s.tpm.learned),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys yet: add one with `keypool keys add sk-...` or `keypool keys import FILE`");
        return Ok(());
    }
    println!(
        "{:>4}  {:<12} {:<16} {:<12} {:<9} {:>6} {:>8} {:>9} {:>8} {:>7} {:>17}  WHY/UNTIL",
        "ID", "KEY", "LABEL", "UPSTREAM", "STATUS", "RPM", "TPM", "REQUESTS", "SUCCESS", "FAILED", "SPENT/BUDGET USD"
    );
    for k in &keys {
        let limit = |v: Option<u32>| v.map_or("-".to_owned(), |n| n.to_string());
        let st = state_of(k, saved.get(&k.id), now);
        let why = match (st.until_ms, &st.reason) {
            (Some(until), _) => format!("until {}", rfc3339(until)),
            (None, Some(r)) if st.status != "disabled" => r.clone(),
            _ => String::new(),
        };
        println!(
            "{:>4}  {:<12} {:<16} {:<12} {:<9} {:>6} {:>8} {:>9} {:>8} {:>7} {:>17}  {}",
            k.id,
            mask_key(k.secret.expose_secret()),
            k.label.as_deref().unwrap_or("-"),
            k.upstream.as_deref().unwrap_or(default_upstream),
            st.status,
            limit(k.rpm),
            limit(k.tpm),
            k.requests,
            k.successes,
            k.failures,
            format!(
                "{:.4}/{}",
                k.spent_micros as f64 / 1e6,
                k.budget_micros.map_or("-".to_owned(), |b| format!("{:.2}", b as f64 / 1e6))
            ),
            why
        );
    }
    Ok(())
}
