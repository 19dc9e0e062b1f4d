//! The listener's front (issue 17): TLS with HTTP/2 by ALPN and a
//! certificate reloaded when its files change, and the PROXY protocol that
//! makes the client behind a load balancer the caller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, key, spawn, TestApp};
use keypool::config::Cidr;
use keypool::server::{generate_token, hash_token};
use keypool::tenants::{networks_from, TokenSettings};
use keypool_sim::{SimConfig, SimKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "sk-tls-test-key-8d2b6f0c1e";

fn sim() -> SimConfig {
    SimConfig { keys: vec![SimKey::new(KEY)], ..SimConfig::default() }
}

/// A self-signed certificate for 127.0.0.1 and localhost.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn pair() -> Pair {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    Pair { cert_pem: made.cert.pem(), key_pem: made.key_pair.serialize_pem(), der: made.cert.der().to_vec() }
}

/// Where the gateway reads its certificate and key.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(pair: &Pair) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem"), _dir: dir };
        files.write(&pair.cert_pem, &pair.key_pem);
        files
    }

    fn write(&self, cert: &str, key: &str) {
        std::fs::write(&self.cert, cert).unwrap();
        std::fs::write(&self.key, key).unwrap();
    }
}

/// A gateway over the simulator serving TLS from `files`, a request head
/// (and a handshake) due within `head`.
async fn tls_gateway(files: &Files, head: Duration) -> TestApp {
    let (cert, key_file) = (files.cert.clone(), files.key.clone());
    spawn(sim(), vec![key(KEY, None)], move |c| {
        c.server.tls_cert = Some(cert);
        c.server.tls_key = Some(key_file);
        c.server.header_read_timeout = head;
    })
    .await
}

fn https(app: &TestApp, path: &str) -> String {
    assert!(app.url(path).starts_with("https://"), "the base URL says https");
    app.url(path)
}

/// A client trusting `pair` alone, HTTP/1.1 only or offering both by ALPN.
fn client(pair: &Pair, http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(pair.cert_pem.as_bytes()).unwrap();
    let builder = reqwest::Client::builder().add_root_certificate(root).tls_built_in_root_certs(false);
    let builder = if http1_only { builder.http1_only() } else { builder };
    builder.build().unwrap()
}

/// The certificate a new TLS connection to `addr` is shown, trusting any
/// of `pairs`.
async fn shown(addr: SocketAddr, pairs: &[&Pair]) -> std::io::Result<Vec<u8>> {
    let tls = handshake(TcpStream::connect(addr).await?, pairs).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

async fn handshake<S>(stream: S, pairs: &[&Pair]) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut roots = rustls::RootCertStore::empty();
    for p in pairs {
        roots.add(rustls::pki_types::CertificateDer::from(p.der.clone())).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), stream).await
}

#[tokio::test]
async fn https_is_served_over_http1_and_over_h2_by_alpn() {
    let pair = pair();
    let files = Files::new(&pair);
    let app = tls_gateway(&files, Duration::from_secs(5)).await;
    for (http1_only, version) in [(true, reqwest::Version::HTTP_11), (false, reqwest::Version::HTTP_2)] {
        let resp = client(&pair, http1_only)
            .post(https(&app, "chat/completions"))
            .bearer_auth(&app.token)
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), version, "http1_only: {http1_only}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    }
    // A streamed answer arrives whole through TLS too.
    let mut streamed = chat("hi");
    streamed["stream"] = serde_json::json!(true);
    let resp = client(&pair, false)
        .post(https(&app, "chat/completions"))
        .bearer_auth(&app.token)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.text().await.unwrap().trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused() {
    let pair = pair();
    let files = Files::new(&pair);
    let app = tls_gateway(&files, Duration::from_secs(5)).await;
    let url = format!("http://{}/v1/models", app.gateway.addr());
    let plain = reqwest::Client::new().get(url).bearer_auth(&app.token).send().await;
    assert!(plain.is_err(), "a plain request on the TLS port was answered: {plain:?}");
    // What a plain client reads there is no HTTP answer.
    let mut conn = TcpStream::connect(app.gateway.addr()).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await.unwrap();
    assert!(!got.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&got));
}

/// A client that opens a connection and never says hello is closed after
/// `header_read_timeout`, as a silent plain one is.
#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed() {
    let pair = pair();
    let files = Files::new(&pair);
    let head = Duration::from_millis(400);
    let app = tls_gateway(&files, head).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(app.gateway.addr()).await.unwrap();
    // Half a hello: the handshake has begun and stalls.
    let mut half = TcpStream::connect(app.gateway.addr()).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    for conn in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "still open after 10 s: {read:?}");
    }
    assert!(started.elapsed() >= head, "closed before the timeout: {:?}", started.elapsed());
    // The server still serves.
    let ok = client(&pair, true).get(https(&app, "models")).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// A new certificate written to the same paths is shown to new connections
/// within seconds; a bad replacement is refused and the one in force kept.
#[tokio::test]
async fn a_changed_certificate_is_shown_to_new_connections_and_a_bad_one_is_not() {
    let (first, second, third) = (pair(), pair(), pair());
    let files = Files::new(&first);
    let app = tls_gateway(&files, Duration::from_secs(5)).await;
    let addr = app.gateway.addr();
    let all = [&first, &second, &third];
    assert_eq!(shown(addr, &all).await.unwrap(), first.der);
    // A client that trusts only the first certificate, its connection kept
    // open: it can go on only on that connection.
    let kept = client(&first, true);
    let ok = kept.get(format!("https://{addr}/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    let written = Instant::now();
    files.write(&second.cert_pem, &second.key_pem);
    let deadline = written + Duration::from_secs(20);
    while shown(addr, &all).await.unwrap() != second.der {
        assert!(Instant::now() < deadline, "the new certificate was not shown within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("reload: a new certificate was shown {:?} after it was written", written.elapsed());

    // A pair that does not belong together, then a certificate that is not PEM.
    files.write(&third.cert_pem, &second.key_pem);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(shown(addr, &all).await.unwrap(), second.der, "a mismatched pair was put in force");
    files.write("not a certificate", &third.key_pem);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(shown(addr, &all).await.unwrap(), second.der, "an unreadable certificate was put in force");

    // The connection opened before the first change is still served.
    let ok = kept.get(format!("https://{addr}/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200, "the connection open before the change");
}

#[tokio::test]
async fn a_missing_or_unusable_certificate_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let good = pair();
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&key_file, &good.key_pem).unwrap();
    let start = |cert: PathBuf, key_file: PathBuf| {
        let config = keypool::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("keypool.db").display()),
            server: keypool::config::ServerConfig {
                tls_cert: Some(cert),
                tls_key: Some(key_file),
                ..Default::default()
            },
            ..Default::default()
        };
        async move {
            match keypool::app::start(&config).await {
                Ok(_) => panic!("started without a usable certificate"),
                Err(e) => format!("{e:#}"),
            }
        }
    };
    let err = start(cert.clone(), key_file.clone()).await;
    assert!(err.contains("server.tls_cert") && err.contains("cert.pem"), "{err}");
    std::fs::write(&cert, pair().cert_pem).unwrap();
    let err = start(cert, key_file).await;
    assert!(err.contains("server.tls_key"), "a key of another certificate: {err}");
    assert!(!err.contains(good.key_pem.lines().nth(1).unwrap()), "the key is quoted: {err}");
}

// ---- The PROXY protocol -----------------------------------------------------

/// A gateway that requires a PROXY header from `trusted` peers.
async fn proxied_gateway(trusted: &str) -> TestApp {
    let trusted = Cidr::try_from(trusted.to_owned()).unwrap();
    spawn(sim(), vec![key(KEY, None)], move |c| {
        c.server.proxy_protocol = true;
        c.server.header_read_timeout = Duration::from_secs(2);
        c.telemetry.trusted_proxies = vec![trusted];
    })
    .await
}

/// Makes a PROXY header naming `client`.
type Header = fn(&str) -> Vec<u8>;

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.9.9.9 4711 443\r\n").into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let source = SocketAddr::new(client.parse().unwrap(), 4711);
    let destination: SocketAddr = "10.9.9.9:443".parse().unwrap();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

/// Sends `header` and then a chat request as `token` on a new connection;
/// the answer's status, or `None` when the connection was closed unanswered.
async fn chat_behind(addr: SocketAddr, header: &[u8], token: &str) -> Option<u16> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let body = chat("hi").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The server may close before reading it all: that is an answer too.
    let _ = conn.write_all(&[header, request.as_bytes()].concat()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "neither answered nor closed within 10 s");
    let answer = String::from_utf8_lossy(&answer);
    answer.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).map(|code| code.parse().unwrap())
}

/// A token allowed only from 10.0.0.0/8, once the gateway has it.
async fn ten_slash_eight(app: &TestApp) -> String {
    let token = generate_token();
    let settings = TokenSettings { networks: networks_from(&["10.0.0.0/8".into()]).unwrap(), ..Default::default() };
    app.store.create_token_with("ten", &hash_token(&token), "kp-ten", &settings).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Refused as unknown (401) until the sync has brought it in.
    while chat_behind(app.gateway.addr(), &v1("192.0.2.1"), &token).await == Some(401) {
        assert!(Instant::now() < deadline, "the token never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token
}

#[tokio::test]
async fn the_proxy_header_names_the_caller_that_a_tokens_networks_see() {
    let app = proxied_gateway("127.0.0.1").await;
    let addr = app.gateway.addr();
    let token = ten_slash_eight(&app).await;
    let versions: [(&str, Header); 2] = [("v1", v1), ("v2", v2)];
    for (version, header) in versions {
        assert_eq!(chat_behind(addr, &header("10.1.2.3"), &token).await, Some(200), "{version} from 10.1.2.3");
        assert_eq!(chat_behind(addr, &header("192.0.2.1"), &token).await, Some(403), "{version} from 192.0.2.1");
    }
    // Without a header, the connection is closed unanswered.
    assert_eq!(chat_behind(addr, b"", &token).await, None);
    // The request log names the client, not the proxy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = app.store.recent_requests(10).await.unwrap();
        if records.len() >= 2 {
            break records;
        }
        assert!(Instant::now() < deadline, "the records were not written: {records:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for r in &records {
        assert_eq!(r.client_addr.as_deref(), Some("10.1.2.3"), "{r:?}");
    }
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_is_refused() {
    let app = proxied_gateway("10.0.0.0/8").await;
    let addr = app.gateway.addr();
    // 127.0.0.1 is not a trusted proxy here: closed, whatever it claims.
    assert_eq!(chat_behind(addr, &v1("10.1.2.3"), &app.token).await, None);
    assert_eq!(chat_behind(addr, &v2("10.1.2.3"), &app.token).await, None);
    assert_eq!(chat_behind(addr, b"", &app.token).await, None);
}

/// The header comes before TLS, as HAProxy and load balancers send it.
#[tokio::test]
async fn the_proxy_header_comes_before_tls() {
    let pair = pair();
    let files = Files::new(&pair);
    let (cert, key_file) = (files.cert.clone(), files.key.clone());
    let app = spawn(sim(), vec![key(KEY, None)], move |c| {
        c.server.tls_cert = Some(cert);
        c.server.tls_key = Some(key_file);
        c.server.proxy_protocol = true;
        c.telemetry.trusted_proxies = vec![Cidr::try_from("127.0.0.1".to_owned()).unwrap()];
    })
    .await;
    let token = generate_token();
    let settings = TokenSettings { networks: networks_from(&["10.0.0.0/8".into()]).unwrap(), ..Default::default() };
    app.store.create_token_with("ten", &hash_token(&token), "kp-ten", &settings).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = TcpStream::connect(app.gateway.addr()).await.unwrap();
        conn.write_all(&v2("10.1.2.3")).await.unwrap();
        let mut tls = handshake(conn, &[&pair]).await.unwrap();
        tls.write_all(
            format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(Instant::now() < deadline, "the token never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
