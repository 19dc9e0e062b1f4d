//! Goodput benchmark: a pool of rate-limited simulated keys offered more
//! traffic than it can serve, through a real keypool over loopback. Reports
//! how many requests succeeded, how many 429s keypool provoked upstream, how
//! evenly keys were used, and how close the pool ran to its capacity.
//!
//! `cargo run --release --locked -p keypool --example goodput -- --help`;
//! bench/goodput.sh runs the documented scenarios.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keypool::config::{Config, PoolConfig};
use keypool::server::{generate_token, hash_token};
use keypool::store::{NewKey, Store};
use keypool_sim::{LimitMode, SimConfig, SimKey, Simulator};
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Number of simulated keys.
    #[arg(long, default_value_t = 10)]
    keys: u32,
    /// Requests per minute each key allows upstream.
    #[arg(long, default_value_t = 30)]
    rpm: u32,
    /// Requests per second offered.
    #[arg(long, default_value_t = 8.0)]
    rate: f64,
    /// How long traffic is offered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// keypool's pool.max_wait.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// Upstream answer latency.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// How the simulator counts: `window` (rolling 60 s), `bucket` (token
    /// bucket), or `azure` (Azure OpenAI's shape: deployment paths, `api-key`,
    /// only `remaining` headers, requests counted over 10 s spans; keypool
    /// gets a `kind = "azure"` upstream).
    #[arg(long, default_value = "window")]
    sim: String,
    /// `configured`: keys carry --rpm in keypool; `learned`: keypool learns limits from headers only.
    #[arg(long, default_value = "configured")]
    limits: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = match args.sim.as_str() {
        "window" => LimitMode::RollingWindow,
        "bucket" => LimitMode::TokenBucket,
        "azure" => LimitMode::Azure,
        other => anyhow::bail!("--sim must be window, bucket or azure, not {other}"),
    };
    let configured = match args.limits.as_str() {
        "configured" => true,
        "learned" => false,
        other => anyhow::bail!("--limits must be configured or learned, not {other}"),
    };
    let secrets: Vec<String> =
        (0..args.keys).map(|i| format!("sk-goodput-{i:03}-{}", &generate_token()[3..15])).collect();
    let sim = Simulator::start(SimConfig {
        keys: secrets.iter().map(|k| SimKey::new(k.clone()).rpm(args.rpm).mode(mode)).collect(),
        latency: args.latency,
        azure: mode == LimitMode::Azure,
        ..SimConfig::default()
    })
    .await?;
    let dir = std::env::temp_dir().join(format!("keypool-goodput-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        upstream: sim.base_url(),
        database_url: format!("sqlite://{}", dir.join("k.db").display()),
        pool: PoolConfig { max_wait: args.max_wait, max_queue: 100_000, ..PoolConfig::default() },
        log: "warn".into(),
        ..Config::default()
    };
    if mode == LimitMode::Azure {
        config.upstream = Config::default().upstream;
        config.upstreams = vec![serde_json::from_value(serde_json::json!({
            "name": "azure", "kind": "azure", "base_url": sim.base_url(), "api_version": "2024-10-21",
            "deployments": {"gpt-4o-mini": "bench-mini"},
        }))?];
    }
    let store = Store::connect(&config.database_url).await?;
    for s in &secrets {
        let rpm = configured.then_some(args.rpm);
        store.add_key(&NewKey { secret: s.clone(), rpm, ..NewKey::default() }).await?;
    }
    let token = generate_token();
    store.create_token("bench", &hash_token(&token), "kp-bench").await?;
    let gateway = keypool::app::start(&config).await?;
    let url = format!("{}/chat/completions", gateway.base_url());
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;

    let total = (args.rate * args.duration.as_secs_f64()).round() as usize;
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let (client, url, token, results) = (client.clone(), url.clone(), token.clone(), Arc::clone(&results));
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "model": "gpt-4o-mini", "max_tokens": 16,
                "messages": [{"role": "user", "content": format!("request {i}")}]
            });
            let status = match client.post(&url).bearer_auth(&token).json(&body).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            results.lock().await.push((status, start.elapsed()));
        }));
    }
    for t in tasks {
        t.await?;
    }
    let results = results.lock().await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let last = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let stats = sim.stats();
    let upstream_429: u64 = stats.keys.values().map(|k| k.rate_limited).sum();
    let most_429 = stats.keys.values().map(|k| k.rate_limited).max().unwrap_or(0);
    let served: Vec<u64> = secrets.iter().map(|s| sim.key_stats(s).ok).collect();
    let (max, min) = (served.iter().max().copied().unwrap_or(0), served.iter().min().copied().unwrap_or(0));
    let capacity_per_s = f64::from(args.keys * args.rpm) / 60.0;
    let ideal = total as f64 / capacity_per_s;
    let goodput = ok as f64 / last.as_secs_f64();
    println!(
        "| {} | {} | {total} | {ok} ({:.1}%) | {upstream_429} (≤ {most_429}/key) | {max}/{min} = {:.2} | {:.1} s | {:.1} s ({:.2}×) | {:.2}/s ({:.0}% of {:.1}/s) |",
        args.sim,
        args.limits,
        100.0 * ok as f64 / total as f64,
        max as f64 / min.max(1) as f64,
        last.as_secs_f64(),
        ideal,
        last.as_secs_f64() / ideal,
        goodput,
        100.0 * goodput / capacity_per_s,
        capacity_per_s,
    );
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (s, _) in results.iter() {
        *statuses.entry(*s).or_default() += 1;
    }
    eprintln!("statuses {statuses:?}; served per key {served:?}; by deployment {:?}", stats.deployments);
    gateway.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
