//! A tenant's own limits and budget: admission, waiting, and settling.
//!
//! Per-minute limits are counted over the last minute of admissions, per
//! whole second ([`super::window`]: never looser than a rolling 60 s, the
//! rule keypool applies to keys, and at most 1 s stricter), requests per
//! day over the calendar day of the configured time zone, and spend over
//! the budget's period. A request is counted when admitted, with its
//! estimate; its end replaces the estimate with what it used and spent.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Mark, Window};
use super::{BudgetPeriod, Limits, Tenant, TokenSettings};

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

/// A tenant's counters (see the module's comment), and the limits they
/// are held to. `repr(C)`: the fields every admission and settle writes
/// first, then those they read (see [`Tenant`]'s layout).
#[derive(Debug)]
#[repr(C)]
pub(super) struct Counters {
    /// Admissions of the last minute.
    window: Window,
    inflight: u64,
    reserved: u64,
    spent: u64,
    day_requests: u64,
    /// The calendar day under way, [start, end) in Unix seconds.
    day: (i64, i64),
    /// The budget period under way, [start, end) in Unix seconds.
    period: (i64, i64),
    /// Requests waiting for room under this token's limits (32 bits: with
    /// `period_kind`, one word).
    waiting: u32,
    period_kind: BudgetPeriod,
    /// The token's limits, swapped with its settings ([`Tenant::update`]).
    limits: Limits,
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
            window: Window::default(),
            limits: s.limits(),
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

    pub(super) fn limits(&self) -> Limits {
        self.limits
    }

    pub(super) fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
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
    pub(super) fn roll(&mut self, tz: &jiff::tz::TimeZone, now: i64) {
        if now >= self.day.1 || now < self.day.0 {
            self.day = period_bounds(BudgetPeriod::Daily, tz, now);
            self.day_requests = 0;
        }
        let kind = self.limits.budget_period;
        if kind != self.period_kind {
            // Edited while the store's figure for the new period was read: counted from here.
            self.restart_budget(kind, tz, now, self.spent);
        } else if now >= self.period.1 {
            self.period = period_bounds(kind, tz, now);
            self.spent = 0;
        }
    }

    /// Admits `need` now (`now` and `unix` are the same instant), or says
    /// how long it must wait or why it cannot be admitted.
    fn try_admit(&mut self, need: Need, now: Instant, unix: i64) -> Result<Mark, Blocked> {
        let s = self.limits;
        // Seconds that left the minute only lower the counts, so a request
        // within the per-minute limits counted with them is within them
        // without: they are dropped when a limit would refuse, and
        // otherwise as the second turns.
        let (requests, tokens) = self.window.counted();
        if requests >= s.rpm || tokens.saturating_add(need.tokens) > s.tpm {
            self.window.drop_left(now);
        }
        if let Some(budget) = s.budget() {
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
        if need.tokens > s.tpm {
            return Err(Blocked::Refused(Refusal::TooLarge { needed: need.tokens, limit: s.tpm }));
        }
        if self.inflight >= s.max_inflight {
            return Err(Blocked::Wait { until: None, limit: "requests in flight" });
        }
        if self.day_requests >= s.rpd {
            let left = u64::try_from(self.day.1.saturating_sub(unix)).unwrap_or(0);
            return Err(Blocked::Wait { until: Some(now + Duration::from_secs(left)), limit: "requests per day" });
        }
        let (requests, tokens) = self.window.counted();
        if requests >= s.rpm {
            // Room once enough of the oldest seconds leave the minute.
            let at = self.window.room_at(now, s.rpm, u64::MAX);
            return Err(Blocked::Wait { until: Some(at), limit: "requests per minute" });
        }
        if tokens.saturating_add(need.tokens) > s.tpm {
            let at = self.window.room_at(now, u64::MAX, s.tpm - need.tokens);
            return Err(Blocked::Wait { until: Some(at), limit: "tokens per minute" });
        }
        let mark = self.window.add(now, need.tokens);
        self.day_requests += 1;
        self.inflight += 1;
        self.reserved = self.reserved.saturating_add(need.cost_micros);
        Ok(mark)
    }

    fn settle(&mut self, mark: Mark, need: Need, end: End) {
        self.inflight = self.inflight.saturating_sub(1);
        self.reserved = self.reserved.saturating_sub(need.cost_micros);
        self.spent = self.spent.saturating_add(end.cost_micros);
        // Never sent upstream (refused, or no key in time): it counts for none of the limits.
        self.window.correct(mark, need.tokens, end.used_tokens, end.sent);
        if !end.sent {
            self.day_requests = self.day_requests.saturating_sub(1);
        }
    }
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
    mark: Mark,
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
            c.settle(self.mark, self.need, end);
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
    fn try_now(&self, c: &mut Counters, need: Need, now: Instant) -> Result<Mark, Blocked> {
        let unix = crate::store::now_unix();
        c.roll(&self.tz, unix);
        c.try_admit(need, now, unix)
    }

    /// The hold of admission `mark`, reserving `need`.
    fn ticket(self: &Arc<Self>, mark: Mark, need: Need) -> Ticket {
        Ticket { tenant: Arc::clone(self), mark, need, settled: false }
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
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            match self.try_now(&mut c, need, Instant::now()) {
                Ok(mark) => return Ok(self.ticket(mark, need)),
                Err(Blocked::Refused(r)) => return Err(r),
                Err(Blocked::Wait { .. } | Blocked::Full) => {}
            }
        }
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let tried = {
                let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
                let tried = self.try_now(&mut c, need, now);
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
                Ok(mark) => return Ok(self.ticket(mark, need)),
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
    use crate::tenants::window::MINUTE;

    fn tenant(s: TokenSettings) -> Arc<Tenant> {
        Arc::new(Tenant::new(1, "t", s, jiff::tz::TimeZone::UTC, 0))
    }

    /// What a request reads and writes of its tenant (the `Arc`'s counts,
    /// the id, the counters and the limits kept with them) lies in the
    /// allocation's first 256 bytes (four cache lines when it is 64-byte
    /// aligned, as mimalloc's blocks of 320 bytes and more are), before the
    /// fields read off the request path. Sizes as on 64-bit Linux (std's
    /// locks a futex word).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn a_tenants_hot_fields_come_first_in_four_cache_lines() {
        const ARC_COUNTS: usize = 16;
        let hot_end =
            ARC_COUNTS + std::mem::offset_of!(Tenant, counters) + std::mem::size_of::<std::sync::Mutex<Counters>>();
        assert_eq!(std::mem::offset_of!(Tenant, id), 0);
        assert!(std::mem::offset_of!(Tenant, counters) < std::mem::offset_of!(Tenant, settings));
        assert!(std::mem::offset_of!(Tenant, counters) < std::mem::offset_of!(Tenant, name));
        assert!(hot_end <= 4 * 64, "the hot fields end at byte {hot_end}");
    }

    fn need(tokens: u64, cost_micros: u64) -> Need {
        Need { tokens, cost_micros }
    }

    fn used(tokens: u64, cost_micros: u64) -> End {
        End { sent: true, used_tokens: Some(tokens), cost_micros }
    }

    /// Seconds that left the minute are dropped as soon as a per-minute
    /// limit would refuse, and otherwise as the second turns (so memory
    /// stays bounded).
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
            assert!(c.try_admit(need(10, 0), at(0), unix).is_ok());
            assert!(c.try_admit(need(10, 0), at(59_500), unix).is_ok());
            // 60.2 s: the first left the minute 0.2 s ago, and the limit is
            // reached: it is dropped now, before its second turns.
            assert!(c.try_admit(need(10, 0), at(60_200), unix).is_ok(), "{limited:?}");
            assert!(matches!(c.try_admit(need(10, 0), at(60_300), unix), Err(Blocked::Wait { .. })));
        }
        let roomy = TokenSettings { rpm: Some(1_000), ..TokenSettings::default() };
        let mut c = Counters::new(&roomy, &tz, unix, 0);
        for i in 0..5 {
            assert!(c.try_admit(need(1, 0), at(i * 100), unix).is_ok());
        }
        // 59.9 s: nothing has left; at 60.2 s the second turns, and the
        // first has not left (at 60.4 s); at 60.7 s it has, but stays
        // counted: no limit is near, and the second has not turned since.
        for ms in [59_900, 60_200, 60_700] {
            assert!(c.try_admit(need(1, 0), at(ms), unix).is_ok());
        }
        assert_eq!(c.window.counted(), (8, 8), "dropped lazily");
        assert!(c.try_admit(need(1, 0), at(61_000), unix).is_ok());
        assert_eq!(c.window.counted(), (4, 4), "the first five left the minute and were dropped");
    }

    /// Admissions of one second are held until a minute after its last:
    /// at most 1 s longer than each one's own minute.
    #[test]
    fn a_second_of_admissions_leaves_a_minute_after_its_last() {
        let tz = jiff::tz::TimeZone::UTC;
        let unix = 1_700_000_000;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = TokenSettings { rpm: Some(2), ..TokenSettings::default() };
        let mut c = Counters::new(&s, &tz, unix, 0);
        assert!(c.try_admit(need(1, 0), at(0), unix).is_ok());
        assert!(c.try_admit(need(1, 0), at(500), unix).is_ok());
        match c.try_admit(need(1, 0), at(60_100), unix) {
            Err(Blocked::Wait { until, limit }) => {
                assert_eq!((until, limit), (Some(at(60_500)), "requests per minute"), "0.4 s stricter");
            }
            _ => panic!("not a wait for the requests per minute"),
        }
        assert!(c.try_admit(need(1, 0), at(60_500), unix).is_ok());
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
