//! How long `/metrics` takes to render with 10,000 keys (issue target:
//! under 100 ms): the recorder's families (requests by model, status and
//! kind with their histograms) plus the per-key gauges read at scrape time,
//! both rendered alone and fetched over HTTP on loopback; and what
//! observing one finished request costs the request path.
//!
//! Run: `cargo bench -p keypool --bench metrics_scrape --locked -- --noplot`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use keypool::config::Config;
use keypool::metrics::Scrape;
use keypool::records::{Recorder, RequestRecord};
use keypool::scheduler::{Scheduler, SchedulerConfig};
use keypool::store::KeyRecord;
use secrecy::SecretString;

const KEYS: i64 = 10_000;

fn scrape_10k_keys(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let _guard = rt.enter();
    keypool::metrics::install(&Config::default()).expect("the only recorder");
    let scheduler = Scheduler::new(SchedulerConfig::default());
    let records: Vec<KeyRecord> = (1..=KEYS)
        .map(|id| KeyRecord {
            rpm: Some(500),
            tpm: Some(200_000),
            budget_micros: Some(50_000_000),
            label: Some(format!("team-{id}")),
            ..KeyRecord::new(id, SecretString::from(format!("sk-bench-{id}")))
        })
        .collect();
    scheduler.sync_keys(&records);
    // Requests over a few models and statuses, so the recorder's part has
    // the series a busy gateway has.
    for (i, model) in ["gpt-4o", "gpt-4o-mini", "o3-mini", "made-up", "text-embedding-3-small"].iter().enumerate() {
        for status in [200u16, 400, 429, 500, 502] {
            let record = RequestRecord {
                model: Some((*model).to_owned()),
                status,
                duration_us: 1_000 * (i as u64 + 1),
                ttfb_us: Some(500),
                ..RequestRecord::default()
            };
            keypool::metrics::request_ended(&record);
        }
    }
    let pools = keypool::routing::Pools::single(&keypool::config::Config::default(), Arc::clone(&scheduler));
    let scrape = Scrape { pools: Arc::new(pools), recorder: Recorder::off() };
    let text = keypool::metrics::render(&scrape).expect("installed");
    eprintln!("/metrics with {KEYS} keys: {} lines, {} bytes", text.lines().count(), text.len());
    c.bench_function("metrics/render/10000_keys", |b| b.iter(|| black_box(keypool::metrics::render(&scrape))));
    // The whole answer over HTTP on loopback, as a scraper gets it (the
    // route `metrics_listen` serves).
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let app = keypool::metrics::router(scrape.clone(), None);
    rt.spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    c.bench_function("metrics/http_get/10000_keys", |b| {
        b.iter(|| {
            rt.block_on(async {
                let body = client.get(&url).send().await.unwrap().bytes().await.unwrap();
                black_box(body.len())
            })
        })
    });
    // The request path's share: one finished request observed (counter,
    // duration, first byte, queue wait), its handles already cached.
    let record = RequestRecord {
        model: Some("gpt-4o-mini-2024-07-18".to_owned()),
        status: 200,
        duration_us: 12_345,
        ttfb_us: Some(2_345),
        ..RequestRecord::default()
    };
    c.bench_function("metrics/request_ended", |b| b.iter(|| keypool::metrics::request_ended(black_box(&record))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = scrape_10k_keys
}
criterion_main!(benches);
