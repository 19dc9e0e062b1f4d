//! Test support: a simulator and a gateway on port 0 with a fresh database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod proxies;
pub mod scratch;
pub mod serve;

use keypool::app::Running;
use keypool::config::Config;
use keypool::server::{generate_token, hash_token};
use keypool::store::{NewKey, Store};
use keypool_sim::{SimConfig, Simulator};

pub struct TestApp {
    pub gateway: Running,
    pub sim: Simulator,
    pub token: String,
    pub store: Store,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub fn key(secret: &str, rpm: Option<u32>) -> NewKey {
    NewKey { secret: secret.into(), rpm, ..NewKey::default() }
}

/// Starts the simulator, then a gateway over it holding `keys` and one token.
pub async fn spawn(sim: SimConfig, keys: Vec<NewKey>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let sim = Simulator::start(sim).await.expect("simulator starts");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: sim.base_url(),
        database_url: format!("sqlite://{}", dir.path().join("keypool.db").display()),
        sync_interval: std::time::Duration::from_millis(100),
        ..Config::default()
    };
    tweak(&mut config);
    let store = Store::connect(&config.database_url).await.unwrap();
    for k in &keys {
        store.add_key(k).await.unwrap();
    }
    let token = generate_token();
    store.create_token("test", &hash_token(&token), "kp-test").await.unwrap();
    let gateway = keypool::app::start(&config).await.expect("gateway starts");
    TestApp { gateway, sim, token, store, client: reqwest::Client::new(), _dir: dir }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.gateway.base_url(), path.trim_start_matches('/'))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(&self.token)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.token)
    }
}

pub fn chat(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 16})
}

/// Asserts the body is OpenAI's error shape and returns its `code`.
pub async fn error_code(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("error body is JSON");
    let err = &body["error"];
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(err["type"].is_string(), "{body}");
    assert!(err.get("code").is_some(), "{body}");
    err["code"].as_str().unwrap_or_default().to_owned()
}

/// The Python interpreter with the official `openai` SDK that scripts/test
/// installs (KP_TEST_PYTHON). None outside the test command, where the SDK
/// tests skip; in CI its absence fails the test instead.
pub fn sdk_python() -> Option<std::ffi::OsString> {
    let python = std::env::var_os("KP_TEST_PYTHON");
    if python.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "KP_TEST_PYTHON is not set: run the suite with scripts/test, which installs the openai SDK"
        );
        eprintln!("skipped: KP_TEST_PYTHON not set (scripts/test sets it)");
    }
    python
}

/// Runs `python ARGS` as an SDK user pointed at `app` (OPENAI_BASE_URL and
/// OPENAI_API_KEY set, the SDK's account variables cleared): whether it
/// succeeded, its stdout and its stderr.
pub async fn run_sdk(python: &std::ffi::OsStr, args: &[&str], app: &TestApp) -> (bool, String, String) {
    let out = tokio::process::Command::new(python)
        .args(args)
        .env("OPENAI_BASE_URL", app.gateway.base_url())
        .env("OPENAI_API_KEY", &app.token)
        .env_remove("OPENAI_ORG_ID")
        .env_remove("OPENAI_PROJECT_ID")
        .output()
        .await
        .expect("python runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A multipart form with `fields` in order (a file part is named `file`).
pub fn form(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(b"--kp-test-boundary\r\n");
        let disposition = if *name == "file" {
            "Content-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
                .to_owned()
        } else {
            format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--kp-test-boundary--\r\n");
    ("multipart/form-data; boundary=kp-test-boundary".into(), body)
}

/// A token with `settings`, stored while the gateway runs; returns its
/// secret and id once the gateway has loaded it (accepts it, or refuses it
/// as the settings say). The sync interval is 100 ms; a body that is not
/// JSON gets 400 (or the token's own refusal), so nothing reaches the
/// upstream and nothing counts against the token's limits.
pub async fn token_with(app: &TestApp, name: &str, settings: keypool::tenants::TokenSettings) -> (String, i64) {
    let token = generate_token();
    let id = app.store.create_token_with(name, &hash_token(&token), "kp-tst", &settings).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = app
            .client
            .post(app.url("/chat/completions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        if r.status() != reqwest::StatusCode::UNAUTHORIZED || error_code(r).await != "invalid_api_key" {
            return (token, id);
        }
        assert!(std::time::Instant::now() < deadline, "token {name} never loaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
