//! One key's live state and the rules for whether it can take a request.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::time::{Duration, Instant};

use super::bucket::Bucket;
use super::charge::Seen;
use super::limits::{Dim, RateInfo};
use super::period::Spans;
use super::strategy::{Inputs, Score, Strategy};
use super::window::Window;
use super::{DefaultLimits, Demand, Hit, Reset};
use crate::store::KeyRecord;

/// Whether a key can serve at all, apart from its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Active,
    /// The upstream refused the key (401/403): it is wrong or revoked.
    Invalid,
    /// The key's balance is spent (`insufficient_quota`).
    Exhausted,
}

/// Whether the upstream has told us its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// No answer yet: with no configured limits, one request at a time.
    Unknown,
    /// Answers carry `x-ratelimit-*`.
    Headers,
    /// Answers carry none: the upstream announces no limits.
    None,
}

/// Where a key sits in the scheduler's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Disabled, invalid, exhausted, expired or out of budget.
    Off,
    /// Has room now; sorted by the strategy's score.
    Ready(Score),
    /// Regains room at a known instant.
    Parked(Instant),
    /// Regains room only when one of its in-flight requests finishes.
    Blocked,
}

#[derive(Debug)]
pub struct Slot {
    pub id: i64,
    pub label: Option<String>,
    pub secret: Arc<SecretString>,
    /// Account headers sent with the secret.
    pub account: Arc<crate::upstream::Account>,
    pub enabled: bool,
    pub health: Health,
    pub cooling_until: Option<Instant>,
    pub expires_at: Option<Instant>,
    pub expires_unix: Option<i64>,
    pub rpm: Dim,
    /// Spans shorter than a minute the requests are also counted over
    /// (Azure); None for upstreams that count per minute only.
    pub spans: Option<Spans>,
    pub tpm: Dim,
    pub rpd: Option<u64>,
    pub max_inflight: Option<u64>,
    pub weight: u64,
    /// The budget in force: the smaller of the operator's (`--budget`) and
    /// the one the provider's balance gives ([`Slot::set_balance`]).
    pub budget_micros: Option<u64>,
    /// The operator's budget, as stored.
    pub configured_budget: Option<u64>,
    /// The provider's last balance reading (micro-USD) and when (Unix ms).
    pub balance: Option<(u64, i64)>,
    /// Spent (as tracked) when the balance was read plus that balance: the
    /// budget the provider's money allows.
    pub balance_budget: Option<u64>,
    pub announce: Announce,
    /// Leased and not finished; they count against every limit.
    pub inflight: u64,
    pub reserved_tokens: u64,
    /// Of `reserved_tokens`, what the larger-part rule would not charge.
    pub reserved_overlap: u64,
    pub reserved_micros: u64,
    pub window: Window,
    /// The same tokens draining as a bucket would; counted instead of the
    /// window once the upstream shows it refills continuously.
    pub bucket: Bucket,
    /// Requests finished since the current day began (for `rpd`).
    pub day_count: u64,
    pub spent_micros: u64,
    pub requests_total: u64,
    pub successes_total: u64,
    pub failures_total: u64,
    pub rr_seq: u64,
    pub vtime: u64,
    pub placement: Placement,
    /// Connect failures in a row (the key's circuit breaker).
    pub connect_failures: u32,
    /// When an invalid or exhausted key is next probed, and the current probe interval.
    pub next_probe: Option<Instant>,
    pub probe_every: Duration,
    /// The rate-limit headers of the last answer that carried any (to tell
    /// which limit a 429 was about).
    pub last_rate: RateInfo,
    /// Back from invalid or exhausted on a probe that could not judge it:
    /// takes one request at a time until a real answer judges it.
    pub on_trial: bool,
    /// Refused with no key-specific code while another key was served, and
    /// not successful since: refused so again, it is invalid.
    pub suspected: bool,
    /// The last answer that went wrong for this key: a word for it
    /// (`rate_limited`, `invalid_key`, …) and when (Unix ms), for operators.
    pub last_error: Option<(&'static str, i64)>,
}

/// Converts a stored Unix time to the scheduler's clock.
pub fn instant_of_unix(unix: i64, now: Instant) -> Instant {
    let wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if unix <= wall {
        now
    } else {
        now + Duration::from_secs((unix - wall) as u64)
    }
}

impl Slot {
    pub fn new(r: &KeyRecord, d: &DefaultLimits, vclock: u64, now: Instant) -> Slot {
        let mut slot = Slot {
            id: r.id,
            label: None,
            secret: Arc::new(r.secret.clone()),
            account: Arc::default(),
            enabled: true,
            health: Health::Active,
            cooling_until: None,
            expires_at: None,
            expires_unix: None,
            rpm: Dim::default(),
            spans: None,
            tpm: Dim::default(),
            rpd: None,
            max_inflight: None,
            weight: 1,
            budget_micros: None,
            configured_budget: None,
            balance: None,
            balance_budget: None,
            announce: Announce::Unknown,
            inflight: 0,
            reserved_tokens: 0,
            reserved_overlap: 0,
            reserved_micros: 0,
            window: Window::default(),
            bucket: Bucket::default(),
            day_count: 0,
            spent_micros: r.spent_micros,
            requests_total: r.requests,
            successes_total: r.successes,
            failures_total: r.failures,
            rr_seq: 0,
            vtime: vclock,
            placement: Placement::Off,
            connect_failures: 0,
            next_probe: None,
            probe_every: Duration::ZERO,
            last_rate: RateInfo::default(),
            on_trial: false,
            suspected: false,
            last_error: None,
        };
        slot.apply(r, d, now);
        slot
    }

    /// Takes the operator's settings from the store (live counts are kept).
    pub fn apply(&mut self, r: &KeyRecord, d: &DefaultLimits, now: Instant) {
        self.label = r.label.clone();
        self.secret = Arc::new(r.secret.clone());
        self.account = Arc::new(crate::upstream::Account::new(r.organization.as_deref(), r.project.as_deref()));
        self.enabled = r.enabled;
        self.tpm.configured = r.tpm.or(d.tpm).map(u64::from);
        // An RPM derived from the TPM where the upstream derives it so (Azure).
        let derived = d
            .rpm_per_thousand_tpm
            .zip(self.tpm.configured)
            .map(|(per, tpm)| (tpm.saturating_mul(u64::from(per)) / 1000).max(1));
        self.rpm.configured = r.rpm.or(d.rpm).map(u64::from).or(derived);
        let had_spans = self.spans.is_some();
        if d.requests_per.is_empty() {
            self.spans = None;
        } else if !self.spans.as_ref().is_some_and(|s| s.are(d.requests_per)) {
            self.spans = Some(Spans::new(d.requests_per));
        }
        if had_spans != self.spans.is_some() {
            // Learned from headers about a span, or about a minute: not the other.
            self.rpm.learned = None;
        }
        self.rpd = r.rpd.or(d.rpd).map(u64::from);
        self.max_inflight = r.max_inflight.or(d.max_inflight).map(u64::from);
        self.weight = u64::from(r.weight.unwrap_or(1).max(1));
        self.configured_budget = r.budget_micros;
        self.budget_micros = smaller(self.configured_budget, self.balance_budget);
        self.expires_unix = r.expires_at;
        self.expires_at = r.expires_at.map(|u| instant_of_unix(u, now));
    }

    pub fn score(&self, strategy: Strategy) -> Score {
        strategy.score(&Inputs {
            id: self.id,
            requests_total: self.requests_total,
            inflight: self.inflight,
            rr_seq: self.rr_seq,
            vtime: self.vtime,
            spent_micros: self.spent_micros,
            reserved_micros: self.reserved_micros,
            budget_micros: self.budget_micros,
            expires_unix: self.expires_unix,
        })
    }

    /// Gives back what a lease reserved (finished or dropped).
    pub fn release(&mut self, demand: Demand) {
        self.inflight = self.inflight.saturating_sub(1);
        self.reserved_tokens = self.reserved_tokens.saturating_sub(demand.tokens);
        self.reserved_overlap = self.reserved_overlap.saturating_sub(demand.overlap);
        self.reserved_micros = self.reserved_micros.saturating_sub(demand.cost_micros);
    }

    /// Serves at all (apart from limits and cooling).
    pub fn usable(&self, now: Instant) -> bool {
        self.enabled && self.health == Health::Active && self.expires_at.is_none_or(|t| t > now)
    }

    pub fn used_requests(&self, now: Instant) -> u64 {
        (self.window.requests() + self.inflight).saturating_add(self.rpm.phantom(now))
    }

    pub fn used_tokens(&self, now: Instant) -> u64 {
        self.own_tokens(now).saturating_add(self.tpm.phantom(now))
    }

    /// What keypool counts as its own use of each dimension (for header corrections).
    pub fn own_requests(&self) -> u64 {
        self.window.requests() + self.inflight
    }

    pub fn own_tokens(&self, now: Instant) -> u64 {
        self.sent_tokens(now).saturating_add(self.reserved_tokens)
    }

    /// Tokens of finished requests that still count: the bucket's deficit
    /// once the upstream has shown it refills continuously, else the window.
    fn sent_tokens(&self, now: Instant) -> u64 {
        match self.refilling() {
            Some(limit) => self.bucket.deficit(now, limit),
            None => self.window.tokens(),
        }
    }

    /// keypool's own count as the larger-part rule would make it.
    fn own_tokens_max(&self, now: Instant) -> u64 {
        let sent = match self.refilling() {
            Some(limit) => self.bucket.deficit_max(now, limit),
            None => self.window.tokens().saturating_sub(self.window.overlap()),
        };
        sent.saturating_add(self.reserved_tokens.saturating_sub(self.reserved_overlap))
    }

    /// The token limit the bucket refills at, when the bucket is trusted.
    fn refilling(&self) -> Option<u64> {
        self.tpm.limit().filter(|_| self.bucket.trusted())
    }

    fn cautious(&self) -> bool {
        self.announce == Announce::Unknown && self.rpm.limit().is_none() && self.tpm.limit().is_none()
    }

    /// Whether the budget could ever pay for `cost` (ignoring reservations,
    /// which may come back). A spent budget pays for nothing, whatever the cost.
    pub fn affordable(&self, cost: u64) -> bool {
        self.budget_micros.is_none_or(|b| self.spent_micros < b && self.spent_micros.saturating_add(cost) <= b)
    }

    /// Whether the per-minute token limit could ever admit `demand`: only
    /// what it certainly needs must fit. A limit lowered after refusals is keypool's guess, so the announced
    /// (or configured) one decides.
    pub fn fits_tpm(&self, demand: Demand) -> bool {
        self.tpm.base().is_none_or(|l| demand.floor() <= l)
    }

    /// Tokens `demand` takes from this key: its estimate, but no more than
    /// the whole limit when only the uncertain part goes over it (such a
    /// request waits for an empty key and goes, rather than never).
    pub fn need(&self, demand: Demand) -> u64 {
        match self.tpm.limit() {
            Some(l) if demand.tokens > l && self.fits_tpm(demand) => l,
            _ => demand.tokens,
        }
    }

    /// Whether the key can take `demand` right now (window pruned by the caller).
    pub fn has_room(&self, now: Instant, demand: Demand) -> bool {
        if !self.usable(now) || self.cooling_until.is_some_and(|t| t > now) {
            return false;
        }
        if (self.cautious() || self.on_trial) && self.inflight > 0 {
            return false;
        }
        if self.max_inflight.is_some_and(|cap| self.inflight >= cap) {
            return false;
        }
        if self.rpm.limit().is_some_and(|l| self.used_requests(now) + 1 > l) {
            return false;
        }
        if let (Some(spans), Some(rpm)) = (&self.spans, self.rpm.limit()) {
            if !spans.has_room(rpm, now) {
                return false;
            }
        }
        if self.tpm.limit().is_some_and(|l| self.used_tokens(now).saturating_add(self.need(demand)) > l) {
            return false;
        }
        if self.rpd.is_some_and(|l| self.day_count + self.inflight >= l) {
            return false;
        }
        // A spent budget serves nothing, not even a request with no known
        // cost (an unpriced model): a balance at zero means the provider refuses.
        self.budget_micros.is_none_or(|b| {
            self.spent_micros < b
                && self.spent_micros.saturating_add(self.reserved_micros).saturating_add(demand.cost_micros) <= b
        })
    }

    /// The earliest instant the key has room for `demand`, if time alone can
    /// bring it (`None`: only a finishing request can, or nothing can).
    pub fn room_at(&self, now: Instant, demand: Demand, day_end: Instant) -> Option<Instant> {
        if !self.usable(now) || !self.affordable(demand.cost_micros) || !self.fits_tpm(demand) {
            return None;
        }
        if (self.cautious() || self.on_trial) && self.inflight > 0 {
            return None;
        }
        if self.max_inflight.is_some_and(|cap| self.inflight >= cap) {
            return None;
        }
        if self.budget_micros.is_some_and(|b| {
            self.spent_micros.saturating_add(self.reserved_micros).saturating_add(demand.cost_micros) > b
        }) {
            return None;
        }
        let mut at = now;
        if let Some(until) = self.cooling_until.filter(|t| *t > now) {
            at = at.max(until);
        }
        if self.rpd.is_some_and(|l| self.day_count + self.inflight >= l) {
            at = at.max(day_end);
        }
        if self.rpm.limit().is_some() {
            at = at.max(self.rpm.room_at(&self.window, |_| 1, self.used_requests(now), 1, now)?);
        }
        if let (Some(spans), Some(rpm)) = (&self.spans, self.rpm.limit()) {
            at = at.max(spans.room_at(rpm, now));
        }
        if let Some(limit) = self.refilling() {
            at = at.max(self.tokens_refilled(now, limit, demand)?);
        } else if self.tpm.limit().is_some() {
            at = at.max(self.tpm.room_at(&self.window, |t| t, self.used_tokens(now), self.need(demand), now)?);
        }
        Some(at)
    }

    /// When the trusted bucket (and the usage beyond keypool's own, when it
    /// stops counting) leaves room for `demand`; `None` when only requests in
    /// flight finishing can.
    fn tokens_refilled(&self, now: Instant, limit: u64, demand: Demand) -> Option<Instant> {
        let wanted = self.used_tokens(now).saturating_add(self.need(demand));
        let Some(to_free) = wanted.checked_sub(limit).filter(|n| *n > 0) else { return Some(now) };
        // Refill alone, or the phantom's end with refill for the rest:
        // whichever comes first.
        let refilled = self.bucket.refilled(now, limit, to_free);
        let with_phantom =
            self.tpm.phantom_until(now).and_then(|until| match to_free.saturating_sub(self.tpm.phantom(now)) {
                0 => Some(until),
                rest => Some(until.max(self.bucket.refilled(now, limit, rest)?)),
            });
        [refilled, with_phantom].into_iter().flatten().min()
    }

    /// Where the key belongs in the index now.
    pub fn placement(&self, now: Instant, strategy: Strategy, day_end: Instant) -> Placement {
        if !self.usable(now) || !self.affordable(0) {
            return Placement::Off;
        }
        let minimal = Demand { tokens: 1, unsure_tokens: 0, overlap: 0, cost_micros: 0 };
        if self.has_room(now, minimal) {
            return Placement::Ready(self.score(strategy));
        }
        match self.room_at(now, minimal, day_end) {
            Some(t) if t > now => Placement::Parked(t),
            Some(_) => Placement::Ready(self.score(strategy)),
            None => Placement::Blocked,
        }
    }

    /// Takes in an answer's rate-limit headers; returns how the upstream's
    /// token count compared with keypool's own, when the answer said.
    /// `certain` is what the answered request certainly needed (tokens).
    pub fn observe(&mut self, info: &RateInfo, success: bool, certain: u64, now: Instant) -> Option<Seen> {
        if info.is_empty() {
            if success && self.announce == Announce::Unknown {
                self.announce = Announce::None;
            }
            return None;
        }
        self.announce = Announce::Headers;
        self.last_rate = *info;
        if let (Some(limit), Some(remaining), Some(reset)) =
            (info.limit_tokens.or(self.tpm.base()), info.remaining_tokens, info.reset_tokens)
        {
            let leaves = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now));
            let window_resets = [leaves(self.window.next_expiry()), leaves(self.window.last_expiry())];
            self.bucket.observe(limit, remaining, reset, now, window_resets);
        }
        let (own_r, own_t) = (self.own_requests(), self.own_tokens(now));
        match &self.spans {
            // Headers about the span, not the minute: Azure sends only
            // `remaining`. A served answer tells at least this much of the
            // limit: what is left plus this one (tokens: plus what it
            // certainly took), which the limit is never below; an answer
            // to the only request counted tells it exactly.
            Some(spans) => {
                if success {
                    let alone = spans.alone(now);
                    let known = |learned: Option<u64>, at_least: u64, exact: bool| {
                        Some(if exact { at_least } else { learned.map_or(at_least, |l| l.max(at_least)) })
                    };
                    let per_span = info.limit_requests.or(info.remaining_requests.map(|r| r + 1));
                    let exact = info.limit_requests.is_some() || alone;
                    if let Some(rpm) = per_span.and_then(|n| spans.rpm_of(n)).filter(|_| self.rpm.configured.is_none())
                    {
                        self.rpm.learned = known(self.rpm.learned, rpm, exact);
                    }
                    if let (None, Some(remaining)) = (info.limit_tokens, info.remaining_tokens) {
                        let alone = alone && self.inflight == 1 && self.window.requests() == 0;
                        self.tpm.learned = known(self.tpm.learned, remaining.saturating_add(certain), alone);
                    }
                }
            }
            None => {
                self.rpm.observe(info.limit_requests, info.remaining_requests, info.reset_requests, own_r, now);
            }
        }
        let (upstream, ours) =
            self.tpm.observe(info.limit_tokens, info.remaining_tokens, info.reset_tokens, own_t, now)?;
        let settled = self.bucket.trusted() || self.bucket.shown_window();
        Some(Seen { upstream, ours, ours_max: self.own_tokens_max(now), settled })
    }

    /// A 429 `rate_limit_exceeded`: nothing more until the reset it names
    /// (at most a day, as every upstream wait is). keypool admitted the
    /// request because its own count had room, so a refusal about tokens
    /// says the upstream counts more than keypool, or over a shorter period:
    /// the key's effective token limit is lowered so the refusal is not
    /// repeated. Only a refusal known to be about tokens lowers it: one that
    /// says so, or one that does not say after headers showing no tokens left.
    pub fn rate_limited(&mut self, reset: Reset, now: Instant) {
        let about_tokens = match reset.hit {
            Hit::Tokens => true,
            Hit::Requests => false,
            Hit::Unknown => self.last_rate.remaining_tokens == Some(0),
        };
        if about_tokens && self.refilling().is_some() {
            // The bucket said there was room: the upstream is no such
            // bucket, and the window (which would have waited) counts again.
            self.bucket.refute();
        } else if about_tokens && self.tpm.limit().is_some() {
            // The refused request is the window's newest entry (just recorded).
            let seen = self.own_tokens(now).saturating_sub(self.window.newest().unwrap_or(0));
            self.tpm.lower(seen, now);
        }
        let about_requests = match reset.hit {
            Hit::Requests => true,
            Hit::Tokens => false,
            Hit::Unknown => !about_tokens && self.last_rate.remaining_requests == Some(0),
        };
        if let (true, Some(spans), Some(rpm)) = (about_requests, self.spans.as_mut(), self.rpm.limit()) {
            spans.refused(rpm, now);
        }
        let rest = reset.after.min(Duration::from_secs(86_400));
        let until = now.checked_add(rest).unwrap_or(now);
        self.cooling_until = Some(self.cooling_until.map_or(until, |t| t.max(until)));
        let (own_r, own_t) = (self.own_requests(), self.own_tokens(now));
        self.rpm.empty_until(until, own_r);
        self.tpm.empty_until(until, own_t);
    }

    /// Takes the provider's balance reading (`micros` left, read at
    /// `at_ms`): from now on the key may spend what it spent so far plus
    /// that, and `balance_even` orders it by that share.
    pub fn set_balance(&mut self, micros: u64, at_ms: i64) {
        self.balance = Some((micros, at_ms));
        self.balance_budget = Some(self.spent_micros.saturating_add(micros));
        self.budget_micros = smaller(self.configured_budget, self.balance_budget);
    }

    /// A lowercase word for the key's state, as operators see it.
    pub fn status(&self, now: Instant) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if self.health == Health::Invalid {
            "invalid"
        } else if self.health == Health::Exhausted {
            "exhausted"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else if self.budget_micros.is_some_and(|b| self.spent_micros >= b) {
            "spent"
        } else if self.cooling_until.is_some_and(|t| t > now) || self.rpd.is_some_and(|l| self.day_count >= l) {
            "cooling"
        } else {
            "active"
        }
    }
}

/// The smaller of two optional limits (either alone when the other is unset).
fn smaller(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
