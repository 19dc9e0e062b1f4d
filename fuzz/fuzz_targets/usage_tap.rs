#![no_main]
//! See `keypool_sse::fuzzing::usage_tap` for the input's layout and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypool_sse::fuzzing::usage_tap(data));
