//! Many upstreams behind one endpoint (issue 16): two simulators as two
//! upstreams; routing by exact model and glob, aliases, weights, fallback
//! to the next group (saturated, failing, without the model), the union
//! model list, relays with path prefixes, and outbound proxies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{chat, form, proxies};
use keypool::app::Running;
use keypool::config::{Config, UpstreamConfig};
use keypool::server::{generate_token, hash_token};
use keypool::store::{NewKey, Store};
use keypool_sim::{Faults, SimConfig, SimKey, Simulator};

/// Two simulators and a gateway whose upstreams the test describes.
struct Two {
    gateway: Running,
    a: Simulator,
    b: Simulator,
    token: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// An `[[upstreams]]` entry as the config file would give it.
fn upstream(fields: serde_json::Value) -> UpstreamConfig {
    serde_json::from_value(fields).expect("a valid upstream entry")
}

fn key_on(secret: &str, upstream: Option<&str>, rpm: Option<u32>) -> NewKey {
    NewKey { secret: secret.into(), rpm, upstream: upstream.map(str::to_owned), ..NewKey::default() }
}

fn sim_keys(keys: &[(&str, Option<u32>)]) -> SimConfig {
    SimConfig {
        keys: keys.iter().map(|(k, rpm)| SimKey { rpm: *rpm, ..SimKey::new(*k) }).collect(),
        ..SimConfig::default()
    }
}

/// Starts both simulators, then a gateway over them: `tweak` gets the
/// config and the two base URLs and sets `upstreams`.
async fn spawn_two(a: SimConfig, b: SimConfig, keys: Vec<NewKey>, tweak: impl FnOnce(&mut Config, &str, &str)) -> Two {
    let a = Simulator::start(a).await.unwrap();
    let b = Simulator::start(b).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("keypool.db").display()),
        sync_interval: std::time::Duration::from_millis(100),
        ..Config::default()
    };
    tweak(&mut config, &a.base_url(), &b.base_url());
    config.validate().expect("the test's config is valid");
    let store = Store::connect(&config.database_url).await.unwrap();
    for k in &keys {
        store.add_key(k).await.unwrap();
    }
    let token = generate_token();
    store.create_token("test", &hash_token(&token), "kp-test").await.unwrap();
    let gateway = keypool::app::start(&config).await.expect("gateway starts");
    Two { gateway, a, b, token, client: reqwest::Client::new(), _dir: dir }
}

impl Two {
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}/{path}", self.gateway.base_url())).bearer_auth(&self.token)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}/{path}", self.gateway.base_url())).bearer_auth(&self.token)
    }

    async fn chat_as(&self, model: &str) -> reqwest::Response {
        let mut body = chat("hello");
        body["model"] = serde_json::json!(model);
        self.post("chat/completions").json(&body).send().await.unwrap()
    }
}

#[tokio::test]
async fn models_go_to_the_upstreams_whose_globs_match_and_aliases_rewrite_the_model() {
    let app = spawn_two(
        sim_keys(&[("sk-a-aaaaaaaaaaaaaaaa", None)]),
        SimConfig {
            models: vec!["deepseek-chat".into(), "deepseek-reasoner".into()],
            ..sim_keys(&[("sk-b-bbbbbbbbbbbbbbbb", None)])
        },
        vec![key_on("sk-a-aaaaaaaaaaaaaaaa", None, None), key_on("sk-b-bbbbbbbbbbbbbbbb", Some("deepseek"), None)],
        |c, a, b| {
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "openai", "base_url": a, "models": ["gpt-4o*", "o3"]})),
                upstream(serde_json::json!({
                    "name": "deepseek", "kind": "openai_compatible", "provider": "deepseek",
                    "base_url": b, "models": ["deepseek-*"],
                })),
            ];
            c.model_aliases =
                toml::from_str(r#""gpt-4o-cheap" = { upstream = "deepseek", model = "deepseek-chat" }"#).unwrap();
        },
    )
    .await;
    // A glob, an exact name, the other upstream's glob.
    for (model, on_a, on_b) in [("gpt-4o-mini", 1, 0), ("o3", 2, 0), ("deepseek-reasoner", 2, 1)] {
        let resp = app.chat_as(model).await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(resp.headers()["x-keypool-key"], if on_b == 1 { "2" } else { "1" }, "{model}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["model"], model, "the model is passed on unchanged");
        assert_eq!(app.a.key_stats("sk-a-aaaaaaaaaaaaaaaa").ok, on_a, "{model}");
        assert_eq!(app.b.key_stats("sk-b-bbbbbbbbbbbbbbbb").ok, on_b, "{model}");
    }
    // The alias: sent to its upstream with its target model in the body.
    let resp = app.chat_as("gpt-4o-cheap").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "deepseek-chat", "the upstream was asked for the target model");
    assert_eq!(app.b.key_stats("sk-b-bbbbbbbbbbbbbbbb").ok, 2);
    // A model no upstream lists: the caller's error, in OpenAI's shape, naming the field.
    let resp = app.chat_as("claude-3-opus").await;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(app.a.stats().total_requests + app.b.stats().total_requests, 4, "nothing went upstream for it");
}

#[tokio::test]
async fn equal_priorities_split_1000_requests_exactly_by_weight() {
    let open = SimConfig { accept_any_key: true, ..SimConfig::default() };
    let app = spawn_two(
        open.clone(),
        open,
        vec![key_on("sk-w-aaaaaaaaaaaaaaaa", None, None), key_on("sk-w-bbbbbbbbbbbbbbbb", Some("b"), None)],
        |c, a, b| {
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "a", "base_url": a, "weight": 3})),
                upstream(serde_json::json!({"name": "b", "base_url": b, "weight": 1})),
            ];
        },
    )
    .await;
    for i in 0..1000 {
        let resp = app.chat_as("gpt-4o-mini").await;
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(app.a.key_stats("sk-w-aaaaaaaaaaaaaaaa").ok, 750);
    assert_eq!(app.b.key_stats("sk-w-bbbbbbbbbbbbbbbb").ok, 250);
}

#[tokio::test]
async fn a_saturated_first_group_hands_over_at_once() {
    // The first group's one key allows 1 request a minute: waiting for it
    // would pass max_wait (2 s), so the second group serves without a wait.
    let app = spawn_two(
        sim_keys(&[("sk-s-aaaaaaaaaaaaaaaa", Some(1))]),
        sim_keys(&[("sk-s-bbbbbbbbbbbbbbbb", None)]),
        vec![key_on("sk-s-aaaaaaaaaaaaaaaa", None, Some(1)), key_on("sk-s-bbbbbbbbbbbbbbbb", Some("second"), None)],
        |c, a, b| {
            c.pool.max_wait = std::time::Duration::from_secs(2);
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "first", "base_url": a, "priority": 10})),
                upstream(serde_json::json!({"name": "second", "base_url": b})),
            ];
        },
    )
    .await;
    let first = app.chat_as("gpt-4o-mini").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-keypool-key"], "1", "the higher priority serves while it has room");
    let second = app.chat_as("gpt-4o-mini").await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-keypool-key"], "2");
    assert_eq!(second.headers()["x-keypool-attempts"], "1");
    let waited: f64 = second.headers()["x-keypool-queue-ms"].to_str().unwrap().parse().unwrap();
    assert!(waited < 100.0, "served without waiting for the full group: {waited} ms");
    assert_eq!(app.a.key_stats("sk-s-aaaaaaaaaaaaaaaa").rate_limited, 0, "the full key was not tried");
}

#[tokio::test]
async fn when_no_group_has_room_the_request_waits_for_the_first_that_frees() {
    // Both groups' keys are at their limit; the second's frees first (its
    // window is shorter: it was used first), and the waiting request takes it.
    let app = spawn_two(
        sim_keys(&[("sk-q-aaaaaaaaaaaaaaaa", None)]),
        sim_keys(&[("sk-q-bbbbbbbbbbbbbbbb", None)]),
        vec![key_on("sk-q-aaaaaaaaaaaaaaaa", None, None), key_on("sk-q-bbbbbbbbbbbbbbbb", Some("second"), None)],
        |c, a, b| {
            c.limits.max_inflight = Some(1);
            c.pool.max_wait = std::time::Duration::from_secs(20);
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "first", "base_url": a, "priority": 10})),
                upstream(serde_json::json!({"name": "second", "base_url": b})),
            ];
        },
    )
    .await;
    app.a.set_latency(std::time::Duration::from_millis(3000));
    app.b.set_latency(std::time::Duration::from_millis(600));
    // Each request is sent once the one before holds its key (observed, not slept for).
    let pools = app.gateway.scheduler();
    let in_flight = |n: u64| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pools.pool_figures().in_flight < n {
            assert!(std::time::Instant::now() < deadline, "never {n} in flight");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let (one, two, three) = tokio::join!(
        app.chat_as("gpt-4o-mini"),
        async {
            in_flight(1).await;
            app.chat_as("gpt-4o-mini").await
        },
        async {
            in_flight(2).await;
            app.chat_as("gpt-4o-mini").await
        }
    );
    assert_eq!([one.status(), two.status(), three.status()], [200, 200, 200]);
    assert_eq!(one.headers()["x-keypool-key"], "1");
    assert_eq!(two.headers()["x-keypool-key"], "2", "the first group was full: the second served at once");
    assert_eq!(three.headers()["x-keypool-key"], "2", "the second group freed first");
    let waited: f64 = three.headers()["x-keypool-queue-ms"].to_str().unwrap().parse().unwrap();
    assert!(waited > 50.0, "the third request waited in line: {waited} ms");
}

#[tokio::test]
async fn a_failing_first_group_hands_over_and_its_keys_are_not_blamed() {
    let app = spawn_two(
        SimConfig {
            faults: Faults { error_500_rate: 1.0, ..Faults::default() },
            ..sim_keys(&[("sk-f-aaaaaaaaaaaaaaaa", None)])
        },
        sim_keys(&[("sk-f-bbbbbbbbbbbbbbbb", None)]),
        vec![key_on("sk-f-aaaaaaaaaaaaaaaa", None, None), key_on("sk-f-bbbbbbbbbbbbbbbb", Some("second"), None)],
        |c, a, b| {
            c.retry.backoff_base = std::time::Duration::from_millis(1);
            c.retry.backoff_cap = std::time::Duration::from_millis(5);
            c.health.upstream_failures = 3;
            // No probe closes the breaker during the test.
            c.health.upstream_probe = std::time::Duration::from_secs(600);
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "first", "base_url": a, "priority": 10})),
                upstream(serde_json::json!({"name": "second", "base_url": b})),
            ];
        },
    )
    .await;
    for i in 0..6 {
        let resp = app.chat_as("gpt-4o-mini").await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.headers()["x-keypool-key"], "2");
    }
    // Each try on the failing group counted toward its breaker; once open,
    // requests go straight to the second group.
    let failed = app.a.key_stats("sk-f-aaaaaaaaaaaaaaaa").server_errors;
    assert_eq!(failed, 3, "the open breaker kept requests off the failing group");
    let a_view = app.gateway.scheduler().snapshot().into_iter().find(|v| v.id == 1).unwrap();
    assert_eq!(a_view.status, "active", "a failing upstream is not its key's fault");
}

#[tokio::test]
async fn an_upstream_without_the_model_hands_over_and_is_passed_by_next_time() {
    let app = spawn_two(
        SimConfig { models: vec!["gpt-4o".into()], ..sim_keys(&[("sk-m-aaaaaaaaaaaaaaaa", None)]) },
        sim_keys(&[("sk-m-bbbbbbbbbbbbbbbb", None)]),
        vec![key_on("sk-m-aaaaaaaaaaaaaaaa", None, None), key_on("sk-m-bbbbbbbbbbbbbbbb", Some("second"), None)],
        |c, a, b| {
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "first", "base_url": a, "priority": 10})),
                upstream(serde_json::json!({"name": "second", "base_url": b})),
            ];
        },
    )
    .await;
    let resp = app.chat_as("gpt-4o-mini").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keypool-key"], "2");
    assert_eq!(resp.headers()["x-keypool-attempts"], "2");
    assert_eq!(app.a.key_stats("sk-m-aaaaaaaaaaaaaaaa").model_not_found, 1);
    // Known now: the first group is passed by for that model...
    let resp = app.chat_as("gpt-4o-mini").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keypool-attempts"], "1");
    assert_eq!(app.a.key_stats("sk-m-aaaaaaaaaaaaaaaa").model_not_found, 1);
    // ...and still serves the models it has.
    let resp = app.chat_as("gpt-4o").await;
    assert_eq!(resp.headers()["x-keypool-key"], "1");
}

#[tokio::test]
async fn the_model_list_is_the_union_filtered_by_each_upstreams_globs() {
    let app = spawn_two(
        sim_keys(&[("sk-l-aaaaaaaaaaaaaaaa", None)]),
        SimConfig {
            models: vec!["deepseek-chat".into(), "deepseek-reasoner".into(), "other-model".into()],
            ..sim_keys(&[("sk-l-bbbbbbbbbbbbbbbb", None)])
        },
        vec![key_on("sk-l-aaaaaaaaaaaaaaaa", None, None), key_on("sk-l-bbbbbbbbbbbbbbbb", Some("deepseek"), None)],
        |c, a, b| {
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "openai", "base_url": a, "models": ["gpt-4o*", "o3-pro"]})),
                upstream(
                    serde_json::json!({"name": "deepseek", "base_url": b, "models": ["deepseek-*", "gpt-4o-mini"]}),
                ),
            ];
            c.model_aliases =
                toml::from_str(r#""smart" = { upstream = "deepseek", model = "deepseek-reasoner" }"#).unwrap();
        },
    )
    .await;
    let resp = app.get("models").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    let mut ids: Vec<&str> = body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    // The simulator's own list is gpt-4o-mini, gpt-4o, gpt-4.1-mini, …: only gpt-4o* pass.
    assert_eq!(ids, ["deepseek-chat", "deepseek-reasoner", "gpt-4o", "gpt-4o-mini", "o3-pro", "smart"]);
    // Cached: a second listing asks no upstream again.
    let asked = app.a.stats().total_requests + app.b.stats().total_requests;
    assert_eq!(app.get("models").send().await.unwrap().status(), 200);
    assert_eq!(app.a.stats().total_requests + app.b.stats().total_requests, asked);
}

#[tokio::test]
async fn a_relay_prefix_works_for_every_path_per_upstream_streaming_included() {
    let relay = SimConfig { path_prefix: "/cloud-fn/relay/v1".into(), ..sim_keys(&[("sk-r-bbbbbbbbbbbbbbbb", None)]) };
    let app = spawn_two(
        sim_keys(&[("sk-r-aaaaaaaaaaaaaaaa", None)]),
        relay,
        vec![key_on("sk-r-aaaaaaaaaaaaaaaa", Some("direct"), None), key_on("sk-r-bbbbbbbbbbbbbbbb", None, None)],
        |c, a, b| {
            c.upstreams = vec![
                // The relay is the default upstream: requests naming no model go there.
                upstream(serde_json::json!({
                    "name": "relay", "base_url": b, "models": ["gpt-4o*", "text-embedding-*"],
                    "headers": {"X-Relay-Token": "relay-secret-1"},
                })),
                upstream(serde_json::json!({"name": "direct", "base_url": a, "models": ["o3*"]})),
            ];
        },
    )
    .await;
    assert!(app.b.base_url().ends_with("/cloud-fn/relay/v1"));
    // Streaming chat.
    let mut body = chat("stream please");
    body["stream"] = serde_json::json!(true);
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    // JSON endpoints, a path with an id, and any other path (echoed by the relay).
    let resp = app
        .post("embeddings")
        .json(&serde_json::json!({"model": "text-embedding-3-small", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .post("responses")
        .json(&serde_json::json!({"model": "gpt-4o-mini", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("response.completed"));
    let resp = app.get("models/gpt-4o").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app.post("echo/files/file-123/content?purpose=x").body("abc").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/cloud-fn/relay/v1/echo/files/file-123/content");
    assert_eq!(echo["query"], "purpose=x");
    assert_eq!(echo["headers"]["x-relay-token"], "relay-secret-1", "the upstream's own headers go with it");
    assert_eq!(echo["headers"]["authorization"], "Bearer sk-r-bbbbbbbbbbbbbbbb");
    assert_eq!(app.b.key_stats("sk-r-bbbbbbbbbbbbbbbb").ok, 5);
    // The other upstream has no prefix and no relay token.
    let resp = app.chat_as("o3").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.a.key_stats("sk-r-aaaaaaaaaaaaaaaa").ok, 1);
    let resp = app.post("echo/plain").json(&serde_json::json!({"model": "o3-mini"})).send().await.unwrap();
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/echo/plain", "{echo}");
    assert!(echo["headers"].get("x-relay-token").is_none(), "the relay's token stays on the relay: {echo}");
}

/// Both kinds of outbound proxy, each started here on loopback: an HTTP
/// CONNECT proxy in front of an HTTPS upstream (a TLS front before the
/// simulator, trusted through `ca_file`), and SOCKS5 with local and with
/// remote name resolution (`socks5h://`), streaming included.
#[tokio::test]
async fn outbound_connect_and_socks5_proxies_carry_each_upstreams_requests() {
    let connect = proxies::connect_proxy().await;
    let socks = proxies::socks5_proxy().await;
    let socks_h = proxies::socks5_proxy().await;
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ca.pem");
    let a = Simulator::start(sim_keys(&[("sk-p-aaaaaaaaaaaaaaaa", None)])).await.unwrap();
    let tls = proxies::tls_front(a.addr()).await;
    let (connect_url, socks_url, socks_h_url) =
        (format!("http://{}", connect.addr), format!("socks5://{}", socks.addr), format!("socks5h://{}", socks_h.addr));
    let app = spawn_two(
        sim_keys(&[("sk-p-cccccccccccccccc", None)]),
        sim_keys(&[("sk-p-bbbbbbbbbbbbbbbb", None)]),
        vec![
            key_on("sk-p-aaaaaaaaaaaaaaaa", None, None),
            key_on("sk-p-bbbbbbbbbbbbbbbb", Some("socks"), None),
            key_on("sk-p-bbbbbbbbbbbbbbbb-h", Some("socks-h"), None),
        ],
        |c, _, b| {
            let b_port = b.trim_start_matches("http://127.0.0.1:").trim_end_matches("/v1").to_owned();
            c.upstreams = vec![
                upstream(serde_json::json!({
                    "name": "https", "base_url": format!("https://127.0.0.1:{}/v1", tls.port()),
                    "models": ["gpt-4o*"], "proxy": connect_url, "ca_file": ca,
                })),
                upstream(serde_json::json!({"name": "socks", "base_url": b, "models": ["o3*"], "proxy": socks_url})),
                upstream(serde_json::json!({
                    "name": "socks-h", "base_url": format!("http://localhost:{b_port}/v1"),
                    "models": ["o4*"], "proxy": socks_h_url,
                })),
            ];
        },
    )
    .await;
    app.b.add_key(SimKey::new("sk-p-bbbbbbbbbbbbbbbb-h"));
    for (model, proxy) in [("gpt-4o-mini", &connect), ("o3", &socks), ("o4-mini", &socks_h)] {
        let mut body = chat("through the proxy");
        body["model"] = serde_json::json!(model);
        body["stream"] = serde_json::json!(true);
        let resp = app.post("chat/completions").json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("data: [DONE]") && text.matches("data: ").count() > 3, "{model}: {text}");
        assert!(proxy.tunnels() >= 1, "{model} went through its proxy");
    }
    assert_eq!(a.key_stats("sk-p-aaaaaaaaaaaaaaaa").ok, 1, "the HTTPS upstream behind the CONNECT proxy answered");
    assert_eq!(connect.targets()[0], format!("127.0.0.1:{}", tls.port()));
    assert_eq!(app.b.key_stats("sk-p-bbbbbbbbbbbbbbbb").ok, 1);
    assert_eq!(app.b.key_stats("sk-p-bbbbbbbbbbbbbbbb-h").ok, 1);
    assert!(socks.targets()[0].starts_with("127.0.0.1:"), "socks5:// resolves locally: {:?}", socks.targets());
    assert!(
        socks_h.targets()[0].starts_with("localhost:"),
        "socks5h:// lets the proxy resolve: {:?}",
        socks_h.targets()
    );
}

#[tokio::test]
async fn keys_of_an_upstream_that_is_not_configured_serve_nowhere() {
    let app = spawn_two(
        sim_keys(&[("sk-o-aaaaaaaaaaaaaaaa", None)]),
        sim_keys(&[]),
        vec![key_on("sk-o-aaaaaaaaaaaaaaaa", None, None), key_on("sk-o-zzzzzzzzzzzzzzzz", Some("gone"), None)],
        |c, a, _| c.upstreams = vec![upstream(serde_json::json!({"name": "only", "base_url": a}))],
    )
    .await;
    let ids: Vec<i64> = app.gateway.scheduler().snapshot().iter().map(|v| v.id).collect();
    assert_eq!(ids, [1], "the key of the missing upstream is kept in the store but not scheduled");
    for _ in 0..3 {
        assert_eq!(app.chat_as("gpt-4o-mini").await.status(), 200);
    }
    assert_eq!(app.a.key_stats("sk-o-aaaaaaaaaaaaaaaa").ok, 3);
    // Counted nowhere, so the health check does not offer it either.
    let health: serde_json::Value =
        app.client.get(format!("http://{}/healthz", app.gateway.addr())).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["keys"], 1);
}

#[tokio::test]
async fn a_multipart_upload_is_routed_by_its_model_field() {
    let app = spawn_two(
        sim_keys(&[("sk-a-aaaaaaaaaaaaaaaa", None)]),
        SimConfig { models: vec!["whisper-1".into()], ..sim_keys(&[("sk-b-bbbbbbbbbbbbbbbb", None)]) },
        vec![key_on("sk-a-aaaaaaaaaaaaaaaa", None, None), key_on("sk-b-bbbbbbbbbbbbbbbb", Some("speech"), None)],
        |c, a, b| {
            c.upstreams = vec![
                upstream(serde_json::json!({"name": "openai", "base_url": a, "models": ["gpt-*"]})),
                upstream(serde_json::json!({"name": "speech", "base_url": b, "models": ["whisper-*"]})),
            ];
        },
    )
    .await;
    let audio = vec![0x5a_u8; 200 * 1024];
    // The model before the file (the Python SDK's order), and after a
    // file small enough for the model to fall within the first 64 KiB.
    let forms = [
        form(&[("model", b"whisper-1"), ("file", &audio)]),
        form(&[("file", &audio[..40 * 1024]), ("model", b"whisper-1")]),
    ];
    for (i, (content_type, body)) in forms.into_iter().enumerate() {
        let size = body.len();
        let resp =
            app.post("audio/transcriptions").header("content-type", content_type).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "form {i}");
        let text: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(text["text"], format!("heard by whisper-1: {size} bytes"), "the form arrived whole");
        assert_eq!(app.b.key_stats("sk-b-bbbbbbbbbbbbbbbb").ok, i as u64 + 1, "form {i} went to the speech upstream");
    }
    let served_by_b = app.b.key_stats("sk-b-bbbbbbbbbbbbbbbb").ok;
    assert_eq!(app.a.key_stats("sk-a-aaaaaaaaaaaaaaaa").requests, 0);
    // After a larger file the model is past what is read: the default upstream serves it.
    let (content_type, body) = form(&[("file", &audio), ("model", b"whisper-1")]);
    let resp = app.post("audio/transcriptions").header("content-type", content_type).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.a.key_stats("sk-a-aaaaaaaaaaaaaaaa").ok, 1, "routed as if it named no model");
    // Sent a few bytes at a time (chunked, no length): found all the same.
    let (content_type, body) = form(&[("model", b"whisper-1"), ("file", &audio[..8 * 1024])]);
    let size = body.len();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .post("audio/transcriptions")
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(text["text"], format!("heard by whisper-1: {size} bytes"));
    assert_eq!(app.b.key_stats("sk-b-bbbbbbbbbbbbbbbb").ok, served_by_b + 1, "to the speech upstream");
    // A model no upstream serves is the caller's 404, as for JSON bodies.
    let (content_type, body) = form(&[("model", b"tts-9"), ("file", b"x")]);
    let resp = app.post("audio/transcriptions").header("content-type", content_type).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(common::error_code(resp).await, "model_not_found");
}
