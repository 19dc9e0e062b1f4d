//! Entry points for the fuzz targets (`fuzz/`) and for the replay of their
//! corpus under `cargo test` (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes, must not panic, and asserts the properties the gateway relies on;
//! the fuzz target and the replay call the same function, so the two cannot
//! drift apart. The SSE framer and usage tap have theirs in
//! `keypool_sse::fuzzing`.
//!
//! Inputs are text-like so that corpus files can be read and written by
//! hand: see each function for its layout.

mod body;
mod config;
mod headers;

pub use body::request_body;
pub use config::config;
pub use headers::ratelimit_headers;

/// The first line of `data` (without its `\n` or `\r\n`) and the rest.
fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => {
            let (line, rest) = data.split_at(at);
            (line.strip_suffix(b"\r").unwrap_or(line), rest.get(1..).unwrap_or_default())
        }
        None => (data, &[]),
    }
}
