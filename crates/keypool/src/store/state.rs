//! What the running server learned about each key (health, cooling, the
//! upstream's limits and what was sent within the last minute), kept in
//! wall-clock time so it survives a restart and `keys list` can show it.

use super::row::{i64_of, u64_of, Columns};
use super::{on_pool, on_write_pool, Backend, Db, Store, StoreError};

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

impl SavedKeyState {
    fn from_row(row: &impl Columns) -> Result<SavedKeyState, StoreError> {
        let dim = |p: &str| -> Result<SavedDim, StoreError> {
            Ok(SavedDim {
                learned: row.col::<Option<i64>>(format!("{p}_learned").as_str())?.map(u64_of),
                used: u64_of(row.col(format!("{p}_used").as_str())?),
                used_until: row.col(format!("{p}_used_until").as_str())?,
            })
        };
        Ok(SavedKeyState {
            key_id: row.col("key_id")?,
            health: SavedHealth::parse(row.col::<String>("health")?.as_str()),
            reason: row.col("reason")?,
            cooling_until: row.col("cooling_until")?,
            next_probe_at: row.col("next_probe_at")?,
            probe_every_ms: row.col::<Option<i64>>("probe_every_ms")?.map(u64_of),
            rpm: dim("rpm")?,
            tpm: dim("tpm")?,
            day: row.col("day")?,
            day_count: u64_of(row.col("day_count")?),
        })
    }
}

impl Store {
    /// Writes keys' learned state in one transaction, in key id order. Keys
    /// deleted meanwhile are skipped: on PostgreSQL the key's row is locked
    /// against deletion while its state is written (`FOR KEY SHARE`), so a
    /// delete in flight is waited for and then skips the key, instead of
    /// failing the whole batch on the foreign key (SQLite has one writer at
    /// a time, so it cannot meet a delete in flight).
    pub async fn save_key_states(&self, states: &[SavedKeyState]) -> Result<(), StoreError> {
        let mut states = states.to_vec();
        states.sort_by_key(|s| s.key_id);
        let sql = format!(
            "INSERT INTO key_state (key_id, health, reason, cooling_until, next_probe_at, probe_every_ms,
                rpm_learned, rpm_used, rpm_used_until, tpm_learned, tpm_used, tpm_used_until,
                day, day_count, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
             FROM keys WHERE id = $16{}
             ON CONFLICT (key_id) DO UPDATE SET health = excluded.health, reason = excluded.reason,
                        cooling_until = excluded.cooling_until, next_probe_at = excluded.next_probe_at,
                        probe_every_ms = excluded.probe_every_ms, rpm_learned = excluded.rpm_learned,
                        rpm_used = excluded.rpm_used, rpm_used_until = excluded.rpm_used_until,
                        tpm_learned = excluded.tpm_learned, tpm_used = excluded.tpm_used,
                        tpm_used_until = excluded.tpm_used_until, day = excluded.day,
                        day_count = excluded.day_count, updated_at = excluded.updated_at",
            match self.backend() {
                Backend::Postgres => " FOR KEY SHARE",
                Backend::Sqlite => "",
            }
        );
        on_write_pool!(self, |pool| {
            if states.is_empty() {
                return Ok(());
            }
            let now = now_unix_ms();
            let mut tx = pool.begin().await?;
            for s in &states {
                sqlx::query(&sql)
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
        })
    }

    /// Every key's last saved state.
    pub async fn load_key_states(&self) -> Result<Vec<SavedKeyState>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM key_state ORDER BY key_id").fetch_all(pool).await?;
            rows.iter().map(SavedKeyState::from_row).collect()
        })
    }
}
