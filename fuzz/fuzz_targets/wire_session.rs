//! Harness of the `wire_session` target; the body is `dazaar::fuzzing::wire_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::wire_session(data));
