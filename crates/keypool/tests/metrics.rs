//! Prometheus metrics: `keypool serve` in its own process (the `metrics`
//! facade has one recorder per process), a scripted set of requests against
//! the simulator, then `/metrics` read on the admin-token route and on
//! `metrics_listen`, value by value; and the Grafana dashboard's queries
//! name only metrics that exist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keypool::server::{generate_token, hash_token};
use keypool::store::{AddOutcome, NewKey, Store};
use keypool_sim::{SimConfig, SimKey, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_keypool");
const ADMIN: &str = "metrics-test-admin-token-7f3a9c2e51b8";
const GOOD: &str = "sk-metrics-good-key-4b8e1d7a9c03f256";
const HOT: &str = "sk-metrics-hot-key-9a2c5e8f1b7d3064";
const SPARE: &str = "sk-metrics-spare-key-2e6b9d1f4a8c7053";

/// Stops the server even when an assertion fails first.
struct Server {
    child: Child,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// The admin token the first start generated (none when one is configured).
    generated_token: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `keypool serve` on port 0 over `upstream` and `db`, with `env`;
/// returns once it printed its address (and the metrics listener's, when
/// asked, and the generated admin token, when none is configured).
fn serve(upstream: &str, db: &str, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--upstream", upstream])
        .env("KEYPOOL_DATABASE_URL", db)
        .env("KEYPOOL_SYNC_INTERVAL", "100ms")
        .env("RUST_LOG", "info")
        .env_remove("KEYPOOL_CONFIG")
        .env_remove("KEYPOOL_ADMIN_TOKEN")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let wants_metrics = env.iter().any(|(k, _)| *k == "KEYPOOL_METRICS_LISTEN");
    let wants_token = !env.iter().any(|(k, _)| *k == "KEYPOOL_ADMIN_TOKEN");
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let addr_after = |marker: &str| {
                let rest = line.split(marker).nth(1)?;
                rest.split(['/', ' ']).next()?.parse::<SocketAddr>().ok()
            };
            if let Some(a) = addr_after("metrics on http://") {
                let _ = tx.send(("metrics", a.to_string()));
            } else if let Some(a) = addr_after("listening on http://") {
                let _ = tx.send(("main", a.to_string()));
            } else if let Some(secret) = line.split("only its hash is stored): ").nth(1) {
                let _ = tx.send(("token", secret.trim().to_owned()));
            }
        }
    });
    let (mut addr, mut metrics_addr, mut generated_token) = (None, None, None);
    while addr.is_none() || (wants_metrics && metrics_addr.is_none()) || (wants_token && generated_token.is_none()) {
        let (which, text) = rx.recv_timeout(Duration::from_secs(30)).expect("the server printed its addresses");
        match which {
            "main" => addr = Some(text.parse().unwrap()),
            "metrics" => metrics_addr = Some(text.parse().unwrap()),
            _ => generated_token = Some(text),
        }
    }
    Server { child, addr: addr.unwrap(), metrics_addr, generated_token }
}

/// One sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The Prometheus text format, as far as keypool writes it.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.push(Sample { name: name.to_owned(), labels, value: value.parse().unwrap() });
    }
    out
}

/// The sum of `name`'s samples whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// The one sample of `name` with exactly these labels, if any.
fn one(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = with.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

fn added(outcome: AddOutcome) -> i64 {
    match outcome {
        AddOutcome::Added(id) => id,
        AddOutcome::Duplicate(id) => panic!("key {id} was there already"),
    }
}

async fn get_metrics(client: &reqwest::Client, url: String, bearer: Option<&str>) -> reqwest::Response {
    let mut req = client.get(url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_on_both_routes_and_the_dashboard_uses_only_them() {
    let sim = Simulator::start(SimConfig {
        // HOT allows one request a minute, and keypool cannot see it
        // coming (no headers): its second request meets the upstream's 429.
        keys: vec![SimKey::new(GOOD), SimKey::new(HOT).rpm(1), SimKey::new(SPARE)],
        send_rate_limit_headers: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let store = Store::connect(&db).await.unwrap();
    let good = added(
        store
            .add_key(&NewKey {
                rpm: Some(100),
                tpm: Some(100_000),
                budget_micros: Some(5_000_000),
                ..common::key(GOOD, None)
            })
            .await
            .unwrap(),
    );
    let hot = added(store.add_key(&common::key(HOT, None)).await.unwrap());
    let spare = added(store.add_key(&common::key(SPARE, None)).await.unwrap());
    let token = generate_token();
    store.create_token("test", &hash_token(&token), "kp-test").await.unwrap();
    store.close().await;

    let server =
        serve(&sim.base_url(), &db, &[("KEYPOOL_ADMIN_TOKEN", ADMIN), ("KEYPOOL_METRICS_LISTEN", "127.0.0.1:0")]);
    let client = reqwest::Client::new();
    let base = format!("http://{}/v1", server.addr);
    let chat = |model: Option<&str>| {
        let mut body = common::chat("hello");
        match model {
            Some(m) => body["model"] = m.into(),
            None => {
                body.as_object_mut().unwrap().remove("model");
            }
        }
        client.post(format!("{base}/chat/completions")).bearer_auth(&token).json(&body).send()
    };
    // The script: at least 10 requests for a known model (until HOT met its
    // 429), 2 for a name no pattern knows (`other`), 1 without a model (`none`).
    let mut known = 0;
    while known < 10 || sim.key_stats(HOT).rate_limited == 0 {
        assert!(known < 40, "HOT meets its limit: {:?}", sim.stats());
        assert_eq!(chat(Some("gpt-4o-mini")).await.unwrap().status(), 200);
        known += 1;
    }
    let known_f = f64::from(known);
    for _ in 0..2 {
        assert_eq!(chat(Some("made-up-model-xyz")).await.unwrap().status(), 200);
    }
    let no_model = chat(None).await.unwrap().status().as_u16();
    assert!((400..500).contains(&no_model), "{no_model}");

    // The admin-token route: 401 without or with a wrong token.
    let on_main = format!("http://{}/metrics", server.addr);
    assert_eq!(get_metrics(&client, on_main.clone(), None).await.status(), 401);
    assert_eq!(get_metrics(&client, on_main.clone(), Some("not-the-admin-token-at-all")).await.status(), 401);
    assert_eq!(
        get_metrics(&client, on_main.clone(), Some(&token)).await.status(),
        401,
        "a gateway token is not enough"
    );
    let keys: Vec<serde_json::Value> = client
        .get(format!("http://{}/admin/api/keys", server.addr))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = get_metrics(&client, on_main.clone(), Some(ADMIN)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    // metrics_listen: the same, without auth.
    let on_side = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let side = get_metrics(&client, on_side.clone(), None).await;
    assert_eq!(side.status(), 200);
    let side_text = side.text().await.unwrap();
    let s = parse(&text);
    let names = |s: &[Sample]| s.iter().map(|x| x.name.clone()).collect::<BTreeSet<_>>();
    assert_eq!(names(&s), names(&parse(&side_text)), "both routes serve the same metrics");

    // Requests by model, status and kind, and their latency histograms.
    let ok_known = [("model", "gpt-4o-mini"), ("status", "200"), ("kind", "ok")];
    assert_eq!(one(&s, "keypool_requests_total", &ok_known), Some(known_f), "{text}");
    assert_eq!(one(&s, "keypool_request_duration_seconds_count", &ok_known), Some(known_f));
    let ok_other = [("model", "other"), ("status", "200"), ("kind", "ok")];
    assert_eq!(one(&s, "keypool_requests_total", &ok_other), Some(2.0));
    let status = no_model.to_string();
    let none = [("model", "none"), ("status", status.as_str()), ("kind", "caller")];
    assert_eq!(one(&s, "keypool_requests_total", &none), Some(1.0), "{text}");
    assert_eq!(sum(&s, "keypool_requests_total", &[]), known_f + 3.0);
    assert_eq!(sum(&s, "keypool_request_duration_seconds_bucket", &[("le", "+Inf")]), known_f + 3.0);
    assert!(sum(&s, "keypool_request_duration_seconds_sum", &[]) > 0.0);
    assert!(!text.contains(GOOD) && !text.contains(HOT) && !text.contains(ADMIN) && !text.contains(&token));

    // First byte: every answered request of the model; queue wait: every request.
    assert_eq!(one(&s, "keypool_time_to_first_byte_seconds_count", &[("model", "gpt-4o-mini")]), Some(known_f));
    assert_eq!(one(&s, "keypool_queue_wait_seconds_count", &[]), Some(known_f + 3.0));
    assert_eq!(one(&s, "keypool_queue_depth", &[]), Some(0.0));

    // The upstream's 429s, each retried on another key.
    let sent_429 = sim.stats().keys.values().map(|k| k.rate_limited).sum::<u64>() as f64;
    assert!(sent_429 >= 1.0, "the script meets HOT's limit: {:?}", sim.stats());
    assert_eq!(one(&s, "keypool_upstream_429_total", &[]), Some(sent_429));
    assert_eq!(one(&s, "keypool_retries_total", &[("reason", "rate_limited")]), Some(sent_429));

    // Records: none dropped; the writer's backlog is a gauge.
    assert_eq!(one(&s, "keypool_records_dropped_total", &[("reason", "buffer_full")]), Some(0.0));
    assert!(one(&s, "keypool_records_waiting", &[]).is_some());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(one(&s, "keypool_build_info", &[("version", version)]), Some(1.0));

    // Per key, as the scheduler sees it (the admin API reads the same view).
    assert_eq!(keys.len(), 3);
    for k in &keys {
        let id = k["id"].as_i64().unwrap().to_string();
        let id = id.as_str();
        let status = k["status"].as_str().unwrap();
        for state in keypool::metrics::KEY_STATES {
            let want = if state == status { 1.0 } else { 0.0 };
            assert_eq!(one(&s, "keypool_key_state", &[("key_id", id), ("state", state)]), Some(want), "{id} {state}");
        }
        let remaining = k["remaining_requests"].as_u64().map(|n| n as f64);
        assert_eq!(one(&s, "keypool_key_remaining_requests", &[("key_id", id)]), remaining, "key {id}");
        let tokens = k["remaining_tokens"].as_u64().map(|n| n as f64);
        assert_eq!(one(&s, "keypool_key_remaining_tokens", &[("key_id", id)]), tokens, "key {id}");
        let inflight = k["inflight"].as_u64().unwrap() as f64;
        assert_eq!(one(&s, "keypool_key_inflight", &[("key_id", id)]), Some(inflight));
        let spent = k["spent_micros"].as_u64().unwrap() as f64 / 1e6;
        let spend = one(&s, "keypool_key_spend_usd", &[("key_id", id)]).unwrap();
        assert!((spend - spent).abs() < 1e-9, "key {id}: {spend} against {spent}");
    }
    // GOOD's remaining is its RPM less what the upstream got from it.
    let good_id = good.to_string();
    let good_sent = sim.key_stats(GOOD).requests as f64;
    assert!(good_sent > 0.0);
    assert_eq!(one(&s, "keypool_key_remaining_requests", &[("key_id", &good_id)]), Some(100.0 - good_sent));
    assert!(one(&s, "keypool_key_remaining_tokens", &[("key_id", &good_id)]).is_some_and(|t| t < 100_000.0));
    assert_eq!(one(&s, "keypool_key_budget_usd", &[("key_id", &good_id)]), Some(5.0));
    assert!(one(&s, "keypool_key_spend_usd", &[("key_id", &good_id)]).unwrap() > 0.0, "priced usage is spend");
    let hot_id = hot.to_string();
    assert!(one(&s, "keypool_key_state", &[("key_id", &hot_id), ("state", "active")]).is_some());

    // Every metric named has its HELP line.
    for name in [
        "keypool_requests_total",
        "keypool_request_duration_seconds",
        "keypool_time_to_first_byte_seconds",
        "keypool_queue_wait_seconds",
        "keypool_queue_depth",
        "keypool_retries_total",
        "keypool_upstream_429_total",
        "keypool_records_dropped_total",
        "keypool_records_waiting",
        "keypool_build_info",
        "keypool_key_state",
        "keypool_key_remaining_requests",
        "keypool_key_remaining_tokens",
        "keypool_key_inflight",
        "keypool_key_spend_usd",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }

    // The Grafana dashboard uses only metrics that exist.
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/keypool.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            exprs += 1;
            let mut rest = expr;
            while let Some(at) = rest.find("keypool_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    assert!(exprs >= 8, "the dashboard has its panels");
    let exposed = names(&s);
    let missing: Vec<_> = used.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(missing.is_empty(), "the dashboard uses metrics /metrics does not have: {missing:?}");
    for needed in
        ["keypool_requests_total", "keypool_request_duration_seconds_bucket", "keypool_key_remaining_requests"]
    {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }

    // A deleted key's series are gone at the next scrape.
    let deleted = client
        .delete(format!("http://{}/admin/api/keys/{spare}", server.addr))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let spare_id = spare.to_string();
    let after = parse(&get_metrics(&client, on_side, None).await.text().await.unwrap());
    // (Its transitions counter stays: it counts events, among them the removal.)
    let gauge = |x: &&Sample| x.name.starts_with("keypool_key_") && x.name != "keypool_key_transitions_total";
    let left: Vec<_> = after.iter().filter(gauge).filter(|x| x.labels.get("key_id") == Some(&spare_id)).collect();
    assert!(left.is_empty(), "key {spare_id}'s gauges are gone: {left:?}");
    assert_eq!(one(&after, "keypool_key_transitions_total", &[("key_id", &spare_id), ("to", "removed")]), Some(1.0));
    assert!(one(&after, "keypool_key_inflight", &[("key_id", &good_id)]).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_admin_token_metrics_take_the_generated_one() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    Store::connect(&db).await.unwrap().close().await;
    let server = serve(&sim.base_url(), &db, &[]);
    let generated = server.generated_token.clone().unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", server.addr);
    assert_eq!(get_metrics(&client, url.clone(), None).await.status(), 401);
    assert_eq!(get_metrics(&client, url.clone(), Some(ADMIN)).await.status(), 401);
    let resp = get_metrics(&client, url, Some(&generated)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("keypool_build_info{"));
    assert!(server.metrics_addr.is_none(), "no metrics_listen, no second listener");
}
