//! Gateway tokens: who may use the pool. Only SHA-256 hashes are held, and,
//! for tokens already seen, a keyed 128-bit MAC of each. Refused tokens are
//! logged at warn with the caller's address, at most so many per interval.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use siphasher::sip128::SipHasher24;

use super::error::ApiError;
use crate::tenants::{BudgetPeriod, Tenant, TokenSettings};

/// Prefix of every gateway token, so they are easy to tell from upstream keys.
pub const TOKEN_PREFIX: &str = "kp-";

/// Who a request is charged to: the id of its gateway token (the `tokens`
/// table's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub i64);

/// The hashes of every live (unrevoked) token, with their tenants.
///
/// SHA-256 of a token costs about 3,600 instructions, as much as a twentieth
/// of a whole proxied request (callgrind, docs/benchmarks.md), and every
/// request presents its token. So a token that passed once is remembered by
/// a SipHash-2-4 128-bit MAC under a key drawn at start (a few hundred
/// instructions): a request whose MAC is known is accepted, and its tenant
/// found, by that one lookup. [`TokenSet::replace`] drops the MACs whose
/// SHA-256 digests are no longer live in the same write, so revoking a
/// token takes effect at once. The key never leaves memory and the MAC is never shown, so a
/// forged token passes with probability 2^-128 per try; memory holds no
/// token in clear (no more than the store does). Only tokens that passed
/// are remembered, so a flood of wrong tokens cannot grow the map.
pub struct TokenSet {
    key: [u8; 16],
    live: RwLock<Live>,
}

/// Counts only: the MAC key and the MACs stay out of any log.
impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("TokenSet").field("live", &live.hashes.len()).field("remembered", &live.seen.len()).finish()
    }
}

#[derive(Default)]
struct Live {
    /// SHA-256 digest → the token's tenant. Digests are uniformly
    /// distributed, so Fx hashing is safe.
    hashes: FxHashMap<[u8; 32], Arc<Tenant>>,
    /// Token id → its tenant (the same ones), so an edit keeps the counters.
    by_id: FxHashMap<i64, Arc<Tenant>>,
    /// MAC of a token that passed → its digest and tenant (one lookup a
    /// request: with many tenants each is a cold cache line or two). Kept
    /// true to `hashes` by [`TokenSet::replace`]. Keyed, so Fx hashing is safe.
    seen: FxHashMap<u128, Seen>,
}

/// A token that passed: its digest, to drop it once revoked, and its tenant.
struct Seen {
    digest: [u8; 32],
    tenant: Arc<Tenant>,
}

/// Tokens remembered by MAC at most; past it the map starts over (it only
/// saves work, and a pool has far fewer tokens than this).
const SEEN_CAP: usize = 4096;

impl Default for TokenSet {
    fn default() -> TokenSet {
        TokenSet { key: rand::random(), live: RwLock::default() }
    }
}

/// SHA-256 of a token, as hex (how the store keeps it).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `kp-` and 48 hex characters (192 bits).
pub fn generate_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// A live token as the store gives it, for [`TokenSet::replace`].
#[derive(Debug, Clone)]
pub struct LiveToken<'a> {
    pub id: i64,
    pub name: &'a str,
    /// SHA-256 of the token, hex (as stored).
    pub hash: &'a str,
    pub settings: TokenSettings,
    /// Micro-USD spent in the current budget period, when the store was
    /// asked (see [`TokenSet::needs_spend`]); else what memory counted.
    pub spent: Option<u64>,
}

impl TokenSet {
    /// Replaces the live set with these tokens (malformed hashes are
    /// skipped). A token already live keeps its tenant and counters, and
    /// takes the new settings; days and months begin in `tz`.
    pub fn replace<'a>(&self, tokens: impl IntoIterator<Item = LiveToken<'a>>, tz: &jiff::tz::TimeZone) {
        let old = self.live.read().unwrap_or_else(|p| p.into_inner()).by_id.clone();
        let mut hashes: FxHashMap<[u8; 32], Arc<Tenant>> = FxHashMap::default();
        let mut by_id: FxHashMap<i64, Arc<Tenant>> = FxHashMap::default();
        for t in tokens {
            let Some(digest) = hex::decode(t.hash).ok().and_then(|d| <[u8; 32]>::try_from(d).ok()) else { continue };
            let tenant = match old.get(&t.id) {
                Some(tenant) => {
                    tenant.update(t.name, t.settings, t.spent);
                    Arc::clone(tenant)
                }
                None => Arc::new(Tenant::new(t.id, t.name, t.settings, tz.clone(), t.spent.unwrap_or(0))),
            };
            hashes.insert(digest, Arc::clone(&tenant));
            by_id.insert(t.id, tenant);
        }
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        live.seen.retain(|_, seen| match hashes.get(&seen.digest) {
            Some(tenant) => {
                seen.tenant = Arc::clone(tenant);
                true
            }
            None => false,
        });
        live.hashes = hashes;
        live.by_id = by_id;
    }

    /// Whether the store must say what token `id` spent in its current
    /// `period` before [`TokenSet::replace`]: a token new to memory, one
    /// that had no budget (memory counts spend only under a budget), or
    /// whose period changed. Memory counts the rest.
    pub fn needs_spend(&self, id: i64, period: BudgetPeriod) -> bool {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.by_id.get(&id).is_none_or(|t| {
            let s = t.settings();
            s.budget_micros.is_none() || s.budget_period != period
        })
    }

    /// The live tenant of token `id`.
    pub fn tenant(&self, id: i64) -> Option<Arc<Tenant>> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).by_id.get(&id).cloned()
    }

    /// Every live token's budget view, by id (for the alerts task, off
    /// the request path: the set's lock is held only to copy the list).
    pub fn budget_views(&self) -> Vec<crate::tenants::BudgetView> {
        let mut tenants: Vec<Arc<Tenant>> =
            self.live.read().unwrap_or_else(|p| p.into_inner()).by_id.values().cloned().collect();
        tenants.sort_by_key(|t| t.id());
        tenants.iter().map(|t| t.budget_view()).collect()
    }

    /// Accepts the request when its bearer token is live, and says whose it is.
    pub fn check(&self, headers: &HeaderMap) -> Result<Arc<Tenant>, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(ApiError::MissingToken)?;
        let mac = u128::from(SipHasher24::new_with_key(&self.key).hash(token.as_bytes()));
        {
            let live = self.live.read().unwrap_or_else(|p| p.into_inner());
            if let Some(seen) = live.seen.get(&mac) {
                return Ok(Arc::clone(&seen.tenant));
            }
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A wrong token takes only the read lock, so a flood of them does not
        // hold up the callers whose tokens are right.
        if !self.live.read().unwrap_or_else(|p| p.into_inner()).hashes.contains_key(&digest) {
            return Err(ApiError::InvalidToken);
        }
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        // Still live (not revoked since the read): remember it.
        let Some(tenant) = live.hashes.get(&digest).cloned() else { return Err(ApiError::InvalidToken) };
        if live.seen.len() >= SEEN_CAP {
            live.seen.clear();
        }
        live.seen.insert(mac, Seen { digest, tenant: Arc::clone(&tenant) });
        Ok(tenant)
    }
}

/// Warnings about refused gateway tokens: at most `lines` per `interval`,
/// so a flood of wrong tokens cannot fill the disk. The refusals past that
/// are counted, and their number is logged with the first refusal of a
/// later interval. Process-wide, like the log itself.
#[derive(Debug)]
struct RefusalLimiter {
    lines: AtomicU32,
    interval_ms: AtomicU64,
    /// The interval under way: milliseconds since [`clock_ms`]'s start ÷ `interval_ms`.
    window: AtomicU64,
    /// Refusals seen in this interval.
    seen: AtomicU64,
    /// Refusals not logged and not yet said.
    unsaid: AtomicU64,
}

impl RefusalLimiter {
    const fn new(lines: u32, interval_ms: u64) -> RefusalLimiter {
        RefusalLimiter {
            lines: AtomicU32::new(lines),
            interval_ms: AtomicU64::new(interval_ms),
            window: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            unsaid: AtomicU64::new(0),
        }
    }

    /// A refusal at `now_ms`: whether to log it, and how many earlier ones
    /// went unlogged (to say first; 0 when none or already said).
    fn admit(&self, now_ms: u64) -> (bool, u64) {
        let window = now_ms / self.interval_ms.load(Ordering::Relaxed).max(1);
        let current = self.window.load(Ordering::Acquire);
        let mut unsaid = 0;
        if window > current
            && self.window.compare_exchange(current, window, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.seen.store(0, Ordering::Relaxed);
            unsaid = self.unsaid.swap(0, Ordering::AcqRel);
        }
        if self.seen.fetch_add(1, Ordering::Relaxed) < u64::from(self.lines.load(Ordering::Relaxed)) {
            (true, unsaid)
        } else {
            self.unsaid.fetch_add(1, Ordering::AcqRel);
            (false, unsaid)
        }
    }
}

static REFUSALS: RefusalLimiter = RefusalLimiter::new(10, 60_000);

/// Milliseconds since the first call (a monotonic clock).
fn clock_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(std::time::Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Sets how many refused tokens are logged per interval
/// (`telemetry.auth_failure_log_lines` per `telemetry.auth_failure_log_interval`).
pub fn limit_refusal_log(lines: u32, interval: Duration) {
    REFUSALS.lines.store(lines, Ordering::Relaxed);
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    REFUSALS.interval_ms.store(ms, Ordering::Relaxed);
}

/// Logs (at warn, target `keypool::auth`) that a request's gateway token
/// was refused, naming its caller ([`super::client::real_client`]) and
/// why (`missing_token` or `invalid_token`), never the token; within
/// [`limit_refusal_log`]'s bound.
pub fn log_refusal(error: &ApiError, client: Option<IpAddr>) {
    if !tracing::enabled!(target: "keypool::auth", tracing::Level::WARN) {
        return;
    }
    let (log, unsaid) = REFUSALS.admit(clock_ms());
    let interval = Duration::from_millis(REFUSALS.interval_ms.load(Ordering::Relaxed));
    if unsaid > 0 {
        tracing::warn!(
            target: "keypool::auth",
            suppressed = unsaid,
            interval = %humantime::format_duration(interval),
            "gateway tokens refused and not logged (more than telemetry.auth_failure_log_lines per interval)"
        );
    }
    if log {
        let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        let reason = if matches!(error, ApiError::MissingToken) { "missing_token" } else { "invalid_token" };
        tracing::warn!(target: "keypool::auth", client = %client, reason, "gateway token refused");
    }
}

/// The credentials of a `Bearer` Authorization value. The scheme is
/// case-insensitive and may be followed by any run of spaces or tabs (RFC 9110
/// §11.1, §11.4).
/// The token of an `Authorization: Bearer <token>` value: the scheme is
/// matched case-insensitively and spaces or tabs around it are dropped, as
/// RFC 9110 §11.1 allows; `None` for another scheme or an empty token. The
/// one parser for gateway, admin and `/metrics` tokens.
pub fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let token = rest.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Replaces `set`'s tokens with these (hash, id) pairs, with no limits.
    fn put(set: &TokenSet, tokens: &[(&str, i64)]) {
        set.replace(
            tokens.iter().map(|&(hash, id)| LiveToken {
                id,
                name: "t",
                hash,
                settings: TokenSettings::default(),
                spent: None,
            }),
            &jiff::tz::TimeZone::UTC,
        );
    }

    fn id(r: Result<Arc<Tenant>, ApiError>) -> i64 {
        r.unwrap().id()
    }

    #[test]
    fn only_live_tokens_pass() {
        let set = TokenSet::default();
        let token = generate_token();
        assert!(token.starts_with("kp-") && token.len() == 51);
        let hash = hash_token(&token);
        put(&set, &[(hash.as_str(), 7)]);
        let mut h = HeaderMap::new();
        assert!(matches!(set.check(&h), Err(ApiError::MissingToken)));
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        assert_eq!(id(set.check(&h)), 7);
        assert_eq!(id(set.check(&h)), 7, "remembered, still its own id");
        put(&set, &[]);
        assert!(matches!(set.check(&h), Err(ApiError::InvalidToken)));
    }

    #[test]
    fn a_token_remembered_after_passing_is_refused_once_revoked() {
        let set = TokenSet::default();
        let (kept, revoked) = (generate_token(), generate_token());
        put(&set, &[(hash_token(&kept).as_str(), 1), (hash_token(&revoked).as_str(), 2)]);
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
            h
        };
        // Twice each: the second check is answered from the remembered MAC.
        for _ in 0..2 {
            assert_eq!(id(set.check(&with(&kept))), 1);
            assert_eq!(id(set.check(&with(&revoked))), 2);
        }
        let before = set.check(&with(&kept)).unwrap();
        put(&set, &[(hash_token(&kept).as_str(), 1)]);
        assert!(matches!(set.check(&with(&revoked)), Err(ApiError::InvalidToken)));
        assert!(Arc::ptr_eq(&before, &set.check(&with(&kept)).unwrap()), "the same tenant: its counters stay");
        // A token differing in one character is not taken for a remembered one.
        let mut near = kept.clone();
        near.pop();
        near.push(if kept.ends_with('0') { '1' } else { '0' });
        assert!(matches!(set.check(&with(&near)), Err(ApiError::InvalidToken)));
    }

    #[test]
    fn a_remembered_token_follows_its_digest_to_the_tenant_live_now() {
        let set = TokenSet::default();
        let token = generate_token();
        let hash = hash_token(&token);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        put(&set, &[(hash.as_str(), 1)]);
        assert_eq!(id(set.check(&h)), 1);
        // The same secret now stands for another row (as a store restored
        // from elsewhere might say): the remembered MAC leads to it.
        put(&set, &[(hash.as_str(), 2)]);
        assert_eq!(id(set.check(&h)), 2);
        assert_eq!(set.live.read().unwrap().seen.len(), 1, "still remembered, not learned again");
    }

    #[test]
    fn wrong_tokens_are_not_remembered() {
        let set = TokenSet::default();
        put(&set, &[(hash_token(&generate_token()).as_str(), 1)]);
        for _ in 0..100 {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, format!("Bearer {}", generate_token()).parse().unwrap());
            assert!(matches!(set.check(&h), Err(ApiError::InvalidToken)));
        }
        assert!(set.live.read().unwrap().seen.is_empty());
    }

    #[test]
    fn refusals_are_logged_up_to_the_bound_and_the_rest_counted_later() {
        let limiter = RefusalLimiter::new(3, 1000);
        let first: Vec<(bool, u64)> = (0..10).map(|i| limiter.admit(100 + i)).collect();
        assert_eq!(first.iter().filter(|(log, _)| *log).count(), 3);
        assert!(first.iter().all(|(_, unsaid)| *unsaid == 0), "nothing to say within the interval");
        // The next interval says the 7 left out, then logs again.
        assert_eq!(limiter.admit(1500), (true, 7));
        assert_eq!(limiter.admit(1501), (true, 0));
        assert_eq!(limiter.admit(1502), (true, 0));
        assert_eq!(limiter.admit(1503), (false, 0));
        // Several intervals later: the one left out is said once.
        assert_eq!(limiter.admit(9000), (true, 1));
        assert_eq!(limiter.admit(9001), (true, 0));
    }

    #[test]
    fn the_scheme_is_matched_case_insensitively() {
        for value in ["Bearer kp-1", "bearer kp-1", "BEARER kp-1", "bEaReR  kp-1", "Bearer\tkp-1 "] {
            assert_eq!(bearer_token(value), Some("kp-1"), "{value:?}");
        }
        for value in ["Bearer", "Bearer ", "Basic kp-1", "Bearerkp-1", "kp-1"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
