//! What a finished request does to its key: the window, counts and spend,
//! and the state changes an answer implies (cooling, invalid, exhausted).

use tokio::time::{Duration, Instant};

use super::key::{Health, Slot};
use super::{Demand, Outcome, SchedulerConfig, Verdict};
use crate::store::now_unix;

pub(super) fn transition(slot: &Slot, to: &'static str, reason: &str) {
    tracing::info!(key_id = slot.id, label = slot.label.as_deref().unwrap_or(""), to, reason, "key state changed");
    crate::metrics::key_transition(slot.id, to);
}

/// Records a request that reached the upstream: the window, counts, spend, and what the answer said of the key.
pub(super) fn record_sent(slot: &mut Slot, demand: Demand, outcome: &Outcome, now: Instant, config: &SchedulerConfig) {
    // The upstream charged the admission estimate when it took the request
    // and gives nothing back inside its window, however little the answer
    // used: the charge stays until the window drops it. Usage above it
    // (a longer prompt than estimated) counts in full.
    let used = outcome.usage.map_or(0, |u| u.total_tokens.max(u.prompt_tokens.saturating_add(u.completion_tokens)));
    let tokens = demand.tokens.max(used);
    slot.window.record(now, tokens);
    // The excess over the reservation was already seen in the answer's
    // headers (as usage keypool had not counted): now the window holds it.
    slot.tpm.absorb(tokens - demand.tokens);
    slot.day_count += 1;
    slot.requests_total += 1;
    slot.unflushed.requests += 1;
    match outcome.verdict {
        Verdict::Fine if outcome.success => {
            slot.successes_total += 1;
            slot.unflushed.successes += 1;
        }
        // Neither the caller's own mistakes nor a caller leaving count against the key.
        Verdict::CallerError | Verdict::Cancelled => {}
        _ => {
            slot.failures_total += 1;
            slot.unflushed.failures += 1;
        }
    }
    if let Some(u) = outcome.usage {
        slot.unflushed.prompt_tokens = slot.unflushed.prompt_tokens.saturating_add(u.prompt_tokens);
        slot.unflushed.completion_tokens = slot.unflushed.completion_tokens.saturating_add(u.completion_tokens);
    }
    // Unknown usage on success: the estimate (an upper bound) is what it may have cost.
    let cost = outcome.cost_micros.unwrap_or(if outcome.success { demand.cost_micros } else { 0 });
    let had_budget = slot.budget_micros.is_some_and(|b| slot.spent_micros < b);
    slot.spent_micros = slot.spent_micros.saturating_add(cost);
    slot.unflushed.spent_micros = slot.unflushed.spent_micros.saturating_add(cost);
    slot.unflushed.last_used_at = Some(now_unix());
    if slot.rpd.is_some_and(|l| slot.day_count == l) {
        transition(slot, "cooling", "daily request limit reached; resets at 00:00 UTC");
    }
    if outcome.verdict != Verdict::ConnectFailed {
        slot.connect_failures = 0;
    }
    match outcome.verdict {
        Verdict::Fine | Verdict::CallerError | Verdict::UpstreamError | Verdict::Cancelled => {}
        Verdict::ConnectFailed => {
            slot.connect_failures += 1;
            if slot.connect_failures >= config.key_breaker_after {
                let doublings = (slot.connect_failures - config.key_breaker_after).min(9);
                let rest = Duration::from_secs(1 << doublings).min(Duration::from_secs(300));
                transition(
                    slot,
                    "cooling",
                    &format!("{} connect failures in a row; rests {rest:?}", slot.connect_failures),
                );
                slot.cooling_until = Some(now + rest);
            }
        }
        Verdict::RateLimited { reset } => {
            if slot.cooling_until.is_none_or(|t| t <= now) {
                transition(slot, "cooling", &format!("upstream rate limit; resets in {reset:?}"));
            }
            slot.rate_limited(reset, now);
        }
        Verdict::Invalid if slot.health != Health::Invalid => {
            slot.health = Health::Invalid;
            slot.probe_every = config.probe_invalid;
            slot.next_probe = Some(now + config.probe_invalid);
            transition(slot, "invalid", "upstream refused the key (401/403)");
        }
        Verdict::Exhausted if slot.health != Health::Exhausted => {
            slot.health = Health::Exhausted;
            slot.probe_every = config.probe_exhausted;
            slot.next_probe = Some(now + config.probe_exhausted);
            transition(slot, "exhausted", "upstream says the balance is spent (insufficient_quota)");
        }
        Verdict::Invalid | Verdict::Exhausted => {}
    }
    if had_budget && slot.budget_micros.is_some_and(|b| slot.spent_micros >= b) {
        transition(slot, "spent", "its budget is used up");
    }
}
