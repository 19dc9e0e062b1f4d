//! `keypool-sim`: run the simulator as a standalone server for the demo and benchmarks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use keypool_sim::{LimitMode, SimConfig, SimKey, Simulator};

#[derive(Parser, Debug)]
#[command(name = "keypool-sim", about = "An OpenAI API simulator with per-key rate limits and faults")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// A key, optionally with limits: `sk-a:rpm=3,tpm=40000,mode=rolling_window,state=invalid`.
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Accept unknown keys as valid and unlimited.
    #[arg(long)]
    accept_any_key: bool,
    /// Delay before each answer's headers, e.g. `0ms`, `250ms`.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Content chunks per stream.
    #[arg(long, default_value_t = 5)]
    stream_chunks: usize,
    /// Pause between stream chunks.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    chunk_interval: Duration,
    /// Path prefix of the API routes.
    #[arg(long, default_value = "/v1")]
    prefix: String,
    /// Do not send x-ratelimit-* headers (like providers that send none).
    #[arg(long)]
    no_rate_limit_headers: bool,
}

fn parse_key(spec: &str) -> anyhow::Result<SimKey> {
    let (name, opts) = spec.split_once(':').unwrap_or((spec, ""));
    if name.is_empty() {
        bail!("empty key in {spec:?}");
    }
    let mut key = SimKey::new(name);
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = opt.split_once('=').with_context(|| format!("expected name=value, got {opt:?}"))?;
        key = match k {
            "rpm" => key.rpm(v.parse().with_context(|| format!("bad rpm {v:?}"))?),
            "tpm" => key.tpm(v.parse().with_context(|| format!("bad tpm {v:?}"))?),
            "mode" => key.mode(
                serde_json::from_value::<LimitMode>(serde_json::Value::String(v.into()))
                    .with_context(|| format!("bad mode {v:?} (token_bucket|rolling_window)"))?,
            ),
            "state" => key.state(
                serde_json::from_value(serde_json::Value::String(v.into()))
                    .with_context(|| format!("bad state {v:?} (active|invalid|insufficient_quota)"))?,
            ),
            other => bail!("unknown key option {other:?}"),
        };
    }
    Ok(key)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let keys = args.keys.iter().map(|k| parse_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
    let cfg = SimConfig {
        listen: Some(args.listen),
        path_prefix: args.prefix,
        keys,
        accept_any_key: args.accept_any_key,
        latency: args.latency,
        stream_chunks: args.stream_chunks,
        chunk_interval: args.chunk_interval,
        send_rate_limit_headers: !args.no_rate_limit_headers,
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("{}", sim.base_url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown();
    Ok(())
}
