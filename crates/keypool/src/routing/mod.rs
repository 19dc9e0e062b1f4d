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

pub mod affinity;
mod plan;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Config, UpstreamConfig};
use crate::scheduler::{
    DefaultLimits, KeyCounts, KeyView, PoolFigures, Probed, Scheduler, SchedulerConfig, WindowResets,
};
use crate::store::{KeyRecord, SavedKeyState};
use crate::upstream::{Breaker, Quirks};

pub use affinity::Affinity;
pub use plan::{Candidate, Plan, RouteError};

/// One upstream's shared state: what every worker's request to it uses.
pub struct Pool {
    /// The upstream's settings (name, models, priority, weight, …).
    pub upstream: UpstreamConfig,
    /// Its keys' live state: limits, reservations, the wait queue.
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
    /// Stops this pool's probe tasks (started by `app`) once the pool is
    /// gone: a reload dropped or changed its upstream, or keypool stopped.
    probes: CancellationToken,
    _stop_probes: DropGuard,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("upstream", &self.upstream.name).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `upstream` over `state` (a scheduler, breaker and quirks,
    /// new or kept from the upstream's earlier pool); its probes stop with `stop`.
    fn new(upstream: UpstreamConfig, config: &Config, state: Option<&Pool>, stop: &CancellationToken) -> Pool {
        // Where requests go and how: a change to it makes a new breaker and
        // quirks (what was learned of the old address says nothing of the new).
        let same_transport = |p: &Pool| {
            let (a, b) = (&p.upstream, &upstream);
            a.base_url == b.base_url && a.proxy == b.proxy && a.ca_file == b.ca_file && a.headers == b.headers
        };
        let (scheduler, breaker, quirks) = match state {
            Some(p) if same_transport(p) => (Arc::clone(&p.scheduler), Arc::clone(&p.breaker), Arc::clone(&p.quirks)),
            Some(p) => (
                Arc::clone(&p.scheduler),
                Arc::new(Breaker::new(config.health.upstream_failures, &upstream.name)),
                Arc::new(Quirks::default()),
            ),
            None => (
                Scheduler::new(scheduler_config(&upstream, config)),
                Arc::new(Breaker::new(config.health.upstream_failures, &upstream.name)),
                Arc::new(Quirks::default()),
            ),
        };
        let probes = stop.child_token();
        Pool {
            stream_usage: upstream.stream_usage.unwrap_or(config.stream_usage),
            upstream,
            scheduler,
            breaker,
            quirks,
            models: Mutex::new(None),
            _stop_probes: probes.clone().drop_guard(),
            probes,
        }
    }

    pub fn name(&self) -> &str {
        &self.upstream.name
    }

    /// Cancelled when this pool is gone: its probe tasks end then.
    pub fn probes_stop(&self) -> CancellationToken {
        self.probes.clone()
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

/// The spans Azure OpenAI counts requests over: "typically 1 or 10
/// seconds" (its quota guide, "Understanding rate limits"). Both are kept
/// (the 10 s one is what its `x-ratelimit-remaining-requests` tells); a
/// refusal with room in both lowers the 10 s share (`scheduler::period`).
const AZURE_REQUEST_SPANS: &[std::time::Duration] =
    &[std::time::Duration::from_secs(10), std::time::Duration::from_secs(1)];

/// The scheduler settings for `upstream`'s keys: its limits over the global ones.
fn scheduler_config(upstream: &UpstreamConfig, config: &Config) -> SchedulerConfig {
    let l = &upstream.limits;
    let azure = upstream.kind == crate::config::UpstreamKind::Azure;
    SchedulerConfig {
        defaults: DefaultLimits {
            rpm: l.rpm.or(config.limits.rpm),
            tpm: l.tpm.or(config.limits.tpm),
            rpd: l.rpd.or(config.limits.rpd),
            max_inflight: l.max_inflight.or(config.limits.max_inflight),
            requests_per: if azure { AZURE_REQUEST_SPANS } else { &[] },
            rpm_per_thousand_tpm: azure.then_some(6),
        },
        strategy: config.pool.strategy,
        max_wait: config.pool.max_wait,
        max_queue: config.pool.max_queue,
        probe_invalid: config.health.probe_invalid,
        probe_exhausted: config.health.probe_exhausted,
    }
}

/// Every upstream's pool as one configuration describes them, in config
/// order (the default first), with the routing of models among them. A
/// set never changes; a reload makes a new one ([`Pools::replace`]).
#[derive(Debug)]
pub struct PoolSet {
    /// Counts sets: a worker's clients are built for one.
    generation: u64,
    pools: Vec<Arc<Pool>>,
    plans: plan::Planner,
}

/// What a new set kept from the one before and what it changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Upstreams new in this set.
    pub added: Vec<String>,
    /// Upstreams whose settings changed (their keys' state kept).
    pub changed: Vec<String>,
    /// Upstreams no longer configured (their keys then serve nowhere).
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl PoolSet {
    /// The pools `config` describes. An upstream the `previous` set had
    /// under the same name keeps its pool when its settings are the same,
    /// else its keys' state (scheduler, breaker, quirks) in a new pool.
    /// Pools' probes stop with `stop`.
    pub fn build(config: &Config, previous: Option<&PoolSet>, stop: &CancellationToken) -> (PoolSet, Changes) {
        let mut changes = Changes::default();
        let pools: Vec<Arc<Pool>> = config
            .upstream_list()
            .into_iter()
            .map(|mut upstream| {
                // The globals it falls back on, resolved: a change to them is a change to it.
                upstream.proxy = upstream.proxy.or_else(|| config.proxy.clone());
                upstream.ca_file = upstream.ca_file.or_else(|| config.ca_file.clone());
                upstream.stream_usage = Some(upstream.stream_usage.unwrap_or(config.stream_usage));
                let before = previous.and_then(|p| p.by_name(&upstream.name)).map(|(_, pool)| pool);
                match before {
                    Some(pool) if pool.upstream == upstream => Arc::clone(pool),
                    Some(pool) => {
                        if scheduler_config(&pool.upstream, config).defaults
                            != scheduler_config(&upstream, config).defaults
                        {
                            tracing::warn!(
                                upstream = upstream.name,
                                "its limits changed: they apply to its keys after a restart"
                            );
                        }
                        changes.changed.push(upstream.name.clone());
                        Arc::new(Pool::new(upstream, config, Some(pool), stop))
                    }
                    None => {
                        changes.added.push(upstream.name.clone());
                        Arc::new(Pool::new(upstream, config, None, stop))
                    }
                }
            })
            .collect();
        if let Some(previous) = previous {
            for old in &previous.pools {
                if !pools.iter().any(|p| p.name() == old.name()) {
                    changes.removed.push(old.name().to_owned());
                }
            }
        }
        let generation = previous.map_or(0, |p| p.generation + 1);
        {
            let plans = plan::Planner::new(&pools, &config.model_aliases);
            (PoolSet { generation, pools, plans }, changes)
        }
    }

    /// The model aliases in force with this set, by name.
    pub fn aliases(&self) -> impl Iterator<Item = &String> {
        self.plans.aliases().keys()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn all(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn get(&self, index: usize) -> Option<&Pool> {
        self.pools.get(index).map(|p| &**p)
    }

    /// The default upstream's pool (the first configured).
    pub fn default_pool(&self) -> &Pool {
        // Built from `upstream_list`, which always holds one (the legacy upstream).
        &self.pools[0]
    }

    /// The pool named `name`, with its index.
    pub fn by_name(&self, name: &str) -> Option<(usize, &Arc<Pool>)> {
        self.pools.iter().enumerate().find(|(_, p)| p.name() == name)
    }

    /// Where a request for `model` may go, in order (see the module docs);
    /// `None` (no model in the body): the default upstream.
    pub fn plan(&self, model: Option<&str>) -> Result<Arc<Plan>, RouteError> {
        self.plans.plan(&self.pools, model)
    }

    /// The pool whose scheduler holds key `id`.
    pub fn pool_of_key(&self, id: i64) -> Option<&Pool> {
        self.pools.iter().find(|p| p.scheduler.has_key(id)).map(|p| &**p)
    }

    /// Gives each pool the keys that belong to it: a key's `upstream`, or
    /// the default one when it names none. Keys naming an upstream that is
    /// not configured serve nowhere (kept in the store, shown as such).
    /// Returns those keys' ids with the upstream they name.
    pub fn sync_keys(&self, records: &[KeyRecord]) -> Vec<(i64, String)> {
        let mut by_pool: Vec<Vec<KeyRecord>> = self.pools.iter().map(|_| Vec::new()).collect();
        let mut orphans = Vec::new();
        for r in records {
            let index = match r.upstream.as_deref() {
                None => Some(0),
                Some(name) => self.by_name(name).map(|(i, _)| i),
            };
            match index.and_then(|i| by_pool.get_mut(i)) {
                Some(keys) => keys.push(r.clone()),
                None => orphans.push((r.id, r.upstream.clone().unwrap_or_default())),
            }
        }
        for (pool, keys) in self.pools.iter().zip(by_pool) {
            pool.scheduler.sync_keys(&keys);
        }
        orphans
    }
}

/// The pools in force, swapped whole when the configuration is reloaded: a
/// request takes the set once ([`Pools::load`]) and uses it to its end, so
/// a reload never changes the upstreams under a request in flight. The
/// other methods look at every upstream of the current set.
#[derive(Debug)]
pub struct Pools {
    current: ArcSwap<PoolSet>,
}

impl Pools {
    /// The pools `config` describes, with no keys yet; their probes stop with `stop`.
    pub fn new(config: &Config, stop: &CancellationToken) -> Pools {
        let (set, _) = PoolSet::build(config, None, stop);
        Pools { current: ArcSwap::from_pointee(set) }
    }

    /// [`Pools::new`] whose probes never stop (tests, benches).
    pub fn from_config(config: &Config) -> Pools {
        Pools::new(config, &CancellationToken::new())
    }

    /// A single pool over `scheduler` as the default upstream (tests and
    /// benches that drive one scheduler directly).
    pub fn single(config: &Config, scheduler: Arc<Scheduler>) -> Pools {
        let stop = CancellationToken::new();
        let upstream = config.upstream_list().into_iter().next();
        let upstream = upstream.unwrap_or_else(|| Config::default().upstream_list().remove(0));
        let mut pool = Pool::new(upstream, config, None, &stop);
        pool.scheduler = scheduler;
        let pools = vec![Arc::new(pool)];
        let set = PoolSet { generation: 0, plans: plan::Planner::new(&pools, &Default::default()), pools };
        Pools { current: ArcSwap::from_pointee(set) }
    }

    /// The set in force now.
    pub fn load(&self) -> Arc<PoolSet> {
        self.current.load_full()
    }

    /// Puts `set` in force; requests already under way keep theirs.
    pub fn replace(&self, set: PoolSet) {
        self.current.store(Arc::new(set));
    }

    /// Gives each pool its keys (see [`PoolSet::sync_keys`]).
    pub fn sync_keys(&self, records: &[KeyRecord]) -> Vec<(i64, String)> {
        self.load().sync_keys(records)
    }

    /// Keys counted by state over every upstream.
    pub fn census(&self) -> KeyCounts {
        let mut all = KeyCounts::default();
        for p in self.load().all() {
            all.merge(&p.scheduler.census());
        }
        all
    }

    /// Every key's live view, by id.
    pub fn snapshot(&self) -> Vec<KeyView> {
        let mut all: Vec<KeyView> = self.load().all().iter().flat_map(|p| p.scheduler.snapshot()).collect();
        all.sort_by_key(|v| v.id);
        all
    }

    pub fn window_resets(&self) -> Vec<WindowResets> {
        let mut all: Vec<WindowResets> = self.load().all().iter().flat_map(|p| p.scheduler.window_resets()).collect();
        all.sort_by_key(|r| r.key_id);
        all
    }

    /// Requests waiting for a key, over every upstream.
    pub fn queue_len(&self) -> usize {
        self.load().all().iter().map(|p| p.scheduler.queue_len()).sum()
    }

    /// Keys that can serve at all, over every upstream.
    pub fn usable_keys(&self) -> usize {
        self.load().all().iter().map(|p| p.scheduler.usable_keys()).sum()
    }

    /// In flight, waiting and capacity summed over every upstream.
    pub fn pool_figures(&self) -> PoolFigures {
        let mut all = PoolFigures::default();
        for p in self.load().all() {
            all.merge(&p.scheduler.pool_figures());
        }
        all
    }

    /// Whether any upstream's keys need prompts counted with the tokenizer.
    pub fn counts_tokens(&self) -> bool {
        self.load().all().iter().any(|p| p.scheduler.counts_tokens())
    }

    /// Zeroes key `id`'s live totals (wherever it is); false if unknown.
    pub fn reset_totals(&self, id: i64) -> bool {
        self.load().all().iter().any(|p| p.scheduler.reset_totals(id))
    }

    /// Takes a probe's result for key `id` (wherever it is).
    pub fn probe_result(&self, id: i64, probed: Probed) {
        if let Some(p) = self.load().pool_of_key(id) {
            p.scheduler.probe_result(id, probed);
        }
    }

    /// What every scheduler learned, to be saved.
    pub fn export_state(&self) -> Vec<SavedKeyState> {
        let mut all: Vec<SavedKeyState> = self.load().all().iter().flat_map(|p| p.scheduler.export_state()).collect();
        all.sort_by_key(|s| s.key_id);
        all
    }

    /// Gives saved state back to the schedulers that hold the keys; returns
    /// how many keys it restored as not active.
    pub fn restore_state(&self, saved: &[SavedKeyState]) -> usize {
        self.load().all().iter().map(|p| p.scheduler.restore_state(saved)).sum()
    }
}

#[cfg(test)]
mod tests;
