//! Token estimation: how many tokens a request will be charged upstream,
//! decided before it is sent so the reservation fits the key's TPM. Prompt
//! text is counted with OpenAI's own vocabularies (tiktoken's o200k_base for
//! the GPT-4o/4.1/5 and o-series families, cl100k_base for older models) by a
//! compact counting-only encoder (`bpe`), plus the per-message framing the
//! chat format adds. The upstream's own admission charge reads the prompt's
//! characters (about 4 a token): [`PromptShape::prompt_charge`] takes the
//! larger of the two. `shape` reads every input form the API accepts.

mod bpe;
pub mod shape;

use std::sync::{Once, OnceLock};

use bpe::{Bpe, BuildError};

/// Tokens of framing OpenAI adds per chat message, and once to prime the reply.
pub const PER_MESSAGE: u64 = 3;
pub const PER_REPLY: u64 = 3;

/// Which tokenizer a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

/// A tokenizer takes ~0.5 s (and, while it is built, tens of MB) to build, so
/// it is built on a background thread the first time it is wanted, never on a
/// request. Built, it holds ~6 MB (see `bpe`). `None` inside: the build failed
/// (logged), and counts stay over-estimates.
static O200K: OnceLock<Option<Bpe>> = OnceLock::new();
static CL100K: OnceLock<Option<Bpe>> = OnceLock::new();
/// Whether the background build has been started.
static O200K_LOAD: Once = Once::new();
static CL100K_LOAD: Once = Once::new();

type Build = fn() -> Result<Bpe, BuildError>;

impl Encoding {
    pub fn for_model(model: &str) -> Encoding {
        let m = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
        let o200k = ["gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss"];
        if o200k.iter().any(|p| m.starts_with(p)) {
            Encoding::O200k
        } else {
            Encoding::Cl100k
        }
    }

    fn cell(self) -> (&'static OnceLock<Option<Bpe>>, &'static Once, Build) {
        match self {
            Encoding::O200k => (&O200K, &O200K_LOAD, Bpe::o200k),
            Encoding::Cl100k => (&CL100K, &CL100K_LOAD, Bpe::cl100k),
        }
    }

    /// The tokenizer if it is built; otherwise starts building it in the
    /// background, on a thread of its own.
    ///
    /// The build goes through tiktoken's full encoder (~30 MB of scratch).
    /// mimalloc returns freed memory to the system only once it has been free
    /// for its purge delay (1 s), and only when a thread next goes through its
    /// slow path; in an idle gateway that may be never. A thread that ends
    /// after the delay has passed purges on its way out, so the build thread
    /// waits it out first (measured: 56 MB resident after the build without the
    /// wait, 27 MB with it).
    fn ready(self) -> Option<&'static Bpe> {
        let (cell, once, _) = self.cell();
        if let Some(built) = cell.get() {
            return built.as_ref();
        }
        once.call_once(move || {
            let started = std::thread::Builder::new().name("keypool-tokenizer".into()).spawn(move || {
                self.load();
                std::thread::sleep(std::time::Duration::from_millis(1500));
            });
            if let Err(e) = started {
                tracing::error!(error = %e, "could not start building the tokenizer; prompt tokens will be over-estimated");
            }
        });
        None
    }

    /// Builds the tokenizer now, on this thread (start-up, tests, benches), or
    /// waits for the build already under way. If it cannot be built, counts
    /// stay at the safe over-estimate.
    pub fn load(self) {
        let (cell, _, build) = self.cell();
        cell.get_or_init(|| {
            build()
                .inspect_err(|e| tracing::error!(error = %e, encoding = ?self, "prompt tokens will be over-estimated"))
                .ok()
        });
    }

    /// Tokens in `text` (no special tokens). While the tokenizer is still being
    /// built (the first fraction of a second it is needed) this over-counts
    /// on purpose, one token per byte (no token is shorter), so a reservation
    /// is never too small.
    pub fn count(self, text: &str) -> u64 {
        self.count_sure(text).0
    }

    /// [`Encoding::count`], and whether the count is exact (`false`: the
    /// tokenizer is still being built and the count is an over-estimate).
    pub fn count_sure(self, text: &str) -> (u64, bool) {
        if text.is_empty() {
            return (0, true);
        }
        match self.ready() {
            Some(bpe) => (bpe.count(text), true),
            None => (text.len() as u64, false),
        }
    }
}

/// How a request's prompt is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// With the model's tokenizer: needed when some key has a tokens-per-minute
    /// limit or spend is priced.
    Exact(Encoding),
    /// The ~4-bytes-a-token rule, when nothing depends on the count (no TPM
    /// limit anywhere, no prices): the tokenizer's memory and time are not spent.
    Rough,
    /// What `Exact` does while its tokenizer is still being built: one token
    /// per byte, an over-estimate that is never sure. Tests inject it to see
    /// that state without touching the process-wide tokenizer.
    Unready,
}

impl Counter {
    pub fn count(self, text: &str) -> u64 {
        self.count_sure(text).0
    }

    /// Tokens in `text`, and whether that number is a sure lower bound of the
    /// real count (only a built tokenizer gives one).
    pub fn count_sure(self, text: &str) -> (u64, bool) {
        match self {
            Counter::Exact(enc) => enc.count_sure(text),
            Counter::Rough => ((text.len() as u64).div_ceil(4), false),
            Counter::Unready => (text.len() as u64, false),
        }
    }
}

/// Starts building the tokenizer of current models (o200k) in the background.
pub fn start_building() {
    let _ = Encoding::O200k.ready();
}

/// What the estimate needs from a request body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PromptShape {
    /// The model named in the body, if any.
    pub model: Option<String>,
    /// Tokens of everything the model reads (text, token ids, images, tool
    /// schemas), including chat framing, by the tokenizer (or its stand-in).
    pub prompt_tokens: u64,
    /// The part of `prompt_tokens` that is certain: counted by a built
    /// tokenizer, token ids, framing. The rest is an over-estimate.
    pub sure_tokens: u64,
    /// Characters (Unicode scalar values) of the prompt's text, as OpenAI's
    /// admission estimate reads them; token ids count 4 each, images their
    /// token constant × 4.
    pub prompt_chars: u64,
    /// Tokens of chat framing (per message and to prime the reply), part of
    /// `prompt_tokens`; the character estimate adds them too.
    pub framing_tokens: u64,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, if the
    /// caller set one (`-1`, "no limit" to some upstreams, reads as unset).
    pub max_tokens: Option<u32>,
    /// `n`: how many completions are generated.
    pub n: u32,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage`, when the caller set it.
    pub include_usage: Option<bool>,
    /// The endpoint produces no completion tokens (embeddings, moderations).
    pub input_only: bool,
    /// `user`: the caller's id for its own end user (OpenAI's field).
    pub user: Option<String>,
    /// An object the request names in its body (`previous_response_id`,
    /// `input_file_id`, `training_file`, `file_id`): it goes to the key
    /// that created it (`routing::affinity`).
    pub refers_to: Option<String>,
}

/// Characters per token in OpenAI's admission estimate of a prompt ("about
/// 4 characters of English a token", OpenAI's rate-limit guide).
pub const CHARS_PER_TOKEN: u64 = 4;

impl PromptShape {
    /// Completion tokens the upstream reserves: `max_tokens` (or the default) × n.
    pub fn completion_budget(&self, default_max_tokens: u32) -> u64 {
        if self.input_only {
            return 0;
        }
        u64::from(self.max_tokens.unwrap_or(default_max_tokens)) * u64::from(self.n.max(1))
    }

    /// The prompt as the upstream's admission charge counts it: its character
    /// estimate, never below the tokenizer's count.
    pub fn prompt_charge(&self) -> u64 {
        self.prompt_tokens.max(self.prompt_chars.div_ceil(CHARS_PER_TOKEN) + self.framing_tokens)
    }

    /// Prompt plus the completion budget, as the upstream's TPM counts a
    /// request at admission (Azure's wording: a sum; see `scheduler::charge`).
    pub fn request_tokens(&self, default_max_tokens: u32) -> u64 {
        self.prompt_charge() + self.completion_budget(default_max_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_pick_their_tokenizer() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("o3-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("openai/gpt-4.1"), Encoding::O200k);
        assert_eq!(Encoding::for_model("gpt-3.5-turbo"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("text-embedding-3-small"), Encoding::Cl100k);
    }

    #[test]
    fn counts_real_tokens() {
        Encoding::O200k.load();
        Encoding::Cl100k.load();
        // "hello world" is two tokens in both encodings.
        assert_eq!(Encoding::O200k.count("hello world"), 2);
        assert_eq!(Encoding::Cl100k.count("hello world"), 2);
        assert_eq!(Encoding::O200k.count(""), 0);
        assert_eq!(Counter::Rough.count("hello world!"), 3);
        let shape = PromptShape { prompt_tokens: 100, max_tokens: Some(50), n: 2, ..PromptShape::default() };
        assert_eq!(shape.request_tokens(1024), 200);
        let emb = PromptShape { prompt_tokens: 10, input_only: true, ..PromptShape::default() };
        assert_eq!(emb.request_tokens(1024), 10);
    }
}
