//! Per-model settings (timeouts and prices) chosen by model-name globs.
//!
//! # The one rule for every per-model setting
//!
//! A pattern is a glob over the whole model name: `*` matches any run of
//! characters (none included), `?` exactly one character; every other
//! character matches itself, case-sensitively. Among the patterns that match a
//! model *and set the setting asked for*, the most specific wins:
//!
//! 1. a pattern without `*` or `?` (an exact name) beats any glob;
//! 2. then the pattern with the most literal characters (not `*`, not `?`);
//! 3. then the one with fewer `*`;
//! 4. then the one from the more specific source (`[models]`, then the legacy
//!    `[prices]` table, then keypool's built-in price table);
//! 5. then the pattern that sorts first (byte order), so the result never
//!    depends on the order of the file.
//!
//! Settings are resolved one by one: `[models."o*"] timeouts.first_byte` and
//! `[models."o3-pro"] price` both apply to `o3-pro`.
//!
//! # Precedence
//!
//! Model, then upstream, then global: a setting found for the model wins; else
//! the upstream's own (there is one upstream today, whose settings are the
//! global ones); else the global `[timeouts]` / `[retry]` value.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Price, TimeoutsConfig};

/// Settings for the models whose names match one glob (`[models."gpt-4o*"]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Timeouts for these models; each unset one falls back (see module docs).
    pub timeouts: TimeoutsOverride,
    /// Price of these models, in USD per million tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<ModelPrice>,
}

/// Per-model timeouts; `None` means "not set here". There is no per-model
/// `connect`: a connection belongs to the upstream, whatever model it carries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsOverride {
    /// From sending a request to the answer's first byte.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<Duration>,
    /// Longest silence between two chunks of an answer.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
    /// Whole request, streaming included.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub total: Option<Duration>,
    /// Overrides `retry.deadline`: the whole time before the answer starts.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
}

impl TimeoutsOverride {
    /// Every duration set here, with its name, for validation.
    pub fn set_values(&self) -> impl Iterator<Item = (&'static str, Duration)> {
        [("first_byte", self.first_byte), ("idle", self.idle), ("total", self.total), ("deadline", self.deadline)]
            .into_iter()
            .filter_map(|(name, d)| d.map(|d| (name, d)))
    }
}

/// A model's price in USD per million tokens, with the optional price of
/// cached input (prompt tokens the provider served from its cache).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl ModelPrice {
    /// Input and output prices, as spend is counted today.
    pub fn price(&self) -> Price {
        Price { input: self.input, output: self.output }
    }

    /// What `usage` cost, in micro-USD (a price per million tokens is
    /// micro-USD per token): cached prompt tokens at `cached_input` (the
    /// input price when none is set), the rest of the prompt at `input`, and
    /// every completion token, reasoning ones included, at `output` (OpenAI
    /// bills reasoning tokens as output; openai.com/api/pricing).
    pub fn cost_micros(&self, usage: &keypool_sse::Usage) -> u64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        let cost = fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + usage.completion_tokens as f64 * self.output;
        cost.ceil() as u64
    }

    /// Whether every figure is a non-negative, finite number.
    pub fn is_valid(&self) -> bool {
        [Some(self.input), Some(self.output), self.cached_input]
            .into_iter()
            .flatten()
            .all(|p| p.is_finite() && p >= 0.0)
    }
}

impl From<Price> for ModelPrice {
    fn from(p: Price) -> ModelPrice {
        ModelPrice { input: p.input, output: p.output, cached_input: None }
    }
}

/// Whether `pattern` (a glob of `*` and `?`) matches all of `name`. Works on
/// characters, not bytes, and allocates nothing (it runs on every request).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in `name` it is tried to end next.
    let mut star: Option<(usize, usize)> = None;
    while let Some((nc, nlen)) = char_at(name, ni) {
        match char_at(pattern, pi) {
            Some(('*', plen)) => {
                star = Some((pi + plen, ni));
                pi += plen;
            }
            Some((pc, plen)) if pc == '?' || pc == nc => {
                pi += plen;
                ni += nlen;
            }
            _ => match star {
                Some((after_star, from)) => {
                    let skip = char_at(name, from).map_or(1, |(_, l)| l);
                    pi = after_star;
                    ni = from + skip;
                    star = Some((after_star, from + skip));
                }
                None => return false,
            },
        }
    }
    pattern.get(pi..).is_some_and(|rest| rest.chars().all(|c| c == '*'))
}

fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    s.get(i..)?.chars().next().map(|c| (c, c.len_utf8()))
}

/// How specific a pattern is; a larger value wins (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    /// No wildcard at all.
    pub exact: bool,
    /// Characters that are neither `*` nor `?`.
    pub literals: usize,
    /// `usize::MAX` minus the number of `*`, so that fewer stars rank higher.
    pub fewer_stars: usize,
}

impl Specificity {
    pub fn of(pattern: &str) -> Specificity {
        let (mut stars, mut wild, mut all) = (0, 0, 0);
        for c in pattern.chars() {
            all += 1;
            stars += usize::from(c == '*');
            wild += usize::from(c == '*' || c == '?');
        }
        Specificity { exact: wild == 0, literals: all - wild, fewer_stars: usize::MAX - stars }
    }
}

/// The most specific match so far among patterns offered in turn: sources
/// most specific first (`rank` 0, 1, …), each in byte order of its patterns
/// (a `BTreeMap`'s order), so a full tie keeps the first offered.
#[derive(Debug)]
pub struct Best<T> {
    found: Option<(Specificity, std::cmp::Reverse<usize>, T)>,
}

impl<T> Default for Best<T> {
    fn default() -> Self {
        Best { found: None }
    }
}

impl<T> Best<T> {
    /// Considers `value`, set for `pattern` in source `rank`, for `model`.
    pub fn offer(&mut self, model: &str, rank: usize, pattern: &str, value: T) {
        if !glob_match(pattern, model) {
            return;
        }
        let score = (Specificity::of(pattern), std::cmp::Reverse(rank));
        if self.found.as_ref().is_none_or(|(s, r, _)| score > (*s, *r)) {
            self.found = Some((score.0, score.1, value));
        }
    }

    pub fn into_value(self) -> Option<T> {
        self.found.map(|(_, _, v)| v)
    }
}

/// The value of the most specific pattern matching `model`, from sources
/// given most specific first (a convenience over [`Best`] for tests and
/// callers holding lists; patterns are sorted first, as `Best` expects).
pub fn most_specific<'a, T: 'a, I>(model: &str, sources: I) -> Option<T>
where
    I: IntoIterator<Item = Vec<(&'a str, T)>>,
{
    let mut best = Best::default();
    for (rank, mut source) in sources.into_iter().enumerate() {
        source.sort_by(|a, b| a.0.cmp(b.0));
        for (pattern, value) in source {
            best.offer(model, rank, pattern, value);
        }
    }
    best.into_value()
}

/// A legacy `[prices]` name as a glob: `default` prices every model, any other
/// name without wildcards is a prefix (`gpt-4o` means `gpt-4o*`), as before.
/// Borrowed when it is one already, so a lookup allocates only for prefixes.
pub fn legacy_price_pattern(name: &str) -> std::borrow::Cow<'_, str> {
    if name == "default" {
        "*".into()
    } else if name.contains(['*', '?']) {
        name.into()
    } else {
        format!("{name}*").into()
    }
}

/// The prices built into keypool: `prices.toml` beside this file, with its
/// source and the date it was taken.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BuiltinPrices {
    /// Where the figures come from.
    pub source: String,
    /// When they were taken (YYYY-MM-DD).
    pub taken: String,
    /// USD per million tokens, by model glob.
    pub models: BTreeMap<String, ModelPrice>,
}

const BUILTIN_PRICES: &str = include_str!("prices.toml");

/// The built-in price table, parsed once (a unit test proves it parses).
pub fn builtin_prices() -> &'static BuiltinPrices {
    static TABLE: std::sync::LazyLock<BuiltinPrices> =
        std::sync::LazyLock::new(|| toml::from_str(BUILTIN_PRICES).unwrap_or_default());
    &TABLE
}

impl Config {
    pub(super) fn validate_models(&self) -> Result<(), ConfigError> {
        for (pattern, m) in &self.models {
            if pattern.is_empty() {
                return Err(ConfigError::Invalid {
                    setting: "models",
                    reason: "a model pattern must not be empty".into(),
                });
            }
            if m.price.is_some_and(|p| !p.is_valid()) {
                return Err(ConfigError::Invalid {
                    setting: "models",
                    reason: format!("price of {pattern:?} must be non-negative numbers of USD per million tokens"),
                });
            }
            if let Some((name, _)) = m.timeouts.set_values().find(|(_, d)| d.is_zero()) {
                return Err(ConfigError::Invalid {
                    setting: "models",
                    reason: format!("timeouts.{name} of {pattern:?} must be > 0"),
                });
            }
        }
        Ok(())
    }

    /// The price of `model` in USD per million tokens, by the one per-model
    /// rule (see [the module docs](self)): `[models]`, `[prices]` and the built-in table
    /// compete; the most specific pattern wins; on an equal one the config
    /// file beats the built-in table.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        self.model_price_of(model).map(|p| p.price())
    }

    /// [`Config::price_of`] with the cached-input price when one is known.
    pub fn model_price_of(&self, model: &str) -> Option<ModelPrice> {
        let mut best = Best::default();
        for (pattern, m) in &self.models {
            if let Some(p) = m.price {
                best.offer(model, 0, pattern, p);
            }
        }
        for (name, p) in &self.prices {
            best.offer(model, 1, &legacy_price_pattern(name), ModelPrice::from(*p));
        }
        for (pattern, p) in &builtin_prices().models {
            best.offer(model, 2, pattern, *p);
        }
        best.into_value()
    }

    /// The timeouts for a request for `model` (`None`: the request names no
    /// model): each field from the most specific `[models]` pattern that sets
    /// it, else the global `[timeouts]`.
    pub fn timeouts_for(&self, model: Option<&str>) -> TimeoutsConfig {
        self.timeouts_via(None, model)
    }

    /// [`Config::timeouts_for`] on an upstream with its own `timeouts`: each
    /// field from the model's pattern, else the upstream's, else the global
    /// one (per-model over per-upstream over global).
    pub fn timeouts_via(&self, upstream: Option<&TimeoutsOverride>, model: Option<&str>) -> TimeoutsConfig {
        let global = &self.timeouts;
        let field = |get: fn(&TimeoutsOverride) -> Option<Duration>, fallback: Duration| {
            let fallback = upstream.and_then(get).unwrap_or(fallback);
            let Some(model) = model else { return fallback };
            let mut best = Best::default();
            for (pattern, m) in &self.models {
                if let Some(d) = get(&m.timeouts) {
                    best.offer(model, 0, pattern, d);
                }
            }
            best.into_value().unwrap_or(fallback)
        };
        TimeoutsConfig {
            connect: global.connect,
            first_byte: field(|t| t.first_byte, global.first_byte),
            idle: field(|t| t.idle, global.idle),
            total: field(|t| t.total, global.total),
        }
    }

    /// `retry.deadline` for a request for `model`, overridden per model by
    /// `[models."…"] timeouts.deadline` under the same rule.
    pub fn deadline_for(&self, model: Option<&str>) -> Duration {
        self.deadline_via(None, model)
    }

    /// [`Config::deadline_for`] with an upstream's own `timeouts.deadline`
    /// between the model's and the global one.
    pub fn deadline_via(&self, upstream: Option<&TimeoutsOverride>, model: Option<&str>) -> Duration {
        let fallback = upstream.and_then(|t| t.deadline).unwrap_or(self.retry.deadline);
        let Some(model) = model else { return fallback };
        let mut best = Best::default();
        for (pattern, m) in &self.models {
            if let Some(d) = m.timeouts.deadline {
                best.offer(model, 0, pattern, d);
            }
        }
        best.into_value().unwrap_or(fallback)
    }
}

/// Prices already resolved, by model name: a request then pays one hash
/// look-up instead of a glob match against every pattern (the built-in
/// table alone is some two dozen: about 8.6k instructions a request,
/// callgrind, docs/benchmarks.md). Callers choose model names, so it holds
/// at most [`PriceCache::MODELS`]; past that, names are resolved each time.
/// It belongs to a server's state, beside a configuration that no longer
/// changes; a clone starts empty.
#[derive(Default)]
pub struct PriceCache(RwLock<HashMap<Box<str>, Option<ModelPrice>>>);

impl PriceCache {
    /// Most model names remembered.
    pub const MODELS: usize = 1024;

    /// The price of `model`: remembered, else `config.price_of(model)`.
    pub fn price_of(&self, config: &Config, model: &str) -> Option<Price> {
        self.model_price_of(config, model).map(|p| p.price())
    }

    /// [`PriceCache::price_of`] with the cached-input price.
    pub fn model_price_of(&self, config: &Config, model: &str) -> Option<ModelPrice> {
        self.get_or_resolve(model, || config.model_price_of(model))
    }

    fn get_or_resolve(&self, model: &str, resolve: impl FnOnce() -> Option<ModelPrice>) -> Option<ModelPrice> {
        if let Some(hit) = self.0.read().ok().and_then(|m| m.get(model).copied()) {
            return hit;
        }
        let price = resolve();
        if let Ok(mut m) = self.0.write() {
            if m.len() < Self::MODELS {
                m.insert(model.into(), price);
            }
        }
        price
    }
}

impl Clone for PriceCache {
    fn clone(&self) -> Self {
        PriceCache::default()
    }
}

impl PartialEq for PriceCache {
    /// A cache says nothing about the configuration: every two are equal.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for PriceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PriceCache")
    }
}

#[cfg(test)]
mod price_cache_tests {
    use super::*;

    #[test]
    fn a_cached_price_is_the_resolved_one_and_the_cache_stays_bounded() {
        let config = Config::default();
        let cache = PriceCache::default();
        for model in ["gpt-4o-mini", "gpt-4o", "no-such-model", "gpt-4o-mini"] {
            assert_eq!(cache.price_of(&config, model), config.price_of(model), "{model}");
        }
        let cache = PriceCache::default();
        for i in 0..PriceCache::MODELS + 10 {
            cache.get_or_resolve(&format!("m{i}"), || None);
        }
        assert_eq!(cache.0.read().map(|m| m.len()).unwrap_or(0), PriceCache::MODELS);
        assert_eq!(cache.clone().0.read().map(|m| m.len()).unwrap_or(1), 0, "a clone starts empty");
    }
}
