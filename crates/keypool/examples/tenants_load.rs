//! Closed-loop load spread over many gateway tokens, for bench/tenants.sh
//! (oha sends one Authorization header; this sends request i with token
//! i mod N, so every tenant's counters are touched in turn).
//!
//! `tenants_load URL TOKENS_FILE CONCURRENCY SECS`: keeps CONCURRENCY chat
//! requests in flight against URL for SECS (after a one-second warm-up)
//! and prints one line: `requests_per_sec p50_us p99_us failed`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || anyhow::anyhow!("usage: tenants_load URL TOKENS_FILE CONCURRENCY SECS");
    let url = args.first().ok_or_else(usage)?.clone();
    let tokens: Vec<String> = std::fs::read_to_string(args.get(1).ok_or_else(usage)?)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|t| format!("Bearer {t}"))
        .collect();
    anyhow::ensure!(!tokens.is_empty(), "no tokens in the file");
    let concurrency: usize = args.get(2).ok_or_else(usage)?.parse()?;
    let secs: u64 = args.get(3).ok_or_else(usage)?.parse()?;
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(secs);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, url, tokens, next) = (client.clone(), url.clone(), Arc::clone(&tokens), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut failed = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) % tokens.len();
                let sent = client
                    .post(&url)
                    .header("authorization", &tokens[i])
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await;
                let ok = match sent {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if start >= warm_until {
                    if ok {
                        latencies.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
                    } else {
                        failed += 1;
                    }
                }
            }
            (latencies, failed)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut failed = 0;
    for w in workers {
        let (l, f) = w.await?;
        all.extend(l);
        failed += f;
    }
    all.sort_unstable();
    let pick = |q: f64| all.get(((all.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    println!("{:.0} {} {} {}", all.len() as f64 / secs as f64, pick(0.5), pick(0.99), failed);
    Ok(())
}
