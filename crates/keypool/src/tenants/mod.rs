//! Tenants: what each gateway token may use and spend, enforced in memory.
//!
//! A [`Tenant`] is one live token: its [`TokenSettings`] (models, networks,
//! limits, budget, expiry), swapped in place when an operator edits them,
//! and its counters, which survive the edit. Admission happens before the
//! scheduler chooses a key: the token's scope first (enabled, expiry,
//! network, model), then its own limits and budget ([`Tenant::admit`]),
//! which reserve the request's estimate; the request's one end settles the
//! [`Ticket`] with what was really used and spent. Budgets are enforced
//! from these reservations, not from the records (written later), so a
//! token never spends past its budget, however many of its requests run at
//! once. One instance: counters are not shared between gateways.

mod admit;
pub mod settings;
mod window;

pub use admit::{period_bounds, End, Need, Refusal, Ticket};
pub use settings::{models_from, networks_from, parse_models, BudgetPeriod, Limits, TokenSettings};

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

/// One live gateway token: its id (the `tokens` table's), name, settings
/// and counters.
///
/// `repr(C)`, in this order: what every request reads or writes (the id,
/// the counters and the [`Limits`] kept with them) comes first, right after
/// the `Arc`'s counts, in the allocation's first 256 bytes on 64-bit Linux,
/// so a request touches the fewest cache lines of a tenant not used for a
/// while; with a thousand tenants each line is a miss (docs/benchmarks.md,
/// issue 17). The rest is read off the request path, when a request waits,
/// or when the token has lists of models or networks to check.
#[derive(Debug)]
#[repr(C)]
pub struct Tenant {
    id: i64,
    counters: Mutex<admit::Counters>,
    settings: RwLock<Arc<TokenSettings>>,
    name: RwLock<Arc<str>>,
    /// Where days and months begin (`time_zone`).
    tz: jiff::tz::TimeZone,
    /// Told when a request of this token ends (room may have come back).
    room: Notify,
}

impl Tenant {
    /// A tenant with nothing counted yet but `spent` micro-USD in its
    /// current budget period (from the store, at start or when it first
    /// appears).
    pub fn new(id: i64, name: &str, settings: TokenSettings, tz: jiff::tz::TimeZone, spent: u64) -> Tenant {
        let counters = admit::Counters::new(&settings, &tz, crate::store::now_unix(), spent);
        Tenant {
            id,
            name: RwLock::new(Arc::from(name)),
            settings: RwLock::new(Arc::new(settings)),
            tz,
            counters: Mutex::new(counters),
            room: Notify::new(),
        }
    }

    /// The token's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn name(&self) -> Arc<str> {
        Arc::clone(&self.name.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<TokenSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The limits in force now (what a request reads of the settings),
    /// and the settings of the same edit when the token has lists of
    /// models or networks to check (`Limits::listed`); otherwise the
    /// settings are not read (with many tenants, each line read is a cache
    /// miss).
    pub fn scope(&self) -> (Limits, Option<Arc<TokenSettings>>) {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let limits = c.limits();
        // Under the counters' lock, as [`Tenant::update`] swaps both.
        (limits, limits.listed.then(|| self.settings()))
    }

    /// Takes an operator's edit; counters stay. `spent`: what the store
    /// says the token spent in its (new) budget period, when it was asked
    /// (a budget added, or its period changed): counting goes on from it.
    pub fn update(&self, name: &str, settings: TokenSettings, spent: Option<u64>) {
        let (limits, period) = (settings.limits(), settings.budget_period);
        let settings = Arc::new(settings);
        {
            // Both under the counters' lock, so [`Tenant::scope`] reads
            // limits and lists of one edit.
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(spent) = spent {
                c.restart_budget(period, &self.tz, crate::store::now_unix(), spent);
            }
            *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
            c.set_limits(limits);
        }
        *self.name.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(name);
        // Limits may have grown: waiting requests look again.
        self.room.notify_waiters();
    }

    /// What the token has spent in its current budget period, and what its
    /// requests in flight have reserved (micro-USD).
    pub fn spend(&self) -> (u64, u64) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.roll(&self.tz, crate::store::now_unix());
        (c.spent(), c.reserved())
    }

    /// The token's budget and what it spent in the period under way, for
    /// readers off the request path (the alerts task).
    pub fn budget_view(&self) -> BudgetView {
        let (s, name) = (self.settings(), self.name());
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.roll(&self.tz, crate::store::now_unix());
        let (period_start, period_end) = c.period();
        BudgetView {
            id: self.id,
            name,
            budget_micros: s.budget_micros,
            period: s.budget_period,
            period_start,
            period_end,
            spent_micros: c.spent(),
        }
    }
}

/// A token's budget as seen at one moment ([`Tenant::budget_view`]): a
/// copy, so its reader holds no lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetView {
    /// The token's id (the `tokens` table's).
    pub id: i64,
    /// The token's name (never its secret, which memory does not hold).
    pub name: Arc<str>,
    /// The budget, micro-USD; `None`: no budget.
    pub budget_micros: Option<u64>,
    pub period: BudgetPeriod,
    /// The period under way, [start, end) in Unix seconds; `i64::MIN` and
    /// `i64::MAX` for a total budget.
    pub period_start: i64,
    pub period_end: i64,
    /// Micro-USD spent in that period by requests that ended (reservations
    /// of requests in flight are not counted).
    pub spent_micros: u64,
}

/// Whether the tenant whose limits are `l` may be used at `now` (Unix
/// seconds) from `client`: why not, when it may not. `s`: its settings,
/// needed when it has lists (`l.listed`).
pub fn scope_refusal(
    l: &Limits,
    s: Option<&TokenSettings>,
    now: i64,
    client: Option<std::net::IpAddr>,
) -> Option<ScopeRefusal> {
    if !l.enabled {
        return Some(ScopeRefusal::Disabled);
    }
    if l.expires_at <= now {
        return Some(ScopeRefusal::Expired { at: l.expires_at });
    }
    if l.listed && !s.is_some_and(|s| s.allows_client(client)) {
        return Some(ScopeRefusal::Network);
    }
    None
}

/// Why a live token may not be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRefusal {
    /// An operator disabled it.
    Disabled,
    /// It expired at `at` (Unix seconds).
    Expired { at: i64 },
    /// The caller's address is outside the token's networks.
    Network,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tenant(s: TokenSettings) -> Tenant {
        Tenant::new(1, "t", s, jiff::tz::TimeZone::UTC, 0)
    }

    /// The request path reads a token's settings only when it has lists to
    /// check, and then those of the same edit as its limits.
    #[test]
    fn the_scope_reads_lists_only_when_there_are_some_and_checks_them() {
        let now = 1_800_000_000;
        let (inside, outside) = (Some("10.1.2.3".parse().unwrap()), Some("192.168.1.5".parse().unwrap()));
        let plain = tenant(TokenSettings { rpm: Some(5), ..Default::default() });
        let (l, s) = plain.scope();
        assert!(!l.listed && s.is_none(), "no lists: the settings are not read");
        assert_eq!(scope_refusal(&l, None, now, outside), None);

        let netted =
            tenant(TokenSettings { networks: networks_from(&["10.0.0.0/8".into()]).unwrap(), ..Default::default() });
        let (l, s) = netted.scope();
        assert!(l.listed && s.is_some());
        assert_eq!(scope_refusal(&l, s.as_deref(), now, inside), None);
        assert_eq!(scope_refusal(&l, s.as_deref(), now, outside), Some(ScopeRefusal::Network));
        assert_eq!(scope_refusal(&l, None, now, inside), Some(ScopeRefusal::Network), "lists unread: refused");

        let modeled = tenant(TokenSettings { models: parse_models("gpt-4o*").unwrap(), ..Default::default() });
        let (l, s) = modeled.scope();
        assert!(l.listed && s.as_ref().is_some_and(|s| s.models.is_some()));
        assert_eq!(scope_refusal(&l, s.as_deref(), now, outside), None, "a list of models only: any address");

        // One edit disables the token and moves its network: both are seen together.
        let moved = networks_from(&["192.168.0.0/16".into()]).unwrap();
        netted.update("t", TokenSettings { enabled: false, networks: moved.clone(), ..Default::default() }, None);
        let (l, s) = netted.scope();
        assert_eq!(s.as_ref().map(|s| s.networks.clone()), Some(moved));
        assert_eq!(scope_refusal(&l, s.as_deref(), now, outside), Some(ScopeRefusal::Disabled));
        // And one that drops the lists stops reading them.
        netted.update("t", TokenSettings { expires_at: Some(now), ..Default::default() }, None);
        let (l, s) = netted.scope();
        assert!(!l.listed && s.is_none());
        assert_eq!(scope_refusal(&l, None, now, outside), Some(ScopeRefusal::Expired { at: now }));
        assert_eq!(scope_refusal(&l, None, now - 1, outside), None, "valid until its second");
    }
}
