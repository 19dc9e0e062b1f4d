//! `keypool keys …`: add, import, list, enable, disable, remove.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use secrecy::ExposeSecret;

use crate::config::{mask_key, Config};
use crate::store::{AddOutcome, NewKey, Store};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add keys given as arguments (prefer `import -` to keep keys out of shell history).
    Add {
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// Add keys from a file, or `-` for stdin: one per line, blank lines and `#` comments skipped.
    Import {
        file: PathBuf,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// List keys (masked) with their status and counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put a disabled key back into rotation.
    Enable { id: i64 },
    /// Take a key out of rotation (kept, with its counts).
    Disable { id: i64 },
    /// Delete a key.
    Rm { id: i64 },
}

#[derive(Debug, Args)]
pub struct KeyOpts {
    /// A name to recognise the key by.
    #[arg(long)]
    label: Option<String>,
    /// Requests per minute this key allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rpm: Option<u32>,
    /// Tokens per minute this key allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    tpm: Option<u32>,
    /// Requests per day this key allows (it cools until 00:00 UTC once spent).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rpd: Option<u32>,
    /// Most requests in flight at once on this key.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_inflight: Option<u32>,
    /// Share of traffic under the `weighted` strategy.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    weight: Option<u32>,
    /// Balance in USD this key may spend (the `balance_even` strategy spends keys' budgets evenly).
    #[arg(long, value_parser = parse_usd)]
    budget: Option<u64>,
    /// Date the key stops working (YYYY-MM-DD or RFC 3339); among equals, the soonest to expire is used first.
    #[arg(long, value_parser = parse_expiry)]
    expires: Option<i64>,
}

/// USD to micro-USD.
fn parse_usd(s: &str) -> Result<u64, String> {
    let usd: f64 = s.trim_start_matches('$').parse().map_err(|_| format!("{s:?} is not an amount in USD"))?;
    if !(usd.is_finite() && usd >= 0.0) {
        return Err("budget must be a non-negative amount in USD".into());
    }
    Ok((usd * 1e6).round() as u64)
}

/// A date or RFC 3339 time to Unix seconds.
fn parse_expiry(s: &str) -> Result<i64, String> {
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_owned() };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|e| format!("{s:?}: {e} (expected YYYY-MM-DD)"))?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| "date before 1970".to_owned())?.as_secs();
    i64::try_from(secs).map_err(|_| "date too far away".to_owned())
}

/// A key must be sendable in an HTTP header and look like one token.
fn check_key(key: &str) -> Result<(), String> {
    if key.len() < 8 {
        return Err("too short to be an API key".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains spaces or characters that cannot be sent in a header".into());
    }
    Ok(())
}

pub async fn run(cmd: &KeysCommand, config: &Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    match cmd {
        KeysCommand::Add { keys, opts } => add_all(&store, keys.iter().map(|k| (0, k.clone())), opts).await?,
        KeysCommand::Import { file, opts } => {
            let reader: Box<dyn Read> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?)
            };
            let mut lines = Vec::new();
            for (n, line) in BufReader::new(reader).lines().enumerate() {
                let line = line?;
                let key = line.trim();
                if !key.is_empty() && !key.starts_with('#') {
                    lines.push((n + 1, key.to_owned()));
                }
            }
            add_all(&store, lines.into_iter(), opts).await?;
        }
        KeysCommand::List { json } => list(&store, *json).await?,
        KeysCommand::Enable { id } => {
            store.set_key_enabled(*id, true).await?;
            println!("enabled key {id}");
        }
        KeysCommand::Disable { id } => {
            store.set_key_enabled(*id, false).await?;
            println!("disabled key {id}");
        }
        KeysCommand::Rm { id } => {
            store.remove_key(*id).await?;
            println!("removed key {id}");
        }
    }
    store.close().await;
    Ok(())
}

/// Adds each key, reporting duplicates and unusable lines without stopping.
async fn add_all(store: &Store, keys: impl Iterator<Item = (usize, String)>, opts: &KeyOpts) -> anyhow::Result<()> {
    let (mut added, mut dups, mut bad) = (0, 0, 0);
    for (line, secret) in keys {
        let at = if line > 0 { format!("line {line}: ") } else { String::new() };
        if let Err(why) = check_key(&secret) {
            eprintln!("{at}skipped {}: {why}", mask_key(&secret));
            bad += 1;
            continue;
        }
        let masked = mask_key(&secret);
        let new = NewKey {
            secret,
            label: opts.label.clone(),
            rpm: opts.rpm,
            tpm: opts.tpm,
            rpd: opts.rpd,
            max_inflight: opts.max_inflight,
            weight: opts.weight,
            budget_micros: opts.budget,
            expires_at: opts.expires,
        };
        match store.add_key(&new).await? {
            AddOutcome::Added(id) => {
                println!("added key {id} ({masked})");
                added += 1;
            }
            AddOutcome::Duplicate(id) => {
                println!("{at}skipped duplicate of key {id} ({masked})");
                dups += 1;
            }
        }
    }
    eprintln!("{added} added, {dups} duplicates skipped, {bad} invalid");
    if added + dups == 0 && bad > 0 {
        anyhow::bail!("no usable key given");
    }
    Ok(())
}

async fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let keys = store.list_keys().await?;
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id, "key": mask_key(k.secret.expose_secret()), "label": k.label,
                    "status": if k.enabled { "active" } else { "disabled" },
                    "rpm": k.rpm, "tpm": k.tpm, "requests": k.requests, "successes": k.successes,
                    "failures": k.failures, "prompt_tokens": k.prompt_tokens,
                    "completion_tokens": k.completion_tokens, "last_used_at": k.last_used_at,
                    "rpd": k.rpd, "max_inflight": k.max_inflight, "weight": k.weight,
                    "budget_usd": k.budget_micros.map(|b| b as f64 / 1e6),
                    "spent_usd": k.spent_micros as f64 / 1e6, "expires_at": k.expires_at,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys yet: add one with `keypool keys add sk-...` or `keypool keys import FILE`");
        return Ok(());
    }
    println!(
        "{:>4}  {:<12} {:<16} {:<9} {:>6} {:>8} {:>9} {:>8} {:>7} {:>17}",
        "ID", "KEY", "LABEL", "STATUS", "RPM", "TPM", "REQUESTS", "SUCCESS", "FAILED", "SPENT/BUDGET USD"
    );
    for k in &keys {
        let limit = |v: Option<u32>| v.map_or("-".to_owned(), |n| n.to_string());
        println!(
            "{:>4}  {:<12} {:<16} {:<9} {:>6} {:>8} {:>9} {:>8} {:>7} {:>17}",
            k.id,
            mask_key(k.secret.expose_secret()),
            k.label.as_deref().unwrap_or("-"),
            if k.enabled { "active" } else { "disabled" },
            limit(k.rpm),
            limit(k.tpm),
            k.requests,
            k.successes,
            k.failures,
            format!(
                "{:.4}/{}",
                k.spent_micros as f64 / 1e6,
                k.budget_micros.map_or("-".to_owned(), |b| format!("{:.2}", b as f64 / 1e6))
            )
        );
    }
    Ok(())
}
