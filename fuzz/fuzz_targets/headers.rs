#![no_main]
//! `cargo +nightly fuzz run headers`: see trustgate_fuzz::headers for the input format and invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustgate_fuzz::headers(data));
