//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same functions the fuzz targets call (`keypool_sse::fuzzing`), so every
//! input the fuzzer kept, and every crash it once found, is checked by the
//! ordinary `cargo test` on stable. `scripts/fuzz` grows the corpus.

fn replay(target: &str, check: fn(&[u8])) {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    keypool_sse::fuzzing::replay_corpus(&corpus, target, check);
}

#[test]
fn sse_framer_corpus() {
    replay("sse_framer", keypool_sse::fuzzing::sse_framer);
}

#[test]
fn usage_tap_corpus() {
    replay("usage_tap", keypool_sse::fuzzing::usage_tap);
}
