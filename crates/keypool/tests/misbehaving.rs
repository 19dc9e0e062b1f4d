//! Upstreams that misbehave part-way (issue 13 review): error bodies are
//! read bounded in time and size and never carry the key to the caller; a
//! stream that breaks after a `finish_reason` but before `[DONE]` is broken;
//! an upstream that stops taking an upload times out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat, key, spawn};
use keypool_sim::{SimConfig, SimKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "sk-errbody-aaaaaaaaaaaaaaaa";

/// An upstream that answers every request with `head` then `body`, and
/// then keeps the connection open without sending more.
async fn upstream(head: String, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                tokio::time::sleep(Duration::from_secs(120)).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

async fn gateway(base: String) -> common::TestApp {
    let sim = SimConfig { keys: vec![SimKey::new(KEY)], ..SimConfig::default() };
    spawn(sim, vec![key(KEY, None)], move |c| {
        c.upstream = base;
        c.timeouts.idle = Duration::from_millis(300);
        c.retry.max_retries = 0;
    })
    .await
}

#[tokio::test]
async fn an_error_body_that_stalls_part_way_does_not_hold_the_key() {
    let head = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n".to_owned();
    let app = gateway(upstream(head, br#"{"error":{"message":"half"#.to_vec()).await).await;
    let sent = app.post("chat/completions").json(&chat("hi")).send();
    let resp = tokio::time::timeout(Duration::from_secs(10), sent).await.expect("answered, not held").unwrap();
    assert_eq!(resp.status(), 400);
    let _ = tokio::time::timeout(Duration::from_secs(10), resp.bytes()).await.expect("the body ends");
    let view = &app.gateway.scheduler().snapshot()[0];
    assert_eq!(view.inflight, 0, "{view:?}");
}

#[tokio::test]
async fn a_key_quoted_past_the_read_part_of_a_long_error_body_never_reaches_the_caller() {
    let mut body = br#"{"error":{"message":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 70_000));
    body.extend_from_slice(format!(" key {KEY} \",\"type\":\"invalid_request_error\"}}}}").as_bytes());
    let head =
        format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    let app = gateway(upstream(head, body).await).await;
    let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text()).await.expect("the body ends").unwrap();
    assert!(!text.contains(KEY), "the key reached the caller");
    assert!(text.len() <= 64 * 1024 + 1, "cut at the read cap: {}", text.len());
}

#[tokio::test]
async fn a_chat_stream_that_breaks_after_its_finish_reason_still_gets_the_error_event() {
    // Chunked, one event, then the connection closes without the last chunk: a break, not a clean end.
    let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
    let body = format!("{:x}\r\n{event}\r\n", event.len()).into_bytes();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            drop(socket);
        }
    });
    let app = gateway(format!("http://{addr}/v1")).await;
    let mut req = chat("hi");
    req["stream"] = serde_json::json!(true);
    let resp = app.post("chat/completions").json(&req).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text()).await.expect("the body ends").unwrap();
    assert!(text.contains("stream_interrupted") && text.ends_with("data: [DONE]\n\n"), "{text}");
    let view = &app.gateway.scheduler().snapshot()[0];
    assert_eq!((view.successes, view.inflight), (0, 0), "{view:?}");
}

#[tokio::test]
async fn an_upstream_that_stops_taking_an_upload_times_out_as_its_own_fault() {
    // Reads the request head, then never reads again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                tokio::time::sleep(Duration::from_secs(120)).await;
            });
        }
    });
    let sim = SimConfig { keys: vec![SimKey::new(KEY)], ..SimConfig::default() };
    let app = spawn(sim, vec![key(KEY, None)], move |c| {
        c.upstream = format!("http://{addr}/v1");
        c.timeouts.first_byte = Duration::from_millis(500);
        c.timeouts.total = Duration::from_secs(60);
    })
    .await;
    let body = vec![b'x'; 32 * 1024 * 1024];
    let sent =
        app.post("audio/transcriptions").header("content-type", "multipart/form-data; boundary=x").body(body).send();
    let resp = tokio::time::timeout(Duration::from_secs(15), sent).await.expect("answered, not held").unwrap();
    assert_eq!(resp.status(), 504, "{:?}", resp.text().await);
    let view = &app.gateway.scheduler().snapshot()[0];
    assert_eq!((view.inflight, view.status), (0, "active"), "{view:?}");
}
