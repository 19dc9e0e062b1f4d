//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keypool_sim::{SimConfig, Simulator};
use serde_json::{json, Value};

pub async fn start(cfg: SimConfig) -> Simulator {
    Simulator::start(cfg).await.expect("simulator starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

pub fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 10})
}

pub async fn post(sim: &Simulator, path: &str, key: &str, body: &Value) -> reqwest::Response {
    client().post(format!("{}{path}", sim.base_url())).bearer_auth(key).json(body).send().await.unwrap()
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Waits (real time, bounded) until `f` holds; counters updated by the server after the
/// client saw the answer need this.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
