//! The store's suite, run on SQLite and on PostgreSQL alike: each test body
//! takes a fresh [`Scratch`] database and [`both!`] makes one test per backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scratch::{both, Scratch};
use keypool::config::Config;
use keypool::server::{generate_token, hash_token};
use keypool::store::{
    now_unix_ms, AddOutcome, Backend, Create, KeyChange, NewKey, SavedDim, SavedHealth, SavedKeyState, Store,
    StoreError, UsageDelta,
};

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
