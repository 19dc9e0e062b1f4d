//! `[[upstreams]]` and `[model_aliases]`: the APIs keys belong to, which
//! models each serves, and names that stand for other models.
//!
//! Without `[[upstreams]]`, the single `upstream` setting (with `proxy`,
//! `ca_file` and `stream_usage`) is one upstream named `default` that serves
//! every model, so a config written before upstreams existed works unchanged.
//! The first upstream listed is the default one: keys added without
//! `--upstream` belong to it, and requests naming no model go to it.
//!
//! Settings that an upstream may override follow one order everywhere:
//! per-model (`[models]`) over per-upstream over global.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::models::{glob_match, TimeoutsOverride};
use super::{Config, ConfigError};

/// The name the single legacy `upstream` setting gets as an upstream.
pub const LEGACY_UPSTREAM_NAME: &str = "default";

/// Which wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// OpenAI itself (or a relay in front of it).
    #[default]
    Openai,
    /// Azure OpenAI: the key goes in `api-key`; with `api_version`, calls
    /// go to deployment paths (`/openai/deployments/{deployment}/…?api-version=…`),
    /// without it to the v1 API under `base_url` (`…/openai/v1/`) with the
    /// deployment as the body's model. Requests are counted over 10 s
    /// spans, and a key with only a TPM gets 6 RPM per 1,000 TPM, as Azure
    /// counts them (its quota guide).
    Azure,
    /// Any API on OpenAI's wire: DeepSeek, Moonshot, DashScope's compatible
    /// mode, SiliconFlow, OpenRouter, vLLM, Ollama. Nothing is assumed
    /// beyond the wire format.
    OpenaiCompatible,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Openai => "openai",
            UpstreamKind::OpenaiCompatible => "openai_compatible",
            UpstreamKind::Azure => "azure",
        }
    }
}

/// A header value sent upstream that may be a secret (a relay's token):
/// never shown by `Debug`, masked by `config show`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct HeaderSecret(pub String);

impl std::fmt::Debug for HeaderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Limits for this upstream's keys that carry none of their own; each unset
/// one falls back to the global `[limits]`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique; letters, digits, `-`, `_` and `.` (it appears in URLs and on
    /// the command line). Keys belong to one upstream by this name.
    pub name: String,
    #[serde(default)]
    pub kind: UpstreamKind,
    /// For `openai_compatible`: which provider it is (`deepseek`,
    /// `moonshot`, `dashscope`, `siliconflow`, `openrouter`, `vllm`,
    /// `ollama`, …); shown beside the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Base URL including the version prefix; a relay's own path prefix works
    /// (`https://relay.example.com/proxy/v1`).
    pub base_url: String,
    /// Exact model names and globs (`*`, `?`) this upstream serves.
    #[serde(default = "every_model")]
    pub models: Vec<String>,
    /// Higher is tried first; default 0.
    #[serde(default)]
    pub priority: i32,
    /// Share among upstreams of equal priority (smooth weighted
    /// round-robin); default 1, at least 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Outbound proxy (`http://`, `https://`, `socks5://`, `socks5h://`);
    /// unset: the global `proxy`, else `HTTPS_PROXY`/`NO_PROXY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Extra headers sent with every request (a relay's token); values are
    /// masked wherever the config is shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderSecret>,
    /// Whether it accepts `stream_options.include_usage`; unset: the global
    /// `stream_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_usage: Option<bool>,
    /// A PEM file of extra CAs to trust; unset: the global `ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Limits for its keys that carry none of their own, over `[limits]`.
    #[serde(default)]
    pub limits: UpstreamLimits,
    /// Timeouts over the global `[timeouts]` (a model's own win over these).
    #[serde(default)]
    pub timeouts: TimeoutsOverride,
    /// How often each key's balance is read, for providers that tell it
    /// (`openrouter`, `deepseek`, `moonshot`, `siliconflow`; see
    /// `upstream::providers`); default 5 minutes.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub balance_interval: Option<std::time::Duration>,
    /// For `azure`: the `api-version` query of deployment paths
    /// (`2024-10-21`); unset: the v1 API, whose `base_url` ends in `/openai/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// For `azure`: model name or glob → deployment name (the most specific
    /// pattern wins); a model matching none is its own deployment name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
}

/// How often balances are read when `balance_interval` is not set.
pub const BALANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

fn every_model() -> Vec<String> {
    vec!["*".into()]
}

fn one() -> u32 {
    1
}

impl UpstreamConfig {
    /// Whether one of its patterns matches `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|p| glob_match(p, model))
    }
}

/// The deployment `deployments` (model name or glob → deployment) gives
/// `model`: the most specific pattern matching it, else the model's own name.
pub fn deployment_for<'a>(deployments: &'a BTreeMap<String, String>, model: &'a str) -> &'a str {
    let mut best = super::models::Best::default();
    for (pattern, deployment) in deployments {
        best.offer(model, 0, pattern, deployment.as_str());
    }
    best.into_value().unwrap_or(model)
}

/// Where an alias sends a request: an upstream (any that serves `model`
/// when unset) and the model name written into the body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AliasTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub model: String,
}

/// One target, or several tried in order (as LiteLLM's model groups).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AliasTargets {
    One(AliasTarget),
    Many(Vec<AliasTarget>),
}

impl AliasTargets {
    pub fn targets(&self) -> &[AliasTarget] {
        match self {
            AliasTargets::One(t) => std::slice::from_ref(t),
            AliasTargets::Many(ts) => ts,
        }
    }
}

fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid { setting: "upstreams", reason }
}

impl Config {
    /// The upstreams in force, the default first: `[[upstreams]]`, or the
    /// legacy single `upstream` as one named [`LEGACY_UPSTREAM_NAME`].
    pub fn upstream_list(&self) -> Vec<UpstreamConfig> {
        if !self.upstreams.is_empty() {
            return self.upstreams.clone();
        }
        vec![UpstreamConfig {
            name: LEGACY_UPSTREAM_NAME.into(),
            kind: UpstreamKind::Openai,
            provider: None,
            base_url: self.upstream.clone(),
            models: every_model(),
            priority: 0,
            weight: 1,
            proxy: None,
            headers: BTreeMap::new(),
            stream_usage: None,
            ca_file: None,
            limits: UpstreamLimits::default(),
            timeouts: TimeoutsOverride::default(),
            balance_interval: None,
            api_version: None,
            deployments: BTreeMap::new(),
        }]
    }

    /// The default upstream's name (the first listed).
    pub fn default_upstream(&self) -> String {
        self.upstreams.first().map_or_else(|| LEGACY_UPSTREAM_NAME.to_owned(), |u| u.name.clone())
    }

    /// Checks `[[upstreams]]` and `[model_aliases]`, naming the entry at fault.
    pub(super) fn validate_upstreams(&self) -> Result<(), ConfigError> {
        if !self.upstreams.is_empty() && self.upstream != Config::default().upstream {
            return Err(invalid(
                "set either the single `upstream` or `[[upstreams]]`, not both (move its URL into an \
                 [[upstreams]] entry's base_url)"
                    .into(),
            ));
        }
        let mut names = BTreeSet::new();
        for u in &self.upstreams {
            let name = &u.name;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(invalid(format!("name {name:?} must be letters, digits, `-`, `_` or `.`, and not empty")));
            }
            if !names.insert(name.as_str()) {
                return Err(invalid(format!("the name {name:?} is used twice")));
            }
            check_base_url(&u.base_url).map_err(|why| invalid(format!("{name}: base_url {why}")))?;
            if let Some(proxy) = &u.proxy {
                reqwest::Proxy::all(proxy).map_err(|e| invalid(format!("{name}: proxy: {e}")))?;
            }
            if u.weight == 0 {
                return Err(invalid(format!("{name}: weight must be at least 1")));
            }
            if u.models.is_empty() || u.models.iter().any(String::is_empty) {
                return Err(invalid(format!("{name}: models must list at least one non-empty name or glob")));
            }
            for (header, value) in &u.headers {
                let ok_name = http::HeaderName::try_from(header.as_str()).is_ok();
                let ok_value = http::HeaderValue::try_from(value.0.as_str()).is_ok();
                if !ok_name || !ok_value {
                    return Err(invalid(format!("{name}: header {header:?} is not a valid HTTP header")));
                }
                if header.eq_ignore_ascii_case("authorization") || header.eq_ignore_ascii_case("host") {
                    return Err(invalid(format!("{name}: header {header:?} is set by keypool itself")));
                }
            }
            if let Some((setting, _)) = u.timeouts.set_values().find(|(_, d)| d.is_zero()) {
                return Err(invalid(format!("{name}: timeouts.{setting} must be > 0")));
            }
            if u.balance_interval.is_some_and(|d| d < std::time::Duration::from_secs(1)) {
                return Err(invalid(format!("{name}: balance_interval must be at least 1s")));
            }
            if u.kind != UpstreamKind::Azure && (u.api_version.is_some() || !u.deployments.is_empty()) {
                return Err(invalid(format!("{name}: api_version and deployments are for kind = \"azure\" only")));
            }
            if let Some(v) = &u.api_version {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                    return Err(invalid(format!("{name}: api_version {v:?} must look like 2024-10-21")));
                }
            }
            if let Some((model, d)) = u.deployments.iter().find(|(m, d)| {
                m.is_empty() || d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            }) {
                return Err(invalid(format!(
                    "{name}: deployments: {model:?} = {d:?}: a deployment name is letters, digits, `-`, `_` or `.`"
                )));
            }
            if u.kind == UpstreamKind::Azure && u.headers.keys().any(|h| h.eq_ignore_ascii_case("api-key")) {
                return Err(invalid(format!("{name}: header \"api-key\" is set by keypool itself (the key)")));
            }
            let l = &u.limits;
            if [l.rpm, l.tpm, l.rpd, l.max_inflight].contains(&Some(0)) {
                return Err(invalid(format!("{name}: limits must be > 0 when set")));
            }
        }
        let listed = self.upstream_list();
        for (alias, targets) in &self.model_aliases {
            let setting = "model_aliases";
            if alias.is_empty() {
                return Err(ConfigError::Invalid { setting, reason: "an alias must not be empty".into() });
            }
            if targets.targets().is_empty() {
                return Err(ConfigError::Invalid { setting, reason: format!("{alias:?} has no target") });
            }
            for t in targets.targets() {
                if t.model.is_empty() {
                    return Err(ConfigError::Invalid {
                        setting,
                        reason: format!("{alias:?}: a target's model is empty"),
                    });
                }
                if let Some(up) = &t.upstream {
                    let Some(u) = listed.iter().find(|u| &u.name == up) else {
                        return Err(ConfigError::Invalid {
                            setting,
                            reason: format!("{alias:?} names the upstream {up:?}, which is not configured"),
                        });
                    };
                    if !u.serves(&t.model) {
                        return Err(ConfigError::Invalid {
                            setting,
                            reason: format!("{alias:?}: the upstream {up:?} does not serve {:?} (its models)", t.model),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Aliases that hide a model an upstream names exactly (the alias wins),
    /// and providers keypool knows nothing particular of (a typo turns
    /// balance reads off).
    pub(super) fn alias_warnings(&self) -> Vec<String> {
        let listed = self.upstream_list();
        let mut out: Vec<String> = listed
            .iter()
            .filter_map(|u| {
                let p = u.provider.as_deref()?;
                let known = crate::upstream::providers::KNOWN.contains(&p)
                    || ["openai", "azure", "dashscope", "vllm", "ollama", "zhipu", "groq", "together", "xai"]
                        .contains(&p);
                (!known).then(|| {
                    format!(
                        "upstream {}: provider {p:?} is not one keypool knows (known: {}); no balance is read for it",
                        u.name,
                        crate::upstream::providers::KNOWN.join(", ")
                    )
                })
            })
            .collect();
        out.extend(self.model_aliases.keys().filter_map(|alias| {
            let hidden: Vec<&str> =
                listed.iter().filter(|u| u.models.iter().any(|m| m == alias)).map(|u| u.name.as_str()).collect();
            (!hidden.is_empty()).then(|| {
                format!(
                    "the alias {alias:?} is also a model of upstream {}: requests for it follow the alias",
                    hidden.join(", ")
                )
            })
        }));
        out
    }
}

/// Why `url` cannot be an upstream's base URL, if it cannot.
pub(super) fn check_base_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{e} (expected e.g. https://api.openai.com/v1)"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err("must be an http:// or https:// URL".into());
    }
    if parsed.query().is_some() {
        return Err("must not carry a query string".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(toml: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(toml).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_legacy_setting_is_one_upstream_serving_every_model() {
        let config = parse(r#"upstream = "https://relay.example.com/p/v1""#).unwrap();
        let list = config.upstream_list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "default");
        assert_eq!(list[0].base_url, "https://relay.example.com/p/v1");
        assert!(list[0].serves("anything"));
        assert_eq!(config.default_upstream(), "default");
    }

    #[test]
    fn upstreams_parse_with_defaults_and_the_first_is_the_default() {
        let config = parse(
            r#"
            [[upstreams]]
            name = "openai"
            base_url = "https://api.openai.com/v1"
            models = ["gpt-4o*"]
            priority = 10
            [[upstreams]]
            name = "deepseek"
            kind = "openai_compatible"
            provider = "deepseek"
            base_url = "https://api.deepseek.com/v1"
            headers = { "X-Relay-Token" = "secret-value" }
            [model_aliases]
            "gpt-4o-cheap" = { upstream = "deepseek", model = "deepseek-chat" }
            "smart" = [{ upstream = "openai", model = "gpt-4o" }, { model = "deepseek-chat" }]
            "#,
        )
        .unwrap();
        assert_eq!(config.default_upstream(), "openai");
        let ds = &config.upstreams[1];
        assert_eq!((ds.weight, ds.priority, ds.models.clone()), (1, 0, vec!["*".to_owned()]));
        assert!(!format!("{config:?}").contains("secret-value"), "header values never print");
        assert_eq!(config.model_aliases["smart"].targets().len(), 2);
    }

    #[test]
    fn mistakes_are_refused_naming_the_entry() {
        let cases = [
            (
                "upstream = \"https://x.example/v1\"\n[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"",
                "not both",
            ),
            ("[[upstreams]]\nname = \"a b\"\nbase_url = \"https://a.example/v1\"", "letters"),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\n[[upstreams]]\nname = \"a\"\nbase_url = \"https://b.example/v1\"",
                "used twice",
            ),
            ("[[upstreams]]\nname = \"a\"\nbase_url = \"ftp://a.example/v1\"", "a: base_url"),
            ("[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\nweight = 0", "weight"),
            ("[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\nmodels = []", "models"),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\nheaders = { Authorization = \"x\" }",
                "set by keypool",
            ),
            ("[model_aliases]\n\"x\" = { upstream = \"nope\", model = \"y\" }", "not configured"),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\napi_version = \"2024-10-21\"",
                "kind = \"azure\" only",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nkind = \"azure\"\nbase_url = \"https://a.example\"\ndeployments = { \"gpt-4o\" = \"x/../y\" }",
                "a deployment name",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nkind = \"azure\"\nbase_url = \"https://a.example\"\napi_version = \"2024&x=1\"",
                "api_version",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nkind = \"azure\"\nbase_url = \"https://a.example\"\nheaders = { \"API-Key\" = \"x\" }",
                "set by keypool",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\nmodels = [\"gpt-*\"]\n[model_aliases]\n\"x\" = { upstream = \"a\", model = \"claude\" }",
                "does not serve",
            ),
        ];
        for (toml, expected) in cases {
            let err = parse(toml).expect_err(toml);
            assert!(err.contains(expected), "{toml}: {err}");
        }
    }

    #[test]
    fn an_alias_hiding_a_model_warns() {
        let config = parse(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"https://a.example/v1\"\nmodels = [\"gpt-4o\", \"ds\"]\n\
             [model_aliases]\n\"gpt-4o\" = { upstream = \"a\", model = \"ds\" }",
        )
        .unwrap();
        let warnings = config.alias_warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("\"gpt-4o\""), "{warnings:?}");
    }
}
