//! Entry points for the fuzz targets (`fuzz/`) and for the replay of their
//! corpus under `cargo test` (`tests/fuzz_corpus.rs`): each takes arbitrary
//! bytes, must not panic, and asserts the properties the gateway relies on.
//! One function per target, called by both, so the two cannot drift apart.
//!
//! The main property is that nothing depends on how the transport cut the
//! body: the same bytes fed whole, a byte at a time, or in pieces of uneven
//! sizes give the same result. Each input is also fed with a small buffering
//! cap, so the overflow paths are reached without megabyte inputs.

use std::borrow::Cow;

use crate::{BodyKind, SseFramer, StreamProtocol, TapOutcome, Usage, UsageStripper, UsageTap};

/// A buffering cap small enough for fuzz inputs to overflow it.
const SMALL_CAP: usize = 48;

/// The ways one input is cut into pieces: whole, a byte at a time, and
/// uneven pieces whose sizes (1 to 17 bytes) follow from the input itself,
/// so a failing input replays the same cuts.
fn cuttings(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let whole = vec![data];
    let bytes = data.chunks(1).collect();
    let mut state = data.iter().fold(0x9e37_79b9_u32, |h, &b| h.rotate_left(5) ^ u32::from(b)).wrapping_add(1);
    let mut uneven = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let size = (1 + (state >> 24) as usize % 17).min(rest.len());
        let (piece, tail) = rest.split_at(size);
        uneven.push(piece);
        rest = tail;
    }
    // An empty piece in the middle must be harmless too.
    uneven.insert(uneven.len() / 2, &[]);
    vec![whole, bytes, uneven]
}

/// The SSE framer and the usage-event stripper: each gives the same output
/// however the stream is cut, and the stripper's borrowed output is always a
/// prefix of the chunk it was given (the gateway forwards
/// `chunk.slice(..len)` on that promise).
pub fn sse_framer(data: &[u8]) {
    for cap in [crate::MAX_BUFFERED_BYTES, SMALL_CAP] {
        let framed: Vec<Vec<Vec<u8>>> = cuttings(data)
            .iter()
            .map(|pieces| {
                let mut framer = SseFramer::with_max_line(cap);
                let mut out = Vec::new();
                for piece in pieces {
                    framer.feed(piece, |d| {
                        assert!(d.len() <= cap, "a data value longer than the line cap was delivered");
                        // The stripper's predicate must not panic on any payload.
                        let _ = crate::strip_usage_event(d);
                        out.push(d.to_vec());
                    });
                }
                out
            })
            .collect();
        assert_all_equal(&framed, "framed data values");

        let stripped: Vec<(Vec<u8>, u64)> = cuttings(data).iter().map(|pieces| strip(pieces, cap)).collect();
        assert_all_equal(&stripped, "stripped stream and removed count");
        let (out, removed) = &stripped[0];
        assert!(out.len() <= data.len(), "the stripper added bytes");
        if *removed == 0 {
            assert_eq!(out.as_slice(), data, "nothing removed, yet the stream changed");
        }
    }
}

/// Runs the stripper over `pieces`; what it forwarded, and how many events it removed.
fn strip(pieces: &[&[u8]], cap: usize) -> (Vec<u8>, u64) {
    let mut stripper = UsageStripper::with_max_buffered(cap);
    let mut out = Vec::new();
    for piece in pieces {
        match stripper.push(piece) {
            Cow::Borrowed(prefix) => {
                assert!(
                    prefix.len() <= piece.len() && (prefix.is_empty() || prefix.as_ptr() == piece.as_ptr()),
                    "a borrowed output is not a prefix of its chunk"
                );
                out.extend_from_slice(prefix);
            }
            Cow::Owned(bytes) => out.extend_from_slice(&bytes),
        }
    }
    out.extend_from_slice(&stripper.finish());
    (out, stripper.removed())
}

/// The usage tap, for an event stream and for a JSON body: the outcome is
/// the same however the body is cut; `finish` is repeatable; the estimate
/// made from the streamed text never counts below what it was given.
pub fn usage_tap(data: &[u8]) {
    for kind in [BodyKind::Sse, BodyKind::Json, BodyKind::Other] {
        for cap in [crate::MAX_BUFFERED_BYTES, SMALL_CAP] {
            let outcomes: Vec<TapOutcome> = cuttings(data)
                .iter()
                .map(|pieces| {
                    let mut tap = UsageTap::with_max_buffered(kind, cap);
                    for piece in pieces {
                        tap.feed(piece);
                    }
                    let saw_done = tap.saw_done();
                    let outcome = tap.finish();
                    assert_eq!(tap.finish(), outcome, "finish is not repeatable");
                    assert_eq!(saw_done, outcome.saw_done, "saw_done disagrees with the outcome");
                    outcome
                })
                .collect();
            assert_all_equal(&outcomes, "tap outcome");
            let outcome = outcomes[0];
            if kind == BodyKind::Other {
                assert_eq!(outcome, TapOutcome::default(), "a body of another kind taught the tap something");
            }
            check_outcome(&outcome);
        }
    }
}

/// What holds for any outcome, whatever the body.
fn check_outcome(outcome: &TapOutcome) {
    for protocol in [StreamProtocol::Chat, StreamProtocol::Responses, StreamProtocol::Other] {
        // Ending before a break is the stricter of the two.
        if outcome.ended_before_break(protocol) {
            assert!(outcome.ended(protocol), "ended before a break, but not ended ({protocol:?})");
        }
    }
    for prompt in [0, 1, 1_000, u64::MAX] {
        let Some(usage) = outcome.usage_or_estimate(prompt) else {
            assert!(outcome.usage.is_none() && outcome.text.is_empty(), "usage or text seen, yet no usage");
            continue;
        };
        if outcome.usage.is_none() {
            check_estimate(usage, prompt, outcome);
        }
    }
}

/// An estimate errs high: at least a token per 3 ASCII characters and one
/// per other character, and its total is the (saturating) sum.
fn check_estimate(usage: Usage, prompt: u64, outcome: &TapOutcome) {
    assert!(usage.estimated, "an estimate not marked as one");
    assert_eq!(usage.prompt_tokens, prompt);
    assert!(usage.completion_tokens >= outcome.text.other, "estimate below the non-ASCII characters");
    assert!(usage.completion_tokens.saturating_mul(3) >= outcome.text.ascii, "estimate below ASCII / 3");
    assert_eq!(usage.total_tokens, prompt.saturating_add(usage.completion_tokens));
}

fn assert_all_equal<T: PartialEq + std::fmt::Debug>(results: &[T], what: &str) {
    if let Some((first, rest)) = results.split_first() {
        for (i, other) in rest.iter().enumerate() {
            assert_eq!(first, other, "{what}: cutting {} differs from the whole input", i + 1);
        }
    }
}

/// Replays every file of `corpus/<target>/` through `check` (for the
/// `tests/fuzz_corpus.rs` of this crate and of keypool): panics naming the
/// inputs that failed, and when the folder is missing or empty, so a
/// corpus lost in a move cannot pass unnoticed.
pub fn replay_corpus(corpus: &std::path::Path, target: &str, check: fn(&[u8])) {
    let dir = corpus.join(target);
    let files: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
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
