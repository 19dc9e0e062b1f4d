//! The request log, on SQLite and on PostgreSQL: every caller request ends
//! in exactly one record saying what it did, written off the request path,
//! kept through a stop, and never dropped without being counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scratch::{both, Scratch};
use futures_util::StreamExt;
use keypool::app::Running;
use keypool::config::Config;
use keypool::records::RequestRecord;
use keypool::server::{generate_token, hash_token};
use keypool::store::{Backend, NewKey};
use keypool_sim::{KeyState, SimConfig, SimKey, Simulator};
use sqlx::Connection;

both!(
    every_request_ends_in_one_record_of_what_it_did,
    a_retried_request_records_each_attempt,
    a_caller_who_leaves_mid_stream_is_recorded_as_cancelled,
    records_wait_while_the_database_is_locked_and_overflow_is_counted,
    a_nul_character_from_the_caller_does_not_stop_the_log,
    a_record_the_database_refuses_does_not_hold_up_the_rest,
    the_cli_shows_one_request_and_tails_the_newest,
    token_totals_stop_at_the_largest_count_instead_of_overflowing,
    a_batch_over_hundreds_of_tokens_adds_to_each_its_own_totals,
    bodies_are_kept_only_when_asked_cut_and_a_stream_as_its_text,
);

struct Gateway {
    gateway: Running,
    _sim: Simulator,
    token: String,
    token_id: i64,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(db: &Scratch, sim: SimConfig, keys: &[&str], tweak: impl FnOnce(&mut Config)) -> Gateway {
        Gateway::start_at(db, &db.url, sim, keys, tweak).await
    }

    /// A gateway reaching `db` by another URL (through a proxy).
    async fn start_at(
        db: &Scratch,
        url: &str,
        sim: SimConfig,
        keys: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Gateway {
        let sim = Simulator::start(sim).await.unwrap();
        for k in keys {
            db.store.add_key(&NewKey { secret: (*k).into(), ..NewKey::default() }).await.unwrap();
        }
        let token = generate_token();
        let token_id = db
            .store
            .create_token(&format!("caller-{}", &token[token.len() - 8..]), &hash_token(&token), "kp-c")
            .await
            .unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: sim.base_url(),
            database_url: url.to_owned(),
            sync_interval: Duration::from_millis(100),
            ..Config::default()
        };
        tweak(&mut config);
        let gateway = keypool::app::start(&config).await.unwrap();
        Gateway { gateway, _sim: sim, token, token_id, client: reqwest::Client::new() }
    }

    fn chat(&self, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}/chat/completions", self.gateway.base_url())).bearer_auth(&self.token).json(&body)
    }
}

fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": stream,
        "user": "end-user-7",
    })
}

async fn bodies_are_kept_only_when_asked_cut_and_a_stream_as_its_text(db: Scratch) {
    let sim = || SimConfig { accept_any_key: true, ..SimConfig::default() };
    // Off by default: no body in the record.
    let gw = Gateway::start(&db, sim(), &["sk-body-0123456789"], |_| {}).await;
    gw.chat(chat_body(false)).send().await.unwrap().bytes().await.unwrap();
    let first = records(&db, 1).await.remove(0);
    assert_eq!((first.request_body, first.response_body), (None, None));
    gw.gateway.shutdown().await.unwrap();

    let gw = Gateway::start(&db, sim(), &[], |c| {
        c.records.bodies = true;
        c.records.body_max_bytes = 2_000;
    })
    .await;
    // A plain answer: both bodies as they went.
    let plain = gw.chat(chat_body(false)).send().await.unwrap().text().await.unwrap();
    // A stream: the answer kept as its text, not its events.
    let events = gw.chat(chat_body(true)).send().await.unwrap().text().await.unwrap();
    let mut streamed = String::new();
    for line in events.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
    }
    assert!(!streamed.is_empty());
    // A long prompt: cut to body_max_bytes.
    let long =
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "é".repeat(3_000)}]});
    gw.chat(long).send().await.unwrap().bytes().await.unwrap();
    let got = records(&db, 4).await;
    let (p, s, l) = (&got[1], &got[2], &got[3]);
    assert!(p.request_body.as_deref().unwrap().contains("hello there"), "{:?}", p.request_body);
    assert_eq!(p.response_body.as_deref(), Some(plain.as_str()));
    assert_eq!(s.response_body.as_deref(), Some(streamed.as_str()));
    let cut = l.request_body.as_deref().unwrap();
    assert!(cut.len() <= 2_000 && cut.len() > 1_990, "cut at a character boundary: {} bytes", cut.len());
    gw.gateway.shutdown().await.unwrap();
}

/// The records, oldest first, once `n` are in the store.
async fn records(db: &Scratch, n: usize) -> Vec<RequestRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = db.store.recent_requests(1000).await.unwrap();
        if got.len() >= n {
            got.reverse();
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} records expected, found {}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn every_request_ends_in_one_record_of_what_it_did(db: Scratch) {
    let gw =
        Gateway::start(&db, SimConfig { accept_any_key: true, ..SimConfig::default() }, &["sk-one-0123456789"], |_| {})
            .await;
    // 1. A plain answer, with the caller's own request id.
    let r = gw
        .chat(chat_body(false))
        .header("X-Client-Request-Id", "trace-abc-1")
        .header("user-agent", "tests/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keypool-request-id"], "trace-abc-1", "the caller's id is adopted");
    let upstream_id = r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    assert!(upstream_id.is_some(), "the upstream's own x-request-id is passed through");
    r.bytes().await.unwrap();
    // 2. A stream, read to its end.
    let r = gw.chat(chat_body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let stream_id = r.headers()["x-keypool-request-id"].to_str().unwrap().to_owned();
    assert!(stream_id.starts_with("req_"), "{stream_id}");
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    // 3. The caller's mistake, refused by keypool.
    let r = gw
        .client
        .post(format!("{}/chat/completions", gw.gateway.base_url()))
        .bearer_auth(&gw.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let bad_json_id = r.headers()["x-keypool-request-id"].to_str().unwrap().to_owned();
    // 4. A wrong gateway token: answered, not recorded.
    let r = gw
        .client
        .post(format!("{}/chat/completions", gw.gateway.base_url()))
        .bearer_auth("kp-wrong")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A request without a valid token is charged to no one and not recorded.
    let got = records(&db, 3).await;
    assert_eq!(got.len(), 3, "one record per request: {got:#?}");
    let plain = &got[0];
    assert_eq!(plain.request_id, "trace-abc-1");
    assert_eq!(plain.token_id, Some(gw.token_id));
    assert_eq!(plain.status, 200);
    assert_eq!(plain.error_type, None);
    assert_eq!(plain.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(plain.end_user.as_deref(), Some("end-user-7"));
    assert_eq!(plain.user_agent.as_deref(), Some("tests/1"));
    assert_eq!(plain.client_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!((plain.method.as_str(), plain.path.as_str()), ("POST", "/v1/chat/completions"));
    assert!(!plain.stream && !plain.cancelled);
    assert_eq!(plain.upstream_request_id, upstream_id);
    assert_eq!(plain.attempts.len(), 1);
    assert_eq!((plain.attempts[0].status, plain.attempts[0].reason.as_ref()), (200, "ok"));
    assert_eq!(plain.key_id, Some(plain.attempts[0].key_id));
    assert!(plain.prompt_tokens.is_some_and(|t| t > 0) && plain.completion_tokens.is_some_and(|t| t > 0), "{plain:?}");
    assert!(plain.ttfb_us.is_some_and(|t| t > 0 && t <= plain.duration_us), "{plain:?}");
    assert!(plain.started_at > 1_700_000_000_000, "Unix milliseconds");

    let streamed = &got[1];
    assert_eq!(streamed.request_id, stream_id);
    assert!(streamed.stream && !streamed.cancelled && streamed.status == 200 && streamed.error_type.is_none());
    assert!(streamed.completion_tokens.is_some_and(|t| t > 0), "usage of a stream: {streamed:?}");
    assert!(!streamed.usage_estimated, "keypool asked for the stream's usage");

    let bad = &got[2];
    assert_eq!(bad.request_id, bad_json_id);
    assert_eq!((bad.status, bad.error_type.as_deref()), (400, Some("invalid_json")));
    assert!(bad.attempts.is_empty() && bad.key_id.is_none());
    assert_eq!(bad.token_id, Some(gw.token_id));

    gw.gateway.shutdown().await.unwrap();
    assert_eq!(db.store.count_requests().await.unwrap(), 3, "nothing written twice");
    // The token's totals count its requests, from the same records.
    let t = db.store.list_tokens().await.unwrap().remove(0).usage;
    assert_eq!((t.requests, t.successes, t.failures), (3, 2, 1), "{t:?}");
    let prompt: u64 = got.iter().filter_map(|r| r.prompt_tokens).sum();
    assert!(prompt > 0 && t.prompt_tokens == prompt, "{t:?}");
    assert!(t.last_used_at.is_some_and(|s| s * 1000 <= got[2].started_at), "{t:?}");
    // No key or gateway token in any record.
    let all = serde_json::to_string(&db.store.recent_requests(10).await.unwrap()).unwrap();
    assert!(!all.contains("sk-one") && !all.contains(&gw.token) && !all.contains("kp-wrong"), "{all}");
}

async fn a_retried_request_records_each_attempt(db: Scratch) {
    let sim = SimConfig {
        keys: vec![SimKey::new("sk-revoked-0123456789").state(KeyState::Invalid), SimKey::new("sk-good-0123456789")],
        ..SimConfig::default()
    };
    let gw = Gateway::start(&db, sim, &["sk-revoked-0123456789", "sk-good-0123456789"], |_| {}).await;
    // Whichever key the first request gets, the revoked one is tried within two.
    for _ in 0..2 {
        let r = gw.chat(chat_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let got = records(&db, 2).await;
    let retried = got.iter().find(|r| r.attempts.len() == 2).expect("one request was retried");
    let (first, second) = (&retried.attempts[0], &retried.attempts[1]);
    assert_eq!((first.status, first.reason.as_ref()), (401, "invalid_key"));
    assert_eq!((second.status, second.reason.as_ref()), (200, "ok"));
    assert_ne!(first.key_id, second.key_id);
    assert_eq!(retried.key_id, Some(second.key_id));
    assert_eq!((retried.status, retried.error_type.as_deref()), (200, None));
    gw.gateway.shutdown().await.unwrap();
}

async fn a_caller_who_leaves_mid_stream_is_recorded_as_cancelled(db: Scratch) {
    let sim = SimConfig {
        accept_any_key: true,
        stream_chunks: 20,
        chunk_interval: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let gw = Gateway::start(&db, sim, &["sk-one-0123456789"], |_| {}).await;
    let r = gw.chat(chat_body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-keypool-request-id"].to_str().unwrap().to_owned();
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let got = records(&db, 1).await;
    assert_eq!(got[0].request_id, id);
    assert!(got[0].cancelled, "{:?}", got[0]);
    assert_eq!(got[0].error_type.as_deref(), Some("cancelled"));
    assert!(got[0].duration_us < 1_900_000, "ended when the caller left, not with the stream");
    gw.gateway.shutdown().await.unwrap();
    assert_eq!(db.store.count_requests().await.unwrap(), 1);
}

/// The database is held (a write lock on SQLite, a table lock on
/// PostgreSQL) while requests go on: they all succeed, records wait in
/// the buffer, what does not fit is counted as dropped, and the rest is
/// written once the lock goes.
async fn records_wait_while_the_database_is_locked_and_overflow_is_counted(db: Scratch) {
    let gw =
        Gateway::start(&db, SimConfig { accept_any_key: true, ..SimConfig::default() }, &["sk-one-0123456789"], |c| {
            c.records.buffer = 3;
            c.records.batch = 2;
            c.records.flush_interval = Duration::from_secs(5);
        })
        .await;
    let lock = hold(&db).await;
    let sent = 12;
    for _ in 0..sent {
        let r = gw.chat(chat_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200, "requests never wait on the database");
        r.bytes().await.unwrap();
    }
    // The writer holds one batch (2) and the buffer 3: the rest is dropped, counted.
    let recorder = gw.gateway.recorder().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorder.dropped() < sent - 5 {
        assert!(tokio::time::Instant::now() < deadline, "dropped: {}", recorder.dropped());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorder.written(), 0, "nothing gets past the lock");
    release(lock).await;
    gw.gateway.shutdown().await.unwrap();
    assert_eq!(recorder.written() + recorder.dropped(), sent);
    assert_eq!(recorder.dropped(), sent - 5);
    assert_eq!(db.store.count_requests().await.unwrap(), recorder.written());
}

/// JSON lets a caller send `\u0000`, which PostgreSQL refuses in text.
async fn a_nul_character_from_the_caller_does_not_stop_the_log(db: Scratch) {
    let gw =
        Gateway::start(&db, SimConfig { accept_any_key: true, ..SimConfig::default() }, &["sk-one-0123456789"], |_| {})
            .await;
    let mut body = chat_body(false);
    body["user"] = serde_json::json!("end\u{0}user");
    body["model"] = serde_json::json!("gpt-4o-mini\u{0}");
    for _ in 0..2 {
        let r = gw.chat(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let got = records(&db, 2).await;
    assert_eq!(got[0].end_user.as_deref(), Some("enduser"));
    assert_eq!(got[1].model.as_deref(), Some("gpt-4o-mini"));
    gw.gateway.shutdown().await.unwrap();
    assert_eq!(db.store.count_requests().await.unwrap(), 2);
}

/// A record the database cannot store (here a NUL in text, which only
/// PostgreSQL refuses) is dropped and counted; the rest of its batch is
/// written, whether the batch goes in one part or (PostgreSQL, 2,000
/// records or more) in parts side by side.
async fn a_record_the_database_refuses_does_not_hold_up_the_rest(db: Scratch) {
    for (n, bad) in [(10u64, 4u64), (3_000, 2_500)] {
        let config = keypool::records::RecordsConfig { batch: n as usize, ..Default::default() };
        let before = db.store.count_requests().await.unwrap();
        let (recorder, writer) = keypool::records::spawn(db.store.clone(), config);
        for i in 0..n {
            let request_id = if i == bad { "bad\0id".to_owned() } else { format!("req_{i}") };
            recorder.record(RequestRecord {
                request_id,
                method: "POST".into(),
                path: "/v1/x".into(),
                ..Default::default()
            });
        }
        writer.stop(tokio::time::Instant::now() + Duration::from_secs(20), Default::default()).await;
        let refused = u64::from(db.store.backend() == Backend::Postgres);
        assert_eq!((recorder.written(), recorder.dropped()), (n - refused, refused), "batch of {n}");
        assert_eq!(db.store.count_requests().await.unwrap() - before, n - refused);
    }
}

/// `keypool requests show ID` and `keypool requests tail` on the log a
/// gateway wrote.
async fn the_cli_shows_one_request_and_tails_the_newest(db: Scratch) {
    let gw =
        Gateway::start(&db, SimConfig { accept_any_key: true, ..SimConfig::default() }, &["sk-cli-0123456789"], |_| {})
            .await;
    // Following from now: each request appears as it is written.
    let mut follow = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_keypool"))
            .args(["requests", "tail", "-f", "-n", "1000"])
            .env("KEYPOOL_DATABASE_URL", &db.url)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let followed = {
        use std::io::BufRead;
        let out = follow.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = gw.chat(chat_body(false)).header("X-Client-Request-Id", format!("cli-{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-keypool-request-id"].to_str().unwrap().to_owned());
        r.bytes().await.unwrap();
    }
    // Polled, not blocked on: the gateway's writer runs on this thread.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while lines.len() < 3 {
        match followed.try_recv() {
            Ok(line) => lines.push(line),
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "tail -f printed only {lines:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(&format!(" cli-{i} 200 ")), "{line}");
    }
    drop(follow);
    gw.gateway.shutdown().await.unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypool"))
            .args(args)
            .env("KEYPOOL_DATABASE_URL", &db.url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, shown, err) = cli(&["requests", "show", "cli-1"]);
    assert!(ok, "{err}");
    assert!(shown.contains("cli-1") && shown.contains("gpt-4o-mini") && shown.contains("attempts (1)"), "{shown}");
    assert!(shown.contains("→ 200 ok"), "{shown}");
    let (ok, json, _) = cli(&["requests", "show", "cli-1", "--json"]);
    assert!(ok);
    let record: RequestRecord = serde_json::from_str(&json).unwrap();
    assert_eq!((record.request_id.as_str(), record.status), ("cli-1", 200));
    let (ok, tail, _) = cli(&["requests", "tail", "-n", "2"]);
    assert!(ok);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(
        lines[0].contains(" cli-1 200 POST /v1/chat/completions") && lines[1].contains(" cli-2 "),
        "oldest first: {tail}"
    );
    let (ok, _, err) = cli(&["requests", "show", "no-such-id"]);
    assert!(!ok && err.contains("no request with id"), "{err}");
    assert_eq!(ids, ["cli-0", "cli-1", "cli-2"]);
}

/// A child process killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upstream's garbage usage (2^64 - 1 tokens) neither blocks the
/// token's records nor breaks its totals: they stop at the largest BIGINT.
async fn token_totals_stop_at_the_largest_count_instead_of_overflowing(db: Scratch) {
    let id = db.store.create_token("big", &hash_token(&generate_token()), "kp-b").await.unwrap();
    let (recorder, writer) = keypool::records::spawn(db.store.clone(), Default::default());
    for i in 0..3 {
        recorder.record(RequestRecord {
            request_id: format!("huge-{i}"),
            token_id: Some(id),
            status: 200,
            method: "POST".into(),
            path: "/v1/x".into(),
            prompt_tokens: Some(u64::MAX),
            cost_micros: Some(u64::MAX),
            ..Default::default()
        });
    }
    writer.stop(tokio::time::Instant::now() + Duration::from_secs(10), Default::default()).await;
    assert_eq!((recorder.written(), recorder.dropped()), (3, 0));
    let t = db.store.list_tokens().await.unwrap().remove(0).usage;
    assert_eq!((t.requests, t.prompt_tokens, t.spent_micros), (3, i64::MAX as u64, i64::MAX as u64));
    // Summed in memory first, the totals reach the store's own cap too:
    // a garbage count added to a row already counting stops there.
    let huge = keypool::store::TokenUsage { requests: u64::MAX, spent_micros: 1, ..Default::default() };
    let sums = keypool::records::rollup::Sums { tokens: [(id, huge)].into(), ..Default::default() };
    db.store.write_batch(&[], false, &sums).await.unwrap();
    let t = db.store.list_tokens().await.unwrap().remove(0).usage;
    assert_eq!((t.requests, t.spent_micros), (i64::MAX as u64, i64::MAX as u64));
}

/// A batch touching 300 tokens and three keys (one removed before the
/// write) adds to every token and key exactly its own records: the totals
/// are written many rows to a statement (256, 16 and 1 on SQLite), and a
/// removed key's share is skipped without failing the batch.
async fn a_batch_over_hundreds_of_tokens_adds_to_each_its_own_totals(db: Scratch) {
    let mut tokens = Vec::new();
    for i in 0..300 {
        tokens.push(db.store.create_token(&format!("t{i}"), &hash_token(&generate_token()), "kp-t").await.unwrap());
    }
    for i in 0..3 {
        db.store.add_key(&NewKey { secret: format!("sk-batch-{i}-0123456789"), ..NewKey::default() }).await.unwrap();
    }
    let keys: Vec<i64> = db.store.list_keys().await.unwrap().iter().map(|k| k.id).collect();
    db.store.remove_key(keys[2]).await.unwrap();
    let attempt = |key_id: i64, status: u16, counted: keypool::records::Counted| keypool::records::Attempt {
        key_id,
        status,
        reason: if status == 200 { "ok".into() } else { "rate_limited".into() },
        duration_us: 10,
        counted,
    };
    // Token i gets i % 4 + 1 records; every third fails once on a key first.
    let mut records = Vec::new();
    for (i, id) in tokens.iter().enumerate() {
        for j in 0..=(i % 4) {
            let key = keys[(i + j) % 3];
            let mut attempts = vec![attempt(key, 200, keypool::records::Counted::Success)];
            if j == 0 && i % 3 == 0 {
                attempts.insert(0, attempt(keys[(i + 1) % 3], 429, keypool::records::Counted::Failure));
            }
            records.push(RequestRecord {
                request_id: format!("r-{i}-{j}"),
                started_at: 1_700_000_000_000 + (i * 1000 + j) as i64,
                token_id: Some(*id),
                status: 200,
                method: "POST".into(),
                path: "/v1/chat/completions".into(),
                key_id: Some(key),
                attempts,
                prompt_tokens: Some(i as u64),
                completion_tokens: Some(1),
                cost_micros: Some(7),
                ..Default::default()
            });
        }
    }
    db.store.insert_requests(&records).await.unwrap();
    let listed = db.store.list_tokens().await.unwrap();
    for (i, id) in tokens.iter().enumerate() {
        let n = (i % 4 + 1) as u64;
        let t = &listed.iter().find(|t| t.id == *id).unwrap().usage;
        assert_eq!(
            (t.requests, t.successes, t.failures, t.prompt_tokens, t.completion_tokens, t.spent_micros),
            (n, n, 0, n * i as u64, n, 7 * n),
            "token {i}"
        );
        assert_eq!(t.last_used_at, Some(1_700_000_000 + i as i64), "token {i}");
    }
    // The keys: every attempt sent counts; usage goes to the one that answered.
    let (mut want_requests, mut want_failures, mut want_prompt) = ([0u64; 3], [0u64; 3], [0u64; 3]);
    for r in &records {
        for a in &r.attempts {
            let k = keys.iter().position(|k| *k == a.key_id).unwrap();
            want_requests[k] += 1;
            want_failures[k] += u64::from(a.status != 200);
        }
        want_prompt[keys.iter().position(|k| Some(*k) == r.key_id).unwrap()] += r.prompt_tokens.unwrap();
    }
    let listed = db.store.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2, "the removed key stays removed");
    for k in 0..2 {
        let got = listed.iter().find(|x| x.id == keys[k]).unwrap();
        assert_eq!(
            (got.requests, got.failures, got.prompt_tokens),
            (want_requests[k], want_failures[k], want_prompt[k])
        );
    }
    assert_eq!(db.store.count_requests().await.unwrap(), records.len() as u64);
}

enum Lock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

async fn hold(db: &Scratch) -> Lock {
    match db.store.backend() {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE").execute(&mut c).await.unwrap();
            Lock::Sqlite(c)
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            sqlx::query("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE").execute(&mut c).await.unwrap();
            Lock::Postgres(c)
        }
    }
}

async fn release(lock: Lock) {
    match lock {
        Lock::Sqlite(mut c) => sqlx::query("COMMIT").execute(&mut c).await.map(drop).unwrap(),
        Lock::Postgres(mut c) => sqlx::query("COMMIT").execute(&mut c).await.map(drop).unwrap(),
    }
}

// ---- A stop under load ----------------------------------------------------------

mod stop {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_stop_with_500_requests_in_flight_answers_and_records_each_once() {
        a_stop_with_500_requests_in_flight_answers_and_records_each_once(Scratch::sqlite().await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_stop_with_500_requests_in_flight_answers_and_records_each_once() {
        a_stop_with_500_requests_in_flight_answers_and_records_each_once(Scratch::postgres().await).await
    }
}

/// The built binary, stopped by SIGTERM while 500 requests wait on an
/// upstream that takes 1.5 s: every request is answered 200, the process
/// exits 0, and the log holds exactly one record per request, as many as
/// the simulator served, each under the id its caller was given.
async fn a_stop_with_500_requests_in_flight_answers_and_records_each_once(db: Scratch) {
    const IN_FLIGHT: usize = 500;
    let sim = Simulator::start(SimConfig {
        accept_any_key: true,
        latency: Duration::from_millis(1500),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (mut child, addr, token) = serve_binary(&db, &sim).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let sent = client.post(&url).bearer_auth(&token).json(&chat_body(false)).send();
            tokio::spawn(async move {
                let r = sent.await.unwrap();
                let id = r.headers()["x-keypool-request-id"].to_str().unwrap().to_owned();
                (r.status().as_u16(), id, r.bytes().await.is_ok())
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sim.stats().total_requests < IN_FLIGHT as u64 {
        assert!(tokio::time::Instant::now() < deadline, "in flight: {}", sim.stats().total_requests);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(term.success());
    let mut ids = std::collections::HashSet::new();
    for r in requests {
        let (status, id, read) = r.await.unwrap();
        assert_eq!((status, read), (200, true), "every request in flight is answered");
        ids.insert(id);
    }
    assert_eq!(ids.len(), IN_FLIGHT, "each request has its own id");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.0.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(exited.expect("the server exits after a stop").success());
    // Everything was written before the process exited: nothing to wait for.
    assert_eq!(db.store.count_requests().await.unwrap(), sim.stats().total_requests);
    let recorded = db.store.recent_requests(10_000).await.unwrap();
    assert_eq!(recorded.len(), IN_FLIGHT);
    assert!(recorded.iter().all(|r| r.status == 200 && ids.contains(&r.request_id)), "one record per request");
}

/// The built binary serving `db` (holding one key and one token) over
/// `sim`: the process, its address and the token. Each request holds a
/// descriptor for the caller, the gateway and the upstream side, so the
/// server's open-file limit is raised (the test's own is the machine's,
/// 20,000 here).
async fn serve_binary(db: &Scratch, sim: &Simulator) -> (KillOnDrop, String, String) {
    use std::io::BufRead;
    db.store.add_key(&NewKey { secret: "sk-served-0123456789".into(), ..NewKey::default() }).await.unwrap();
    let token = generate_token();
    db.store.create_token("t", &hash_token(&token), "kp-t").await.unwrap();
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -n 8192 2>/dev/null || ulimit -n 4096; exec \"$0\" serve --listen 127.0.0.1:0 --upstream \"$1\"",
        ])
        .arg(env!("CARGO_BIN_EXE_keypool"))
        .arg(sim.base_url())
        .env("KEYPOOL_DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
            }
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("[keypool] {line}");
            }
        }
    });
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the server printed its address");
    (KillOnDrop(child), addr, token)
}

// ---- A crash under load ------------------------------------------------------------

mod crash {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_kill_under_load_keeps_every_record_answered_over_two_seconds_before() {
        a_kill_under_load_keeps_every_record_answered_over_two_seconds_before(Scratch::sqlite().await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_kill_under_load_keeps_every_record_answered_over_two_seconds_before() {
        a_kill_under_load_keeps_every_record_answered_over_two_seconds_before(Scratch::postgres().await).await
    }
}

/// SIGKILL while 8 callers keep sending: every request answered more than
/// 2 s before the kill is in the log (records are written within
/// `records.flush_interval`, 1 s; a commit survives the process).
async fn a_kill_under_load_keeps_every_record_answered_over_two_seconds_before(db: Scratch) {
    // A little upstream latency keeps the two cores from saturating.
    let sim = SimConfig { accept_any_key: true, latency: Duration::from_millis(20), ..SimConfig::default() };
    let sim = Simulator::start(sim).await.unwrap();
    let (mut child, addr, token) = serve_binary(&db, &sim).await;
    let url = format!("http://{addr}/v1/chat/completions");
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, std::time::Instant)>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (url, token, answered, stop) = (url.clone(), token.clone(), answered.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.is_cancelled() {
                    let Ok(r) = client.post(&url).bearer_auth(&token).json(&chat_body(false)).send().await else {
                        break;
                    };
                    let id = r.headers().get("x-keypool-request-id").map(|v| v.to_str().unwrap().to_owned());
                    if let (Some(id), true, Ok(_)) = (id, r.status() == 200, r.bytes().await) {
                        answered.lock().unwrap().push((id, std::time::Instant::now()));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let killed_at = std::time::Instant::now();
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "killed, not stopped: {status}");
    stop.cancel();
    for c in callers {
        c.await.unwrap();
    }
    let before: Vec<String> = answered
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at + Duration::from_secs(2) < killed_at)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(before.len() >= 50, "a load ran before the kill: {}", before.len());
    let kept: std::collections::HashSet<String> =
        db.store.recent_requests(1_000_000).await.unwrap().into_iter().map(|r| r.request_id).collect();
    let missing: Vec<&String> = before.iter().filter(|id| !kept.contains(*id)).collect();
    // The keys' totals (what a restart reads back) were written with the
    // records, summed from their attempts as the scheduler counted them:
    // they agree after the crash (read again while a commit sent before
    // the kill may still land). The token's go with the statistics, at
    // most every second: a crash may lose the last of them, but they never
    // count a request the log does not hold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let t = db.store.list_tokens().await.unwrap().remove(0).usage;
        let all = db.store.recent_requests(1_000_000).await.unwrap();
        let records = all.len() as u64;
        let sent = |c: &keypool::records::Attempt| c.counted != keypool::records::Counted::NotSent;
        let attempts: u64 = all.iter().map(|r| r.attempts.iter().filter(|a| sent(a)).count() as u64).sum();
        let successes: u64 = all
            .iter()
            .map(|r| r.attempts.iter().filter(|a| a.counted == keypool::records::Counted::Success).count() as u64)
            .sum();
        let spent: u64 = all.iter().map(|r| r.cost_micros.unwrap_or(0)).sum();
        let keys = db.store.list_keys().await.unwrap();
        let key_requests: u64 = keys.iter().map(|k| k.requests).sum();
        let key_successes: u64 = keys.iter().map(|k| k.successes).sum();
        let key_spent: u64 = keys.iter().map(|k| k.spent_micros).sum();
        if key_requests == attempts && key_successes == successes && key_spent == spent {
            assert!(successes > 0 && spent > 0, "the load was answered and priced");
            assert!(t.requests > 0 && t.requests <= records, "token totals {} of {records} records", t.requests);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "token totals {} against {records} records; keys {key_requests} requests, {key_successes} \
             successes, {key_spent} µUSD against {attempts}, {successes}, {spent} in the records",
            t.requests
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first: Vec<&&String> = missing.iter().take(5).collect();
    assert!(missing.is_empty(), "{} of {} records lost, first {first:?}", missing.len(), before.len());
}

// ---- PostgreSQL out of reach ------------------------------------------------------

/// A loopback TCP proxy to PostgreSQL that the test can cut (every open
/// connection closed, new ones closed at once) and restore, so only this
/// test's gateway loses its database.
struct Cuttable {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Cuttable {
    async fn start(target: String) -> Cuttable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut caller, _)) = listener.accept().await {
                if *watch.borrow() {
                    drop(caller);
                    continue;
                }
                let mut watch = watch.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut caller, &mut server) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Cuttable { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// PostgreSQL is out of reach for 10 s while requests keep coming: none of
/// them fails for it, and every record is written once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_out_of_reach_for_10s_loses_no_request_and_no_record() {
    let db = Scratch::postgres().await;
    let url = reqwest::Url::parse(&db.url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Cuttable::start(target).await;
    let mut through = url.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.addr.port())).unwrap();
    let sim = SimConfig { accept_any_key: true, ..SimConfig::default() };
    let gw = Gateway::start_at(&db, through.as_str(), sim, &["sk-out-0123456789"], |_| {}).await;
    let recorder = gw.gateway.recorder().clone();
    let mut sent = 0u64;
    let mut send = async |n: usize| {
        for _ in 0..n {
            let r = gw.chat(chat_body(false)).send().await.unwrap();
            assert_eq!(r.status(), 200, "no request fails for the database");
            r.bytes().await.unwrap();
            sent += 1;
        }
    };
    send(20).await;
    proxy.set_cut(true);
    let back = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < back {
        send(10).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set_cut(false);
    send(20).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while db.store.count_requests().await.unwrap() < sent {
        assert!(tokio::time::Instant::now() < deadline, "records written after the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.gateway.shutdown().await.unwrap();
    assert_eq!(db.store.count_requests().await.unwrap(), sent, "each record once");
    assert_eq!(recorder.dropped(), 0);
    assert_eq!(recorder.written(), sent);
}
