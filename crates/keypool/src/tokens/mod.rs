//! Token estimation: how many tokens a request will be charged upstream,
//! decided before it is sent so the reservation fits the key's TPM.
//!
//! For now this is the common ~4-bytes-per-token rule of thumb with OpenAI's
//! per-message overhead; the scheduler issue swaps in a real tokenizer
//! (tiktoken) behind this same function.

/// What the estimate needs from a request body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PromptShape {
    /// Bytes of text the model reads (message contents, prompt, input).
    pub text_bytes: usize,
    /// Number of chat messages (each costs a few tokens of framing).
    pub messages: usize,
    /// `max_tokens` / `max_completion_tokens`, if the caller set one.
    pub max_tokens: Option<u32>,
    /// `n`: how many completions are generated.
    pub n: u32,
}

/// Tokens of framing OpenAI adds per chat message, and once per reply.
const PER_MESSAGE: u64 = 3;
const PER_REPLY: u64 = 3;

/// Prompt tokens, rounding up so the estimate errs on the safe side.
pub fn prompt_tokens(shape: &PromptShape) -> u64 {
    let text = (shape.text_bytes as u64).div_ceil(4);
    let framing = if shape.messages > 0 {
        PER_MESSAGE * shape.messages as u64 + PER_REPLY
    } else {
        0
    };
    text + framing
}

/// Prompt plus the completion budget, as the upstream's TPM counts a request.
pub fn request_tokens(shape: &PromptShape, default_max_tokens: u32) -> u64 {
    let completion =
        u64::from(shape.max_tokens.unwrap_or(default_max_tokens)) * u64::from(shape.n.max(1));
    prompt_tokens(shape) + completion
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_text_framing_and_completion_budget() {
        let shape = PromptShape {
            text_bytes: 400,
            messages: 2,
            max_tokens: Some(50),
            n: 2,
        };
        assert_eq!(prompt_tokens(&shape), 100 + 9);
        assert_eq!(request_tokens(&shape, 1024), 109 + 100);
        let bare = PromptShape {
            text_bytes: 1,
            ..PromptShape::default()
        };
        assert_eq!(request_tokens(&bare, 16), 1 + 16);
    }
}
