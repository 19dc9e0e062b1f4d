//! `keypool keys test [ID…]`: sends each key the cheapest request there is
//! (`GET /models`, or a one-token chat with `--model`) and reports what the
//! upstream said, as one-api's channel test does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use secrecy::ExposeSecret;

use crate::config::{mask_key, Config};
use crate::store::{KeyRecord, Store};
use crate::upstream::{Account, OutBody, Upstream};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Ids of the keys to test (default: every enabled key).
    pub ids: Vec<i64>,
    /// Test with a one-token chat completion on this model instead of `GET /models`.
    #[arg(long)]
    pub model: Option<String>,
    /// Upstream base URL to test every key against (default: each key's own
    /// upstream, as configured, with its proxy, CA file and headers).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Longest to wait for each key's answer.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What one key's test found.
pub(crate) struct Report {
    pub status: Option<u16>,
    /// The upstream's error `code` (or `type`) and `message`, with the key masked.
    pub error: Option<(String, String)>,
    pub latency: Duration,
}

pub async fn run(args: &TestArgs, store: &Store, config: &Config) -> anyhow::Result<()> {
    let keys: Vec<KeyRecord> = store
        .list_keys()
        .await?
        .into_iter()
        .filter(|k| if args.ids.is_empty() { k.enabled } else { args.ids.contains(&k.id) })
        .collect();
    if let Some(missing) = args.ids.iter().find(|id| !keys.iter().any(|k| k.id == **id)) {
        anyhow::bail!("no key with id {missing} (see `keypool keys list`)");
    }
    if keys.is_empty() {
        anyhow::bail!("no enabled keys to test: add one with `keypool keys add`");
    }
    let what = args.model.as_deref().map_or("GET /models".to_owned(), |m| format!("a one-token chat on {m}"));
    // Each key against its own upstream (or every key against --upstream).
    let listed = config.upstream_list();
    let mut clients: Vec<(String, Upstream)> = Vec::new();
    let mut client_for = |key: &KeyRecord| -> anyhow::Result<(String, Upstream)> {
        let name = key.upstream.clone().unwrap_or_else(|| config.default_upstream());
        if let Some((_, c)) = clients.iter().find(|(n, _)| *n == name) {
            return Ok((name, c.clone()));
        }
        let client = match args.upstream.as_deref() {
            Some(base) => Upstream::new(base, config.proxy.as_deref(), config.timeouts.connect)?,
            None => {
                let Some(u) = listed.iter().find(|u| u.name == name) else {
                    anyhow::bail!("key {} belongs to the upstream {name:?}, which is not configured", key.id);
                };
                Upstream::for_upstream(u, config)?
            }
        };
        clients.push((name.clone(), client.clone()));
        Ok((name, client))
    };
    match args.upstream.as_deref() {
        Some(base) => {
            eprintln!("testing {} key(s) with {what} against {}", keys.len(), crate::config::mask_url_password(base))
        }
        None => eprintln!("testing {} key(s) with {what}, each against its upstream", keys.len()),
    }
    let mut failed = 0;
    for key in &keys {
        let (upstream_name, upstream) = match client_for(key) {
            Ok(found) => found,
            Err(e) => {
                failed += 1;
                println!("key {}: FAILED, {e}", key.id);
                continue;
            }
        };
        let report = test_one(&upstream, key, args.model.as_deref(), args.timeout).await;
        let name = format!(
            "key {} ({}{}) on {upstream_name}",
            key.id,
            mask_key(key.secret.expose_secret()),
            key.label.as_deref().map(|l| format!(", {l}")).unwrap_or_default()
        );
        let ms = report.latency.as_millis();
        match (report.status, &report.error) {
            (Some(s), None) if (200..300).contains(&s) => println!("{name}: ok, {s} in {ms} ms"),
            (status, error) => {
                failed += 1;
                let status = status.map_or("no answer".to_owned(), |s| s.to_string());
                let (code, message) = error.clone().unwrap_or_default();
                println!("{name}: FAILED, {status} {code}: {message} ({ms} ms)");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} keys failed the test", keys.len());
    }
    Ok(())
}

/// Sends `key` the cheapest request (`GET /models`, or a one-token chat on
/// `model`) and reports the upstream's answer; waits at most `timeout`.
pub(crate) async fn test_one(upstream: &Upstream, key: &KeyRecord, model: Option<&str>, timeout: Duration) -> Report {
    let started = Instant::now();
    let secret = key.secret.expose_secret();
    let scrub = |text: &str| text.replace(secret, &mask_key(secret));
    let failed = |error: (String, String)| Report { status: None, error: Some(error), latency: started.elapsed() };
    let (method, path, body) = match model {
        None => (Method::GET, "models", Bytes::new()),
        Some(model) => {
            let body = serde_json::json!({
                "model": upstream.body_model(model).unwrap_or(model), "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            });
            (Method::POST, "chat/completions", Bytes::from(body.to_string()))
        }
    };
    let Some(url) = upstream.url_to(path, None, model) else {
        return failed(("bad_url".into(), "the upstream URL cannot take this path".into()));
    };
    let mut headers = HeaderMap::new();
    if method == Method::POST {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let account = Account::new(key.organization.as_deref(), key.project.as_deref());
    let asked = async {
        let answer = upstream.send(method, url, &headers, key.id, &key.secret, &account, OutBody::Bytes(body)).await?;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok::<_, crate::upstream::UpstreamError>((status, body))
    };
    match tokio::time::timeout(timeout, asked).await {
        Err(_) => failed(("timeout".into(), format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => failed(("unreachable".into(), scrub(&e.to_string()))),
        Ok(Ok((status, body))) => {
            let latency = started.elapsed();
            if (200..300).contains(&status) {
                return Report { status: Some(status), error: None, latency };
            }
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let err = &parsed["error"];
            let code = err["code"].as_str().or(err["type"].as_str()).unwrap_or("error").to_owned();
            let message = match err["message"].as_str() {
                Some(m) => m.to_owned(),
                None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            };
            Report { status: Some(status), error: Some((code, scrub(&message))), latency }
        }
    }
}
