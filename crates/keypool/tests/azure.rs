//! Azure OpenAI as an upstream (issue 16): against the simulator's Azure
//! mode, requests carry `api-key` and the deployment's path with
//! `api-version` (or the v1 API with the deployment as the model), and the
//! keys' limits, told only by `x-ratelimit-remaining-*` and counted by the
//! upstream over 10 s spans, are learned and kept without 429s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat, key, spawn, TestApp};
use keypool::config::UpstreamConfig;
use keypool_sim::{SimConfig, SimKey};

fn azure_upstream(fields: serde_json::Value) -> UpstreamConfig {
    serde_json::from_value(fields).expect("a valid upstream entry")
}

/// A gateway whose one upstream is the simulator in Azure mode, described
/// by `fields` (`base_url` is filled in: the resource's root, plus `path`).
async fn spawn_azure(keys: Vec<SimKey>, path: &str, fields: serde_json::Value, max_wait_s: u64) -> TestApp {
    let secrets: Vec<_> = keys.iter().map(|k| key(&k.key, None)).collect();
    let sim = SimConfig { azure: true, keys, ..SimConfig::default() };
    let path = path.to_owned();
    spawn(sim, secrets, move |c| {
        let mut fields = fields;
        fields["base_url"] = serde_json::json!(format!("{}{path}", c.upstream));
        fields["name"] = serde_json::json!("azure");
        fields["kind"] = serde_json::json!("azure");
        c.upstreams = vec![azure_upstream(fields)];
        c.upstream = keypool::config::Config::default().upstream;
        c.pool.max_wait = std::time::Duration::from_secs(max_wait_s);
    })
    .await
}

#[tokio::test]
async fn requests_carry_api_key_and_the_deployment_path_streaming_included() {
    let app = spawn_azure(
        vec![SimKey::new("azure-key-0000000000000001")],
        "",
        serde_json::json!({"api_version": "2024-10-21", "deployments": {"gpt-4o*": "prod-4o", "gpt-4o-mini": "mini"}}),
        5,
    )
    .await;
    // The most specific pattern wins: gpt-4o-mini is `mini`, gpt-4o-2024 is `prod-4o`.
    for model in ["gpt-4o-mini", "gpt-4o-2024-08-06"] {
        let mut body = chat("hello");
        body["model"] = serde_json::json!(model);
        let resp = app.post("chat/completions").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{model}: {}", resp.text().await.unwrap());
    }
    let mut body = chat("stream me");
    body["stream"] = serde_json::json!(true);
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    // A model no pattern names is its own deployment.
    let resp = app
        .post("embeddings")
        .json(&serde_json::json!({"model": "text-embedding-3-small", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = app.sim.stats();
    assert_eq!(stats.deployments.get("mini"), Some(&2), "{:?}", stats.deployments);
    assert_eq!(stats.deployments.get("prod-4o"), Some(&1), "{:?}", stats.deployments);
    assert_eq!(stats.deployments.get("text-embedding-3-small"), Some(&1), "{:?}", stats.deployments);
    // The simulator takes the key only from `api-key`: every call authenticated.
    let k = app.sim.key_stats("azure-key-0000000000000001");
    assert_eq!((k.ok, k.unauthorized), (4, 0));
    // Paths outside a deployment go under /openai/ with the version too.
    let resp = app.get("models").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A multipart upload's model names its deployment too (read from the form).
    let file = "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\r\nID3\r\n";
    let model = "--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n";
    let resp = transcribe(&app, format!("{model}{file}--b0undary--\r\n")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.sim.stats().deployments.get("whisper-1"), Some(&1));
    // A form whose model cannot be found (here: none) is the caller's 400, not a wrong path.
    let resp = transcribe(&app, format!("{file}--b0undary--\r\n")).await;
    assert_eq!(resp.status(), 400);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["param"], "model", "{err}");
    // A model that cannot be a deployment's name never reaches a URL.
    for model in ["../../openai/files", "a b", ".."] {
        let mut body = chat("hello");
        body["model"] = serde_json::json!(model);
        let resp = app.post("chat/completions").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{model}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["param"], "model", "{err}");
    }
    // Four calls, the model list and the upload: none of the refused ones.
    assert_eq!(app.sim.key_stats("azure-key-0000000000000001").requests, 6);
}

/// Posts `form` (boundary `b0undary`) to the transcriptions endpoint.
async fn transcribe(app: &TestApp, form: String) -> reqwest::Response {
    let request = app.post("audio/transcriptions").header("content-type", "multipart/form-data; boundary=b0undary");
    request.body(form).send().await.unwrap()
}

#[tokio::test]
async fn the_v1_api_gets_the_deployment_as_the_model() {
    let app = spawn_azure(
        vec![SimKey::new("azure-key-0000000000000002")],
        "/openai/v1",
        serde_json::json!({"deployments": {"gpt-4o-mini": "mini-deployment"}}),
        5,
    )
    .await;
    let resp = app.post("chat/completions").json(&chat("hello")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "mini-deployment", "the body named the deployment");
    assert!(app.sim.stats().deployments.is_empty(), "no deployment path on the v1 API");
}

/// Sends `n` chats at once; returns how many succeeded.
async fn burst(app: &TestApp, n: usize) -> usize {
    let sends = (0..n).map(|i| {
        let request = app.post("chat/completions").json(&chat(&format!("request {i}")));
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    futures_util::future::join_all(sends).await.into_iter().filter(|s| *s == 200).count()
}

const SPAN_KEYS: [&str; 2] = ["azure-span-key-000000000001", "azure-span-key-000000000002"];

/// 60 RPM is 10 requests per 10 s span at the simulator; 24 requests at
/// once would get 14 refusals from a per-minute count.
fn span_keys() -> Vec<SimKey> {
    SPAN_KEYS.iter().map(|k| SimKey::new(*k).rpm(60).tpm(100_000)).collect()
}

#[tokio::test]
async fn limits_told_only_by_remaining_headers_are_learned_over_short_spans() {
    let app = spawn_azure(span_keys(), "", serde_json::json!({"api_version": "2024-10-21"}), 40).await;
    assert_eq!(burst(&app, 24).await, 24, "every request served");
    let mut served = 0;
    for k in SPAN_KEYS {
        let stats = app.sim.key_stats(k);
        assert!(stats.rate_limited <= 1, "{k}: {} upstream 429s", stats.rate_limited);
        served += stats.ok;
    }
    assert_eq!(served, 24);
    for view in app.gateway.scheduler().snapshot() {
        // 10 per span (the first answer's `remaining` plus itself) is 60 RPM.
        assert_eq!(view.rpm, Some(60), "key {}", view.id);
        // The first answer's `remaining` plus what its request certainly
        // took: never above the real limit, and short of it by at most the
        // part of one request's charge keypool could not be sure of.
        let tpm = view.tpm.unwrap_or_default();
        assert!((99_900..=100_000).contains(&tpm), "key {}: learned TPM {tpm}", view.id);
    }
}

#[tokio::test]
async fn a_configured_tpm_gives_azures_rpm_and_no_429s() {
    // 10,000 TPM is 60 RPM by Azure's rule (6 per 1,000 TPM).
    let app =
        spawn_azure(span_keys(), "", serde_json::json!({"api_version": "2024-10-21", "limits": {"tpm": 10_000}}), 40)
            .await;
    assert_eq!(burst(&app, 24).await, 24, "every request served");
    for k in SPAN_KEYS {
        assert_eq!(app.sim.key_stats(k).rate_limited, 0, "{k}");
    }
    for view in app.gateway.scheduler().snapshot() {
        assert_eq!((view.rpm, view.tpm), (Some(60), Some(10_000)), "key {}", view.id);
    }
}
