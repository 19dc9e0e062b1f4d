//! TPM-bound goodput benchmark (issue 13, the origin's own case): a pool of
//! keys limited by tokens per minute, offered prompts of 400–6,000
//! characters with `max_tokens` 256–2,048 at more token traffic than the
//! pool can take (counted as the upstream charges it: the prompt's
//! character estimate plus `max_tokens`), through a real keypool over
//! loopback. Reports how many requests succeeded, the upstream 429s per
//! key, and the last answer against the ideal time (total charge ÷ the
//! pool's tokens per second).
//!
//! `cargo run --release --locked -p keypool --example goodput_tpm -- --help`;
//! bench/goodput_tpm.sh runs the documented scenarios.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keypool::config::{Config, PoolConfig};
use keypool::server::{generate_token, hash_token};
use keypool::store::{NewKey, Store};
use keypool_sim::{ChargeRule, LimitMode, SimConfig, SimKey, Simulator};
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Number of simulated keys.
    #[arg(long, default_value_t = 5)]
    keys: u32,
    /// Tokens per minute each key allows upstream.
    #[arg(long, default_value_t = 40_000)]
    tpm: u32,
    /// Offered token traffic as a multiple of the pool's capacity.
    #[arg(long, default_value_t = 1.3)]
    load: f64,
    /// How long traffic is offered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// keypool's pool.max_wait (long enough that the backlog drains).
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// Upstream answer latency.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// How the simulator counts: `window` (rolling 60 s) or `bucket` (token bucket).
    #[arg(long, default_value = "window")]
    sim: String,
    /// How the simulator charges: `sum` (prompt + max_tokens) or `max`.
    #[arg(long, default_value = "sum")]
    charge: String,
    /// `configured`: keys carry --tpm in keypool; `learned`: keypool learns limits from headers only.
    #[arg(long, default_value = "configured")]
    limits: String,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 13)]
    seed: u64,
}

/// Words the prompts are made of: ~5.5 characters a token, so the
/// upstream's character estimate (4 a token) is above the tokenizer's count.
const WORDS: [&str; 16] = [
    "the", "pool", "of", "keys", "serves", "every", "request", "within", "its", "limit", "while", "tokens", "per",
    "minute", "are", "counted",
];

/// A small deterministic generator (SplitMix64): the same mix every run.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn prompt(&mut self, chars: usize) -> String {
        let mut s = String::with_capacity(chars + 16);
        while s.len() < chars {
            s.push_str(WORDS[(self.next() % WORDS.len() as u64) as usize]);
            s.push(' ');
        }
        s.truncate(chars);
        s
    }
}

/// When the last request could be admitted at best: the requests, in the
/// order offered, into one limit the size of the whole pool (a rolling
/// window that frees each charge 60 s after admission, or a bucket that
/// refills continuously), each as soon as it is offered and there is room.
fn ideal_last_answer(offered: &[(f64, f64)], mode: LimitMode, per_s: f64) -> f64 {
    let capacity = per_s * 60.0;
    let mut last = 0.0f64;
    match mode {
        // Azure counts tokens over a rolling minute too.
        LimitMode::RollingWindow | LimitMode::Azure => {
            let mut admitted = std::collections::VecDeque::new();
            let mut used = 0.0;
            for &(at, charge) in offered {
                let mut t = at.max(last);
                while used + charge > capacity {
                    let Some((when, c)) = admitted.pop_front() else { break };
                    t = t.max(when + 60.0);
                    used -= c;
                }
                admitted.push_back((t, charge));
                used += charge;
                last = t;
            }
        }
        LimitMode::TokenBucket => {
            let (mut level, mut then) = (capacity, 0.0f64);
            for &(at, charge) in offered {
                let mut t = at.max(last);
                level = (level + (t - then) * per_s).min(capacity);
                if level < charge {
                    t += (charge - level) / per_s;
                    level = charge;
                }
                level -= charge;
                then = t;
                last = t;
            }
        }
    }
    last
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = match args.sim.as_str() {
        "window" => LimitMode::RollingWindow,
        "bucket" => LimitMode::TokenBucket,
        other => anyhow::bail!("--sim must be window or bucket, not {other}"),
    };
    let charge = match args.charge.as_str() {
        "sum" => ChargeRule::Sum,
        "max" => ChargeRule::Max,
        other => anyhow::bail!("--charge must be sum or max, not {other}"),
    };
    let configured = match args.limits.as_str() {
        "configured" => true,
        "learned" => false,
        other => anyhow::bail!("--limits must be configured or learned, not {other}"),
    };
    let secrets: Vec<String> =
        (0..args.keys).map(|i| format!("sk-goodput-tpm-{i:03}-{}", &generate_token()[3..15])).collect();
    let sim = Simulator::start(SimConfig {
        keys: secrets.iter().map(|k| SimKey::new(k.clone()).tpm(args.tpm).mode(mode)).collect(),
        latency: args.latency,
        charge,
        ..SimConfig::default()
    })
    .await?;
    let dir = std::env::temp_dir().join(format!("keypool-goodput-tpm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        upstream: sim.base_url(),
        database_url: format!("sqlite://{}", dir.join("k.db").display()),
        pool: PoolConfig { max_wait: args.max_wait, max_queue: 100_000, ..PoolConfig::default() },
        log: "warn".into(),
        ..Config::default()
    };
    let store = Store::connect(&config.database_url).await?;
    for s in &secrets {
        let tpm = configured.then_some(args.tpm);
        store.add_key(&NewKey { secret: s.clone(), tpm, ..NewKey::default() }).await?;
    }
    let token = generate_token();
    store.create_token("bench", &hash_token(&token), "kp-bench").await?;
    let gateway = keypool::app::start(&config).await?;
    let url = format!("{}/chat/completions", gateway.base_url());
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;

    // Offered: the pool's tokens per second × load, each request's share
    // counted as the simulator charges it.
    let capacity_per_s = f64::from(args.keys) * f64::from(args.tpm) / 60.0;
    let offered_per_s = capacity_per_s * args.load;
    let mut mix = Mix(args.seed);
    let results = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut at = Duration::ZERO;
    let mut tasks = Vec::new();
    let mut total_charge = 0u64;
    let mut offered = Vec::new();
    while at < args.duration {
        let chars = mix.between(400, 6_000) as usize;
        let max_tokens = mix.between(256, 2_048);
        let prompt = mix.prompt(chars);
        // The simulator's charge: a token per 4 characters, 3 of framing, the completion budget.
        let upstream_charge = match charge {
            ChargeRule::Sum => (chars as u64).div_ceil(4) + 3 + max_tokens,
            ChargeRule::Max => ((chars as u64).div_ceil(4) + 3).max(max_tokens),
        };
        total_charge += upstream_charge;
        tokio::time::sleep_until(start + at).await;
        offered.push((at.as_secs_f64(), upstream_charge as f64));
        at += Duration::from_secs_f64(upstream_charge as f64 / offered_per_s);
        let (client, url, token, results) = (client.clone(), url.clone(), token.clone(), Arc::clone(&results));
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "model": "gpt-4o-mini", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": prompt}]
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
    let total = tasks.len();
    for t in tasks {
        t.await?;
    }
    let results = results.lock().await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let last = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let per_key_429: Vec<u64> = secrets.iter().map(|s| sim.key_stats(s).rate_limited).collect();
    let ideal = ideal_last_answer(&offered, mode, capacity_per_s) + args.latency.as_secs_f64();
    println!(
        "| {} | {} | {} | {total} | {ok} ({:.1}%) | {} ({per_key_429:?}) | {:.1} s | {:.1} s ({:.2}×) |",
        args.sim,
        args.charge,
        args.limits,
        100.0 * ok as f64 / total.max(1) as f64,
        per_key_429.iter().sum::<u64>(),
        last.as_secs_f64(),
        ideal,
        last.as_secs_f64() / ideal,
    );
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (s, _) in results.iter() {
        *statuses.entry(*s).or_default() += 1;
    }
    eprintln!("statuses {statuses:?}; offered {total_charge} tokens ({:.0}/s)", offered_per_s);
    gateway.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
