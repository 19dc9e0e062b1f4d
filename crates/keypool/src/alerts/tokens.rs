//! Gateway tokens' budgets: which token's spend in its period passed a
//! share of its budget since the last look.
//!
//! Each token has its thresholds armed or told. A look tells the highest
//! threshold newly passed (the lower ones it passed at once are taken as
//! told with it), so each threshold is told at most once per period. What
//! re-arms them:
//! - a new period (a daily or monthly budget renewing, or the period
//!   changed by an operator): all of them;
//! - a budget raised: the thresholds the spend no longer passes under it
//!   (a budget lowered tells the ones it now passes, as a budget set on a
//!   token that had none does);
//! - a token first seen (the gateway starting, with its spend in the
//!   period read from the store): nothing is told, and the thresholds its
//!   spend already passes are taken as told. An alert sent before a restart
//!   is not sent again after it; one a restart cut off is lost.

use std::collections::HashMap;

use super::Alert;
use crate::config::AlertEvent;
use crate::tenants::BudgetView;

/// What the last look knew of a token's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    budget_micros: Option<u64>,
    period_start: i64,
    /// How many of the thresholds, lowest first, are told in this period.
    told: usize,
}

/// The last look at the tokens' budgets, to compare the next one with.
#[derive(Debug)]
pub struct TokenWatch {
    /// Ascending.
    thresholds: Vec<f64>,
    tokens: HashMap<i64, Armed>,
}

impl TokenWatch {
    /// `thresholds`: the budget shares whose passing is told.
    pub fn new(mut thresholds: Vec<f64>) -> TokenWatch {
        thresholds.sort_by(f64::total_cmp);
        TokenWatch { thresholds, tokens: HashMap::new() }
    }

    /// How many thresholds `v`'s spend passes (0 without a budget).
    fn passed(&self, v: &BudgetView) -> usize {
        let Some(budget) = v.budget_micros.filter(|b| *b > 0) else { return 0 };
        let share = v.spent_micros as f64 / budget as f64;
        self.thresholds.iter().take_while(|t| share >= **t).count()
    }

    /// Compares `views` with the last look (see the module's comment for
    /// what re-arms a threshold). Tokens gone from `views` are forgotten.
    pub fn look(&mut self, views: &[BudgetView], time_ms: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(views.len());
        for v in views {
            let passed = self.passed(v);
            let told = match self.tokens.get(&v.id) {
                None => passed,
                Some(before) if before.period_start != v.period_start => 0,
                Some(before) if before.budget_micros != v.budget_micros => before.told.min(passed),
                Some(before) => before.told,
            };
            if passed > told {
                if let Some(t) = self.thresholds.get(passed - 1) {
                    out.push(alert(v, *t, time_ms));
                }
            }
            let armed = Armed { budget_micros: v.budget_micros, period_start: v.period_start, told: told.max(passed) };
            seen.insert(v.id, armed);
        }
        self.tokens = seen;
        out
    }
}

/// The `token_budget` alert for `v` passing `threshold`.
fn alert(v: &BudgetView, threshold: f64, time_ms: i64) -> Alert {
    let budget = v.budget_micros.unwrap_or_default();
    let share = if budget > 0 { v.spent_micros as f64 / budget as f64 } else { 0.0 };
    let period = if v.period.as_str() == "total" { String::new() } else { format!("{} ", v.period.as_str()) };
    let why = format!("spent {:.0}% of its {period}budget ({} of {budget} micro-USD)", share * 100.0, v.spent_micros);
    Alert {
        event: AlertEvent::TokenBudget,
        key_id: None,
        label: None,
        state: None,
        reason: Some(why),
        threshold: Some(threshold),
        token_id: Some(v.id),
        token_name: Some(v.name.to_string()),
        period: Some(v.period.as_str()),
        spent_micros: Some(v.spent_micros),
        budget_micros: v.budget_micros,
        time_ms,
        suppressed: 0,
    }
}

#[cfg(test)]
mod tests;
