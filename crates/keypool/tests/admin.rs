//! The admin REST API (`/admin/api/`): every route on SQLite and
//! PostgreSQL where the store is involved, its token check, its answers to
//! bad input, and its OpenAPI document against the committed copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scratch::{both, Scratch};
use keypool::app::Running;
use keypool::config::{AdminConfig, AdminToken, Config};
use keypool::records::{Attempt, Counted, RequestRecord};
use keypool::server::{generate_token, hash_token};
use keypool_sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{json, Value};

both!(
    keys_are_added_listed_edited_switched_reset_and_deleted,
    the_key_list_shows_the_schedulers_live_state,
    a_key_added_through_the_api_serves_at_once,
    a_bulk_import_reports_added_duplicate_and_invalid_pieces,
    tokens_are_created_once_listed_without_values_and_revoked,
    the_request_log_is_filtered_and_paged_by_a_stable_cursor,
    one_request_comes_with_its_attempts,
    the_request_log_exports_as_csv_and_json_lines,
    every_change_is_in_the_audit_log_without_secrets,
    stats_sum_the_rollups_per_subject_with_names_and_derived_figures,
    stats_series_gives_the_buckets_oldest_first,
);

const ADMIN: &str = "admin-token-0123456789abcdef";

struct Admin {
    gateway: Running,
    _sim: Simulator,
    client: reqwest::Client,
}

impl Admin {
    /// A gateway on `db` with the admin API on; the sync interval is an
    /// hour, so only the admin API's own reload can make a change live.
    async fn start(db: &Scratch) -> Admin {
        Admin::start_with(&db.url, Some(ADMIN), SimConfig { accept_any_key: true, ..SimConfig::default() }).await
    }

    async fn start_with(url: &str, admin: Option<&str>, sim: SimConfig) -> Admin {
        let sim = Simulator::start(sim).await.unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: sim.base_url(),
            database_url: url.to_owned(),
            sync_interval: Duration::from_secs(3600),
            admin_token: admin.map(AdminToken::new),
            // The token checks below send hundreds of wrong tokens from one
            // address: the per-address limit is tested in admin_access.rs.
            admin: AdminConfig { sign_in_attempts_per_minute: 0 },
            ..Config::default()
        };
        config.validate().unwrap();
        let gateway = keypool::app::start(&config).await.unwrap();
        Admin { gateway, _sim: sim, client: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/admin/api{path}", self.gateway.addr())
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(ADMIN)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.req(reqwest::Method::POST, path).json(&body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.req(reqwest::Method::PATCH, path).json(&body)).await
    }

    async fn chat(&self, token: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/chat/completions", self.gateway.base_url()))
            .bearer_auth(token)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
            .send()
            .await
            .unwrap()
    }
}

async fn answer(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

/// Asserts an OpenAI-shaped 400 naming `param`.
fn assert_bad(got: &(StatusCode, Value), param: &str) {
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
    assert_eq!(got.1["error"]["param"], param, "{}", got.1);
    assert_eq!(got.1["error"]["type"], "invalid_request_error", "{}", got.1);
    assert!(got.1["error"]["message"].as_str().is_some_and(|m| m.contains(param)), "{}", got.1);
}

async fn keys_are_added_listed_edited_switched_reset_and_deleted(db: Scratch) {
    let admin = Admin::start(&db).await;
    let secret = "sk-admin-test-0123456789abcdef";
    let (status, key) =
        admin.post("/keys", json!({"key": secret, "label": "first", "rpm": 60, "budget_usd": 2.5})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let id = key["id"].as_i64().unwrap();
    assert_eq!(key["key"], "sk-…cdef");
    assert_eq!(
        (key["label"].as_str(), key["rpm"].as_i64(), key["budget_micros"].as_i64()),
        (Some("first"), Some(60), Some(2_500_000))
    );
    assert_eq!(key["status"], "active");
    assert_eq!(key["remaining_requests"], 60, "live state from the scheduler: {key}");
    assert!(!key.to_string().contains(secret), "the key's value never comes back");

    // The same key again is a conflict naming the existing one.
    let (status, dup) = admin.post("/keys", json!({"key": secret})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    assert!(dup["error"]["message"].as_str().unwrap().contains(&id.to_string()));

    let (status, list) = admin.get("/keys").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret));

    let (status, edited) =
        admin.patch(&format!("/keys/{id}"), json!({"label": null, "tpm": 1000, "organization": "org-1"})).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(
        (edited["label"].clone(), edited["tpm"].clone(), edited["rpm"].clone()),
        (Value::Null, json!(1000), json!(60))
    );
    assert_eq!(edited["organization"], "org-1");

    let (_, off) = admin.post(&format!("/keys/{id}/disable"), json!({})).await;
    assert_eq!((off["enabled"].clone(), off["status"].clone()), (json!(false), json!("disabled")));
    let (_, on) = admin.post(&format!("/keys/{id}/enable"), json!({})).await;
    assert_eq!((on["enabled"].clone(), on["status"].clone()), (json!(true), json!("active")));

    // Totals counted by the store and the scheduler are zeroed by a reset.
    db.store
        .add_usage(&[keypool::store::UsageDelta {
            key_id: id,
            requests: 5,
            successes: 4,
            failures: 1,
            prompt_tokens: 10,
            completion_tokens: 20,
            spent_micros: 300,
            last_used_at: None,
        }])
        .await
        .unwrap();
    let (_, one) = admin.get(&format!("/keys/{id}")).await;
    assert_eq!((one["requests"].clone(), one["spent_micros"].clone()), (json!(5), json!(300)));
    let (status, reset) = admin.post(&format!("/keys/{id}/reset"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    for field in ["requests", "successes", "failures", "prompt_tokens", "completion_tokens", "spent_micros"] {
        assert_eq!(reset[field], 0, "{field}: {reset}");
    }

    let r = admin.req(reqwest::Method::DELETE, &format!("/keys/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, gone) = admin.get(&format!("/keys/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    for (method, path) in [
        (reqwest::Method::DELETE, format!("/keys/{id}")),
        (reqwest::Method::POST, format!("/keys/{id}/enable")),
        (reqwest::Method::POST, format!("/keys/{id}/disable")),
        (reqwest::Method::POST, format!("/keys/{id}/reset")),
        (reqwest::Method::PATCH, format!("/keys/{id}")),
    ] {
        let (status, body) = answer(admin.req(method.clone(), &path).json(&json!({"rpm": 1}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    assert!(admin.get("/keys").await.1.as_array().unwrap().is_empty());
    admin.gateway.shutdown().await.unwrap();
}

async fn the_key_list_shows_the_schedulers_live_state(db: Scratch) {
    let good = "sk-good-0123456789abcdef";
    let bad = "sk-bad-0123456789abcdef";
    for k in [good, bad] {
        db.store
            .add_key(&keypool::store::NewKey { secret: k.into(), rpm: Some(100), ..Default::default() })
            .await
            .unwrap();
    }
    let token = generate_token();
    db.store.create_token("caller", &hash_token(&token), "kp-c").await.unwrap();
    let sim = SimConfig { keys: vec![keypool_sim::SimKey::new(good)], ..SimConfig::default() };
    let admin = Admin::start_with(&db.url, Some(ADMIN), sim).await;
    // The upstream refuses the bad key (401): keypool retries on the good one,
    // and marks the bad one invalid. Until both were used:
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let keys = loop {
        assert_eq!(admin.chat(&token).await.status(), StatusCode::OK);
        let (_, keys) = admin.get("/keys").await;
        if keys[1]["status"] == "invalid" {
            break keys;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bad key was never tried: {keys}");
    };
    let (good, bad) = (&keys[0], &keys[1]);
    assert_eq!(bad["last_error"], "invalid_key", "{bad}");
    assert!(bad["last_error_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(bad["reason"].as_str().is_some_and(|r| r.contains("401")), "{bad}");
    assert_eq!(good["status"], "active");
    assert_eq!(good["last_error"], Value::Null);
    let used = good["requests"].as_u64().unwrap();
    assert!(used >= 1);
    assert_eq!(good["remaining_requests"].as_u64(), Some(100 - used), "{good}");
    assert!(good["reset_in_secs"].as_f64().is_some_and(|s| s > 0.0 && s <= 60.0), "{good}");
    assert_eq!((good["inflight"].clone(), good["effective_rpm"].clone()), (json!(0), json!(100)));
    admin.gateway.shutdown().await.unwrap();
}

async fn a_key_added_through_the_api_serves_at_once(db: Scratch) {
    let token = generate_token();
    db.store.create_token("caller", &hash_token(&token), "kp-c").await.unwrap();
    let admin = Admin::start(&db).await;
    let r = admin.chat(&token).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "no key yet");
    let (status, key) = admin.post("/keys", json!({"key": "sk-live-0123456789abcdefgh"})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    // The sync interval is an hour: only the admin API's reload can have
    // loaded it. Polled with a generous deadline all the same.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = admin.chat(&token).await;
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new key never served: {}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.gateway.shutdown().await.unwrap();
}

async fn a_bulk_import_reports_added_duplicate_and_invalid_pieces(db: Scratch) {
    let admin = Admin::start(&db).await;
    let (_, first) = admin.post("/keys", json!({"key": "sk-one-0123456789abcdef"})).await;
    let text =
        "# pasted\nsk-one-0123456789abcdef, sk-two-0123456789abcdef\n\"sk-three-0123456789abcdef\"\nbad\u{7f}piece\n";
    let (status, done) = admin.post("/keys/import", json!({"text": text, "rpm": 10, "label": "bulk"})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["added"].as_array().unwrap().len(), 2, "{done}");
    assert_eq!(done["duplicates"], json!([first["id"]]));
    assert_eq!(done["invalid"].as_array().unwrap().len(), 1);
    assert_eq!(done["invalid"][0]["line"], 4);
    let (_, keys) = admin.get("/keys").await;
    let bulk: Vec<&Value> = keys.as_array().unwrap().iter().filter(|k| k["label"] == "bulk").collect();
    assert_eq!(bulk.len(), 2);
    assert!(bulk.iter().all(|k| k["rpm"] == 10));
    assert_bad(&admin.post("/keys/import", json!({"text": "sk-x-0123456789abcdef", "rpd": 0})).await, "rpd");
    admin.gateway.shutdown().await.unwrap();
}

async fn tokens_are_created_once_listed_without_values_and_revoked(db: Scratch) {
    db.store
        .add_key(&keypool::store::NewKey { secret: "sk-k-0123456789abcdef".into(), ..Default::default() })
        .await
        .unwrap();
    let admin = Admin::start(&db).await;
    let (status, created) = admin.post("/tokens", json!({"name": "team-a"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("kp-") && token.starts_with(created["prefix"].as_str().unwrap()));
    let id = created["id"].as_i64().unwrap();
    // Live at once (the sync interval is an hour).
    assert_eq!(admin.chat(&token).await.status(), StatusCode::OK);

    let (_, list) = admin.get("/tokens").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "team-a");
    assert!(!list.to_string().contains(&token), "the value is shown once only");
    assert!(!list.to_string().contains(&hash_token(&token)), "nor its hash");

    let (status, taken) = admin.post("/tokens", json!({"name": "team-a"})).await;
    assert_eq!((status, taken["error"]["param"].clone()), (StatusCode::CONFLICT, json!("name")));

    let (status, revoked) = admin.post(&format!("/tokens/{id}/revoke"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_i64());
    assert_eq!(admin.chat(&token).await.status(), StatusCode::UNAUTHORIZED, "refused from the answer on");
    assert_eq!(admin.post("/tokens/99999/revoke", json!({})).await.0, StatusCode::NOT_FOUND);
    admin.gateway.shutdown().await.unwrap();
}

fn record(i: i64, started_at: i64) -> RequestRecord {
    RequestRecord {
        request_id: format!("req-{i}"),
        started_at,
        token_id: Some(i % 2),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some(if i % 3 == 0 { "gpt-4o" } else { "gpt-4o-mini" }.into()),
        status: if i % 5 == 0 { 429 } else { 200 },
        error_type: (i % 5 == 0).then_some("rate_limited".into()),
        key_id: Some(i % 4),
        attempts: vec![
            Attempt { key_id: 9, status: 429, reason: "rate_limited".into(), duration_us: 10, ..Default::default() },
            Attempt { key_id: i % 4, status: 200, reason: "ok".into(), duration_us: 20, ..Default::default() },
        ],
        prompt_tokens: Some(3),
        ..RequestRecord::default()
    }
}

/// 40 records, a pair every half second from Unix second 1,000 on, each
/// pair sharing a millisecond (ties broken by id).
async fn forty_records(db: &Scratch) {
    let records: Vec<RequestRecord> = (0..40).map(|i| record(i, 1_000_000 + (i / 2) * 500)).collect();
    db.store.insert_requests(&records).await.unwrap();
}

async fn the_request_log_is_filtered_and_paged_by_a_stable_cursor(db: Scratch) {
    forty_records(&db).await;
    let admin = Admin::start(&db).await;
    // Pages of 7, newest first, until the last: every record once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, page) = admin.get(&format!("/requests?limit=7{q}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for r in page["data"].as_array().unwrap() {
            seen.push((r["started_at_ms"].as_i64().unwrap(), r["id"].as_i64().unwrap()));
        }
        if seen.len() == 7 {
            // Rows arriving meanwhile do not shift the next page.
            db.store.insert_requests(&[record(100, 2_000_000)]).await.unwrap();
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 40, "every record once");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "newest first, no repeats");

    let count = |v: &Value| v["data"].as_array().unwrap().len();
    let (_, by_key) = admin.get("/requests?key_id=1&limit=1000").await;
    assert_eq!(count(&by_key), 10);
    assert!(by_key["data"].as_array().unwrap().iter().all(|r| r["key_id"] == 1));
    let (_, by_model) = admin.get("/requests?model=gpt-4o&limit=1000").await;
    assert_eq!(count(&by_model), 14);
    let (_, failed) = admin.get("/requests?status=429&error_type=rate_limited").await;
    assert_eq!(count(&failed), 9, "8 of the forty and the late one");
    let (_, by_token) = admin.get("/requests?token_id=0&limit=1000").await;
    assert_eq!(count(&by_token), 21, "20 of the forty and the late one");
    // Seconds 1,002 to 1,005: records 8 to 23.
    let (_, window) = admin.get("/requests?from=1002&to=1006").await;
    assert_eq!(count(&window), 16);
    assert_eq!(window["data"][15]["request_id"], "req-8");
    let (_, one) = admin.get("/requests?request_id=req-7").await;
    assert_eq!(count(&one), 1);
    admin.gateway.shutdown().await.unwrap();
}

async fn one_request_comes_with_its_attempts(db: Scratch) {
    forty_records(&db).await;
    let admin = Admin::start(&db).await;
    let (_, page) = admin.get("/requests?request_id=req-3").await;
    let id = page["data"][0]["id"].as_i64().unwrap();
    let (status, one) = admin.get(&format!("/requests/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["request_id"], "req-3");
    assert_eq!(one["attempt_log"].as_array().unwrap().len(), 2);
    assert_eq!(one["attempt_log"][0]["reason"], "rate_limited");
    assert_eq!(one["attempt_log"][1]["key_id"], 3);
    let (status, missing) = admin.get("/requests/987654").await;
    assert_eq!((status, missing["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    admin.gateway.shutdown().await.unwrap();
}

async fn the_request_log_exports_as_csv_and_json_lines(db: Scratch) {
    // More than one export page (500 rows), so the stream pages through.
    let records: Vec<RequestRecord> = (0..1203).map(|i| record(i, 1_000_000 + i)).collect();
    db.store.insert_requests(&records).await.unwrap();
    let admin = Admin::start(&db).await;
    let r = admin.req(reqwest::Method::GET, "/requests/export?format=csv").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let disposition = r.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.starts_with("attachment; filename=\"keypool-requests-") && disposition.ends_with(".csv\""));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1204, "a header and every row");
    assert!(lines[0].starts_with("id,request_id,started_at_ms,"));
    assert!(lines[1].contains(",req-1202,"), "newest first: {}", lines[1]);

    let r = admin.req(reqwest::Method::GET, "/requests/export?format=jsonl&from=1000&to=1001").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1000, "records started in second 1000 only");
    assert!(rows.iter().all(|r| r["started_at_ms"].as_i64().unwrap() < 1_001_000));

    let r = admin.req(reqwest::Method::GET, "/requests/export?format=csv&from=5000").send().await.unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), 1, "an empty range is a header only");
    admin.gateway.shutdown().await.unwrap();
}

async fn every_change_is_in_the_audit_log_without_secrets(db: Scratch) {
    let admin = Admin::start(&db).await;
    let secret = "sk-audit-0123456789abcdef";
    let (_, key) = admin.post("/keys", json!({"key": secret, "rpm": 5})).await;
    let id = key["id"].as_i64().unwrap();
    admin.patch(&format!("/keys/{id}"), json!({"label": "x"})).await;
    admin.post(&format!("/keys/{id}/disable"), json!({})).await;
    admin.post(&format!("/keys/{id}/enable"), json!({})).await;
    admin.post(&format!("/keys/{id}/reset"), json!({})).await;
    admin.post("/keys/import", json!({"text": "sk-other-0123456789abcdef"})).await;
    admin.req(reqwest::Method::DELETE, &format!("/keys/{id}")).send().await.unwrap();
    let (_, token) = admin.post("/tokens", json!({"name": "t"})).await;
    let tid = token["id"].as_i64().unwrap();
    admin.post(&format!("/tokens/{tid}/revoke"), json!({})).await;

    let mut actions = Vec::new();
    let mut all = String::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = admin.get(&format!("/audit?limit=3{cursor}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        all.push_str(&page.to_string());
        for e in page["data"].as_array().unwrap() {
            actions.push(e["action"].as_str().unwrap().to_owned());
            assert!(e["actor"].as_str().unwrap().starts_with("admin:"));
            assert_eq!(e["client_addr"], "127.0.0.1");
            assert!(e["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        actions,
        [
            "tokens.revoke",
            "tokens.create",
            "keys.delete",
            "keys.import",
            "keys.reset",
            "keys.enable",
            "keys.disable",
            "keys.edit",
            "keys.add"
        ],
        "newest first"
    );
    assert!(all.contains("\"rpm\":5"), "the settings set are named: {all}");
    assert!(!all.contains(secret) && !all.contains("sk-other") && !all.contains(token["token"].as_str().unwrap()));
    assert!(!all.contains(ADMIN));
    admin.gateway.shutdown().await.unwrap();
}

/// 2023-11-15 00:00:00 UTC, in seconds: far enough back that the
/// defaults' last day never holds these records.
const DAY0: i64 = 1_700_006_400;

fn stat_record(
    second: i64,
    token: Option<i64>,
    model: &str,
    duration_ms: u64,
    attempts: Vec<Attempt>,
) -> RequestRecord {
    let ok = attempts.last().is_some_and(|a| a.counted == Counted::Success);
    RequestRecord {
        request_id: format!("req-{second}-{model}"),
        started_at: second * 1000,
        token_id: token,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some(model.into()),
        status: if ok { 200 } else { 502 },
        error_type: (!ok).then(|| "server_error".into()),
        key_id: attempts.last().map(|a| a.key_id),
        attempts,
        duration_us: duration_ms * 1000,
        ttfb_us: Some(100_000),
        queue_wait_us: 2_000,
        prompt_tokens: Some(100),
        completion_tokens: Some(20),
        cost_micros: Some(50),
        ..RequestRecord::default()
    }
}

fn sent(key_id: i64, status: u16, reason: &'static str, counted: Counted) -> Attempt {
    Attempt { key_id, status, reason: reason.into(), duration_us: 1_000, counted }
}

/// Two keys (the first labelled "main"), a token "team", and four requests:
/// two in the first minutes of DAY0 (the second retried from key b to key
/// a after a 429), one an hour later without a token on key b (2 s), and a
/// failure on key b the next day. Returns (a, b, token).
async fn stat_records(db: &Scratch) -> (i64, i64, i64) {
    let mut ids = Vec::new();
    for (secret, label) in [("sk-stats-a-0123456789abcdef", Some("main")), ("sk-stats-b-0123456789abcdef", None)] {
        let key = keypool::store::NewKey { secret: secret.into(), label: label.map(Into::into), ..Default::default() };
        match db.store.add_key(&key).await.unwrap() {
            keypool::store::AddOutcome::Added(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    let (a, b) = (ids[0], ids[1]);
    let t = db.store.create_token("team", &hash_token(&generate_token()), "kp-t").await.unwrap();
    let records = [
        stat_record(DAY0 + 10, Some(t), "gpt-4o", 300, vec![sent(a, 200, "ok", Counted::Success)]),
        stat_record(
            DAY0 + 70,
            Some(t),
            "gpt-4o",
            300,
            vec![sent(b, 429, "rate_limited", Counted::Failure), sent(a, 200, "ok", Counted::Success)],
        ),
        stat_record(DAY0 + 3_700, None, "gpt-4o-mini", 2_000, vec![sent(b, 200, "ok", Counted::Success)]),
        stat_record(DAY0 + 86_405, Some(t), "gpt-4o", 300, vec![sent(b, 500, "server_error", Counted::Failure)]),
    ];
    db.store.insert_requests(&records).await.unwrap();
    (a, b, t)
}

async fn stats_sum_the_rollups_per_subject_with_names_and_derived_figures(db: Scratch) {
    let (a, b, t) = stat_records(&db).await;
    let admin = Admin::start(&db).await;
    let two_days = format!("from={DAY0}&to={}", DAY0 + 2 * 86_400);
    let (status, keys) = admin.get(&format!("/stats?by=key&span=hour&{two_days}")).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!((keys["by"].clone(), keys["span"].clone()), (json!("key"), json!("hour")));
    assert_eq!((keys["from"].as_i64(), keys["to"].as_i64()), (Some(DAY0), Some(DAY0 + 2 * 86_400)));
    assert_eq!(keys["latency_bounds_ms"], json!([50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]));
    let rows = keys["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{keys}");
    // Largest request count first: key b was sent three times (a 429, a
    // success, a failure), key a twice.
    let (kb, ka) = (&rows[0], &rows[1]);
    assert_eq!((kb["subject"].clone(), kb["name"].clone()), (json!(b.to_string()), Value::Null));
    assert_eq!((ka["subject"].clone(), ka["name"].clone()), (json!(a.to_string()), json!("main")));
    assert_eq!(
        (kb["requests"].clone(), kb["successes"].clone(), kb["failures"].clone()),
        (json!(3), json!(1), json!(2))
    );
    assert_eq!((kb["errors"]["rate_limited"].clone(), kb["errors"]["upstream"].clone()), (json!(1), json!(1)));
    assert_eq!(kb["success_rate"].as_f64().unwrap(), 1.0 / 3.0);
    // Latency counts for the key that answered: b answered the 2 s and a 300 ms request.
    assert_eq!(kb["latency_histogram"], json!([0, 0, 0, 1, 0, 1, 0, 0, 0, 0]));
    assert_eq!((kb["p50_ms"].clone(), kb["p99_ms"].clone()), (json!(500), json!(2500)));
    assert_eq!((ka["requests"].clone(), ka["success_rate"].clone()), (json!(2), json!(1.0)));
    assert_eq!((ka["prompt_tokens"].clone(), ka["cost_micros"].clone()), (json!(200), json!(100)));
    assert_eq!((ka["avg_latency_ms"].clone(), ka["avg_ttfb_ms"].clone()), (json!(300.0), json!(100.0)));
    assert_eq!((ka["avg_queue_wait_ms"].clone(), ka["p95_ms"].clone()), (json!(2.0), json!(500)));
    assert_eq!((ka["duration_us_sum"].clone(), ka["answered"].clone()), (json!(600_000), json!(2)));
    assert_eq!((keys["total"]["requests"].clone(), keys["total"]["failures"].clone()), (json!(5), json!(2)));

    // Per token, by day, the first day: the team's two and one without a token.
    let (_, tokens) = admin.get(&format!("/stats?by=token&span=day&from={DAY0}&to={}", DAY0 + 86_400)).await;
    let rows = tokens["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{tokens}");
    assert_eq!((rows[0]["subject"].clone(), rows[0]["name"].clone()), (json!(t.to_string()), json!("team")));
    assert_eq!((rows[0]["requests"].clone(), rows[1]["subject"].clone()), (json!(2), json!("")));
    assert_eq!(tokens["total"]["requests"], 3);

    // Per model, by minute, the first hour only: the buckets starting in it.
    let (_, models) = admin.get(&format!("/stats?by=model&span=minute&from={DAY0}&to={}", DAY0 + 3_600)).await;
    let rows = models["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{models}");
    assert_eq!((rows[0]["subject"].clone(), rows[0]["requests"].clone()), (json!("gpt-4o"), json!(2)));
    assert_eq!(rows[0]["name"], Value::Null);

    // Defaults: per key, by hour, the last day up to now (nothing recorded then).
    let (status, now) = admin.get("/stats").await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_eq!((now["by"].clone(), now["span"].clone()), (json!("key"), json!("hour")));
    let to = now["to"].as_i64().unwrap();
    assert_eq!(to - now["from"].as_i64().unwrap(), 86_400);
    assert!((to - keypool::store::now_unix() - 1).abs() <= 5, "to defaults to now: {now}");
    assert_eq!(now["data"], json!([]));
    assert_eq!((now["total"]["requests"].clone(), now["total"]["success_rate"].clone()), (json!(0), Value::Null));
    assert_eq!(now["total"]["p50_ms"], Value::Null);
    let (_, minute) = admin.get("/stats?span=minute").await;
    assert_eq!(minute["to"].as_i64().unwrap() - minute["from"].as_i64().unwrap(), 3_600);
    let (_, day) = admin.get("/stats?span=day&to=1000000000").await;
    assert_eq!((day["from"].as_i64(), day["to"].as_i64()), (Some(1_000_000_000 - 30 * 86_400), Some(1_000_000_000)));
    admin.gateway.shutdown().await.unwrap();
}

async fn stats_series_gives_the_buckets_oldest_first(db: Scratch) {
    let (a, b, t) = stat_records(&db).await;
    let admin = Admin::start(&db).await;
    let pairs = |v: &Value| -> Vec<(i64, u64)> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["bucket"].as_i64().unwrap(), r["requests"].as_u64().unwrap()))
            .collect()
    };
    // Every token summed, by minute, the first day: three minutes with requests.
    let (status, all) =
        admin.get(&format!("/stats/series?by=token&span=minute&from={DAY0}&to={}", DAY0 + 86_400)).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(pairs(&all), vec![(DAY0, 1), (DAY0 + 60, 1), (DAY0 + 3_660, 1)]);
    assert_eq!((all["subject"].clone(), all["name"].clone()), (Value::Null, Value::Null));
    assert_eq!(all["total"]["requests"], 3);
    // One key, by day, two days.
    let two_days = format!("from={DAY0}&to={}", DAY0 + 2 * 86_400);
    let (_, kb) = admin.get(&format!("/stats/series?by=key&span=day&subject={b}&{two_days}")).await;
    assert_eq!(pairs(&kb), vec![(DAY0, 2), (DAY0 + 86_400, 1)]);
    assert_eq!((kb["subject"].clone(), kb["data"][1]["errors"]["upstream"].clone()), (json!(b.to_string()), json!(1)));
    let (_, ka) = admin.get(&format!("/stats/series?by=key&span=hour&subject={a}&{two_days}")).await;
    assert_eq!(pairs(&ka), vec![(DAY0, 2)]);
    assert_eq!((ka["name"].clone(), ka["data"][0]["avg_latency_ms"].clone()), (json!("main"), json!(300.0)));
    // A token, and the requests without one ("").
    let (_, team) = admin.get(&format!("/stats/series?by=token&span=day&subject={t}&{two_days}")).await;
    assert_eq!((pairs(&team), team["name"].clone()), (vec![(DAY0, 2), (DAY0 + 86_400, 1)], json!("team")));
    let (_, none) = admin.get(&format!("/stats/series?by=token&span=hour&subject=&{two_days}")).await;
    assert_eq!(pairs(&none), vec![(DAY0 + 3_600, 1)]);
    // A model; and one never seen: no buckets.
    let (_, mini) = admin.get(&format!("/stats/series?by=model&span=hour&subject=gpt-4o-mini&{two_days}")).await;
    assert_eq!(pairs(&mini), vec![(DAY0 + 3_600, 1)]);
    assert_eq!(mini["data"][0]["p50_ms"], 2500);
    let (_, unseen) = admin.get(&format!("/stats/series?by=model&subject=o9&{two_days}")).await;
    assert_eq!((unseen["data"].clone(), unseen["span"].clone()), (json!([]), json!("hour")));
    admin.gateway.shutdown().await.unwrap();
}

/// Every route, for the token checks.
fn routes() -> Vec<(reqwest::Method, &'static str)> {
    use reqwest::Method as M;
    vec![
        (M::GET, "/openapi.json"),
        (M::GET, "/session"),
        (M::GET, "/overview"),
        (M::GET, "/upstreams"),
        (M::POST, "/upstreams/default/test"),
        (M::GET, "/keys"),
        (M::POST, "/keys"),
        (M::POST, "/keys/import"),
        (M::GET, "/keys/1"),
        (M::PATCH, "/keys/1"),
        (M::DELETE, "/keys/1"),
        (M::POST, "/keys/1/enable"),
        (M::POST, "/keys/1/disable"),
        (M::POST, "/keys/1/reset"),
        (M::GET, "/tokens"),
        (M::POST, "/tokens"),
        (M::POST, "/tokens/1/revoke"),
        (M::GET, "/requests"),
        (M::GET, "/requests/1"),
        (M::GET, "/requests/export?format=csv"),
        (M::GET, "/audit"),
        (M::GET, "/stats"),
        (M::GET, "/stats/series?by=model&subject=gpt-4o"),
        (M::GET, "/no-such-route"),
    ]
}

#[tokio::test]
async fn a_missing_or_wrong_admin_token_gets_401_on_every_route() {
    let db = Scratch::sqlite().await;
    let admin = Admin::start(&db).await;
    for (method, path) in routes() {
        for auth in [None, Some("wrong-token-0123456789abcdef"), Some(""), Some("kp-a-gateway-token")] {
            let mut req = admin.client.request(method.clone(), admin.url(path)).json(&json!({}));
            if let Some(token) = auth {
                req = req.bearer_auth(token);
            }
            let (status, body) = answer(req).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {auth:?}: {body}");
            assert_eq!(body["error"]["code"], "invalid_admin_token");
            assert!(body["error"]["message"].as_str().unwrap().contains("admin token"));
        }
    }
    // Nothing was changed by any of them.
    assert!(db.store.list_audit(None, 10).await.unwrap().is_empty());
    admin.gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_an_admin_token_setting_the_admin_api_wants_the_stored_one() {
    let db = Scratch::sqlite().await;
    let admin = Admin::start_with(&db.url, None, SimConfig::default()).await;
    for (method, path) in routes() {
        for auth in [None, Some(ADMIN)] {
            let mut req = admin.client.request(method.clone(), admin.url(path));
            if let Some(token) = auth {
                req = req.bearer_auth(token);
            }
            let (status, body) = answer(req).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "invalid_admin_token");
        }
    }
    // A token was generated and only its digest stored.
    let stored = db.store.admin_token_hash().await.unwrap().expect("a stored admin token");
    assert_eq!(stored.len(), 64, "a SHA-256 digest: {stored}");
    admin.gateway.shutdown().await.unwrap();
}

#[test]
fn a_short_admin_token_is_refused_at_start_naming_the_setting() {
    let config = Config { admin_token: Some(AdminToken::new("short")), ..Config::default() };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("admin_token") && err.contains("at least 24"), "{err}");
    let spaced = Config { admin_token: Some(AdminToken::new("with a space 0123456789abcdef")), ..Config::default() };
    assert!(spaced.validate().unwrap_err().to_string().contains("admin_token"));
    // And it never prints.
    let shown = format!("{:?}", Config { admin_token: Some(AdminToken::new(ADMIN)), ..Config::default() });
    assert!(!shown.contains(ADMIN));
}

#[tokio::test]
async fn bad_input_gets_400_naming_the_field() {
    let db = Scratch::sqlite().await;
    let admin = Admin::start(&db).await;
    let (_, key) = admin.post("/keys", json!({"key": "sk-valid-0123456789abcdef"})).await;
    let id = key["id"].as_i64().unwrap();
    let k = format!("/keys/{id}");
    // Bodies: wrong types, out of range, unknown and missing fields, bad values.
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "rpm": "ten"})).await, "rpm");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "rpm": 0})).await, "rpm");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "tpm": -1})).await, "tpm");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "colour": "red"})).await, "colour");
    assert_bad(&admin.post("/keys", json!({"label": "no key"})).await, "key");
    assert_bad(&admin.post("/keys", json!({"key": "has space"})).await, "key");
    assert_bad(&admin.post("/keys", json!({"key": ""})).await, "key");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "budget_usd": -3})).await, "budget_usd");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "expires": "2001-01-01"})).await, "expires");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "expires": "soon"})).await, "expires");
    assert_bad(&admin.post("/keys", json!({"key": "sk-x-0123456789abcdef", "project": "a b"})).await, "project");
    assert_bad(&admin.patch(&k, json!({"weight": 0})).await, "weight");
    assert_bad(&admin.patch(&k, json!({"max_inflight": 1.5})).await, "max_inflight");
    assert_bad(&admin.patch(&k, json!({"organization": "é"})).await, "organization");
    assert_bad(&admin.patch(&k, json!({"enabled": false})).await, "enabled");
    assert_bad(&admin.post("/keys/import", json!({"keys": "sk-x"})).await, "keys");
    assert_bad(&admin.post("/tokens", json!({"name": "  "})).await, "name");
    assert_bad(&admin.post("/tokens", json!({"name": 7})).await, "name");
    assert_bad(&admin.post("/tokens", json!({})).await, "name");
    // NUL, which PostgreSQL cannot store, in a body and in a filter.
    assert_bad(&admin.patch(&k, json!({"label": "a\u{0}b"})).await, "label");
    assert_bad(&admin.get("/requests?model=a%00b").await, "model");
    // Not JSON at all.
    let (status, body) = answer(admin.req(reqwest::Method::POST, "/keys").body("{not json")).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_json")), "{body}");
    // Path ids.
    assert_bad(&admin.get("/keys/abc").await, "id");
    assert_bad(&admin.post("/tokens/1.5/revoke", json!({})).await, "id");
    assert_bad(&admin.get("/requests/x").await, "id");
    // Query parameters.
    assert_bad(&admin.get("/requests?limit=0").await, "limit");
    assert_bad(&admin.get("/requests?limit=1001").await, "limit");
    assert_bad(&admin.get("/requests?from=yesterday").await, "from");
    assert_bad(&admin.get("/requests?to=-5").await, "to");
    assert_bad(&admin.get("/requests?key_id=k").await, "key_id");
    assert_bad(&admin.get("/requests?status=2000").await, "status");
    assert_bad(&admin.get("/requests?cursor=nope").await, "cursor");
    assert_bad(&admin.get("/requests?modle=gpt-4o").await, "modle");
    assert_bad(&admin.get("/requests?model=a&model=b").await, "model");
    assert_bad(&admin.get("/requests/export").await, "format");
    assert_bad(&admin.get("/requests/export?format=xml").await, "format");
    assert_bad(&admin.get("/audit?cursor=x").await, "cursor");
    assert_bad(&admin.get("/audit?limit=abc").await, "limit");
    assert_bad(&admin.get("/stats?by=user").await, "by");
    assert_bad(&admin.get("/stats?span=week").await, "span");
    assert_bad(&admin.get("/stats?from=yesterday").await, "from");
    assert_bad(&admin.get("/stats?from=-1").await, "from");
    assert_bad(&admin.get("/stats?to=1.5").await, "to");
    assert_bad(&admin.get("/stats?from=2000&to=1000").await, "to");
    assert_bad(&admin.get("/stats?from=99999999999").await, "from");
    // A minute span over more than 2 days, an hour span over more than 92.
    assert_bad(&admin.get("/stats?span=minute&from=0&to=172801").await, "from");
    assert!(admin.get("/stats?span=minute&from=0&to=172800").await.0.is_success());
    assert_bad(&admin.get("/stats/series?span=hour&from=0&to=8000000").await, "from");
    assert!(admin.get("/stats?span=day&from=0&to=8000000000").await.0.is_success());
    assert_bad(&admin.get("/stats?subject=1").await, "subject");
    assert_bad(&admin.get("/stats/series?by=key&subject=main").await, "subject");
    assert_bad(&admin.get("/stats/series?by=token&subject=x").await, "subject");
    assert_bad(&admin.get("/stats/series?by=model&subject=a%00b").await, "subject");
    assert_bad(&admin.get("/stats/series?span=hour&span=day").await, "span");
    // A route with the wrong method, and no route at all.
    let (status, body) = answer(admin.req(reqwest::Method::PUT, "/keys")).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed")));
    let (status, body) = admin.get("/nothing/here").await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("unknown_url")));
    // Nothing bad was stored.
    assert_eq!(admin.get("/keys").await.1.as_array().unwrap().len(), 1);
    admin.gateway.shutdown().await.unwrap();
}

/// The committed document (docs/admin-openapi.json).
fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/admin-openapi.json")
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let db = Scratch::sqlite().await;
    let admin = Admin::start(&db).await;
    let r = admin.req(reqwest::Method::GET, "/openapi.json").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.text().await.unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "OpenAPI 3.1");
    for path in [
        "/admin/api/keys",
        "/admin/api/keys/{id}",
        "/admin/api/tokens",
        "/admin/api/requests",
        "/admin/api/audit",
        "/admin/api/stats",
        "/admin/api/stats/series",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    let path = committed_path();
    if std::env::var("KEYPOOL_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/admin-openapi.json differs from the served document: run \
         `KEYPOOL_UPDATE_OPENAPI=1 cargo test --locked -p keypool --test admin the_served_openapi` and commit it"
    );
    admin.gateway.shutdown().await.unwrap();
}

/// The schemathesis executable scripts/test installs (KP_TEST_SCHEMATHESIS);
/// None outside it, where the test skips. In CI its absence fails.
fn schemathesis() -> Option<std::ffi::OsString> {
    let exe = std::env::var_os("KP_TEST_SCHEMATHESIS");
    if exe.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "KP_TEST_SCHEMATHESIS is not set: run the suite with scripts/test, which installs schemathesis"
        );
        eprintln!("skipped: KP_TEST_SCHEMATHESIS not set (scripts/test sets it)");
    }
    exe
}

/// schemathesis, against the committed document, on a throwaway database
/// (destructive routes included): no server error, and every answer's
/// status, content type and body as documented. Derandomized and bounded.
#[tokio::test]
async fn schemathesis_finds_no_server_error_or_schema_break() {
    let Some(exe) = schemathesis() else { return };
    let db = Scratch::sqlite().await;
    db.store
        .add_key(&keypool::store::NewKey { secret: "sk-st-0123456789abcdef".into(), ..Default::default() })
        .await
        .unwrap();
    db.store.insert_requests(&[record(1, 1_000_000), record(2, 1_000_500)]).await.unwrap();
    stat_records(&db).await;
    let admin = Admin::start(&db).await;
    let report = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(exe)
        .arg("run")
        .arg(committed_path())
        .args(["--url", &format!("http://{}", admin.gateway.addr())])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "20", "--generation-deterministic"])
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        // Its cache of past failures stays out of the work tree.
        .current_dir(report.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "schemathesis found problems:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    admin.gateway.shutdown().await.unwrap();
}

/// `keypool keys list --json` with these variables: (stdout, stderr).
async fn cli_keys_list(db_url: &str, env: &[(&str, &str)]) -> (String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keypool"))
        .args(["keys", "list", "--json"])
        .env("KEYPOOL_DATABASE_URL", db_url)
        .env_remove("KEYPOOL_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn keys_list_reads_a_running_server_and_falls_back_to_the_store() {
    let db = Scratch::sqlite().await;
    let secret = "sk-cli-live-0123456789abcdef";
    db.store
        .add_key(&keypool::store::NewKey { secret: secret.into(), rpm: Some(7), ..Default::default() })
        .await
        .unwrap();
    let admin = Admin::start(&db).await;
    let listen = admin.gateway.addr().to_string();

    // A running server and its admin token: the live list, in the API's shape.
    let (out, err) = cli_keys_list(&db.url, &[("KEYPOOL_LISTEN", &listen), ("KEYPOOL_ADMIN_TOKEN", ADMIN)]).await;
    assert!(err.contains("keys: live, from the server at"), "{err}");
    let keys: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(keys[0]["remaining_requests"], 7, "{out}");
    assert!(!out.contains(secret) && !err.contains(ADMIN));

    // A wrong token: the server refuses, the store answers.
    let (out, err) =
        cli_keys_list(&db.url, &[("KEYPOOL_LISTEN", &listen), ("KEYPOOL_ADMIN_TOKEN", "wrong-token-0123456789abcdef")])
            .await;
    assert!(err.contains("as last saved") && err.contains("401"), "{err}");
    let keys: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(keys[0].get("remaining_requests").is_none() && keys[0]["rpm"] == 7, "the store's shape: {out}");
    admin.gateway.shutdown().await.unwrap();

    // No server listening: the store.
    let (out, err) = cli_keys_list(&db.url, &[("KEYPOOL_LISTEN", &listen), ("KEYPOOL_ADMIN_TOKEN", ADMIN)]).await;
    assert!(err.contains("as last saved") && err.contains("no server is listening"), "{err}");
    assert!(out.contains("\"rpm\": 7"));
    // No admin token: the store, without asking.
    let (out, err) = cli_keys_list(&db.url, &[("KEYPOOL_LISTEN", &listen)]).await;
    assert!(!err.contains("keys:"), "{err}");
    assert!(out.contains("\"rpm\": 7"));
}
