//! What the record writer's SQLite side costs per record, with the load
//! spread over one gateway token or over many: the writer's own cadence
//! (a batch every `records.flush_interval`, statistics and token totals
//! every second) replayed through the store's batch write, on a fresh
//! database with a log already holding PREFILL records, and the process's
//! CPU time (all threads: SQLite's own included) per 1,000 records
//! printed. Wall-clock benchmarks of the whole gateway (bench/tenants.sh)
//! are noisy on a shared 2-core machine; this isolates the part that
//! grows with the number of tenants.
//!
//! `cargo run --release --locked -p keypool --example writer_tenants --
//!  TOKENS [RATE] [BATCHES_PER_SECOND] [SECONDS] [PREFILL]`
//! (defaults: 20,000 records a second, 1 batch a second (the default
//! `records.flush_interval`), 20 simulated seconds, 200,000 records
//! first). A batch holds at most 10,000 records (`records.batch`): more a
//! second are written in more batches, as the writer does.
//! `LOG=0` leaves the log rows out, `SUMS=0` the statistics and token
//! totals, to see what each costs; `STATS_EVERY=5` writes the statistics
//! every 5 simulated seconds (as the writer does while more than
//! `records::writer::MANY_ROWS` rows wait). Figures in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use keypool::records::rollup::{Buckets, MinuteSums, Sums};
use keypool::records::{Attempt, Counted, RequestRecord};
use keypool::store::{NewKey, Store};

const KEYS: i64 = 10;
/// 2026-10-01 00:00 UTC, ms.
const START_MS: i64 = 1_790_812_800_000;

fn record(i: u64, at_ms: i64, tokens: u64) -> RequestRecord {
    let key = (i % KEYS as u64) as i64 + 1;
    RequestRecord {
        // As the gateway makes them: the time first, so they sort by arrival.
        request_id: format!("req_{:012x}{:020x}", at_ms, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        started_at: at_ms,
        token_id: Some((i % tokens) as i64 + 1),
        client_addr: Some("127.0.0.1".into()),
        user_agent: Some("tenants_load".into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        key_id: Some(key),
        attempts: vec![Attempt {
            key_id: key,
            status: 200,
            reason: "ok".into(),
            duration_us: 90,
            counted: Counted::Success,
        }],
        queue_wait_us: 3,
        ttfb_us: Some(80),
        duration_us: 120,
        prompt_tokens: Some(9),
        completion_tokens: Some(12),
        cost_micros: Some(10),
        ..RequestRecord::default()
    }
}

/// This process's CPU time (user + system, every thread), seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let (tokens, rate, per_second, seconds, prefill) =
        (arg(0, 1), arg(1, 20_000), arg(2, 1), arg(3, 20), arg(4, 200_000));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/w.db", dir.path().display())).await.unwrap();
    for k in 1..=KEYS {
        store
            .add_key(&NewKey { secret: format!("sk-bench-{k:04}-0123456789abcdef"), ..NewKey::default() })
            .await
            .unwrap();
    }
    for t in 1..=tokens {
        store.create_token(&format!("tenant-{t}"), &format!("hash-{t}"), "kp-b").await.unwrap();
    }
    let buckets = Buckets::utc();
    let log = std::env::var("LOG").as_deref() != Ok("0");
    let no_sums = std::env::var("SUMS").as_deref() == Ok("0");
    let stats_every: u64 = std::env::var("STATS_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let batch = (rate / per_second).clamp(1, 10_000);
    let per_second = rate.div_ceil(batch);
    let mut i = 0u64;
    // The log before: same spread, an hour earlier.
    while i < prefill {
        let records: Vec<RequestRecord> =
            (i..(i + batch).min(prefill)).map(|j| record(j, START_MS - 3_600_000, tokens)).collect();
        store.write_batch(&records, true, &Sums::of(&records, &buckets)).await.unwrap();
        i += batch;
    }
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    // Summed per minute as the writer does, spread when written.
    let mut pending = MinuteSums::default();
    let mut written = 0u64;
    for second in 0..seconds {
        for b in 0..per_second {
            let at = START_MS + (second * 1000 + b * 1000 / per_second) as i64;
            let records: Vec<RequestRecord> = (i..i + batch).map(|j| record(j, at, tokens)).collect();
            i += batch;
            pending.add(MinuteSums::of(&records));
            // The statistics and token totals go with the second's last batch.
            let due = b + 1 == per_second && (second + 1) % stats_every == 0;
            let sums = if due && !no_sums { std::mem::take(&mut pending).spread(&buckets) } else { Sums::default() };
            store.write_batch(&records, log, &sums).await.unwrap();
            written += batch;
        }
    }
    // What is still summed (SECONDS not a multiple of STATS_EVERY) counts too.
    if !no_sums && !pending.is_empty() {
        store.write_batch(&[], false, &pending.spread(&buckets)).await.unwrap();
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    println!(
        "tokens {tokens}: {written} records in {seconds} simulated s ({batch} a batch): CPU {:.1} ms per 1,000 records, wall {:.1} ms per 1,000",
        cpu * 1e6 / written as f64,
        wall * 1e6 / written as f64
    );
}
