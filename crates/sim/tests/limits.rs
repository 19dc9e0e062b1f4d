//! Rate limits over real sockets: 429 bodies, retry-after and x-ratelimit headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use keypool_sim::{LimitMode, SimConfig, SimKey};
use serde_json::Value;

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn rpm_bucket_fourth_request_is_429() {
    let sim =
        start(SimConfig { keys: vec![SimKey::new("sk-limited-aaaa").rpm(3).tpm(40_000)], ..SimConfig::default() })
            .await;
    for i in 0..3 {
        let resp = post(&sim, "/chat/completions", "sk-limited-aaaa", &chat_body()).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "x-ratelimit-limit-requests"), "3");
        assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), (2 - i).to_string());
        assert_eq!(header(&resp, "x-ratelimit-limit-tokens"), "40000");
    }
    let resp = post(&sim, "/chat/completions", "sk-limited-aaaa", &chat_body()).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "0");
    // The bucket is refilled in under 60 s: a Go duration such as "59.99s".
    assert!(header(&resp, "x-ratelimit-reset-requests").ends_with('s'));
    // 3 requests of 6 + 10 tokens were charged; the bucket refills ~0.67 token per ms meanwhile.
    let remaining: u64 = header(&resp, "x-ratelimit-remaining-tokens").parse().unwrap();
    assert!((40_000 - 48..40_000 - 30).contains(&remaining), "remaining tokens {remaining}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Rate limit reached for gpt-4o-mini in organization org-sim on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in "),
        "{msg}"
    );
    let ks = sim.key_stats("sk-limited-aaaa");
    assert_eq!((ks.requests, ks.ok, ks.rate_limited), (4, 3, 1));
}

#[tokio::test]
async fn tpm_refusal_says_tokens() {
    let sim = start(SimConfig { keys: vec![SimKey::new("sk-tokens-bbbb").tpm(20)], ..SimConfig::default() }).await;
    // Costs 6 + 10 = 16 tokens: one fits, the second does not.
    assert_eq!(post(&sim, "/chat/completions", "sk-tokens-bbbb", &chat_body()).await.status(), 200);
    let resp = post(&sim, "/chat/completions", "sk-tokens-bbbb", &chat_body()).await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "x-ratelimit-limit-requests").is_empty(), "no rpm, no request trio");
    assert_eq!(header(&resp, "x-ratelimit-limit-tokens"), "20");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "tokens");
    assert!(v["error"]["message"].as_str().unwrap().contains("tokens per min (TPM): Limit 20, Used 16, Requested 16."));
}

#[tokio::test(start_paused = true)]
async fn rolling_window_lets_request_through_after_60s() {
    let key = SimKey::new("sk-window-cccc").rpm(1).mode(LimitMode::RollingWindow);
    let sim = start(SimConfig { keys: vec![key], ..SimConfig::default() }).await;
    let resp = post(&sim, "/chat/completions", "sk-window-cccc", &chat_body()).await;
    assert_eq!(resp.status(), 200);
    let resp = post(&sim, "/chat/completions", "sk-window-cccc", &chat_body()).await;
    assert_eq!(resp.status(), 429);
    tokio::time::advance(Duration::from_secs(61)).await;
    let resp = post(&sim, "/chat/completions", "sk-window-cccc", &chat_body()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "0");
}

#[tokio::test]
async fn rate_limit_headers_can_be_turned_off() {
    let cfg = SimConfig {
        keys: vec![SimKey::new("sk-quiet-dddd").rpm(5)],
        send_rate_limit_headers: false,
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let resp = post(&sim, "/chat/completions", "sk-quiet-dddd", &chat_body()).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "x-ratelimit-limit-requests").is_empty());
}
