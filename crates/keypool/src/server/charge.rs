//! What a request is charged against a key before it is sent: its tokens as
//! the upstream counts them at admission, and its cost.

use super::proxy::micros;
use super::AppState;
use crate::scheduler::{charge, Demand};
use crate::tokens::PromptShape;

impl AppState {
    /// What a request needs from a key: the upstream's admission charge
    /// (the prompt's character estimate, never below the tokenizer's count,
    /// plus `max_tokens` × `n`), scaled by what the scheduler learned of this
    /// upstream's charge; and the cost at the model's configured price.
    /// Only the tokenizer's sure count plus the completion budget is
    /// certain: the rest may delay a request, never refuse it.
    pub fn demand(&self, shape: Option<&PromptShape>, price: Option<crate::config::Price>) -> Demand {
        let Some(shape) = shape else { return Demand::default() };
        let completion = shape.completion_budget(self.config.limits.default_max_tokens);
        let cost_micros = price.map_or(0, |p| micros(shape.prompt_tokens, completion, p));
        let estimate = shape.prompt_charge().saturating_add(completion);
        let tokens = charge::scaled(estimate, self.scheduler.charge_scale()).max(estimate);
        let sure = shape.sure_tokens.saturating_add(completion).min(tokens);
        Demand { tokens, unsure_tokens: tokens - sure, cost_micros }
    }
}
