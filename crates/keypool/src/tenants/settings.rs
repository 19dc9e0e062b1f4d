//! What a gateway token may use and spend: its settings as stored, and the
//! parsing of each from the forms the CLI, the admin API and the dashboard
//! accept.

use std::net::IpAddr;

use crate::config::models::glob_match as glob_matches;
use crate::config::Cidr;

/// The period a token's budget covers. Days and months begin at midnight
/// in the configured `time_zone`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// The budget covers the token's whole life.
    #[default]
    Total,
    Daily,
    Monthly,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Total => "total",
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
        }
    }

    /// `total`, `daily` or `monthly`; an error naming the choices otherwise.
    pub fn parse(s: &str) -> Result<BudgetPeriod, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "total" => Ok(BudgetPeriod::Total),
            "daily" | "day" => Ok(BudgetPeriod::Daily),
            "monthly" | "month" => Ok(BudgetPeriod::Monthly),
            other => Err(format!("{other:?} is not a budget period (total, daily or monthly)")),
        }
    }
}

/// A gateway token's settings (the `tokens` table's tenant columns).
/// `None` is "no limit" for every limit; empty lists are not stored (`None`
/// is "any model", "any network").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// Model globs the token may use (`gpt-4o*`); `None`: every model.
    pub models: Option<Vec<String>>,
    /// Networks the token may be used from (CIDRs, or single addresses);
    /// `None`: anywhere.
    pub networks: Option<Vec<Cidr>>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt plus the completion allowance at admission,
    /// what was used once the answer ends).
    pub tpm: Option<u64>,
    /// Requests per day (days begin in the configured `time_zone`).
    pub rpd: Option<u64>,
    /// Most requests in flight at once.
    pub max_inflight: Option<u64>,
    /// Spend allowed per `budget_period`, micro-USD.
    pub budget_micros: Option<u64>,
    pub budget_period: BudgetPeriod,
    /// Unix seconds; `None`: never.
    pub expires_at: Option<i64>,
    /// Place in the wait queue: higher is served first.
    pub priority: i64,
    pub enabled: bool,
}

impl Default for TokenSettings {
    fn default() -> TokenSettings {
        TokenSettings {
            models: None,
            networks: None,
            rpm: None,
            tpm: None,
            rpd: None,
            max_inflight: None,
            budget_micros: None,
            budget_period: BudgetPeriod::Total,
            expires_at: None,
            priority: 0,
            enabled: true,
        }
    }
}

impl TokenSettings {
    /// Whether the token may use `model` (the name the caller sent) when it
    /// is served as `target` (an alias's target; the same name otherwise).
    /// Either name matching one glob is enough: a token allowed `gpt-4o*`
    /// may use an alias of `gpt-4o-mini`, and one allowed the alias `fast`
    /// may use it whatever it points to.
    pub fn allows_model(&self, model: &str, targets: &[&str]) -> bool {
        match &self.models {
            None => true,
            Some(globs) => globs.iter().any(|g| glob_matches(g, model) || targets.iter().any(|t| glob_matches(g, t))),
        }
    }

    /// Whether a request from `client` may use the token (an unknown
    /// address passes only when no network is set).
    pub fn allows_client(&self, client: Option<IpAddr>) -> bool {
        match (&self.networks, client) {
            (None, _) => true,
            (Some(nets), Some(ip)) => nets.iter().any(|n| n.contains(ip)),
            (Some(_), None) => false,
        }
    }

    /// Whether any limit or budget asks for counting per request (when none
    /// does, admission only checks the token's scope).
    pub fn counts(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.rpd.is_some()
            || self.max_inflight.is_some()
            || self.budget_micros.is_some()
    }

    /// What a request reads of these settings, in 64 bytes.
    pub fn limits(&self) -> Limits {
        let none = u64::MAX;
        Limits {
            rpm: self.rpm.unwrap_or(none),
            tpm: self.tpm.unwrap_or(none),
            rpd: self.rpd.unwrap_or(none),
            max_inflight: self.max_inflight.unwrap_or(none),
            budget_micros: self.budget_micros.unwrap_or(none),
            expires_at: self.expires_at.unwrap_or(i64::MAX),
            priority: self.priority,
            budget_period: self.budget_period,
            enabled: self.enabled,
            counts: self.counts(),
            listed: self.models.is_some() || self.networks.is_some(),
        }
    }
}

/// What every request of a token reads of its settings, kept with the
/// tenant's counters (see [`crate::tenants::Tenant`]): with a thousand
/// tenants, reading the whole [`TokenSettings`] cost each request two or
/// three cache misses of its own. A missing limit is `u64::MAX`, which no
/// count reaches (the same as no limit); a missing expiry `i64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens per minute.
    pub tpm: u64,
    /// Requests per day.
    pub rpd: u64,
    /// Requests in flight at once.
    pub max_inflight: u64,
    /// Micro-USD per `budget_period`.
    pub budget_micros: u64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Place in the wait queue: higher is served first.
    pub priority: i64,
    pub budget_period: BudgetPeriod,
    pub enabled: bool,
    /// [`TokenSettings::counts`].
    pub counts: bool,
    /// Whether the token has a list of models or of networks (then the
    /// request reads the settings themselves to check them).
    pub listed: bool,
}

impl Limits {
    /// The budget, when there is one.
    pub fn budget(&self) -> Option<u64> {
        (self.budget_micros != u64::MAX).then_some(self.budget_micros)
    }
}

/// A list of model globs from the forms users write: a JSON array, or
/// names separated by commas or spaces. Empty: `None` (every model).
/// Errors name the glob at fault.
pub fn parse_models(s: &str) -> Result<Option<Vec<String>>, String> {
    let items: Vec<String> =
        s.split([',', ' ', '\n', '\t']).map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
    models_from(items)
}

/// Model globs as given in a list; checked as [`parse_models`] checks them.
pub fn models_from(items: Vec<String>) -> Result<Option<Vec<String>>, String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for m in items {
        let m = m.trim().to_owned();
        if m.is_empty() {
            continue;
        }
        if m.len() > 200 || m.chars().any(char::is_control) {
            return Err(format!("{m:?} is not a model name or glob (at most 200 characters, no control characters)"));
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Networks as given (CIDRs or addresses); empty: `None` (anywhere).
pub fn networks_from(items: &[String]) -> Result<Option<Vec<Cidr>>, String> {
    let mut out: Vec<Cidr> = Vec::with_capacity(items.len());
    for s in items.iter().flat_map(|s| s.split([',', ' '])).map(str::trim).filter(|s| !s.is_empty()) {
        let net = Cidr::try_from(s.to_owned())?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn models_match_by_glob_on_the_name_sent_or_the_aliases_target() {
        let s =
            TokenSettings { models: parse_models("gpt-4o*, text-embedding-3-small").unwrap(), ..Default::default() };
        assert!(s.allows_model("gpt-4o", &[]));
        assert!(s.allows_model("gpt-4o-mini", &[]));
        assert!(s.allows_model("text-embedding-3-small", &[]));
        assert!(!s.allows_model("gpt-4.1", &[]));
        assert!(!s.allows_model("o3", &["o3"]));
        assert!(s.allows_model("fast", &["gpt-4o-mini"]), "an alias of an allowed model");
        assert!(TokenSettings::default().allows_model("anything", &[]));
        assert_eq!(parse_models(" , ").unwrap(), None);
        assert!(parse_models("bad\u{7}name").is_err());
    }

    #[test]
    fn networks_hold_the_client_or_refuse_it() {
        let s = TokenSettings {
            networks: networks_from(&["10.0.0.0/8".into(), "192.168.1.7".into()]).unwrap(),
            ..Default::default()
        };
        assert!(s.allows_client(Some("10.1.2.3".parse().unwrap())));
        assert!(s.allows_client(Some("::ffff:10.1.2.3".parse().unwrap())), "an IPv4-mapped address");
        assert!(s.allows_client(Some("192.168.1.7".parse().unwrap())));
        assert!(!s.allows_client(Some("127.0.0.1".parse().unwrap())));
        assert!(!s.allows_client(None));
        assert!(TokenSettings::default().allows_client(None));
        assert!(networks_from(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn periods_parse_in_their_words() {
        for (s, p) in
            [("total", BudgetPeriod::Total), ("Daily", BudgetPeriod::Daily), ("monthly", BudgetPeriod::Monthly)]
        {
            assert_eq!(BudgetPeriod::parse(s).unwrap(), p);
            assert_eq!(BudgetPeriod::parse(p.as_str()).unwrap(), p);
        }
        assert!(BudgetPeriod::parse("weekly").unwrap_err().contains("total, daily or monthly"));
    }
}
