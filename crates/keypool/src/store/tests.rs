#![allow(clippy::unwrap_used)]
use super::*;

async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (dir, Store::connect(&url).await.unwrap())
}

fn key(secret: &str) -> NewKey {
    NewKey { secret: secret.into(), rpm: Some(3), ..NewKey::default() }
}

#[tokio::test]
async fn duplicate_keys_are_reported_not_inserted() {
    let (_dir, store) = temp_store().await;
    let a = store.add_key(&key("sk-aaaa")).await.unwrap();
    let b = store.add_key(&key("sk-aaaa")).await.unwrap();
    let c = store.add_key(&key("sk-cccc")).await.unwrap();
    let AddOutcome::Added(id) = a else { panic!("first add must insert") };
    assert_eq!(b, AddOutcome::Duplicate(id));
    assert_eq!(c, AddOutcome::Added(id + 1), "a duplicate consumes no id");
    assert_eq!(store.list_keys().await.unwrap().len(), 2);
}

#[tokio::test]
async fn operator_changes_bump_the_revision_but_usage_flushes_do_not() {
    let (_dir, store) = temp_store().await;
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

#[tokio::test]
async fn tokens_are_revoked_once() {
    let (_dir, store) = temp_store().await;
    let id = store.create_token("ci", "abc", "kp-12").await.unwrap();
    store.revoke_token(id).await.unwrap();
    let first = store.list_tokens().await.unwrap()[0].revoked_at;
    store.revoke_token(id).await.unwrap();
    assert_eq!(store.list_tokens().await.unwrap()[0].revoked_at, first);
}

#[tokio::test]
async fn key_state_is_saved_replaced_and_goes_with_its_key() {
    let (_dir, store) = temp_store().await;
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

#[tokio::test]
async fn edit_changes_only_what_it_names() {
    let (_dir, store) = temp_store().await;
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
