//! The store's suite, run on SQLite and on PostgreSQL alike: each test body
//! takes a fresh [`Scratch`] database and [`both!`] makes one test per backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scratch::{both, Scratch};
use keypool::config::Config;
use keypool::records::rollup::Sums;
use keypool::records::RequestRecord;
use keypool::server::{generate_token, hash_token};
use keypool::store::{
    now_unix_ms, AddOutcome, Backend, Create, KeyChange, LogCursor, LogFilter, LoggedRequest, NewKey, SavedDim,
    SavedHealth, SavedKeyState, Store, StoreError, UsageDelta,
};
use proptest::prelude::*;

both!(
    duplicate_keys_are_reported_not_inserted,
    operator_changes_bump_the_revision_but_usage_flushes_do_not,
    tokens_are_revoked_once,
    token_names_are_unique,
    key_state_is_saved_replaced_and_goes_with_its_key,
    edit_changes_only_what_it_names,
    every_field_of_a_key_survives_the_round_trip,
    usage_adds_up_across_flushes,
    a_gateway_on_it_serves_and_keeps_its_totals_and_key_state,
    record_batches_and_operator_changes_at_once_all_land,
    a_tokens_log_reads_every_page_through_many_batches,
    pruning_the_log_keeps_a_tokens_pages_right,
    a_tokens_page_reaches_back_exactly_as_far_as_it_must,
    pruning_the_newest_rows_leaves_no_run_naming_an_id_used_again,
    pruning_the_newest_rows_cuts_a_runs_list_back,
);

fn key(secret: &str) -> NewKey {
    NewKey { secret: secret.into(), rpm: Some(3), ..NewKey::default() }
}

async fn duplicate_keys_are_reported_not_inserted(db: Scratch) {
    let store = &db.store;
    let a = store.add_key(&key("sk-aaaa")).await.unwrap();
    let b = store.add_key(&key("sk-aaaa")).await.unwrap();
    let c = store.add_key(&key("sk-cccc")).await.unwrap();
    let AddOutcome::Added(id) = a else { panic!("first add must insert") };
    assert_eq!(b, AddOutcome::Duplicate(id));
    assert_eq!(c, AddOutcome::Added(id + 1), "a duplicate consumes no id");
    assert_eq!(store.list_keys().await.unwrap().len(), 2);
}

async fn operator_changes_bump_the_revision_but_usage_flushes_do_not(db: Scratch) {
    let store = &db.store;
    let r0 = store.revision().await.unwrap();
    let AddOutcome::Added(id) = store.add_key(&key("sk-bbbb")).await.unwrap() else { panic!() };
    let r1 = store.revision().await.unwrap();
    assert!(r1 > r0);
    store
        .add_usage(&[UsageDelta { key_id: id, requests: 2, successes: 1, failures: 1, ..Default::default() }])
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), r1);
    let k = &store.list_keys().await.unwrap()[0];
    assert_eq!((k.requests, k.successes, k.failures), (2, 1, 1));
    store.set_key_enabled(id, false).await.unwrap();
    assert!(store.revision().await.unwrap() > r1);
    assert!(matches!(store.remove_key(id + 100).await, Err(StoreError::NotFound { .. })));
}

async fn tokens_are_revoked_once(db: Scratch) {
    let store = &db.store;
    let id = store.create_token("ci", "abc", "kp-12").await.unwrap();
    store.revoke_token(id).await.unwrap();
    let first = store.list_tokens().await.unwrap()[0].revoked_at;
    store.revoke_token(id).await.unwrap();
    assert_eq!(store.list_tokens().await.unwrap()[0].revoked_at, first);
}

async fn key_state_is_saved_replaced_and_goes_with_its_key(db: Scratch) {
    let store = &db.store;
    let AddOutcome::Added(id) = store.add_key(&key("sk-state")).await.unwrap() else { panic!() };
    let r0 = store.revision().await.unwrap();
    let mut state =
        SavedKeyState { key_id: id, health: SavedHealth::Invalid, reason: Some("401".into()), ..Default::default() };
    state.rpm = SavedDim { learned: Some(3), used: 2, used_until: Some(now_unix_ms() + 60_000) };
    let gone = SavedKeyState { key_id: id + 7, ..Default::default() };
    store.save_key_states(&[state.clone(), gone]).await.unwrap();
    assert_eq!(store.load_key_states().await.unwrap(), [state.clone()], "a deleted key's state is skipped");
    state.health = SavedHealth::Active;
    store.save_key_states(&[state.clone()]).await.unwrap();
    assert_eq!(store.load_key_states().await.unwrap(), [state]);
    assert_eq!(store.revision().await.unwrap(), r0, "the server's writes do not look like operator changes");
    store.remove_key(id).await.unwrap();
    assert!(store.load_key_states().await.unwrap().is_empty());
}

async fn edit_changes_only_what_it_names(db: Scratch) {
    let store = &db.store;
    let AddOutcome::Added(id) = store.add_key(&key("sk-edit")).await.unwrap() else { panic!() };
    let change =
        KeyChange { project: Some(Some("proj_1".into())), label: Some(Some("x".into())), ..Default::default() };
    store.edit_key(id, &change).await.unwrap();
    let k = &store.list_keys().await.unwrap()[0];
    assert_eq!((k.rpm, k.label.as_deref(), k.project.as_deref()), (Some(3), Some("x"), Some("proj_1")));
    store.edit_key(id, &KeyChange { label: Some(None), ..Default::default() }).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap()[0].label, None);
    assert!(matches!(store.edit_key(id + 1, &change).await, Err(StoreError::NotFound { .. })));
}

#[tokio::test]
async fn a_missing_database_is_refused_when_asked_not_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.db");
    let err = Store::open(&format!("sqlite://{}", path.display()), Create::Never).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(!path.exists());
    let err = Store::connect(&format!("sqlite://{}/no/such/dir/k.db", dir.path().display())).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

async fn token_names_are_unique(db: Scratch) {
    let store = &db.store;
    let id = store.create_token("ci", "h1", "kp-1").await.unwrap();
    store.revoke_token(id).await.unwrap();
    let err = store.create_token("ci", "h2", "kp-2").await.unwrap_err();
    assert!(matches!(err, StoreError::TokenNameTaken(ref n) if n == "ci"), "{err}");
    assert!(matches!(store.revoke_token(id + 9).await, Err(StoreError::NotFound { .. })));
}

async fn every_field_of_a_key_survives_the_round_trip(db: Scratch) {
    let store = &db.store;
    let new = NewKey {
        secret: "sk-all-fields".into(),
        label: Some("trial 一".into()),
        rpm: Some(3),
        tpm: Some(40_000),
        rpd: Some(200),
        max_inflight: Some(2),
        weight: Some(5),
        budget_micros: Some(5_000_000),
        expires_at: Some(1_900_000_000),
        organization: Some("org-1".into()),
        project: Some("proj_1".into()),
        upstream: Some("relay".into()),
    };
    let AddOutcome::Added(id) = store.add_key(&new).await.unwrap() else { panic!() };
    let k = &store.list_keys().await.unwrap()[0];
    use secrecy::ExposeSecret;
    assert_eq!((k.id, k.secret.expose_secret()), (id, "sk-all-fields"));
    assert_eq!((k.label.as_deref(), k.rpm, k.tpm, k.rpd), (Some("trial 一"), Some(3), Some(40_000), Some(200)));
    assert_eq!(
        (k.max_inflight, k.weight, k.budget_micros, k.expires_at),
        (Some(2), Some(5), Some(5_000_000), Some(1_900_000_000))
    );
    assert_eq!((k.organization.as_deref(), k.project.as_deref()), (Some("org-1"), Some("proj_1")));
    assert!(k.enabled && k.created_at > 0 && k.last_used_at.is_none());
    assert_eq!(k.upstream.as_deref(), Some("relay"));
    store.set_key_enabled(id, false).await.unwrap();
    assert!(!store.list_keys().await.unwrap()[0].enabled);
    // Moved to another upstream, then back to the default (none named); a
    // move is a change the running servers pick up.
    let before = store.revision().await.unwrap();
    let moved = keypool::store::KeyChange { upstream: Some(Some("direct".into())), ..Default::default() };
    store.edit_key(id, &moved).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap()[0].upstream.as_deref(), Some("direct"));
    assert!(store.revision().await.unwrap() > before);
    store.edit_key(id, &keypool::store::KeyChange { upstream: Some(None), ..Default::default() }).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap()[0].upstream, None);
}

async fn usage_adds_up_across_flushes(db: Scratch) {
    let store = &db.store;
    let AddOutcome::Added(a) = store.add_key(&key("sk-use-a")).await.unwrap() else { panic!() };
    let AddOutcome::Added(b) = store.add_key(&key("sk-use-b")).await.unwrap() else { panic!() };
    let d = |key_id, n: u64, at| UsageDelta {
        key_id,
        requests: n,
        successes: n,
        prompt_tokens: 10 * n,
        completion_tokens: 20 * n,
        spent_micros: 7 * n,
        last_used_at: at,
        ..Default::default()
    };
    store.add_usage(&[d(a, 1, Some(100)), d(b, 2, Some(200))]).await.unwrap();
    store.add_usage(&[d(a, 3, None), d(b + 50, 1, Some(300))]).await.unwrap();
    let keys = store.list_keys().await.unwrap();
    let got: Vec<_> = keys
        .iter()
        .map(|k| (k.requests, k.prompt_tokens, k.completion_tokens, k.spent_micros, k.last_used_at))
        .collect();
    assert_eq!(got, [(4, 40, 80, 28, Some(100)), (2, 20, 40, 14, Some(200))]);
}

/// Which backend a scratch database is on, and an unknown URL is refused by name.
#[tokio::test]
async fn the_url_chooses_the_backend() {
    assert_eq!(Scratch::sqlite().await.store.backend(), Backend::Sqlite);
    assert_eq!(Scratch::postgres().await.store.backend(), Backend::Postgres);
    let err = Store::connect("mysql://root:pw@127.0.0.1/test").await.unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");
}

/// A PostgreSQL that cannot be reached is named, password masked.
#[tokio::test]
async fn an_unreachable_postgres_is_named_without_its_password() {
    // Port 1 on loopback: nothing listens there.
    let err = Store::connect("postgres://kp:secret-pw@127.0.0.1:1/test?connect_timeout=2").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1") && !text.contains("secret-pw"), "{text}");
}

/// The whole server on each backend: requests are served, the usage
/// totals and the learned key state reach the database, and a second
/// gateway on the same database starts from them.
async fn a_gateway_on_it_serves_and_keeps_its_totals_and_key_state(db: Scratch) {
    let sim = keypool_sim::Simulator::start(keypool_sim::SimConfig { accept_any_key: true, ..Default::default() })
        .await
        .unwrap();
    let unlimited = NewKey { secret: "sk-served-0123456789".into(), ..NewKey::default() };
    let AddOutcome::Added(id) = db.store.add_key(&unlimited).await.unwrap() else { panic!() };
    let token = generate_token();
    db.store.create_token("t", &hash_token(&token), "kp-t").await.unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: sim.base_url(),
        database_url: db.url.clone(),
        sync_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let gateway = keypool::app::start(&config).await.unwrap();
    let client = reqwest::Client::new();
    let chat = |base: String| {
        let request = client.post(format!("{base}/chat/completions")).bearer_auth(&token).json(&common::chat("hi"));
        async move { request.send().await.unwrap().status() }
    };
    for _ in 0..3 {
        assert_eq!(chat(gateway.base_url()).await, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let k = db.store.list_keys().await.unwrap().remove(0);
        let state = db.store.load_key_states().await.unwrap();
        if k.requests == 3 && state.iter().any(|s| s.key_id == id && s.rpm.used > 0) {
            assert_eq!(k.successes, 3);
            assert!(k.prompt_tokens > 0 && k.last_used_at.is_some(), "{k:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "totals and state written: {k:?} {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.shutdown().await.unwrap();
    // Restarted on the same database: the totals carry on.
    let gateway = keypool::app::start(&config).await.unwrap();
    assert_eq!(chat(gateway.base_url()).await, 200);
    gateway.shutdown().await.unwrap();
    assert_eq!(db.store.list_keys().await.unwrap()[0].requests, 4);
}

/// Commands that create nothing leave a PostgreSQL database without
/// keypool's tables as it was, and say so.
#[tokio::test]
async fn a_postgres_database_without_our_tables_is_missing_to_commands_that_create_none() {
    let (url, schema) = Scratch::empty_postgres().await;
    let err = Store::open(&url, Create::Never).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    let store = Store::open(&url, Create::IfMissing).await.unwrap();
    assert!(store.list_keys().await.unwrap().is_empty());
    store.close().await;
    Store::open(&url, Create::Never).await.unwrap().close().await;
    Scratch::drop_schema(&schema);
}

/// On SQLite the record writer's batches and the key state go through a
/// connection of their own (its page cache stays warm), beside the pool
/// every other change uses: written at the same time, both wait their turn
/// (the busy timeout) and every write is seen by every reader.
async fn record_batches_and_operator_changes_at_once_all_land(db: Scratch) {
    let token = db.store.create_token("busy", &hash_token(&generate_token()), "kp-b").await.unwrap();
    let batches = async {
        for b in 0..20i64 {
            let records: Vec<keypool::records::RequestRecord> = (0..50)
                .map(|i| keypool::records::RequestRecord {
                    request_id: format!("r-{b}-{i}"),
                    started_at: 1_700_000_000_000 + b * 1000 + i,
                    token_id: Some(token),
                    status: 200,
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    ..Default::default()
                })
                .collect();
            db.store.insert_requests(&records).await.unwrap();
        }
    };
    let changes = async {
        for k in 0..20 {
            let added = db.store.add_key(&key(&format!("sk-at-once-{k:02}-0123456789"))).await.unwrap();
            let AddOutcome::Added(id) = added else { panic!("{added:?}") };
            let state = SavedKeyState { key_id: id, ..SavedKeyState::default() };
            db.store.save_key_states(&[state]).await.unwrap();
        }
    };
    tokio::join!(batches, changes);
    assert_eq!(db.store.count_requests().await.unwrap(), 20 * 50);
    assert_eq!(db.store.list_keys().await.unwrap().len(), 20);
    assert_eq!(db.store.load_key_states().await.unwrap().len(), 20);
    let usage = db.store.list_tokens().await.unwrap().into_iter().find(|t| t.id == token).unwrap().usage;
    assert_eq!(usage.requests, 20 * 50, "the token's totals, from the other connection");
}

// The request log read a page at a time. On SQLite a token's pages go
// through `requests_by_token` (migration 0015), a map of the writer's
// batches; every other filter, and PostgreSQL, through the indexes. Each
// test checks the pages against the stored rows filtered here.

/// A record of `token`, started at `started_at` (Unix ms).
fn logged(token: Option<i64>, started_at: i64, status: u16, model: &str) -> RequestRecord {
    RequestRecord {
        request_id: format!("req-{started_at}-{token:?}"),
        started_at,
        token_id: token,
        status,
        model: Some(model.into()),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        ..RequestRecord::default()
    }
}

/// Every row the log holds, newest first (no filter: the plain query).
async fn whole_log(store: &Store) -> Vec<LoggedRequest> {
    let all = store.request_page(&LogFilter::default(), None, u32::MAX).await.unwrap();
    assert!(all.windows(2).all(|w| (w[0].started_at, w[0].id) > (w[1].started_at, w[1].id)), "newest first");
    all
}

/// The rows of `all` (newest first) that `f` selects.
fn selected(all: &[LoggedRequest], f: &LogFilter) -> Vec<i64> {
    all.iter()
        .filter(|r| {
            f.token_id.is_none_or(|t| r.token_id == Some(t))
                && f.key_id.is_none_or(|k| r.key_id == Some(k))
                && f.status.is_none_or(|s| r.status == s)
                && f.model.as_ref().is_none_or(|m| r.model.as_ref() == Some(m))
                && f.error_type.as_ref().is_none_or(|e| r.error_type.as_ref() == Some(e))
                && f.request_id.as_ref().is_none_or(|id| &r.request_id == id)
                && f.from_ms.is_none_or(|from| r.started_at >= from)
                && f.to_ms.is_none_or(|to| r.started_at < to)
        })
        .map(|r| r.id)
        .collect()
}

/// The ids of every page of `filter`, `limit` rows a page, in order; each
/// page full but the last.
async fn paged(store: &Store, filter: &LogFilter, limit: u32) -> Vec<i64> {
    let (mut ids, mut cursor) = (Vec::new(), None);
    loop {
        let page = store.request_page(filter, cursor, limit).await.unwrap();
        assert!(page.len() <= limit as usize);
        ids.extend(page.iter().map(|r| r.id));
        match page.last() {
            Some(last) if page.len() == limit as usize => {
                cursor = Some(LogCursor { started_at: last.started_at, id: last.id });
            }
            _ => return ids,
        }
    }
}

/// Three hundred batches (more runs of a token than the query reads at
/// once), each with rows of two tokens and none, their starts out of order
/// across batches: every page of a token's log, alone and with other
/// filters, holds what the whole log filtered here holds.
async fn a_tokens_log_reads_every_page_through_many_batches(db: Scratch) {
    for b in 0..300i64 {
        let base = 1_700_000_000_000 + b * 10;
        // Every 7th batch holds a request that started long before the
        // batches around it (a slow one ending late).
        let late = if b % 7 == 6 { base - 2_000 } else { base };
        let status = if b == 3 { 500 } else { 200 };
        let batch = [
            logged(Some(2), base + 1, 200, "b"),
            logged(Some(1), late, status, "a"),
            logged(None, base + 2, 200, "a"),
            logged(Some(1), base + 3, 200, "b"),
            logged(Some(2), base, 429, "a"),
        ];
        db.store.insert_requests(&batch).await.unwrap();
    }
    let all = whole_log(&db.store).await;
    assert_eq!(all.len(), 1500);
    let t1 = LogFilter { token_id: Some(1), ..LogFilter::default() };
    let filters = [
        t1.clone(),
        LogFilter { token_id: Some(2), ..LogFilter::default() },
        LogFilter { token_id: Some(3), ..LogFilter::default() },
        // One row, in the oldest runs: every run is read to find it.
        LogFilter { status: Some(500), ..t1.clone() },
        LogFilter { model: Some("b".into()), from_ms: Some(1_700_000_001_000), ..t1.clone() },
        LogFilter { to_ms: Some(1_700_000_002_000), ..t1.clone() },
        LogFilter { from_ms: Some(1_700_000_000_500), to_ms: Some(1_700_000_000_900), ..t1.clone() },
        LogFilter { request_id: Some("req-1700000000003-Some(1)".into()), ..t1 },
    ];
    for filter in &filters {
        let want = selected(&all, filter);
        for limit in [1, 7, 50, 1000] {
            assert_eq!(paged(&db.store, filter, limit).await, want, "{filter:?}, {limit} a page");
        }
    }
}

/// The edges of where a token's page stops reading older batches (SQLite
/// reads the newest two runs first): a row that started at the page's
/// `from_ms` exactly, and a row one millisecond newer than the page's
/// oldest, each alone in a batch older than the page's other rows.
async fn a_tokens_page_reaches_back_exactly_as_far_as_it_must(db: Scratch) {
    for (token, at) in [(1, 100), (1, 99), (1, 150), (2, 300)] {
        db.store.insert_requests(&[logged(Some(token), at, 200, "m")]).await.unwrap();
    }
    let t1 = LogFilter { token_id: Some(1), ..LogFilter::default() };
    let starts = |page: Vec<LoggedRequest>| page.iter().map(|r| r.started_at).collect::<Vec<_>>();
    assert_eq!(starts(db.store.request_page(&t1, None, 2).await.unwrap()), [150, 100]);
    assert_eq!(starts(db.store.request_page(&t1, None, 0).await.unwrap()), Vec::<i64>::new());
    let from = LogFilter { from_ms: Some(100), ..t1.clone() };
    assert_eq!(starts(db.store.request_page(&from, None, 5).await.unwrap()), [150, 100]);
    let to = LogFilter { to_ms: Some(100), ..t1.clone() };
    assert_eq!(starts(db.store.request_page(&to, None, 5).await.unwrap()), [99]);
    let after = LogCursor { started_at: 150, id: 0 };
    assert_eq!(starts(db.store.request_page(&t1, Some(after), 1).await.unwrap()), [100]);
}

/// SQLite gives a new row the largest id left plus one: when retention
/// deletes the rows with the largest ids (requests that started long
/// before they ended, and nothing written since), the next batch reuses
/// those ids. The runs that named them are cut back or dropped, so the
/// batch is written and each page holds exactly its rows.
/// Each of `tokens`' pages, 1 and 5 rows at a time, holds what filtering
/// `all` (the whole log) for it selects.
async fn tokens_page_as_selected(store: &Store, all: &[LoggedRequest], tokens: &[i64]) {
    for &token in tokens {
        let filter = LogFilter { token_id: Some(token), ..LogFilter::default() };
        for limit in [1, 5] {
            assert_eq!(paged(store, &filter, limit).await, selected(all, &filter), "token {token}, {limit} a page");
        }
    }
}

/// The same for a run that lists its ids (others' rows between them,
/// migration 0016): its ids past the largest left are cut from the list,
/// so the row that later takes one of them is not found twice.
async fn pruning_the_newest_rows_cuts_a_runs_list_back(db: Scratch) {
    let (t1, t2) = (Some(1), Some(2));
    let batch = [
        logged(t1, 1_500, 200, "m"),
        logged(t2, 1_501, 200, "m"),
        logged(t2, 1_502, 200, "m"),
        logged(t2, 1_503, 200, "m"),
        logged(t1, 10, 200, "m"),
    ];
    db.store.insert_requests(&batch).await.unwrap();
    if let Some(pool) = db.store.sqlite_pool() {
        let ids: Option<String> =
            sqlx::query_scalar("SELECT ids FROM requests_by_token WHERE token_id = 1").fetch_one(pool).await.unwrap();
        assert_eq!(ids.as_deref(), Some("[0,4]"), "two of five ids: listed");
    }
    assert_eq!(db.store.prune_requests(500, 1_000).await.unwrap(), 1);
    if let Some(pool) = db.store.sqlite_pool() {
        let run: (i64, Option<String>) =
            sqlx::query_as("SELECT last_id, ids FROM requests_by_token WHERE token_id = 1")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(run.1.as_deref(), Some("[0]"), "cut back to the id left");
    }
    // The next row takes the pruned row's id.
    db.store.insert_requests(&[logged(t1, 2_000, 200, "m")]).await.unwrap();
    let all = whole_log(&db.store).await;
    assert_eq!(all.iter().map(|r| r.started_at).collect::<Vec<_>>(), [2_000, 1_503, 1_502, 1_501, 1_500]);
    tokens_page_as_selected(&db.store, &all, &[1, 2]).await;
}

async fn pruning_the_newest_rows_leaves_no_run_naming_an_id_used_again(db: Scratch) {
    db.store.insert_requests(&[logged(Some(1), 1_000, 200, "m")]).await.unwrap();
    // One run of token 1 across a row that stays and one that goes.
    let batch = [logged(Some(1), 1_500, 200, "m"), logged(Some(1), 10, 200, "m"), logged(Some(2), 10, 200, "m")];
    db.store.insert_requests(&batch).await.unwrap();
    assert_eq!(db.store.prune_requests(500, 1_000).await.unwrap(), 2);
    db.store.insert_requests(&[logged(Some(1), 2_000, 200, "m"), logged(Some(2), 2_001, 200, "m")]).await.unwrap();
    let all = whole_log(&db.store).await;
    assert_eq!(all.iter().map(|r| r.started_at).collect::<Vec<_>>(), [2_001, 2_000, 1_500, 1_000]);
    tokens_page_as_selected(&db.store, &all, &[1, 2]).await;
}

/// Pruning the oldest records drops the token's runs that hold nothing now
/// (SQLite), and the pages still hold what is left.
async fn pruning_the_log_keeps_a_tokens_pages_right(db: Scratch) {
    for b in 0..40i64 {
        let batch: Vec<RequestRecord> =
            (0..6).map(|i| logged(Some(1 + i % 3), 1_000_000 + b * 100 + i, 200, "m")).collect();
        db.store.insert_requests(&batch).await.unwrap();
    }
    let filter = LogFilter { token_id: Some(2), ..LogFilter::default() };
    // Fewer than asked for: the pass's last call.
    assert_eq!(db.store.prune_requests(1_000_000 + 20 * 100, 1_000).await.unwrap(), 120);
    let all = whole_log(&db.store).await;
    assert_eq!(all.len(), 120);
    assert_eq!(paged(&db.store, &filter, 3).await, selected(&all, &filter));
    assert_eq!(db.store.prune_requests(i64::MAX, 1_000).await.unwrap(), 120);
    assert_eq!(paged(&db.store, &filter, 3).await, Vec::<i64>::new());
    if let Some(pool) = db.store.sqlite_pool() {
        let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests_by_token").fetch_one(pool).await.unwrap();
        assert_eq!(runs, 0, "no run is left once its rows are gone");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random batches of random tokens (or none), starts, statuses and
    /// models, written one after another, the starts moving on from batch
    /// to batch with some left behind (requests that ended late); after
    /// each, random filters read page by page: a token's pages on SQLite
    /// hold exactly the rows of the whole log the filter selects, in order.
    #[test]
    fn a_tokens_pages_hold_what_the_filter_selects(
        batches in prop::collection::vec(
            (prop::collection::vec((0..4i64, 0..20i64, 0..3usize, 0..2usize), 0..10), 0..4usize),
            1..9,
        ),
        queries in prop::collection::vec(
            (1..4i64, 1..6u32, prop::option::of(0..60i64), prop::option::of(0..60i64),
             prop::option::of(0..3usize), prop::option::of(0..2usize)),
            1..6,
        ),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = Scratch::sqlite().await;
            // Another process on the same file (or this one restarted).
            let other = Store::connect(&db.url).await.unwrap();
            const STATUS: [u16; 3] = [200, 429, 500];
            const MODEL: [&str; 2] = ["a", "b"];
            for (b, (batch, how)) in (0i64..).zip(&batches) {
                let records: Vec<RequestRecord> = batch
                    .iter()
                    .map(|&(t, at, s, m)| logged((t > 0).then_some(t), b * 5 + at, STATUS[s], MODEL[m]))
                    .collect();
                // Mapped with the batch (statistics written with it), or left
                // in the log's tail, by either store.
                let store = if how % 2 == 0 { &db.store } else { &other };
                match how / 2 {
                    0 => store.insert_requests(&records).await.unwrap(),
                    _ => store.write_batch(&records, true, &Sums::default()).await.unwrap(),
                }
                let all = whole_log(&db.store).await;
                for &(token, limit, from, to, status, model) in &queries {
                    let filter = LogFilter {
                        token_id: Some(token),
                        from_ms: from,
                        to_ms: to,
                        status: status.map(|s| i64::from(STATUS[s])),
                        model: model.map(|m| MODEL[m].to_owned()),
                        ..LogFilter::default()
                    };
                    prop_assert_eq!(paged(&db.store, &filter, limit).await, selected(&all, &filter), "{:?}", filter);
                }
            }
            Ok(())
        })?;
    }
}

/// The map's mark and its runs as (token, first id, last id, ids).
async fn map_of(pool: &sqlx::SqlitePool) -> (i64, Vec<(i64, i64, i64, Option<String>)>) {
    let mark = sqlx::query_scalar("SELECT last_id FROM requests_by_token_mark").fetch_one(pool).await.unwrap();
    let runs =
        sqlx::query_as("SELECT token_id, first_id, last_id, ids FROM requests_by_token ORDER BY last_id, token_id")
            .fetch_all(pool)
            .await
            .unwrap();
    (mark, runs)
}

/// SQLite maps the log by token with the statistics (migration 0017), not
/// with every batch: rows written without them stay in the log's tail,
/// past the mark, where a token's pages find them; the next write with
/// statistics maps them all at once, one run per token. Another store on
/// the file (another process, or this one restarted) knows none of the
/// first's unmapped rows and reads them back from the log.
#[tokio::test]
async fn rows_not_mapped_yet_are_paged_from_the_tail_and_mapped_with_the_statistics() {
    let db = Scratch::sqlite().await;
    let pool = db.store.sqlite_pool().unwrap();
    let later = Sums::default();
    db.store.insert_requests(&[logged(Some(1), 100, 200, "m")]).await.unwrap();
    assert_eq!(map_of(pool).await, (1, vec![(1, 1, 1, None)]));
    // Two batches without statistics: the map and its mark stay.
    db.store
        .write_batch(&[logged(Some(1), 200, 200, "m"), logged(Some(2), 210, 200, "m")], true, &later)
        .await
        .unwrap();
    let batch = [logged(None, 300, 200, "m"), logged(Some(1), 305, 200, "m"), logged(None, 306, 200, "m")];
    db.store.write_batch(&[&batch[..], &[logged(Some(2), 310, 200, "m")]].concat(), true, &later).await.unwrap();
    assert_eq!(map_of(pool).await, (1, vec![(1, 1, 1, None)]));
    let all = whole_log(&db.store).await;
    assert_eq!(all.len(), 7);
    tokens_page_as_selected(&db.store, &all, &[1, 2, 3]).await;
    // Statistics alone (no record): the rows of both batches, one run a token.
    let mut sums = Sums::of(&[logged(Some(1), 400, 200, "m")], &keypool::records::rollup::Buckets::utc());
    db.store.write_batch(&[], false, &sums).await.unwrap();
    // Token 2's two rows of five ids are listed; token 1's two of four are a range.
    assert_eq!(map_of(pool).await, (7, vec![(1, 1, 1, None), (1, 2, 5, None), (2, 3, 7, Some("[0,4]".into()))]));
    tokens_page_as_selected(&db.store, &all, &[1, 2]).await;

    // Another store writes a row and leaves it unmapped, then the first
    // store a row: the first store's next mapping reads them back, with its
    // own batch (its memory lacks the other's row).
    let other = Store::connect(&db.url).await.unwrap();
    other.write_batch(&[logged(Some(3), 500, 200, "m")], true, &later).await.unwrap();
    db.store.write_batch(&[logged(Some(3), 510, 200, "m")], true, &later).await.unwrap();
    let all = whole_log(&db.store).await;
    tokens_page_as_selected(&db.store, &all, &[1, 2, 3]).await;
    sums.add(&Sums::of(&[logged(Some(3), 530, 200, "m")], &keypool::records::rollup::Buckets::utc()));
    db.store.write_batch(&[logged(Some(3), 530, 200, "m")], true, &sums).await.unwrap();
    let (mark, runs) = map_of(pool).await;
    assert_eq!((mark, &runs[3..]), (10, &[(3, 8, 10, None)][..]));
    // And the other store, whose row the first mapped, maps only what came after.
    other.write_batch(&[logged(Some(1), 520, 200, "m")], true, &later).await.unwrap();
    other.insert_requests(&[logged(Some(2), 600, 200, "m")]).await.unwrap();
    assert_eq!(map_of(pool).await, (12, [&runs[..], &[(1, 11, 11, None), (2, 12, 12, None)]].concat()));
    let all = whole_log(&db.store).await;
    assert_eq!(all.len(), 12);
    tokens_page_as_selected(&db.store, &all, &[1, 2, 3]).await;
}

/// Retention deleting the newest rows, mapped and not yet mapped: the
/// mark goes back with them, and the rows that take their ids again are
/// mapped once, as theirs.
#[tokio::test]
async fn pruning_rows_not_mapped_yet_takes_the_mark_back() {
    let db = Scratch::sqlite().await;
    let pool = db.store.sqlite_pool().unwrap();
    let later = Sums::default();
    let batch = [logged(Some(1), 1_000, 200, "m"), logged(Some(1), 1_500, 200, "m")];
    db.store
        .insert_requests(&[&batch[..], &[logged(Some(2), 10, 200, "m"), logged(Some(1), 20, 200, "m")]].concat())
        .await
        .unwrap();
    db.store.write_batch(&[logged(Some(2), 30, 200, "m")], true, &later).await.unwrap();
    assert_eq!(map_of(pool).await, (4, vec![(2, 3, 3, None), (1, 1, 4, None)]));
    assert_eq!(db.store.prune_requests(500, 1_000).await.unwrap(), 3);
    assert_eq!(map_of(pool).await, (2, vec![(1, 1, 2, None)]), "cut back to the largest id left");
    db.store
        .write_batch(&[logged(Some(1), 2_000, 200, "m"), logged(Some(2), 2_001, 200, "m")], true, &later)
        .await
        .unwrap();
    let all = whole_log(&db.store).await;
    assert_eq!(all.iter().map(|r| r.started_at).collect::<Vec<_>>(), [2_001, 2_000, 1_500, 1_000]);
    tokens_page_as_selected(&db.store, &all, &[1, 2]).await;
    db.store.insert_requests(&[logged(Some(2), 2_002, 200, "m")]).await.unwrap();
    assert_eq!(map_of(pool).await, (5, vec![(1, 1, 2, None), (1, 3, 3, None), (2, 4, 5, None)]));
    let all = whole_log(&db.store).await;
    tokens_page_as_selected(&db.store, &all, &[1, 2]).await;
}

/// Another process prunes the newest rows, one this store wrote and
/// kept unmapped, and writes a row that takes the pruned id: the log's
/// largest id and the mark are what this store last saw, but the mark's
/// generation is not, so its mapping reads the log back and maps the new
/// row as the other token's.
#[tokio::test]
async fn a_prune_by_another_process_invalidates_the_rows_kept_unmapped() {
    let db = Scratch::sqlite().await;
    let pool = db.store.sqlite_pool().unwrap();
    let later = Sums::default();
    db.store.insert_requests(&[logged(Some(1), 1_000, 200, "m")]).await.unwrap();
    db.store.write_batch(&[logged(Some(1), 10, 200, "m")], true, &later).await.unwrap();
    let other = Store::connect(&db.url).await.unwrap();
    assert_eq!(other.prune_requests(500, 1_000).await.unwrap(), 1);
    other.write_batch(&[logged(Some(2), 2_000, 200, "m")], true, &later).await.unwrap();
    let sums = Sums::of(&[logged(Some(2), 2_000, 200, "m")], &keypool::records::rollup::Buckets::utc());
    db.store.write_batch(&[], false, &sums).await.unwrap();
    assert_eq!(map_of(pool).await, (2, vec![(1, 1, 1, None), (2, 2, 2, None)]));
    let all = whole_log(&db.store).await;
    tokens_page_as_selected(&db.store, &all, &[1, 2]).await;
}

/// A SQLite database at `url` migrated up to (not including) `version`,
/// its log holding these (id, token, started_at) rows; the pool stays open
/// for more.
async fn log_before(url: &str, version: i64, rows: &[(i64, i64, i64)]) -> sqlx::SqlitePool {
    let dir_of_migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut before = sqlx::migrate::Migrator::new(dir_of_migrations).await.unwrap();
    let kept: Vec<_> = before.migrations.iter().filter(|m| m.version < version).cloned().collect();
    before.migrations = kept.into();
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    before.run(&pool).await.unwrap();
    for &(id, token, at) in rows {
        sqlx::query(
            "INSERT INTO requests (id, request_id, started_at, token_id, method, path, stream, status,
               attempts, attempt_log, queue_wait_us, duration_us, usage_estimated, cancelled)
             VALUES ($1, 'r', $2, $3, 'POST', '/v1/chat/completions', 0, 200, 1, '[]', 0, 1, 0, 0)",
        )
        .bind(id)
        .bind(at)
        .bind(token)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool
}

/// A log written before migration 0015 (one index entry per row) is mapped
/// by it: each row its own run, and a token's pages as before.
#[tokio::test]
async fn the_migration_maps_a_log_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    // Starts out of order across ids: the bound is the running maximum.
    let rows = [(1, 1, 500), (2, 2, 100), (3, 1, 300), (4, 1, 900), (5, 2, 50), (6, 1, 700)];
    log_before(&url, 15, &rows).await.close().await;
    let store = Store::connect(&url).await.unwrap();
    let pool = store.sqlite_pool().unwrap();
    let runs: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT token_id, last_id, first_id, oldest_ms, bound_ms FROM requests_by_token ORDER BY token_id, last_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        runs,
        [
            (1, 1, 1, 500, 500),
            (1, 3, 3, 300, 500),
            (1, 4, 4, 900, 900),
            (1, 6, 6, 700, 900),
            (2, 2, 2, 100, 100),
            (2, 5, 5, 50, 100)
        ]
    );
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(!indexes.iter().any(|n| n == "requests_token"), "{indexes:?}");
    let ids: Vec<Option<String>> = sqlx::query_scalar("SELECT ids FROM requests_by_token ORDER BY token_id, last_id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(ids.iter().all(Option::is_none), "each row its own run, a range to migration 0016: {ids:?}");
    let t1 = LogFilter { token_id: Some(1), ..LogFilter::default() };
    assert_eq!(paged(&store, &t1, 1).await, [4, 6, 1, 3]);
    // New batches go on after the mapped rows.
    store.insert_requests(&[logged(Some(1), 800, 200, "m"), logged(Some(2), 60, 200, "m")]).await.unwrap();
    assert_eq!(paged(&store, &t1, 2).await, [4, 7, 6, 1, 3]);
}

/// A log mapped in runs of ids before migration 0016 (a batch sorted by
/// token, a run's range holding other tokens' rows too after pruning and
/// reuse) is listed by it where others' rows are most of a run's range:
/// each run's ids of its own token only; a denser run stays a range.
#[tokio::test]
async fn migration_0016_lists_the_ids_of_runs_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    {
        let rows = [
            (1, 1, 500),
            (2, 2, 100),
            (3, 1, 300),
            (4, 1, 900),
            (5, 2, 50),
            (6, 1, 700),
            (7, 3, 60),
            (8, 1, 800),
            (9, 2, 70),
        ];
        let pool = log_before(&url, 16, &rows).await;
        // Runs as migration 0015's writer left them: ranges of ids.
        for (token, last, first, oldest, bound) in [(1, 8, 1, 300, 900), (2, 9, 2, 50, 900), (3, 7, 7, 60, 900)] {
            sqlx::query(
                "INSERT INTO requests_by_token (token_id, last_id, first_id, oldest_ms, bound_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token)
            .bind(last)
            .bind(first)
            .bind(oldest)
            .bind(bound)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = Store::connect(&url).await.unwrap();
    let pool = store.sqlite_pool().unwrap();
    let runs: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT token_id, ids FROM requests_by_token ORDER BY token_id").fetch_all(pool).await.unwrap();
    let list = |l: &str| Some(l.to_owned());
    // Token 1 holds five of its eight ids, token 2 three of eight.
    assert_eq!(runs, [(1, None), (2, list("[0,3,7]")), (3, None)]);
    for (token, rows) in [(1, vec![4, 8, 6, 1, 3]), (2, vec![2, 9, 5]), (3, vec![7])] {
        let filter = LogFilter { token_id: Some(token), ..LogFilter::default() };
        assert_eq!(paged(&store, &filter, 2).await, rows, "token {token}");
    }
    // A new batch, its tokens interleaved (each at least half its range).
    let batch = [logged(Some(2), 950, 200, "m"), logged(Some(1), 960, 200, "m"), logged(Some(2), 970, 200, "m")];
    store.insert_requests(&batch).await.unwrap();
    let newest: Vec<(i64, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT token_id, first_id, last_id, ids FROM requests_by_token WHERE last_id > 9 ORDER BY token_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(newest, [(1, 11, 11, None), (2, 10, 12, None)]);
    let t2 = LogFilter { token_id: Some(2), ..LogFilter::default() };
    assert_eq!(paged(&store, &t2, 2).await, [12, 10, 2, 9, 5]);
}
