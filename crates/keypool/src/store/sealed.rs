//! Upstream keys sealed at rest (see [`crate::crypt`]): adding a key sealed
//! to its row, opening keys as they are read, and re-sealing keys under the
//! current master key (clear ones at the server's start, every one at a
//! rotation), then wiping the old text from the database's files.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Row};

use super::{now_unix, on_pool, AddOutcome, Backend, Db, KeyRecord, NewKey, Store, StoreError};
use crate::crypt::{Keyring, SealError, MASTER_KEY_ENV};

/// Which keys [`Store::reseal`] rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Keys stored in clear (what the server does at start).
    Clear,
    /// Every key not sealed under the current master key (a rotation).
    All,
}

/// How long [`Store::reseal`] waits on PostgreSQL for the transactions that
/// could still see the old row versions to end before `VACUUM FULL` (which
/// copies every row version an open snapshot of the database may see).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// Whether another session of this database (or a prepared transaction or
/// replication slot on it) holds a snapshot that may see the row versions
/// transaction `$1` replaced: its xmin is not after `$1`. Comparing ages
/// is wraparound-safe; `age` of a null xid is null and counts as no. (A
/// logical slot's `catalog_xmin` holds back only the catalogs; lazy
/// autovacuum workers are counted though PostgreSQL ignores them, which
/// at worst waits longer.)
const OLDER_SNAPSHOTS: &str = "SELECT
      EXISTS (SELECT 1 FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND (age(backend_xmin) >= age($1::xid) OR age(backend_xid) >= age($1::xid)))
   OR EXISTS (SELECT 1 FROM pg_prepared_xacts
              WHERE database = current_database() AND age(transaction) >= age($1::xid))
   OR EXISTS (SELECT 1 FROM pg_replication_slots
              WHERE (database IS NULL OR database = current_database()) AND age(xmin) >= age($1::xid))";

/// What [`Store::reseal`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Keys that were stored in clear.
    pub from_clear: usize,
    /// Keys that were sealed under another master key (the old one).
    pub from_old: usize,
    /// Whether the files were rewritten so the old text is gone: false when
    /// nothing changed, or when another session kept it: (SQLite) a reader
    /// kept the WAL from being truncated; (PostgreSQL) a transaction that
    /// could still see the old rows was open for longer than 30 s, so
    /// `VACUUM FULL` had to copy them.
    pub wiped: bool,
}

impl Store {
    /// This store sealing new keys and opening stored ones with `keyring`
    /// (None: keys are added in clear, and sealed ones cannot be read).
    pub fn with_keyring(mut self, keyring: Option<Keyring>) -> Store {
        self.keyring = keyring.map(Arc::new);
        self
    }

    /// The master keys this store holds.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_deref()
    }

    /// `key` as read from its row, opened when `version` says it is sealed.
    pub(super) fn reveal(&self, mut key: KeyRecord, version: i64) -> Result<KeyRecord, StoreError> {
        if version == 0 {
            return Ok(key);
        }
        let Some(keyring) = &self.keyring else { return Err(SealError::NoMasterKey { id: key.id }.into()) };
        key.secret = keyring.open(key.id, version, key.secret.expose_secret())?;
        Ok(key)
    }

    /// Refuses to add a clear key among sealed ones (its duplicate could
    /// not be found, and it would sit in clear beside them).
    pub(super) async fn refuse_if_sealed(&self) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let sealed =
                sqlx::query("SELECT id FROM keys WHERE secret_version <> 0 LIMIT 1").fetch_optional(pool).await?;
            match sealed {
                Some(_) => Err(SealError::AddNeedsMasterKey.into()),
                None => Ok(()),
            }
        })
    }

    /// Refuses when a stored key is sealed under a master key `keyring` does
    /// not hold: anything added or re-sealed would leave the store under
    /// two keys of which the server knows one.
    pub async fn refuse_foreign_master_keys(&self, keyring: &Keyring) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT MIN(id), secret_version FROM keys WHERE secret_version <> 0 GROUP BY secret_version",
            )
            .fetch_all(pool)
            .await?;
            for row in rows {
                let (id, version): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                if keyring.by_version(version).is_none() {
                    return Err(SealError::WrongMasterKey { id, version, have: keyring.current.version() }.into());
                }
            }
            Ok(())
        })
    }

    /// The id of the stored key equal to `secret`: by fingerprint under each
    /// held master key, or by its text among clear keys.
    async fn sealed_key_id_of(&self, keyring: &Keyring, secret: &str) -> Result<Option<i64>, StoreError> {
        let fingerprints = keyring.fingerprints(secret);
        let other = fingerprints.get(1).unwrap_or(&fingerprints[0]);
        on_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT id FROM keys WHERE fingerprint = $1 OR fingerprint = $2
                    OR (secret = $3 AND secret_version = 0) LIMIT 1",
            )
            .bind(&fingerprints[0])
            .bind(other)
            .bind(secret)
            .fetch_optional(pool)
            .await?;
            row.map(|r| r.try_get(0)).transpose().map_err(StoreError::from)
        })
    }

    /// Adds `key` sealed under the current master key, bound to its id.
    pub(super) async fn add_sealed_key(&self, keyring: &Keyring, key: &NewKey) -> Result<AddOutcome, StoreError> {
        self.refuse_foreign_master_keys(keyring).await?;
        if let Some(id) = self.sealed_key_id_of(keyring, &key.secret).await? {
            return Ok(AddOutcome::Duplicate(id));
        }
        let master = &keyring.current;
        let fingerprint = master.fingerprint(&key.secret);
        on_pool!(self, |pool| {
            // The id is the ciphertext's associated data and exists only once
            // the row does: the row goes in with a placeholder (unique, as the
            // fingerprint is) and is sealed in the same transaction, so no
            // reader ever sees the placeholder.
            let mut tx = pool.begin().await?;
            let row = sqlx::query(
                "INSERT INTO keys (secret, secret_version, fingerprint, label, rpm, tpm, rpd, max_inflight, weight,
                                   budget_micros, expires_at, organization, project, created_at, upstream)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(format!("pending:{fingerprint}"))
            .bind(master.version())
            .bind(&fingerprint)
            .bind(&key.label)
            .bind(key.rpm.map(i64::from))
            .bind(key.tpm.map(i64::from))
            .bind(key.rpd.map(i64::from))
            .bind(key.max_inflight.map(i64::from))
            .bind(key.weight.map(i64::from))
            .bind(key.budget_micros.and_then(|b| i64::try_from(b).ok()))
            .bind(key.expires_at)
            .bind(&key.organization)
            .bind(&key.project)
            .bind(now_unix())
            .bind(&key.upstream)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                // Another writer added it between the look and the insert.
                let id = self.sealed_key_id_of(keyring, &key.secret).await?.unwrap_or_default();
                return Ok(AddOutcome::Duplicate(id));
            };
            let id: i64 = row.try_get(0)?;
            sqlx::query("UPDATE keys SET secret = $1 WHERE id = $2")
                .bind(master.seal(id, &key.secret))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(AddOutcome::Added(id))
        })
    }

    /// Seals the keys `which` names under the current master key, in one
    /// transaction (a key whose master key is not held fails it, changing
    /// nothing), then wipes the old text from the files: SQLite rewrites
    /// with `secure_delete` on, then `VACUUM` and a `wal_checkpoint(TRUNCATE)`;
    /// PostgreSQL waits (up to 30 s) until no other transaction of the
    /// database can still see the old row versions, then runs `VACUUM FULL
    /// keys` (its WAL, replicas and backups keep what they hold: see
    /// docs/keys-at-rest.md).
    /// Without a master key, does nothing.
    pub async fn reseal(&self, which: Reseal) -> Result<Resealed, StoreError> {
        let Some(keyring) = self.keyring.clone() else { return Ok(Resealed::default()) };
        let master = &keyring.current;
        let sqlite = self.backend() == Backend::Sqlite;
        on_pool!(self, |pool| {
            let mut done = Resealed::default();
            let mut conn = pool.acquire().await?;
            if sqlite {
                // Cells this connection frees or rewrites are zeroed, not
                // left on the page holding the old text.
                sqlx::raw_sql("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
            }
            // SQLite: the write lock from the start (a read that became a
            // write would fail at once if the running gateway's record
            // writer, which adds to the keys' totals, committed meanwhile).
            let mut tx = conn.begin_with(if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" }).await?;
            let rows = sqlx::query(
                "SELECT id, secret, secret_version FROM keys
                 WHERE secret_version <> $1 AND ($2 OR secret_version = 0) ORDER BY id",
            )
            .bind(master.version())
            .bind(which == Reseal::All)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let (id, stored, version): (i64, String, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let secret =
                    if version == 0 { SecretString::from(stored) } else { keyring.open(id, version, &stored)? };
                sqlx::query("UPDATE keys SET secret = $1, secret_version = $2, fingerprint = $3 WHERE id = $4")
                    .bind(master.seal(id, secret.expose_secret()))
                    .bind(master.version())
                    .bind(master.fingerprint(secret.expose_secret()))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if version == 0 {
                    done.from_clear += 1;
                } else {
                    done.from_old += 1;
                }
            }
            // This transaction's id: the row versions it replaced stay
            // visible to every snapshot taken before it committed.
            let xid: Option<String> = if sqlite || done.from_clear + done.from_old == 0 {
                None
            } else {
                Some(sqlx::query_scalar("SELECT xid(pg_current_xact_id())::text").fetch_one(&mut *tx).await?)
            };
            tx.commit().await?;
            if done.from_clear + done.from_old == 0 {
                if sqlite {
                    sqlx::raw_sql("PRAGMA secure_delete = OFF").execute(&mut *conn).await?;
                }
                return Ok(done);
            }
            if sqlite {
                sqlx::raw_sql("VACUUM").execute(&mut *conn).await?;
                // busy = 1: a reader held an older snapshot, and the WAL may
                // still hold old pages.
                let busy: i64 =
                    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await?.try_get(0)?;
                sqlx::raw_sql("PRAGMA secure_delete = OFF").execute(&mut *conn).await?;
                done.wiped = busy == 0;
            } else {
                // VACUUM FULL copies the row versions an open snapshot may
                // still see (any session of the database, whatever its
                // schema): the old text would be written to the new file.
                // So first wait until every snapshot older than the commit
                // has ended. PostgreSQL offers no way to wait on them from
                // SQL, hence the polling, bounded by SNAPSHOT_WAIT.
                let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT;
                let mut pause = Duration::from_millis(10);
                let mut clear = false;
                loop {
                    let older: bool = sqlx::query_scalar(OLDER_SNAPSHOTS).bind(&xid).fetch_one(&mut *conn).await?;
                    if !older {
                        clear = true;
                        break;
                    }
                    if tokio::time::Instant::now() + pause > deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                sqlx::raw_sql("VACUUM FULL keys").execute(&mut *conn).await?;
                done.wiped = clear;
            }
            Ok(done)
        })
    }

    /// What the server does with its keys before it reads them: with a
    /// master key, refuses one that does not open the stored keys, and
    /// seals (then wipes) keys stored in clear; without, warns once that
    /// keys are stored in clear.
    pub async fn protect_keys_at_start(&self) -> Result<(), StoreError> {
        let Some(keyring) = self.keyring.clone() else {
            tracing::warn!(
                "upstream keys are stored in clear in the database: set {MASTER_KEY_ENV} to encrypt them at \
                 rest (`keypool keys gen-master-key` prints one)"
            );
            return Ok(());
        };
        self.refuse_foreign_master_keys(&keyring).await?;
        let done = self.reseal(Reseal::Clear).await?;
        if done.from_clear > 0 {
            tracing::info!(
                keys = done.from_clear,
                "encrypted keys stored in clear, and wiped their text from the database"
            );
        }
        if done.from_clear > 0 && !done.wiped {
            tracing::warn!(
                "another session of the database kept the clear text from being wiped (SQLite: a reader kept \
                 the WAL from being truncated, until its next checkpoint; PostgreSQL: a transaction open for \
                 over 30 s could still see the old rows, until the next VACUUM FULL of the keys table)"
            );
        }
        Ok(())
    }
}
