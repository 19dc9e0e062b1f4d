//! Per-key rate limiting on requests (RPM) and tokens (TPM).
//!
//! Two modes exist because real providers differ: OpenAI refills continuously (token bucket)
//! while others count a rolling 60 s window; a gateway's cool-down logic must cope with both.
//! All arithmetic takes `now` from the caller as a `tokio::time::Instant`, so tests can drive
//! it with tokio's paused clock and the limiter can be unit-tested without sockets.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::LimitMode;

const WINDOW: Duration = Duration::from_secs(60);

/// Which budget refused a request; names match OpenAI's error `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
}

/// Why a request was refused, with the numbers OpenAI puts in its message.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub dimension: Dimension,
    pub limit: u64,
    pub used: u64,
    pub requested: u64,
    pub retry_after: Duration,
}

/// One header trio's values.
#[derive(Clone, Debug, PartialEq)]
pub struct DimState {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// What the `x-ratelimit-*` headers report; `None` where the key has no such limit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub requests: Option<DimState>,
    pub tokens: Option<DimState>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(limit: u32, now: Instant) -> Self {
        Bucket { capacity: f64::from(limit), level: f64::from(limit), last: now }
    }
    fn rate_per_sec(&self) -> f64 {
        self.capacity / 60.0
    }
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + elapsed * self.rate_per_sec()).min(self.capacity);
        self.last = now;
    }
    /// Time until `need` units are available (a full minute if it can never happen, which
    /// still gives the client a sane back-off).
    fn wait_for(&self, need: f64) -> Duration {
        if need > self.capacity || self.rate_per_sec() <= 0.0 {
            return WINDOW;
        }
        let missing = (need - self.level).max(0.0);
        Duration::from_secs_f64(missing / self.rate_per_sec())
    }
    fn state(&self) -> DimState {
        DimState {
            limit: self.capacity as u64,
            remaining: self.level.floor().max(0.0) as u64,
            reset: self.wait_for(self.capacity),
        }
    }
}

#[derive(Debug)]
enum Kind {
    Bucket {
        requests: Option<Bucket>,
        tokens: Option<Bucket>,
    },
    /// Admitted requests in the last 60 s: (when, token cost).
    Window {
        entries: VecDeque<(Instant, u64)>,
    },
    /// The same entries, requests counted over [`AZURE_SPAN`] only.
    Azure {
        entries: VecDeque<(Instant, u64)>,
    },
}

/// The span Azure mode counts requests over.
const AZURE_SPAN: Duration = Duration::from_secs(10);

/// Requests per [`AZURE_SPAN`] for an RPM: its share, at least one.
fn azure_share(rpm: u32) -> u64 {
    (u64::from(rpm) * AZURE_SPAN.as_secs() / 60).max(1)
}

/// Admitted within the span before `now`: (how many, when the oldest of them was).
fn in_span(entries: &VecDeque<(Instant, u64)>, now: Instant) -> (u64, Option<Instant>) {
    let recent = entries.iter().rev().take_while(|(t, _)| *t + AZURE_SPAN > now);
    recent.fold((0, None), |(n, _), (t, _)| (n + 1, Some(*t)))
}

/// The limiter of one key.
#[derive(Debug)]
pub struct Limiter {
    rpm: Option<u32>,
    tpm: Option<u32>,
    kind: Kind,
}

impl Limiter {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>, mode: LimitMode, now: Instant) -> Self {
        let kind = match mode {
            LimitMode::TokenBucket => {
                Kind::Bucket { requests: rpm.map(|l| Bucket::new(l, now)), tokens: tpm.map(|l| Bucket::new(l, now)) }
            }
            LimitMode::RollingWindow => Kind::Window { entries: VecDeque::new() },
            LimitMode::Azure => Kind::Azure { entries: VecDeque::new() },
        };
        Limiter { rpm, tpm, kind }
    }

    /// Keys without any limit get no rate-limit headers at all.
    pub fn has_limits(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }

    /// Admits (and charges) a request costing `cost` tokens, or says why not.
    pub fn try_admit(&mut self, now: Instant, cost: u64) -> Result<(), Refusal> {
        let (rpm, tpm) = (self.rpm, self.tpm);
        match &mut self.kind {
            Kind::Bucket { requests, tokens } => {
                for (bucket, dimension, requested) in
                    [(requests.as_mut(), Dimension::Requests, 1), (tokens.as_mut(), Dimension::Tokens, cost)]
                {
                    let Some(b) = bucket else { continue };
                    b.refill(now);
                    if b.level < requested as f64 {
                        return Err(Refusal {
                            dimension,
                            limit: b.capacity as u64,
                            used: (b.capacity - b.level.floor()).max(0.0) as u64,
                            requested,
                            retry_after: b.wait_for(requested as f64),
                        });
                    }
                }
                if let Some(b) = requests {
                    b.level -= 1.0;
                }
                if let Some(b) = tokens {
                    b.level -= cost as f64;
                }
                Ok(())
            }
            Kind::Window { entries } => {
                prune(entries, now);
                let count = entries.len() as u64;
                if let Some(limit) = rpm.map(u64::from) {
                    if count >= limit {
                        let retry_after = match entries.front() {
                            Some((t, _)) if limit > 0 => leaves_at(*t, now),
                            _ => WINDOW,
                        };
                        return Err(Refusal {
                            dimension: Dimension::Requests,
                            limit,
                            used: count,
                            requested: 1,
                            retry_after,
                        });
                    }
                }
                window_tokens(entries, tpm, cost, now)?;
                entries.push_back((now, cost));
                Ok(())
            }
            Kind::Azure { entries } => {
                prune(entries, now);
                if let Some(limit) = rpm.map(azure_share) {
                    let (count, oldest) = in_span(entries, now);
                    if count >= limit {
                        let retry_after =
                            oldest.map_or(AZURE_SPAN, |t| (t + AZURE_SPAN).saturating_duration_since(now));
                        return Err(Refusal {
                            dimension: Dimension::Requests,
                            limit,
                            used: count,
                            requested: 1,
                            retry_after,
                        });
                    }
                }
                window_tokens(entries, tpm, cost, now)?;
                entries.push_back((now, cost));
                Ok(())
            }
        }
    }

    /// Current header values, without charging anything.
    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        let (rpm, tpm) = (self.rpm, self.tpm);
        match &mut self.kind {
            Kind::Bucket { requests, tokens } => {
                let state = |b: &mut Option<Bucket>| {
                    b.as_mut().map(|b| {
                        b.refill(now);
                        b.state()
                    })
                };
                Snapshot { requests: state(requests), tokens: state(tokens) }
            }
            Kind::Window { entries } => {
                prune(entries, now);
                let reset = entries.front().map(|(t, _)| leaves_at(*t, now)).unwrap_or(Duration::ZERO);
                let used_tokens: u64 = entries.iter().map(|e| e.1).sum();
                let count = entries.len() as u64;
                Snapshot {
                    requests: rpm.map(|l| DimState {
                        limit: l.into(),
                        remaining: u64::from(l).saturating_sub(count),
                        reset,
                    }),
                    tokens: tpm.map(|l| DimState {
                        limit: l.into(),
                        remaining: u64::from(l).saturating_sub(used_tokens),
                        reset,
                    }),
                }
            }
            Kind::Azure { entries } => {
                prune(entries, now);
                let (count, oldest) = in_span(entries, now);
                let used_tokens: u64 = entries.iter().map(|e| e.1).sum();
                let token_reset = entries.front().map(|(t, _)| leaves_at(*t, now)).unwrap_or(Duration::ZERO);
                Snapshot {
                    requests: rpm.map(|l| DimState {
                        limit: azure_share(l),
                        remaining: azure_share(l).saturating_sub(count),
                        reset: oldest.map_or(Duration::ZERO, |t| (t + AZURE_SPAN).saturating_duration_since(now)),
                    }),
                    tokens: tpm.map(|l| DimState {
                        limit: l.into(),
                        remaining: u64::from(l).saturating_sub(used_tokens),
                        reset: token_reset,
                    }),
                }
            }
        }
    }
}

fn prune(entries: &mut VecDeque<(Instant, u64)>, now: Instant) {
    while entries.front().is_some_and(|(t, _)| *t + WINDOW <= now) {
        entries.pop_front();
    }
}

fn leaves_at(admitted: Instant, now: Instant) -> Duration {
    (admitted + WINDOW).saturating_duration_since(now)
}

/// Whether `cost` more tokens fit a rolling minute of `entries` under `tpm`.
fn window_tokens(entries: &VecDeque<(Instant, u64)>, tpm: Option<u32>, cost: u64, now: Instant) -> Result<(), Refusal> {
    let Some(limit) = tpm.map(u64::from) else { return Ok(()) };
    let used: u64 = entries.iter().map(|e| e.1).sum();
    if used + cost <= limit {
        return Ok(());
    }
    let retry_after = window_token_wait(entries, now, used + cost - limit, cost > limit);
    Err(Refusal { dimension: Dimension::Tokens, limit, used, requested: cost, retry_after })
}

/// How long until enough old entries leave the window to free `need` tokens.
fn window_token_wait(entries: &VecDeque<(Instant, u64)>, now: Instant, need: u64, impossible: bool) -> Duration {
    if impossible {
        return WINDOW;
    }
    let mut freed = 0;
    for (t, c) in entries {
        freed += c;
        if freed >= need {
            return leaves_at(*t, now);
        }
    }
    WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_continuously() {
        let now = Instant::now();
        let mut l = Limiter::new(Some(3), None, LimitMode::TokenBucket, now);
        for _ in 0..3 {
            assert!(l.try_admit(now, 10).is_ok());
        }
        let r = l.try_admit(now, 10).err();
        let r = r.as_ref().map(|r| (r.dimension, r.limit, r.used, r.retry_after));
        assert_eq!(r, Some((Dimension::Requests, 3, 3, Duration::from_secs(20))));
        // One request comes back every 20 s.
        assert!(l.try_admit(now + Duration::from_secs(20), 10).is_ok());
        let snap = l.snapshot(now + Duration::from_secs(20));
        assert_eq!(snap.requests.map(|s| (s.remaining, s.reset)), Some((0, Duration::from_secs(60))));
        assert_eq!(snap.tokens, None);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_tokens_refuse_with_wait() {
        let now = Instant::now();
        let mut l = Limiter::new(None, Some(600), LimitMode::TokenBucket, now);
        assert!(l.try_admit(now, 500).is_ok());
        let r = l.try_admit(now, 200).err();
        // 100 missing tokens at 10 tokens/s.
        assert_eq!(
            r.map(|r| (r.dimension, r.used, r.requested, r.retry_after)),
            Some((Dimension::Tokens, 500, 200, Duration::from_secs(10)))
        );
        let snap = l.snapshot(now);
        assert_eq!(snap.tokens, Some(DimState { limit: 600, remaining: 100, reset: Duration::from_secs(50) }));
    }

    #[tokio::test(start_paused = true)]
    async fn rolling_window_admits_after_sixty_seconds() {
        let start = Instant::now();
        let mut l = Limiter::new(Some(2), Some(1000), LimitMode::RollingWindow, start);
        assert!(l.try_admit(start, 100).is_ok());
        let t1 = start + Duration::from_secs(10);
        assert!(l.try_admit(t1, 100).is_ok());
        let r = l.try_admit(t1, 100).err();
        assert_eq!(r.map(|r| (r.dimension, r.retry_after)), Some((Dimension::Requests, Duration::from_secs(50))));
        // Unlike a bucket, nothing comes back until the oldest entry leaves the window.
        assert!(l.try_admit(start + Duration::from_secs(59), 100).is_err());
        let snap = l.snapshot(start + Duration::from_secs(59));
        assert_eq!(snap.requests, Some(DimState { limit: 2, remaining: 0, reset: Duration::from_secs(1) }));
        assert!(l.try_admit(start + Duration::from_secs(60), 100).is_ok());
        let snap = l.snapshot(start + Duration::from_secs(200));
        assert_eq!(snap.tokens, Some(DimState { limit: 1000, remaining: 1000, reset: Duration::ZERO }));
    }

    #[tokio::test(start_paused = true)]
    async fn rolling_window_tokens() {
        let start = Instant::now();
        let mut l = Limiter::new(None, Some(1000), LimitMode::RollingWindow, start);
        assert!(l.try_admit(start, 400).is_ok());
        assert!(l.try_admit(start + Duration::from_secs(30), 400).is_ok());
        let r = l.try_admit(start + Duration::from_secs(40), 300).err();
        // 100 tokens too many: the first entry (400) must leave, at 60 s.
        assert_eq!(
            r.map(|r| (r.dimension, r.used, r.retry_after)),
            Some((Dimension::Tokens, 800, Duration::from_secs(20)))
        );
        assert!(l.try_admit(start + Duration::from_secs(60), 300).is_ok());
        assert!(!Limiter::new(None, None, LimitMode::RollingWindow, start).has_limits());
    }

    #[tokio::test(start_paused = true)]
    async fn azure_counts_requests_over_ten_seconds() {
        let start = Instant::now();
        // 30 RPM: 5 per 10 s, not 30 at once.
        let mut l = Limiter::new(Some(30), Some(10_000), LimitMode::Azure, start);
        for i in 0..5 {
            assert!(l.try_admit(start + Duration::from_secs(i), 100).is_ok());
        }
        let r = l.try_admit(start + Duration::from_secs(5), 100).err();
        assert_eq!(
            r.map(|r| (r.dimension, r.limit, r.retry_after)),
            Some((Dimension::Requests, 5, Duration::from_secs(5)))
        );
        let snap = l.snapshot(start + Duration::from_secs(5));
        assert_eq!(snap.requests.map(|s| s.remaining), Some(0));
        assert_eq!(snap.tokens.map(|s| s.remaining), Some(9_500));
        // The first leaves the span at 10 s; its tokens stay for the minute.
        assert!(l.try_admit(start + Duration::from_secs(10), 100).is_ok());
        let r = l.try_admit(start + Duration::from_secs(15), 9_500).err();
        assert_eq!(r.map(|r| r.dimension), Some(Dimension::Tokens));
        // 6 RPM is one per 10 s.
        let mut one = Limiter::new(Some(6), None, LimitMode::Azure, start);
        assert!(one.try_admit(start, 1).is_ok());
        assert!(one.try_admit(start + Duration::from_secs(9), 1).is_err());
        assert!(one.try_admit(start + Duration::from_secs(10), 1).is_ok());
    }
}
