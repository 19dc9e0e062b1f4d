#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn v2(source: &str, command: ppp::v2::Command) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = if source.is_ipv4() { "10.9.9.9:443" } else { "[2001:db8::9]:443" }.parse().unwrap();
    ppp::v2::Builder::with_addresses(ppp::v2::Version::Two | command, ppp::v2::Protocol::Stream, (source, destination))
        .write_tlv(ppp::v2::Type::NoOp, &[0; 5])
        .unwrap()
        .build()
        .unwrap()
}

#[test]
fn the_length_of_a_header_is_told_as_soon_as_it_can_be() {
    let line = b"PROXY TCP4 10.1.2.3 10.9.9.9 4711 443\r\nGET / HTTP/1.1\r\n";
    assert_eq!(header_len(b"").unwrap(), None);
    assert_eq!(header_len(b"PRO").unwrap(), None);
    assert_eq!(header_len(b"\r\n\r\n").unwrap(), None, "the start of both a v2 signature...");
    assert_eq!(header_len(&line[..20]).unwrap(), None);
    assert_eq!(header_len(line).unwrap(), Some(39));
    let binary = v2("10.1.2.3:4711", ppp::v2::Command::Proxy);
    assert_eq!(header_len(&binary[..15]).unwrap(), None);
    assert_eq!(header_len(&binary[..16]).unwrap(), Some(binary.len()));
    assert!(matches!(header_len(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing)));
    assert!(matches!(header_len(b"\x16\x03\x01"), Err(HeaderError::Missing)), "a TLS hello");
    let endless = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
    assert!(matches!(header_len(&endless), Err(HeaderError::TooLong)));
}

#[test]
fn the_source_address_is_the_caller() {
    let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    assert_eq!(source(b"PROXY TCP4 10.1.2.3 10.9.9.9 4711 443\r\n").unwrap(), at("10.1.2.3:4711"));
    assert_eq!(source(b"PROXY TCP6 2001:db8::1 2001:db8::9 4711 443\r\n").unwrap(), at("[2001:db8::1]:4711"));
    assert_eq!(source(b"PROXY UNKNOWN\r\n").unwrap(), None);
    assert_eq!(source(&v2("10.1.2.3:4711", ppp::v2::Command::Proxy)).unwrap(), at("10.1.2.3:4711"));
    assert_eq!(source(&v2("[2001:db8::1]:4711", ppp::v2::Command::Proxy)).unwrap(), at("[2001:db8::1]:4711"));
    assert_eq!(source(&v2("10.1.2.3:4711", ppp::v2::Command::Local)).unwrap(), None, "a proxy's own check");
    assert!(matches!(source(b"PROXY TCP4 10.1.2 10.9.9.9 4711 443\r\n"), Err(HeaderError::Malformed(_))));
}

/// A connected pair of sockets: (the server's side, the client's side).
async fn pair() -> (TcpStream, SocketAddr, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, peer) = listener.accept().await.unwrap();
    (server, peer, client)
}

fn trusting(cidr: &str) -> ProxyProtocol {
    ProxyProtocol::new(vec![Cidr::try_from(cidr.to_owned()).unwrap()])
}

/// The header arrives in pieces, the request right behind it: the caller is
/// the header's, and every byte after it is left for the protocol.
#[tokio::test]
async fn a_header_in_pieces_is_read_and_nothing_after_it() {
    for header in [b"PROXY TCP4 10.1.2.3 10.9.9.9 4711 443\r\n".to_vec(), v2("10.1.2.3:4711", ppp::v2::Command::Proxy)]
    {
        let (mut server, peer, mut client) = pair().await;
        client.set_nodelay(true).unwrap();
        let writing = tokio::spawn(async move {
            for piece in header.chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            client
        });
        let caller = trusting("127.0.0.1/32").caller(&mut server, peer).await;
        assert_eq!(caller, Some("10.1.2.3:4711".parse().unwrap()));
        let _client = writing.await.unwrap();
        let mut rest = [0u8; 16];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
    }
}

#[tokio::test]
async fn a_local_header_keeps_the_peer() {
    let (mut server, peer, mut client) = pair().await;
    client.write_all(&v2("10.1.2.3:4711", ppp::v2::Command::Local)).await.unwrap();
    assert_eq!(trusting("127.0.0.1/32").caller(&mut server, peer).await, Some(peer));
}

#[tokio::test]
async fn a_connection_without_a_header_or_from_an_untrusted_peer_is_refused() {
    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(trusting("127.0.0.1/32").caller(&mut server, peer).await, None);

    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"PROXY TCP4 10.1.2.3 10.9.9.9 4711 443\r\n").await.unwrap();
    assert_eq!(trusting("10.0.0.0/8").caller(&mut server, peer).await, None, "127.0.0.1 is not trusted");

    let (mut server, peer, client) = pair().await;
    drop(client);
    assert_eq!(trusting("127.0.0.1/32").caller(&mut server, peer).await, None, "closed before a header");
}

#[test]
fn refusals_are_said_once_a_minute_with_the_count_of_the_rest() {
    let refusals = Refusals::new();
    let mut said = Vec::new();
    for _ in 0..5 {
        refusals.note(|n| said.push(n));
    }
    assert_eq!(said, [0], "the first is said, the next four counted");
    assert_eq!(refusals.suppressed.load(Ordering::Relaxed), 4);
}
