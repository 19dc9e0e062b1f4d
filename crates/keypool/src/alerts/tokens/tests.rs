#![allow(clippy::unwrap_used)]
use std::sync::Arc;

use super::*;
use crate::tenants::BudgetPeriod;

const DAY: i64 = 86_400;

fn view(id: i64, spent: u64, budget: Option<u64>, period_start: i64) -> BudgetView {
    BudgetView {
        id,
        name: Arc::from(format!("t{id}")),
        budget_micros: budget,
        period: BudgetPeriod::Daily,
        period_start,
        period_end: period_start + DAY,
        spent_micros: spent,
    }
}

/// (token id, threshold) of each alert.
fn told(alerts: &[Alert]) -> Vec<(Option<i64>, Option<f64>)> {
    alerts.iter().map(|a| (a.token_id, a.threshold)).collect()
}

#[test]
fn each_threshold_is_told_once_per_period_with_its_figures() {
    let mut w = TokenWatch::new(vec![1.0, 0.5, 0.8]);
    assert!(w.look(&[view(1, 0, Some(1000), 0), view(2, 0, None, 0)], 1).is_empty());
    assert!(w.look(&[view(1, 499, Some(1000), 0), view(2, 5000, None, 0)], 2).is_empty(), "none passed");
    let got = w.look(&[view(1, 500, Some(1000), 0), view(2, 9000, None, 0)], 3);
    assert_eq!(told(&got), [(Some(1), Some(0.5))], "a token without a budget is never told");
    let a = &got[0];
    assert_eq!((a.event, a.key_id, a.token_name.as_deref()), (AlertEvent::TokenBudget, None, Some("t1")));
    assert_eq!((a.spent_micros, a.budget_micros, a.period), (Some(500), Some(1000), Some("daily")));
    assert_eq!(a.reason.as_deref(), Some("spent 50% of its daily budget (500 of 1000 micro-USD)"));
    assert!(w.look(&[view(1, 700, Some(1000), 0)], 4).is_empty(), "0.5 is told once");
    // Past 0.8 and 1.0 between two looks: the highest is told, the 0.8 with it.
    assert_eq!(told(&w.look(&[view(1, 1000, Some(1000), 0)], 5)), [(Some(1), Some(1.0))]);
    assert!(w.look(&[view(1, 1000, Some(1000), 0)], 6).is_empty());
}

#[test]
fn a_new_period_rearms_every_threshold() {
    let mut w = TokenWatch::new(vec![0.5, 1.0]);
    w.look(&[view(1, 0, Some(100), 0)], 1);
    assert_eq!(told(&w.look(&[view(1, 100, Some(100), 0)], 2)), [(Some(1), Some(1.0))]);
    assert!(w.look(&[view(1, 0, Some(100), DAY)], 3).is_empty(), "the new day spent nothing yet");
    assert_eq!(told(&w.look(&[view(1, 60, Some(100), DAY)], 4)), [(Some(1), Some(0.5))]);
    // Spent past a threshold before the first look of the next day: told at once.
    assert_eq!(told(&w.look(&[view(1, 70, Some(100), 2 * DAY)], 5)), [(Some(1), Some(0.5))]);
}

#[test]
fn a_raised_budget_rearms_what_it_no_longer_passes_and_a_lowered_one_tells() {
    let mut w = TokenWatch::new(vec![0.5, 0.8, 1.0]);
    w.look(&[view(1, 0, Some(100), 0)], 1);
    assert_eq!(told(&w.look(&[view(1, 90, Some(100), 0)], 2)), [(Some(1), Some(0.8))]);
    // Raised to 150: 60% spent, so 0.8 is armed again while 0.5 stays told.
    assert!(w.look(&[view(1, 90, Some(150), 0)], 3).is_empty());
    assert_eq!(told(&w.look(&[view(1, 120, Some(150), 0)], 4)), [(Some(1), Some(0.8))]);
    // Lowered to 110: 120 passes all of it.
    assert_eq!(told(&w.look(&[view(1, 120, Some(110), 0)], 5)), [(Some(1), Some(1.0))]);
    // A budget set on a token that had none tells what its spend passes.
    w.look(&[view(2, 70, None, 0)], 6);
    assert_eq!(told(&w.look(&[view(2, 70, Some(100), 0)], 7)), [(Some(2), Some(0.5))]);
}

#[test]
fn a_token_first_seen_past_a_threshold_is_not_told_it_again() {
    // As after a restart: the store says 85 of 100 were spent this period.
    let mut w = TokenWatch::new(vec![0.5, 0.8, 1.0]);
    assert!(w.look(&[view(1, 85, Some(100), 0)], 1).is_empty());
    assert!(w.look(&[view(1, 90, Some(100), 0)], 2).is_empty(), "0.5 and 0.8 count as told");
    assert_eq!(told(&w.look(&[view(1, 100, Some(100), 0)], 3)), [(Some(1), Some(1.0))]);
    // Gone (revoked) and forgotten; a budget of 0 tells nothing.
    assert!(w.look(&[], 4).is_empty());
    assert!(w.look(&[view(3, 0, Some(0), 0)], 5).is_empty());
    assert!(w.look(&[view(3, 10, Some(0), 0)], 6).is_empty());
}
