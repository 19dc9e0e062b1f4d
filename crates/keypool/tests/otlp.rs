//! Trace export: with `telemetry.otlp_endpoint` set, a collector (here a
//! small OTLP/HTTP receiver on 127.0.0.1) gets one span per request, named
//! by the request's id as in `x-keypool-request-id`, with its status,
//! model, key, attempts and tokens.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use common::serve::Served;
use keypool_sim::{SimConfig, SimKey, Simulator};
use serde_json::Value;

const K1: &str = "sk-otlp-test-key-one-6a1f3d8c0b5e9274";

/// A receiver of OTLP/HTTP JSON trace exports: every span it got.
async fn receiver() -> (String, Arc<Mutex<Vec<(Value, Value)>>>) {
    let spans: Arc<Mutex<Vec<(Value, Value)>>> = Arc::default();
    let got = Arc::clone(&spans);
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let got = Arc::clone(&got);
            async move {
                assert_eq!(headers["content-type"], "application/json");
                let export: Value = serde_json::from_slice(&body).unwrap();
                for rs in export["resourceSpans"].as_array().unwrap() {
                    for ss in rs["scopeSpans"].as_array().unwrap() {
                        for span in ss["spans"].as_array().unwrap() {
                            got.lock().unwrap().push((rs["resource"].clone(), span.clone()));
                        }
                    }
                }
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

/// A span attribute's value, whatever its type (`stringValue`, `intValue`
/// as a number or a string, …).
fn attr(span: &Value, key: &str) -> Option<Value> {
    let kv = span["attributes"].as_array()?.iter().find(|kv| kv["key"] == key)?;
    let v = kv["value"].as_object()?.values().next()?.clone();
    Some(match v {
        Value::String(s) if key != "keypool.request_id" => {
            s.parse::<i64>().map(Value::from).unwrap_or(Value::String(s))
        }
        other => other,
    })
}

fn nanos(span: &Value, field: &str) -> u128 {
    match &span[field] {
        Value::String(s) => s.parse().unwrap(),
        v => u128::from(v.as_u64().unwrap()),
    }
}

#[tokio::test]
async fn a_collector_gets_one_span_per_request_named_by_its_request_id() {
    let sim = Simulator::start(SimConfig { keys: vec![SimKey::new(K1)], ..SimConfig::default() }).await.unwrap();
    let (endpoint, spans) = receiver().await;
    let config = format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"keypool-otlp-test\"\n");
    let served = Served::start(&sim.base_url(), &[K1], &config, &[]).await;
    let http = reqwest::Client::new();
    let mut sent: Vec<(String, u16)> = Vec::new();
    for body in [
        common::chat("one"),
        serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "two"}]}),
        serde_json::json!({"model": 5}),
    ] {
        let (status, id) = served.chat(&body).await;
        sent.push((id, status));
    }
    // A refused token starts no request: no span.
    let refused = http.post(format!("{}/chat/completions", served.base)).bearer_auth("kp-wrong").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(sent.iter().map(|s| s.1).collect::<Vec<_>>(), [200, 200, 400]);

    let deadline = Instant::now() + Duration::from_secs(15);
    while spans.lock().unwrap().len() < sent.len() {
        assert!(Instant::now() < deadline, "spans exported: {:#?}\n{}", spans.lock().unwrap(), served.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another export or two would carry any span made twice.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), sent.len(), "one span per request: {spans:#?}");
    for (id, status) in &sent {
        let (resource, span) = spans
            .iter()
            .find(|(_, s)| attr(s, "keypool.request_id") == Some(Value::from(id.as_str())))
            .unwrap_or_else(|| panic!("a span for {id}: {spans:#?}"));
        let service = resource["attributes"].as_array().unwrap().iter().find(|kv| kv["key"] == "service.name");
        assert_eq!(service.unwrap()["value"]["stringValue"], "keypool-otlp-test");
        assert_eq!(span["name"], "POST /v1/chat/completions");
        assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
        assert!(nanos(span, "startTimeUnixNano") < nanos(span, "endTimeUnixNano"), "{span}");
        assert_eq!(attr(span, "http.request.method"), Some(Value::from("POST")));
        assert_eq!(attr(span, "http.response.status_code"), Some(Value::from(*status)));
        if *status == 200 {
            assert_eq!(attr(span, "gen_ai.request.model"), Some(Value::from("gpt-4o-mini")));
            assert_eq!(attr(span, "keypool.key_id"), Some(Value::from(1)));
            assert_eq!(attr(span, "keypool.attempts"), Some(Value::from(1)));
            assert!(attr(span, "gen_ai.usage.input_tokens").unwrap().as_i64().unwrap() > 0, "{span}");
            assert!(attr(span, "gen_ai.usage.output_tokens").unwrap().as_i64().unwrap() > 0, "{span}");
            assert_eq!(attr(span, "error.type"), None);
        } else {
            assert!(attr(span, "error.type").is_some(), "{span}");
        }
    }
}
