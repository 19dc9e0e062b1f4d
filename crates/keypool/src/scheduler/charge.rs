//! How the upstream charges a request against a key's tokens per minute,
//! learned from its `x-ratelimit-remaining-tokens`.
//!
//! OpenAI and the providers that copy it charge a request at admission: an
//! estimate of the prompt from its characters plus `max_tokens` (or
//! `max_completion_tokens` / `max_output_tokens`) times `n`, and give nothing
//! back inside the window (OpenAI's rate-limit guide words the charge as the
//! larger of the two, Azure's as their sum; keypool assumes the sum, which is
//! never smaller, until the answers show the larger of the two). keypool
//! estimates that charge per request
//! (`PromptShape::request_tokens`, the tokenizer's count as a floor); this
//! model scales the estimate when the upstream shows, answer after answer,
//! that it counts more than keypool does.
//!
//! One answer's headers mix in other requests in flight, and refill (a
//! token bucket gives back continuously), so no single difference is read
//! as the truth: each answer gives one ratio of the upstream's count to
//! keypool's own, and the scale is the median of the recent ratios, never
//! below 1 (keypool's own estimate is the floor) and never above
//! [`MAX_SCALE`]. An upstream that counts less than keypool (a bucket that
//! refilled, a `max` instead of a sum) gives ratios below 1 and leaves the
//! estimate as it is.
//!
//! Whether the upstream charges the sum or the larger part is told apart the
//! same way: each answer also gives the ratio of the upstream's count to what
//! keypool would count under the larger-part rule. The rule changes to the
//! larger part only when that count matches the upstream's (median ratio
//! 0.9 to 1.02) while the sum is well above it (median at most 0.9),
//! and only from answers of keys whose refill is known (a window, or a
//! trusted bucket): an unknown refill also makes the sum look too high. A
//! refusal about tokens under the larger-part rule puts the sum back for
//! [`MAX_REFUTED_FOR`].

use std::collections::VecDeque;

/// Ratios kept (the most recent).
const SAMPLES: usize = 31;
/// Ratios needed before the scale moves.
const MIN_SAMPLES: usize = 9;
/// An answer teaches something only when keypool's own count is at least
/// this share of the limit (1/`SIGNAL`): near zero, rounding and refill
/// dominate the ratio.
const SIGNAL: u64 = 10;
/// Scale in thousandths.
pub const UNIT: u64 = 1000;
/// The largest scale learned: 3× keypool's estimate.
pub const MAX_SCALE: u64 = 3 * UNIT;

/// How long a refusal under the larger-part rule keeps the sum.
pub const MAX_REFUTED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// How the upstream adds a request's parts into its admission charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Prompt estimate plus `max_tokens` × `n` (Azure's wording; the default).
    Sum,
    /// The larger of the two (OpenAI's wording).
    Max,
}

/// One answer's comparison of the upstream's count with keypool's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The upstream's use: `limit - remaining`.
    pub upstream: u64,
    /// keypool's own count under its current rule.
    pub ours: u64,
    /// keypool's own count under the larger-part rule (equal to `ours`
    /// once that rule is in use).
    pub ours_max: u64,
    /// Whether the key's refill is known (see the module's documentation).
    pub settled: bool,
}

/// The learned scale of one upstream's charge over keypool's estimate, and
/// whether it charges the sum or the larger part.
#[derive(Debug)]
pub struct ChargeModel {
    ratios: VecDeque<u64>,
    /// Ratios of the upstream's count over the sum and over the larger part.
    rule_ratios: VecDeque<(u64, u64)>,
    /// Current scale, in thousandths (1000: keypool's estimate as it is).
    scale: u64,
    rule: Rule,
    /// When the larger-part rule was last refused: the sum holds until
    /// [`MAX_REFUTED_FOR`] after it.
    refuted_at: Option<tokio::time::Instant>,
}

impl Default for ChargeModel {
    fn default() -> Self {
        ChargeModel {
            ratios: VecDeque::with_capacity(SAMPLES),
            rule_ratios: VecDeque::with_capacity(SAMPLES),
            scale: UNIT,
            rule: Rule::Sum,
            refuted_at: None,
        }
    }
}

fn median(values: impl Iterator<Item = u64>) -> u64 {
    let mut sorted: Vec<u64> = values.collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(UNIT)
}

impl ChargeModel {
    /// The scale in thousandths.
    pub fn scale(&self) -> u64 {
        self.scale
    }

    /// The rule in use.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Takes in one answer (see [`Seen`]) for a key whose limit is `limit`.
    /// Returns the new scale. keypool's count was made with the current
    /// scale, so it is taken back to the unscaled estimate before the ratio
    /// is formed.
    pub fn sample(&mut self, seen: Seen, limit: u64) -> u64 {
        let Seen { upstream, ours, ours_max, settled } = seen;
        if ours == 0 || ours < limit / SIGNAL {
            return self.scale;
        }
        let ratio = upstream.saturating_mul(self.scale) / ours;
        push(&mut self.ratios, ratio);
        if self.ratios.len() >= MIN_SAMPLES {
            let median = median(self.ratios.iter().copied());
            // A few percent over is rounding and framing, not a pattern.
            self.scale = if median <= UNIT + UNIT / 50 { UNIT } else { median.min(MAX_SCALE) };
        }
        if self.rule == Rule::Sum && settled && ours_max > 0 && ours_max < ours {
            let over_max = upstream.saturating_mul(self.scale) / ours_max;
            push(&mut self.rule_ratios, (ratio, over_max));
            self.maybe_max();
        }
        self.scale
    }

    fn maybe_max(&mut self) {
        if self.rule_ratios.len() < MIN_SAMPLES {
            return;
        }
        if self.refuted_at.is_some_and(|at| at.elapsed() < MAX_REFUTED_FOR) {
            return;
        }
        let over_sum = median(self.rule_ratios.iter().map(|r| r.0));
        let over_max = median(self.rule_ratios.iter().map(|r| r.1));
        // The larger-part count must match the upstream's (not only stay
        // above it: keypool's own count runs ahead of the upstream's by what
        // finished since the upstream took it, which would make any rule
        // look too high).
        if over_sum <= UNIT * 9 / 10 && (UNIT * 9 / 10..=UNIT + UNIT / 50).contains(&over_max) {
            tracing::info!(
                over_sum,
                over_max,
                "the upstream charges the larger of the prompt and max_tokens, not their sum"
            );
            self.rule = Rule::Max;
            self.rule_ratios.clear();
        }
    }

    /// A refusal about tokens: under the larger-part rule, the sum holds
    /// again (for [`MAX_REFUTED_FOR`]). Returns whether the rule changed.
    pub fn refuse(&mut self) -> bool {
        if self.rule != Rule::Max {
            return false;
        }
        tracing::info!("an upstream refusal about tokens puts the sum rule back");
        self.rule = Rule::Sum;
        self.refuted_at = Some(tokio::time::Instant::now());
        true
    }
}

fn push<T>(ratios: &mut VecDeque<T>, ratio: T) {
    if ratios.len() == SAMPLES {
        ratios.pop_front();
    }
    ratios.push_back(ratio);
}

/// `tokens` × `scale` thousandths, rounded up.
pub fn scaled(tokens: u64, scale: u64) -> u64 {
    tokens.saturating_mul(scale).div_ceil(UNIT)
}

#[cfg(test)]
mod tests;
