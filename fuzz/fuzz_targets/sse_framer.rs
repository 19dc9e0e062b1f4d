#![no_main]
//! See `keypool_sse::fuzzing::sse_framer` for the input's layout and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypool_sse::fuzzing::sse_framer(data));
