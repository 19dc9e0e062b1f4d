//! What a finished request does to its key: the window, counts and spend,
//! and the state changes an answer implies (cooling, invalid, exhausted).

use tokio::time::{Duration, Instant};

use super::key::{Health, Slot};
use super::{Demand, Outcome, SchedulerConfig, Verdict};

pub(super) fn transition(slot: &Slot, to: &'static str, reason: &str) {
    tracing::info!(
        target: "keypool::key",
        key_id = slot.id,
        label = slot.label.as_deref().unwrap_or(""),
        state = to,
        reason,
        "key state changed"
    );
    crate::metrics::key_transition(slot.id, to);
}

/// Whether the upstream took the request in (and charged its tokens) before
/// answering: every answer but a refusal at the door.
fn admitted(verdict: Verdict) -> bool {
    !matches!(
        verdict,
        Verdict::RateLimited { .. }
            | Verdict::Invalid
            | Verdict::Exhausted
            | Verdict::ModelMissing
            | Verdict::Refused
            | Verdict::TooLarge { .. }
            | Verdict::ConnectFailed
    )
}

/// Records a request that reached the upstream: the window, counts, spend, and what the answer said of the key.
pub(super) fn record_sent(slot: &mut Slot, demand: Demand, outcome: &Outcome, now: Instant, config: &SchedulerConfig) {
    // The upstream charged the admission estimate when it took the request
    // and gives nothing back inside its window, however little the answer
    // used: the charge stays until the window drops it. Usage above it
    // (a longer prompt than estimated) counts in full.
    let used = outcome.usage.map_or(0, |u| u.total_tokens.max(u.prompt_tokens.saturating_add(u.completion_tokens)));
    // A request the upstream refused before admitting it (a rate limit, a
    // refused key or route, a model it lacks, a request larger than the
    // key's whole limit, no connection) was charged no tokens: it counts as
    // a request only, so one oversized request tried on every key does not
    // hold each key's token budget for a minute.
    let tokens = if admitted(outcome.verdict) { demand.tokens.max(used) } else { 0 };
    let overlap = if tokens > 0 { demand.overlap } else { 0 };
    slot.window.record(now, tokens, overlap);
    slot.bucket.record(now, tokens, overlap, slot.tpm.limit());
    // The excess over the reservation was already seen in the answer's
    // headers (as usage keypool had not counted): now the window holds it.
    slot.tpm.absorb(tokens.saturating_sub(demand.tokens));
    slot.day_count += 1;
    slot.requests_total += 1;
    match super::Counted::of(outcome.verdict, outcome.success) {
        super::Counted::Success => slot.successes_total += 1,
        super::Counted::Failure => slot.failures_total += 1,
        super::Counted::Neither | super::Counted::NotSent => {}
    }
    // Unknown usage on success: the estimate (an upper bound) is what it may have cost.
    let cost = super::lease::charged_cost(outcome, demand);
    let had_budget = slot.budget_micros.is_some_and(|b| slot.spent_micros < b);
    slot.spent_micros = slot.spent_micros.saturating_add(cost);
    if slot.rpd.is_some_and(|l| slot.day_count == l) {
        transition(slot, "cooling", "daily request limit reached; resets at 00:00 UTC");
    }
    if outcome.verdict != Verdict::ConnectFailed {
        slot.connect_failures = 0;
    }
    apply_verdict(slot, outcome.verdict, now, config);
    if had_budget && slot.budget_micros.is_some_and(|b| slot.spent_micros >= b) {
        transition(slot, "spent", "its budget is used up");
    }
}

/// The operator's word for an answer that went wrong with a key; `None`
/// for answers that were fine or the caller's own doing.
fn error_word(verdict: Verdict) -> Option<&'static str> {
    match verdict {
        Verdict::Fine | Verdict::CallerError | Verdict::Cancelled => None,
        Verdict::UpstreamError => Some("upstream_error"),
        Verdict::ConnectFailed => Some("connect_failed"),
        Verdict::RateLimited { .. } => Some("rate_limited"),
        Verdict::Invalid => Some("invalid_key"),
        Verdict::Exhausted => Some("insufficient_quota"),
        Verdict::ModelMissing => Some("model_not_found"),
        Verdict::Refused => Some("refused"),
        Verdict::TooLarge { .. } => Some("request_too_large"),
    }
}

/// What an answer proved about the key: cooling until a reset, invalid, or
/// exhausted (each with its probe schedule); nothing for answers that were
/// not the key's.
pub(super) fn apply_verdict(slot: &mut Slot, verdict: Verdict, now: Instant, config: &SchedulerConfig) {
    // A key on trial (a probe could not judge it) that is refused again goes
    // back to its growing probe interval instead of starting over.
    let was_on_trial = std::mem::take(&mut slot.on_trial);
    if let Some(word) = error_word(verdict) {
        slot.last_error = Some((word, crate::store::now_unix_ms()));
    }
    if was_on_trial && verdict == Verdict::Invalid {
        slot.health = Health::Invalid;
        slot.probe_every = (slot.probe_every * 2).min(Duration::from_secs(3600)).max(config.probe_invalid);
        slot.next_probe = Some(now + slot.probe_every);
        transition(slot, "invalid", "refused again on its trial request");
        return;
    }
    if was_on_trial && matches!(verdict, Verdict::ConnectFailed | Verdict::Cancelled | Verdict::UpstreamError) {
        // The trial proved nothing: it stays on trial.
        slot.on_trial = true;
    }
    match verdict {
        Verdict::Fine
        | Verdict::CallerError
        | Verdict::UpstreamError
        | Verdict::Cancelled
        | Verdict::ModelMissing
        | Verdict::Refused
        | Verdict::TooLarge { .. } => {}
        // The connection goes to the upstream, not to the key: a failed one
        // says nothing about the key, and the upstream's breaker answers for it.
        Verdict::ConnectFailed => slot.connect_failures += 1,
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
            transition(slot, "invalid", "upstream refused the key (401/403 with a key-specific code)");
        }
        Verdict::Exhausted if slot.health != Health::Exhausted => {
            slot.health = Health::Exhausted;
            slot.probe_every = config.probe_exhausted;
            slot.next_probe = Some(now + config.probe_exhausted);
            transition(slot, "exhausted", "upstream says the balance is spent");
        }
        Verdict::Invalid | Verdict::Exhausted => {}
    }
}
