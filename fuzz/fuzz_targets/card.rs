//! Harness of the `card` target; the body is `dazaar::fuzzing::card`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::card(data));
