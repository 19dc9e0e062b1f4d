//! The web dashboard at `/admin`: its page and assets with their security
//! headers, and (acceptance) a headless chromium driven through it by
//! tests/browser/dashboard.mjs: sign-in (a wrong token first), bulk import,
//! live counters and countdowns under traffic, disabling a key, the keys'
//! upstreams and the filter by upstream, a request's attempts, the
//! Upstreams page with two upstreams and their keys, 中文 and back, no full
//! key anywhere, and screenshots of every page in light, dark and at 390 px
//! under target/screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use keypool::config::{AdminToken, Config, UpstreamConfig};
use keypool::store::NewKey;
use keypool_sim::{SimConfig, SimKey};
use serde_json::json;

const ADMIN: &str = "dashboard-admin-token-0123456789";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

async fn start(keys: Vec<SimKey>) -> common::TestApp {
    let sim = SimConfig { keys, latency: std::time::Duration::from_millis(20), ..SimConfig::default() };
    common::spawn(sim, vec![], |c| {
        c.admin_token = Some(AdminToken::new(ADMIN));
        c.time_zone = "Asia/Shanghai".into();
    })
    .await
}

/// A gateway with two upstreams, both on the one simulator: `openai` (the
/// default: the keys the page imports go there) for the gpt models, and
/// `deepseek` for its own. `seeded` keys are in the store before it starts.
async fn start_two(keys: Vec<SimKey>, seeded: Vec<NewKey>) -> common::TestApp {
    let sim = SimConfig { keys, latency: std::time::Duration::from_millis(20), ..SimConfig::default() };
    common::spawn(sim, seeded, |c| {
        c.admin_token = Some(AdminToken::new(ADMIN));
        c.time_zone = "Asia/Shanghai".into();
        // `[[upstreams]]` replaces the single `upstream` setting.
        let url = std::mem::replace(&mut c.upstream, Config::default().upstream);
        let upstream = |fields: serde_json::Value| -> UpstreamConfig {
            serde_json::from_value(fields).expect("a valid upstream entry")
        };
        c.upstreams = vec![
            upstream(json!({"name": "openai", "base_url": url, "models": ["gpt-4o*", "o3"]})),
            upstream(json!({
                "name": "deepseek", "kind": "openai_compatible", "provider": "deepseek",
                "base_url": url, "models": ["deepseek-chat", "deepseek-reasoner"], "weight": 2,
            })),
        ];
        c.validate().expect("the test's config is valid");
    })
    .await
}

/// `path` on the gateway's origin (not under `/v1`).
fn origin(app: &common::TestApp, path: &str) -> String {
    format!("http://{}{path}", app.gateway.addr())
}

/// The page and each asset load without the admin token, with the right
/// content type and the strict headers; an unknown asset is a 404 with the
/// same headers; the API next to it still wants the token.
#[tokio::test]
async fn the_page_and_assets_load_without_the_token_under_a_strict_policy() {
    let app = start(vec![]).await;
    let client = reqwest::Client::new();
    for (path, content_type) in [
        ("/admin", "text/html; charset=utf-8"),
        ("/admin/", "text/html; charset=utf-8"),
        ("/admin/assets/app.js", "text/javascript; charset=utf-8"),
        ("/admin/assets/i18n.js", "text/javascript; charset=utf-8"),
        ("/admin/assets/charts.js", "text/javascript; charset=utf-8"),
        ("/admin/assets/app.css", "text/css; charset=utf-8"),
        ("/admin/assets/favicon.svg", "image/svg+xml"),
    ] {
        let r = client.get(origin(&app, path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    let r = client.get(origin(&app, "/admin/assets/nothing.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-security-policy"], CSP);
    let r = client.get(origin(&app, "/admin/api/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401, "the API behind the page still wants the token");
    app.gateway.shutdown().await.unwrap();
}

/// The browser scripts/test installs (KP_TEST_BROWSER: the chromium
/// executable, with playwright-core in tests/browser/node_modules); None
/// outside it, where the test skips. In CI its absence fails.
fn browser() -> Option<String> {
    let exe = std::env::var("KP_TEST_BROWSER").ok();
    if exe.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "KP_TEST_BROWSER is not set: run the suite with scripts/test, which installs chromium and playwright-core"
        );
        eprintln!("skipped: KP_TEST_BROWSER not set (scripts/test sets it)");
    }
    exe
}

#[tokio::test]
async fn an_operator_runs_the_pool_from_the_dashboard_in_chromium() {
    let Some(chromium) = browser() else { return };
    let keys = [
        "sk-dash-alpha-0000000000000000001111",
        "sk-dash-bravo-0000000000000000002222",
        "sk-dash-charlie-00000000000000003333",
    ];
    // In the store from the start: one key on the second upstream, and one
    // naming an upstream that is not configured (it serves nowhere).
    let seeded = ["sk-dash-delta-000000000000000004444", "sk-dash-echo-0000000000000000005555"];
    let app = start_two(
        vec![
            SimKey::new(keys[0]).rpm(30).tpm(40_000),
            SimKey::new(keys[1]).rpm(20),
            SimKey::new(keys[2]).rpm(10),
            SimKey::new(seeded[0]).rpm(10),
        ],
        vec![
            NewKey {
                secret: seeded[0].into(),
                label: Some("seeded".into()),
                upstream: Some("deepseek".into()),
                ..NewKey::default()
            },
            NewKey {
                secret: seeded[1].into(),
                label: Some("orphan".into()),
                upstream: Some("retired".into()),
                ..NewKey::default()
            },
        ],
    )
    .await;
    // A viewer's token, taken up at the gateway's next sync (100 ms here).
    let viewer = "kpa_dashboard-viewer-0123456789abcdef";
    app.store.add_admin_token("wallboard", &AdminToken::new(viewer).sha256_hex(), true).await.unwrap();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = here.join("../../target/screenshots");
    let out = tokio::process::Command::new("node")
        .arg(here.join("tests/browser/dashboard.mjs"))
        .current_dir(here.join("tests/browser"))
        .env("KP_URL", format!("http://{}", app.gateway.addr()))
        .env("KP_ADMIN", ADMIN)
        .env("KP_VIEWER", viewer)
        .env("KP_KEYS", keys.join(","))
        .env("KP_SEEDED", seeded.join(","))
        .env("KP_CHROMIUM", &chromium)
        .env("KP_SCREENSHOTS", &shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (scripts/test installs playwright-core with npm ci)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "the dashboard script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all steps passed"));
    app.gateway.shutdown().await.unwrap();
}
