//! The per-request work besides choosing a key: reading an answer's
//! rate-limit headers, watching a stream chunk for usage, and counting a
//! prompt's tokens.
//!
//! `cargo bench -p keypool --bench hot_path --locked -- --noplot`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use keypool::tokens::Encoding;
use keypool::upstream::rate_info;
use keypool_sse::{BodyKind, UsageTap};

fn headers(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-request-id", "req_123"),
        ("x-ratelimit-limit-requests", "3"),
        ("x-ratelimit-remaining-requests", "2"),
        ("x-ratelimit-reset-requests", "20s"),
        ("x-ratelimit-limit-tokens", "40000"),
        ("x-ratelimit-remaining-tokens", "39427"),
        ("x-ratelimit-reset-tokens", "859ms"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    c.bench_function("rate_limit_headers/parse", |b| b.iter(|| black_box(rate_info(black_box(&h)))));

    // The head of a real answer: the six among the rest of what the upstream
    // and its CDN send.
    let mut full = h.clone();
    for (k, v) in [
        ("date", "Thu, 26 Nov 2026 22:30:00 GMT"),
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive"),
        ("access-control-expose-headers", "X-Request-ID"),
        ("openai-organization", "user-abc123"),
        ("openai-processing-ms", "412"),
        ("openai-version", "2020-10-01"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("cf-cache-status", "DYNAMIC"),
        ("set-cookie", "__cf_bm=abc; path=/; expires=Thu, 26-Nov-26 23:00:00 GMT; domain=.api.openai.com; HttpOnly"),
        ("x-content-type-options", "nosniff"),
        ("server", "cloudflare"),
        ("cf-ray", "8f0e1d2c3b4a5968-AMS"),
        ("alt-svc", "h3=\":443\"; ma=86400"),
    ] {
        full.insert(k, v.parse().unwrap());
    }
    c.bench_function("rate_limit_headers/parse_full_answer_head", |b| {
        b.iter(|| black_box(rate_info(black_box(&full))))
    });
    // An upstream that announces no limits (as the simulator in bench/load.sh).
    let mut none = full.clone();
    for k in
        ["limit-requests", "remaining-requests", "reset-requests", "limit-tokens", "remaining-tokens", "reset-tokens"]
    {
        none.remove(format!("x-ratelimit-{k}").as_str());
    }
    c.bench_function("rate_limit_headers/parse_head_without_limits", |b| {
        b.iter(|| black_box(rate_info(black_box(&none))))
    });
}

fn sse_chunk(c: &mut Criterion) {
    let chunk = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hello there"},"finish_reason":null}],"usage":null}

"#;
    let usage = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}

"#;
    let mut group = c.benchmark_group("sse_usage_tap");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    let mut tap = UsageTap::new(BodyKind::Sse);
    group.bench_function("content_chunk", |b| b.iter(|| tap.feed(black_box(chunk))));
    let mut tap = UsageTap::new(BodyKind::Sse);
    group.bench_function("usage_chunk", |b| b.iter(|| tap.feed(black_box(usage))));
    group.finish();
}

fn tokens(c: &mut Criterion) {
    // Both built up front: a tokenizer still building answers the cheap rough
    // count, and criterion would size its batches on that and then run them
    // at the real cost (hours).
    Encoding::O200k.load();
    Encoding::Cl100k.load();
    let sentence = "The quick brown fox jumps over the lazy dog, then checks the rate limits of every key. ";
    let kb: String = sentence.repeat(1024 / sentence.len() + 1)[..1024].to_owned();
    let mut group = c.benchmark_group("token_estimate");
    group.throughput(Throughput::Bytes(1024));
    group.bench_function("o200k_per_kb", |b| b.iter(|| black_box(Encoding::O200k.count(black_box(&kb)))));
    group.bench_function("cl100k_per_kb", |b| b.iter(|| black_box(Encoding::Cl100k.count(black_box(&kb)))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    targets = headers, sse_chunk, tokens
}
criterion_main!(benches);
