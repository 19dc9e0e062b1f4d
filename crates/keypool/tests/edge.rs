//! The edge: what crosses it (no caller credential goes upstream), what it
//! leaves on disk (a database only its owner can read), and how it treats
//! slow, silent and stalled callers and a stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{chat, key, spawn};
use keypool_sim::{SimConfig, SimKey};

const KEY: &str = "sk-edge-test-key-4f1c9a7e2b";

fn sim() -> SimConfig {
    SimConfig { keys: vec![SimKey::new(KEY)], ..SimConfig::default() }
}

/// Polls `check` every 20 ms until it holds, failing after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- §6 No caller credential travels upstream -------------------------------

#[tokio::test]
async fn no_caller_credential_reaches_the_upstream_in_any_header() {
    let app = spawn(sim(), vec![key(KEY, None)], |_| {}).await;
    let token = app.token.clone();
    let resp = app
        .client
        .post(app.url("echo/creds"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-api-key", &token)
        .header("api-key", &token)
        .header("x-goog-api-key", &token)
        .header("cookie", format!("session={token}; kp={token}"))
        .header("proxy-authorization", format!("Basic {token}"))
        .header("x-auth-token", &token)
        .header("openai-organization", "org-caller")
        .header("openai-project", "proj-caller")
        .header("idempotency-key", "stainless-retry-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let headers = &echo["headers"];
    assert!(!echo.to_string().contains(&token), "the gateway token reached the upstream: {headers}");
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"), "the key replaces the caller's credential");
    for dropped in ["x-api-key", "api-key", "x-goog-api-key", "cookie", "proxy-authorization", "x-auth-token"] {
        assert!(headers.get(dropped).is_none(), "{dropped} went upstream: {headers}");
    }
    assert!(headers.get("openai-organization").is_none(), "account headers belong to the key: {headers}");
    assert!(headers.get("openai-project").is_none(), "account headers belong to the key: {headers}");
    assert_eq!(headers["idempotency-key"], "stainless-retry-1", "ordinary headers still pass");
}

#[tokio::test]
async fn a_setting_keeps_the_callers_account_headers() {
    let app = spawn(sim(), vec![key(KEY, None)], |c| c.server.forward_account_headers = true).await;
    let resp = app
        .post("echo/account")
        .header("openai-organization", "org-caller")
        .header("openai-project", "proj-caller")
        .body("{}")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["openai-organization"], "org-caller");
    assert_eq!(echo["headers"]["openai-project"], "proj-caller");
}

#[tokio::test]
async fn the_auth_scheme_is_case_insensitive() {
    let app = spawn(sim(), vec![key(KEY, None)], |_| {}).await;
    for scheme in ["BEARER", "bearer", "Bearer", "bEaReR"] {
        let resp = app
            .client
            .post(app.url("chat/completions"))
            .header("authorization", format!("{scheme} {}", app.token))
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "scheme {scheme}");
    }
}

// ---- §6 The database is readable by its owner only -------------------------

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_wal_and_shm_are_created_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let store = keypool::store::Store::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    store.add_key(&key(KEY, None)).await.unwrap();
    for name in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let mode = mode_of(&dir.path().join(name));
        assert_eq!(mode & 0o077, 0, "{name} is {mode:o}: others can read the keys");
    }
    store.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn an_existing_world_readable_database_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = keypool::store::Store::connect(&url).await.unwrap();
    store.add_key(&key(KEY, None)).await.unwrap();
    store.close().await;
    for name in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let path = dir.path().join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let store = keypool::store::Store::connect(&url).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
    for name in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let path = dir.path().join(name);
        if path.exists() {
            assert_eq!(mode_of(&path), 0o600, "{name}");
        }
    }
    store.close().await;
}
