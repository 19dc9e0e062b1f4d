//! Whose fault an error is: a key is set aside only on evidence about that
//! key; refusals of the request or of the upstream blame none; every form of
//! "come back later" is honoured; the caller and the operator learn why no
//! key served. Against small misbehaving upstreams on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{chat, key, spawn, TestApp};
use keypool::config::Config;
use keypool_sim::SimConfig;
use tokio::time::Instant;

/// One request as the fake upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    key: String,
    body: Bytes,
}

/// What the fake upstream answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: &str) -> Reply {
        Reply { status, headers: Vec::new(), body: body.to_owned(), delay: Duration::ZERO }
    }
    fn ok() -> Reply {
        Reply::new(
            200,
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
        )
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A fake upstream answering every request with `handler`; returns its base
/// URL and what it saw.
async fn fake(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(handler);
    let state = (Arc::clone(&seen), handler);
    let app = axum::Router::new().fallback(
        |axum::extract::State((seen, handler)): axum::extract::State<(Arc<Mutex<Vec<Seen>>>, Handler)>,
         uri: axum::http::Uri,
         headers: HeaderMap,
         body: Bytes| async move {
            let key = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            let req = Seen { path: uri.path().trim_start_matches("/v1/").to_owned(), key, body };
            seen.lock().unwrap().push(req.clone());
            let reply = handler(&req);
            tokio::time::sleep(reply.delay).await;
            let mut resp: Response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
            let ct = if resp.status().is_success() || reply_is_json(resp.status()) {
                "application/json"
            } else {
                "text/html"
            };
            resp.headers_mut().insert("content-type", ct.parse().unwrap());
            for (name, value) in reply.headers {
                resp.headers_mut().insert(name, value.parse().unwrap());
            }
            resp
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
    (format!("http://{addr}/v1"), seen)
}

fn reply_is_json(_: StatusCode) -> bool {
    true
}

/// A gateway in front of `base` holding `keys`.
async fn gateway(base: &str, keys: &[&str], tweak: impl FnOnce(&mut Config)) -> TestApp {
    let base = base.to_owned();
    spawn(SimConfig::default(), keys.iter().map(|k| key(k, None)).collect(), move |c| {
        c.upstream = base;
        c.retry.backoff_base = Duration::from_millis(1);
        c.retry.backoff_cap = Duration::from_millis(5);
        tweak(c);
    })
    .await
}

fn statuses(app: &TestApp) -> Vec<&'static str> {
    app.gateway.scheduler().snapshot().iter().map(|v| v.status).collect()
}

fn hits(seen: &Mutex<Vec<Seen>>, key: &str) -> usize {
    seen.lock().unwrap().iter().filter(|s| s.key == key).count()
}

async fn error_of(resp: reqwest::Response) -> (u16, HeaderMap, serde_json::Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: serde_json::Value = resp.json().await.expect("a JSON error");
    (status, headers, body)
}

const REGION: &str = r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#;

#[tokio::test]
async fn a_region_block_on_every_key_blames_no_key_and_traffic_resumes_when_it_lifts() {
    let blocked = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = Arc::clone(&blocked);
    let (base, seen) =
        fake(move |_| if b.load(std::sync::atomic::Ordering::Relaxed) { Reply::new(403, REGION) } else { Reply::ok() })
            .await;
    let keys = ["sk-region-aaaaaaaaaaaa", "sk-region-bbbbbbbbbbbb", "sk-region-cccccccccccc"];
    let app = gateway(&base, &keys, |_| {}).await;
    let (status, headers, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Country, region, or territory not supported"), "the upstream's words: {message}");
    assert!(message.contains("3 attempt(s)"), "{message}");
    assert!(!message.contains("keys add"), "{message}");
    assert_eq!(body["error"]["code"], "upstream_refused");
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(seen.lock().unwrap().len(), 3, "each key tried once");
    assert_eq!(statuses(&app), ["active", "active", "active"], "no key blamed");
    // The block lifts: the very next request succeeds.
    blocked.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(app.post("chat/completions").json(&chat("hi")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_html_firewall_page_is_quoted_by_its_title_and_blames_no_key() {
    let page = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body><center><h1>403 Forbidden</h1></center><hr><center>nginx</center></body></html>";
    let (base, _) = fake(move |_| Reply::new(403, page)).await;
    let app = gateway(&base, &["sk-html-aaaaaaaaaaaaaa", "sk-html-bbbbbbbbbbbbbb"], |_| {}).await;
    let (status, _, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 403);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"403 Forbidden\"") && !message.contains("<html>"), "{message}");
    assert!(message.contains("2 attempt(s) on 2 key(s)"), "{message}");
    assert_eq!(statuses(&app), ["active", "active"]);
}

#[tokio::test]
async fn a_refusal_only_one_key_gets_is_that_keys_once_another_key_is_served() {
    let (base, seen) = fake(|s| {
        if s.key == "sk-odd-aaaaaaaaaaaaaa" {
            Reply::new(401, r#"{"error":{"message":"Unauthorized","type":"error"}}"#)
        } else {
            Reply::ok()
        }
    })
    .await;
    let app = gateway(&base, &["sk-odd-aaaaaaaaaaaaaa", "sk-odd-bbbbbbbbbbbbbb"], |_| {}).await;
    for _ in 0..6 {
        assert_eq!(app.post("chat/completions").json(&chat("hi")).send().await.unwrap().status(), 200);
    }
    // Once on trial, then invalid when its trial request is refused the same way.
    assert_eq!(hits(&seen, "sk-odd-aaaaaaaaaaaaaa"), 2);
    assert_eq!(statuses(&app), ["invalid", "active"]);
}

#[tokio::test]
async fn a_passing_refusal_puts_a_key_on_trial_and_a_page_or_region_block_never_blames_it() {
    // A: one JSON 401 naming no key, then fine. B: always fine. C: an HTML 403 or a region block on
    // every other request.
    let keys = ["sk-pass-aaaaaaaaaaaaa", "sk-pass-bbbbbbbbbbbbb", "sk-pass-ccccccccccccc"];
    let once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flip = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (base, seen) = fake(move |s| {
        use std::sync::atomic::Ordering::Relaxed;
        match s.key.as_str() {
            "sk-pass-aaaaaaaaaaaaa" if !once.swap(true, Relaxed) => {
                Reply::new(401, r#"{"error":{"message":"Unauthorized","type":"error"}}"#)
            }
            "sk-pass-ccccccccccccc" => match flip.fetch_add(1, Relaxed) % 3 {
                0 => Reply::new(403, "<html><head><title>403 Forbidden</title></head><body>cdn</body></html>"),
                1 => Reply::new(403, REGION),
                _ => Reply::ok(),
            },
            _ => Reply::ok(),
        }
    })
    .await;
    let app = gateway(&base, &keys, |_| {}).await;
    for _ in 0..12 {
        assert_eq!(app.post("chat/completions").json(&chat("hi")).send().await.unwrap().status(), 200);
    }
    assert!(hits(&seen, keys[0]) >= 2, "A served again after its trial");
    assert!(hits(&seen, keys[2]) >= 3, "C was tried again and again");
    assert_eq!(statuses(&app), ["active", "active", "active"], "no key blamed for a passing refusal");
}

#[tokio::test]
async fn a_mismatched_organization_goes_back_to_the_caller_unchanged_and_blames_no_key() {
    let error = r#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
    let (base, seen) = fake(move |_| Reply::new(401, error)).await;
    let keys = ["sk-org-aaaaaaaaaaaaaa", "sk-org-bbbbbbbbbbbbbb", "sk-org-cccccccccccccc", "sk-org-dddddddddddddd"];
    // The caller's header goes upstream: the mismatch is the caller's.
    let app = gateway(&base, &keys, |c| c.server.forward_account_headers = true).await;
    let resp = app.post("chat/completions").header("openai-organization", "org-mine").json(&chat("hi")).send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.unwrap(), error, "byte for byte");
    assert_eq!(seen.lock().unwrap().len(), 1, "one attempt");
    assert!(statuses(&app).iter().all(|s| *s == "active"), "{:?}", statuses(&app));
}

#[tokio::test]
async fn an_account_mismatch_the_caller_did_not_send_is_the_keys_and_another_key_serves() {
    let error = r#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
    let keys = ["sk-acct-aaaaaaaaaaaaa", "sk-acct-bbbbbbbbbbbbb"];
    // Key A's own --organization does not match it; the caller's headers stay home (the default).
    let (base, seen) =
        fake(move |s| if s.key == "sk-acct-aaaaaaaaaaaaa" { Reply::new(401, error) } else { Reply::ok() }).await;
    let app = gateway(&base, &keys, |_| {}).await;
    for _ in 0..4 {
        let resp =
            app.post("chat/completions").header("openai-organization", "org-mine").json(&chat("hi")).send().await;
        assert_eq!(resp.unwrap().status(), 200);
    }
    assert_eq!(hits(&seen, keys[0]), 1, "set aside after one mismatch");
    assert_eq!(statuses(&app), ["invalid", "active"]);
}

#[tokio::test]
async fn every_way_of_saying_no_money_left_exhausts_that_key_and_retries_on_another() {
    let forms: &[(u16, &str)] = &[
        (
            402,
            r#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"Your account is suspended, please check your plan and billing details","type":"exceeded_current_quota_error"}}"#,
        ),
        (
            400,
            r#"{"error":{"code":"Arrearage","param":null,"message":"Access denied, please make sure your account is in good standing.","type":"Arrearage"}}"#,
        ),
        (
            402,
            r#"{"error":{"message":"Insufficient credits. Add more using https://openrouter.ai/settings/credits","code":402}}"#,
        ),
        (403, r#"{"code":30001,"message":"Sorry, your account balance is insufficient","data":null}"#),
        (
            400,
            r#"{"error":{"message":"Billing hard limit has been reached","type":"invalid_request_error","code":"billing_hard_limit_reached"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"Your account is not active, please check your billing details on our website.","type":"billing_not_active","code":"billing_not_active"}}"#,
        ),
    ];
    for (status, body) in forms {
        let (status, body) = (*status, (*body).to_owned());
        let (base, seen) =
            fake(move |s| if s.key == "sk-poor-aaaaaaaaaaaaa" { Reply::new(status, &body) } else { Reply::ok() }).await;
        let app = gateway(&base, &["sk-poor-aaaaaaaaaaaaa", "sk-rich-aaaaaaaaaaaaa"], |_| {}).await;
        for _ in 0..4 {
            let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{status}: retried on the other key");
        }
        assert_eq!(hits(&seen, "sk-poor-aaaaaaaaaaaaa"), 1, "{status}");
        assert_eq!(statuses(&app), ["exhausted", "active"], "{status}");
    }
}

#[tokio::test]
async fn a_model_one_key_lacks_sets_aside_only_that_key_for_that_model() {
    let missing = r#"{"error":{"message":"The model `gpt-x` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    let (base, seen) = fake(move |s| {
        let wants_x = String::from_utf8_lossy(&s.body).contains("gpt-x");
        if wants_x && s.key != "sk-model-bbbbbbbbbbbb" {
            Reply::new(404, missing)
        } else {
            Reply::ok()
        }
    })
    .await;
    let app = gateway(&base, &["sk-model-aaaaaaaaaaaa", "sk-model-bbbbbbbbbbbb"], |_| {}).await;
    let mut body = chat("hi");
    body["model"] = "gpt-x".into();
    for _ in 0..4 {
        assert_eq!(app.post("chat/completions").json(&body).send().await.unwrap().status(), 200);
    }
    let asked_a_for_x = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.key == "sk-model-aaaaaaaaaaaa" && String::from_utf8_lossy(&s.body).contains("gpt-x"))
        .count();
    assert_eq!(asked_a_for_x, 1, "set aside for gpt-x after one 404");
    assert_eq!(statuses(&app), ["active", "active"], "the key itself is fine");
    // Other models still use it.
    let before = hits(&seen, "sk-model-aaaaaaaaaaaa");
    for _ in 0..4 {
        assert_eq!(app.post("chat/completions").json(&chat("hi")).send().await.unwrap().status(), 200);
    }
    assert!(hits(&seen, "sk-model-aaaaaaaaaaaa") > before);
    // A model no key has: the upstream's own 404, unchanged.
    let mut body = chat("hi");
    body["model"] = "gpt-x-none".into();
    let (base2, _) = fake(move |_| Reply::new(404, missing)).await;
    let app2 = gateway(&base2, &["sk-model-cccccccccccc", "sk-model-dddddddddddd"], |_| {}).await;
    let resp = app2.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), missing);
    assert_eq!(statuses(&app2), ["active", "active"]);
}

/// An IMF-fixdate `secs` from now, with its true weekday (a fixed one was
/// refused by httpdate on every other day of the week).
fn http_date_in(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
}

#[tokio::test]
async fn every_form_of_come_back_later_cools_the_key_until_then() {
    let limited =
        r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#;
    type Value = Box<dyn Fn() -> String + Send + Sync>;
    let forms: Vec<(&'static str, Value)> = vec![
        ("retry-after", Box::new(|| http_date_in(20))),
        ("retry-after", Box::new(|| "20.5".to_owned())),
        ("retry-after-ms", Box::new(|| "20000".to_owned())),
        ("x-ratelimit-reset-requests", Box::new(|| "1m30s".to_owned())),
        (
            "x-ratelimit-reset",
            Box::new(|| {
                ((SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 20_000) as u64).to_string()
            }),
        ),
    ];
    for (name, value) in forms {
        let value = Arc::new(value);
        let v = Arc::clone(&value);
        let (base, seen) = fake(move |_| Reply::new(429, limited).header(name, v())).await;
        let app = gateway(&base, &["sk-cool-aaaaaaaaaaaaa"], |c| c.pool.max_wait = Duration::ZERO).await;
        for i in 0..6 {
            let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
            assert_eq!(resp.status(), 429, "{name}");
            let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(wait >= 15, "{name} #{i}: a true Retry-After, got {wait}");
            assert_eq!(resp.headers()["x-should-retry"], "true", "{name}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "{name}: the cooling key was asked once in 1.5 s");
        assert_eq!(statuses(&app), ["cooling"], "{name}");
    }
    // Messages: "try again in 1m30s".
    let (base, seen) = fake(move |_| {
        Reply::new(429, r#"{"error":{"message":"Rate limit reached. Please try again in 1m30s. Visit","type":"requests","code":"rate_limit_exceeded"}}"#)
    })
    .await;
    let app = gateway(&base, &["sk-cool-bbbbbbbbbbbbb"], |c| c.pool.max_wait = Duration::ZERO).await;
    for _ in 0..3 {
        let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
        let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(wait >= 85, "{wait}");
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_caller_and_the_operator_learn_why_no_key_served() {
    let invalid = r#"{"error":{"message":"Incorrect API key provided: sk-dea***aaaa.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let (base, _) = fake(move |_| Reply::new(401, invalid)).await;
    let app = gateway(&base, &["sk-dead-aaaaaaaaaaaaa", "sk-dead-bbbbbbbbbbbbb"], |_| {}).await;
    let root = format!("http://{}", app.gateway.addr());
    assert_eq!(app.client.get(format!("{root}/readyz")).send().await.unwrap().status(), 200);
    let (status, headers, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(message.contains("2 invalid") && !message.contains("keys add"), "{message}");
    assert!(message.contains("attempts made: 2"), "{message}");
    assert_eq!(body["error"]["code"], "no_usable_keys");
    assert_eq!(headers["x-should-retry"], "false");
    // A later request: the same reason, without an attempt.
    let (_, _, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert!(body["error"]["message"].as_str().unwrap().contains("2 invalid"), "{body}");
    let health = app.client.get(format!("{root}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness stays 200");
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!((health["keys"].as_u64(), health["states"]["invalid"].as_u64()), (Some(0), Some(2)), "{health}");
    let ready = app.client.get(format!("{root}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert!(ready["reason"].as_str().unwrap().contains("2 invalid"), "{ready}");
    // No keys at all: then (and only then) the caller is told to add one.
    let empty = gateway(&base, &[], |_| {}).await;
    let (status, _, body) = error_of(empty.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(body["error"]["message"].as_str().unwrap().contains("keys add"), "{body}");
    let ready = empty.client.get(format!("http://{}/readyz", empty.gateway.addr())).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn a_request_larger_than_a_keys_whole_limit_cools_no_key_and_gets_a_400() {
    let big = r#"{"error":{"message":"Request too large for gpt-4 in organization org-x on tokens per min (TPM): Limit 10000, Requested 30000. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    // A key with a larger limit serves it.
    let (base, seen) =
        fake(move |s| if s.key == "sk-small-aaaaaaaaaaaa" { Reply::new(429, big) } else { Reply::ok() }).await;
    let app = gateway(&base, &["sk-small-aaaaaaaaaaaa", "sk-large-aaaaaaaaaaaa"], |_| {}).await;
    assert_eq!(app.post("chat/completions").json(&chat("long")).send().await.unwrap().status(), 200);
    assert!(hits(&seen, "sk-large-aaaaaaaaaaaa") >= 1);
    assert_eq!(statuses(&app), ["active", "active"], "no key cools");
    // None has one: a 400 the SDKs do not retry.
    let (base, _) = fake(move |_| Reply::new(429, big)).await;
    let app = gateway(&base, &["sk-small-bbbbbbbbbbbb", "sk-small-cccccccccccc"], |_| {}).await;
    let (status, headers, body) =
        error_of(app.post("chat/completions").json(&chat("long")).send().await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "request_exceeds_key_limits");
    assert!(body["error"]["message"].as_str().unwrap().contains("Limit 10000, Requested 30000"), "{body}");
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(statuses(&app), ["active", "active"], "no key cools");
}

#[tokio::test]
async fn an_error_that_quotes_the_key_is_masked_before_the_caller_sees_it() {
    let (base, _) = fake(|s| {
        Reply::new(
            400,
            &format!(
                r#"{{"error":{{"message":"Key {} may not use this parameter","type":"invalid_request_error"}}}}"#,
                s.key
            ),
        )
    })
    .await;
    let app = gateway(&base, &["sk-quoted-secret-aaaaaaaaaaaaaaaa"], |_| {}).await;
    let text = app.post("chat/completions").json(&chat("hi")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("sk-quoted-secret-aaaaaaaaaaaaaaaa"), "{text}");
    assert!(text.contains("sk-…aaaa"), "{text}");
    // The same in a refusal keypool quotes.
    let (base, _) = fake(|s| Reply::new(403, &format!("<html><title>Denied for {}</title></html>", s.key))).await;
    let app = gateway(&base, &["sk-quoted-secret-bbbbbbbbbbbbbbbb"], |_| {}).await;
    let text = app.post("chat/completions").json(&chat("hi")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("sk-quoted-secret-bbbbbbbbbbbbbbbb") && text.contains("sk-…bbbb"), "{text}");
}

#[tokio::test]
async fn the_attempt_count_is_true_with_one_key_and_connection_errors_blame_no_key() {
    let (base, seen) = fake(|_| Reply::new(503, r#"{"error":{"message":"overloaded","type":"server_error"}}"#)).await;
    let app = gateway(&base, &["sk-one-aaaaaaaaaaaaaa"], |c| c.retry.max_retries = 3).await;
    let (status, _, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 502);
    assert!(body["error"]["message"].as_str().unwrap().contains("4 attempt(s) on 1 key(s)"), "{body}");
    assert_eq!(seen.lock().unwrap().len(), 4);
    // Nothing listens: every attempt fails to connect; the only key stays in service.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let app = gateway(&dead, &["sk-one-bbbbbbbbbbbbbb"], |c| c.retry.max_retries = 4).await;
    let (status, _, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("5 attempt(s) on 1 key(s)"), "{body}");
    let view = &app.gateway.scheduler().snapshot()[0];
    assert_eq!((view.status, view.failures), ("active", 0), "{view:?}");
}

const INVALID: &str = r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

/// A fake relay without `/models` (404) whose key A is refused once, as a
/// transient 401, then works.
async fn relay_refusing_a_once(
    probe: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    fake(move |s| {
        if s.path == "models" || String::from_utf8_lossy(&s.body).contains("gpt-probe") {
            return probe(s);
        }
        if s.key == "sk-trial-aaaaaaaaaaaa" && !refused.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Reply::new(401, INVALID);
        }
        Reply::ok()
    })
    .await
}

async fn until(app: &TestApp, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses(app) != want {
        assert!(Instant::now() < deadline, "never reached {want:?}: {:?}", statuses(app));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends requests until `key` has served one; it must answer 200.
async fn served_by(app: &TestApp, seen: &Mutex<Vec<Seen>>, key: &str) {
    let before = hits(seen, key);
    for _ in 0..20 {
        assert_eq!(app.post("chat/completions").json(&chat("hi")).send().await.unwrap().status(), 200);
        if hits(seen, key) > before {
            return;
        }
    }
    panic!("{key} never served again");
}

#[tokio::test]
async fn a_probe_404_says_nothing_and_the_key_returns_on_one_trial_request() {
    let (base, seen) = relay_refusing_a_once(|_| Reply::new(404, "404 page not found")).await;
    let keys = ["sk-trial-aaaaaaaaaaaa", "sk-trial-bbbbbbbbbbbb"];
    // Long enough that no probe runs before the first look, however loaded the machine.
    let app = gateway(&base, &keys, |c| c.health.probe_invalid = Duration::from_secs(2)).await;
    served_by(&app, &seen, keys[0]).await;
    assert_eq!(statuses(&app), ["invalid", "active"], "the transient 401 marked it");
    until(&app, &["active", "active"]).await;
    served_by(&app, &seen, keys[0]).await;
    assert_eq!(statuses(&app), ["active", "active"], "its trial request succeeded");
}

#[tokio::test]
async fn a_probe_answered_429_proves_the_key_and_one_answered_no_money_exhausts_it() {
    let (base, _) = fake(|s| match (s.path.as_str(), s.key.as_str()) {
        ("models", "sk-probe-aaaaaaaaaaaa") => Reply::new(
            429,
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#,
        )
        .header("retry-after", "1"),
        ("models", _) => Reply::new(402, r#"{"error":{"message":"Insufficient Balance","type":"unknown_error"}}"#),
        (_, "sk-probe-cccccccccccc") => Reply::ok(),
        _ => Reply::new(401, INVALID),
    })
    .await;
    let keys = ["sk-probe-aaaaaaaaaaaa", "sk-probe-bbbbbbbbbbbb", "sk-probe-cccccccccccc"];
    let app = gateway(&base, &keys, |c| c.health.probe_invalid = Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert_eq!(app.post("chat/completions").json(&chat("hi")).send().await.unwrap().status(), 200);
    }
    until(&app, &["active", "exhausted", "active"]).await;
}

#[tokio::test]
async fn the_probe_can_be_a_one_token_chat_on_a_named_model() {
    let (base, seen) =
        relay_refusing_a_once(|s| if s.path == "models" { Reply::new(404, "404 page not found") } else { Reply::ok() })
            .await;
    let keys = ["sk-trial-aaaaaaaaaaaa", "sk-trial-bbbbbbbbbbbb"];
    let app = gateway(&base, &keys, |c| {
        c.health.probe_invalid = Duration::from_millis(200);
        c.health.probe_model = Some("gpt-probe".into());
    })
    .await;
    served_by(&app, &seen, keys[0]).await;
    until(&app, &["active", "active"]).await;
    let probes: Vec<Seen> = seen.lock().unwrap().iter().filter(|s| s.path == "chat/completions").cloned().collect();
    let probe = probes.iter().find(|s| String::from_utf8_lossy(&s.body).contains("gpt-probe")).expect("a chat probe");
    let body: serde_json::Value = serde_json::from_slice(&probe.body).unwrap();
    assert_eq!((probe.key.as_str(), body["max_tokens"].as_u64()), (keys[0], Some(1)));
    assert!(!seen.lock().unwrap().iter().any(|s| s.path == "models"), "GET models is not used");
}

fn trickle(chunks: usize, every: Duration, fail: bool) -> reqwest::Body {
    let stream = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(every).await;
        if fail && i == chunks - 1 {
            return Some((Err(std::io::Error::other("the caller gave up")), i + 1));
        }
        Some((Ok::<_, std::io::Error>(vec![b'a'; 1024]), i + 1))
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn a_trickled_upload_is_the_callers_own_and_never_opens_the_upstream_breaker() {
    let (base, seen) = fake(|_| Reply::new(200, r#"{"text":"ok"}"#)).await;
    let app = gateway(&base, &["sk-upload-aaaaaaaaaaa"], |c| {
        c.timeouts.first_byte = Duration::from_millis(300);
        c.health.upstream_failures = 1;
        c.health.upstream_probe = Duration::from_secs(60);
        c.pool.max_wait = Duration::from_millis(500);
    })
    .await;
    // Slower than the first-byte timeout, but the upstream answers at once once it has it all.
    let resp = app
        .post("audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(trickle(6, Duration::from_millis(150), false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(seen.lock().unwrap()[0].body.len(), 6 * 1024);
    // A caller that gives up part-way: its own failure, nobody else's.
    let gave_up = app
        .post("audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(trickle(3, Duration::from_millis(150), true))
        .send()
        .await;
    assert!(gave_up.is_err() || gave_up.unwrap().status().is_client_error());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = app.post("chat/completions").json(&chat("hi")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the breaker stayed closed: {}", resp.text().await.unwrap());
    assert_eq!(statuses(&app), ["active"]);
}

#[tokio::test]
async fn a_timed_out_generation_is_sent_again_at_most_once_by_default() {
    let (base, seen) = fake(|_| Reply::ok().after(Duration::from_millis(1500))).await;
    let keys = ["sk-slow-aaaaaaaaaaaaa", "sk-slow-bbbbbbbbbbbbb", "sk-slow-ccccccccccccc"];
    let app = gateway(&base, &keys, |c| {
        c.timeouts.first_byte = Duration::from_millis(200);
        c.retry.max_retries = 3;
    })
    .await;
    let (status, headers, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("2 attempt(s)"), "{body}");
    assert_eq!(headers["x-should-retry"], "true");
    assert_eq!(seen.lock().unwrap().len(), 2, "the generation reached the upstream twice, not 4 times");
}

const SSE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello there\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

async fn refusing_stream_options() -> (String, Arc<Mutex<Vec<Seen>>>) {
    fake(|s| {
        if String::from_utf8_lossy(&s.body).contains("stream_options") {
            Reply::new(
                400,
                r#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error","param":null,"code":null}}"#,
            )
        } else {
            Reply::new(200, SSE).header("content-type", "text/event-stream")
        }
    })
    .await
}

#[tokio::test]
async fn an_upstream_refusing_stream_options_still_streams_and_is_remembered() {
    let (base, seen) = refusing_stream_options().await;
    let keys = ["sk-sopt-aaaaaaaaaaaaa", "sk-sopt-bbbbbbbbbbbbb"];
    let app = gateway(&base, &keys, |_| {}).await;
    let mut body = chat("stream please");
    body["stream"] = true.into();
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let text = resp.text().await.unwrap();
    assert!(text.contains("hello there") && text.trim_end().ends_with("data: [DONE]"), "{text}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "the refused body, then the caller's own");
        assert_eq!(seen[0].key, seen[1].key, "on the same key");
        let sent: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
        assert_eq!(sent, body, "the caller's body unchanged");
    }
    // Remembered: the next stream goes out without the field at once.
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert!(statuses(&app).iter().all(|s| *s == "active"));
    // A setting turns the injection off from the start.
    let (base, seen) = refusing_stream_options().await;
    let app = gateway(&base, &["sk-sopt-ccccccccccccc"], |c| c.stream_usage = false).await;
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn refusals_a_retry_cannot_fix_say_so_to_the_sdks() {
    let (base, _) = fake(|_| Reply::ok()).await;
    let app = gateway(&base, &["sk-retry-aaaaaaaaaaaa"], |_| {}).await;
    let resp = app.post("chat/completions").header("content-type", "application/json").body("{not json").send().await;
    let (status, headers, _) = error_of(resp.unwrap()).await;
    assert_eq!((status, headers["x-should-retry"].to_str().unwrap()), (400, "false"));
    let resp = app.client.post(app.url("chat/completions")).bearer_auth("kp-wrong").json(&chat("hi")).send().await;
    let (status, headers, _) = error_of(resp.unwrap()).await;
    assert_eq!((status, headers["x-should-retry"].to_str().unwrap()), (401, "false"));
}

#[tokio::test]
async fn an_upload_the_upstream_never_took_is_not_blamed_on_the_caller() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let app = gateway(&dead, &["sk-upload-bbbbbbbbbbb"], |_| {}).await;
    let resp = app
        .post("audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(trickle(2, Duration::from_millis(10), false))
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(resp).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("upstream_failed")), "{body}");
}

#[tokio::test]
async fn a_retry_waits_for_a_busy_key_rather_than_hitting_one_that_lacks_the_model() {
    let missing = r#"{"error":{"message":"The model `gpt-x` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    let keys = ["sk-busy-aaaaaaaaaaaaa", "sk-busy-bbbbbbbbbbbbb"];
    let (base, seen) = fake(move |s| {
        if s.key == "sk-busy-aaaaaaaaaaaaa" {
            Reply::new(404, missing)
        } else {
            Reply::ok().after(Duration::from_millis(600))
        }
    })
    .await;
    let app = gateway(&base, &keys, |c| {
        c.limits.max_inflight = Some(1);
        c.retry.max_retries = 4;
    })
    .await;
    let mut body = chat("hi");
    body["model"] = "gpt-x".into();
    let first = tokio::spawn(app.post("chat/completions").json(&body).send());
    // The second request arrives while B serves the first: A is free but lacks the model.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hits(&seen, keys[1]) == 0 {
        assert!(Instant::now() < deadline, "B never got the first request");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(second.status(), 200, "served by B once it was free: {}", second.text().await.unwrap());
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert!(hits(&seen, keys[0]) <= 2, "A asked for gpt-x at most once per request: {}", hits(&seen, keys[0]));
}

#[tokio::test]
async fn a_resend_after_a_first_byte_timeout_gets_only_the_time_left() {
    let (base, seen) = fake(|_| Reply::ok().after(Duration::from_secs(10))).await;
    let app = gateway(&base, &["sk-clip-aaaaaaaaaaaaa", "sk-clip-bbbbbbbbbbbbb"], |c| {
        c.timeouts.first_byte = Duration::from_millis(1000);
        c.retry.deadline = Duration::from_millis(1300);
    })
    .await;
    let started = Instant::now();
    let (status, _, body) = error_of(app.post("chat/completions").json(&chat("hi")).send().await.unwrap()).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(seen.lock().unwrap().len(), 2, "sent again once");
    assert!(took < Duration::from_millis(1800), "the resend waited past the deadline: {took:?}");
}
