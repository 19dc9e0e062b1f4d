//! Object affinity: which key created each file, upload, batch, stored
//! response and the like, so that later requests naming the object reach
//! that key. OpenAI keeps such objects per organization and project: any
//! other key answers 404 for them, and `previous_response_id` works only
//! on the key that stored the first response.
//!
//! An object's id is learned from the 2xx answer to the request that
//! created it ([`creates_objects`]) and kept twice: here in memory (the
//! newest [`KEPT`], so a read right after an upload finds it) and in the
//! store's `objects` table, written with the request's record (so it
//! survives a restart and is shared by instances on one database). A
//! request names an object in its path (`files/{id}/content`) or its body
//! (`previous_response_id`, `input_file_id`, `training_file`, `file_id`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::store::Store;

/// Objects remembered in memory (the store keeps them all).
pub const KEPT: usize = 100_000;
/// Longest a request waits for the store to say who created an object.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Collections whose objects live on the key that created them.
const COLLECTIONS: [&str; 10] = [
    "files",
    "uploads",
    "batches",
    "responses",
    "vector_stores",
    "assistants",
    "threads",
    "conversations",
    "containers",
    "fine_tuning",
];

/// Whether a `method` request to `path` (under `/v1/`) creates an object
/// whose id its answer gives: a POST to a collection itself
/// (`files`, `batches`, `responses`, `fine_tuning/jobs`, …).
pub fn creates_objects(method: &http::Method, path: &str) -> bool {
    if method != http::Method::POST {
        return false;
    }
    let path = path.trim_matches('/');
    COLLECTIONS.contains(&path) || path == "fine_tuning/jobs"
}

/// The object a path names: the segment after its collection
/// (`files/file-abc/content` → `file-abc`; `fine_tuning/jobs/ftjob-1` →
/// `ftjob-1`); none for the collection itself.
pub fn named_in_path(path: &str) -> Option<&str> {
    let mut segments = path.trim_matches('/').split('/');
    let collection = segments.next()?;
    if !COLLECTIONS.contains(&collection) {
        return None;
    }
    let mut id = segments.next()?;
    if collection == "fine_tuning" {
        // fine_tuning/jobs/{id} and fine_tuning/checkpoints/{id}/…
        id = segments.next()?;
    }
    (!id.is_empty()).then_some(id)
}

/// The id an answer gives to the object it created: its top-level `id`
/// (a JSON answer), or the `response.id` of the first event of a stream
/// (`response.created`). `head` is the answer's first bytes, possibly cut
/// part-way: the id is kept as soon as it is read (OpenAI's objects give it
/// first), whatever follows it.
pub fn created_id(head: &[u8], sse: bool) -> Option<String> {
    if !sse {
        return first_id(head, false);
    }
    let text = String::from_utf8_lossy(head);
    text.lines().filter_map(|line| line.strip_prefix("data:")).find_map(|data| first_id(data.trim().as_bytes(), true))
}

/// The first `"id"` of a JSON object (with `nested`, the one inside its
/// `"response"` object too), read while parsing: a cut-off or malformed
/// rest does not lose it.
fn first_id(json: &[u8], nested: bool) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Find<'a> {
        found: &'a mut Option<String>,
        nested: bool,
    }
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" && self.found.is_none() {
                    *self.found = map.next_value::<Option<String>>()?;
                } else if key == "response" && self.nested && self.found.is_none() {
                    map.next_value_seed(Find { found: &mut *self.found, nested: false })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Find<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    // An error after the id (a cut) still leaves it found.
    let _ = de.deserialize_map(Find { found: &mut found, nested });
    found
}

/// Who created which object: the newest in memory, all in the store.
pub struct Affinity {
    recent: Mutex<Recent>,
    store: Option<Store>,
    /// The runtime the store's connections belong to.
    main: Option<tokio::runtime::Handle>,
}

#[derive(Default)]
struct Recent {
    owners: HashMap<String, i64>,
    order: VecDeque<String>,
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

impl Affinity {
    /// Remembers in memory and asks `store` (on the `main` runtime) for the rest.
    pub fn new(store: Option<Store>, main: Option<tokio::runtime::Handle>) -> Affinity {
        Affinity { recent: Mutex::new(Recent::default()), store, main }
    }

    /// `id` was created with key `key_id`.
    pub fn remember(&self, id: &str, key_id: i64) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.owners.insert(id.to_owned(), key_id).is_none() {
            recent.order.push_back(id.to_owned());
            while recent.order.len() > KEPT {
                if let Some(old) = recent.order.pop_front() {
                    recent.owners.remove(&old);
                }
            }
        }
    }

    /// The key that created `id`, if keypool saw it created.
    pub async fn owner(&self, id: &str) -> Option<i64> {
        if let Some(key) = self.recent.lock().unwrap_or_else(|p| p.into_inner()).owners.get(id) {
            return Some(*key);
        }
        let (store, main) = (self.store.clone()?, self.main.clone()?);
        let id_owned = id.to_owned();
        let asked = main.spawn(async move { store.object_key(&id_owned).await });
        match tokio::time::timeout(LOOKUP_TIMEOUT, asked).await {
            Ok(Ok(Ok(Some(key)))) => {
                self.remember(id, key);
                Some(key)
            }
            Ok(Ok(Ok(None))) => None,
            _ => {
                tracing::warn!(object = id, "could not ask the store which key created the object");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_name_objects_of_collections_only() {
        assert_eq!(named_in_path("files/file-abc/content"), Some("file-abc"));
        assert_eq!(named_in_path("batches/batch_1/cancel"), Some("batch_1"));
        assert_eq!(named_in_path("responses/resp_1/input_items"), Some("resp_1"));
        assert_eq!(named_in_path("fine_tuning/jobs/ftjob-1/events"), Some("ftjob-1"));
        assert_eq!(named_in_path("files"), None);
        assert_eq!(named_in_path("files/"), None);
        assert_eq!(named_in_path("chat/completions"), None);
        assert_eq!(named_in_path("models/gpt-4o"), None);
        assert!(creates_objects(&http::Method::POST, "files"));
        assert!(creates_objects(&http::Method::POST, "fine_tuning/jobs"));
        assert!(!creates_objects(&http::Method::GET, "files"));
        assert!(!creates_objects(&http::Method::POST, "files/file-1/content"));
        assert!(!creates_objects(&http::Method::POST, "chat/completions"));
    }

    #[test]
    fn ids_come_from_the_answer_or_its_first_event() {
        assert_eq!(created_id(br#"{"object":"file","id":"file-1","bytes":3}"#, false).as_deref(), Some("file-1"));
        let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_9\",\"object\":\"response\"}}\n\n";
        assert_eq!(created_id(stream, true).as_deref(), Some("resp_9"));
        assert_eq!(created_id(b"{\"error\":{}}", false), None);
        assert_eq!(created_id(b"not json", false), None);
        // Cut part-way (the head keeps 16 KiB of a long answer): the id came first.
        let long = format!("{{\"id\":\"resp_long\",\"object\":\"response\",\"output\":\"{}", "x".repeat(20_000));
        assert_eq!(created_id(&long.as_bytes()[..16 * 1024], false).as_deref(), Some("resp_long"));
        // A stream cut inside a multi-byte character.
        let mut cut = b"data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_7\",\"text\":\"".to_vec();
        cut.extend_from_slice(&"好".as_bytes()[..2]);
        assert_eq!(created_id(&cut, true).as_deref(), Some("resp_7"));
    }

    #[tokio::test]
    async fn memory_keeps_the_newest() {
        let affinity = Affinity::new(None, None);
        affinity.remember("file-1", 7);
        assert_eq!(affinity.owner("file-1").await, Some(7));
        assert_eq!(affinity.owner("file-2").await, None);
        for i in 0..KEPT {
            affinity.remember(&format!("f{i}"), 1);
        }
        assert_eq!(affinity.owner("file-1").await, None, "the oldest went first");
        assert_eq!(affinity.owner(&format!("f{}", KEPT - 1)).await, Some(1));
    }
}
