//! The headers a caller reads on every proxied answer (`x-keypool-*`,
//! `Server-Timing`, the pool's `x-ratelimit-*`), checked against the
//! request's record in the admin API and the keys' live state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat, spawn, TestApp};
use keypool::config::{AdminToken, Config};
use keypool::store::NewKey;
use keypool_sim::{SimConfig, SimKey};
use reqwest::header::HeaderMap;
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";
const KEY_A: &str = "sk-headers-a-0123456789";
const KEY_B: &str = "sk-headers-b-0123456789";

fn keys() -> Vec<NewKey> {
    vec![
        NewKey { secret: KEY_A.into(), rpm: Some(50), ..NewKey::default() },
        NewKey { secret: KEY_B.into(), rpm: Some(70), ..NewKey::default() },
    ]
}

/// A simulator that knows both keys, each with limits of its own (which
/// keypool's configured RPM overrides), and answers after `latency`.
fn sim(latency: Duration) -> SimConfig {
    SimConfig {
        keys: vec![SimKey::new(KEY_A).rpm(1000).tpm(1_000_000), SimKey::new(KEY_B).rpm(1000).tpm(1_000_000)],
        latency,
        ..SimConfig::default()
    }
}

async fn start(latency: Duration, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn(sim(latency), keys(), |c| {
        c.admin_token = Some(AdminToken::new(ADMIN));
        tweak(c);
    })
    .await
}

async fn admin(app: &TestApp, path: &str) -> Value {
    let url = format!("http://{}/admin/api{path}", app.gateway.addr());
    app.client.get(url).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap()
}

/// The request's record (with its attempt log) once it is written.
async fn record(app: &TestApp, request_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = admin(app, &format!("/requests?request_id={request_id}")).await;
        if let Some(id) = page["data"][0]["id"].as_i64() {
            return admin(app, &format!("/requests/{id}")).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "no record for {request_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap_or_else(|| panic!("{name} missing: {headers:?}")).to_str().unwrap()
}

fn ms(us: i64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// Server-Timing's entries as (name, dur in ms).
fn timing(headers: &HeaderMap) -> Vec<(String, f64)> {
    h(headers, "server-timing")
        .split(',')
        .map(|e| {
            let (name, dur) = e.trim().split_once(";dur=").unwrap();
            (name.to_owned(), dur.parse().unwrap())
        })
        .collect()
}

/// The headers against the record: the key, the attempts, the queue wait,
/// the timing entries; returns the record.
async fn check_against_record(app: &TestApp, headers: &HeaderMap) -> Value {
    let rec = record(app, h(headers, "x-keypool-request-id")).await;
    assert_eq!(h(headers, "x-keypool-key"), rec["key_id"].to_string(), "{rec}");
    assert_eq!(h(headers, "x-keypool-attempts"), rec["attempts"].to_string());
    let attempts = rec["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len().to_string(), h(headers, "x-keypool-attempts"));
    let queue = rec["queue_wait_us"].as_i64().unwrap();
    assert_eq!(h(headers, "x-keypool-queue-ms"), ms(queue));
    let upstream: i64 = attempts.iter().map(|a| a["duration_us"].as_i64().unwrap()).sum();
    let t = timing(headers);
    let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["keypool", "queue", "upstream"]);
    let raw = h(headers, "server-timing");
    assert!(raw.contains(&format!("queue;dur={}", ms(queue))), "{raw}");
    assert!(raw.contains(&format!("upstream;dur={}", ms(upstream))), "{raw} vs {attempts:?}");
    // keypool's own share: what is left of the time to the head.
    let own = t[0].1;
    let ttfb_ms = rec["ttfb_us"].as_f64().unwrap() / 1000.0;
    let total_ms = rec["duration_us"].as_f64().unwrap() / 1000.0;
    assert!(own >= 0.0 && own + t[1].1 + t[2].1 <= total_ms + 0.001, "{raw} total {total_ms}");
    assert!(own + t[1].1 + t[2].1 + 0.001 >= ttfb_ms - 1.0, "{raw} ttfb {ttfb_ms}");
    rec
}

/// The sum over the keys that can serve of what the scheduler says they have left.
async fn pool_remaining(app: &TestApp) -> (u64, u64) {
    let keys = admin(app, "/keys").await;
    let live = keys.as_array().unwrap().iter().filter(|k| k["status"] == "active" || k["status"] == "cooling");
    live.fold((0, 0), |(limit, left), k| {
        (limit + k["effective_rpm"].as_u64().unwrap(), left + k["remaining_requests"].as_u64().unwrap())
    })
}

#[tokio::test]
async fn plain_and_streamed_answers_say_what_the_request_did() {
    let app = start(Duration::from_millis(150), |c| c.limits.max_inflight = Some(1)).await;
    // Three at once on two keys taking one each: one waits for a key.
    let sends = (0..3).map(|i| app.post("/chat/completions").json(&chat(&format!("hi {i}"))).send());
    let answers = futures_util::future::join_all(sends).await;
    let mut waited = 0;
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        let headers = r.headers().clone();
        r.bytes().await.unwrap();
        let rec = check_against_record(&app, &headers).await;
        if rec["queue_wait_us"].as_i64().unwrap() > 50_000 {
            waited += 1;
        }
        let limit: u64 = h(&headers, "x-ratelimit-limit-requests").parse().unwrap();
        assert_eq!(limit, 120, "the pool's RPM: 50 + 70, not the upstream's 1000 a key");
        assert!(h(&headers, "x-ratelimit-reset-requests").ends_with('s'));
    }
    assert!(waited >= 1, "one request waited for a key");

    // One alone, after the view's refresh interval: its remaining is the pool's now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.post("/chat/completions").json(&chat("alone")).send().await.unwrap();
    let headers = r.headers().clone();
    r.bytes().await.unwrap();
    let (limit, left) = pool_remaining(&app).await;
    assert_eq!(h(&headers, "x-ratelimit-limit-requests"), limit.to_string());
    assert_eq!(h(&headers, "x-ratelimit-remaining-requests"), left.to_string());
    assert_eq!(left, 120 - 4);
    // Each key's TPM is learned from the upstream's headers: 1M a key.
    assert_eq!(h(&headers, "x-ratelimit-limit-tokens"), "2000000");
    let reset = keypool::upstream::parse_go_duration(h(&headers, "x-ratelimit-reset-requests")).unwrap();
    // The request just sent leaves the rolling minute last: about 60 s (a
    // slow machine may take a few seconds between its admission and here).
    assert!(reset > Duration::from_secs(50) && reset <= Duration::from_secs(60), "{reset:?}");
    check_against_record(&app, &headers).await;

    // A stream: the same at its head, before its body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut body = chat("stream");
    body["stream"] = true.into();
    let r = app.post("/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert!(h(&headers, "content-type").starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    let (_, left) = pool_remaining(&app).await;
    assert_eq!(h(&headers, "x-ratelimit-remaining-requests"), left.to_string());
    let rec = check_against_record(&app, &headers).await;
    assert_eq!(rec["stream"], true);
    app.gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_settings_keep_the_upstreams_ratelimit_headers_and_hide_the_key() {
    let app = start(Duration::ZERO, |c| {
        c.headers.key_id = false;
        c.headers.upstream_ratelimit = true;
    })
    .await;
    let r = app.post("/chat/completions").json(&chat("hi")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert!(headers.get("x-keypool-key").is_none());
    assert_eq!(h(&headers, "x-keypool-attempts"), "1");
    assert!(headers.get("server-timing").is_some());
    // The upstream's own, for the one key: 1000 a minute, one used.
    assert_eq!(h(&headers, "x-ratelimit-limit-requests"), "1000");
    assert_eq!(h(&headers, "x-ratelimit-remaining-requests"), "999");
    app.gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn keypools_own_error_answers_carry_what_applies() {
    // The upstream knows neither key: both turn invalid, and keypool answers.
    let sim = SimConfig { keys: vec![], ..SimConfig::default() };
    let app = spawn(sim, keys(), |c| c.admin_token = Some(AdminToken::new(ADMIN))).await;
    let r = app.post("/chat/completions").json(&chat("hi")).send().await.unwrap();
    assert!(r.status().is_client_error() || r.status().is_server_error(), "{}", r.status());
    let headers = r.headers().clone();
    r.bytes().await.unwrap();
    let rec = record(&app, h(&headers, "x-keypool-request-id")).await;
    assert_eq!(h(&headers, "x-keypool-attempts"), rec["attempts"].to_string());
    assert_eq!(h(&headers, "x-keypool-attempts"), "2", "both keys tried: {rec}");
    assert_eq!(h(&headers, "x-keypool-key"), rec["key_id"].to_string());
    assert_eq!(timing(&headers).len(), 3);
    // No key can serve: the pool has no limits to tell.
    assert!(headers.get("x-ratelimit-remaining-requests").is_none(), "{headers:?}");
    // Refused before any attempt: no key, zero attempts.
    let r = app.post("/chat/completions").body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("x-keypool-key").is_none());
    assert_eq!(h(r.headers(), "x-keypool-attempts"), "0");
    app.gateway.shutdown().await.unwrap();
}
