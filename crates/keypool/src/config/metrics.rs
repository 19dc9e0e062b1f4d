//! The Prometheus endpoint's own listener (`metrics_listen`).
//!
//! `/metrics` is always served on the main listener behind the admin API's token;
//! `metrics_listen` adds a second address that serves only `/metrics`,
//! without auth, for a scraper on a private network.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// Serde: unset, or an address in any form [`super::parse_listen`] takes
/// (`127.0.0.1:9090`, `:9090`, `9090`; a bare port arrives as an integer
/// from `KEYPOOL_METRICS_LISTEN=9090`).
pub fn deserialize_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Port(u64),
        Text(String),
    }
    let text = match Option::<Form>::deserialize(d)? {
        None => return Ok(None),
        Some(Form::Port(p)) => p.to_string(),
        Some(Form::Text(t)) => t,
    };
    super::parse_listen(&text).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Config;

    #[test]
    fn metrics_listen_takes_the_listen_forms_and_defaults_to_unset() {
        let c: Config = toml::from_str("metrics_listen = \":9090\"").unwrap();
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
        let c: Config = toml::from_str("metrics_listen = \"localhost:9090\"").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9090".parse().unwrap()));
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.metrics_listen, None);
        assert!(toml::from_str::<Config>("metrics_listen = \"nowhere\"").is_err());
    }
}
