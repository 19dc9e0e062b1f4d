//! `keypool tokens …`: create, edit, list, revoke and regenerate gateway
//! tokens, each a tenant with its own models, limits and budget.

use clap::{Args, Subcommand};

use super::keys::{parse_expiry, parse_usd};
use crate::config::Config;
use crate::server::{generate_token, hash_token};
use crate::store::{Store, TokenRecord};
use crate::tenants::{networks_from, parse_models, period_bounds, BudgetPeriod, TokenSettings};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; prints only the token (shown once, stored as a hash).
    Create {
        /// A unique name for the token (who or what uses it).
        name: String,
        #[command(flatten)]
        opts: TokenOpts,
    },
    /// Change a token's settings; `none` clears a limit (e.g. `--rpm none`).
    Edit {
        /// The token's id, as `tokens list` shows it.
        id: i64,
        #[command(flatten)]
        opts: TokenOpts,
        /// Enable a disabled token.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
    },
    /// List tokens with their limits, usage and remaining budget (never their value).
    List {
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; a running server refuses it within seconds.
    Revoke {
        /// The token's id, as `tokens list` shows it.
        id: i64,
    },
    /// Give a token a new secret, keeping its name, settings and usage; prints the new token.
    Regenerate {
        /// The token's id, as `tokens list` shows it.
        id: i64,
    },
}

/// A token's settings as options. On `edit`, an option not given stays as
/// it is and `none` clears it.
#[derive(Debug, Args)]
pub struct TokenOpts {
    /// Model globs the token may use, separated by commas (`gpt-4o*,o3-mini`); `none`: every model.
    #[arg(long)]
    models: Option<String>,
    /// Requests per minute.
    #[arg(long, value_parser = limit)]
    rpm: Option<Clearable<u64>>,
    /// Tokens per minute (prompt plus the completion allowance, then what was used).
    #[arg(long, value_parser = limit)]
    tpm: Option<Clearable<u64>>,
    /// Requests per day (days begin in the configured `time_zone`).
    #[arg(long, value_parser = limit)]
    rpd: Option<Clearable<u64>>,
    /// Most requests in flight at once.
    #[arg(long, value_parser = limit)]
    max_inflight: Option<Clearable<u64>>,
    /// Budget in USD per `--period`; a request whose estimated cost would pass it is refused.
    #[arg(long, value_parser = budget)]
    budget: Option<Clearable<u64>>,
    /// What the budget covers: total (the token's life), daily or monthly (in `time_zone`).
    #[arg(long, value_parser = BudgetPeriod::parse)]
    period: Option<BudgetPeriod>,
    /// When the token stops working: a duration from now (30d), a date (YYYY-MM-DD) or RFC 3339.
    #[arg(long, value_parser = expiry)]
    expires: Option<Clearable<i64>>,
    /// Networks the token may be used from (CIDRs or addresses, separated by commas); `none`: anywhere.
    #[arg(long)]
    networks: Option<String>,
    /// Place in the wait queue: higher is served first (default 0).
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i64>,
    /// Refuse the token (401) until `tokens edit ID --enable`.
    #[arg(long)]
    disable: bool,
}

/// An option's value, or `none` to clear the setting (`None`). A newtype:
/// clap gives `Option<Option<T>>` a meaning of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clearable<T>(Option<T>);

fn none_or<T>(s: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Clearable<T>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        Ok(Clearable(None))
    } else {
        parse(s).map(|v| Clearable(Some(v)))
    }
}

fn limit(s: &str) -> Result<Clearable<u64>, String> {
    none_or(s, |s| match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1 (or none)")),
    })
}

fn budget(s: &str) -> Result<Clearable<u64>, String> {
    none_or(s, parse_usd)
}

fn expiry(s: &str) -> Result<Clearable<i64>, String> {
    none_or(s, parse_expiry)
}

impl TokenOpts {
    /// `settings` with these options applied.
    fn apply(&self, mut s: TokenSettings) -> anyhow::Result<TokenSettings> {
        // An empty value (an unset shell variable) must not open the token to
        // everything: only `none` clears a list.
        if let Some(models) = &self.models {
            s.models = if models.trim().eq_ignore_ascii_case("none") {
                None
            } else {
                let list = parse_models(models).map_err(|e| anyhow::anyhow!("--models: {e}"))?;
                Some(list.ok_or_else(|| anyhow::anyhow!("--models is empty; `--models none` allows every model"))?)
            };
        }
        if let Some(networks) = &self.networks {
            s.networks = if networks.trim().eq_ignore_ascii_case("none") {
                None
            } else {
                let list =
                    networks_from(std::slice::from_ref(networks)).map_err(|e| anyhow::anyhow!("--networks: {e}"))?;
                Some(list.ok_or_else(|| anyhow::anyhow!("--networks is empty; `--networks none` allows anywhere"))?)
            };
        }
        let set = |field: &mut Option<u64>, v: Option<Clearable<u64>>| {
            if let Some(Clearable(v)) = v {
                *field = v;
            }
        };
        set(&mut s.rpm, self.rpm);
        set(&mut s.tpm, self.tpm);
        set(&mut s.rpd, self.rpd);
        set(&mut s.max_inflight, self.max_inflight);
        set(&mut s.budget_micros, self.budget);
        if let Some(p) = self.period {
            s.budget_period = p;
        }
        if let Some(Clearable(e)) = self.expires {
            s.expires_at = e;
        }
        if let Some(p) = self.priority {
            s.priority = p;
        }
        if self.disable {
            s.enabled = false;
        }
        Ok(s)
    }
}

/// Whether `cmd` may create the database: only creating a token does.
pub fn creates_database(cmd: &TokensCommand) -> bool {
    matches!(cmd, TokensCommand::Create { .. })
}

/// A new gateway token and the prefix kept in clear to recognise it.
pub(crate) fn new_token() -> (String, String) {
    let token = generate_token();
    let prefix: String = token.chars().take(7).collect();
    (token, prefix)
}

/// What token `t` spent in its current budget period (micro-USD), from
/// the store: its lifetime total, or the daily statistics since the period
/// began in `tz`.
pub(crate) async fn spent_in_period(store: &Store, t: &TokenRecord, tz: &jiff::tz::TimeZone) -> anyhow::Result<u64> {
    Ok(match t.settings.budget_period {
        BudgetPeriod::Total => t.usage.spent_micros,
        period => {
            let (start, _) = period_bounds(period, tz, crate::store::now_unix());
            store.token_spent_since(t.id, start).await?
        }
    })
}

/// A token's status in one word: revoked, disabled, expired or active.
pub(crate) fn status(t: &TokenRecord) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if !t.settings.enabled {
        "disabled"
    } else if t.settings.expires_at.is_some_and(|at| at <= crate::store::now_unix()) {
        "expired"
    } else {
        "active"
    }
}

/// Dollars to the micro-USD the budgets count in, so a budget of $0.00005
/// does not read as $0.0001.
fn usd(micros: u64) -> String {
    format!("${:.6}", micros as f64 / 1e6)
}

fn limits_text(s: &TokenSettings) -> String {
    let mut parts = Vec::new();
    let mut put = |name: &str, v: Option<u64>| {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    };
    put("rpm", s.rpm);
    put("tpm", s.tpm);
    put("rpd", s.rpd);
    put("inflight", s.max_inflight);
    if let Some(nets) = &s.networks {
        parts.push(format!("from {}", nets.iter().map(|c| c.0.to_string()).collect::<Vec<_>>().join(",")));
    }
    if s.priority != 0 {
        parts.push(format!("priority {}", s.priority));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

pub async fn run(cmd: &TokensCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    let tz = jiff::tz::TimeZone::get(&config.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    match cmd {
        TokensCommand::Create { name, opts } => {
            let name = name.trim();
            if name.is_empty() {
                anyhow::bail!("a token needs a name (who or what uses it)");
            }
            let settings = opts.apply(TokenSettings::default())?;
            let (token, prefix) = new_token();
            let id = store.create_token_with(name, &hash_token(&token), &prefix, &settings).await?;
            println!("{token}");
            eprintln!("created token {id} ({name}); it is shown only this once");
        }
        TokensCommand::Edit { id, opts, enable } => {
            let t = store.token(*id).await?;
            if t.revoked_at.is_some() {
                anyhow::bail!("token {id} is revoked; create a new one");
            }
            let mut settings = opts.apply(t.settings.clone())?;
            if *enable {
                settings.enabled = true;
            }
            if settings == t.settings {
                eprintln!("nothing to change for token {id}");
                return Ok(());
            }
            store.set_token_settings(*id, &settings).await?;
            println!("edited token {id} ({}); a running server applies it within seconds", t.name);
        }
        TokensCommand::List { json } => {
            let tokens = store.list_tokens().await?;
            if !json {
                println!(
                    "{:>4}  {:<20} {:<10} {:<8} {:<16} {:<24} {:>9} {:>12} {:>12} {:>28} {:<20}",
                    "ID",
                    "NAME",
                    "PREFIX",
                    "STATUS",
                    "MODELS",
                    "LIMITS",
                    "REQUESTS",
                    "TOKENS",
                    "SPENT",
                    "BUDGET LEFT",
                    "EXPIRES"
                );
            }
            for t in tokens {
                let u = t.usage;
                let s = &t.settings;
                let spent = match s.budget_micros {
                    Some(_) => Some(spent_in_period(store, &t, &tz).await?),
                    None => None,
                };
                let left = s.budget_micros.zip(spent).map(|(b, spent)| b.saturating_sub(spent));
                if *json {
                    let line = serde_json::json!({
                        "id": t.id, "name": t.name, "prefix": t.prefix, "status": status(&t),
                        "models": s.models, "networks": s.networks.as_ref().map(|n| n.iter().map(|c| c.0.to_string()).collect::<Vec<_>>()),
                        "rpm": s.rpm, "tpm": s.tpm, "rpd": s.rpd, "max_inflight": s.max_inflight,
                        "budget_usd": s.budget_micros.map(|b| b as f64 / 1e6), "budget_period": s.budget_period.as_str(),
                        "budget_left_usd": left.map(|l| l as f64 / 1e6), "expires_at": s.expires_at, "priority": s.priority,
                        "requests": u.requests, "failures": u.failures,
                        "tokens": u.prompt_tokens.saturating_add(u.completion_tokens), "spent_usd": u.spent_micros as f64 / 1e6,
                    });
                    println!("{line}");
                    continue;
                }
                let models = s.models.as_ref().map_or_else(|| "*".to_owned(), |m| m.join(","));
                let budget = match (s.budget_micros, left) {
                    (Some(b), Some(l)) => format!("{} of {} {}", usd(l), usd(b), s.budget_period.as_str()),
                    _ => "-".to_owned(),
                };
                let expires = s.expires_at.map_or_else(
                    || "never".to_owned(),
                    |at| jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string()),
                );
                println!(
                    "{:>4}  {:<20} {:<10} {:<8} {:<16} {:<24} {:>9} {:>12} {:>12} {:>28} {:<20}",
                    t.id,
                    t.name,
                    format!("{}…", t.prefix),
                    status(&t),
                    models,
                    limits_text(s),
                    u.requests,
                    u.prompt_tokens.saturating_add(u.completion_tokens),
                    usd(u.spent_micros),
                    budget,
                    expires
                );
            }
        }
        TokensCommand::Revoke { id } => {
            store.revoke_token(*id).await?;
            println!("revoked token {id}");
        }
        TokensCommand::Regenerate { id } => {
            let (token, prefix) = new_token();
            store.regenerate_token(*id, &hash_token(&token), &prefix).await?;
            println!("{token}");
            eprintln!("token {id} has a new secret, shown only this once; the old one is refused within seconds");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TokensCommand,
    }

    fn opts(args: &[&str]) -> TokenOpts {
        let mut argv = vec!["t", "create", "name"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().cmd {
            TokensCommand::Create { opts, .. } => opts,
            _ => unreachable!(),
        }
    }

    #[test]
    fn options_set_and_none_clears() {
        let s = opts(&[
            "--models",
            "gpt-4o*, o3-mini",
            "--rpm",
            "60",
            "--tpm",
            "100000",
            "--budget",
            "10",
            "--period",
            "monthly",
            "--expires",
            "30d",
            "--networks",
            "10.0.0.0/8,192.168.0.1",
            "--priority",
            "-2",
        ])
        .apply(TokenSettings::default())
        .unwrap();
        assert_eq!(s.models, Some(vec!["gpt-4o*".to_owned(), "o3-mini".to_owned()]));
        assert_eq!((s.rpm, s.tpm, s.budget_micros), (Some(60), Some(100_000), Some(10_000_000)));
        assert_eq!(s.budget_period, BudgetPeriod::Monthly);
        let in_30d = crate::store::now_unix() + 30 * 86_400;
        assert!(s.expires_at.is_some_and(|at| (in_30d - 5..=in_30d + 5).contains(&at)), "{:?}", s.expires_at);
        assert_eq!(s.networks.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.priority, -2);
        let cleared = opts(&["--models", "none", "--rpm", "none", "--networks", "none", "--disable"]).apply(s).unwrap();
        assert_eq!((cleared.models, cleared.rpm, cleared.networks), (None, None, None));
        assert_eq!(cleared.tpm, Some(100_000), "what is not named stays");
        assert!(!cleared.enabled);
    }

    #[test]
    fn bad_values_are_refused_naming_the_option() {
        for args in [
            &["--rpm", "0"][..],
            &["--rpm", "1.5"],
            &["--budget", "-1"],
            &["--period", "weekly"],
            &["--expires", "2001-01-01"],
            &["--expires", "0s"],
        ] {
            let mut argv = vec!["t", "create", "name"];
            argv.extend_from_slice(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
        let e = opts(&["--networks", "10.0.0.0/33"]).apply(TokenSettings::default()).unwrap_err();
        assert!(e.to_string().starts_with("--networks:"), "{e}");
        for (option, value) in [("--models", ""), ("--models", " , "), ("--networks", "")] {
            let e = opts(&[option, value]).apply(TokenSettings::default()).unwrap_err();
            assert!(e.to_string().contains("none"), "{option} {value:?}: {e}");
        }
    }
}
