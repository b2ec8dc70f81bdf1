#![no_main]
//! `cargo +nightly fuzz run config`: see trustgate_fuzz::config for the input and invariants.

use std::sync::LazyLock;

use trustgate_fuzz::ConfigFixture;

/// Real certificate files for the paths a config names, made once per fuzzing process.
static FIXTURE: LazyLock<ConfigFixture> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("trustgate-fuzz-config-{}", std::process::id()));
    ConfigFixture::new(&dir)
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustgate_fuzz::config(&FIXTURE, data));
