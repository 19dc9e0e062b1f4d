//! How the upstream charges a request against a key's tokens per minute,
//! learned from its `x-ratelimit-remaining-tokens`.
//!
//! OpenAI and the providers that copy it charge a request at admission: an
//! estimate of the prompt from its characters plus `max_tokens` (or
//! `max_completion_tokens` / `max_output_tokens`) times `n`, and give nothing
//! back inside the window (OpenAI's rate-limit guide words the charge as the
//! larger of the two, Azure's as their sum; keypool assumes the sum, which is
//! never smaller). keypool estimates that charge per request
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

/// The learned scale of one upstream's charge over keypool's estimate.
#[derive(Debug)]
pub struct ChargeModel {
    ratios: VecDeque<u64>,
    /// Current scale, in thousandths (1000: keypool's estimate as it is).
    scale: u64,
}

impl Default for ChargeModel {
    fn default() -> Self {
        ChargeModel { ratios: VecDeque::with_capacity(SAMPLES), scale: UNIT }
    }
}

impl ChargeModel {
    /// The scale in thousandths.
    pub fn scale(&self) -> u64 {
        self.scale
    }

    /// Takes in one answer: the upstream's use (`limit - remaining`) and
    /// keypool's own count, for a key whose limit is `limit`. Returns the new
    /// scale. keypool's count was made with the current scale, so it is
    /// taken back to the unscaled estimate before the ratio is formed.
    pub fn sample(&mut self, upstream_used: u64, ours: u64, limit: u64) -> u64 {
        if ours == 0 || ours < limit / SIGNAL {
            return self.scale;
        }
        let ratio = upstream_used.saturating_mul(self.scale) / ours;
        if self.ratios.len() == SAMPLES {
            self.ratios.pop_front();
        }
        self.ratios.push_back(ratio);
        if self.ratios.len() >= MIN_SAMPLES {
            let mut sorted: Vec<u64> = self.ratios.iter().copied().collect();
            sorted.sort_unstable();
            let median = sorted[sorted.len() / 2];
            // A few percent over is rounding and framing, not a pattern.
            self.scale = if median <= UNIT + UNIT / 50 { UNIT } else { median.min(MAX_SCALE) };
        }
        self.scale
    }
}

/// `tokens` × `scale` thousandths, rounded up.
pub fn scaled(tokens: u64, scale: u64) -> u64 {
    tokens.saturating_mul(scale).div_ceil(UNIT)
}

#[cfg(test)]
mod tests;
