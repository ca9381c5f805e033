//! Harness of the `stripe` target; the body is `dazaar_fiat_stripe::fuzzing::stripe`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar_fiat_stripe::fuzzing::stripe(data));
