//! Statistics and retention, on SQLite and on PostgreSQL: the rollups add
//! up exactly what the records say, per key, token and model, by minute,
//! hour and day; key totals are summed from the records' attempts in the
//! same transaction; old records and rollups are pruned and the space
//! given back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scratch::{both, Scratch};
use keypool::records::retention::{prune, Retention};
use keypool::records::rollup::{Buckets, Dimension, Span, Sums};
use keypool::records::{Attempt, Counted, RequestRecord};
use keypool::store::{Backend, NewKey};
use std::time::Duration;

/// Runs the keypool binary on the database `url`; (success, stdout, stderr).
fn keypool(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keypool"))
        .args(args)
        .env("KEYPOOL_DATABASE_URL", url)
        .env_remove("KEYPOOL_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

both!(
    rollups_add_up_what_the_records_say,
    key_totals_are_summed_from_the_attempts_with_the_records,
    a_log_turned_off_still_keeps_totals_and_rollups,
    retention_deletes_old_records_and_rollups_only,
    the_writer_adds_statistics_within_a_second_and_at_its_stop,
);

/// 2026-11-30 00:00:00 UTC, in seconds.
const DAY0: i64 = 1_796_083_200 - 86_400;

fn attempt(key_id: i64, status: u16, reason: &'static str, counted: Counted) -> Attempt {
    Attempt { key_id, status, reason: reason.into(), duration_us: 1_000, counted }
}

fn record(second: i64, token: i64, model: &str, attempts: Vec<Attempt>) -> RequestRecord {
    let ok = attempts.last().is_some_and(|a| a.counted == Counted::Success);
    RequestRecord {
        request_id: format!("req_{second}_{token}_{model}"),
        started_at: second * 1000,
        token_id: Some(token),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some(model.into()),
        status: if ok { 200 } else { 502 },
        error_type: (!ok).then(|| "server_error".into()),
        key_id: attempts.last().map(|a| a.key_id),
        attempts,
        duration_us: 300_000,
        ttfb_us: Some(100_000),
        prompt_tokens: Some(100),
        completion_tokens: Some(20),
        cost_micros: Some(50),
        ..RequestRecord::default()
    }
}

async fn keys(db: &Scratch, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let secret = format!("sk-rollup-{i}-0123456789abcdef");
        match db.store.add_key(&NewKey { secret, ..NewKey::default() }).await.unwrap() {
            keypool::store::AddOutcome::Added(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    ids
}

async fn rollups_add_up_what_the_records_say(db: Scratch) {
    let ok = |k| vec![attempt(k, 200, "ok", Counted::Success)];
    let retried =
        |a, b| vec![attempt(a, 429, "rate_limited", Counted::Failure), attempt(b, 200, "ok", Counted::Success)];
    let records = [
        record(DAY0 + 10, 1, "gpt-4o", ok(1)),
        record(DAY0 + 70, 1, "gpt-4o", retried(1, 2)),
        record(DAY0 + 3_700, 2, "gpt-4o-mini", ok(2)),
        // The next day: a failure.
        record(DAY0 + 86_400 + 5, 2, "gpt-4o", vec![attempt(2, 500, "server_error", Counted::Failure)]),
    ];
    // Written in two batches: the second adds to the rows of the first.
    db.store.insert_requests(&records[..2]).await.unwrap();
    db.store.insert_requests(&records[2..]).await.unwrap();

    let day = db.store.stats_by_subject(Dimension::Model, Span::Day, DAY0, DAY0 + 86_400).await.unwrap();
    let gpt4o = day.iter().find(|s| s.subject == "gpt-4o").unwrap();
    assert_eq!((gpt4o.figures.requests, gpt4o.figures.successes, gpt4o.figures.failures), (2, 2, 0));
    assert_eq!((gpt4o.figures.prompt_tokens, gpt4o.figures.cost_micros), (200, 100));
    assert_eq!(gpt4o.figures.latency[3], 2, "300 ms is in the ≤500 ms bucket");
    assert_eq!(day.len(), 2);

    // Per key, each attempt counts for its key: key 1 has a success and a 429.
    let by_key = db.store.stats_by_subject(Dimension::Key, Span::Hour, DAY0, DAY0 + 2 * 86_400).await.unwrap();
    let k1 = by_key.iter().find(|s| s.subject == "1").unwrap();
    assert_eq!((k1.figures.requests, k1.figures.successes, k1.figures.failures), (2, 1, 1));
    assert_eq!(k1.figures.errors.rate_limited, 1);
    assert_eq!(k1.figures.prompt_tokens, 100, "the usage counts for the key that answered");
    let k2 = by_key.iter().find(|s| s.subject == "2").unwrap();
    assert_eq!((k2.figures.requests, k2.figures.successes, k2.figures.failures), (3, 2, 1));
    assert_eq!(k2.figures.errors.upstream, 1);

    // By minute, summed over tokens: the first day's three minutes.
    let minutes = db.store.stats_by_bucket(Dimension::Token, Span::Minute, None, DAY0, DAY0 + 86_400).await.unwrap();
    let starts: Vec<i64> = minutes.iter().map(|b| b.bucket).collect();
    assert_eq!(starts, vec![DAY0, DAY0 + 60, DAY0 + 3_660]);
    let one = db.store.stats_by_bucket(Dimension::Token, Span::Day, Some("2"), DAY0, DAY0 + 2 * 86_400).await.unwrap();
    assert_eq!(
        one.iter().map(|b| (b.bucket, b.figures.requests)).collect::<Vec<_>>(),
        vec![(DAY0, 1), (DAY0 + 86_400, 1)]
    );
    // Every dimension counts each request: the totals agree.
    for d in Dimension::ALL {
        let all = db.store.stats_by_subject(d, Span::Day, 0, i64::MAX).await.unwrap();
        let requests: u64 = all.iter().map(|s| s.figures.requests).sum();
        let expected = if d == Dimension::Key { 5 } else { 4 };
        assert_eq!(requests, expected, "{d:?}");
    }
}

async fn key_totals_are_summed_from_the_attempts_with_the_records(db: Scratch) {
    let ids = keys(&db, 2).await;
    let (a, b) = (ids[0], ids[1]);
    let records = vec![
        record(
            DAY0,
            1,
            "m",
            vec![attempt(a, 429, "rate_limited", Counted::Failure), attempt(b, 200, "ok", Counted::Success)],
        ),
        // Resent on the same reservation: one request of the key, not two.
        record(
            DAY0 + 1,
            1,
            "m",
            vec![attempt(a, 400, "stream_options_refused", Counted::NotSent), attempt(a, 200, "ok", Counted::Success)],
        ),
        // The caller's own error: a request of the key, neither success nor failure.
        record(DAY0 + 2, 1, "m", vec![attempt(b, 400, "caller_error", Counted::Neither)]),
    ];
    db.store.insert_requests(&records).await.unwrap();
    let keys = db.store.list_keys().await.unwrap();
    let ka = keys.iter().find(|k| k.id == a).unwrap();
    let kb = keys.iter().find(|k| k.id == b).unwrap();
    assert_eq!((ka.requests, ka.successes, ka.failures, ka.spent_micros), (2, 1, 1, 50));
    assert_eq!((kb.requests, kb.successes, kb.failures, kb.spent_micros), (2, 1, 0, 100));
    assert_eq!((kb.prompt_tokens, kb.last_used_at), (200, Some(DAY0 + 2)));
}

async fn a_log_turned_off_still_keeps_totals_and_rollups(db: Scratch) {
    let ids = keys(&db, 1).await;
    let token = db.store.create_token("t", "hash-of-t", "kp-t").await.unwrap();
    let r = record(DAY0, token, "m", vec![attempt(ids[0], 200, "ok", Counted::Success)]);
    let sums = Sums::of(std::slice::from_ref(&r), &Buckets::utc());
    db.store.write_batch(std::slice::from_ref(&r), false, &sums).await.unwrap();
    assert_eq!(db.store.count_requests().await.unwrap(), 0, "no row in the log");
    assert_eq!(db.store.list_keys().await.unwrap()[0].requests, 1);
    assert_eq!(db.store.list_tokens().await.unwrap()[0].usage.requests, 1);
    let day = db.store.stats_by_subject(Dimension::Model, Span::Day, DAY0, DAY0 + 1).await.unwrap();
    assert_eq!(day[0].figures.requests, 1);
}

async fn retention_deletes_old_records_and_rollups_only(db: Scratch) {
    let now = DAY0 + 40 * 86_400;
    // 12,000 records 35 days old (more than one deleting batch), 10 of today.
    let old: Vec<RequestRecord> = (0..12_000).map(|i| record(DAY0 + 5 * 86_400 + i, 1, "old", vec![])).collect();
    let new: Vec<RequestRecord> = (0..10).map(|i| record(now - 100 + i, 1, "new", vec![])).collect();
    for chunk in old.chunks(4_000) {
        db.store.insert_requests(chunk).await.unwrap();
    }
    db.store.insert_requests(&new).await.unwrap();
    let size_before = sqlite_size(&db).await;
    let retention = Retention {
        records: Duration::from_secs(30 * 86_400),
        rollups: Duration::from_secs(400 * 86_400),
        minute_rollups: Duration::from_secs(7 * 86_400),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let gone = prune(&db.store, retention, now * 1000, &stop).await.unwrap();
    assert_eq!(gone.records, 12_000);
    assert_eq!(db.store.count_requests().await.unwrap(), 10);
    let left = db.store.recent_requests(100).await.unwrap();
    assert!(left.iter().all(|r| r.model.as_deref() == Some("new")));
    // Minute rollups of 35 days ago are gone; their hours and days stay.
    let old_minutes = db.store.stats_by_bucket(Dimension::Model, Span::Minute, Some("old"), 0, now).await.unwrap();
    assert!(old_minutes.is_empty(), "{old_minutes:?}");
    let old_days = db.store.stats_by_bucket(Dimension::Model, Span::Day, Some("old"), 0, now).await.unwrap();
    assert_eq!(old_days.iter().map(|b| b.figures.requests).sum::<u64>(), 12_000);
    let new_minutes = db.store.stats_by_bucket(Dimension::Model, Span::Minute, Some("new"), 0, now + 60).await.unwrap();
    assert_eq!(new_minutes.iter().map(|b| b.figures.requests).sum::<u64>(), 10);
    // Again: nothing more to delete.
    assert_eq!(prune(&db.store, retention, now * 1000, &stop).await.unwrap().records, 0);
    if let Some(before) = size_before {
        // SQLite gave the freed pages back to the file system.
        let after = sqlite_size(&db).await.unwrap();
        assert!(after < before, "the file shrank: {before} -> {after} bytes");
        // A file that cannot give space back (made before incremental
        // vacuum, too large to switch at start): a pass still ends.
        {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("PRAGMA auto_vacuum = NONE; VACUUM").execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        db.store.insert_requests(&old[..2_000]).await.unwrap();
        let pass = tokio::time::timeout(Duration::from_secs(20), prune(&db.store, retention, now * 1000, &stop));
        assert_eq!(pass.await.expect("the pass ends").unwrap().records, 2_000);
    }
}

/// The SQLite file's size once its WAL is checkpointed into it; `None` on PostgreSQL.
async fn sqlite_size(db: &Scratch) -> Option<u64> {
    use sqlx::Connection;
    if db.store.backend() != Backend::Sqlite {
        return None;
    }
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    Some(std::fs::metadata(keypool::store::database_path(&db.url)).unwrap().len())
}

/// `keypool stats` reads the rollups: per key with labels, per model, as
/// a table or JSON, for the last hour and day.
#[tokio::test]
async fn the_stats_command_shows_the_last_hour_and_day() {
    let db = Scratch::sqlite().await;
    let id = db
        .store
        .add_key(&NewKey {
            secret: "sk-stats-0123456789abcdef".into(),
            label: Some("team-a".into()),
            ..NewKey::default()
        })
        .await
        .unwrap();
    let keypool::store::AddOutcome::Added(id) = id else { panic!() };
    let now = keypool::store::now_unix();
    let records: Vec<RequestRecord> = (0..3)
        .map(|i| record(now - 30 - i, 1, "gpt-4o", vec![attempt(id, 200, "ok", Counted::Success)]))
        // Two days ago: not in the last day.
        .chain([record(now - 2 * 86_400, 1, "gpt-4o", vec![attempt(id, 200, "ok", Counted::Success)])])
        .collect();
    db.store.insert_requests(&records).await.unwrap();
    let (ok, out, err) = keypool(&db.url, &["stats", "--by", "key", "--last", "24h"]);
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.contains("team-a")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], "3", "three requests in the last day: {row}");
    let (ok, out, err) = keypool(&db.url, &["stats", "--by", "model", "--last", "1h", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["subject"], "gpt-4o");
    assert_eq!(v[0]["requests"], 3);
    assert_eq!(v[0]["cost_micros"], 150);
}

/// `keypool db migrate --to postgres://…` copies a SQLite database whole:
/// keys (with their totals), tokens, the log and the statistics; ids kept,
/// and new rows continue after them. A target that holds data is refused.
#[tokio::test]
async fn db_migrate_copies_a_sqlite_database_into_postgres() {
    let db = Scratch::sqlite().await;
    let ids = keys(&db, 3).await;
    db.store.remove_key(ids[1]).await.unwrap(); // a gap in the ids
                                                // What a server learned about a key: a row that names its key by a foreign key.
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query("INSERT INTO key_state (key_id, health, reason, updated_at) VALUES ($1, 'invalid', 'refused', 1)")
            .bind(ids[0])
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let token = db.store.create_token("app", "hash-of-app", "kp-app").await.unwrap();
    let records: Vec<RequestRecord> = (0..2_500)
        .map(|i| record(DAY0 + i, token, "gpt-4o", vec![attempt(ids[2], 200, "ok", Counted::Success)]))
        .collect();
    db.store.insert_requests(&records).await.unwrap();
    let (to, schema) = Scratch::empty_postgres().await;
    let (ok, _, err) = keypool(&db.url, &["db", "migrate", "--to", &to]);
    assert!(ok, "{err}");
    assert!(err.contains("requests: 2500 row(s) copied"), "{err}");
    assert!(err.contains("key_state: 1 row(s) copied"), "{err}");
    let pg = keypool::store::Store::connect(&to).await.unwrap();
    // Every field (the secret's Debug is redacted: compared on its own).
    let keys_of = |keys: Vec<keypool::store::KeyRecord>| {
        use secrecy::ExposeSecret;
        keys.iter().map(|k| (format!("{k:?}"), k.secret.expose_secret().to_owned())).collect::<Vec<_>>()
    };
    let (a, b) = (db.store.list_keys().await.unwrap(), pg.list_keys().await.unwrap());
    assert_eq!(keys_of(a), keys_of(b), "keys, settings and totals");
    let tokens_of = |t: Vec<keypool::store::TokenRecord>| format!("{t:?}");
    assert_eq!(tokens_of(db.store.list_tokens().await.unwrap()), tokens_of(pg.list_tokens().await.unwrap()));
    assert_eq!(pg.count_requests().await.unwrap(), 2_500);
    assert_eq!(db.store.recent_requests(10).await.unwrap(), pg.recent_requests(10).await.unwrap());
    let stats = |s: keypool::store::Store| async move {
        s.stats_by_subject(Dimension::Key, Span::Minute, 0, i64::MAX).await.unwrap()
    };
    assert_eq!(stats(db.store.clone()).await, stats(pg.clone()).await);
    // New rows take ids after the copied ones.
    let added = pg.add_key(&NewKey { secret: "sk-after-0123456789abcdef".into(), ..NewKey::default() }).await.unwrap();
    assert_eq!(added, keypool::store::AddOutcome::Added(ids[2] + 1));
    // Again into the same database: refused, nothing changed.
    let (ok, _, err) = keypool(&db.url, &["db", "migrate", "--to", &to]);
    assert!(!ok && err.contains("empty database only"), "{err}");
    assert_eq!(pg.count_requests().await.unwrap(), 2_500);
    pg.close().await;
    Scratch::drop_schema(&schema);
}

/// The writer sums statistics and token totals in memory and adds them at
/// most every second: they reach the store within that when traffic
/// stops, and at once at a stop; the key totals go with each batch of
/// records.
async fn the_writer_adds_statistics_within_a_second_and_at_its_stop(db: Scratch) {
    let ids = keys(&db, 1).await;
    let token = db.store.create_token("t", "hash-of-t", "kp-t").await.unwrap();
    let (recorder, writer) = keypool::records::spawn(db.store.clone(), keypool::records::RecordsConfig::default());
    let one = |s| record(s, token, "gpt-4o", vec![attempt(ids[0], 200, "ok", Counted::Success)]);
    let token_requests =
        |store: keypool::store::Store| async move { store.list_tokens().await.unwrap()[0].usage.requests };
    let day = |store: keypool::store::Store| async move {
        let all = store.stats_by_subject(Dimension::Model, Span::Day, 0, i64::MAX).await.unwrap();
        all.first().map_or(0, |s| s.figures.requests)
    };
    for s in 0..3 {
        recorder.record(one(DAY0 + s));
    }
    let started = std::time::Instant::now();
    // The records and their totals come first, with their batch...
    while db.store.count_requests().await.unwrap() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "records never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(db.store.list_keys().await.unwrap()[0].requests, 3);
    assert_eq!(day(db.store.clone()).await, 0, "statistics are summed first, not written with each batch");
    assert_eq!(token_requests(db.store.clone()).await, 0, "so are the token totals");
    // ...the statistics and token totals within a second, together.
    while day(db.store.clone()).await < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "statistics never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(token_requests(db.store.clone()).await, 3);
    // Recorded just before the stop: written by it.
    recorder.record(one(DAY0 + 10));
    writer.stop(tokio::time::Instant::now() + Duration::from_secs(5), Default::default()).await;
    assert_eq!(day(db.store.clone()).await, 4);
    assert_eq!(token_requests(db.store.clone()).await, 4);
    assert_eq!(db.store.count_requests().await.unwrap(), 4);
}
