//! Real balances (issue 16): a provider that tells each key's credit
//! (the simulator plays OpenRouter's `GET /key`), read on an interval and
//! spent evenly by `balance_even`; a key at zero gets no request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{key, spawn};
use keypool::config::{ModelConfig, ModelPrice, UpstreamConfig};
use keypool::scheduler::Strategy;
use keypool_sim::{SimConfig, SimKey};

const KEYS: [(&str, u64); 4] = [
    ("sk-or-v1-aaaaaaaaaaaaaaaa", 1_000_000),
    ("sk-or-v1-bbbbbbbbbbbbbbbb", 2_000_000),
    ("sk-or-v1-cccccccccccccccc", 3_000_000),
    ("sk-or-v1-zzzzzzzzzzzzzzzz", 0),
];
/// USD per million tokens, the same on both sides, so keypool's tracked
/// spend between two reads matches what the provider charges.
const PRICE: (f64, f64) = (500.0, 1000.0);

#[tokio::test]
async fn balance_even_spends_real_balances_evenly_and_a_key_at_zero_gets_nothing() {
    let sim = SimConfig {
        keys: KEYS.iter().map(|(k, b)| SimKey::new(*k).balance(*b)).collect(),
        price: PRICE,
        ..SimConfig::default()
    };
    let app = spawn(sim, KEYS.iter().map(|(k, _)| key(k, None)).collect(), |c| {
        let base = std::mem::take(&mut c.upstream);
        c.upstream = keypool::config::Config::default().upstream;
        c.upstreams = vec![serde_json::from_value::<UpstreamConfig>(serde_json::json!({
            "name": "openrouter", "kind": "openai_compatible", "provider": "openrouter",
            "base_url": base, "balance_interval": "1s",
        }))
        .unwrap()];
        c.pool.strategy = Strategy::BalanceEven;
        let price = ModelPrice { input: PRICE.0, output: PRICE.1, cached_input: None };
        c.models.insert("*".into(), ModelConfig { price: Some(price), ..ModelConfig::default() });
    })
    .await;
    // The first reading comes at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let views = app.gateway.scheduler().snapshot();
        if views.len() == 4 && views.iter().all(|v| v.balance_micros.is_some()) {
            assert_eq!(views[0].balance_micros, Some(1_000_000));
            assert_eq!(views[3].status, "spent", "a key at zero is out before any request fails on it");
            break;
        }
        assert!(Instant::now() < deadline, "the balances were never read: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // About $0.02 a request: half of the $6 is some 150 requests.
    let body =
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100});
    let mut sent = 0;
    while KEYS[..3].iter().map(|(k, _)| app.sim.balance(k).unwrap()).sum::<i64>() > 3_000_000 {
        let resp = app.post("chat/completions").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "request {sent}");
        resp.bytes().await.unwrap();
        sent += 1;
        assert!(sent < 1_000, "the balances do not go down");
    }
    let shares: Vec<f64> =
        KEYS[..3].iter().map(|(k, initial)| app.sim.balance(k).unwrap() as f64 / *initial as f64).collect();
    eprintln!("{sent} requests; remaining shares {shares:?}");
    let (low, high) = shares.iter().fold((f64::MAX, f64::MIN), |(l, h), s| (l.min(*s), h.max(*s)));
    assert!(high - low <= 0.05, "each key keeps the same share of its balance, within 5%: {shares:?}");
    assert_eq!(app.sim.key_stats(KEYS[3].0).requests, 0, "the key at zero was sent nothing");
}
