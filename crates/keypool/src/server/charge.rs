//! What a request is charged against a key before it is sent: its tokens as
//! the upstream counts them at admission, and its cost.

use super::AppState;
use crate::scheduler::charge::{self, Rule};
use crate::scheduler::{Demand, Scheduler};
use crate::tokens::PromptShape;

impl AppState {
    /// What a request needs from a key: the upstream's admission charge
    /// (the prompt's character estimate, never below the tokenizer's count,
    /// plus `max_tokens` × `n`, or the larger of the two once the scheduler
    /// learned that this upstream charges so), scaled by what the scheduler
    /// learned of this upstream's charge; and the cost at the model's
    /// configured price. Only the tokenizer's sure count and the completion
    /// budget are certain: the rest may delay a request, never refuse it.
    pub fn demand(
        &self,
        scheduler: &Scheduler,
        shape: Option<&PromptShape>,
        price: Option<crate::config::Price>,
    ) -> Demand {
        let Some(shape) = shape else { return Demand::default() };
        let completion = shape.completion_budget(self.config.limits.default_max_tokens);
        let cost_micros = price.map_or(0, |p| micros(shape.prompt_tokens, completion, p));
        let prompt = shape.prompt_charge();
        let (estimate, overlap, sure) = match scheduler.charge_rule() {
            Rule::Sum => (
                prompt.saturating_add(completion),
                prompt.min(completion),
                shape.sure_tokens.saturating_add(completion),
            ),
            Rule::Max => (prompt.max(completion), 0, shape.sure_tokens.max(completion)),
        };
        let scale = scheduler.charge_scale();
        let tokens = charge::scaled(estimate, scale).max(estimate);
        let overlap = charge::scaled(overlap, scale).min(tokens);
        let sure = sure.min(tokens);
        Demand { tokens, unsure_tokens: tokens - sure, overlap, cost_micros }
    }
}

/// The estimate's cost in micro-USD: a price per million tokens is
/// micro-USD per token.
fn micros(prompt: u64, completion: u64, price: crate::config::Price) -> u64 {
    (prompt as f64 * price.input + completion as f64 * price.output).ceil() as u64
}
