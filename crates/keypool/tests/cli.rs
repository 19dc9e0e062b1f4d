//! The `keypool` binary: the CLI changes the database of a running server,
//! which honours each change without restart; and no key material ever
//! appears in CLI output, server logs or responses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keypool_sim::{SimConfig, SimKey, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_keypool");

/// Long, distinctive keys so a grep for them cannot match by accident.
const K1: &str = "sk-cli-test-key-one-7f3a9c2e51d84b6a";
const K2: &str = "sk-cli-test-key-two-0b8e4d17c9a2f365";
const K3: &str = "sk-cli-test-key-three-e6c1a94f028b7d3";

/// Stops the server even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cli {
    db: String,
    transcript: Arc<Mutex<String>>,
}

impl Cli {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new(BIN)
            .args(args)
            .env("KEYPOOL_DATABASE_URL", &self.db)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        self.transcript
            .lock()
            .unwrap()
            .push_str(&format!("$ keypool {}\n{stdout}{stderr}", args[..2.min(args.len())].join(" ")));
        (out.status.success(), stdout)
    }
}

fn assert_no_key_material(text: &str) {
    for k in [K1, K2, K3] {
        assert!(!text.contains(k), "full key {k} leaked in:\n{text}");
        // Nor a long piece of one: the secret part past the shared prefix.
        assert!(!text.contains(&k[14..]), "part of key {k} leaked in:\n{text}");
    }
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cli_manages_keys_and_tokens_of_a_running_server_and_never_shows_a_key() {
    let sim = Simulator::start(SimConfig {
        keys: [K1, K2, K3].iter().map(|k| SimKey::new(*k)).collect(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let cli = Cli { db: db.clone(), transcript: Arc::default() };

    // Start with an empty pool: serve must start anyway and say how to add a key.
    let mut server = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &sim.base_url()])
            .env("KEYPOOL_DATABASE_URL", &db)
            .env("KEYPOOL_SYNC_INTERVAL", "200ms")
            .env("RUST_LOG", "keypool=debug,info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stderr = server.0.stderr.take().unwrap();
    let reader = std::thread::spawn({
        let log = Arc::clone(&log);
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = addr_tx.send(addr);
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("server printed its address");
    assert!(log.lock().unwrap().contains("keypool keys add"), "empty pool explains how to add a key");
    let db_file = dir.path().join("k.db").display().to_string();
    assert!(log.lock().unwrap().contains(&format!("database: {db_file}")), "serve names its database");
    let base = format!("http://{addr}/v1");
    let http = reqwest::Client::new();
    let mut responses = String::new();

    let (ok, token) = cli.run(&["tokens", "create", "ci"], None);
    assert!(ok);
    let token = token.trim().to_owned();
    assert!(token.starts_with("kp-") && !token.contains(' '), "stdout is only the token: {token:?}");

    let (ok, out) = cli.run(&["keys", "add", K1, "--label", "first", "--rpm", "100"], None);
    assert!(ok && out.contains("added key 1"), "{out}");
    let send = async |http: &reqwest::Client| {
        let resp = http.get(format!("{base}/models")).bearer_auth(&token).send().await.unwrap();
        let status = resp.status();
        let headers = format!("{:?}", resp.headers());
        let body = resp.text().await.unwrap();
        (status, format!("{headers}\n{body}\n"))
    };
    wait_until("the server picks up the first key and token", async || {
        let (status, text) = send(&http).await;
        responses.push_str(&text);
        status == 200
    })
    .await;
    assert_eq!(sim.key_stats(K1).ok, 1);

    // Import from stdin: comments, blank lines and a duplicate are skipped.
    let file = format!("# trial keys\n{K2}\n\n{K1}\n   {K3}  \n# end\n");
    let (ok, out) = cli.run(&["keys", "import", "-"], Some(&file));
    assert!(ok, "{out}");
    assert!(out.contains("added key 2") && out.contains("added key 3"), "{out}");
    assert!(out.contains("skipped duplicate of key 1"), "{out}");

    // Disabling key 1 takes it out of rotation within seconds.
    let (ok, _) = cli.run(&["keys", "disable", "1"], None);
    assert!(ok);
    wait_until("key 1 stops receiving traffic", async || {
        let before = sim.key_stats(K1).requests;
        for _ in 0..6 {
            let (status, text) = send(&http).await;
            responses.push_str(&text);
            assert_eq!(status, 200);
        }
        sim.key_stats(K1).requests == before
    })
    .await;
    assert!(sim.key_stats(K2).ok > 0 && sim.key_stats(K3).ok > 0, "both imported keys serve");

    // The list shows masked keys, statuses and the counts the server wrote back.
    wait_until("usage totals reach the database", async || {
        let (_, out) = cli.run(&["keys", "list", "--json"], None);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows.as_array().unwrap().iter().map(|r| r["requests"].as_u64().unwrap()).sum::<u64>()
            == sim.stats().total_requests
    })
    .await;
    let (ok, out) = cli.run(&["keys", "list"], None);
    assert!(ok && out.contains("disabled") && out.contains("sk-…4b6a") && out.contains("first"), "{out}");

    // Re-enable, remove, and revoke: each honoured without restart.
    assert!(cli.run(&["keys", "enable", "1"], None).0);
    assert!(cli.run(&["keys", "rm", "2"], None).0);
    assert!(!cli.run(&["keys", "rm", "99"], None).0, "removing a missing key fails clearly");
    let (ok, out) = cli.run(&["tokens", "list"], None);
    assert!(ok && out.contains("ci") && !out.contains(&token), "{out}");
    assert!(cli.run(&["tokens", "revoke", "1"], None).0);
    wait_until("the revoked token is refused", async || {
        let (status, text) = send(&http).await;
        responses.push_str(&text);
        status == 401
    })
    .await;

    let (ok, out) = cli.run(&["config", "check"], None);
    assert!(ok && out.contains("database_url"), "{out}");

    drop(server);
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(log.contains("upstream answered"), "debug logging was on: {log}");
    assert_no_key_material(&log);
    assert_no_key_material(&responses);
    assert_no_key_material(&cli.transcript.lock().unwrap());
    assert!(Path::new(&dir.path().join("k.db")).exists());
}

#[test]
fn config_check_rejects_a_bad_setting_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "upstream = \"not a url\"\n").unwrap();
    let out = Command::new(BIN).args(["config", "check", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream"));
}

#[test]
fn demo_runs_for_the_time_it_says() {
    // 1 key at 2 rpm offered 4 requests/s: most wait in line, and max_wait
    // (60 s) is far longer than the demo. It still ends at --duration.
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["demo", "--keys", "1", "--rpm", "2", "--rate", "4", "--duration", "2s", "--max-wait", "60s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(took < Duration::from_secs(6), "a 2 s demo took {took:?}");
    assert!(stdout.contains("still in line when the time was up"), "{stdout}");
}

#[test]
fn demo_balances_simulated_keys_without_upstream_429s() {
    let out = Command::new(BIN)
        .args(["demo", "--keys", "3", "--rpm", "4", "--rate", "8", "--duration", "2s", "--max-wait", "1s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("12 requests answered"), "3 keys × 4 rpm serve 12: {stdout}");
    assert!(stdout.contains("sent 0 rate-limit errors"), "{stdout}");
    assert!(stdout.contains("demo-3"), "{stdout}");
}
