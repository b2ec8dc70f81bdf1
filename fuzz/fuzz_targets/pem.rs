#![no_main]
//! `cargo +nightly fuzz run pem`: see trustgate_fuzz::pem for the input format and invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustgate_fuzz::pem(data));
