//! Reading a large request log: a page of the log filtered by a time range
//! and one of key, token, model or status, and a day's statistics, on a
//! SQLite database of 10,000,000 records (1,000 keys, 100 tokens, 20
//! models, over 30 days).
//!
//! `cargo bench -p keypool --bench log_at_scale --locked -- [RECORDS]`
//!
//! The database is built once through the store's own batch write (the
//! record writer's: records, totals and rollups in one transaction per
//! batch) and kept at `target/bench-log-RECORDS.db` for the next runs
//! (delete it to build again). Each query runs 30 times at random
//! subjects and days; the median and the slowest are printed. Figures in
//! docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keypool::records::rollup::{Buckets, Dimension, Span, Sums};
use keypool::records::{Attempt, Counted, RequestRecord};
use keypool::store::{LogFilter, NewKey, Store};
use rand::{Rng, SeedableRng};

const KEYS: i64 = 1_000;
const TOKENS: i64 = 100;
const MODELS: u64 = 20;
const DAYS: i64 = 30;
/// 2026-10-01 00:00 UTC, ms.
const START_MS: i64 = 1_790_812_800_000;
const RUNS: usize = 30;

fn record(i: u64, n: u64, rng: &mut rand::rngs::StdRng) -> RequestRecord {
    let span_ms = DAYS * 86_400_000;
    let started_at = START_MS + (i as i128 * span_ms as i128 / n as i128) as i64;
    let key = rng.random_range(1..=KEYS);
    let roll: u32 = rng.random_range(0..100);
    let (status, error, counted) = match roll {
        0..=94 => (200, None, Counted::Success),
        95..=97 => (429, Some("rate_limited"), Counted::Failure),
        98 => (500, Some("server_error"), Counted::Failure),
        _ => (400, Some("caller_error"), Counted::Neither),
    };
    RequestRecord {
        request_id: format!("req_{i:032x}"),
        started_at,
        token_id: Some(rng.random_range(1..=TOKENS)),
        client_addr: Some("10.1.2.3".into()),
        user_agent: Some("OpenAI/Python 1.99.0".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some(format!("gpt-4o-mini-{}", rng.random_range(0..MODELS))),
        stream: i.is_multiple_of(2),
        status,
        error_type: error.map(Into::into),
        key_id: Some(key),
        attempts: vec![Attempt {
            key_id: key,
            status,
            reason: error.unwrap_or("ok").into(),
            duration_us: 900_000,
            counted,
        }],
        queue_wait_us: 12,
        ttfb_us: Some(350_000),
        duration_us: rng.random_range(100_000..3_000_000),
        prompt_tokens: Some(812),
        completion_tokens: Some(240),
        cost_micros: Some(266),
        upstream_request_id: Some(format!("req_up_{i:x}")),
        ..RequestRecord::default()
    }
}

async fn build(store: &Store, n: u64) {
    for k in 1..=KEYS {
        store
            .add_key(&NewKey { secret: format!("sk-bench-{k:06}-0123456789abcdef"), ..NewKey::default() })
            .await
            .unwrap();
    }
    for t in 1..=TOKENS {
        store.create_token(&format!("token-{t}"), &format!("hash-{t}"), "kp-b").await.unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let buckets = Buckets::new(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap());
    let started = Instant::now();
    let batch = 10_000;
    let mut i = 0;
    while i < n {
        let records: Vec<RequestRecord> = (i..(i + batch).min(n)).map(|j| record(j, n, &mut rng)).collect();
        let sums = Sums::of(&records, &buckets);
        store.write_batch(&records, true, &sums).await.unwrap();
        i += batch;
        if i % 1_000_000 == 0 {
            eprintln!("{i} records in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
}

/// Times `query` over `RUNS` runs; prints the median and the slowest.
async fn time<F, Fut>(what: &str, mut query: F)
where
    F: FnMut(&mut rand::rngs::StdRng) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut took: Vec<Duration> = Vec::with_capacity(RUNS);
    let mut rows = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        rows += query(&mut rng).await;
        took.push(t.elapsed());
    }
    took.sort();
    println!(
        "{what:<58} median {:>7.2} ms   slowest {:>7.2} ms   ({:.0} rows/query)",
        took[RUNS / 2].as_secs_f64() * 1e3,
        took[RUNS - 1].as_secs_f64() * 1e3,
        rows as f64 / RUNS as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target").display().to_string()
        });
        let path = format!("{target}/bench-log-{n}.db");
        let fresh = !std::path::Path::new(&path).exists();
        let store = Store::connect(&format!("sqlite://{path}")).await.unwrap();
        if fresh || store.count_requests().await.unwrap() != n {
            if !fresh {
                panic!("{path} holds another log: delete it to build again");
            }
            eprintln!("building {path}: {n} records (kept for the next runs)");
            build(&store, n).await;
        }
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{n} records, {} MB, {KEYS} keys, {TOKENS} tokens, {MODELS} models over {DAYS} days", size >> 20);
        // A day's range at random among the 30 (Unix ms for the log, s for the rollups).
        let day = |rng: &mut rand::rngs::StdRng| {
            let d = rng.random_range(0..DAYS);
            (START_MS + d * 86_400_000, START_MS + (d + 1) * 86_400_000)
        };
        let page = |filter: LogFilter| {
            let store = store.clone();
            async move { store.request_page(&filter, None, 50).await.unwrap().len() }
        };
        time("log page of 50, a day, one key", |rng| {
            let (from, to) = day(rng);
            page(LogFilter { from_ms: Some(from), to_ms: Some(to), key_id: Some(rng.random_range(1..=KEYS)), ..LogFilter::default() })
        })
        .await;
        time("log page of 50, a day, one token", |rng| {
            let (from, to) = day(rng);
            page(LogFilter { from_ms: Some(from), to_ms: Some(to), token_id: Some(rng.random_range(1..=TOKENS)), ..LogFilter::default() })
        })
        .await;
        time("log page of 50, a day, one model", |rng| {
            let (from, to) = day(rng);
            let model = format!("gpt-4o-mini-{}", rng.random_range(0..MODELS));
            page(LogFilter { from_ms: Some(from), to_ms: Some(to), model: Some(model), ..LogFilter::default() })
        })
        .await;
        time("log page of 50, a day, status 500 (1% of requests)", |rng| {
            let (from, to) = day(rng);
            page(LogFilter { from_ms: Some(from), to_ms: Some(to), status: Some(500), ..LogFilter::default() })
        })
        .await;
        time("log page of 50, a day, status 200 (95%)", |rng| {
            let (from, to) = day(rng);
            page(LogFilter { from_ms: Some(from), to_ms: Some(to), status: Some(200), ..LogFilter::default() })
        })
        .await;
        for (what, dimension) in [("key", Dimension::Key), ("token", Dimension::Token), ("model", Dimension::Model)] {
            let store = store.clone();
            time(&format!("stats for the last 24 h, per {what} (hourly rollups)"), move |rng| {
                let (from, to) = day(rng);
                let store = store.clone();
                async move { store.stats_by_subject(dimension, Span::Hour, from / 1000, to / 1000).await.unwrap().len() }
            })
            .await;
        }
        // The zone's (Asia/Shanghai, UTC+8) calendar day: one daily rollup row a subject.
        for (what, dimension) in [("key", Dimension::Key), ("token", Dimension::Token), ("model", Dimension::Model)] {
            let store = store.clone();
            time(&format!("stats for a calendar day, per {what} (daily rollups)"), move |rng| {
                let (from, to) = day(rng);
                let (from, to) = (from / 1000 - 8 * 3600, to / 1000 - 8 * 3600);
                let store = store.clone();
                async move { store.stats_by_subject(dimension, Span::Day, from, to).await.unwrap().len() }
            })
            .await;
        }
        let s = store.clone();
        time("stats for a day, hour by hour, all keys", move |rng| {
            let (from, to) = day(rng);
            let s = s.clone();
            async move { s.stats_by_bucket(Dimension::Key, Span::Hour, None, from / 1000, to / 1000).await.unwrap().len() }
        })
        .await;
        let s = store.clone();
        time("stats for a day, minute by minute, one key", move |rng| {
            let (from, to) = day(rng);
            let key = rng.random_range(1..=KEYS).to_string();
            let s = s.clone();
            async move {
                s.stats_by_bucket(Dimension::Key, Span::Minute, Some(&key), from / 1000, to / 1000).await.unwrap().len()
            }
        })
        .await;
        store.close().await;
    });
}
