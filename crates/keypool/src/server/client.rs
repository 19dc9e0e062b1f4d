//! Who the caller is: the connection's peer, or, when the peer is one of the
//! configured trusted proxies (`telemetry.trusted_proxies`), the client that
//! the proxies name in `X-Forwarded-For`. One answer for the request's
//! record, its log line and the warning about a refused token.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::Cidr;

/// The header proxies append the address they received a request from to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The caller's address. `peer` is the connection's; when it is within
/// `trusted`, `X-Forwarded-For` (all its lines, in order) is read from the
/// right and the first address that is not itself trusted is the caller:
/// entries further left were written by whoever sent the request and may
/// be forged. When every entry is trusted, the left-most is the caller;
/// when an entry is not an address (or the header is absent), the trail
/// stops there and the last trusted hop is the caller. Without trusted
/// proxies the header is ignored.
pub fn real_client(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut hop = peer;
    let lines: Vec<&str> = headers.get_all(FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    for entry in lines.iter().rev().flat_map(|line| line.rsplit(',')) {
        let Some(ip) = parse_entry(entry) else { break };
        hop = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(hop)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:443`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| Cidr::try_from((*s).to_owned()).unwrap()).collect()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(FORWARDED_FOR, l.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(real_client(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
        assert_eq!(real_client(None, &h, &[]), None);
    }

    #[test]
    fn an_untrusted_peer_is_the_caller_whatever_it_says() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(real_client(ip("198.51.100.1"), &h, &cidrs(&["127.0.0.1/32"])), ip("198.51.100.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_caller() {
        let trusted = cidrs(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        assert_eq!(real_client(peer, &headers(&["203.0.113.7"]), &trusted), ip("203.0.113.7"));
        // The caller forged the left-most entry; the proxies appended the rest.
        let h = headers(&["1.2.3.4, 203.0.113.7, 10.0.0.5"]);
        assert_eq!(real_client(peer, &h, &trusted), ip("203.0.113.7"));
        // Several header lines read as one list, in order.
        let h = headers(&["1.2.3.4", "203.0.113.7", "10.0.0.5"]);
        assert_eq!(real_client(peer, &h, &trusted), ip("203.0.113.7"));
        // Ports and IPv6 brackets.
        assert_eq!(real_client(peer, &headers(&["203.0.113.7:4711"]), &trusted), ip("203.0.113.7"));
        assert_eq!(real_client(peer, &headers(&["[2001:db8::1]:443"]), &trusted), ip("2001:db8::1"));
        // Every hop trusted: the furthest one.
        assert_eq!(real_client(peer, &headers(&["10.0.0.9, 10.0.0.5"]), &trusted), ip("10.0.0.9"));
        // Garbage stops the trail at the last trusted hop.
        assert_eq!(real_client(peer, &headers(&["203.0.113.7, junk, 10.0.0.5"]), &trusted), ip("10.0.0.5"));
        assert_eq!(real_client(peer, &HeaderMap::new(), &trusted), peer);
        // An IPv4-mapped peer is its IPv4 address.
        assert_eq!(real_client(ip("::ffff:127.0.0.1"), &headers(&["203.0.113.7"]), &trusted), ip("203.0.113.7"));
    }
}
