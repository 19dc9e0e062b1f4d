//! Requests counted over a period shorter than a minute.
//!
//! Azure OpenAI does not count a deployment's requests per minute: it
//! "evaluates the rate of incoming requests over a small period of time,
//! typically 1 or 10 seconds" and refuses when that rate would pass the
//! RPM (Azure OpenAI's quota guide, "Understanding rate limits"). A
//! minute's worth of requests sent at once is refused there although a
//! per-minute count has room. For such an upstream a key's requests are
//! also counted over the shorter `span`, where the limit is the RPM's share
//! of it (at least one), and its `x-ratelimit-*-requests` headers are read
//! as being about that span.
//!
//! The upstream counts a request when it arrives, which keypool does not
//! see: after it was sent, before its answer's headers came back. So an
//! answered request counts until a span has passed since its headers came
//! back (or since it ended, for one that ended without an answer), and one
//! still waiting for its headers until a span has passed since it was sent
//! plus [`ARRIVAL`], the longest it is assumed to take to arrive: a slow
//! answer does not hold its place in a 1 s span for as long as the upstream
//! thinks, and a long stream counts only as long as its head does.

use std::collections::VecDeque;

use tokio::time::{Duration, Instant};

/// How long after being sent a request is assumed to have reached the
/// upstream (connection and TLS set-up included).
pub const ARRIVAL: Duration = Duration::from_secs(5);

/// How long a limit lowered by a refusal holds (as for the minute's).
const LOWERED_FOR: Duration = super::limits::LOWERED_FOR;

/// One key's requests as the short spans count them.
#[derive(Debug, Clone)]
pub struct Spans {
    /// Longest first: the one the upstream's headers speak of.
    periods: Vec<Period>,
    /// When answers' headers came back (or requests ended without any), oldest first.
    heads: VecDeque<Instant>,
    /// When requests not answered yet were sent (reserved), oldest first.
    /// Which one an answer belongs to is not known: the oldest is taken,
    /// so those left count from a later instant, never an earlier one.
    awaiting: VecDeque<Instant>,
}

#[derive(Debug, Clone)]
struct Period {
    span: Duration,
    /// Lower than the RPM's share: the upstream refused a request that this
    /// count had room for. Holds until `lowered_at` + [`LOWERED_FOR`].
    lowered: Option<u64>,
    lowered_at: Option<Instant>,
}

impl Period {
    /// Requests per span for `rpm` per minute: the RPM's share of the
    /// span, rounded down but at least one; lowered after refusals.
    fn limit(&self, rpm: u64, now: Instant) -> u64 {
        let share = (u128::from(rpm) * self.span.as_millis() / 60_000).max(1);
        let share = u64::try_from(share).unwrap_or(u64::MAX);
        match (self.lowered, self.lowered_at) {
            (Some(l), Some(at)) if now.saturating_duration_since(at) < LOWERED_FOR => l.min(share),
            _ => share,
        }
    }
}

impl Spans {
    /// Counts over `spans`, the one the headers speak of first.
    pub fn new(spans: &[Duration]) -> Spans {
        let periods = spans.iter().map(|&span| Period { span, lowered: None, lowered_at: None }).collect();
        Spans { periods, heads: VecDeque::new(), awaiting: VecDeque::new() }
    }

    /// Whether these are the spans `spans` describes.
    pub fn are(&self, spans: &[Duration]) -> bool {
        self.periods.iter().map(|p| p.span).eq(spans.iter().copied())
    }

    /// A request was reserved at `now`: it counts from then.
    pub fn reserved(&mut self, now: Instant) {
        self.awaiting.push_back(now);
    }

    /// The answer's headers came back (`sent`), or a request ended without
    /// them: it counts for a span from `now`; one never sent not at all.
    pub fn answered(&mut self, now: Instant, sent: bool) {
        self.awaiting.pop_front();
        if !sent {
            return;
        }
        let longest = self.periods.iter().map(|p| p.span).max().unwrap_or_default();
        while self.heads.front().is_some_and(|t| *t + longest <= now) {
            self.heads.pop_front();
        }
        let at = self.heads.back().map_or(now, |last| now.max(*last));
        self.heads.push_back(at);
    }

    /// Requests counted in the span `i` before `now`.
    fn used(&self, i: usize, now: Instant) -> u64 {
        let span = self.periods[i].span;
        let heads = self.heads.iter().rev().take_while(|t| **t + span > now).count();
        let awaiting = self.awaiting.iter().filter(|t| **t + span + ARRIVAL > now).count();
        (heads + awaiting) as u64
    }

    /// When each request counted in span `i` stops counting, soonest first.
    fn expiries(&self, i: usize, now: Instant) -> Vec<Instant> {
        let span = self.periods[i].span;
        let heads = self.heads.iter().rev().map(|t| *t + span).take_while(|t| *t > now);
        let awaiting = self.awaiting.iter().map(|t| *t + span + ARRIVAL).filter(|t| *t > now);
        let mut all: Vec<Instant> = heads.chain(awaiting).collect();
        all.sort_unstable();
        all
    }

    /// Whether one more request fits every span, for a key of `rpm`.
    pub fn has_room(&self, rpm: u64, now: Instant) -> bool {
        (0..self.periods.len()).all(|i| self.used(i, now) < self.periods[i].limit(rpm, now))
    }

    /// The earliest instant one more request fits every span (time alone
    /// frees every count here, so there always is one).
    pub fn room_at(&self, rpm: u64, now: Instant) -> Instant {
        let mut at = now;
        for (i, period) in self.periods.iter().enumerate() {
            let limit = period.limit(rpm, now);
            let expiries = self.expiries(i, now);
            let Some(to_free) = (expiries.len() as u64 + 1).checked_sub(limit).filter(|n| *n > 0) else { continue };
            // The to_free-th count to end makes room.
            if let Some(end) = usize::try_from(to_free - 1).ok().and_then(|k| expiries.get(k)) {
                at = at.max(*end);
            }
        }
        at
    }

    /// The first answer of a key with nothing else counted: only this
    /// request is in the span the headers speak of.
    pub fn alone(&self, now: Instant) -> bool {
        !self.periods.is_empty() && self.awaiting.len() <= 1 && self.used(0, now) <= 1
    }

    /// The RPM that `per_span` requests in the headers' span stand for.
    pub fn rpm_of(&self, per_span: u64) -> Option<u64> {
        let ms = self.periods.first()?.span.as_millis().max(1);
        Some(u64::try_from(u128::from(per_span) * 60_000 / ms).unwrap_or(u64::MAX))
    }

    /// The upstream refused a request (already counted) although every
    /// span had room for it: the headers' span allows fewer than assumed.
    /// Its limit comes down to what was counted before the refused one, by
    /// at least a tenth, but never below half the RPM's share (nor one).
    pub fn refused(&mut self, rpm: u64, now: Instant) {
        let had_room =
            (0..self.periods.len()).all(|i| self.used(i, now).saturating_sub(1) < self.periods[i].limit(rpm, now));
        if !had_room {
            return;
        }
        let seen = self.used(0, now).saturating_sub(1);
        let Some(first) = self.periods.first_mut() else { return };
        let share = Period { lowered: None, ..first.clone() }.limit(rpm, now);
        let current = first.limit(rpm, now);
        let lowered = seen.min(current - current / 10).max(share / 2).max(1);
        tracing::info!(
            from = current,
            to = lowered,
            span_ms = first.span.as_millis() as u64,
            "an upstream refusal lowers the requests allowed per span"
        );
        first.lowered = Some(lowered);
        first.lowered_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURE: &[Duration] = &[Duration::from_secs(10), Duration::from_secs(1)];

    /// A request sent and answered at `at`.
    fn answered(s: &mut Spans, at: Instant) {
        s.reserved(at);
        s.answered(at, true);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_each_span_and_says_when_one_leaves() {
        let t0 = Instant::now();
        let mut s = Spans::new(AZURE);
        // 30 RPM: 5 per 10 s and 1 per second; 6 RPM is still 1 per second.
        assert_eq!((s.periods[0].limit(30, t0), s.periods[1].limit(30, t0)), (5, 1));
        assert_eq!(s.periods[0].limit(6, t0), 1);
        assert_eq!(s.rpm_of(5), Some(30));
        for sec in [0u64, 2, 4] {
            answered(&mut s, t0 + Duration::from_secs(sec));
        }
        let now = t0 + Duration::from_millis(5_500);
        s.reserved(now);
        // 3 heads and 1 awaiting: 4 in the 10 s span, 1 in the last second.
        assert!(!s.has_room(30, now), "the one awaiting fills the second");
        assert_eq!(
            s.room_at(30, now),
            now + Duration::from_secs(1) + ARRIVAL,
            "unanswered, it counts until it surely arrived"
        );
        s.answered(now, true);
        // 4 in 10 s (limit 5) but 1 in the last second: at 6.5 s.
        assert_eq!(s.room_at(30, now), now + Duration::from_secs(1));
        // At 24 RPM (4 per 10 s): the oldest must leave too, at 10 s.
        assert_eq!(s.room_at(24, now), t0 + Duration::from_secs(10));
        // A request never sent does not count.
        s.reserved(now);
        s.answered(now, false);
        assert_eq!(s.used(0, now), 4);
        assert_eq!(s.used(0, t0 + Duration::from_secs(13)), 2, "those of 4 s and 5.5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_stream_counts_from_its_head_not_its_end() {
        let t0 = Instant::now();
        let mut s = Spans::new(AZURE);
        s.reserved(t0);
        // A slow answer: unanswered after 7 s, it no longer fills the 1 s span.
        assert_eq!(s.used(1, t0 + Duration::from_secs(7)), 0);
        assert_eq!(s.used(0, t0 + Duration::from_secs(7)), 1);
        s.answered(t0, true);
        // Streaming on for a minute: its count ends 10 s after its head.
        assert_eq!(s.used(0, t0 + Duration::from_secs(10)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_lowers_the_share_by_steps_and_for_a_while() {
        let t0 = Instant::now();
        let mut s = Spans::new(AZURE);
        // 600 RPM: 100 per 10 s. Refused at the 61st: down to 60.
        for i in 0..61u64 {
            answered(&mut s, t0 + Duration::from_millis(100 * i));
        }
        let now = t0 + Duration::from_millis(6_000);
        s.refused(600, now);
        assert_eq!(s.periods[0].limit(600, now), 60);
        // Refused again with nothing else counted: never below half the share.
        let later = now + Duration::from_secs(30);
        answered(&mut s, later);
        s.refused(600, later);
        assert_eq!(s.periods[0].limit(600, later), 50);
        // One refusal takes at most half off.
        let mut busy = Spans::new(AZURE);
        for i in 0..99u64 {
            answered(&mut busy, t0 + Duration::from_millis(100 * i));
        }
        let at = t0 + Duration::from_millis(9_850);
        busy.refused(6_000, at);
        assert_eq!(busy.periods[0].limit(6_000, at), 500, "1,000 per 10 s, 98 counted: half at most");
        // Back after LOWERED_FOR.
        assert_eq!(s.periods[0].limit(600, later + LOWERED_FOR), 100);
        // A refusal where the count had no room lowers nothing.
        let mut full = Spans::new(AZURE);
        answered(&mut full, t0);
        answered(&mut full, t0);
        full.refused(6, t0);
        assert_eq!(full.periods[0].lowered, None);
    }
}
