//! Builds a SQLite database for bench/dashboard.mjs: 1,000 keys, 100
//! gateway tokens and N request records (default 1,000,000) spread over the
//! last 7 days up to now, written through the store's own batch write (the
//! record writer's: records, totals and rollups in one transaction per
//! batch), so the rollups the dashboard reads match the log.
//!
//! `cargo run -p keypool --example dashboard_db --release -- PATH [N]`

use std::time::Instant;

use keypool::records::rollup::{Buckets, Sums};
use keypool::records::{Attempt, Counted, RequestRecord};
use keypool::store::{now_unix_ms, NewKey, Store};
use rand::{Rng, SeedableRng};

const KEYS: i64 = 1_000;
const TOKENS: i64 = 100;
const DAYS: i64 = 7;

fn record(i: u64, n: u64, start_ms: i64, rng: &mut rand::rngs::StdRng) -> RequestRecord {
    let started_at = start_ms + (i as i128 * (DAYS * 86_400_000) as i128 / n as i128) as i64;
    let key = rng.random_range(1..=KEYS);
    let (status, error, counted) = match rng.random_range(0..100u32) {
        0..=94 => (200, None, Counted::Success),
        95..=97 => (429, Some("rate_limited"), Counted::Failure),
        98 => (500, Some("server_error"), Counted::Failure),
        _ => (400, Some("caller_error"), Counted::Neither),
    };
    let duration_us = rng.random_range(100_000..3_000_000);
    RequestRecord {
        request_id: format!("req_{i:032x}"),
        started_at,
        token_id: Some(rng.random_range(1..=TOKENS)),
        client_addr: Some("10.1.2.3".into()),
        user_agent: Some("OpenAI/Python 1.99.0".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some(format!("gpt-4o-mini-{}", rng.random_range(0..20))),
        stream: i.is_multiple_of(2),
        status,
        error_type: error.map(Into::into),
        key_id: Some(key),
        attempts: vec![Attempt { key_id: key, status, reason: error.unwrap_or("ok").into(), duration_us, counted }],
        queue_wait_us: 12,
        ttfb_us: Some(duration_us / 3),
        duration_us,
        prompt_tokens: Some(812),
        completion_tokens: Some(240),
        cost_micros: Some(266),
        upstream_request_id: Some(format!("req_up_{i:x}")),
        ..RequestRecord::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or_else(|| anyhow::anyhow!("usage: dashboard_db PATH [RECORDS]"))?;
    let n: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    anyhow::ensure!(!std::path::Path::new(path).exists(), "{path} exists: delete it first");
    let store = Store::connect(&format!("sqlite://{path}?mode=rwc")).await?;
    for k in 1..=KEYS {
        let key = NewKey {
            secret: format!("sk-bench-{k:06}-0123456789abcdef"),
            label: Some(format!("key-{k:04}")),
            rpm: Some(500),
            tpm: Some(200_000),
            ..NewKey::default()
        };
        store.add_key(&key).await?;
    }
    for t in 1..=TOKENS {
        store.create_token(&format!("token-{t}"), &format!("hash-{t}"), "kp-b").await?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let buckets = Buckets::new(jiff::tz::TimeZone::get("Asia/Shanghai")?);
    let start_ms = now_unix_ms() - DAYS * 86_400_000;
    let started = Instant::now();
    let batch = 10_000;
    let mut i = 0;
    while i < n {
        let records: Vec<RequestRecord> = (i..(i + batch).min(n)).map(|j| record(j, n, start_ms, &mut rng)).collect();
        store.write_batch(&records, true, &Sums::of(&records, &buckets)).await?;
        i += batch;
        if i % 100_000 == 0 {
            eprintln!("{i} records in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    eprintln!("{path}: {KEYS} keys, {TOKENS} tokens, {n} records over the last {DAYS} days");
    Ok(())
}
