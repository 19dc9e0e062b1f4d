//! Wrong admin tokens counted per client address, so a token cannot be
//! guessed by trying many: past `admin.sign_in_attempts_per_minute` wrong
//! tokens in a minute, the address is refused (429) until its minute ends.
//!
//! Written here rather than with a rate-limiting crate (governor): only
//! failures count, while every request is checked against the count, and
//! governor's keyed limiters can only check by spending a cell. The state is
//! a few lines: one fixed window per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// Most addresses remembered at once; past it, those whose window is over
/// are forgotten (swept at most once a second), then any one. An attacker spreading guesses over more
/// addresses than this is still limited per address while remembered.
const MAX_ADDRESSES: usize = 10_000;

/// Failed sign-ins per client address.
#[derive(Debug)]
pub struct SignInLimit {
    /// Wrong tokens allowed per address per window; 0: no limit.
    per_window: u32,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    by_addr: HashMap<IpAddr, Failures>,
    /// When the table was last swept of ended windows (at most once a
    /// second, so a flood from many addresses costs no full scan each).
    swept: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

impl SignInLimit {
    /// `per_minute` wrong tokens allowed per address; 0 turns the limit off.
    pub fn new(per_minute: u32) -> SignInLimit {
        SignInLimit { per_window: per_minute, seen: Mutex::new(Seen::default()) }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `addr` must wait before trying again, when it has used up
    /// its wrong tokens for this window; `None` when it may try.
    pub fn refused(&self, addr: IpAddr) -> Option<Duration> {
        if self.per_window == 0 {
            return None;
        }
        let now = Instant::now();
        let seen = self.seen();
        let f = seen.by_addr.get(&subject(addr))?;
        let ends = f.since + WINDOW;
        (f.count >= self.per_window && ends > now).then(|| ends - now)
    }

    /// Counts a wrong token from `addr`; true when this one used up the
    /// address's allowance (it is refused from now until its window ends).
    pub fn failed(&self, addr: IpAddr) -> bool {
        if self.per_window == 0 {
            return false;
        }
        let now = Instant::now();
        let key = subject(addr);
        let mut guard = self.seen();
        let seen = &mut *guard;
        if !seen.by_addr.contains_key(&key) && seen.by_addr.len() >= MAX_ADDRESSES {
            if seen.swept.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                seen.swept = Some(now);
                seen.by_addr.retain(|_, f| f.since + WINDOW > now);
            }
            // Still full: one goes, whichever the table yields first (a
            // search for the oldest would scan all of them every time).
            if seen.by_addr.len() >= MAX_ADDRESSES {
                if let Some(any) = seen.by_addr.keys().next().copied() {
                    seen.by_addr.remove(&any);
                }
            }
        }
        let f = seen.by_addr.entry(key).or_insert(Failures { since: now, count: 0 });
        if f.since + WINDOW <= now {
            *f = Failures { since: now, count: 0 };
        }
        f.count = f.count.saturating_add(1);
        f.count == self.per_window
    }
}

/// What is counted: an IPv4 address; an IPv6 address's /64 (one host
/// usually holds a whole /64, and could otherwise take a new address for
/// every guess).
fn subject(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_is_refused_after_its_wrong_tokens_until_its_minute_ends() {
        let limit = SignInLimit::new(3);
        let a = ip("203.0.113.7");
        for n in 1..=3 {
            assert_eq!(limit.refused(a), None);
            assert_eq!(limit.failed(a), n == 3, "the third one locks");
        }
        assert_eq!(limit.refused(a), Some(WINDOW));
        // Others are not held up by it.
        assert_eq!(limit.refused(ip("203.0.113.8")), None);
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(limit.refused(a), Some(Duration::from_secs(15)));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(limit.refused(a), None);
        // A new window starts with the next failure.
        limit.failed(a);
        assert_eq!(limit.refused(a), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = SignInLimit::new(2);
        limit.failed(ip("2001:db8:1:2::1"));
        limit.failed(ip("2001:db8:1:2:ffff::9"));
        assert!(limit.refused(ip("2001:db8:1:2::77")).is_some());
        assert_eq!(limit.refused(ip("2001:db8:1:3::1")), None);
        limit.failed(ip("::ffff:192.0.2.1"));
        limit.failed(ip("192.0.2.1"));
        assert!(limit.refused(ip("192.0.2.1")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_turns_it_off_and_the_table_stays_bounded() {
        let off = SignInLimit::new(0);
        for _ in 0..100 {
            off.failed(ip("192.0.2.1"));
        }
        assert_eq!(off.refused(ip("192.0.2.1")), None);
        let limit = SignInLimit::new(1);
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            limit.failed(IpAddr::V4((0x0a00_0000 + i).into()));
        }
        assert_eq!(limit.seen().by_addr.len(), MAX_ADDRESSES);
        // The newest is still remembered.
        assert!(limit.refused(IpAddr::V4((0x0a00_0000 + MAX_ADDRESSES as u32 + 49).into())).is_some());
    }
}
