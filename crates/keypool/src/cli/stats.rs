//! `keypool stats`: requests, errors, tokens, spend and latency per key,
//! token or model over the last hour or day, from the rollups (never the
//! request log itself).

use std::io::Write as _;

use clap::{Args, ValueEnum};

use crate::records::rollup::{Dimension, Rollup, Span};
use crate::store::{now_unix, Store};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// What to group by.
    #[arg(long, value_enum, default_value_t = By::Key)]
    pub by: By,
    /// How far back: the last hour (by minute rollups) or day (by hour rollups),
    /// or the last 7 or 30 days (by day rollups).
    #[arg(long, value_enum, default_value_t = Last::Day)]
    pub last: Last,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    Key,
    Token,
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Last {
    #[value(name = "1h")]
    Hour,
    #[value(name = "24h")]
    Day,
    #[value(name = "7d")]
    Week,
    #[value(name = "30d")]
    Month,
}

impl Last {
    /// The rollups read and the range's length in seconds. The range starts
    /// on a bucket boundary: the whole buckets that overlap it are counted.
    fn span(self) -> (Span, i64) {
        match self {
            Last::Hour => (Span::Minute, 3_600),
            Last::Day => (Span::Hour, 86_400),
            Last::Week => (Span::Day, 7 * 86_400),
            Last::Month => (Span::Day, 30 * 86_400),
        }
    }
}

pub async fn run(args: &StatsArgs, store: &Store) -> anyhow::Result<()> {
    let dimension = match args.by {
        By::Key => Dimension::Key,
        By::Token => Dimension::Token,
        By::Model => Dimension::Model,
    };
    let (span, length) = args.last.span();
    let now = now_unix();
    // A day bucket began at the time zone's midnight, up to a day before
    // the range: take it in (the figures are whole buckets).
    let slack = match span {
        Span::Minute => 60,
        Span::Hour => 3_600,
        Span::Day => 86_400,
    };
    let from = now - length - slack + 1;
    let rows = store.stats_by_subject(dimension, span, from, now + 1).await?;
    let names = names(store, dimension).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r.figures).unwrap_or_default();
                v["subject"] = r.subject.clone().into();
                if let Some(name) = names.get(&r.subject) {
                    v["name"] = name.clone().into();
                }
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no requests recorded in that time")?;
        return Ok(());
    }
    let head = match dimension {
        Dimension::Key => "KEY",
        Dimension::Token => "TOKEN",
        Dimension::Model => "MODEL",
    };
    writeln!(
        out,
        "{head:<28} {:>9} {:>7} {:>8} {:>6} {:>12} {:>12} {:>10} {:>8} {:>8}",
        "REQUESTS", "OK%", "ERRORS", "429", "PROMPT", "COMPLETION", "SPEND$", "AVG_MS", "P95_MS"
    )?;
    let mut total = Rollup::default();
    for r in &rows {
        total.add(&r.figures);
        let label = match names.get(&r.subject) {
            Some(name) => format!("{} ({name})", r.subject),
            None if r.subject.is_empty() => "(none)".into(),
            None => r.subject.clone(),
        };
        writeln!(out, "{}", line(&label, &r.figures))?;
    }
    if rows.len() > 1 {
        writeln!(out, "{}", line("all", &total))?;
    }
    Ok(())
}

fn line(label: &str, f: &Rollup) -> String {
    let ok = if f.requests == 0 { 0.0 } else { 100.0 * f.successes as f64 / f.requests as f64 };
    let avg = if f.requests == 0 { 0.0 } else { f.duration_us_sum as f64 / f.requests as f64 / 1000.0 };
    let p95 = f.latency_quantile_us(0.95).map_or_else(|| ">30000".into(), |us| (us / 1000).to_string());
    let label: String = label.chars().take(28).collect();
    format!(
        "{label:<28} {:>9} {:>6.1}% {:>8} {:>6} {:>12} {:>12} {:>10.4} {:>8.0} {:>8}",
        f.requests,
        ok,
        f.errors.total(),
        f.errors.rate_limited,
        f.prompt_tokens,
        f.completion_tokens,
        f.cost_micros as f64 / 1e6,
        avg,
        p95
    )
}

/// Labels of keys and names of tokens, by id as the rollups name them.
async fn names(store: &Store, dimension: Dimension) -> anyhow::Result<std::collections::HashMap<String, String>> {
    Ok(match dimension {
        // Labels only: no key is opened (sealed keys need no master key here).
        Dimension::Key => store.key_labels().await?.into_iter().map(|(id, label)| (id.to_string(), label)).collect(),
        Dimension::Token => store.list_tokens().await?.into_iter().map(|t| (t.id.to_string(), t.name)).collect(),
        Dimension::Model => Default::default(),
    })
}
