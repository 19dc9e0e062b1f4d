//! Key states, injected faults, cancelled streams, counters and the control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use keypool_sim::{Faults, KeyState, KeyStats, SimConfig, SimKey};
use serde_json::{json, Value};

#[tokio::test]
async fn invalid_and_unknown_keys_get_401() {
    let sim = start(SimConfig {
        keys: vec![SimKey::new("sk-revoked-1234").state(KeyState::Invalid)],
        ..SimConfig::default()
    })
    .await;
    for key in ["sk-revoked-1234", "sk-unknown-9876"] {
        let resp = post(&sim, "/chat/completions", key, &chat_body()).await;
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let masked = format!("{}{}{}", &key[..3], "*".repeat(key.len() - 7), &key[key.len() - 4..]);
        assert!(v["error"]["message"].as_str().unwrap().starts_with(&format!("Incorrect API key provided: {masked}.")));
    }
    let resp =
        common::client().post(format!("{}/chat/completions", sim.base_url())).json(&chat_body()).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(sim.key_stats("sk-revoked-1234").unauthorized, 1);
    assert_eq!(sim.stats().total_requests, 3);
}

#[tokio::test]
async fn insufficient_quota_and_runtime_key_changes() {
    let sim = start(SimConfig { keys: vec![SimKey::new("sk-broke-0000")], ..SimConfig::default() }).await;
    sim.set_key_state("sk-broke-0000", KeyState::InsufficientQuota);
    let resp = post(&sim, "/chat/completions", "sk-broke-0000", &chat_body()).await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(v["error"]["message"], "You exceeded your current quota, please check your plan and billing details.");
    sim.add_key(SimKey::new("sk-broke-0000"));
    assert_eq!(post(&sim, "/chat/completions", "sk-broke-0000", &chat_body()).await.status(), 200);
    let ks = sim.key_stats("sk-broke-0000");
    assert_eq!((ks.requests, ks.insufficient_quota, ks.ok), (2, 1, 1));
    assert_eq!(sim.key_stats("never-seen"), KeyStats::default());
}

#[tokio::test]
async fn accept_any_key_and_control_plane() {
    let sim = start(SimConfig { accept_any_key: true, ..SimConfig::default() }).await;
    assert_eq!(post(&sim, "/chat/completions", "whatever", &chat_body()).await.status(), 200);
    let c = common::client();
    let root = format!("http://{}", sim.addr());
    let resp =
        c.post(format!("{root}/_sim/keys")).json(&json!({"key": "whatever", "state": "invalid"})).send().await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(post(&sim, "/chat/completions", "whatever", &chat_body()).await.status(), 401);
    let faults = json!({"status_override": [400, "{\"error\":{\"message\":\"too long\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"context_length_exceeded\"}}"]});
    assert!(c.post(format!("{root}/_sim/faults")).json(&faults).send().await.unwrap().status().is_success());
    let resp = post(&sim, "/chat/completions", "other", &chat_body()).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "context_length_exceeded");
    let stats: Value = c.get(format!("{root}/_sim/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["total_requests"], 3);
    assert_eq!(stats["keys"]["whatever"]["ok"], 1);
    assert_eq!(stats["keys"]["whatever"]["unauthorized"], 1);
}

#[tokio::test]
async fn injected_500_reset_and_hang() {
    let sim = start(SimConfig { accept_any_key: true, ..SimConfig::default() }).await;
    sim.set_faults(Faults { error_500_rate: 1.0, ..Faults::default() });
    let resp = post(&sim, "/chat/completions", "sk-x", &chat_body()).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["type"], "server_error");

    sim.set_faults(Faults { reset_rate: 1.0, ..Faults::default() });
    let err = common::client()
        .post(format!("{}/chat/completions", sim.base_url()))
        .bearer_auth("sk-x")
        .json(&chat_body())
        .send()
        .await;
    assert!(err.is_err(), "a reset must be a connection error, got {err:?}");

    sim.set_faults(Faults { hang_rate: 1.0, hang_for: Duration::from_millis(150), ..Faults::default() });
    let started = std::time::Instant::now();
    assert_eq!(post(&sim, "/chat/completions", "sk-x", &chat_body()).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let ks = sim.key_stats("sk-x");
    assert_eq!((ks.requests, ks.server_errors, ks.resets, ks.hangs, ks.ok), (3, 1, 1, 1, 1));
}

#[tokio::test]
async fn stream_failure_mid_way_has_error_event_and_no_done() {
    let sim = start(SimConfig { accept_any_key: true, ..SimConfig::default() }).await;
    sim.set_faults(Faults { fail_stream_after_chunks: Some(2), ..Faults::default() });
    let mut body = chat_body();
    body["stream"] = json!(true);
    let text = post(&sim, "/chat/completions", "sk-x", &body).await.text().await.unwrap();
    let events = sse_data(&text);
    // role + 2 content chunks + error
    assert_eq!(events.len(), 4);
    let last: Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn client_leaving_a_stream_is_counted() {
    let cfg = SimConfig {
        accept_any_key: true,
        stream_chunks: 50,
        chunk_interval: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    let resp = post(&sim, "/chat/completions", "sk-leaver", &body).await;
    let mut bytes = resp.bytes_stream();
    let _first = bytes.next().await.unwrap().unwrap();
    drop(bytes);
    assert!(eventually(|| sim.key_stats("sk-leaver").streams_cancelled == 1).await);
}

#[tokio::test]
async fn latency_delays_answers_and_shutdown_stops_accepting() {
    let sim =
        start(SimConfig { accept_any_key: true, latency: Duration::from_millis(100), ..SimConfig::default() }).await;
    let started = std::time::Instant::now();
    assert_eq!(post(&sim, "/chat/completions", "k", &chat_body()).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
    sim.set_latency(Duration::ZERO);
    let addr = sim.addr();
    sim.shutdown();
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still open after shutdown");
}
