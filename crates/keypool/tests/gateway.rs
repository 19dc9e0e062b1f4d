//! The gateway end to end, over real sockets, against the in-repo simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat, error_code, key, spawn};
use futures_util::StreamExt;
use keypool_sim::{LimitMode, SimConfig, SimKey};

fn sim_with(keys: &[(&str, Option<u32>)]) -> SimConfig {
    SimConfig {
        keys: keys
            .iter()
            .map(|(k, rpm)| {
                let key = SimKey::new(*k).mode(LimitMode::RollingWindow);
                match rpm {
                    Some(n) => key.rpm(*n),
                    None => key,
                }
            })
            .collect(),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn thirty_requests_over_three_rpm10_keys_are_spread_evenly_without_upstream_429s() {
    let names = ["sk-even-aaaaaaaaaaaa", "sk-even-bbbbbbbbbbbb", "sk-even-cccccccccccc"];
    let app = spawn(sim_with(&names.map(|n| (n, Some(10)))), names.iter().map(|n| key(n, Some(10))).collect(), |c| {
        c.pool.max_wait = Duration::from_millis(300)
    })
    .await;
    let requests = (0..30).map(|i| app.post("chat/completions").json(&chat(&format!("q{i}"))).send());
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    for name in names {
        let s = app.sim.key_stats(name);
        assert_eq!((s.ok, s.rate_limited), (10, 0), "{name}: {s:?}");
    }
    // The pool is spent for this minute: keypool holds the 31st itself, then
    // answers 429 with Retry-After once max_wait has passed.
    let resp = app.post("chat/completions").json(&chat("one more")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(resp).await, "rate_limit_exceeded");
    assert_eq!(app.sim.stats().keys.values().map(|k| k.rate_limited).sum::<u64>(), 0);
}

#[tokio::test]
async fn chat_json_passes_through_with_usage_counted() {
    let app = spawn(sim_with(&[("sk-json-aaaaaaaaaaaa", None)]), vec![key("sk-json-aaaaaaaaaaaa", None)], |_| {}).await;
    let resp = app.post("chat/completions").json(&chat("hello there")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let view = &app.gateway.scheduler().snapshot()[0];
    assert_eq!((view.requests, view.successes), (1, 1));
}

#[tokio::test]
async fn streamed_chunks_reach_the_caller_while_the_upstream_is_still_streaming() {
    let sim = SimConfig {
        stream_chunks: 10,
        chunk_interval: Duration::from_millis(200),
        ..sim_with(&[("sk-stream-aaaaaaaaaa", None)])
    };
    let app = spawn(sim, vec![key("sk-stream-aaaaaaaaaa", None)], |_| {}).await;
    let mut body = chat("stream please");
    body["stream"] = true.into();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let start = Instant::now();
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if chunk.windows(8).any(|w| w == b"\"content") {
            arrivals.push(start.elapsed());
        }
    }
    let total = start.elapsed();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"usage\":{"), "include_usage chunk passed through");
    // The upstream needs 9 × 200 ms after its first content chunk; a buffering
    // proxy would deliver everything at the end.
    let first = *arrivals.first().expect("content chunks arrived");
    assert!(first < total / 2, "first chunk at {first:?}, done at {total:?}");
    assert!(arrivals.len() >= 5, "chunks arrived separately: {arrivals:?}");
    // The lease finished with the usage the stream reported.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(app.gateway.scheduler().snapshot()[0].successes, 1);
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_in_openai_shape() {
    let app = spawn(sim_with(&[("sk-auth-aaaaaaaaaaaa", None)]), vec![key("sk-auth-aaaaaaaaaaaa", None)], |_| {}).await;
    let resp = app.client.post(app.url("chat/completions")).json(&chat("x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "invalid_api_key");
    let resp = app.client.get(app.url("models")).bearer_auth("kp-not-a-real-token").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "invalid_api_key");
    assert_eq!(app.sim.stats().total_requests, 0, "nothing reached the upstream");
    let health = app.client.get(format!("http://{}/healthz", app.gateway.addr())).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn no_auth_mode_accepts_callers_without_a_token() {
    let app = spawn(sim_with(&[("sk-open-aaaaaaaaaaaa", None)]), vec![key("sk-open-aaaaaaaaaaaa", None)], |c| {
        c.auth = keypool::config::AuthMode::None
    })
    .await;
    let resp = app.client.get(app.url("models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn malformed_json_is_a_clear_400_and_nothing_is_sent() {
    let app = spawn(sim_with(&[("sk-bad-aaaaaaaaaaaaa", None)]), vec![key("sk-bad-aaaaaaaaaaaaa", None)], |_| {}).await;
    let resp = app
        .post("chat/completions")
        .header("content-type", "application/json")
        .body(r#"{"model": "gpt-4o-mini", "messages": [}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_json");
    assert_eq!(app.sim.stats().total_requests, 0);
    // The gateway is still healthy afterwards.
    let ok = app.post("chat/completions").json(&chat("fine")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let app = spawn(sim_with(&[("sk-big-aaaaaaaaaaaaa", None)]), vec![key("sk-big-aaaaaaaaaaaaa", None)], |c| {
        c.max_body_bytes = 64 * 1024
    })
    .await;
    // Bodies far larger than the sockets' buffers: the caller is still sending
    // when the 413 is decided, and must still get to read it.
    let big = "x".repeat(4 * 1024 * 1024);
    let resp = app.post("chat/completions").json(&chat(&big)).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(error_code(resp).await, "request_too_large");
    // An upload without Content-Length is cut off when it passes the limit.
    let chunks = futures_util::stream::iter((0..512).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 8 * 1024])));
    let resp = app
        .post("echo/audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(app.sim.key_stats("sk-big-aaaaaaaaaaaaa").ok, 0, "the cut-off upload was not answered upstream");
}

#[tokio::test]
async fn relay_prefix_query_and_headers_pass_through_and_the_key_replaces_the_token() {
    let sim = SimConfig { path_prefix: "/proxy/v1".into(), ..sim_with(&[("sk-relay-aaaaaaaaaaa", None)]) };
    let app = spawn(sim, vec![key("sk-relay-aaaaaaaaaaa", None)], |_| {}).await;
    assert!(app.sim.base_url().ends_with("/proxy/v1"));
    let resp = app
        .post("echo/some/path?alpha=1&beta=two%20words")
        .header("openai-organization", "org-123")
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 3000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/proxy/v1/echo/some/path");
    assert_eq!(echo["query"], "alpha=1&beta=two%20words");
    assert_eq!(echo["body_len"], 3000);
    let headers = &echo["headers"];
    assert_eq!(headers["authorization"], "Bearer sk-relay-aaaaaaaaaaa");
    assert!(headers.get("openai-organization").is_none(), "account headers belong to the key: {headers}");
    assert_eq!(headers["x-custom"], "kept");
    assert!(headers.get("x-hop").is_none(), "{headers}");
    assert!(!echo.to_string().contains(&app.token), "the gateway token never goes upstream");
}

#[tokio::test]
async fn an_outbound_proxy_carries_every_request() {
    // The simulator plays the proxy. The upstream's host cannot resolve
    // (.invalid), so an answer can only come through the proxy, which is asked
    // for the upstream's absolute URL as HTTP proxies are.
    let app = spawn(sim_with(&[("sk-proxy-aaaaaaaaaaa", None)]), vec![key("sk-proxy-aaaaaaaaaaa", None)], |c| {
        let sim = c.upstream.trim_end_matches("/v1").to_owned();
        c.proxy = Some(sim);
        c.upstream = "http://upstream.keypool.invalid/v1".into();
    })
    .await;
    let resp = app.post("echo/through?x=1").body("hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/echo/through");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echo["headers"]["host"], "upstream.keypool.invalid");
    assert_eq!(echo["headers"]["authorization"], "Bearer sk-proxy-aaaaaaaaaaa");
    let resp = app.post("chat/completions").json(&chat("via the proxy")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0), "{body}");
}

#[tokio::test]
async fn large_uploads_stream_through_and_binary_answers_come_back() {
    let app = spawn(sim_with(&[("sk-upl-aaaaaaaaaaaaa", None)]), vec![key("sk-upl-aaaaaaaaaaaaa", None)], |_| {}).await;
    let chunks = futures_util::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![b'z'; 64 * 1024])));
    let resp = app
        .post("echo/audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["body_len"], 80 * 64 * 1024);
    let speech = app
        .post("audio/speech")
        .json(&serde_json::json!({"model": "tts-1", "input": "hi", "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(speech.status(), 200);
    assert_eq!(speech.headers()["content-type"], "audio/mpeg");
    assert!(speech.bytes().await.unwrap().len() >= 1024);
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let app = spawn(sim_with(&[("sk-err-aaaaaaaaaaaaa", None)]), vec![key("sk-err-aaaaaaaaaaaaa", None)], |_| {}).await;
    let resp = app.get("models/no-such-model").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "model_not_found");
}

#[tokio::test]
async fn without_keys_callers_get_503_and_paths_outside_v1_get_404() {
    let app = spawn(SimConfig::default(), vec![], |_| {}).await;
    let resp = app.post("chat/completions").json(&chat("x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(error_code(resp).await, "no_keys_available");
    let resp = app.client.get(format!("http://{}/nope", app.gateway.addr())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "unknown_url");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_clear_502() {
    let app = spawn(sim_with(&[("sk-down-aaaaaaaaaaaa", None)]), vec![key("sk-down-aaaaaaaaaaaa", None)], |c| {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        c.upstream = format!("http://127.0.0.1:{port}/v1");
    })
    .await;
    let resp = app.get("models").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("4 attempt"), "says how many attempts were made: {message}");
    assert!(!message.contains("127.0.0.1"), "the upstream address is not shown: {message}");
}

#[tokio::test]
async fn dot_segments_cannot_escape_the_relay_prefix() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Directly, and through an outbound proxy (the simulator again), whose
    // client re-parses the URL: a backslash there would become a slash.
    for proxied in [false, true] {
        let sim = SimConfig { path_prefix: "/proxy/v1".into(), ..sim_with(&[("sk-dots-aaaaaaaaaaaa", None)]) };
        let app = spawn(sim, vec![key("sk-dots-aaaaaaaaaaaa", None)], |c| {
            if proxied {
                let origin = c.upstream.trim_end_matches("/proxy/v1").to_owned();
                c.proxy = Some(origin);
                c.upstream = "http://upstream.keypool.invalid/proxy/v1".into();
            }
        })
        .await;
        // HTTP clients normalise dot segments away; a raw request keeps them, as an attacker's would.
        for path in [
            "/v1/../../_sim/stats",
            "/v1/%2e%2e/%2E%2e/_sim/stats",
            "/v1/models/../../../x",
            "/v1/..\\..\\_sim/stats",
            "/v1/models\\..\\..\\..\\x",
            "/v1/.%2E/%2e./_sim/stats",
        ] {
            let mut conn = tokio::net::TcpStream::connect(app.gateway.addr()).await.unwrap();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                app.token
            );
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 400"), "{path} (proxied: {proxied}): {answer}");
            assert!(answer.contains("invalid_path"), "{answer}");
        }
        assert_eq!(app.sim.stats().total_requests, 0, "proxied: {proxied}");
    }
}

#[tokio::test]
async fn a_connection_that_never_completes_its_handshake_times_out_as_a_connect_failure() {
    // A server that accepts TCP but never answers the TLS handshake: the
    // connect timeout covers the whole connection, not only the TCP part.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let app = spawn(sim_with(&[("sk-tls-aaaaaaaaaaaaa", None)]), vec![key("sk-tls-aaaaaaaaaaaaa", None)], |c| {
        c.upstream = format!("https://127.0.0.1:{port}/v1");
        c.timeouts.connect = Duration::from_millis(300);
        c.timeouts.first_byte = Duration::from_secs(60);
        c.retry.max_retries = 0;
    })
    .await;
    let started = Instant::now();
    let resp = app.post("chat/completions").json(&chat("hello")).send().await.unwrap();
    assert_eq!(resp.status(), 502, "a connect failure, not the first-byte timeout's 504");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn callers_may_speak_http2() {
    let app = spawn(sim_with(&[("sk-h2-aaaaaaaaaaaaaa", None)]), vec![key("sk-h2-aaaaaaaaaaaaaa", None)], |_| {}).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp =
        h2.post(app.url("chat/completions")).bearer_auth(&app.token).json(&chat("over h2")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let mut body = chat("stream over h2");
    body["stream"] = true.into();
    let text = h2.post(app.url("chat/completions")).bearer_auth(&app.token).json(&body).send().await.unwrap();
    assert!(text.text().await.unwrap().trim_end().ends_with("data: [DONE]"));
}
