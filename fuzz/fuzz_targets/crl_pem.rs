#![no_main]
//! `cargo +nightly fuzz run crl_pem`: see trustgate_fuzz::crl_pem for the input format and invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustgate_fuzz::crl_pem(data));
