//! The scheduler over real sockets: learned limits, the wait queue, key
//! health, hidden usage chunks, and budgets spent evenly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat, error_code, key, spawn};
use futures_util::future::join_all;
use keypool::config::Price;
use keypool::store::NewKey;
use keypool_sim::{KeyState, LimitMode, SimConfig, SimKey};

#[tokio::test]
async fn limits_learned_from_headers_provoke_no_upstream_429() {
    let names = ["sk-learn-aaaaaaaaaaa", "sk-learn-bbbbbbbbbbb"];
    let sim = SimConfig {
        keys: names.iter().map(|n| SimKey::new(*n).rpm(3).mode(LimitMode::RollingWindow)).collect(),
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    // keypool is told nothing about the limits.
    let app =
        spawn(sim, names.iter().map(|n| key(n, None)).collect(), |c| c.pool.max_wait = Duration::from_millis(500))
            .await;
    let results = join_all((0..8).map(|i| app.post("chat/completions").json(&chat(&format!("q{i}"))).send())).await;
    let statuses: Vec<u16> = results.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 6, "3 a minute on each of 2 keys: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    for n in names {
        assert_eq!(app.sim.key_stats(n).rate_limited, 0, "{n} was never pushed past its limit");
    }
    let views = app.gateway.scheduler().snapshot();
    assert!(views.iter().all(|v| v.rpm == Some(3) && v.remaining_requests == Some(0)), "{views:?}");
}

#[tokio::test]
async fn a_request_waits_in_line_until_a_key_is_free() {
    let sim = SimConfig {
        keys: vec![SimKey::new("sk-line-aaaaaaaaaaaa")],
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let one_at_a_time = NewKey { max_inflight: Some(1), ..key("sk-line-aaaaaaaaaaaa", None) };
    let app = spawn(sim, vec![one_at_a_time], |_| {}).await;
    let (a, b) = tokio::join!(
        app.post("chat/completions").json(&chat("first")).send(),
        app.post("chat/completions").json(&chat("second")).send()
    );
    assert_eq!((a.unwrap().status().as_u16(), b.unwrap().status().as_u16()), (200, 200));
    assert_eq!(app.sim.key_stats("sk-line-aaaaaaaaaaaa").ok, 2);
    assert_eq!(app.gateway.scheduler().queue_len(), 0);
}

#[tokio::test]
async fn refused_and_spent_keys_leave_rotation() {
    let sim = SimConfig {
        keys: vec![
            SimKey::new("sk-dead-aaaaaaaaaaaa").state(KeyState::Invalid),
            SimKey::new("sk-poor-aaaaaaaaaaaa").state(KeyState::InsufficientQuota),
            SimKey::new("sk-good-aaaaaaaaaaaa"),
        ],
        ..SimConfig::default()
    };
    let keys = ["sk-dead-aaaaaaaaaaaa", "sk-poor-aaaaaaaaaaaa", "sk-good-aaaaaaaaaaaa"];
    let app = spawn(sim, keys.iter().map(|k| key(k, None)).collect(), |_| {}).await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        let resp = app.post("chat/completions").json(&chat(&format!("q{i}"))).send().await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    // Each bad key is tried once, marked at its first refusal, and the request retried on another key.
    assert_eq!(app.sim.key_stats("sk-dead-aaaaaaaaaaaa").requests, 1);
    assert_eq!(app.sim.key_stats("sk-poor-aaaaaaaaaaaa").requests, 1);
    assert_eq!(statuses, vec![200; 10], "the caller never sees a bad key");
    let status: Vec<&str> = app.gateway.scheduler().snapshot().iter().map(|v| v.status).collect();
    assert_eq!(status, vec!["invalid", "exhausted", "active"]);
}

#[tokio::test]
async fn a_stream_without_include_usage_is_counted_but_shows_no_usage_chunk() {
    let sim = SimConfig { keys: vec![SimKey::new("sk-tap-aaaaaaaaaaaaa")], ..SimConfig::default() };
    let app = spawn(sim, vec![key("sk-tap-aaaaaaaaaaaaa", None)], |_| {}).await;
    let mut body = chat("count my tokens");
    body["stream"] = true.into();
    let text = app.post("chat/completions").json(&body).send().await.unwrap().text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"choices\":[]"), "the usage chunk keypool asked for is removed: {text}");
    assert!(!text.contains("\"usage\":{"), "{text}");
    // keypool still learned the usage: it reaches the store with the next sync.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let k = &app.store.list_keys().await.unwrap()[0];
        if k.completion_tokens > 0 {
            assert!(k.prompt_tokens > 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "usage never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A caller who asked for usage gets it untouched.
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let text = app.post("chat/completions").json(&body).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("\"choices\":[]") && text.contains("\"usage\":{"), "{text}");
}

#[tokio::test]
async fn balance_even_spends_every_budget_to_within_5_percent_without_overrun() {
    let budgets_usd = [1.0, 2.0, 3.0, 4.0, 5.0];
    let names: Vec<String> = (0..5).map(|i| format!("sk-budget-{i}-aaaaaaaaaa")).collect();
    let sim = SimConfig { keys: names.iter().map(|n| SimKey::new(n.clone())).collect(), ..SimConfig::default() };
    let keys = names
        .iter()
        .zip(budgets_usd)
        .map(|(n, b)| NewKey { budget_micros: Some((b * 1e6) as u64), ..key(n, None) })
        .collect();
    let app = spawn(sim, keys, |c| {
        c.pool.strategy = keypool::scheduler::Strategy::BalanceEven;
        // About 4.5 cents a request: 16 completion tokens at $2,000/M plus the prompt at $1,000/M.
        c.prices.insert("gpt-4o-mini".into(), Price { input: 1000.0, output: 2000.0 });
    })
    .await;
    // Batches of 8 at once until a whole batch is refused. The requests of a
    // batch are served in parallel, so near the end some may be refused while
    // others, served as an earlier reservation settles for less, still fit.
    let mut answered = 0;
    loop {
        let batch = join_all((0..8).map(|i| app.post("chat/completions").json(&chat(&format!("q{i}"))).send())).await;
        let mut refused = 0;
        for resp in batch {
            let resp = resp.unwrap();
            if resp.status() == 200 {
                answered += 1;
            } else {
                let refusal = (resp.status().as_u16(), error_code(resp).await);
                assert_eq!(refusal, (429, "insufficient_quota".to_owned()), "a refusal says the pool is spent");
                refused += 1;
            }
        }
        if refused == 8 {
            break;
        }
        assert!(answered < 1000, "the pool never ran out");
    }
    let views = app.gateway.scheduler().snapshot();
    for (v, b) in views.iter().zip(budgets_usd) {
        let spent = v.spent_micros as f64 / 1e6;
        assert!(spent <= b, "key {} overran: {spent} of {b}", v.id);
        assert!(spent >= 0.95 * b, "key {} left more than 5%: {spent} of {b}", v.id);
    }
    assert!(answered > 250, "{answered}");
}

#[tokio::test]
async fn a_caller_that_hangs_up_while_waiting_leaves_the_line() {
    let sim = SimConfig {
        keys: vec![SimKey::new("sk-hangup-aaaaaaaaaa")],
        latency: Duration::from_millis(1500),
        ..SimConfig::default()
    };
    let one_at_a_time = NewKey { max_inflight: Some(1), ..key("sk-hangup-aaaaaaaaaa", None) };
    let app = spawn(sim, vec![one_at_a_time], |_| {}).await;
    let busy = tokio::spawn(app.post("chat/completions").json(&chat("holds the key")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let impatient = app.post("chat/completions").json(&chat("waits")).timeout(Duration::from_millis(200)).send().await;
    assert!(impatient.is_err(), "the client gave up");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while app.gateway.scheduler().queue_len() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the waiter stayed in line after its caller left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    assert_eq!(app.sim.key_stats("sk-hangup-aaaaaaaaaa").requests, 1, "the abandoned request was never sent");
}

#[tokio::test]
async fn a_large_prompt_is_counted_exactly() {
    // Both tokenizers built, as they are soon after start (requests never wait for them).
    keypool::tokens::Encoding::O200k.load();
    keypool::tokens::Encoding::Cl100k.load();
    let secret = "sk-large-aaaaaaaaaaa";
    let sim = SimConfig { keys: vec![SimKey::new(secret)], ..SimConfig::default() };
    let app = spawn(sim, vec![NewKey { secret: secret.into(), tpm: Some(10_000), ..NewKey::default() }], |_| {}).await;
    // 48 KB (over the size counted inline, so counted on the blocking pool):
    // ~8,000 tokens exactly, ~12,000 by the rough count of a byte in four.
    // Only the exact count fits the key's 10,000.
    let resp = app.post("chat/completions").json(&chat(&"hello ".repeat(8_000))).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // ~12,000 tokens exactly: more than the key can ever take in a minute.
    let resp = app.post("chat/completions").json(&chat(&"hello ".repeat(12_000))).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "request_exceeds_key_limits");
    assert_eq!(app.sim.stats().total_requests, 1);
}
