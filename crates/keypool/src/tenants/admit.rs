//! A tenant's own limits and budget: admission, waiting, and settling.
//!
//! Per-minute limits are counted over a rolling 60 s of admissions (the
//! same rule keypool applies to keys, never looser than a token bucket of
//! the same size), requests per day over the calendar day of the
//! configured time zone, and spend over the budget's period. A request is
//! counted when admitted, with its estimate; its end replaces the estimate
//! with what it used and spent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{BudgetPeriod, Tenant, TokenSettings};

/// The span the per-minute limits count over.
const MINUTE: Duration = Duration::from_secs(60);

/// How late, at most, admissions that left the minute are dropped while no
/// per-minute limit is reached (see [`Counters::try_admit`]).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// What one request asks of its tenant, estimated at admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Prompt tokens plus the completion allowance (`max_tokens` × `n`, or
    /// the configured default).
    pub tokens: u64,
    /// The estimate's price, micro-USD (0 when the model has no price).
    pub cost_micros: u64,
}

/// Why a tenant's request is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over one of the token's own limits for longer than the request may
    /// wait. `limit` names it in words ("requests per minute").
    RateLimited { limit: &'static str, waited: Duration, retry_after: Duration },
    /// The budget cannot pay for the request: `left_micros` is what is
    /// left of it, `need_micros` the request's estimate (micro-USD);
    /// `retry_after` is the end of the period (`None` for a total budget,
    /// which never renews).
    Budget { retry_after: Option<Duration>, left_micros: u64, need_micros: u64 },
    /// The request alone needs more tokens than the token's TPM allows.
    TooLarge { needed: u64, limit: u64 },
}

/// Why admission must wait, or cannot happen.
enum Blocked {
    /// Room comes back at `until`, or when a request ends (`None`).
    Wait {
        until: Option<Instant>,
        limit: &'static str,
    },
    Refused(Refusal),
    /// Too many of the token's requests wait already.
    Full,
}

/// A tenant's counters (see the module's comment). `repr(C)`: the fields
/// every admission and settle writes first, then those they read (see
/// [`Tenant`]'s layout).
#[derive(Debug)]
#[repr(C)]
pub(super) struct Counters {
    /// Admissions of the last minute, oldest first: (when, sequence, tokens).
    minute: VecDeque<(Instant, u64, u64)>,
    minute_tokens: u64,
    next_seq: u64,
    inflight: u64,
    reserved: u64,
    spent: u64,
    day_requests: u64,
    /// When admissions that left the minute were last dropped.
    pruned_at: Option<Instant>,
    /// The calendar day under way, [start, end) in Unix seconds.
    day: (i64, i64),
    /// The budget period under way, [start, end) in Unix seconds.
    period: (i64, i64),
    /// Requests waiting for room under this token's limits (32 bits: with
    /// `period_kind`, one word, so the counters end in the tenant's third
    /// cache line).
    waiting: u32,
    period_kind: BudgetPeriod,
}

/// The [start, end) of the `period` holding `now` (Unix seconds) in `tz`;
/// the whole of time for a total budget. A time the zone cannot place
/// falls back to UTC days.
pub fn period_bounds(period: BudgetPeriod, tz: &jiff::tz::TimeZone, now: i64) -> (i64, i64) {
    let found = || -> Option<(i64, i64)> {
        let at = jiff::Timestamp::from_second(now).ok()?.to_zoned(tz.clone());
        let (start, end) = match period {
            BudgetPeriod::Total => return Some((i64::MIN, i64::MAX)),
            BudgetPeriod::Daily => {
                let start = at.start_of_day().ok()?;
                let end = start.tomorrow().ok()?.start_of_day().ok()?;
                (start, end)
            }
            BudgetPeriod::Monthly => {
                let start = at.first_of_month().ok()?.start_of_day().ok()?;
                let end = start.checked_add(jiff::Span::new().months(1)).ok()?.start_of_day().ok()?;
                (start, end)
            }
        };
        Some((start.timestamp().as_second(), end.timestamp().as_second()))
    };
    found().unwrap_or_else(|| {
        let day = now.div_euclid(86_400) * 86_400;
        (day, day + 86_400)
    })
}

impl Counters {
    pub(super) fn new(s: &TokenSettings, tz: &jiff::tz::TimeZone, now: i64, spent: u64) -> Counters {
        Counters {
            minute: VecDeque::new(),
            minute_tokens: 0,
            pruned_at: None,
            next_seq: 0,
            day: period_bounds(BudgetPeriod::Daily, tz, now),
            day_requests: 0,
            inflight: 0,
            waiting: 0,
            period: period_bounds(s.budget_period, tz, now),
            period_kind: s.budget_period,
            spent,
            reserved: 0,
        }
    }

    pub(super) fn restart_budget(&mut self, kind: BudgetPeriod, tz: &jiff::tz::TimeZone, now: i64, spent: u64) {
        self.period_kind = kind;
        self.period = period_bounds(kind, tz, now);
        self.spent = spent;
    }

    pub(super) fn spent(&self) -> u64 {
        self.spent
    }

    pub(super) fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The budget period under way, [start, end) in Unix seconds.
    pub(super) fn period(&self) -> (i64, i64) {
        self.period
    }

    /// Starts a new day or budget period when `now` has passed the current one's end.
    pub(super) fn roll(&mut self, s: &TokenSettings, tz: &jiff::tz::TimeZone, now: i64) {
        if now >= self.day.1 || now < self.day.0 {
            self.day = period_bounds(BudgetPeriod::Daily, tz, now);
            self.day_requests = 0;
        }
        if s.budget_period != self.period_kind {
            // Edited while the store's figure for the new period was read: counted from here.
            self.restart_budget(s.budget_period, tz, now, self.spent);
        } else if now >= self.period.1 {
            self.period = period_bounds(s.budget_period, tz, now);
            self.spent = 0;
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(at, _, tokens)) = self.minute.front() {
            if at + MINUTE > now {
                break;
            }
            self.minute.pop_front();
            self.minute_tokens = self.minute_tokens.saturating_sub(tokens);
        }
    }

    /// Admits `need` now (`now` and `unix` are the same instant), or says
    /// how long it must wait or why it cannot be admitted.
    fn try_admit(&mut self, s: &TokenSettings, need: Need, now: Instant, unix: i64) -> Result<u64, Blocked> {
        // Dropping the admissions that left the minute only lowers the
        // counts, so a request within the per-minute limits counted with
        // them is within them without. They are dropped when a limit would
        // refuse, and otherwise at most PRUNE_EVERY late (memory stays
        // bounded): nearly every admission is spared reading the oldest
        // entry, with many tenants a cold cache line (docs/benchmarks.md,
        // issue 17).
        let reached = s.rpm.is_some_and(|rpm| u64::try_from(self.minute.len()).unwrap_or(u64::MAX) >= rpm)
            || s.tpm.is_some_and(|tpm| self.minute_tokens.saturating_add(need.tokens) > tpm);
        if reached || self.pruned_at.is_none_or(|at| now >= at + PRUNE_EVERY) {
            self.prune(now);
            self.pruned_at = Some(now);
        }
        if let Some(budget) = s.budget_micros {
            if self.spent >= budget || self.spent.saturating_add(need.cost_micros) > budget {
                let retry_after = (self.period.1 != i64::MAX)
                    .then(|| Duration::from_secs(u64::try_from(self.period.1.saturating_sub(unix)).unwrap_or(0)));
                let left_micros = budget.saturating_sub(self.spent);
                return Err(Blocked::Refused(Refusal::Budget {
                    retry_after,
                    left_micros,
                    need_micros: need.cost_micros,
                }));
            }
            if self.spent.saturating_add(self.reserved).saturating_add(need.cost_micros) > budget {
                // Requests in flight reserved the rest: they may give some back.
                return Err(Blocked::Wait { until: None, limit: "budget (reserved by requests in flight)" });
            }
        }
        if let Some(tpm) = s.tpm.filter(|tpm| need.tokens > *tpm) {
            return Err(Blocked::Refused(Refusal::TooLarge { needed: need.tokens, limit: tpm }));
        }
        if s.max_inflight.is_some_and(|m| self.inflight >= m) {
            return Err(Blocked::Wait { until: None, limit: "requests in flight" });
        }
        if s.rpd.is_some_and(|l| self.day_requests >= l) {
            let left = u64::try_from(self.day.1.saturating_sub(unix)).unwrap_or(0);
            return Err(Blocked::Wait { until: Some(now + Duration::from_secs(left)), limit: "requests per day" });
        }
        if let Some(rpm) = s.rpm {
            let rpm = usize::try_from(rpm).unwrap_or(usize::MAX);
            if self.minute.len() >= rpm {
                // Room once enough of the oldest admissions leave the minute.
                let at = self.minute.get(self.minute.len() - rpm).map_or(now, |e| e.0) + MINUTE;
                return Err(Blocked::Wait { until: Some(at.max(now)), limit: "requests per minute" });
            }
        }
        if let Some(tpm) = s.tpm {
            if self.minute_tokens.saturating_add(need.tokens) > tpm {
                let mut left = self.minute_tokens;
                let mut at = now;
                for &(when, _, tokens) in &self.minute {
                    left = left.saturating_sub(tokens);
                    at = when + MINUTE;
                    if left.saturating_add(need.tokens) <= tpm {
                        break;
                    }
                }
                return Err(Blocked::Wait { until: Some(at.max(now)), limit: "tokens per minute" });
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.minute.push_back((now, seq, need.tokens));
        self.minute_tokens = self.minute_tokens.saturating_add(need.tokens);
        self.day_requests += 1;
        self.inflight += 1;
        self.reserved = self.reserved.saturating_add(need.cost_micros);
        Ok(seq)
    }

    fn settle(&mut self, seq: u64, need: Need, end: End) {
        self.inflight = self.inflight.saturating_sub(1);
        self.reserved = self.reserved.saturating_sub(need.cost_micros);
        self.spent = self.spent.saturating_add(end.cost_micros);
        let entry = position_from_back(&self.minute, seq);
        if !end.sent {
            // Never sent upstream (refused, or no key in time): it counts for none of the limits.
            if let Some(i) = entry {
                if let Some((_, _, tokens)) = self.minute.remove(i) {
                    self.minute_tokens = self.minute_tokens.saturating_sub(tokens);
                }
            }
            self.day_requests = self.day_requests.saturating_sub(1);
            return;
        }
        if let (Some(used), Some(i)) = (end.used_tokens, entry) {
            if let Some(e) = self.minute.get_mut(i) {
                self.minute_tokens = self.minute_tokens.saturating_sub(e.2).saturating_add(used);
                e.2 = used;
            }
        }
    }
}

/// Where admission `seq` is in `minute`, if still there. Sequences rise
/// from front to back, so this is a binary search, but one that gallops
/// from the back first (the last entry, then the 3rd, 7th, 15th… from the
/// end, until one is not above `seq`): a
/// request usually ends soon after its admission, so its entry is among
/// the last few. With a thousand tenants each token's deque is cold in the
/// CPU's caches when its request ends, and a search begun in the middle
/// missed them at nearly every step. `perf`, 1,000 tokens at c64:
/// `Ticket::settle_once` took 1.45–1.84 µs of a request with the plain
/// binary search, 0.62–0.71 µs with this (docs/benchmarks.md, issue 17).
/// O(log k) steps for the entry k from the end.
fn position_from_back(minute: &VecDeque<(Instant, u64, u64)>, seq: u64) -> Option<usize> {
    // The entry, if there, is at an index in lo..hi.
    let (mut lo, mut hi) = (0, minute.len());
    let mut step = 1;
    while step <= hi {
        let i = hi - step;
        let at = minute.get(i)?.1;
        match at.cmp(&seq) {
            std::cmp::Ordering::Equal => return Some(i),
            std::cmp::Ordering::Less => {
                lo = i + 1;
                break;
            }
            std::cmp::Ordering::Greater => {
                hi = i;
                step = step.saturating_mul(2);
            }
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match minute.get(mid)?.1.cmp(&seq) {
            std::cmp::Ordering::Equal => return Some(mid),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

/// How an admitted request ended, for its tenant's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Whether any attempt was sent upstream; a request never sent counts
    /// for no limit and spends nothing.
    pub sent: bool,
    /// Prompt plus completion tokens used; `None` keeps the estimate.
    pub used_tokens: Option<u64>,
    /// What it cost, micro-USD.
    pub cost_micros: u64,
}

/// An admitted request's hold on its tenant: its place in the counters and
/// its reservation, until [`Ticket::settle`] (or, failing that, its drop,
/// which charges the estimate).
#[derive(Debug)]
pub struct Ticket {
    tenant: Arc<Tenant>,
    seq: u64,
    need: Need,
    settled: bool,
}

impl Ticket {
    /// The estimate reserved at admission.
    pub fn need(&self) -> Need {
        self.need
    }

    /// The request ended as `end` says.
    pub fn settle(mut self, end: End) {
        self.settle_once(end);
    }

    fn settle_once(&mut self, end: End) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let waiting = {
            let mut c = self.tenant.counters.lock().unwrap_or_else(|p| p.into_inner());
            c.settle(self.seq, self.need, end);
            c.waiting
        };
        // A request counts itself in `waiting`, under the same lock, only
        // after it registered for the notice ([`Tenant::admit`]), so none
        // can miss this one. With none waiting (nearly always) the notice's
        // own lock is left alone: with many tenants it is one more cold
        // cache line a request.
        if waiting > 0 {
            self.tenant.room.notify_waiters();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Not settled by the request's end: charged its estimate (never less than reserved).
        self.settle_once(End { sent: true, used_tokens: None, cost_micros: self.need.cost_micros });
    }
}

impl Tenant {
    /// One try at admitting `need` at `now`, the counters locked as `c`:
    /// the day or budget period rolled over first if it ended.
    fn try_now(&self, c: &mut Counters, settings: &TokenSettings, need: Need, now: Instant) -> Result<u64, Blocked> {
        c.roll(settings, &self.tz, crate::store::now_unix());
        c.try_admit(settings, need, now, crate::store::now_unix())
    }

    /// The hold of admission `seq`, reserving `need`.
    fn ticket(self: &Arc<Self>, seq: u64, need: Need) -> Ticket {
        Ticket { tenant: Arc::clone(self), seq, need, settled: false }
    }

    /// Admits a request needing `need`, waiting (until `deadline`) while the
    /// token is at one of its own limits; a budget that cannot pay and a
    /// request larger than the TPM are refused at once, and so is a wait
    /// that could not end before `deadline`, or one that would make more
    /// than `max_waiting` of the token's requests wait (`pool.max_queue`).
    ///
    /// # Errors
    /// [`Refusal`], saying which limit and when to come back.
    pub async fn admit(self: &Arc<Self>, need: Need, deadline: Instant, max_waiting: usize) -> Result<Ticket, Refusal> {
        let started = Instant::now();
        // First without registering for the notice of room coming back: a
        // request nearly always has room, and the registration takes the
        // notice's lock twice (a cold cache line with many tenants). Only a
        // request that must wait registers, then tries again before waiting.
        {
            let settings = self.settings();
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            match self.try_now(&mut c, &settings, need, Instant::now()) {
                Ok(seq) => return Ok(self.ticket(seq, need)),
                Err(Blocked::Refused(r)) => return Err(r),
                Err(Blocked::Wait { .. } | Blocked::Full) => {}
            }
        }
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let settings = self.settings();
            let now = Instant::now();
            let tried = {
                let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
                let tried = self.try_now(&mut c, &settings, need, now);
                if matches!(tried, Err(Blocked::Wait { .. })) && waiting.is_none() {
                    if usize::try_from(c.waiting).unwrap_or(usize::MAX) >= max_waiting || c.waiting == u32::MAX {
                        Err(Blocked::Full)
                    } else {
                        c.waiting += 1;
                        waiting = Some(Waiting(self));
                        tried
                    }
                } else {
                    tried
                }
            };
            match tried {
                Ok(seq) => return Ok(self.ticket(seq, need)),
                Err(Blocked::Refused(r)) => return Err(r),
                Err(Blocked::Full) => {
                    return Err(Refusal::RateLimited {
                        limit: "requests waiting",
                        waited: Duration::ZERO,
                        retry_after: Duration::from_secs(1),
                    })
                }
                Err(Blocked::Wait { until, limit }) => {
                    if now >= deadline || until.is_some_and(|u| u > deadline) {
                        let retry_after = until.map_or(Duration::from_secs(1), |u| u.saturating_duration_since(now));
                        return Err(Refusal::RateLimited { limit, waited: now - started, retry_after });
                    }
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(until.unwrap_or(deadline).min(deadline)) => {}
                    }
                }
            }
        }
    }
}

/// One request counted in its tenant's `waiting` while it waits (however
/// the wait ends: admitted, refused, or the caller gone).
struct Waiting<'a>(&'a Tenant);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut c = self.0.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.waiting = c.waiting.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tenant(s: TokenSettings) -> Arc<Tenant> {
        Arc::new(Tenant::new(1, "t", s, jiff::tz::TimeZone::UTC, 0))
    }

    /// What a request reads and writes of its tenant (the `Arc`'s counts,
    /// the id, the settings' lock, the counters) lies in the allocation's
    /// first 192 bytes (three cache lines when it is 64-byte aligned, as
    /// mimalloc's 320-byte blocks are), before the fields read off the
    /// request path. Sizes as on 64-bit Linux (std's locks a futex word).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn a_tenants_hot_fields_come_first_in_three_cache_lines() {
        const ARC_COUNTS: usize = 16;
        let hot_end =
            ARC_COUNTS + std::mem::offset_of!(Tenant, counters) + std::mem::size_of::<std::sync::Mutex<Counters>>();
        assert_eq!(std::mem::offset_of!(Tenant, id), 0);
        assert!(std::mem::offset_of!(Tenant, settings) < std::mem::offset_of!(Tenant, counters));
        assert!(std::mem::offset_of!(Tenant, counters) < std::mem::offset_of!(Tenant, name));
        assert!(hot_end <= 3 * 64, "the hot fields end at byte {hot_end}");
    }

    fn need(tokens: u64, cost_micros: u64) -> Need {
        Need { tokens, cost_micros }
    }

    fn used(tokens: u64, cost_micros: u64) -> End {
        End { sent: true, used_tokens: Some(tokens), cost_micros }
    }

    /// Admissions that left the minute are dropped as soon as a
    /// per-minute limit would refuse, however recently they were last
    /// dropped, and otherwise within PRUNE_EVERY (so memory stays bounded).
    #[test]
    fn admissions_leave_the_minute_when_a_limit_needs_it_and_soon_otherwise() {
        let tz = jiff::tz::TimeZone::UTC;
        let unix = 1_700_000_000;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for limited in [
            TokenSettings { rpm: Some(2), ..TokenSettings::default() },
            TokenSettings { tpm: Some(20), ..TokenSettings::default() },
        ] {
            let mut c = Counters::new(&limited, &tz, unix, 0);
            assert!(c.try_admit(&limited, need(10, 0), at(0), unix).is_ok());
            assert!(c.try_admit(&limited, need(10, 0), at(59_500), unix).is_ok());
            // 60.2 s: the first left the minute 0.2 s ago; the last drop
            // was 0.7 s ago, but the limit is reached, so it goes now.
            assert!(c.try_admit(&limited, need(10, 0), at(60_200), unix).is_ok(), "{limited:?}");
            assert!(matches!(c.try_admit(&limited, need(10, 0), at(60_300), unix), Err(Blocked::Wait { .. })));
        }
        let roomy = TokenSettings { rpm: Some(1_000), ..TokenSettings::default() };
        let mut c = Counters::new(&roomy, &tz, unix, 0);
        for i in 0..5 {
            assert!(c.try_admit(&roomy, need(1, 0), at(i * 100), unix).is_ok());
        }
        // 59.9 s drops what left the minute (nothing yet); at 60.2 s two
        // have left it but stay counted, as no limit is near.
        assert!(c.try_admit(&roomy, need(1, 0), at(59_900), unix).is_ok());
        assert!(c.try_admit(&roomy, need(1, 0), at(60_200), unix).is_ok());
        assert_eq!(c.minute.len(), 7, "dropped lazily");
        assert!(c.try_admit(&roomy, need(1, 0), at(61_000), unix).is_ok());
        assert_eq!((c.minute.len(), c.minute_tokens), (3, 3), "the first five left the minute and were dropped");
    }

    #[test]
    fn the_search_from_the_back_finds_what_a_binary_search_finds() {
        let now = Instant::now();
        for len in 0..70u64 {
            // Odd sequences (gaps between all), and one missing at the
            // front, the middle or the back (as an entry leaves the minute
            // when its request is never sent).
            for skip in [None, Some(0), Some(len / 2), Some(len.saturating_sub(1))] {
                let minute: VecDeque<(Instant, u64, u64)> =
                    (0..len).filter(|i| Some(*i) != skip).map(|i| (now, 2 * i + 1, i)).collect();
                for seq in 0..=2 * len + 2 {
                    let expected = minute.binary_search_by_key(&seq, |e| e.1).ok();
                    assert_eq!(position_from_back(&minute, seq), expected, "len {len}, skip {skip:?}, seq {seq}");
                }
            }
        }
        // A deque that wrapped around its buffer (front popped, back pushed).
        let mut minute: VecDeque<(Instant, u64, u64)> = VecDeque::with_capacity(8);
        for seq in 0..8 {
            minute.push_back((now, seq, 0));
        }
        for seq in 8..13 {
            minute.pop_front();
            minute.push_back((now, seq, 0));
        }
        for seq in 0..15 {
            assert_eq!(position_from_back(&minute, seq), minute.binary_search_by_key(&seq, |e| e.1).ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_waiting_requests_of_a_token_wait() {
        let t = tenant(TokenSettings { max_inflight: Some(1), ..Default::default() });
        let far = Instant::now() + Duration::from_secs(600);
        let held = t.admit(need(1, 0), far, 2).await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&t);
                tokio::spawn(async move { t.admit(need(1, 0), far, 2).await.map(drop) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        match t.admit(need(1, 0), far, 2).await.unwrap_err() {
            Refusal::RateLimited { limit, waited, .. } => {
                assert_eq!((limit, waited), ("requests waiting", Duration::ZERO))
            }
            other => panic!("{other:?}"),
        }
        drop(held);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(t.counters.lock().unwrap().waiting, 0, "every wait is uncounted when it ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_never_sent_counts_for_no_limit() {
        let t = tenant(TokenSettings { rpm: Some(1), rpd: Some(1), ..Default::default() });
        let soon = Instant::now() + Duration::from_secs(1);
        t.admit(need(10, 0), soon, 1024).await.unwrap().settle(End {
            sent: false,
            used_tokens: Some(0),
            cost_micros: 0,
        });
        t.admit(need(10, 0), soon, 1024).await.unwrap().settle(used(10, 0));
        assert!(
            matches!(t.admit(need(10, 0), soon, 1024).await, Err(Refusal::RateLimited { .. })),
            "a sent one counts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_added_later_starts_from_what_the_store_says_was_spent() {
        let t = tenant(TokenSettings::default());
        let soon = Instant::now() + Duration::from_secs(1);
        t.update("t", TokenSettings { budget_micros: Some(40), ..Default::default() }, Some(50));
        assert_eq!(t.spend(), (50, 0));
        assert!(matches!(
            t.admit(need(1, 0), soon, 1024).await,
            Err(Refusal::Budget { retry_after: None, left_micros: 0, .. })
        ));
        // An edit that does not touch the budget keeps counting from memory.
        t.update("t", TokenSettings { budget_micros: Some(100), rpm: Some(5), ..Default::default() }, None);
        assert_eq!(t.spend(), (50, 0));
        t.admit(need(1, 10), soon, 1024).await.unwrap().settle(used(1, 10));
        assert_eq!(t.spend(), (60, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_wait_for_the_oldest_to_leave_the_minute() {
        let t = tenant(TokenSettings { rpm: Some(2), ..Default::default() });
        let far = Instant::now() + Duration::from_secs(600);
        let start = Instant::now();
        for _ in 0..2 {
            t.admit(need(1, 0), far, 1024).await.unwrap().settle(used(1, 0));
        }
        t.admit(need(1, 0), far, 1024).await.unwrap().settle(used(1, 0));
        assert_eq!(Instant::now() - start, MINUTE, "the third waits a minute");
        t.admit(need(1, 0), far, 1024).await.unwrap().settle(used(1, 0));
        assert_eq!(Instant::now() - start, MINUTE, "the first two have left the minute: the fourth goes at once");
        // A wait that cannot end before the deadline is refused at once, with when to come back.
        let soon = Instant::now() + Duration::from_secs(5);
        match t.admit(need(1, 0), soon, 1024).await.unwrap_err() {
            Refusal::RateLimited { limit, waited, retry_after } => {
                assert_eq!(limit, "requests per minute");
                assert_eq!(waited, Duration::ZERO);
                assert!(retry_after > Duration::from_secs(5) && retry_after <= MINUTE, "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_count_what_was_used_once_it_ends() {
        let t = tenant(TokenSettings { tpm: Some(1000), ..Default::default() });
        let far = Instant::now() + Duration::from_secs(600);
        let a = t.admit(need(800, 0), far, 1024).await.unwrap();
        let soon = Instant::now() + Duration::from_secs(1);
        assert!(matches!(
            t.admit(need(300, 0), soon, 1024).await,
            Err(Refusal::RateLimited { limit: "tokens per minute", .. })
        ));
        a.settle(used(100, 0));
        let b = t.admit(need(300, 0), soon, 1024).await.unwrap();
        drop(b);
        assert_eq!(
            t.admit(need(1001, 0), far, 1024).await.unwrap_err(),
            Refusal::TooLarge { needed: 1001, limit: 1000 },
            "larger than the whole limit: refused, never waited for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_is_never_overspent_by_requests_at_once() {
        let t = tenant(TokenSettings { budget_micros: Some(1000), ..Default::default() });
        let soon = Instant::now() + Duration::from_secs(2);
        let held: Vec<Ticket> =
            vec![t.admit(need(1, 400), soon, 1024).await.unwrap(), t.admit(need(1, 400), soon, 1024).await.unwrap()];
        // 800 reserved: a third of 400 waits for them, and is refused when they spend all they reserved.
        let third = {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.admit(need(1, 400), soon, 1024).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        for h in held {
            h.settle(used(1, 450));
        }
        assert_eq!(
            third.await.unwrap().unwrap_err(),
            Refusal::Budget { retry_after: None, left_micros: 100, need_micros: 400 },
            "900 spent: 400 more would pass 1000"
        );
        assert_eq!(t.spend(), (900, 0));
        // A cheaper request still fits; then nothing does.
        t.admit(need(1, 100), soon, 1024).await.unwrap().settle(End {
            sent: true,
            used_tokens: None,
            cost_micros: 100,
        });
        assert!(
            matches!(t.admit(need(1, 0), soon, 1024).await, Err(Refusal::Budget { .. })),
            "a spent budget pays for nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_are_capped_and_an_end_lets_the_next_in() {
        let t = tenant(TokenSettings { max_inflight: Some(1), ..Default::default() });
        let far = Instant::now() + Duration::from_secs(600);
        let first = t.admit(need(1, 0), far, 1024).await.unwrap();
        let second = {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.admit(need(1, 0), far, 1024).await.map(|_| Instant::now()) })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ended = Instant::now();
        first.settle(used(1, 0));
        assert_eq!(second.await.unwrap().unwrap(), ended, "admitted as soon as the first ended");
    }

    #[test]
    fn periods_begin_at_midnight_and_on_the_first_in_the_time_zone() {
        let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        // 2026-12-01T12:00:00Z is 20:00 in Shanghai.
        let now = 1_796_126_400;
        let (start, end) = period_bounds(BudgetPeriod::Daily, &tz, now);
        assert_eq!((start, end), (now - 20 * 3600, now + 4 * 3600));
        let (start, end) = period_bounds(BudgetPeriod::Monthly, &tz, now);
        assert_eq!(start, now - 20 * 3600, "the first of December in Shanghai");
        assert_eq!(end - start, 31 * 86_400);
        // The last day of November in Shanghai still belongs to November.
        let (start, end) = period_bounds(BudgetPeriod::Monthly, &tz, now - 20 * 3600 - 1);
        assert_eq!((end - start, end), (30 * 86_400, now - 20 * 3600));
        assert_eq!(period_bounds(BudgetPeriod::Total, &tz, now), (i64::MIN, i64::MAX));
    }
}
