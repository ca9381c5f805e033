//! Harness of the `ext_payloads` target; the body is `dazaar::fuzzing::ext_payloads`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::ext_payloads(data));
