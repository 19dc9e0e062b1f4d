//! The `[telemetry]` section: how keypool's own log looks, whom it names as
//! a request's caller, how much a flood of refused tokens may write, and
//! where request traces go (OpenTelemetry over OTLP/HTTP).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Settings of keypool's log and trace export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` (one human-readable line per event, without colour codes
    /// unless stderr is a terminal) or `json` (one JSON object per line).
    /// The `--log-format` flag wins over it.
    pub log_format: LogFormat,
    /// Proxies (CIDRs such as `10.0.0.0/8`, or single addresses) whose
    /// `X-Forwarded-For` is believed: when a request comes from one, its
    /// caller is the right-most address in that header that is not itself
    /// a trusted proxy. Empty (the default): the header is ignored and the
    /// caller is the connection's peer.
    pub trusted_proxies: Vec<Cidr>,
    /// Refused gateway tokens logged (at warn) per `auth_failure_log_interval`
    /// at most; the rest are counted and their number logged once the
    /// interval is over (with the next refusal).
    pub auth_failure_log_lines: u32,
    /// The interval `auth_failure_log_lines` applies to.
    #[serde(with = "humantime_serde")]
    pub auth_failure_log_interval: Duration,
    /// Base URL of an OTLP/HTTP collector (`http://127.0.0.1:4318`); traces
    /// go to its `/v1/traces` (a URL already ending so is used as it is).
    /// Unset (the default): no trace is made at all. The standard
    /// `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_BSP_*` variables apply.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported traces.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            log_format: LogFormat::Text,
            trusted_proxies: Vec::new(),
            auth_failure_log_lines: 10,
            auth_failure_log_interval: Duration::from_secs(60),
            otlp_endpoint: None,
            service_name: "keypool".into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at its top level.
    Json,
}

/// An address range in CIDR notation (`192.168.0.0/16`, `::1/128`); a bare
/// address is the range of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Cidr, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| format!("{s:?} is neither a CIDR (10.0.0.0/8) nor an IP address"))
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.0.to_string()
    }
}

impl TelemetryConfig {
    /// Rejects values that cannot work, naming the setting.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.auth_failure_log_interval.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "telemetry.auth_failure_log_interval",
                reason: "must be > 0".into(),
            });
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let url = reqwest::Url::parse(endpoint).map_err(|e| ConfigError::Invalid {
                setting: "telemetry.otlp_endpoint",
                reason: format!("{e} (expected a URL such as http://127.0.0.1:4318)"),
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid {
                    setting: "telemetry.otlp_endpoint",
                    reason: "must be an http:// or https:// URL (OTLP over HTTP)".into(),
                });
            }
            if !cfg!(feature = "otlp") {
                return Err(ConfigError::Invalid {
                    setting: "telemetry.otlp_endpoint",
                    reason: "this keypool was built without the `otlp` feature".into(),
                });
            }
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::Invalid { setting: "telemetry.service_name", reason: "must not be empty".into() });
        }
        Ok(())
    }

    /// The URL traces are posted to: `otlp_endpoint` with `/v1/traces`
    /// appended unless it already ends so.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidrs_and_bare_addresses_are_ranges() {
        let net = Cidr::try_from("10.1.2.3/8".to_owned()).unwrap();
        assert_eq!(String::from(net), "10.0.0.0/8");
        assert!(net.contains("10.200.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::try_from("127.0.0.1".to_owned()).unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()), "IPv4-mapped counts as IPv4");
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::try_from("::1/128".to_owned()).unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::try_from("localhost".to_owned()).is_err());
    }

    #[test]
    fn the_traces_url_is_the_base_with_the_signal_path() {
        let mut t = TelemetryConfig::default();
        assert_eq!(t.traces_url(), None);
        t.otlp_endpoint = Some("http://127.0.0.1:4318/".into());
        assert_eq!(t.traces_url().unwrap(), "http://127.0.0.1:4318/v1/traces");
        t.otlp_endpoint = Some("http://c:4318/v1/traces".into());
        assert_eq!(t.traces_url().unwrap(), "http://c:4318/v1/traces");
    }

    #[test]
    fn the_example_file_shows_the_defaults_and_settings_load_from_toml() {
        use crate::config::{Config, Overrides};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keypool.example.toml");
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.telemetry, TelemetryConfig::default());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(
            &file,
            "[telemetry]\nlog_format = \"json\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
             otlp_endpoint = \"http://127.0.0.1:4318\"\n",
        )
        .unwrap();
        let t = Config::load(Some(&file), &Overrides::default()).unwrap().telemetry;
        assert_eq!(t.log_format, LogFormat::Json);
        assert_eq!(t.trusted_proxies.iter().map(|c| String::from(*c)).collect::<Vec<_>>(), ["10.0.0.0/8", "::1/128"]);
        assert_eq!(t.traces_url().unwrap(), "http://127.0.0.1:4318/v1/traces");
        std::fs::write(&file, "[telemetry]\ntrusted_proxies = [\"proxy.local\"]\n").unwrap();
        let e = Config::load(Some(&file), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("trusted_proxies") && e.contains("proxy.local"), "{e}");
    }

    #[test]
    fn impossible_values_name_their_setting() {
        let t = TelemetryConfig { otlp_endpoint: Some("grpc://x:4317".into()), ..TelemetryConfig::default() };
        assert!(t.validate().unwrap_err().to_string().contains("telemetry.otlp_endpoint"));
        let t = TelemetryConfig { auth_failure_log_interval: Duration::ZERO, ..TelemetryConfig::default() };
        assert!(t.validate().unwrap_err().to_string().contains("auth_failure_log_interval"));
        assert!(TelemetryConfig::default().validate().is_ok());
    }
}
