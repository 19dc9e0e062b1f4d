//! keypool's own log, read from a `keypool serve` process: plain text
//! without colour codes when stderr is not a terminal, one JSON object per
//! line with `--log-format json`, one line per request, a line per key
//! state change, and refused gateway tokens logged within a bound, naming
//! the caller (behind trusted proxies, from `X-Forwarded-For`). No line
//! holds a key or a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::serve::Served;
use keypool::store::Store;
use keypool_sim::{KeyState, SimConfig, SimKey, Simulator};
use serde_json::Value;

const K1: &str = "sk-logs-test-key-one-4e7b1c9a2d5f8036";
const BAD: &str = "sk-logs-test-key-bad-9c2e5a8f1b7d3064";

async fn sim(keys: Vec<SimKey>) -> Simulator {
    Simulator::start(SimConfig { keys, ..SimConfig::default() }).await.unwrap()
}

/// Sends a chat request; returns its status and `x-keypool-request-id`.
async fn chat(served: &Served, stream: bool) -> (u16, String) {
    let mut body = common::chat("hello there");
    if stream {
        body["stream"] = Value::Bool(true);
    }
    served.chat(&body).await
}

fn assert_no_secret(served: &Served) {
    let log = served.log();
    for secret in [K1, BAD, served.token.as_str()] {
        assert!(!log.contains(secret) && !log.contains(&secret[12..]), "a secret in the log:\n{log}");
    }
}

/// The JSON lines of `target`.
fn of_target(served: &Served, target: &str) -> Vec<Value> {
    served.json_lines().into_iter().filter(|l| l["target"] == target).collect()
}

#[tokio::test]
async fn text_lines_have_no_colour_codes_and_a_request_has_one_line() {
    let sim = sim(vec![SimKey::new(K1)]).await;
    let mut served = Served::start(&sim.base_url(), &[K1], "", &[]).await;
    let (status, id) = chat(&served, false).await;
    assert_eq!(status, 200);
    let line = served.wait_for_line("the request's line", |l| l.contains(&id)).await;
    // A later request's line is written after it: a second line for the first would be there by then.
    let (_, later) = chat(&served, false).await;
    served.wait_for_line("the next request's line", |l| l.contains(&later)).await;

    let log = served.log();
    assert!(!log.contains('\x1b'), "no ANSI escape codes when stderr is a pipe:\n{log}");
    assert_eq!(served.lines().iter().filter(|l| l.contains(&id)).count(), 1, "{log}");
    assert!(line.contains("INFO") && line.contains("keypool::request"), "{line}");
    for field in
        ["key_id=1", "gpt-4o-mini", "status=200", "attempts=1", "latency_ms=", "prompt_tokens=", "completion_tokens="]
    {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(serde_json::from_str::<Value>(&line).is_err(), "text, not JSON, by default");
    assert_no_secret(&served);
}

#[tokio::test]
async fn json_format_is_one_object_per_line_and_a_request_has_one_line() {
    let sim = sim(vec![SimKey::new(K1)]).await;
    // A configured admin token: the first start's one-time announcement of a
    // generated token is plain text on stderr whatever the log format
    // (docs/logs.md), and this test holds every stderr line to JSON.
    let config = "admin_token = \"kpa_test_admin_token_for_the_json_log\"\n";
    let mut served = Served::start(&sim.base_url(), &[K1], config, &["--log-format", "json"]).await;
    let mut ids = Vec::new();
    for stream in [false, true, false] {
        let (status, id) = chat(&served, stream).await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    let last = ids.last().unwrap().clone();
    served.wait_for_line("the last request's line", |l| l.contains(&last)).await;
    // A streamed answer's request ends when its body does: give it a moment.
    let first = ids[1].clone();
    served.wait_for_line("the streamed request's line", |l| l.contains(&first)).await;

    let lines = served.lines();
    assert!(lines.len() > ids.len(), "{lines:?}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object() && v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    let requests = of_target(&served, "keypool::request");
    for id in &ids {
        let mine: Vec<&Value> = requests.iter().filter(|r| r["request_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 1, "one line for {id}: {requests:#?}");
        let r = mine[0];
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["key_id"], 1);
        assert_eq!(r["model"], "gpt-4o-mini");
        assert_eq!(r["status"], 200);
        assert_eq!(r["attempts"], 1);
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["prompt_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["client"], "127.0.0.1");
    }
    assert_eq!(requests.len(), ids.len(), "{requests:#?}");
    assert_no_secret(&served);
}

#[tokio::test]
async fn a_key_turning_invalid_logs_one_line_with_its_state_and_reason() {
    let sim = sim(vec![SimKey::new(BAD).state(KeyState::Invalid), SimKey::new(K1)]).await;
    // The flag wins over the setting.
    let config = "[telemetry]\nlog_format = \"text\"\n";
    let mut served = Served::start(&sim.base_url(), &[BAD, K1], config, &["--log-format", "json"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.key_stats(BAD).unauthorized == 0 {
        assert!(Instant::now() < deadline, "the invalid key was tried");
        assert_eq!(chat(&served, false).await.0, 200, "retried on the good key");
    }
    for _ in 0..3 {
        chat(&served, false).await;
    }
    let (_, last) = chat(&served, false).await;
    served.wait_for_line("the last request's line", |l| l.contains(&last)).await;

    let changes = of_target(&served, "keypool::key");
    let invalid: Vec<&Value> = changes.iter().filter(|c| c["state"] == "invalid").collect();
    assert_eq!(invalid.len(), 1, "{changes:#?}");
    let c = invalid[0];
    assert_eq!(c["level"], "INFO");
    assert_eq!(c["key_id"], 1);
    assert!(c["reason"].as_str().is_some_and(|r| r.contains("refused")), "{c}");
    assert!(changes.iter().all(|c| c["key_id"] == 1), "the good key did not change: {changes:#?}");
    assert_no_secret(&served);
}

/// Sends a request with a wrong gateway token and `X-Forwarded-For`.
async fn bad_token(served: &Served, forwarded_for: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", served.base))
        .bearer_auth("kp-not-a-live-token-3b9d")
        .header("x-forwarded-for", forwarded_for)
        .json(&common::chat("hi"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_flood_of_bad_tokens_logs_a_bounded_number_of_lines_naming_the_peer() {
    let sim = sim(vec![SimKey::new(K1)]).await;
    let config = "[telemetry]\nlog_format = \"json\"\nauth_failure_log_lines = 3\nauth_failure_log_interval = \"2s\"\n";
    let mut served = Served::start(&sim.base_url(), &[K1], config, &[]).await;
    const FLOOD: usize = 60;
    let began = Instant::now();
    for _ in 0..FLOOD {
        assert_eq!(bad_token(&served, "203.0.113.7").await, 401);
    }
    // Intervals of 2 s the flood may have touched (2 unless the machine is slow).
    let intervals = began.elapsed().as_millis() as usize / 2000 + 2;
    // The next interval: one more refusal, logged after the count of those left out.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(bad_token(&served, "203.0.113.7").await, 401);
    served.wait_for_line("the refusals left out are counted", |l| l.contains("suppressed")).await;
    // The last refusal's own line follows its count.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (refused, counted) = loop {
        let auth = of_target(&served, "keypool::auth");
        let refused: Vec<Value> = auth.iter().filter(|l| l["message"] == "gateway token refused").cloned().collect();
        let counted: u64 = auth.iter().filter_map(|l| l["suppressed"].as_u64()).sum();
        if refused.len() as u64 + counted == FLOOD as u64 + 1 {
            break (refused, counted);
        }
        assert!(Instant::now() < deadline, "every refusal is logged or counted: {auth:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // At most 3 lines for each interval the flood touched; then the last one.
    assert!((4..=3 * intervals + 1).contains(&refused.len()), "bounded: {refused:#?}");
    assert!(counted >= (FLOOD - 3 * intervals) as u64);
    for l in &refused {
        assert_eq!(l["level"], "WARN");
        // No trusted proxy: the header is ignored, the peer is named.
        assert_eq!(l["client"], "127.0.0.1", "{l}");
        assert_eq!(l["reason"], "invalid_token", "{l}");
    }
    assert!(!served.log().contains("203.0.113.7"));
    assert!(!served.log().contains("kp-not-a-live-token-3b9d"), "the token is not logged");
    assert_no_secret(&served);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_named_and_recorded() {
    let sim = sim(vec![SimKey::new(K1)]).await;
    let config = "[telemetry]\nlog_format = \"json\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
                  [records]\nflush_interval = \"50ms\"\n";
    let mut served = Served::start(&sim.base_url(), &[K1], config, &[]).await;
    assert_eq!(bad_token(&served, "198.51.100.9, 203.0.113.7").await, 401);
    let line = served.wait_for_line("the refusal", |l| l.contains("gateway token refused")).await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["client"], "203.0.113.7", "the right-most untrusted address: {line}");

    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", served.base))
        .bearer_auth(&served.token)
        .header("x-forwarded-for", "203.0.113.7")
        .json(&common::chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-keypool-request-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    let line = served.wait_for_line("the request's line", |l| l.contains(&id)).await;
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["client"], "203.0.113.7", "{line}");

    let store = Store::connect(&served.db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        if let Some(r) = store.requests_by_id(&id).await.unwrap().pop() {
            break r;
        }
        assert!(Instant::now() < deadline, "the record is written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record.client_addr.as_deref(), Some("203.0.113.7"));
    store.close().await;
}
