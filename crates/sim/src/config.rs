//! Configuration types: what the simulated upstream looks like (keys, limits, faults, pacing).
//!
//! Everything here is plain data with serde derives so the same shapes can be posted to the
//! control plane (`/_sim/keys`, `/_sim/faults`) or loaded from a file by a benchmark harness.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole simulator configuration; fed to [`crate::Simulator::start`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Where to listen; `None` binds `127.0.0.1:0` so parallel tests never collide.
    pub listen: Option<SocketAddr>,
    /// Mount point of the OpenAI routes; empty means `/v1`. Lets tests check that the
    /// gateway joins base-URL paths correctly (e.g. relays that use `/proxy/v1`).
    pub path_prefix: String,
    /// Keys known at start.
    pub keys: Vec<SimKey>,
    /// Treat unknown keys as valid and unlimited, so load benchmarks need no key list.
    pub accept_any_key: bool,
    /// USD per million prompt and completion tokens, charged to keys with a
    /// balance.
    pub price: (f64, f64),
    /// The models this upstream serves; others are answered 404
    /// `model_not_found` (as OpenAI does for a model a project cannot use).
    /// Empty: every model is served and `/models` lists a fixed set.
    pub models: Vec<String>,
    /// Delay before the answer's headers (models upstream think time).
    pub latency: Duration,
    /// Number of content chunks in a stream; 0 means 5.
    pub stream_chunks: usize,
    /// Pause before every content chunk but the first, so streams really spread over time.
    pub chunk_interval: Duration,
    /// Send the `x-ratelimit-*` headers; off models providers that send none.
    pub send_rate_limit_headers: bool,
    /// How a request is charged against TPM at admission (never given back
    /// inside the window, whatever the answer uses).
    pub charge: ChargeRule,
    /// Injected failures.
    pub faults: Faults,
    /// How streams end (the Responses API's terminal event, `[DONE]` or not).
    pub stream_ends: StreamEnds,
    /// Azure OpenAI's shape: the key only in `api-key`; routes at
    /// `/openai/deployments/{deployment}/…` and `/openai/…` (both needing
    /// an `api-version` query) and `/openai/v1/…`; every key counted as
    /// [`LimitMode::Azure`]; only `x-ratelimit-remaining-*` headers; 429s
    /// in Azure's words with `retry-after` and `retry-after-ms`.
    pub azure: bool,
}

/// How the admission charge combines the prompt estimate and the completion
/// budget (`max_tokens` × `n`). OpenAI's rate-limit guide words it as the
/// larger of the two; Azure's quota documentation as their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeRule {
    /// Prompt estimate plus `max_tokens` × `n`.
    #[default]
    Sum,
    /// The larger of the prompt estimate and `max_tokens` × `n`.
    Max,
}

impl Default for SimConfig {
    /// Written by hand because rate-limit headers must be on unless asked otherwise,
    /// which a derived `Default` (false) would get wrong.
    fn default() -> Self {
        SimConfig {
            listen: None,
            path_prefix: String::new(),
            keys: Vec::new(),
            accept_any_key: false,
            models: Vec::new(),
            price: (1.0, 2.0),
            latency: Duration::ZERO,
            stream_chunks: 0,
            chunk_interval: Duration::ZERO,
            send_rate_limit_headers: true,
            charge: ChargeRule::default(),
            faults: Faults::default(),
            stream_ends: StreamEnds::default(),
            azure: false,
        }
    }
}

/// One API key the simulator knows, with its limits and account state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimKey {
    pub key: String,
    /// Requests per minute; `None` means unlimited (and no request headers).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute; `None` means unlimited (and no token headers).
    #[serde(default)]
    pub tpm: Option<u32>,
    #[serde(default)]
    pub mode: LimitMode,
    #[serde(default)]
    pub state: KeyState,
    /// Credit left, in micro-USD, as OpenRouter tells it (`GET /key`); each
    /// answer's tokens are charged at `SimConfig::price`, and a key at zero
    /// gets OpenRouter's 402. `None`: no balance (an unlimited key).
    #[serde(default)]
    pub balance_micros: Option<u64>,
}

impl SimKey {
    /// An active key with no limits.
    pub fn new(key: impl Into<String>) -> Self {
        SimKey {
            key: key.into(),
            rpm: None,
            tpm: None,
            mode: LimitMode::default(),
            state: KeyState::default(),
            balance_micros: None,
        }
    }

    /// With `micros` of credit left (see [`SimKey::balance_micros`]).
    pub fn balance(mut self, micros: u64) -> Self {
        self.balance_micros = Some(micros);
        self
    }
    pub fn rpm(mut self, n: u32) -> Self {
        self.rpm = Some(n);
        self
    }
    pub fn tpm(mut self, n: u32) -> Self {
        self.tpm = Some(n);
        self
    }
    pub fn mode(mut self, m: LimitMode) -> Self {
        self.mode = m;
        self
    }
    pub fn state(mut self, s: KeyState) -> Self {
        self.state = s;
        self
    }
}

/// How a key's per-minute budget replenishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Continuous refill at limit/60 per second, as OpenAI documents.
    #[default]
    TokenBucket,
    /// Count of what was admitted in the last 60 s; some providers behave like this, and it
    /// makes bursts after a cool-down behave differently, which a gateway must survive.
    RollingWindow,
    /// As Azure OpenAI counts a deployment: requests over 10 s spans, at
    /// most the RPM's share of one (RPM ÷ 6, at least one), tokens over a
    /// rolling 60 s; its quota guide says the rate is evaluated "over a
    /// small period of time, typically 1 or 10 seconds".
    Azure,
}

/// Account state of a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    #[default]
    Active,
    /// Revoked or wrong: 401 `invalid_api_key`.
    Invalid,
    /// Balance spent: 429 `insufficient_quota`.
    InsufficientQuota,
}

/// Injected failures; rates are fractions in `0.0..=1.0` drawn per request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fraction answered 500 `server_error`.
    pub error_500_rate: f64,
    /// Fraction whose connection is closed without any answer.
    pub reset_rate: f64,
    /// Fraction that wait `hang_for` before being answered normally.
    pub hang_rate: f64,
    pub hang_for: Duration,
    /// Streams: after N content chunks send an error event and end without `[DONE]`.
    pub fail_stream_after_chunks: Option<usize>,
    /// Answer every request with this status and raw JSON body (tests error pass-through).
    pub status_override: Option<(u16, String)>,
}

/// How streams end: the variants real upstreams and relays produce, all of
/// them proper ends except `cut_after_events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamEnds {
    /// The last event of a Responses API stream.
    pub responses_terminal: ResponsesTerminal,
    /// Send `data: [DONE]` after the Responses terminal event, as some relays do.
    pub responses_done: bool,
    /// Chat and completions streams close right after their last chunk (the
    /// `finish_reason` one, or the usage chunk) without `data: [DONE]`, as
    /// some OpenAI-compatible servers do.
    pub chat_without_done: bool,
    /// Close every stream cleanly after this many events, before its end: a
    /// stream that really broke.
    pub cut_after_events: Option<usize>,
}

/// The terminal event of a Responses API stream (and the `status` of a
/// non-streamed response).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponsesTerminal {
    /// `response.completed`.
    #[default]
    Completed,
    /// `response.incomplete`, reason `max_output_tokens`.
    Incomplete,
    /// `response.failed` with a `server_error`; usage is still reported.
    Failed,
    /// An `error` event and no response event after it.
    Error,
}
