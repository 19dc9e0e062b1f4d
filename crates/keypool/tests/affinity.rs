//! Object affinity (issue 16): files and stored responses live on the key
//! that created them, as on OpenAI (per project); keypool sends later
//! requests naming them to that key. The simulator keeps both per key and
//! answers another key's read with OpenAI's 404.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{key, spawn};
use keypool_sim::{SimConfig, SimKey};

const KEYS: [&str; 3] = ["sk-aff-aaaaaaaaaaaaaaaa", "sk-aff-bbbbbbbbbbbbbbbb", "sk-aff-cccccccccccccccc"];

fn sim() -> SimConfig {
    SimConfig { keys: KEYS.iter().map(|k| SimKey::new(*k)).collect(), ..SimConfig::default() }
}

/// The key (of KEYS) that answered, by the simulator's 2xx counts before and after.
fn served_by(before: &[u64], app: &common::TestApp) -> Vec<usize> {
    KEYS.iter().enumerate().filter(|(i, k)| app.sim.key_stats(k).ok > before[*i]).map(|(i, _)| i).collect()
}

fn oks(app: &common::TestApp) -> Vec<u64> {
    KEYS.iter().map(|k| app.sim.key_stats(k).ok).collect()
}

#[tokio::test]
async fn a_file_is_read_back_with_the_key_that_uploaded_it() {
    let app = spawn(sim(), KEYS.iter().map(|k| key(k, None)).collect(), |_| {}).await;
    let before = oks(&app);
    let upload = app
        .post("files")
        .header("content-type", "multipart/form-data; boundary=kp")
        .body("--kp\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--kp--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let file: serde_json::Value = upload.json().await.unwrap();
    let id = file["id"].as_str().unwrap().to_owned();
    let owner = served_by(&before, &app);
    assert_eq!(owner.len(), 1);
    // least_used would spread these over the three keys: each goes to the owner.
    for i in 0..6 {
        let resp = app.get(&format!("files/{id}/content")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "read {i}");
        assert_eq!(resp.text().await.unwrap(), format!("the content of {id}"));
        let resp = app.get(&format!("files/{id}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "retrieve {i}");
    }
    let after = oks(&app);
    for (i, k) in KEYS.iter().enumerate() {
        let expected = if i == owner[0] { before[i] + 13 } else { before[i] };
        assert_eq!(after[i], expected, "{k}");
    }
    // A file keypool never saw created goes wherever least_used sends it.
    assert_eq!(app.get("files/file-unknown/content").send().await.unwrap().status(), 404);
    // The owner is written to the store with the request's record (survives a restart).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(key_id) = app.store.object_key(&id).await.unwrap() {
            assert_eq!(key_id, owner[0] as i64 + 1, "key ids follow KEYS' order");
            break;
        }
        assert!(Instant::now() < deadline, "the object's key was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn previous_response_id_reaches_the_key_that_stored_the_first() {
    let app = spawn(sim(), KEYS.iter().map(|k| key(k, None)).collect(), |_| {}).await;
    for stream in [false, true] {
        let before = oks(&app);
        let first = app
            .post("responses")
            .json(&serde_json::json!({"model": "gpt-4o-mini", "input": "remember 7", "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200);
        let text = first.text().await.unwrap();
        let id = if stream {
            let event =
                text.lines().filter_map(|l| l.strip_prefix("data: ")).find(|d| d.contains("\"response.created\""));
            let event: serde_json::Value = serde_json::from_str(event.expect("a response.created event")).unwrap();
            event["response"]["id"].as_str().unwrap().to_owned()
        } else {
            let body: serde_json::Value = serde_json::from_str(&text).unwrap();
            body["id"].as_str().unwrap().to_owned()
        };
        let owner = served_by(&before, &app);
        assert_eq!(owner.len(), 1, "stream {stream}");
        let mut previous = id;
        for turn in 0..4 {
            let resp = app
                .post("responses")
                .json(
                    &serde_json::json!({"model": "gpt-4o-mini", "input": "and now?", "previous_response_id": previous}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "stream {stream}, turn {turn}");
            let body: serde_json::Value = resp.json().await.unwrap();
            previous = body["id"].as_str().unwrap().to_owned();
        }
        let after = oks(&app);
        assert_eq!(after[owner[0]], before[owner[0]] + 5, "every turn on the first response's key");
        for i in (0..KEYS.len()).filter(|i| *i != owner[0]) {
            assert_eq!(after[i], before[i], "no other key served a turn (stream {stream})");
        }
    }
}
