//! Azure mode: `api-key`, deployment paths with `api-version`, the v1 API,
//! only `x-ratelimit-remaining-*`, and Azure's 429 with `retry-after-ms`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keypool_sim::{SimConfig, SimKey};
use serde_json::Value;

fn cfg() -> SimConfig {
    SimConfig { azure: true, keys: vec![SimKey::new("azure-sim-key-1").rpm(6).tpm(1_000)], ..SimConfig::default() }
}

async fn send(url: String, auth: (&str, &str)) -> reqwest::Response {
    client().post(url).header(auth.0, auth.1).json(&chat_body()).send().await.unwrap()
}

#[tokio::test]
async fn paths_keys_headers_and_refusals_are_azures() {
    let sim = start(cfg()).await;
    let base = sim.base_url();
    let deployment = format!("{base}/openai/deployments/mini/chat/completions?api-version=2024-10-21");
    // Without api-version, or with a bearer token: refused as Azure refuses.
    let resp = send(format!("{base}/openai/deployments/mini/chat/completions"), ("api-key", "azure-sim-key-1")).await;
    assert_eq!(resp.status(), 404);
    let resp = send(deployment.clone(), ("authorization", "Bearer azure-sim-key-1")).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "401");
    // Served: only what is left is told (1 request per 10 s at 6 RPM).
    let resp = send(deployment.clone(), ("api-key", "azure-sim-key-1")).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(h.get("x-ratelimit-remaining-tokens").is_some());
    assert!(h.get("x-ratelimit-limit-requests").is_none() && h.get("x-ratelimit-reset-requests").is_none());
    assert_eq!(sim.stats().deployments.get("mini"), Some(&2), "counted as presented");
    // The next within the span: a 429 in Azure's words, with both retry headers.
    let resp = send(deployment, ("api-key", "azure-sim-key-1")).await;
    assert_eq!(resp.status(), 429);
    let ms: u64 = resp.headers()["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!((9_000..=10_000).contains(&ms), "{ms}");
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("exceeded call rate limit"), "{body}");
}

#[tokio::test]
async fn the_v1_api_needs_no_version() {
    let sim =
        start(SimConfig { azure: true, keys: vec![SimKey::new("azure-sim-key-2")], ..SimConfig::default() }).await;
    let resp = send(format!("{}/openai/v1/chat/completions", sim.base_url()), ("api-key", "azure-sim-key-2")).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = client()
        .get(format!("{}/openai/models?api-version=2024-10-21", sim.base_url()))
        .header("api-key", "azure-sim-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
