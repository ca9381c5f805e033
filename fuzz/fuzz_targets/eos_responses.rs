//! Harness of the `eos_responses` target; the body is `dazaar_eos::fuzzing::eos_responses`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar_eos::fuzzing::eos_responses(data));
