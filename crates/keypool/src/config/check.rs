//! Settings that work but probably do not do what the operator meant: printed
//! at `serve` start and by `keypool config check`, never a refusal to start.

use std::fmt;

use super::models::{builtin_prices, legacy_price_pattern};
use super::{AuthMode, Config};
use crate::scheduler::Strategy;
use crate::store::KeyRecord;

/// What a check needs to know about one stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFacts {
    pub id: i64,
    pub enabled: bool,
    /// Spend allowed, in micro-USD (`keys add --budget`).
    pub budget_micros: Option<u64>,
}

impl From<&KeyRecord> for KeyFacts {
    fn from(k: &KeyRecord) -> KeyFacts {
        KeyFacts { id: k.id, enabled: k.enabled, budget_micros: k.budget_micros }
    }
}

/// One warning: the setting it is about, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub setting: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

fn warn(setting: &str, message: String) -> Warning {
    Warning { setting: setting.to_owned(), message }
}

impl Config {
    /// Warnings about this config; with `keys` (what the store holds), also
    /// about budgets and prices. `None` skips the checks that need the keys.
    pub fn warnings(&self, keys: Option<&[KeyFacts]>) -> Vec<Warning> {
        let mut out: Vec<Warning> = self.env_ignored.iter().map(|n| warn("environment", n.clone())).collect();
        out.extend(self.upstream_warnings());
        out.extend(self.alias_warnings().into_iter().map(|m| warn("model_aliases", m)));
        if self.auth == AuthMode::None && !self.listen.ip().is_loopback() {
            out.push(warn(
                "auth",
                format!(
                    "the gateway-token check is off (auth = \"none\") and keypool listens on {}, which is not a \
                     loopback address: anyone who can reach it spends your keys; listen on 127.0.0.1 or set auth = \"token\"",
                    self.listen
                ),
            ));
        }
        if self.retry.deadline < self.timeouts.first_byte {
            out.push(warn(
                "retry.deadline",
                format!(
                    "{:?} is shorter than timeouts.first_byte ({:?}): an attempt that times out is never retried",
                    self.retry.deadline, self.timeouts.first_byte
                ),
            ));
        }
        // A pattern read as a model name matches itself, so this is what a
        // model named like it gets.
        for (pattern, m) in &self.models {
            let (deadline, first_byte) =
                (self.deadline_for(Some(pattern)), self.timeouts_for(Some(pattern)).first_byte);
            if deadline < first_byte && m.timeouts != super::TimeoutsOverride::default() {
                out.push(warn(
                    &format!("models.\"{pattern}\""),
                    format!(
                        "deadline {deadline:?} is shorter than first_byte {first_byte:?}: an attempt that times out \
                         is never retried; set timeouts.deadline above first_byte"
                    ),
                ));
            }
        }
        if let Some(keys) = keys {
            out.extend(self.budget_warnings(keys));
        }
        out
    }

    /// An upstream URL without a path (`http://host:port`): OpenAI-compatible
    /// APIs live under a version prefix, and keypool appends `chat/completions`
    /// and the like to this URL as it is.
    /// Base URLs without a version path (requests would miss `/v1`).
    fn upstream_warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        for u in self.upstream_list() {
            let Ok(url) = reqwest::Url::parse(&u.base_url) else { continue };
            if !url.path().trim_matches('/').is_empty() {
                continue;
            }
            let shown = super::mask_url_password(&u.base_url);
            let setting =
                if self.upstreams.is_empty() { "upstream".to_owned() } else { format!("upstreams.{}", u.name) };
            out.push(warn(
                &setting,
                format!(
                    "{shown} has no version path, so requests go to {}/chat/completions; OpenAI and most compatible \
                     servers expect {}/v1 (set it if they answer 404)",
                    shown.trim_end_matches('/'),
                    shown.trim_end_matches('/')
                ),
            ));
        }
        out
    }

    fn budget_warnings(&self, keys: &[KeyFacts]) -> Vec<Warning> {
        let mut out = Vec::new();
        let enabled: Vec<&KeyFacts> = keys.iter().filter(|k| k.enabled).collect();
        let budgeted: Vec<i64> = enabled.iter().filter(|k| k.budget_micros.is_some()).map(|k| k.id).collect();
        let unbudgeted: Vec<i64> = enabled.iter().filter(|k| k.budget_micros.is_none()).map(|k| k.id).collect();
        if !budgeted.is_empty() && !self.prices_every_model() {
            let table = builtin_prices();
            out.push(warn(
                "prices",
                format!(
                    "key(s) {} have a --budget, but spend is counted only for models with a price: the built-in \
                     table ({}, taken {}) covers OpenAI's models, and any other model costs them nothing. Price \
                     the models your upstream serves ([models.\"NAME\"] price = {{ input = …, output = … }} in USD \
                     per million tokens) or every other model ([models.\"*\"] price = …)",
                    ids(&budgeted),
                    table.source,
                    table.taken
                ),
            ));
        }
        if self.pool.strategy == Strategy::BalanceEven && !enabled.is_empty() {
            if budgeted.is_empty() {
                out.push(warn(
                    "pool.strategy",
                    "balance_even spends keys' budgets evenly, but no key has one, so it chooses as least_used \
                     does; give keys a budget (keys add --budget USD) or choose another strategy"
                        .into(),
                ));
            } else if !unbudgeted.is_empty() {
                out.push(warn(
                    "pool.strategy",
                    format!(
                        "balance_even: key(s) {} have no budget and are used only when every budgeted key is busy",
                        ids(&unbudgeted)
                    ),
                ));
            }
        }
        out
    }

    /// Whether a configured price covers every model name (a pattern of `*` only).
    fn prices_every_model(&self) -> bool {
        let catch_all = |p: &str| p.chars().all(|c| c == '*');
        self.models.iter().any(|(p, m)| m.price.is_some() && catch_all(p))
            || self.prices.keys().any(|name| catch_all(&legacy_price_pattern(name)))
    }
}

fn ids(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}
