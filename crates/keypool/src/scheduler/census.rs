//! Why keys cannot serve, counted by state: for the caller's error when none
//! can (never "add a key" when keys exist), `/healthz` and `/readyz`.

use tokio::time::{Duration, Instant};

use super::inner::Inner;
use super::NoKey;

/// How many keys are in each state, as operators see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyCounts {
    pub active: usize,
    pub cooling: usize,
    pub invalid: usize,
    pub exhausted: usize,
    pub expired: usize,
    pub spent: usize,
    pub disabled: usize,
    /// Until the first cooling key's reset, when one is cooling.
    #[serde(skip)]
    pub cooling_for: Option<Duration>,
}

impl KeyCounts {
    /// Keys that exist at all.
    pub fn total(&self) -> usize {
        self.active + self.cooling + self.invalid + self.exhausted + self.expired + self.spent + self.disabled
    }

    /// Adds `other`'s counts (another upstream's keys) to these.
    pub fn merge(&mut self, other: &KeyCounts) {
        self.active += other.active;
        self.cooling += other.cooling;
        self.invalid += other.invalid;
        self.exhausted += other.exhausted;
        self.expired += other.expired;
        self.spent += other.spent;
        self.disabled += other.disabled;
        self.cooling_for = match (self.cooling_for, other.cooling_for) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Keys that can serve now or after a wait (active or cooling).
    pub fn usable(&self) -> usize {
        self.active + self.cooling
    }

    /// "2 invalid, 1 exhausted": the states that keep keys out, for messages.
    pub fn describe(&self) -> String {
        let parts = [
            (self.invalid, "invalid (refused by the upstream)"),
            (self.exhausted, "exhausted (no balance left)"),
            (self.expired, "expired"),
            (self.spent, "over their budget"),
            (self.disabled, "disabled"),
            (self.cooling, "cooling"),
        ];
        let listed: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        let mut text = listed.join(", ");
        if let Some(d) = self.cooling_for {
            text.push_str(&format!("; the first cooling key resets in {:.1}s", d.as_secs_f64()));
        }
        text
    }
}

impl Inner {
    /// Keys counted by state at `now`.
    pub(super) fn census(&self, now: Instant) -> KeyCounts {
        let mut c = KeyCounts::default();
        for s in self.keys.values() {
            match s.status(now) {
                "active" => c.active += 1,
                "cooling" => {
                    c.cooling += 1;
                    if let Some(t) = s.cooling_until.filter(|t| *t > now) {
                        let d = t - now;
                        c.cooling_for = Some(c.cooling_for.map_or(d, |m| m.min(d)));
                    }
                }
                "invalid" => c.invalid += 1,
                "exhausted" => c.exhausted += 1,
                "expired" => c.expired += 1,
                "spent" => c.spent += 1,
                _ => c.disabled += 1,
            }
        }
        c
    }

    /// The reason no key can serve: none configured, or what keeps them out.
    pub(super) fn none_usable(&self, now: Instant) -> NoKey {
        if self.keys.is_empty() {
            NoKey::NoKeys
        } else {
            NoKey::Unusable(self.census(now))
        }
    }
}
