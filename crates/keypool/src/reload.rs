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
    stop: CancellationToken,
    asked: Arc<Notify>,
) {
    let mut seen = source.file.as_deref().and_then(|f| std::fs::read(f).ok());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = asked.notified() => true,
        };
        let now = source.file.as_deref().and_then(|f| std::fs::read(f).ok());
        if !forced && now == seen {
            continue;
        }
        seen = now;
        let loaded = (source.load)();
        match apply(loaded, &current, &pools, &store, &stop).await {
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
    let clients = Clients::build(&set, &effective)?;
    let keys = store.list_keys().await?;
    let orphans = set.sync_keys(&keys);
    for (pool, client) in set.all().iter().zip(clients.into_list()) {
        if !old.all().iter().any(|p| Arc::ptr_eq(p, pool)) {
            spawn_probes(pool, client, &effective);
        }
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
