//! Who may use the admin API: further admin tokens (full and read-only),
//! made and revoked by the CLI and taken up by a running server; wrong
//! tokens limited per client address; and CORS, off unless configured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::scratch::{both, Scratch};
use keypool::app::Running;
use keypool::config::{AdminToken, Cidr, Config};
use keypool_sim::{SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both!(
    a_read_only_admin_token_reads_everything_and_changes_nothing,
    admin_tokens_made_and_revoked_by_the_cli_take_effect_within_a_sync
);

const ADMIN: &str = "admin-token-0123456789abcdef";
const UPSTREAM_SECRET: &str = "sk-viewer-never-sees-0123456789abcdef";

struct Gateway {
    running: Running,
    _sim: Simulator,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(url: &str, tweak: impl FnOnce(&mut Config)) -> Gateway {
        let sim = Simulator::start(SimConfig { accept_any_key: true, ..SimConfig::default() }).await.unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: sim.base_url(),
            database_url: url.to_owned(),
            sync_interval: Duration::from_millis(200),
            admin_token: Some(AdminToken::new(ADMIN)),
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().unwrap();
        let running = keypool::app::start(&config).await.unwrap();
        Gateway { running, _sim: sim, client: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr())
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, String) {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Runs the keypool binary against `db`; its standard output and error.
fn cli(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypool"))
        .args(args)
        .env("KEYPOOL_DATABASE_URL", db)
        .env_remove("KEYPOOL_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `check` until it holds or `within` passes.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}");
}

async fn a_read_only_admin_token_reads_everything_and_changes_nothing(db: Scratch) {
    let viewer = "kpa_viewer-0123456789abcdefghijklmnop";
    db.store.add_admin_token("dashboard viewer", &AdminToken::new(viewer).sha256_hex(), true).await.unwrap();
    let gw = Gateway::start(&db.url, |_| {}).await;
    // The main token adds a key and a gateway token: the viewer sees them.
    let (status, key) = gw.call(Method::POST, "/admin/api/keys", ADMIN, Some(json!({"key": UPSTREAM_SECRET}))).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key_id = serde_json::from_str::<Value>(&key).unwrap()["id"].as_i64().unwrap();
    let (status, token) = gw.call(Method::POST, "/admin/api/tokens", ADMIN, Some(json!({"name": "app"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let token: Value = serde_json::from_str(&token).unwrap();
    let gateway_secret = token["token"].as_str().unwrap().to_owned();
    let token_id = token["id"].as_i64().unwrap();

    let (status, session) = gw.call(Method::GET, "/admin/api/session", viewer, None).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let session: Value = serde_json::from_str(&session).unwrap();
    assert_eq!((session["role"].as_str(), session["name"].as_str()), (Some("viewer"), Some("dashboard viewer")));
    assert!(session["actor"].as_str().unwrap().starts_with("admin:"));
    let (_, main) = gw.call(Method::GET, "/admin/api/session", ADMIN, None).await;
    assert_eq!(serde_json::from_str::<Value>(&main).unwrap()["role"], "admin", "{main}");

    // Everything reads, and no answer holds a secret.
    for path in [
        "/admin/api/overview",
        "/admin/api/upstreams",
        "/admin/api/keys",
        &format!("/admin/api/keys/{key_id}"),
        "/admin/api/tokens",
        "/admin/api/requests",
        "/admin/api/requests/export?format=jsonl",
        "/admin/api/stats?by=key",
        "/admin/api/audit",
        "/admin/api/openapi.json",
        "/metrics",
    ] {
        let (status, body) = gw.call(Method::GET, path, viewer, None).await;
        // No exporter is installed in a test process: past the token
        // check, /metrics says so with a 404.
        let metrics_off = path == "/metrics" && status == StatusCode::NOT_FOUND && body.contains("metrics are off");
        assert!(status == StatusCode::OK || metrics_off, "{path}: {status} {body}");
        for secret in [UPSTREAM_SECRET, gateway_secret.as_str(), ADMIN] {
            assert!(!body.contains(secret), "{path} shows a secret");
        }
    }
    // Nothing changes: every method but GET and HEAD is refused, before
    // the request is looked at.
    let changes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/admin/api/keys".into(), Some(json!({"key": "sk-another-0123456789abcdef"}))),
        (Method::POST, "/admin/api/keys/import".into(), Some(json!({"text": "sk-another-0123456789abcdef"}))),
        (Method::PATCH, format!("/admin/api/keys/{key_id}"), Some(json!({"label": "x"}))),
        (Method::POST, format!("/admin/api/keys/{key_id}/disable"), None),
        (Method::POST, format!("/admin/api/keys/{key_id}/reset"), None),
        (Method::DELETE, format!("/admin/api/keys/{key_id}"), None),
        (Method::POST, "/admin/api/tokens".into(), Some(json!({"name": "mine"}))),
        (Method::PATCH, format!("/admin/api/tokens/{token_id}"), Some(json!({"rpm": 1}))),
        (Method::POST, format!("/admin/api/tokens/{token_id}/regenerate"), None),
        (Method::POST, format!("/admin/api/tokens/{token_id}/revoke"), None),
        (Method::POST, "/admin/api/upstreams/default/test".into(), None),
    ];
    for (method, path, body) in changes {
        let (status, answer) = gw.call(method.clone(), &path, viewer, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(code(&answer), "read_only_token", "{answer}");
    }
    let (_, keys) = gw.call(Method::GET, "/admin/api/keys", ADMIN, None).await;
    let keys: Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["label"], Value::Null, "{keys}");
    let (_, tokens) = gw.call(Method::GET, "/admin/api/tokens", ADMIN, None).await;
    assert!(!tokens.contains("\"mine\"") && tokens.contains("\"revoked_at\":null"), "{tokens}");
}

async fn admin_tokens_made_and_revoked_by_the_cli_take_effect_within_a_sync(db: Scratch) {
    let gw = Gateway::start(&db.url, |_| {}).await;
    let (ok, token, err) = cli(&db.url, &["admin", "tokens", "create", "ops bot"]);
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("kpa_") && !err.contains(&token), "shown once, on stdout only: {err}");
    let (ok, viewer, err) = cli(&db.url, &["admin", "tokens", "create", "viewer", "--read-only"]);
    assert!(ok, "{err}");
    let viewer = viewer.trim().to_owned();
    let (ok, _, err) = cli(&db.url, &["admin", "tokens", "create", "viewer"]);
    assert!(!ok && err.contains("already exists"), "{err}");

    // The running server takes both up at its next sync (200 ms here).
    let took = eventually(Duration::from_secs(10), async || {
        gw.call(Method::GET, "/admin/api/keys", &token, None).await.0 == StatusCode::OK
            && gw.call(Method::GET, "/admin/api/keys", &viewer, None).await.0 == StatusCode::OK
    })
    .await;
    eprintln!("new admin tokens accepted after {took:?}");
    // The full one changes things, and the audit log names it by fingerprint.
    let (status, added) = gw.call(Method::POST, "/admin/api/keys", &token, Some(json!({"key": UPSTREAM_SECRET}))).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let fingerprint = format!("admin:{}", &AdminToken::new(token.as_str()).sha256_hex()[..8]);
    let (_, audit) = gw.call(Method::GET, "/admin/api/audit", ADMIN, None).await;
    assert!(audit.contains(&fingerprint), "{audit}");
    let (status, refused) = gw.call(Method::DELETE, "/admin/api/keys/1", &viewer, None).await;
    assert_eq!((status, code(&refused)), (StatusCode::FORBIDDEN, "read_only_token".into()));

    let (ok, list, err) = cli(&db.url, &["admin", "tokens", "list", "--json"]);
    assert!(ok, "{err}");
    assert!(!list.contains(&token) && !list.contains(&viewer), "never the values");
    let rows: Vec<Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!((rows[0]["name"].as_str(), rows[0]["role"].as_str()), (Some("ops bot"), Some("admin")));
    assert_eq!((rows[1]["name"].as_str(), rows[1]["role"].as_str()), (Some("viewer"), Some("viewer")));
    assert_eq!(rows[0]["fingerprint"], fingerprint.as_str());

    let id = rows[0]["id"].as_i64().unwrap().to_string();
    let (ok, _, err) = cli(&db.url, &["admin", "tokens", "revoke", &id]);
    assert!(ok, "{err}");
    let took = eventually(Duration::from_secs(10), async || {
        gw.call(Method::GET, "/admin/api/keys", &token, None).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("a revoked admin token refused after {took:?}");
    // The others are untouched.
    assert_eq!(gw.call(Method::GET, "/admin/api/keys", &viewer, None).await.0, StatusCode::OK);
    assert_eq!(gw.call(Method::GET, "/admin/api/keys", ADMIN, None).await.0, StatusCode::OK);
    let (ok, _, err) = cli(&db.url, &["admin", "tokens", "revoke", "999"]);
    assert!(!ok && err.contains("999"), "{err}");
}

#[tokio::test]
async fn wrong_admin_tokens_are_limited_per_client_address() {
    let db = Scratch::sqlite().await;
    let gw = Gateway::start(&db.url, |c| {
        c.admin.sign_in_attempts_per_minute = 3;
        // Loopback is a trusted proxy here, so X-Forwarded-For stands for
        // clients at other addresses.
        c.telemetry.trusted_proxies = vec![Cidr::try_from("127.0.0.1/32".to_owned()).unwrap()];
    })
    .await;
    let from = |client: &str, path: &str, token: Option<&str>| {
        let mut req = gw.client.get(gw.url(path)).header("x-forwarded-for", client);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    // A missing token is no guess: it is not counted.
    for _ in 0..5 {
        assert_eq!(from("203.0.113.7", "/admin/api/keys", None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // /metrics keeps its own count, so a flood at the admin API does not
    // stop the scrape (and the other way round).
    for (path, other) in [("/admin/api/keys", "/metrics"), ("/metrics", "/admin/api/keys")] {
        for guess in 0..3 {
            let r = from("203.0.113.7", path, Some(&format!("guess-{guess}"))).await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        }
        // Now even the right token is refused from there until the minute is over.
        let r = from("203.0.113.7", path, Some(ADMIN)).await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(code(&r.text().await.unwrap()), "too_many_sign_in_attempts");
        if other == "/metrics" {
            // Past the token check (no exporter in a test process: 404).
            let r = from("203.0.113.7", other, Some(ADMIN)).await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{other} is not locked by {path}");
        }
    }
    // Another client, and the gateway's own API, are not held up.
    assert_eq!(from("203.0.113.8", "/admin/api/keys", Some(ADMIN)).await.unwrap().status(), StatusCode::OK);
    let r = gw.client.get(gw.url("/healthz")).header("x-forwarded-for", "203.0.113.7").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn preflight(gw: &Gateway, path: &str, origin: &str) -> reqwest::Response {
    gw.client
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type, x-stainless-os")
        .send()
        .await
        .unwrap()
}

fn allowed(r: &reqwest::Response) -> Option<String> {
    r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_configured() {
    let page = "https://chat.example.com";
    let off = Gateway::start(&Scratch::sqlite().await.url, |_| {}).await;
    for path in ["/v1/chat/completions", "/admin/api/keys"] {
        let r = preflight(&off, path, page).await;
        assert_eq!(allowed(&r), None, "{path}: {:?}", r.headers());
    }
    let r = off.client.get(off.url("/v1/models")).header("origin", page).bearer_auth("kp-x").send().await.unwrap();
    assert_eq!(allowed(&r), None);

    let db = Scratch::sqlite().await;
    let on = Gateway::start(&db.url, |c| {
        c.cors.origins = vec![page.to_owned(), "http://localhost:3000".to_owned()];
        c.cors.admin_origins = vec!["https://ops.example.com".to_owned()];
    })
    .await;
    let r = preflight(&on, "/v1/chat/completions", page).await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(allowed(&r).as_deref(), Some(page));
    let headers = r.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("x-stainless-os"), "{headers}");
    // Another origin gets no grant; the admin API only its own origins.
    assert_eq!(allowed(&preflight(&on, "/v1/chat/completions", "https://evil.example").await), None);
    assert_eq!(allowed(&preflight(&on, "/admin/api/keys", page).await), None);
    let r = preflight(&on, "/admin/api/keys", "https://ops.example.com").await;
    assert_eq!(allowed(&r).as_deref(), Some("https://ops.example.com"));
    // A real request carries the grant and exposes the rate-limit headers;
    // the token still decides (no token: 401, with the grant so the page can read it).
    let r = on
        .client
        .post(on.url("/v1/chat/completions"))
        .header("origin", page)
        .json(&common::chat("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(allowed(&r).as_deref(), Some(page));
    let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("x-ratelimit-remaining-requests") && exposed.contains("retry-after"), "{exposed}");
}

#[test]
fn cors_settings_are_checked_at_start() {
    for (toml, setting) in [
        ("[cors]\nadmin_origins = [\"*\"]", "cors.admin_origins"),
        ("[cors]\norigins = [\"https://chat.example.com/\"]", "cors.origins"),
    ] {
        let config: Config = toml::from_str(toml).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(setting), "{err}");
    }
}
