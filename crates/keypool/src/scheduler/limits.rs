//! What one key may still send: its limits (configured or learned from the
//! upstream's headers), what keypool sent within the last minute, and usage
//! the upstream reported that keypool did not send itself.

use tokio::time::{Duration, Instant};

use super::window::Window;

/// The rate-limit headers of one answer (`x-ratelimit-*`), already parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateInfo {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateInfo {
    /// Whether the answer announced any limit at all.
    pub fn is_empty(&self) -> bool {
        self.limit_requests.is_none()
            && self.remaining_requests.is_none()
            && self.limit_tokens.is_none()
            && self.remaining_tokens.is_none()
    }
}

/// One dimension of a key's per-minute limit (requests, or tokens).
#[derive(Debug, Clone, Default)]
pub struct Dim {
    /// Set by the operator (key or config default); wins over `learned`.
    pub configured: Option<u64>,
    /// Announced by the upstream's `x-ratelimit-limit-*`.
    pub learned: Option<u64>,
    /// Usage the upstream counts that keypool's window does not (another
    /// client of the same key, or a restart): it counts until `phantom_until`.
    phantom: u64,
    phantom_until: Option<Instant>,
    /// A lower limit than announced, set when the upstream refused a request
    /// that keypool's own count had room for: it counts differently or over
    /// a shorter period than keypool assumes. Holds until `lowered_at` +
    /// [`LOWERED_FOR`] passes without another such refusal.
    lowered: Option<u64>,
    lowered_at: Option<Instant>,
}

/// How long a lowered limit holds after the last refusal that lowered it.
pub const LOWERED_FOR: Duration = Duration::from_secs(600);

/// Each unexplained refusal takes this share off the effective limit …
const LOWER_BY: (u64, u64) = (1, 10);
/// … down to this share of the announced one at most.
const LOWEST: (u64, u64) = (1, 2);

/// What one answer showed of the upstream's count against keypool's own:
/// (the upstream's use, keypool's own count), both in tokens.
pub type Sample = (u64, u64);

impl Dim {
    /// The effective limit: configured, else announced, lowered by refusals
    /// keypool's own count did not expect.
    pub fn limit(&self) -> Option<u64> {
        let base = self.base()?;
        Some(self.lowered.map_or(base, |l| l.min(base)))
    }

    /// The limit as configured or announced.
    pub fn base(&self) -> Option<u64> {
        self.configured.or(self.learned)
    }

    /// Lowers the effective limit after a refusal keypool's count had room
    /// for: to what keypool counted before the refused request (`seen`, the
    /// upstream had less room than that plus the request) and at least by
    /// a tenth, but never below half the announced limit.
    pub fn lower(&mut self, seen: u64, now: Instant) {
        let Some(base) = self.base() else { return };
        let current = self.limit().unwrap_or(base);
        let floor = base * LOWEST.0 / LOWEST.1;
        let lowered = current.saturating_sub(current * LOWER_BY.0 / LOWER_BY.1).min(seen).max(floor);
        tracing::info!(
            from = current,
            to = lowered,
            "an upstream refusal keypool's count had room for lowers the limit"
        );
        self.lowered = Some(lowered);
        self.lowered_at = Some(now);
    }

    /// Forgets a lowered limit whose last refusal is long past.
    fn recover(&mut self, now: Instant) {
        if self.lowered_at.is_some_and(|at| now.saturating_duration_since(at) >= LOWERED_FOR) {
            self.lowered = None;
            self.lowered_at = None;
        }
    }

    /// A request that the upstream charged `extra` more than keypool
    /// reserved has now been recorded at its real size: the part of the
    /// phantom that stood for it is dropped, so the excess counts once.
    pub fn absorb(&mut self, extra: u64) {
        self.phantom = self.phantom.saturating_sub(extra);
    }

    pub fn phantom(&self, now: Instant) -> u64 {
        match self.phantom_until {
            Some(until) if until > now => self.phantom,
            _ => 0,
        }
    }

    /// Takes in what one answer said. `ours` is what keypool has counted
    /// against this dimension (sent within the window plus in flight). Only
    /// ever tightens: an upstream that is more lenient than our own count
    /// (a bucket that refilled) changes nothing. Returns the comparison, for
    /// learning how the upstream charges.
    pub fn observe(
        &mut self,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<Duration>,
        ours: u64,
        now: Instant,
    ) -> Option<Sample> {
        if let Some(limit) = limit {
            self.learned = Some(limit);
        }
        self.recover(now);
        let (Some(limit), Some(remaining)) = (self.base(), remaining) else { return None };
        let upstream_used = limit.saturating_sub(remaining);
        let extra = upstream_used.saturating_sub(ours);
        if extra > 0 {
            // Until the upstream says its budget is whole again; a minute when it does not say.
            let until = now + reset.unwrap_or(super::window::WINDOW);
            self.phantom = extra;
            self.phantom_until = Some(until);
        } else if self.phantom_until.is_some_and(|t| t <= now) {
            self.phantom = 0;
            self.phantom_until = None;
        }
        Some((upstream_used, ours))
    }

    /// When usage counted beyond keypool's own window stops counting (for saving state).
    pub fn phantom_until(&self, now: Instant) -> Option<Instant> {
        self.phantom_until.filter(|t| *t > now && self.phantom > 0)
    }

    /// Counts `used` against the limit until `until` (state saved before a
    /// restart: what was sent then is not in the new window).
    pub fn hold(&mut self, used: u64, until: Instant) {
        self.phantom = self.phantom.max(used);
        self.phantom_until = Some(self.phantom_until.map_or(until, |t| t.max(until)));
    }

    /// Used `limit` entirely until `until` (a 429 said the budget is empty).
    pub fn empty_until(&mut self, until: Instant, ours: u64) {
        if let Some(limit) = self.limit() {
            self.phantom = limit.saturating_sub(ours).max(self.phantom);
            self.phantom_until = Some(self.phantom_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Earliest instant when `used - freed + need <= limit`, given the window's
    /// entries (through `amount`) and the phantom; `None` if only in-flight
    /// requests finishing can make room.
    pub fn room_at(
        &self,
        window: &Window,
        amount: impl Fn(u64) -> u64,
        used: u64,
        need: u64,
        now: Instant,
    ) -> Option<Instant> {
        let limit = self.limit()?;
        let wanted = used.saturating_add(need);
        if wanted <= limit {
            return Some(now);
        }
        let mut to_free = wanted - limit;
        let phantom = self.phantom(now);
        let mut phantom_pending = phantom > 0;
        for (at, tokens) in window.entries() {
            let expiry = at + super::window::WINDOW;
            if phantom_pending && self.phantom_until.is_some_and(|p| p <= expiry) {
                phantom_pending = false;
                if phantom >= to_free {
                    return self.phantom_until;
                }
                to_free -= phantom;
            }
            let freed = amount(tokens);
            if freed >= to_free {
                return Some(expiry);
            }
            to_free -= freed;
        }
        if phantom_pending && phantom >= to_free {
            return self.phantom_until;
        }
        None
    }
}
