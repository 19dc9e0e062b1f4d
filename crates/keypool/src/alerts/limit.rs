//! How often alerts go out: the same event about the same key at most once
//! per `min_interval`, and at most `max_per_minute` in all, the rest counted
//! and the count told in the next one sent.

use std::collections::HashMap;

use tokio::time::{Duration, Instant};

use super::Alert;
use crate::config::AlertEvent;

/// The rate limiter (one per alerts task; on the tokio clock).
#[derive(Debug)]
pub struct Limiter {
    min_interval: Duration,
    per_minute: u32,
    /// When each (event, key or token, threshold in thousandths) was last
    /// sent (the event tells a key's id from a token's).
    last: HashMap<(AlertEvent, Option<i64>, u32), Instant>,
    minute_began: Option<Instant>,
    this_minute: u32,
    suppressed: u64,
}

impl Limiter {
    pub fn new(min_interval: Duration, per_minute: u32) -> Limiter {
        Limiter { min_interval, per_minute, last: HashMap::new(), minute_began: None, this_minute: 0, suppressed: 0 }
    }

    /// Whether `alert` goes out at `now`; when it does, it carries the count
    /// of alerts the per-minute cap held back since the last one sent. A
    /// repeat within `min_interval` is dropped silently (it was told). The
    /// budget thresholds of one key (or token) are separate events. A
    /// token's budget alert is never a repeat: its watch tells each share
    /// once per period, so one told again is about a new period or budget
    /// (a daily share passed at 23:58 and again at 00:02 is told twice).
    pub fn admit(&mut self, alert: &mut Alert, now: Instant) -> bool {
        let threshold = alert.threshold.map_or(0, |t| (t * 1000.0).round() as u32);
        let key = (alert.event, alert.key_id.or(alert.token_id), threshold);
        let once_per_period = alert.event == crate::config::AlertEvent::TokenBudget;
        if !once_per_period
            && self.last.get(&key).is_some_and(|at| now.saturating_duration_since(*at) < self.min_interval)
        {
            return false;
        }
        if self.minute_began.is_none_or(|b| now.saturating_duration_since(b) >= Duration::from_secs(60)) {
            self.minute_began = Some(now);
            self.this_minute = 0;
        }
        if self.this_minute >= self.per_minute {
            self.suppressed += 1;
            return false;
        }
        self.this_minute += 1;
        alert.suppressed = std::mem::take(&mut self.suppressed);
        self.last.insert(key, now);
        self.last.retain(|_, at| now.saturating_duration_since(*at) < self.min_interval);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(key: i64) -> Alert {
        Alert {
            event: AlertEvent::KeyInvalid,
            key_id: Some(key),
            label: None,
            state: Some("invalid"),
            reason: None,
            threshold: None,
            token_id: None,
            token_name: None,
            period: None,
            spent_micros: None,
            budget_micros: None,
            time_ms: 0,
            suppressed: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_wait_min_interval_and_the_cap_counts_what_it_holds() {
        let mut l = Limiter::new(Duration::from_secs(300), 2);
        let t0 = Instant::now();
        assert!(l.admit(&mut alert(1), t0));
        assert!(!l.admit(&mut alert(1), t0 + Duration::from_secs(299)), "same key within min_interval");
        assert!(l.admit(&mut alert(2), t0));
        assert!(!l.admit(&mut alert(3), t0), "third this minute");
        assert!(!l.admit(&mut alert(4), t0));
        let mut next = alert(5);
        assert!(l.admit(&mut next, t0 + Duration::from_secs(60)));
        assert_eq!(next.suppressed, 2);
        assert!(l.admit(&mut alert(1), t0 + Duration::from_secs(300)), "after min_interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_budget_share_told_again_in_a_new_period_is_not_a_repeat() {
        let mut l = Limiter::new(Duration::from_secs(300), 10);
        let share = || Alert {
            event: AlertEvent::TokenBudget,
            key_id: None,
            token_id: Some(7),
            threshold: Some(0.5),
            ..alert(0)
        };
        let t0 = Instant::now();
        assert!(l.admit(&mut share(), t0), "23:58, yesterday's period");
        assert!(l.admit(&mut share(), t0 + Duration::from_secs(240)), "00:02, today's");
    }
}
