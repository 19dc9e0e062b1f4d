//! Gateway tokens as tenants (issue 17): each token's models, networks,
//! expiry, limits and budget, enforced by a running gateway over the
//! simulator, and set through the store, the admin API and the CLI's forms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat, error_code, form, key, spawn, TestApp};
use keypool::config::{AdminToken, ModelConfig, ModelPrice};
use keypool::tenants::{networks_from, parse_models, BudgetPeriod, TokenSettings};
use keypool_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "kp-admin-tenants-test-0123456789abcdef";

/// A token with `settings`, stored while the gateway runs; waits until the
/// gateway accepts (or refuses, as the settings say) it.
async fn token(app: &TestApp, name: &str, settings: TokenSettings) -> String {
    common::token_with(app, name, settings).await.0
}

async fn chat_as(app: &TestApp, token: &str, model: &str) -> reqwest::Response {
    let mut body = chat("hello");
    body["model"] = json!(model);
    app.client.post(app.url("/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap()
}

fn sim() -> SimConfig {
    SimConfig {
        accept_any_key: true,
        models: ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"].map(String::from).to_vec(),
        ..SimConfig::default()
    }
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_token_limited_to_gpt_4o_models_cannot_use_another_and_lists_only_its_own() {
    let app = spawn(sim(), vec![key("sk-tenant-aaaaaaaaaaaa", None)], |c| {
        c.model_aliases = toml::from_str(
            r#"fast = { model = "gpt-4o-mini" }
smart = { model = "gpt-4.1" }"#,
        )
        .unwrap();
    })
    .await;
    let narrow =
        token(&app, "narrow", TokenSettings { models: parse_models("gpt-4o*").unwrap(), ..Default::default() }).await;

    assert_eq!(chat_as(&app, &narrow, "gpt-4o-mini").await.status(), StatusCode::OK);
    assert_eq!(chat_as(&app, &narrow, "fast").await.status(), StatusCode::OK, "an alias of an allowed model");
    for model in ["gpt-4.1", "smart", "text-embedding-3-small"] {
        let r = chat_as(&app, &narrow, model).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{model}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        assert_eq!(body["error"]["param"], "model");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(model) && message.contains("gpt-4o*"), "names the model and the patterns: {message}");
    }
    // Embeddings too: the model is read from every kind of body.
    let sent = app.sim.stats().total_requests;
    assert_eq!(sent, 2, "a refused model never reaches the upstream");
    let r = app
        .client
        .post(app.url("/embeddings"))
        .bearer_auth(&narrow)
        .json(&json!({"model": "text-embedding-3-small", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A form's model is read for such a token, even with one upstream; one
    // that names no model it can be held to is refused.
    let audio = vec![0x5a_u8; 1024];
    for (fields, code) in [
        (&[("model", &b"whisper-1"[..]), ("file", &audio[..])][..], "model_not_found"),
        (&[("file", &audio[..])][..], "model_required"),
    ] {
        let (content_type, body) = form(fields);
        let r = app
            .client
            .post(app.url("/audio/transcriptions"))
            .bearer_auth(&narrow)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_code(r).await, code);
    }
    for path in ["/batches", "/threads/runs"] {
        let r = app
            .client
            .post(app.url(path))
            .bearer_auth(&narrow)
            .json(&json!({"input_file_id": "file-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}: its models cannot be checked");
    }
    let r = app.client.get(app.url("/models/gpt-4.1")).bearer_auth(&narrow).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "one model's entry is not shown either");
    assert_eq!(app.sim.stats().total_requests, 2, "none of these reached the upstream");

    let listed: Value =
        app.client.get(app.url("/models")).bearer_auth(&narrow).send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(&listed), ["fast", "gpt-4o", "gpt-4o-mini"], "{listed}");
    let everything: Value = app.get("/models").send().await.unwrap().json().await.unwrap();
    assert_eq!(ids(&everything), ["fast", "gpt-4.1", "gpt-4o", "gpt-4o-mini", "smart", "text-embedding-3-small"]);
}

#[tokio::test]
async fn a_token_over_its_budget_is_refused_while_others_keep_working() {
    let app = spawn(sim(), vec![key("sk-tenant-bbbbbbbbbbbb", None)], |c| {
        // $1 per token either way: a chat of 16 completion tokens costs some $20-30.
        // (The model by name: the built-in price of gpt-4o-mini is more specific than `*`.)
        let price = ModelPrice { input: 1_000_000.0, output: 1_000_000.0, cached_input: None };
        c.models.insert("gpt-4o-mini".into(), ModelConfig { price: Some(price), ..ModelConfig::default() });
    })
    .await;
    let total = TokenSettings { budget_micros: Some(60_000_000), ..Default::default() };
    let capped = token(&app, "capped", total).await;
    let daily = TokenSettings { budget_micros: Some(1), budget_period: BudgetPeriod::Daily, ..Default::default() };
    let daily = token(&app, "daily", daily).await;

    // Each request reserves its estimate (the prompt and 16 tokens) and
    // spends what its usage says: the budget lets a few through, never more
    // than it holds, then refuses.
    let mut served = 0;
    let refused = loop {
        let r = chat_as(&app, &capped, "gpt-4o-mini").await;
        if r.status() != StatusCode::OK {
            break r;
        }
        served += 1;
        assert!(served < 10, "the budget never ran out");
    };
    assert_eq!(served, 2, "estimates of ~25 tokens at $1 each against $60: two pass, a third would overspend");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["x-should-retry"], "false");
    assert!(refused.headers().get("retry-after").is_none(), "a total budget never renews");
    assert_eq!(error_code(refused).await, "insufficient_quota");

    let r = chat_as(&app, &daily, "gpt-4o-mini").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "the estimate alone passes a 1 µUSD budget");
    assert_eq!(r.headers()["x-should-retry"], "false");
    let renews: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&renews), "a daily budget renews at midnight: {renews}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("$0.000001 left") && message.contains("max_tokens"),
        "says what is left and why: {message}"
    );

    // The other tokens keep working.
    assert_eq!(app.post("/chat/completions").json(&chat("hi")).send().await.unwrap().status(), StatusCode::OK);
    let spent_all = app.store.list_tokens().await.unwrap().into_iter().find(|t| t.name == "capped").unwrap();
    // The writer adds the records within a second or so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut spent = spent_all.usage.spent_micros;
    while spent == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spent =
            app.store.list_tokens().await.unwrap().into_iter().find(|t| t.name == "capped").unwrap().usage.spent_micros;
    }
    assert!(spent > 0 && spent <= 60_000_000, "spent {spent} µUSD of a 60,000,000 budget: never more");
}

#[tokio::test]
async fn expired_disabled_and_revoked_tokens_get_401() {
    let app = spawn(sim(), vec![key("sk-tenant-cccccccccccc", None)], |_| {}).await;
    let past = keypool::store::now_unix() - 10;
    let expired = token(&app, "expired", TokenSettings { expires_at: Some(past), ..Default::default() }).await;
    let r = chat_as(&app, &expired, "gpt-4o").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "token_expired");

    let disabled = token(&app, "disabled", TokenSettings { enabled: false, ..Default::default() }).await;
    let r = chat_as(&app, &disabled, "gpt-4o").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "token_disabled");

    // A token that expires a second from now works, then stops.
    let soon = keypool::store::now_unix() + 2;
    let brief = token(&app, "brief", TokenSettings { expires_at: Some(soon), ..Default::default() }).await;
    assert_eq!(chat_as(&app, &brief, "gpt-4o").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(chat_as(&app, &brief, "gpt-4o").await.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(app.sim.stats().total_requests, 1, "only the brief token's one request reached the upstream");
    let id = app.store.list_tokens().await.unwrap().into_iter().find(|t| t.name == "test").unwrap().id;
    app.store.revoke_token(id).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.post("/chat/completions").json(&chat("hi")).send().await.unwrap();
        if r.status() == StatusCode::UNAUTHORIZED {
            assert_eq!(error_code(r).await, "invalid_api_key");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the revoked token still passes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_token_limited_to_ten_slash_eight_is_refused_from_loopback() {
    let app = spawn(sim(), vec![key("sk-tenant-dddddddddddd", None)], |_| {}).await;
    let elsewhere = TokenSettings { networks: networks_from(&["10.0.0.0/8".into()]).unwrap(), ..Default::default() };
    let elsewhere = token(&app, "ten", elsewhere).await;
    let r = chat_as(&app, &elsewhere, "gpt-4o").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "client_address_not_allowed", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("127.0.0.1"), "{body}");
    // A forwarded address is not believed from a peer that is not a trusted proxy.
    let r = app
        .client
        .post(app.url("/chat/completions"))
        .bearer_auth(&elsewhere)
        .header("x-forwarded-for", "10.1.2.3")
        .json(&chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let here = TokenSettings { networks: networks_from(&["127.0.0.0/8".into()]).unwrap(), ..Default::default() };
    let here = token(&app, "loopback", here).await;
    assert_eq!(chat_as(&app, &here, "gpt-4o").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_over_its_own_rate_limit_waits_then_gets_429_with_retry_after() {
    let app = spawn(sim(), vec![key("sk-tenant-eeeeeeeeeeee", None)], |c| {
        c.pool.max_wait = Duration::from_millis(300);
    })
    .await;
    let slow = token(&app, "two-a-minute", TokenSettings { rpm: Some(2), ..Default::default() }).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&app, &slow, "gpt-4o").await.status(), StatusCode::OK);
    }
    let r = chat_as(&app, &slow, "gpt-4o").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["x-should-retry"], "true");
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry_after), "room comes back when the first leaves the minute: {retry_after}");
    assert_eq!(error_code(r).await, "rate_limit_exceeded");
    // The pool is not at its limit: the other token is served at once.
    assert_eq!(app.post("/chat/completions").json(&chat("hi")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.sim.stats().total_requests, 3);
}

#[tokio::test]
async fn the_admin_api_creates_edits_and_regenerates_tokens_and_the_gateway_follows() {
    let app = spawn(sim(), vec![key("sk-tenant-ffffffffffff", None)], |c| {
        c.admin_token = Some(AdminToken::new(ADMIN));
        c.sync_interval = Duration::from_secs(3600);
    })
    .await;
    let admin = |m: reqwest::Method, path: &str| {
        app.client.request(m, format!("http://{}/admin/api{path}", app.gateway.addr())).bearer_auth(ADMIN)
    };
    let r = admin(reqwest::Method::POST, "/tokens")
        .json(&json!({"name": "team-a", "models": ["gpt-4o*"], "rpm": 60, "tpm": 100000, "budget_usd": 10,
            "budget_period": "monthly", "expires": "30d", "networks": ["127.0.0.1"], "priority": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let (id, secret) = (created["id"].as_i64().unwrap(), created["token"].as_str().unwrap().to_owned());
    assert_eq!(created["models"], json!(["gpt-4o*"]));
    assert_eq!(created["budget_micros"], 10_000_000);
    assert_eq!(created["budget_period"], "monthly");
    assert_eq!(created["budget_spent_micros"], 0);
    assert_eq!(created["networks"], json!(["127.0.0.1/32"]));
    assert_eq!(created["status"], "active");
    let in_30d = keypool::store::now_unix() + 30 * 86_400;
    assert!((in_30d - 10..=in_30d + 10).contains(&created["expires_at"].as_i64().unwrap()));

    assert_eq!(chat_as(&app, &secret, "gpt-4o").await.status(), StatusCode::OK, "live at once after the answer");
    assert_eq!(chat_as(&app, &secret, "gpt-4.1").await.status(), StatusCode::FORBIDDEN);

    // An edit: a wider model list, no network limit; what is not named stays.
    let r = admin(reqwest::Method::PATCH, &format!("/tokens/{id}"))
        .json(&json!({"models": ["gpt-4*"], "networks": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let edited: Value = r.json().await.unwrap();
    assert_eq!(
        (edited["models"].clone(), edited["networks"].clone(), edited["rpm"].clone()),
        (json!(["gpt-4*"]), Value::Null, json!(60))
    );
    assert_eq!(chat_as(&app, &secret, "gpt-4.1").await.status(), StatusCode::OK);

    // Bad values name their field and change nothing.
    for (body, field) in [
        (json!({"rpm": 0}), "rpm"),
        (json!({"networks": ["10.0.0.0/33"]}), "networks"),
        (json!({"expires": "2001-01-01"}), "expires"),
        (json!({"budget_usd": -1}), "budget_usd"),
        (json!({"models": []}), "models"),
        (json!({"networks": [" "]}), "networks"),
    ] {
        let r = admin(reqwest::Method::PATCH, &format!("/tokens/{id}")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], field, "{e}");
    }
    let r = admin(reqwest::Method::PATCH, &format!("/tokens/{id}"))
        .json(&json!({"budget_period": "weekly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Disabled: 401 at once; enabled again: served.
    let r =
        admin(reqwest::Method::PATCH, &format!("/tokens/{id}")).json(&json!({"enabled": false})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "disabled");
    assert_eq!(chat_as(&app, &secret, "gpt-4o").await.status(), StatusCode::UNAUTHORIZED);
    admin(reqwest::Method::PATCH, &format!("/tokens/{id}")).json(&json!({"enabled": true})).send().await.unwrap();
    assert_eq!(chat_as(&app, &secret, "gpt-4o").await.status(), StatusCode::OK);

    // Regenerated: the old secret is refused, the new one works with the same settings.
    let r = admin(reqwest::Method::POST, &format!("/tokens/{id}/regenerate")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let renewed: Value = r.json().await.unwrap();
    let fresh = renewed["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, secret);
    assert_eq!(renewed["models"], json!(["gpt-4*"]));
    assert_eq!(chat_as(&app, &secret, "gpt-4o").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(chat_as(&app, &fresh, "gpt-4o").await.status(), StatusCode::OK);
    assert_eq!(chat_as(&app, &fresh, "o3").await.status(), StatusCode::FORBIDDEN);

    let listed: Value = admin(reqwest::Method::GET, "/tokens").send().await.unwrap().json().await.unwrap();
    let item = listed.as_array().unwrap().iter().find(|t| t["id"] == id).unwrap();
    assert!(item.get("token").is_none() && item.get("hash").is_none(), "never the secret: {item}");
    assert!(!listed.to_string().contains(&fresh));
}

/// The fair queue over HTTP (the scheduler's own test measures it on a
/// paused clock): one token floods 40 requests at once into a key that
/// allows 2 in flight at 300 ms each (6 s of work); another token's
/// requests, one every 300 ms, are served in about one service time each,
/// not behind the flood.
#[tokio::test]
async fn a_flooding_token_does_not_hold_up_another_over_http() {
    const SERVICE: Duration = Duration::from_millis(300);
    let mut k = key("sk-tenant-gggggggggggg", None);
    k.max_inflight = Some(2);
    let app = spawn(SimConfig { latency: SERVICE, ..sim() }, vec![k], |c| {
        c.pool.max_wait = Duration::from_secs(30);
    })
    .await;
    let flood = token(&app, "flood", TokenSettings::default()).await;
    let steady = token(&app, "steady", TokenSettings::default()).await;
    let timed = |t: String| {
        let (client, url) = (app.client.clone(), app.url("/chat/completions"));
        async move {
            let started = std::time::Instant::now();
            let r = client.post(url).bearer_auth(t).json(&chat("hi")).send().await.unwrap();
            let status = r.status();
            r.bytes().await.unwrap();
            (status, started.elapsed())
        }
    };
    let flooding: Vec<_> = (0..40).map(|_| tokio::spawn(timed(flood.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waits = Vec::new();
    for _ in 0..5 {
        let (status, took) = timed(steady.clone()).await;
        assert_eq!(status, StatusCode::OK);
        waits.push(took);
        tokio::time::sleep(SERVICE).await;
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(median <= 3 * SERVICE, "the steady token waited behind the flood: {waits:?}");
    let mut last = Duration::ZERO;
    for f in flooding {
        let (status, took) = f.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        last = last.max(took);
    }
    assert!(last >= Duration::from_secs(5), "the flood really queued ({last:?}), so the test measured something");
}

/// What chat front-ends (NextChat, LobeChat) read to show a balance, as
/// one-api answers it: the calling token's budget and what it spent, in
/// the shapes of OpenAI's billing endpoints (`total_usage` in cents).
#[tokio::test]
async fn the_billing_endpoints_answer_for_the_calling_token() {
    let app = spawn(sim(), vec![key("sk-tenant-hhhhhhhhhhhh", None)], |c| {
        let price = ModelPrice { input: 1_000_000.0, output: 1_000_000.0, cached_input: None };
        c.models.insert("gpt-4o-mini".into(), ModelConfig { price: Some(price), ..ModelConfig::default() });
    })
    .await;
    let expires = keypool::store::now_unix() + 86_400;
    let settings = TokenSettings {
        budget_micros: Some(100_000_000),
        budget_period: BudgetPeriod::Monthly,
        expires_at: Some(expires),
        ..Default::default()
    };
    let budgeted = token(&app, "budgeted", settings).await;
    let get = |path: &str, t: &str| app.client.get(app.url(path)).bearer_auth(t.to_owned()).send();

    let sub: Value = get("/dashboard/billing/subscription", &budgeted).await.unwrap().json().await.unwrap();
    assert_eq!(sub["object"], "billing_subscription");
    assert_eq!(sub["hard_limit_usd"], 100.0);
    assert_eq!(sub["soft_limit_usd"], 100.0);
    assert_eq!(sub["access_until"], expires);
    let usage: Value = get("/dashboard/billing/usage", &budgeted).await.unwrap().json().await.unwrap();
    assert_eq!((usage["object"].clone(), usage["total_usage"].clone()), (json!("list"), json!(0.0)));

    assert_eq!(chat_as(&app, &budgeted, "gpt-4o-mini").await.status(), StatusCode::OK);
    // The statistics the usage is read from lag the request by up to 2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let cents = loop {
        let usage: Value = get("/dashboard/billing/usage", &budgeted).await.unwrap().json().await.unwrap();
        let cents = usage["total_usage"].as_f64().unwrap();
        if cents > 0.0 || std::time::Instant::now() > deadline {
            break cents;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // About 21 tokens at $1 each: some 2,100 cents.
    assert!((1000.0..4000.0).contains(&cents), "{cents} cents");
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
    let tomorrow = today.tomorrow().unwrap();
    let ranged: Value = get(&format!("/dashboard/billing/usage?start_date={today}&end_date={tomorrow}"), &budgeted)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ranged["total_usage"].as_f64().unwrap(), cents, "today's range holds the one request");
    let before: Value = get(&format!("/dashboard/billing/usage?start_date=2020-01-01&end_date={today}"), &budgeted)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["total_usage"].as_f64().unwrap(), 0.0, "nothing before today");
    let r = get("/dashboard/billing/usage?start_date=yesterday", &budgeted).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "start_date");

    // A token without a budget: no limit to show, its lifetime spend; others' spend is not its own.
    let sub: Value = app.get("/dashboard/billing/subscription").send().await.unwrap().json().await.unwrap();
    assert_eq!(sub["hard_limit_usd"], 100_000_000.0);
    assert_eq!(sub["access_until"], 0);
    let usage: Value = app.get("/dashboard/billing/usage").send().await.unwrap().json().await.unwrap();
    assert_eq!(usage["total_usage"], 0.0);
    assert_eq!(app.sim.stats().total_requests, 1, "billing is answered here, never upstream");
}
