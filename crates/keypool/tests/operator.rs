//! What the operator sees and types: key state that `keys list` shows and a
//! restart keeps, per-key account headers, pasted keys, `keys test`, which
//! database a command uses, and errors said once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keypool::config::Config;
use keypool::server::{generate_token, hash_token};
use keypool::store::{NewKey, Store};
use keypool_sim::{KeyState, SimConfig, SimKey, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_keypool");

const BAD: &str = "sk-operator-bad-key-5c1e9a7d3b20f4e8";
const HOT: &str = "sk-operator-hot-key-8d2f0b6c4a91e375";
const GOOD: &str = "sk-operator-good-key-1a7e3c9f5b02d846";

/// Runs the binary against `db`; returns (success, stdout, stderr).
fn cli(db: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("KEYPOOL_DATABASE_URL", db)
        .env_remove("RUST_LOG")
        .env_remove("KEYPOOL_CONFIG")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn keys_list(db: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = cli(db, &["keys", "list", "--json"], None);
    assert!(ok, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

fn row(rows: &[serde_json::Value], id: i64) -> &serde_json::Value {
    rows.iter().find(|r| r["id"] == id).unwrap()
}

async fn send_chat(client: &reqwest::Client, base: &str, token: &str) -> reqwest::StatusCode {
    let body = common::chat("hello");
    client.post(format!("{base}/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_shows_what_the_server_learned_and_a_restart_keeps_it() {
    let sim = Simulator::start(SimConfig {
        keys: vec![SimKey::new(BAD).state(KeyState::Invalid), SimKey::new(HOT).rpm(1), SimKey::new(GOOD)],
        // Without headers keypool cannot see HOT's limit coming: it learns it from a 429.
        send_rate_limit_headers: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: sim.base_url(),
        database_url: db.clone(),
        sync_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let store = Store::connect(&db).await.unwrap();
    // HOT is configured looser than the upstream allows, so its second request meets a 429.
    for (secret, rpm) in [(BAD, None), (HOT, Some(100)), (GOOD, None)] {
        store.add_key(&NewKey { secret: secret.into(), rpm, ..NewKey::default() }).await.unwrap();
    }
    let token = generate_token();
    store.create_token("t", &hash_token(&token), "kp-t").await.unwrap();
    store.close().await;
    let client = reqwest::Client::new();

    let gateway = keypool::app::start(&config).await.unwrap();
    let base = gateway.base_url();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.key_stats(BAD).unauthorized == 0 || sim.key_stats(HOT).rate_limited == 0 {
        assert!(Instant::now() < deadline, "BAD refused and HOT rate-limited: {:?}", sim.stats());
        send_chat(&client, &base, &token).await;
    }
    // Within the sync interval, the CLI (another process) sees the server's view.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = keys_list(&db);
        if row(&rows, 1)["status"] == "invalid" && row(&rows, 2)["status"] == "cooling" {
            break rows;
        }
        assert!(Instant::now() < deadline, "keys list shows the learned state: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(row(&rows, 1)["reason"].as_str().unwrap().contains("401"), "{rows:?}");
    assert!(row(&rows, 2)["until"].is_string(), "{rows:?}");
    assert_eq!(row(&rows, 3)["status"], "active");
    gateway.shutdown().await.unwrap();

    // After a restart, the invalid key gets nothing and the cooled one stays cooled.
    let (bad_before, hot_before) = (sim.key_stats(BAD).requests, sim.key_stats(HOT).requests);
    let gateway = keypool::app::start(&config).await.unwrap();
    let base = gateway.base_url();
    for _ in 0..8 {
        assert_eq!(send_chat(&client, &base, &token).await, 200);
    }
    assert_eq!(sim.key_stats(BAD).requests, bad_before, "a key known invalid gets no request after a restart");
    assert_eq!(sim.key_stats(HOT).requests, hot_before, "a cooled key stays cooled after a restart");
    let statuses: Vec<_> = gateway.scheduler().snapshot().iter().map(|v| v.status).collect();
    assert_eq!(statuses, ["invalid", "cooling", "active"]);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_does_not_over_send_a_key_used_in_the_last_minute() {
    // The upstream allows 2 a minute and says so in its headers; keypool learns it.
    let sim =
        Simulator::start(SimConfig { keys: vec![SimKey::new(HOT).rpm(2)], ..SimConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: sim.base_url(),
        database_url: db.clone(),
        sync_interval: Duration::from_millis(100),
        ..Config::default()
    };
    config.pool.max_wait = Duration::ZERO;
    let store = Store::connect(&db).await.unwrap();
    store.add_key(&common::key(HOT, None)).await.unwrap();
    let token = generate_token();
    store.create_token("t", &hash_token(&token), "kp-t").await.unwrap();
    let client = reqwest::Client::new();

    let gateway = keypool::app::start(&config).await.unwrap();
    for _ in 0..2 {
        assert_eq!(send_chat(&client, &gateway.base_url(), &token).await, 200);
    }
    gateway.shutdown().await.unwrap();
    let saved = store.load_key_states().await.unwrap();
    assert_eq!((saved[0].rpm.learned, saved[0].rpm.used), (Some(2), 2), "{saved:?}");

    let gateway = keypool::app::start(&config).await.unwrap();
    let status = send_chat(&client, &gateway.base_url(), &token).await;
    assert_eq!(status, 429, "the gateway holds the request back itself");
    assert_eq!(sim.key_stats(HOT).requests, 2, "nothing more reached the key within the minute");
    assert_eq!(sim.key_stats(HOT).rate_limited, 0, "the upstream never had to refuse");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_key_is_sent_with_its_own_organization_and_project() {
    let sim = SimConfig { keys: vec![SimKey::new(GOOD)], ..SimConfig::default() };
    let key = NewKey {
        organization: Some("org-keyowner".into()),
        project: Some("proj_abc".into()),
        ..common::key(GOOD, None)
    };
    let app = common::spawn(sim, vec![key], |_| {}).await;
    let echo: serde_json::Value = app
        .post("echo")
        .header("OpenAI-Organization", "org-caller")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["openai-organization"], "org-keyowner", "{echo}");
    assert_eq!(echo["headers"]["openai-project"], "proj_abc", "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_edit_changes_the_account_headers_of_a_running_server() {
    let sim = SimConfig { keys: vec![SimKey::new(GOOD)], ..SimConfig::default() };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let app = common::spawn(sim, vec![common::key(GOOD, None)], |c| c.database_url = db.clone()).await;
    let echo =
        async || -> serde_json::Value { app.post("echo").body("{}").send().await.unwrap().json().await.unwrap() };
    assert!(echo().await["headers"].get("openai-project").is_none());
    let (ok, out, err) = cli(&db, &["keys", "edit", "1", "--project", "proj_new", "--label", "renamed"], None);
    assert!(ok && out.contains("changed key 1"), "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo().await["headers"]["openai-project"] != "proj_new" {
        assert!(Instant::now() < deadline, "the server takes the new project");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = keys_list(&db);
    assert_eq!(
        (row(&rows, 1)["label"].as_str(), row(&rows, 1)["project"].as_str()),
        (Some("renamed"), Some("proj_new"))
    );
    let (ok, _, err) = cli(&db, &["keys", "edit", "9", "--rpm", "5"], None);
    assert!(!ok && err.contains("no key with id 9"), "{err}");
}

#[test]
fn keys_import_takes_what_people_paste_and_reports_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let paste = format!("\u{feff}\"{GOOD}\", '{HOT}'\r\n\r\n# comment\r\n{BAD} {GOOD}\r\nEMPTY\r\nsk-bad\u{7f}key\r\n");
    let (ok, out, err) = cli(&db, &["keys", "import", "-"], Some(paste.as_bytes()));
    assert!(!ok, "a line was invalid: the exit status says so\n{out}{err}");
    assert!(out.contains("added key 1") && out.contains("added key 2") && out.contains("added key 3"), "{out}");
    assert!(out.contains("added key 4"), "EMPTY (vLLM's key) is a key: {out}");
    assert!(out.contains("line 4: skipped duplicate of key 1"), "{out}");
    assert!(err.contains("line 6: invalid"), "{err}");
    assert!(err.contains("line 5: warning") && err.contains("does not look like"), "{err}");
    assert!(err.contains("4 added, 1 duplicates skipped, 1 invalid"), "{err}");
    assert!(!format!("{out}{err}").contains(&GOOD[14..]), "keys are masked");
    assert_eq!(keys_list(&db).len(), 4);
    let (ok, _, err) = cli(&db, &["keys", "add", "ollama"], None);
    assert!(ok, "Ollama's key is accepted: {err}");
}

#[test]
fn commands_say_which_database_and_do_not_create_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.db");
    let db = format!("sqlite://{}", path.display());
    for args in [&["keys", "list"][..], &["keys", "list", "--json"], &["tokens", "list"], &["keys", "disable", "1"]] {
        let (ok, out, err) = cli(&db, args, None);
        assert!(!ok, "{args:?}: {out}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(&path.display().to_string()) && err.contains("no database"), "{args:?}: {err}");
        assert!(err.contains("--database-url") && err.contains("KEYPOOL_DATABASE_URL"), "{err}");
        assert!(!path.exists(), "{args:?} created {}", path.display());
    }
    let (ok, out, err) = cli(&db, &["tokens", "create", "ci"], None);
    assert!(ok && out.trim().starts_with("kp-") && out.lines().count() == 1, "stdout is the token only: {out}");
    assert!(err.contains(&format!("database: {}", path.display())), "{err}");
    let (ok, out, err) = cli(&db, &["keys", "list", "--json"], None);
    assert!(ok && serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
    assert!(err.contains(&format!("database: {}", path.display())), "{err}");
}

#[test]
fn errors_are_said_once_with_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be: SQLite cannot open it.
    let db_dir = dir.path().join("dir.db");
    std::fs::create_dir(&db_dir).unwrap();
    let (ok, _, err) = cli(&format!("sqlite://{}", db_dir.display()), &["keys", "add", GOOD], None);
    assert!(!ok);
    let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(&db_dir.display().to_string()), "the error names the file: {err}");
    assert_eq!(errors[0].matches("unable to open").count(), 1, "the cause is said once: {err}");

    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    assert!(cli(&db, &["tokens", "create", "ci"], None).0);
    let (ok, out, err) = cli(&db, &["tokens", "create", "ci"], None);
    assert!(!ok && out.is_empty() && err.contains("already exists"), "{out}{err}");
    let (ok, _, err) = cli(&db, &["keys", "add", GOOD, "--expires", "2020-01-01"], None);
    assert!(!ok && err.contains("in the past"), "{err}");
}

// The CLI runs in a blocking subprocess: the simulator needs a thread of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_test_reports_what_the_upstream_said_for_each_key() {
    let sim = Simulator::start(SimConfig {
        keys: vec![SimKey::new(GOOD), SimKey::new(BAD).state(KeyState::Invalid)],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    assert!(cli(&db, &["keys", "add", GOOD, BAD], None).0);
    let upstream = sim.base_url();
    let (ok, out, err) = cli(&db, &["keys", "test", "--upstream", &upstream], None);
    assert!(!ok, "a key failed: {out}{err}");
    let lines: Vec<_> = out.lines().collect();
    assert!(lines[0].starts_with("key 1") && lines[0].contains("ok, 200"), "{out}");
    assert!(lines[1].starts_with("key 2") && lines[1].contains("401") && lines[1].contains("invalid_api_key"), "{out}");
    assert!(!out.contains(&BAD[14..]), "the key in the upstream's message is masked: {out}");
    let (ok, out, _) = cli(&db, &["keys", "test", "1", "--upstream", &upstream, "--model", "gpt-4o-mini"], None);
    assert!(ok && out.contains("ok, 200") && !out.contains("key 2"), "{out}");
    assert_eq!(sim.key_stats(GOOD).requests, 2);
}

/// The README's Python example, run as a reader would copy it, prints the
/// streamed text: the last chunk (usage) has `choices: []`, and the chunk
/// that ends the answer has no content, so neither may print `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_python_example_prints_the_streamed_text() {
    let Some(python) = common::sdk_python() else { return };
    let readme = include_str!("../../../README.md");
    let block = readme.split("```python\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    let sim = SimConfig { keys: vec![SimKey::new(GOOD)], ..SimConfig::default() };
    let app = common::spawn(sim, vec![common::key(GOOD, None)], |_| {}).await;
    let script = block
        .replace("http://127.0.0.1:8080/v1", &app.gateway.base_url())
        .replace("\"kp-...\"", &format!("{:?}", app.token));
    let (ok, stdout, stderr) = common::run_sdk(&python, &["-c", &script], &app).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stdout.contains("None"), "the example prints None:\n{stdout}");
    assert!(stdout.lines().filter(|l| !l.trim().is_empty()).count() >= 2, "an answer, then the stream:\n{stdout}");
}

/// Cargo.toml says `MIT OR Apache-2.0`: both texts are in the repository.
#[test]
fn license_files_match_cargo_toml() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_default();
    assert!(read("Cargo.toml").contains("license = \"MIT OR Apache-2.0\""));
    assert!(read("LICENSE-MIT").contains("Permission is hereby granted, free of charge"), "LICENSE-MIT");
    assert!(read("LICENSE-APACHE").contains("Apache License\n                        Version 2.0"), "LICENSE-APACHE");
}
