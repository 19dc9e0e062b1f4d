//! The edge: what crosses it (no caller credential goes upstream), what it
//! leaves on disk (a database only its owner can read), and how it treats
//! slow, silent and stalled callers and a stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat, key, spawn};
use keypool_sim::{SimConfig, SimKey};

const KEY: &str = "sk-edge-test-key-4f1c9a7e2b";

fn sim() -> SimConfig {
    SimConfig { keys: vec![SimKey::new(KEY)], ..SimConfig::default() }
}

/// Polls `check` every 20 ms until it holds, failing after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- §6 No caller credential travels upstream -------------------------------

#[tokio::test]
async fn no_caller_credential_reaches_the_upstream_in_any_header() {
    let app = spawn(sim(), vec![key(KEY, None)], |_| {}).await;
    let token = app.token.clone();
    let resp = app
        .client
        .post(app.url("echo/creds"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-api-key", &token)
        .header("api-key", &token)
        .header("x-goog-api-key", &token)
        .header("cookie", format!("session={token}; kp={token}"))
        .header("proxy-authorization", format!("Basic {token}"))
        .header("x-auth-token", &token)
        .header("openai-organization", "org-caller")
        .header("openai-project", "proj-caller")
        .header("idempotency-key", "stainless-retry-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let headers = &echo["headers"];
    assert!(!echo.to_string().contains(&token), "the gateway token reached the upstream: {headers}");
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"), "the key replaces the caller's credential");
    for dropped in ["x-api-key", "api-key", "x-goog-api-key", "cookie", "proxy-authorization", "x-auth-token"] {
        assert!(headers.get(dropped).is_none(), "{dropped} went upstream: {headers}");
    }
    assert!(headers.get("openai-organization").is_none(), "account headers belong to the key: {headers}");
    assert!(headers.get("openai-project").is_none(), "account headers belong to the key: {headers}");
    assert_eq!(headers["idempotency-key"], "stainless-retry-1", "ordinary headers still pass");
}

#[tokio::test]
async fn a_setting_keeps_the_callers_account_headers() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| c.server.forward_account_headers = true).await;
    let resp = app
        .post("echo/account")
        .header("openai-organization", "org-caller")
        .header("openai-project", "proj-caller")
        .body("{}")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["openai-organization"], "org-caller");
    assert_eq!(echo["headers"]["openai-project"], "proj-caller");
}

#[tokio::test]
async fn the_auth_scheme_is_case_insensitive() {
    let app = spawn(sim(), vec![key(KEY, None)], |_| {}).await;
    for scheme in ["BEARER", "bearer", "Bearer", "bEaReR"] {
        let resp = app
            .client
            .post(app.url("chat/completions"))
            .header("authorization", format!("{scheme} {}", app.token))
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "scheme {scheme}");
    }
}

// ---- §6 The database is readable by its owner only -------------------------

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_wal_and_shm_are_created_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let store = keypool::store::Store::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    store.add_key(&key(KEY, None)).await.unwrap();
    for name in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let mode = mode_of(&dir.path().join(name));
        assert_eq!(mode & 0o077, 0, "{name} is {mode:o}: others can read the keys");
    }
    store.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn an_existing_world_readable_database_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = keypool::store::Store::connect(&url).await.unwrap();
    store.add_key(&key(KEY, None)).await.unwrap();
    store.close().await;
    for name in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let path = dir.path().join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let store = keypool::store::Store::connect(&url).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
    for name in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let path = dir.path().join(name);
        if path.exists() {
            assert_eq!(mode_of(&path), 0o600, "{name}");
        }
    }
    store.close().await;
}

// ---- §6 Slow, silent and stalled callers are closed ------------------------

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the gateway closed `conn` within `within` (reading whatever it
/// sends first, such as an answer, until the close).
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A request head and body for `path` on the gateway, as raw bytes.
fn raw_request(app: &common::TestApp, path: &str, body: &str) -> String {
    format!(
        "POST /v1/{path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        app.token,
        body.len()
    )
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| c.server.header_read_timeout = Duration::from_millis(500)).await;
    let conn = TcpStream::connect(app.gateway.addr()).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let head = raw_request(&app, "chat/completions", "{}");
    let (mut read, mut write) = conn.into_split();
    let trickle = tokio::spawn(async move {
        for byte in head.bytes() {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a head trickled a byte every 100 ms is still open after 5 s");
    trickle.abort();
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut silent = TcpStream::connect(app.gateway.addr()).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "a silent socket is still open after 5 s");
}

#[tokio::test]
async fn an_idle_kept_alive_http1_connection_is_closed() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.server.header_read_timeout = Duration::from_secs(60);
        c.server.keep_alive_timeout = Duration::from_millis(300);
    })
    .await;
    let mut conn = TcpStream::connect(app.gateway.addr()).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(closed_within(&mut conn, Duration::from_secs(5)).await, "an idle keep-alive connection stays open");
}

/// A load balancer keeps idle connections to keypool for its own idle
/// timeout (60 s by default on AWS ALB); the head clock must not close them
/// sooner, or the balancer's next request on one meets a close (a 502).
#[tokio::test]
async fn a_kept_alive_connection_outlives_the_head_timeout() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.server.header_read_timeout = Duration::from_millis(200);
        c.server.keep_alive_timeout = Duration::from_secs(30);
    })
    .await;
    let mut conn = TcpStream::connect(app.gateway.addr()).await.unwrap();
    let mut buf = [0u8; 1024];
    for _ in 0..2 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        // Idle for longer than the head timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // A head that begins and stalls is still cut off by it.
    conn.write_all(b"GET /hea").await.unwrap();
    assert!(closed_within(&mut conn, Duration::from_secs(5)).await, "a stalled head is cut off");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| c.server.keep_alive_timeout = Duration::from_millis(300)).await;
    let stream = TcpStream::connect(app.gateway.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/healthz", app.gateway.addr()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    drop(answer);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is still open after 5 s");
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.server.max_connections = 2;
        c.workers = 1;
    })
    .await;
    let first = TcpStream::connect(app.gateway.addr()).await.unwrap();
    let _second = TcpStream::connect(app.gateway.addr()).await.unwrap();
    // The third connects (the kernel's backlog) but is not served...
    let mut third = TcpStream::connect(app.gateway.addr()).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a connection past the cap was served");
    // ...until one of the others closes.
    drop(first);
    let n =
        tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.expect("served once below the cap");
    assert!(buf[..n.unwrap()].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn a_trickled_upload_is_the_callers_408_and_blames_no_key() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.server.min_body_rate = 1000;
        c.server.min_body_rate_window = Duration::from_millis(500);
    })
    .await;
    for (path, content_type) in
        [("echo/audio/transcriptions", "multipart/form-data; boundary=xyz"), ("chat/completions", "application/json")]
    {
        // 10 bytes every 100 ms: 100 bytes/s against 1,000 required.
        let chunks = futures_util::stream::unfold(0, |i| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (i < 1000).then(|| (Ok::<_, std::io::Error>(vec![b' '; 10]), i + 1))
        });
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            app.post(path)
                .header("content-type", content_type)
                .header("content-length", "10000")
                .body(reqwest::Body::wrap_stream(chunks))
                .send(),
        )
        .await
        .expect("the gateway stops waiting for the body")
        .unwrap();
        assert_eq!(resp.status(), 408, "{path}");
        assert_eq!(common::error_code(resp).await, "request_body_too_slow", "{path}");
    }
    // No key or upstream was blamed: the next request is served at once.
    let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let view = app.gateway.scheduler().snapshot();
    assert_eq!(view[0].status, "active");
    assert_eq!(view[0].inflight, 0);
}

/// An upstream that streams chat chunks of 1 KB without end.
async fn endless_stream_upstream() -> String {
    use axum::response::IntoResponse;
    let chunk =
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(1000));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let chunk = bytes::Bytes::from(chunk.clone());
            async move {
                let body = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                ([("content-type", "text/event-stream")], axum::body::Body::from_stream(body)).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn a_caller_that_stops_reading_a_stream_gives_its_key_back() {
    let upstream = endless_stream_upstream().await;
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.upstream = upstream;
        c.server.write_timeout = Duration::from_millis(500);
    })
    .await;
    // A caller with a small receive buffer that never reads its answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(app.gateway.addr()).await.unwrap();
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    conn.write_all(raw_request(&app, "chat/completions", body).as_bytes()).await.unwrap();
    let inflight = || app.gateway.scheduler().snapshot()[0].inflight;
    eventually("the stream is in flight", Duration::from_secs(5), || inflight() == 1).await;
    eventually("the stalled stream gives its slot back", Duration::from_secs(10), || inflight() == 0).await;
    drop(conn);
}

// ---- §5 Errors say what failed ----------------------------------------------

#[tokio::test]
async fn address_already_in_use_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = keypool::config::Config {
        listen: addr,
        database_url: format!("sqlite://{}", dir.path().join("k.db").display()),
        ..keypool::config::Config::default()
    };
    let err = match keypool::app::start(&config).await {
        Ok(_) => panic!("started on a port in use"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

// ---- §5 Stopping --------------------------------------------------------------

/// The built binary serving a fresh database holding `KEY` and a token.
struct Served {
    child: std::process::Child,
    addr: String,
    token: String,
    db: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    async fn start(upstream: &str, env: &[(&str, &str)]) -> Served {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("keypool.db").display());
        let store = keypool::store::Store::connect(&db).await.unwrap();
        store.add_key(&key(KEY, None)).await.unwrap();
        let token = keypool::server::generate_token();
        store.create_token("t", &keypool::server::hash_token(&token), "kp-t").await.unwrap();
        store.close().await;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keypool"))
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .env("KEYPOOL_DATABASE_URL", &db)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[keypool] {line}");
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).expect("the server printed its address");
        Served { child, addr, token, db, _dir: dir }
    }

    fn signal(&self, name: &str) {
        let sent =
            std::process::Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(sent.unwrap().success());
    }

    /// Waits for the process to exit; how long it took.
    fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Opens a streamed chat and reads its first chunk.
    async fn open_stream(&self) -> reqwest::Response {
        let mut body = chat("a long story");
        body["stream"] = serde_json::json!(true);
        let mut resp = reqwest::Client::new()
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.chunk().await.unwrap().is_some(), "the stream started");
        resp
    }
}

/// A simulator whose streams last 100 s.
async fn slow_stream_sim() -> keypool_sim::Simulator {
    let config = SimConfig { stream_chunks: 1000, chunk_interval: Duration::from_millis(100), ..sim() };
    keypool_sim::Simulator::start(config).await.unwrap()
}

/// Reads the rest of a stream, failing if it is not over within `within`.
async fn rest_of(mut resp: reqwest::Response, within: Duration) -> String {
    let mut text = String::new();
    let read = tokio::time::timeout(within, async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(read.is_ok(), "the stream is still open after {within:?}");
    text
}

#[tokio::test]
async fn a_stop_ends_open_streams_with_an_error_event_after_the_grace() {
    let sim = slow_stream_sim().await;
    let mut served = Served::start(&sim.base_url(), &[("KEYPOOL_SERVER__SHUTDOWN_GRACE", "1s")]).await;
    let stream = served.open_stream().await;
    let stopped = Instant::now();
    served.signal("TERM");
    let rest = rest_of(stream, Duration::from_secs(10)).await;
    assert!(stopped.elapsed() >= Duration::from_millis(900), "the stream had its grace");
    let tail: Vec<&str> = rest.trim_end().rsplit("\n\n").take(2).collect();
    assert_eq!(tail[0], "data: [DONE]", "{rest}");
    let error: serde_json::Value = serde_json::from_str(tail[1].trim_start_matches("data: ")).unwrap();
    assert_eq!(error["error"]["code"], "gateway_shutting_down", "{rest}");
    let status = served.exited_within(Duration::from_secs(10)).expect("the server exits after its grace");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_second_signal_stops_at_once_and_still_writes_the_usage() {
    let sim = slow_stream_sim().await;
    // Usage reaches the database only when the server stops.
    let env = [("KEYPOOL_SERVER__SHUTDOWN_GRACE", "60s"), ("KEYPOOL_SYNC_INTERVAL", "1h")];
    let mut served = Served::start(&sim.base_url(), &env).await;
    let answered = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", served.addr))
        .bearer_auth(&served.token)
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    let stream = served.open_stream().await;
    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(served.child.try_wait().unwrap().is_none(), "the first signal waits for the open stream");
    let second = Instant::now();
    served.signal("INT");
    let status = served.exited_within(Duration::from_secs(3)).expect("a second signal stops at once");
    assert!(second.elapsed() < Duration::from_secs(2), "stopped in {:?}", second.elapsed());
    assert!(status.success(), "{status}");
    drop(stream);
    let store = keypool::store::Store::connect(&served.db).await.unwrap();
    let keys = store.list_keys().await.unwrap();
    assert!(keys[0].successes >= 1, "the usage totals were written before exiting: {:?}", keys[0].successes);
}

// ---- §5 TLS and DNS failures say what failed --------------------------------

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// An HTTPS upstream on 127.0.0.1 with a certificate from the test CA
/// (tests/fixtures), answering every request with a small chat completion.
async fn tls_upstream() -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|_req| async {
                    let body = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"over TLS"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
                    let mut answer = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    answer.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                    Ok::<_, std::convert::Infallible>(answer)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    format!("https://127.0.0.1:{}/v1", addr.port())
}

#[tokio::test]
async fn an_unknown_certificate_issuer_is_named_and_blames_no_key() {
    let upstream = tls_upstream().await;
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.upstream = upstream;
        c.retry.max_retries = 0;
    })
    .await;
    let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown issuer") && message.contains("ca_file"), "{message}");
    assert!(!message.contains("127.0.0.1"), "the upstream's address stays out of errors: {message}");
    let view = &app.gateway.scheduler().snapshot()[0];
    assert_eq!(view.status, "active", "a TLS failure is not the key's");
}

#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted() {
    let upstream = tls_upstream().await;
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.upstream = upstream;
        c.ca_file = Some(fixture("ca.pem"));
    })
    .await;
    let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over TLS");
}

/// SSL_CERT_FILE is process-wide: read by the binary in a subprocess.
#[tokio::test]
async fn a_private_ca_in_ssl_cert_file_is_trusted() {
    let upstream = tls_upstream().await;
    let ca = fixture("ca.pem");
    let served = Served::start(&upstream, &[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", served.addr))
        .bearer_auth(&served.token)
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_named_and_blames_no_key() {
    // RFC 2606: .invalid never resolves.
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.upstream = "http://upstream.keypool.invalid/v1".into();
        c.retry.max_retries = 0;
    })
    .await;
    // More failures in a row than health.key_connect_failures (3).
    for _ in 0..4 {
        let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
        assert_eq!(resp.status(), 502);
        let body: serde_json::Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("could not be resolved"), "{message}");
        assert!(!message.contains("keypool.invalid"), "the upstream's address stays out of errors: {message}");
    }
    assert_eq!(app.gateway.scheduler().snapshot()[0].status, "active", "a name that does not resolve is not the key's");
}

/// Relays one connection to `target` until `freeze` is notified, then stops
/// relaying both ways while holding both sockets open (a caller that is gone
/// without closing: a dead NAT entry, a suspended laptop). Returns the local
/// address and, once frozen, the read half of the gateway's side.
async fn freezing_relay(
    target: std::net::SocketAddr,
    freeze: std::sync::Arc<tokio::sync::Notify>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<tokio::net::tcp::OwnedReadHalf>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let gateway = TcpStream::connect(target).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut gr, mut gw) = gateway.into_split();
        let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
        loop {
            tokio::select! {
                _ = freeze.notified() => break,
                n = cr.read(&mut up) => match n { Ok(n) if n > 0 => gw.write_all(&up[..n]).await.unwrap(), _ => return },
                n = gr.read(&mut down) => match n { Ok(n) if n > 0 => cw.write_all(&down[..n]).await.unwrap(), _ => return },
            }
        }
        let _ = tx.send(gr);
        // Hold the other halves open.
        std::future::pending::<()>().await;
        drop((cr, cw, gw));
    });
    (addr, rx)
}

#[tokio::test]
async fn an_http2_caller_that_stops_answering_pings_is_disconnected() {
    // A stream still in flight, so the connection is not idle; a long write
    // timeout and a slow stream, so only the pings can tell.
    let sim = SimConfig { stream_chunks: 1000, chunk_interval: Duration::from_millis(100), ..sim() };
    let app = spawn(sim, vec![key(KEY, None)], |c| {
        c.server.http2_keep_alive_interval = Duration::from_millis(300);
        c.server.http2_keep_alive_timeout = Duration::from_millis(300);
        c.server.write_timeout = Duration::from_secs(60);
    })
    .await;
    let freeze = std::sync::Arc::new(tokio::sync::Notify::new());
    let (relay, frozen) = freezing_relay(app.gateway.addr(), std::sync::Arc::clone(&freeze)).await;
    let stream = TcpStream::connect(relay).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut body = chat("a long story");
    body["stream"] = serde_json::json!(true);
    let request = http::Request::post(format!("http://{}/v1/chat/completions", app.gateway.addr()))
        .header("authorization", format!("Bearer {}", app.token))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    freeze.notify_one();
    let mut gateway_side = frozen.await.unwrap();
    let mut buf = [0u8; 16384];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match gateway_side.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an HTTP/2 caller that answers no ping is still connected after 5 s");
    eventually("the stream's key is given back", Duration::from_secs(5), || {
        app.gateway.scheduler().snapshot()[0].inflight == 0
    })
    .await;
    drop(answer);
}

#[tokio::test]
async fn an_http2_caller_that_stops_reading_a_stream_gives_its_key_back() {
    let upstream = endless_stream_upstream().await;
    let app = spawn(sim(), vec![key(KEY, None)], |c| {
        c.upstream = upstream;
        c.server.write_timeout = Duration::from_millis(500);
    })
    .await;
    let stream = TcpStream::connect(app.gateway.addr()).await.unwrap();
    // The client library keeps reading frames and answering pings; only
    // this stream's window fills, since its body is never read.
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .adaptive_window(false)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = http::Request::post(format!("http://{}/v1/chat/completions", app.gateway.addr()))
        .header("authorization", format!("Bearer {}", app.token))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    let inflight = || app.gateway.scheduler().snapshot()[0].inflight;
    assert_eq!(inflight(), 1);
    eventually("the unread stream gives its slot back", Duration::from_secs(10), || inflight() == 0).await;
    // The connection itself still serves.
    let health = http::Request::get(format!("http://{}/healthz", app.gateway.addr()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(health).await.unwrap().status(), 200);
    drop(answer);
}

#[tokio::test]
async fn a_stream_that_ends_within_the_grace_is_not_cut() {
    // Streams of 10 chunks 100 ms apart: about a second.
    let sim = SimConfig { stream_chunks: 10, chunk_interval: Duration::from_millis(100), ..sim() };
    let sim = keypool_sim::Simulator::start(sim).await.unwrap();
    let mut served = Served::start(&sim.base_url(), &[("KEYPOOL_SERVER__SHUTDOWN_GRACE", "20s")]).await;
    let stream = served.open_stream().await;
    served.signal("TERM");
    let rest = rest_of(stream, Duration::from_secs(10)).await;
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(!rest.contains("\"error\""), "a stream finished within the grace is whole: {rest}");
    let status = served.exited_within(Duration::from_secs(5)).expect("the server exits once the stream is done");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_request_still_waiting_for_the_upstream_after_the_grace_gets_503() {
    waiting_after_the_grace_gets_503(reqwest::Client::new()).await;
}

/// HTTP/2 runs each request in a task of its own, which the connection's
/// wake at the grace's end does not reach: it waits for the grace itself.
#[tokio::test]
async fn an_http2_request_still_waiting_after_the_grace_gets_503() {
    waiting_after_the_grace_gets_503(reqwest::Client::builder().http2_prior_knowledge().build().unwrap()).await;
}

async fn waiting_after_the_grace_gets_503(client: reqwest::Client) {
    let sim = SimConfig { latency: Duration::from_secs(60), ..sim() };
    let sim = keypool_sim::Simulator::start(sim).await.unwrap();
    let mut served = Served::start(&sim.base_url(), &[("KEYPOOL_SERVER__SHUTDOWN_GRACE", "500ms")]).await;
    let waiting = client
        .post(format!("http://{}/v1/chat/completions", served.addr))
        .bearer_auth(&served.token)
        .json(&chat("hi"))
        .send();
    let waiting = tokio::spawn(waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.signal("TERM");
    let resp = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("answered after the grace");
    let resp = resp.unwrap().unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(common::error_code(resp).await, "gateway_shutting_down");
    let status = served.exited_within(Duration::from_secs(10)).expect("the server exits");
    assert!(status.success(), "{status}");
}
