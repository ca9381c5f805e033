//! Harness of the `config_toml` target; the body is `dazaar::fuzzing::config_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::config_toml(data));
