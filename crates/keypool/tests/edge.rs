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
