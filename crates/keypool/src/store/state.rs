//! What the running server learned about each key (health, cooling, the
//! upstream's limits and what was sent within the last minute), kept in
//! wall-clock time so it survives a restart and `keys list` can show it.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{Store, StoreError};

/// Whether a key can serve at all, as the server last knew it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedHealth {
    #[default]
    Active,
    /// The upstream refused the key (401/403).
    Invalid,
    /// The upstream says the key's balance is spent (`insufficient_quota`).
    Exhausted,
}

impl SavedHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            SavedHealth::Active => "active",
            SavedHealth::Invalid => "invalid",
            SavedHealth::Exhausted => "exhausted",
        }
    }

    /// Unknown words (a newer server's) read as active: the server finds out again.
    fn parse(s: &str) -> SavedHealth {
        match s {
            "invalid" => SavedHealth::Invalid,
            "exhausted" => SavedHealth::Exhausted,
            _ => SavedHealth::Active,
        }
    }
}

/// One per-minute dimension (requests or tokens) of a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedDim {
    /// The limit the upstream announced (`x-ratelimit-limit-*`).
    pub learned: Option<u64>,
    /// Requests (or tokens) that count against the key until `used_until`.
    pub used: u64,
    /// Unix milliseconds when all of `used` has left the upstream's window.
    pub used_until: Option<i64>,
}

/// A key's learned state. Times are Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedKeyState {
    pub key_id: i64,
    pub health: SavedHealth,
    /// Why the key is not active, in words for the operator.
    pub reason: Option<String>,
    /// No request before this instant (a 429's reset, a resting breaker).
    pub cooling_until: Option<i64>,
    /// When an invalid or exhausted key is probed next.
    pub next_probe_at: Option<i64>,
    pub probe_every_ms: Option<u64>,
    pub rpm: SavedDim,
    pub tpm: SavedDim,
    /// The UTC day (days since the Unix epoch) that `day_count` belongs to.
    pub day: i64,
    /// Requests sent that day (for a requests-per-day limit).
    pub day_count: u64,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SavedKeyState {
    fn from_row(row: &SqliteRow) -> Result<SavedKeyState, StoreError> {
        let dim = |p: &str| -> Result<SavedDim, StoreError> {
            Ok(SavedDim {
                learned: row.try_get::<Option<i64>, _>(format!("{p}_learned").as_str())?.map(u64_of),
                used: u64_of(row.try_get(format!("{p}_used").as_str())?),
                used_until: row.try_get(format!("{p}_used_until").as_str())?,
            })
        };
        Ok(SavedKeyState {
            key_id: row.try_get("key_id")?,
            health: SavedHealth::parse(row.try_get::<String, _>("health")?.as_str()),
            reason: row.try_get("reason")?,
            cooling_until: row.try_get("cooling_until")?,
            next_probe_at: row.try_get("next_probe_at")?,
            probe_every_ms: row.try_get::<Option<i64>, _>("probe_every_ms")?.map(u64_of),
            rpm: dim("rpm")?,
            tpm: dim("tpm")?,
            day: row.try_get("day")?,
            day_count: u64_of(row.try_get("day_count")?),
        })
    }
}

impl Store {
    /// Writes keys' learned state in one transaction. Keys deleted meanwhile are skipped.
    pub async fn save_key_states(&self, states: &[SavedKeyState]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let now = now_unix_ms();
        let mut tx = self.pool.begin().await?;
        for s in states {
            sqlx::query(
                "INSERT INTO key_state (key_id, health, reason, cooling_until, next_probe_at, probe_every_ms,
                    rpm_learned, rpm_used, rpm_used_until, tpm_learned, tpm_used, tpm_used_until,
                    day, day_count, updated_at)
                 SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
                 WHERE EXISTS (SELECT 1 FROM keys WHERE id = ?)
                 ON CONFLICT (key_id) DO UPDATE SET health = excluded.health, reason = excluded.reason,
                    cooling_until = excluded.cooling_until, next_probe_at = excluded.next_probe_at,
                    probe_every_ms = excluded.probe_every_ms, rpm_learned = excluded.rpm_learned,
                    rpm_used = excluded.rpm_used, rpm_used_until = excluded.rpm_used_until,
                    tpm_learned = excluded.tpm_learned, tpm_used = excluded.tpm_used,
                    tpm_used_until = excluded.tpm_used_until, day = excluded.day,
                    day_count = excluded.day_count, updated_at = excluded.updated_at",
            )
            .bind(s.key_id)
            .bind(s.health.as_str())
            .bind(&s.reason)
            .bind(s.cooling_until)
            .bind(s.next_probe_at)
            .bind(s.probe_every_ms.map(i64_of))
            .bind(s.rpm.learned.map(i64_of))
            .bind(i64_of(s.rpm.used))
            .bind(s.rpm.used_until)
            .bind(s.tpm.learned.map(i64_of))
            .bind(i64_of(s.tpm.used))
            .bind(s.tpm.used_until)
            .bind(s.day)
            .bind(i64_of(s.day_count))
            .bind(now)
            .bind(s.key_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every key's last saved state.
    pub async fn load_key_states(&self) -> Result<Vec<SavedKeyState>, StoreError> {
        let rows = sqlx::query("SELECT * FROM key_state ORDER BY key_id").fetch_all(&self.pool).await?;
        rows.iter().map(SavedKeyState::from_row).collect()
    }
}
