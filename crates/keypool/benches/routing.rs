//! What routing a request among upstreams costs (issue 16 target: ≤ 2 µs
//! per request with 10 upstreams and 100 model globs).
//!
//! `routing/plan_and_order/<model>`: the plan for a model (a cached hash
//! look-up after the first request for it) and the order to try its
//! upstreams in (smooth weighted round-robin within a priority). A request
//! served by a single upstream pays only the look-up (`routing/plan/…`).
//! `routing/plan_uncached` is a name planned afresh (the cache full): every
//! upstream's globs matched.
//!
//! Run: `cargo bench -p keypool --bench routing --locked -- --noplot`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keypool::config::{Config, UpstreamConfig};
use keypool::routing::Pools;

/// 10 upstreams × 10 globs: families of names, the two upstreams of a pair
/// at equal priority with the same globs (so weighted choosing runs), and
/// the last one also a catch-all (`*`) behind every other.
fn config() -> Config {
    let families = ["gpt-4o", "gpt-4.1", "o3", "o4", "deepseek", "qwen", "moonshot", "glm", "llama", "mistral"];
    let upstreams = (0..10)
        .map(|u| {
            let pair = u / 2;
            let mut models: Vec<String> =
                (0..10).map(|g| format!("{}-{}*", families[(pair * 2 + g) % 10], g)).collect();
            let priority = if u == 9 {
                models[9] = "*".into();
                -1
            } else {
                pair as i32
            };
            let fields = serde_json::json!({
                "name": format!("up{u}"),
                "base_url": format!("http://127.0.0.1:{}/v1", 9000 + u),
                "models": models,
                "priority": priority,
                "weight": 1 + u as u32 % 3,
            });
            serde_json::from_value::<UpstreamConfig>(fields).unwrap()
        })
        .collect();
    let config = Config { upstreams, ..Config::default() };
    config.validate().unwrap();
    config
}

fn routing(c: &mut Criterion) {
    let config = config();
    let handle = Pools::from_config(&config);
    let pools = handle.load();
    let models = ["gpt-4o-0-mini", "deepseek-4-chat", "qwen-5-72b", "unlisted-model"];
    for model in models {
        let plan = pools.plan(Some(model)).unwrap();
        eprintln!("{model}: {} candidates", plan.candidates().count());
    }
    let mut group = c.benchmark_group("routing");
    for model in models {
        // What a request pays: the set in force (one atomic load), its plan, the order.
        group.bench_function(format!("plan/{model}"), |b| {
            b.iter(|| black_box(handle.load().plan(Some(black_box(model)))))
        });
        group.bench_function(format!("plan_and_order/{model}"), |b| {
            b.iter(|| black_box(handle.load().plan(Some(black_box(model))).unwrap().order()))
        });
    }
    // The cache full (callers chose 4,096 other names): a new name is planned each time.
    for i in 0..5_000 {
        pools.plan(Some(&format!("gpt-4o-0-filler-{i}"))).unwrap();
    }
    group.bench_function("plan_uncached/gpt-4o-0-new", |b| {
        b.iter(|| black_box(handle.load().plan(Some(black_box("gpt-4o-0-new"))).unwrap().order()))
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
