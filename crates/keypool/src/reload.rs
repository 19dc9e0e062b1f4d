//! Applying a changed configuration without a restart: the config file is
//! watched (and `SIGHUP` asks for a look at once); a new configuration is
//! loaded and checked whole, and only then put in force. What it changes
//! of the upstreams (`[[upstreams]]`, `[model_aliases]`, and the single
//! `upstream` with `proxy`, `ca_file` and `stream_usage`) applies to the
//! next requests; requests in flight finish on the upstreams they began
//! with. An invalid file is refused with its error in the log, and the
//! configuration in force stays. Other settings are read at start: a
//! change to them is named in a warning and waits for a restart.
//!
//! The file is polled (every [`POLL`]) rather than watched with inotify:
//! editors and config-management tools replace files in ways (rename over,
//! symlink swaps as Kubernetes ConfigMaps do) that a stat of the path sees
//! and a watch on the old inode misses, and a poll of one file costs
//! nothing. The delay measured from a write to the change in force is in
//! docs/upstreams.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::routing::{Changes, Pool, PoolSet, Pools};
use crate::server::Clients;
use crate::store::Store;
use crate::upstream::Upstream;

/// How often the config file is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// Where the configuration comes from: the file to watch, and how to load
/// the whole configuration again (file, environment and flags, as at start).
#[derive(Clone)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub load: Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
}

/// Why a new configuration was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("an upstream's client could not be built: {0}")]
    Client(#[from] crate::upstream::UpstreamError),
    #[error("the keys could not be read: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Starts the probes of `pool`'s keys and of the upstream itself; they end
/// when the pool is gone or keypool stops.
pub fn spawn_probes(pool: &Pool, client: Upstream, config: &Config) {
    let stop = pool.probes_stop();
    tokio::spawn(crate::health::probe_keys(
        Arc::clone(&pool.scheduler),
        client.clone(),
        config.health.clone(),
        stop.clone(),
    ));
    if let Some(api) = crate::upstream::providers::of(pool.upstream.provider.as_deref()) {
        let every = pool.upstream.balance_interval.unwrap_or(crate::config::BALANCE_INTERVAL);
        tokio::spawn(crate::health::read_balances(
            Arc::clone(&pool.scheduler),
            client.clone(),
            api,
            every,
            stop.clone(),
        ));
    }
    tokio::spawn(crate::health::probe_upstream(
        Arc::clone(&pool.breaker),
        Arc::clone(&pool.scheduler),
        client,
        config.health.upstream_probe,
        stop,
    ));
}

/// Watches `source` until `stop`, applying each change (see the module docs).
/// `asked` is notified to look at once (`SIGHUP`).
pub async fn watch(
    source: Source,
    mut current: Config,
    pools: Arc<Pools>,
    store: Store,
    keys_lock: KeysLock,
    stop: CancellationToken,
    asked: Arc<Notify>,
) {
    let read = |file: &Option<PathBuf>| {
        let file = file.clone();
        async move {
            match file {
                Some(f) => tokio::fs::read(&f).await.ok(),
                None => None,
            }
        }
    };
    let mut seen = read(&source.file).await;
    // A change is applied once the file reads the same on two looks in a
    // row: a look between an editor's truncate and its write sees an empty
    // or partial file, which must not be put in force.
    let mut pending: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = asked.notified() => true,
        };
        let now = read(&source.file).await;
        if !forced {
            let Some(bytes) = now.filter(|b| !b.is_empty()) else {
                // Gone or empty: no change until it is back (a swap under way).
                if seen.is_some() && pending.is_none() {
                    tracing::debug!("the config file is missing or empty; waiting for it");
                }
                continue;
            };
            if Some(&bytes) == seen.as_ref() {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&bytes) {
                pending = Some(bytes);
                continue;
            }
            seen = pending.take();
        } else {
            seen = now;
            pending = None;
        }
        let loaded = (source.load)();
        let guard = keys_lock.lock().await;
        let applied = apply(loaded, &current, &pools, &store, &stop).await;
        drop(guard);
        match applied {
            Ok((new, changes)) => {
                for setting in needs_restart(&current, &new) {
                    tracing::warn!(setting, "changed in the config file: it applies after a restart");
                }
                if changes.is_empty() {
                    tracing::info!("configuration read again: the upstreams are unchanged");
                } else {
                    tracing::info!(
                        added = ?changes.added,
                        changed = ?changes.changed,
                        removed = ?changes.removed,
                        "configuration reloaded: the upstreams changed"
                    );
                }
                current = new;
            }
            Err(e) => tracing::error!(
                error = %e,
                "the changed configuration is refused; the one in force stays (fix the file and save it again)"
            ),
        }
    }
}

/// Held while keys are read from the store and given to the pools, by the
/// reload and by the key sync alike: otherwise one could give the pools an
/// older key list after the other gave a newer one.
pub type KeysLock = Arc<tokio::sync::Mutex<()>>;

/// Puts `loaded` in force if it is valid: a new set of pools (keeping what
/// each unchanged upstream learned), its clients built once to prove they
/// can be, the keys given to their upstreams, probes started for new and
/// changed upstreams. Returns the configuration and what changed.
pub async fn apply(
    loaded: Result<Config, ConfigError>,
    current: &Config,
    pools: &Pools,
    store: &Store,
    stop: &CancellationToken,
) -> Result<(Config, Changes), ReloadError> {
    let new = loaded?;
    new.validate()?;
    if !current.upstreams.is_empty() && new.upstreams.is_empty() && new.upstream == Config::default().upstream {
        return Err(ReloadError::Config(ConfigError::Invalid {
            setting: "upstreams",
            reason: "the new file configures no upstream (neither [[upstreams]] nor `upstream`): keys would go to \
                     the built-in default"
                .into(),
        }));
    }
    // Settings read only at start keep their running values; the upstreams
    // are built from the new file with the running globals they fall back on.
    let mut effective = current.clone();
    effective.upstream = new.upstream.clone();
    effective.proxy = new.proxy.clone();
    effective.ca_file = new.ca_file.clone();
    effective.stream_usage = new.stream_usage;
    effective.upstreams = new.upstreams.clone();
    effective.model_aliases = new.model_aliases.clone();
    effective.validate()?;
    let old = pools.load();
    let (set, changes) = PoolSet::build(&effective, Some(&old), stop);
    if changes.is_empty() && effective.model_aliases == current.model_aliases {
        // Nothing for the pools: the set in force (and every worker's clients) stays.
        return Ok((effective, changes));
    }
    let clients = Clients::build(&set, &effective)?;
    let keys = store.list_keys().await?;
    let orphans = set.sync_keys(&keys);
    // Keys new to a pool get what an earlier run learned of them.
    let saved = store.load_key_states().await?;
    for pool in set.all() {
        if !old.all().iter().any(|p| Arc::ptr_eq(&p.scheduler, &pool.scheduler)) {
            pool.scheduler.restore_state(&saved);
        }
    }
    for (pool, client) in set.all().iter().zip(clients.into_list()) {
        if !old.all().iter().any(|p| Arc::ptr_eq(p, pool)) {
            spawn_probes(pool, client, &effective);
        }
    }
    let (was, now) = (old.default_pool().name().to_owned(), set.default_pool().name().to_owned());
    if was != now {
        let moved = keys.iter().filter(|k| k.upstream.is_none()).count();
        tracing::warn!(
            from = was,
            to = now,
            keys = moved,
            "the default upstream changed: keys added without --upstream now go to the first [[upstreams]] entry"
        );
    }
    pools.replace(set);
    for (id, upstream) in orphans {
        tracing::warn!(key_id = id, upstream, "the key's upstream is not configured any more: it serves nowhere");
    }
    Ok((effective, changes))
}

/// Top-level settings that differ between `old` and `new` and are read
/// only at start.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.upstream = String::new();
        c.proxy = None;
        c.ca_file = None;
        c.stream_usage = false;
        c.upstreams = Vec::new();
        c.model_aliases = Default::default();
        toml::Value::try_from(&c).ok()
    };
    match (strip(old), strip(new)) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
            let mut names: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
            names.sort();
            names.dedup();
            names
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_read_only_at_start_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.pool.max_wait = Duration::from_secs(3);
        new.upstream = "https://relay.example.com/v1".into();
        new.log = "debug".into();
        assert_eq!(needs_restart(&old, &new), ["log", "pool"]);
        assert!(needs_restart(&old, &old).is_empty());
    }
}
