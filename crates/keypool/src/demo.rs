//! `keypool demo`: the simulator with a few rate-limited keys, a gateway in
//! front of it, a burst of traffic, and a live per-key table, so a newcomer
//! sees keypool spread requests and hold every key inside its limit without
//! owning a real key.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use keypool_sim::{LimitMode, SimConfig, SimKey, Simulator};

use crate::config::Config;
use crate::server::{generate_token, hash_token};
use crate::store::{NewKey, Store};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of simulated keys.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub keys: u32,
    /// Requests per minute each simulated key allows.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub rpm: u32,
    /// Requests per second sent through the gateway.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// How long the demo runs: traffic is sent for this long, and requests still
    /// waiting for a key then are let go.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Longest a request waits in line for a key with room.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    held: AtomicU64,
    other: AtomicU64,
    /// Still waiting for a key when the demo's time was up.
    cut: AtomicU64,
}

/// How long after `--duration` answers already on their way are collected.
const GRACE: Duration = Duration::from_secs(1);

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        anyhow::bail!("--rate must be between 0 and 1000 requests per second");
    }
    let secrets: Vec<String> =
        (1..=args.keys).map(|i| format!("sk-demo-{i:02}-{}", &generate_token()[3..19])).collect();
    let sim = Simulator::start(SimConfig {
        keys: secrets.iter().map(|k| SimKey::new(k.clone()).rpm(args.rpm).mode(LimitMode::RollingWindow)).collect(),
        latency: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await?;
    let db = std::env::temp_dir().join(format!("keypool-demo-{}.db", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        upstream: sim.base_url(),
        database_url: format!("sqlite://{}", db.display()),
        sync_interval: Duration::from_millis(500),
        pool: crate::config::PoolConfig { max_wait: args.max_wait, ..Default::default() },
        ..Config::default()
    };
    let store = Store::connect(&config.database_url).await?;
    for (i, secret) in secrets.iter().enumerate() {
        let label = Some(format!("demo-{}", i + 1));
        store.add_key(&NewKey { secret: secret.clone(), label, rpm: Some(args.rpm), ..NewKey::default() }).await?;
    }
    let token = generate_token();
    store.create_token("demo", &hash_token(&token), "kp-demo").await?;
    let gateway = crate::app::start(&config).await?;
    println!(
        "keypool demo: {} simulated keys at {} requests/min each, {:.1} requests/s for {:?} through {}",
        args.keys,
        args.rpm,
        args.rate,
        args.duration,
        gateway.base_url()
    );

    let tally = Arc::new(Tally::default());
    let cut = tokio_util::sync::CancellationToken::new();
    let end = tokio::time::Instant::now() + args.duration;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", gateway.base_url());
    let traffic = {
        let tally = Arc::clone(&tally);
        let (rate, cut) = (args.rate, cut.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            loop {
                tick.tick().await;
                if tokio::time::Instant::now() >= end {
                    break;
                }
                let (client, url, token, tally) = (client.clone(), url.clone(), token.clone(), Arc::clone(&tally));
                let cut = cut.clone();
                tally.sent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let body =
                        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]});
                    let asked = client.post(&url).bearer_auth(&token).json(&body).send();
                    let counter = tokio::select! {
                        answer = asked => match answer {
                            Ok(r) if r.status().is_success() => &tally.ok,
                            Ok(r) if r.status() == 429 => &tally.held,
                            _ => &tally.other,
                        },
                        _ = cut.cancelled() => &tally.cut,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    };
    let tty = std::io::stdout().is_terminal();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        draw(&gateway, &sim, &secrets, &tally, tty)?;
        if traffic.is_finished() && tally.sent.load(Ordering::Relaxed) == tally_done(&tally) {
            break;
        }
        // The demo runs for the time it says: requests still in line then are let go.
        if tokio::time::Instant::now() >= end + GRACE {
            cut.cancel();
            while tally.sent.load(Ordering::Relaxed) > tally_done(&tally) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
    }
    draw(&gateway, &sim, &secrets, &tally, false)?;
    let upstream_429: u64 = sim.stats().keys.values().map(|k| k.rate_limited).sum();
    println!(
        "\n{} requests answered by keys inside their limits; {} refused after waiting max_wait; \
         {} still in line when the time was up; the simulated upstream sent {} rate-limit errors.",
        tally.ok.load(Ordering::Relaxed),
        tally.held.load(Ordering::Relaxed),
        tally.cut.load(Ordering::Relaxed),
        upstream_429
    );
    gateway.shutdown().await?;
    sim.shutdown();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    Ok(())
}

fn tally_done(t: &Tally) -> u64 {
    [&t.ok, &t.held, &t.other, &t.cut].iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

fn draw(
    gateway: &crate::app::Running,
    sim: &Simulator,
    secrets: &[String],
    tally: &Tally,
    clear: bool,
) -> anyhow::Result<()> {
    let mut out = String::new();
    if clear {
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!(
        "{:<8} {:<8} {:>8} {:>9} {:>12} {:>10} {:>14}\n",
        "KEY", "STATUS", "SERVED", "IN FLIGHT", "LEFT/MINUTE", "RESET IN", "UPSTREAM 429s"
    ));
    // Keys were added in the order of `secrets`, so ids follow it.
    for (view, secret) in gateway.scheduler().snapshot().iter().zip(secrets) {
        out.push_str(&format!(
            "{:<8} {:<8} {:>8} {:>9} {:>12} {:>10} {:>14}\n",
            view.label.as_deref().unwrap_or("-"),
            view.status,
            view.successes,
            view.inflight,
            view.remaining_requests.map_or("∞".into(), |n| n.to_string()),
            view.reset_in.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
            sim.key_stats(secret).rate_limited,
        ));
    }
    out.push_str(&format!(
        "sent {}  answered {}  waiting in line {}  refused after max_wait {}  other errors {}\n",
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        gateway.scheduler().queue_len(),
        tally.held.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed)
    ));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
