//! Harness of the `bolt11` target; the body is `dazaar_lnd::fuzzing::bolt11`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar_lnd::fuzzing::bolt11(data));
