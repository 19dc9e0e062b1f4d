//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same functions the fuzz targets call (`keypool::fuzzing`), so every
//! input the fuzzer kept, and every crash it once found, is checked by the
//! ordinary `cargo test` on stable. `scripts/fuzz` grows the corpus.

fn replay(target: &str, check: fn(&[u8])) {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    keypool_sse::fuzzing::replay_corpus(&corpus, target, check);
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
