//! The request log's writer: how many records a second it stores, through
//! the same recorder and batched writer the server uses.
//!
//! `cargo bench -p keypool --bench writer --locked -- sqlite [RECORDS]`
//! `cargo bench -p keypool --bench writer --locked -- postgres [RECORDS]`
//! (PostgreSQL: `KEYPOOL_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`; the bench works in a schema
//! of its own and drops it.)
//!
//! Records are queued as fast as one task can (each like a chat request's:
//! ids, model, one attempt, usage; 1,000 keys, 100 tokens, 20 models), and
//! timed from the first queued to the last committed, statistics included.
//! Their start times are spaced as if they arrived at 50,000 a second (the
//! rate the writer must keep up with), so the statistics' minutes hold what
//! they would; `SPACING_US=1000` spaces them 1 ms apart instead (50 times
//! more minute rows per record: the worst case). Figures in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keypool::records::{Attempt, RecordsConfig, RequestRecord};
use keypool::store::Store;
use sqlx::Connection;

fn record(i: u64, spacing_us: u64) -> RequestRecord {
    RequestRecord {
        request_id: format!("req_{i:032x}"),
        started_at: 1_790_000_000_000 + (i * spacing_us / 1000) as i64,
        token_id: Some((i % 100) as i64),
        client_addr: Some("10.1.2.3".into()),
        user_agent: Some("OpenAI/Python 1.99.0".into()),
        end_user: None,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some(format!("gpt-4o-mini-{}", i % 20)),
        stream: i.is_multiple_of(2),
        status: 200,
        error_type: None,
        key_id: Some((i % 1000) as i64),
        attempts: vec![Attempt {
            key_id: (i % 1000) as i64,
            status: 200,
            reason: "ok".into(),
            duration_us: 912_345,
            ..Default::default()
        }],
        queue_wait_us: 12,
        ttfb_us: Some(350_000),
        duration_us: 1_200_000,
        prompt_tokens: Some(812),
        completion_tokens: Some(240),
        cached_tokens: Some(0),
        reasoning_tokens: Some(0),
        usage_estimated: false,
        cost_micros: Some(266),
        cancelled: false,
        upstream_request_id: Some(format!("req_up_{i:x}")),
        ..Default::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let backend = args.first().map(String::as_str).unwrap_or("sqlite");
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (url, schema) = match backend {
            "postgres" => {
                let base = std::env::var("KEYPOOL_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let schema = format!("kp_bench_{}", std::process::id());
                let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut c).await.unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                (format!("{base}{sep}options=-csearch_path%3D{schema}"), Some((base, schema)))
            }
            _ => (format!("sqlite://{}", dir.path().join("bench.db").display()), None),
        };
        let store = Store::connect(&url).await.unwrap();
        let mut config = RecordsConfig { buffer: n as usize, ..RecordsConfig::default() };
        // BATCH=N: another batch size than the default.
        if let Some(batch) = std::env::var("BATCH").ok().and_then(|b| b.parse().ok()) {
            config.batch = batch;
        }
        let batch = config.batch;
        let (recorder, writer) = keypool::records::spawn(store.clone(), config);
        let spacing: u64 = std::env::var("SPACING_US").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
        let records: Vec<RequestRecord> = (0..n).map(|i| record(i, spacing)).collect();
        let started = Instant::now();
        for r in records {
            recorder.record(r);
        }
        let queued = started.elapsed();
        writer.stop(tokio::time::Instant::now() + Duration::from_secs(600), Default::default()).await;
        let took = started.elapsed();
        assert_eq!(recorder.dropped(), 0);
        assert_eq!(store.count_requests().await.unwrap(), n);
        println!(
            "{backend}: {n} records written in {:.2} s: {:.0} records/s (queued in {:.0} ms, batches of {})",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            queued.as_secs_f64() * 1000.0,
            batch
        );
        store.close().await;
        if let Some((base, schema)) = schema {
            let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut c).await.unwrap();
        }
    });
}
