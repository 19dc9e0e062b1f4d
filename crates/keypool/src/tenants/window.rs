//! A tenant's last minute of admissions, counted per whole second.
//!
//! The rule: an admission counts for a token's RPM and TPM from the moment
//! it is admitted until 60 s after the *latest* admission of the same
//! second (seconds counted from the first time the window was used). An admission alone
//! in its second leaves exactly 60 s later, as with a list of every
//! admission; one followed by others in its second stays up to 1 s longer.
//! The window is never looser than a rolling 60 s (the rule keypool applies
//! to keys), and at most 1 s stricter.
//!
//! Why not a list of every admission (what tenants used before): with a
//! thousand tenants each admission wrote, and each end searched, a line of
//! that token's list not touched for a while, a cache miss of its own on
//! every request (about 0.6 µs of a request in `perf`; docs/benchmarks.md,
//! issue 17). Here the second under way lives in the tenant's counters,
//! which the request reads anyway; the 60 seconds before it are written
//! once a second a token is used, and read when a limit is reached.

use std::time::Duration;

use tokio::time::Instant;

/// The span the per-minute limits count over.
pub(super) const MINUTE: Duration = Duration::from_secs(60);

/// Seconds kept before the one under way (a second's admissions may stay
/// until 61 s after its start), rounded up to a power of two.
const KEPT: usize = 64;

/// One second's admissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Second {
    /// Admissions counted (an admission never sent is taken back).
    requests: u32,
    /// Nanoseconds into the second of its latest admission (to the
    /// nanosecond, so its leaving is never early).
    latest_ns: u32,
    /// Tokens counted: estimates, replaced by what was used as requests end.
    tokens: u64,
}

/// A token's admissions of the last minute (see the module's comment).
/// 72 bytes inline, plus 1 KiB for the seconds before the current one once
/// the token has been used in two different seconds.
#[derive(Debug, Default, Clone)]
pub(super) struct Window {
    /// Second 0 begins here (the window's first use).
    origin: Option<Instant>,
    /// The second under way (since `origin`), and its admissions.
    now_sec: u64,
    now: Second,
    /// The oldest second still counted in `requests` and `tokens`; seconds
    /// from it up to `now_sec` (excluded) are in `before`.
    oldest: u64,
    /// Counted admissions and their tokens, over `oldest..=now_sec`: an
    /// upper bound of what the last minute holds (seconds that left it are
    /// dropped when a limit needs it, and otherwise when the second turns).
    requests: u64,
    tokens: u64,
    /// The seconds before `now_sec`, at `second % KEPT`; zero outside
    /// `oldest..now_sec`.
    before: Option<Box<[Second; KEPT]>>,
}

/// Where an admission was counted, to correct it when its request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark(u64);

impl Window {
    /// Admissions and tokens counted; may still hold seconds that left the
    /// minute (call [`Window::drop_left`] first for the exact figures).
    pub(super) fn counted(&self) -> (u64, u64) {
        (self.requests, self.tokens)
    }

    /// The second `at` falls in, and the nanoseconds into it.
    fn second_of(&mut self, at: Instant) -> (u64, u32) {
        let origin = *self.origin.get_or_insert(at);
        let since = at.saturating_duration_since(origin);
        (since.as_secs(), since.subsec_nanos())
    }

    /// Moves to `at`'s second when it is later than the one under way: the
    /// current second is kept with the ones before, and the seconds that
    /// left the minute are dropped. Returns `at`'s second and the
    /// nanoseconds into it.
    fn turn(&mut self, at: Instant) -> (u64, u32) {
        let (sec, ns) = self.second_of(at);
        if sec <= self.now_sec {
            return (sec, ns);
        }
        let was = self.now_sec;
        if self.now != Second::default() {
            let before = self.before.get_or_insert_with(|| Box::new([Second::default(); KEPT]));
            before[slot(was)] = self.now;
        } else if self.oldest == was {
            // Nothing in the second that ends: nothing to keep of it.
            self.oldest = sec;
        }
        self.now = Second::default();
        self.now_sec = sec;
        self.drop_left_until(at, was);
        (sec, ns)
    }

    /// Drops the seconds whose last admission left the minute by `at`.
    pub(super) fn drop_left(&mut self, at: Instant) {
        self.turn(at);
        let newest = self.now_sec.saturating_sub(1);
        self.drop_left_until(at, newest);
    }

    /// [`Window::drop_left`] over kept seconds up to `newest` (seconds after
    /// it, up to the current one, held nothing).
    fn drop_left_until(&mut self, at: Instant, newest: u64) {
        let Some(origin) = self.origin else { return };
        while self.oldest < self.now_sec {
            if self.oldest > newest {
                self.oldest = self.now_sec;
                break;
            }
            let i = slot(self.oldest);
            let s = self.before.as_ref().map_or_else(Second::default, |b| b[i]);
            if s.requests > 0 && leaves(origin, self.oldest, s) > at {
                break;
            }
            self.requests = self.requests.saturating_sub(u64::from(s.requests));
            self.tokens = self.tokens.saturating_sub(s.tokens);
            if let Some(b) = self.before.as_mut() {
                b[i] = Second::default();
            }
            self.oldest += 1;
        }
    }

    /// Counts an admission of `tokens` at `at`.
    pub(super) fn add(&mut self, at: Instant, tokens: u64) -> Mark {
        let (sec, ns) = self.turn(at);
        // An `at` earlier than the second under way (clocks read out of
        // order by a few µs) counts in it, from its start: it leaves later
        // than its own minute, never earlier.
        let ns = if sec < self.now_sec { 0 } else { ns };
        self.now.requests = self.now.requests.saturating_add(1);
        self.now.latest_ns = self.now.latest_ns.max(ns);
        self.now.tokens = self.now.tokens.saturating_add(tokens);
        self.requests = self.requests.saturating_add(1);
        self.tokens = self.tokens.saturating_add(tokens);
        Mark(self.now_sec)
    }

    /// The admission at `mark` that reserved `estimate` tokens ended: it
    /// counts `used` instead (`None`: the estimate stays), or nothing at all
    /// when it was never sent. A second already dropped is left alone.
    pub(super) fn correct(&mut self, mark: Mark, estimate: u64, used: Option<u64>, sent: bool) {
        let s = if mark.0 == self.now_sec {
            &mut self.now
        } else if mark.0 >= self.oldest && mark.0 < self.now_sec {
            match self.before.as_mut() {
                Some(b) => &mut b[slot(mark.0)],
                None => return,
            }
        } else {
            return;
        };
        if !sent {
            s.requests = s.requests.saturating_sub(1);
            s.tokens = s.tokens.saturating_sub(estimate);
            self.requests = self.requests.saturating_sub(1);
            self.tokens = self.tokens.saturating_sub(estimate);
        } else if let Some(used) = used {
            s.tokens = s.tokens.saturating_sub(estimate).saturating_add(used);
            self.tokens = self.tokens.saturating_sub(estimate).saturating_add(used);
        }
    }

    /// When, at the earliest after `at`, the window holds fewer than
    /// `requests` admissions and no more than `tokens` tokens: the moment
    /// enough of the oldest seconds leave it (`at` if it already does;
    /// `at` plus a minute if even an empty window would not do). Call
    /// [`Window::drop_left`] first.
    pub(super) fn room_at(&self, at: Instant, requests: u64, tokens: u64) -> Instant {
        let fits = |r: u64, t: u64| r < requests && t <= tokens;
        let (mut r, mut t) = (self.requests, self.tokens);
        if fits(r, t) {
            return at;
        }
        let Some(origin) = self.origin else { return at + MINUTE };
        for sec in self.oldest..=self.now_sec {
            let s = if sec == self.now_sec {
                self.now
            } else {
                self.before.as_ref().map_or_else(Second::default, |b| b[slot(sec)])
            };
            if s.requests == 0 && s.tokens == 0 {
                continue;
            }
            r = r.saturating_sub(u64::from(s.requests));
            t = t.saturating_sub(s.tokens);
            if fits(r, t) {
                return leaves(origin, sec, s).max(at);
            }
        }
        at + MINUTE
    }
}

fn slot(sec: u64) -> usize {
    // KEPT is a power of two: the remainder is the low bits.
    (sec % KEPT as u64) as usize
}

/// When second `sec`'s admissions leave the minute: 60 s after its latest.
fn leaves(origin: Instant, sec: u64, s: Second) -> Instant {
    origin + Duration::from_secs(sec) + Duration::from_nanos(u64::from(s.latest_ns)) + MINUTE
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_admission_alone_in_its_second_leaves_exactly_a_minute_later() {
        let t0 = Instant::now();
        let mut w = Window::default();
        w.add(t0, 10);
        w.add(t0 + Duration::from_millis(1_500), 20);
        assert_eq!(w.room_at(t0, 2, 1_000), t0 + MINUTE, "room for a third when the first leaves");
        assert_eq!(w.room_at(t0, 1, 1_000), t0 + Duration::from_millis(61_500), "for a second, when both have");
        assert_eq!(w.room_at(t0, 5, 15), t0 + Duration::from_millis(61_500), "15 tokens fit once both left");
        assert_eq!(w.room_at(t0, 5, 20), t0 + MINUTE);
        w.drop_left(t0 + Duration::from_millis(59_999));
        assert_eq!(w.counted(), (2, 30));
        w.drop_left(t0 + MINUTE);
        assert_eq!(w.counted(), (1, 20));
        w.drop_left(t0 + Duration::from_millis(61_500));
        assert_eq!(w.counted(), (0, 0));
    }

    #[test]
    fn a_second_stays_until_a_minute_after_its_last_admission() {
        let t0 = Instant::now();
        let mut w = Window::default();
        w.add(t0, 1);
        w.add(t0 + Duration::from_millis(900), 1);
        w.drop_left(t0 + Duration::from_millis(60_899));
        assert_eq!(w.counted(), (2, 2), "the first is held 0.9 s longer: stricter, never looser");
        w.drop_left(t0 + Duration::from_millis(60_900));
        assert_eq!(w.counted(), (0, 0));
    }

    #[test]
    fn an_end_corrects_its_own_second_until_it_leaves() {
        let t0 = Instant::now();
        let mut w = Window::default();
        let a = w.add(t0, 100);
        let b = w.add(t0 + Duration::from_millis(2_000), 100);
        let c = w.add(t0 + Duration::from_millis(3_000), 100);
        w.correct(a, 100, Some(10), true);
        w.correct(b, 100, None, false);
        assert_eq!(w.counted(), (2, 110), "used tokens replace the estimate; a request never sent counts for none");
        w.correct(c, 100, None, true);
        assert_eq!(w.counted(), (2, 110), "no figure: the estimate stays");
        w.drop_left(t0 + Duration::from_secs(62));
        assert_eq!(w.counted(), (1, 100));
        w.correct(a, 10, Some(5_000), true);
        assert_eq!(w.counted(), (1, 100), "a second that left is not corrected");
    }

    /// To the nanosecond: an admission a fraction of a millisecond into
    /// its second is not dropped that fraction early.
    #[test]
    fn a_second_leaves_to_the_nanosecond() {
        let t0 = Instant::now();
        let mut w = Window::default();
        w.add(t0, 1);
        w.add(t0 + Duration::from_micros(500_700), 1);
        let leaves = t0 + Duration::from_micros(60_500_700);
        assert_eq!(w.room_at(t0, 1, 100), leaves);
        w.drop_left(leaves - Duration::from_nanos(1));
        assert_eq!(w.counted(), (2, 2));
        w.drop_left(leaves);
        assert_eq!(w.counted(), (0, 0));
    }

    #[test]
    fn a_long_silence_leaves_nothing_counted() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for i in 0..70 {
            w.add(t0 + Duration::from_secs(i), 1);
        }
        assert_eq!(w.counted(), (60, 60), "seconds 0 to 9 left as the seconds turned");
        let back = t0 + Duration::from_secs(3_600 * 24 * 400);
        w.add(back, 7);
        assert_eq!(w.counted(), (1, 7));
        let mark = w.add(back + Duration::from_secs(130), 5);
        w.correct(mark, 5, Some(2), true);
        assert_eq!(w.counted(), (1, 2));
    }

    proptest! {
        /// Whatever the admissions' times (to the microsecond, now and then
        /// a little before the last) and ends, the window counts at least
        /// what a rolling 60 s holds and at most what a rolling 61 s holds,
        /// whether seconds that left are dropped at once or only as the
        /// second turns; and `room_at` names the first moment the window
        /// has room.
        #[test]
        fn never_looser_than_a_rolling_minute_and_at_most_a_second_stricter(
            steps in proptest::collection::vec(
                (
                    0u64..4_000,
                    0u64..100,
                    1u64..50,
                    proptest::option::of(0usize..8),
                    any::<bool>(),
                    any::<bool>(),
                    any::<proptest::sample::Index>(),
                ),
                1..120,
            ),
        ) {
            let t0 = Instant::now();
            let mut w = Window::default();
            let mut at_us = 0;
            // Each admission: when (µs), tokens counted, whether it counts, its mark, ended.
            let mut admitted: Vec<(u64, u64, bool, Mark, bool)> = Vec::new();
            for (gap, back, tokens, end, sent, drop_now, probe) in steps {
                at_us += gap * 30_011;
                // A clock read a little earlier than the last one (up to 99 µs).
                let when_us = at_us.saturating_sub(if gap % 7 == 0 { back } else { 0 });
                let at = t0 + Duration::from_micros(at_us);
                let mark = w.add(t0 + Duration::from_micros(when_us), tokens);
                admitted.push((when_us, tokens, true, mark, false));
                // The admission `end` places from the last ends, if not yet
                // ended: never sent, or having used half its estimate.
                if let Some(i) = end.and_then(|k| admitted.len().checked_sub(k + 1)) {
                    let a = &mut admitted[i];
                    if !a.4 {
                        w.correct(a.3, a.1, Some(a.1 / 2), sent);
                        *a = (a.0, if sent { a.1 / 2 } else { 0 }, sent, a.3, true);
                    }
                }
                let held = |at_us: u64, span: u64| {
                    admitted
                        .iter()
                        .filter(|a| a.2 && a.0 <= at_us && at_us < a.0 + span)
                        .fold((0, 0), |(r, k), a| (r + 1, k + a.1))
                };
                let (r, k) = w.counted();
                let low = held(at_us, 60_000_000);
                prop_assert!(low.0 <= r && low.1 <= k, "({r}, {k}) under {low:?} at {at_us} µs, lazily");
                // 1 µs before one admission leaves a rolling minute, it is
                // still counted.
                let last_us = admitted[probe.index(admitted.len())].0 + 60_000_000 - 1;
                if last_us >= at_us {
                    let mut then = w.clone();
                    then.drop_left(t0 + Duration::from_micros(last_us));
                    let (low, (r, k)) = (held(last_us, 60_000_000), then.counted());
                    prop_assert!(low.0 <= r && low.1 <= k, "({r}, {k}) under {low:?} at {last_us} µs");
                }
                if !drop_now {
                    continue;
                }
                w.drop_left(at);
                // A time read out of order counts from its second's start:
                // held up to that disorder (here < 100 µs) past 61 s.
                let (low, high) = (held(at_us, 60_000_000), held(at_us, 61_000_100));
                let (r, k) = w.counted();
                prop_assert!(low.0 <= r && r <= high.0, "requests {r} outside {low:?}..{high:?} at {at_us} µs");
                prop_assert!(low.1 <= k && k <= high.1, "tokens {k} outside {low:?}..{high:?} at {at_us} µs");
                // Room for one more request under a limit of what is
                // counted now, and for half the tokens.
                let (limit_r, limit_k) = (r.max(1), k / 2);
                let room = w.room_at(at, limit_r, limit_k);
                prop_assert!(room >= at);
                let fits_at = |when: Instant| {
                    let mut later = w.clone();
                    later.drop_left(when);
                    let (r, k) = later.counted();
                    r < limit_r && k <= limit_k
                };
                prop_assert!(fits_at(room), "no room at {:?} after {at_us} µs", room - t0);
                if room > at {
                    prop_assert!(!fits_at(room - Duration::from_nanos(1)), "room 1 ns before {:?}", room - t0);
                }
            }
        }
    }
}
