#![no_main]
//! See `keypool::fuzzing::request_body` for the input's layout and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypool::fuzzing::request_body(data));
