//! `keypool serve` in its own process, its stderr collected line by line:
//! for tests of what the process writes (its log) and of process-wide
//! set-up (the log's format, trace export).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keypool::server::{generate_token, hash_token};
use keypool::store::Store;

const BIN: &str = env!("CARGO_BIN_EXE_keypool");

/// A running `keypool serve`, killed when dropped.
pub struct Served {
    child: Child,
    /// The config file it was started with (rewrite it to test reloads).
    pub file: std::path::PathBuf,
    /// `http://127.0.0.1:PORT/v1`.
    pub base: String,
    pub token: String,
    pub db: String,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Starts `keypool serve` over `upstream` with `keys` (ids 1, 2, … in
    /// order) and one gateway token, the file `config` (TOML) and extra
    /// `args`; `RUST_LOG` and `NO_COLOR` are cleared. Waits until it listens.
    pub async fn start(upstream: &str, keys: &[&str], config: &str, args: &[&str]) -> Served {
        let keys: Vec<keypool::store::NewKey> = keys.iter().map(|k| super::key(k, None)).collect();
        let mut all = vec!["--upstream", upstream];
        all.extend_from_slice(args);
        Served::start_keys(&keys, config, &all).await
    }

    /// Starts `keypool serve` with `keys` as given (their upstreams
    /// included), one gateway token, the file `config` and `args` (no
    /// `--upstream`: the file says where to send requests).
    pub async fn start_keys(keys: &[keypool::store::NewKey], config: &str, args: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = Store::connect(&db).await.unwrap();
        for k in keys {
            store.add_key(k).await.unwrap();
        }
        let token = generate_token();
        store.create_token("test", &hash_token(&token), "kp-test").await.unwrap();
        store.close().await;
        let file = dir.path().join("keypool.toml");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .args(args)
            .env("KEYPOOL_DATABASE_URL", &db)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("KEYPOOL_CONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }
        });
        let mut served = Served { child, file, base: String::new(), token, db, lines, _dir: dir };
        let line =
            served.wait_for_line("the server says where it listens", |l| l.contains("listening on http://")).await;
        let addr = line.split("listening on http://").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        served.base = format!("http://{addr}/v1");
        served
    }

    /// Runs `keypool ARGS` (the CLI) on this server's database and config
    /// file; returns whether it succeeded and its stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.file)
            .env("KEYPOOL_DATABASE_URL", &self.db)
            .env_remove("RUST_LOG")
            .env_remove("KEYPOOL_CONFIG")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line written so far.
    /// POSTs `body` to `/v1/chat/completions` with the gateway token and
    /// reads the whole answer; returns its status and `x-keypool-request-id`.
    pub async fn chat(&self, body: &serde_json::Value) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}/chat/completions", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-keypool-request-id"].to_str().unwrap().to_owned();
        let status = resp.status().as_u16();
        resp.bytes().await.unwrap();
        (status, id)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits (10 s at most) for a line that `matches`.
    pub async fn wait_for_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| matches(l)) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keypool serve exited ({status}) before {what}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The lines that parse as JSON objects (all of them with `--log-format json`).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.lines().iter().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
