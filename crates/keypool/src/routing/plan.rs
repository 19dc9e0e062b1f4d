//! The order in which upstreams are tried for a model: aliases resolved,
//! priority groups, and smooth weighted round-robin within each group.
//! Plans are cached per model name, so a request pays one hash lookup and
//! one short lock, not a pass over every glob (see docs/benchmarks.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::AliasTargets;

use super::Pool;

/// Most model names whose plans are kept; past it, plans are computed per
/// request (callers choose model names, so the cache must stay bounded).
pub(super) const CACHED_PLANS: usize = 4096;
/// Longer names are not cached at all.
const CACHED_NAME_MAX: usize = 256;

/// Why no upstream can take a request: the caller's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no upstream serves the model `{0}`")]
    NoUpstream(String),
}

/// One place a request may go: a pool, and the model name to write into the
/// body there (an alias's target), if it differs from the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pool: usize,
    pub model: Option<Arc<str>>,
}

/// Upstreams of one priority (or one alias target): tried by weight.
#[derive(Debug)]
struct Tier {
    members: Vec<Candidate>,
    weights: Vec<i64>,
    /// Smooth weighted round-robin's current weights, one per member.
    current: Mutex<Vec<i64>>,
}

impl Tier {
    fn new(members: Vec<(Candidate, u32)>) -> Tier {
        let weights: Vec<i64> = members.iter().map(|(_, w)| i64::from((*w).max(1))).collect();
        Tier {
            current: Mutex::new(vec![0; weights.len()]),
            weights,
            members: members.into_iter().map(|(c, _)| c).collect(),
        }
    }

    /// The members in the order to try them for this request: the one
    /// smooth weighted round-robin picks, then the rest by their current
    /// weight (the next picks), so a member without room hands over to the
    /// one that would have been next.
    fn push_order(&self, out: &mut Vec<Candidate>) {
        if self.members.len() == 1 {
            out.push(self.members[0].clone());
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let total: i64 = self.weights.iter().sum();
        for (c, w) in current.iter_mut().zip(&self.weights) {
            *c += w;
        }
        // The first of the largest: deterministic for equal weights.
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(current[i]));
        current[order[0]] -= total;
        out.extend(order.into_iter().map(|i| self.members[i].clone()));
    }
}

/// Where a request for one model may go, in order.
#[derive(Debug)]
pub struct Plan {
    tiers: Vec<Tier>,
}

impl Plan {
    /// Every candidate, in the order to try them now (this advances the
    /// weighted round-robin of each group of several).
    pub fn order(&self) -> Vec<Candidate> {
        let mut out = Vec::with_capacity(self.tiers.iter().map(|t| t.members.len()).sum());
        for tier in &self.tiers {
            tier.push_order(&mut out);
        }
        out
    }

    /// Every candidate in plan order, without choosing (the weighted
    /// round-robin does not advance).
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.tiers.iter().flat_map(|t| &t.members)
    }

    /// The only candidate, when there is one (no choosing needed).
    pub fn single(&self) -> Option<&Candidate> {
        match self.tiers.as_slice() {
            [tier] if tier.members.len() == 1 => tier.members.first(),
            _ => None,
        }
    }

    /// Every pool the plan may use, first appearance first.
    pub fn pools(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for c in self.tiers.iter().flat_map(|t| &t.members) {
            if !out.contains(&c.pool) {
                out.push(c.pool);
            }
        }
        out
    }
}

/// Builds and caches plans.
#[derive(Debug)]
pub(super) struct Planner {
    aliases: BTreeMap<String, AliasTargets>,
    /// Requests without a model: the default upstream.
    default: Arc<Plan>,
    /// One upstream serving every model (`*`) and no aliases (a config
    /// from before upstreams existed): every request's plan, with no look-up.
    everything: Option<Arc<Plan>>,
    cache: RwLock<HashMap<Box<str>, Arc<Plan>>>,
}

impl Planner {
    pub(super) fn new(pools: &[Arc<Pool>], aliases: &BTreeMap<String, AliasTargets>) -> Planner {
        let default = Arc::new(Plan { tiers: vec![Tier::new(vec![(Candidate { pool: 0, model: None }, 1)])] });
        let one_for_all =
            matches!(pools, [only] if only.upstream.models.iter().any(|m| m == "*")) && aliases.is_empty();
        let everything = one_for_all.then(|| Arc::clone(&default));
        Planner { aliases: aliases.clone(), default, everything, cache: RwLock::new(HashMap::new()) }
    }

    pub(super) fn plan(&self, pools: &[Arc<Pool>], model: Option<&str>) -> Result<Arc<Plan>, RouteError> {
        if let Some(plan) = &self.everything {
            return Ok(Arc::clone(plan));
        }
        let Some(model) = model else { return Ok(Arc::clone(&self.default)) };
        if let Some(plan) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(model) {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(self.build(pools, model)?);
        if model.len() <= CACHED_NAME_MAX {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if cache.len() < CACHED_PLANS {
                // Another request may have built it meanwhile: keep the first,
                // so the round-robin's state is one.
                return Ok(Arc::clone(cache.entry(model.into()).or_insert(plan)));
            }
        }
        Ok(plan)
    }

    /// The aliases, by name.
    pub(super) fn aliases(&self) -> &BTreeMap<String, AliasTargets> {
        &self.aliases
    }

    /// Plans held in the cache.
    #[cfg(test)]
    pub(super) fn cached(&self) -> usize {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn build(&self, pools: &[Arc<Pool>], model: &str) -> Result<Plan, RouteError> {
        let mut tiers = Vec::new();
        let mut seen: Vec<Candidate> = Vec::new();
        match self.aliases.get(model) {
            Some(targets) => {
                for t in targets.targets() {
                    let rewrite: Option<Arc<str>> = (t.model != model).then(|| Arc::from(t.model.as_str()));
                    match &t.upstream {
                        Some(name) => {
                            if let Some(i) = pools.iter().position(|p| &p.upstream.name == name) {
                                push_tiers(&mut tiers, &mut seen, pools, &[i], rewrite);
                            }
                        }
                        None => {
                            let serving: Vec<usize> = serving(pools, &t.model);
                            push_tiers(&mut tiers, &mut seen, pools, &serving, rewrite);
                        }
                    }
                }
            }
            None => push_tiers(&mut tiers, &mut seen, pools, &serving(pools, model), None),
        }
        if tiers.is_empty() {
            return Err(RouteError::NoUpstream(model.to_owned()));
        }
        Ok(Plan { tiers })
    }
}

/// Pools whose globs match `model`, in config order.
fn serving(pools: &[Arc<Pool>], model: &str) -> Vec<usize> {
    pools.iter().enumerate().filter(|(_, p)| p.upstream.serves(model)).map(|(i, _)| i).collect()
}

/// Appends `members` as tiers by priority (highest first; equal priorities
/// in one tier), leaving out a pool and model already planned.
fn push_tiers(
    tiers: &mut Vec<Tier>,
    seen: &mut Vec<Candidate>,
    pools: &[Arc<Pool>],
    members: &[usize],
    model: Option<Arc<str>>,
) {
    let mut fresh: Vec<usize> = Vec::new();
    for &i in members {
        let c = Candidate { pool: i, model: model.clone() };
        if !seen.contains(&c) {
            seen.push(c);
            fresh.push(i);
        }
    }
    let mut priorities: Vec<i32> = fresh.iter().map(|&i| pools[i].upstream.priority).collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    for priority in priorities {
        let group: Vec<(Candidate, u32)> = fresh
            .iter()
            .filter(|&&i| pools[i].upstream.priority == priority)
            .map(|&i| (Candidate { pool: i, model: model.clone() }, pools[i].upstream.weight))
            .collect();
        tiers.push(Tier::new(group));
    }
}
