//! Alert webhooks: a receiver started by the test gets the alert when a key
//! turns invalid, in the configured shape, once per `min_interval`, and a
//! "no key usable" alert when the last key goes; and one alert per share
//! of a gateway token's budget its spend passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use common::{chat, error_code, key, spawn, TestApp};
use keypool::config::{AlertEvent, ModelConfig, ModelPrice, WebhookConfig, WebhookFormat, WebhookUrl};
use keypool::scheduler::Probed;
use keypool::tenants::{BudgetPeriod, TokenSettings};
use keypool_sim::{KeyState, SimConfig, SimKey};
use reqwest::StatusCode;
use serde_json::Value;

const KEY_A: &str = "sk-alerts-a-0123456789";
const KEY_B: &str = "sk-alerts-b-0123456789";

/// What the receiver got: (path, body), in order.
type Got = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on 127.0.0.1: every POST to `/{name}` is kept.
async fn receiver() -> (String, Got) {
    async fn hook(State(got): State<Got>, Path(name): Path<String>, Json(body): Json<Value>) -> &'static str {
        got.lock().unwrap().push((name, body));
        "ok"
    }
    let got: Got = Arc::default();
    let app = Router::new().route("/{name}", post(hook)).with_state(Arc::clone(&got));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, got)
}

fn hook(base: &str, name: &str, format: WebhookFormat, events: Option<Vec<AlertEvent>>) -> WebhookConfig {
    // A secret token in the URL, as Slack's and DingTalk's carry.
    let url = format!("{base}/{name}?access_token=hook-secret");
    WebhookConfig { url: WebhookUrl::try_from(url.as_str()).unwrap(), format, events }
}

/// Waits until the receiver holds `n` alerts and returns them.
async fn alerts(got: &Got, n: usize) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = got.lock().unwrap().clone();
        if now.len() >= n {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} alerts expected, got {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends requests until the scheduler says key `id` is `status`.
async fn until_status(app: &TestApp, id: i64, status: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let views = app.gateway.scheduler().snapshot();
        if views.iter().any(|v| v.id == id && v.status == status) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "key {id} never became {status}: {views:?}");
        app.post("/chat/completions").json(&chat("hi")).send().await.unwrap().bytes().await.unwrap();
    }
}

#[tokio::test]
async fn a_key_turning_invalid_is_told_once_per_interval_and_an_empty_pool_too() {
    let (base, got) = receiver().await;
    let sim = SimConfig { keys: vec![SimKey::new(KEY_A), SimKey::new(KEY_B)], ..SimConfig::default() };
    let app = spawn(sim, vec![key(KEY_A, Some(1000)), key(KEY_B, Some(1000))], |c| {
        c.alerts.webhooks = vec![
            hook(&base, "feishu", WebhookFormat::Feishu, None),
            hook(&base, "generic", WebhookFormat::Generic, Some(vec![AlertEvent::KeyInvalid])),
        ];
        c.alerts.check_interval = Duration::from_millis(50);
    })
    .await;
    let ids: Vec<i64> = app.gateway.scheduler().snapshot().iter().map(|v| v.id).collect();
    let (a, b) = (ids[0], ids[1]);
    // Let the task take its first look while both keys serve.
    looked_again(&app).await;

    app.sim.set_key_state(KEY_A, KeyState::Invalid);
    until_status(&app, a, "invalid").await;
    let first = alerts(&got, 2).await;
    let feishu = &first.iter().find(|(p, _)| p == "feishu").unwrap().1;
    assert_eq!(feishu["msg_type"], "text");
    let text = feishu["content"]["text"].as_str().unwrap();
    assert!(text.contains(&format!("key #{a}")) && text.contains("turned invalid"), "{text}");
    let generic = &first.iter().find(|(p, _)| p == "generic").unwrap().1;
    assert_eq!((generic["event"].as_str(), generic["key_id"].as_i64()), (Some("key_invalid"), Some(a)));
    assert_eq!(generic["state"], "invalid");
    assert!(generic["reason"].as_str().is_some_and(|r| r.contains("401")), "{generic}");
    assert!(generic["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{generic}");

    // Back (a probe says it is good), and invalid again within min_interval: not sent again.
    app.gateway.scheduler().probe_result(a, Probed::Healthy);
    until_status(&app, a, "active").await;
    // The task has seen it active (so the next turn is a transition it reports
    // to the limiter, and a broken limiter would send it)...
    looked_again(&app).await;
    until_status(&app, a, "invalid").await;
    // ... and has seen it invalid again; a webhook POST it started would
    // reach the loopback receiver well within the pause.
    looked_again(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got_now(&got).len(), 2, "the second transition is held back: {:?}", got_now(&got));

    // The last key goes: its own alert, and the pool's.
    app.sim.set_key_state(KEY_B, KeyState::Invalid);
    until_status(&app, b, "invalid").await;
    let all = alerts(&got, 5).await;
    let texts: Vec<String> = all
        .iter()
        .filter(|(p, _)| p == "feishu")
        .map(|(_, v)| v["content"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(texts.iter().any(|t| t.contains(&format!("key #{b}"))), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("no key can serve")), "{texts:?}");
    // The generic hook asked for key_invalid only.
    let generic: Vec<&Value> = all.iter().filter(|(p, _)| p == "generic").map(|(_, v)| v).collect();
    assert!(generic.iter().all(|v| v["event"] == "key_invalid"), "{generic:?}");
    let everything = serde_json::to_string(&all).unwrap();
    assert!(!everything.contains(KEY_A) && !everything.contains(KEY_B), "never the key itself");
    app.gateway.shutdown().await.unwrap();
}

/// Waits until the alerts task has finished a look that began after now.
async fn looked_again(app: &TestApp) {
    let mut looks = app.gateway.alert_looks();
    let start = *looks.borrow_and_update();
    let seen = tokio::time::timeout(Duration::from_secs(10), looks.wait_for(|n| *n >= start + 2)).await;
    assert!(matches!(seen, Ok(Ok(_))), "the alerts task stopped looking");
}

fn got_now(got: &Got) -> Vec<(String, Value)> {
    got.lock().unwrap().clone()
}

/// A token with `settings`, loaded by the running gateway: its secret and id.
async fn token(app: &TestApp, name: &str, settings: TokenSettings) -> (String, i64) {
    common::token_with(app, name, settings).await
}

async fn chat_as(app: &TestApp, token: &str) -> reqwest::Response {
    app.client.post(app.url("/chat/completions")).bearer_auth(token).json(&chat("hello")).send().await.unwrap()
}

#[tokio::test]
async fn a_token_passing_shares_of_its_budget_is_told_once_each() {
    let (base, got) = receiver().await;
    let sim = SimConfig { keys: vec![SimKey::new(KEY_A)], ..SimConfig::default() };
    let app = spawn(sim, vec![key(KEY_A, None)], |c| {
        c.alerts.webhooks = vec![
            hook(&base, "tokens", WebhookFormat::Generic, Some(vec![AlertEvent::TokenBudget])),
            hook(
                &base,
                "keys",
                WebhookFormat::Generic,
                Some(vec![AlertEvent::KeyInvalid, AlertEvent::BudgetThreshold]),
            ),
            hook(&base, "slack", WebhookFormat::Slack, None),
        ];
        c.alerts.budget_thresholds = vec![0.5, 1.0];
        c.alerts.check_interval = Duration::from_millis(50);
        // $1 per completion token, prompts free: the simulator answers 16
        // tokens to `max_tokens: 16`, so each chat costs exactly $16, as
        // much as its estimate.
        let price = ModelPrice { input: 0.0, output: 1_000_000.0, cached_input: None };
        c.models.insert("gpt-4o-mini".into(), ModelConfig { price: Some(price), ..ModelConfig::default() });
    })
    .await;
    let settings =
        TokenSettings { budget_micros: Some(32_000_000), budget_period: BudgetPeriod::Monthly, ..Default::default() };
    let (budgeted, id) = token(&app, "team-a", settings).await;
    let (free, free_id) = token(&app, "free", TokenSettings::default()).await;
    // The task knows both tokens at 0 spent.
    looked_again(&app).await;

    // $16 of $32: 50%.
    assert_eq!(chat_as(&app, &budgeted).await.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(chat_as(&app, &free).await.status(), StatusCode::OK);
    }
    let first = alerts(&got, 2).await;
    let generic = &first.iter().find(|(p, _)| p == "tokens").unwrap().1;
    assert_eq!(generic["event"], "token_budget");
    assert_eq!((generic["token_id"].as_i64(), generic["token_name"].as_str()), (Some(id), Some("team-a")));
    assert_eq!(
        (generic["spent_micros"].as_u64(), generic["budget_micros"].as_u64()),
        (Some(16_000_000), Some(32_000_000))
    );
    assert_eq!((generic["threshold"].as_f64(), generic["period"].as_str()), (Some(0.5), Some("monthly")));
    assert!(generic["key_id"].is_null(), "{generic}");
    let slack = first.iter().find(|(p, _)| p == "slack").unwrap().1["text"].as_str().unwrap().to_owned();
    assert!(slack.contains(&format!("token #{id} (team-a) passed 50% of its monthly budget")), "{slack}");

    // $32 of $32: 100%; then the budget refuses.
    assert_eq!(chat_as(&app, &budgeted).await.status(), StatusCode::OK);
    let all = alerts(&got, 4).await;
    let r = chat_as(&app, &budgeted).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "insufficient_quota");
    let last = &all.iter().filter(|(p, _)| p == "tokens").nth(1).unwrap().1;
    assert_eq!((last["token_id"].as_i64(), last["threshold"].as_f64()), (Some(id), Some(1.0)));
    assert_eq!(last["spent_micros"].as_u64(), Some(32_000_000));

    // Nothing more: each share once, none for the token without a budget,
    // none to the webhook that did not ask for token alerts.
    looked_again(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = got_now(&got);
    let paths: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths.iter().filter(|p| **p == "tokens").count(), 2, "{all:?}");
    assert_eq!(paths.iter().filter(|p| **p == "slack").count(), 2, "{all:?}");
    assert!(!paths.contains(&"keys"), "{all:?}");
    assert!(all.iter().all(|(_, v)| v["token_id"].as_i64() != Some(free_id)), "{all:?}");
    let everything = serde_json::to_string(&all).unwrap();
    assert!(!everything.contains(&budgeted) && !everything.contains(&free), "never a token's secret");
    assert!(!everything.contains(KEY_A), "never the key");
    app.gateway.shutdown().await.unwrap();
}
