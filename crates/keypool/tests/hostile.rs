//! Hostile input at the edge (issue 17): the gateway runs as its own
//! process, and each crafted request has its answer written down here: a
//! status (400, 401, 413, 414, 431), or a closed connection, or on HTTP/2 the
//! protocol's reset. Meanwhile ordinary requests keep being served, and at
//! the end no answer and no log line holds key material.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "hostile/cases.rs"]
mod cases;
mod common;
#[path = "hostile/wire.rs"]
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::Served;
use keypool::server::{generate_token, hash_token};
use keypool::store::Store;
use keypool::tenants::TokenSettings;
use keypool_sim::{SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The upstream key: recognisable, so the final check can look for it.
const KEY: &str = "sk-hostile-SECRET-7c1e0a9b44d2f3e5";
const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#;
/// `max_body_bytes` below.
const LIMIT: usize = 256 * 1024;

/// Short timeouts, so the slow callers are cut off within seconds.
const CONFIG: &str = r#"
max_body_bytes = 262144
sync_interval = "200ms"

[server]
header_read_timeout = "2s"
keep_alive_timeout = "5s"
write_timeout = "2s"
min_body_rate = 1000
min_body_rate_window = "2s"
"#;

/// A gateway process over a simulator, and the gateway tokens it knows.
struct Edge {
    served: Served,
    _sim: Simulator,
    addr: SocketAddr,
    expired: String,
    revoked: String,
}

impl Edge {
    /// Every secret that must appear in no answer and no log line.
    fn secrets(&self) -> Vec<String> {
        vec![
            KEY.into(),
            "SECRET-7c1e0a9b44d2f3e5".into(),
            self.served.token.clone(),
            self.expired.clone(),
            self.revoked.clone(),
        ]
    }

    /// A chat completion with the good token, over a fresh connection.
    async fn good_chat(&self) -> u16 {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let resp = client
            .post(format!("{}/chat/completions", self.served.base))
            .bearer_auth(&self.served.token)
            .header("content-type", "application/json")
            .body(GOOD)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }
}

async fn start(sim: SimConfig) -> Edge {
    let sim = Simulator::start(SimConfig { accept_any_key: true, ..sim }).await.unwrap();
    let served = Served::start(&sim.base_url(), &[KEY], CONFIG, &[]).await;
    let addr: SocketAddr =
        served.base.trim_start_matches("http://").trim_end_matches("/v1").parse().expect("the listening address");
    let store = Store::connect(&served.db).await.unwrap();
    let (expired, revoked) = (generate_token(), generate_token());
    let past = TokenSettings { expires_at: Some(keypool::store::now_unix() - 60), ..TokenSettings::default() };
    store.create_token_with("expired", &hash_token(&expired), "kp-expired", &past).await.unwrap();
    let id = store.create_token("revoked", &hash_token(&revoked), "kp-revoked").await.unwrap();
    let edge = Edge { served, _sim: sim, addr, expired, revoked };
    // The revoked token is first seen working, so its refusal is the revocation's.
    let seen_ok = wait_for(&edge, &edge.revoked.clone(), 200).await;
    assert!(seen_ok, "the new token is not taken within 10 s");
    store.revoke_token(id).await.unwrap();
    assert!(wait_for(&edge, &edge.revoked.clone(), 401).await, "the revoked token still passes after 10 s");
    assert!(wait_for(&edge, &edge.expired.clone(), 401).await);
    store.close().await;
    edge
}

/// Waits (10 s at most) until a chat with `token` gets `status`.
async fn wait_for(edge: &Edge, token: &str, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let got = reqwest::Client::new()
            .post(format!("{}/chat/completions", edge.served.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(GOOD)
            .send()
            .await
            .map(|r| r.status().as_u16());
        if got.is_ok_and(|s| s == status) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Sends good chats every 50 ms until `stop`, counting those not answered 200.
fn keep_serving(edge: Arc<Edge>, stop: Arc<tokio::sync::Notify>) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut sent, mut failed) = (0, 0);
        loop {
            let status = tokio::select! {
                s = edge.good_chat() => s,
                _ = stop.notified() => break,
            };
            sent += 1;
            failed += usize::from(status != 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (sent, failed)
    })
}

/// Asserts that no secret of `edge` is in `texts` or in its log.
fn assert_no_key_material(edge: &Edge, texts: &[(String, String)]) {
    let log = edge.served.log();
    for secret in edge.secrets() {
        for (name, text) in texts {
            assert!(!text.contains(&secret), "{name}: the answer holds a secret:\n{text}");
        }
        assert!(!log.contains(&secret), "the log holds a secret:\n{log}");
    }
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_written_answer_and_others_are_served() {
    let edge = Arc::new(start(SimConfig::default()).await);
    let stop = Arc::new(tokio::sync::Notify::new());
    let traffic = keep_serving(Arc::clone(&edge), Arc::clone(&stop));
    let started = Instant::now();
    let runs = cases::cases(&edge).into_iter().map(|case| {
        let addr = edge.addr;
        async move {
            let seen = case.send.to(addr).await;
            (case.name, case.expect, seen)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let took = started.elapsed();
    assert_eq!(edge.good_chat().await, 200, "a good request after the cases");
    stop.notify_one();
    let (sent, failed) = traffic.await.unwrap();

    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, expect, seen)| !seen.outcome.meets(*expect))
        .map(|(name, expect, seen)| {
            format!("{name}: expected {expect:?}, got {:?}\n    {}", seen.outcome, first_line(&seen.text))
        })
        .collect();
    assert!(wrong.is_empty(), "{} of {} cases answered otherwise:\n{}", wrong.len(), results.len(), wrong.join("\n"));
    assert!(sent >= 3 && failed == 0, "{failed} of {sent} good requests failed while the cases ran ({took:?})");
    let texts: Vec<(String, String)> = results.into_iter().map(|(n, _, s)| (n.to_owned(), s.text)).collect();
    assert_no_key_material(&edge, &texts);
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let body = text.rsplit("\r\n\r\n").next().unwrap_or_default();
    format!("{line} {}", body.chars().take(300).collect::<String>())
}

/// Whether `conn` is closed by the gateway within `within` (whatever it
/// sends before is read and kept in `got`).
async fn closed_within(conn: &mut tokio::net::tcp::OwnedReadHalf, within: Duration, got: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` one a second (until the gateway closes the connection).
fn trickle(mut write: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// The slow callers, all at once, while good requests keep being served:
/// a head sent a byte a second is cut off after `header_read_timeout` (2 s),
/// a body sent a byte a second gets 408 after `min_body_rate_window` (2 s),
/// and a caller that never reads its stream is cut off after
/// `write_timeout` (2 s) once its socket is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_callers_are_cut_off_within_their_timeouts_while_others_are_served() {
    // Streams (13 MB) longer than any socket buffer a caller's writes can fill.
    let edge = Arc::new(start(SimConfig { stream_chunks: 50_000, ..SimConfig::default() }).await);
    let stop = Arc::new(tokio::sync::Notify::new());
    let traffic = keep_serving(Arc::clone(&edge), Arc::clone(&stop));
    let token = edge.served.token.clone();

    let slow_head = async {
        let conn = TcpStream::connect(edge.addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let (mut read, write) = conn.into_split();
        let head = format!("POST {CHAT} HTTP/1.1\r\nhost: g\r\nauthorization: Bearer {token}\r\n\r\n");
        let started = Instant::now();
        let writing = trickle(write, head.into_bytes());
        let mut got = Vec::new();
        let closed = closed_within(&mut read, Duration::from_secs(8), &mut got).await;
        writing.abort();
        assert!(closed, "a head sent a byte a second is still open after 8 s");
        assert!(got.is_empty(), "it was answered: {}", wire::lossy(&got));
        started.elapsed()
    };
    let slow_body = async {
        let conn = TcpStream::connect(edge.addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        let (mut read, mut write) = conn.into_split();
        let head = format!(
            "POST {CHAT} HTTP/1.1\r\nhost: g\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            GOOD.len()
        );
        write.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let writing = trickle(write, GOOD.as_bytes().to_vec());
        let mut got = Vec::new();
        let closed = closed_within(&mut read, Duration::from_secs(10), &mut got).await;
        writing.abort();
        let text = wire::lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "a body sent a byte a second got: {text}");
        assert!(closed, "its connection is still open after 10 s");
        (started.elapsed(), text)
    };
    let never_reads = async {
        // A small receive buffer, so the gateway's writes stall soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let conn = socket.connect(edge.addr).await.unwrap();
        let (mut read, mut write) = conn.into_split();
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let req = format!(
            "POST {CHAT} HTTP/1.1\r\nhost: g\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        write.write_all(req.as_bytes()).await.unwrap();
        // The answer's first bytes (the simulator may take seconds to plan a
        // stream this long), then nothing while the gateway fills the
        // socket and gives up.
        let mut got = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut got)).await.unwrap().unwrap();
        got.truncate(n);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let closed = closed_within(&mut read, Duration::from_secs(20), &mut got).await;
        let text = wire::lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{}", first_line(&text));
        assert!(closed, "a caller that never reads is still served 26 s after it stopped reading");
        assert!(!text.contains("[DONE]"), "the whole stream ({} bytes) was buffered, nothing was cut", got.len());
        text
    };
    let (head_took, (body_took, body_text), stream_text) = tokio::join!(slow_head, slow_body, never_reads);
    assert_eq!(edge.good_chat().await, 200, "a good request after the slow callers");
    stop.notify_one();
    let (sent, failed) = traffic.await.unwrap();
    assert!(head_took < Duration::from_secs(5), "the slow head was cut after {head_took:?}");
    assert!(body_took < Duration::from_secs(6), "the slow body was answered after {body_took:?}");
    assert!(sent >= 10 && failed == 0, "{failed} of {sent} good requests failed beside the slow callers");
    let texts = [("slow body".to_owned(), body_text), ("never reads".to_owned(), stream_text)];
    assert_no_key_material(&edge, &texts);
}
