//! What changed since the last look at the keys: the alerts to send.

use std::collections::HashMap;

use crate::config::AlertEvent;
use crate::scheduler::KeyView;

/// One alert, before the webhook's format shapes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub event: AlertEvent,
    /// The key it is about; `None` for the pool's events.
    pub key_id: Option<i64>,
    pub label: Option<String>,
    /// The key's state now (`invalid`, `exhausted`, `active`, …).
    pub state: Option<&'static str>,
    /// Why, in words (the upstream's reason, the share spent, the pool's counts).
    pub reason: Option<String>,
    /// The budget share passed (`budget_threshold` only).
    pub threshold: Option<f64>,
    /// The gateway token it is about (`token_budget` only): its id and
    /// name, never its secret.
    pub token_id: Option<i64>,
    pub token_name: Option<String>,
    /// The token's budget period (`total`, `daily`, `monthly`; `token_budget` only).
    pub period: Option<&'static str>,
    /// What was spent and the budget, micro-USD (the budget alerts only).
    pub spent_micros: Option<u64>,
    pub budget_micros: Option<u64>,
    /// When it was seen (Unix ms).
    pub time_ms: i64,
    /// Alerts left unsent since the last one sent (the per-minute cap).
    pub suppressed: u64,
}

/// A key as the last look saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    status: &'static str,
    /// Spend over budget; `None` without a budget.
    spent: Option<f64>,
}

/// The last look at the keys, to compare the next one with.
#[derive(Debug)]
pub struct Watch {
    thresholds: Vec<f64>,
    keys: HashMap<i64, Seen>,
    /// Whether some key could serve at the last look; `None` before the first.
    usable: Option<bool>,
}

fn usable(status: &str) -> bool {
    matches!(status, "active" | "cooling")
}

impl Watch {
    /// `thresholds`: the budget shares whose passing is told.
    pub fn new(thresholds: Vec<f64>) -> Watch {
        Watch { thresholds, keys: HashMap::new(), usable: None }
    }

    /// Compares `views` with the last look. A key seen for the first time
    /// (or on the first look) sets its baseline and alerts nothing: only
    /// changes are told. The first look does tell a pool with keys none of
    /// which can serve.
    pub fn look(&mut self, views: &[KeyView], time_ms: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        let alert = |event, v: Option<&KeyView>, reason: Option<String>, threshold| Alert {
            event,
            key_id: v.map(|v| v.id),
            label: v.and_then(|v| v.label.clone()),
            state: v.map(|v| v.status),
            reason,
            threshold,
            token_id: None,
            token_name: None,
            period: None,
            spent_micros: None,
            budget_micros: None,
            time_ms,
            suppressed: 0,
        };
        let mut seen = HashMap::with_capacity(views.len());
        for v in views {
            let spent = v.budget_micros.filter(|b| *b > 0).map(|b| v.spent_micros as f64 / b as f64);
            let now = Seen { status: v.status, spent };
            if let Some(before) = self.keys.get(&v.id) {
                let reason = || v.reason.clone().or_else(|| v.last_error.map(str::to_owned));
                if v.status != before.status {
                    match v.status {
                        "invalid" => out.push(alert(AlertEvent::KeyInvalid, Some(v), reason(), None)),
                        "exhausted" => out.push(alert(AlertEvent::KeyExhausted, Some(v), reason(), None)),
                        _ => {}
                    }
                }
                if let (Some(was), Some(is)) = (before.spent, spent) {
                    // The highest share passed since the last look.
                    if let Some(t) = self.thresholds.iter().rev().find(|t| was < **t && is >= **t) {
                        let why = format!(
                            "spent {:.0}% of its budget ({} of {} micro-USD)",
                            is * 100.0,
                            v.spent_micros,
                            v.budget_micros.unwrap_or_default()
                        );
                        let mut a = alert(AlertEvent::BudgetThreshold, Some(v), Some(why), Some(*t));
                        a.spent_micros = Some(v.spent_micros);
                        a.budget_micros = v.budget_micros;
                        out.push(a);
                    }
                }
            }
            seen.insert(v.id, now);
        }
        self.keys = seen;
        let can_serve = views.iter().any(|v| usable(v.status));
        let was = self.usable.replace(can_serve);
        if !can_serve && !views.is_empty() && was != Some(false) {
            let mut counts: Vec<(&str, usize)> = Vec::new();
            for v in views {
                match counts.iter_mut().find(|(s, _)| *s == v.status) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((v.status, 1)),
                }
            }
            let why = counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ");
            out.push(alert(AlertEvent::NoUsableKey, None, Some(format!("no key can serve: {why}")), None));
        } else if can_serve && was == Some(false) {
            let n = views.iter().filter(|v| usable(v.status)).count();
            out.push(alert(AlertEvent::KeysUsable, None, Some(format!("{n} key(s) can serve again")), None));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: i64, status: &'static str, spent: u64, budget: Option<u64>) -> KeyView {
        KeyView {
            id,
            label: Some(format!("k{id}")),
            status,
            requests: 0,
            successes: 0,
            failures: 0,
            inflight: 0,
            rpm: None,
            tpm: None,
            remaining_requests: None,
            remaining_tokens: None,
            reset_in: None,
            spent_micros: spent,
            budget_micros: budget,
            balance_micros: None,
            balance_read_at_ms: None,
            reason: None,
            cooling_until_ms: None,
            last_error: None,
            last_error_at_ms: None,
        }
    }

    #[test]
    fn changes_are_told_once_and_baselines_are_silent() {
        let mut w = Watch::new(vec![0.8, 1.0]);
        assert!(w.look(&[view(1, "active", 0, Some(100)), view(2, "invalid", 0, None)], 1).is_empty());
        let got = w.look(&[view(1, "active", 85, Some(100)), view(2, "invalid", 0, None)], 2);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].event, got[0].key_id, got[0].threshold), (AlertEvent::BudgetThreshold, Some(1), Some(0.8)));
        // Both left: invalid, then the pool has none.
        let got = w.look(&[view(1, "invalid", 100, Some(100)), view(2, "invalid", 0, None)], 3);
        let events: Vec<AlertEvent> = got.iter().map(|a| a.event).collect();
        assert_eq!(events, [AlertEvent::KeyInvalid, AlertEvent::BudgetThreshold, AlertEvent::NoUsableKey]);
        assert!(w.look(&[view(1, "invalid", 100, Some(100)), view(2, "invalid", 0, None)], 4).is_empty());
        let got = w.look(&[view(1, "invalid", 100, Some(100)), view(2, "active", 0, None)], 5);
        assert_eq!(got[0].event, AlertEvent::KeysUsable);
    }
}
