//! `keypool requests …`: read the request log.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;

use crate::records::RequestRecord;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// The newest requests, one line each (oldest first); `--follow` keeps
    /// printing new ones as they are written.
    Tail {
        /// How many of the newest to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Keep printing requests as they are recorded (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
    },
    /// One request with each of its attempts, by its x-keypool-request-id.
    Show {
        /// The request's id (`req_…`, or the caller's own X-Client-Request-Id).
        id: String,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How often `tail --follow` looks for new records (the writer adds them
/// every `records.flush_interval`, 1 s by default), and how many it
/// reads at a time. It follows row ids: on PostgreSQL, rows of two batch
/// parts (or two gateways) committed out of id order may be passed over.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
const FOLLOW_PAGE: u32 = 1000;

pub async fn run(cmd: &RequestsCommand, store: &Store) -> anyhow::Result<()> {
    match cmd {
        RequestsCommand::Tail { lines, follow } => {
            let mut rows = store.recent_requests_with_ids(*lines).await?;
            rows.reverse();
            // Where following starts: the newest row, even when none is printed (-n 0).
            let mut last = match rows.last() {
                Some((id, _)) => *id,
                None => store.recent_requests_with_ids(1).await?.first().map_or(0, |(id, _)| *id),
            };
            let mut out = std::io::stdout().lock();
            for (_, r) in &rows {
                if writeln!(out, "{}", line(r)).is_err() {
                    return Ok(()); // the reader went away (`| head`)
                }
            }
            if !*follow {
                return Ok(());
            }
            drop(out);
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                // Everything new, in pages, before the next pause.
                loop {
                    let page = match store.requests_after(last, FOLLOW_PAGE).await {
                        Ok(page) => page,
                        Err(e) => {
                            eprintln!("could not read the log ({e}); trying again");
                            break;
                        }
                    };
                    let mut out = std::io::stdout().lock();
                    for (id, r) in &page {
                        if writeln!(out, "{}", line(r)).is_err() {
                            return Ok(());
                        }
                        last = *id;
                    }
                    if page.len() < FOLLOW_PAGE as usize {
                        break;
                    }
                }
            }
        }
        RequestsCommand::Show { id, json } => {
            let found = store.requests_by_id(id).await?;
            if found.is_empty() {
                anyhow::bail!("no request with id {id:?} in the log (`keypool requests tail` lists the newest)");
            }
            for r in &found {
                if *json {
                    println!("{}", serde_json::to_string_pretty(r)?);
                } else {
                    print!("{}", details(r));
                }
            }
        }
    }
    Ok(())
}

/// `2026-11-30T16:01:02.123Z req_… 200 POST /v1/chat/completions gpt-4o-mini key 3 ×1 812+240 tok $0.000266 1.200s`
fn line(r: &RequestRecord) -> String {
    let mut out = format!(
        "{} {} {} {} {} {}",
        time(r.started_at),
        r.request_id,
        status(r),
        r.method,
        r.path,
        r.model.as_deref().unwrap_or("-")
    );
    if let Some(key) = r.key_id {
        out.push_str(&format!(" key {key}"));
    }
    if r.attempts.len() > 1 {
        out.push_str(&format!(" ×{}", r.attempts.len()));
    }
    if let (Some(p), Some(c)) = (r.prompt_tokens, r.completion_tokens) {
        out.push_str(&format!(" {p}+{c} tok"));
    }
    if let Some(cost) = r.cost_micros {
        out.push_str(&format!(" ${}", usd(cost)));
    }
    out.push_str(&format!(" {:.3}s", r.duration_us as f64 / 1e6));
    if let Some(e) = &r.error_type {
        out.push_str(&format!(" [{e}]"));
    }
    out
}

/// Every field of a record, then its attempts, for `requests show`.
fn details(r: &RequestRecord) -> String {
    let opt = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let us = |v: u64| format!("{:.3}s", v as f64 / 1e6);
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<20}{value}\n"));
    field("request id", r.request_id.clone());
    field("started", time(r.started_at));
    field("status", status(r));
    field("error", opt(r.error_type.as_deref()));
    field("request", format!("{} {}", r.method, r.path));
    field("model", opt(r.model.as_deref()));
    field("stream", r.stream.to_string());
    field("token", r.token_id.map_or("-".into(), |t| format!("id {t}")));
    field("client", opt(r.client_addr.as_deref()));
    field("user agent", opt(r.user_agent.as_deref()));
    field("end user", opt(r.end_user.as_deref()));
    field("queue wait", us(r.queue_wait_us));
    field("first byte", r.ttfb_us.map_or("-".into(), us));
    field("duration", us(r.duration_us));
    let usage = match (r.prompt_tokens, r.completion_tokens) {
        (Some(p), Some(c)) => format!(
            "{p} prompt ({} cached) + {c} completion ({} reasoning){}",
            r.cached_tokens.unwrap_or(0),
            r.reasoning_tokens.unwrap_or(0),
            if r.usage_estimated { ", estimated" } else { "" }
        ),
        _ => "-".into(),
    };
    field("usage", usage);
    field("cost", r.cost_micros.map_or("-".into(), |c| format!("${}", usd(c))));
    field("cancelled", r.cancelled.to_string());
    field("upstream id", opt(r.upstream_request_id.as_deref()));
    out.push_str(&format!("attempts ({})\n", r.attempts.len()));
    for (i, a) in r.attempts.iter().enumerate() {
        out.push_str(&format!("  {}. key {} → {} {} in {}\n", i + 1, a.key_id, a.status, a.reason, us(a.duration_us)));
    }
    out
}

fn status(r: &RequestRecord) -> String {
    if r.status == 0 {
        "---".into()
    } else {
        r.status.to_string()
    }
}

/// Micro-USD as dollars, to the micro-dollar.
fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Unix milliseconds as RFC 3339 UTC.
fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at.max(UNIX_EPOCH).min(SystemTime::now() + Duration::from_secs(86_400 * 365)))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Attempt;

    #[test]
    fn a_line_says_what_the_request_did() {
        let r = RequestRecord {
            request_id: "req_1".into(),
            started_at: 1_790_000_000_123,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: Some("gpt-4o-mini".into()),
            status: 200,
            key_id: Some(3),
            attempts: vec![
                Attempt {
                    key_id: 2,
                    status: 429,
                    reason: "rate_limited".into(),
                    duration_us: 1_000,
                    ..Default::default()
                },
                Attempt { key_id: 3, status: 200, reason: "ok".into(), duration_us: 900_000, ..Default::default() },
            ],
            prompt_tokens: Some(812),
            completion_tokens: Some(240),
            cost_micros: Some(266),
            duration_us: 1_200_000,
            ..RequestRecord::default()
        };
        assert_eq!(
            line(&r),
            "2026-09-21T14:13:20.123Z req_1 200 POST /v1/chat/completions gpt-4o-mini key 3 ×2 812+240 tok $0.000266 1.200s"
        );
        let shown = details(&r);
        assert!(shown.contains("  1. key 2 → 429 rate_limited in 0.001s"), "{shown}");
        assert!(shown.contains("  2. key 3 → 200 ok in 0.900s"), "{shown}");
    }
}
