#![no_main]
//! `cargo +nightly fuzz run routing`: see trustgate_fuzz::routing for the input format and invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustgate_fuzz::routing(data));
