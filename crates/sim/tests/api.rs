//! Endpoint shapes: chat, streams, legacy completions, embeddings, models, speech, echo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use keypool_sim::{SimConfig, SimKey};
use serde_json::{json, Value};

fn cfg() -> SimConfig {
    SimConfig { keys: vec![SimKey::new("sk-test-0001")], ..SimConfig::default() }
}

#[tokio::test]
async fn chat_json_has_usage() {
    let sim = start(cfg()).await;
    let resp = post(&sim, "/chat/completions", "sk-test-0001", &chat_body()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    assert!(resp.headers().get("x-ratelimit-limit-requests").is_none(), "no limits, no headers");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["system_fingerprint"], "fp_sim");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // "Hello there!" = 12 chars = 3 tokens, + 3 for the message; 10 words answered.
    assert_eq!(v["usage"], json!({"prompt_tokens": 6, "completion_tokens": 10, "total_tokens": 16}));
    let words = v["choices"][0]["message"]["content"].as_str().unwrap().split_whitespace().count();
    assert_eq!(words, 10);
    let ks = sim.key_stats("sk-test-0001");
    assert_eq!((ks.requests, ks.ok, ks.prompt_tokens, ks.completion_tokens), (1, 1, 6, 10));
}

#[tokio::test]
async fn chat_n_choices_and_bad_requests() {
    let sim = start(cfg()).await;
    let mut body = chat_body();
    body["n"] = json!(3);
    let v: Value = post(&sim, "/chat/completions", "sk-test-0001", &body).await.json().await.unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["completion_tokens"], 30);

    let resp = common::client()
        .post(format!("{}/chat/completions", sim.base_url()))
        .bearer_auth("sk-test-0001")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().starts_with("We could not parse the JSON body"));
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], Value::Null);

    let resp = post(&sim, "/chat/completions", "sk-test-0001", &json!({"model": "gpt-4o-mini"})).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages");
}

#[tokio::test]
async fn stream_with_usage_is_paced_and_ends_with_done() {
    let sim = start(SimConfig { stream_chunks: 4, chunk_interval: Duration::from_millis(60), ..cfg() }).await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&sim, "/chat/completions", "sk-test-0001", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let started = Instant::now();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut bytes = resp.bytes_stream();
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        arrivals.push(started.elapsed());
    }
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    // role + 4 content + finish + usage
    assert_eq!(chunks.len(), 7);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    let usage_chunk = &chunks[6];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 10);
    assert!(chunks[..6].iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content.split_whitespace().count(), 10);
    // Three pauses of 60 ms between the content chunks: the body must span them.
    assert!(arrivals.last().unwrap() >= &Duration::from_millis(170), "{arrivals:?}");
    assert!(arrivals.len() >= 3, "chunks should arrive separately: {arrivals:?}");
    assert!(eventually(|| sim.key_stats("sk-test-0001").completion_tokens == 10).await);
    assert_eq!(sim.key_stats("sk-test-0001").streams_cancelled, 0);
}

#[tokio::test]
async fn stream_without_usage_has_no_usage_field() {
    let sim = start(cfg()).await;
    let mut body = chat_body();
    body["stream"] = json!(true);
    let text = post(&sim, "/chat/completions", "sk-test-0001", &body).await.text().await.unwrap();
    let events = sse_data(&text);
    assert_eq!(events.len(), 1 + 5 + 1 + 1);
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("usage").is_none());
    }
}

#[tokio::test]
async fn legacy_completions_json_and_stream() {
    let sim = start(cfg()).await;
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7});
    let v: Value = post(&sim, "/completions", "sk-test-0001", &body).await.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"], json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}));
    let mut body = body;
    body["stream"] = json!(true);
    let text = post(&sim, "/completions", "sk-test-0001", &body).await.text().await.unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let joined: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(joined.split_whitespace().count(), 7);
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let sim = start(cfg()).await;
    let body = json!({"model": "text-embedding-3-small", "input": ["hello", "world!"]});
    let v: Value = post(&sim, "/embeddings", "sk-test-0001", &body).await.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let body = json!({"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64"});
    let v: Value = post(&sim, "/embeddings", "sk-test-0001", &body).await.json().await.unwrap();
    // 8 f32 = 32 bytes = 44 base64 characters.
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44);
}

#[tokio::test]
async fn models_speech_and_unknown_paths() {
    let sim = start(cfg()).await;
    let c = common::client();
    let url = sim.base_url();
    let v: Value =
        c.get(format!("{url}/models")).bearer_auth("sk-test-0001").send().await.unwrap().json().await.unwrap();
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "gpt-4o-mini"));
    let v: Value =
        c.get(format!("{url}/models/gpt-4o")).bearer_auth("sk-test-0001").send().await.unwrap().json().await.unwrap();
    assert_eq!(v["owned_by"], "system");
    let resp = c.get(format!("{url}/models/nope")).bearer_auth("sk-test-0001").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");

    let resp =
        post(&sim, "/audio/speech", "sk-test-0001", &json!({"model": "tts-1", "input": "hi", "voice": "alloy"})).await;
    assert_eq!(resp.headers()["content-type"], "audio/mpeg");
    assert_eq!(resp.bytes().await.unwrap().len(), 64 * 1024);

    let resp = post(&sim, "/xyz", "sk-test-0001", &json!({})).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/xyz)");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn echo_reflects_request_under_custom_prefix() {
    let sim = start(SimConfig { path_prefix: "/proxy/v1".into(), ..cfg() }).await;
    assert_eq!(sim.base_url(), format!("http://{}/proxy/v1", sim.addr()));
    let big = vec![b'x'; 3 * 1024 * 1024];
    let resp = common::client()
        .put(format!("{}/echo/a/b?x=1&y=two", sim.base_url()))
        .header("api-key", "sk-test-0001")
        .header("X-Custom", "yes")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/proxy/v1/echo/a/b");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["headers"]["x-custom"], "yes");
    assert_eq!(v["headers"]["api-key"], "sk-test-0001");
    assert_eq!(v["body_len"], 3 * 1024 * 1024);
    // The default prefix is gone under a custom one.
    let url = format!("http://{}/v1/models", sim.addr());
    let resp = common::client().get(url).bearer_auth("sk-test-0001").send().await.unwrap();
    assert_eq!(resp.status(), 404);
}
