//! `keypool config check`: the effective settings (secrets masked) on stdout,
//! then every warning on stderr, with the keys' budgets read from the
//! database when it exists (opened read-only, never created).

use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row};

use crate::config::{Config, KeyFacts};

pub async fn run(config: &Config) -> anyhow::Result<()> {
    print!("{}", config.to_masked_toml()?);
    let keys = match read_keys(&config.database_url, config.keyring.clone()).await {
        Ok(keys) => Some(keys),
        Err(why) => {
            eprintln!("note: checks of keys skipped: {why}");
            None
        }
    };
    let table = crate::config::models::builtin_prices();
    eprintln!(
        "note: {} built-in model prices ({}, taken {}); a price in [models] or [prices] overrides them",
        table.models.len(),
        table.source,
        table.taken
    );
    let warnings = config.warnings(keys.as_deref());
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("configuration is valid ({} warning(s))", warnings.len());
    Ok(())
}

/// What the checks need from the stored keys, read without writing anything
/// (a PostgreSQL database without keypool's tables is left without them).
async fn read_keys(url: &str, keyring: Option<crate::crypt::Keyring>) -> Result<Vec<KeyFacts>, String> {
    if crate::store::Backend::of(url) == Some(crate::store::Backend::Postgres) {
        let shown = crate::store::database_path(url);
        let store = crate::store::Store::open(url, crate::store::Create::Never)
            .await
            .map_err(|e| e.to_string())?
            .with_keyring(keyring);
        let keys = store.list_keys().await.map_err(|e| format!("cannot read keys from {shown}: {e}"));
        store.close().await;
        return Ok(keys?
            .into_iter()
            .map(|k| KeyFacts { id: k.id, enabled: k.enabled, budget_micros: k.budget_micros })
            .collect());
    }
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("database URL {url}: {e}"))?
        .read_only(true)
        .create_if_missing(false);
    let path = opts.get_filename().to_owned();
    if !path.exists() {
        return Err(format!("no database at {}", path.display()));
    }
    let mut conn = opts.connect().await.map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let rows = sqlx::query("SELECT id, enabled, budget_micros FROM keys")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| format!("cannot read keys from {}: {e}", path.display()))?;
    rows.iter()
        .map(|r| {
            Ok(KeyFacts {
                id: r.try_get("id")?,
                enabled: r.try_get("enabled")?,
                budget_micros: r.try_get::<Option<i64>, _>("budget_micros")?.map(|b| u64::try_from(b).unwrap_or(0)),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| format!("cannot read keys from {}: {e}", path.display()))
}
