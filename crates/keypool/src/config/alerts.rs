//! The `[alerts]` section: webhooks told when a key turns invalid or
//! exhausted, a key's or a gateway token's spend passes a share of its
//! budget, or no key can serve (and when keys can again). Sent by [`crate::alerts`], off the
//! request path.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an alert is about; also the names `events = [...]` filters by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// The upstream refused a key (401/403 with a key's code): it is wrong or revoked.
    KeyInvalid,
    /// A key's balance is spent (`insufficient_quota`).
    KeyExhausted,
    /// A key's spend passed one of `budget_thresholds` of its budget.
    BudgetThreshold,
    /// A gateway token's spend in its budget period passed one of
    /// `budget_thresholds` of its budget.
    TokenBudget,
    /// No key can serve: every one is invalid, exhausted, disabled, expired or over budget.
    NoUsableKey,
    /// Keys can serve again after a `no_usable_key`.
    KeysUsable,
}

impl AlertEvent {
    /// The event's name as configured and sent (`key_invalid`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::KeyInvalid => "key_invalid",
            AlertEvent::KeyExhausted => "key_exhausted",
            AlertEvent::BudgetThreshold => "budget_threshold",
            AlertEvent::TokenBudget => "token_budget",
            AlertEvent::NoUsableKey => "no_usable_key",
            AlertEvent::KeysUsable => "keys_usable",
        }
    }
}

/// The JSON body a webhook expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"event","key_id","label","state","reason","time","text",…}`.
    #[default]
    Generic,
    /// Slack's incoming webhook: `{"text": …}`.
    Slack,
    /// Feishu's (Lark's) bot: `{"msg_type":"text","content":{"text":…}}`.
    Feishu,
    /// DingTalk's robot: `{"msgtype":"text","text":{"content":…}}`.
    Dingtalk,
}

/// A webhook's URL. It often carries a secret token (in its path or query),
/// so `Debug`, `Serialize` and logs show only its scheme and host.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    /// The URL to send to; never to print.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }

    /// What may be shown: `https://hooks.slack.com/…`.
    pub fn masked(&self) -> String {
        format!("{}://{}/…", self.0.scheme(), self.0.host_str().unwrap_or_default())
    }
}

impl TryFrom<&str> for WebhookUrl {
    type Error = String;
    fn try_from(s: &str) -> Result<WebhookUrl, String> {
        let url = reqwest::Url::parse(s).map_err(|e| format!("alerts.webhooks: url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("alerts.webhooks: url must be an http:// or https:// URL with a host".into());
        }
        Ok(WebhookUrl(url))
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookUrl({})", self.masked())
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WebhookUrl, D::Error> {
        let s = String::deserialize(d)?;
        WebhookUrl::try_from(s.as_str()).map_err(serde::de::Error::custom)
    }
}

/// One webhook (`[[alerts.webhooks]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where the JSON is POSTed (http or https).
    pub url: WebhookUrl,
    #[serde(default)]
    pub format: WebhookFormat,
    /// The events sent to this webhook; unset: all of them.
    #[serde(default)]
    pub events: Option<Vec<AlertEvent>>,
}

impl WebhookConfig {
    /// Whether this webhook wants `event`.
    pub fn wants(&self, event: AlertEvent) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&event))
    }
}

/// Alerts (`[alerts]`). With no webhook nothing is watched or sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// Shares of a key's budget (`budget_micros`), and of a gateway
    /// token's budget in its period, whose passing is told: each a
    /// fraction > 0 (`1.0`: the budget is spent).
    #[serde(deserialize_with = "thresholds")]
    pub budget_thresholds: Vec<f64>,
    /// The same event about the same key is sent at most once per this.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// At most this many alerts a minute in all; the ones past it are
    /// counted and the count goes with the next alert sent.
    pub max_per_minute: u32,
    /// How often the keys' states are compared with the last look.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Longest one POST may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Further tries of a POST that failed (no answer, or not 2xx), a second apart.
    pub retries: u32,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            webhooks: Vec::new(),
            budget_thresholds: vec![0.8, 1.0],
            min_interval: Duration::from_secs(300),
            max_per_minute: 20,
            check_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            retries: 2,
        }
    }
}

fn thresholds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let mut v = Vec::<f64>::deserialize(d)?;
    if v.iter().any(|t| !t.is_finite() || *t <= 0.0) {
        return Err(serde::de::Error::custom("alerts.budget_thresholds: each must be a fraction > 0, e.g. 0.8"));
    }
    v.sort_by(f64::total_cmp);
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_webhook_url_never_shows_its_secret() {
        let u = WebhookUrl::try_from("https://hooks.example.com/services/T0/SECRET?token=abc").unwrap();
        assert_eq!(u.masked(), "https://hooks.example.com/…");
        assert!(!format!("{u:?}").contains("SECRET"));
        assert!(WebhookUrl::try_from("ftp://x/y").is_err());
        let c: AlertsConfig = toml::from_str(
            "budget_thresholds = [1.0, 0.5]\n[[webhooks]]\nurl = \"https://h.example/x\"\nformat = \"feishu\"\nevents = [\"key_invalid\"]\n",
        )
        .unwrap();
        assert_eq!(c.budget_thresholds, vec![0.5, 1.0]);
        assert!(c.webhooks[0].wants(AlertEvent::KeyInvalid) && !c.webhooks[0].wants(AlertEvent::NoUsableKey));
        assert!(toml::from_str::<AlertsConfig>("budget_thresholds = [0.0]").is_err());
        assert!(
            toml::from_str::<AlertsConfig>("[[webhooks]]\nurl = \"https://h.example\"\nformat = \"teams\"").is_err()
        );
    }
}
