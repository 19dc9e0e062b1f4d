//! The configuration as the `keypool` binary reads it: environment variables
//! are process-wide, so each case runs the built binary in a subprocess with
//! its own environment, working directory and database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use keypool::config::{ModelConfig, TimeoutsOverride};
use keypool_sim::{SimConfig, SimKey};

const BIN: &str = env!("CARGO_BIN_EXE_keypool");

/// A command in `dir` (so no ./keypool.toml of the repo is read), with the
/// database inside it and no inherited KEYPOOL_* or RUST_LOG.
fn keypool(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYPOOL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("KEYPOOL_DATABASE_URL", format!("sqlite://{}", dir.join("k.db").display()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs to the end: (success, stdout, stderr).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = keypool(dir, args, env).stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `serve`, returns its log up to the "listening on" line (warnings
/// come before it) and the address it printed, then stops it.
fn serve_until_listening(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut full = vec!["serve"];
    full.extend_from_slice(args);
    let mut child = keypool(dir, &full, env).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                let _ = tx.send((log.clone(), addr));
            }
        }
        let _ = tx.send((log, String::new()));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let (log, addr) = got.expect("serve printed something");
    assert!(!addr.is_empty(), "serve did not start:\n{log}");
    (log, addr)
}

#[test]
fn unknown_keypool_variables_are_named_in_a_warning_and_serve_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("named.toml");
    std::fs::write(&file, "log = \"info\"\n").unwrap();
    let injected = [("KEYPOOL_PORT", "tcp://10.0.0.7:8080"), ("KEYPOOL_SERVICE_HOST", "10.0.0.7")];
    let (log, _) = serve_until_listening(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/v1"],
        &[injected[0], injected[1], ("KEYPOOL_CONFIG", file.to_str().unwrap())],
    );
    assert!(log.contains("KEYPOOL_PORT is not a keypool setting"), "{log}");
    assert!(log.contains("KEYPOOL_SERVICE_HOST is not a keypool setting"), "{log}");
    assert!(!log.contains("closest setting: KEYPOOL_POOL"), "no far-fetched suggestion:\n{log}");
    // Variables that are settings (or name the file) are not reported.
    assert!(!log.contains("KEYPOOL_DATABASE_URL is not") && !log.contains("KEYPOOL_CONFIG"), "{log}");

    // A typo of a real setting is still only a warning, with the near miss named.
    let (ok, _, stderr) = run(dir.path(), &["config", "check"], &[("KEYPOOL_LIMITS__RMP", "3")]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("KEYPOOL_LIMITS__RMP is not a keypool setting"), "{stderr}");
    assert!(stderr.contains("closest setting: KEYPOOL_LIMITS__RPM"), "{stderr}");
    // A known setting with an impossible value still stops it.
    let (ok, _, stderr) = run(dir.path(), &["config", "check"], &[("KEYPOOL_LIMITS__RPM", "many")]);
    assert!(!ok, "{stderr}");
}

#[test]
fn an_unknown_key_in_the_file_is_one_error_with_file_line_and_closest_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.toml");
    std::fs::write(&file, "log = \"info\"\n\n[limits]\nrmp = 3\n").unwrap();
    let (ok, _, stderr) = run(dir.path(), &["--config", file.to_str().unwrap(), "config", "check"], &[]);
    assert!(!ok);
    assert!(stderr.contains("mine.toml"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("did you mean `rpm`?"), "{stderr}");
    assert_eq!(stderr.matches("rmp").count(), 1, "printed once:\n{stderr}");
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one message:\n{stderr}");
}

#[test]
fn listen_takes_addresses_as_users_type_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, addr) = serve_until_listening(dir.path(), &["--listen", "localhost:0"], &[]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // `:PORT` is every interface; without the token check that is warned about.
    let (log, addr) = serve_until_listening(dir.path(), &["--listen", ":0", "--no-auth"], &[]);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    assert!(log.contains("not a loopback address"), "{log}");
    let (log, _) = serve_until_listening(dir.path(), &["--listen", ":0"], &[]);
    assert!(!log.contains("not a loopback address"), "the token check is on:\n{log}");

    for (value, shown) in [("8080", "0.0.0.0:8080"), (":8081", "0.0.0.0:8081"), ("localhost:8082", "127.0.0.1:8082")] {
        let (ok, stdout, stderr) = run(dir.path(), &["config", "check"], &[("KEYPOOL_LISTEN", value)]);
        assert!(ok, "{value}: {stderr}");
        assert!(stdout.contains(&format!("listen = \"{shown}\"")), "{value}:\n{stdout}");
    }
    let (ok, _, stderr) = run(dir.path(), &["serve", "--listen", "nowhere:80"], &[]);
    assert!(!ok);
    assert!(stderr.contains("localhost:8080") && stderr.contains(":8080"), "says which forms work:\n{stderr}");
}

#[test]
fn an_upstream_without_a_version_path_is_warned_about_at_start_and_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) =
        serve_until_listening(dir.path(), &["--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9"], &[]);
    assert!(log.contains("has no version path"), "{log}");
    let (ok, _, stderr) = run(dir.path(), &["config", "check"], &[("KEYPOOL_UPSTREAM", "http://127.0.0.1:9")]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("warning: upstream: http://127.0.0.1:9 has no version path"), "{stderr}");
    let (_, _, stderr) = run(dir.path(), &["config", "check"], &[("KEYPOOL_UPSTREAM", "http://127.0.0.1:9/v1")]);
    assert!(!stderr.contains("version path"), "{stderr}");
}

#[test]
fn budgets_without_prices_are_warned_about_at_start_and_in_check() {
    let dir = tempfile::tempdir().unwrap();
    // No database yet: check says so and does not create one.
    let (ok, _, stderr) = run(dir.path(), &["config", "check"], &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(stderr.contains("built-in model prices (https://"), "{stderr}");
    assert!(!dir.path().join("k.db").exists(), "config check created a database");

    let (ok, _, stderr) =
        run(dir.path(), &["keys", "add", "--budget", "5", "sk-config-test-key-0123456789abcdef"], &[]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(dir.path(), &["keys", "add", "sk-config-test-key-fedcba9876543210"], &[]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(dir.path(), &["config", "check"], &[("KEYPOOL_POOL__STRATEGY", "balance_even")]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("warning: prices: key(s) 1 have a --budget"), "{stderr}");
    assert!(stderr.contains("warning: pool.strategy: balance_even: key(s) 2 have no budget"), "{stderr}");
    let (log, _) = serve_until_listening(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    assert!(log.contains("have a --budget, but spend is counted only for models with a price"), "{log}");

    // A catch-all price silences the first.
    let file = dir.path().join("keypool.toml");
    std::fs::write(&file, "[models.\"*\"]\nprice = { input = 1.0, output = 2.0 }\n").unwrap();
    let (ok, _, stderr) = run(dir.path(), &["config", "check"], &[]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("warning: prices"), "{stderr}");
}

/// A per-model first-byte timeout lets that model's slow answer through
/// while the global one still cuts every other model.
#[tokio::test]
async fn a_per_model_first_byte_timeout_lets_that_model_finish() {
    let sim = SimConfig {
        keys: vec![SimKey::new("sk-permodel-aaaaaaaaaaaa")],
        latency: Duration::from_millis(800),
        ..SimConfig::default()
    };
    let app = common::spawn(sim, vec![common::key("sk-permodel-aaaaaaaaaaaa", None)], |c| {
        c.timeouts.first_byte = Duration::from_millis(200);
        c.retry.max_retries = 0;
        c.models.insert(
            "slow-*".into(),
            ModelConfig {
                timeouts: TimeoutsOverride { first_byte: Some(Duration::from_secs(10)), ..Default::default() },
                ..Default::default()
            },
        );
    })
    .await;
    let body = |model: &str| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8});
    let slow = app.post("chat/completions").json(&body("slow-reasoner")).send().await.unwrap();
    assert_eq!(slow.status(), 200, "{}", slow.text().await.unwrap_or_default());
    let other = app.post("chat/completions").json(&body("gpt-4o-mini")).send().await.unwrap();
    assert!(other.status().is_server_error(), "the global 200 ms still applies: {}", other.status());
}
