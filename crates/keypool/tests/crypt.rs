//! Upstream keys encrypted at rest, on SQLite and on PostgreSQL: with a
//! master key no key material reaches the database's files; keys stored in
//! clear are sealed and wiped at start; after a rotation every key still
//! works through the gateway; a wrong or malformed master key is refused
//! with an error naming KEYPOOL_MASTER_KEY.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::scratch::{both, Scratch};
use keypool::config::Config;
use keypool::crypt::{Keyring, MasterKey, SealError};
use keypool::server::{generate_token, hash_token};
use keypool::store::{AddOutcome, Backend, NewKey, Reseal, StoreError};
use keypool_sim::{SimConfig, SimKey, Simulator};
use secrecy::ExposeSecret;
use sqlx::{Connection, Row};

both!(
    sealed_keys_leave_no_key_material_in_the_database,
    clear_keys_are_sealed_and_wiped_when_a_master_key_arrives,
    after_a_rotation_every_key_still_works_through_the_gateway,
    swapped_ciphertexts_and_a_wrong_master_key_do_not_open,
);

const BIN: &str = env!("CARGO_BIN_EXE_keypool");

/// Long, distinctive keys so a scan cannot match by accident.
const KEYS: [&str; 3] =
    ["sk-crypt-one-3f9a2c7e51d84b6a0e1f", "sk-crypt-two-0b8e4d17c9a2f3655c2d", "sk-crypt-three-e6c1a94f028b7d31ab"];

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes(&[byte; 32]).unwrap()
}

fn new_key(secret: &str) -> NewKey {
    NewKey { secret: secret.into(), ..NewKey::default() }
}

/// Each form a key could be written in: as is, base64 (both alphabets), hex.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        secret.as_bytes().to_vec(),
        STANDARD.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ]
}

/// The bytes the database keeps: SQLite's file and its WAL; PostgreSQL's
/// rows as text, and the on-disk file of every relation (tables, indexes)
/// of the test's schema after a CHECKPOINT, so dead row versions count too.
async fn stored_bytes(db: &Scratch) -> Vec<u8> {
    match db.store.backend() {
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://").to_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
            bytes
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let mut bytes = Vec::new();
            for row in sqlx::query("SELECT keys::text FROM keys").fetch_all(&mut conn).await.unwrap() {
                bytes.extend(row.get::<String, _>(0).into_bytes());
            }
            sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await.unwrap();
            let files: Vec<String> = sqlx::query_scalar(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c
                 WHERE c.relnamespace = current_schema()::regnamespace AND pg_relation_filepath(c.oid) IS NOT NULL",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            assert!(files.len() > 5, "the schema's relations: {files:?}");
            for file in files {
                let data: Vec<u8> = sqlx::query_scalar("SELECT pg_read_binary_file($1)")
                    .bind(&file)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                bytes.extend(data);
            }
            let _ = conn.close().await;
            bytes
        }
    }
}

/// A key removed while keys were stored in clear: its text must go too.
const REMOVED: &str = "sk-crypt-removed-9d2e71c4b0a85f36";

/// The keys of `KEYS` (and `REMOVED`) found in any form in the database's bytes.
async fn found(db: &Scratch) -> Vec<&'static str> {
    let bytes = stored_bytes(db).await;
    KEYS.into_iter()
        .chain([REMOVED])
        .filter(|k| forms(k).iter().any(|form| bytes.windows(form.len()).any(|w| w == form.as_slice())))
        .collect()
}

async fn sealed_keys_leave_no_key_material_in_the_database(db: Scratch) {
    let store = db.store.clone().with_keyring(Some(Keyring::new(master(1))));
    for k in KEYS {
        assert!(matches!(store.add_key(&new_key(k)).await.unwrap(), AddOutcome::Added(_)));
    }
    // A duplicate is found by its fingerprint.
    let AddOutcome::Duplicate(id) = store.add_key(&new_key(KEYS[1])).await.unwrap() else { panic!("not a duplicate") };
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.iter().map(|k| k.secret.expose_secret().to_owned()).collect::<Vec<_>>(), KEYS);
    assert_eq!(listed[1].id, id);
    assert_eq!(found(&db).await, Vec::<&str>::new());
    // Nor is a gateway token kept, only its hash (and the prefix shown in `tokens list`).
    let token = generate_token();
    db.store.create_token("caller", &hash_token(&token), &token[..7]).await.unwrap();
    let bytes = stored_bytes(&db).await;
    assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "the token is stored");
    assert!(bytes.windows(hash_token(&token).len()).any(|w| w == hash_token(&token).as_bytes()), "no hash");
    // The scan does find a key stored in clear (so its silence above means something).
    sqlx_exec(&db.url, "UPDATE keys SET secret = 'sk-crypt-one-3f9a2c7e51d84b6a0e1f', secret_version = 0 WHERE id = 1")
        .await;
    assert_eq!(found(&db).await, vec![KEYS[0]]);
}

async fn clear_keys_are_sealed_and_wiped_when_a_master_key_arrives(db: Scratch) {
    let AddOutcome::Added(removed) = db.store.add_key(&new_key(REMOVED)).await.unwrap() else { panic!() };
    for k in KEYS {
        db.store.add_key(&new_key(k)).await.unwrap();
    }
    // As in a database used for a while: the rows are in the main file, not only the WAL.
    if db.store.backend() == Backend::Sqlite {
        sqlx_exec(&db.url, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    }
    db.store.remove_key(removed).await.unwrap();
    let mut before = found(&db).await;
    before.retain(|k| *k != REMOVED);
    assert_eq!(before, KEYS, "the clear keys are in the files before");
    let store = db.store.clone().with_keyring(Some(Keyring::new(master(1))));
    store.protect_keys_at_start().await.unwrap();
    assert_eq!(found(&db).await, Vec::<&str>::new(), "the clear keys are wiped after");
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.iter().map(|k| k.secret.expose_secret().to_owned()).collect::<Vec<_>>(), KEYS);
    // Duplicates of the formerly clear keys are still found; a second start changes nothing.
    assert!(matches!(store.add_key(&new_key(KEYS[2])).await.unwrap(), AddOutcome::Duplicate(4)));
    assert_eq!(store.reseal(Reseal::Clear).await.unwrap().from_clear, 0);
    // Without the master key they can neither be read nor added to.
    let err = db.store.list_keys().await.unwrap_err();
    assert!(matches!(err, StoreError::Sealed(SealError::NoMasterKey { id: 2 })), "{err}");
    assert!(err.to_string().contains("KEYPOOL_MASTER_KEY"), "{err}");
    let err = db.store.add_key(&new_key("sk-crypt-another-key-00000000")).await.unwrap_err();
    assert!(err.to_string().contains("KEYPOOL_MASTER_KEY"), "{err}");
}

/// The cause of a flaky wipe: `VACUUM FULL` copies every row version a
/// snapshot still open anywhere in the database may see, so a transaction
/// of another session (another schema, here another test's) that began
/// before the re-sealing committed kept the clear rows in the new file.
/// `reseal` waits for such snapshots to end; here one is held open until
/// reseal is seen waiting, and only then released.
#[tokio::test]
async fn postgres_reseal_waits_for_an_older_snapshot_before_wiping() {
    let db = Scratch::postgres().await;
    for k in KEYS {
        db.store.add_key(&new_key(k)).await.unwrap();
    }
    // Another session of the database, in another schema, with a snapshot
    // taken before the keys are re-sealed.
    let mut other = sqlx::PgConnection::connect(&common::scratch::postgres_url()).await.unwrap();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").execute(&mut other).await.unwrap();
    let store = db.store.clone().with_keyring(Some(Keyring::new(master(1))));
    // Both in this task (the store's futures are not provably Send).
    let finished = std::cell::Cell::new(false);
    let resealing = async {
        let done = store.reseal(Reseal::Clear).await;
        finished.set(true);
        done
    };
    // The old snapshot is released only once reseal is seen waiting for it
    // (a session of the database whose last query reads pg_prepared_xacts,
    // as reseal's wait does); a reseal that ends first ran VACUUM FULL
    // while the snapshot was open, which copies the clear rows.
    let watching = async {
        let mut look = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
                   AND pid <> pg_backend_pid() AND query LIKE '%FROM pg_prepared_xacts%')",
            )
            .fetch_one(&mut look)
            .await
            .unwrap();
            if waiting {
                break;
            }
            assert!(!finished.get(), "reseal did not wait for the older snapshot");
            assert!(Instant::now() < deadline, "reseal was never seen waiting");
            tokio::task::yield_now().await;
        }
        let _ = look.close().await;
        assert!(!finished.get(), "reseal did not wait for the older snapshot");
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    };
    let (done, ()) = tokio::join!(resealing, watching);
    let done = done.unwrap();
    assert_eq!((done.from_clear, done.wiped), (3, true));
    assert_eq!(found(&db).await, Vec::<&str>::new(), "the clear keys are wiped after");
    let _ = other.close().await;
}

async fn sqlx_exec(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        let _ = conn.close().await;
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        let _ = conn.close().await;
    }
}

async fn swapped_ciphertexts_and_a_wrong_master_key_do_not_open(db: Scratch) {
    let store = db.store.clone().with_keyring(Some(Keyring::new(master(1))));
    store.add_key(&new_key(KEYS[0])).await.unwrap();
    store.add_key(&new_key(KEYS[1])).await.unwrap();
    // Another master key: refused, naming the setting, before anything is written.
    let other = db.store.clone().with_keyring(Some(Keyring::new(master(2))));
    let err = other.list_keys().await.unwrap_err();
    assert!(matches!(err, StoreError::Sealed(SealError::WrongMasterKey { id: 1, .. })), "{err}");
    assert!(err.to_string().contains("KEYPOOL_MASTER_KEY"), "{err}");
    assert!(other.add_key(&new_key(KEYS[2])).await.unwrap_err().to_string().contains("KEYPOOL_MASTER_KEY"));
    assert!(other.protect_keys_at_start().await.is_err());
    assert_eq!(store.list_keys().await.unwrap().len(), 2);
    // The two rows' ciphertexts swapped (by swapping the rows' ids): neither opens.
    sqlx_exec(
        &db.url,
        "UPDATE keys SET id = 1000 WHERE id = 1; UPDATE keys SET id = 1 WHERE id = 2; \
         UPDATE keys SET id = 2 WHERE id = 1000;",
    )
    .await;
    let err = store.list_keys().await.unwrap_err();
    assert!(matches!(err, StoreError::Sealed(SealError::Corrupt { id: 1, .. })), "{err}");
}

async fn after_a_rotation_every_key_still_works_through_the_gateway(db: Scratch) {
    let (a, b) = (master(1), master(2));
    let under_a = db.store.clone().with_keyring(Some(Keyring::new(a.clone())));
    for k in KEYS {
        under_a.add_key(&new_key(k)).await.unwrap();
    }
    let token = generate_token();
    db.store.create_token("caller", &hash_token(&token), "kp-c").await.unwrap();
    let sim =
        Simulator::start(SimConfig { keys: KEYS.iter().map(|k| SimKey::new(*k)).collect(), ..SimConfig::default() })
            .await
            .unwrap();
    let config = |keyring: Keyring| {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: sim.base_url(),
            database_url: db.url.clone(),
            sync_interval: Duration::from_millis(50),
            keyring: Some(keyring),
            ..Config::default()
        };
        // Each key in turn: N requests use each of the N keys once.
        config.pool.strategy = keypool::scheduler::Strategy::RoundRobin;
        config
    };
    let client = reqwest::Client::new();
    let chat = |base: String| {
        client
            .post(format!("{base}/chat/completions"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };

    // A server given both keys for the rotation keeps serving while it runs.
    let rolling = keypool::app::start(&config(Keyring { current: b.clone(), old: Some(a.clone()) })).await.unwrap();
    assert_eq!(chat(rolling.base_url()).await.unwrap().status(), 200);
    let rotating = db.store.clone().with_keyring(Some(Keyring { current: b.clone(), old: Some(a.clone()) }));
    let done = rotating.reseal(Reseal::All).await.unwrap();
    assert_eq!((done.from_old, done.from_clear), (3, 0));
    let revision = db.store.revision().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The server re-reads the re-sealed keys (the rotation bumped the revision).
    while rolling.scheduler().snapshot().len() != 3 || db.store.revision().await.unwrap() != revision {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rolling.shutdown().await.unwrap();

    // A server with only the new key opens every key, and each one works.
    let served = keypool::app::start(&config(Keyring::new(b.clone()))).await.unwrap();
    let before: Vec<u64> = KEYS.iter().map(|k| sim.key_stats(k).ok).collect();
    for _ in KEYS {
        let resp = chat(served.base_url()).await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    }
    for (k, before) in KEYS.iter().zip(before) {
        let stats = sim.key_stats(k);
        assert_eq!(stats.unauthorized, 0, "{k}");
        assert!(stats.ok > before, "{k} was not used after the rotation");
    }
    served.shutdown().await.unwrap();
    // The old key alone no longer opens them.
    let err = db.store.clone().with_keyring(Some(Keyring::new(a))).list_keys().await.unwrap_err();
    assert!(err.to_string().contains("KEYPOOL_MASTER_KEY"), "{err}");
}

/// Runs the binary on `db` with `master` as KEYPOOL_MASTER_KEY (None: unset):
/// whether it succeeded, its stdout, its stderr.
fn keypool(dir: &std::path::Path, db: &str, master: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("KEYPOOL_DATABASE_URL", db)
        .env_remove("KEYPOOL_MASTER_KEY_OLD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match master {
        Some(m) => cmd.env("KEYPOOL_MASTER_KEY", m),
        None => cmd.env_remove("KEYPOOL_MASTER_KEY"),
    };
    let mut child = cmd.spawn().unwrap();
    // `serve` must fail at start; one that serves instead is stopped and fails the test.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("keypool {args:?} still running: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_refuses_a_wrong_or_malformed_master_key_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let (ok, a, hint) = keypool(dir.path(), &db, None, &["keys", "gen-master-key"]);
    let a = a.trim().to_owned();
    assert!(ok && a.len() == 44 && hint.contains("KEYPOOL_MASTER_KEY"), "{a} {hint}");
    let (_, b, _) = keypool(dir.path(), &db, None, &["keys", "gen-master-key"]);
    let b = b.trim().to_owned();
    assert_ne!(a, b);

    let (ok, out, err) = keypool(dir.path(), &db, Some(&a), &["keys", "add", KEYS[0], KEYS[1]]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = keypool(dir.path(), &db, Some(&a), &["keys", "add", KEYS[0]]);
    assert!(ok && out.contains("skipped duplicate of key 1"), "{out}");
    let (ok, out, _) = keypool(dir.path(), &db, Some(&a), &["keys", "list", "--json"]);
    assert!(ok && out.contains("sk-…0e1f"), "{out}");

    // Wrong, missing and malformed master keys: refused by the keys commands and by serve.
    let serve = ["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/v1"];
    for master in [Some(b.as_str()), None] {
        for args in [&["keys", "list"][..], &serve[..]] {
            let (ok, _, err) = keypool(dir.path(), &db, master, args);
            assert!(!ok && err.contains("KEYPOOL_MASTER_KEY"), "{args:?} with {master:?}: {err}");
        }
    }
    let malformed = "not-a-master-key-but-a-secret-value";
    for args in [&["keys", "list"][..], &serve[..]] {
        let (ok, _, err) = keypool(dir.path(), &db, Some(malformed), args);
        assert!(!ok && err.contains("KEYPOOL_MASTER_KEY is not a master key"), "{err}");
        assert!(!err.contains(malformed), "the value is echoed: {err}");
    }

    // Rotate from A to B: B opens every key, A no longer does.
    let (ok, out, err) = keypool(dir.path(), &db, Some(&b), &["keys", "rotate-master-key", "--old", &a]);
    assert!(ok && out.contains("re-encrypted 2 key(s)"), "{out}{err}");
    let (ok, out, err) = keypool(dir.path(), &db, Some(&b), &["keys", "list"]);
    assert!(ok && out.contains("sk-…0e1f") && out.contains("sk-…5c2d"), "{out}{err}");
    let (ok, _, err) = keypool(dir.path(), &db, Some(&a), &["keys", "list"]);
    assert!(!ok && err.contains("KEYPOOL_MASTER_KEY"), "{err}");
    let bytes = std::fs::read(dir.path().join("k.db")).unwrap();
    for k in [KEYS[0], KEYS[1]] {
        assert!(!bytes.windows(k.len()).any(|w| w == k.as_bytes()), "{k} in the file");
    }
}
