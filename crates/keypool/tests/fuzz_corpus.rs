//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same functions the fuzz targets call (`keypool::fuzzing`), so every
//! input the fuzzer kept, and every crash it once found, is checked by the
//! ordinary `cargo test` on stable. `scripts/fuzz` grows the corpus.

use std::path::{Path, PathBuf};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(e) => panic!("the corpus of {target} cannot be read at {}: {e}", dir.display()),
    };
    assert!(!files.is_empty(), "the corpus of {target} at {} is empty", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = match std::fs::read(file) {
            Ok(data) => data,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: {} of {} corpus inputs failed: {failed:#?}", failed.len(), files.len());
}

#[test]
fn ratelimit_headers_corpus() {
    replay("ratelimit_headers", keypool::fuzzing::ratelimit_headers);
}

#[test]
fn request_body_corpus() {
    replay("request_body", keypool::fuzzing::request_body);
}

#[test]
fn config_corpus() {
    replay("config", keypool::fuzzing::config);
}
