//! Many upstreams behind one endpoint: each upstream's key pool (its own
//! scheduler, breaker and learned quirks), which upstreams serve a model,
//! in which order they are tried, and model aliases.
//!
//! The rule (issue 16, as in one-api's channels): a request goes to the
//! upstreams whose `models` globs match its model, highest `priority` first;
//! within one priority, by `weight` (smooth weighted round-robin, as nginx
//! does it: deterministic, and spread evenly rather than in runs) among those
//! with room now. An alias replaces the model by its targets, tried in order.
//! The server asks [`Pools::plan`] for the order and leases from each pool's
//! scheduler; waiting, when no upstream has room, is on all of them at once.

mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

use crate::config::{Config, UpstreamConfig};
use crate::scheduler::{
    DefaultLimits, KeyCounts, KeyView, PoolFigures, Probed, Scheduler, SchedulerConfig, WindowResets,
};
use crate::store::{KeyRecord, SavedKeyState};
use crate::upstream::{Breaker, Quirks};

pub use plan::{Candidate, Plan, RouteError};

/// One upstream's shared state: what every worker's request to it uses.
#[derive(Debug)]
pub struct Pool {
    /// The upstream's settings (name, models, priority, weight, …).
    pub upstream: UpstreamConfig,
    pub scheduler: Arc<Scheduler>,
    /// Opens when the upstream fails for every key.
    pub breaker: Arc<Breaker>,
    /// What the upstream is known to refuse.
    pub quirks: Arc<Quirks>,
    /// Whether keypool adds `stream_options.include_usage` for it (its own
    /// `stream_usage`, else the global one).
    pub stream_usage: bool,
    /// Its own model list as last fetched (`GET /v1/models`), and when.
    models: Mutex<Option<(Instant, Arc<Vec<serde_json::Value>>)>>,
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.upstream.name
    }

    /// Its model list when fetched less than `ttl` ago.
    pub fn cached_models(&self, ttl: Duration) -> Option<Arc<Vec<serde_json::Value>>> {
        let cached = self.models.lock().unwrap_or_else(|p| p.into_inner());
        cached.as_ref().filter(|(at, _)| at.elapsed() < ttl).map(|(_, list)| Arc::clone(list))
    }

    /// Keeps `list` as its model list, fetched now.
    pub fn cache_models(&self, list: Vec<serde_json::Value>) -> Arc<Vec<serde_json::Value>> {
        let list = Arc::new(list);
        *self.models.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), Arc::clone(&list)));
        list
    }
}

/// Every upstream's pool, in config order (the default first), with the
/// routing of models among them.
#[derive(Debug)]
pub struct Pools {
    pools: Vec<Pool>,
    plans: plan::Planner,
}

impl Pools {
    /// The pools `config` describes, with no keys yet.
    pub fn from_config(config: &Config) -> Pools {
        let pools = config
            .upstream_list()
            .into_iter()
            .map(|upstream| {
                let l = &upstream.limits;
                let scheduler = Scheduler::new(SchedulerConfig {
                    defaults: DefaultLimits {
                        rpm: l.rpm.or(config.limits.rpm),
                        tpm: l.tpm.or(config.limits.tpm),
                        rpd: l.rpd.or(config.limits.rpd),
                        max_inflight: l.max_inflight.or(config.limits.max_inflight),
                    },
                    strategy: config.pool.strategy,
                    max_wait: config.pool.max_wait,
                    max_queue: config.pool.max_queue,
                    probe_invalid: config.health.probe_invalid,
                    probe_exhausted: config.health.probe_exhausted,
                });
                Pool {
                    stream_usage: upstream.stream_usage.unwrap_or(config.stream_usage),
                    upstream,
                    scheduler,
                    breaker: Arc::new(Breaker::new(config.health.upstream_failures)),
                    quirks: Arc::new(Quirks::default()),
                    models: Mutex::new(None),
                }
            })
            .collect::<Vec<_>>();
        let plans = plan::Planner::new(&config.model_aliases);
        Pools { pools, plans }
    }

    /// A single pool over `scheduler` as the default upstream (tests and
    /// benches that drive one scheduler directly).
    pub fn single(config: &Config, scheduler: Arc<Scheduler>) -> Pools {
        let mut pools = Pools::from_config(config);
        pools.pools.truncate(1);
        if let Some(p) = pools.pools.first_mut() {
            p.scheduler = scheduler;
        }
        pools.plans = plan::Planner::new(&Default::default());
        pools
    }

    pub fn all(&self) -> &[Pool] {
        &self.pools
    }

    pub fn get(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index)
    }

    /// The default upstream's pool (the first configured).
    pub fn default_pool(&self) -> &Pool {
        // from_config always builds at least one (the legacy upstream).
        &self.pools[0]
    }

    /// The pool named `name`.
    pub fn by_name(&self, name: &str) -> Option<(usize, &Pool)> {
        self.pools.iter().enumerate().find(|(_, p)| p.name() == name)
    }

    /// Where a request for `model` may go, in order (see the module docs);
    /// `None` (no model in the body): the default upstream.
    pub fn plan(&self, model: Option<&str>) -> Result<Arc<Plan>, RouteError> {
        self.plans.plan(&self.pools, model)
    }

    /// The index of `pool` among [`Pools::all`] (0 if it is not one of them).
    pub fn index_of(&self, pool: &Pool) -> usize {
        self.pools.iter().position(|p| std::ptr::eq(p, pool)).unwrap_or(0)
    }

    /// The pool whose scheduler holds key `id`.
    pub fn pool_of_key(&self, id: i64) -> Option<&Pool> {
        self.pools.iter().find(|p| p.scheduler.has_key(id))
    }

    /// Gives each pool the keys that belong to it: a key's `upstream`, or
    /// the default one when it names none. Keys naming an upstream that is
    /// not configured serve nowhere (kept in the store, shown as disabled).
    /// Returns how many keys name a missing upstream, with their names.
    pub fn sync_keys(&self, records: &[KeyRecord]) -> Vec<(i64, String)> {
        let mut by_pool: Vec<Vec<KeyRecord>> = self.pools.iter().map(|_| Vec::new()).collect();
        let mut orphans = Vec::new();
        for r in records {
            let index = match r.upstream.as_deref() {
                None => Some(0),
                Some(name) => self.by_name(name).map(|(i, _)| i),
            };
            match index {
                Some(i) => by_pool[i].push(r.clone()),
                None => orphans.push((r.id, r.upstream.clone().unwrap_or_default())),
            }
        }
        for (pool, keys) in self.pools.iter().zip(by_pool) {
            pool.scheduler.sync_keys(&keys);
        }
        orphans
    }

    /// Keys counted by state over every upstream.
    pub fn census(&self) -> KeyCounts {
        let mut all = KeyCounts::default();
        for p in &self.pools {
            all.merge(&p.scheduler.census());
        }
        all
    }

    /// Every key's live view, by id.
    pub fn snapshot(&self) -> Vec<KeyView> {
        let mut all: Vec<KeyView> = self.pools.iter().flat_map(|p| p.scheduler.snapshot()).collect();
        all.sort_by_key(|v| v.id);
        all
    }

    /// Every key's live view with the name of its upstream.
    pub fn snapshot_by_upstream(&self) -> HashMap<i64, &str> {
        self.pools.iter().flat_map(|p| p.scheduler.key_ids().into_iter().map(move |id| (id, p.name()))).collect()
    }

    pub fn window_resets(&self) -> Vec<WindowResets> {
        let mut all: Vec<WindowResets> = self.pools.iter().flat_map(|p| p.scheduler.window_resets()).collect();
        all.sort_by_key(|r| r.key_id);
        all
    }

    /// Requests waiting for a key, over every upstream.
    pub fn queue_len(&self) -> usize {
        self.pools.iter().map(|p| p.scheduler.queue_len()).sum()
    }

    /// Keys that can serve at all, over every upstream.
    pub fn usable_keys(&self) -> usize {
        self.pools.iter().map(|p| p.scheduler.usable_keys()).sum()
    }

    /// In flight, waiting and capacity summed over every upstream.
    pub fn pool_figures(&self) -> PoolFigures {
        let mut all = PoolFigures::default();
        for p in &self.pools {
            all.merge(&p.scheduler.pool_figures());
        }
        all
    }

    /// Whether any upstream's keys need prompts counted with the tokenizer.
    pub fn counts_tokens(&self) -> bool {
        self.pools.iter().any(|p| p.scheduler.counts_tokens())
    }

    /// Zeroes key `id`'s live totals (wherever it is); false if unknown.
    pub fn reset_totals(&self, id: i64) -> bool {
        self.pools.iter().any(|p| p.scheduler.reset_totals(id))
    }

    /// Takes a probe's result for key `id` (wherever it is).
    pub fn probe_result(&self, id: i64, probed: Probed) {
        if let Some(p) = self.pool_of_key(id) {
            p.scheduler.probe_result(id, probed);
        }
    }

    /// What every scheduler learned, to be saved.
    pub fn export_state(&self) -> Vec<SavedKeyState> {
        let mut all: Vec<SavedKeyState> = self.pools.iter().flat_map(|p| p.scheduler.export_state()).collect();
        all.sort_by_key(|s| s.key_id);
        all
    }

    /// Gives saved state back to the schedulers that hold the keys; returns
    /// how many keys it restored as not active.
    pub fn restore_state(&self, saved: &[SavedKeyState]) -> usize {
        self.pools.iter().map(|p| p.scheduler.restore_state(saved)).sum()
    }
}

#[cfg(test)]
mod tests;
