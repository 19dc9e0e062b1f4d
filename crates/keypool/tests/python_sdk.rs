//! The official `openai` Python SDK against keypool, keypool against the
//! simulator. The test command (scripts/test) installs the SDK into a venv
//! and names its interpreter in KP_TEST_PYTHON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{key, spawn};
use keypool_sim::{SimConfig, SimKey};

#[tokio::test]
async fn official_openai_python_sdk_works_through_keypool() {
    let Some(python) = common::sdk_python() else { return };
    let keys = ["sk-sdk-aaaaaaaaaaaaaa", "sk-sdk-bbbbbbbbbbbbbb"];
    let app = spawn(
        SimConfig { keys: keys.iter().map(|k| SimKey::new(*k).rpm(100)).collect(), ..SimConfig::default() },
        keys.iter().map(|k| key(k, None)).collect(),
        |_| {},
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_check.py");
    let (ok, stdout, stderr) = common::run_sdk(&python, &[script], &app).await;
    assert!(ok, "SDK check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("chat, stream+usage, embeddings, models ok"), "{stdout}");
    let served: u64 = keys.iter().map(|k| app.sim.key_stats(k).ok).sum();
    assert_eq!(served, 4, "chat, stream, embeddings and models reached the simulator through keypool");
}
