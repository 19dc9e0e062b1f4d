//! Asking a running server through its admin API (`GET /admin/api/keys`),
//! so `keys list` shows live state (remaining requests, in flight, cooling)
//! instead of what the server last saved.

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// How long the CLI waits for a server before reading the store instead.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The admin API's address for `config.listen` (a wildcard address is
/// asked on loopback).
fn base_url(config: &Config) -> String {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    format!("http://{addr}/admin/api")
}

/// Every key as the running server sees it, or `None` (said on stderr)
/// when no admin token is configured or the server does not answer.
pub async fn keys(config: &Config) -> Option<Vec<Value>> {
    let token = config.admin_token.as_ref()?.expose()?;
    let url = format!("{}/keys", base_url(config));
    let client = reqwest::Client::builder().timeout(ASK_TIMEOUT).no_proxy().build().ok()?;
    let answer = client.get(&url).bearer_auth(token).send().await;
    let why = match answer {
        Ok(r) if r.status().is_success() => match r.json::<Vec<Value>>().await {
            Ok(keys) => {
                eprintln!("keys: live, from the server at {url}");
                return Some(keys);
            }
            Err(e) => format!("its answer did not read as a key list ({e})"),
        },
        Ok(r) => format!("it answered {}", r.status()),
        Err(e) if e.is_connect() => "no server is listening there".to_owned(),
        Err(e) => e.to_string(),
    };
    eprintln!("keys: as last saved (could not ask the server at {url}: {why})");
    None
}

/// Prints the server's keys: `--json` as the admin API gives them, else
/// the same table as the store's list, with live figures.
pub fn print_keys(keys: &[Value], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(keys)?);
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys yet: add one with `keypool keys add sk-...` or `keypool keys import FILE`");
        return Ok(());
    }
    println!(
        "{:>4}  {:<12} {:<16} {:<12} {:<9} {:>6} {:>8} {:>9} {:>8} {:>7} {:>9} {:>17} {:>10}  WHY/UNTIL",
        "ID",
        "KEY",
        "LABEL",
        "UPSTREAM",
        "STATUS",
        "RPM",
        "TPM",
        "REQUESTS",
        "SUCCESS",
        "FAILED",
        "LEFT/MIN",
        "SPENT/BUDGET USD",
        "BALANCE"
    );
    let text = |v: &Value| v.as_str().map_or("-".to_owned(), str::to_owned);
    let num = |v: &Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
    for k in keys {
        let usd = |v: &Value| v.as_u64().map(|m| m as f64 / 1e6);
        let why = match k["cooling_until_ms"].as_i64() {
            Some(ms) => format!("until {}", rfc3339(ms)),
            None => k["reason"].as_str().or(k["last_error"].as_str()).unwrap_or("").to_owned(),
        };
        println!(
            "{:>4}  {:<12} {:<16} {:<12} {:<9} {:>6} {:>8} {:>9} {:>8} {:>7} {:>9} {:>17} {:>10}  {}",
            num(&k["id"]),
            text(&k["key"]),
            text(&k["label"]),
            text(&k["upstream"]),
            text(&k["status"]),
            num(&k["effective_rpm"]),
            num(&k["effective_tpm"]),
            num(&k["requests"]),
            num(&k["successes"]),
            num(&k["failures"]),
            num(&k["remaining_requests"]),
            format!(
                "{:.4}/{}",
                usd(&k["spent_micros"]).unwrap_or(0.0),
                usd(&k["budget_micros"]).map_or("-".to_owned(), |b| format!("{b:.2}"))
            ),
            usd(&k["balance_micros"]).map_or("-".to_owned(), |b| format!("{b:.4}")),
            why
        );
    }
    Ok(())
}

fn rfc3339(ms: i64) -> String {
    let secs = u64::try_from(ms.div_euclid(1000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
