//! keypool's own token bucket for one key, and whether the upstream counts
//! tokens that way.
//!
//! OpenAI's limits refill continuously: its `x-ratelimit-reset-tokens` is
//! "the time until the rate limit (based on tokens) resets to its initial
//! state" (OpenAI's rate-limit guide), which for a bucket of `L` tokens per
//! minute with `R` left is `(L - R) / L` minutes. Other upstreams count a
//! rolling 60 s window, where that reset is when an old charge leaves, and
//! has nothing to do with `R`. keypool's rolling window is safe for both,
//! but against a bucket it wastes the refill: the charges of one minute come
//! back gradually there, all at once after 60 s in the window.
//!
//! So each key keeps both counts. The bucket here drains what keypool itself
//! sent at the key's limit per minute; it is used instead of the window only
//! once the key's answers, one after another, show a reset that matches a
//! bucket's. A refusal about tokens while the bucket said there was room
//! refutes it, and the window is used again until much more evidence comes.
//!
//! Charges enter when an answer *finishes* (the upstream took them earlier,
//! so its refill started earlier), and a request in flight counts in full:
//! never looser than the upstream's own bucket of the same size.

use tokio::time::{Duration, Instant};

/// Consistent answers in a row before the bucket is trusted.
const TRUST: i16 = 4;
/// Where a refutation leaves the evidence: this many consistent answers (in
/// a row) more are needed before the bucket is trusted again.
const REFUTED: i16 = -60;
/// Answers closer together than this are one piece of evidence.
const DISTINCT: Duration = Duration::from_millis(200);

/// One key's bucket model: what keypool sent, draining at the limit.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Tokens not yet refilled as of `at`.
    deficit: u64,
    /// The same under the larger-part charge rule (see `charge`).
    deficit_max: u64,
    at: Option<Instant>,
    /// Evidence for (positive) or against the upstream counting as a bucket.
    votes: i16,
    /// Answers in a row whose reset was not a bucket's (a refusal does not
    /// count here: it says the bucket was wrong, not what the upstream is).
    against: u8,
    last_vote: Option<Instant>,
}

impl Bucket {
    /// What is still missing from a bucket of `limit` tokens per minute at `now`.
    pub fn deficit(&self, now: Instant, limit: u64) -> u64 {
        self.deficit.saturating_sub(self.refill(now, limit))
    }

    /// [`Bucket::deficit`] under the larger-part charge rule.
    pub fn deficit_max(&self, now: Instant, limit: u64) -> u64 {
        self.deficit_max.saturating_sub(self.refill(now, limit))
    }

    /// Tokens refilled since the last charge.
    fn refill(&self, now: Instant, limit: u64) -> u64 {
        let Some(at) = self.at else { return 0 };
        let elapsed = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
        elapsed.saturating_mul(limit) / 60_000
    }

    /// Takes `tokens` out at `now`, of which the larger-part rule would not
    /// charge `overlap`.
    pub fn record(&mut self, now: Instant, tokens: u64, overlap: u64, limit: Option<u64>) {
        let refill = limit.map_or(0, |l| self.refill(now, l));
        self.deficit = self.deficit.saturating_sub(refill).saturating_add(tokens);
        self.deficit_max = self.deficit_max.saturating_sub(refill).saturating_add(tokens.saturating_sub(overlap));
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    /// Whether the upstream has shown that it refills continuously.
    pub fn trusted(&self) -> bool {
        self.votes >= TRUST
    }

    /// Whether the upstream's resets have shown that it does not refill
    /// continuously (as many answers in a row as trust takes; a refusal
    /// alone does not show what the upstream is).
    pub fn shown_window(&self) -> bool {
        self.against >= TRUST.unsigned_abs() as u8
    }

    /// Takes in one answer's token headers: `limit`, `remaining` and `reset`.
    /// `window_resets` are what a rolling window would report now (when
    /// keypool's oldest and newest charges leave its own window). A reset
    /// that is not a bucket's counts against it whenever the bucket is
    /// neither nearly full nor nearly empty (a bucket's reset is exact). One
    /// that is counts for it only where a window could not have given it:
    /// at most 70% used (near a minute, a busy window's reset looks like a
    /// bucket's), and not what keypool's own window would report. One
    /// answer per instant.
    pub fn observe(
        &mut self,
        limit: u64,
        remaining: u64,
        reset: Duration,
        now: Instant,
        window_resets: [Option<Duration>; 2],
    ) {
        if limit == 0 || remaining > limit {
            return;
        }
        let missing = limit - remaining;
        if missing < limit / 20 || remaining < limit / 20 {
            return;
        }
        if self.last_vote.is_some_and(|t| now.saturating_duration_since(t) < DISTINCT) {
            return;
        }
        // A bucket's reset, in ms; `remaining` is rounded down, so up to one
        // token's refill (60,000 / limit ms) more is still consistent.
        let expected = u128::from(missing) * 60_000 / u128::from(limit);
        let slack = 60_000 / u128::from(limit) + 250;
        let said = reset.as_millis();
        let consistent = said.abs_diff(expected) <= slack;
        let window_could = missing > limit / 10 * 7
            || window_resets.iter().flatten().any(|w| w.as_millis().abs_diff(said) <= 2 * slack);
        if consistent && window_could {
            return;
        }
        self.last_vote = Some(now);
        if consistent {
            self.votes = (self.votes + 1).min(TRUST * 2);
            self.against = 0;
        } else {
            self.votes = (self.votes.min(0) - 1).max(REFUTED);
            self.against = self.against.saturating_add(1);
        }
    }

    /// Trusted at once (tests that exercise the bucket's count).
    #[cfg(test)]
    pub fn trust(&mut self) {
        self.votes = TRUST;
    }

    /// The upstream refused tokens that the bucket said were there: it does
    /// not count as a bucket (of this size), whatever its resets looked like.
    pub fn refute(&mut self) {
        if self.trusted() {
            tracing::info!("an upstream refusal refutes the token bucket; counting a rolling window again");
        }
        self.votes = REFUTED;
    }

    /// The earliest instant at which `to_free` tokens have refilled into a
    /// bucket of `limit` tokens per minute; `None` when refill alone cannot
    /// free them (they are not in the bucket: in flight, or usage beyond it).
    pub fn refilled(&self, now: Instant, limit: u64, to_free: u64) -> Option<Instant> {
        if limit == 0 || to_free > self.deficit(now, limit) {
            return None;
        }
        let ms = u128::from(to_free) * 60_000;
        // At most a minute's refill: to_free is within the deficit.
        let ms = ms.div_ceil(u128::from(limit)).min(86_400_000);
        now.checked_add(Duration::from_millis(u64::try_from(ms).unwrap_or(86_400_000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drains_at_the_limit_per_minute() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        b.record(t0, 600, 0, Some(600));
        assert_eq!(b.deficit(t0, 600), 600);
        assert_eq!(b.deficit(t0 + Duration::from_secs(30), 600), 300);
        assert_eq!(b.deficit(t0 + Duration::from_secs(61), 600), 0);
        // Recorded on top of what is left.
        b.record(t0 + Duration::from_secs(30), 100, 0, Some(600));
        assert_eq!(b.deficit(t0 + Duration::from_secs(30), 600), 400);
        assert_eq!(b.refilled(t0 + Duration::from_secs(30), 600, 100), Some(t0 + Duration::from_secs(40)));
        assert_eq!(b.refilled(t0 + Duration::from_secs(30), 600, 401), None);
    }

    #[tokio::test(start_paused = true)]
    async fn trusted_only_after_bucket_resets_in_a_row() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        // 40,000 per minute, 30,000 left: a bucket refills the 10,000 in 15 s.
        for i in 0..TRUST {
            assert!(!b.trusted());
            b.observe(40_000, 30_000, Duration::from_millis(15_000), t0 + Duration::from_secs(i as u64), [None, None]);
        }
        assert!(b.trusted());
        // A window's reset (when an old charge leaves) breaks the run.
        b.observe(40_000, 30_000, Duration::from_secs(52), t0 + Duration::from_secs(10), [None, None]);
        assert!(!b.trusted());
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_cannot_tell_are_not_evidence() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        for i in 0..20u64 {
            let at = t0 + Duration::from_secs(i);
            // Full, empty, and repeated at one instant.
            b.observe(40_000, 40_000, Duration::ZERO, at, [None, None]);
            b.observe(40_000, 100, Duration::from_secs(60), at, [None, None]);
        }
        for _ in 0..10 {
            b.observe(40_000, 30_000, Duration::from_millis(15_000), t0 + Duration::from_secs(30), [None, None]);
        }
        assert!(!b.trusted());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_window_is_never_taken_for_a_bucket() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        for i in 0..20u64 {
            let at = t0 + Duration::from_secs(i);
            // 85% used with a reset near a minute: a busy window looks so,
            // and so would a bucket; such answers are no evidence.
            b.observe(40_000, 6_000, Duration::from_millis(51_000), at, [None, None]);
            // A reset that keypool's own window would also give is none either.
            let own = Some(Duration::from_millis(15_100));
            b.observe(40_000, 30_000, Duration::from_millis(15_000), at + Duration::from_millis(300), [own, None]);
        }
        assert!(!b.trusted());
        assert!(!b.shown_window(), "nothing was learned either way");
        for i in 0..4u64 {
            b.observe(40_000, 30_000, Duration::from_secs(40), t0 + Duration::from_secs(30 + i), [None, None]);
        }
        assert!(b.shown_window());
        // A refusal refutes a bucket without showing a window.
        let mut refused = Bucket::default();
        refused.refute();
        assert!(!refused.shown_window());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_refutes_it_for_long() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        let mut at = t0;
        let mut vote = |b: &mut Bucket| {
            at += Duration::from_secs(1);
            b.observe(40_000, 30_000, Duration::from_millis(15_000), at, [None, None]);
        };
        for _ in 0..TRUST {
            vote(&mut b);
        }
        assert!(b.trusted());
        b.refute();
        assert!(!b.trusted());
        for _ in 0..(TRUST * 8) {
            vote(&mut b);
        }
        assert!(!b.trusted(), "a handful of answers do not undo a refusal");
    }
}
