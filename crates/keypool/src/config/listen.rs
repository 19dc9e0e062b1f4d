//! The listen address as people type it: `127.0.0.1:8080`, `[::1]:8080`,
//! `localhost:8080`, `:8080` and `8080`.
//!
//! `:8080` and `8080` mean every IPv4 interface (`0.0.0.0:8080`), as Go's
//! `net.Listen(":8080")` and nginx's `listen 8080;` do; `localhost` is
//! `127.0.0.1`, so the address never depends on the resolver.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// Parses a listen address; the error says which forms are accepted.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let forms = "expected e.g. 127.0.0.1:8080, localhost:8080, :8080 (every interface) or 8080";
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port),
        None => ("", text),
    };
    let port: u16 = port.parse().map_err(|_| format!("{text:?} has no valid port (0-65535); {forms}"))?;
    let ip = match host {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        h if h.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{h:?} is not an IP address or `localhost`; {forms}"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Serde: a string in any form [`parse_listen`] takes, or a bare port number
/// (`KEYPOOL_LISTEN=8080` reaches serde as an integer).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Port(u64),
        Text(String),
    }
    let text = match Form::deserialize(d)? {
        Form::Port(p) => p.to_string(),
        Form::Text(t) => t,
    };
    parse_listen(&text).map_err(serde::de::Error::custom)
}
