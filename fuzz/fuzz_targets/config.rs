#![no_main]
//! See `keypool::fuzzing::config` for the input's layout and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keypool::fuzzing::config(data));
