//! The dashboard's back end: `/admin/api/overview` and `/admin/api/upstreams`
//! on SQLite and PostgreSQL, and the admin token a server generates when
//! none is configured (the real binary, as an operator runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scratch::{both, Scratch};
use keypool::app::Running;
use keypool::config::{AdminToken, Config};
use keypool::records::{Attempt, Counted, RequestRecord};
use keypool::server::{generate_token, hash_token};
use keypool::store::{now_unix_ms, NewKey};
use keypool_sim::{Faults, SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest;

both!(
    the_overview_counts_requests_errors_capacity_and_spend,
    the_upstream_shows_its_breaker_and_its_test_reports_the_answer,
    the_store_keeps_one_admin_token_digest,
);

const ADMIN: &str = "admin-token-dashboard-0123456789";
const BIN: &str = env!("CARGO_BIN_EXE_keypool");
const ZONE: &str = "Asia/Shanghai";

struct Dash {
    gateway: Running,
    sim: Simulator,
    client: reqwest::Client,
    token: String,
}

impl Dash {
    async fn start(db: &Scratch, tweak: impl FnOnce(&mut Config)) -> Dash {
        let sim = Simulator::start(SimConfig { accept_any_key: true, ..SimConfig::default() }).await.unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: sim.base_url(),
            database_url: db.url.clone(),
            sync_interval: Duration::from_secs(3600),
            admin_token: Some(AdminToken::new(ADMIN)),
            time_zone: ZONE.into(),
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().unwrap();
        let token = generate_token();
        db.store.create_token("caller", &hash_token(&token), "kp-c").await.unwrap();
        let gateway = keypool::app::start(&config).await.unwrap();
        Dash { gateway, sim, client: reqwest::Client::new(), token }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("http://{}/admin/api{path}", self.gateway.addr()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("http://{}/admin/api{path}", self.gateway.addr()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// One chat; `None` when no answer came within 3 s (held by the breaker).
    async fn chat(&self) -> Option<StatusCode> {
        let sent = self
            .client
            .post(format!("{}/chat/completions", self.gateway.base_url()))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3))
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
            .send()
            .await;
        sent.ok().map(|r| r.status())
    }
}

async fn add_key(db: &Scratch, secret: &str, rpm: Option<u32>, tpm: Option<u32>) -> i64 {
    let key = NewKey { secret: secret.into(), rpm, tpm, ..Default::default() };
    match db.store.add_key(&key).await.unwrap() {
        keypool::store::AddOutcome::Added(id) => id,
        other => panic!("{other:?}"),
    }
}

/// Polls `check` every 100 ms for up to 10 s; panics naming `what`.
async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A finished request at `at_ms` with one attempt on `key`.
fn record(id: &str, at_ms: i64, key: i64, status: u16, error_type: Option<&'static str>, cost: u64) -> RequestRecord {
    let ok = (200..300).contains(&status);
    RequestRecord {
        request_id: id.into(),
        started_at: at_ms,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some("gpt-4o".into()),
        status,
        error_type: error_type.map(Into::into),
        key_id: Some(key),
        attempts: vec![Attempt {
            key_id: key,
            status,
            reason: if ok { "ok".into() } else { "server_error".into() },
            duration_us: 1_000,
            counted: if ok { Counted::Success } else { Counted::Failure },
        }],
        duration_us: 200_000,
        ttfb_us: Some(50_000),
        queue_wait_us: 0,
        prompt_tokens: Some(10),
        completion_tokens: Some(2),
        cost_micros: Some(cost),
        ..RequestRecord::default()
    }
}

/// The date `days` days before today in [`ZONE`], `YYYY-MM-DD`.
fn day_in_zone(days: i64) -> String {
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let today = jiff::Timestamp::now().to_zoned(tz).date();
    today.checked_sub(jiff::Span::new().days(days)).unwrap().to_string()
}

async fn the_overview_counts_requests_errors_capacity_and_spend(db: Scratch) {
    let a = add_key(&db, "sk-dash-a-0123456789abcdef", Some(10), Some(10_000)).await;
    let b = add_key(&db, "sk-dash-b-0123456789abcdef", Some(5), None).await;
    let c = add_key(&db, "sk-dash-c-0123456789abcdef", Some(100), None).await;
    db.store.set_key_enabled(c, false).await.unwrap();
    // Three failures of different kinds just now, and an old day's spend.
    let now = now_unix_ms();
    let three_days_ago = now - 3 * 86_400_000;
    let records = [
        record("req-caller", now - 2_000, a, 400, Some("invalid_request_error"), 0),
        record("req-429", now - 2_000, b, 429, Some("rate_limit_exceeded"), 0),
        record("req-502", now - 2_000, a, 502, Some("server_error"), 0),
        record("req-old", three_days_ago, a, 200, None, 5_000),
    ];
    // Days in the zone, as the gateway's own writer sums them.
    let zone = keypool::records::rollup::Buckets::new(jiff::tz::TimeZone::get(ZONE).unwrap());
    db.store.write_batch(&records, true, &keypool::records::rollup::Sums::of(&records, &zone)).await.unwrap();
    let dash = Dash::start(&db, |_| {}).await;
    for _ in 0..3 {
        assert_eq!(dash.chat().await, Some(StatusCode::OK));
    }
    // The three chats reach the rollups through the record writer.
    let overview = wait_for("the chats in the overview", async || {
        let (status, o) = dash.get("/overview").await;
        assert_eq!(status, StatusCode::OK, "{o}");
        (o["recent"]["requests"] == 6).then_some(o)
    })
    .await;
    let recent = &overview["recent"];
    assert_eq!((recent["successes"].clone(), recent["failures"].clone()), (json!(3), json!(3)), "{recent}");
    assert_eq!(
        recent["errors"],
        json!({"caller": 1, "rate_limited": 1, "key": 0, "timeout": 0, "upstream": 1, "gateway": 0, "cancelled": 0})
    );
    let seconds = recent["seconds"].as_f64().unwrap();
    assert!((300.0..=360.0).contains(&seconds), "{recent}");
    assert!((recent["requests_per_second"].as_f64().unwrap() - 6.0 / seconds).abs() < 1e-9, "{recent}");
    assert!(recent["latency_p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{recent}");
    assert!(recent["tokens_per_minute"].as_f64().is_some_and(|t| t > 0.0), "{recent}");

    // Keys by state, and the pool's load and capacity as the scheduler sums them.
    assert_eq!(overview["time_zone"], ZONE);
    assert!((overview["now"].as_i64().unwrap() - now_unix_ms()).abs() < 10_000);
    assert_eq!((overview["keys"]["total"].clone(), overview["keys"]["usable"].clone()), (json!(3), json!(2)));
    assert_eq!(
        (overview["keys"]["states"]["active"].clone(), overview["keys"]["states"]["disabled"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!((overview["in_flight"].clone(), overview["queue_depth"].clone()), (json!(0), json!(0)));
    let pool = dash.gateway.scheduler().pool_figures();
    let cap = pool.capacity.unwrap();
    let capacity = &overview["capacity"];
    assert_eq!(capacity["requests_limit"], json!(cap.requests_limit), "{capacity}");
    assert_eq!(capacity["requests_remaining"], json!(cap.requests_remaining), "{capacity}");
    assert_eq!(capacity["tokens_limit"], json!(cap.tokens_limit), "{capacity}");
    assert_eq!(capacity["tokens_remaining"], json!(cap.tokens_remaining), "{capacity}");
    // The same sums from the key list: the serving keys' limits (the disabled one left out).
    let views = dash.gateway.scheduler().snapshot();
    let serving: Vec<_> = views.iter().filter(|v| v.status == "active").collect();
    assert_eq!(serving.len(), 2);
    assert_eq!(capacity["requests_limit"], json!(15), "configured 10 + 5, the disabled key's 100 not: {capacity}");
    let left: u64 = serving.iter().filter_map(|v| v.remaining_requests).sum();
    assert_eq!(capacity["requests_remaining"], json!(left), "{capacity}");
    assert_eq!(left, 15 - 3, "the three chats count");

    // Spend per day: 30 days in the zone, oldest first; the old request on its day, today's spend today.
    let days = overview["spend_per_day"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["day"], day_in_zone(0));
    assert_eq!(days[0]["day"], day_in_zone(29));
    let old = days.iter().find(|d| d["day"] == day_in_zone(3)).unwrap();
    assert_eq!((old["cost_micros"].clone(), old["requests"].clone()), (json!(5_000), json!(1)));
    assert_eq!(days[29]["requests"], json!(6));
    assert_eq!(days[29]["cost_micros"], recent["cost_micros"]);
    let spent: u64 = days.iter().map(|d| d["cost_micros"].as_u64().unwrap()).sum();
    assert_eq!(spent, 5_000 + recent["cost_micros"].as_u64().unwrap());

    // The key rows carry the dashboard's fields.
    let (_, keys) = dash.get("/keys").await;
    let used = keys.as_array().unwrap().iter().find(|k| k["requests"].as_u64() > Some(0)).unwrap().clone();
    for field in ["reset_requests_at_ms", "reset_tokens_at_ms", "in_flight", "last_used_at_ms", "spent_micros"] {
        assert!(used.get(field).is_some(), "{field} missing: {used}");
    }
    let reset = used["reset_requests_at_ms"].as_i64().unwrap();
    assert!(reset > now_unix_ms() && reset <= now_unix_ms() + 60_000, "within the minute: {used}");
    let untouched = keys.as_array().unwrap().iter().find(|k| k["id"] == c).unwrap();
    assert_eq!(untouched["reset_requests_at_ms"], Value::Null);
    dash.gateway.shutdown().await.unwrap();
}

async fn the_upstream_shows_its_breaker_and_its_test_reports_the_answer(db: Scratch) {
    let secret = "sk-dash-up-0123456789abcdef";
    let id = add_key(&db, secret, None, None).await;
    let dash = Dash::start(&db, |c| {
        c.health.upstream_failures = 2;
        c.health.upstream_probe = Duration::from_millis(200);
    })
    .await;
    assert_eq!(dash.chat().await, Some(StatusCode::OK));
    let (status, list) = dash.get("/upstreams").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let up = &list["data"][0];
    assert_eq!((up["name"].clone(), up["base_url"].clone()), (json!("default"), json!(dash.sim.base_url())));
    assert_eq!((up["answering"].clone(), up["last_error"].clone()), (json!(true), Value::Null), "{up}");
    wait_for("the chat in the last hour", async || {
        let (_, list) = dash.get("/upstreams").await;
        (list["data"][0]["requests_last_hour"] == 1).then_some(())
    })
    .await;
    let (status, test) = dash.post("/upstreams/default/test").await;
    assert_eq!(status, StatusCode::OK, "{test}");
    assert_eq!(
        (test["ok"].clone(), test["status"].clone(), test["key_id"].clone()),
        (json!(true), json!(200), json!(id))
    );
    assert!(test["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{test}");

    // Every answer a 500: the breaker opens, and the upstream is not answering.
    dash.sim.set_faults(Faults { error_500_rate: 1.0, ..Faults::default() });
    let down = wait_for("the breaker to open", async || {
        let _ = dash.chat().await;
        let (_, list) = dash.get("/upstreams").await;
        (list["data"][0]["answering"] == false).then(|| list["data"][0].clone())
    })
    .await;
    assert!(down["last_error"].as_str().is_some_and(|e| e.contains("failing")), "{down}");
    let (_, test) = dash.post("/upstreams/default/test").await;
    assert_eq!((test["ok"].clone(), test["status"].clone()), (json!(false), json!(500)), "{test}");
    // Healthy again: the probe closes the breaker.
    dash.sim.set_faults(Faults::default());
    wait_for("the breaker to close", async || {
        let (_, list) = dash.get("/upstreams").await;
        (list["data"][0]["answering"] == true).then_some(())
    })
    .await;
    // The test reports the upstream's own refusal, without the key.
    let refusal = r#"{"error":{"message":"Incorrect API key provided: sk-dash-up-0123456789abcdef","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    dash.sim.set_faults(Faults { status_override: Some((401, refusal.into())), ..Faults::default() });
    let (_, test) = dash.post("/upstreams/default/test").await;
    assert_eq!((test["ok"].clone(), test["status"].clone()), (json!(false), json!(401)), "{test}");
    let message = test["message"].as_str().unwrap();
    assert!(message.contains("invalid_api_key") && !message.contains(secret), "{message}");
    let (status, unknown) = dash.post("/upstreams/elsewhere/test").await;
    assert_eq!((status, unknown["error"]["param"].clone()), (StatusCode::NOT_FOUND, json!("name")), "{unknown}");
    dash.gateway.shutdown().await.unwrap();
}

async fn the_store_keeps_one_admin_token_digest(db: Scratch) {
    let (first, second) =
        (AdminToken::new("kpa_first-0123456789abcdef"), AdminToken::new("kpa_second-0123456789abcdef"));
    assert_eq!(db.store.admin_token_hash().await.unwrap(), None);
    assert!(db.store.add_admin_token_hash(&first.sha256_hex()).await.unwrap(), "stored when none is");
    assert!(!db.store.add_admin_token_hash(&second.sha256_hex()).await.unwrap(), "never over one");
    assert_eq!(db.store.admin_token_hash().await.unwrap(), Some(first.sha256_hex()));
    db.store.set_admin_token_hash(&second.sha256_hex()).await.unwrap();
    let stored = db.store.admin_token_hash().await.unwrap().unwrap();
    assert_eq!(stored, second.sha256_hex());
    let known = AdminToken::from_sha256_hex(&stored).unwrap();
    assert!(known.matches("kpa_second-0123456789abcdef") && !known.matches("kpa_first-0123456789abcdef"));
    assert_eq!(known.expose(), None, "a stored token is known by its digest only");
}

#[tokio::test]
async fn a_configured_admin_token_wins_over_the_stored_one() {
    let db = Scratch::sqlite().await;
    let stored = "kpa_stored-token-0123456789abcdef0123456789";
    db.store.set_admin_token_hash(&AdminToken::new(stored).sha256_hex()).await.unwrap();
    let dash = Dash::start(&db, |_| {}).await;
    assert_eq!(dash.get("/overview").await.0, StatusCode::OK, "the configured token");
    let r = dash
        .client
        .get(format!("http://{}/admin/api/overview", dash.gateway.addr()))
        .bearer_auth(stored)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the stored one is not in force");
    assert_eq!(db.store.admin_token_hash().await.unwrap(), Some(AdminToken::new(stored).sha256_hex()), "untouched");
    dash.gateway.shutdown().await.unwrap();
}

/// Stops a server even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `keypool serve` on `db` with no admin token configured: the process,
/// its address, and its stderr so far (kept growing by a thread).
fn serve(db: &str, upstream: &str) -> (KillOnDrop, String, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
        .env("KEYPOOL_DATABASE_URL", db)
        .env("KEYPOOL_SYNC_INTERVAL", "200ms")
        .env_remove("KEYPOOL_ADMIN_TOKEN")
        .env_remove("KEYPOOL_CONFIG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let log = Arc::clone(&log);
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = addr_tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("the server printed its address");
    (KillOnDrop(child), addr, log)
}

async fn overview_status(addr: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("http://{addr}/admin/api/overview"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

fn admin_tokens_in(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace()).filter(|w| w.starts_with("kpa_")).map(str::to_owned).collect()
}

#[tokio::test]
async fn the_first_serve_prints_a_token_once_and_stores_only_its_hash() {
    let sim = Simulator::start(SimConfig { accept_any_key: true, ..SimConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let (server, addr, log) = serve(&db, &sim.base_url());
    let printed = log.lock().unwrap().clone();
    let tokens = admin_tokens_in(&printed);
    assert_eq!(tokens.len(), 1, "one token, printed once: {printed}");
    let first = tokens[0].clone();
    assert!(first.len() >= 4 + 32, "kpa_ and 32+ characters: {first}");
    assert!(printed.contains(&format!("http://{addr}/admin")), "the dashboard's address: {printed}");
    assert_eq!(overview_status(&addr, &first).await, StatusCode::OK);
    assert_eq!(overview_status(&addr, "kpa_not-the-token-0123456789abcdef0123").await, StatusCode::UNAUTHORIZED);

    // Only the digest is stored, nowhere the token itself.
    let store = keypool::store::Store::connect(&db).await.unwrap();
    let digest = hex::encode(sha2::Sha256::digest(first.as_bytes()));
    assert_eq!(store.admin_token_hash().await.unwrap(), Some(digest));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(first.len()).any(|w| w == first.as_bytes()), "the token is in a database file");
    }

    // `keypool admin token` sets a new one: printed once on stdout, taken by
    // the running server within its sync interval, the old one refused.
    let out = Command::new(BIN)
        .args(["admin", "token"])
        .env("KEYPOOL_DATABASE_URL", &db)
        .env_remove("KEYPOOL_ADMIN_TOKEN")
        .env_remove("KEYPOOL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(second.starts_with("kpa_") && second != first, "{second}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&second), "shown once, on stdout only");
    wait_for("the new token to be in force", async || {
        (overview_status(&addr, &second).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(overview_status(&addr, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(admin_tokens_in(&log.lock().unwrap()).len(), 1, "the server never shows the new token");
    drop(server);

    // A later start prints no token and keeps the stored one.
    let (_server, addr, log) = serve(&db, &sim.base_url());
    assert_eq!(overview_status(&addr, &second).await, StatusCode::OK);
    let printed = log.lock().unwrap().clone();
    assert!(admin_tokens_in(&printed).is_empty(), "{printed}");
    assert!(printed.contains("keypool admin token"), "says how to set a new one: {printed}");
    store.close().await;
}

/// The overview, upstreams and key list with 1,000,000 requests logged over
/// 30 days by 1,000 tokens (SQLite): each answers well within the
/// dashboard's 1 s first render, since they read the rollups, never the
/// log; and a page of the log by token and by key. About a minute to set
/// up, so run by hand: `cargo test --locked -p keypool --test
/// admin_dashboard -- --ignored million` (figures in docs/benchmarks.md;
/// `KP_BENCH_RECORDS` sets another count).
#[tokio::test]
#[ignore]
async fn the_dashboard_routes_stay_fast_with_a_million_logged_requests() {
    let total: i64 = std::env::var("KP_BENCH_RECORDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let db = Scratch::sqlite().await;
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(add_key(&db, &format!("sk-bench-{i:02}-0123456789abcdef"), Some(60), Some(100_000)).await);
    }
    let zone = keypool::records::rollup::Buckets::new(jiff::tz::TimeZone::get(ZONE).unwrap());
    let now = now_unix_ms();
    let span_ms = 30 * 86_400_000i64;
    let started = std::time::Instant::now();
    let batch = 5_000;
    for first in (0..total).step_by(batch) {
        let records: Vec<RequestRecord> = (first..(first + batch as i64).min(total))
            .map(|i| {
                let at = now - span_ms + span_ms * i / total;
                let key = keys[(i % keys.len() as i64) as usize];
                let (status, error) = if i % 50 == 0 { (502, Some("server_error")) } else { (200, None) };
                // Spread over 1,000 gateway tokens, as in bench/tenants.sh.
                RequestRecord {
                    token_id: Some(i % 1_000 + 1),
                    ..record(&format!("req-{i}"), at, key, status, error, 30)
                }
            })
            .collect();
        db.store.write_batch(&records, true, &keypool::records::rollup::Sums::of(&records, &zone)).await.unwrap();
    }
    eprintln!("{total} records written in {:.1?}", started.elapsed());
    let dash = Dash::start(&db, |_| {}).await;
    // A token's newest page, and a filter none of its rows match (every
    // run of the token read: on SQLite the map of batches, migration 0015).
    let pages = ["/requests?token_id=7", "/requests?token_id=7&status=502", "/requests?key_id=3"];
    for path in ["/overview", "/upstreams", "/keys"].into_iter().chain(pages) {
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let (status, body) = dash.get(path).await;
            worst = worst.max(t.elapsed());
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        eprintln!("GET /admin/api{path}: slowest of 5 {worst:.1?}");
        assert!(worst < Duration::from_millis(250), "{path} took {worst:?}");
    }
    let (_, overview) = dash.get("/overview").await;
    let spent: u64 =
        overview["spend_per_day"].as_array().unwrap().iter().map(|d| d["requests"].as_u64().unwrap()).sum();
    assert!(spent >= total as u64 * 29 / 30, "the days hold the requests: {spent}");
    dash.gateway.shutdown().await.unwrap();
}
