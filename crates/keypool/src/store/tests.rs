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
