//! keypool never counts less against a key than the upstream does: the
//! admission charge, inputs that are not plain text, impossible numbers, and
//! bodies whatever their label (issue 13, §2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{error_code, spawn, TestApp};
use keypool::store::NewKey;
use keypool_sim::{LimitMode, SimConfig, SimKey};
use serde_json::{json, Value};

/// Both tokenizers built, as they are soon after start: the old code's exact
/// count is what these tests compare against.
fn tokenizers_built() {
    keypool::tokens::Encoding::O200k.load();
    keypool::tokens::Encoding::Cl100k.load();
}

/// One key, `tpm` on both sides, a rolling window upstream (the strictest),
/// and a short wait in line so requests keypool holds back end quickly.
async fn one_key(secret: &str, tpm: u32, configured: bool) -> TestApp {
    let sim =
        SimConfig { keys: vec![SimKey::new(secret).tpm(tpm).mode(LimitMode::RollingWindow)], ..SimConfig::default() };
    let key = NewKey { secret: secret.into(), tpm: configured.then_some(tpm), ..NewKey::default() };
    spawn(sim, vec![key], |c| c.pool.max_wait = Duration::from_secs(2)).await
}

/// Sends `bodies` at once; returns the statuses.
async fn all_at_once(app: &TestApp, path: &str, bodies: Vec<Value>) -> Vec<u16> {
    let sends = bodies.into_iter().map(|b| {
        let req = app.post(path).json(&b);
        async move { req.send().await.unwrap().status().as_u16() }
    });
    futures_util::future::join_all(sends).await
}

fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 7 + i % 90).collect()
}

#[tokio::test]
async fn admission_charges_are_not_given_back() {
    tokenizers_built();
    let secret = "sk-admission-aaaaaaaa";
    let app = one_key(secret, 10_000, true).await;
    // 2,000 characters (~400 tokens, but the upstream reads 500) and 1,024
    // completion tokens: the upstream charges 1,527 at admission and keeps
    // them for its window, though each answer uses a few dozen.
    let text = "hello ".repeat(333) + "hi";
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 1024});
    let statuses = all_at_once(&app, "chat/completions", vec![body; 10]).await;
    let stats = app.sim.key_stats(secret);
    assert_eq!(stats.rate_limited, 0, "no upstream 429: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 6, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

#[tokio::test]
async fn assuming_the_sum_is_safe_for_an_upstream_that_charges_the_larger() {
    tokenizers_built();
    let secret = "sk-larger-aaaaaaaaaaa";
    let sim = SimConfig {
        keys: vec![SimKey::new(secret).tpm(10_000).mode(LimitMode::RollingWindow)],
        charge: keypool_sim::ChargeRule::Max,
        ..SimConfig::default()
    };
    let key = NewKey { secret: secret.into(), tpm: Some(10_000), ..NewKey::default() };
    let app = spawn(sim, vec![key], |c| c.pool.max_wait = Duration::from_secs(2)).await;
    let text = "hello ".repeat(333) + "hi";
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 1024});
    let statuses = all_at_once(&app, "chat/completions", vec![body; 10]).await;
    assert_eq!(app.sim.key_stats(secret).rate_limited, 0, "no upstream 429: {statuses:?}");
    // The upstream would take 9 (1,024 each); keypool, counting the sum, sends 6.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 6, "{statuses:?}");
}

#[tokio::test]
async fn token_id_inputs_are_charged() {
    let secret = "sk-token-ids-aaaaaaaa";
    let app = one_key(secret, 300, true).await;
    let body = json!({"model": "text-embedding-3-small", "input": [ids(100)]});
    let statuses = all_at_once(&app, "embeddings", vec![body; 6]).await;
    assert_eq!(app.sim.key_stats(secret).rate_limited, 0, "no upstream 429: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    // A flat list of ids is charged the same.
    let app = one_key(secret, 300, true).await;
    let flat = json!({"model": "text-embedding-3-small", "input": ids(100)});
    let statuses = all_at_once(&app, "embeddings", vec![flat; 6]).await;
    assert_eq!(app.sim.key_stats(secret).rate_limited, 0, "no upstream 429: {statuses:?}");
}

#[tokio::test]
async fn an_under_count_is_corrected_once() {
    // The limit is learned from the upstream's headers, not configured.
    let secret = "sk-once-aaaaaaaaaaaa";
    let app = one_key(secret, 300, false).await;
    let body = json!({"model": "text-embedding-3-small", "input": [ids(100)]});
    for i in 0..3 {
        let started = std::time::Instant::now();
        let resp = app.post("embeddings").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}: {}", resp.text().await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(1), "request {i} waited {:?}", started.elapsed());
    }
    assert_eq!(app.sim.key_stats(secret).rate_limited, 0);
}

#[tokio::test]
async fn impossible_numbers_get_a_400_naming_the_field() {
    let secret = "sk-numbers-aaaaaaaaa";
    let app = one_key(secret, 100_000, true).await;
    let chat = |field: &str, value: Value| {
        let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        body
    };
    for (field, value) in [
        ("max_tokens", json!(4_294_967_296u64)),
        ("max_tokens", json!(16.5)),
        ("max_completion_tokens", json!("100")),
        ("n", json!(5_000_000_000u64)),
    ] {
        let resp = app.post("chat/completions").json(&chat(field, value.clone())).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{field}: {value}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["param"], field, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{body}");
    }
    let resp = app.post("responses").json(&json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 1.5})).send();
    let body: Value = resp.await.unwrap().json().await.unwrap();
    assert_eq!(body["error"]["param"], "max_output_tokens", "{body}");
    assert_eq!(app.sim.stats().total_requests, 0, "nothing impossible reached the upstream");
    // null is valid; -1 passes through to an upstream that documents it.
    for value in [Value::Null, json!(-1)] {
        let resp = app.post("chat/completions").json(&chat("max_tokens", value)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(app.sim.key_stats(secret).rate_limited, 0, "no key cooled");
}

#[tokio::test]
async fn a_json_body_is_counted_whatever_its_label() {
    let secret = "sk-label-aaaaaaaaaaa";
    let app = one_key(secret, 1_000, true).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000});
    let resp = app
        .post("chat/completions")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "request_exceeds_key_limits");
    // One that fits is charged: a second at once waits for the first's charge to leave.
    let small = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600});
    let send = || {
        app.post("chat/completions")
            .header("content-type", "multipart/form-data; boundary=x")
            .body(small.to_string())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(send().await.unwrap().status(), 429, "keypool held it back");
    assert_eq!(app.sim.key_stats(secret).rate_limited, 0);
    assert_eq!(app.sim.stats().total_requests, 1);
}

/// Stops the server even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tokenizer is process-wide state, so this runs the `keypool` binary:
/// in a fresh process, the first request for a model of the cl100k family
/// finds its tokenizer not yet built (its build starts then) and is counted
/// a token a byte, an over-estimate that must not refuse it.
#[tokio::test]
async fn a_request_counted_before_the_tokenizer_is_built_is_not_refused() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let secret = "sk-unready-aaaaaaaaaa";
    let sim =
        keypool_sim::Simulator::start(SimConfig { keys: vec![SimKey::new(secret).tpm(1_000)], ..SimConfig::default() })
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let store = keypool::store::Store::connect(&db).await.unwrap();
    store.add_key(&NewKey { secret: secret.into(), tpm: Some(1_000), ..NewKey::default() }).await.unwrap();
    let token = keypool::server::generate_token();
    store.create_token("t", &keypool::server::hash_token(&token), "kp-t").await.unwrap();
    drop(store);
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_keypool"))
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &sim.base_url()])
            .env("KEYPOOL_DATABASE_URL", &db)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = server.0.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("server printed its address");
    // 1.2 KB of text: 1,200 tokens by the count of a token a byte, 300 as
    // the upstream charges it.
    let body = json!({"model": "text-embedding-3-small", "input": "abcd".repeat(300)});
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/embeddings"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(sim.key_stats(secret).rate_limited, 0);
}
