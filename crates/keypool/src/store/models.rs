//! Rows as the rest of keypool sees them.

use secrecy::SecretString;

use super::row::{u64_of, Columns};
use super::StoreError;
use crate::config::Cidr;
use crate::tenants::{BudgetPeriod, TokenSettings};

/// A key to insert.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub secret: String,
    pub label: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// Requests per day (free tiers have one).
    pub rpd: Option<u32>,
    /// Cap on requests in flight at once.
    pub max_inflight: Option<u32>,
    /// Share of traffic under the `weighted` strategy (default 1).
    pub weight: Option<u32>,
    /// Spend allowed, in micro-USD (`balance_even` never overruns it).
    pub budget_micros: Option<u64>,
    /// Unix time after which the key is not used.
    pub expires_at: Option<i64>,
    /// Sent upstream as `OpenAI-Organization` with this key.
    pub organization: Option<String>,
    /// Sent upstream as `OpenAI-Project` with this key.
    pub project: Option<String>,
    /// The upstream (by name) the key belongs to; None: the default one.
    pub upstream: Option<String>,
}

/// Settings `keys edit` changes: `None` leaves one as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChange {
    pub label: Option<Option<String>>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u32>>,
    pub rpd: Option<Option<u32>>,
    pub max_inflight: Option<Option<u32>>,
    pub weight: Option<Option<u32>>,
    pub budget_micros: Option<Option<u64>>,
    pub expires_at: Option<Option<i64>>,
    pub organization: Option<Option<String>>,
    pub project: Option<Option<String>>,
    /// `Some(None)`: back to the default upstream.
    pub upstream: Option<Option<String>>,
}

impl KeyChange {
    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == KeyChange::default()
    }
}

/// A stored key with its lifetime totals.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: i64,
    pub secret: SecretString,
    pub label: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub rpd: Option<u32>,
    pub max_inflight: Option<u32>,
    pub weight: Option<u32>,
    pub budget_micros: Option<u64>,
    pub spent_micros: u64,
    pub expires_at: Option<i64>,
    pub enabled: bool,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// Sent upstream as `OpenAI-Organization` with this key.
    pub organization: Option<String>,
    /// Sent upstream as `OpenAI-Project` with this key.
    pub project: Option<String>,
    /// The upstream (by name) the key belongs to; None: the default one.
    pub upstream: Option<String>,
}

fn opt_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

impl KeyRecord {
    /// A key as `keys add` stores it without options: enabled, no limits of
    /// its own, nothing used yet.
    pub fn new(id: i64, secret: SecretString) -> KeyRecord {
        KeyRecord {
            id,
            secret,
            label: None,
            rpm: None,
            tpm: None,
            rpd: None,
            max_inflight: None,
            weight: None,
            budget_micros: None,
            spent_micros: 0,
            expires_at: None,
            enabled: true,
            requests: 0,
            successes: 0,
            failures: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            created_at: 0,
            last_used_at: None,
            organization: None,
            project: None,
            upstream: None,
        }
    }

    pub(super) fn from_row(row: &impl Columns) -> Result<KeyRecord, StoreError> {
        let secret: String = row.col("secret")?;
        Ok(KeyRecord {
            id: row.col("id")?,
            secret: SecretString::from(secret),
            label: row.col("label")?,
            rpm: opt_u32(row.col("rpm")?),
            tpm: opt_u32(row.col("tpm")?),
            rpd: opt_u32(row.col("rpd")?),
            max_inflight: opt_u32(row.col("max_inflight")?),
            weight: opt_u32(row.col("weight")?),
            budget_micros: row.col::<Option<i64>>("budget_micros")?.map(u64_of),
            spent_micros: u64_of(row.col("spent_micros")?),
            expires_at: row.col("expires_at")?,
            enabled: row.col("enabled")?,
            requests: u64_of(row.col("requests")?),
            successes: u64_of(row.col("successes")?),
            failures: u64_of(row.col("failures")?),
            prompt_tokens: u64_of(row.col("prompt_tokens")?),
            completion_tokens: u64_of(row.col("completion_tokens")?),
            created_at: row.col("created_at")?,
            last_used_at: row.col("last_used_at")?,
            organization: row.col("organization")?,
            project: row.col("project")?,
            upstream: row.col("upstream")?,
        })
    }
}

/// A gateway token as stored: only its hash, never the token.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub hash: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// What the token may use and spend.
    pub settings: TokenSettings,
    /// What the request log counted for this token (see [`TokenUsage`]).
    pub usage: TokenUsage,
}

/// A gateway token's totals, from its requests' records: requests (with a
/// live token), those answered 2xx in full, those that failed (the caller
/// leaving is neither), tokens, spend in micro-USD, and the last request's
/// Unix second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spent_micros: u64,
    pub last_used_at: Option<i64>,
}

impl TokenRecord {
    pub(super) fn from_row(row: &impl Columns) -> Result<TokenRecord, StoreError> {
        Ok(TokenRecord {
            id: row.col("id")?,
            name: row.col("name")?,
            hash: row.col("hash")?,
            prefix: row.col("prefix")?,
            created_at: row.col("created_at")?,
            revoked_at: row.col("revoked_at")?,
            settings: settings_of(row)?,
            usage: TokenUsage {
                requests: u64_of(row.col("requests")?),
                successes: u64_of(row.col("successes")?),
                failures: u64_of(row.col("failures")?),
                prompt_tokens: u64_of(row.col("prompt_tokens")?),
                completion_tokens: u64_of(row.col("completion_tokens")?),
                spent_micros: u64_of(row.col("spent_micros")?),
                last_used_at: row.col("last_used_at")?,
            },
        })
    }
}

/// A token's tenant columns. A list that does not parse (never written so
/// by keypool) reads as an empty one, which allows nothing: a token whose
/// scope cannot be read is refused rather than let out of it.
fn settings_of(row: &impl Columns) -> Result<TokenSettings, StoreError> {
    let list = |col: Option<String>| -> Option<Vec<String>> {
        col.map(|text| serde_json::from_str::<Vec<String>>(&text).unwrap_or_default())
    };
    let networks = list(row.col("networks")?)
        .map(|nets| nets.into_iter().map(Cidr::try_from).collect::<Result<Vec<Cidr>, String>>().unwrap_or_default());
    let period: String = row.col("budget_period")?;
    let count = |v: Option<i64>| v.map(u64_of);
    Ok(TokenSettings {
        models: list(row.col("models")?),
        networks,
        rpm: count(row.col("rpm")?),
        tpm: count(row.col("tpm")?),
        rpd: count(row.col("rpd")?),
        max_inflight: count(row.col("max_inflight")?),
        budget_micros: count(row.col("budget_micros")?),
        // An unknown period (never written by keypool) is the strictest: the whole life.
        budget_period: BudgetPeriod::parse(&period).unwrap_or(BudgetPeriod::Total),
        expires_at: row.col("expires_at")?,
        priority: row.col("priority")?,
        enabled: row.col("enabled")?,
    })
}

/// Usage counted in memory since the last flush, for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: i64,
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spent_micros: u64,
    pub last_used_at: Option<i64>,
}
