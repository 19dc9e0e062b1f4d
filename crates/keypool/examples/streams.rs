//! Streaming measurements for bench/load.sh, against URLs it is given:
//!
//! - `ttfb URL TOKEN N`: N streamed chat requests one at a time; prints the
//!   median and p99 time to the first body byte, in microseconds.
//! - `hold URL TOKEN N SECS [h1|h2]`: opens N streamed requests at once and
//!   keeps reading them for SECS; prints how many were open and how many
//!   finished. With `h1` (the default) each stream has its own connection, as
//!   SDK clients do; with `h2` the streams share HTTP/2 connections (cleartext,
//!   prior knowledge), 100 per connection, half the server's default limit.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

const STREAMS_PER_H2_CONNECTION: usize = 100;

fn body() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 16,
        "messages": [{"role": "user", "content": "stream please"}]})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i).cloned().ok_or_else(|| anyhow::anyhow!("usage: streams ttfb|hold URL TOKEN N [SECS [h1|h2]]"))
    };
    let (mode, url, token) = (arg(0)?, arg(1)?, arg(2)?);
    let n: usize = arg(3)?.parse()?;
    match mode.as_str() {
        "ttfb" => {
            let client = reqwest::Client::new();
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + 10 {
                let start = Instant::now();
                let resp = client.post(&url).bearer_auth(&token).json(&body()).send().await?;
                let mut stream = resp.bytes_stream();
                let first = stream.next().await;
                let elapsed = start.elapsed();
                anyhow::ensure!(matches!(first, Some(Ok(_))), "no first chunk");
                while stream.next().await.is_some() {}
                if i >= 10 {
                    samples.push(elapsed);
                }
            }
            samples.sort();
            let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_micros();
            println!("ttfb_p50_us={} ttfb_p99_us={}", p(0.5), p(0.99));
        }
        "hold" => {
            let secs: u64 = arg(4)?.parse()?;
            // One client per connection wanted: h1 clients open a connection per
            // request anyway; an h2 client multiplexes all its requests on one.
            let clients = match args.get(5).map(String::as_str).unwrap_or("h1") {
                "h1" => vec![reqwest::Client::builder().pool_max_idle_per_host(0).build()?],
                "h2" => (0..n.div_ceil(STREAMS_PER_H2_CONNECTION))
                    .map(|_| reqwest::Client::builder().http2_prior_knowledge().build())
                    .collect::<Result<Vec<_>, _>>()?,
                other => anyhow::bail!("unknown protocol {other}: h1 or h2"),
            };
            let started = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let client = clients[(i / STREAMS_PER_H2_CONNECTION) % clients.len()].clone();
                    let (url, token) = (url.clone(), token.clone());
                    tokio::spawn(async move {
                        let resp = client.post(&url).bearer_auth(&token).json(&body()).send().await.ok()?;
                        let mut stream = resp.bytes_stream();
                        let mut chunks = 0u32;
                        while let Some(Ok(_)) = stream.next().await {
                            chunks += 1;
                        }
                        Some(chunks)
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let open = tasks.iter().filter(|t| !t.is_finished()).count();
            println!("open_after_{secs}s={open} of {n} (started in {:?})", started.elapsed());
            let mut finished = 0;
            for t in tasks {
                if let Ok(Some(_)) = t.await {
                    finished += 1;
                }
            }
            println!("finished={finished}");
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    Ok(())
}
