//! Small outbound proxies and a TLS front for tests, each on 127.0.0.1:0,
//! counting the tunnels they opened: an HTTP CONNECT proxy, a SOCKS5 server
//! (no authentication; IPv4 and domain-name targets, so `socks5h://` works),
//! and a TLS terminator in front of a plain-HTTP server (the simulator), so
//! a tunnel carries TLS as it would to a real provider.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy: its address and how many tunnels it opened.
pub struct Proxy {
    pub addr: SocketAddr,
    pub tunnels: Arc<AtomicUsize>,
    /// The targets asked for, as `host:port`.
    pub targets: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

async fn bind() -> (TcpListener, Proxy) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, Proxy { addr, tunnels: Arc::default(), targets: Arc::default() })
}

/// Connects to `target` (`host:port`; `localhost` and IPs only, nothing
/// leaves the machine).
async fn connect_local(target: &str) -> Option<TcpStream> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" { "127.0.0.1".parse().ok()? } else { host.parse().ok()? };
    assert!(ip.is_loopback(), "tests reach only 127.0.0.1, not {ip}");
    TcpStream::connect((ip, port.parse::<u16>().ok()?)).await.ok()
}

/// An HTTP proxy that serves only CONNECT (as HTTPS clients use it).
pub async fn connect_proxy() -> Proxy {
    let (listener, proxy) = bind().await;
    let (tunnels, targets) = (Arc::clone(&proxy.tunnels), Arc::clone(&proxy.targets));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (tunnels, targets) = (Arc::clone(&tunnels), Arc::clone(&targets));
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if inbound.read_exact(&mut byte).await.is_err() || head.len() > 16 * 1024 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                    let _ = inbound.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                targets.lock().unwrap().push(target.to_owned());
                let Some(mut outbound) = connect_local(target).await else {
                    let _ = inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                tunnels.fetch_add(1, Ordering::SeqCst);
                if inbound.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    proxy
}

/// A SOCKS5 server without authentication (RFC 1928): CONNECT to an IPv4
/// address or a domain name.
pub async fn socks5_proxy() -> Proxy {
    let (listener, proxy) = bind().await;
    let (tunnels, targets) = (Arc::clone(&proxy.tunnels), Arc::clone(&proxy.targets));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (tunnels, targets) = (Arc::clone(&tunnels), Arc::clone(&targets));
            tokio::spawn(async move {
                let Some(target) = socks5_handshake(&mut inbound).await else { return };
                targets.lock().unwrap().push(target.clone());
                let Some(mut outbound) = connect_local(&target).await else {
                    // 5: connection refused.
                    let _ = inbound.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                    return;
                };
                tunnels.fetch_add(1, Ordering::SeqCst);
                if inbound.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    proxy
}

async fn socks5_handshake(s: &mut TcpStream) -> Option<String> {
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).await.ok()?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    s.read_exact(&mut methods).await.ok()?;
    if greeting[0] != 5 || !methods.contains(&0) {
        let _ = s.write_all(&[5, 0xff]).await;
        return None;
    }
    s.write_all(&[5, 0]).await.ok()?;
    let mut request = [0u8; 4];
    s.read_exact(&mut request).await.ok()?;
    if request[..2] != [5, 1] {
        return None;
    }
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            s.read_exact(&mut ip).await.ok()?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.ok()?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await.ok()?;
            String::from_utf8(name).ok()?
        }
        _ => return None,
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await.ok()?;
    Some(format!("{host}:{}", u16::from_be_bytes(port)))
}

/// A TLS front on 127.0.0.1 (the test CA's certificate, tests/fixtures)
/// passing the decrypted bytes to `backend`: `https://127.0.0.1:PORT` then
/// reaches a plain-HTTP server, streaming included.
pub async fn tls_front(backend: SocketAddr) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixture = |name: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}
